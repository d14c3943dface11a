//! Membership and readmission, step by step, on three machines wired
//! together in memory (no WAL: Readies count as persisted at once). kvsim
//! covers the same code under faults; these pin the order of the steps,
//! the gate on a lost directory's votes and acknowledgements, the bound
//! on a core's fills at once, and which map a snapshot install uses.

use std::collections::BTreeMap;

use kv_engine::snapshot::SnapshotMeta;
use kv_engine::{Command, Condition};
use raft::eraftpb::{Message, MessageType};

use super::{Machine, MachineConfig};
use crate::restore::{RestoreConfig, Restorer};
use crate::types::Now;
use crate::TICK_INTERVAL_DEFAULT;

const SHARD: u32 = 0;
/// A key only a staged map holds (see `Cluster::stage`).
const MARKER: &[u8] = b"staged-marker";
const REPLICAS: [u64; 3] = [1, 2, 3];
/// Ticks any wait below may take (a generous bound: each takes tens).
const TICKS_MAX: u32 = 600;

fn machine(node_id: u64, joined: bool) -> Machine<u64> {
    machine_of(node_id, joined, &[SHARD])
}

fn machine_of(node_id: u64, joined: bool, shards: &[u32]) -> Machine<u64> {
    let config = RestoreConfig {
        machine: MachineConfig { node_id, core: 0, durable: false, wal_batch_bytes_max: 0 },
        tick: TICK_INTERVAL_DEFAULT,
        log_retain_entries: 4,
        compress_min_bytes: 0,
    };
    Restorer::new(0, shards.iter().copied()).finish(config, |_| REPLICAS.to_vec(), joined).expect("a new machine")
}

/// Three machines of one shard, and every message in flight between them.
struct Cluster {
    machines: BTreeMap<u64, Machine<u64>>,
    now_ms: u64,
    /// Messages taken from a machine's outputs, not yet delivered.
    wire: Vec<(u32, Message)>,
    /// How the receiver of a snapshot stages a map loaded from it before
    /// stepping it, as the transport does (`None`: nothing staged, the
    /// install decodes): under the metadata this returns for the
    /// snapshot's own, with [`MARKER`] added, so a test can tell whether
    /// the staged map was the one installed.
    stage: Option<fn(SnapshotMeta) -> SnapshotMeta>,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::of(&[SHARD])
    }

    fn of(shards: &[u32]) -> Cluster {
        let machines = REPLICAS.iter().map(|&n| (n, machine_of(n, false, shards))).collect();
        Cluster { machines, now_ms: 1_000, wire: Vec::new(), stage: None }
    }

    fn now(&self) -> Now {
        Now { monotonic_ms: self.now_ms, wall_ms: 1_700_000_000_000 + self.now_ms }
    }

    /// Drives every machine and delivers messages until none are left.
    fn settle(&mut self) {
        for _ in 0..1_000 {
            let now = self.now();
            for m in self.machines.values_mut() {
                m.drive(now);
                let out = m.take_outputs();
                for source in out.prepare {
                    let data = kv_engine::snapshot::encode_blocking(&source.meta, &source.entries);
                    m.snapshot_prepared(&source, data, now);
                }
                self.wire.extend(out.messages);
            }
            if self.wire.is_empty() {
                return;
            }
            for (group, msg) in std::mem::take(&mut self.wire) {
                let (from, to, snapshot) = (msg.from, msg.to, msg.get_msg_type() == MessageType::MsgSnapshot);
                let receiver = self.machines.get_mut(&to).expect("a member");
                if let (true, Some(stage)) = (snapshot, self.stage) {
                    let path = std::path::Path::new("memory");
                    let (meta, mut entries) = kv_engine::snapshot::decode(msg.get_snapshot().get_data(), path).unwrap();
                    entries.push((MARKER.into(), kv_engine::Stored::with_expiry("m".into(), 1, 0)));
                    let mut map = kv_engine::ShardMap::new();
                    map.restore(meta.index, entries);
                    receiver.stage_snapshot_map(stage(meta), map);
                }
                let _ = receiver.step(group, msg);
                if snapshot {
                    self.machines.get_mut(&from).expect("a member").report_snapshot(group, to, true);
                }
            }
        }
        panic!("messages still flowing after 1 000 rounds");
    }

    fn tick(&mut self) {
        self.now_ms += TICK_INTERVAL_DEFAULT.as_millis() as u64;
        let now = self.now();
        for m in self.machines.values_mut() {
            m.tick(now);
        }
        self.settle();
    }

    /// Ticks until `done`, at most [`TICKS_MAX`] times.
    fn tick_until(&mut self, what: &str, mut done: impl FnMut(&Cluster) -> bool) {
        for _ in 0..TICKS_MAX {
            if done(self) {
                return;
            }
            self.tick();
        }
        panic!("not after {TICKS_MAX} ticks: {what}");
    }

    fn leader(&self) -> Option<u64> {
        let (&id, _) = self.machines.iter().find(|(&id, m)| m.leader_of(SHARD) == Some(id))?;
        Some(id)
    }

    /// The shard's (voters, learners) as `node` applied them.
    fn membership(&self, node: u64) -> (Vec<u64>, Vec<u64>) {
        let cs = self.machines[&node].shard_copy(SHARD).expect("the shard is here").conf_state;
        let sorted = |mut v: Vec<u64>| {
            v.sort_unstable();
            v
        };
        (sorted(cs.voters), sorted(cs.learners))
    }

    fn put(&mut self, key: &str) {
        let leader = self.leader().expect("a leader");
        let now = self.now();
        let key = bytes::Bytes::copy_from_slice(key.as_bytes());
        let put = Command::Put { key, value: "v".into(), condition: Condition::Always };
        self.machines.get_mut(&leader).unwrap().propose(SHARD, &put, 0, now).expect("the leader takes writes");
        self.settle();
    }
}

