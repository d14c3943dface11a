//! Load threads and the closed loop: each load thread is a glommio executor
//! pinned to one CPU, running its share of the connections. Closed loop:
//! each connection sends `pipeline` requests in one write, waits for all
//! answers, and repeats; latency of a request is from its batch's write to
//! its answer. Open loop (a `rate`): see `crate::open`. Answers in the
//! warm-up are not recorded.
//!
//! A run's measured part ends after a duration or after a number of
//! requests ([`End`]). Invariant: with [`End::Requests`], every measured
//! request is taken from one count shared by all connections ([`Quota`])
//! before it is sent, so exactly that many go out, and each is counted
//! once: answered, failed, or (open loop) unanswered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::driver::{Answer, Conn, Protocol};
use crate::schedule::Arrival;
use crate::stats::Stats;
use crate::workload::{Generator, Op, Workload};

#[derive(Debug, Clone)]
pub struct Config {
    /// Servers; connections are spread over them round-robin.
    pub targets: Vec<SocketAddr>,
    /// Send each request to its shard's leader (kvd clusters): the topology
    /// read from the first target at start.
    pub topology: Option<kv_net::cluster_client::Topology>,
    pub protocol: Protocol,
    pub connections: usize,
    pub pipeline: usize,
    /// CPUs for the load threads, one thread each.
    pub cpus: Vec<usize>,
    /// When the measured part ends (the warm-up is always timed).
    pub end: End,
    pub warmup: Duration,
    pub workload: Workload,
    pub seed: u64,
    /// Open loop at this offered load; closed loop if `None`.
    pub rate: Option<Rate>,
}

/// When a run's measured part ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// After this long.
    After(Duration),
    /// After this many measured requests (at least one), each answered or
    /// failed (open loop: or unanswered at the end of the drain).
    Requests(u64),
}

/// How many more measured requests the connections of a run may send.
#[derive(Debug, Clone)]
pub(crate) enum Quota {
    /// Any number until this instant.
    Until(Instant),
    /// The run's requests left, shared by every connection.
    Left(Arc<AtomicU64>),
}

impl Quota {
    fn new(end: End, measure_from: Instant) -> Quota {
        match end {
            End::After(d) => Quota::Until(measure_from + d),
            End::Requests(n) => {
                assert!(n > 0, "a run of no requests");
                Quota::Left(Arc::new(AtomicU64::new(n)))
            }
        }
    }

    /// Takes up to `want` measured requests to send at `at`: all of them
    /// before the deadline and none after, or as many as are left. 0 means
    /// that this connection is done.
    pub fn take(&self, at: Instant, want: u64) -> u64 {
        match self {
            Quota::Until(deadline) => u64::from(at < *deadline) * want,
            // Relaxed: the count is the only data it guards.
            Quota::Left(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n > 0).then(|| n.saturating_sub(want)))
                .map_or(0, |before| before.min(want)),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Quota::Until(deadline) => Some(*deadline),
            Quota::Left(_) => None,
        }
    }
}

/// An open-loop offered load, spread evenly over the connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub ops_per_sec: f64,
    pub arrival: Arrival,
}

/// Shared with the progress printer.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub errors: AtomicU64,
    pub measuring: AtomicBool,
}

pub struct Outcome {
    pub stats: Stats,
    pub measured: Duration,
}

/// Connections that preload keys at once: servers that serialise a
/// connection's requests (etcd's gateway) load many times faster in
/// parallel; more would only add set-up.
pub const PRELOAD_CONNECTIONS_MAX: usize = 16;
/// Requests per write when preloading.
pub const PRELOAD_BATCH_MIN: usize = 64;

/// Writes every key once (so reads hit), over up to
/// [`PRELOAD_CONNECTIONS_MAX`] connections, each loading every n-th key.
pub fn preload(config: &Config) -> Result<(), String> {
    let c = config.clone();
    let loaders = c.connections.clamp(1, PRELOAD_CONNECTIONS_MAX) as u64;
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let tasks: Vec<_> =
                (0..loaders).map(|j| glommio::spawn_local(preload_share(c.clone(), j, loaders))).collect();
            for t in tasks {
                t.await?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|e| e.to_string())?
}

