//! Runs many seeds in worker processes. Release builds abort on a panic
//! (kvd's hot paths are faster without unwinding), so a run that panics
//! would take the whole process down: each worker is a `kvsim --worker`
//! process that runs a chunk of seeds and reports each on a line of its
//! own; when a worker dies mid-seed, that seed is recorded as a failure
//! with what the worker printed on stderr, and a new worker takes the rest
//! of the chunk.
//!
//! Worker lines (stdout): `start SEED`, then `done SEED OPS C1,C2,... FAILED?`
//! followed, for a failure, by its first line in `why SEED TEXT`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use kv_sim::sim::{self, Coverage, Options, Report};

/// Seeds one worker process runs.
const CHUNK_SEEDS: u64 = 100;

/// One seed's result as a worker reports it.
pub struct Outcome {
    pub seed: u64,
    pub ops: usize,
    pub coverage: Coverage,
    /// The first failure, if the seed failed.
    pub failure: Option<String>,
}

/// The worker side: runs `seeds` in this process and reports each.
pub fn work(seeds: std::ops::Range<u64>, options: &Options) {
    for seed in seeds {
        println!("start {seed}");
        let Report { failures, ops, coverage, .. } = sim::run(seed, options);
        let counts: Vec<String> = coverage.named().iter().map(|(_, v)| v.to_string()).collect();
        if let Some(first) = failures.first() {
            let line = first.lines().next().unwrap_or_default();
            println!("why {seed} {line}");
        }
        println!("done {seed} {ops} {} {}", counts.join(","), u8::from(!failures.is_empty()));
    }
}

/// The parent side: runs `seeds` on `threads` workers at a time, calling
/// `report` with every seed's outcome as it comes.
pub fn run(seeds: std::ops::Range<u64>, worker_args: &[String], threads: usize, report: &(dyn Fn(Outcome) + Sync)) {
    let next = AtomicU64::new(seeds.start);
    let launch = Mutex::new(());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let first = next.fetch_add(CHUNK_SEEDS, Ordering::Relaxed);
                if first >= seeds.end {
                    return;
                }
                let chunk = first..(first + CHUNK_SEEDS).min(seeds.end);
                run_chunk(chunk, worker_args, &launch, report);
            });
        }
    });
}

/// Runs a chunk in as many workers as it takes: each death costs one seed.
fn run_chunk(
    mut chunk: std::ops::Range<u64>,
    worker_args: &[String],
    launch: &Mutex<()>,
    report: &(dyn Fn(Outcome) + Sync),
) {
    while !chunk.is_empty() {
        let exe = std::env::current_exe().expect("kvsim knows its own path");
        let mut child = {
            // One spawn at a time: the pipes of one child must not leak into
            // another spawned concurrently.
            let _guard = launch.lock().expect("launch lock");
            Command::new(exe)
                .args(worker_args)
                .args(["--worker", "--seed-start", &chunk.start.to_string()])
                .args(["--seeds", &(chunk.end - chunk.start).to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("kvsim worker starts")
        };
        let mut stderr = child.stderr.take().expect("piped");
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let (mut running, mut why) = (None, None);
        for line in BufReader::new(child.stdout.take().expect("piped")).lines().map_while(Result::ok) {
            let mut parts = line.splitn(3, ' ');
            match (parts.next(), parts.next().and_then(|s| s.parse::<u64>().ok()), parts.next()) {
                (Some("start"), Some(seed), _) => running = Some(seed),
                (Some("why"), Some(_), Some(text)) => why = Some(text.to_string()),
                (Some("done"), Some(seed), Some(rest)) => {
                    report(parse_done(seed, rest, why.take()));
                    running = None;
                    chunk.start = seed + 1;
                }
                _ => {}
            }
        }
        let _ = child.wait();
        let stderr = errors.join().unwrap_or_default();
        if let Some(seed) = running {
            report(Outcome { seed, ops: 0, coverage: Coverage::default(), failure: Some(panic_of(&stderr)) });
            chunk.start = seed + 1;
        } else if !chunk.is_empty() {
            panic!("a kvsim worker stopped before seed {} without a word: {stderr}", chunk.start);
        }
    }
}

/// The panic a worker printed before it aborted: where, and the message.
fn panic_of(stderr: &str) -> String {
    let mut lines = stderr.lines().skip_while(|l| !l.contains("panicked"));
    match (lines.next(), lines.next()) {
        (Some(at), Some(what)) => format!("panicked: {what} ({})", at.trim_end_matches(':')),
        _ => format!("the worker died: {}", stderr.lines().last().unwrap_or("no message")),
    }
}

fn parse_done(seed: u64, rest: &str, why: Option<String>) -> Outcome {
    let fields: Vec<&str> = rest.split(' ').collect();
    let ops = fields.first().and_then(|f| f.parse().ok()).unwrap_or(0);
    let mut counts = [0u64; sim::coverage::COUNTERS];
    for (i, v) in fields.get(1).unwrap_or(&"").split(',').enumerate().take(sim::coverage::COUNTERS) {
        counts[i] = v.parse().unwrap_or(0);
    }
    let failed = fields.get(2) == Some(&"1");
    let failure = failed.then(|| why.unwrap_or_else(|| "failed".to_string()));
    Outcome { seed, ops, coverage: Coverage::from_counts(counts), failure }
}
