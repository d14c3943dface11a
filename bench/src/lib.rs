//! kv-bench: the library behind `kvbench`.
//!
//! - [`workload`]: what to send — operation mix, key choice (uniform,
//!   zipfian, sequential), value sizes; seeded and reproducible.
//! - [`driver`]: how to send it — kvd's native protocol or RESP (Redis and
//!   anything that speaks it), pipelined, over glommio sockets.
//! - [`stats`]: HDR latency histograms per operation, merged across
//!   connections and threads; summaries, JSON and `.hgrm` files.
//! - [`run`]: closed-loop load: connections × pipeline depth per thread,
//!   one pinned executor per load thread, warm-up excluded.

pub mod driver;
pub mod run;
pub mod stats;
pub mod workload;
