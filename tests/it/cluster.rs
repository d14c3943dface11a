//! A cluster of real kvd processes on loopback for fault tests.
//!
//! Every node gets its own loopback address (127.X.Y.id, unique per test), so
//! tests never collide on ports. Every directed link between two nodes goes
//! through a [`Proxy`] (node a reaches node b at 127.X.Y.(10a+b)), which can
//! cut the link: that is how a test partitions the cluster. Processes are
//! stopped by PID (see `harness::Kvd`); proxies stop with the cluster.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kv_net::client::Client;

use crate::harness::{kvd_command, Kvd};

const PEER_PORT: u16 = 7480;
const CLIENT_PORT: u16 = 7379;
/// How long waits for elections, catch-up and convergence may take at most.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A TCP proxy for one directed link; `cut` drops its connections and
/// refuses new ones until `mend`; `blackhole` keeps connections open but
/// delivers nothing (a firewall that drops packets: the sender learns
/// nothing until its own timeouts).
pub struct Proxy {
    cut: Arc<AtomicBool>,
    blackholed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(listen: SocketAddr, target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(listen).unwrap_or_else(|e| panic!("proxy on {listen}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let (cut, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let blackholed = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (c, s, cs, bh) = (cut.clone(), stop.clone(), conns.clone(), blackholed.clone());
        let acceptor = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) if !c.load(Ordering::Relaxed) => {
                        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else { continue };
                        client.set_nonblocking(false).unwrap();
                        for s in [&client, &server] {
                            cs.lock().unwrap().push(s.try_clone().unwrap());
                        }
                        pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), bh.clone());
                        pipe(server, client, bh.clone());
                    }
                    Ok((client, _)) => drop(client),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { cut, blackholed, stop, conns, acceptor: Some(acceptor) }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn blackhole(&self) {
        self.blackholed.store(true, Ordering::SeqCst);
    }

