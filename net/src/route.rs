//! Running an operation on the core that owns its shard, wherever the
//! shard's leader is.
//!
//! The owning core tries its own replica first. If that replica cannot
//! serve the request (it is not the leader, or a lease read found no valid
//! lease), the request goes to the leader this replica knows of, over the
//! peer link between the two nodes' owning cores. If no leader is known (an
//! election is under way) it waits for one, boundedly. A node that holds no
//! replica of the shard sends the request to the shard's replicas in
//! preference order. A request is forwarded at most [`HOPS_MAX`] times.
//!
//! A write is only forwarded when it was refused before being proposed
//! (`NotLeader`); a write whose fate is unknown (`Dropped`) is reported to
//! the client as a retryable error, never replayed here.
//!
//! Every forward has a deadline ([`FORWARD_WRITE_TIMEOUT`],
//! [`FORWARD_READ_TIMEOUT`]): a leader that was paused or cut off by a
//! network that drops packets never answers, and a write forwarded to it
//! ends as `Dropped` (RETRY) once the deadline passes; a read asks again.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_replication::{Core, CoreError, Layout};

use crate::memory::{Memory, EVICTION_WAIT, MEMORY_CYCLE};
use crate::mesh::{Op, Reply};
use crate::peer::Peers;

/// Forwards a request may take (a node without the shard → a replica →
/// its leader).
pub const HOPS_MAX: u8 = 3;
/// How long a request waits for a shard to elect a leader.
pub const ELECTION_WAIT: Duration = Duration::from_secs(5);
const ELECTION_POLL: Duration = Duration::from_millis(10);
/// Pause before asking again when the known leader was unreachable.
const UNREACHABLE_RETRY: Duration = Duration::from_millis(100);
/// How long a forwarded write waits for its answer: longer than the leader
/// itself may wait for an election (`ELECTION_WAIT`), so only a leader that
/// stopped answering runs into it. Then the write's outcome is unknown.
pub const FORWARD_WRITE_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a forwarded read waits before asking again (reads may be
/// retried, against whichever leader is known by then).
pub const FORWARD_READ_TIMEOUT: Duration = Duration::from_secs(2);

const _: () = assert!(FORWARD_WRITE_TIMEOUT.as_millis() > ELECTION_WAIT.as_millis());

/// What one core needs to serve or forward an operation.
pub struct Owner {
    pub core: Core,
    pub layout: Layout,
    /// `None` on a single node.
    pub peers: Option<Rc<Peers>>,
    /// The node's memory limit: a write refused for memory may wait for
    /// eviction.
    pub memory: Arc<Memory>,
}

impl Owner {
    /// A JSON status of this core's groups and links (for `cluster status`).
    pub fn status(&self) -> serde_json::Value {
        let bytes: std::collections::HashMap<u32, u64> =
            self.core.shard_sizes().into_iter().map(|(shard, _, bytes)| (shard, bytes)).collect();
        let groups: Vec<serde_json::Value> = self
            .core
            .group_status()
            .into_iter()
            .map(|g| {
                let lag: serde_json::Map<String, serde_json::Value> =
                    g.follower_lag.iter().map(|(n, l)| (n.to_string(), (*l).into())).collect();
                serde_json::json!({
                    "shard": g.shard, "leader": g.leader, "is_leader": g.is_leader, "term": g.term,
                    "commit": g.commit, "applied": g.applied, "last_index": g.last_index, "keys": g.keys,
                    "expires": g.expires, "memory_bytes": g.memory_bytes,
                    "bytes": bytes.get(&g.shard).copied().unwrap_or(0),
                    "replicas": self.layout.replicas_of(g.shard), "follower_lag": lag,
                    "voters": g.voters, "learners": g.learners,
                })
            })
            .collect();
        let endpoints: serde_json::Map<String, serde_json::Value> =
            self.peers.iter().flat_map(|p| p.endpoints()).map(|(n, e)| (n.to_string(), e.into())).collect();
        let links: Vec<serde_json::Value> = self
            .peers
            .iter()
            .flat_map(|p| p.link_states())
            .map(|(node, addr, up)| serde_json::json!({"node": node, "addr": addr.to_string(), "connected": up}))
            .collect();
        // "replayed": the core has applied everything its log had committed
        // (and, for groups with no other voter, leads them): see
        // `Core::is_ready`.
        let readmissions: Vec<serde_json::Value> = self
            .core
            .readmissions()
            .into_iter()
            .map(|(node, incarnation, pending)| {
                serde_json::json!({"node": node, "incarnation": format!("{incarnation:016x}"), "waiting_shards": pending})
            })
            .collect();
        let snapshots: Vec<serde_json::Value> = self
            .peers
            .iter()
            .flat_map(|p| p.snapshot_progress())
            .map(|(shard, to, p)| {
                serde_json::json!({
                    "shard": shard, "to": to, "index": p.index, "bytes": p.bytes, "sent_bytes": p.sent_bytes,
                    "seconds": p.started.map(|s| s.elapsed().as_secs_f64()),
                })
            })
            .collect();
        serde_json::json!({
            "core": self.core.config().core, "replayed": self.core.is_ready(), "groups": groups, "links": links,
            "endpoints": endpoints, "poisoned": self.core.poisoned(), "readmissions": readmissions,
            "snapshots_sending": snapshots,
        })
    }
}

/// The deadline of a wait of `wait`, counted from the first time it is
/// asked for: a request served at once reads no clock for it.
fn deadline_from_first_wait(at: &mut Option<Instant>, wait: Duration) -> Instant {
    *at.get_or_insert_with(|| Instant::now() + wait)
}

/// Runs `op` on `shard` from its owning core on this node.
pub async fn execute(owner: &Owner, shard: u32, op: Op, hops: u8) -> Result<Reply, CoreError> {
    if let Op::Status = op {
        return Ok(Reply::Status(owner.status().to_string()));
    }
    if let Op::Backup = op {
        return backup(owner, shard).await;
    }
    if !owner.layout.hosts(shard) {
        return forward_to_replicas(owner, shard, op, hops).await;
    }
    let mut deadline_at = None;
    loop {
        let local = match &op {
            Op::Get { key, consistency } => owner.core.read(shard, key, *consistency).await.map(Reply::Value),
            Op::Write(command) => write_here(owner, shard, command).await.map(Reply::Outcome),
            Op::Scan { cursor, count, consistency } => {
                owner.core.scan(shard, *cursor, *count as usize, *consistency).map(Reply::Keys)
            }
            Op::Status | Op::Backup => unreachable!("answered above"),
        };
        let leader = match local {
            Err(CoreError::NotLeader { leader }) => leader,
            other => return other,
        };
        let deadline = deadline_from_first_wait(&mut deadline_at, ELECTION_WAIT);
        match (leader, &owner.peers) {
            (Some(l), Some(peers)) if l != owner.layout.node_id => {
                if hops >= HOPS_MAX {
                    return Err(CoreError::NotLeader { leader: Some(l) });
                }
                let is_read = matches!(op, Op::Get { .. } | Op::Scan { .. });
                let timeout = if is_read { FORWARD_READ_TIMEOUT } else { FORWARD_WRITE_TIMEOUT };
                match peers.forward(l, shard, op.clone(), hops + 1, timeout).await {
                    // The leader we know of is unreachable: it may be dead,
                    // and the others are about to elect a new one. The
                    // request never left, so trying again is safe; a read
                    // whose outcome is unknown may be retried too, a write
                    // may not (it may have been applied).
                    Err(CoreError::Unavailable(_)) if Instant::now() < deadline => {
                        glommio::timer::sleep(UNREACHABLE_RETRY).await;
                    }
                    Err(CoreError::Dropped) if is_read && Instant::now() < deadline => {
                        glommio::timer::sleep(UNREACHABLE_RETRY).await;
                    }
                    // A read that found no answering leader had no effect.
                    Err(CoreError::Dropped) if is_read => {
                        return Err(CoreError::Unavailable(format!("shard {shard}: leader {l} did not answer")));
                    }
                    other => return other,
                }
            }
            // No leader known, or this node is the leader but its lease is
            // not yet valid (a new leader has not committed in its term):
            // wait, boundedly, and try again.
            _ if Instant::now() < deadline => glommio::timer::sleep(ELECTION_POLL).await,
            _ => return Err(CoreError::Unavailable(format!("shard {shard} has no leader"))),
        }
    }
}

/// Proposes a write on this core. Refused for memory while this core's
/// eviction is catching up, it waits for eviction (polling each memory
/// cycle, at most [`EVICTION_WAIT`]) instead of failing at once: the writer
/// is slowed to the pace of eviction, as Redis, which evicts before every
/// write, would slow it.
async fn write_here(owner: &Owner, shard: u32, command: &kv_engine::Command) -> Result<kv_engine::Outcome, CoreError> {
    let mut deadline_at = None;
    let core = owner.core.config().core as usize;
    loop {
        match owner.core.write(shard, command).await {
            Err(CoreError::OutOfMemory)
                if owner.memory.write_waits_for_eviction(core)
                    && Instant::now() < deadline_from_first_wait(&mut deadline_at, EVICTION_WAIT) =>
            {
                glommio::timer::sleep(MEMORY_CYCLE).await;
            }
            other => return other,
        }
    }
}

/// A backup's copy of `shard`, made here if this node leads it (confirmed
/// with a quorum: see `Core::backup`), else `NotLeader` naming the leader
/// this node knows of. Never forwarded: the copy may be far larger than a
/// peer frame, and the client reads it in pieces from the node that made
/// it, so a client asks the leader itself (from STATUS; docs/protocol.md,
/// BACKUP_BEGIN).
async fn backup(owner: &Owner, shard: u32) -> Result<Reply, CoreError> {
    if !owner.layout.hosts(shard) {
        return Err(CoreError::NotLeader { leader: None });
    }
    Ok(Reply::Backup(owner.core.backup(shard).await?))
}

async fn forward_to_replicas(owner: &Owner, shard: u32, op: Op, hops: u8) -> Result<Reply, CoreError> {
    let Some(peers) = &owner.peers else {
        return Err(CoreError::WrongCore(shard));
    };
    if hops >= HOPS_MAX {
        return Err(CoreError::Unavailable(format!("shard {shard}: too many forwards")));
    }
    let mut last = CoreError::Unavailable(format!("no replica of shard {shard} is reachable"));
    let is_read = matches!(op, Op::Get { .. } | Op::Scan { .. });
    let timeout = if is_read { FORWARD_READ_TIMEOUT } else { FORWARD_WRITE_TIMEOUT };
    for node in owner.layout.replicas_of(shard) {
        match peers.forward(node, shard, op.clone(), hops + 1, timeout).await {
            Err(e @ CoreError::Unavailable(_)) => last = e,
            Err(CoreError::Dropped) if is_read => last = CoreError::Unavailable(format!("node {node} did not answer")),
            other => return other,
        }
    }
    Err(last)
}
