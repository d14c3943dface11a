//! Replication between real kvd processes: forwarding and read levels,
//! failover under load, catch-up from the log and by snapshot, partitions,
//! a paused leader, and strangers without the cluster secret. Fault tests
//! record a history and check it for linearizability; seeds are printed.

use std::io::{Read, Write};
use std::time::Duration;

use kv_engine::Condition;
use kv_replication::{Consistency, Layout};
use kv_sim::linearizability::check;

use crate::cluster::Cluster;
use crate::harness::{kvctl, seed, stdout};
use crate::load::{self, Load};

pub(crate) const KEYS: usize = 8;

/// Every node's strict view of every key, appended to the history.
fn final_reads(c: &Cluster, load_origin: std::time::Instant) -> Vec<kv_sim::linearizability::Event> {
    c.wait_converged();
    let ids = c.ids().into_iter().filter(|&id| c.is_running(id)).collect::<Vec<_>>();
    ids.iter().flat_map(|&id| load::read_all(&mut c.client(id), KEYS, load_origin)).collect()
}

/// Stops the load, reads every key through every node once the cluster has
/// converged, and checks the whole history.
pub(crate) fn finish_and_check(c: &Cluster, load: Load, seed: u64) {
    let origin = load.origin;
    let mut history = load.finish();
    history.extend(final_reads(c, origin));
    check(&history).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
}

fn layout() -> Layout {
    Layout::cluster(1, vec![1, 2, 3], 3, 1, kv_replication::layout::SHARDS_PER_CORE_DEFAULT)
}

#[test]
fn three_nodes_replicate_forward_and_serve_every_consistency() {
    let c = Cluster::start(3, &[]);
    let ids = c.ids();
    for i in 0..30usize {
        let mut client = c.client(ids[i % 3]);
        client.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes(), Condition::Always).unwrap();
    }
    for &id in &ids {
        let mut client = c.client(id);
        for i in 0..30 {
            let want = Some(format!("v{i}").into_bytes());
            for level in [Consistency::Strict, Consistency::Lease] {
                let got = client.get_with(format!("k{i}").as_bytes(), level).unwrap().map(|(v, _)| v);
                assert_eq!(got, want, "node {id} {level:?} k{i}");
            }
        }
        // Stale reads come from the node's own replica: eventually there.
        c.wait_until("stale reads see every write", || {
            (0..30).all(|i| {
                client.get_with(format!("k{i}").as_bytes(), Consistency::Stale).unwrap().map(|(v, _)| v)
                    == Some(format!("v{i}").into_bytes())
            })
        });
    }
    let leaders = c.leaders(1);
    let distinct: std::collections::BTreeSet<_> = leaders.values().flatten().collect();
    assert!(distinct.len() >= 2, "leaders spread over the nodes: {leaders:?}");
    let table = stdout(&kvctl(&c.endpoint(2), &["cluster", "status"], b""));
    assert!(table.contains("SHARD") && table.contains("LEADER") && table.contains("up"), "{table}");
}

#[test]
fn leader_sigkill_under_load_loses_no_acknowledged_write() {
    let seed = seed("leader_sigkill_under_load_loses_no_acknowledged_write");
    let mut c = Cluster::start(3, &[]);
    let load = Load::start(c.endpoints(), 6, KEYS, seed);
    assert!(load.wait_for_acks(200, Duration::from_secs(30)), "the load got going");
    let victim = c.busiest_leader(1);
    c.kill(victim);
    assert!(load.wait_for_acks(300, Duration::from_secs(60)), "writes resume after the leader dies");
    c.start_node(victim, &[]);
    c.wait_for_leaders();
    assert!(load.wait_for_acks(100, Duration::from_secs(60)));
    finish_and_check(&c, load, seed);
}

