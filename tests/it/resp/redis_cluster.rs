//! Three kvd nodes seen through RESP: in cluster mode as a Redis Cluster
//! (CLUSTER SLOTS, -MOVED, CROSSSLOT, READONLY, redis-cli -c, the `redis`
//! crate's cluster client); in proxy mode as one server on every node.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use redis::Commands;

use super::{cli_ok, Raw, Reply};
use crate::cluster::Cluster;

/// Slot ranges → master RESP address, from CLUSTER SLOTS on `addr`; `None`
/// until every slot is covered.
fn slot_masters(addr: SocketAddr) -> Option<BTreeMap<u16, (u16, SocketAddr)>> {
    let Reply::Array(ranges) = Raw::connect(addr).cmd(&["CLUSTER", "SLOTS"]) else { panic!("SLOTS is an array") };
    let mut map = BTreeMap::new();
    for r in ranges {
        let Reply::Array(fields) = r else { panic!("a range is an array") };
        let (Reply::Int(start), Reply::Int(end), Reply::Array(master)) = (&fields[0], &fields[1], &fields[2]) else {
            panic!("range fields: {fields:?}")
        };
        let (Reply::Bulk(host), Reply::Int(port)) = (&master[0], &master[1]) else { panic!("{master:?}") };
        let addr = format!("{}:{port}", String::from_utf8_lossy(host)).parse().unwrap();
        map.insert(*start as u16, (*end as u16, addr));
    }
    let mut next = 0u32;
    for (start, (end, _)) in &map {
        if *start as u32 != next {
            return None;
        }
        next = *end as u32 + 1;
    }
    (next == 16384).then_some(map)
}

fn master_of(map: &BTreeMap<u16, (u16, SocketAddr)>, slot: u16) -> SocketAddr {
    map.range(..=slot).next_back().map(|(_, (_, a))| *a).expect("slot covered")
}

fn slot(key: &str) -> u16 {
    kv_engine::slot::slot_of(key.as_bytes())
}

