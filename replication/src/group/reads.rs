//! Reads a leader may answer: strict reads through ReadIndex, and lease
//! reads under a lease bounded in time.
//!
//! **ReadIndex.** Reads that arrive between two drive rounds share one
//! ReadIndex round: the leader notes its commit index, confirms with a
//! quorum of heartbeats that it still leads, and answers once its map has
//! applied that index. A leader that has not yet committed an entry of its
//! own term holds its reads back (raft-rs would silently drop the request)
//! and issues them as soon as it has.
//!
//! **The lease.** Each confirmed round also proves that a quorum heard from
//! this leader *after* the round started. A follower that heard from its
//! leader refuses to vote for anyone (raft-rs's check-quorum "in lease"
//! rule) until its election timer reaches `ELECTION_TICKS` again: at least
//! `ELECTION_TICKS - 1` of its tick intervals later (its next tick may
//! come at once). Any quorum that could elect a new leader contains such a
//! follower, so no other leader exists before `started + (ELECTION_TICKS - 1)
//! × tick` by the followers' clocks. The lease is `LEASE_TICKS` (that is,
//! `ELECTION_TICKS - 2`) ticks from the round's start on the leader's own
//! monotonic clock: the tick left over is the margin for clocks that run
//! at different rates (11% at the default 10 ticks). A leader that was
//! paused or cut off finds its lease expired when it looks again, and falls
//! back to ReadIndex, which fails if it no longer leads. Leaders renew the
//! lease with an empty round every `HEARTBEAT_TICKS`.
//!
//! Two more conditions: the map must have applied an entry of the current
//! term (so it holds every write any earlier leader acknowledged), and no
//! leadership transfer may have started in this term (the target campaigns
//! at once, without waiting out the followers' timers).
//!
//! Architecture Invariant: a lease read is answered from the map only while
//! `lease_valid` holds at the moment of answering.

use std::collections::BTreeMap;

use bytes::Bytes;
use kv_engine::Stored;
use raft::ReadState;

use super::Group;
use crate::types::{Answer, Now};
use crate::{CoreError, HEARTBEAT_TICKS};

/// One ReadIndex round: when it started, in which term, and the reads it
/// serves (none for a lease renewal).
struct Round<T> {
    term: u64,
    started_ms: u64,
    reads: Vec<(T, Bytes)>,
}

pub(super) struct Reads<T> {
    /// Reads not handed to raft yet.
    unissued: Vec<(T, Bytes)>,
    /// Rounds raft is confirming with a quorum, by context.
    issued: BTreeMap<u64, Round<T>>,
    /// Reads whose read index is known, waiting for the map to apply it.
    confirmed: Vec<(u64, T, Bytes)>,
    next_ctx: u64,
    lease_ms: u64,
    /// The lease: valid before this instant of the monotonic clock, in
    /// `lease_term` only.
    lease_until_ms: u64,
    lease_term: u64,
    /// A leadership transfer started in this term: no lease in it.
    transfer_term: u64,
    ticks_since_round: usize,
}

impl<T> Reads<T> {
    pub fn new(lease_ms: u64) -> Reads<T> {
        Reads {
            unissued: Vec::new(),
            issued: BTreeMap::new(),
            confirmed: Vec::new(),
            next_ctx: 1,
            lease_ms,
            lease_until_ms: 0,
            lease_term: 0,
            transfer_term: 0,
            ticks_since_round: 0,
        }
    }

    pub fn end_lease_for_term(&mut self, term: u64) {
        self.transfer_term = term;
    }

    fn waiting(&self) -> usize {
        self.unissued.len() + self.confirmed.len() + self.issued.values().map(|r| r.reads.len()).sum::<usize>()
    }

    pub fn fail_all(&mut self, err: &CoreError, answers: &mut Vec<(T, Answer)>) {
        let issued = std::mem::take(&mut self.issued).into_values().flat_map(|r| r.reads);
        let confirmed = std::mem::take(&mut self.confirmed).into_iter().map(|(_, t, k)| (t, k));
        for (waiter, _) in std::mem::take(&mut self.unissued).into_iter().chain(issued).chain(confirmed) {
            answers.push((waiter, Answer::Read(Err(err.clone()))));
        }
    }
}

impl<T> Group<T> {
    /// Whether a read served from this replica's map now is linearizable
    /// under the lease rule (see the module docs).
    pub fn lease_valid(&self, now: Now) -> bool {
        if !self.is_leader() {
            return false;
        }
        let raft = &self.node.raft;
        if self.bugs.unbounded_lease {
            // The rule before leases had a bound: lead and have committed.
            return raft.commit_to_current_term();
        }
        if self.storage.term_of(self.map.applied_index()) != Some(raft.term) {
            return false;
        }
        if self.is_alone() {
            // Nobody else can be elected.
            return true;
        }
        let r = &self.reads;
        r.lease_term == raft.term && r.transfer_term != raft.term && now.monotonic_ms < r.lease_until_ms
    }

