//! `kvd`: the daemon. Parses and validates its settings once, takes the data
//! directory's lock, binds one listening socket per core, then runs one
//! pinned glommio executor per core until SIGTERM/SIGINT, and exits 0 after
//! a clean stop (see `kv_net::node` for the stop protocol). Under systemd
//! (`Type=notify`) the main thread reports start-up, readiness, the stop and
//! a watchdog ping while every core polls (`kv_cli::notify`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use kv_cli::config::{layers, Settings};
use kv_cli::notify::Notifier;
use kv_net::node::{self, CoreSetup, NodeSignals};
use kv_net::peer::incarnation::Incarnations;
use kv_net::peer::PeerConfig;
use kv_net::service::{Endpoints, Frontend};
use kv_replication::{CoreConfig, Layout, Persistence, TICK_INTERVAL_DEFAULT};

/// Every request allocates and frees on its core; jemalloc's per-thread
/// caches make that a fraction of glibc malloc's cost (ARCHITECTURE.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // `kvd restore FILE --data-dir DIR ...`: a new data directory from a
    // backup (kv_cli::restore), not a server start.
    if std::env::args().nth(1).as_deref() == Some("restore") {
        return kv_cli::restore::main(std::env::args().skip(2));
    }
    let layered = match layers::load(std::env::args_os()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kvd: {e}");
            return ExitCode::from(2);
        }
    };
    let print = layered.options.print_config;
    let settings = match Settings::from_options(layered.options) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kvd: {}", layers::annotate(e, &layered.sources));
            return ExitCode::from(2);
        }
    };
    if print {
        print!("{}", settings.describe(&layered.sources));
        return ExitCode::SUCCESS;
    }
    kv_cli::logging::init(&settings.log_level, settings.log_json);
    abort_on_panic();
    let _failpoints = fail::FailScenario::setup();
    let notify = Arc::new(Notifier::from_env());
    match run(settings, &notify) {
        Ok(()) => {
            notify.status("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("kvd: {e}");
            notify.status(&format!("failed: {e}"));
            ExitCode::FAILURE
        }
    }
}

