//! The simulated world: nodes, network, clients and one queue of timed
//! events, run in a single thread in (time, sequence) order. Every choice
//! comes from the run's seeded generator (raft-rs's election timeouts from
//! its own, seeded by the run too), so a seed replays byte for byte.
//!
//! Phases of a run: clients work while the scenario's faults fire; at
//! `faults_end_us` every fault is undone; clients go on for a while, then
//! stop; probes then write to every shard (liveness: each must succeed
//! within [`LIVENESS_BOUND_US`] of the end of the faults), final strict
//! reads read every key, and the replicas of each shard must converge.

use std::collections::BTreeMap;

use kv_engine::snapshot::SnapshotMeta;
use kv_replication::machine::{Outputs, SnapshotSource};
use kv_replication::Layout;
use raft::eraftpb::{Message, MessageType};

use super::client::{Clients, Request, Response};
use super::history::History;
use super::net::{Net, NetConditions};
use super::node::{put_snapshot, NodeState, SimNode, Waiter};
use super::rng::Rng;
use super::scenario::{Fault, Scenario};

/// After the faults end, every shard must accept a write within this.
pub const LIVENESS_BOUND_US: u64 = 20_000_000;
/// Clients keep working this long after the faults end.
const SETTLE_US: u64 = 2_000_000;
/// The run gives up (a liveness failure) past this.
const RUN_LIMIT_US: u64 = 120_000_000;
/// A drive runs this long after the input that called for it: inputs that
/// arrive meanwhile are handled by the same drive (batching).
const DRIVE_DELAY_US: u64 = 20;
/// How often a node runs its active expiry cycle and leader rebalancing.
const EXPIRY_CYCLE_US: u64 = 100_000;
const REBALANCE_EVERY_CYCLES: u64 = 50;
/// Probability that a flush's fdatasync fails while a disk's faults are on.
const FSYNC_FAILURE_P: f64 = 0.02;
/// Probability and length of a slow fdatasync while faults are on.
const SLOW_FSYNC_P: f64 = 0.05;
const SLOW_FSYNC_US: (u64, u64) = (20_000, 1_000_000);
/// Share of crashes timed to hit a WAL flush in flight (torn tails), and how
/// long such a crash waits for a flush before it happens anyway.
const CRASH_MID_FLUSH_P: f64 = 0.5;
const CRASH_MID_FLUSH_WAIT_US: u64 = 100_000;
/// An operator restarts a node whose WAL was poisoned after this long.
const POISONED_RESTART_US: u64 = 500_000;

pub enum Event {
    Tick {
        node: u64,
        inc: u64,
    },
    Drive {
        node: u64,
        core: u32,
        inc: u64,
    },
    /// `directory`: the sender's data directory when it sent (a message of
    /// a directory since lost dies with its connection).
    Deliver {
        to: u64,
        core: u32,
        group: u32,
        message: Message,
        directory: u64,
    },
    FlushDone {
        node: u64,
        core: u32,
        inc: u64,
        failed: bool,
    },
    Prepared {
        node: u64,
        core: u32,
        inc: u64,
        source: SnapshotSource,
        data: Vec<u8>,
    },
    SnapshotsWritten {
        node: u64,
        core: u32,
        inc: u64,
        files: Vec<(SnapshotMeta, Vec<u8>)>,
    },
    Background {
        node: u64,
        inc: u64,
        cycle: u64,
    },
    Request {
        node: u64,
        request: Request,
    },
    Response {
        client: usize,
        op: u64,
        response: Response,
    },
    Client(super::client::ClientEvent),
    Fault(Fault),
    EndFaults,
    PoisonedRestart {
        node: u64,
        inc: u64,
    },
    /// A crash armed by `Fault::Crash` (mid-flush, or its fallback): it
    /// happens only in the incarnation it was armed in, so a fallback left
    /// over from an earlier life never brings down a restarted node that
    /// nothing would restart again.
    ArmedCrash {
        node: u64,
        inc: u64,
    },
    /// A leader's snapshot loaded off the machine's path (`transfer.rs`).
    SnapshotLoaded {
        node: u64,
        core: u32,
        inc: u64,
        group: u32,
        message: Message,
        directory: u64,
    },
}

