//! Commands that give keys a time to live, read it, or remove it: SET's
//! expiry options (through `set_with_expiry`), SETEX, PSETEX, GETEX,
//! GETDEL, EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT (NX, XX, GT, LT), TTL, PTTL,
//! EXPIRETIME, PEXPIRETIME, PERSIST.
//!
//! Relative times become absolute here, with this node's clock; the shard's
//! state machine then decides everything else from the command alone (see
//! `engine/src/shard.rs`), so every replica agrees.

use std::rc::Rc;

use bytes::Bytes;
use kv_engine::{Command, Condition, ExpireWhen, Expiry as At, Outcome};
use kv_replication::keyspace::wall_clock_ms;

use super::keys::check_key;
use super::strings::{Expiry, SetIf, SetOptions};
use super::{int_arg, later, lower, now, syntax_error, Args, Exec};
use crate::mesh::{Op, Reply};
use crate::resp::exec;
use crate::resp::frame::{Frame, OK};
use crate::resp::session::Conn;

fn invalid_expire(command: &str) -> Frame {
    Frame::error(format!("ERR invalid expire time in '{command}' command"))
}

/// An expiry option as an absolute time in Unix milliseconds (KEEPTTL
/// keeps), refusing times that overflow as Redis does.
pub fn absolute(expiry: Expiry, command: &str) -> Result<At, Frame> {
    let now_ms = wall_clock_ms() as i64;
    let ms = match expiry {
        Expiry::KeepTtl => return Ok(At::Keep),
        Expiry::Ex(s) => s.checked_mul(1000).and_then(|ms| ms.checked_add(now_ms)),
        Expiry::Px(ms) => ms.checked_add(now_ms),
        Expiry::ExAt(s) => s.checked_mul(1000),
        Expiry::PxAt(ms) => Some(ms),
    };
    match ms {
        Some(ms) if ms > 0 => Ok(At::At(ms as u64)),
        _ => Err(invalid_expire(command)),
    }
}

/// Runs a write on `key`'s shard and hands back its outcome.
pub async fn write(conn: &Conn, key: &Bytes, command: Command) -> Result<Outcome, Frame> {
    match exec::run(conn, key, Op::Write(command)).await? {
        Reply::Outcome(o) => Ok(o),
        other => unreachable!("a write answered {other:?}"),
    }
}

fn previous(outcome: Outcome) -> Frame {
    match outcome {
        Outcome::Previous { value: Some(v), .. } => Frame::Bulk(v),
        Outcome::Previous { value: None, .. } => Frame::Null,
        other => unreachable!("a write with GET answered {other:?}"),
    }
}

/// SET with every option, as one replicated command (atomic GET included).
pub fn set(conn: &Rc<Conn>, key: Bytes, value: Bytes, o: SetOptions) -> Exec {
    let expiry = match o.expiry.map(|e| absolute(e, "set")).transpose() {
        Ok(e) => e.unwrap_or(At::Clear),
        Err(e) => return now(e),
    };
    let condition = match o.when {
        SetIf::Always => Condition::Always,
        SetIf::Absent => Condition::IfAbsent,
        SetIf::Exists => Condition::IfExists,
    };
    let conn = conn.clone();
    later(async move {
        let command = Command::Set { key: key.clone(), value, condition, expiry, get: o.get };
        match write(&conn, &key, command).await {
            Ok(outcome) if o.get => previous(outcome),
            Ok(Outcome::Written { .. }) => OK,
            Ok(Outcome::ConditionFailed { .. }) => Frame::Null,
            Ok(other) => unreachable!("a set answered {other:?}"),
            Err(e) => e,
        }
    })
}

/// SETEX key seconds value / PSETEX key milliseconds value.
fn set_ex(conn: &Rc<Conn>, args: Args, millis: bool, name: &str) -> Exec {
    let n = match int_arg(&args[2]) {
        Ok(n) if n > 0 => n,
        Ok(_) => return now(invalid_expire(name)),
        Err(e) => return now(e),
    };
    let expiry = Some(if millis { Expiry::Px(n) } else { Expiry::Ex(n) });
    let options = SetOptions { when: SetIf::Always, get: false, expiry };
    if let Err(e) = check_key(conn, &args[1]) {
        return now(e);
    }
    set(conn, args[1].clone(), args[3].clone(), options)
}

pub fn setex(conn: &Rc<Conn>, args: Args) -> Exec {
    set_ex(conn, args, false, "setex")
}

pub fn psetex(conn: &Rc<Conn>, args: Args) -> Exec {
    set_ex(conn, args, true, "psetex")
}

/// Changes a key's TTL through the log; `get` answers the value.
fn expire_command(conn: &Rc<Conn>, key: Bytes, expiry: At, when: ExpireWhen, get: bool) -> Exec {
    if let Err(e) = check_key(conn, &key) {
        return now(e);
    }
    let conn = conn.clone();
    later(async move {
        let command = Command::Expire { key: key.clone(), expiry, when, get };
        match write(&conn, &key, command).await {
            Ok(outcome) if get => previous(outcome),
            Ok(Outcome::Integer(n)) => Frame::Integer(n),
            Ok(other) => unreachable!("an expire answered {other:?}"),
            Err(e) => e,
        }
    })
}

/// GETDEL: the value, removed in the same command (an expiry in the past
/// deletes, and answers what was there).
pub fn getdel(conn: &Rc<Conn>, args: Args) -> Exec {
    expire_command(conn, args[1].clone(), At::At(1), ExpireWhen::Always, true)
}

