//! Protocol drivers: kvd's native protocol, RESP, and etcd's v3 JSON
//! gateway (HTTP/1.1 keep-alive; no Rust etcd client builds here without
//! protoc), pipelined, over glommio sockets. A driver queues requests,
//! flushes them in one write and reads answers; it does not interpret them
//! beyond hit, miss or error.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kv_engine::Condition;
use kv_net::native::codec::{self, Hello, Request, Response, Welcome};

use crate::workload::Op;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Native,
    Resp,
    Etcd,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Protocol, String> {
        match s {
            "native" => Ok(Protocol::Native),
            "resp" => Ok(Protocol::Resp),
            "etcd" => Ok(Protocol::Etcd),
            _ => Err(format!("protocol {s:?} is not native, resp or etcd")),
        }
    }
}

/// What an answer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Miss,
    Error(String),
}

const READ_CHUNK_BYTES: usize = 64 * 1024;

pub struct Conn {
    stream: TcpStream,
    protocol: Protocol,
    out: Vec<u8>,
    buf: Vec<u8>,
    start: usize,
    next_id: u64,
    /// Operations sent and not answered (etcd answers do not say which).
    sent: std::collections::VecDeque<Op>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, protocol: Protocol) -> io::Result<Conn> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        if protocol == Protocol::Native {
            stream.write_all(&Hello { version_min: codec::VERSION, version_max: codec::VERSION }.encode()).await?;
            let mut w = [0u8; codec::WELCOME_BYTES];
            stream.read_exact(&mut w).await?;
            match Welcome::decode(&w) {
                Some(w) if w.status == 0 => {}
                _ => return Err(io::Error::other("kvd refused the handshake")),
            }
        }
        Ok(Conn { stream, protocol, out: Vec::new(), buf: Vec::new(), start: 0, next_id: 1, sent: Default::default() })
    }

    pub fn queue(&mut self, op: Op, key: &[u8], value: &[u8]) {
        match self.protocol {
            Protocol::Native => {
                let key = Bytes::copy_from_slice(key);
                let req = match op {
                    Op::Get => Request::Get { key, consistency: kv_replication::Consistency::Lease },
                    Op::Set => Request::Put { key, value: Bytes::copy_from_slice(value), condition: Condition::Always },
                };
                codec::encode_request(self.next_id, &req, &mut self.out);
                self.next_id += 1;
            }
            Protocol::Resp => match op {
                Op::Get => resp_command(&mut self.out, &[b"GET", key]),
                Op::Set => resp_command(&mut self.out, &[b"SET", key, value]),
            },
            Protocol::Etcd => {
                etcd_request(&mut self.out, op, key, value);
                self.sent.push_back(op);
            }
        }
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// The next answer (native answers may come in any order; the load
    /// loop only counts them).
    pub async fn answer(&mut self) -> io::Result<Answer> {
        loop {
            let parsed = match self.protocol {
                Protocol::Native => parse_native(&self.buf[self.start..]),
                Protocol::Resp => parse_resp(&self.buf[self.start..]),
                Protocol::Etcd => parse_http(&self.buf[self.start..]),
            };
            if let Some((answer, used)) = parsed.map_err(io::Error::other)? {
                self.start += used;
                if self.protocol == Protocol::Etcd && self.sent.pop_front() == Some(Op::Set) && answer == Answer::Miss {
                    return Ok(Answer::Ok);
                }
                return Ok(answer);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK_BYTES, 0);
        let n = self.stream.read(&mut self.buf[len..]).await?;
        self.buf.truncate(len + n);
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
        }
        Ok(())
    }
}

/// A RESP array of bulk strings.
pub fn resp_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for p in parts {
        out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
}

type Parsed = Result<Option<(Answer, usize)>, String>;

/// A put or range request to etcd's v3 JSON gateway.
pub fn etcd_request(out: &mut Vec<u8>, op: Op, key: &[u8], value: &[u8]) {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let (path, body) = match op {
        Op::Set => ("/v3/kv/put", format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", b64(key), b64(value))),
        Op::Get => ("/v3/kv/range", format!("{{\"key\":\"{}\"}}", b64(key))),
    };
    out.extend_from_slice(
        format!(
            "POST {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body.as_bytes());
}

/// Parses one HTTP/1.1 response with a Content-Length body.
pub fn parse_http(buf: &[u8]) -> Parsed {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "response head is not UTF-8")?;
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no HTTP status")?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim())
        })
        .and_then(|v| v.parse().ok())
        .ok_or("response without Content-Length")?;
    let total = head_end + 4 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[head_end + 4..total];
    let answer = if status != 200 {
        Answer::Error(format!("HTTP {status}: {}", String::from_utf8_lossy(body)))
    } else if !body.windows(6).any(|w| w == b"\"kvs\":") {
        // No values: a put's normal answer, a range's miss (the caller
        // knows which it asked).
        Answer::Miss
    } else {
        Answer::Ok
    };
    Ok(Some((answer, total)))
}

