//! systemd readiness: kvd started with `NOTIFY_SOCKET` (and `WATCHDOG_USEC`)
//! pointing at a datagram socket the test binds, as systemd does for a
//! `Type=notify` unit. Checks the messages that arrive, never their timing.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kv_engine::Condition;
use kv_net::client::Client;

use crate::cluster::Cluster;
use crate::harness::{data_dir, kvd_command, Kvd};

/// Generous: a loaded CI machine may be slow.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// A bound notification socket and a thread reading it: every datagram
/// arrives on `messages`, as text. Dropping it stops the thread.
struct Manager {
    _dir: tempfile::TempDir,
    path: PathBuf,
    messages: mpsc::Receiver<String>,
    /// Every datagram taken from `messages` so far, for failure reports.
    seen: Vec<String>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Manager {
    fn bind() -> Manager {
        let dir = tempfile::Builder::new().prefix("kvd-notify-").tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("binds the notification socket");
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let (tx, messages) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !halt.load(Ordering::Relaxed) {
                if let Ok(len) = socket.recv(&mut buf) {
                    let _ = tx.send(String::from_utf8_lossy(&buf[..len]).into_owned());
                }
            }
        });
        Manager { _dir: dir, path, messages, seen: Vec::new(), stop, reader: Some(reader) }
    }

    /// Waits (bounded) for a datagram with a line `line` (`KEY=value`, or a
    /// `STATUS=` prefix ending in `*`); returns that datagram.
    fn wait_for(&mut self, line: &str) -> String {
        let deadline = Instant::now() + MESSAGE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(m) => {
                    self.seen.push(m.clone());
                    if has_line(&m, line) {
                        return m;
                    }
                }
                Err(_) => panic!("no {line:?} within {MESSAGE_TIMEOUT:?}; received:\n{:#?}", self.seen),
            }
        }
    }

    /// The datagrams that arrived and were not taken yet.
    fn take_pending(&mut self) -> Vec<String> {
        let pending: Vec<String> = self.messages.try_iter().collect();
        self.seen.extend(pending.iter().cloned());
        pending
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Whether datagram `m` has the line `line`; a pattern ending in `*`
/// matches lines starting with the rest.
fn has_line(m: &str, line: &str) -> bool {
    match line.strip_suffix('*') {
        Some(prefix) => m.lines().any(|l| l.starts_with(prefix)),
        None => m.lines().any(|l| l == line),
    }
}

#[test]
fn notify_reports_start_readiness_watchdog_and_stop() {
    let mut manager = Manager::bind();
    let dir = data_dir();
    let mut cmd = kvd_command(dir.path(), &["--cores", "0,1"]);
    cmd.env("NOTIFY_SOCKET", &manager.path).env("WATCHDOG_USEC", "200000").env_remove("WATCHDOG_PID");
    let kvd = Kvd::start_command(cmd).unwrap_or_else(|log| panic!("kvd did not start:\n{log}"));

    manager.wait_for("STATUS=starting: replaying the write-ahead log*");
    let ready = manager.wait_for("READY=1");
    assert!(has_line(&ready, "STATUS=serving: *"), "{ready:?}");
    assert!(has_line(&ready, &format!("MAINPID={}", kvd.pid())), "{ready:?}");
    // Pings keep coming while both cores poll.
    for _ in 0..3 {
        manager.wait_for("WATCHDOG=1");
    }

    let log = kvd.log();
    let status = kvd.stop();
    assert!(status.success(), "exit {status:?}\n{log}");
    let stopping = manager.wait_for("STOPPING=1");
    assert!(has_line(&stopping, "STATUS=stopping: *"), "{stopping:?}");
    // The process has exited: everything it sent is queued by now.
    manager.wait_for("STATUS=stopped");
    let after_stop = manager.seen.iter().skip_while(|m| !has_line(m, "STOPPING=1")).skip(1);
    let late: Vec<&String> = after_stop.filter(|m| has_line(m, "WATCHDOG=1") || has_line(m, "READY=1")).collect();
    assert!(late.is_empty(), "READY or WATCHDOG after STOPPING=1: {late:?}");
}

#[test]
fn notify_watchdog_pings_stop_while_a_core_is_stuck() {
    let mut manager = Manager::bind();
    let dir = data_dir();
    let mut cmd = kvd_command(dir.path(), &["--cores", "0"]);
    // Startup takes exactly one WAL flush on one core (see lifecycle.rs);
    // the second, the test's write, blocks the core's thread after its
    // fdatasync: the core stops polling, as a hung core would.
    cmd.env("FAILPOINTS", "wal::after_fdatasync=1*off->sleep(600000)");
    cmd.env("NOTIFY_SOCKET", &manager.path).env("WATCHDOG_USEC", "200000").env_remove("WATCHDOG_PID");
    let kvd = Kvd::start_command(cmd).unwrap_or_else(|log| panic!("kvd did not start:\n{log}"));
    manager.wait_for("READY=1");
    manager.wait_for("WATCHDOG=1");
    manager.wait_for("WATCHDOG=1");

    let mut c = Client::connect(&[kvd.endpoint()], Duration::from_secs(10)).expect("connects");
    c.set_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = c.put(b"k", b"v", Condition::Always);
    let deadline = Instant::now() + MESSAGE_TIMEOUT;
    while !kvd.log().contains("holding back the watchdog ping") {
        assert!(Instant::now() < deadline, "kvd did not notice its stuck core:\n{}", kvd.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Pings stop for good: wait (bounded) for a quiet spell of many
    // intervals, which never comes if kvd keeps pinging.
    let deadline = Instant::now() + MESSAGE_TIMEOUT;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(2) {
        assert!(Instant::now() < deadline, "WATCHDOG=1 kept coming with a stuck core: {:#?}", manager.seen);
        std::thread::sleep(Duration::from_millis(50));
        if manager.take_pending().iter().any(|m| has_line(m, "WATCHDOG=1")) {
            quiet_since = Instant::now();
        }
    }
    kvd.kill();
}

#[test]
fn notify_in_a_cluster_waits_until_every_shard_knows_its_leader() {
    let mut manager = Manager::bind();
    let mut cluster = Cluster::configure(3, &[]);
    let socket = manager.path.to_str().expect("utf-8 temp path").to_string();
    // Node 1 alone: it replays and serves (its ready line comes), but no
    // shard can elect a leader without a second of its three replicas.
    cluster.start_node(1, &[("NOTIFY_SOCKET", &socket)]);
    manager.wait_for("STATUS=starting: waiting for every shard to know its leader*");
    // Give it the time a wrong READY=1 would take to show (not a timing
    // assertion: no leader can exist until node 2 starts).
    std::thread::sleep(Duration::from_secs(1));
    manager.take_pending();
    assert!(
        !manager.seen.iter().any(|m| has_line(m, "READY=1")),
        "READY=1 before any shard could have a leader: {:#?}",
        manager.seen
    );
    let groups = cluster.groups(1);
    assert!(groups.iter().all(|g| g["leader"].is_null()), "node 1 alone sees no leaders: {groups:?}");

    cluster.start_node(2, &[]);
    cluster.start_node(3, &[]);
    let ready = manager.wait_for("READY=1");
    assert!(has_line(&ready, "STATUS=serving: *"), "{ready:?}");
    cluster.wait_for_leaders();
    for id in [1, 2, 3] {
        assert!(cluster.stop(id), "node {id} stops cleanly");
    }
    manager.wait_for("STOPPING=1");
}
