//! String commands on the shard operations: GET, SET (NX, XX, GET), SETNX,
//! GETSET, STRLEN, GETRANGE, MGET, MSET.
//!
//! `SET ... GET` reads the old value and writes with a compare-and-set on
//! its version (or put-if-absent), retrying if another write came between:
//! the swap is atomic, as in Redis. Expiry options are parsed but refused
//! until keys can expire.

use std::rc::Rc;

use bytes::Bytes;
use kv_engine::{Command, Condition, Outcome};

use super::keys::{self, check_key, check_keys, fan_out, get_op, read_one};
use super::{int_arg, later, lower, now, syntax_error, Args, Exec};
use crate::mesh::{Op, Reply};
use crate::resp::frame::{Frame, OK};
use crate::resp::session::Conn;
use crate::resp::{exec, stats};

/// Rounds of read-then-compare-and-set `SET ... GET` tries while other
/// writes keep changing the key.
const SWAP_ATTEMPTS_MAX: usize = 16;

/// When SET writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetIf {
    Always,
    /// NX: only if the key is absent.
    Absent,
    /// XX: only if it exists.
    Exists,
}

/// An expiry option of SET, as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Ex(i64),
    Px(i64),
    ExAt(i64),
    PxAt(i64),
    KeepTtl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetOptions {
    pub when: SetIf,
    pub get: bool,
    pub expiry: Option<Expiry>,
}

