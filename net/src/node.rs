//! One core of a running node, from start to clean stop. The binary spawns
//! one executor per core and runs [`run_core`] in each.
//!
//! Stop protocol (every step bounded):
//! 1. the process-wide stop flag is seen; in a cluster the core hands the
//!    shards it leads to other replicas (bounded), still serving meanwhile;
//!    then it stops accepting and its connections stop reading new requests;
//! 2. the core waits for its connections to answer what they started;
//! 3. it waits for every core to get there (a request forwarded from another
//!    core may still be running here);
//! 4. it makes its WAL durable and stops its raft driver.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_engine::Command;
use kv_replication::transport::{NoPeers, Transport};
use kv_replication::{Core, CoreConfig};

use crate::limits::Limits;
use crate::mesh::MeshEnds;
use crate::metrics::{self, CoreMetrics, Metrics};
use crate::peer::{PeerConfig, PeerTransport, Peers};
use crate::route::Owner;
use crate::service::{Endpoints, Frontend, Service, Shutdown};
use crate::{http, listener, native, peer, resp};

/// How often a core looks at the process-wide flags.
const FLAG_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Longest wait for a core's connections, then for the other cores, to drain.
const STOP_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for replay and leadership after the core has opened.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a core hands shards back to their preferred leaders.
const REBALANCE_INTERVAL: Duration = Duration::from_secs(5);
/// How often a core looks for expired keys in the shards it leads.
const EXPIRY_CYCLE_INTERVAL: Duration = Duration::from_millis(100);
/// Keys one reap command removes at most: bounds the work of one apply (and
/// so the latency it adds to requests queued behind it) and the entry size.
const REAP_KEYS_PER_COMMAND_MAX: usize = 256;
/// Longest wait for one reap command to commit; a later cycle tries again.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// What request handling asks of glommio's scheduler: a queue with work
/// runs within this of becoming runnable.
const REQUEST_LATENCY: Duration = Duration::from_millis(1);
/// How long a stopping node tries to hand its leaderships over.
const LEADERSHIP_TRANSFER_TIMEOUT: Duration = Duration::from_secs(3);

/// Flags the cores of one node share with the main thread.
#[derive(Debug, Default)]
pub struct NodeSignals {
    /// Set by a signal handler, or by a core that failed to start.
    pub stop: AtomicBool,
    /// Cores ready to serve.
    pub ready: AtomicUsize,
    /// Cores that finished step 1 of the stop protocol (leaderships handed
    /// over, or given up on).
    pub handed_over: AtomicUsize,
    /// Cores that finished step 2 of the stop protocol.
    pub drained: AtomicUsize,
    /// Set when any core failed.
    pub failed: AtomicBool,
    /// One entry per core, by core index (none with `Default`).
    pub cores: Vec<CoreSignals>,
    /// Why the node must stop and exit with an error, when something it
    /// cannot fix by itself made it stop (see [`NodeSignals::fail_with`]).
    pub fatal: std::sync::Mutex<Option<String>>,
}

impl NodeSignals {
    pub fn new(cores: usize) -> NodeSignals {
        NodeSignals { cores: (0..cores).map(|_| CoreSignals::default()).collect(), ..NodeSignals::default() }
    }

    /// Cores that, at their last poll, knew a leader for each of their shards.
    pub fn cores_knowing_leaders(&self) -> usize {
        self.cores.iter().filter(|c| c.leaders_known.load(Ordering::SeqCst)).count()
    }

    /// Stops the node; it exits with `why` as its error (the first reason
    /// given wins).
    pub fn fail_with(&self, why: String) {
        self.fatal.lock().expect("not poisoned").get_or_insert(why);
        self.failed.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Every core's heartbeat counter, by core index.
    pub fn heartbeats(&self) -> Vec<u64> {
        self.cores.iter().map(|c| c.heartbeat.load(Ordering::Relaxed)).collect()
    }
}

/// What one serving core publishes, every [`FLAG_POLL_INTERVAL`], for the
/// main thread (systemd readiness and watchdog). Its own cache lines: one
/// writer each.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CoreSignals {
    /// Bumped by the core's main loop at every poll: a core whose executor
    /// is stuck stops bumping it.
    pub heartbeat: AtomicU64,
    /// Whether every shard this node holds on the core knows its leader.
    pub leaders_known: AtomicBool,
}

