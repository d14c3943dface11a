//! The Redis protocol front end: RESP2, and RESP3 after `HELLO 3`, so that
//! redis-cli, redis-benchmark and ordinary Redis client libraries work
//! against kvd unchanged.
//!
//! - [`codec`]: reading commands (arrays of bulk strings, inline commands)
//!   with size caps; [`frame`]: replies and their bytes in both protocols.
//! - [`server`]: one accepted connection: reader, outbox, writer task.
//! - [`batch`]: running a pipelined batch of commands concurrently where
//!   that cannot be observed, in order where it can.
//! - [`session`]: per-connection state and this core's client registry;
//!   [`stats`]: per-core counters INFO sums up.
//! - [`commands`]: the command table and the handlers, on the same
//!   [`crate::mesh::Op`]s as the native protocol; [`exec`] runs an operation
//!   as the routing mode says (proxy: forward; cluster: `-MOVED`);
//!   [`topology`]: slots, masters and replicas as Redis Cluster clients see
//!   them.
//!
//! Architecture Invariant: replies leave in request order, and a command
//! never observes the effect of a later command of its connection, nor
//! misses the effect of an earlier one (see [`batch`]).

pub mod batch;
pub mod codec;
pub mod commands;
pub mod exec;
pub mod frame;
pub mod server;
pub mod session;
pub mod stats;
pub mod topology;