#[test]
fn a_lost_directory_is_removed_then_added_back_as_a_learner_then_promoted() {
    let c = readmit_and_check(None);
    assert!(c.machines[&3].map(SHARD).unwrap().get(MARKER).is_none());
}

#[test]
fn a_snapshot_loaded_ahead_is_swapped_in_and_a_mismatched_one_is_decoded_again() {
    // The transport's way: the map staged for the snapshot being stepped
    // is the one installed.
    let c = readmit_and_check(Some(|meta| meta));
    assert!(c.machines[&3].map(SHARD).unwrap().get(MARKER).is_some(), "the staged map was swapped in");
    // A map staged for another snapshot (an older stream of the shard) is
    // not used: the install decodes the snapshot raft-rs installs.
    let c = readmit_and_check(Some(|meta| SnapshotMeta { index: meta.index - 1, ..meta }));
    assert!(c.machines[&3].map(SHARD).unwrap().get(MARKER).is_none(), "a mismatched map was not used");
}

/// Readmits node 3 on an empty directory and checks the steps and its
/// data; returns the cluster.
fn readmit_and_check(stage: Option<fn(SnapshotMeta) -> SnapshotMeta>) -> Cluster {
    let mut c = Cluster::new();
    c.stage = stage;
    c.tick_until("a leader", |c| c.leader().is_some());
    let leader = c.leader().unwrap();
    assert_ne!(leader, 3, "node 1 stands first; node 3 is never the leader here");
    for i in 0..20 {
        c.put(&format!("k{i}"));
    }
    // Node 3 comes back on an empty directory, as `kvd --join` starts it:
    // its group is a learner of the first configuration.
    c.machines.insert(3, machine(3, true));
    assert_eq!(c.membership(3), (vec![1, 2], vec![3]), "the joined node never votes before it is promoted");
    for id in [1, 2] {
        c.machines.get_mut(&id).unwrap().readmit(3, 0xfeed);
    }
    let mut seen = vec![c.membership(leader)];
    c.tick_until("node 3 readmitted everywhere", |c| {
        let now = c.membership(leader);
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        [1, 2].iter().all(|id| c.machines[id].readmitted(3, 0xfeed)) && c.membership(leader) == (vec![1, 2, 3], vec![])
    });
    let (all, none): (Vec<u64>, Vec<u64>) = (vec![1, 2, 3], vec![]);
    assert_eq!(
        seen,
        vec![(all.clone(), none.clone()), (vec![1, 2], none.clone()), (vec![1, 2], vec![3]), (all, none)],
        "removed, added back as a learner, promoted: one node per change"
    );
    // Filled: node 3 holds what was written before it lost its disk.
    c.tick_until("node 3 applied everything", |c| {
        c.machines[&3]
            .map(SHARD)
            .is_some_and(|m| m.applied_index() == c.machines[&leader].map(SHARD).unwrap().applied_index())
    });
    let map = c.machines[&3].map(SHARD).unwrap();
    assert!((0..20).all(|i| map.get(format!("k{i}").as_bytes()).is_some()));
    c
}