fn run(mut s: Settings, notify: &Arc<Notifier>) -> Result<(), String> {
    notify.status("starting: opening the data directory and binding listeners");
    let cores = s.cpus.len() as u32;
    let wanted = match &s.cluster {
        Some(c) => Layout::cluster(
            s.node_id,
            c.peers.keys().copied().collect(),
            c.replication_factor,
            cores,
            s.shards_per_core,
        ),
        None => Layout::new(s.node_id, cores, s.shards_per_core),
    };
    // Kept only if the directory is new (`load_or_create`).
    let joining = s.cluster.as_ref().is_some_and(|c| c.join.is_some());
    let wanted = if joining { wanted.joining() } else { wanted };
    let (layout, _lock) = if s.persistent {
        let lock = prepare_data_dir(&s.data_dir)?;
        // io_uring opens paths relative to no directory: make it absolute.
        s.data_dir = s.data_dir.canonicalize().map_err(|e| format!("data dir {}: {e}", s.data_dir.display()))?;
        (Layout::load_or_create(&s.data_dir, wanted).map_err(|e| e.to_string())?, Some(lock))
    } else {
        (wanted, None)
    };
    if joining && !layout.joined {
        tracing::info!("--join is ignored: the data directory exists, so this node is a member already");
    }
    // A cluster node is always persistent (checked with the config).
    let incarnations = match &s.cluster {
        Some(_) => Some(Arc::new(Incarnations::open(&s.data_dir)?)),
        None => None,
    };
    let listeners = kv_net::listener::bind_reuseport(s.listen, cores as usize).map_err(|e| e.to_string())?;
    let listen = listeners[0].local_addr().map_err(|e| e.to_string())?;
    let resp_listeners =
        kv_net::listener::bind_reuseport(s.resp_listen, cores as usize).map_err(|e| format!("RESP listener: {e}"))?;
    let http_listeners =
        kv_net::listener::bind_reuseport(s.http_listen, cores as usize).map_err(|e| format!("HTTP listener: {e}"))?;
    let local = |l: &std::net::TcpListener| l.local_addr().map(|a| a.to_string()).map_err(|e| e.to_string());
    let endpoints =
        Endpoints { native: listen.to_string(), resp: local(&resp_listeners[0])?, http: local(&http_listeners[0])? };
    let frontend = Frontend { resp_mode: s.resp_mode, password: s.password.clone() };
    let mut resp_listeners = resp_listeners.into_iter();
    let mut http_listeners = http_listeners.into_iter();
    let mut peer_listeners: Vec<Option<std::net::TcpListener>> = match &s.cluster {
        Some(c) => bind_peer_listeners(c.peer_listen, cores)?.into_iter().map(Some).collect(),
        None => (0..cores).map(|_| None).collect(),
    };
    let signals = Arc::new(NodeSignals::new(cores as usize));
    let metrics = Arc::new(kv_net::metrics::Metrics::new(cores as usize));
    if s.max_memory.is_some() {
        return_freed_memory_promptly();
    }
    let memory = Arc::new(kv_net::memory::Memory::new(
        s.max_memory,
        s.eviction_policy,
        cores as usize,
        Box::new(allocated_bytes),
    ));
    watch_signals(signals.clone(), notify.clone())?;

    let mut handles = Vec::new();
    let meshes = kv_net::mesh::build(cores as usize);
    for ((i, cpu), (listener, mesh)) in s.cpus.iter().enumerate().zip(listeners.into_iter().zip(meshes)) {
        let persistence = s.persistent.then(|| Persistence {
            dir: s.data_dir.join(format!("core-{i}")),
            fsync: s.fsync,
            segment_bytes: s.wal_segment_bytes,
            snapshot_wal_bytes: s.snapshot_wal_bytes,
            wal_batch_bytes_max: s.wal_batch_bytes_max,
        });
        let config = CoreConfig {
            core: i as u32,
            layout: layout.clone(),
            persistence,
            tick: TICK_INTERVAL_DEFAULT,
            log_retain_entries: s.raft_log_retain_entries,
            compress_min_bytes: s.compress_min_bytes,
        };
        let peer = s.cluster.as_ref().map(|c| {
            let peer_config = PeerConfig {
                node_id: s.node_id,
                core: i as u32,
                cores,
                shards: layout.shards,
                secret: c.secret.clone(),
                peers: c.peers.iter().filter(|(id, _)| **id != s.node_id).map(|(id, a)| (*id, *a)).collect(),
                // A Raft entry carries at most one maximal request.
                payload_bytes_max: s.limits.frame_bytes_max + PEER_FRAME_SLACK_BYTES,
                endpoints: endpoints.clone(),
                incarnations: incarnations.clone().expect("a cluster node has an incarnation"),
                joined: layout.joined,
                signals: signals.clone(),
                snapshot_bytes_per_sec: c.snapshot_bytes_per_sec,
            };
            (peer_config, peer_listeners[i].take().expect("one peer listener per core"))
        });
        let setup = CoreSetup {
            config,
            limits: s.limits,
            native_listener: listener,
            resp_listener: resp_listeners.next().expect("one RESP listener per core"),
            http_listener: http_listeners.next().expect("one HTTP listener per core"),
            endpoints: endpoints.clone(),
            frontend: frontend.clone(),
            metrics: metrics.clone(),
            mesh,
            signals: signals.clone(),
            peer,
            memory: memory.clone(),
            shares: (s.executor.request_shares, s.executor.background_shares),
        };
        let x = s.executor;
        let placement = if x.pinned { Placement::Fixed(*cpu) } else { Placement::Unbound };
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(&format!("kvd-core-{i}"))
            .io_memory(s.io_memory_bytes)
            .ring_depth(x.io_ring_depth)
            .preempt_timer(x.preempt_timer);
        if let Some(spin) = x.spin_before_park {
            builder = builder.spin_before_park(spin);
        }
        let handle = builder
            .spawn(move || node::run_core(setup))
            .map_err(|e| format!("cannot start the executor for CPU {cpu}: {e}"))?;
        handles.push(handle);
    }
    let mut status = Status::new(notify);
    // Ends when every core has replayed, or one failed (each core bounds its
    // replay) or a signal came.
    loop {
        let ready = signals.ready.load(Ordering::SeqCst);
        status.set(format!("starting: replaying the write-ahead log ({ready} of {cores} cores done)"));
        if ready >= cores as usize || signals.stop.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if !signals.stop.load(Ordering::SeqCst) {
        let fsync = if s.persistent { format!("{:?}", s.fsync).to_lowercase() } else { "none (in-memory)".into() };
        let cluster = match &s.cluster {
            Some(c) => format!(
                ", peers on {} ({} nodes, {} replicas per shard)",
                c.peer_listen,
                layout.nodes.len(),
                layout.replicas
            ),
            None => String::new(),
        };
        tracing::info!(
            "kvd ready: native protocol on {listen}, RESP on {}, HTTP on {}, node {}, {cores} cores (CPUs {:?}), {} shards, data dir {}, fsync {fsync}{cluster}",
            endpoints.resp,
            endpoints.http,
            layout.node_id,
            s.cpus,
            layout.shards,
            if s.persistent { s.data_dir.display().to_string() } else { "none".into() },
        );
        let serving = format!(
            "serving: native protocol on {listen}, RESP on {}, HTTP on {}, {cores} cores, {} shards",
            endpoints.resp, endpoints.http, layout.shards
        );
        if wait_for_leaders(&signals, &mut status) {
            tracing::debug!("every shard on this node knows its leader; READY=1");
            notify.ready(&serving);
            watchdog(&signals, notify);
        }
    }
    report_stop(&signals, &mut status);
    let mut errors = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("executor failed: {e}")),
        }
    }
    if let Some(why) = signals.fatal.lock().expect("not poisoned").take() {
        errors.insert(0, why);
    }
    if errors.is_empty() {
        tracing::info!("kvd stopped cleanly");
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// How often the main thread looks at the cores' flags once they serve.
const SUPERVISE_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Longest the main thread reports the stop's progress before it waits for
/// the cores to exit (they bound every step themselves).
const STOP_REPORT_TIMEOUT: Duration = Duration::from_secs(120);

/// The `STATUS=` last sent, so an unchanged status is not sent again.
struct Status<'a> {
    notify: &'a Notifier,
    last: String,
}

