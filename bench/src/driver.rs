//! Protocol drivers: kvd's native protocol, RESP, memcached's text
//! protocol, kvd's HTTP API and etcd's v3 JSON gateway (HTTP/1.1
//! keep-alive; no Rust etcd client builds here without protoc), pipelined,
//! over glommio sockets. An [`Encoder`] appends requests to a buffer, a
//! [`Decoder`] takes replies off the front of the bytes read; neither does
//! IO, so the closed loop ([`Conn`]) and the open loop (`crate::open`, with
//! a connection's reading and writing in separate tasks) share them.
//! Replies are not interpreted beyond hit, miss or error.
//!
//! Invariant: every protocol but the native one answers in request order;
//! native replies carry the request's id and may come in any order, so
//! they are matched by id.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kv_engine::Condition;
use kv_net::native::codec::{self, Hello, Request, Response, Welcome};

use crate::workload::{Op, Ttl};
use crate::{http, memcache};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Native,
    Resp,
    Etcd,
    Http,
    Memcached,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Protocol, String> {
        match s {
            "native" => Ok(Protocol::Native),
            "resp" => Ok(Protocol::Resp),
            "etcd" => Ok(Protocol::Etcd),
            "http" => Ok(Protocol::Http),
            "memcached" | "memcache" => Ok(Protocol::Memcached),
            _ => Err(format!("protocol {s:?} is not native, resp, http, memcached or etcd")),
        }
    }
}

/// Why the etcd driver takes no `--ttl-share`: an expiring key in etcd
/// hangs off a lease, so a TTL per SET would be a lease grant per SET, a
/// different workload from a plain put with an expiry.
pub const ETCD_TTL_REFUSED: &str = "--ttl-share is not supported by the etcd driver: etcd needs a lease per TTL";

/// Whether `protocol` can send SETs with a TTL: every driver but etcd's.
pub fn check_ttl(protocol: Protocol, ttl: Ttl) -> Result<(), String> {
    match protocol {
        Protocol::Etcd if ttl.share > 0.0 => Err(ETCD_TTL_REFUSED.into()),
        _ => Ok(()),
    }
}

/// What an answer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Miss,
    Error(String),
}

/// One decoded reply: its answer, and the id of the request it answers
/// where the protocol says (native); `None` means "the oldest unanswered".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub answer: Answer,
    pub id: Option<u64>,
}

/// What an answer means for the operation that asked. etcd answers a put
/// without `kvs`, which the parser reads as a miss; an HTTP PUT answered
/// 404 is a failure, not a miss.
pub fn settle(protocol: Protocol, op: Op, answer: Answer) -> Answer {
    match (protocol, op, answer) {
        (Protocol::Etcd, Op::Set, Answer::Miss) => Answer::Ok,
        (Protocol::Http, Op::Set, Answer::Miss) => Answer::Error("HTTP 404 on PUT".into()),
        (_, _, answer) => answer,
    }
}

const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Appends requests of one protocol to an output buffer.
#[derive(Debug)]
pub struct Encoder {
    protocol: Protocol,
    out: Vec<u8>,
    next_id: u64,
}

impl Encoder {
    pub fn new(protocol: Protocol) -> Encoder {
        Encoder { protocol, out: Vec::new(), next_id: 1 }
    }

    /// Appends one request and returns its id (ids count up from 1 on each
    /// connection; the native protocol carries them on the wire). A SET
    /// with `ttl_s` expires that many seconds after the server takes it.
    pub fn queue(&mut self, op: Op, key: &[u8], value: &[u8], ttl_s: Option<u64>) -> u64 {
        assert!(op == Op::Set || ttl_s.is_none(), "only a SET carries a TTL");
        assert!(ttl_s != Some(0), "a TTL is at least a second");
        let id = self.next_id;
        self.next_id += 1;
        match self.protocol {
            Protocol::Native => native_request(&mut self.out, id, op, key, value, ttl_s),
            Protocol::Resp => match (op, ttl_s) {
                (Op::Get, _) => resp_command(&mut self.out, &[b"GET", key]),
                (Op::Set, None) => resp_command(&mut self.out, &[b"SET", key, value]),
                (Op::Set, Some(s)) => {
                    resp_command(&mut self.out, &[b"SET", key, value, b"EX", s.to_string().as_bytes()])
                }
            },
            Protocol::Etcd => {
                assert!(ttl_s.is_none(), "{ETCD_TTL_REFUSED} (checked at start)");
                etcd_request(&mut self.out, op, key, value)
            }
            Protocol::Http => http::kv_request(&mut self.out, op, key, value, ttl_s),
            Protocol::Memcached => memcache::request(&mut self.out, op, key, value, ttl_s),
        }
        id
    }

