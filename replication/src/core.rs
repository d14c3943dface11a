//! The glommio glue around a core's state machine ([`Machine`]): it feeds
//! the machine from requests, peer messages and a ticker, and carries out
//! what the machine asks — messages to the transport, answers to waiting
//! requests, WAL flushes, snapshot encodings. Everything here is IO or
//! scheduling; every decision is the machine's.
//!
//! Requests call [`Core::write`] / [`Core::read`]: the machine queues them
//! (memory only) and the driver task is woken. The driver (`driver_loop`)
//! runs [`Machine::drive`] and dispatches its outputs. One WAL flush runs
//! at a time (`flush`), and reports back with [`Machine::flushed`].
//!
//! Everything runs on one executor: state is `Rc<RefCell<_>>`, and no
//! borrow is held across an `.await` — nor across `spawn_local`, which in
//! glommio polls the new task at once.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use kv_engine::snapshot::{self, SnapshotMeta};
use kv_engine::wal::{FlushStats, FsyncPolicy, Wal, WalError};
use kv_engine::{Command, Outcome, Stored};
use raft::eraftpb::Message;

use crate::keyspace::wall_clock_ms;
use crate::machine::{FlushJob, Machine, Outputs, ReadStart, SnapshotSource};
use crate::oneshot;
use crate::transport::Transport;
use crate::types::{Answer, Consistency, CoreStats, GroupStatus, Now, ScanPage};
use crate::{CoreConfig, CoreError};

/// How long shutdown waits for in-flight writes to finish.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Receives the [`FlushStats`] of every WAL flush, and of every sync of the
/// `interval` policy (as stats with only `sync_micros` and `synced` set).
pub type FlushObserver = Box<dyn Fn(&FlushStats)>;

type Waiter = oneshot::Sender<Answer>;

#[derive(Default)]
struct GlueState {
    stopped: bool,
    snapshotting: bool,
}

pub(crate) struct Inner {
    config: CoreConfig,
    machine: RefCell<Machine<Waiter>>,
    wal: Option<Rc<Wal>>,
    transport: Box<dyn Transport>,
    state: RefCell<GlueState>,
    /// The machine's outputs being carried out (kept for their buffers).
    outputs: RefCell<Outputs<Waiter>>,
    wake: LocalSender<()>,
    /// Told about every WAL flush and timed sync (see [`Core::on_flush`]).
    flush_observer: RefCell<Option<FlushObserver>>,
    /// Where snapshot work runs (a low-share task queue), if set.
    background: std::cell::Cell<Option<glommio::TaskQueueHandle>>,
}

/// A shard's copy for a backup (see [`Core::backup`]).
#[derive(Clone)]
pub struct ShardBackup {
    pub shard: u32,
    /// The Raft index and term the copy is as of.
    pub index: u64,
    pub term: u64,
    /// Entries in the copy (keys whose expiry passed but were not yet
    /// reaped included).
    pub keys: u64,
    /// The snapshot file's bytes (`kv_engine::snapshot` format).
    pub bytes: Bytes,
}

impl std::fmt::Debug for ShardBackup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardBackup")
            .field("shard", &self.shard)
            .field("index", &self.index)
            .field("term", &self.term)
            .field("keys", &self.keys)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// Handle to this core's groups. Cheap to clone; not `Send`.
#[derive(Clone)]
pub struct Core(Rc<Inner>);

/// The time as the machine wants it: a process-wide monotonic clock and the
/// wall clock.
pub fn now() -> Now {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let monotonic_ms = ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64;
    Now { monotonic_ms, wall_ms: wall_clock_ms() }
}

