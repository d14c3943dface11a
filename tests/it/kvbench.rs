//! kvbench against a real kvd: the counts it reports add up and the files
//! it writes are there and well-formed.

use crate::harness::{data_dir, path_str, run_bounded, stderr, Kvd};

fn kvbench_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvbench")
}

#[test]
fn a_short_run_reports_consistent_counts_and_writes_histograms() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--fsync", "never"]);
    let out_dir = dir.path().join("hgrm");
    let mut cmd = std::process::Command::new(kvbench_bin());
    cmd.args(["--target", &kvd.endpoint(), "-c", "4", "-P", "8", "--cores", "0", "-d", "1", "--warmup", "0.2"])
        .args(["-w", "mix:0.5", "--keys", "500", "--dist", "zipf:0.99", "--value-bytes", "10-100", "--preload"])
        .args(["--seed", "7", "--label", "it", "--json", "--server-pid", &kvd.pid().to_string()])
        .args(["--hgrm-dir", path_str(&out_dir)]);
    let out = run_bounded(cmd, b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let (gets, sets) = (&report["ops_by_type"]["get"], &report["ops_by_type"]["set"]);
    let total = report["ops"].as_u64().unwrap();
    assert!(total > 0);
    assert_eq!(gets["count"].as_u64().unwrap() + sets["count"].as_u64().unwrap(), total);
    assert_eq!(report["errors"], 0);
    // Every key was preloaded, so no read misses.
    assert_eq!(gets["misses"], 0);
    assert!(gets["p50_ms"].as_f64().unwrap() <= gets["p99_ms"].as_f64().unwrap());
    assert!(report["run"]["server_cpu_s_per_mop"].as_f64().unwrap() > 0.0);
    assert_eq!(report["run"]["seed"], 7);
    for op in ["get", "set"] {
        let text = std::fs::read_to_string(out_dir.join(format!("it-{op}.hgrm"))).unwrap();
        assert!(text.contains("Percentile") && text.contains("#[Max"), "{text}");
    }
    assert!(kvd.stop().success());
}