/// Keys `j`, `j + n`, `j + 2n`, … on a connection of its own.
async fn preload_share(c: Config, j: u64, n: u64) -> Result<(), String> {
    let mut conn = Conn::connect(c.targets[0], c.protocol).await.map_err(|e| e.to_string())?;
    let mut gen = Generator::new(c.workload.clone(), c.seed, u64::MAX - j);
    let batch = c.pipeline.max(PRELOAD_BATCH_MIN);
    let mut keys = (j..c.workload.keys).step_by(n as usize).peekable();
    while keys.peek().is_some() {
        let mut queued = 0;
        for i in keys.by_ref().take(batch) {
            let key = format!("{}{i:012}", c.workload.key_prefix);
            let value = gen.value().to_vec();
            // Without a TTL whatever `--ttl-share` says: preloaded keys are
            // there so that reads hit, however long the run.
            conn.queue(Op::Set, key.as_bytes(), &value, None);
            queued += 1;
        }
        conn.flush().await.map_err(|e| e.to_string())?;
        for _ in 0..queued {
            if let (_, Answer::Error(e)) = conn.answer().await.map_err(|e| e.to_string())? {
                return Err(format!("preload: {e}"));
            }
        }
    }
    Ok(())
}

pub fn run(config: &Config, progress: Arc<Progress>) -> Result<Outcome, String> {
    assert!(!config.cpus.is_empty() && config.connections > 0 && config.pipeline > 0);
    let started = Instant::now();
    let measure_from = started + config.warmup;
    let quota = Quota::new(config.end, measure_from);
    let threads = config.cpus.len().min(config.connections);
    let mut handles = Vec::new();
    for (t, cpu) in config.cpus.iter().take(threads).enumerate() {
        let conns: Vec<u64> = (0..config.connections as u64).filter(|c| *c as usize % threads == t).collect();
        let (c, p, q) = (config.clone(), progress.clone(), quota.clone());
        let handle = LocalExecutorBuilder::new(Placement::Fixed(*cpu))
            .name(&format!("kvbench-{t}"))
            .spawn(move || async move {
                let tasks: Vec<_> = conns
                    .into_iter()
                    .map(|id| {
                        let (c, p, q) = (c.clone(), p.clone(), q.clone());
                        glommio::spawn_local(async move {
                            match c.rate {
                                None => connection(c, id, p, measure_from, q).await,
                                Some(rate) => crate::open::connection(c, id, rate, p, measure_from, q).await,
                            }
                        })
                    })
                    .collect();
                let mut stats = Stats::default();
                for task in tasks {
                    stats.merge(&task.await?);
                }
                Ok::<Stats, String>(stats)
            })
            .map_err(|e| format!("cannot start a load thread on CPU {cpu}: {e}"))?;
        handles.push(handle);
    }
    let mut stats = Stats::default();
    for h in handles {
        stats.merge(&h.join().map_err(|e| e.to_string())??);
    }
    let ended = quota.deadline().map_or(Instant::now(), |deadline| Instant::now().min(deadline));
    if let End::Requests(n) = config.end {
        let counted = stats.ops() + stats.errors() + stats.unanswered;
        assert_eq!(counted, n, "every measured request is counted once");
    }
    Ok(Outcome { stats, measured: ended.saturating_duration_since(measure_from) })
}

async fn connection(
    c: Config,
    id: u64,
    progress: Arc<Progress>,
    measure_from: Instant,
    quota: Quota,
) -> Result<Stats, String> {
    let target = c.targets[id as usize % c.targets.len()];
    let mut conn = Routed::connect(target, &c).await.map_err(|e| format!("connect to {target}: {e}"))?;
    let mut gen = Generator::new(c.workload.clone(), c.seed, id);
    let mut stats = Stats::default();
    loop {
        // A batch that starts in the warm-up is not measured, whenever its
        // answers come.
        let now = Instant::now();
        let measuring = now >= measure_from;
        let batch = if measuring { quota.take(now, c.pipeline as u64) as usize } else { c.pipeline };
        if batch == 0 {
            return Ok(stats);
        }
        for _ in 0..batch {
            let op = gen.op();
            let key = gen.key();
            let ttl_s = gen.ttl_s(op);
            let value = if op == Op::Set { gen.value() } else { &[][..] };
            conn.queue(op, &key, value, ttl_s);
        }
        let sent = Instant::now();
        conn.flush().await.map_err(|e| e.to_string())?;
        for _ in 0..batch {
            let (op, answer) = conn.answer().await.map_err(|e| e.to_string())?;
            if measuring {
                record(&mut stats, op, answer, sent.elapsed().as_nanos() as u64, &progress);
            }
        }
    }
}

/// Counts one measured answer: its latency (misses too), or its error.
pub(crate) fn record(stats: &mut Stats, op: Op, answer: Answer, latency_ns: u64, progress: &Progress) {
    match answer {
        Answer::Ok => stats.record(op, latency_ns),
        Answer::Miss => {
            stats.record(op, latency_ns);
            stats.op_mut(op).misses += 1;
        }
        Answer::Error(e) => {
            stats.op_mut(op).errors += 1;
            progress.errors.fetch_add(1, Ordering::Relaxed);
            stats.first_error.get_or_insert(e);
        }
    }
    progress.measuring.store(true, Ordering::Relaxed);
    progress.done.fetch_add(1, Ordering::Relaxed);
}