impl Core {
    pub(crate) fn start(
        config: CoreConfig,
        machine: Machine<Waiter>,
        wal: Option<Rc<Wal>>,
        transport: Box<dyn Transport>,
    ) -> Core {
        let (wake, wakeups) = local_channel::new_bounded(1);
        let inner = Rc::new(Inner {
            config,
            machine: RefCell::new(machine),
            wal,
            transport,
            state: RefCell::new(GlueState::default()),
            outputs: RefCell::new(Outputs::default()),
            wake,
            flush_observer: RefCell::new(None),
            background: std::cell::Cell::new(None),
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

    pub fn stats(&self) -> CoreStats {
        self.0.machine.borrow().stats()
    }

    /// Runs snapshot work (encoding for followers, periodic snapshots) in
    /// `queue` from now on: a task queue with fewer shares than requests.
    pub fn set_background_queue(&self, queue: glommio::TaskQueueHandle) {
        self.0.background.set(Some(queue));
    }

    /// Runs `work` in the core's background queue (snapshots and other
    /// work that must yield to requests).
    pub fn spawn_background(&self, work: impl std::future::Future<Output = ()> + 'static) {
        self.0.spawn_background(work);
    }

    /// Sets the observer of WAL flushes (metrics). The observer runs on the
    /// core's executor and MUST NOT call back into the core.
    pub fn on_flush(&self, observer: FlushObserver) {
        *self.0.flush_observer.borrow_mut() = Some(observer);
    }

    /// Why this core refuses writes, if it does.
    pub fn poisoned(&self) -> Option<String> {
        self.0.machine.borrow().poisoned().map(str::to_string)
    }

    /// Replicates `command` through the shard's group and returns what
    /// applying it did. Resolves only once the entry is durable and applied.
    pub async fn write(&self, shard: u32, command: &Command) -> Result<Outcome, CoreError> {
        let (tx, rx) = oneshot::channel();
        self.0.machine.borrow_mut().propose(shard, command, tx, now())?;
        self.0.notify();
        match rx.await {
            Ok(Answer::Write(result)) => result,
            Ok(Answer::Read(_)) => unreachable!("a write is answered as a write"),
            Err(_) => Err(CoreError::ShuttingDown),
        }
    }

    /// Reads a key without waiting, if `consistency` allows it here:
    /// `Stale` on any replica, `Lease` on a leader whose lease holds.
    pub fn read_now(&self, shard: u32, key: &[u8], consistency: Consistency) -> Result<Option<Stored>, CoreError> {
        self.0.machine.borrow().read_now(shard, key, consistency, now())
    }

    /// Starts loading the map entries of `keys` (shard, key) on this core:
    /// a hint before a batch of reads.
    pub fn prefetch(&self, keys: &[(u32, &[u8])]) {
        self.0.machine.borrow().prefetch(keys);
    }

    /// Reads a key at `consistency`; a strict read, or a lease read on a
    /// leader whose lease lapsed, confirms leadership with a quorum
    /// (ReadIndex) and waits for the map to catch up first.
    pub async fn read(&self, shard: u32, key: &[u8], consistency: Consistency) -> Result<Option<Stored>, CoreError> {
        // The common case first, with no channel and no copy of the key.
        match self.read_now(shard, key, consistency) {
            Err(CoreError::NotLeader { .. }) if consistency != Consistency::Stale => {}
            answered => return answered,
        }
        let (tx, rx) = oneshot::channel();
        let started = self.0.machine.borrow_mut().read(shard, Bytes::copy_from_slice(key), consistency, tx, now())?;
        if let ReadStart::Answered(value) = started {
            return Ok(value);
        }
        self.0.notify();
        match rx.await {
            Ok(Answer::Read(result)) => result,
            Ok(Answer::Write(_)) => unreachable!("a read is answered as a read"),
            Err(_) => Err(CoreError::ShuttingDown),
        }
    }

    /// A consistent point-in-time copy of `shard` for a backup, encoded as
    /// a snapshot file's bytes (`kv_engine::snapshot`), from its leader
    /// only. Leadership is confirmed with a quorum first (a strict read:
    /// ReadIndex, then the map catches up with everything committed when
    /// it began), so the copy holds every write acknowledged before this
    /// call; `NotLeader` anywhere else. The copy itself is taken in one
    /// synchronous step at the shard's applied index (values are
    /// reference-counted); encoding it then yields to other tasks.
    pub async fn backup(&self, shard: u32) -> Result<ShardBackup, CoreError> {
        // The key read is irrelevant: only the round and the wait matter.
        self.read(shard, b"", Consistency::Strict).await?;
        let source = self.0.machine.borrow().shard_copy(shard)?;
        let keys = source.entries.len() as u64;
        let bytes = snapshot::encode(&source.meta, &source.entries).await;
        Ok(ShardBackup { shard, index: source.meta.index, term: source.meta.term, keys, bytes: bytes.into() })
    }

    /// A page of the shard's live keys (see [`Machine::scan`]).
    pub fn scan(&self, shard: u32, cursor: u64, count: usize, consistency: Consistency) -> Result<ScanPage, CoreError> {
        self.0.machine.borrow().scan(shard, cursor, count, consistency, now())
    }

    /// For each shard this core leads, up to `max` keys whose expiry has
    /// passed: what the active expiry cycle proposes to reap.
    pub fn expired_keys(&self, max: usize) -> Vec<(u32, Vec<Bytes>)> {
        self.0.machine.borrow().expired_keys(max, now())
    }

    /// Delivers a message from a peer to `group`; `incarnation` is the
    /// sender's data directory, as its connection's handshake said.
    /// Unknown groups, messages raft refuses, and messages from a directory
    /// other than the one the sender is being readmitted on (a connection
    /// that outlived the directory it came from) are dropped (Raft
    /// tolerates loss).
    pub fn step(&self, group: u32, message: Message, incarnation: u64) {
        self.step_staged(group, message, incarnation, None);
    }

    /// [`Core::step`], first staging `staged` (a map loaded from the
    /// message's snapshot) unless the message is dropped.
    fn step_staged(
        &self,
        group: u32,
        message: Message,
        incarnation: u64,
        staged: Option<(SnapshotMeta, kv_engine::ShardMap)>,
    ) {
        let mut machine = self.0.machine.borrow_mut();
        if machine.readmitting(message.from).is_some_and(|i| i != incarnation) {
            return;
        }
        if let Some((meta, map)) = staged {
            machine.stage_snapshot_map(meta, map);
        }
        let stepped = machine.step(group, message);
        drop(machine);
        match stepped {
            Ok(()) => self.0.notify(),
            Err(e) => tracing::debug!(core = self.0.config.core, group, "dropped a peer message: {e}"),
        }
    }

    /// Starts handing every group this core leads to another voter (a
    /// graceful stop, so a rolling restart does not wait for elections).
    /// Returns how many transfers started.
    pub fn transfer_leadership(&self) -> usize {
        let n = self.0.machine.borrow_mut().transfer_leadership();
        self.0.notify();
        n
    }

    /// Whether this core leads any group that has other voters.
    pub fn leads_replicated_group(&self) -> bool {
        self.0.machine.borrow().leads_replicated_group()
    }

    /// Hands groups back to their preferred leaders (the first replica)
    /// where those are caught up. Returns how many transfers started.
    pub fn rebalance_leaders(&self) -> usize {
        let layout = &self.0.config.layout;
        let n = self.0.machine.borrow_mut().rebalance_leaders(|s| layout.replicas_of(s).first().copied());
        if n > 0 {
            self.0.notify();
        }
        n
    }

    /// Tells raft whether a snapshot message reached the transport.
    pub fn report_snapshot(&self, group: u32, to: u64, sent: bool) {
        self.0.machine.borrow_mut().report_snapshot(group, to, sent);
        self.0.notify();
    }

    /// Steps a leader's MsgSnapshot for `group` whose data the caller
    /// loaded into `map` (`kv_engine::snapshot::load_map`, yielding):
    /// installing it then swaps the map in instead of decoding on the
    /// machine's path. As [`Core::step`] otherwise.
    pub fn step_loaded_snapshot(
        &self,
        group: u32,
        message: Message,
        incarnation: u64,
        meta: SnapshotMeta,
        map: kv_engine::ShardMap,
    ) {
        self.step_staged(group, message, incarnation, Some((meta, map)));
    }

    /// See `Machine::tracking`.
    pub fn tracking(&self, group: u32) -> kv_engine::evict::Tracking {
        self.0.machine.borrow().tracking(group)
    }

    /// See `Machine::would_install`.
    pub fn would_install(&self, group: u32, index: u64) -> bool {
        self.0.machine.borrow().would_install(group, index)
    }

    /// Starts readmitting `node` on its new data directory (see
    /// `Machine::readmit`).
    pub fn readmit(&self, node: u64, incarnation: u64) {
        self.0.machine.borrow_mut().readmit(node, incarnation);
    }

    /// Whether every group of this core dropped `node`'s old data directory
    /// (see `Machine::readmitted`).
    pub fn readmitted(&self, node: u64, incarnation: u64) -> bool {
        self.0.machine.borrow().readmitted(node, incarnation)
    }

    /// Every readmission on this core: (node, incarnation, the groups that
    /// still count its old directory).
    pub fn readmissions(&self) -> Vec<(u64, u64, Vec<u32>)> {
        self.0.machine.borrow().readmissions()
    }

    /// The leader this core knows for `shard`, if any.
    pub fn leader_of(&self, shard: u32) -> Option<u64> {
        self.0.machine.borrow().leader_of(shard)
    }

    /// Raft's view of every group on this core, for status reports.
    pub fn group_status(&self) -> Vec<GroupStatus> {
        self.0.machine.borrow().group_status()
    }

    /// Whether every group has replayed its log (see `Machine::is_ready`).
    pub fn is_ready(&self) -> bool {
        self.0.machine.borrow().is_ready()
    }

    /// Waits (bounded) until [`Core::is_ready`].
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !self.is_ready() {
            if let Some(why) = self.poisoned() {
                return Err(why);
            }
            if Instant::now() > deadline {
                return Err(format!("core {} did not finish replaying its log within {timeout:?}", self.0.config.core));
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Number of keys and bytes per shard (for status and metrics).
    pub fn shard_sizes(&self) -> Vec<(u32, usize, u64)> {
        self.0.machine.borrow().shard_sizes()
    }

    /// Bytes of keys and values, and keys, on this core.
    pub fn data_size(&self) -> (u64, u64) {
        let m = self.0.machine.borrow();
        let keys = m.shard_sizes().iter().map(|(_, k, _)| *k as u64).sum();
        (m.data_bytes(), keys)
    }

    /// Of the compressed values on this core: their plain bytes, and what
    /// they take.
    pub fn compression_bytes(&self) -> (u64, u64) {
        self.0.machine.borrow().compression_bytes()
    }

    /// What reads and writes record for eviction (see `kv_engine::evict`).
    pub fn set_tracking(&self, tracking: kv_engine::evict::Tracking) {
        self.0.machine.borrow_mut().set_tracking(tracking);
    }

    /// While set, groups keep no applied entries in their in-memory logs.
    pub fn set_memory_pressure(&self, pressure: bool) {
        self.0.machine.borrow_mut().set_memory_pressure(pressure);
    }

    /// See [`Machine::set_write_allowance`].
    pub fn set_write_allowance(&self, allowance: Option<u64>) {
        self.0.machine.borrow_mut().set_write_allowance(allowance);
    }

    /// Shards this core leads.
    pub fn leading_shards(&self) -> usize {
        self.0.machine.borrow().group_status().iter().filter(|g| g.is_leader).count()
    }

    /// For each shard this core leads, up to `per_shard` keys to evict.
    pub fn eviction_victims(&self, policy: kv_engine::evict::Policy, per_shard: usize) -> Vec<(u32, Vec<Bytes>)> {
        self.0.machine.borrow().eviction_victims(policy, per_shard, now())
    }

    /// Stops taking writes, lets in-flight writes finish (bounded), makes the
    /// WAL durable regardless of the fsync policy, and stops the driver. An
    /// error means the WAL could not be made durable (it is poisoned).
    pub async fn shutdown(&self) -> Result<(), WalError> {
        self.0.machine.borrow_mut().stop_accepting();
        let deadline = Instant::now() + SHUTDOWN_DRAIN_TIMEOUT;
        loop {
            let idle = {
                let m = self.0.machine.borrow();
                (m.pending_count() == 0 && !m.is_flushing()) || m.poisoned().is_some()
            };
            if idle || Instant::now() > deadline {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        self.0.state.borrow_mut().stopped = true;
        let outputs = {
            let mut m = self.0.machine.borrow_mut();
            m.halt();
            m.take_outputs()
        };
        answer(outputs.answers);
        self.0.notify();
        let Some(wal) = &self.0.wal else { return Ok(()) };
        // A flush may outlive the drain timeout (a slow disk): let it end.
        let deadline = Instant::now() + SHUTDOWN_DRAIN_TIMEOUT;
        while wal.is_flushing() && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        if let Some(why) = self.poisoned() {
            return Err(WalError::Poisoned(why));
        }
        if wal.is_flushing() {
            return Err(WalError::Poisoned("a WAL flush did not finish during shutdown".into()));
        }
        for record in self.0.machine.borrow_mut().take_final_commit_records() {
            wal.append(&record);
        }
        wal.flush().await?;
        // IMPORTANT: fsync — a clean shutdown leaves everything durable, even
        // under `fsync never`.
        wal.sync().await
    }
}

fn answer(answers: Vec<(Waiter, Answer)>) {
    for (waiter, a) in answers {
        waiter.send(a);
    }
}

impl Inner {
    fn notify(&self) {
        // A full channel means a wakeup is already pending.
        let _ = self.wake.try_send(());
    }

    /// Runs the machine once and carries out what it asks.
    fn drive(self: &Rc<Self>) {
        let more = {
            let mut m = self.machine.borrow_mut();
            let more = m.drive(now());
            m.swap_outputs(&mut self.outputs.borrow_mut());
            more
        };
        self.dispatch();
        if more {
            self.notify();
        }
    }

    /// Carries out the outputs taken by `drive`. Called with no borrow of
    /// the machine held: glommio runs a spawned task at once.
    fn dispatch(self: &Rc<Self>) {
        let (messages, job, prepare) = {
            let mut out = self.outputs.borrow_mut();
            // Sending wakes the waiting tasks; none runs before this returns.
            for (waiter, a) in out.answers.drain(..) {
                waiter.send(a);
            }
            (std::mem::take(&mut out.messages), out.flush.take(), std::mem::take(&mut out.prepare))
        };
        self.transport.send(messages);
        if let Some(job) = job {
            let wal = self.wal.clone().expect("a durable machine has a WAL");
            glommio::spawn_local(flush(self.clone(), wal, job)).detach();
        }
        for source in prepare {
            self.spawn_background(prepare_snapshot(self.clone(), source));
        }
    }

    fn spawn_background(&self, work: impl std::future::Future<Output = ()> + 'static) {
        let task = match self.background.get() {
            Some(queue) => glommio::spawn_local_into(work, queue).expect("the background queue exists"),
            None => glommio::spawn_local(work),
        };
        task.detach();
    }

    fn observe_flush(&self, stats: &FlushStats) {
        if let Some(observe) = &*self.flush_observer.borrow() {
            observe(stats);
        }
    }

    fn maybe_snapshot(self: &Rc<Self>) {
        let (Some(wal), Some(p)) = (&self.wal, &self.config.persistence) else { return };
        {
            let mut state = self.state.borrow_mut();
            if state.snapshotting || state.stopped || wal.bytes_since_compaction() < p.snapshot_wal_bytes {
                return;
            }
            state.snapshotting = true;
        }
        self.spawn_background(snapshot_and_compact(self.clone(), wal.clone()));
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

/// Writes one [`FlushJob`]: snapshots installed from a leader first (their
/// hard state commits up to them), then the records in one WAL flush.
async fn flush(inner: Rc<Inner>, wal: Rc<Wal>, job: FlushJob) {
    let result = write_job(&inner, &wal, job).await;
    let ok = result.is_ok();
    if let Ok(stats) = &result {
        inner.observe_flush(stats);
    }
    inner.machine.borrow_mut().flushed(result);
    if ok {
        inner.maybe_snapshot();
    }
    inner.notify();
}

async fn write_job(inner: &Inner, wal: &Wal, job: FlushJob) -> Result<FlushStats, String> {
    for (meta, bytes) in &job.installs {
        let dir = inner.config.persistence.as_ref().expect("a WAL implies persistence").dir.join("snap");
        snapshot::write_encoded(&dir, meta, bytes)
            .await
            .map_err(|e| format!("installing a snapshot from the leader: {e}"))?;
        if let Err(e) = snapshot::remove_older(&dir, meta.group, meta.index).await {
            tracing::warn!(core = inner.config.core, group = meta.group, "could not remove an old snapshot: {e}");
        }
    }
    for record in &job.records {
        wal.append(record);
    }
    wal.flush().await.map_err(|e| e.to_string())
}

async fn prepare_snapshot(inner: Rc<Inner>, source: SnapshotSource) {
    let data = snapshot::encode(&source.meta, &source.entries).await;
    inner.machine.borrow_mut().snapshot_prepared(&source, data, now());
    inner.notify();
}

async fn ticker(inner: Rc<Inner>) {
    loop {
        glommio::timer::sleep(inner.config.tick).await;
        if inner.state.borrow().stopped {
            return;
        }
        inner.machine.borrow_mut().tick(now());
        inner.notify();
    }
}

async fn interval_syncer(inner: Rc<Inner>, every: Duration) {
    let wal = inner.wal.clone().expect("interval policy implies a WAL");
    loop {
        glommio::timer::sleep(every).await;
        if inner.state.borrow().stopped || inner.machine.borrow().poisoned().is_some() {
            return;
        }
        let started = Instant::now();
        if let Err(e) = wal.sync().await {
            inner.machine.borrow_mut().poison(e.to_string());
            inner.notify();
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
    let sources = inner.machine.borrow().take_snapshots();
    for SnapshotSource { meta, entries, .. } in sources {
        if let Err(e) = snapshot::write(&dir, &meta, entries).await {
            tracing::error!(core = inner.config.core, group = meta.group, "snapshot failed, WAL kept: {e}");
            inner.state.borrow_mut().snapshotting = false;
            return;
        }
        inner.machine.borrow_mut().snapshot_written(meta.group, meta.index);
        if let Err(e) = snapshot::remove_older(&dir, meta.group, meta.index).await {
            tracing::warn!(core = inner.config.core, group = meta.group, "could not remove an old snapshot: {e}");
        }
    }
    let covered: std::collections::BTreeMap<u32, u64> = {
        let m = inner.machine.borrow();
        m.shards().map(|g| (g, m.snapshot_index(g))).collect()
    };
    match wal.compact(|g| covered.get(&g).copied().unwrap_or(0)).await {
        Ok(n) => tracing::debug!(core = inner.config.core, deleted = n, "WAL compacted"),
        Err(e) => tracing::warn!(core = inner.config.core, "WAL compaction failed: {e}"),
    }
    inner.state.borrow_mut().snapshotting = false;
}
