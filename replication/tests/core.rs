//! The per-core raft driver on one executor: writes go through Raft and the
//! WAL, survive a restart, group-commit, and get snapshotted and compacted.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use kv_engine::wal::FsyncPolicy;
use kv_engine::{Command, Condition, Outcome};
use kv_replication::transport::NoPeers;
use kv_replication::{
    Consistency, Core, CoreConfig, Layout, Persistence, LOG_RETAIN_ENTRIES_DEFAULT, TICK_INTERVAL_DEFAULT,
};

fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 * 1024)
        .spawn(move || async move { f().await })
        .expect("executor starts")
        .join()
        .expect("executor joins")
}

fn config(dir: Option<&Path>, snapshot_wal_bytes: u64) -> CoreConfig {
    config_batched(dir, snapshot_wal_bytes, 0)
}

fn config_batched(dir: Option<&Path>, snapshot_wal_bytes: u64, wal_batch_bytes_max: u64) -> CoreConfig {
    CoreConfig {
        core: 0,
        layout: Layout::new(1, 1, 4),
        persistence: dir.map(|d| Persistence {
            dir: d.join("core-0"),
            fsync: FsyncPolicy::Always,
            segment_bytes: 64 * 1024,
            snapshot_wal_bytes,
            wal_batch_bytes_max,
        }),
        tick: TICK_INTERVAL_DEFAULT,
        log_retain_entries: LOG_RETAIN_ENTRIES_DEFAULT,
        compress_min_bytes: kv_engine::compress::COMPRESS_MIN_BYTES_DEFAULT,
    }
}

async fn open(dir: Option<&Path>, snapshot_wal_bytes: u64) -> Core {
    open_with(dir, config(dir, snapshot_wal_bytes)).await
}

async fn open_with(dir: Option<&Path>, config: CoreConfig) -> Core {
    let core = Core::open(config, Box::new(NoPeers)).await.expect("core opens");
    core.wait_ready(Duration::from_secs(10)).await.expect("core gets ready");
    // Regression: readiness once came before the bootstrap batch was durable.
    if dir.is_some() {
        assert!(core.stats().flushes >= 1, "ready before anything was written");
    }
    core
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value.to_string()),
        condition: Condition::Always,
    }
}

fn shard(core: &Core, key: &str) -> u32 {
    core.config().layout.shard_of_key(key.as_bytes())
}

#[test]
fn writes_survive_restart_with_their_versions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let versions = run(move || async move {
        let core = open(Some(&d), u64::MAX).await;
        let mut versions = Vec::new();
        for i in 0..50 {
            let key = format!("key-{i}");
            match core.write(shard(&core, &key), &put(&key, &format!("v{i}"))).await.unwrap() {
                Outcome::Written { version } => versions.push(version),
                other => panic!("{other:?}"),
            }
        }
        let s = shard(&core, "key-0");
        let cas =
            Command::Put { key: Bytes::from("key-0"), value: Bytes::from("x"), condition: Condition::IfVersion(1) };
        assert!(matches!(core.write(s, &cas).await.unwrap(), Outcome::ConditionFailed { .. }));
        core.shutdown().await.unwrap();
        versions
    });
    let d = dir.path().to_path_buf();
    run(move || async move {
        let core = open(Some(&d), u64::MAX).await;
        for (i, version) in versions.into_iter().enumerate() {
            let key = format!("key-{i}");
            let stored = core
                .read(shard(&core, &key), key.as_bytes(), Consistency::Strict)
                .await
                .unwrap()
                .expect("key survives restart");
            assert_eq!(stored.value, Bytes::from(format!("v{i}")));
            assert_eq!(stored.version, version);
        }
        core.shutdown().await.unwrap();
    });
}

#[test]
fn concurrent_writes_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    run(move || async move {
        let core = open(Some(&d), u64::MAX).await;
        let flushes_before = core.stats().flushes;
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let core = core.clone();
                glommio::spawn_local(async move {
                    let key = format!("k{i}");
                    core.write(shard(&core, &key), &put(&key, "v")).await.unwrap()
                })
            })
            .collect();
        for t in tasks {
            assert!(matches!(t.await, Outcome::Written { .. }));
        }
        let flushes = core.stats().flushes - flushes_before;
        assert!(flushes < 100, "200 concurrent writes took {flushes} flushes: no group commit");
        core.shutdown().await.unwrap();
    });
}

