//! Backup and restore with real processes: `kvctl snapshot save` while a
//! writer keeps writing, `kvd restore` into new data directories (a single
//! node, and a new three-node cluster), and the refusal of damaged backups.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_engine::Condition;
use kv_net::client::{Client, ClientError, WriteResult};
use kv_net::native::codec::Status;
use kv_replication::Consistency;
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;
use crate::harness::{data_dir, kvctl, path_str, run_kvd, seed, stderr, stdout, Kvd};

const LONG_TTL: Duration = Duration::from_secs(3600);

/// What a key must read back as after a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    value: Vec<u8>,
    version: u64,
    /// Unix ms, for keys with a TTL.
    expires_at_ms: Option<u64>,
}

fn client(endpoint: &str) -> Client {
    let mut c = Client::connect(&[endpoint.to_string()], Duration::from_secs(10)).expect("client connects");
    c.set_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

fn put(c: &mut Client, key: &[u8], value: &[u8], ttl: Option<Duration>) -> u64 {
    match c.put_with_ttl(key, value, Condition::Always, ttl).expect("put") {
        WriteResult::Written { version } => version,
        other => panic!("put {key:?}: {other:?}"),
    }
}

/// Writes small keys, keys with a TTL, large values (incompressible and
/// compressible), overwrites and a delete; returns what every remaining key
/// must read back as.
fn write_keys(c: &mut Client, seed: u64, small: usize) -> BTreeMap<Vec<u8>, Expected> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut expected = BTreeMap::new();
    for i in 0..small {
        let key = format!("small-{i}").into_bytes();
        let value: Vec<u8> = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect();
        let version = put(c, &key, &value, None);
        expected.insert(key, Expected { value, version, expires_at_ms: None });
    }
    for i in 0..small / 5 {
        let key = format!("ttl-{i}").into_bytes();
        let value = format!("expires-{i}").into_bytes();
        let version = put(c, &key, &value, Some(LONG_TTL));
        let (v, at) = c.expiry(&key, Consistency::Strict).unwrap().expect("just written");
        assert_eq!(v, version);
        expected.insert(key, Expected { value, version, expires_at_ms: Some(at.expect("a TTL was given")) });
    }
    for i in 0..2 {
        let key = format!("large-random-{i}").into_bytes();
        let value: Vec<u8> = (0..(1 << 20) + i).map(|_| rng.gen()).collect();
        let version = put(c, &key, &value, None);
        expected.insert(key, Expected { value, version, expires_at_ms: None });
        // Compressible: stored as a zstd frame, restored as the same bytes.
        let key = format!("large-text-{i}").into_bytes();
        let value = "all work and no play makes a dull backup. ".repeat(40_000 + i).into_bytes();
        let version = put(c, &key, &value, None);
        expected.insert(key, Expected { value, version, expires_at_ms: None });
    }
    // Overwritten keys keep their last value and version; deleted ones stay gone.
    for i in 0..small.min(20) {
        let key = format!("small-{i}").into_bytes();
        let value = format!("second-{i}").into_bytes();
        let version = put(c, &key, &value, None);
        expected.insert(key, Expected { value, version, expires_at_ms: None });
    }
    put(c, b"deleted", b"x", None);
    assert!(matches!(c.delete(b"deleted", Condition::Always).unwrap(), WriteResult::Written { .. }));
    expected
}

/// Every key reads back (strict) with its value, version and expiry.
fn check_keys(c: &mut Client, expected: &BTreeMap<Vec<u8>, Expected>) {
    for (key, want) in expected {
        let name = String::from_utf8_lossy(key);
        let (value, version) = c.get_with(key, Consistency::Strict).unwrap().unwrap_or_else(|| panic!("{name} lost"));
        assert!(value == want.value, "{name}: another value ({} bytes, wanted {})", value.len(), want.value.len());
        assert_eq!(version, want.version, "{name}: version");
        if let Some(at) = want.expires_at_ms {
            assert_eq!(c.expiry(key, Consistency::Strict).unwrap(), Some((version, Some(at))), "{name}: expiry");
        }
    }
    assert_eq!(c.get_with(b"deleted", Consistency::Strict).unwrap(), None, "a deleted key came back");
}

fn restore(file: &Path, dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["restore", path_str(file), "--data-dir", path_str(dir)];
    args.extend(extra);
    run_kvd(&args, &[])
}

