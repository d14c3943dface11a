//! Running one shard operation for a RESP command, as the routing mode says.
//!
//! - Proxy mode: wherever the shard's leader is; this node forwards.
//! - Cluster mode: only on this node. A node that does not lead the key's
//!   shard answers `-MOVED slot host:port` naming the leader (or, for a
//!   shard it holds no replica of, the shard's preferred leader, which
//!   redirects again if need be). After READONLY a replica serves reads
//!   itself, possibly stale.
//!
//! Errors map onto the codes Redis clients act on: `TRYAGAIN` (retry
//! soon), `CLUSTERDOWN` (no leader reachable), `MISCONF` (the WAL refuses
//! writes, as Redis says when it cannot persist), `ERR` otherwise. A write
//! whose outcome is unknown is an `ERR`, not `TRYAGAIN`, so that clients
//! do not replay it blindly.

use bytes::Bytes;
use kv_engine::slot;
use kv_replication::{Consistency, CoreError};

use super::frame::Frame;
use super::session::Conn;
use super::topology;
use crate::mesh::{Op, Reply};
use crate::service::RespMode;

/// Runs `op` on `key`'s shard; an error is the frame to answer.
pub async fn run(conn: &Conn, key: &Bytes, op: Op) -> Result<Reply, Frame> {
    let svc = &conn.svc;
    let write = matches!(op, Op::Write(_));
    match svc.frontend.resp_mode {
        RespMode::Proxy => svc.execute(key, op).await.map_err(|e| core_error(e, write)),
        RespMode::Cluster => {
            let shard = svc.layout.shard_of_key(key);
            if !svc.layout.hosts(shard) {
                return Err(moved(conn, key, svc.layout.replicas_of(shard)[0]));
            }
            match svc.execute_here(key, op).await {
                Err(CoreError::NotLeader { leader: Some(leader) }) if leader != svc.layout.node_id => {
                    Err(moved(conn, key, leader))
                }
                other => other.map_err(|e| core_error(e, write)),
            }
        }
    }
}

/// How fresh this connection's reads must be.
pub fn read_consistency(conn: &Conn) -> Consistency {
    if conn.readonly.get() {
        Consistency::Stale
    } else {
        Consistency::Lease
    }
}

/// A read of `key` answered at once when this core can (no waiting, no
/// forwarding); `None` means [`run`] it.
pub fn try_read_now(conn: &Conn, key: &Bytes) -> Option<Reply> {
    conn.svc.try_read_now(key, read_consistency(conn))
}

/// In cluster mode, a CROSSSLOT error unless every key hashes to one slot;
/// proxy mode runs keys anywhere.
pub fn same_slot<'a>(conn: &Conn, keys: impl IntoIterator<Item = &'a Bytes>) -> Result<(), Frame> {
    if conn.svc.frontend.resp_mode == RespMode::Proxy {
        return Ok(());
    }
    let mut slots = keys.into_iter().map(|k| slot::slot_of(k));
    let first = slots.next();
    if slots.any(|s| Some(s) != first) {
        return Err(Frame::error("CROSSSLOT Keys in request don't hash to the same slot"));
    }
    Ok(())
}

fn moved(conn: &Conn, key: &[u8], node: u64) -> Frame {
    let slot = slot::slot_of(key);
    match topology::resp_endpoint(&conn.svc, node) {
        Some((host, port)) if host.contains(':') => Frame::error(format!("MOVED {slot} [{host}]:{port}")),
        Some((host, port)) => Frame::error(format!("MOVED {slot} {host}:{port}")),
        None => Frame::error(format!(
            "CLUSTERDOWN slot {slot} is served by node {node}, whose RESP address is not known yet"
        )),
    }
}

/// The reply for a request the cores could not serve.
pub fn core_error(e: CoreError, write: bool) -> Frame {
    match e {
        CoreError::NotLeader { .. } => Frame::error(format!("TRYAGAIN {e}")),
        CoreError::Busy => Frame::error(format!("TRYAGAIN {e}")),
        CoreError::Dropped if !write => Frame::error(format!("TRYAGAIN {e}")),
        CoreError::Dropped => Frame::error(format!("ERR {e}")),
        CoreError::Unavailable(_) => Frame::error(format!("CLUSTERDOWN {e}")),
        CoreError::Poisoned(_) => Frame::error(format!("MISCONF {e}")),
        CoreError::ShuttingDown | CoreError::WrongCore(_) => Frame::error(format!("ERR {e}")),
        CoreError::OutOfMemory => Frame::error(format!("OOM {e}.")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_redis_codes() {
        let code = |f: Frame| match f {
            Frame::Error(s) => s.split(' ').next().unwrap().to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(code(core_error(CoreError::Busy, true)), "TRYAGAIN");
        assert_eq!(code(core_error(CoreError::Dropped, true)), "ERR");
        assert_eq!(code(core_error(CoreError::Dropped, false)), "TRYAGAIN");
        assert_eq!(code(core_error(CoreError::Unavailable("x".into()), false)), "CLUSTERDOWN");
        assert_eq!(code(core_error(CoreError::Poisoned("disk".into()), true)), "MISCONF");
        assert_eq!(code(core_error(CoreError::ShuttingDown, false)), "ERR");
        assert_eq!(code(core_error(CoreError::OutOfMemory, true)), "OOM");
    }
}
