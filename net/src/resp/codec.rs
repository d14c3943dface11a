//! Reading RESP commands: arrays of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`)
//! and inline commands (`GET k\r\n`), the two forms Redis accepts.
//!
//! The parser is incremental and resumable: [`Parser::next`] takes what it
//! can from the front of the buffer and keeps its place inside a command, so
//! a command that arrives in many reads is scanned once, and a bulk string's
//! bytes are split off the buffer without copying. Every length is checked
//! against [`Caps`] before anything is allocated for it; a count the client
//! claims reserves at most [`ARGS_PREALLOC_MAX`] slots. Any error leaves the
//! stream unsynchronised: the caller answers `-ERR Protocol error: ...` and
//! closes the connection.

use bytes::{Buf, Bytes, BytesMut};

/// Longest inline command and longest `*N` / `$N` line, as Redis
/// (`PROTO_INLINE_MAX_SIZE`).
pub const INLINE_BYTES_MAX: usize = 64 * 1024;
/// Arguments of one command. Redis allows more; a million keys in one MGET
/// is already far beyond any sane client.
pub const ARGS_MAX: usize = 1024 * 1024;
/// Before authentication, as Redis: a client that has not proven the
/// password cannot make the server buffer much.
pub const UNAUTH_ARGS_MAX: usize = 10;
pub const UNAUTH_BULK_BYTES_MAX: usize = 16 * 1024;
/// Slots reserved up front for a command's arguments; more grow as they come.
pub const ARGS_PREALLOC_MAX: usize = 1024;

/// Size limits for one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub args_max: usize,
    pub bulk_bytes_max: usize,
    /// All of one command's argument bytes together.
    pub command_bytes_max: usize,
    /// Set by [`Caps::unauthenticated`]; names the error Redis gives.
    pub unauthenticated: bool,
}

impl Caps {
    /// The limits that apply before a client authenticated.
    pub fn unauthenticated(self) -> Caps {
        Caps {
            args_max: self.args_max.min(UNAUTH_ARGS_MAX),
            bulk_bytes_max: self.bulk_bytes_max.min(UNAUTH_BULK_BYTES_MAX),
            command_bytes_max: self.command_bytes_max,
            unauthenticated: true,
        }
    }
}

/// Why the stream cannot be read further. The text follows `Protocol error: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

fn error<T>(text: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(text.into()))
}

#[derive(Debug, Default)]
enum State {
    /// Between commands.
    #[default]
    Idle,
    /// Inside `*N`: `remaining` bulk strings to go; `len` is the next
    /// string's length once its `$len` line was read.
    Multibulk { remaining: usize, args: Vec<Bytes>, bytes: usize, len: Option<usize> },
}

/// Resumable command reader; one per connection.
#[derive(Debug, Default)]
pub struct Parser {
    state: State,
}

impl Parser {
    /// The next complete command at the front of `buf`, consuming its bytes;
    /// `None` if more bytes are needed. Empty commands (`*0`, blank inline
    /// lines) are skipped, as Redis does.
    pub fn next(&mut self, buf: &mut BytesMut, caps: Caps) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            if let State::Idle = self.state {
                if buf.is_empty() {
                    return Ok(None);
                }
                if buf[0] != b'*' {
                    match inline(buf, caps)? {
                        Some(args) if args.is_empty() => continue,
                        other => return Ok(other),
                    }
                }
                let Some(line) = take_line(buf, "mbulk count")? else { return Ok(None) };
                let n = parse_len(&line[1..]).ok_or_else(|| ProtocolError("invalid multibulk length".into()))?;
                if n <= 0 {
                    continue;
                }
                let n = n as usize;
                if n > caps.args_max {
                    let why = if caps.unauthenticated {
                        "unauthenticated multibulk length"
                    } else {
                        "invalid multibulk length"
                    };
                    return error(why);
                }
                let args = Vec::with_capacity(n.min(ARGS_PREALLOC_MAX));
                self.state = State::Multibulk { remaining: n, args, bytes: 0, len: None };
            }
            return self.multibulk(buf, caps);
        }
    }

    /// Bytes still missing before the pending bulk string is complete (0 if
    /// none is pending): how much the reader should ask for.
    pub fn wanted(&self, buffered: usize) -> usize {
        match &self.state {
            State::Multibulk { len: Some(len), .. } => (len + 2).saturating_sub(buffered),
            _ => 0,
        }
    }

    fn multibulk(&mut self, buf: &mut BytesMut, caps: Caps) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let State::Multibulk { remaining, args, bytes, len } = &mut self.state else {
            unreachable!("called inside a multibulk")
        };
        while *remaining > 0 {
            let n = match *len {
                Some(n) => n,
                None => {
                    let Some(line) = take_line(buf, "bulk count")? else { return Ok(None) };
                    if line.first() != Some(&b'$') {
                        let got = line.first().map_or('?', |b| printable(*b));
                        return error(format!("expected '$', got '{got}'"));
                    }
                    let n = parse_len(&line[1..]).filter(|n| *n >= 0).map(|n| n as usize);
                    let n = n.ok_or_else(|| ProtocolError("invalid bulk length".into()))?;
                    if n > caps.bulk_bytes_max {
                        let why =
                            if caps.unauthenticated { "unauthenticated bulk length" } else { "invalid bulk length" };
                        return error(why);
                    }
                    if *bytes + n > caps.command_bytes_max {
                        return error(format!("command larger than {} bytes", caps.command_bytes_max));
                    }
                    *len = Some(n);
                    n
                }
            };
            if buf.len() < n + 2 {
                return Ok(None);
            }
            if &buf[n..n + 2] != b"\r\n" {
                return error("expected CRLF after bulk string");
            }
            args.push(buf.split_to(n).freeze());
            buf.advance(2);
            *bytes += n;
            *remaining -= 1;
            *len = None;
        }
        let State::Multibulk { args, .. } = std::mem::take(&mut self.state) else { unreachable!() };
        Ok(Some(args))
    }
}

