//! kvd's deterministic simulator of the replication core (`kvsim`), and
//! the history checkers that judge what clients observed.
//!
//! - [`sim`]: runs the real per-core state machine
//!   (`kv_replication::machine`) and the real engine (shard maps, command
//!   and snapshot codecs, WAL logic and recovery) against a simulated disk,
//!   network and clock, for a seeded scenario of faults, and checks the
//!   run. A seed replays byte for byte.
//! - [`linearizability`]: the Wing–Gong–Lowe checker for per-key register
//!   histories (puts, gets, deletes, compare-and-set), shared with the
//!   integration tests (`tests/it/`), which record histories against real
//!   kvd processes.

pub mod linearizability;
pub mod sim;
