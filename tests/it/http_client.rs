//! A minimal blocking HTTP/1.1 client for the tests: one request per
//! connection (`Connection: close`), every read bounded by a timeout. It
//! sends exactly the bytes a test asks for, which a full client library
//! would not (raw binary keys in `%XX` form, broken headers).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Longest a test waits for one answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an error answer: this status, a JSON body with this code and
    /// a non-empty message.
    pub fn assert_error(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "{}", self.text());
        let json = self.json();
        assert_eq!(json["code"], code, "{json}");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{json}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        json
    }
}

/// Sends `method path` with `headers` and `body` and reads the answer.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "PUT" {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    let bytes = exchange(addr, &raw);
    parse(&bytes, method == "HEAD")
        .unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&bytes)))
}

pub fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, &[], b"")
}

pub fn put(addr: SocketAddr, path: &str, body: &[u8]) -> Answer {
    request(addr, "PUT", path, &[], body)
}

/// Writes `raw` to a fresh connection and reads until the server closes.
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    // The server may answer and close before taking all of a refused body.
    let _ = s.write_all(raw);
    read_to_close(&mut s)
}

/// Reads until EOF or a reset (a server closing with unread input resets).
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("reading an answer: {e} (after {} bytes)", out.len()),
        }
    }
}

/// Parses one answer with a Content-Length body (what kvd sends); the
/// answer to a HEAD request has none.
pub fn parse(bytes: &[u8], head_request: bool) -> Option<Answer> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &bytes[end + 4..];
    let len = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok());
    let body = match len {
        _ if head_request => Vec::new(),
        Some(len) if rest.len() >= len => rest[..len].to_vec(),
        Some(_) => return None,
        None => rest.to_vec(),
    };
    Some(Answer { status, headers, body })
}

/// `%XX` for every byte: any key, binary or not, as a path segment.
pub fn escape(key: &[u8]) -> String {
    key.iter().map(|b| format!("%{b:02X}")).collect()
}