impl<'a> Status<'a> {
    fn new(notify: &'a Notifier) -> Status<'a> {
        Status { notify, last: String::new() }
    }

    fn set(&mut self, text: String) {
        if text != self.last {
            self.notify.status(&text);
            self.last = text;
        }
    }
}

/// Waits until every core knows a leader for each of its shards: true then,
/// false if a stop came first. A node that cannot reach a quorum waits until
/// it is stopped (systemd bounds the start with `TimeoutStartSec=`).
fn wait_for_leaders(signals: &NodeSignals, status: &mut Status) -> bool {
    let cores = signals.cores.len();
    loop {
        if signals.stop.load(Ordering::SeqCst) {
            return false;
        }
        let known = signals.cores_knowing_leaders();
        if known >= cores {
            return true;
        }
        status.set(format!("starting: waiting for every shard to know its leader ({known} of {cores} cores)"));
        std::thread::sleep(SUPERVISE_POLL_INTERVAL);
    }
}

/// Until a stop: every half `WATCHDOG_USEC`, `WATCHDOG=1` if every core's
/// heartbeat moved since the last ping. A core that stops polling stops the
/// pings, so systemd's watchdog restarts kvd.
fn watchdog(signals: &NodeSignals, notify: &Notifier) {
    let interval = notify.watchdog_interval();
    let mut pinged = signals.heartbeats();
    let mut next = interval.map(|i| Instant::now() + i);
    let mut stalled = false;
    while !signals.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        let (Some(interval), Some(due)) = (interval, next) else {
            std::thread::sleep(SUPERVISE_POLL_INTERVAL);
            continue;
        };
        if now < due {
            std::thread::sleep((due - now).min(SUPERVISE_POLL_INTERVAL));
            continue;
        }
        let beats = signals.heartbeats();
        let stuck: Vec<usize> = (0..beats.len()).filter(|&c| beats[c] == pinged[c]).collect();
        if stuck.is_empty() {
            notify.watchdog();
            pinged = beats;
            next = Some(now + interval);
            if stalled {
                tracing::info!("every core polls again; watchdog pings resumed");
                stalled = false;
            }
        } else {
            // Looked at again at the next poll, not a whole interval later.
            if !stalled {
                tracing::warn!("cores {stuck:?} have not polled for {interval:?}; holding back the watchdog ping");
                stalled = true;
            }
            std::thread::sleep(SUPERVISE_POLL_INTERVAL);
        }
    }
}

/// Reports the steps of the stop protocol (see `kv_net::node`) as the cores
/// get through them, until every core has drained or one failed (bounded).
fn report_stop(signals: &NodeSignals, status: &mut Status) {
    let cores = signals.cores.len();
    status.notify.stopping("stopping: handing leaderships over");
    let deadline = Instant::now() + STOP_REPORT_TIMEOUT;
    while Instant::now() < deadline && !signals.failed.load(Ordering::SeqCst) {
        let (handed, drained) = (signals.handed_over.load(Ordering::SeqCst), signals.drained.load(Ordering::SeqCst));
        if drained >= cores {
            break;
        }
        status.set(if handed < cores {
            format!("stopping: handing leaderships over ({handed} of {cores} cores done)")
        } else {
            format!("stopping: draining connections ({drained} of {cores} cores drained)")
        });
        std::thread::sleep(SUPERVISE_POLL_INTERVAL);
    }
    status.set("stopping: making the write-ahead log durable".into());
}