fn parse_native(buf: &[u8]) -> Parsed {
    let Some(h) = codec::parse_header(buf, u32::MAX as usize).map_err(|e| e.to_string())? else { return Ok(None) };
    if buf.len() < h.frame_bytes {
        return Ok(None);
    }
    let body = Bytes::copy_from_slice(&buf[codec::FRAME_HEADER_BYTES..h.frame_bytes]);
    let answer = match codec::decode_response(h.code, h.opcode_echo, body)? {
        Response::NotFound => Answer::Miss,
        Response::Error { status, message } => Answer::Error(format!("{}: {message}", status.name())),
        _ => Answer::Ok,
    };
    Ok(Some((answer, h.frame_bytes)))
}

/// Parses one RESP2 reply (simple string, error, integer, bulk string).
pub fn parse_resp(buf: &[u8]) -> Parsed {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
    let line = &buf[1..line_end];
    let text = || String::from_utf8_lossy(line).into_owned();
    match buf.first() {
        Some(b'+') | Some(b':') => Ok(Some((Answer::Ok, line_end + 2))),
        Some(b'-') => Ok(Some((Answer::Error(text()), line_end + 2))),
        Some(b'$') => {
            let len: i64 = text().parse().map_err(|_| format!("bad bulk length {:?}", text()))?;
            if len < 0 {
                return Ok(Some((Answer::Miss, line_end + 2)));
            }
            let total = line_end + 2 + len as usize + 2;
            Ok((buf.len() >= total).then_some((Answer::Ok, total)))
        }
        Some(other) => Err(format!("unexpected RESP reply type {:?}", *other as char)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies() {
        assert_eq!(parse_resp(b"+OK\r\n"), Ok(Some((Answer::Ok, 5))));
        assert_eq!(parse_resp(b"$-1\r\n"), Ok(Some((Answer::Miss, 5))));
        assert_eq!(parse_resp(b"$5\r\nhello\r\n+OK"), Ok(Some((Answer::Ok, 11))));
        assert_eq!(parse_resp(b"$5\r\nhel"), Ok(None));
        assert_eq!(parse_resp(b"-ERR nope\r\n"), Ok(Some((Answer::Error("ERR nope".into()), 11))));
        assert!(parse_resp(b"?x\r\n").is_err());
        let mut out = Vec::new();
        resp_command(&mut out, &[b"SET", b"k", b"v"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
    }

    #[test]
    fn etcd_requests_and_responses() {
        let mut out = Vec::new();
        etcd_request(&mut out, Op::Set, b"key", b"val");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("POST /v3/kv/put HTTP/1.1\r\n") && text.ends_with(r#"{"key":"a2V5","value":"dmFs"}"#),
            "{text}"
        );
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"header\":1}";
        assert_eq!(parse_http(ok), Ok(Some((Answer::Miss, ok.len()))), "no kvs: a miss if it was a range");
        assert_eq!(parse_http(&ok[..ok.len() - 1]), Ok(None));
        let hit = b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\n{\"kvs\":[{\"key\":1}]}";
        assert_eq!(parse_http(hit).unwrap().unwrap().0, Answer::Ok);
        let miss = b"HTTP/1.1 200 OK\r\nContent-Length: 23\r\n\r\n{\"header\":{},\"count\":0}";
        assert_eq!(parse_http(miss).unwrap().unwrap().0, Answer::Miss);
        let err = b"HTTP/1.1 503 Unavailable\r\nContent-Length: 2\r\n\r\nno";
        assert!(matches!(parse_http(err).unwrap().unwrap().0, Answer::Error(_)));
    }

    #[test]
    fn native_answers() {
        let mut buf = Vec::new();
        codec::encode_response(1, codec::Opcode::Get as u8, &Response::NotFound, &mut buf);
        codec::encode_response(2, codec::Opcode::Put as u8, &Response::Written { version: 3 }, &mut buf);
        let (a, used) = parse_native(&buf).unwrap().unwrap();
        assert_eq!(a, Answer::Miss);
        assert_eq!(parse_native(&buf[used..]).unwrap().unwrap().0, Answer::Ok);
        assert_eq!(parse_native(&buf[..used - 1]).unwrap(), None);
    }
}
