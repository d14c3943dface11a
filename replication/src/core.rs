//! The per-core raft driver.
//!
//! Requests call [`Core::write`] / [`Core::read`]; proposals only touch
//! memory and wake the driver task. The driver (`drive`) walks the groups
//! that have a Ready, stages their entries and hard states in the WAL, and
//! starts one flush if none is running. While a flush is in flight, new
//! Readies keep accumulating; when it completes, the flushed Readies are
//! reported persisted (`on_persist_ready`), which commits and applies them,
//! and the next flush carries everything that arrived meanwhile.
//!
//! Everything here runs on one executor: state is `Rc<RefCell<_>>`, and no
//! borrow is ever held across an `.await` — nor across `spawn_local`, which
//! in glommio polls the new task at once.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use kv_engine::snapshot::{self, SnapshotMeta};
use kv_engine::wal::{FlushStats, FsyncPolicy, Wal, WalError};
use kv_engine::{Command, Outcome, Stored};
use protobuf::Message as _;
use raft::eraftpb::{Message, SnapshotMetadata};

use crate::group::Group;
use crate::keyspace::{self, wall_clock_ms};
use crate::transport::Transport;
use crate::{CoreConfig, CoreError, PENDING_PER_GROUP_MAX};

/// Drive rounds before the driver yields to other tasks (each round handles
/// every group's Ready once).
const DRIVE_ROUNDS_MAX: usize = 8;
/// How long shutdown waits for in-flight writes to finish.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Linearizable: the leader confirms with a quorum first (ReadIndex).
    Strict,
    /// Linearizable while the leader's lease holds (see `Group::lease_valid`).
    #[default]
    Lease,
    /// Whatever this replica has applied; may be behind.
    Stale,
}

/// One group as raft sees it, for `cluster status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub shard: u32,
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub keys: usize,
    /// Keys with a TTL.
    pub expires: usize,
    pub memory_bytes: u64,
    /// On a leader: (follower, entries it lacks).
    pub follower_lag: Vec<(u64, u64)>,
}

/// One page of a shard's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub keys: Vec<Bytes>,
    /// Where the next page starts; `None` when the shard is done.
    pub next: Option<u64>,
    /// Keys and keys with a TTL in the shard (expired ones not yet reaped included).
    pub keys_total: u64,
    pub expires_total: u64,
}

/// Counters a core keeps about itself (exported as metrics). Plain cells:
/// bumping one costs an add on the core's own cache line.
#[derive(Debug, Default)]
pub struct CoreStats {
    pub proposals: Cell<u64>,
    /// Entries this replica learned to be committed (commit index advances).
    pub committed_entries: Cell<u64>,
    /// Entries applied to the shard maps.
    pub applied_entries: Cell<u64>,
    pub flushes: Cell<u64>,
    pub wal_bytes: Cell<u64>,
    pub fsync_micros_total: Cell<u64>,
    pub snapshots: Cell<u64>,
    pub leader_changes: Cell<u64>,
}

/// A Ready waiting for its WAL flush.
struct Persisting {
    group: u32,
    number: u64,
    /// Messages that may only leave once the Ready is durable.
    after_persist: Vec<(u32, Message)>,
    /// A snapshot installed from the leader: its file is written first.
    installed: Option<(SnapshotMeta, Bytes)>,
}

/// How long a snapshot prepared for lagging followers is kept (it holds a
/// copy of the shard) before it is dropped.
const PREPARED_SNAPSHOT_TTL: Duration = Duration::from_secs(60);

pub(crate) struct DriverState {
    /// Readies staged since the last flush started: (group, number, messages).
    unpersisted: Vec<Persisting>,
    flushing: bool,
    tick_due: bool,
    stopping: bool,
    stopped: bool,
    snapshotting: bool,
    poisoned: Option<String>,
    /// Groups whose snapshot for followers is being encoded, and when each
    /// prepared snapshot was made.
    preparing: BTreeMap<u32, Option<std::time::Instant>>,
}

