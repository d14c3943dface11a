//! A core's side of membership: readmitting a node whose data directory
//! was replaced, and stepping each group it leads toward its wanted
//! replicas (`group/membership.rs` decides the steps).
//!
//! **Readmission.** A node back on a new data directory has forgotten its
//! log and its votes. Wherever a group still counts its old directory (as
//! a voter, or as a learner whose progress speaks for it), what it says
//! must not count: a vote or an acknowledgement from it would stand for
//! state it lost. So from [`Machine::readmit`] on, each group of this core
//! that had the node as a member drops the node's votes and
//! acknowledgements ([`Machine::step`]), sends it nothing and never hands
//! it leadership, until the group applies a configuration without it (the
//! group's leader removes it; a follower applies the removal from the log,
//! or asks its leader for it). Everything else the node sends is
//! safe to hear: what it asks for votes only counts in its own groups,
//! and as a leader (once readmitted and elected) it sends the true log.
//! Then, like any missing replica, it is added back as a learner, filled
//! from a snapshot and the log, and promoted once caught up.
//!
//! The transport calls `readmit` when a member on a new directory asks to
//! rejoin, and records the new directory once [`Machine::readmitted`]
//! holds on every core (after which no group anywhere on the node counts
//! the old one). The new directory is named by an opaque `incarnation`: a
//! readmission of another one starts over.

use std::collections::{BTreeMap, BTreeSet};

use raft::eraftpb::MessageType;

use super::Machine;
use crate::group::MembershipStep;

/// Ticks a group waits for its leader to remove a readmitted node before,
/// as a follower, it asks for the removal itself (then again after as many
/// ticks while it waits). Long enough that a leader that readmits the node
/// too has done it (a few ticks), so that requests rarely remove a node
/// already added back.
pub const REMOVAL_REQUEST_TICKS: u32 = 30;

/// Learners a core's leaders fill at once. Filling one copies its shard
/// into a snapshot, encodes it and sends it on the core that serves the
/// shard's writes: one at a time keeps that work from stalling them all.
pub const FILLS_PER_CORE_MAX: usize = 1;

/// A readmission under way on this core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Readmission {
    incarnation: u64,
    /// Groups that still count the node's old directory as a member.
    pending: BTreeSet<u32>,
    /// Ticks since the readmission began (or a follower last asked).
    ticks: u32,
}

pub(super) type Readmissions = BTreeMap<u64, Readmission>;

impl<T> Machine<T> {
    /// Starts readmitting `node` on its new data directory `incarnation`
    /// (idempotent): every group of this core in which it votes ignores its
    /// votes and acknowledgements until it applied a configuration without
    /// it. Call only for a node that proved it is a cluster member.
    pub fn readmit(&mut self, node: u64, incarnation: u64) {
        assert_ne!(node, self.config.node_id, "a node never readmits itself");
        if self.readmissions.get(&node).is_some_and(|r| r.incarnation == incarnation) {
            return;
        }
        // Learners too: one left by an interrupted readmission of an older
        // directory has a `Progress` that speaks for that one.
        let pending: BTreeSet<u32> = self.groups.values().filter(|g| g.has_member(node)).map(|g| g.id).collect();
        tracing::info!(
            core = self.config.core,
            node,
            groups = pending.len(),
            "node {node} is back on a new data directory: removing it from the groups it voted in, to add it back"
        );
        self.readmissions.insert(node, Readmission { incarnation, pending, ticks: 0 });
    }

    /// Whether every group of this core has dropped `node`'s old data
    /// directory since [`Machine::readmit`] was called for `incarnation`
    /// (false if it was not called).
    pub fn readmitted(&self, node: u64, incarnation: u64) -> bool {
        if self.bugs.readmit_without_removal {
            return true;
        }
        self.readmissions.get(&node).is_some_and(|r| r.incarnation == incarnation && r.pending.is_empty())
    }

    /// The data directory `node` is being readmitted on, if it is.
    pub fn readmitting(&self, node: u64) -> Option<u64> {
        self.readmissions.get(&node).map(|r| r.incarnation)
    }

    /// Every readmission under way (or done) on this core: (node,
    /// incarnation, the groups that still count its old directory).
    pub fn readmissions(&self) -> Vec<(u64, u64, Vec<u32>)> {
        self.readmissions.iter().map(|(&n, r)| (n, r.incarnation, r.pending.iter().copied().collect())).collect()
    }

