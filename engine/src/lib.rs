//! kv-engine: everything one core needs to own a slice of the key space and
//! keep it durable, and nothing about sockets or consensus.
//!
//! - [`slot`]: key → slot, exactly as Redis Cluster defines it.
//! - [`command`]: the replicated commands and their byte encoding (the
//!   payload of every Raft log entry).
//! - [`shard`]: one shard's in-memory map — the deterministic state machine
//!   that committed commands are applied to; [`entry`]: a key and value as
//!   held (one block each); [`stored`]: a value as the engine hands it out;
//!   [`compress`]: zstd frames of large values; [`evict`]: which keys to
//!   evict under a memory limit.
//! - [`wal`]: the per-core write-ahead log that is the Raft log store of every
//!   group on the core: format, group-commit writer, recovery.
//! - [`snapshot`]: per-shard point-in-time snapshot files.
//!
//! Architecture Invariant: this crate does not depend on `raft` or on any
//! network code. The replication crate maps Raft's types onto [`wal::Record`]s.

pub mod command;
pub mod compress;
pub mod entry;
pub mod evict;
pub mod fsutil;
pub mod limits;
pub mod shard;
pub mod slot;
pub mod snapshot;
pub mod stored;
pub mod wal;

pub use command::{Command, Condition, Decoded, ExpireWhen, Expiry, Outcome, Refusal};
pub use entry::Entry;
pub use shard::{ShardMap, Stored};