    pub fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.blackholed.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// Copies bytes one way until either side closes, then closes both ways
/// (as a real network does to a crashed peer's connections; leaving half a
/// connection open would keep the crashed node's port busy). While
/// `blackholed`, bytes are read and dropped.
fn pipe(mut from: TcpStream, mut to: TcpStream, blackholed: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if blackholed.load(Ordering::Relaxed) => {}
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

struct Node {
    data: PathBuf,
    args: Vec<String>,
    peer_addr: SocketAddr,
}

pub struct Cluster {
    _dir: tempfile::TempDir,
    nodes: BTreeMap<u64, Node>,
    running: BTreeMap<u64, Kvd>,
    proxies: BTreeMap<(u64, u64), Proxy>,
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

fn base_octets() -> (u8, u8) {
    let n = CLUSTERS.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    (20 + (pid % 200) as u8, (n % 250) as u8 + 1)
}

impl Cluster {
    /// Starts `n` single-core nodes with `extra` flags each.
    pub fn start(n: u64, extra: &[&str]) -> Cluster {
        let mut cluster = Cluster::configure(n, extra);
        for id in 1..=n {
            cluster.start_node(id, &[]);
        }
        cluster.wait_for_leaders();
        cluster
    }

    /// Sets up `n` nodes (addresses, proxies, flags) without starting any:
    /// the test starts them with [`Cluster::start_node`].
    pub fn configure(n: u64, extra: &[&str]) -> Cluster {
        let dir = crate::harness::data_dir();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a-cluster-secret-for-tests-0123456789").unwrap();
        let (x, y) = base_octets();
        let ip = |last: u64| Ipv4Addr::new(127, x, y, last as u8);
        let real = |id: u64| SocketAddr::new(ip(id).into(), PEER_PORT);
        let via = |from: u64, to: u64| SocketAddr::new(ip(10 * from + to).into(), PEER_PORT);
        let mut proxies = BTreeMap::new();
        for a in 1..=n {
            for b in (1..=n).filter(|&b| b != a) {
                proxies.insert((a, b), Proxy::start(via(a, b), real(b)));
            }
        }
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let peers: Vec<String> =
                (1..=n).map(|o| format!("{o}={}", if o == id { real(id) } else { via(id, o) })).collect();
            let mut args: Vec<String> = vec![
                "--node-id".into(),
                id.to_string(),
                "--cores".into(),
                ((id - 1) % 2).to_string(),
                "--listen".into(),
                // A fixed port (each node has its own address): clients keep
                // their endpoints across restarts.
                format!("{}:{CLIENT_PORT}", ip(id)),
                "--peers".into(),
                peers.join(","),
                "--cluster-secret-file".into(),
                secret.to_str().unwrap().into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            nodes.insert(id, Node { data: dir.path().join(format!("node-{id}")), args, peer_addr: real(id) });
        }
        Cluster { _dir: dir, nodes, running: BTreeMap::new(), proxies }
    }

    /// Starts (or restarts) node `id`, with `env` set for it.
    pub fn start_node(&mut self, id: u64, env: &[(&str, &str)]) {
        let node = &self.nodes[&id];
        let args: Vec<&str> = node.args.iter().map(String::as_str).collect();
        let mut cmd = kvd_command(&node.data, &args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let kvd = Kvd::start_command(cmd).unwrap_or_else(|log| panic!("node {id} did not start:\n{log}"));
        assert_eq!(kvd.addr.port(), CLIENT_PORT);
        self.running.insert(id, kvd);
    }

    /// Starts node `id` when it is expected to exit by itself, soon after
    /// its ready line or before it: waits (bounded) for the exit and returns
    /// its status (`None` if it exited before its ready line: the harness
    /// reaped it) and its log.
    pub fn start_node_expecting_exit(&mut self, id: u64) -> (Option<std::process::ExitStatus>, String) {
        let node = &self.nodes[&id];
        let args: Vec<&str> = node.args.iter().map(String::as_str).collect();
        match Kvd::start_command(kvd_command(&node.data, &args)) {
            Ok(mut kvd) => {
                let status = kvd.wait_exit().unwrap_or_else(|| panic!("node {id} kept running:\n{}", kvd.log()));
                (Some(status), kvd.log())
            }
            Err(log) => (None, log),
        }
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.nodes[&id].data.clone()
    }

    /// The value of flag `name` in node `id`'s command line, if given.
    pub fn flag(&self, id: u64, name: &str) -> Option<String> {
        let args = &self.nodes[&id].args;
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
    }

    /// Node `id`'s own peer listener (not through a proxy).
    pub fn peer_addr(&self, id: u64) -> SocketAddr {
        self.nodes[&id].peer_addr
    }

    /// Replaces node `id`'s flags for its next start (e.g. another secret).
    pub fn set_args(&mut self, id: u64, edit: impl FnOnce(&mut Vec<String>)) {
        edit(&mut self.nodes.get_mut(&id).expect("node").args);
    }

    /// Endpoints of the running nodes.
    pub fn endpoints(&self) -> Vec<String> {
        self.running.values().map(|k| k.endpoint()).collect()
    }

    /// Which node leads each shard, as `observer` sees it.
    pub fn leaders(&self, observer: u64) -> BTreeMap<u32, Option<u64>> {
        self.groups(observer).iter().map(|g| (g["shard"].as_u64().unwrap() as u32, g["leader"].as_u64())).collect()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn endpoint(&self, id: u64) -> String {
        self.running[&id].endpoint()
    }

    pub fn node(&self, id: u64) -> &Kvd {
        &self.running[&id]
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.running.contains_key(&id)
    }

    pub fn client(&self, id: u64) -> Client {
        let mut c = Client::connect(&[self.endpoint(id)], Duration::from_secs(10)).expect("client connects");
        c.set_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    }

    /// Waits (bounded) for node `id` to exit by itself (a crash point).
    pub fn wait_exit(&mut self, id: u64) {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        while !self.running.get_mut(&id).expect("running").exited() {
            assert!(
                Instant::now() < deadline,
                "node {id} did not crash within {CONVERGE_TIMEOUT:?}:\n{}",
                tail(&self.running[&id].log(), 30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.running.remove(&id);
    }

    pub fn kill(&mut self, id: u64) {
        self.running.remove(&id).expect("running").kill();
    }

    /// SIGTERM and wait: returns whether it exited 0.
    pub fn stop(&mut self, id: u64) -> bool {
        self.running.remove(&id).expect("running").stop().success()
    }

    pub fn signal(&self, id: u64, sig: i32) {
        self.running[&id].signal(sig);
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: u64) {
        for ((a, b), p) in &self.proxies {
            if *a == id || *b == id {
                p.cut();
            }
        }
    }

    /// Drops every byte to and from `id`, leaving connections open.
    pub fn blackhole(&self, id: u64) {
        for ((a, b), p) in &self.proxies {
            if *a == id || *b == id {
                p.blackhole();
            }
        }
    }

    pub fn heal(&self) {
        for p in self.proxies.values() {
            p.mend();
        }
    }

    /// Node `id`'s status (see `kvctl cluster status -o json`).
    pub fn status(&self, id: u64) -> serde_json::Value {
        let json = self.client(id).status().expect("status");
        serde_json::from_str(&json).expect("status is JSON")
    }

    /// Every shard's group as `id` sees it.
    pub fn groups(&self, id: u64) -> Vec<serde_json::Value> {
        let status = self.status(id);
        status["cores"].as_array().unwrap().iter().flat_map(|c| c["groups"].as_array().unwrap().clone()).collect()
    }

    /// The node that leads the most shards, as `observer` sees it.
    pub fn busiest_leader(&self, observer: u64) -> u64 {
        let mut count = BTreeMap::<u64, usize>::new();
        for g in self.groups(observer) {
            if let Some(l) = g["leader"].as_u64() {
                *count.entry(l).or_default() += 1;
            }
        }
        count.into_iter().max_by_key(|(_, n)| *n).map(|(l, _)| l).expect("some leader")
    }

    /// Waits until every running node sees a leader for every shard.
    pub fn wait_for_leaders(&self) {
        self.wait_until("every shard has a leader", || {
            self.running.keys().all(|&id| self.groups(id).iter().all(|g| g["leader"].as_u64().is_some()))
        });
    }

    /// Waits until every running node has applied every shard's commit
    /// index as seen by the shard's leader.
    pub fn wait_converged(&self) {
        self.wait_until("all replicas applied the leaders' logs", || {
            let mut commit = BTreeMap::new();
            for &id in self.running.keys() {
                for g in self.groups(id) {
                    if g["is_leader"] == true {
                        commit.insert(g["shard"].as_u64().unwrap(), g["commit"].as_u64().unwrap());
                    }
                }
            }
            let shards = self.groups(*self.running.keys().next().unwrap()).len();
            commit.len() == shards
                && self.running.keys().all(|&id| {
                    self.groups(id)
                        .iter()
                        .all(|g| g["applied"].as_u64() >= commit.get(&g["shard"].as_u64().unwrap()).copied())
                })
        });
    }

    /// Polls `done` (bounded by [`CONVERGE_TIMEOUT`]); panics naming `what`.
    pub fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        while !done() {
            if Instant::now() > deadline {
                let logs: Vec<String> =
                    self.running.iter().map(|(id, k)| format!("--- node {id}\n{}", tail(&k.log(), 30))).collect();
                panic!("timed out waiting until {what}\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
