//! Open-loop load: each connection sends at the times its
//! [`Schedule`](crate::schedule::Schedule) fixes in advance, whether or not
//! earlier requests were answered, and a request's latency runs from its
//! *intended* send time to its answer. A server that stalls therefore shows
//! its stall in every request scheduled during it (no coordinated
//! omission), instead of in one slow request while the load generator
//! politely waits.
//!
//! Per server connection, a sender (this task) and a receiver task share
//! the socket (`futures_lite::io::split`; the executor is single-threaded,
//! so the halves never contend). The sender pushes each request's entry
//! (id, operation, intended time) into a bounded channel *before* writing
//! the request, so the receiver always finds the entry of any answer it
//! reads. The channel's bound, [`OUTSTANDING_MAX`], bounds memory: when it
//! is full the sender waits, its schedule falls behind, and the overdue
//! requests go out together later with their original intended times.
//!
//! Counts: every request scheduled in the measured window is answered
//! (latency recorded), failed (an error), or — if the server has not
//! answered [`DRAIN_TIMEOUT`] after the end — counted as unanswered. The
//! window closes at a deadline, or (`--requests N`) when the run's count of
//! measured requests is spent: each connection takes one from the shared
//! [`Quota`] per request due, so the N go out at the full offered rate and
//! the run lasts about N / rate seconds.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::AsyncWriteExt;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use glommio::task::JoinHandle;

use crate::driver::{self, settle, Decoder, Encoder, Protocol};
use crate::run::{self, Config, Plan, Progress, Quota, Rate};
use crate::schedule::Schedule;
use crate::stats::Stats;
use crate::workload::{Generator, Op};

/// Requests in flight per server connection. Deep enough for any rate a
/// server here sustains (16 Ki × 1 ms); a server further behind makes the
/// sender wait, which the intended times still charge to the server.
pub const OUTSTANDING_MAX: usize = 16 * 1024;
/// Overdue requests written together when catching up.
pub const SEND_BATCH_MAX: usize = 256;
/// How long the answers to requests already sent are awaited after the end.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

// A full window always holds written requests, whose answers free it.
const _: () = assert!(SEND_BATCH_MAX < OUTSTANDING_MAX);

/// A request sent (or about to be) and not yet answered.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    op: Op,
    intended: Instant,
}

/// One server connection's sending side, and its receiver.
struct Link {
    writer: WriteHalf<TcpStream>,
    tx: LocalSender<Entry>,
    encoder: Encoder,
    stats: Rc<RefCell<Stats>>,
    receiver: JoinHandle<Result<(), String>>,
}

pub(crate) async fn connection(
    c: Config,
    id: u64,
    rate: Rate,
    progress: Arc<Progress>,
    measure_from: Instant,
    quota: Quota,
) -> Result<Stats, String> {
    let target = c.targets[id as usize % c.targets.len()];
    let plan = Plan::new(target, &c).map_err(|e| format!("{target}: {e}"))?;
    let mut links = Vec::new();
    for addr in &plan.addrs {
        let stream = driver::connect(*addr, c.protocol).await.map_err(|e| format!("connect to {addr}: {e}"))?;
        let (reader, writer) = futures_lite::io::split(stream);
        let (tx, rx) = local_channel::new_bounded(OUTSTANDING_MAX);
        let stats = Rc::new(RefCell::new(Stats::default()));
        let receive = receive(reader, rx, c.protocol, measure_from, stats.clone(), progress.clone());
        let receiver = glommio::spawn_local(receive).detach();
        links.push(Link { writer, tx, encoder: Encoder::new(c.protocol), stats, receiver });
    }
    let per_connection = rate.ops_per_sec / c.connections as f64;
    let phase = id as f64 / c.connections as f64;
    let seed = c.seed ^ id.wrapping_mul(0xA076_1D64_78BD_642F);
    let mut schedule = Schedule::new(per_connection, rate.arrival, phase, seed);
    let mut gen = Generator::new(c.workload.clone(), c.seed, id);
    let sent = send(&mut links, &plan, &mut schedule, &mut gen, measure_from, &quota).await;
    finish(links, sent).await
}