/// Room in a peer frame beside the largest client request (Raft and
/// forwarding headers).
const PEER_FRAME_SLACK_BYTES: usize = 1024 * 1024;

/// One peer listener per core: core c on the base port + c.
fn bind_peer_listeners(base: std::net::SocketAddr, cores: u32) -> Result<Vec<std::net::TcpListener>, String> {
    (0..cores)
        .map(|c| {
            let addr = kv_net::peer::core_addr(base, c);
            kv_net::listener::bind_reuseport(addr, 1)
                .map(|mut v| v.pop().expect("one listener"))
                .map_err(|e| format!("peer listener: {e}"))
        })
        .collect()
}

/// Bytes the process holds, by jemalloc's statistics (refreshed first:
/// jemalloc caches them per epoch).
fn allocated_bytes() -> Option<u64> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    tikv_jemalloc_ctl::stats::allocated::read().ok().map(|b| b as u64)
}

/// Dirty pages jemalloc keeps after frees before returning them to the
/// system, under a memory limit (its default keeps them 10 s).
const DIRTY_DECAY_MS: isize = 100;

/// Under a memory limit, memory freed by eviction and deletes must leave
/// the process, not just the allocator's books: otherwise the resident set
/// climbs far past the limit while `stats.allocated` stays under it (pages
/// freed by one burst are kept dirty for 10 s, and without a background
/// thread only purged when that arena allocates again). Measured with a
/// 24 MiB limit and 96 MiB written: resident 61 MiB with the defaults,
/// 49 MiB with a 1 s decay alone, 56 MiB with the background thread alone,
/// 32 MiB with both. With both cores busy elsewhere the 1 s decay let it
/// peak at 54 MiB, a 100 ms one (or none) at 42 MiB; purging at once (0 ms)
/// cost 10-15% of 4 KiB SETs, 100 ms nothing measurable (bench/RESULTS.md).
/// Called before the core threads start, so their arenas (created on first
/// use) take the new default.
fn return_freed_memory_promptly() {
    use tikv_jemalloc_ctl::raw;
    let settings: [(&[u8], isize); 4] = [
        (b"arenas.dirty_decay_ms\0", DIRTY_DECAY_MS),
        (b"arenas.muzzy_decay_ms\0", 0),
        (b"arena.0.dirty_decay_ms\0", DIRTY_DECAY_MS),
        (b"arena.0.muzzy_decay_ms\0", 0),
    ];
    for (name, value) in settings {
        // SAFETY: each name is a jemalloc option of type ssize_t.
        if let Err(e) = unsafe { raw::write(name, value) } {
            tracing::warn!("jemalloc {}: {e}", String::from_utf8_lossy(&name[..name.len() - 1]));
        }
    }
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!("jemalloc background thread: {e}");
    }
}

/// A panic is a broken invariant. One core dying while the others serve
/// would leave its shards unanswered and their waiting requests hanging:
/// log it and take the whole process down (release builds abort anyway).
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("fatal: {info}");
        default(info);
        std::process::abort();
    }));
}

/// Creates the data directory if needed, checks it is usable, and takes its
/// lock so two kvd processes never share it. The lock lives as long as the
/// returned file.
fn prepare_data_dir(dir: &Path) -> Result<File, String> {
    let unusable = |e: std::io::Error| format!("data dir {} is unusable: {e}", dir.display());
    kv_engine::fsutil::create_dir_durable(dir).map_err(unusable)?;
    let lock = File::options().create(true).truncate(false).write(true).open(dir.join("LOCK")).map_err(unusable)?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!("data dir {} is in use by another kvd process", dir.display()));
    }
    Ok(lock)
}

/// The first SIGTERM/SIGINT starts a clean stop (and tells systemd at once);
/// a second one exits at once.
fn watch_signals(signals: Arc<NodeSignals>, notify: Arc<Notifier>) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut incoming = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("kvd-signals".into())
        .spawn(move || {
            for sig in incoming.forever() {
                if signals.stop.swap(true, Ordering::SeqCst) {
                    eprintln!("kvd: second signal {sig}, exiting without a clean stop");
                    std::process::exit(130);
                }
                tracing::info!("signal {sig} received, stopping");
                notify.stopping("stopping: handing leaderships over");
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}
