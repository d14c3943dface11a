//! What a run must satisfy, checked on its history and its final state:
//!
//! - the history of every key is linearizable, strict and lease reads
//!   included (stale reads may be behind by design and are left out);
//!   the final strict reads of every key are part of it, so an
//!   acknowledged write that was lost shows up as a violation;
//! - versions name writes: one version of a shard is never two different
//!   writes, a value is always read back with the version its write got,
//!   and versions never go back in real time on one key;
//! - after the faults end, the replicas of every shard converge to the same
//!   applied index and the same map (`replicas_converged`), and every node
//!   has readmitted every peer that lost its disk (`directories_recorded`);
//! - applied ≤ committed on every replica at every step (checked as the
//!   world runs, `Machine::invariant_violation`).

use std::collections::BTreeMap;

use bytes::Bytes;
use kv_replication::Consistency;

use super::history::{History, OpKind, Result as OpResult};
use super::node::{NodeState, SimNode};
use crate::linearizability::{self, Event, Op, Outcome};

/// Every check on a finished run's history; the failures found.
pub fn history(history: &History, lin_keys: &[Bytes], shard_of: impl Fn(&[u8]) -> u32) -> Vec<String> {
    let mut failures = Vec::new();
    if let Err(report) = linearizability::check(&lin_events(history, lin_keys)) {
        failures.push(format!("not linearizable: {report}"));
    }
    failures.extend(versions(history, shard_of));
    failures
}

/// The history of the linearizability-checked keys in the checker's terms.
fn lin_events(history: &History, lin_keys: &[Bytes]) -> Vec<Event> {
    let mut events = Vec::new();
    for op in history.ops.iter().filter(|op| lin_keys.contains(&op.key)) {
        let unknown = matches!(op.result, None | Some(OpResult::Unknown { .. }));
        let (lin_op, outcome) = match (&op.kind, &op.result) {
            (OpKind::Get { consistency: Consistency::Stale }, _) => continue,
            (OpKind::Get { .. }, _) if unknown => continue,
            (OpKind::Get { .. }, Some(OpResult::Read { value })) => {
                (Op::Get, Outcome::GetOk(value.as_ref().map(|(v, _)| v.to_vec())))
            }
            (OpKind::Put { value } | OpKind::PutLongTtl { value }, _) => {
                (Op::Put(value.to_vec()), if unknown { Outcome::Unknown } else { Outcome::PutOk })
            }
            (OpKind::Delete, Some(OpResult::Deleted { existed })) => {
                (Op::Delete, Outcome::DeleteOk { existed: *existed })
            }
            (OpKind::Delete, _) => (Op::Delete, Outcome::Unknown),
            (OpKind::Cas { expected, value, .. }, result) => {
                let outcome = match result {
                    Some(OpResult::Written { .. }) => Outcome::CasOk,
                    Some(OpResult::CasFailed) => Outcome::CasFailed,
                    _ => Outcome::Unknown,
                };
                (Op::Cas { expected: expected.to_vec(), new: value.to_vec() }, outcome)
            }
            (kind, result) => unreachable!("a lin key saw {kind:?} => {result:?}"),
        };
        events.push(Event {
            client: op.client,
            key: op.key.to_vec(),
            op: lin_op,
            invoked_ns: op.invoked_us * 1000,
            completed_ns: if unknown { None } else { op.completed_us.map(|t| t * 1000) },
            outcome,
        });
    }
    events
}

