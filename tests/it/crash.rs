//! Crash test: clients write with fsync `always` and record every
//! acknowledged write; kvd is SIGKILLed mid-load at a seeded random moment
//! and restarted, several times. Every acknowledged write must be there,
//! with its value and version.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_engine::Condition;
use kv_net::client::Client;
use rand::{Rng, SeedableRng};

use crate::harness::{data_dir, seed, Kvd};

const WRITERS: usize = 4;
const ROUNDS: usize = 3;

/// Writes unique keys until `stop`, returning what was acknowledged.
fn writer(endpoint: String, round: usize, id: usize, stop: Arc<AtomicBool>) -> HashMap<String, (String, u64)> {
    let mut acked = HashMap::new();
    let Ok(mut c) = Client::connect(&[endpoint], Duration::from_secs(10)) else { return acked };
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("r{round}-w{id}-{i}");
        let value = format!("value-{round}-{id}-{i}-{}", "x".repeat((i % 50) as usize));
        match c.put(key.as_bytes(), value.as_bytes(), Condition::Always) {
            Ok(version) => {
                acked.insert(key, (value, version));
            }
            // The server died under us: this write is indeterminate.
            Err(_) => break,
        }
        i += 1;
    }
    acked
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let seed = seed("acknowledged_writes_survive_sigkill");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = data_dir();
    // Small segments and snapshots so crashes also land around rotation,
    // snapshotting and compaction.
    let flags = ["--fsync", "always", "--wal-segment-bytes", "262144", "--snapshot-wal-bytes", "1048576"];
    let mut all_acked: HashMap<String, (String, u64)> = HashMap::new();
    for round in 0..ROUNDS {
        let kvd = Kvd::start(dir.path(), &flags);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|id| {
                let (ep, stop) = (kvd.endpoint(), stop.clone());
                std::thread::spawn(move || writer(ep, round, id, stop))
            })
            .collect();
        let delay = Duration::from_millis(rng.gen_range(100..800));
        std::thread::sleep(delay);
        kvd.kill();
        stop.store(true, Ordering::Relaxed);
        let mut acked_this_round = 0;
        for w in writers {
            let acked = w.join().expect("writer thread");
            acked_this_round += acked.len();
            all_acked.extend(acked);
        }
        println!("round {round}: killed after {delay:?}, {acked_this_round} writes acknowledged");
        assert!(acked_this_round > 0, "round {round}: the load never got going");
    }
    let kvd = Kvd::start(dir.path(), &flags);
    let mut c = Client::connect(&[kvd.endpoint()], Duration::from_secs(10)).unwrap();
    let mut missing = Vec::new();
    for (key, (value, version)) in &all_acked {
        match c.get(key.as_bytes()).unwrap() {
            Some((v, ver)) if v == value.as_bytes() && ver == *version => {}
            other => missing.push(format!("{key}: acked ({value}, {version}), found {other:?}")),
        }
    }
    assert!(
        missing.is_empty(),
        "seed {seed}: {} of {} acknowledged writes lost:\n{}",
        missing.len(),
        all_acked.len(),
        missing[..missing.len().min(10)].join("\n")
    );
    assert!(kvd.stop().success());
}