#[test]
fn cluster_mode_looks_like_redis_cluster() {
    let cluster = Cluster::start(3, &["--resp-mode", "cluster", "--fsync", "never"]);
    let resp: BTreeMap<u64, SocketAddr> =
        cluster.ids().into_iter().map(|id| (id, cluster.node(id).resp_addr)).collect();
    let mut masters = None;
    cluster.wait_until("CLUSTER SLOTS covers every slot with known addresses on every node", || {
        let maps: Vec<_> = resp.values().map(|a| slot_masters(*a)).collect();
        let done = maps.iter().all(|m| m.is_some());
        masters = maps.into_iter().next().flatten();
        done
    });
    let masters = masters.unwrap();
    assert!(masters.values().all(|(_, a)| resp.values().any(|r| r == a)), "{masters:?}");

    // Without -c: a node that does not lead a key's shard redirects.
    let key = "redirected";
    let leader = master_of(&masters, slot(key));
    let other = *resp.values().find(|a| **a != leader).unwrap();
    match Raw::connect(other).cmd(&["SET", key, "v"]) {
        Reply::Error(e) if e.starts_with("MOVED") => {
            let parts: Vec<&str> = e.split(' ').collect();
            assert_eq!(parts[1], slot(key).to_string());
            let target: SocketAddr = parts[2].parse().unwrap();
            assert!(resp.values().any(|a| *a == target), "{e}");
        }
        // Leadership moved to `other` since SLOTS was read.
        other => assert_eq!(other, Reply::ok()),
    }
    // redis-cli -c follows redirections from any node.
    for i in 0..30 {
        let entry = resp[&(1 + i % 3)];
        assert_eq!(cli_ok(entry, &["-c", "SET", &format!("k{i}"), &format!("v{i}")]), "OK");
    }
    for i in 0..30 {
        let entry = resp[&(1 + (i + 1) % 3)];
        assert_eq!(cli_ok(entry, &["-c", "GET", &format!("k{i}")]), format!("v{i}"));
    }
    // Multi-key commands must stay in one slot.
    assert_eq!(
        Raw::connect(resp[&1]).cmd(&["MSET", "a", "1", "b", "2"]),
        Reply::Error("CROSSSLOT Keys in request don't hash to the same slot".into())
    );
    assert_eq!(cli_ok(resp[&2], &["-c", "MSET", "{t}a", "1", "{t}b", "2"]), "OK");
    assert_eq!(cli_ok(resp[&3], &["-c", "MGET", "{t}c", "{t}a", "{t}b"]), "\n1\n2");

    // The `redis` crate's cluster client.
    let urls: Vec<String> = resp.values().map(|a| format!("redis://{a}/")).collect();
    let client = redis::cluster::ClusterClient::new(urls).unwrap();
    let mut con = client.get_connection().expect("cluster connection");
    for i in 0..100 {
        let _: () = con.set(format!("rc{i}"), i).unwrap();
    }
    for i in 0..100 {
        assert_eq!(con.get::<_, i64>(format!("rc{i}")).unwrap(), i);
    }
    let values: Vec<String> = con.mget(&["{t}a", "{t}b"]).unwrap();
    assert_eq!(values, vec!["1", "2"]);
    let mut pipe = redis::cluster::cluster_pipe();
    for i in 0..50 {
        pipe.get(format!("rc{i}"));
    }
    let got: Vec<i64> = pipe.query(&mut con).unwrap();
    assert_eq!(got, (0..50).collect::<Vec<i64>>());

    // READONLY lets a replica answer; it is served locally (may be stale,
    // so wait until it caught up).
    let key = "k7";
    let slots = slot_masters(resp[&1]).unwrap();
    let leader = master_of(&slots, slot(key));
    let replica = *resp.values().find(|a| **a != leader).unwrap();
    let mut c = Raw::connect(replica);
    match c.cmd(&["GET", key]) {
        Reply::Error(e) if e.starts_with("MOVED") => {}
        // Leadership moved to this node since SLOTS was read.
        other => assert_eq!(other, Reply::bulk("v7")),
    }
    assert_eq!(c.cmd(&["READONLY"]), Reply::ok());
    cluster.wait_until("the replica serves the value", || c.cmd(&["GET", key]) == Reply::bulk("v7"));
    assert_eq!(c.cmd(&["READWRITE"]), Reply::ok());

    // Introspection.
    let mut c = Raw::connect(resp[&1]);
    let info = c.cmd(&["CLUSTER", "INFO"]).text();
    assert!(info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3"), "{info}");
    let nodes = c.cmd(&["CLUSTER", "NODES"]).text();
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
    assert_eq!(nodes.lines().filter(|l| l.contains("myself")).count(), 1, "{nodes}");
    let myid = c.cmd(&["CLUSTER", "MYID"]).text();
    assert!(myid.len() == 40 && nodes.contains(&format!("{myid} {}", resp[&1])), "{myid}\n{nodes}");
    let Reply::Array(shards) = c.cmd(&["CLUSTER", "SHARDS"]) else { panic!("SHARDS is an array") };
    assert!(!shards.is_empty());
    assert!(c.cmd(&["INFO", "cluster"]).text().contains("cluster_enabled:1"));
    // Each key is counted once, by the node that leads its shard.
    let total = 30 + 2 + 100;
    cluster.wait_until("DBSIZE over the masters counts every key once", || {
        let sum: i64 = resp.values().map(|a| cli_ok(*a, &["DBSIZE"]).parse::<i64>().unwrap()).sum();
        sum == total
    });

    // redis-benchmark --cluster finds the masters through CLUSTER NODES.
    let mut bench = std::process::Command::new(super::redis_tool("redis-benchmark"));
    bench
        .args(["-h", &resp[&1].ip().to_string(), "-p", &resp[&1].port().to_string(), "--cluster"])
        .args(["-t", "set,get", "-n", "2000", "-P", "16", "-q"]);
    let out = crate::harness::run_bounded_for(bench, b"", std::time::Duration::from_secs(300));
    let text = format!("{}{}", crate::harness::stdout(&out), crate::harness::stderr(&out));
    assert!(out.status.success() && !text.contains("rror"), "{text}");
    assert!(text.contains("Master 0:") && text.contains("GET:"), "{text}");
}

#[test]
fn proxy_mode_serves_every_key_on_every_node() {
    let cluster = Cluster::start(3, &["--fsync", "never"]);
    let resp: Vec<SocketAddr> = cluster.ids().into_iter().map(|id| cluster.node(id).resp_addr).collect();
    let mut first = redis::Client::open(format!("redis://{}/", resp[1])).unwrap().get_connection().unwrap();
    for i in 0..100 {
        let _: () = first.set(format!("px{i}"), i).unwrap();
    }
    let mut third = redis::Client::open(format!("redis://{}/", resp[2])).unwrap().get_connection().unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("px{i}")).collect();
    let values: Vec<i64> = third.mget(&keys).unwrap();
    assert_eq!(values, (0..100).collect::<Vec<i64>>());
    assert_eq!(third.del::<_, i64>(&keys[..10]).unwrap(), 10);
    assert!(cli_ok(resp[0], &["INFO", "replication"]).contains("role:master"));
    assert!(cli_ok(resp[0], &["INFO", "cluster"]).contains("cluster_enabled:0"));
    // Every node holds every shard (three replicas): each counts all keys.
    cluster.wait_until("every node counts 90 keys", || resp.iter().all(|a| cli_ok(*a, &["DBSIZE"]) == "90"));
}
