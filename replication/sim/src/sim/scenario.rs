//! A run's scenario, drawn entirely from its seed: the cluster's shape, the
//! clocks, the disk, the clients, and a timeline of faults.
//!
//! Faults come as *episodes*: a kind, a start and an end, expanded into
//! timed [`Fault`] events (crash then restart, cut then heal, ...). Adding a
//! kind of fault takes a variant of [`Fault`], its handling in
//! `world.rs`, and one line in [`EPISODES`] with a weight and a function
//! that turns a time window into events. Episodes may overlap; an event
//! that does not apply (a pause of a node that is down) is ignored. When
//! the fault phase ends, every fault is undone (see `World::end_faults`).

use kv_replication::Bugs;

use super::net::NetConditions;
use super::rng::Rng;

/// What the command line chooses; everything else comes from the seed.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Nodes in the cluster (1, 3 or 5); by default drawn from the seed.
    pub nodes: Option<usize>,
    /// Guarantees broken on purpose.
    pub bugs: Bugs,
}

/// One timed fault.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Power loss: the node stops, and its disk keeps only what it must.
    Crash {
        node: u64,
    },
    /// The node starts again and recovers from its disk.
    Restart {
        node: u64,
    },
    /// The node stops and its disk is replaced by an empty one; it starts
    /// again (`Restart`) as `kvd --join` would, to be readmitted.
    Wipe {
        node: u64,
    },
    /// The node stops running (SIGSTOP); its clocks go on.
    Pause {
        node: u64,
    },
    Resume {
        node: u64,
    },
    /// These directed links deliver nothing.
    Cut {
        links: Vec<(u64, u64)>,
    },
    /// The node that leads the most shards (at that moment) is cut off
    /// from the others, both ways or only its outgoing links.
    IsolateLeader {
        one_way: bool,
    },
    /// Every link delivers again.
    Heal,
    /// Messages fare this way from now on.
    Network(NetConditions),
    /// The node's fdatasyncs fail now and then, and some are slow.
    DiskFaults {
        node: u64,
        on: bool,
    },
    /// The node is over its memory limit: its leaders evict sampled keys
    /// through the log (`policy`), its groups keep no applied entries in
    /// memory, and, with `refuse`, writes that need memory are refused.
    MemoryPressure {
        node: u64,
        policy: kv_engine::evict::Policy,
        refuse: bool,
        on: bool,
    },
}