#[test]
fn a_group_counting_the_lost_directory_neither_hears_nor_tells_it_anything() {
    let mut c = Cluster::new();
    c.tick_until("a leader", |c| c.leader().is_some());
    let leader = c.leader().unwrap();
    let m = c.machines.get_mut(&leader).unwrap();
    m.readmit(3, 0xfeed);
    assert_eq!(m.readmissions(), vec![(3, 0xfeed, vec![SHARD])]);
    // Votes and acknowledgements from node 3 do not count while the group
    // still counts its old directory.
    for kind in [
        MessageType::MsgAppendResponse,
        MessageType::MsgHeartbeatResponse,
        MessageType::MsgRequestVoteResponse,
        MessageType::MsgRequestPreVoteResponse,
    ] {
        let mut msg = Message { from: 3, to: leader, term: 1, ..Message::default() };
        msg.set_msg_type(kind);
        assert!(m.step(SHARD, msg).is_err(), "{kind:?} from the lost directory was heard");
    }
    // Nothing is sent to it meanwhile (heartbeats to node 2 still go).
    let now = Now { monotonic_ms: c.now_ms + 10_000, wall_ms: c.now_ms + 10_000 };
    for _ in 0..5 {
        m.tick(now);
        m.drive(now);
    }
    let sent = m.take_outputs().messages;
    assert!(sent.iter().any(|(_, msg)| msg.to == 2), "the leader still talks to node 2");
    assert!(sent.iter().all(|(_, msg)| msg.to != 3), "nothing goes to the lost directory: {sent:?}");
    // A leader's message from node 3 proves the group is past the old
    // directory (only a promoted new one can lead): the wait ends.
    let mut heartbeat = Message { from: 3, to: leader, term: 1, ..Message::default() };
    heartbeat.set_msg_type(MessageType::MsgHeartbeat);
    let _ = m.step(SHARD, heartbeat);
    assert!(m.readmitted(3, 0xfeed));
    // Another directory later starts over.
    m.readmit(3, 0xbeef);
    assert!(!m.readmitted(3, 0xbeef) && !m.readmitted(3, 0xfeed));
}

#[test]
fn a_core_proposes_at_most_fills_per_core_max_learners_while_changes_are_unapplied() {
    let shards = [0, 1, 2, 3];
    let mut c = Cluster::of(&shards);
    c.tick_until("node 1 leads every shard", |c| shards.iter().all(|&s| c.machines[&1].leader_of(s) == Some(1)));
    c.machines.insert(3, machine_of(3, true, &shards));
    for id in [1, 2] {
        c.machines.get_mut(&id).unwrap().readmit(3, 0xfeed);
    }
    c.tick_until("node 3's old directory removed from every shard", |c| {
        shards.iter().all(|&s| !c.machines[&1].shard_copy(s).unwrap().conf_state.voters.contains(&3))
    });
    // Node 1 alone ticks on, its messages undelivered: no change it
    // proposes now is applied, as when applying takes longer than a tick.
    let mut adding = std::collections::BTreeSet::new();
    let m = c.machines.get_mut(&1).unwrap();
    for i in 1..=10u64 {
        let now = Now { monotonic_ms: c.now_ms + i * 100, wall_ms: c.now_ms + i * 100 };
        m.tick(now);
        m.drive(now);
        for (group, msg) in m.take_outputs().messages {
            if msg.get_entries().iter().any(adds_learner_3) {
                adding.insert(group);
            }
        }
    }
    assert!(!adding.is_empty(), "a learner is being added");
    assert!(adding.len() <= super::membership::FILLS_PER_CORE_MAX, "fills at once: {adding:?}");
}

/// Whether `e` is a conf change adding node 3 as a learner.
fn adds_learner_3(e: &raft::eraftpb::Entry) -> bool {
    use protobuf::Message as _;
    e.get_entry_type() == raft::eraftpb::EntryType::EntryConfChangeV2
        && raft::eraftpb::ConfChangeV2::parse_from_bytes(&e.data).is_ok_and(|cc| {
            cc.get_changes()
                .iter()
                .any(|ch| ch.node_id == 3 && ch.get_change_type() == raft::eraftpb::ConfChangeType::AddLearnerNode)
        })
}
