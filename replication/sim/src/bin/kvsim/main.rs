//! `kvsim`: runs kvd's replication state machine and engine in a
//! deterministic simulation, seed by seed, and checks every run (see
//! `kv_sim::sim`). A failing seed prints the one command that replays it.
//!
//! ```text
//! kvsim --seeds N [--seed-start S] [--nodes 1|3|5] [--bug NAME] [--threads T]
//! kvsim --seed S [--print-history] [--nodes 1|3|5] [--bug NAME]
//! kvsim --list-bugs
//! ```
//!
//! The last line of a `--seeds` run is `kvsim: seeds=N failures=F ops=O
//! seconds=T`; the exit status is 0 exactly when F = 0.

mod pool;

use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use kv_replication::Bugs;
use kv_sim::sim::{self, Options};

#[derive(Parser, Debug)]
#[command(name = "kvsim", about = "Deterministic simulation of kvd's replication core")]
struct Args {
    /// Runs this many seeds.
    #[arg(long, conflicts_with = "seed")]
    seeds: Option<u64>,
    /// The first seed of `--seeds`.
    #[arg(long, default_value_t = 0)]
    seed_start: u64,
    /// Runs this one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes in the cluster (by default each seed picks 1, 3 or 5).
    #[arg(long, value_parser = ["1", "3", "5"])]
    nodes: Option<String>,
    /// Switches on a seeded bug (see --list-bugs).
    #[arg(long)]
    bug: Option<String>,
    /// Prints the history of `--seed`.
    #[arg(long, requires = "seed")]
    print_history: bool,
    /// Prints the names of the seeded bugs.
    #[arg(long)]
    list_bugs: bool,
    /// Worker processes for `--seeds` (default: the machine's CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Internal: run `--seeds` from `--seed-start` here and report each
    /// on a line (see pool.rs).
    #[arg(long, hide = true)]
    worker: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list_bugs {
        for name in Bugs::NAMES {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    let mut options =
        Options { nodes: args.nodes.as_deref().map(|n| n.parse().expect("validated")), ..Options::default() };
    if let Some(name) = &args.bug {
        match Bugs::named(name) {
            Some(bugs) => options.bugs = bugs,
            None => {
                eprintln!("kvsim: no seeded bug named {name:?}; kvsim --list-bugs names them");
                return ExitCode::from(2);
            }
        }
    }
    if args.worker {
        let count = args.seeds.unwrap_or(0);
        pool::work(args.seed_start..args.seed_start + count, &options);
        return ExitCode::SUCCESS;
    }
    match (args.seed, args.seeds) {
        (Some(seed), _) => one(seed, &options, &args),
        (None, Some(n)) => many(n, &args),
        (None, None) => {
            eprintln!("kvsim: give --seeds N, --seed S or --list-bugs (see --help)");
            ExitCode::from(2)
        }
    }
}

/// The command that replays `seed` as this run ran it.
fn replay(seed: u64, args: &Args) -> String {
    let mut cmd = format!("kvsim --seed {seed}");
    if let Some(n) = &args.nodes {
        cmd += &format!(" --nodes {n}");
    }
    if let Some(b) = &args.bug {
        cmd += &format!(" --bug {b}");
    }
    cmd + " --print-history"
}

fn one(seed: u64, options: &Options, args: &Args) -> ExitCode {
    let report = sim::run(seed, options);
    println!("kvsim: seed {seed}: {}", report.scenario);
    println!("kvsim: exercised {}", report.coverage);
    if args.print_history {
        print!("{}", report.history);
    }
    for failure in &report.failures {
        println!("kvsim: seed {seed} FAILED: {failure}");
    }
    println!("kvsim: seeds=1 failures={} ops={} seconds=0", u8::from(!report.passed()), report.ops);
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn many(count: u64, args: &Args) -> ExitCode {
    let started = Instant::now();
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut worker_args = Vec::new();
    if let Some(n) = &args.nodes {
        worker_args.extend(["--nodes".to_string(), n.clone()]);
    }
    if let Some(b) = &args.bug {
        worker_args.extend(["--bug".to_string(), b.clone()]);
    }
    let totals = Mutex::new((0usize, 0usize, sim::Coverage::default()));
    let report = |o: pool::Outcome| {
        let mut t = totals.lock().expect("totals lock");
        t.1 += o.ops;
        t.2.add(&o.coverage);
        if let Some(why) = o.failure {
            t.0 += 1;
            println!("kvsim: seed {} FAILED: {why} — replay: {}", o.seed, replay(o.seed, args));
        }
    };
    pool::run(args.seed_start..args.seed_start + count, &worker_args, threads, &report);
    let seconds = started.elapsed().as_secs_f64();
    let (failures, ops, coverage) = totals.into_inner().expect("totals lock");
    println!("kvsim: exercised {coverage}");
    println!("kvsim: {:.1} seeds per second on {threads} worker processes", count as f64 / seconds.max(1e-9));
    println!("kvsim: seeds={count} failures={failures} ops={ops} seconds={seconds:.1}");
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
