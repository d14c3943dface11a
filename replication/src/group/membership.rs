//! Membership changes of one group, decided and proposed by its leader one
//! raft-rs conf change at a time.
//!
//! A group converges on its *wanted* replicas (the layout's, fixed today):
//! a wanted node missing from the configuration is added as a learner; a
//! learner that has caught up is promoted to voter. A voter whose data
//! directory was replaced (*stale*: the caller says which) is first removed
//! altogether, then added back as a learner like any missing replica.
//!
//! Why these steps and no shorter ones (raft-rs's pitfalls):
//! - A stale voter is never demoted in place: raft-rs would keep its
//!   `Progress`, whose `matched` still names entries the new directory does
//!   not have, and it ignores rejections at or below `matched`. Removing it
//!   and adding it back gives it a fresh `Progress` (probing from the
//!   leader's log end down to what the node really has).
//! - `[remove n, add learner n]` in one `ConfChangeV2` would be a joint
//!   change, which keeps the `Progress` for the outgoing configuration.
//!   Every step here changes one node: a simple change, no joint state.
//! - raft-rs turns a conf change proposed while another is pending into an
//!   empty entry without saying so: nothing is proposed while one is.
//! - A learner is promoted only once it is caught up (etcd's rule), so a
//!   promotion never leaves a quorum waiting on a replica still loading a
//!   snapshot.

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};
use raft::ProgressState;

use super::Group;
use crate::CoreError;

/// A learner at most this many entries behind the leader's commit index,
/// and receiving entries in order, counts as caught up: it finishes from
/// the log within a round trip or two.
pub const PROMOTE_LAG_ENTRIES_MAX: u64 = 64;

/// One membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipStep {
    /// Remove a voter whose data directory was replaced.
    Remove(u64),
    /// Add a wanted replica missing from the configuration, as a learner.
    AddLearner(u64),
    /// Make a caught-up wanted learner a voter.
    Promote(u64),
}

impl MembershipStep {
    /// The conf change: one node, so a simple change (never joint).
    fn change(self) -> ConfChangeV2 {
        let (change_type, node_id) = match self {
            MembershipStep::Remove(n) => (ConfChangeType::RemoveNode, n),
            MembershipStep::AddLearner(n) => (ConfChangeType::AddLearnerNode, n),
            MembershipStep::Promote(n) => (ConfChangeType::AddNode, n),
        };
        let change = ConfChangeSingle { change_type, node_id, ..Default::default() };
        ConfChangeV2 { changes: vec![change].into(), ..Default::default() }
    }
}

/// Whether `node` votes or learns in the configuration `cs`.
pub(super) fn is_member(cs: &ConfState, node: u64) -> bool {
    cs.voters.contains(&node) || cs.learners.contains(&node)
}

impl<T> Group<T> {
    /// Whether `node` votes in this group, as this replica last applied its
    /// configuration.
    pub fn has_voter(&self, node: u64) -> bool {
        self.storage.conf_state().voters.contains(&node)
    }

    /// The group's voters and learners, as this replica applied them.
    pub fn membership(&self) -> (Vec<u64>, Vec<u64>) {
        let cs = self.storage.conf_state();
        (cs.voters, cs.learners)
    }

    /// Whether `node` votes or learns in this group.
    pub fn has_member(&self, node: u64) -> bool {
        is_member(&self.storage.conf_state(), node)
    }

    /// Whether this group, as leader, is filling a learner that answers (a
    /// learner whose node is down takes no fill slot), or has a change
    /// pending: a learner it adds is not in the configuration until the
    /// change is applied, which takes longer than the tick that proposed
    /// it, and must count from the start.
    pub fn is_filling(&self) -> bool {
        let learners = self.storage.conf_state().learners;
        self.is_leader()
            && (self.node.raft.has_pending_conf()
                || learners.iter().any(|l| self.node.raft.prs().get(*l).is_some_and(|pr| pr.recent_active)))
    }