    /// The bytes queued since the last [`Encoder::clear`].
    pub fn pending(&self) -> &[u8] {
        &self.out
    }

    pub fn clear(&mut self) {
        self.out.clear();
    }
}

/// Takes replies of one protocol off the bytes read from a connection.
#[derive(Debug)]
pub struct Decoder {
    protocol: Protocol,
    buf: Vec<u8>,
    start: usize,
    chunk: Box<[u8]>,
}

impl Decoder {
    pub fn new(protocol: Protocol) -> Decoder {
        Decoder { protocol, buf: Vec::new(), start: 0, chunk: vec![0; READ_CHUNK_BYTES].into_boxed_slice() }
    }

    /// The next complete reply among the bytes received, if there is one.
    pub fn parse(&mut self) -> Result<Option<Reply>, String> {
        let buf = &self.buf[self.start..];
        let parsed = match self.protocol {
            Protocol::Native => parse_native(buf)?.map(|(answer, id, used)| (Reply { answer, id: Some(id) }, used)),
            protocol => {
                let parsed = match protocol {
                    Protocol::Resp => parse_resp(buf)?,
                    Protocol::Etcd => parse_http(buf)?,
                    Protocol::Http => parse_kv_http(buf)?,
                    Protocol::Memcached => memcache::parse_reply(buf)?,
                    Protocol::Native => unreachable!("handled above"),
                };
                parsed.map(|(answer, used)| (Reply { answer, id: None }, used))
            }
        };
        Ok(parsed.map(|(reply, used)| {
            self.start += used;
            reply
        }))
    }

    /// Adds received bytes (tests feed replies through this).
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next reply, reading from `stream` as needed. Cancel-safe: bytes
    /// are only added to the buffer after a read completed.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, stream: &mut R) -> io::Result<Reply> {
        loop {
            if let Some(reply) = self.parse().map_err(io::Error::other)? {
                return Ok(reply);
            }
            let n = stream.read(&mut self.chunk).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
            }
            let chunk = std::mem::take(&mut self.chunk);
            self.extend(&chunk[..n]);
            self.chunk = chunk;
        }
    }
}

/// Opens a connection and, for kvd's native protocol, shakes hands.
pub async fn connect(addr: SocketAddr, protocol: Protocol) -> io::Result<TcpStream> {
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
    Ok(stream)
}

/// A closed-loop connection: queue requests, flush them in one write,
/// then take their answers.
pub struct Conn {
    stream: TcpStream,
    protocol: Protocol,
    encoder: Encoder,
    decoder: Decoder,
    /// Requests sent and not answered, oldest first.
    sent: VecDeque<(u64, Op)>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, protocol: Protocol) -> io::Result<Conn> {
        let stream = connect(addr, protocol).await?;
        Ok(Conn {
            stream,
            protocol,
            encoder: Encoder::new(protocol),
            decoder: Decoder::new(protocol),
            sent: VecDeque::new(),
        })
    }

    pub fn queue(&mut self, op: Op, key: &[u8], value: &[u8], ttl_s: Option<u64>) {
        let id = self.encoder.queue(op, key, value, ttl_s);
        self.sent.push_back((id, op));
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(self.encoder.pending()).await?;
        self.encoder.clear();
        Ok(())
    }

    /// The next answer and the operation it answers.
    pub async fn answer(&mut self) -> io::Result<(Op, Answer)> {
        let reply = self.decoder.next(&mut self.stream).await?;
        let at = match reply.id {
            None => Some(0).filter(|_| !self.sent.is_empty()),
            Some(id) => self.sent.iter().position(|(sent, _)| *sent == id),
        };
        let (_, op) = at
            .and_then(|i| self.sent.remove(i))
            .ok_or_else(|| io::Error::other(format!("an answer to no request sent (id {:?})", reply.id)))?;
        Ok((op, settle(self.protocol, op, reply.answer)))
    }
}

