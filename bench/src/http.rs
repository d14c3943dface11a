//! A minimal HTTP/1.1 client codec for keep-alive load: requests to kvd's
//! HTTP API (`PUT`/`GET /v1/kv/{key}`, the key percent-encoded, the value
//! as the raw body) and a response parser for bodies framed by
//! `Content-Length`.
//!
//! Invariants: a response is consumed whole or not at all (the parser
//! returns `None` until its head and body are complete), so answers on a
//! pipelined connection stay aligned with requests; a head longer than
//! [`HEAD_BYTES_MAX`] or a body longer than [`BODY_BYTES_MAX`] is an error
//! rather than unbounded buffering. Chunked bodies are refused with a clear
//! error: kvd and etcd's gateway frame every answer with Content-Length,
//! and a load generator that half-understood chunking would misalign its
//! answers silently.

use crate::workload::Op;

/// Longest response head (status line and headers) accepted; real ones are
/// a few hundred bytes, so a longer one is a broken or hostile server.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Largest response body accepted: above the largest value kvd stores.
pub const BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("response head longer than {HEAD_BYTES_MAX} bytes")]
    HeadTooLong,
    #[error("response head is not UTF-8")]
    NotUtf8,
    #[error("malformed status line {0:?}")]
    StatusLine(String),
    #[error("malformed header line {0:?}")]
    Header(String),
    #[error("chunked response bodies are not supported (kvbench needs Content-Length framing)")]
    Chunked,
    #[error("transfer encoding {0:?} is not supported")]
    TransferEncoding(String),
    #[error("HTTP {0} response without Content-Length (close-delimited bodies end keep-alive)")]
    NoLength(u16),
    #[error("bad Content-Length {0:?}")]
    BadLength(String),
    #[error("response body of {0} bytes is over {BODY_BYTES_MAX}")]
    BodyTooLong(usize),
    #[error("unexpected interim response HTTP {0}")]
    Interim(u16),
}

/// One complete response at the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response<'a> {
    pub status: u16,
    pub body: &'a [u8],
    /// Bytes of the buffer this response occupies (head and body).
    pub used: usize,
}

/// Appends `bytes` percent-encoded for a path segment: RFC 3986 unreserved
/// characters stay, every other byte becomes `%XX`.
pub fn percent_encode(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
    }
}

/// Appends one request to kvd's HTTP API: `PUT /v1/kv/{key}` with the
/// value as body (and `?ttl=S` for an expiry in `ttl_s` seconds), or `GET
/// /v1/kv/{key}`. HTTP/1.1 connections are keep-alive unless a side says
/// otherwise, so no `Connection` header.
pub fn kv_request(out: &mut Vec<u8>, op: Op, key: &[u8], value: &[u8], ttl_s: Option<u64>) {
    let method: &[u8] = match op {
        Op::Set => b"PUT",
        Op::Get => b"GET",
    };
    out.extend_from_slice(method);
    out.extend_from_slice(b" /v1/kv/");
    percent_encode(key, out);
    if let Some(s) = ttl_s {
        out.extend_from_slice(format!("?ttl={s}").as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: kvd\r\n");
    if op == Op::Set {
        out.extend_from_slice(
            format!("Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", value.len()).as_bytes(),
        );
        out.extend_from_slice(value);
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses the response at the front of `buf`: `Ok(None)` until it is
/// complete.
pub fn parse_response(buf: &[u8]) -> Result<Option<Response<'_>>, HttpError> {
    let window = &buf[..buf.len().min(HEAD_BYTES_MAX + 4)];
    let Some(head_end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > HEAD_BYTES_MAX + 4 { Err(HttpError::HeadTooLong) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| HttpError::NotUtf8)?;
    let mut lines = head.split("\r\n");
    let status = parse_status_line(lines.next().unwrap_or(""))?;
    if (100..200).contains(&status) {
        return Err(HttpError::Interim(status));
    }
    let mut length: Option<usize> = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| HttpError::Header(line.to_string()))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(if value.to_ascii_lowercase().contains("chunked") {
                HttpError::Chunked
            } else {
                HttpError::TransferEncoding(value.to_string())
            });
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| HttpError::BadLength(value.to_string()))?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::BadLength(value.to_string()));
            }
            length = Some(n);
        }
    }
    // 204 and 304 never carry a body, whatever the headers say.
    let length = match status {
        204 | 304 => 0,
        _ => length.ok_or(HttpError::NoLength(status))?,
    };
    if length > BODY_BYTES_MAX {
        return Err(HttpError::BodyTooLong(length));
    }
    let used = head_end + 4 + length;
    if buf.len() < used {
        return Ok(None);
    }
    Ok(Some(Response { status, body: &buf[head_end + 4..used], used }))
}