    /// Whether `group` must not hear `from`'s vote or acknowledgement in a
    /// message of type `kind`: it still counts `from`'s old directory.
    ///
    /// A leader's message from a readmitted node proves the group is past
    /// its old directory: a joined directory's groups count it a learner
    /// (`restore.rs`, `first_conf_state`) until a leader that had removed
    /// the old directory promotes the new one, so it can only lead after
    /// that. (Such a group may still list the node as a voter here when this
    /// node restarted midway and its snapshot came after the removal.)
    pub(super) fn unheard(&mut self, group: u32, from: u64, kind: MessageType) -> bool {
        if matches!(kind, MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot) {
            if let Some(r) = self.readmissions.get_mut(&from) {
                r.pending.remove(&group);
            }
            return false;
        }
        let counts = matches!(
            kind,
            MessageType::MsgAppendResponse
                | MessageType::MsgHeartbeatResponse
                | MessageType::MsgRequestVoteResponse
                | MessageType::MsgRequestPreVoteResponse
        );
        counts
            && !self.bugs.readmit_without_removal
            && self.readmissions.get(&from).is_some_and(|r| r.pending.contains(&group))
    }

    /// Drops the messages groups would send to a node they still count as
    /// a lost directory: a snapshot or entries from such a group could make
    /// the node's new directory a voter (in its own view) before its old
    /// one is removed, and nothing it answers would count anyway.
    pub(super) fn silence_readmitted(&mut self) {
        if self.bugs.readmit_without_removal || self.readmissions.values().all(|r| r.pending.is_empty()) {
            return;
        }
        let readmissions = &self.readmissions;
        self.out.messages.retain(|(group, m)| !counts_lost_directory(readmissions, *group, m.to));
    }

    /// Proposes the next membership change of every group this core leads
    /// (at most one pending per group). Called on every tick: membership
    /// moves at the pace of conf changes, not of requests.
    pub(super) fn reconfigure(&mut self) {
        if self.stopping || self.poisoned.is_some() {
            return;
        }
        self.request_removals();
        let readmissions = &self.readmissions;
        let core = self.config.core;
        let mut fills = self.groups.values().filter(|g| g.is_leader() && g.is_filling()).count();
        for g in self.groups.values_mut() {
            let id = g.id;
            let stale = |n: u64| counts_lost_directory(readmissions, id, n);
            let Some(step) = g.membership_step(stale, fills < FILLS_PER_CORE_MAX) else { continue };
            if let MembershipStep::AddLearner(_) = step {
                fills += 1;
            }
            match g.propose_membership(step) {
                Ok(()) => log_step(core, id, step),
                Err(e) => tracing::debug!(core, group = id, "membership change {step:?} not proposed: {e}"),
            }
        }
    }

    /// A follower group still waiting, after [`REMOVAL_REQUEST_TICKS`], for a
    /// readmitted node's removal asks its leader for it (the leader may not
    /// know the node's directory was replaced: it may have readmitted it
    /// already, before this node restarted).
    fn request_removals(&mut self) {
        let core = self.config.core;
        for (&node, r) in self.readmissions.iter_mut().filter(|(_, r)| !r.pending.is_empty()) {
            r.ticks += 1;
            if r.ticks < REMOVAL_REQUEST_TICKS {
                continue;
            }
            r.ticks = 0;
            for id in &r.pending {
                let Some(g) = self.groups.get_mut(id) else { continue };
                if g.request_removal(node).is_ok() {
                    tracing::info!(
                        core,
                        group = id,
                        node,
                        "asking shard {id}'s leader to remove node {node}'s old data directory"
                    );
                }
            }
        }
    }
}

/// Whether `group` still counts `node`'s lost data directory.
pub(super) fn counts_lost_directory(readmissions: &Readmissions, group: u32, node: u64) -> bool {
    readmissions.get(&node).is_some_and(|r| r.pending.contains(&group))
}

/// `group` applied configurations that dropped the members `dropped`: it no
/// longer counts their old directories.
pub(super) fn note_dropped(readmissions: &mut Readmissions, group: u32, dropped: Vec<u64>) {
    for node in dropped {
        if let Some(r) = readmissions.get_mut(&node) {
            r.pending.remove(&group);
        }
    }
}

fn log_step(core: u32, group: u32, step: MembershipStep) {
    match step {
        MembershipStep::Remove(n) => {
            tracing::info!(core, group, node = n, "removing node {n}'s old data directory from shard {group}")
        }
        MembershipStep::AddLearner(n) => {
            tracing::info!(core, group, node = n, "adding node {n} to shard {group} as a learner")
        }
        MembershipStep::Promote(n) => {
            tracing::info!(core, group, node = n, "node {n} caught up on shard {group}: promoting it to voter")
        }
    }
}
