//! A seeded concurrent load that records every operation for the
//! linearizability checker: writes carry unique values, reads are strict
//! (ReadIndex), and any write that ends in an error or a timeout is recorded
//! with an unknown outcome (it may or may not have happened).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kv_engine::Condition;
use kv_net::client::{Client, WriteResult};
use kv_replication::Consistency;
use kv_sim::linearizability::{Event, Op, Outcome};
use rand::{Rng, SeedableRng};

/// How long a client waits for one answer before calling it unknown.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(8);

pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handles: Vec<JoinHandle<Vec<Event>>>,
    pub origin: Instant,
}

impl Load {
    /// Starts `clients` threads over `keys` keys; client i talks to
    /// `endpoints[i % len]`, moving on to the next endpoint after an error.
    pub fn start(endpoints: Vec<String>, clients: usize, keys: usize, seed: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let origin = Instant::now();
        let handles = (0..clients)
            .map(|c| {
                let (endpoints, stop, acked) = (endpoints.clone(), stop.clone(), acked.clone());
                std::thread::spawn(move || run_client(c, endpoints, keys, seed, origin, stop, acked))
            })
            .collect();
        Load { stop, acked, handles, origin }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until `more` further writes are acknowledged.
    pub fn wait_for_acks(&self, more: u64, timeout: Duration) -> bool {
        let target = self.acked() + more;
        let deadline = Instant::now() + timeout;
        while self.acked() < target {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    pub fn finish(self) -> Vec<Event> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles.into_iter().flat_map(|h| h.join().expect("load client")).collect()
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("lin-{i}").into_bytes()
}

fn connect(endpoints: &[String], turn: &mut usize) -> Option<Client> {
    for _ in 0..endpoints.len() {
        let endpoint = endpoints[*turn % endpoints.len()].clone();
        *turn += 1;
        if let Ok(mut c) = Client::connect(&[endpoint], Duration::from_secs(2)) {
            c.set_timeout(Some(ANSWER_TIMEOUT)).ok()?;
            return Some(c);
        }
    }
    None
}

fn run_client(
    id: usize,
    endpoints: Vec<String>,
    keys: usize,
    seed: u64,
    origin: Instant,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Vec<Event> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9E37_79B9));
    let mut turn = id;
    let mut history = Vec::new();
    let mut conn: Option<Client> = None;
    let ns = || origin.elapsed().as_nanos() as u64;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = connect(&endpoints, &mut turn);
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        let c = conn.as_mut().expect("connected");
        let k = key(rng.gen_range(0..keys));
        let roll: f64 = rng.gen();
        seq += 1;
        let invoked_ns = ns();
        let (op, result) = if roll < 0.55 {
            let value = format!("c{id}-{seq}").into_bytes();
            let r = c.put_if(&k, &value, Condition::Always).map(|w| match w {
                WriteResult::Written { .. } => Outcome::PutOk,
                other => panic!("an unconditional put answered {other:?}"),
            });
            (Op::Put(value), r)
        } else if roll < 0.9 {
            (Op::Get, c.get_with(&k, Consistency::Strict).map(|v| Outcome::GetOk(v.map(|(v, _)| v))))
        } else {
            let r = c
                .delete(&k, Condition::Always)
                .map(|w| Outcome::DeleteOk { existed: matches!(w, WriteResult::Written { .. }) });
            (Op::Delete, r)
        };
        match result {
            Ok(outcome) => {
                if matches!(outcome, Outcome::PutOk | Outcome::DeleteOk { .. }) {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                history.push(Event { client: id, key: k, op, invoked_ns, completed_ns: Some(ns()), outcome });
            }
            Err(_) => {
                // Unknown: the write may have happened. The connection may
                // still deliver a late answer, so start a fresh one.
                history.push(Event {
                    client: id,
                    key: k,
                    op,
                    invoked_ns,
                    completed_ns: None,
                    outcome: Outcome::Unknown,
                });
                conn = None;
            }
        }
    }
    history
}

/// Strict reads of every key through `endpoint`, recorded as events (the
/// final state must reflect every acknowledged write).
pub fn read_all(client: &mut Client, keys: usize, origin: Instant) -> Vec<Event> {
    (0..keys)
        .map(|i| {
            let invoked_ns = origin.elapsed().as_nanos() as u64;
            let value = client.get_with(&key(i), Consistency::Strict).expect("final read").map(|(v, _)| v);
            let completed_ns = Some(origin.elapsed().as_nanos() as u64);
            Event {
                client: usize::MAX,
                key: key(i),
                op: Op::Get,
                invoked_ns,
                completed_ns,
                outcome: Outcome::GetOk(value),
            }
        })
        .collect()
}
