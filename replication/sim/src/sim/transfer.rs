//! Delivering peer messages, and a leader's snapshot the way kvd's peer
//! transport receives one (`net/src/peer/snapshot.rs`): often loaded into
//! a map off the machine's path first, then staged and stepped.
//!
//! While a snapshot of a group loads, the node drops the group's
//! MsgAppends (a rejected probe would make the leader send the whole
//! snapshot again), as kvd does from the stream's head on. A load may also
//! end unfinished (its stream cut): the mark goes, nothing is stepped, and
//! Raft's retries carry on. A crash forgets every load.

use kv_engine::shard::MapBuilder;
use kv_engine::snapshot;
use raft::eraftpb::{Message, MessageType};

use super::world::{Event, World};

/// Share of the snapshots a follower would install that are loaded ahead
/// (the rest are stepped at once and decoded on the machine's path, as
/// kvd does for a snapshot it would not install).
const LOAD_AHEAD_P: f64 = 0.6;
/// How long a load takes, and the share of loads whose stream is cut.
const LOAD_US: (u64, u64) = (1_000, 300_000);
const LOAD_CUT_P: f64 = 0.1;

impl World {
    /// A message from `message.from`'s data directory `directory` reaches
    /// `to`'s `core`.
    pub(super) fn on_deliver(&mut self, to: u64, core: u32, group: u32, message: Message, directory: u64) {
        if self.node(message.from).directory != directory {
            return;
        }
        let n = self.node(to);
        let loading = n.loading.get(&(core, group)).is_some_and(|c| *c > 0);
        match message.get_msg_type() {
            MessageType::MsgAppend if loading => {
                self.coverage.appends_dropped_loading += 1;
                return;
            }
            MessageType::MsgSnapshot => {
                let index = message.get_snapshot().get_metadata().index;
                let would_install = n.cores[core as usize].machine.would_install(group, index);
                if would_install && self.sched.rng.chance(LOAD_AHEAD_P) {
                    return self.start_load(to, core, group, message, directory);
                }
            }
            _ => {}
        }
        // A message may reach a core a restarted node no longer has the
        // group on, or a peer refuses it: Raft tolerates loss.
        let _ = self.node(to).cores[core as usize].machine.step(group, message);
        self.schedule_drive(to, core);
    }

    fn start_load(&mut self, node: u64, core: u32, group: u32, message: Message, directory: u64) {
        let n = self.node(node);
        *n.loading.entry((core, group)).or_default() += 1;
        let inc = n.incarnation;
        let delay = self.sched.rng.between(LOAD_US.0, LOAD_US.1);
        self.sched.after(delay, Event::SnapshotLoaded { node, core, inc, group, message, directory });
    }

    /// A load started by `start_load` ends: unless its stream was cut, the
    /// map is staged and the message stepped (as `Core::step_loaded_snapshot`).
    pub(super) fn on_snapshot_loaded(
        &mut self,
        node: u64,
        core: u32,
        inc: u64,
        group: u32,
        message: Message,
        directory: u64,
    ) {
        let n = self.node(node);
        if n.incarnation != inc {
            return;
        }
        let count = n.loading.get_mut(&(core, group)).expect("a load in progress is marked");
        *count -= 1;
        if *count == 0 {
            n.loading.remove(&(core, group));
        }
        if self.sched.rng.chance(LOAD_CUT_P) || self.node(message.from).directory != directory {
            return;
        }
        let snap = message.get_snapshot();
        let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
        let machine = &mut self.node(node).cores[core as usize].machine;
        let (meta, entries) = snapshot::decode(&snap.data, std::path::Path::new("a simulated leader's snapshot"))
            .expect("a simulated leader's snapshot decodes");
        // kvd drops a stream whose header disagrees with its message; a
        // simulated leader never sends one.
        assert_eq!((meta.group, meta.index, meta.term), (group, index, term), "snapshot header matches its message");
        let mut built = MapBuilder::new(meta.index, entries.len()).tracking(machine.tracking(group));
        for (key, stored) in &entries {
            built.add(key, stored);
        }
        machine.stage_snapshot_map(meta, built.finish());
        let _ = machine.step(group, message);
        self.coverage.snapshots_loaded += 1;
        self.schedule_drive(node, core);
    }
}