/// Splits off one `\r\n`-terminated line (without the terminator), or
/// `None` if it has not fully arrived.
fn take_line(buf: &mut BytesMut, what: &str) -> Result<Option<BytesMut>, ProtocolError> {
    let Some(nl) = memchr::memchr(b'\n', &buf[..buf.len().min(INLINE_BYTES_MAX + 2)]) else {
        if buf.len() > INLINE_BYTES_MAX {
            return error(format!("too big {what} string"));
        }
        return Ok(None);
    };
    if nl == 0 || buf[nl - 1] != b'\r' {
        return error(format!("expected CRLF after the {what}"));
    }
    let line = buf.split_to(nl - 1);
    buf.advance(2);
    Ok(Some(line))
}

/// A decimal length as Redis reads it: an optional `-`, digits only.
fn parse_len(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.first() {
        Some(b'-') => (true, &digits[1..]),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = digits.iter().fold(0i64, |v, d| v * 10 + (d - b'0') as i64);
    Some(if neg { -v } else { v })
}

fn printable(b: u8) -> char {
    if b.is_ascii_graphic() {
        b as char
    } else {
        '?'
    }
}

/// One inline command: a line split into words (`None` until the line is
/// complete). A bare `\n` ends a line too, as in Redis.
fn inline(buf: &mut BytesMut, caps: Caps) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(nl) = memchr::memchr(b'\n', &buf[..buf.len().min(INLINE_BYTES_MAX + 1)]) else {
        if buf.len() > INLINE_BYTES_MAX {
            return error("too big inline request");
        }
        return Ok(None);
    };
    let line = buf.split_to(nl + 1);
    let text = line.strip_suffix(b"\n").unwrap_or(&line);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let args = split_args(text).ok_or_else(|| ProtocolError("unbalanced quotes in request".into()))?;
    if args.len() > caps.args_max {
        return error("too many arguments in inline request");
    }
    Ok(Some(args))
}

/// Splits an inline line into arguments like Redis's `sdssplitargs`:
/// whitespace separates words; `"..."` understands `\n \r \t \b \a \\ \" \xHH`;
/// `'...'` understands `\'`; a closing quote must be followed by a space or
/// the end. `None` for unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Bytes>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Some(args);
        }
        let mut word = Vec::new();
        match line[i] {
            b'"' => i = quoted_double(line, i + 1, &mut word)?,
            b'\'' => i = quoted_single(line, i + 1, &mut word)?,
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    word.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(word));
    }
}

/// After a closing quote: the index past it, if a space or the end follows.
fn after_quote(line: &[u8], close: usize) -> Option<usize> {
    match line.get(close + 1) {
        None => Some(close + 1),
        Some(b) if b.is_ascii_whitespace() => Some(close + 1),
        Some(_) => None,
    }
}

fn quoted_double(line: &[u8], mut i: usize, word: &mut Vec<u8>) -> Option<usize> {
    loop {
        match *line.get(i)? {
            b'"' => return after_quote(line, i),
            b'\\' if line.len() > i + 3 && line[i + 1] == b'x' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(line[i + 2]), hex(line[i + 3])) {
                    (Some(h), Some(l)) => {
                        word.push((h * 16 + l) as u8);
                        i += 4;
                    }
                    _ => {
                        word.push(b'x');
                        i += 2;
                    }
                }
            }
            b'\\' if i + 1 < line.len() => {
                word.push(match line[i + 1] {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 8,
                    b'a' => 7,
                    other => other,
                });
                i += 2;
            }
            b => {
                word.push(b);
                i += 1;
            }
        }
    }
}

fn quoted_single(line: &[u8], mut i: usize, word: &mut Vec<u8>) -> Option<usize> {
    loop {
        match *line.get(i)? {
            b'\'' => return after_quote(line, i),
            b'\\' if line.get(i + 1) == Some(&b'\'') => {
                word.push(b'\'');
                i += 2;
            }
            b => {
                word.push(b);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
