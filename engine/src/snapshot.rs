//! Per-shard snapshots. (Written in the next step.)