/// A kind of fault episode: its name, weight, and how it fills a window.
type Episode = (&'static str, u64, fn(&mut Rng, &Shape, u64, u64) -> Vec<(u64, Fault)>);

/// Every kind of fault the simulator injects.
pub const EPISODES: &[Episode] = &[
    ("crash", 4, crash_one),
    ("crash-many", 2, crash_many),
    ("pause", 2, pause_one),
    ("partition", 3, partition),
    ("isolate-leader", 4, isolate_leader),
    ("lossy-network", 2, lossy_network),
    ("disk-faults", 1, disk_faults),
    ("memory-pressure", 2, memory_pressure),
    ("wipe", 2, wipe_one),
];

/// The cluster's shape.
#[derive(Debug, Clone)]
pub struct Shape {
    pub nodes: usize,
    pub cores: u32,
    pub shards_per_core: u32,
    pub replicas: u32,
}

/// A node's clocks: its rate against true time (both clocks) and how far its
/// wall clock is off.
#[derive(Debug, Clone, Copy)]
pub struct ClockSpec {
    pub rate: f64,
    pub wall_offset_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub options: Options,
    pub shape: Shape,
    pub clocks: Vec<ClockSpec>,
    pub clients: usize,
    /// Keys checked for linearizability, and keys written with short TTLs.
    pub keys: usize,
    pub ttl_keys: usize,
    /// Pause of a client between two operations.
    pub op_gap_us: (u64, u64),
    /// How long a client waits for an answer before the outcome is unknown.
    pub op_timeout_us: u64,
    /// A write + fdatasync of the simulated disk.
    pub fsync_us: (u64, u64),
    /// WAL bytes between periodic snapshots.
    pub snapshot_wal_bytes: u64,
    /// When the fault phase ends (every fault is undone then).
    pub faults_end_us: u64,
    pub faults: Vec<(u64, Fault)>,
}

/// Clock rates stay within this of true time: two nodes then differ by
/// less than the lease's margin of one tick in nine.
pub const CLOCK_RATE_SPREAD: f64 = 0.04;

impl Scenario {
    pub fn generate(seed: u64, options: &Options) -> Scenario {
        let mut rng = Rng::new(seed);
        let nodes = options.nodes.unwrap_or_else(|| [1, 3, 3, 3, 5, 5][rng.below(6) as usize]);
        let replicas = match nodes {
            1 => 1,
            5 if rng.chance(0.3) => 5,
            _ => 3,
        };
        let shape =
            Shape { nodes, cores: rng.between(1, 2) as u32, shards_per_core: rng.between(1, 3) as u32, replicas };
        let clocks = (0..nodes)
            .map(|_| ClockSpec {
                rate: 1.0 + rng.float(-CLOCK_RATE_SPREAD, CLOCK_RATE_SPREAD),
                wall_offset_ms: rng.between(0, 4000) as i64 - 2000,
            })
            .collect();
        let mut faults_end_us = rng.between(4_000_000, 10_000_000);
        let mut faults = Vec::new();
        let mut wiped: Option<u64> = None;
        for _ in 0..rng.between(1, 6) {
            let start = rng.between(300_000, faults_end_us - 300_000);
            let end = (start + rng.between(200_000, 3_000_000)).min(faults_end_us);
            let weights: Vec<u64> = EPISODES.iter().map(|e| e.1).collect();
            let (name, _, expand) = EPISODES[rng.weighted(&weights)];
            let mut events = expand(&mut rng, &shape, start, end);
            // Disks of one node only: a second node's lost before the first
            // is back in every group could take a shard's last copies, which
            // no replication survives. The same node may lose its disk again
            // mid-readmission (its older new directory is then stale too).
            if name == "wipe" {
                let first = *wiped.get_or_insert_with(|| match events.first() {
                    Some((_, Fault::Wipe { node })) => *node,
                    _ => 0,
                });
                for (_, f) in &mut events {
                    if let Fault::Wipe { node } | Fault::Restart { node } = f {
                        *node = first;
                    }
                }
            }
            faults.extend(events);
        }
        // The fault phase lasts until its last fault.
        faults_end_us = faults.iter().map(|(at, _)| *at).max().unwrap_or(0).max(faults_end_us);
        faults.sort_by_key(|(at, _)| *at);
        Scenario {
            seed,
            options: options.clone(),
            clocks,
            clients: rng.between(2, 8) as usize,
            keys: rng.between(3, 12) as usize,
            ttl_keys: 2,
            op_gap_us: (0, rng.between(2_000, 40_000)),
            op_timeout_us: rng.between(500_000, 3_000_000),
            fsync_us: (150, rng.between(300, 3_000)),
            snapshot_wal_bytes: rng.between(16, 256) * 1024,
            faults_end_us,
            faults,
            shape,
        }
    }
}

fn any_node(rng: &mut Rng, shape: &Shape) -> u64 {
    rng.between(1, shape.nodes as u64)
}

fn crash_one(rng: &mut Rng, shape: &Shape, start: u64, end: u64) -> Vec<(u64, Fault)> {
    let node = any_node(rng, shape);
    vec![(start, Fault::Crash { node }), (end, Fault::Restart { node })]
}

/// A power outage of several nodes at once (a majority, often all).
fn crash_many(rng: &mut Rng, shape: &Shape, start: u64, end: u64) -> Vec<(u64, Fault)> {
    let count = rng.between((shape.nodes as u64 / 2) + 1, shape.nodes as u64);
    let mut events = Vec::new();
    for node in 1..=count {
        events.push((start, Fault::Crash { node }));
        events.push((end + rng.between(0, 200_000), Fault::Restart { node }));
    }
    events
}

/// A node loses its disk; it comes back on an empty one after `end`.
fn wipe_one(rng: &mut Rng, shape: &Shape, start: u64, end: u64) -> Vec<(u64, Fault)> {
    if shape.nodes < 3 {
        // A single node's only copy would go: nothing could bring it back.
        return Vec::new();
    }
    let node = any_node(rng, shape);
    vec![(start, Fault::Wipe { node }), (end, Fault::Restart { node })]
}

fn pause_one(rng: &mut Rng, shape: &Shape, start: u64, end: u64) -> Vec<(u64, Fault)> {
    let node = any_node(rng, shape);
    vec![(start, Fault::Pause { node }), (end, Fault::Resume { node })]
}

/// Cuts one node off (both ways or one way), or splits the nodes in two.
fn partition(rng: &mut Rng, shape: &Shape, start: u64, end: u64) -> Vec<(u64, Fault)> {
    let n = shape.nodes as u64;
    let mut links = Vec::new();
    match rng.below(3) {
        0 | 1 => {
            let lone = any_node(rng, shape);
            let one_way = rng.below(2) == 1;
            for other in (1..=n).filter(|&o| o != lone) {
                links.push((lone, other));
                if !one_way {
                    links.push((other, lone));
                }
            }
        }
        _ => {
            let side: Vec<bool> = (0..n).map(|_| rng.chance(0.5)).collect();
            for a in 1..=n {
                for b in (1..=n).filter(|&b| side[(a - 1) as usize] != side[(b - 1) as usize]) {
                    links.push((a, b));
                }
            }
        }
    }
    vec![(start, Fault::Cut { links }), (end, Fault::Heal)]
}

fn isolate_leader(rng: &mut Rng, _shape: &Shape, start: u64, end: u64) -> Vec<(u64, Fault)> {
    // Long enough for the others to elect a new leader.
    let end = end.max(start + rng.between(1_500_000, 4_000_000));
    vec![(start, Fault::IsolateLeader { one_way: rng.chance(0.3) }), (end, Fault::Heal)]
}

fn lossy_network(rng: &mut Rng, _shape: &Shape, start: u64, end: u64) -> Vec<(u64, Fault)> {
    let lossy = NetConditions {
        delay_min_us: 50,
        delay_max_us: rng.between(200, 50_000),
        drop: rng.float(0.0, 0.3),
        duplicate: rng.float(0.0, 0.1),
    };
    vec![(start, Fault::Network(lossy)), (end, Fault::Network(NetConditions::calm()))]
}

fn memory_pressure(rng: &mut Rng, shape: &Shape, start: u64, end: u64) -> Vec<(u64, Fault)> {
    use kv_engine::evict::Policy;
    let node = any_node(rng, shape);
    let policy = *rng.pick(&[Policy::AllKeysLru, Policy::AllKeysLfu, Policy::AllKeysRandom, Policy::VolatileTtl]);
    let refuse = rng.chance(0.3);
    vec![
        (start, Fault::MemoryPressure { node, policy, refuse, on: true }),
        (end, Fault::MemoryPressure { node, policy, refuse, on: false }),
    ]
}

fn disk_faults(rng: &mut Rng, shape: &Shape, start: u64, end: u64) -> Vec<(u64, Fault)> {
    let node = any_node(rng, shape);
    vec![(start, Fault::DiskFaults { node, on: true }), (end, Fault::DiskFaults { node, on: false })]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_fixes_its_scenario_and_every_fault_ends_in_the_phase() {
        for seed in 0..200 {
            let s = Scenario::generate(seed, &Options::default());
            let again = Scenario::generate(seed, &Options::default());
            assert_eq!(format!("{s:?}"), format!("{again:?}"));
            assert!([1, 3, 5].contains(&s.shape.nodes));
            assert!(s.shape.replicas as usize <= s.shape.nodes);
            assert!(s.faults.iter().all(|(at, _)| *at <= s.faults_end_us));
            assert!(s.faults.windows(2).all(|w| w[0].0 <= w[1].0), "sorted by time");
        }
        let fixed = Scenario::generate(9, &Options { nodes: Some(5), ..Options::default() });
        assert_eq!(fixed.shape.nodes, 5);
    }
}