    /// Queues a read to be answered after a ReadIndex round.
    pub fn queue_read(&mut self, waiter: T, key: Bytes) -> Result<(), CoreError> {
        if !self.is_leader() {
            return Err(CoreError::NotLeader { leader: self.leader_id() });
        }
        if self.reads.waiting() >= super::READS_WAITING_MAX {
            return Err(CoreError::Busy);
        }
        self.reads.unissued.push((waiter, key));
        Ok(())
    }

    /// Starts a ReadIndex round for the reads queued since the last one.
    pub fn issue_reads(&mut self, now: Now) {
        if !self.reads.unissued.is_empty() && self.can_start_round() {
            let reads = std::mem::take(&mut self.reads.unissued);
            self.start_round(now, reads);
        }
    }

    /// On a tick: a leader of a replicated group renews its lease every
    /// heartbeat interval.
    pub(super) fn renew_lease(&mut self, now: Now) {
        if !self.is_leader() || self.is_alone() {
            return;
        }
        self.reads.ticks_since_round += 1;
        if self.reads.ticks_since_round >= HEARTBEAT_TICKS && self.can_start_round() {
            self.start_round(now, Vec::new());
        }
    }

    /// Raft drops the read requests of a leader that has not committed in
    /// its term: until it has, reads wait here.
    fn can_start_round(&self) -> bool {
        self.is_leader() && self.node.raft.commit_to_current_term()
    }

    fn start_round(&mut self, now: Now, reads: Vec<(T, Bytes)>) {
        let ctx = self.reads.next_ctx;
        self.reads.next_ctx += 1;
        self.reads.ticks_since_round = 0;
        self.reads.issued.insert(ctx, Round { term: self.term(), started_ms: now.monotonic_ms, reads });
        self.node.read_index(ctx.to_le_bytes().to_vec());
    }

    /// Takes the rounds raft confirmed: renews the lease, and moves their
    /// reads on to wait for their index to be applied.
    pub(super) fn confirm_reads(&mut self, states: Vec<ReadState>) {
        let term = self.term();
        for rs in states {
            let ctx = u64::from_le_bytes(rs.request_ctx.as_slice().try_into().expect("kvd read contexts are 8 bytes"));
            let Some(round) = self.reads.issued.remove(&ctx) else { continue };
            if round.term != term {
                // Confirmed for a term that is over: those reads fail below.
                self.reads.issued.insert(ctx, round);
                continue;
            }
            if self.reads.lease_term != term || self.reads.lease_until_ms < round.started_ms + self.reads.lease_ms {
                self.reads.lease_term = term;
                self.reads.lease_until_ms = round.started_ms + self.reads.lease_ms;
            }
            self.reads.confirmed.extend(round.reads.into_iter().map(|(t, k)| (rs.index, t, k)));
        }
    }

    /// Answers the reads whose index the map has applied, and fails those
    /// that cannot be answered any more (leadership or term changed).
    pub(super) fn release_reads(&mut self, now: Now, answers: &mut Vec<(T, Answer)>) {
        let applied = self.map.applied_index();
        let mut i = 0;
        while i < self.reads.confirmed.len() {
            if self.reads.confirmed[i].0 <= applied {
                let (_, waiter, key) = self.reads.confirmed.swap_remove(i);
                answers.push((waiter, Answer::Read(Ok(self.read_local(&key, now)))));
            } else {
                i += 1;
            }
        }
        let term = self.term();
        if !self.is_leader() {
            let err = CoreError::NotLeader { leader: self.leader_id() };
            self.reads.fail_all(&err, answers);
        } else if self.reads.issued.values().any(|r| r.term != term) {
            let stale: Vec<u64> = self.reads.issued.iter().filter(|(_, r)| r.term != term).map(|(c, _)| *c).collect();
            for ctx in stale {
                let round = self.reads.issued.remove(&ctx).expect("listed above");
                for (waiter, _) in round.reads {
                    answers.push((waiter, Answer::Read(Err(CoreError::NotLeader { leader: self.leader_id() }))));
                }
            }
        }
    }

    /// The key as this replica's map holds it now (value decompressed),
    /// expired keys filtered by the reader's clock; the access is recorded
    /// for eviction.
    pub fn read_local(&self, key: &[u8], now: Now) -> Option<Stored> {
        self.map.read(key, now.wall_ms)
    }
}
