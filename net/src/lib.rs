//! kv-net: how requests reach the cores.
//!
//! - [`native`]: the native binary protocol (codec and per-connection server).
//! - [`resp`]: the Redis protocol (RESP2/RESP3) front end and its commands.
//! - [`http`]: the HTTP/JSON API (hyper on glommio), health and readiness,
//!   and the Prometheus scrape endpoint.
//! - [`metrics`]: the process-wide Prometheus registry and per-core series.
//! - [`service`]: protocol-independent routing — key → shard → core, run
//!   locally or forwarded over the [`mesh`] of cross-core channels.
//! - [`listener`]: `SO_REUSEPORT` sockets, one per core, and accept loops;
//!   [`readbuf`]: reading sockets without zero-filling buffers; [`outbox`]:
//!   a client connection's answers and the task that writes them.
//! - [`node`]: one core's life from start to clean stop.
//! - [`peer`]: the authenticated node-to-node transport (Raft messages,
//!   forwarded requests); [`route`]: serving or forwarding to the leader.
//! - [`client`]: the blocking Rust client `kvctl` uses.
//! - [`backup`]: shard copies held for clients reading a backup.
//! - [`limits`]: request limits enforced at the edge; [`memory`]: the
//!   node's memory limit, measured from the allocator, and eviction.
//!
//! Architecture Invariant: connections are served on the core that accepted
//! them; only requests and replies cross cores, over bounded channels.

pub mod backup;
pub mod client;
pub mod cluster_client;
pub mod http;
pub mod keyspace;
pub mod limits;
pub mod listener;
pub mod memory;
pub mod mesh;
pub mod metrics;
pub mod native;
pub mod node;
pub mod outbox;
pub mod peer;
pub mod readbuf;
pub mod resp;
pub mod route;
pub mod service;
