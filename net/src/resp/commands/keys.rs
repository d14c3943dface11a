//! Key commands on the shard operations: DEL/UNLINK, EXISTS, TYPE, and the
//! fan-out that multi-key commands share: one operation per key, run
//! concurrently on whichever cores and nodes hold them (at most
//! [`FAN_OUT_MAX`] at once), answers gathered in the order of the keys.
//!
//! Multi-key commands are not atomic across shards: each key is one write
//! of its own shard.

use std::rc::Rc;

use bytes::Bytes;
use kv_engine::{Command, Condition, Outcome};

use super::{later, now, Args, Exec};
use crate::mesh::{Op, Reply};
use crate::resp::exec;
use crate::resp::frame::Frame;
use crate::resp::session::Conn;

/// Operations of one multi-key command in flight at once: enough to keep
/// every core busy, few enough not to fill a shard's queue of waiting writes.
pub const FAN_OUT_MAX: usize = 1024;

/// The error frame for a key over the limit, if it is.
pub fn check_key(conn: &Conn, key: &[u8]) -> Result<(), Frame> {
    let max = conn.svc.limits.key_bytes_max;
    if key.len() > max {
        return Err(Frame::error(format!("ERR key of {} bytes exceeds the limit of {max} bytes", key.len())));
    }
    Ok(())
}

/// Checks every key's size and, in cluster mode, that they share a slot.
pub fn check_keys<'a>(conn: &Conn, keys: impl Iterator<Item = &'a Bytes> + Clone) -> Result<(), Frame> {
    keys.clone().try_for_each(|k| check_key(conn, k))?;
    exec::same_slot(conn, keys)
}

/// A read of `key` for this connection.
pub fn get_op(conn: &Conn, key: &Bytes) -> Op {
    Op::Get { key: key.clone(), consistency: exec::read_consistency(conn) }
}

/// Runs one operation per key, concurrently, answers in order.
pub async fn fan_out(conn: &Rc<Conn>, ops: Vec<(Bytes, Op)>) -> Vec<Result<Reply, Frame>> {
    let mut answers = Vec::with_capacity(ops.len());
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let tasks: Vec<_> = ops
            .by_ref()
            .take(FAN_OUT_MAX)
            .map(|(key, op)| {
                let conn = conn.clone();
                glommio::spawn_local(async move {
                    if let Op::Get { .. } = op {
                        if let Some(reply) = exec::try_read_now(&conn, &key) {
                            return Ok(reply);
                        }
                    }
                    exec::run(&conn, &key, op).await
                })
            })
            .collect();
        for t in tasks {
            answers.push(t.await);
        }
    }
    answers
}

/// The keys in order of first appearance, each once.
pub fn unique(keys: &[Bytes]) -> Vec<Bytes> {
    let mut seen = std::collections::HashSet::new();
    keys.iter().filter(|k| seen.insert(*k)).cloned().collect()
}

pub fn del(conn: &Rc<Conn>, args: Args) -> Exec {
    if let Err(e) = check_keys(conn, args[1..].iter()) {
        return now(e);
    }
    let conn = conn.clone();
    later(async move {
        // A key named twice is deleted once and counted once, as in Redis.
        let ops = unique(&args[1..])
            .into_iter()
            .map(|key| (key.clone(), Op::Write(Command::Delete { key, condition: Condition::Always })))
            .collect();
        let mut deleted = 0;
        for answer in fan_out(&conn, ops).await {
            match answer {
                Ok(Reply::Outcome(Outcome::Deleted { .. })) => deleted += 1,
                Ok(_) => {}
                Err(e) => return e,
            }
        }
        Frame::Integer(deleted)
    })
}

pub fn exists(conn: &Rc<Conn>, args: Args) -> Exec {
    if let Err(e) = check_keys(conn, args[1..].iter()) {
        return now(e);
    }
    let conn = conn.clone();
    later(async move {
        // Every mention counts: EXISTS k k is 2 when k exists.
        let ops = args[1..].iter().map(|key| (key.clone(), get_op(&conn, key))).collect();
        let mut found = 0;
        for answer in fan_out(&conn, ops).await {
            match answer {
                Ok(Reply::Value(Some(_))) => found += 1,
                Ok(_) => {}
                Err(e) => return e,
            }
        }
        Frame::Integer(found)
    })
}

pub fn type_(conn: &Rc<Conn>, args: Args) -> Exec {
    read_one(conn, args[1].clone(), |value| Frame::Simple(if value.is_some() { "string" } else { "none" }))
}

/// Reads `key` and answers `answer(value)`: at once if this core can serve
/// the read, else after routing it.
pub fn read_one(conn: &Rc<Conn>, key: Bytes, answer: impl FnOnce(Option<Bytes>) -> Frame + 'static) -> Exec {
    if let Err(e) = check_key(conn, &key) {
        return now(e);
    }
    let value = |reply: Reply| match reply {
        Reply::Value(v) => v.map(|s| s.value),
        other => unreachable!("a read answered {other:?}"),
    };
    if let Some(reply) = exec::try_read_now(conn, &key) {
        return now(answer(value(reply)));
    }
    let conn = conn.clone();
    later(async move {
        let op = get_op(&conn, &key);
        match exec::run(&conn, &key, op).await {
            Ok(reply) => answer(value(reply)),
            Err(e) => e,
        }
    })
}