/// A lone writer's durable write costs one flush (one fdatasync): the
/// hard state that only moves the commit index rides the next write's
/// flush. Writes still survive a restart (the commit index is recovered
/// by committing again).
#[test]
fn sequential_writes_cost_one_flush_each() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let s = run(move || async move {
        let core = open(Some(&d), u64::MAX).await;
        let key = "lone";
        let s = shard(&core, key);
        // The first write may still carry the election's term and vote.
        core.write(s, &put(key, "v0")).await.unwrap();
        let flushes_before = core.stats().flushes;
        for i in 1..=100 {
            assert!(matches!(core.write(s, &put(key, &format!("v{i}"))).await.unwrap(), Outcome::Written { .. }));
        }
        let flushes = core.stats().flushes - flushes_before;
        assert!(flushes <= 100, "100 sequential writes took {flushes} flushes");
        core.shutdown().await.unwrap();
        s
    });
    // A clean stop wrote the last commit index: the WAL's newest hard
    // state of the shard commits its last entry.
    let (mut last_entry, mut commit) = (0, 0);
    kv_engine::wal::recover(&dir.path().join("core-0/wal"), 0, |r| {
        match r {
            kv_engine::wal::Record::Entry { group, index, .. } if group == s => last_entry = index,
            kv_engine::wal::Record::HardState { group, commit: c, .. } if group == s => commit = c,
            _ => {}
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(commit, last_entry, "the last commit index reached the WAL at the stop");
    let d = dir.path().to_path_buf();
    run(move || async move {
        let core = open(Some(&d), u64::MAX).await;
        let stored = core.read(shard(&core, "lone"), b"lone", Consistency::Strict).await.unwrap().expect("kept");
        assert_eq!(stored.value, Bytes::from("v100"));
        core.shutdown().await.unwrap();
    });
}

/// With a WAL batch cap far below one write, every flush carries one
/// Ready: concurrent writes to several groups still all complete, in at
/// least a flush per group (without a cap, one flush carries every group's
/// Ready), and survive a restart.
#[test]
fn a_tiny_wal_batch_cap_splits_flushes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    run(move || async move {
        let core = open_with(Some(&d), config_batched(Some(&d), u64::MAX, 1)).await;
        let flushes_before = core.stats().flushes;
        let value = "v".repeat(500);
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let (core, value) = (core.clone(), value.clone());
                glommio::spawn_local(async move {
                    let key = format!("k{i}");
                    core.write(shard(&core, &key), &put(&key, &value)).await.unwrap()
                })
            })
            .collect();
        for t in tasks {
            assert!(matches!(t.await, Outcome::Written { .. }));
        }
        let flushes = core.stats().flushes - flushes_before;
        let groups = core.config().layout.shards_of_core(0).count() as u64;
        assert!(flushes >= groups, "200 writes to {groups} groups in {flushes} flushes");
        core.shutdown().await.unwrap();
    });
    let d = dir.path().to_path_buf();
    run(move || async move {
        let core = open(Some(&d), u64::MAX).await;
        for i in 0..200 {
            let key = format!("k{i}");
            let stored = core.read(shard(&core, &key), key.as_bytes(), Consistency::Strict).await.unwrap();
            assert_eq!(stored.expect("acknowledged write survives").value.len(), 500, "{key}");
        }
        core.shutdown().await.unwrap();
    });
}

/// A write allowance admits writes that need memory up to its bytes, then
/// refuses them (`OutOfMemory`) until it is renewed; deletes always pass.
#[test]
fn writes_past_the_allowance_are_refused_until_it_is_renewed() {
    run(move || async move {
        let core = open(None, u64::MAX).await;
        let one = put("a", &"x".repeat(100)).encoded_len() as u64;
        core.set_write_allowance(Some(3 * one));
        for key in ["a", "b", "c"] {
            let out = core.write(shard(&core, key), &put(key, &"x".repeat(100))).await;
            assert!(matches!(out, Ok(Outcome::Written { .. })), "{key}: {out:?}");
        }
        let out = core.write(shard(&core, "d"), &put("d", &"x".repeat(100))).await;
        assert!(matches!(out, Err(kv_replication::CoreError::OutOfMemory)), "{out:?}");
        let del = Command::Delete { key: Bytes::from("a"), condition: Condition::Always };
        assert!(core.write(shard(&core, "a"), &del).await.is_ok(), "deletes need no memory");
        core.set_write_allowance(None);
        let out = core.write(shard(&core, "d"), &put("d", &"x".repeat(100))).await;
        assert!(matches!(out, Ok(Outcome::Written { .. })), "{out:?}");
        core.shutdown().await.unwrap();
    });
}

/// A replica that does not lead answers NotLeader (the router forwards
/// the write to the leader, whose node decides about memory), never OOM.
#[test]
fn only_a_leader_refuses_writes_for_memory() {
    run(move || async move {
        let mut config = config(None, u64::MAX);
        // Three voters and no peers: this node never leads.
        config.layout = Layout::cluster(1, vec![1, 2, 3], 3, 1, 4);
        let core = open_with(None, config).await;
        core.set_write_allowance(Some(0));
        for key in ["a", "b", "c", "d"] {
            let out = core.write(shard(&core, key), &put(key, "v")).await;
            assert!(matches!(out, Err(kv_replication::CoreError::NotLeader { .. })), "{key}: {out:?}");
        }
        core.shutdown().await.unwrap();
    });
}

