//! The fixed label values of request metrics. Every protocol maps its
//! requests onto these few values, so the number of series stays bounded
//! whatever clients send.

/// Which front end served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Native,
    Resp,
    Http,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Native, Protocol::Resp, Protocol::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Resp => "resp",
            Protocol::Http => "http",
        }
    }
}

/// What a request did. Commands that fit none of these count as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpLabel {
    Get,
    Set,
    Del,
    Exists,
    MGet,
    MSet,
    Incr,
    Append,
    Expire,
    Ttl,
    Scan,
    Ping,
    Auth,
    Info,
    Cluster,
    /// The node's status (native STATUS, HTTP `/v1/cluster`).
    Status,
    Health,
    Ready,
    Metrics,
    Other,
}

impl OpLabel {
    pub const ALL: [OpLabel; 20] = [
        OpLabel::Get,
        OpLabel::Set,
        OpLabel::Del,
        OpLabel::Exists,
        OpLabel::MGet,
        OpLabel::MSet,
        OpLabel::Incr,
        OpLabel::Append,
        OpLabel::Expire,
        OpLabel::Ttl,
        OpLabel::Scan,
        OpLabel::Ping,
        OpLabel::Auth,
        OpLabel::Info,
        OpLabel::Cluster,
        OpLabel::Status,
        OpLabel::Health,
        OpLabel::Ready,
        OpLabel::Metrics,
        OpLabel::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OpLabel::Get => "get",
            OpLabel::Set => "set",
            OpLabel::Del => "del",
            OpLabel::Exists => "exists",
            OpLabel::MGet => "mget",
            OpLabel::MSet => "mset",
            OpLabel::Incr => "incr",
            OpLabel::Append => "append",
            OpLabel::Expire => "expire",
            OpLabel::Ttl => "ttl",
            OpLabel::Scan => "scan",
            OpLabel::Ping => "ping",
            OpLabel::Auth => "auth",
            OpLabel::Info => "info",
            OpLabel::Cluster => "cluster",
            OpLabel::Status => "status",
            OpLabel::Health => "health",
            OpLabel::Ready => "ready",
            OpLabel::Metrics => "metrics",
            OpLabel::Other => "other",
        }
    }
}

/// How a request ended, in protocol-independent terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusLabel {
    Ok,
    /// The key does not exist.
    NotFound,
    /// A condition (version, absence, existence) did not hold.
    Conflict,
    /// Malformed, unknown or not allowed.
    BadRequest,
    /// A key, value or request over its limit.
    TooLarge,
    Unauthorized,
    /// Retryable: no leader, not the leader, busy, stopping, not ready.
    Unavailable,
    /// Anything else (a poisoned WAL, an internal error).
    Error,
}

impl StatusLabel {
    pub const ALL: [StatusLabel; 8] = [
        StatusLabel::Ok,
        StatusLabel::NotFound,
        StatusLabel::Conflict,
        StatusLabel::BadRequest,
        StatusLabel::TooLarge,
        StatusLabel::Unauthorized,
        StatusLabel::Unavailable,
        StatusLabel::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatusLabel::Ok => "ok",
            StatusLabel::NotFound => "not_found",
            StatusLabel::Conflict => "conflict",
            StatusLabel::BadRequest => "bad_request",
            StatusLabel::TooLarge => "too_large",
            StatusLabel::Unauthorized => "unauthorized",
            StatusLabel::Unavailable => "unavailable",
            StatusLabel::Error => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_distinct_snake_case() {
        let mut seen = std::collections::BTreeSet::new();
        let all = OpLabel::ALL.map(OpLabel::as_str).into_iter().chain(StatusLabel::ALL.map(StatusLabel::as_str));
        for v in all.chain(Protocol::ALL.map(Protocol::as_str)) {
            assert!(v.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{v}");
            assert!(seen.insert(v), "{v} listed twice");
        }
    }

    #[test]
    fn all_lists_values_in_declaration_order() {
        // The handle tables index by discriminant.
        assert!(Protocol::ALL.iter().enumerate().all(|(i, v)| *v as usize == i));
        assert!(OpLabel::ALL.iter().enumerate().all(|(i, v)| *v as usize == i));
        assert!(StatusLabel::ALL.iter().enumerate().all(|(i, v)| *v as usize == i));
    }
}
