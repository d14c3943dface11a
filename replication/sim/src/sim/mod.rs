//! One simulated run: a seed becomes a scenario, the world runs it with
//! the real replication state machine and engine, and the checks judge the
//! result. Everything is deterministic: the same seed and options give the
//! same history, byte for byte.
//!
//! - `scenario.rs`: what a seed draws (shape, clocks, faults); how to add a
//!   kind of fault.
//! - `world.rs`: the event loop, nodes' timers and IO, faults.
//! - `node.rs`: a node's cores over the simulated disk (the glue's twin).
//! - `transfer.rs`: delivering peer messages; leaders' snapshots loaded
//!   ahead of stepping, as kvd's transport does.
//! - `client.rs`: clients, routing, the closing phases.
//! - `disk.rs`, `net.rs`, `rng.rs`: the simulated disk, network, randomness.
//! - `history.rs`, `check.rs`: what happened, and what must hold.

mod check;
mod client;
pub mod coverage;
mod disk;
mod history;
mod net;
mod node;
mod rng;
pub mod scenario;
mod transfer;
mod world;

use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use coverage::Coverage;
pub use scenario::{Options, Scenario};

/// What one run found.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    /// Empty when every check passed.
    pub failures: Vec<String>,
    /// Client operations run.
    pub ops: usize,
    /// The history, one line per operation.
    pub history: String,
    /// A one-line summary of the scenario.
    pub scenario: String,
    pub coverage: Coverage,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs seed `seed`. A panic inside the run (an assertion of the code under
/// test, or of raft-rs) is a failure like any other.
pub fn run(seed: u64, options: &Options) -> Report {
    let scenario = Scenario::generate(seed, options);
    let summary = summary(&scenario);
    let mut world = world::World::new(scenario);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        world.run();
        let layout = world.nodes[0].layout.clone();
        if world.failures.is_empty() {
            let found = check::history(&world.history, &world.clients.lin_keys, |k| layout.shard_of_key(k));
            world.failures.extend(found);
        }
        let leader_changes: u64 =
            world.nodes.iter().map(|n| n.leader_changes_before_restarts + n.leader_changes()).sum();
        world.coverage.leader_changes = leader_changes;
        world.coverage.snapshots_loaded_ahead =
            world.nodes.iter().map(|n| n.loaded_ahead_before_restarts + n.loaded_ahead()).sum();
    }));
    if let Err(payload) = outcome {
        // (Release builds abort instead; see the kvsim binary's workers.)
        let what = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".to_string());
        world.failures.push(format!("panicked: {what}"));
    }
    let (failures, ops, history, coverage) =
        (world.failures, world.history.ops.len(), world.history.text(), world.coverage);
    Report { seed, failures, ops, history, scenario: summary, coverage }
}

/// What many runs found.
#[derive(Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    /// The reports of the seeds that failed, by seed.
    pub failed: Vec<Report>,
    pub ops: usize,
    pub coverage: Coverage,
}

/// Runs every seed of `seeds` on `threads` threads; `on_failure` sees each
/// failing report as it is found (from any thread).
pub fn run_many(
    seeds: Range<u64>,
    options: &Options,
    threads: usize,
    on_failure: &(dyn Fn(&Report) + Sync),
) -> Summary {
    let next = AtomicU64::new(seeds.start);
    let summary = Mutex::new(Summary { seeds: seeds.end - seeds.start, ..Summary::default() });
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    return;
                }
                let mut report = run(seed, options);
                if !report.passed() {
                    on_failure(&report);
                }
                report.history.clear();
                let mut sum = summary.lock().expect("summary lock");
                sum.ops += report.ops;
                sum.coverage.add(&report.coverage);
                if !report.passed() {
                    sum.failed.push(report);
                }
            });
        }
    });
    let mut summary = summary.into_inner().expect("summary lock");
    summary.failed.sort_by_key(|r| r.seed);
    summary
}

fn summary(s: &Scenario) -> String {
    let kinds: Vec<String> = s.faults.iter().map(|(at, f)| format!("{}ms:{f:?}", at / 1000)).collect();
    format!(
        "nodes={} cores={} shards/core={} replicas={} clients={} keys={} faults=[{}]",
        s.shape.nodes,
        s.shape.cores,
        s.shape.shards_per_core,
        s.shape.replicas,
        s.clients,
        s.keys,
        kinds.join(", ")
    )
}
