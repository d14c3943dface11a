//! The Redis protocol front end, driven by real Redis tools and client
//! libraries against real kvd processes: redis-cli and redis-benchmark
//! (Debian's redis-tools), the `redis` crate, and redis-py from PyPI in a
//! virtualenv the test makes. Plus raw sockets where the exact bytes
//! matter (protocol errors, authentication caps, pipelines, fuzzing).

mod auth;
mod bad_input;
mod cli;
mod clients;
mod pipeline;
mod redis_cluster;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::{run_bounded, stderr, stdout};

pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A reply, decoded just enough to compare.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    /// RESP3 scalars other than the above, as their text.
    Other(String),
}

impl Reply {
    pub fn bulk(s: &str) -> Reply {
        Reply::Bulk(s.as_bytes().to_vec())
    }

    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    pub fn text(&self) -> String {
        match self {
            Reply::Simple(s) | Reply::Error(s) | Reply::Other(s) => s.clone(),
            Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        }
    }
}

/// RESP for one command.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A RESP connection over a plain socket.
pub struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Raw { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to kvd");
    }

    /// Sends one command and reads its reply.
    pub fn cmd(&mut self, args: &[&str]) -> Reply {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send(&encode(&args));
        self.read().expect("a reply")
    }

    pub fn read(&mut self) -> std::io::Result<Reply> {
        let line = self.line()?;
        let (kind, rest) = (line.as_bytes()[0], &line[1..]);
        let count = || rest.parse::<i64>().expect("a length");
        Ok(match kind {
            b'+' => Reply::Simple(rest.into()),
            b'-' => Reply::Error(rest.into()),
            b':' => Reply::Int(count()),
            b'_' => Reply::Nil,
            b',' | b'#' | b'(' => Reply::Other(rest.into()),
            b'$' | b'=' if count() < 0 => Reply::Nil,
            b'$' | b'=' => {
                let mut data = vec![0; count() as usize + 2];
                self.reader.read_exact(&mut data)?;
                data.truncate(data.len() - 2);
                Reply::Bulk(data)
            }
            b'*' | b'~' if count() < 0 => Reply::Nil,
            b'*' | b'~' => Reply::Array((0..count()).map(|_| self.read()).collect::<Result<_, _>>()?),
            b'%' => Reply::Map((0..count()).map(|_| Ok((self.read()?, self.read()?))).collect::<std::io::Result<_>>()?),
            other => panic!("unexpected reply type {:?} in {line:?}", other as char),
        })
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        assert!(line.ends_with(b"\r\n"), "line without CRLF: {:?}", String::from_utf8_lossy(&line));
        line.truncate(line.len() - 2);
        Ok(String::from_utf8(line).expect("a text line"))
    }

    /// Whether the server closed the connection without sending more
    /// (bounded by the read timeout). A reset counts: closing a socket with
    /// unread input resets it.
    pub fn closed_by_server(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset && rest.is_empty(),
        }
    }
}

/// Whether Debian's redis-tools are here (.ci/run installs them).
fn redis_tool(name: &str) -> &str {
    let found = Command::new(name).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "{name} is not installed: apt-get install redis-tools (as .ci/run does)");
    name
}

/// Runs redis-cli against `addr` with `args`.
pub fn redis_cli(addr: SocketAddr, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(redis_tool("redis-cli"));
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()]).args(args);
    run_bounded(cmd, stdin)
}

/// redis-cli's output for one command, trimmed; panics if it failed.
pub fn cli_ok(addr: SocketAddr, args: &[&str]) -> String {
    let out = redis_cli(addr, args, b"");
    assert!(out.status.success(), "redis-cli {args:?}: {}{}", stdout(&out), stderr(&out));
    stdout(&out).trim_end().to_string()
}