fn save(endpoint: &str, file: &Path) {
    let out = kvctl(endpoint, &["snapshot", "save", path_str(file)], b"");
    assert!(out.status.success(), "snapshot save failed: {}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("saved {}: ", path_str(file))), "{}", stdout(&out));
    assert!(!file.with_extension("kvd.tmp").exists(), "the temporary file is gone");
}

#[test]
fn a_backup_taken_under_writes_restores_every_acknowledged_key() {
    let seed = seed("backup_single_node");
    let src = data_dir();
    let kvd = Kvd::start(src.path(), &["--cores", "0,1"]);
    let mut c = client(&kvd.endpoint());
    let mut expected = write_keys(&mut c, seed, 300);

    // A writer keeps writing new keys while the backup is taken.
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writer = {
        let (stop, acked, endpoint) = (stop.clone(), acked.clone(), kvd.endpoint());
        std::thread::spawn(move || {
            let mut c = client(&endpoint);
            let mut versions = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let n = versions.len();
                versions.push(put(&mut c, format!("live-{n}").as_bytes(), format!("v{n}").as_bytes(), None));
                acked.store(versions.len() as u64, Ordering::SeqCst);
            }
            versions
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::SeqCst) < 50 {
        assert!(Instant::now() < deadline, "the writer does not write");
        std::thread::sleep(Duration::from_millis(5));
    }
    let acked_before_save = acked.load(Ordering::SeqCst) as usize;
    let work = data_dir();
    let file = work.path().join("backup.kvd");
    save(&kvd.endpoint(), &file);
    let acked_after_save = acked.load(Ordering::SeqCst) as usize;
    stop.store(true, Ordering::SeqCst);
    let versions = writer.join().expect("writer");
    assert!(versions.len() > acked_before_save, "writes went on during the save");
    println!("writes acknowledged: {acked_before_save} before the save, {acked_after_save} by its end");
    for (n, version) in versions.iter().enumerate().take(acked_before_save) {
        let key = format!("live-{n}").into_bytes();
        expected.insert(key, Expected { value: format!("v{n}").into_bytes(), version: *version, expires_at_ms: None });
    }
    assert!(kvd.stop().success());

    // Restored on one core (the source had two): same shards, same data.
    let target = work.path().join("restored");
    let out = restore(&file, &target, &["--cores", "0"]);
    assert!(out.status.success(), "restore failed: {}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("restored"), "{}", stdout(&out));
    let leftovers: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".restore-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary directories left: {leftovers:?}");
    let restored = Kvd::start(&target, &["--cores", "0"]);
    let mut c = client(&restored.endpoint());
    check_keys(&mut c, &expected);
    // It is a working node: it takes writes, and keeps them over a restart.
    let version = put(&mut c, b"after-restore", b"yes", None);
    drop(c);
    assert!(restored.stop().success());
    let restarted = Kvd::start(&target, &["--cores", "0"]);
    let mut c = client(&restarted.endpoint());
    assert_eq!(c.get_with(b"after-restore", Consistency::Strict).unwrap(), Some((b"yes".to_vec(), version)));
    check_keys(&mut c, &expected);
    drop(c);
    assert!(restarted.stop().success());
}

#[test]
fn a_cluster_backup_restores_into_one_node_and_into_a_new_cluster() {
    let seed = seed("backup_cluster");
    let source = Cluster::start(3, &[]);
    let mut c = source.client(1);
    let expected = write_keys(&mut c, seed, 150);
    drop(c);
    let work = data_dir();
    let file = work.path().join("cluster.kvd");
    // Through one endpoint: the other shards' leaders are found from STATUS.
    save(&source.endpoint(2), &file);
    // A backup is served by a shard's leader only, never forwarded.
    let leaders = source.leaders(2);
    let (&shard, _) = leaders.iter().find(|(_, l)| **l != Some(2)).expect("node 2 does not lead every shard");
    let mut c = source.client(2);
    match c.backup_begin(shard) {
        Err(ClientError::Server { status: Status::NotLeader, .. }) => {}
        other => panic!("BACKUP_BEGIN of shard {shard} on a non-leader: {other:?}"),
    }
    assert_eq!(c.backup_read(12345, 0, 100).unwrap(), None, "an unknown backup");
    assert!(!c.backup_end(12345).unwrap());
    drop(c);
    drop(source);

    // Into a single node.
    let single = work.path().join("single");
    let out = restore(&file, &single, &["--cores", "0"]);
    assert!(out.status.success(), "restore failed: {}{}", stdout(&out), stderr(&out));
    let kvd = Kvd::start(&single, &["--cores", "0"]);
    check_keys(&mut client(&kvd.endpoint()), &expected);
    assert!(kvd.stop().success());

    // Into a new cluster: every node from the same file, with its own id
    // and the same peers and replication factor.
    let mut target = Cluster::configure(3, &[]);
    for id in target.ids() {
        let (cores, peers) = (target.flag(id, "--cores").unwrap(), target.flag(id, "--peers").unwrap());
        let id_text = id.to_string();
        let flags = ["--cores", &cores, "--node-id", &id_text, "--peers", &peers, "--replication-factor", "3"];
        let out = restore(&file, &target.data_dir(id), &flags);
        assert!(out.status.success(), "restore of node {id} failed: {}{}", stdout(&out), stderr(&out));
    }
    for id in target.ids() {
        target.start_node(id, &[]);
    }
    target.wait_for_leaders();
    for id in [1, 3] {
        check_keys(&mut target.client(id), &expected);
    }
    let mut c = target.client(2);
    let version = put(&mut c, b"after-restore", b"yes", None);
    assert_eq!(c.get_with(b"after-restore", Consistency::Strict).unwrap(), Some((b"yes".to_vec(), version)));
    // Every replica holds the restored data (stale reads on each node).
    target.wait_converged();
    for id in target.ids() {
        let mut c = target.client(id);
        for (key, want) in expected.iter().step_by(7) {
            let got = c.get_with(key, Consistency::Stale).unwrap().expect("on every replica");
            assert_eq!((got.0 == want.value, got.1), (true, want.version));
        }
    }
}

#[test]
fn damaged_backups_and_used_directories_are_refused() {
    let src = data_dir();
    let kvd = Kvd::start(src.path(), &["--cores", "0"]);
    let mut c = client(&kvd.endpoint());
    for i in 0..100 {
        put(&mut c, format!("k-{i}").as_bytes(), &vec![i as u8; 700], None);
    }
    drop(c);
    let work = data_dir();
    let good = work.path().join("good.kvd");
    save(&kvd.endpoint(), &good);
    assert!(kvd.stop().success());
    let bytes = std::fs::read(&good).unwrap();

    let refused = |name: &str, data: &[u8], why: &str| {
        let file = work.path().join(format!("{name}.kvd"));
        std::fs::write(&file, data).unwrap();
        let target = work.path().join(format!("target-{name}"));
        let out = restore(&file, &target, &["--cores", "0"]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}{}", stdout(&out), stderr(&out));
        let message = stderr(&out);
        assert!(message.contains("not a usable backup") && message.contains(why), "{name}: {message}");
        assert!(!target.exists(), "{name}: the target directory was created");
        let names: Vec<String> =
            std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert!(!names.iter().any(|n| n.contains(".restore-")), "{name}: leftovers {names:?}");
    };
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    refused("flipped", &flipped, "shard");
    refused("truncated-half", &bytes[..bytes.len() / 2], "truncated");
    refused("truncated-last-byte", &bytes[..bytes.len() - 1], "truncated");
    refused("empty", &[], "not a kvd backup");
    let mut trailer = bytes.clone();
    let at = trailer.len() - 12;
    trailer[at] ^= 0x80;
    refused("trailer-checksum", &trailer, "checksum");

    // A good file restores; then the same directory is refused, untouched.
    let target = work.path().join("target-good");
    let out = restore(&good, &target, &["--cores", "0"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let layout = std::fs::read(target.join("layout.toml")).unwrap();
    let out = restore(&good, &target, &["--cores", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    assert_eq!(std::fs::read(target.join("layout.toml")).unwrap(), layout);

    // A core count that does not divide the shards (8 here) is a usage error.
    let out = restore(&good, &work.path().join("target-three"), &["--cores", "0-2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("must divide 8") && stderr(&out).contains("1, 2, 4, 8"), "{}", stderr(&out));
    assert!(!work.path().join("target-three").exists());
}
