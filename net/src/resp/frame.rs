//! Replies and their bytes in RESP2 and RESP3.
//!
//! A handler builds a [`Frame`] once; [`Frame::encode`] writes it in the
//! protocol the connection spoke when the command was read. RESP3 types have
//! a RESP2 form, as Redis sends them: a map is a flat array of keys and
//! values, a set an array, a double a bulk string, a boolean an integer, a
//! verbatim string a bulk string, and both nulls `$-1` / `*-1`.

use bytes::Bytes;

/// The protocol version a connection speaks (`HELLO 2|3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Resp2,
    Resp3,
}

impl Proto {
    pub fn number(self) -> i64 {
        match self {
            Proto::Resp2 => 2,
            Proto::Resp3 => 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `+text`: must not contain CR or LF.
    Simple(&'static str),
    /// `-PREFIX message`: the first word is the error code clients match.
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    /// A missing value (`$-1` in RESP2).
    Null,
    /// A missing array (`*-1` in RESP2).
    NullArray,
    Array(Vec<Frame>),
    Map(Vec<(Frame, Frame)>),
    Set(Vec<Frame>),
    Double(f64),
    Boolean(bool),
    /// Text with a three-letter format (`txt`), e.g. INFO's answer.
    Verbatim(String),
}

pub const OK: Frame = Frame::Simple("OK");

impl Frame {
    pub fn bulk(text: impl Into<String>) -> Frame {
        Frame::Bulk(Bytes::from(text.into()))
    }

    /// An error; line breaks (from echoed client input) become spaces when
    /// it is written.
    pub fn error(text: impl Into<String>) -> Frame {
        Frame::Error(text.into())
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Frame::Error(_))
    }

    /// Appends the frame's bytes in protocol `proto`.
    pub fn encode(&self, proto: Proto, out: &mut Vec<u8>) {
        let resp3 = proto == Proto::Resp3;
        match self {
            Frame::Simple(s) => line(out, b'+', s.as_bytes()),
            Frame::Error(s) => line(out, b'-', one_line(s).as_bytes()),
            Frame::Integer(n) => header(out, b':', *n),
            Frame::Bulk(b) => bulk(out, b'$', b),
            Frame::Null if resp3 => out.extend_from_slice(b"_\r\n"),
            Frame::Null => out.extend_from_slice(b"$-1\r\n"),
            Frame::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Frame::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Frame::Array(items) => {
                header(out, b'*', items.len() as i64);
                items.iter().for_each(|f| f.encode(proto, out));
            }
            Frame::Set(items) => {
                header(out, if resp3 { b'~' } else { b'*' }, items.len() as i64);
                items.iter().for_each(|f| f.encode(proto, out));
            }
            Frame::Map(pairs) => {
                if resp3 {
                    header(out, b'%', pairs.len() as i64);
                } else {
                    header(out, b'*', 2 * pairs.len() as i64);
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Frame::Double(d) if resp3 => line(out, b',', format_double(*d).as_bytes()),
            Frame::Double(d) => bulk(out, b'$', format_double(*d).as_bytes()),
            Frame::Boolean(b) if resp3 => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Frame::Boolean(b) => header(out, b':', *b as i64),
            Frame::Verbatim(text) if resp3 => {
                header(out, b'=', (text.len() + 4) as i64);
                out.extend_from_slice(b"txt:");
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Frame::Verbatim(text) => bulk(out, b'$', text.as_bytes()),
        }
    }
}

fn line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
    out.push(kind);
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, kind: u8, n: i64) {
    out.push(kind);
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    header(out, kind, data.len() as i64);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A line break inside an error would desynchronise the client: replace it.
fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\r', '\n']) {
        std::borrow::Cow::Owned(s.replace(['\r', '\n'], " "))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Redis's spelling of doubles: `inf`, `-inf`, `nan`, else the shortest
/// text that reads back to the same value.
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        "nan".into()
    } else if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{d}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: &Frame, p: Proto) -> String {
        let mut out = Vec::new();
        f.encode(p, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn scalars_in_both_protocols() {
        let cases: &[(Frame, &str, &str)] = &[
            (OK, "+OK\r\n", "+OK\r\n"),
            (Frame::error("ERR x\ny"), "-ERR x y\r\n", "-ERR x y\r\n"),
            (Frame::Integer(-42), ":-42\r\n", ":-42\r\n"),
            (Frame::Integer(i64::MIN), ":-9223372036854775808\r\n", ":-9223372036854775808\r\n"),
            (Frame::bulk("hi"), "$2\r\nhi\r\n", "$2\r\nhi\r\n"),
            (Frame::bulk(""), "$0\r\n\r\n", "$0\r\n\r\n"),
            (Frame::Null, "$-1\r\n", "_\r\n"),
            (Frame::NullArray, "*-1\r\n", "_\r\n"),
            (Frame::Double(1.5), "$3\r\n1.5\r\n", ",1.5\r\n"),
            (Frame::Double(f64::NEG_INFINITY), "$4\r\n-inf\r\n", ",-inf\r\n"),
            (Frame::Boolean(true), ":1\r\n", "#t\r\n"),
            (Frame::Verbatim("a:b".into()), "$3\r\na:b\r\n", "=7\r\ntxt:a:b\r\n"),
        ];
        for (f, two, three) in cases {
            assert_eq!(enc(f, Proto::Resp2), *two, "{f:?}");
            assert_eq!(enc(f, Proto::Resp3), *three, "{f:?}");
        }
    }

    #[test]
    fn aggregates_in_both_protocols() {
        let map = Frame::Map(vec![(Frame::bulk("proto"), Frame::Integer(3))]);
        assert_eq!(enc(&map, Proto::Resp2), "*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(enc(&map, Proto::Resp3), "%1\r\n$5\r\nproto\r\n:3\r\n");
        let set = Frame::Set(vec![Frame::Simple("a")]);
        assert_eq!(enc(&set, Proto::Resp2), "*1\r\n+a\r\n");
        assert_eq!(enc(&set, Proto::Resp3), "~1\r\n+a\r\n");
        let nested = Frame::Array(vec![Frame::Null, Frame::Array(vec![])]);
        assert_eq!(enc(&nested, Proto::Resp2), "*2\r\n$-1\r\n*0\r\n");
    }
}