pub(crate) struct Inner {
    pub config: CoreConfig,
    pub groups: RefCell<BTreeMap<u32, Group>>,
    pub wal: Option<Rc<Wal>>,
    pub transport: Box<dyn Transport>,
    pub state: RefCell<DriverState>,
    pub wake: LocalSender<()>,
    pub stats: CoreStats,
    /// Told about every WAL flush and timed sync (see [`Core::on_flush`]).
    pub flush_observer: RefCell<Option<FlushObserver>>,
}

/// Receives the [`FlushStats`] of every WAL flush, and of every sync of the
/// `interval` policy (as stats with only `sync_micros` and `synced` set).
pub type FlushObserver = Box<dyn Fn(&FlushStats)>;

/// Handle to this core's groups. Cheap to clone; not `Send`.
#[derive(Clone)]
pub struct Core(pub(crate) Rc<Inner>);

impl Core {
    pub(crate) fn start(
        config: CoreConfig,
        groups: BTreeMap<u32, Group>,
        wal: Option<Rc<Wal>>,
        transport: Box<dyn Transport>,
    ) -> Core {
        let (wake, wakeups) = local_channel::new_bounded(1);
        let state = DriverState {
            unpersisted: Vec::new(),
            flushing: false,
            tick_due: false,
            stopping: false,
            stopped: false,
            snapshotting: false,
            poisoned: None,
            preparing: BTreeMap::new(),
        };
        let inner = Rc::new(Inner {
            config,
            groups: RefCell::new(groups),
            wal,
            transport,
            state: RefCell::new(state),
            wake,
            stats: CoreStats::default(),
            flush_observer: RefCell::new(None),
        });
        glommio::spawn_local(driver_loop(inner.clone(), wakeups)).detach();
        glommio::spawn_local(ticker(inner.clone())).detach();
        if let Some(p) = &inner.config.persistence {
            if let FsyncPolicy::Interval(every) = p.fsync {
                glommio::spawn_local(interval_syncer(inner.clone(), every)).detach();
            }
        }
        inner.notify();
        Core(inner)
    }

    pub fn config(&self) -> &CoreConfig {
        &self.0.config
    }

    pub fn stats(&self) -> &CoreStats {
        &self.0.stats
    }

    /// Sets the observer of WAL flushes (metrics). The observer runs on the
    /// core's executor and MUST NOT call back into the core.
    pub fn on_flush(&self, observer: FlushObserver) {
        *self.0.flush_observer.borrow_mut() = Some(observer);
    }

    /// Why this core refuses writes, if it does.
    pub fn poisoned(&self) -> Option<String> {
        self.0.state.borrow().poisoned.clone()
    }

    /// Replicates `command` through the shard's group and returns what
    /// applying it did. Resolves only once the entry is durable and applied.
    pub async fn write(&self, shard: u32, command: Command) -> Result<Outcome, CoreError> {
        let rx = {
            let state = self.0.state.borrow();
            if let Some(why) = &state.poisoned {
                return Err(CoreError::Poisoned(why.clone()));
            }
            if state.stopping {
                return Err(CoreError::ShuttingDown);
            }
            drop(state);
            let mut groups = self.0.groups.borrow_mut();
            let group = groups.get_mut(&shard).ok_or(CoreError::WrongCore(shard))?;
            if group.pending_count() >= PENDING_PER_GROUP_MAX {
                return Err(CoreError::Busy);
            }
            group.propose(&command)?
        };
        self.0.stats.proposals.set(self.0.stats.proposals.get() + 1);
        self.0.notify();
        rx.await.unwrap_or(Err(CoreError::ShuttingDown))
    }

    /// Reads a key without waiting, if `consistency` allows it here:
    /// `Stale` on any replica, `Lease` on a leader whose lease holds.
    /// `Strict` never answers here (see [`Core::read`]).
    pub fn read_now(&self, shard: u32, key: &[u8], consistency: Consistency) -> Result<Option<Stored>, CoreError> {
        let groups = self.0.groups.borrow();
        let group = groups.get(&shard).ok_or(CoreError::WrongCore(shard))?;
        let allowed = match consistency {
            Consistency::Stale => true,
            Consistency::Lease => group.lease_valid(),
            Consistency::Strict => false,
        };
        if !allowed {
            return Err(CoreError::NotLeader { leader: group.leader_id() });
        }
        Ok(group.map.live(key, wall_clock_ms()).cloned())
    }

