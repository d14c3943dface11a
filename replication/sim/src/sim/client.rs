//! Simulated clients: each runs one operation at a time against the
//! cluster, routes it like `ClusterClient` (to the leader it last learned
//! of, following redirects), and records what it asked and learned.
//!
//! An operation ends with an answer, or with an unknown outcome: no answer
//! within the scenario's timeout, or an error that leaves it open (the
//! write was proposed, then its leader was lost). A refusal before anything
//! was proposed (not the leader, busy) is retried, so it never shows.
//!
//! After the clients stop, the world's own client runs the closing phases:
//! a write to every shard (liveness), a strict read of every key (its
//! answers join the history, so a lost write fails the linearizability
//! check), and the wait for replicas to converge.

use std::collections::BTreeMap;

use bytes::Bytes;
use kv_engine::{Command, Condition, Expiry, Outcome, Stored};
use kv_replication::machine::ReadStart;
use kv_replication::{Answer, Consistency, CoreError};

use super::history::{Op, OpKind, Result as OpResult};
use super::scenario::Scenario;
use super::world::{Event, World, LIVENESS_BOUND_US};

/// Pause before retrying a refused request.
const RETRY_BACKOFF_US: (u64, u64) = (5_000, 40_000);
/// Round trip of a client's request, each way.
const CLIENT_DELAY_US: (u64, u64) = (40, 200);
/// How often the closing phase looks at convergence, and for how long.
const CONVERGE_POLL_US: u64 = 100_000;
const CONVERGE_LIMIT_US: u64 = 30_000_000;
/// A TTL long past the end of any run.
const LONG_TTL_MS: u64 = 3_600_000;

#[derive(Debug, Clone)]
pub enum Body {
    Write(Command),
    Read { key: Bytes, consistency: Consistency },
}

#[derive(Debug, Clone)]
pub struct Request {
    pub client: usize,
    pub op: u64,
    pub attempt: u32,
    pub body: Body,
}

#[derive(Debug, Clone)]
pub enum Response {
    Write(std::result::Result<Outcome, CoreError>, u32),
    Read(std::result::Result<Option<Stored>, CoreError>, u32),
    /// Refused before anything happened; the leader, if known.
    Redirect(Option<u64>, u32),
}

pub enum ClientEvent {
    Next { client: usize },
    Send { op: u64 },
    Timeout { op: u64 },
    Converge,
}

struct InFlight {
    attempt: u32,
    body: Body,
    shard: u32,
    deadline_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Working,
    /// Clients finish what they started, then the closing phases run.
    Draining,
    Probing,
    FinalReads,
    Converging,
    Done,
}

pub struct Clients {
    count: usize,
    phase: Phase,
    stop_at_us: Option<u64>,
    in_flight: BTreeMap<u64, InFlight>,
    /// The leader each client last learned of, by shard.
    leaders: Vec<BTreeMap<u32, u64>>,
    /// The value and version each client last read, by key (for CAS).
    seen: Vec<BTreeMap<Bytes, (Bytes, u64)>>,
    pub lin_keys: Vec<Bytes>,
    pub ttl_keys: Vec<Bytes>,
    /// What the closing phases still have to do.
    closing: Vec<(Bytes, Body)>,
    converge_deadline_us: u64,
}

impl Clients {
    pub fn new(scenario: &Scenario) -> Clients {
        let count = scenario.clients;
        Clients {
            count,
            phase: Phase::Working,
            stop_at_us: None,
            in_flight: BTreeMap::new(),
            leaders: vec![BTreeMap::new(); count + 1],
            seen: vec![BTreeMap::new(); count + 1],
            lin_keys: (0..scenario.keys).map(|i| Bytes::from(format!("k{i}"))).collect(),
            ttl_keys: (0..scenario.ttl_keys).map(|i| Bytes::from(format!("t{i}"))).collect(),
            closing: Vec::new(),
            converge_deadline_us: 0,
        }
    }

    pub fn finished(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The client the closing phases run as.
    fn closer(&self) -> usize {
        self.count
    }
}

impl World {
    pub fn clients_start(&mut self) {
        for client in 0..self.clients.count {
            let delay = self.sched.rng.below(10_000);
            self.sched.after(delay, Event::Client(ClientEvent::Next { client }));
        }
    }

    /// Clients stop starting operations `settle_us` from now.
    pub fn clients_after_heal(&mut self, settle_us: u64) {
        self.clients.stop_at_us = Some(self.sched.now + settle_us);
    }

