//! Backups being read by clients (native BACKUP_BEGIN, BACKUP_READ,
//! BACKUP_END; docs/protocol.md §4).
//!
//! BACKUP_BEGIN has the shard's leader copy the shard (see
//! `kv_replication::Core::backup`: leadership confirmed with a quorum, the
//! copy taken in one synchronous step, encoded as a snapshot file's bytes).
//! The encoded copy is then held on the core that accepted the client's
//! connection — here, one store per core (a thread-local: a core is one
//! executor thread) — and the client reads it in pieces that fit its frame
//! limit. A held copy goes when the client ends it, or once it has not been
//! read for [`BACKUP_IDLE_TIMEOUT`]; a core holds at most
//! [`BACKUPS_PER_CORE_MAX`], so memory stays bounded by a few shards' size.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use kv_replication::ShardBackup;

/// Copies a core holds at once.
pub const BACKUPS_PER_CORE_MAX: usize = 4;
/// A copy not read for this long is dropped.
pub const BACKUP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

struct Held {
    copy: ShardBackup,
    last_read: Instant,
}

#[derive(Default)]
struct Store {
    /// The next id's counter (the core's index is in the top 16 bits).
    next: u64,
    held: BTreeMap<u64, Held>,
}

impl Store {
    fn sweep(&mut self, now: Instant) {
        self.held.retain(|_, h| now.duration_since(h.last_read) < BACKUP_IDLE_TIMEOUT);
    }
}

thread_local! {
    static STORE: RefCell<Store> = RefCell::new(Store::default());
}

/// Why a read of a held copy failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// No such copy here: never made, ended, dropped after the idle
    /// timeout, or made on another core (another connection).
    Unknown,
    /// The offset is past the copy's end.
    PastEnd { total: u64 },
}

/// Holds `copy` on this core (`core`: its index) and returns its id, or why
/// not (the core already holds as many as it may). Must run on a glommio
/// executor: a timer task drops the copy once it lies unread.
pub fn hold(core: u32, copy: ShardBackup) -> Result<u64, String> {
    let id = STORE.with(|s| {
        let mut s = s.borrow_mut();
        s.sweep(Instant::now());
        if s.held.len() >= BACKUPS_PER_CORE_MAX {
            return Err(format!(
                "this core already holds {BACKUPS_PER_CORE_MAX} backups being read; retry once they are ended \
                 or have lain unread for {}s",
                BACKUP_IDLE_TIMEOUT.as_secs()
            ));
        }
        s.next += 1;
        let id = ((core as u64 & 0xffff) << 48) | (s.next & ((1 << 48) - 1));
        s.held.insert(id, Held { copy, last_read: Instant::now() });
        Ok(id)
    })?;
    glommio::spawn_local(drop_when_idle(id)).detach();
    Ok(id)
}

/// Up to `max_len` bytes of copy `id` from `offset` on (empty at the end).
pub fn read(id: u64, offset: u64, max_len: usize) -> Result<Bytes, ReadError> {
    STORE.with(|s| {
        let mut s = s.borrow_mut();
        let held = s.held.get_mut(&id).ok_or(ReadError::Unknown)?;
        held.last_read = Instant::now();
        let total = held.copy.bytes.len() as u64;
        if offset > total {
            return Err(ReadError::PastEnd { total });
        }
        let end = total.min(offset.saturating_add(max_len as u64));
        Ok(held.copy.bytes.slice(offset as usize..end as usize))
    })
}

/// Drops copy `id`; whether it was held.
pub fn end(id: u64) -> bool {
    STORE.with(|s| s.borrow_mut().held.remove(&id).is_some())
}

/// Copies held on this core now.
pub fn held_count() -> usize {
    STORE.with(|s| s.borrow().held.len())
}

async fn drop_when_idle(id: u64) {
    loop {
        let last_read = STORE.with(|s| s.borrow().held.get(&id).map(|h| h.last_read));
        let Some(last_read) = last_read else { return };
        let idle_until = last_read + BACKUP_IDLE_TIMEOUT;
        let now = Instant::now();
        if now >= idle_until {
            if STORE.with(|s| s.borrow_mut().held.remove(&id).is_some()) {
                tracing::info!(id, "a backup copy lay unread for {BACKUP_IDLE_TIMEOUT:?}: dropped");
            }
            return;
        }
        glommio::timer::sleep(idle_until - now).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(len: usize) -> ShardBackup {
        ShardBackup {
            shard: 1,
            index: 5,
            term: 2,
            keys: 3,
            bytes: Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>()),
        }
    }

    #[test]
    fn held_copies_are_read_in_pieces_bounded_and_ended() {
        let ex = glommio::LocalExecutorBuilder::default().make().expect("executor");
        ex.run(async {
            let id = hold(3, copy(1000)).unwrap();
            assert_eq!(id >> 48, 3, "the core is in the id");
            let mut got = Vec::new();
            let mut offset = 0;
            loop {
                let piece = read(id, offset, 300).unwrap();
                if piece.is_empty() {
                    break;
                }
                assert!(piece.len() <= 300);
                offset += piece.len() as u64;
                got.extend_from_slice(&piece);
            }
            assert_eq!(got, copy(1000).bytes.to_vec());
            assert_eq!(read(id, 1001, 10), Err(ReadError::PastEnd { total: 1000 }));
            assert_eq!(read(id + 1, 0, 10), Err(ReadError::Unknown));
            let more: Vec<u64> = (1..BACKUPS_PER_CORE_MAX).map(|_| hold(3, copy(10)).unwrap()).collect();
            assert_eq!(held_count(), BACKUPS_PER_CORE_MAX);
            assert!(hold(3, copy(10)).unwrap_err().contains("already holds"));
            assert!(end(id));
            assert!(!end(id));
            assert_eq!(read(id, 0, 10), Err(ReadError::Unknown));
            hold(3, copy(10)).expect("room again after an end");
            for id in more {
                end(id);
            }
        });
    }
}
