//! memcached's text protocol, the two commands kvbench sends:
//! `set <key> 0 <exptime> <bytes>\r\n<data>\r\n` (answered `STORED`) and
//! `get <key>\r\n` (answered `VALUE <key> <flags> <bytes>\r\n<data>\r\nEND`
//! on a hit, `END` on a miss).
//!
//! Invariant: a reply is consumed whole or not at all, so pipelined answers
//! stay aligned with requests; a reply line longer than [`LINE_BYTES_MAX`]
//! or a value longer than [`VALUE_BYTES_MAX`] is an error, not unbounded
//! buffering.

use crate::driver::Answer;
use crate::workload::Op;

/// Longest reply line: `VALUE` with a 250-byte key and three numbers, or an
/// error message, fits with room to spare.
pub const LINE_BYTES_MAX: usize = 2048;
/// Largest value accepted in a `VALUE` reply (memcached's item size limit
/// is at most 1 GiB; its default is 1 MiB).
pub const VALUE_BYTES_MAX: usize = 1 << 30;

/// Appends one request. Keys are sent as they are: memcached refuses
/// keys with spaces or control characters, and kvbench's keys have none.
/// A SET's `ttl_s` goes in the exptime field (0: never expires).
pub fn request(out: &mut Vec<u8>, op: Op, key: &[u8], value: &[u8], ttl_s: Option<u64>) {
    match op {
        Op::Set => {
            // memcached reads an exptime over 30 days as a Unix time.
            let exptime = ttl_s.unwrap_or(0);
            assert!(exptime <= crate::workload::TTL_SECONDS_MAX, "TTL {exptime} s checked at start");
            out.extend_from_slice(b"set ");
            out.extend_from_slice(key);
            out.extend_from_slice(format!(" 0 {exptime} {}\r\n", value.len()).as_bytes());
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        Op::Get => {
            out.extend_from_slice(b"get ");
            out.extend_from_slice(key);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Parses the reply at the front of `buf`: `Ok(None)` until it is complete,
/// else the answer and the bytes it used.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Answer, usize)>, String> {
    let Some(line_end) = find_crlf(buf)? else { return Ok(None) };
    let line = &buf[..line_end];
    let text = || String::from_utf8_lossy(line).into_owned();
    let after_line = line_end + 2;
    if line == b"STORED" {
        return Ok(Some((Answer::Ok, after_line)));
    }
    if line == b"END" {
        return Ok(Some((Answer::Miss, after_line)));
    }
    if line.starts_with(b"ERROR")
        || line.starts_with(b"CLIENT_ERROR")
        || line.starts_with(b"SERVER_ERROR")
        || matches!(line, b"NOT_STORED" | b"EXISTS" | b"NOT_FOUND")
    {
        return Ok(Some((Answer::Error(text()), after_line)));
    }
    let Some(rest) = line.strip_prefix(b"VALUE ") else {
        return Err(format!("unexpected memcached reply {:?}", text()));
    };
    // VALUE <key> <flags> <bytes> [<cas unique>]
    let fields: Vec<&[u8]> = rest.split(|b| *b == b' ').collect();
    let bytes: usize = fields
        .get(2)
        .and_then(|f| std::str::from_utf8(f).ok())
        .and_then(|f| f.parse().ok())
        .filter(|n| *n <= VALUE_BYTES_MAX)
        .ok_or_else(|| format!("malformed memcached VALUE line {:?}", text()))?;
    let data_end = after_line + bytes;
    let end = data_end + b"\r\nEND\r\n".len();
    if buf.len() < end {
        return Ok(None);
    }
    if &buf[data_end..end] != b"\r\nEND\r\n" {
        return Err(format!("memcached VALUE of {bytes} bytes not followed by END (one key per get)"));
    }
    Ok(Some((Answer::Ok, end)))
}

/// Position of the first CRLF, looking no further than a line can be.
fn find_crlf(buf: &[u8]) -> Result<Option<usize>, String> {
    let window = &buf[..buf.len().min(LINE_BYTES_MAX + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(i)),
        None if buf.len() > LINE_BYTES_MAX + 2 => Err(format!("memcached reply line longer than {LINE_BYTES_MAX}")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let mut out = Vec::new();
        request(&mut out, Op::Set, b"k1", b"hello", None);
        request(&mut out, Op::Get, b"k1", b"", None);
        request(&mut out, Op::Set, b"k2", b"hi", Some(600));
        assert_eq!(out, b"set k1 0 0 5\r\nhello\r\nget k1\r\nset k2 0 600 2\r\nhi\r\n");
    }

    #[test]
    fn replies_hit_miss_stored_and_errors() {
        let stream = b"STORED\r\nVALUE k1 0 5\r\nhello\r\nEND\r\nEND\r\nVALUE k 7 3 99\r\n\r\n\r\r\nEND\r\nSERVER_ERROR out of memory\r\n";
        let mut at = 0;
        let mut answers = Vec::new();
        while at < stream.len() {
            let (answer, used) = parse_reply(&stream[at..]).unwrap().expect("complete reply");
            answers.push(answer);
            at += used;
        }
        assert_eq!(
            answers,
            [Answer::Ok, Answer::Ok, Answer::Miss, Answer::Ok, Answer::Error("SERVER_ERROR out of memory".into())]
        );
        // The data may contain CRLF: framing is by the byte count.
        let hit = b"VALUE k1 0 5\r\nhello\r\nEND\r\n";
        for cut in 0..hit.len() {
            assert_eq!(parse_reply(&hit[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [&b"VALUE k1 0 x\r\n"[..], b"VALUE k1\r\n", b"WHAT\r\n", b"VALUE k 0 1\r\nab\r\nEND\r\n"] {
            assert!(parse_reply(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse_reply(&[b'a'; LINE_BYTES_MAX + 3]).is_err());
        assert_eq!(parse_reply(&[b'a'; LINE_BYTES_MAX]), Ok(None));
        let too_big = format!("VALUE k 0 {}\r\n", VALUE_BYTES_MAX + 1);
        assert!(parse_reply(too_big.as_bytes()).is_err());
    }
}