#[test]
fn snapshots_compact_the_wal_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    run(move || async move {
        let core = open(Some(&d), 128 * 1024).await;
        let value = "x".repeat(1000);
        for round in 0..3 {
            for i in 0..200 {
                let key = format!("key-{i}");
                core.write(shard(&core, &key), &put(&key, &format!("{round}{value}"))).await.unwrap();
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while core.stats().snapshots == 0 && std::time::Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert!(core.stats().snapshots > 0, "no snapshot taken");
        core.shutdown().await.unwrap();
    });
    let wal_dir = dir.path().join("core-0/wal");
    let first_segment = std::fs::read_dir(&wal_dir).unwrap().map(|e| e.unwrap().file_name()).min().unwrap();
    assert_ne!(first_segment.to_str().unwrap(), "00000000000000000001.wal", "old segments deleted");
    assert!(std::fs::read_dir(dir.path().join("core-0/snap")).unwrap().count() > 0);
    let d = dir.path().to_path_buf();
    run(move || async move {
        let core = open(Some(&d), u64::MAX).await;
        for i in 0..200 {
            let key = format!("key-{i}");
            let stored =
                core.read(shard(&core, &key), key.as_bytes(), Consistency::Strict).await.unwrap().expect("restored");
            assert!(stored.value.starts_with(b"2x"), "key {i} has the last round's value");
        }
        core.shutdown().await.unwrap();
    });
}

#[test]
fn in_memory_mode_keeps_no_files() {
    run(move || async move {
        let core = open(None, u64::MAX).await;
        let out = core.write(shard(&core, "a"), &put("a", "1")).await.unwrap();
        assert!(matches!(out, Outcome::Written { .. }));
        assert_eq!(
            core.read(shard(&core, "a"), b"a", Consistency::Lease).await.unwrap().unwrap().value,
            Bytes::from("1")
        );
        core.shutdown().await.unwrap();
    });
}

#[test]
fn a_backup_copy_holds_every_acknowledged_write_and_seeds_a_new_node() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (s, d) = (src.path().to_path_buf(), dst.path().to_path_buf());
    // Each shard's copy, with the versions its keys were written at.
    let copies = run(move || async move {
        let core = open(Some(&s), u64::MAX).await;
        let mut versions = std::collections::BTreeMap::new();
        for i in 0..60 {
            let key = format!("key-{i}");
            match core.write(shard(&core, &key), &put(&key, &format!("v{i}"))).await.unwrap() {
                Outcome::Written { version } => versions.insert(key, version),
                other => panic!("{other:?}"),
            };
        }
        let shards = core.config().layout.shards;
        assert!(matches!(core.backup(shards).await, Err(kv_replication::CoreError::WrongCore(_))));
        let mut copies = Vec::new();
        for s in 0..shards {
            let b = core.backup(s).await.expect("the sole voter leads");
            let status = core.group_status().into_iter().find(|g| g.shard == s).unwrap();
            assert!(b.index <= status.applied && b.index > 0, "as of an applied index");
            copies.push(b);
        }
        core.shutdown().await.unwrap();
        (copies, versions)
    });
    let (copies, versions) = copies;
    let layout = Layout::new(1, 1, 4);
    let mut keys = 0;
    for b in &copies {
        let (mut meta, entries) = kv_engine::snapshot::decode(&b.bytes, Path::new("backup")).expect("a valid snapshot");
        assert_eq!((meta.group, meta.index, meta.term, entries.len() as u64), (b.shard, b.index, b.term, b.keys));
        assert_eq!(kv_replication::voters_of_conf_state(&meta.conf_state).unwrap(), vec![1]);
        for (key, stored) in &entries {
            assert_eq!(Some(&stored.version), versions.get(std::str::from_utf8(key).unwrap()));
        }
        keys += entries.len();
        // What `kvd restore` writes: the snapshot, members of the new layout.
        meta.conf_state = kv_replication::conf_state_of_voters(&layout.replicas_of(b.shard));
        let snap_dir = dst.path().join("core-0/snap");
        std::fs::create_dir_all(&snap_dir).unwrap();
        let bytes = kv_engine::snapshot::encode_blocking(&meta, &entries);
        std::fs::write(snap_dir.join(kv_engine::snapshot::file_name(meta.group, meta.index)), bytes).unwrap();
    }
    assert_eq!(keys, versions.len());
    run(move || async move {
        let core = open(Some(&d), u64::MAX).await;
        for (key, version) in &versions {
            let stored = core.read(shard(&core, key), key.as_bytes(), Consistency::Strict).await.unwrap();
            assert_eq!(stored.map(|s| s.version), Some(*version), "{key}");
        }
        let out = core.write(shard(&core, "new"), &put("new", "1")).await.unwrap();
        assert!(matches!(out, Outcome::Written { .. }));
        core.shutdown().await.unwrap();
    });
}
