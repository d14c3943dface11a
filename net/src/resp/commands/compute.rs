//! Commands whose result depends on the stored value, run as one
//! replicated command each so they are atomic: INCR, DECR, INCRBY, DECRBY,
//! INCRBYFLOAT, APPEND, SETRANGE; and the ones that move keys within a
//! shard: RENAME, RENAMENX, MSETNX.

use std::rc::Rc;

use bytes::Bytes;
use kv_engine::{Command, Outcome, Refusal};

use super::keys::check_key;
use super::ttl::write;
use super::{int_arg, later, now, Args, Exec};
use crate::resp::frame::{Frame, OK};
use crate::resp::session::Conn;

/// Longest offset SETRANGE accepts (Redis's 512 MiB string limit).
const SETRANGE_OFFSET_MAX: i64 = 512 * 1024 * 1024;

fn refused(r: Refusal) -> Frame {
    Frame::error(format!("ERR {r}"))
}

/// Runs `command` on `key`'s shard and turns its outcome into a reply.
fn run(conn: &Rc<Conn>, key: Bytes, command: Command, reply: fn(Outcome) -> Frame) -> Exec {
    if let Err(e) = check_key(conn, &key) {
        return now(e);
    }
    let conn = conn.clone();
    later(async move {
        match write(&conn, &key, command).await {
            Ok(Outcome::Refused(r)) => refused(r),
            Ok(o) => reply(o),
            Err(e) => e,
        }
    })
}

fn integer(o: Outcome) -> Frame {
    match o {
        Outcome::Integer(n) => Frame::Integer(n),
        other => unreachable!("a counter answered {other:?}"),
    }
}

fn incr_by(conn: &Rc<Conn>, key: Bytes, by: i64) -> Exec {
    run(conn, key.clone(), Command::Incr { key, by }, integer)
}

pub fn incr(conn: &Rc<Conn>, args: Args) -> Exec {
    incr_by(conn, args[1].clone(), 1)
}

pub fn decr(conn: &Rc<Conn>, args: Args) -> Exec {
    incr_by(conn, args[1].clone(), -1)
}

pub fn incrby(conn: &Rc<Conn>, args: Args) -> Exec {
    match int_arg(&args[2]) {
        Ok(by) => incr_by(conn, args[1].clone(), by),
        Err(e) => now(e),
    }
}

pub fn decrby(conn: &Rc<Conn>, args: Args) -> Exec {
    match int_arg(&args[2]) {
        Ok(i64::MIN) => now(Frame::error("ERR decrement would overflow")),
        Ok(by) => incr_by(conn, args[1].clone(), -by),
        Err(e) => now(e),
    }
}

pub fn incrbyfloat(conn: &Rc<Conn>, args: Args) -> Exec {
    let by = match kv_engine::shard::parse_float(&args[2]) {
        Some(by) => by,
        None => return now(Frame::error("ERR value is not a valid float")),
    };
    let key = args[1].clone();
    run(conn, key.clone(), Command::IncrFloat { key, by }, |o| match o {
        Outcome::Bulk(b) => Frame::Bulk(b),
        other => unreachable!("INCRBYFLOAT answered {other:?}"),
    })
}

pub fn append(conn: &Rc<Conn>, args: Args) -> Exec {
    let (key, value) = (args[1].clone(), args[2].clone());
    let length_max = conn.svc.limits.value_bytes_max as u64;
    run(conn, key.clone(), Command::Append { key, value, length_max }, integer)
}

pub fn setrange(conn: &Rc<Conn>, args: Args) -> Exec {
    let offset = match int_arg(&args[2]) {
        Ok(o) if (0..SETRANGE_OFFSET_MAX).contains(&o) => o as u64,
        Ok(_) => return now(Frame::error("ERR offset is out of range")),
        Err(e) => return now(e),
    };
    let (key, value) = (args[1].clone(), args[3].clone());
    let length_max = conn.svc.limits.value_bytes_max as u64;
    if offset + value.len() as u64 > length_max {
        return now(refused(Refusal::TooLarge));
    }
    run(conn, key.clone(), Command::SetRange { key, offset, value, length_max }, integer)
}

/// Keys that must be changed together must live in one shard (one Raft
/// group makes the change atomic); in cluster mode, in one slot.
fn one_shard(conn: &Conn, keys: &[&Bytes]) -> Result<(), Frame> {
    crate::resp::exec::same_slot(conn, keys.iter().copied())?;
    let shard = conn.svc.layout.shard_of_key(keys[0]);
    if keys.iter().any(|k| conn.svc.layout.shard_of_key(k) != shard) {
        return Err(Frame::error("CROSSSLOT Keys in request don't hash to the same slot"));
    }
    Ok(())
}

fn rename_command(conn: &Rc<Conn>, args: Args, if_absent: bool) -> Exec {
    let (from, to) = (args[1].clone(), args[2].clone());
    if let Err(e) = check_key(conn, &to).and_then(|()| one_shard(conn, &[&from, &to])) {
        return now(e);
    }
    let reply = if if_absent { integer } else { |_| OK };
    run(conn, from.clone(), Command::Rename { from, to, if_absent }, reply)
}

pub fn rename(conn: &Rc<Conn>, args: Args) -> Exec {
    rename_command(conn, args, false)
}

pub fn renamenx(conn: &Rc<Conn>, args: Args) -> Exec {
    rename_command(conn, args, true)
}

pub fn msetnx(conn: &Rc<Conn>, args: Args) -> Exec {
    if args.len().is_multiple_of(2) {
        return now(Frame::error("ERR wrong number of arguments for 'msetnx' command"));
    }
    let pairs: Vec<(Bytes, Bytes)> = args[1..].chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
    let keys: Vec<&Bytes> = pairs.iter().map(|(k, _)| k).collect();
    for (k, v) in &pairs {
        if let Err(e) = check_key(conn, k).and_then(|()| super::strings::check_value(conn, v)) {
            return now(e);
        }
    }
    if let Err(e) = one_shard(conn, &keys) {
        return now(e);
    }
    let first = pairs[0].0.clone();
    run(conn, first, Command::MultiPut { pairs, if_absent: true }, integer)
}
