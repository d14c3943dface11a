//! kv-bench: the library behind `kvbench`.
//!
//! - [`workload`]: what to send — operation mix, key choice (uniform,
//!   zipfian, sequential), value sizes; seeded and reproducible.
//! - [`driver`]: how to send it — kvd's native protocol, RESP (Redis and
//!   anything that speaks it), memcached's text protocol ([`memcache`]),
//!   kvd's HTTP API ([`http`]) or etcd's JSON gateway, pipelined, over
//!   glommio sockets.
//! - [`run`]: load threads, one pinned executor each, and the closed loop
//!   (connections × pipeline depth); [`open`] with [`schedule`]: the open
//!   loop (a fixed arrival rate, latency from the intended send time).
//! - [`stats`]: HDR latency histograms per operation, merged across
//!   connections and threads; summaries, JSON and `.hgrm` files; [`plot`]
//!   draws `.hgrm` percentile spectra as SVG.
//! - [`affinity`]: pins kvbench's own threads; [`floor`]: the machine's
//!   floor (loopback round trip, write + fdatasync).

pub mod affinity;
pub mod driver;
pub mod floor;
pub mod http;
pub mod memcache;
#[cfg(test)]
mod mock;
pub mod open;
pub mod plot;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod workload;
