//! kv-cli: what the `kvd` and `kvctl` binaries share — configuration
//! ([`config`]) and logging setup ([`logging`]) — and kvd's systemd
//! notifications ([`notify`]); the backup file ([`backup`]) that `kvctl
//! snapshot save` writes and `kvd restore` ([`restore`]) reads. The
//! binaries themselves are thin: parse, validate once, then hand over to
//! `kv-net`.

pub mod backup;
pub mod config;
pub mod logging;
pub mod notify;
pub mod restore;