/// The clock and the queue of events.
pub struct Sched {
    pub now: u64,
    queue: BTreeMap<(u64, u64), Event>,
    seq: u64,
    pub rng: Rng,
}

impl Sched {
    pub fn at(&mut self, time: u64, event: Event) {
        assert!(time >= self.now, "an event in the past");
        self.seq += 1;
        self.queue.insert((time, self.seq), event);
    }

    pub fn after(&mut self, delay_us: u64, event: Event) {
        self.at(self.now + delay_us, event);
    }
}

pub struct World {
    pub scenario: Scenario,
    pub sched: Sched,
    pub nodes: Vec<SimNode>,
    pub net: Net,
    pub clients: Clients,
    pub history: History,
    /// Everything a check found wrong, in the order found.
    pub failures: Vec<String>,
    pub healed_at: Option<u64>,
    pub coverage: super::coverage::Coverage,
    /// Events held for paused nodes, released in order on resume.
    held: BTreeMap<u64, Vec<Event>>,
}

impl World {
    pub fn new(scenario: Scenario) -> World {
        let shape = &scenario.shape;
        let ids: Vec<u64> = (1..=shape.nodes as u64).collect();
        let nodes = ids
            .iter()
            .map(|&id| {
                let layout = Layout::cluster(id, ids.clone(), shape.replicas, shape.cores, shape.shards_per_core);
                SimNode::new(id, layout, scenario.clocks[(id - 1) as usize])
            })
            .collect();
        let rng = Rng::new(scenario.seed ^ 0x005e_ed0f_5111);
        raft::election_rng::seed(scenario.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        kv_engine::ShardMap::set_thread_hash_seed(Some(scenario.seed));
        let clients = Clients::new(&scenario);
        World {
            sched: Sched { now: 0, queue: BTreeMap::new(), seq: 0, rng },
            nodes,
            net: Net::new(),
            clients,
            history: History::default(),
            failures: Vec::new(),
            healed_at: None,
            coverage: Default::default(),
            held: BTreeMap::new(),
            scenario,
        }
    }

    pub fn node(&mut self, id: u64) -> &mut SimNode {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Node `id`'s clocks now.
    pub fn node_now(&self, id: u64) -> kv_replication::Now {
        self.nodes[(id - 1) as usize].now(self.sched.now)
    }

    pub fn fail(&mut self, what: String) {
        if self.failures.len() < 20 {
            self.failures.push(format!("at {} µs: {what}", self.sched.now));
        }
    }

    /// Runs the scenario to its end (or to the first failure).
    pub fn run(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.start_node(id);
        }
        for (at, fault) in self.scenario.faults.clone() {
            self.sched.at(at, Event::Fault(fault));
        }
        self.sched.at(self.scenario.faults_end_us, Event::EndFaults);
        self.clients_start();
        while let Some(((time, _), event)) = self.sched.queue.pop_first() {
            self.sched.now = time;
            self.handle(event);
            if !self.failures.is_empty() || self.clients.finished() {
                break;
            }
            if time > RUN_LIMIT_US {
                self.fail("the run did not finish within its time limit".to_string());
                break;
            }
        }
    }

    fn handle(&mut self, event: Event) {
        if let Some(node) = self.target(&event) {
            match self.node(node).state {
                NodeState::Down => return,
                NodeState::Paused => {
                    self.held.entry(node).or_default().push(event);
                    return;
                }
                NodeState::Up => {}
            }
        }
        match event {
            Event::Tick { node, inc } => self.on_tick(node, inc),
            Event::Drive { node, core, inc } => self.on_drive(node, core, inc),
            Event::Deliver { to, core, group, message, directory } => {
                self.on_deliver(to, core, group, message, directory)
            }
            Event::SnapshotLoaded { node, core, inc, group, message, directory } => {
                self.on_snapshot_loaded(node, core, inc, group, message, directory)
            }
            Event::FlushDone { node, core, inc, failed } => self.on_flush_done(node, core, inc, failed),
            Event::Prepared { node, core, inc, source, data } => {
                if self.node(node).incarnation == inc {
                    let now = self.node_now(node);
                    self.node(node).cores[core as usize].machine.snapshot_prepared(&source, data, now);
                    self.schedule_drive(node, core);
                }
            }
            Event::SnapshotsWritten { node, core, inc, files } => self.on_snapshots_written(node, core, inc, files),
            Event::Background { node, inc, cycle } => self.on_background(node, inc, cycle),
            Event::Request { node, request } => self.on_request(node, request),
            Event::Response { client, op, response } => self.on_response(client, op, response),
            Event::Client(e) => self.on_client_event(e),
            Event::Fault(fault) => self.on_fault(fault),
            Event::EndFaults => self.end_faults(),
            Event::PoisonedRestart { node, inc } => {
                if self.node(node).incarnation == inc {
                    self.crash_node(node);
                    self.start_node(node);
                }
            }
            Event::ArmedCrash { node, inc } => {
                let n = self.node(node);
                if n.incarnation == inc && n.state != NodeState::Down {
                    self.crash_node(node);
                }
            }
        }
    }

    /// The node an event happens on, if it happens on one.
    fn target(&self, event: &Event) -> Option<u64> {
        match event {
            Event::Tick { node, .. }
            | Event::Drive { node, .. }
            | Event::FlushDone { node, .. }
            | Event::Prepared { node, .. }
            | Event::SnapshotsWritten { node, .. }
            | Event::Background { node, .. }
            | Event::SnapshotLoaded { node, .. }
            | Event::Request { node, .. } => Some(*node),
            Event::Deliver { to, .. } => Some(*to),
            _ => None,
        }
    }

    pub fn start_node(&mut self, id: u64) {
        let bugs = self.scenario.options.bugs;
        match self.node(id).start(bugs) {
            Ok(repairs) => self.coverage.wal_repairs += repairs,
            Err(e) => return self.fail(format!("node {id} cannot start from its disk: {e}")),
        }
        if self.node(id).incarnation > 0 {
            self.coverage.restarts += 1;
        }
        if let Some(policy) = self.node(id).evicting {
            self.memory_pressure(id, policy, false, true);
        }
        let inc = self.node(id).incarnation;
        let interval = self.node(id).tick_interval_us();
        let phase = self.sched.rng.below(interval);
        self.sched.after(phase, Event::Tick { node: id, inc });
        let phase = self.sched.rng.below(EXPIRY_CYCLE_US);
        self.sched.after(phase, Event::Background { node: id, inc, cycle: 0 });
        for core in 0..self.node(id).cores.len() as u32 {
            self.schedule_drive(id, core);
        }
    }

    pub fn crash_node(&mut self, id: u64) {
        let World { nodes, sched, held, .. } = self;
        let lost = nodes[(id - 1) as usize].crash(&mut sched.rng);
        held.remove(&id);
        self.coverage.crashes += 1;
        self.coverage.commit_records_lost += lost;
    }

    fn on_tick(&mut self, node: u64, inc: u64) {
        if self.node(node).incarnation != inc {
            return;
        }
        let now = self.node_now(node);
        for core in 0..self.node(node).cores.len() {
            self.node(node).cores[core].machine.tick(now);
            self.schedule_drive(node, core as u32);
        }
        if self.node(node).layout.joined {
            self.dial(node);
        }
        let interval = self.node(node).tick_interval_us();
        self.sched.after(interval, Event::Tick { node, inc });
    }

    pub fn schedule_drive(&mut self, node: u64, core: u32) {
        let n = self.node(node);
        let inc = n.incarnation;
        let c = &mut n.cores[core as usize];
        if !c.drive_scheduled {
            c.drive_scheduled = true;
            self.sched.after(DRIVE_DELAY_US, Event::Drive { node, core, inc });
        }
    }

    fn on_drive(&mut self, node: u64, core: u32, inc: u64) {
        if self.node(node).incarnation != inc {
            return;
        }
        let now = self.node_now(node);
        let c = &mut self.node(node).cores[core as usize];
        c.drive_scheduled = false;
        let more = c.machine.drive(now);
        let outputs = c.machine.take_outputs();
        if let Some(why) = c.machine.invariant_violation() {
            self.fail(format!("node {node} core {core}: {why}"));
        }
        self.dispatch(node, core, outputs);
        if more {
            self.schedule_drive(node, core);
        }
    }

    /// Carries out what a machine asked for.
    fn dispatch(&mut self, node: u64, core: u32, outputs: Outputs<Waiter>) {
        let Outputs { messages, answers, flush, prepare } = outputs;
        for (group, message) in messages {
            self.send(node, core, group, message);
        }
        for (waiter, answer) in answers {
            self.answer(node, waiter, answer);
        }
        if let Some(job) = flush {
            self.start_flush(node, core, job);
        }
        let inc = self.node(node).incarnation;
        for source in prepare {
            let data = kv_engine::snapshot::encode_blocking(&source.meta, &source.entries);
            let delay = self.sched.rng.between(100, 5_000);
            self.sched.after(delay, Event::Prepared { node, core, inc, source, data });
        }
    }

    fn send(&mut self, from: u64, core: u32, group: u32, message: Message) {
        let to = message.to;
        let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        let admitted = self.handshake(from, to, core);
        let World { net, sched, .. } = self;
        let deliveries = if admitted { net.deliveries(from, to, &mut sched.rng) } else { Vec::new() };
        if is_snapshot {
            // The real transport reports whether the snapshot left.
            let sent = admitted && !net.is_cut(from, to);
            self.node(from).cores[core as usize].machine.report_snapshot(group, to, sent);
            self.schedule_drive(from, core);
        }
        let directory = self.node(from).directory;
        for delay in deliveries {
            self.sched.after(delay, Event::Deliver { to, core, group, message: message.clone(), directory });
        }
    }

    fn start_flush(&mut self, node: u64, core: u32, job: kv_replication::machine::FlushJob) {
        let n = self.node(node);
        let dir = n.core_dir(core);
        let (inc, faults) = (n.incarnation, n.disk_faults);
        let installs = job.installs.len() as u64;
        let SimNode { fs, cores, .. } = n;
        if let Err(why) = cores[core as usize].start_flush(fs, &dir, job) {
            cores[core as usize].machine.flushed(Err(why));
            self.schedule_drive(node, core);
            return;
        }
        self.coverage.snapshots_installed += installs;
        let (lo, hi) = self.scenario.fsync_us;
        let mut delay = self.sched.rng.between(lo, hi);
        if faults && self.sched.rng.chance(SLOW_FSYNC_P) {
            delay += self.sched.rng.between(SLOW_FSYNC_US.0, SLOW_FSYNC_US.1);
        }
        if std::mem::take(&mut self.node(node).crash_armed) {
            let at = self.sched.rng.below(delay);
            self.sched.after(at, Event::ArmedCrash { node, inc });
        }
        let failed = faults && self.sched.rng.chance(FSYNC_FAILURE_P);
        self.sched.after(delay, Event::FlushDone { node, core, inc, failed });
    }

    fn on_flush_done(&mut self, node: u64, core: u32, inc: u64, failed: bool) {
        let snapshot_wal_bytes = self.scenario.snapshot_wal_bytes;
        let n = self.node(node);
        if n.incarnation != inc {
            return;
        }
        let dir = n.core_dir(core);
        let SimNode { fs, cores, .. } = n;
        let c = &mut cores[core as usize];
        let result = c.finish_flush(fs, &dir, failed);
        let ok = result.is_ok();
        c.machine.flushed(result);
        let snapshot_due = ok && !c.snapshotting && c.wal.bytes_since_compaction() >= snapshot_wal_bytes;
        let files = if snapshot_due { c.take_snapshots() } else { Vec::new() };
        if snapshot_due {
            let delay = self.sched.rng.between(1_000, 20_000);
            self.sched.after(delay, Event::SnapshotsWritten { node, core, inc, files });
        }
        if !ok {
            self.coverage.fsync_failures += 1;
            // An operator notices the refusing node and restarts it.
            self.sched.after(POISONED_RESTART_US, Event::PoisonedRestart { node, inc });
        }
        self.schedule_drive(node, core);
    }

    fn on_snapshots_written(&mut self, node: u64, core: u32, inc: u64, files: Vec<(SnapshotMeta, Vec<u8>)>) {
        let n = self.node(node);
        if n.incarnation != inc {
            return;
        }
        let dir = n.core_dir(core);
        let SimNode { fs, cores, .. } = n;
        let c = &mut cores[core as usize];
        let written = files.len() as u64;
        for (meta, bytes) in files {
            put_snapshot(fs, &dir, &meta, bytes);
            c.machine.snapshot_written(meta.group, meta.index);
        }
        c.snapshotting = false;
        let compacted = c.compact(fs, &dir);
        self.coverage.snapshots_written += written;
        self.coverage.segments_compacted += compacted;
    }

    fn on_background(&mut self, node: u64, inc: u64, cycle: u64) {
        if self.node(node).incarnation != inc {
            return;
        }
        let now = self.node_now(node);
        for core in 0..self.node(node).cores.len() as u32 {
            let n = self.node(node);
            let layout = n.layout.clone();
            let machine = &mut n.cores[core as usize].machine;
            for (shard, keys) in machine.expired_keys(256, now) {
                // Reaps are fire-and-forget, as in `expiry_cycle`.
                let _ = machine.propose(shard, &kv_engine::Command::Reap { keys }, (usize::MAX, 0), now);
            }
            if cycle % REBALANCE_EVERY_CYCLES == REBALANCE_EVERY_CYCLES - 1 && layout.nodes.len() > 1 {
                machine.rebalance_leaders(|s| layout.replicas_of(s).first().copied());
            }
            self.schedule_drive(node, core);
        }
        if let Some(policy) = self.node(node).evicting {
            self.evict(node, policy);
        }
        self.sched.after(EXPIRY_CYCLE_US, Event::Background { node, inc, cycle: cycle + 1 });
    }

    fn on_fault(&mut self, fault: Fault) {
        match fault {
            Fault::Crash { node } => {
                let n = self.node(node);
                if n.state == NodeState::Down {
                    return;
                }
                let (armed, inc) = (n.crash_armed, n.incarnation);
                if !armed && self.sched.rng.chance(CRASH_MID_FLUSH_P) {
                    // Crash during the next flush instead, or soon anyway.
                    self.node(node).crash_armed = true;
                    self.sched.after(CRASH_MID_FLUSH_WAIT_US, Event::ArmedCrash { node, inc });
                } else {
                    self.crash_node(node);
                }
            }
            Fault::Wipe { node } => {
                let World { nodes, sched, held, .. } = self;
                let lost = nodes[(node - 1) as usize].wipe(&mut sched.rng);
                held.remove(&node);
                self.coverage.crashes += 1;
                self.coverage.commit_records_lost += lost;
                self.coverage.wipes += 1;
            }
            Fault::Restart { node } => {
                if self.node(node).state == NodeState::Down {
                    self.start_node(node);
                }
            }
            Fault::Pause { node } => {
                if self.node(node).state == NodeState::Up {
                    self.node(node).state = NodeState::Paused;
                }
            }
            Fault::Resume { node } => self.resume(node),
            Fault::Cut { links } => {
                for (a, b) in links {
                    self.net.cut(a, b);
                }
            }
            Fault::IsolateLeader { one_way } => {
                if let Some(lone) = self.busiest_leader() {
                    for other in (1..=self.nodes.len() as u64).filter(|&o| o != lone) {
                        self.net.cut(lone, other);
                        if !one_way {
                            self.net.cut(other, lone);
                        }
                    }
                }
            }
            Fault::Heal => self.net.heal(),
            Fault::Network(conditions) => self.net.conditions = conditions,
            Fault::DiskFaults { node, on } => self.node(node).disk_faults = on,
            Fault::MemoryPressure { node, policy, refuse, on } => self.memory_pressure(node, policy, refuse, on),
        }
    }

    /// Memory pressure on `node` starts or ends (see `Fault::MemoryPressure`).
    fn memory_pressure(&mut self, node: u64, policy: kv_engine::evict::Policy, refuse: bool, on: bool) {
        let n = self.node(node);
        n.evicting = on.then_some(policy);
        let tracking = if on { policy.tracking() } else { kv_engine::evict::Tracking::None };
        for core in &mut n.cores {
            core.machine.set_tracking(tracking);
            core.machine.set_memory_pressure(on);
            core.machine.set_out_of_memory(on && refuse);
        }
    }

    /// The node's leaders propose evictions, as `eviction_cycle` does; each
    /// evicted key is in the history as a delete whose outcome is unknown
    /// (an eviction may apply, or be lost with its leader).
    fn evict(&mut self, node: u64, policy: kv_engine::evict::Policy) {
        let now = self.node_now(node);
        for core in 0..self.node(node).cores.len() {
            let victims = self.node(node).cores[core].machine.eviction_victims(policy, 2, now);
            for (shard, keys) in victims {
                let evict = kv_engine::Command::Evict { keys: keys.clone() };
                let machine = &mut self.node(node).cores[core].machine;
                if machine.propose(shard, &evict, (usize::MAX, 0), now).is_ok() {
                    self.coverage.evictions += keys.len() as u64;
                    for key in keys {
                        self.history.record_eviction(key, self.sched.now);
                    }
                }
            }
            self.schedule_drive(node, core as u32);
        }
    }

    /// The running node that leads the most groups, if any leads one.
    fn busiest_leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|n| n.state == NodeState::Up)
            .map(|n| {
                (
                    n.cores
                        .iter()
                        .map(|c| c.machine.group_status().iter().filter(|g| g.is_leader).count())
                        .sum::<usize>(),
                    n.id,
                )
            })
            .filter(|(led, _)| *led > 0)
            .max()
            .map(|(_, id)| id)
    }

    fn resume(&mut self, node: u64) {
        if self.node(node).state != NodeState::Paused {
            return;
        }
        self.node(node).state = NodeState::Up;
        let current = self.node(node).incarnation;
        let mut ticked = false;
        for event in self.held.remove(&node).unwrap_or_default() {
            // A timer that fired during the pause fires once on resume. A
            // tick of an earlier life (the node restarted, poisoned, before
            // the pause) does not count: it would take the place of the
            // live timer and stop the node's clock for good.
            if let Event::Tick { inc, .. } = event {
                if inc != current || std::mem::replace(&mut ticked, true) {
                    continue;
                }
            }
            self.sched.after(0, event);
        }
    }

    /// Undoes every fault: the network heals, disks behave, paused nodes
    /// resume and crashed ones restart.
    fn end_faults(&mut self) {
        self.net.heal();
        self.net.conditions = NetConditions::calm();
        for id in 1..=self.nodes.len() as u64 {
            self.node(id).disk_faults = false;
            self.memory_pressure(id, kv_engine::evict::Policy::NoEviction, false, false);
            self.resume(id);
            if self.node(id).state == NodeState::Down {
                self.start_node(id);
            }
        }
        self.healed_at = Some(self.sched.now);
        self.clients_after_heal(SETTLE_US);
    }
}