    pub fn on_client_event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Next { client } => self.next_op(client),
            ClientEvent::Send { op } => self.send_request(op),
            ClientEvent::Timeout { op } => {
                if let Some(f) = self.clients.in_flight.get(&op) {
                    // The node may be dead or cut off: look elsewhere next time.
                    let client = self.history.ops[op as usize].client;
                    self.clients.leaders[client].remove(&f.shard);
                    self.complete(op, OpResult::Unknown { why: "timed out".into() });
                }
            }
            ClientEvent::Converge => self.check_convergence(),
        }
    }

    fn next_op(&mut self, client: usize) {
        if self.clients.phase != Phase::Working {
            return;
        }
        if self.clients.stop_at_us.is_some_and(|t| self.sched.now >= t) {
            self.clients.phase = Phase::Draining;
            self.maybe_close();
            return;
        }
        let (key, kind) = self.choose_op(client);
        self.start_op(client, key, kind);
    }

    fn choose_op(&mut self, client: usize) -> (Bytes, OpKind) {
        let rng = &mut self.sched.rng;
        let n = self.history.ops.len();
        let mut value = format!("c{client}.{n}");
        if rng.chance(0.15) {
            // A long, compressible value: stored as a zstd frame.
            value.push('~');
            while value.len() < 600 {
                value.push_str("-pad");
            }
        }
        let value = Bytes::from(value);
        if rng.chance(0.1) {
            let key = rng.pick(&self.clients.ttl_keys).clone();
            let kind = match rng.below(3) {
                0 => OpKind::PutShortTtl { value, ttl_ms: rng.between(50, 3_000) },
                _ => OpKind::Get { consistency: Consistency::Lease },
            };
            return (key, kind);
        }
        let key = rng.pick(&self.clients.lin_keys).clone();
        let kind = match rng.weighted(&[20, 22, 8, 4, 8, 10]) {
            0 => OpKind::Put { value },
            1 => OpKind::Get { consistency: Consistency::Lease },
            2 => OpKind::Get { consistency: Consistency::Strict },
            3 => OpKind::Get { consistency: Consistency::Stale },
            4 => OpKind::Delete,
            _ => match self.clients.seen[client].get(&key) {
                Some((expected, version)) if rng.chance(0.8) => {
                    OpKind::Cas { expected: expected.clone(), version: *version, value }
                }
                _ if rng.chance(0.5) => OpKind::PutLongTtl { value },
                _ => OpKind::Get { consistency: Consistency::Strict },
            },
        };
        (key, kind)
    }

    fn start_op(&mut self, client: usize, key: Bytes, kind: OpKind) {
        let body = self.body_of(&key, &kind, client);
        let op = self.history.ops.len() as u64;
        self.history.ops.push(Op {
            client,
            id: op,
            key: key.clone(),
            kind,
            invoked_us: self.sched.now,
            completed_us: None,
            result: None,
            nodes: Vec::new(),
        });
        let shard = self.nodes[0].layout.shard_of_key(&key);
        let deadline_us = self.sched.now + self.scenario.op_timeout_us;
        self.clients.in_flight.insert(op, InFlight { attempt: 0, body, shard, deadline_us });
        self.sched.after(self.scenario.op_timeout_us, Event::Client(ClientEvent::Timeout { op }));
        self.send_request(op);
    }

    fn body_of(&mut self, key: &Bytes, kind: &OpKind, client: usize) -> Body {
        // Expiries are set by the proposer's clock at proposal time, as the
        // RESP front end does; the client's guess of it only sets the length.
        let wall = self.node_now(1).wall_ms;
        let _ = client;
        let key = key.clone();
        match kind {
            OpKind::Put { value } => {
                Body::Write(Command::Put { key, value: value.clone(), condition: Condition::Always })
            }
            OpKind::PutLongTtl { value } | OpKind::PutShortTtl { value, .. } => {
                let ttl = match kind {
                    OpKind::PutShortTtl { ttl_ms, .. } => *ttl_ms,
                    _ => LONG_TTL_MS,
                };
                let expiry = Expiry::At(wall + ttl);
                Body::Write(Command::Set {
                    key,
                    value: value.clone(),
                    condition: Condition::Always,
                    expiry,
                    get: false,
                })
            }
            OpKind::Delete => Body::Write(Command::Delete { key, condition: Condition::Always }),
            OpKind::Cas { version, value, .. } => {
                Body::Write(Command::Put { key, value: value.clone(), condition: Condition::IfVersion(*version) })
            }
            OpKind::Get { consistency } => Body::Read { key, consistency: *consistency },
        }
    }

    /// Sends the operation's next attempt to the leader its client knows of,
    /// or (sometimes, and when none is known) to any node.
    fn send_request(&mut self, op: u64) {
        let Some(f) = self.clients.in_flight.get(&op) else { return };
        let client = self.history.ops[op as usize].client;
        let nodes = self.nodes.len() as u64;
        let known = self.clients.leaders[client].get(&f.shard).copied();
        let node = match known {
            Some(n) if !self.sched.rng.chance(0.2) => n,
            _ => self.sched.rng.between(1, nodes),
        };
        let request = Request { client, op, attempt: f.attempt, body: f.body.clone() };
        self.history.ops[op as usize].nodes.push(node);
        let delay = self.sched.rng.between(CLIENT_DELAY_US.0, CLIENT_DELAY_US.1);
        self.sched.after(delay, Event::Request { node, request });
    }

    /// A node serves a client's request, as `route::execute` does on the
    /// node that owns the shard.
    pub fn on_request(&mut self, node: u64, request: Request) {
        let Request { client, op, attempt, body } = request;
        let now = self.node_now(node);
        let n = self.node(node);
        let key = match &body {
            Body::Write(c) => c.key().clone(),
            Body::Read { key, .. } => key.clone(),
        };
        let shard = n.layout.shard_of_key(&key);
        if !n.layout.hosts(shard) {
            let first = n.layout.replicas_of(shard)[0];
            return self.respond(client, op, Response::Redirect(Some(first), attempt));
        }
        let core = n.layout.core_of_shard(shard);
        let machine = &mut n.cores[core as usize].machine;
        let response = match body {
            Body::Write(command) => match machine.propose(shard, &command, (client, op), now) {
                Ok(()) => None,
                Err(CoreError::NotLeader { leader }) => Some(Response::Redirect(leader, attempt)),
                Err(_) => Some(Response::Redirect(None, attempt)),
            },
            Body::Read { key, consistency } => match machine.read(shard, key, consistency, (client, op), now) {
                Ok(ReadStart::Answered(value)) => {
                    if consistency == Consistency::Lease {
                        self.coverage.lease_reads += 1;
                    }
                    Some(Response::Read(Ok(value), attempt))
                }
                Ok(ReadStart::Queued) => {
                    self.coverage.read_index_reads += 1;
                    None
                }
                Err(CoreError::NotLeader { leader }) => Some(Response::Redirect(leader, attempt)),
                Err(_) => Some(Response::Redirect(None, attempt)),
            },
        };
        self.schedule_drive(node, core);
        if let Some(r) = response {
            self.respond(client, op, r);
        }
    }

    /// A machine answered a waiting request.
    pub fn answer(&mut self, _node: u64, (client, op): (usize, u64), answer: Answer) {
        if client == usize::MAX {
            return; // a reap of the expiry cycle
        }
        let attempt = self.clients.in_flight.get(&op).map_or(0, |f| f.attempt);
        let response = match answer {
            Answer::Write(r) => Response::Write(r, attempt),
            Answer::Read(r) => Response::Read(r, attempt),
        };
        self.respond(client, op, response);
    }

    fn respond(&mut self, client: usize, op: u64, response: Response) {
        let delay = self.sched.rng.between(CLIENT_DELAY_US.0, CLIENT_DELAY_US.1);
        self.sched.after(delay, Event::Response { client, op, response });
    }

    pub fn on_response(&mut self, client: usize, op: u64, response: Response) {
        let Some(f) = self.clients.in_flight.get(&op) else { return };
        let attempt = match &response {
            Response::Write(_, a) | Response::Read(_, a) | Response::Redirect(_, a) => *a,
        };
        if attempt != f.attempt {
            return;
        }
        let (shard, node) = (f.shard, *self.history.ops[op as usize].nodes.last().expect("sent"));
        match response {
            Response::Redirect(leader, _) => {
                match leader {
                    Some(l) => self.clients.leaders[client].insert(shard, l),
                    None => self.clients.leaders[client].remove(&shard),
                };
                self.retry(op);
            }
            Response::Read(Err(_), _) => self.retry(op),
            Response::Read(Ok(value), _) => {
                self.clients.leaders[client].insert(shard, node);
                let value = value.map(|s| (s.value, s.version));
                self.complete(op, OpResult::Read { value });
            }
            Response::Write(Ok(outcome), _) => {
                self.clients.leaders[client].insert(shard, node);
                let result = match outcome {
                    Outcome::Written { version } => OpResult::Written { version },
                    Outcome::Deleted { .. } => OpResult::Deleted { existed: true },
                    Outcome::NotFound => OpResult::Deleted { existed: false },
                    Outcome::ConditionFailed { .. } => OpResult::CasFailed,
                    other => OpResult::Unknown { why: format!("unexpected outcome {other:?}") },
                };
                self.complete(op, result);
            }
            // Proposed, then lost track of: the write may yet apply.
            Response::Write(Err(e), _) => self.complete(op, OpResult::Unknown { why: e.to_string() }),
        }
    }

    /// Tries again after a pause, if the deadline allows.
    fn retry(&mut self, op: u64) {
        let Some(f) = self.clients.in_flight.get_mut(&op) else { return };
        f.attempt += 1;
        let delay = self.sched.rng.between(RETRY_BACKOFF_US.0, RETRY_BACKOFF_US.1);
        if self.sched.now + delay < f.deadline_us {
            self.sched.after(delay, Event::Client(ClientEvent::Send { op }));
        }
    }

    fn complete(&mut self, op: u64, result: OpResult) {
        self.clients.in_flight.remove(&op);
        if matches!(result, OpResult::Unknown { .. }) {
            self.coverage.unknown_outcomes += 1;
        }
        let record = &mut self.history.ops[op as usize];
        if !matches!(result, OpResult::Unknown { .. }) {
            record.completed_us = Some(self.sched.now);
        }
        let client = record.client;
        if let OpResult::Read { value: Some((v, version)) } = &result {
            self.clients.seen[client].insert(record.key.clone(), (v.clone(), *version));
        }
        record.result = Some(result);
        if client == self.clients.closer() {
            self.closing_step(op);
        } else if self.clients.phase == Phase::Working {
            let (lo, hi) = self.scenario.op_gap_us;
            let gap = self.sched.rng.between(lo, hi);
            self.sched.after(gap, Event::Client(ClientEvent::Next { client }));
        } else {
            self.maybe_close();
        }
    }

    /// Once every client is idle, the closing phases start.
    fn maybe_close(&mut self) {
        if self.clients.phase != Phase::Draining || !self.clients.in_flight.is_empty() {
            return;
        }
        self.clients.phase = Phase::Probing;
        let layout = self.nodes[0].layout.clone();
        let mut probes: BTreeMap<u32, Bytes> = BTreeMap::new();
        for i in 0.. {
            let key = Bytes::from(format!("p{i}"));
            probes.entry(layout.shard_of_key(&key)).or_insert(key);
            if probes.len() == layout.shards as usize {
                break;
            }
        }
        let closer = self.clients.closer();
        self.clients.closing = probes
            .into_values()
            .map(|key| {
                let value = Bytes::from(format!("probe-{}", String::from_utf8_lossy(&key)));
                (key.clone(), Body::Write(Command::Put { key, value, condition: Condition::Always }))
            })
            .rev()
            .collect();
        let _ = closer;
        self.closing_next();
    }

    fn closing_next(&mut self) {
        let Some((key, body)) = self.clients.closing.last().cloned() else {
            return self.closing_phase_done();
        };
        let kind = match &body {
            Body::Write(Command::Put { value, .. }) => OpKind::Put { value: value.clone() },
            Body::Read { consistency, .. } => OpKind::Get { consistency: *consistency },
            Body::Write(_) => unreachable!("closing writes are puts"),
        };
        self.start_op(self.clients.closer(), key, kind);
    }

    /// The closing client's operation ended: on success go on, else retry
    /// it as a new operation while the liveness bound allows.
    fn closing_step(&mut self, op: u64) {
        let ok = !matches!(self.history.ops[op as usize].result, Some(OpResult::Unknown { .. }));
        let healed = self.healed_at.expect("closing phases come after the faults");
        if ok {
            self.clients.closing.pop();
        } else if self.sched.now > healed + LIVENESS_BOUND_US {
            let what = if self.clients.phase == Phase::Probing { "write" } else { "strict read" };
            let key = String::from_utf8_lossy(&self.history.ops[op as usize].key).into_owned();
            return self.fail(format!(
                "liveness: a {what} of {key} did not succeed within {} s after the faults ended",
                LIVENESS_BOUND_US / 1_000_000
            ));
        }
        self.closing_next();
    }

    fn closing_phase_done(&mut self) {
        match self.clients.phase {
            Phase::Probing => {
                self.clients.phase = Phase::FinalReads;
                let keys: Vec<Bytes> = self.clients.lin_keys.iter().chain(&self.clients.ttl_keys).cloned().collect();
                self.clients.closing = keys
                    .into_iter()
                    .rev()
                    .map(|key| (key.clone(), Body::Read { key, consistency: Consistency::Strict }))
                    .collect();
                self.closing_next();
            }
            Phase::FinalReads => {
                self.clients.phase = Phase::Converging;
                self.clients.converge_deadline_us = self.sched.now + CONVERGE_LIMIT_US;
                self.check_convergence();
            }
            _ => {}
        }
    }

    fn check_convergence(&mut self) {
        let converged = super::check::replicas_converged(&self.nodes)
            .and_then(|()| super::check::directories_recorded(&self.nodes));
        match converged {
            Ok(()) => self.clients.phase = Phase::Done,
            Err(why) if self.sched.now > self.clients.converge_deadline_us => {
                self.fail(format!("replicas did not converge within {} s: {why}", CONVERGE_LIMIT_US / 1_000_000))
            }
            Err(_) => self.sched.after(CONVERGE_POLL_US, Event::Client(ClientEvent::Converge)),
        }
    }
}
