//! kv-replication: every shard is a Raft group (raft-rs), and every write
//! goes through its log — on a single node too, where the group has one
//! voter. One code path, not two.
//!
//! - [`layout`]: slots → shards → cores, fixed per data directory.
//! - [`Core`] (`core.rs`): the per-core raft driver. It owns the groups of
//!   its core, batches their Ready output into one WAL flush (group commit),
//!   applies committed entries to the shard maps and answers the waiting
//!   requests. Startup and recovery live in `open.rs`.
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
pub mod oneshot;
mod open;
pub mod storage;
pub mod transport;

use std::path::PathBuf;
use std::time::Duration;

use kv_engine::wal::FsyncPolicy;

pub use crate::core::{Consistency, Core, CoreStats, FlushObserver, GroupStatus, ScanPage};
pub use crate::group::LOG_RETAIN_ENTRIES_DEFAULT;
pub use crate::layout::Layout;
pub use crate::open::StartError;

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

const _: () = assert!(ELECTION_TICKS > 2 * HEARTBEAT_TICKS);

/// How a core keeps its data.
#[derive(Debug, Clone)]
pub struct Persistence {
    /// `<data-dir>/core-<n>`; holds `wal/` and `snap/`.
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub segment_bytes: u64,
    pub snapshot_wal_bytes: u64,
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
}