/// The peer handshake's incarnation rule (`net/src/peer/incarnation.rs`):
/// a node back on a new data directory is heard only if it joined (`kvd
/// --join`), and then each core it talks to readmits it (its machine keeps
/// its votes and acknowledgements out of the groups that still count its
/// old directory); the new directory is recorded once every core of the
/// peer has readmitted it.
impl World {
    /// Whether `a` and `b` accept each other on `core` now (each side
    /// checks the other's directory, as both halves of a handshake do).
    fn handshake(&mut self, a: u64, b: u64, core: u32) -> bool {
        let b_admits_a = self.admits(b, a, core);
        b_admits_a && self.admits(a, b, core)
    }

    /// Whether `node` hears `peer`'s data directory on `core`.
    fn admits(&mut self, node: u64, peer: u64, core: u32) -> bool {
        if node == peer {
            return true;
        }
        let (directory, joined) = {
            let p = &self.nodes[(peer - 1) as usize];
            (p.directory, p.layout.joined)
        };
        let n = self.node(node);
        let up = n.state == NodeState::Up;
        match n.known.get(&peer).copied() {
            Some(d) if d == directory => true,
            None if !joined => {
                if up {
                    n.known.insert(peer, directory);
                }
                true
            }
            // Another directory that did not ask to rejoin: refused (a real
            // node is told so and stops).
            _ if !joined => false,
            // A joined directory is never taken on trust, even at a first
            // meeting: its node may have voted here on the one it lost.
            _ if !up => false,
            _ => {
                n.cores[core as usize].machine.readmit(peer, directory);
                if n.cores.iter().all(|c| c.machine.readmitted(peer, directory)) {
                    n.known.insert(peer, directory);
                    self.coverage.readmissions += 1;
                }
                true
            }
        }
    }

    /// A joined node dials every peer on every core (see `dial_peers` in
    /// `net/src/peer/mod.rs`): its handshakes start readmission.
    fn dial(&mut self, node: u64) {
        for peer in 1..=self.nodes.len() as u64 {
            for core in 0..self.node(node).cores.len() as u32 {
                self.handshake(node, peer, core);
            }
        }
    }
}
