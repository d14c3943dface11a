//! Closed-loop load: each load thread is a glommio executor pinned to one
//! CPU, running its share of the connections; each connection sends
//! `pipeline` requests in one write, waits for all answers, and repeats.
//! Latency of a request is from its batch's write to its answer. Answers in
//! the warm-up are not recorded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::driver::{Answer, Conn, Protocol};
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
    pub duration: Duration,
    pub warmup: Duration,
    pub workload: Workload,
    pub seed: u64,
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

/// Writes every key once (so reads hit), `pipeline` at a time.
pub fn preload(config: &Config) -> Result<(), String> {
    let c = config.clone();
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let mut conn = Conn::connect(c.targets[0], c.protocol).await.map_err(|e| e.to_string())?;
            let mut gen = Generator::new(c.workload.clone(), c.seed, u64::MAX);
            let batch = c.pipeline.max(64) as u64;
            let mut next = 0;
            while next < c.workload.keys {
                let end = (next + batch).min(c.workload.keys);
                for i in next..end {
                    let key = format!("{}{i:012}", c.workload.key_prefix);
                    let value = gen.value().to_vec();
                    conn.queue(Op::Set, key.as_bytes(), &value);
                }
                conn.flush().await.map_err(|e| e.to_string())?;
                for _ in next..end {
                    if let Answer::Error(e) = conn.answer().await.map_err(|e| e.to_string())? {
                        return Err(format!("preload: {e}"));
                    }
                }
                next = end;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|e| e.to_string())?
}

pub fn run(config: &Config, progress: Arc<Progress>) -> Result<Outcome, String> {
    assert!(!config.cpus.is_empty() && config.connections > 0 && config.pipeline > 0);
    let started = Instant::now();
    let measure_from = started + config.warmup;
    let deadline = measure_from + config.duration;
    let threads = config.cpus.len().min(config.connections);
    let mut handles = Vec::new();
    for (t, cpu) in config.cpus.iter().take(threads).enumerate() {
        let conns: Vec<u64> = (0..config.connections as u64).filter(|c| *c as usize % threads == t).collect();
        let (c, p) = (config.clone(), progress.clone());
        let handle = LocalExecutorBuilder::new(Placement::Fixed(*cpu))
            .name(&format!("kvbench-{t}"))
            .spawn(move || async move {
                let tasks: Vec<_> = conns
                    .into_iter()
                    .map(|id| glommio::spawn_local(connection(c.clone(), id, p.clone(), measure_from, deadline)))
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
    let measured = Instant::now().min(deadline).saturating_duration_since(measure_from);
    Ok(Outcome { stats, measured })
}

async fn connection(
    c: Config,
    id: u64,
    progress: Arc<Progress>,
    measure_from: Instant,
    deadline: Instant,
) -> Result<Stats, String> {
    let target = c.targets[id as usize % c.targets.len()];
    let mut conn = Routed::connect(target, &c).await.map_err(|e| format!("connect to {target}: {e}"))?;
    let mut gen = Generator::new(c.workload.clone(), c.seed, id);
    let mut stats = Stats::default();
    let mut ops = Vec::with_capacity(c.pipeline);
    while Instant::now() < deadline {
        ops.clear();
        for _ in 0..c.pipeline {
            let op = gen.op();
            let key = gen.key();
            let value = if op == Op::Set { gen.value() } else { &[][..] };
            conn.queue(op, &key, value);
            ops.push(op);
        }
        let sent = Instant::now();
        conn.flush().await.map_err(|e| e.to_string())?;
        let measuring = sent >= measure_from;
        for &op in &ops {
            let answer = conn.answer().await.map_err(|e| e.to_string())?;
            if !measuring {
                continue;
            }
            match answer {
                Answer::Ok => stats.record(op, sent.elapsed().as_nanos() as u64),
                Answer::Miss => {
                    stats.record(op, sent.elapsed().as_nanos() as u64);
                    stats.op_mut(op).misses += 1;
                }
                Answer::Error(e) => {
                    stats.op_mut(op).errors += 1;
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                    stats.first_error.get_or_insert(e);
                }
            }
        }
        if measuring {
            progress.measuring.store(true, Ordering::Relaxed);
            progress.done.fetch_add(ops.len() as u64, Ordering::Relaxed);
        }
    }
    Ok(stats)
}

/// One load connection: a single server, or one connection per shard
/// leader with each request sent to its key's leader.
struct Routed {
    conns: Vec<Conn>,
    /// Endpoint index per shard (routed), unused for a single server.
    by_shard: Vec<usize>,
    shards: u32,
    /// The connection of each request queued and not yet answered.
    order: std::collections::VecDeque<usize>,
}

impl Routed {
    async fn connect(target: SocketAddr, c: &Config) -> std::io::Result<Routed> {
        let Some(t) = &c.topology else {
            let conn = Conn::connect(target, c.protocol).await?;
            return Ok(Routed { conns: vec![conn], by_shard: Vec::new(), shards: 0, order: Default::default() });
        };
        let endpoints: Vec<&String> = t.endpoints.values().collect();
        let mut conns = Vec::new();
        for e in &endpoints {
            let addr = e.parse().map_err(|_| std::io::Error::other(format!("bad endpoint {e}")))?;
            conns.push(Conn::connect(addr, c.protocol).await?);
        }
        let index_of = |node: Option<u64>| {
            node.and_then(|n| t.endpoints.get(&n)).and_then(|e| endpoints.iter().position(|x| *x == e)).unwrap_or(0)
        };
        let by_shard = t.leaders.iter().map(|l| index_of(*l)).collect();
        Ok(Routed { conns, by_shard, shards: t.shards, order: Default::default() })
    }

    fn queue(&mut self, op: Op, key: &[u8], value: &[u8]) {
        let i = if self.shards == 0 {
            0
        } else {
            self.by_shard[kv_replication::layout::shard_of_key(key, self.shards) as usize]
        };
        self.conns[i].queue(op, key, value);
        self.order.push_back(i);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        for c in &mut self.conns {
            c.flush().await?;
        }
        Ok(())
    }

    async fn answer(&mut self) -> std::io::Result<Answer> {
        let i = self.order.pop_front().expect("an answer is only awaited for a queued request");
        self.conns[i].answer().await
    }
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