/// GETEX key [EX s | PX ms | EXAT s | PXAT ms | PERSIST].
pub fn getex(conn: &Rc<Conn>, args: Args) -> Exec {
    let expiry = match args.len() {
        2 => return super::strings::get(conn, args),
        3 if lower(&args[2]) == "persist" => At::Clear,
        4 => {
            let n = match int_arg(&args[3]) {
                Ok(n) if n > 0 => n,
                Ok(_) => return now(invalid_expire("getex")),
                Err(e) => return now(e),
            };
            let given = match lower(&args[2]).as_str() {
                "ex" => Expiry::Ex(n),
                "px" => Expiry::Px(n),
                "exat" => Expiry::ExAt(n),
                "pxat" => Expiry::PxAt(n),
                _ => return now(syntax_error()),
            };
            match absolute(given, "getex") {
                Ok(at) => at,
                Err(e) => return now(e),
            }
        }
        _ => return now(syntax_error()),
    };
    expire_command(conn, args[1].clone(), expiry, ExpireWhen::Always, true)
}

/// EXPIRE / PEXPIRE / EXPIREAT / PEXPIREAT key time [NX | XX | GT | LT].
fn expire_family(conn: &Rc<Conn>, args: Args, millis: bool, absolute_time: bool) -> Exec {
    let t = match int_arg(&args[2]) {
        Ok(t) => t,
        Err(e) => return now(e),
    };
    let mut when = ExpireWhen::Always;
    for word in &args[3..] {
        let next = match lower(word).as_str() {
            "nx" => ExpireWhen::IfNone,
            "xx" => ExpireWhen::IfSome,
            "gt" => ExpireWhen::IfLater,
            "lt" => ExpireWhen::IfEarlier,
            other => return now(Frame::error(format!("ERR Unsupported option {other}"))),
        };
        if when != ExpireWhen::Always && when != next {
            let both = |a, b| {
                matches!(
                    (a, b),
                    (ExpireWhen::IfLater, ExpireWhen::IfEarlier) | (ExpireWhen::IfEarlier, ExpireWhen::IfLater)
                )
            };
            return now(Frame::error(if both(when, next) {
                "ERR GT and LT options at the same time are not compatible"
            } else {
                "ERR NX and XX, GT or LT options at the same time are not compatible"
            }));
        }
        when = next;
    }
    let ms = if millis { Some(t) } else { t.checked_mul(1000) };
    let ms = match ms {
        Some(ms) if absolute_time => Some(ms),
        Some(ms) => ms.checked_add(wall_clock_ms() as i64),
        None => None,
    };
    let name = match (millis, absolute_time) {
        (false, false) => "expire",
        (true, false) => "pexpire",
        (false, true) => "expireat",
        (true, true) => "pexpireat",
    };
    let Some(ms) = ms else { return now(invalid_expire(name)) };
    // A time at or before now deletes the key (as Redis does); times before
    // 1970 count as "long ago".
    expire_command(conn, args[1].clone(), At::At(ms.max(1) as u64), when, false)
}

pub fn expire(conn: &Rc<Conn>, args: Args) -> Exec {
    expire_family(conn, args, false, false)
}

pub fn pexpire(conn: &Rc<Conn>, args: Args) -> Exec {
    expire_family(conn, args, true, false)
}

pub fn expireat(conn: &Rc<Conn>, args: Args) -> Exec {
    expire_family(conn, args, false, true)
}

pub fn pexpireat(conn: &Rc<Conn>, args: Args) -> Exec {
    expire_family(conn, args, true, true)
}

pub fn persist(conn: &Rc<Conn>, args: Args) -> Exec {
    expire_command(conn, args[1].clone(), At::Clear, ExpireWhen::Always, false)
}

/// What TTL-reading commands report.
#[derive(Clone, Copy)]
enum Report {
    /// Remaining seconds / milliseconds.
    Ttl { millis: bool },
    /// The absolute expiry in seconds / milliseconds.
    Time { millis: bool },
}

fn ttl_report(conn: &Rc<Conn>, args: Args, report: Report) -> Exec {
    let key = args[1].clone();
    if let Err(e) = check_key(conn, &key) {
        return now(e);
    }
    let conn = conn.clone();
    later(async move {
        let op = Op::Get { key: key.clone(), consistency: exec::read_consistency(&conn) };
        let stored = match exec::run(&conn, &key, op).await {
            Ok(Reply::Value(v)) => v,
            Ok(other) => unreachable!("a read answered {other:?}"),
            Err(e) => return e,
        };
        let Some(stored) = stored else { return Frame::Integer(-2) };
        if stored.expires_at_ms == 0 {
            return Frame::Integer(-1);
        }
        let at = stored.expires_at_ms as i64;
        Frame::Integer(match report {
            Report::Time { millis: true } => at,
            Report::Time { millis: false } => at / 1000,
            Report::Ttl { millis } => {
                let left = (at - wall_clock_ms() as i64).max(0);
                if millis {
                    left
                } else {
                    (left + 500) / 1000
                }
            }
        })
    })
}

pub fn ttl(conn: &Rc<Conn>, args: Args) -> Exec {
    ttl_report(conn, args, Report::Ttl { millis: false })
}

pub fn pttl(conn: &Rc<Conn>, args: Args) -> Exec {
    ttl_report(conn, args, Report::Ttl { millis: true })
}

pub fn expiretime(conn: &Rc<Conn>, args: Args) -> Exec {
    ttl_report(conn, args, Report::Time { millis: false })
}

pub fn pexpiretime(conn: &Rc<Conn>, args: Args) -> Exec {
    ttl_report(conn, args, Report::Time { millis: true })
}
