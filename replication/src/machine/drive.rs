//! Driving the groups: every group's Ready is handled, their records staged
//! for one WAL flush (group commit), and flushed Readies reported to raft.
//!
//! At most one flush is in flight. While it is, new Readies keep
//! accumulating; when it completes (`flushed`), its Readies are reported
//! persisted (`on_persist_ready`), which lets them commit and apply, and
//! the next drive starts a flush of everything that arrived meanwhile.
//!
//! Crash outcome: a Ready is reported persisted only after the flush that
//! carried its records returned Ok, so raft never counts an entry or a vote
//! durable that a crash could still lose.

use kv_engine::wal::{FlushStats, Record};

use super::{FlushJob, Machine, Persisting};
use crate::group::ReadyCtx;
use crate::types::Now;

/// Drive rounds before [`Machine::drive`] returns to let the caller run
/// other work (each round handles every group's Ready once).
const DRIVE_ROUNDS_MAX: usize = 8;

impl<T> Machine<T> {
    /// Handles pending Readies and starts a WAL flush if none is in flight.
    /// Returns whether work is left (the caller should drive again soon).
    pub fn drive(&mut self, now: Now) -> bool {
        for _ in 0..DRIVE_ROUNDS_MAX {
            // A poisoned machine must never report a Ready persisted: its
            // records may have been in the flush that failed.
            if self.stopped || self.poisoned.is_some() {
                return false;
            }
            let progressed = self.handle_readies(now);
            if self.unpersisted.is_empty() || self.in_flight.is_some() {
                if progressed {
                    continue;
                }
                return false;
            }
            let take = self.batch_len();
            let batch: Vec<Persisting> = self.unpersisted.drain(..take).collect();
            let count = std::mem::take(&mut self.unattributed) + batch.iter().map(|p| p.records).sum::<usize>();
            let mut records: Vec<_> = self.staged.drain(..count).collect();
            let installs: Vec<_> = batch.iter().filter_map(|p| p.installed.clone()).collect();
            if self.config.durable && (!records.is_empty() || !installs.is_empty()) {
                // Only in a flush that carries every Ready handled so far,
                // after all their records: a commit index may cover entries
                // staged in this very batch, or in a Ready a cap left for
                // the next flush (an installed snapshot's Ready may stage
                // nothing at all). A write torn after it keeps them.
                if self.staged.is_empty() && self.unpersisted.is_empty() {
                    records.extend(std::mem::take(&mut self.commit_records).into_values());
                }
                self.out.flush = Some(FlushJob { records, installs });
                if self.bugs.ack_before_fsync {
                    self.persisted(batch);
                    self.in_flight = Some(Vec::new());
                } else {
                    self.in_flight = Some(batch);
                }
                return false;
            }
            // Nothing to write and nothing in flight before these Readies:
            // they are as durable as they will ever be.
            self.persisted(batch);
        }
        true
    }

    /// How many of the unpersisted Readies the next flush carries: all, or
    /// as many as fit `wal_batch_bytes_max` (at least one).
    fn batch_len(&self) -> usize {
        let cap = self.config.wal_batch_bytes_max;
        if cap == 0 {
            return self.unpersisted.len();
        }
        let mut bytes = 0;
        let fits = self.unpersisted.iter().take_while(|p| {
            bytes += p.records_bytes;
            bytes <= cap
        });
        fits.count().max(1)
    }

    /// At a clean stop, once nothing is staged or in flight: the commit
    /// records still waiting for a flush, for the last one.
    pub fn take_final_commit_records(&mut self) -> Vec<Record> {
        let settled = self.staged.is_empty() && self.unpersisted.is_empty() && self.in_flight.is_none();
        if !settled || self.poisoned.is_some() {
            return Vec::new();
        }
        std::mem::take(&mut self.commit_records).into_values().collect()
    }

    /// Whether a WAL flush is in flight.
    pub fn is_flushing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Reports the flush of the last [`FlushJob`]: on success its Readies
    /// are persisted; on failure the machine is poisoned for good.
    pub fn flushed(&mut self, result: Result<FlushStats, String>) {
        let batch = self.in_flight.take().expect("flushed() answers a FlushJob");
        match result {
            Ok(stats) => {
                let s = &mut self.stats;
                s.flushes += 1;
                s.wal_bytes += stats.written_bytes;
                s.fsync_micros_total += stats.sync_micros;
                if self.poisoned.is_none() {
                    self.persisted(batch);
                }
            }
            Err(why) => self.poison(why),
        }
    }

    /// One Ready per group that has one. Returns whether any was handled.
    fn handle_readies(&mut self, now: Now) -> bool {
        let mut wanted = Vec::new();
        let mut progressed = false;
        let durable = self.config.durable;
        for group in self.groups.values_mut() {
            group.issue_reads(now);
            if !group.has_ready() {
                continue;
            }
            let before = self.staged.len();
            let mut cx = ReadyCtx {
                records: durable.then_some(&mut self.staged),
                messages: &mut self.out.messages,
                answers: &mut self.out.answers,
                now,
            };
            let h = group.handle_ready(&mut cx);
            super::membership::note_dropped(&mut self.readmissions, group.id, group.take_dropped_members());
            // Roles change when messages are stepped and ticks counted; the
            // Ready that follows is where they are noticed.
            if group.take_role_change() {
                self.stats.leader_changes += 1;
                tracing::debug!(core = self.config.core, group = group.id, leader = group.is_leader(), "role changed");
            }
            self.stats.committed_entries += h.committed;
            self.stats.applied_entries += h.applied;
            self.stats.snapshots_loaded_ahead += u64::from(h.loaded_ahead);
            match h.commit_record {
                Some(r) => {
                    self.commit_records.insert(group.id, r);
                }
                // A newer hard state carries the commit index too, and an
                // older one must never follow it.
                None if h.hard_state_staged => {
                    self.commit_records.remove(&group.id);
                }
                None => {}
            }
            let records = self.staged.len() - before;
            let records_bytes = self.staged.range(before..).map(|r| r.encoded_len() as u64).sum();
            self.unpersisted.push(Persisting {
                group: group.id,
                number: h.number,
                after_persist: h.after_persist,
                installed: h.installed,
                records,
                records_bytes,
            });
            if group.take_snapshot_wanted() {
                wanted.push(group.id);
            }
            progressed = true;
        }
        for id in wanted {
            self.prepare_snapshot(id);
        }
        progressed
    }

    /// Tells raft that these Readies are durable and sends what waited.
    fn persisted(&mut self, batch: Vec<Persisting>) {
        for p in batch {
            let group = self.groups.get_mut(&p.group).expect("group of a Ready exists");
            group.on_persist_ready(p.number);
            if let Some((meta, _)) = p.installed {
                group.snapshot_persisted(meta.index);
            }
            self.out.messages.extend(p.after_persist);
        }
    }
}