    /// The next membership change this replica should propose: `None`
    /// unless it leads, no change is pending, and the configuration
    /// differs from the wanted one. `stale(n)` says whether voter `n` must
    /// be removed (its data directory was replaced); `may_add` whether a
    /// learner may be added now (fills are bounded per core).
    pub fn membership_step(&self, stale: impl Fn(u64) -> bool, may_add: bool) -> Option<MembershipStep> {
        if !self.is_leader() || self.node.raft.has_pending_conf() {
            return None;
        }
        let cs = self.storage.conf_state();
        if !cs.voters_outgoing.is_empty() {
            // A joint configuration: raft-rs leaves it on its own.
            return None;
        }
        let me = self.node_id();
        if let Some(&n) = cs.voters.iter().chain(&cs.learners).find(|&&n| n != me && stale(n)) {
            return Some(MembershipStep::Remove(n));
        }
        if let Some(&n) = self.wanted.iter().find(|&&n| !is_member(&cs, n)).filter(|_| may_add) {
            return Some(MembershipStep::AddLearner(n));
        }
        self.wanted.iter().find(|n| cs.learners.contains(n) && self.caught_up(**n)).map(|&n| MembershipStep::Promote(n))
    }

    fn caught_up(&self, node: u64) -> bool {
        let floor = self.commit_index().saturating_sub(PROMOTE_LAG_ENTRIES_MAX);
        self.node.raft.prs().get(node).is_some_and(|pr| {
            pr.state == ProgressState::Replicate && pr.recent_active && pr.matched >= floor && pr.matched > 0
        })
    }

    /// Proposes `step` (from [`Group::membership_step`]); it takes effect
    /// when the entry is applied (`ready.rs`, `apply_conf_change`).
    pub fn propose_membership(&mut self, step: MembershipStep) -> Result<(), CoreError> {
        assert!(!self.node.raft.has_pending_conf(), "one conf change pending per group");
        let before = self.last_index();
        self.node.propose_conf_change(Vec::new(), step.change()).map_err(|_| CoreError::NotLeader { leader: None })?;
        assert_eq!(self.last_index(), before + 1, "a conf change appends one entry");
        Ok(())
    }

    /// Asks the leader to remove voter `node` (its data directory was
    /// replaced), from a follower: raft-rs forwards the proposal. For a
    /// follower that cannot tell whether the node's voter is the old
    /// directory or already the new one (it restarted midway, and its log
    /// replay re-applied everything before the readmission began): removing
    /// a new one again costs one more snapshot, never safety. A leader with
    /// a change pending turns this into an empty entry.
    pub fn request_removal(&mut self, node: u64) -> Result<(), CoreError> {
        // Never the leader itself: raft-rs keeps a removed leader in office.
        if self.is_leader() || self.leader_id().is_none_or(|l| l == node) || !self.has_voter(node) {
            return Err(CoreError::NotLeader { leader: self.leader_id() });
        }
        let cc = MembershipStep::Remove(node).change();
        self.node.propose_conf_change(Vec::new(), cc).map_err(|_| CoreError::NotLeader { leader: None })
    }

    /// Applies the configuration `now` (a conf change or an installed
    /// snapshot's) to the log store, recording the members (voters and
    /// learners) it drops for [`Group::take_dropped_members`].
    pub(super) fn set_conf_state(&mut self, now: ConfState) {
        let before = self.storage.conf_state();
        let dropped = before.voters.iter().chain(&before.learners).filter(|&&n| !is_member(&now, n));
        self.dropped_members.extend(dropped);
        self.storage.set_conf_state(now);
    }

    /// The members dropped by configurations applied since the last call,
    /// in order (a node removed and added back between two calls is listed).
    pub fn take_dropped_members(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dropped_members)
    }

    /// The replicas this group should have (the layout's).
    pub fn set_wanted(&mut self, replicas: Vec<u64>) {
        self.wanted = replicas;
    }
}
