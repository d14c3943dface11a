//! Reading what an HTTP request asks for: the key in the path, query
//! parameters, conditional-write headers, the TTL, the consistency of a
//! read, and a size-limited body. Everything a client can get wrong is a
//! 400 (or 413 for sizes) with a sentence saying what was wrong.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderMap, IF_MATCH, IF_NONE_MATCH};
use hyper::StatusCode;
use kv_engine::Condition;
use kv_replication::Consistency;

use super::reply::ApiError;

/// A client must send a whole request body within this time.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Query parameters a request may carry; more is a malformed request.
const QUERY_PARAMS_MAX: usize = 8;
/// Longest TTL accepted: its milliseconds must fit an `i64`.
pub const TTL_SECONDS_MAX: u64 = i64::MAX as u64 / 1000;
/// Header carrying a TTL (the query parameter `ttl` works as well).
pub const TTL_HEADER: &str = "x-kvd-ttl-seconds";

/// Decodes `%XX` escapes; every other byte stands for itself.
pub fn percent_decode(text: &str) -> Result<Vec<u8>, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "malformed percent-escape at byte {i} of {text:?}: use %XX with two hex digits"
                ))
            })?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The decoded key of `/v1/kv/{key}`, checked against the key size limit.
pub fn key(encoded: &str, key_bytes_max: usize) -> Result<Bytes, ApiError> {
    let key = percent_decode(encoded)?;
    if key.is_empty() {
        return Err(ApiError::bad_request("the key is empty: use /v1/kv/{key}"));
    }
    if key.len() > key_bytes_max {
        let message = format!("key of {} bytes exceeds the limit of {key_bytes_max} bytes", key.len());
        return Err(ApiError::too_large("key_too_large", message));
    }
    Ok(Bytes::from(key))
}

/// Query parameters, decoded; only names in `allowed`, each at most once.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Query, ApiError> {
        let mut params: Vec<(String, String)> = Vec::new();
        for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let decode = |s: &str| {
                String::from_utf8(percent_decode(s)?)
                    .map_err(|_| ApiError::bad_request(format!("query parameter {name:?} is not UTF-8")))
            };
            let (name, value) = (decode(name)?, decode(value)?);
            if !allowed.contains(&name.as_str()) {
                let known = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
                return Err(ApiError::bad_request(format!("unknown query parameter {name:?} (known here: {known})")));
            }
            if params.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::bad_request(format!("query parameter {name:?} given twice")));
            }
            if params.len() == QUERY_PARAMS_MAX {
                return Err(ApiError::bad_request("too many query parameters"));
            }
            params.push((name, value));
        }
        Ok(Query(params))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// `?consistency=strict|lease|stale`; lease when absent.
pub fn consistency(query: &Query) -> Result<Consistency, ApiError> {
    match query.get("consistency") {
        None | Some("lease") => Ok(Consistency::Lease),
        Some("strict") => Ok(Consistency::Strict),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(ApiError::bad_request(format!("consistency must be strict, lease or stale, not {other:?}"))),
    }
}

/// A header that may appear at most once, as trimmed text.
fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::bad_request(format!("header {name} given twice")));
    }
    let text = value.to_str().map_err(|_| ApiError::bad_request(format!("header {name} is not visible ASCII")))?;
    Ok(Some(text.trim()))
}

fn version_number(text: &str, what: &str) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::bad_request(format!("{what} must be a version (a positive integer), not {text:?}")))
}

/// The condition of a PUT or DELETE: `If-None-Match: *` (create only, PUT
/// alone), `If-Match: *` (the key must exist), `If-Match: "N"` or
/// `?version=N` (compare-and-set on version N).
pub fn condition(headers: &HeaderMap, query: &Query, allow_absent: bool) -> Result<Condition, ApiError> {
    let if_match = match header(headers, IF_MATCH.as_str())? {
        None => None,
        Some("*") => Some(Condition::IfExists),
        Some(tag) => {
            let bare = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(tag);
            Some(Condition::IfVersion(version_number(bare, "If-Match")?))
        }
    };
    let by_query = query.get("version").map(|v| version_number(v, "the version parameter")).transpose()?;
    let if_none_match = header(headers, IF_NONE_MATCH.as_str())?;
    match (if_match, by_query, if_none_match) {
        (_, _, Some(_)) if !allow_absent => Err(ApiError::bad_request("If-None-Match is only allowed on PUT")),
        (_, _, Some(tag)) if tag != "*" => {
            Err(ApiError::bad_request("If-None-Match takes only \"*\" (create the key only if it is absent)"))
        }
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            Err(ApiError::bad_request("If-None-Match cannot be combined with If-Match or a version"))
        }
        (None, None, Some(_)) => Ok(Condition::IfAbsent),
        (Some(Condition::IfVersion(a)), Some(b), None) if a != b => {
            Err(ApiError::bad_request(format!("If-Match names version {a} but the version parameter {b}")))
        }
        (Some(Condition::IfExists), Some(_), None) => {
            Err(ApiError::bad_request("If-Match: * cannot be combined with a version parameter"))
        }
        (Some(c), _, None) => Ok(c),
        (None, Some(v), None) => Ok(Condition::IfVersion(v)),
        (None, None, None) => Ok(Condition::Always),
    }
}

