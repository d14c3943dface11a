//! Limits on what a request may carry. Every limit is a named constant with
//! its unit last; runtime configuration may lower the defaults (or raise the
//! value size up to [`VALUE_BYTES_LIMIT`]) and is validated once at startup.

/// Default maximum key size. Redis allows 512 MiB keys; nobody needs that,
/// and large keys make every hash and comparison slow.
pub const KEY_BYTES_MAX_DEFAULT: usize = 64 * 1024;

/// Default maximum value size. Values travel through one Raft entry and one
/// WAL record, so a value costs its size in memory several times over while
/// it is in flight.
pub const VALUE_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;

/// Hard ceiling for the configurable value size (the Redis string limit).
pub const VALUE_BYTES_LIMIT: usize = 512 * 1024 * 1024;

/// Bytes of a command's encoding besides key and value (see `command.rs`).
pub const COMMAND_OVERHEAD_BYTES: usize = 52;

const _: () = assert!(KEY_BYTES_MAX_DEFAULT <= u32::MAX as usize);
const _: () = assert!(VALUE_BYTES_MAX_DEFAULT <= VALUE_BYTES_LIMIT);
const _: () = assert!(VALUE_BYTES_LIMIT + KEY_BYTES_MAX_DEFAULT < u32::MAX as usize);