/// Everything one core needs, built on the main thread.
pub struct CoreSetup {
    pub config: CoreConfig,
    pub limits: Limits,
    pub native_listener: TcpListener,
    pub resp_listener: TcpListener,
    pub http_listener: TcpListener,
    pub endpoints: Endpoints,
    pub frontend: Frontend,
    /// The process-wide metrics registry.
    pub metrics: Arc<Metrics>,
    pub mesh: MeshEnds,
    pub signals: Arc<NodeSignals>,
    /// Peers and this core's peer listener; `None` on a single node.
    pub peer: Option<(PeerConfig, TcpListener)>,
    /// The node's memory limit (shared by every core).
    pub memory: Arc<crate::memory::Memory>,
    /// glommio shares of the request and the background task queues.
    pub shares: (usize, usize),
}

/// Runs one core. Returns an error message if it could not start or stop
/// cleanly; in that case it has also raised the node's stop flag.
pub async fn run_core(setup: CoreSetup) -> Result<(), String> {
    let signals = setup.signals.clone();
    let result = run(setup).await;
    if result.is_err() {
        signals.failed.store(true, Ordering::SeqCst);
        signals.stop.store(true, Ordering::SeqCst);
    }
    result
}

async fn run(setup: CoreSetup) -> Result<(), String> {
    let CoreSetup {
        config,
        limits,
        native_listener,
        resp_listener,
        http_listener,
        endpoints,
        frontend,
        metrics,
        mesh,
        signals,
        peer,
        memory,
        shares,
    } = setup;
    // Requests (connections, peers) and background work (snapshots,
    // expiry, eviction, metrics) in task queues of their own: when both
    // have work, the core divides its time by their shares.
    let requests = glommio::executor().create_task_queue(
        glommio::Shares::Static(shares.0),
        glommio::Latency::Matters(REQUEST_LATENCY),
        "requests",
    );
    let background = glommio::executor().create_task_queue(
        glommio::Shares::Static(shares.1),
        glommio::Latency::NotImportant,
        "background",
    );

    let core_index = config.core;
    metrics::bind_thread_to_slot(core_index as usize);
    let layout = config.layout.clone();
    let mesh = mesh.connect().await;
    let (peers, peer_listener) = match peer {
        Some((peer_config, l)) => (Some(Peers::start(peer_config)), Some(l)),
        None => (None, None),
    };
    let transport: Box<dyn Transport> = match &peers {
        Some(p) => Box::new(PeerTransport(p.clone())),
        None => Box::new(NoPeers),
    };
    let core = Core::open(config, transport).await.map_err(|e| format!("core {core_index}: {e}"))?;
    core.set_background_queue(background);
    if let Some(p) = &peers {
        p.attach(core.clone());
    }
    let core_metrics = CoreMetrics::start(&metrics, &core, core_index);
    let owner =
        Rc::new(Owner { core: core.clone(), layout: layout.clone(), peers: peers.clone(), memory: memory.clone() });
    let mesh = mesh.start(owner.clone());
    let svc = Rc::new(Service {
        core_index,
        layout: layout.clone(),
        owner,
        mesh,
        limits,
        shutdown: Shutdown::default(),
        connections: std::cell::Cell::new(0),
        endpoints,
        frontend,
        metrics,
        memory,
    });
    let refresher = into(background, metrics::core::refresh_loop(svc.clone(), core_metrics));
    let peer_acceptor = match (peer_listener, &peers) {
        (Some(l), Some(p)) => {
            // SAFETY: the fd comes from a listening socket this function owns.
            let l = unsafe { glommio::net::TcpListener::from_raw_fd(l.into_raw_fd()) };
            Some(into(requests, peer::accept_loop(l, p.clone(), svc.clone())))
        }
        _ => None,
    };
    core.wait_ready(READY_TIMEOUT).await.map_err(|e| format!("core {core_index}: {e}"))?;
    // SAFETY: the fd comes from a listening socket this function owns.
    let native = unsafe { glommio::net::TcpListener::from_raw_fd(native_listener.into_raw_fd()) };
    let acceptor = into(requests, listener::accept_loop(native, svc.clone(), native::server::serve));
    resp::stats::started();
    // SAFETY: as above.
    let resp_listener = unsafe { glommio::net::TcpListener::from_raw_fd(resp_listener.into_raw_fd()) };
    let resp_acceptor = into(requests, listener::accept_loop(resp_listener, svc.clone(), resp::server::serve));
    // SAFETY: the fd comes from a listening socket this function owns.
    let http_listener = unsafe { glommio::net::TcpListener::from_raw_fd(http_listener.into_raw_fd()) };
    let http_acceptor = into(requests, listener::accept_loop(http_listener, svc.clone(), http::serve));
    let shards: Vec<u32> = layout.shards_of_core(core_index).collect();
    let publish = || {
        if let Some(mine) = signals.cores.get(core_index as usize) {
            let known = shards.iter().all(|&s| core.leader_of(s).is_some());
            mine.leaders_known.store(known, Ordering::SeqCst);
            mine.heartbeat.fetch_add(1, Ordering::Relaxed);
        }
    };
    // Before `ready`: the main thread then sees this core's leaders at once.
    publish();
    signals.ready.fetch_add(1, Ordering::SeqCst);
    // Dropped (so cancelled) when the core stops.
    let _expiry = into(background, expiry_cycle(core.clone()));
    let stop = signals.clone();
    let stopped = move || stop.stop.load(Ordering::SeqCst);
    let index = core_index as usize;
    let _admission = into(requests, {
        let stopped = stopped.clone();
        crate::memory::admission_cycle(core.clone(), index, svc.memory.clone(), stopped)
    });
    let _eviction = into(background, crate::memory::eviction_cycle(core.clone(), index, svc.memory.clone(), stopped));

    let mut next_rebalance = Instant::now() + REBALANCE_INTERVAL;
    while !signals.stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(FLAG_POLL_INTERVAL).await;
        if peers.is_some() && Instant::now() >= next_rebalance {
            core.rebalance_leaders();
            next_rebalance = Instant::now() + REBALANCE_INTERVAL;
        }
        publish();
    }
    if peers.is_some() && core.transfer_leadership() > 0 {
        // Still serving: requests for these shards are forwarded to the new
        // leaders as soon as they take over.
        let deadline = Instant::now() + LEADERSHIP_TRANSFER_TIMEOUT;
        while core.leads_replicated_group() && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(5)).await;
            if core.leads_replicated_group() {
                core.transfer_leadership();
            }
        }
    }
    signals.handed_over.fetch_add(1, Ordering::SeqCst);
    svc.shutdown.trigger();
    acceptor.await;
    resp_acceptor.await;
    http_acceptor.await;
    refresher.await;
    wait_until(|| svc.connections.get() == 0).await;
    signals.drained.fetch_add(1, Ordering::SeqCst);
    let cores = layout.cores as usize;
    wait_until(|| signals.drained.load(Ordering::SeqCst) >= cores || signals.failed.load(Ordering::SeqCst)).await;
    let stopped = core.shutdown().await.map_err(|e| format!("core {core_index}: {e}"));
    if let Some(p) = &peers {
        p.stop();
    }
    if let Some(a) = peer_acceptor {
        a.await;
    }
    stopped?;
    tracing::debug!(core = core_index, "core stopped");
    Ok(())
}

