//! Commands over the whole key space: SCAN, KEYS, RANDOMKEY, FLUSHDB,
//! FLUSHALL (see `crate::keyspace`). In proxy mode they cover every shard;
//! in cluster mode only the shards this node leads, as a Redis Cluster node
//! answers for its own slots.

use std::collections::BTreeSet;
use std::rc::Rc;

use super::{int_arg, later, lower, now, syntax_error, Args, Exec};
use crate::keyspace;
use crate::resp::exec::core_error;
use crate::resp::frame::{Frame, OK};
use crate::resp::session::Conn;
use crate::resp::topology;
use crate::service::RespMode;

/// Largest COUNT honoured per SCAN call.
const SCAN_COUNT_MAX: i64 = 10_000;

/// The shards this node answers for, or `None` for all of them.
async fn scope(conn: &Conn) -> Result<Option<BTreeSet<u32>>, Frame> {
    if conn.svc.frontend.resp_mode == RespMode::Proxy {
        return Ok(None);
    }
    let view = topology::node_view(&conn.svc).await.map_err(|e| core_error(e, false))?;
    Ok(Some(view.groups.iter().filter(|g| g.is_leader).map(|g| g.shard).collect()))
}

/// SCAN cursor [MATCH pattern] [COUNT n] [TYPE type].
pub fn scan(conn: &Rc<Conn>, args: Args) -> Exec {
    let Ok(cursor) = std::str::from_utf8(&args[1]).unwrap_or("").parse::<u64>() else {
        return now(Frame::error("ERR invalid cursor"));
    };
    let (mut pattern, mut count, mut only_strings) = (None, 10i64, true);
    let mut i = 2;
    while i < args.len() {
        let Some(value) = args.get(i + 1) else { return now(syntax_error()) };
        match lower(&args[i]).as_str() {
            "match" => pattern = Some(value.clone()),
            "count" => match int_arg(value) {
                Ok(n) if n >= 1 => count = n.min(SCAN_COUNT_MAX),
                Ok(_) => return now(syntax_error()),
                Err(e) => return now(e),
            },
            // Every key holds a string.
            "type" => only_strings = lower(value) == "string",
            _ => return now(syntax_error()),
        }
        i += 2;
    }
    let conn = conn.clone();
    later(async move {
        let shards = match scope(&conn).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        let pattern = pattern.as_deref();
        match keyspace::scan(&conn.svc, cursor, count as u32, pattern, shards.as_ref()).await {
            Ok((next, keys)) => {
                let keys = if only_strings { keys.into_iter().map(Frame::Bulk).collect() } else { Vec::new() };
                Frame::Array(vec![Frame::bulk(next.to_string()), Frame::Array(keys)])
            }
            Err(e) => core_error(e, false),
        }
    })
}

pub fn keys(conn: &Rc<Conn>, args: Args) -> Exec {
    let conn = conn.clone();
    later(async move {
        let shards = match scope(&conn).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        match keyspace::keys(&conn.svc, &args[1], shards.as_ref()).await {
            Ok(keys) => Frame::Array(keys.into_iter().map(Frame::Bulk).collect()),
            Err(e) => core_error(e, false),
        }
    })
}

pub fn randomkey(conn: &Rc<Conn>, _: Args) -> Exec {
    let conn = conn.clone();
    later(async move {
        let seed = rand::random::<u64>();
        match keyspace::random_key(&conn.svc, seed).await {
            Ok(Some(key)) => Frame::Bulk(key),
            Ok(None) => Frame::Null,
            Err(e) => core_error(e, false),
        }
    })
}

/// FLUSHDB / FLUSHALL [ASYNC | SYNC]: both remove every key (there is one
/// database); removal is always synchronous.
pub fn flush(conn: &Rc<Conn>, args: Args) -> Exec {
    if args.len() > 2 || args.get(1).is_some_and(|a| !matches!(lower(a).as_str(), "async" | "sync")) {
        return now(syntax_error());
    }
    let conn = conn.clone();
    later(async move {
        match keyspace::flush(&conn.svc).await {
            Ok(_) => OK,
            Err(e) => core_error(e, true),
        }
    })
}
