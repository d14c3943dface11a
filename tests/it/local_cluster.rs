//! `tuning/local-cluster.sh`, the README's way to try a cluster, run as a
//! user would: it starts three nodes with distinct ports for every
//! listener, and the commands it prints work as written.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::{data_dir, kvctl_bin, kvd_bin, run_bounded, stdout};

const UP_TIMEOUT: Duration = Duration::from_secs(120);

/// The script's process; dropping it stops the script (its trap stops
/// the nodes), and kills the nodes it reported, by PID, if it did not.
struct Script {
    child: Child,
    nodes: Vec<i32>,
}

impl Drop for Script {
    fn drop(&mut self) {
        // SAFETY: signalling processes this test started (through the script).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for &pid in &self.nodes {
            // SAFETY: as above; a node the script already stopped is gone
            // (it is the script's child, reaped by its `wait`).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn local_cluster_script_starts_nodes_whose_printed_commands_work() {
    let dir = data_dir();
    // An address of its own, away from the other tests' (127.X.1-250.*).
    let host = format!("127.{}.0.1", 20 + std::process::id() % 200);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tuning/local-cluster.sh");
    let mut child = Command::new("bash")
        .arg(script)
        .env("DATA", dir.path())
        .env("HOST", &host)
        .env("KVD", kvd_bin())
        .env("KVCTL", kvctl_bin())
        .env_remove("KVD_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bash runs");
    let out = child.stdout.take().expect("piped");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut script = Script { child, nodes: Vec::new() };
    let mut printed = Vec::new();
    let deadline = Instant::now() + UP_TIMEOUT;
    while !printed.iter().any(|l: &String| l.contains("Ctrl-C stops the cluster")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| panic!("the script said only:\n{}", printed.join("\n")));
        if let Some(pid) = line.strip_prefix("node ").and_then(|r| r.split(": pid ").nth(1)) {
            script.nodes.push(pid.split(',').next().unwrap().parse().unwrap());
        }
        printed.push(line);
    }
    let text = printed.join("\n");
    assert_eq!(script.nodes.len(), 3, "{text}");

    // Every listener of every node on a port of its own.
    let at = format!("{host}:");
    let mut ports: Vec<&str> = printed
        .iter()
        .filter(|l| l.starts_with("node "))
        .flat_map(|l| l.split(at.as_str()).skip(1))
        .map(|rest| rest.split(',').next().unwrap())
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 9, "native, RESP and HTTP of three nodes: {ports:?}\n{text}");

    // The printed commands, as printed (the `export` sets kvctl's endpoints).
    let endpoints = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("export KVCTL_ENDPOINTS="))
        .unwrap_or_else(|| panic!("no endpoints line:\n{text}"));
    assert_eq!(endpoints.split(',').count(), 3, "{endpoints}");
    let run = |line: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut cmd = Command::new(words[0]);
        cmd.args(&words[1..]).env("KVCTL_ENDPOINTS", endpoints);
        let out = run_bounded(cmd, b"");
        assert!(out.status.success(), "{line}: {out:?}");
        stdout(&out)
    };
    let commands: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(kvctl_bin()) || l.starts_with("redis-cli") || l.starts_with("curl"))
        .collect();
    assert_eq!(commands.len(), 5, "{text}");
    let mut outputs = Vec::new();
    for line in commands {
        outputs.push(run(line));
    }
    assert_eq!(outputs[1].trim(), "hello", "kvctl get: {outputs:?}");
    assert!(outputs[2].contains("LEADER"), "kvctl cluster status: {outputs:?}");
    assert_eq!(outputs[3].trim(), "hello", "redis-cli GET: {outputs:?}");
    assert_eq!(outputs[4].trim(), "hello", "curl: {outputs:?}");

    // Ctrl-C (here SIGTERM) stops every node.
    let nodes = script.nodes.clone();
    // SAFETY: signalling the script this test started.
    unsafe { libc::kill(script.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while matches!(script.child.try_wait(), Ok(None)) {
        assert!(Instant::now() < deadline, "the script did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(nodes.iter().all(|&pid| !alive(pid)), "nodes left running: {nodes:?}");
    for i in 1..=3 {
        let log = std::fs::read_to_string(dir.path().join(format!("node-{i}.log"))).unwrap();
        assert!(log.contains("kvd stopped cleanly"), "node {i}:\n{log}");
    }
}