/// Active expiry: reclaims keys whose TTL passed even if nobody reads them.
/// The leader of each shard proposes a reap command naming the keys its
/// clock says have expired; applying it removes those that have expired by
/// the command's own timestamp, identically on every replica.
async fn expiry_cycle(core: Core) {
    loop {
        glommio::timer::sleep(EXPIRY_CYCLE_INTERVAL).await;
        for (shard, keys) in core.expired_keys(REAP_KEYS_PER_COMMAND_MAX) {
            let command = Command::Reap { keys };
            let reap = core.write(shard, &command);
            match glommio::timer::timeout(REAP_TIMEOUT, async { Ok(reap.await) }).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(shard, "reaping expired keys failed: {e}"),
                Err(e) => tracing::debug!(shard, "reaping expired keys failed: {e}"),
            }
        }
    }
}

/// Spawns `work` into one of the core's task queues.
fn into<T: 'static>(
    queue: glommio::TaskQueueHandle,
    work: impl std::future::Future<Output = T> + 'static,
) -> glommio::Task<T> {
    glommio::spawn_local_into(work, queue).expect("the core's task queues exist")
}

/// Polls `done` until it holds or [`STOP_STEP_TIMEOUT`] passes.
async fn wait_until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + STOP_STEP_TIMEOUT;
    while !done() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}
