//! kv-replication: every shard is a Raft group (raft-rs), and every write
//! goes through its log — on a single node too, where the group has one
//! voter. One code path, not two.
//!
//! - [`machine`]: the per-core replication state machine, sans IO: it owns
//!   the groups of its core, batches their Ready output into one WAL flush
//!   (group commit), applies committed entries to the shard maps and
//!   answers the waiting requests. The simulator (`kvsim`) runs it as is.
//! - `group/`: one shard replica; the only code that touches raft-rs.
//! - [`restore`]: rebuilding a machine from snapshots and WAL records.
//! - [`Core`] (`core.rs`, `open.rs`): the glommio glue that feeds a machine
//!   from requests, peers and timers, and carries out its IO.
//! - [`layout`]: slots → shards → cores, fixed per data directory.
//! - [`storage`]: raft-rs's `Storage` over an in-memory window of the log.
//! - [`transport`]: the seam where messages to other nodes leave the core.
//!
//! Architecture Invariant: a write is acknowledged only after its entry is
//! durable under the fsync policy on a quorum and applied to the map.

mod core;
mod group;
pub mod keyspace;
pub mod layout;
mod logger;
pub mod machine;
pub mod oneshot;
mod open;
mod records;
pub mod restore;
pub mod storage;
pub mod transport;
pub mod types;

use std::path::PathBuf;
use std::time::Duration;

use kv_engine::wal::FsyncPolicy;

pub use crate::core::{now, Core, FlushObserver, ShardBackup};
pub use crate::group::LOG_RETAIN_ENTRIES_DEFAULT;
pub use crate::layout::Layout;
pub use crate::restore::StartError;
pub use crate::types::{Answer, Bugs, Consistency, CoreStats, GroupStatus, Now, ScanPage};

/// Interval of Raft's logical clock.
pub const TICK_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);
/// Ticks without a heartbeat before a follower campaigns (1 s by default).
pub const ELECTION_TICKS: usize = 10;
/// Ticks between leader heartbeats.
pub const HEARTBEAT_TICKS: usize = 2;
/// Requests waiting on one group before new writes get `Busy`. Connection
/// and pipeline limits normally stop clients long before this.
pub const PENDING_PER_GROUP_MAX: usize = 65_536;
/// WAL bytes written after which every shard of the core is snapshotted and
/// covered segments are deleted.
pub const SNAPSHOT_WAL_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// Ticks, counted from the start of a heartbeat round a quorum
/// acknowledged, during which a leader answers lease reads alone. Followers
/// refuse votes for at least `ELECTION_TICKS - 1` ticks after hearing from
/// it; the tick left over is the margin for clock rates (see
/// `group/reads.rs`).
pub const LEASE_TICKS: usize = ELECTION_TICKS - 2;

const _: () = assert!(ELECTION_TICKS > 2 * HEARTBEAT_TICKS);
// A lease outlives the renewal interval, or it would lapse between rounds.
const _: () = assert!(LEASE_TICKS > HEARTBEAT_TICKS);

/// The encoded membership (`raft::eraftpb::ConfState`, protobuf) of a
/// group whose voters are `voters`, as snapshots carry it: what a restore
/// writes into the snapshots of a new data directory.
pub fn conf_state_of_voters(voters: &[u64]) -> bytes::Bytes {
    records::conf_state_bytes(&raft::eraftpb::ConfState { voters: voters.to_vec(), ..Default::default() })
}

/// The voters of an encoded membership (see [`conf_state_of_voters`]).
pub fn voters_of_conf_state(data: &[u8]) -> Result<Vec<u64>, String> {
    records::conf_state_from_bytes(data).map(|cs| cs.voters)
}

/// How a core keeps its data.
#[derive(Debug, Clone)]
pub struct Persistence {
    /// `<data-dir>/core-<n>`; holds `wal/` and `snap/`.
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub segment_bytes: u64,
    pub snapshot_wal_bytes: u64,
    /// Record bytes one WAL flush carries at most (0: everything staged).
    pub wal_batch_bytes_max: u64,
}

#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Index of this core among the node's shard cores (0-based).
    pub core: u32,
    pub layout: Layout,
    /// `None`: a pure in-memory cache, no files at all.
    pub persistence: Option<Persistence>,
    pub tick: Duration,
    /// Applied entries each group keeps in memory for lagging followers
    /// (beyond them, a follower gets a snapshot).
    pub log_retain_entries: u64,
    /// Values of puts at least this long are proposed zstd-compressed when
    /// that saves space (0: never); see `kv_engine::compress`.
    pub compress_min_bytes: usize,
}

/// Why a request could not be served by the core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("this node does not lead the shard (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("the write-ahead log refuses writes: {0}")]
    Poisoned(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the write's outcome is unknown (leadership changed or a node was lost); retry it if it is idempotent")]
    Dropped,
    #[error("too many writes are waiting on this shard; retry later")]
    Busy,
    #[error("shard {0} is not hosted on this core")]
    WrongCore(u32),
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The node is over its memory limit and this write needs memory.
    #[error("command not allowed when used memory > 'maxmemory'")]
    OutOfMemory,
}