/// Parses SET's options (`args` after the value) as Redis does.
pub fn parse_set_options(args: &[Bytes]) -> Result<SetOptions, Frame> {
    let mut o = SetOptions { when: SetIf::Always, get: false, expiry: None };
    let mut i = 0;
    while i < args.len() {
        let word = lower(&args[i]);
        let next = args.get(i + 1);
        match (word.as_str(), next) {
            ("nx", _) if o.when != SetIf::Exists => o.when = SetIf::Absent,
            ("xx", _) if o.when != SetIf::Absent => o.when = SetIf::Exists,
            ("get", _) => o.get = true,
            ("keepttl", _) if o.expiry.is_none() => o.expiry = Some(Expiry::KeepTtl),
            ("ex" | "px" | "exat" | "pxat", Some(value)) if o.expiry.is_none() => {
                let n = int_arg(value)?;
                if n <= 0 {
                    return Err(Frame::error("ERR invalid expire time in 'set' command"));
                }
                o.expiry = Some(match word.as_str() {
                    "ex" => Expiry::Ex(n),
                    "px" => Expiry::Px(n),
                    "exat" => Expiry::ExAt(n),
                    _ => Expiry::PxAt(n),
                });
                i += 1;
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    Ok(o)
}

pub fn check_value(conn: &Conn, value: &[u8]) -> Result<(), Frame> {
    let max = conn.svc.limits.value_bytes_max;
    if value.len() > max {
        return Err(Frame::error(format!(
            "ERR string exceeds maximum allowed size (value of {} bytes, limit {max} bytes)",
            value.len()
        )));
    }
    Ok(())
}

/// A read's answer as a bulk string or null, counted as a hit or a miss.
fn value_frame(conn: &Conn, value: Option<Bytes>) -> Frame {
    match value {
        Some(v) => {
            stats::add(&conn.counters.keyspace_hits, 1);
            Frame::Bulk(v)
        }
        None => {
            stats::add(&conn.counters.keyspace_misses, 1);
            Frame::Null
        }
    }
}

pub fn get(conn: &Rc<Conn>, args: Args) -> Exec {
    let c = conn.clone();
    read_one(conn, args[1].clone(), move |v| value_frame(&c, v))
}

pub fn strlen(conn: &Rc<Conn>, args: Args) -> Exec {
    read_one(conn, args[1].clone(), |v| Frame::Integer(v.map_or(0, |v| v.len() as i64)))
}

pub fn getrange(conn: &Rc<Conn>, args: Args) -> Exec {
    let (start, end) = match (int_arg(&args[2]), int_arg(&args[3])) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => return now(e),
    };
    read_one(conn, args[1].clone(), move |v| Frame::Bulk(range(&v.unwrap_or_default(), start, end)))
}

/// Redis's GETRANGE arithmetic: negative offsets count from the end, the
/// range is clamped to the value, and an empty range is "".
pub fn range(value: &Bytes, start: i64, end: i64) -> Bytes {
    let len = value.len() as i64;
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return Bytes::new();
    }
    let start = if start < 0 { (len + start).max(0) } else { start };
    let end = if end < 0 { (len + end).max(0) } else { end.min(len - 1) };
    if start > end {
        return Bytes::new();
    }
    value.slice(start as usize..=end as usize)
}

pub fn set(conn: &Rc<Conn>, args: Args) -> Exec {
    let options = match parse_set_options(&args[3..]) {
        Ok(o) => o,
        Err(e) => return now(e),
    };
    if let Err(e) = check_key(conn, &args[1]).and_then(|()| check_value(conn, &args[2])) {
        return now(e);
    }
    super::ttl::set(conn, args[1].clone(), args[2].clone(), options)
}

pub fn setnx(conn: &Rc<Conn>, args: Args) -> Exec {
    let options = SetOptions { when: SetIf::Absent, get: false, expiry: None };
    into_integer(write(conn, args[1].clone(), args[2].clone(), options))
}

pub fn getset(conn: &Rc<Conn>, args: Args) -> Exec {
    let options = SetOptions { when: SetIf::Always, get: true, expiry: None };
    if let Err(e) = check_key(conn, &args[1]).and_then(|()| check_value(conn, &args[2])) {
        return now(e);
    }
    super::ttl::set(conn, args[1].clone(), args[2].clone(), options)
}

/// SETNX answers 1 for a write and 0 for none where SET NX answers OK / nil.
fn into_integer(exec: Exec) -> Exec {
    let convert = |f: Frame| match f {
        Frame::Simple("OK") => Frame::Integer(1),
        Frame::Null => Frame::Integer(0),
        other => other,
    };
    match exec {
        Exec::Now(f) => Exec::Now(convert(f)),
        Exec::Later(fut) => later(async move { convert(fut.await) }),
    }
}

fn write(conn: &Rc<Conn>, key: Bytes, value: Bytes, options: SetOptions) -> Exec {
    if let Err(e) = check_key(conn, &key).and_then(|()| check_value(conn, &value)) {
        return now(e);
    }
    let conn = conn.clone();
    later(async move {
        let result = if options.get {
            swap(&conn, key, value, options.when).await
        } else {
            put(&conn, key, value, options.when).await
        };
        result.unwrap_or_else(|e| e)
    })
}

async fn put(conn: &Conn, key: Bytes, value: Bytes, when: SetIf) -> Result<Frame, Frame> {
    let condition = match when {
        SetIf::Always => Condition::Always,
        SetIf::Absent => Condition::IfAbsent,
        SetIf::Exists => Condition::IfExists,
    };
    let op = Op::Write(Command::Put { key: key.clone(), value, condition });
    Ok(match exec::run(conn, &key, op).await? {
        Reply::Outcome(Outcome::Written { .. }) => OK,
        Reply::Outcome(Outcome::ConditionFailed { .. }) => Frame::Null,
        other => unreachable!("a put answered {other:?}"),
    })
}

/// SET with GET: the old value (or nil), having written unless the
/// condition said not to.
async fn swap(conn: &Conn, key: Bytes, value: Bytes, when: SetIf) -> Result<Frame, Frame> {
    for _ in 0..SWAP_ATTEMPTS_MAX {
        let old = match exec::run(conn, &key, get_op(conn, &key)).await? {
            Reply::Value(v) => v,
            other => unreachable!("a read answered {other:?}"),
        };
        let condition = match (&old, when) {
            (Some(old), SetIf::Absent) => return Ok(Frame::Bulk(old.value.clone())),
            (None, SetIf::Exists) => return Ok(Frame::Null),
            (Some(old), _) => Condition::IfVersion(old.version),
            (None, _) => Condition::IfAbsent,
        };
        let op = Op::Write(Command::Put { key: key.clone(), value: value.clone(), condition });
        match exec::run(conn, &key, op).await? {
            Reply::Outcome(Outcome::Written { .. }) => return Ok(old.map_or(Frame::Null, |o| Frame::Bulk(o.value))),
            Reply::Outcome(Outcome::ConditionFailed { .. }) => continue,
            other => unreachable!("a put answered {other:?}"),
        }
    }
    Err(Frame::error("TRYAGAIN the key kept changing during SET ... GET; retry"))
}

pub fn mget(conn: &Rc<Conn>, args: Args) -> Exec {
    if let Err(e) = check_keys(conn, args[1..].iter()) {
        return now(e);
    }
    let conn = conn.clone();
    later(async move {
        let ops = args[1..].iter().map(|key| (key.clone(), get_op(&conn, key))).collect();
        let mut values = Vec::with_capacity(args.len() - 1);
        for answer in fan_out(&conn, ops).await {
            match answer {
                Ok(Reply::Value(v)) => values.push(value_frame(&conn, v.map(|s| s.value))),
                Ok(other) => unreachable!("a read answered {other:?}"),
                Err(e) => return e,
            }
        }
        Frame::Array(values)
    })
}

pub fn mset(conn: &Rc<Conn>, args: Args) -> Exec {
    if args.len().is_multiple_of(2) {
        return now(Frame::error("ERR wrong number of arguments for 'mset' command"));
    }
    let pairs: Vec<(Bytes, Bytes)> = args[1..].chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
    let checked = check_keys(conn, pairs.iter().map(|(k, _)| k))
        .and_then(|()| pairs.iter().try_for_each(|(_, v)| check_value(conn, v)));
    if let Err(e) = checked {
        return now(e);
    }
    let conn = conn.clone();
    later(async move {
        // The last value of a key named twice wins, as in Redis: only it
        // is written (concurrent writes of one key could land either way).
        let keys: Vec<Bytes> = pairs.iter().map(|(k, _)| k.clone()).collect();
        let last: std::collections::HashMap<Bytes, Bytes> = pairs.into_iter().collect();
        let ops = keys::unique(&keys)
            .into_iter()
            .map(|key| {
                let value = last[&key].clone();
                (key.clone(), Op::Write(Command::Put { key, value, condition: Condition::Always }))
            })
            .collect();
        for answer in fan_out(&conn, ops).await {
            if let Err(e) = answer {
                return e;
            }
        }
        OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::from(w.to_string())).collect()
    }

    #[test]
    fn set_options() {
        let o = parse_set_options(&args(&["nx", "GET"])).unwrap();
        assert_eq!(o, SetOptions { when: SetIf::Absent, get: true, expiry: None });
        assert_eq!(parse_set_options(&args(&["EX", "10"])).unwrap().expiry, Some(Expiry::Ex(10)));
        assert_eq!(parse_set_options(&args(&["keepttl"])).unwrap().expiry, Some(Expiry::KeepTtl));
        for bad in [&["nx", "xx"][..], &["ex"], &["ex", "1", "px", "1"], &["bogus"], &["keepttl", "ex", "1"]] {
            assert_eq!(parse_set_options(&args(bad)), Err(syntax_error()), "{bad:?}");
        }
        assert!(parse_set_options(&args(&["ex", "0"])).unwrap_err().is_error());
        assert!(parse_set_options(&args(&["px", "x"])).unwrap_err().is_error());
    }

    #[test]
    fn getrange_matches_redis() {
        let v = Bytes::from("This is a string");
        let cases = [((0, 3), "This"), ((-3, -1), "ing"), ((0, -1), "This is a string"), ((10, 100), "string")];
        for ((s, e), want) in cases {
            assert_eq!(range(&v, s, e), want, "{s} {e}");
        }
        assert_eq!(range(&v, 5, 2), "");
        assert_eq!(range(&v, -1, -5), "");
        assert_eq!(range(&v, -100, 1), "Th");
        assert_eq!(range(&Bytes::new(), 0, -1), "");
    }
}
