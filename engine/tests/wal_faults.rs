//! Fault injection into the WAL: a failed fdatasync or write poisons it, and
//! it stays poisoned. A separate test binary because failpoints are global to
//! the process.

use std::path::Path;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use kv_engine::wal::{self, FsyncPolicy, Record, Wal, WalConfig, WalError};

fn entry(index: u64) -> Record {
    Record::Entry { group: 0, term: 1, index, entry_type: 0, data: Bytes::from_static(b"data") }
}

/// Opens a WAL on `dir`, writes one good batch, then one with `failpoint`
/// armed, and reports what the WAL said afterwards.
fn poison_with(dir: &Path, failpoint: &'static str) -> (String, String, Option<String>) {
    let dir = dir.to_path_buf();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(move || async move {
            let recovered = wal::recover(&dir, 0, |_| Ok(())).unwrap();
            let config = WalConfig { dir: dir.clone(), core: 0, segment_bytes: 1 << 20, fsync: FsyncPolicy::Always };
            let wal = Wal::open(config, recovered).await.unwrap();
            wal.append(&entry(1));
            wal.flush().await.expect("healthy flush");
            fail::cfg(failpoint, "return").unwrap();
            wal.append(&entry(2));
            let first = wal.flush().await.expect_err("injected fault surfaces");
            fail::remove(failpoint);
            wal.append(&entry(3));
            let second = wal.flush().await.expect_err("poisoned WAL refuses later flushes");
            assert!(matches!(second, WalError::Poisoned(_)), "{second}");
            let sync = wal.sync().await.expect_err("poisoned WAL refuses sync");
            assert!(matches!(sync, WalError::Poisoned(_)), "{sync}");
            (first.to_string(), second.to_string(), wal.poisoned())
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn injected_faults_poison_the_wal() {
    let scenario = fail::FailScenario::setup();
    for failpoint in ["wal::fdatasync", "wal::write"] {
        let dir = tempfile::tempdir().unwrap();
        let (first, second, poisoned) = poison_with(dir.path(), failpoint);
        assert!(first.contains("injected fault"), "{failpoint}: {first}");
        assert!(second.contains("poisoned"), "{failpoint}: {second}");
        assert!(poisoned.expect("poisoned").contains("injected fault"));
        // The batch that was acknowledged before the fault is intact.
        let mut indexes = Vec::new();
        wal::recover(dir.path(), 0, |r| {
            if let Record::Entry { index, .. } = r {
                indexes.push(index);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(indexes[0], 1, "{failpoint}");
    }
    scenario.teardown();
}