fn parse_status_line(line: &str) -> Result<u16, HttpError> {
    let bad = || HttpError::StatusLine(line.to_string());
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().ok_or_else(bad)?;
    let code = parts.next().ok_or_else(bad)?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(bad());
    }
    code.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_encode_method_path_and_body() {
        let mut out = Vec::new();
        kv_request(&mut out, Op::Set, b"kvbench:7", b"abc", None);
        assert_eq!(
            out,
            b"PUT /v1/kv/kvbench%3A7 HTTP/1.1\r\nHost: kvd\r\nContent-Type: application/octet-stream\r\n\
              Content-Length: 3\r\n\r\nabc"
        );
        out.clear();
        kv_request(&mut out, Op::Set, b"kvbench:7", b"abc", Some(600));
        assert!(out.starts_with(b"PUT /v1/kv/kvbench%3A7?ttl=600 HTTP/1.1\r\n"), "{}", String::from_utf8_lossy(&out));
        assert!(out.ends_with(b"Content-Length: 3\r\n\r\nabc"));
        out.clear();
        kv_request(&mut out, Op::Get, b"a b/\xff~", b"", None);
        assert_eq!(out, b"GET /v1/kv/a%20b%2F%FF~ HTTP/1.1\r\nHost: kvd\r\n\r\n");
    }

    #[test]
    fn responses_are_framed_by_content_length() {
        let two =
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 404 Not Found\r\ncontent-length:0\r\n\r\n";
        let first = parse_response(two).unwrap().unwrap();
        assert_eq!((first.status, first.body), (200, &b"hello"[..]));
        let second = parse_response(&two[first.used..]).unwrap().unwrap();
        assert_eq!((second.status, second.body, first.used + second.used), (404, &b""[..], two.len()));
        // Incomplete at every cut: never a partial answer.
        for cut in 0..first.used {
            assert_eq!(parse_response(&two[..cut]), Ok(None), "cut at {cut}");
        }
        let no_content = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n";
        assert_eq!(parse_response(no_content).unwrap().unwrap().used, no_content.len());
    }

    #[test]
    fn unsupported_or_broken_responses_are_errors() {
        let cases: &[(&[u8], HttpError)] = &[
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", HttpError::Chunked),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", HttpError::TransferEncoding("gzip".into())),
            (b"HTTP/1.1 200 OK\r\n\r\n", HttpError::NoLength(200)),
            (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", HttpError::BadLength("x".into())),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", HttpError::BadLength("2".into())),
            (b"SPDY/3 200 OK\r\n\r\n", HttpError::StatusLine("SPDY/3 200 OK".into())),
            (b"HTTP/1.1 2000 OK\r\n\r\n", HttpError::StatusLine("HTTP/1.1 2000 OK".into())),
            (b"HTTP/1.1 100 Continue\r\n\r\n", HttpError::Interim(100)),
            (b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n", HttpError::Header("broken".into())),
        ];
        for (input, want) in cases {
            assert_eq!(parse_response(input), Err(want.clone()), "{}", String::from_utf8_lossy(input));
        }
        let huge = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", BODY_BYTES_MAX + 1);
        assert_eq!(parse_response(huge.as_bytes()), Err(HttpError::BodyTooLong(BODY_BYTES_MAX + 1)));
        let endless = vec![b'a'; HEAD_BYTES_MAX + 5];
        assert_eq!(parse_response(&endless), Err(HttpError::HeadTooLong));
        assert_eq!(parse_response(&endless[..HEAD_BYTES_MAX]), Ok(None));
    }
}