    /// A page of the shard's live keys from `cursor` on (see [`keyspace`]),
    /// the next cursor, and the shard's key count; readable where
    /// `consistency` allows, like [`Core::read_now`].
    pub fn scan(&self, shard: u32, cursor: u64, count: usize, consistency: Consistency) -> Result<ScanPage, CoreError> {
        let groups = self.0.groups.borrow();
        let group = groups.get(&shard).ok_or(CoreError::WrongCore(shard))?;
        let allowed = match consistency {
            Consistency::Stale => true,
            Consistency::Lease | Consistency::Strict => group.lease_valid(),
        };
        if !allowed {
            return Err(CoreError::NotLeader { leader: group.leader_id() });
        }
        // A count of 0 asks only for the totals.
        let (keys, next) = match count {
            0 => (Vec::new(), None),
            _ => keyspace::scan_page(&group.map, cursor, count, wall_clock_ms()),
        };
        Ok(ScanPage { keys, next, keys_total: group.map.len() as u64, expires_total: group.map.expires_len() as u64 })
    }

    /// For each shard this core leads, up to `max` keys whose expiry has
    /// passed: what the active expiry cycle proposes to reap.
    pub fn expired_keys(&self, max: usize) -> Vec<(u32, Vec<Bytes>)> {
        let now_ms = wall_clock_ms();
        let groups = self.0.groups.borrow();
        groups
            .values()
            .filter(|g| g.is_leader())
            .map(|g| (g.id, g.map.expired(now_ms, max)))
            .filter(|(_, keys)| !keys.is_empty())
            .collect()
    }

    /// Reads a key at `consistency`; `Strict` confirms leadership with a
    /// quorum (ReadIndex) and waits for the map to catch up first.
    pub async fn read(&self, shard: u32, key: &[u8], consistency: Consistency) -> Result<Option<Stored>, CoreError> {
        if consistency != Consistency::Strict {
            return self.read_now(shard, key, consistency);
        }
        let rx = {
            if self.0.state.borrow().stopping {
                return Err(CoreError::ShuttingDown);
            }
            let mut groups = self.0.groups.borrow_mut();
            groups.get_mut(&shard).ok_or(CoreError::WrongCore(shard))?.read_index()?
        };
        self.0.notify();
        rx.await.unwrap_or(Err(CoreError::ShuttingDown))?;
        let groups = self.0.groups.borrow();
        Ok(groups.get(&shard).expect("shard checked above").map.live(key, wall_clock_ms()).cloned())
    }

    /// Delivers a message from a peer to `group`. Unknown groups and
    /// messages raft refuses are dropped (Raft tolerates loss).
    pub fn step(&self, group: u32, message: Message) {
        let stepped = match self.0.groups.borrow_mut().get_mut(&group) {
            Some(g) => g.node.step(message).map_err(|e| e.to_string()),
            None => Err(format!("no group {group} on this core")),
        };
        match stepped {
            Ok(()) => self.0.notify(),
            Err(e) => tracing::debug!(core = self.0.config.core, group, "dropped a peer message: {e}"),
        }
    }

    /// Starts handing every group this core leads to another voter (a
    /// graceful stop, so a rolling restart does not wait for elections).
    /// Returns how many transfers started.
    pub fn transfer_leadership(&self) -> usize {
        let n =
            self.0.groups.borrow_mut().values_mut().map(|g| g.transfer_leadership()).filter(|started| *started).count();
        self.0.notify();
        n
    }

    /// Whether this core leads any group that has other voters.
    pub fn leads_replicated_group(&self) -> bool {
        let me = self.0.config.layout.node_id;
        self.0.groups.borrow().values().any(|g| g.is_leader() && g.storage.conf_state().voters != [me])
    }

