//! The simulator in CI: a thousand seeds pass and reach every kind of
//! fault, a seed replays byte for byte, and every seeded bug is caught.
//! A failure prints the `kvsim` command that replays it.

use kv_replication::Bugs;
use kv_sim::sim::{self, Options, Report};

/// Seeds every CI run checks (about half a minute on two cores).
const CI_SEEDS: u64 = 1000;
/// Seeds within which each seeded bug must be found.
const BUG_SEEDS_MAX: u64 = 400;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn describe(reports: &[Report], options: &str) -> String {
    reports
        .iter()
        .map(|r| {
            format!("seed {}: {}\n  replay: kvsim --seed {}{options} --print-history", r.seed, r.failures[0], r.seed)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_thousand_seeds_pass_and_exercise_every_kind_of_fault() {
    let summary = sim::run_many(0..CI_SEEDS, &Options::default(), threads(), &|_| {});
    assert!(summary.failed.is_empty(), "{} seeds failed:\n{}", summary.failed.len(), describe(&summary.failed, ""));
    assert!(summary.ops as u64 > 100 * CI_SEEDS, "clients ran {} operations", summary.ops);
    for (name, count) in summary.coverage.named() {
        assert!(count > 0, "no seed exercised {name}: {}", summary.coverage);
    }
}

#[test]
fn a_seed_replays_byte_for_byte() {
    for (seed, nodes) in [(7, None), (11, Some(3)), (12, Some(5)), (13, Some(1))] {
        let options = Options { nodes, ..Options::default() };
        let (a, b) = (sim::run(seed, &options), sim::run(seed, &options));
        assert!(a.ops > 0, "seed {seed} ran no operations");
        assert_eq!(a.scenario, b.scenario);
        assert_eq!(a.failures, b.failures);
        assert_eq!(a.coverage, b.coverage, "seed {seed}");
        assert!(a.history == b.history, "seed {seed}: two runs differ");
        // And on another thread, whose raft election generator starts fresh.
        let c = std::thread::spawn(move || sim::run(seed, &options)).join().unwrap();
        assert!(a.history == c.history, "seed {seed}: a run on another thread differs");
    }
}

#[test]
fn every_seeded_bug_is_found() {
    for name in Bugs::NAMES {
        let options = Options { bugs: Bugs::named(name).unwrap(), ..Options::default() };
        let found = (0..BUG_SEEDS_MAX).find(|&seed| !sim::run(seed, &options).passed());
        assert!(found.is_some(), "the simulator passed {BUG_SEEDS_MAX} seeds with the bug {name} switched on");
    }
}

/// The command line scripts rely on: the summary line, the exit status,
/// a replay command per failing seed, the list of bugs.
#[test]
fn the_kvsim_command_keeps_its_contract() {
    let kvsim = env!("CARGO_BIN_EXE_kvsim");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(kvsim).args(args).output().expect("kvsim runs");
        (out.status, String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (status, out) = run(&["--seeds", "4", "--threads", "2"]);
    assert!(status.success(), "{out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.starts_with("kvsim: seeds=4 failures=0 ops=") && last.contains(" seconds="), "{out}");

    let (status, out) = run(&["--list-bugs"]);
    assert!(status.success());
    assert_eq!(out.lines().collect::<Vec<_>>(), Bugs::NAMES.to_vec());

    // A seed the bug makes fail (found as every_seeded_bug_is_found does).
    let bug = "ack-overwritten-entry";
    let options = Options { bugs: Bugs::named(bug).unwrap(), ..Options::default() };
    let failing = (0..BUG_SEEDS_MAX).find(|&s| !sim::run(s, &options).passed()).expect("a failing seed");
    let start = failing.to_string();
    let (status, out) = run(&["--seeds", "1", "--seed-start", &start, "--bug", bug]);
    assert!(!status.success(), "{out}");
    let replay = format!("replay: kvsim --seed {failing} --bug {bug} --print-history");
    assert!(
        out.lines().any(|l| l.starts_with(&format!("kvsim: seed {failing} FAILED: ")) && l.ends_with(&replay)),
        "{out}"
    );
    assert!(out.lines().last().unwrap_or_default().starts_with("kvsim: seeds=1 failures=1 "), "{out}");

    let (status, out) = run(&["--seed", &start, "--bug", bug, "--print-history"]);
    assert!(!status.success());
    assert!(out.lines().any(|l| l.contains(" #0 ") && l.contains(" => ")), "the history is printed: {out}");
}
