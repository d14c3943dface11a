//! kvbench against a real kvd: the counts it reports add up, the files it
//! writes are there and well-formed, and the TTLs it asks for are on the
//! keys it wrote.

use crate::harness::{data_dir, path_str, run_bounded, stderr, Kvd};
use crate::resp::{Raw, Reply};

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

#[test]
fn an_open_loop_run_answers_every_scheduled_request_and_writes_its_files() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--fsync", "never"]);
    let out_dir = dir.path().join("hgrm");
    let svg = dir.path().join("run.svg");
    let mut cmd = std::process::Command::new(kvbench_bin());
    cmd.args(["--target", &kvd.endpoint(), "-c", "4", "--rate", "2000", "--arrival", "uniform", "--cores", "0"])
        .args(["-d", "1", "--warmup", "0.2", "-w", "mix:0.5", "--keys", "200", "--preload", "--seed", "11"])
        .args(["--label", "open", "--json", "--hgrm-dir", path_str(&out_dir), "--plot", path_str(&svg)]);
    let out = run_bounded(cmd, b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let (gets, sets) = (&report["ops_by_type"]["get"], &report["ops_by_type"]["set"]);
    let total = report["ops"].as_u64().unwrap();
    // Uniform arrivals at 2000/s over a 1 s window: 500 per connection,
    // give or take the one whose intended time falls on the window's edge.
    let scheduled = report["scheduled"].as_u64().unwrap();
    assert!((1996..=2004).contains(&scheduled), "{scheduled}");
    assert_eq!(total, scheduled, "every scheduled request answered once");
    assert_eq!(gets["count"].as_u64().unwrap() + sets["count"].as_u64().unwrap(), total);
    assert_eq!((report["errors"].as_u64(), report["unanswered"].as_u64()), (Some(0), Some(0)));
    assert_eq!(gets["misses"], 0);
    assert_eq!((report["run"]["rate"].as_f64(), report["run"]["arrival"].as_str()), (Some(2000.0), Some("uniform")));
    for op in ["get", "set"] {
        let text = std::fs::read_to_string(out_dir.join(format!("open-{op}.hgrm"))).unwrap();
        assert!(text.contains("Percentile") && text.contains("#[Max"), "{text}");
    }
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<svg") && svg_text.contains("open GET") && svg_text.contains("open SET"));
    // `kvbench plot` draws the two .hgrm files, one line each.
    let cmp = dir.path().join("cmp.svg");
    let mut plot = std::process::Command::new(kvbench_bin());
    plot.arg("plot").arg(out_dir.join("open-get.hgrm")).arg(out_dir.join("open-set.hgrm")).arg("-o").arg(&cmp);
    let out = run_bounded(plot, b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let cmp_text = std::fs::read_to_string(&cmp).unwrap();
    let polylines = cmp_text.lines().filter(|l| l.contains("<polyline")).count();
    assert!(cmp_text.contains("open-get") && cmp_text.contains("open-set"), "{cmp_text}");
    assert!(polylines >= 4, "two series and their legend samples: {polylines}");
    assert!(kvd.stop().success());
}

#[test]
fn a_run_of_n_ttl_writes_sends_exactly_n_and_every_key_expires() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--fsync", "never"]);
    let keys = 50;
    // Sequential keys: a connection's 50 consecutive writes cover every key,
    // and one of the two connections sends at least 1000.
    let mut cmd = std::process::Command::new(kvbench_bin());
    cmd.args(["--target", &kvd.endpoint(), "-c", "2", "-P", "4", "--cores", "0", "--warmup", "0.1"])
        .args(["-w", "set", "--keys", &keys.to_string(), "--dist", "seq", "--value-bytes", "16", "--seed", "3"])
        .args(["--ttl-share", "1", "--ttl", "600", "--requests", "2000", "--json"]);
    let out = run_bounded(cmd, b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!((report["ops"].as_u64(), report["errors"].as_u64()), (Some(2000), Some(0)));
    assert_eq!(report["ops_by_type"]["set"]["count"], 2000);
    let run = &report["run"];
    assert_eq!(
        (run["requests"].as_u64(), run["ttl_share"].as_f64(), run["ttl_s"].as_u64()),
        (Some(2000), Some(1.0), Some(600))
    );
    // kvbench names its keys `kvbench:` and the index in 12 digits.
    let mut resp = Raw::connect(kvd.resp_addr);
    for i in 0..keys {
        let key = format!("kvbench:{i:012}");
        match resp.cmd(&["TTL", &key]) {
            Reply::Int(s) => assert!((590..=600).contains(&s), "{key}: TTL {s}"),
            other => panic!("{key}: TTL answered {other:?}"),
        }
    }
    assert_eq!(resp.cmd(&["TTL", &format!("kvbench:{keys:012}")]), Reply::Int(-2), "a key never written");
    assert!(kvd.stop().success());
}

#[test]
fn the_floor_probe_reports_its_three_probes() {
    let dir = data_dir();
    let mut cmd = std::process::Command::new(kvbench_bin());
    cmd.args(["floor", "--dir", path_str(dir.path()), "--rtt-iterations", "200", "--fsync-iterations", "10", "--json"]);
    let out = run_bounded(cmd, b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let probes = report["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 3);
    assert_eq!(probes[0]["n"], 200);
    assert_eq!(probes[1]["n"], 10);
    assert!(probes.iter().all(|p| p["p50_us"].as_f64().unwrap() > 0.0));
}