/// Where one load connection sends: one server, or (routed) one per shard
/// leader with each request sent to its key's leader.
pub(crate) struct Plan {
    pub addrs: Vec<SocketAddr>,
    /// Index into `addrs` per shard (routed), empty for a single server.
    by_shard: Vec<usize>,
    shards: u32,
}

impl Plan {
    pub fn new(target: SocketAddr, c: &Config) -> std::io::Result<Plan> {
        let Some(t) = &c.topology else {
            return Ok(Plan { addrs: vec![target], by_shard: Vec::new(), shards: 0 });
        };
        let endpoints: Vec<&String> = t.endpoints.values().collect();
        let addrs = endpoints
            .iter()
            .map(|e| e.parse().map_err(|_| std::io::Error::other(format!("bad endpoint {e}"))))
            .collect::<std::io::Result<Vec<SocketAddr>>>()?;
        let index_of = |node: Option<u64>| {
            node.and_then(|n| t.endpoints.get(&n)).and_then(|e| endpoints.iter().position(|x| *x == e)).unwrap_or(0)
        };
        let by_shard = t.leaders.iter().map(|l| index_of(*l)).collect();
        Ok(Plan { addrs, by_shard, shards: t.shards })
    }

    /// The index of the server a key's requests go to.
    pub fn server_of(&self, key: &[u8]) -> usize {
        if self.shards == 0 {
            0
        } else {
            self.by_shard[kv_replication::layout::shard_of_key(key, self.shards) as usize]
        }
    }
}

/// One closed-loop load connection over a [`Plan`]'s servers.
struct Routed {
    plan: Plan,
    conns: Vec<Conn>,
    /// The connection of each request queued and not yet answered.
    order: std::collections::VecDeque<usize>,
}

impl Routed {
    async fn connect(target: SocketAddr, c: &Config) -> std::io::Result<Routed> {
        let plan = Plan::new(target, c)?;
        let mut conns = Vec::new();
        for addr in &plan.addrs {
            conns.push(Conn::connect(*addr, c.protocol).await?);
        }
        Ok(Routed { plan, conns, order: Default::default() })
    }

    fn queue(&mut self, op: Op, key: &[u8], value: &[u8], ttl_s: Option<u64>) {
        let i = self.plan.server_of(key);
        self.conns[i].queue(op, key, value, ttl_s);
        self.order.push_back(i);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        for c in &mut self.conns {
            c.flush().await?;
        }
        Ok(())
    }

    async fn answer(&mut self) -> std::io::Result<(Op, Answer)> {
        let i = self.order.pop_front().expect("an answer is only awaited for a queued request");
        self.conns[i].answer().await
    }
}

/// CPU seconds all CPUs of the machine have spent busy (everything but
/// idle and iowait), from /proc/stat.
pub fn machine_busy_cpu_seconds() -> Result<f64, String> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let line = stat.lines().next().filter(|l| l.starts_with("cpu ")).ok_or("malformed /proc/stat")?;
    let ticks: Vec<f64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0.0)).collect();
    if ticks.len() < 8 {
        return Err("malformed /proc/stat".into());
    }
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7];
    // SAFETY: sysconf has no preconditions.
    Ok(busy / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn process_cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may contain spaces) in parens.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).ok_or("malformed /proc stat");
    // utime and stime are fields 14 and 15 of the line; `rest` starts at
    // field 3, so they are at 11 and 12 here.
    // SAFETY: sysconf has no preconditions.
    let clock_ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / clock_ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_of_requests_hands_out_exactly_its_count() {
        let now = Instant::now();
        let q = Quota::new(End::Requests(10), now);
        assert_eq!(q.deadline(), None);
        let taken: Vec<u64> = (0..5).map(|_| q.take(now, 4)).collect();
        assert_eq!(taken, [4, 4, 2, 0, 0]);
        // Shared by clones, as by the connections of a run.
        let q = Quota::new(End::Requests(5), now);
        let other = q.clone();
        assert_eq!((q.take(now, 3), other.take(now, 3), q.take(now, 3)), (3, 2, 0));
        let timed = Quota::new(End::After(Duration::from_secs(1)), now);
        assert_eq!(timed.deadline(), Some(now + Duration::from_secs(1)));
        assert_eq!((timed.take(now, 8), timed.take(now + Duration::from_secs(1), 8)), (8, 0));
    }
}