/// Versions name writes (see the module docs).
fn versions(history: &History, shard_of: impl Fn(&[u8]) -> u32) -> Vec<String> {
    let mut failures = Vec::new();
    // (shard, version) -> (key, value) of the write it names.
    let mut named: BTreeMap<(u32, u64), (Bytes, Bytes)> = BTreeMap::new();
    let mut note = |shard: u32, version: u64, key: &Bytes, value: &Bytes, failures: &mut Vec<String>| {
        let entry = named.entry((shard, version)).or_insert_with(|| (key.clone(), value.clone()));
        if entry != &(key.clone(), value.clone()) {
            failures.push(format!(
                "version {version} of shard {shard} names two writes: {:?}={:?} and {key:?}={value:?}",
                entry.0, entry.1
            ));
        }
    };
    // Per key: (completed, version) of every answer that carries one.
    let mut by_key: BTreeMap<Bytes, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for op in &history.ops {
        let shard = shard_of(&op.key);
        let written = match (&op.kind, &op.result) {
            (
                OpKind::Put { value }
                | OpKind::PutLongTtl { value }
                | OpKind::PutShortTtl { value, .. }
                | OpKind::Cas { value, .. },
                Some(OpResult::Written { version }),
            ) => Some((value, *version)),
            (OpKind::Get { .. }, Some(OpResult::Read { value: Some((value, version)) })) => Some((value, *version)),
            _ => None,
        };
        let Some((value, version)) = written else { continue };
        note(shard, version, &op.key, value, &mut failures);
        let linearizable = !matches!(op.kind, OpKind::Get { consistency: Consistency::Stale });
        if let (true, Some(done)) = (linearizable, op.completed_us) {
            by_key.entry(op.key.clone()).or_default().push((op.invoked_us, done, version));
        }
    }
    for (key, mut seen) in by_key {
        seen.sort_unstable();
        // The highest version answered by an operation that completed before
        // each later one started: nothing later may answer a lower one.
        let mut done_sorted: Vec<(u64, u64)> = seen.iter().map(|&(_, done, v)| (done, v)).collect();
        done_sorted.sort_unstable();
        let (mut at, mut floor) = (0, 0);
        for &(invoked, _, version) in &seen {
            while at < done_sorted.len() && done_sorted[at].0 < invoked {
                floor = floor.max(done_sorted[at].1);
                at += 1;
            }
            if version < floor {
                failures.push(format!("key {key:?}: version {version} answered after version {floor} was"));
                break;
            }
        }
    }
    failures
}

/// Whether every node recorded the data directory every peer that lost its
/// disk runs on now: each readmission finished everywhere (none waits on a
/// group that never drops the old directory).
pub fn directories_recorded(nodes: &[SimNode]) -> Result<(), String> {
    for peer in nodes.iter().filter(|p| p.layout.joined) {
        for node in nodes.iter().filter(|n| n.id != peer.id) {
            if node.known.get(&peer.id) != Some(&peer.directory) {
                return Err(format!("node {} has not readmitted node {}'s new data directory", node.id, peer.id));
            }
        }
    }
    Ok(())
}

/// One replica of a shard as the convergence check sees it.
struct Replica {
    node: u64,
    applied: u64,
    commit: u64,
    /// The map's entries, by key.
    entries: Vec<(Bytes, kv_engine::Stored)>,
}

/// Whether every shard's replicas have applied all they committed, to the
/// same index, and hold the same map.
pub fn replicas_converged(nodes: &[SimNode]) -> Result<(), String> {
    let mut replicas: BTreeMap<u32, Vec<Replica>> = BTreeMap::new();
    for node in nodes {
        if node.state != NodeState::Up {
            return Err(format!("node {} is not up", node.id));
        }
        for core in &node.cores {
            for status in core.machine.group_status() {
                let map = core.machine.map(status.shard).expect("a status names a group");
                let mut entries = map.pairs();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                let replica = Replica { node: node.id, applied: status.applied, commit: status.commit, entries };
                replicas.entry(status.shard).or_default().push(replica);
            }
        }
    }
    for (shard, rs) in replicas {
        let first = &rs[0];
        for r in &rs {
            let (node, a) = (r.node, r.applied);
            if a < r.commit {
                return Err(format!("shard {shard}: node {node} applied {a} of {} committed", r.commit));
            }
            if a != first.applied {
                return Err(format!("shard {shard}: node {node} applied {a}, node {} {}", first.node, first.applied));
            }
            if r.entries != first.entries {
                let other = first.node;
                return Err(format!("shard {shard}: nodes {node} and {other} applied {a} but hold different maps"));
            }
        }
    }
    Ok(())
}
