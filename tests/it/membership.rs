//! Membership changes between real kvd processes: a node whose data
//! directory was lost rejoins with `kvd --join` under a concurrent load,
//! the members remove its lost replicas, add it back and promote it once
//! caught up; the cluster then survives the loss of another node; the
//! joining node and a leader may crash midway. Every recorded history is
//! linearizable. Filling node 3 streams snapshots paced to
//! `--snapshot-send-rate`, and STATUS shows them in progress.

use std::time::Duration;

use crate::cluster::Cluster;
use crate::harness::seed;
use crate::load::Load;
use crate::replication::{finish_and_check, KEYS};

/// Node `id`'s entry for `of` in its own `--peers` flag.
fn peer_entry(c: &Cluster, id: u64, of: u64) -> String {
    let peers = c.flag(id, "--peers").expect("a cluster node has --peers");
    let entry = peers.split(',').find(|e| e.starts_with(&format!("{of}="))).expect("every node is listed");
    entry.split_once('=').expect("ID=ADDR").1.to_string()
}

/// Whether `observer` sees node `id` as a voter of every shard it should
/// hold, and no learner anywhere.
fn voter_everywhere(c: &Cluster, observer: u64, id: u64) -> bool {
    c.groups(observer).iter().all(|g| {
        let has = |field: &str| g[field].as_array().is_some_and(|a| a.iter().any(|n| n.as_u64() == Some(id)));
        let learners = g["learners"].as_array().map_or(0, |a| a.len());
        (has("voters") || !has("replicas")) && learners == 0
    })
}

/// Starts the stopped node 3 on an empty data directory with `--join`
/// through node 1.
fn join_on_an_empty_directory(c: &mut Cluster) {
    let dir = c.data_dir(3);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let member = peer_entry(c, 3, 1);
    c.set_args(3, |args| args.extend(["--join".to_string(), member]));
    c.start_node(3, &[]);
}

/// Waits until nodes 1 and 2 recorded node 3's directory as it is now (each
/// once no shard there counted the old one), and see node 3 as a voter of
/// its shards again.
fn wait_readmitted(c: &Cluster) {
    let incarnation = std::fs::read_to_string(c.data_dir(3).join("incarnation")).unwrap();
    let record = format!("3 {}", incarnation.trim());
    c.wait_until("nodes 1 and 2 record node 3's new data directory", || {
        [1, 2]
            .iter()
            .all(|&id| std::fs::read_to_string(c.data_dir(id).join("peers")).is_ok_and(|p| p.contains(&record)))
    });
    c.wait_until("nodes 1 and 2 see node 3 as a voter of its shards again", || {
        voter_everywhere(c, 1, 3) && voter_everywhere(c, 2, 3)
    });
}

/// Three nodes with a seeded load that has had 100 writes acknowledged.
fn three_nodes_under_load(seed: u64) -> (Cluster, Load) {
    let c = Cluster::start(3, &[]);
    let load = Load::start(c.endpoints(), 4, KEYS, seed);
    assert!(load.wait_for_acks(100, Duration::from_secs(30)));
    (c, load)
}

fn members_log(c: &Cluster) -> String {
    format!("{}{}", c.node(1).log(), c.node(2).log())
}

#[test]
fn a_node_that_lost_its_disk_rejoins_with_join_and_the_cluster_survives_losing_another() {
    let seed = seed("a_node_that_lost_its_disk_rejoins_with_join_and_the_cluster_survives_losing_another");
    let (mut c, load) = three_nodes_under_load(seed);

    // Node 3's disk dies; started as before, it is refused and says how to
    // rejoin.
    c.kill(3);
    std::fs::remove_dir_all(c.data_dir(3)).unwrap();
    assert!(load.wait_for_acks(100, Duration::from_secs(60)), "writes go on without node 3");
    let (status, log) = c.start_node_expecting_exit(3);
    assert!(status.is_none_or(|s| !s.success()), "exited {status:?}:\n{log}");
    assert!(log.contains("--join"), "the refusal does not name --join:\n{log}");

    // With --join it is readmitted, filled and promoted while the load runs.
    join_on_an_empty_directory(&mut c);
    wait_readmitted(&c);
    let incarnation = std::fs::read_to_string(c.data_dir(3).join("incarnation")).unwrap();
    let shown = &c.status(1)["cores"][0]["readmissions"];
    assert_eq!(shown[0]["node"], 3, "{shown}");
    assert_eq!(shown[0]["incarnation"], incarnation.trim(), "{shown}");
    assert_eq!(shown[0]["waiting_shards"], serde_json::json!([]), "{shown}");
    let logs = members_log(&c);
    for step in ["removing node 3's old data directory", "adding node 3 to shard", "promoting it to voter"] {
        assert!(logs.contains(step), "no leader logged {step:?}");
    }
    assert!(load.wait_for_acks(100, Duration::from_secs(60)));
    c.wait_converged();

    // Node 3 now holds what node 1 held: the cluster survives losing node 1.
    c.kill(1);
    assert!(load.wait_for_acks(200, Duration::from_secs(60)), "nodes 2 and 3 form a quorum of every shard");
    for id in [2, 3] {
        assert!(!c.node(id).log().contains("panicked"), "node {id}:\n{}", c.node(id).log());
    }
    // A restart of the rejoined node keeps it a member.
    assert!(c.stop(3), "a clean stop exits 0");
    c.start_node(3, &[]);
    c.start_node(1, &[]);
    c.wait_for_leaders();
    assert!(load.wait_for_acks(100, Duration::from_secs(60)));
    assert!(voter_everywhere(&c, 2, 3));
    finish_and_check(&c, load, seed);
}