/// A TTL in seconds from the `X-Kvd-TTL-Seconds` header or `?ttl=`.
pub fn ttl_seconds(headers: &HeaderMap, query: &Query) -> Result<Option<u64>, ApiError> {
    let by_header = header(headers, TTL_HEADER)?;
    let text = match (by_header, query.get("ttl")) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give the TTL as a header or a parameter, not both")),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => return Ok(None),
    };
    match text.parse::<u64>() {
        Ok(s) if (1..=TTL_SECONDS_MAX).contains(&s) => Ok(Some(s)),
        _ => Err(ApiError::bad_request(format!(
            "a TTL must be a whole number of seconds from 1 to {TTL_SECONDS_MAX}, not {text:?}"
        ))),
    }
}

/// Reads the whole body, refusing more than `limit` bytes: at once when
/// Content-Length says so, otherwise as soon as the count passes it.
pub async fn body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = |len: String| {
        ApiError::too_large("value_too_large", format!("value of {len} bytes exceeds the limit of {limit} bytes"))
    };
    let announced = body.size_hint().lower();
    if announced > limit as u64 {
        return Err(too_large(announced.to_string()));
    }
    let read = glommio::timer::timeout(BODY_READ_TIMEOUT, async {
        Ok(Limited::new(body, limit).collect().await.map(|c| c.to_bytes()))
    });
    match read.await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(format!("more than {limit}"))),
        Ok(Err(e)) => Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {BODY_READ_TIMEOUT:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn keys_are_percent_decoded_and_checked() {
        assert_eq!(key("a%2Fb%00%ff/c", 100).unwrap(), Bytes::from_static(b"a/b\x00\xff/c"));
        for bad in ["%", "%4", "%zz", "a%g0"] {
            assert_eq!(key(bad, 100).unwrap_err().status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert_eq!(key("", 100).unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(key("abcd", 3).unwrap_err().code, "key_too_large");
        assert_eq!(key("%61%62%63", 3).unwrap(), Bytes::from_static(b"abc"));
    }

    #[test]
    fn query_parameters_are_known_and_single() {
        let q = Query::parse(Some("consistency=strict&version=%33"), &["consistency", "version"]).unwrap();
        assert_eq!((q.get("consistency"), q.get("version")), (Some("strict"), Some("3")));
        assert!(Query::parse(Some("cas=1"), &["version"]).is_err());
        assert!(Query::parse(Some("version=1&version=2"), &["version"]).is_err());
        assert!(Query::parse(Some("&&"), &[]).unwrap().get("x").is_none());
    }

    #[test]
    fn consistency_levels() {
        let parse = |q: &str| consistency(&Query::parse(Some(q), &["consistency"]).unwrap());
        assert_eq!(parse("").unwrap(), Consistency::Lease);
        assert_eq!(parse("consistency=stale").unwrap(), Consistency::Stale);
        assert!(parse("consistency=eventual").is_err());
    }

    #[test]
    fn conditions_from_headers_and_query() {
        let none = Query::default();
        let v5 = Query::parse(Some("version=5"), &["version"]).unwrap();
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a Query, Option<Condition>);
        let cases: &[Case] = &[
            (&[], &none, Some(Condition::Always)),
            (&[("if-none-match", "*")], &none, Some(Condition::IfAbsent)),
            (&[("if-match", "*")], &none, Some(Condition::IfExists)),
            (&[("if-match", "\"5\"")], &none, Some(Condition::IfVersion(5))),
            (&[("if-match", "5")], &v5, Some(Condition::IfVersion(5))),
            (&[], &v5, Some(Condition::IfVersion(5))),
            (&[("if-match", "6")], &v5, None),
            (&[("if-match", "0")], &none, None),
            (&[("if-match", "W/\"5\"")], &none, None),
            (&[("if-none-match", "\"5\"")], &none, None),
            (&[("if-none-match", "*"), ("if-match", "5")], &none, None),
            (&[("if-match", "1"), ("if-match", "2")], &none, None),
        ];
        for (pairs, query, want) in cases {
            let got = condition(&headers(pairs), query, true).ok();
            assert_eq!(got, *want, "{pairs:?} {query:?}");
        }
        assert!(condition(&headers(&[("if-none-match", "*")]), &none, false).is_err());
    }

    #[test]
    fn ttls_are_positive_whole_seconds() {
        let none = Query::default();
        assert_eq!(ttl_seconds(&headers(&[]), &none).unwrap(), None);
        assert_eq!(ttl_seconds(&headers(&[("x-kvd-ttl-seconds", "60")]), &none).unwrap(), Some(60));
        let q = Query::parse(Some("ttl=5"), &["ttl"]).unwrap();
        assert_eq!(ttl_seconds(&headers(&[]), &q).unwrap(), Some(5));
        assert!(ttl_seconds(&headers(&[("x-kvd-ttl-seconds", "5")]), &q).is_err());
        for bad in ["0", "-1", "1.5", "soon", "99999999999999999999"] {
            let q = Query::parse(Some(&format!("ttl={bad}")), &["ttl"]).unwrap();
            assert!(ttl_seconds(&headers(&[]), &q).is_err(), "{bad}");
        }
    }
}