/// Sends on schedule until the quota is spent; returns how many requests
/// were scheduled in the measured window.
async fn send(
    links: &mut [Link],
    plan: &Plan,
    schedule: &mut Schedule,
    gen: &mut Generator,
    measure_from: Instant,
    quota: &Quota,
) -> Result<u64, String> {
    let started = Instant::now();
    let mut due = Vec::with_capacity(SEND_BATCH_MAX);
    let mut scheduled = 0;
    loop {
        let now = Instant::now();
        if quota.deadline().is_some_and(|deadline| now >= deadline) {
            return Ok(scheduled);
        }
        due.clear();
        if schedule.due(now.duration_since(started).as_nanos() as u64, SEND_BATCH_MAX, &mut due) == 0 {
            let next = started + Duration::from_nanos(schedule.next_ns());
            let wake = quota.deadline().map_or(next, |deadline| next.min(deadline));
            glommio::timer::sleep(wake.saturating_duration_since(now)).await;
            continue;
        }
        let mut spent = false;
        for &at in &due {
            let intended = started + Duration::from_nanos(at);
            let measured = intended >= measure_from;
            // Later requests are due later still: none of them is sent.
            if measured && quota.take(intended, 1) == 0 {
                spent = true;
                break;
            }
            let op = gen.op();
            let key = gen.key();
            let ttl_s = gen.ttl_s(op);
            let value = if op == Op::Set { gen.value() } else { &[][..] };
            let link = &mut links[plan.server_of(&key)];
            let id = link.encoder.queue(op, &key, value, ttl_s);
            scheduled += u64::from(measured);
            // The entry goes in before the request goes out: see the module doc.
            link.tx.send(Entry { id, op, intended }).await.map_err(|_| "a receiver stopped".to_string())?;
        }
        for link in links.iter_mut() {
            if !link.encoder.pending().is_empty() {
                link.writer.write_all(link.encoder.pending()).await.map_err(|e| e.to_string())?;
                link.encoder.clear();
            }
        }
        if spent {
            return Ok(scheduled);
        }
    }
}

/// Closes the schedule, waits (bounded) for the answers in flight, and adds
/// up the counts.
async fn finish(links: Vec<Link>, sent: Result<u64, String>) -> Result<Stats, String> {
    let mut receivers = Vec::new();
    let mut shards = Vec::new();
    for link in links {
        // Dropping the sender tells the receiver that no entry follows.
        drop(link.tx);
        receivers.push(link.receiver);
        shards.push(link.stats);
    }
    let drained = futures_lite::future::or(
        async {
            for r in receivers.iter_mut() {
                r.await.unwrap_or_else(|| Err("a receiver was cancelled".into()))?;
            }
            Ok(true)
        },
        async {
            glommio::timer::sleep(DRAIN_TIMEOUT).await;
            Ok::<bool, String>(false)
        },
    )
    .await;
    for r in &receivers {
        // Those still waiting for answers that will not come.
        r.cancel();
    }
    let scheduled = sent?;
    drained?;
    let mut stats = Stats::default();
    for s in shards {
        stats.merge(&s.borrow());
    }
    stats.scheduled = scheduled;
    stats.unanswered = scheduled.saturating_sub(stats.ops() + stats.errors());
    if stats.unanswered > 0 {
        let e = format!("{} requests unanswered {DRAIN_TIMEOUT:?} after the end", stats.unanswered);
        stats.first_error.get_or_insert(e);
    }
    Ok(stats)
}

/// Reads answers and matches them with their entries until the sender has
/// closed the channel and every entry is answered.
async fn receive(
    mut reader: ReadHalf<TcpStream>,
    rx: LocalReceiver<Entry>,
    protocol: Protocol,
    measure_from: Instant,
    stats: Rc<RefCell<Stats>>,
    progress: Arc<Progress>,
) -> Result<(), String> {
    let mut decoder = Decoder::new(protocol);
    let mut waiting: VecDeque<Entry> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(e) => waiting.push_back(e),
                None => return Ok(()),
            }
        }
        let reply = decoder.next(&mut reader).await.map_err(|e| e.to_string())?;
        let done = Instant::now();
        let entry = match reply.id {
            None => waiting.pop_front().expect("an entry is waiting"),
            Some(id) => take_by_id(&mut waiting, &rx, id).await?,
        };
        if entry.intended >= measure_from {
            let latency_ns = done.duration_since(entry.intended).as_nanos() as u64;
            let answer = settle(protocol, entry.op, reply.answer);
            run::record(&mut stats.borrow_mut(), entry.op, answer, latency_ns, &progress);
        }
    }
}

/// The entry with request id `id` (native answers come in any order).
async fn take_by_id(waiting: &mut VecDeque<Entry>, rx: &LocalReceiver<Entry>, id: u64) -> Result<Entry, String> {
    if let Some(i) = waiting.iter().position(|e| e.id == id) {
        return Ok(waiting.remove(i).expect("position is in range"));
    }
    // Its entry went into the channel before the request was written.
    for _ in 0..OUTSTANDING_MAX {
        match rx.recv().await {
            Some(e) if e.id == id => return Ok(e),
            Some(e) => waiting.push_back(e),
            None => break,
        }
    }
    Err(format!("an answer to request {id}, which was not sent"))
}