#[test]
fn a_readmission_survives_the_joining_node_and_a_leader_crashing_midway() {
    let seed = seed("a_readmission_survives_the_joining_node_and_a_leader_crashing_midway");
    let (mut c, load) = three_nodes_under_load(seed);
    c.kill(3);
    join_on_an_empty_directory(&mut c);
    c.wait_until("a leader added node 3 back as a learner", || members_log(&c).contains("adding node 3 to shard"));
    // Really midway: leaders fill one learner at a time, and eight shards
    // take several ticks each.
    let unfinished = |id: u64| {
        c.status(id)["cores"].as_array().unwrap().iter().any(|core| {
            core["groups"].as_array().unwrap().iter().any(|g| !g["learners"].as_array().unwrap().is_empty())
                || core["readmissions"].as_array().unwrap().iter().any(|r| r["waiting_shards"] != serde_json::json!([]))
                || !voter_everywhere(&c, id, 3)
        })
    };
    assert!(unfinished(1) || unfinished(2), "the readmission finished before the crashes");
    // Midway the joining node dies (its directory stays `joined`), then the
    // busiest leader dies too.
    c.kill(3);
    c.start_node(3, &[]);
    let leader = c.busiest_leader(2);
    c.kill(leader);
    std::thread::sleep(Duration::from_secs(1));
    c.start_node(leader, &[]);
    wait_readmitted(&c);
    assert!(load.wait_for_acks(100, Duration::from_secs(60)));
    for id in 1..=3 {
        assert!(!c.node(id).log().contains("panicked"), "node {id}:\n{}", c.node(id).log());
    }
    finish_and_check(&c, load, seed);
}

/// Whether node `observer` shows a snapshot to `to` being streamed and not
/// yet all sent.
fn streaming_to(c: &Cluster, observer: u64, to: u64) -> bool {
    let status = c.status(observer);
    let sending = status["cores"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|core| core["snapshots_sending"].as_array().expect("STATUS lists snapshots being sent").clone());
    // Partly sent: at least one chunk out, and more to come.
    sending.into_iter().any(|s| {
        let (sent, bytes) = (s["sent_bytes"].as_u64().unwrap(), s["bytes"].as_u64().unwrap());
        s["to"] == to && sent > 0 && sent < bytes
    })
}

/// Values of 16 KiB the paced fill carries (about 12 MiB).
const KEYS_FILLED: usize = 768;

#[test]
fn a_fill_streams_paced_snapshots_that_status_shows_in_progress() {
    // 1 MiB/s per core (the slowest rate) for about 12 MiB of values: each
    // shard's snapshot is several 1 MiB chunks, a second apart. The leaders
    // keep a short log, so node 3 must be filled from snapshots.
    let flags = [
        "--snapshot-send-rate",
        "1mb",
        "--compress-min-bytes",
        "0",
        "--raft-log-retain-entries",
        "10",
        "--snapshot-wal-bytes",
        "1048576",
        "--wal-segment-bytes",
        "1048576",
    ];
    let mut c = Cluster::start(3, &flags);
    let mut client = c.client(1);
    let value = |i: usize| format!("{i:>16384}").into_bytes();
    for i in 0..KEYS_FILLED {
        client.put(format!("k{i}").as_bytes(), &value(i), kv_engine::Condition::Always).unwrap();
    }
    c.kill(3);
    join_on_an_empty_directory(&mut c);
    c.wait_until("a member shows a snapshot to node 3 in progress", || {
        streaming_to(&c, 1, 3) || streaming_to(&c, 2, 3)
    });
    wait_readmitted(&c);
    let logs = members_log(&c);
    assert!(logs.contains("sent a snapshot of shard"), "{logs}");
    assert!(c.node(3).log().contains("installing a snapshot from the leader"));
    let mut reader = c.client(3);
    for i in 0..KEYS_FILLED {
        let got = reader.get_with(format!("k{i}").as_bytes(), kv_replication::Consistency::Stale).unwrap();
        assert_eq!(got.map(|(v, _)| v), Some(value(i)), "k{i} on node 3");
    }
}