#[test]
fn a_follower_catches_up_from_the_log_and_by_snapshot() {
    // Small frames (64 KiB values) so a shard's snapshot (about 2 MB here)
    // needs many chunks: they must be reassembled on the follower.
    let flags = [
        "--raft-log-retain-entries",
        "30",
        "--snapshot-wal-bytes",
        "1048576",
        "--wal-segment-bytes",
        "1048576",
        "--max-value-bytes",
        "65536",
        // Padded values stored as they are: the snapshot must be large.
        "--compress-min-bytes",
        "0",
    ];
    let mut c = Cluster::start(3, &flags);
    let mut writer = c.client(1);
    let value = |tag: &str, i: usize| {
        let mut v = format!("{tag}-value-{i}-").into_bytes();
        v.resize(if tag == "b" { 20_000 } else { 20 }, b'.');
        v
    };
    let round = |c: &mut Cluster, writer: &mut kv_net::client::Client, keys: usize, tag: &str| {
        c.kill(3);
        for i in 0..keys {
            // Right after the kill a write forwarded to node 3 (if it led
            // the shard) has an unknown outcome: these puts are idempotent,
            // so send them again (bounded) until the new leader takes them.
            let (key, v) = (format!("{tag}{i}"), value(tag, i));
            let mut attempts = 0;
            while let Err(e) = writer.put(key.as_bytes(), &v, Condition::Always) {
                attempts += 1;
                assert!(attempts < 100, "{key}: {e:?}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        c.start_node(3, &[]);
        let mut reader = c.client(3);
        // A request can time out while node 3 installs a snapshot: then
        // ask again on a new connection.
        c.wait_until("node 3 has every write", || {
            (0..keys).all(|i| match reader.get_with(format!("{tag}{i}").as_bytes(), Consistency::Stale) {
                Ok(got) => got.map(|(v, _)| v) == Some(value(tag, i)),
                Err(_) => {
                    reader = c.client(3);
                    false
                }
            })
        });
        c.node(3).log()
    };
    // A few entries per shard: the leaders still hold them in their logs.
    let log = round(&mut c, &mut writer, 20, "a");
    assert!(!log.contains("installing a snapshot"), "caught up from the log, not a snapshot");
    // Hundreds per shard: the leaders compacted past them.
    let log = round(&mut c, &mut writer, 800, "b");
    assert!(log.contains("installing a snapshot"), "caught up by snapshot:\n{log}");
    // Streamed in chunks: none carries more than 1 MiB.
    let streamed = log
        .lines()
        .filter(|l| l.contains("received a snapshot of shard"))
        .filter_map(|l| l.split("bytes=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok());
    assert!(streamed.max().is_some_and(|b| b > 1 << 20), "a snapshot of over 1 MiB came in chunks:\n{log}");
    // Loaded into a map in the background, then swapped in.
    assert!(log.contains("loaded_ahead=true"), "a snapshot was loaded ahead of its install:\n{log}");
    c.wait_converged();
}

#[test]
fn a_partitioned_leader_stops_acknowledging_and_the_majority_goes_on() {
    let seed = seed("a_partitioned_leader_stops_acknowledging_and_the_majority_goes_on");
    let c = Cluster::start(3, &[]);
    let victim = c.busiest_leader(1);
    let others: Vec<u64> = c.ids().into_iter().filter(|&i| i != victim).collect();
    let load = Load::start(c.endpoints(), 6, KEYS, seed);
    assert!(load.wait_for_acks(100, Duration::from_secs(30)));
    // A key of a shard the victim leads, written through the victim itself.
    let led: Vec<u32> = c.leaders(victim).into_iter().filter(|(_, l)| *l == Some(victim)).map(|(s, _)| s).collect();
    let key = (0..).map(|i| format!("iso-{i}")).find(|k| led.contains(&layout().shard_of_key(k.as_bytes()))).unwrap();
    let mut direct = c.client(victim);
    c.isolate(victim);
    let isolated_write = direct.put(key.as_bytes(), b"must-not-be-acknowledged", Condition::Always);
    assert!(isolated_write.is_err(), "an isolated leader acknowledged a write: {isolated_write:?}");
    c.wait_until("the majority elects leaders for every shard", || {
        c.leaders(others[0]).values().all(|l| matches!(l, Some(l) if *l != victim))
    });
    assert!(load.wait_for_acks(200, Duration::from_secs(60)), "the majority keeps acknowledging");
    c.heal();
    c.wait_until("the old leader steps down", || {
        c.groups(victim).iter().all(|g| g["is_leader"] == false || g["term"].as_u64() > Some(1))
    });
    finish_and_check(&c, load, seed);
    let mut reader = c.client(others[0]);
    let after = reader.get_with(key.as_bytes(), Consistency::Strict).unwrap().map(|(v, _)| v);
    assert_ne!(after, Some(b"must-not-be-acknowledged".to_vec()), "the isolated write was applied");
}

#[test]
fn a_paused_leader_is_replaced_and_rejoins() {
    let seed = seed("a_paused_leader_is_replaced_and_rejoins");
    let c = Cluster::start(3, &[]);
    let victim = c.busiest_leader(1);
    let others: Vec<u64> = c.ids().into_iter().filter(|&i| i != victim).collect();
    let load = Load::start(c.endpoints(), 6, KEYS, seed);
    assert!(load.wait_for_acks(100, Duration::from_secs(30)));
    c.signal(victim, libc::SIGSTOP);
    c.wait_until("the others elect new leaders", || {
        c.leaders(others[0]).values().all(|l| matches!(l, Some(l) if *l != victim))
    });
    assert!(load.wait_for_acks(200, Duration::from_secs(60)), "writes go on without the paused leader");
    c.signal(victim, libc::SIGCONT);
    c.wait_for_leaders();
    assert!(load.wait_for_acks(100, Duration::from_secs(60)));
    finish_and_check(&c, load, seed);
}

#[test]
fn strangers_without_the_cluster_secret_are_refused() {
    let mut c = Cluster::start(3, &[]);
    // A raw connection claiming to be node 2, with a made-up proof.
    use kv_net::peer::wire::{Challenge, PeerHello, CHALLENGE_BYTES, MAC_BYTES, PEER_VERSION};
    let mut s = std::net::TcpStream::connect(c.peer_addr(1)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Node 2's real incarnation (the acceptor knows it): only the proof is wrong.
    let text = std::fs::read_to_string(c.data_dir(2).join("incarnation")).unwrap();
    let incarnation = u64::from_str_radix(text.trim(), 16).unwrap();
    let hello = PeerHello {
        version: PEER_VERSION,
        node: 2,
        core: 0,
        cores: 1,
        shards: 8,
        incarnation,
        nonce: [1; 16],
        joined: false,
    };
    s.write_all(&hello.encode()).unwrap();
    let mut ch = [0u8; CHALLENGE_BYTES];
    s.read_exact(&mut ch).unwrap();
    assert_eq!(Challenge::decode(&ch).unwrap().status, 0);
    s.write_all(&[7u8; MAC_BYTES]).unwrap();
    // Anything after a failed proof is never read: the node hangs up.
    let _ = s.write_all(&[0u8; 64]);
    let mut b = [0u8; 1];
    assert!(matches!(s.read(&mut b), Ok(0) | Err(_)), "connection closed after a bad proof");
    c.wait_until("the node logs the failed authentication", || c.node(1).log().contains("failed authentication"));

    // A whole kvd posing as node 3 with another secret cannot take part.
    c.kill(3);
    // Settled: every shard led by node 1 or 2, and by its preferred leader
    // where that is one of them (else the periodic rebalance would still
    // move it, starting a new term).
    c.wait_until("nodes 1 and 2 lead every shard, each its own", || {
        c.leaders(1).iter().all(|(&shard, l)| match layout().replicas_of(shard)[0] {
            3 => matches!(l, Some(1) | Some(2)),
            preferred => *l == Some(preferred),
        })
    });
    let terms_before: Vec<_> = c.groups(1).iter().map(|g| g["term"].clone()).collect();
    let wrong = std::env::temp_dir().join(format!("kvd-wrong-secret-{}", c.peer_addr(3)));
    std::fs::write(&wrong, "not-the-cluster-secret-at-all-000").unwrap();
    c.set_args(3, |args| {
        let i = args.iter().position(|a| a == "--cluster-secret-file").unwrap();
        args[i + 1] = wrong.display().to_string();
    });
    c.start_node(3, &[]);
    std::thread::sleep(Duration::from_secs(3));
    let links = c.status(3)["cores"][0]["links"].clone();
    assert!(links.as_array().unwrap().iter().all(|l| l["connected"] == false), "impostor linked up: {links}");
    let mut client = c.client(1);
    client.put(b"after-impostor", b"fine", Condition::Always).unwrap();
    assert_eq!(client.get(b"after-impostor").unwrap().unwrap().0, b"fine");
    // The impostor started no election anybody heard of.
    let terms_after: Vec<_> = c.groups(1).iter().map(|g| g["term"].clone()).collect();
    assert_eq!(terms_before, terms_after, "the impostor disturbed the cluster");
}

#[test]
fn a_node_on_a_wiped_data_directory_is_refused_and_its_old_directory_rejoins() {
    let mut c = Cluster::start(3, &[]);
    let mut writer = c.client(1);
    let put = |w: &mut kv_net::client::Client, i: usize| {
        w.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes(), Condition::Always).unwrap();
    };
    let has_all = |c: &Cluster, id: u64, n: usize| {
        let mut reader = c.client(id);
        c.wait_until(&format!("node {id} has the first {n} writes"), || {
            (0..n).all(|i| match reader.get_with(format!("k{i}").as_bytes(), Consistency::Stale) {
                Ok(got) => got.map(|(v, _)| v) == Some(format!("v{i}").into_bytes()),
                Err(_) => {
                    reader = c.client(id);
                    false
                }
            })
        });
    };
    for i in 0..40 {
        put(&mut writer, i);
    }
    // Node 3 acknowledged entries: the leaders count on it having them.
    has_all(&c, 3, 40);
    c.kill(3);
    let dir = c.data_dir(3);
    let saved = dir.with_extension("saved");
    std::fs::rename(&dir, &saved).unwrap();
    for i in 40..60 {
        put(&mut writer, i);
    }

    // Started again on an empty directory: refused by its peers, it stops
    // with a message, without a panic, twice in a row.
    for attempt in 1..=2 {
        let (status, log) = c.start_node_expecting_exit(3);
        assert!(status.is_none_or(|s| !s.success()), "attempt {attempt}: exited {status:?}:\n{log}");
        assert!(log.contains("must not rejoin under id 3"), "attempt {attempt}, no reason given:\n{log}");
        assert!(!log.contains("panicked"), "attempt {attempt}:\n{log}");
    }
    // The others never let it in: they still serve, with their own terms.
    put(&mut writer, 60);
    assert_eq!(writer.get_with(b"k60", Consistency::Strict).unwrap().unwrap().0, b"v60");
    for id in [1, 2] {
        assert!(!c.node(id).log().contains("panicked"), "node {id}:\n{}", c.node(id).log());
    }

    // Its own directory back: it rejoins and catches up.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::rename(&saved, &dir).unwrap();
    c.start_node(3, &[]);
    has_all(&c, 3, 61);
    c.wait_converged();
}

#[test]
fn a_graceful_stop_hands_leadership_over_and_leaders_come_back() {
    let seed = seed("a_graceful_stop_hands_leadership_over_and_leaders_come_back");
    let mut c = Cluster::start(3, &[]);
    let preferred = |shard: u32| layout().replicas_of(shard)[0];
    c.wait_until("every shard is led by its preferred replica", || {
        c.leaders(1).iter().all(|(s, l)| *l == Some(preferred(*s)))
    });
    let victim = c.busiest_leader(1);
    let led: Vec<u32> = c.leaders(1).into_iter().filter(|(_, l)| *l == Some(victim)).map(|(s, _)| s).collect();
    let others: Vec<u64> = c.ids().into_iter().filter(|&i| i != victim).collect();
    let load = Load::start(c.endpoints(), 4, KEYS, seed);
    assert!(load.wait_for_acks(100, Duration::from_secs(30)));
    assert!(c.stop(victim), "a clean stop exits 0");
    // The handover happened before the exit: the new leaders are in office
    // already, no election timeout needed.
    for shard in &led {
        let in_office = others
            .iter()
            .any(|&o| c.groups(o).iter().any(|g| g["shard"].as_u64() == Some(*shard as u64) && g["is_leader"] == true));
        assert!(in_office, "shard {shard} has no leader right after its leader stopped cleanly");
    }
    assert!(load.wait_for_acks(100, Duration::from_secs(60)));
    c.start_node(victim, &[]);
    c.wait_until("leaders return to their preferred replicas", || {
        c.leaders(1).iter().all(|(s, l)| *l == Some(preferred(*s)))
    });
    assert!(load.wait_for_acks(50, Duration::from_secs(60)));
    finish_and_check(&c, load, seed);
}

#[test]
fn nodes_crashing_at_crash_points_rejoin_and_the_history_stays_linearizable() {
    let seed = seed("nodes_crashing_at_crash_points_rejoin_and_the_history_stays_linearizable");
    // (failpoint, times it passes before the crash): after startup, under load.
    let points =
        [("wal::fdatasync", 60), ("wal::after_fdatasync", 60), ("raft::before_apply", 60), ("snapshot::mid_write", 0)];
    let flags = ["--snapshot-wal-bytes", "65536", "--wal-segment-bytes", "65536", "--raft-log-retain-entries", "50"];
    let mut c = Cluster::start(3, &flags);
    let load = Load::start(c.endpoints(), 6, KEYS, seed);
    assert!(load.wait_for_acks(100, Duration::from_secs(30)));
    for (i, (point, pass)) in points.into_iter().enumerate() {
        let victim = (i as u64 % 3) + 1;
        c.kill(victim);
        let armed = format!("{point}={pass}*off->panic");
        c.start_node(victim, &[("FAILPOINTS", armed.as_str())]);
        c.wait_exit(victim);
        println!("node {victim} crashed at {point}");
        c.start_node(victim, &[]);
        c.wait_for_leaders();
        assert!(load.wait_for_acks(100, Duration::from_secs(60)), "writes go on after a crash at {point}");
    }
    finish_and_check(&c, load, seed);
}

#[test]
fn a_cluster_client_goes_straight_to_each_shards_leader() {
    let mut c = Cluster::start(3, &[]);
    c.wait_until("node 1 knows every node's endpoint", || {
        c.status(1)["endpoints"].as_object().is_some_and(|e| e.len() == 3)
    });
    let mut cc = kv_net::cluster_client::ClusterClient::connect(&[c.endpoint(1)], Duration::from_secs(10)).unwrap();
    let leaders = c.leaders(1);
    for i in 0..40 {
        let key = format!("routed-{i}");
        cc.put_if(key.as_bytes(), b"v", Condition::Always).unwrap();
        let leader = leaders[&layout().shard_of_key(key.as_bytes())].expect("a leader");
        assert_eq!(cc.last_endpoint(), c.endpoint(leader), "{key} was not sent to its leader");
    }
    // A stale topology costs a retry, not an error.
    let victim = c.busiest_leader(1);
    c.kill(victim);
    for i in 0..40 {
        let key = format!("routed-{i}");
        assert_eq!(cc.get_with(key.as_bytes(), Consistency::Strict).unwrap().map(|(v, _)| v), Some(b"v".to_vec()));
    }
}