    /// Hands groups back to their preferred leaders (the first replica)
    /// where those are caught up. Returns how many transfers started.
    pub fn rebalance_leaders(&self) -> usize {
        let layout = &self.0.config.layout;
        let n = self
            .0
            .groups
            .borrow_mut()
            .values_mut()
            .filter_map(|g| layout.replicas_of(g.id).first().copied().map(|p| g.yield_to(p)))
            .filter(|started| *started)
            .count();
        if n > 0 {
            self.0.notify();
        }
        n
    }

    /// Tells raft whether a snapshot message reached the transport.
    pub fn report_snapshot(&self, group: u32, to: u64, sent: bool) {
        let status = if sent { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
        if let Some(g) = self.0.groups.borrow_mut().get_mut(&group) {
            g.node.report_snapshot(to, status);
        }
        self.0.notify();
    }

    /// The leader this core knows for `shard`, if any.
    pub fn leader_of(&self, shard: u32) -> Option<u64> {
        self.0.groups.borrow().get(&shard).and_then(|g| g.leader_id())
    }

    /// Raft's view of every group on this core, for status reports.
    pub fn group_status(&self) -> Vec<GroupStatus> {
        self.0
            .groups
            .borrow()
            .values()
            .map(|g| {
                let raft = &g.node.raft;
                let last_index = raft.raft_log.last_index();
                let followers = if g.is_leader() {
                    raft.prs()
                        .iter()
                        .filter(|(id, _)| **id != raft.id)
                        .map(|(id, pr)| (*id, last_index.saturating_sub(pr.matched)))
                        .collect()
                } else {
                    Vec::new()
                };
                GroupStatus {
                    shard: g.id,
                    leader: g.leader_id(),
                    is_leader: g.is_leader(),
                    term: raft.term,
                    commit: raft.raft_log.committed,
                    applied: g.map.applied_index(),
                    last_index,
                    keys: g.map.len(),
                    expires: g.map.expires_len(),
                    memory_bytes: g.map.memory_bytes(),
                    follower_lag: followers,
                }
            })
            .collect()
    }

    /// Whether every group has replayed its log: applied everything it knew
    /// to be committed. A group with one voter (this node) must also lead
    /// and have committed its whole log, including its own first entry as
    /// leader, which proves the WAL is writable. Groups with peers do not
    /// wait for a leader: that needs the other nodes.
    pub fn is_ready(&self) -> bool {
        let me = self.0.config.layout.node_id;
        self.0.groups.borrow().values().all(|g| {
            let log = &g.node.raft.raft_log;
            let replayed = g.map.applied_index() >= log.committed;
            let alone = g.storage.conf_state().voters == [me];
            replayed && (!alone || (g.is_leader() && log.committed >= log.last_index()))
        })
    }

    /// Waits (bounded) until [`Core::is_ready`].
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + timeout;
        while !self.is_ready() {
            if let Some(why) = self.poisoned() {
                return Err(why);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("core {} did not finish replaying its log within {timeout:?}", self.0.config.core));
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Number of keys and bytes per shard (for status and metrics).
    pub fn shard_sizes(&self) -> Vec<(u32, usize, u64)> {
        self.0.groups.borrow().values().map(|g| (g.id, g.map.len(), g.map.memory_bytes())).collect()
    }

    /// Stops taking writes, lets in-flight writes finish (bounded), makes the
    /// WAL durable regardless of the fsync policy, and stops the driver. An
    /// error means the WAL could not be made durable (it is poisoned).
    pub async fn shutdown(&self) -> Result<(), WalError> {
        self.0.state.borrow_mut().stopping = true;
        let deadline = std::time::Instant::now() + SHUTDOWN_DRAIN_TIMEOUT;
        loop {
            let pending: usize = self.0.groups.borrow().values().map(|g| g.pending_count()).sum();
            let flushing = self.0.state.borrow().flushing;
            if (pending == 0 && !flushing) || self.poisoned().is_some() || std::time::Instant::now() > deadline {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        self.0.state.borrow_mut().stopped = true;
        self.0.notify();
        for g in self.0.groups.borrow_mut().values_mut() {
            g.fail_pending(CoreError::ShuttingDown);
        }
        let Some(wal) = &self.0.wal else { return Ok(()) };
        // A flush may outlive the drain timeout (a slow disk): let it end.
        let deadline = std::time::Instant::now() + SHUTDOWN_DRAIN_TIMEOUT;
        while wal.is_flushing() && std::time::Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        if let Some(why) = self.poisoned() {
            return Err(WalError::Poisoned(why));
        }
        if wal.is_flushing() {
            return Err(WalError::Poisoned("a WAL flush did not finish during shutdown".into()));
        }
        wal.flush().await?;
        // IMPORTANT: fsync — a clean shutdown leaves everything durable, even
        // under `fsync never`.
        wal.sync().await
    }
}

impl Inner {
    pub(crate) fn notify(&self) {
        // A full channel means a wakeup is already pending.
        let _ = self.wake.try_send(());
    }

    /// Handles every pending Ready, and starts a WAL flush if none runs.
    fn drive(self: &Rc<Self>) {
        for _ in 0..DRIVE_ROUNDS_MAX {
            // A poisoned core must never report a Ready persisted: its
            // records may have been in the flush that failed.
            if self.state.borrow().stopped || self.state.borrow().poisoned.is_some() {
                return;
            }
            let progressed = self.handle_readies();
            let mut state = self.state.borrow_mut();
            if state.unpersisted.is_empty() || state.flushing {
                if progressed {
                    continue;
                }
                return;
            }
            let installs = state.unpersisted.iter().any(|p| p.installed.is_some());
            match &self.wal {
                // Nothing staged and nothing in flight before these Readies:
                // they are as durable as they will ever be.
                Some(wal) if wal.staged_bytes() > 0 || installs => {
                    state.flushing = true;
                    let batch = std::mem::take(&mut state.unpersisted);
                    drop(state);
                    glommio::spawn_local(flush(self.clone(), wal.clone(), batch)).detach();
                    return;
                }
                _ => {
                    let batch = std::mem::take(&mut state.unpersisted);
                    drop(state);
                    self.persisted(batch);
                }
            }
        }
        self.notify();
    }

    /// One Ready per group that has one. Returns whether any was handled.
    fn handle_readies(self: &Rc<Self>) -> bool {
        let tick = std::mem::take(&mut self.state.borrow_mut().tick_due);
        let mut outbox = Vec::new();
        let mut handled = Vec::new();
        let mut wanted = Vec::new();
        {
            let mut groups = self.groups.borrow_mut();
            for group in groups.values_mut() {
                if tick {
                    group.node.tick();
                }
                if !group.node.has_ready() {
                    continue;
                }
                let was_leader = group.is_leader();
                let h = group.handle_ready(self.wal.as_deref(), &mut outbox);
                if group.is_leader() != was_leader {
                    self.stats.leader_changes.set(self.stats.leader_changes.get() + 1);
                    tracing::debug!(
                        core = self.config.core,
                        group = group.id,
                        leader = group.is_leader(),
                        "role changed"
                    );
                }
                let s = &self.stats;
                s.committed_entries.set(s.committed_entries.get() + h.committed);
                s.applied_entries.set(s.applied_entries.get() + h.applied);
                handled.push(Persisting {
                    group: group.id,
                    number: h.number,
                    after_persist: h.after_persist,
                    installed: h.installed,
                });
                if group.storage.take_snapshot_wanted() {
                    wanted.push(group.id);
                }
            }
        }
        // After the groups borrow ends: glommio runs a spawned task at once.
        for id in wanted {
            self.prepare_snapshot(id);
        }
        self.transport.send(outbox);
        let progressed = !handled.is_empty();
        self.state.borrow_mut().unpersisted.extend(handled);
        if tick {
            self.expire_prepared();
        }
        progressed
    }

    /// Starts encoding a snapshot of `group` for a lagging follower.
    fn prepare_snapshot(self: &Rc<Self>, group: u32) {
        {
            let mut state = self.state.borrow_mut();
            if matches!(state.preparing.get(&group), Some(None)) {
                return;
            }
            state.preparing.insert(group, None);
        }
        let Some((meta, entries, conf_state)) = self.groups.borrow().get(&group).map(|g| g.snapshot_source()) else {
            return;
        };
        let inner = self.clone();
        glommio::spawn_local(async move {
            let data = snapshot::encode(&meta, &entries).await;
            let metadata = SnapshotMetadata {
                conf_state: Some(conf_state).into(),
                index: meta.index,
                term: meta.term,
                ..Default::default()
            };
            let snap =
                raft::eraftpb::Snapshot { data: data.into(), metadata: Some(metadata).into(), ..Default::default() };
            if let Some(g) = inner.groups.borrow().get(&meta.group) {
                g.storage.set_prepared(snap);
            }
            inner.state.borrow_mut().preparing.insert(meta.group, Some(std::time::Instant::now()));
            tracing::debug!(
                core = inner.config.core,
                group = meta.group,
                index = meta.index,
                "snapshot prepared for a follower"
            );
            inner.notify();
        })
        .detach();
    }

    /// Drops snapshots prepared for followers that are long caught up.
    fn expire_prepared(&self) {
        let now = std::time::Instant::now();
        let expired: Vec<u32> = self
            .state
            .borrow()
            .preparing
            .iter()
            .filter(|(_, made)| made.is_some_and(|t| now.duration_since(t) > PREPARED_SNAPSHOT_TTL))
            .map(|(g, _)| *g)
            .collect();
        for g in expired {
            self.state.borrow_mut().preparing.remove(&g);
            if let Some(group) = self.groups.borrow().get(&g) {
                group.storage.drop_prepared();
            }
        }
    }

    /// Tells raft that these Readies are durable and sends what waited.
    fn persisted(&self, batch: Vec<Persisting>) {
        let mut outbox = Vec::new();
        {
            let mut groups = self.groups.borrow_mut();
            for p in batch {
                let group = groups.get_mut(&p.group).expect("group of a Ready exists");
                group.node.on_persist_ready(p.number);
                if let Some((meta, _)) = p.installed {
                    // The snapshot is durable: raft may count it applied, and
                    // WAL segments it covers may go.
                    group.node.advance_apply_to(meta.index);
                    group.snapshot_index = group.snapshot_index.max(meta.index);
                }
                outbox.extend(p.after_persist);
            }
        }
        self.transport.send(outbox);
    }

    fn flushed(self: &Rc<Self>, batch: Vec<Persisting>, result: Result<FlushStats, WalError>) {
        self.state.borrow_mut().flushing = false;
        match result {
            Ok(stats) => {
                let s = &self.stats;
                s.flushes.set(s.flushes.get() + 1);
                s.wal_bytes.set(s.wal_bytes.get() + stats.written_bytes);
                s.fsync_micros_total.set(s.fsync_micros_total.get() + stats.sync_micros);
                self.observe_flush(&stats);
                self.persisted(batch);
                self.maybe_snapshot();
            }
            Err(e) => self.poison(e.to_string()),
        }
        self.notify();
    }

    fn observe_flush(&self, stats: &FlushStats) {
        if let Some(observe) = &*self.flush_observer.borrow() {
            observe(stats);
        }
    }

    fn poison(&self, why: String) {
        tracing::error!(core = self.config.core, "core stops accepting writes: {why}");
        self.state.borrow_mut().poisoned = Some(why.clone());
        for g in self.groups.borrow_mut().values_mut() {
            g.fail_pending(CoreError::Poisoned(why.clone()));
        }
    }

    fn maybe_snapshot(self: &Rc<Self>) {
        let (Some(wal), Some(p)) = (&self.wal, &self.config.persistence) else { return };
        {
            let mut state = self.state.borrow_mut();
            if state.snapshotting || state.stopping || wal.bytes_since_compaction() < p.snapshot_wal_bytes {
                return;
            }
            state.snapshotting = true;
        }
        glommio::spawn_local(snapshot_and_compact(self.clone(), wal.clone())).detach();
    }
}

async fn driver_loop(inner: Rc<Inner>, wakeups: LocalReceiver<()>) {
    while wakeups.recv().await.is_some() {
        if inner.state.borrow().stopped {
            break;
        }
        inner.drive();
    }
}

async fn flush(inner: Rc<Inner>, wal: Rc<Wal>, batch: Vec<Persisting>) {
    // Snapshots installed from a leader become durable before the WAL
    // records that follow them (their hard state commits up to them).
    for (meta, bytes) in batch.iter().filter_map(|p| p.installed.as_ref()) {
        let dir = inner.config.persistence.as_ref().expect("a WAL implies persistence").dir.join("snap");
        if let Err(e) = snapshot::write_encoded(&dir, meta, bytes).await {
            inner.flushed(batch, Err(WalError::Poisoned(format!("installing a snapshot from the leader: {e}"))));
            return;
        }
        if let Err(e) = snapshot::remove_older(&dir, meta.group, meta.index).await {
            tracing::warn!(core = inner.config.core, group = meta.group, "could not remove an old snapshot: {e}");
        }
    }
    let result = wal.flush().await;
    inner.flushed(batch, result);
}

async fn ticker(inner: Rc<Inner>) {
    loop {
        glommio::timer::sleep(inner.config.tick).await;
        if inner.state.borrow().stopped {
            return;
        }
        inner.state.borrow_mut().tick_due = true;
        inner.notify();
    }
}

async fn interval_syncer(inner: Rc<Inner>, every: Duration) {
    let wal = inner.wal.clone().expect("interval policy implies a WAL");
    loop {
        glommio::timer::sleep(every).await;
        if inner.state.borrow().stopped || inner.state.borrow().poisoned.is_some() {
            return;
        }
        let started = std::time::Instant::now();
        if let Err(e) = wal.sync().await {
            inner.poison(e.to_string());
            return;
        }
        let sync_micros = started.elapsed().as_micros() as u64;
        inner.observe_flush(&FlushStats { sync_micros, synced: true, ..FlushStats::default() });
    }
}

/// Snapshots every shard of the core whose map moved since its last
/// snapshot, then deletes the WAL segments the snapshots cover. A failure
/// is logged and leaves the WAL as it was: nothing is lost, only space.
async fn snapshot_and_compact(inner: Rc<Inner>, wal: Rc<Wal>) {
    let dir = inner.config.persistence.as_ref().expect("snapshots need persistence").dir.join("snap");
    let ids: Vec<u32> = inner.groups.borrow().keys().copied().collect();
    for id in ids {
        let taken = {
            let groups = inner.groups.borrow();
            let g = &groups[&id];
            let index = g.map.applied_index();
            (index > g.snapshot_index).then(|| {
                let term = g.storage.term_of(index).expect("applied entry is in the log window");
                let conf_state = g.storage.conf_state().write_to_bytes().expect("conf state encodes").into();
                let entries: Vec<_> = g.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                (SnapshotMeta { group: id, index, term, conf_state }, entries)
            })
        };
        let Some((meta, entries)) = taken else { continue };
        if let Err(e) = snapshot::write(&dir, &meta, entries).await {
            tracing::error!(core = inner.config.core, group = id, "snapshot failed, WAL kept: {e}");
            inner.state.borrow_mut().snapshotting = false;
            return;
        }
        inner.groups.borrow_mut().get_mut(&id).expect("group exists").snapshot_index = meta.index;
        inner.stats.snapshots.set(inner.stats.snapshots.get() + 1);
        if let Err(e) = snapshot::remove_older(&dir, id, meta.index).await {
            tracing::warn!(core = inner.config.core, group = id, "could not remove an old snapshot: {e}");
        }
    }
    let covered = |g: u32| inner.groups.borrow().get(&g).map_or(0, |g| g.snapshot_index);
    match wal.compact(covered).await {
        Ok(n) => tracing::debug!(core = inner.config.core, deleted = n, "WAL compacted"),
        Err(e) => tracing::warn!(core = inner.config.core, "WAL compaction failed: {e}"),
    }
    inner.state.borrow_mut().snapshotting = false;
}
