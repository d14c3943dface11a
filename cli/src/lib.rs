//! kv-cli: what the `kvd` and `kvctl` binaries share — configuration
//! ([`config`]) and logging setup ([`logging`]). The binaries themselves are
//! thin: parse, validate once, then hand over to `kv-net`.

pub mod config;
pub mod logging;