/// A native GET, PUT, or PUT_TTL (opcode 6: the TTL in milliseconds, then
/// a PUT body; see docs/protocol.md).
fn native_request(out: &mut Vec<u8>, id: u64, op: Op, key: &[u8], value: &[u8], ttl_s: Option<u64>) {
    let key = Bytes::copy_from_slice(key);
    let value = || Bytes::copy_from_slice(value);
    let condition = Condition::Always;
    let req = match (op, ttl_s) {
        (Op::Get, _) => Request::Get { key, consistency: kv_replication::Consistency::Lease },
        (Op::Set, None) => Request::Put { key, value: value(), condition },
        (Op::Set, Some(s)) => Request::PutTtl { key, value: value(), condition, ttl_ms: s * 1000 },
    };
    codec::encode_request(id, &req, out);
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

/// Parses one etcd gateway response.
pub fn parse_http(buf: &[u8]) -> Parsed {
    let Some(r) = http::parse_response(buf).map_err(|e| e.to_string())? else { return Ok(None) };
    let answer = if r.status != 200 {
        Answer::Error(format!("HTTP {}: {}", r.status, String::from_utf8_lossy(r.body)))
    } else if !r.body.windows(6).any(|w| w == b"\"kvs\":") {
        // No values: a put's normal answer, a range's miss (the caller
        // knows which it asked).
        Answer::Miss
    } else {
        Answer::Ok
    };
    Ok(Some((answer, r.used)))
}

/// Parses one answer of kvd's HTTP API: 200, 201 or 204 a success, 404 a
/// miss, anything else an error.
pub fn parse_kv_http(buf: &[u8]) -> Parsed {
    let Some(r) = http::parse_response(buf).map_err(|e| e.to_string())? else { return Ok(None) };
    let answer = match r.status {
        200 | 201 | 204 => Answer::Ok,
        404 => Answer::Miss,
        status => {
            let body = &r.body[..r.body.len().min(200)];
            Answer::Error(format!("HTTP {status}: {}", String::from_utf8_lossy(body)))
        }
    };
    Ok(Some((answer, r.used)))
}

fn parse_native(buf: &[u8]) -> Result<Option<(Answer, u64, usize)>, String> {
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
    Ok(Some((answer, h.id, h.frame_bytes)))
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
    fn a_set_with_a_ttl_encodes_per_protocol() {
        let text = |protocol| {
            let mut enc = Encoder::new(protocol);
            enc.queue(Op::Set, b"kvbench:1", b"val", Some(600));
            String::from_utf8_lossy(enc.pending()).into_owned()
        };
        assert_eq!(
            text(Protocol::Resp),
            "*5\r\n$3\r\nSET\r\n$9\r\nkvbench:1\r\n$3\r\nval\r\n$2\r\nEX\r\n$3\r\n600\r\n"
        );
        assert_eq!(text(Protocol::Memcached), "set kvbench:1 0 600 3\r\nval\r\n");
        assert!(text(Protocol::Http).starts_with("PUT /v1/kv/kvbench%3A1?ttl=600 HTTP/1.1\r\n"));
        // Native: a PUT_TTL frame that kvd's own decoder reads back.
        let mut enc = Encoder::new(Protocol::Native);
        let id = enc.queue(Op::Set, b"kvbench:1", b"val", Some(600));
        let frame = enc.pending();
        let h = codec::parse_header(frame, usize::MAX).unwrap().expect("a whole frame");
        assert_eq!((h.frame_bytes, h.id), (frame.len(), id));
        assert_eq!(h.code, codec::Opcode::PutTtl as u8);
        let want = Request::PutTtl {
            key: Bytes::from_static(b"kvbench:1"),
            value: Bytes::from_static(b"val"),
            condition: Condition::Always,
            ttl_ms: 600_000,
        };
        assert_eq!(codec::decode_request_frame(&Bytes::copy_from_slice(frame)), Ok(want));
        // Without a TTL, a plain PUT (which clears any TTL the key had).
        let mut plain = Encoder::new(Protocol::Native);
        plain.queue(Op::Set, b"k", b"v", None);
        let h = codec::parse_header(plain.pending(), usize::MAX).unwrap().unwrap();
        assert_eq!(h.code, codec::Opcode::Put as u8);
        assert_eq!(check_ttl(Protocol::Etcd, Ttl::new(0.1, 60).unwrap()), Err(ETCD_TTL_REFUSED.into()));
        assert_eq!(check_ttl(Protocol::Etcd, Ttl::NONE), Ok(()));
        assert_eq!(check_ttl(Protocol::Memcached, Ttl::new(1.0, 60).unwrap()), Ok(()));
    }

    #[test]
    fn native_answers() {
        let mut buf = Vec::new();
        codec::encode_response(1, codec::Opcode::Get as u8, &Response::NotFound, &mut buf);
        codec::encode_response(2, codec::Opcode::Put as u8, &Response::Written { version: 3 }, &mut buf);
        let (a, id, used) = parse_native(&buf).unwrap().unwrap();
        assert_eq!((a, id), (Answer::Miss, 1));
        assert_eq!(parse_native(&buf[used..]).unwrap().unwrap().0, Answer::Ok);
        assert_eq!(parse_native(&buf[..used - 1]).unwrap(), None);
    }

    #[test]
    fn kvd_http_answers_and_settling() {
        let ok = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        let (a, used) = parse_kv_http(ok).unwrap().unwrap();
        assert_eq!((a, parse_kv_http(&ok[used..]).unwrap().unwrap().0), (Answer::Ok, Answer::Ok));
        let miss = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found";
        assert_eq!(parse_kv_http(miss).unwrap().unwrap().0, Answer::Miss);
        let err = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy";
        assert_eq!(parse_kv_http(err).unwrap().unwrap().0, Answer::Error("HTTP 503: busy".into()));
        assert!(parse_kv_http(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert_eq!(settle(Protocol::Etcd, Op::Set, Answer::Miss), Answer::Ok);
        assert!(matches!(settle(Protocol::Http, Op::Set, Answer::Miss), Answer::Error(_)));
        assert_eq!(settle(Protocol::Http, Op::Get, Answer::Miss), Answer::Miss);
    }

    #[test]
    fn decoder_takes_replies_across_partial_reads_and_encoder_counts_ids() {
        let mut enc = Encoder::new(Protocol::Memcached);
        assert_eq!((enc.queue(Op::Set, b"k", b"v", None), enc.queue(Op::Get, b"k", b"", None)), (1, 2));
        assert_eq!(enc.pending(), b"set k 0 0 1\r\nv\r\nget k\r\n");
        enc.clear();
        assert!(enc.pending().is_empty());
        let mut dec = Decoder::new(Protocol::Memcached);
        let stream = b"STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n";
        let mut replies = Vec::new();
        for b in stream {
            dec.extend(&[*b]);
            while let Some(r) = dec.parse().unwrap() {
                replies.push(r);
            }
        }
        let ok = Reply { answer: Answer::Ok, id: None };
        assert_eq!(replies, [ok.clone(), ok]);
        for (protocol, name) in
            [(Protocol::Http, "http"), (Protocol::Memcached, "memcached"), (Protocol::Native, "native")]
        {
            assert_eq!(Protocol::parse(name), Ok(protocol));
        }
        assert!(Protocol::parse("gopher").is_err());
    }
}
