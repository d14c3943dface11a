//! Cross-core routing: keys of every shard (hence every core) are reachable
//! from connections accepted on any core, and a key stays on its core across
//! restarts (it is found in that core's WAL, and only there).

use std::time::Duration;

use kv_engine::Condition;
use kv_net::client::Client;
use kv_replication::Layout;

use crate::harness::{data_dir, Kvd};

/// Keys covering every shard of a layout.
fn keys_for_every_shard(layout: &Layout) -> Vec<(String, u32)> {
    let mut out: Vec<Option<String>> = vec![None; layout.shards as usize];
    for i in 0.. {
        let key = format!("key-{i}");
        let shard = layout.shard_of_key(key.as_bytes()) as usize;
        if out[shard].is_none() {
            out[shard] = Some(key);
        }
        if out.iter().all(Option::is_some) {
            break;
        }
    }
    out.into_iter().enumerate().map(|(s, k)| (k.unwrap(), s as u32)).collect()
}

fn wal_bytes(dir: &std::path::Path, core: u32) -> Vec<u8> {
    let wal = dir.join(format!("core-{core}/wal"));
    let mut all = Vec::new();
    for e in std::fs::read_dir(wal).unwrap() {
        let path = e.unwrap().path();
        // Segments only: the spare is zeros.
        if path.extension().is_some_and(|e| e == "wal") {
            all.extend(std::fs::read(path).unwrap());
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn every_core_serves_every_key_and_keys_stay_on_their_core() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0,1"]);
    let layout: Layout = toml::from_str(&std::fs::read_to_string(dir.path().join("layout.toml")).unwrap()).unwrap();
    assert_eq!(layout.cores, 2);
    let keys = keys_for_every_shard(&layout);
    // Many connections: the kernel spreads them over both cores' sockets.
    let mut clients: Vec<Client> =
        (0..16).map(|_| Client::connect(&[kvd.endpoint()], Duration::from_secs(10)).unwrap()).collect();
    for (n, c) in clients.iter_mut().enumerate() {
        for (key, _) in &keys {
            let value = format!("{key}-via-{n}");
            c.put(key.as_bytes(), value.as_bytes(), Condition::Always).unwrap();
            assert_eq!(c.get(key.as_bytes()).unwrap().unwrap().0, value.as_bytes());
        }
    }
    let accepted_on: std::collections::BTreeSet<u32> = clients.iter().map(|c| c.welcome().core).collect();
    assert_eq!(accepted_on.len(), 2, "connections landed on cores {accepted_on:?} only");
    drop(clients);
    assert!(kvd.stop().success());

    for (key, shard) in &keys {
        let owner = layout.core_of_shard(*shard);
        let marker = format!("{key}-via-15");
        assert!(contains(&wal_bytes(dir.path(), owner), marker.as_bytes()), "{key} not in core {owner}'s WAL");
        assert!(!contains(&wal_bytes(dir.path(), 1 - owner), marker.as_bytes()), "{key} in the wrong WAL");
    }
    // After a restart each key is still served, and new writes of it go to
    // the same core's WAL.
    let kvd = Kvd::start(dir.path(), &["--cores", "0,1"]);
    let mut c = Client::connect(&[kvd.endpoint()], Duration::from_secs(10)).unwrap();
    for (key, shard) in &keys {
        assert_eq!(c.get(key.as_bytes()).unwrap().unwrap().0, format!("{key}-via-15").as_bytes());
        c.put(key.as_bytes(), format!("{key}-after-restart").as_bytes(), Condition::Always).unwrap();
        let _ = shard;
    }
    drop(c);
    assert!(kvd.stop().success());
    for (key, shard) in &keys {
        let owner = layout.core_of_shard(*shard);
        assert!(contains(&wal_bytes(dir.path(), owner), format!("{key}-after-restart").as_bytes()));
    }
}
