//! kv-cli: what the `kvd` and `kvctl` binaries share — configuration
//! ([`config`]) and logging setup ([`logging`]) — and kvd's systemd
//! notifications ([`notify`]). The binaries themselves are
//! thin: parse, validate once, then hand over to `kv-net`.

pub mod config;
pub mod logging;
pub mod notify;
