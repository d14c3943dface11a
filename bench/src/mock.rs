//! Tests of the memcached and HTTP drivers through both load loops,
//! against tiny in-process servers (std threads, a shared map): a
//! memcached speaking the text protocol's `set`/`get`, and a server of
//! kvd's HTTP API contract (`PUT`/`GET /v1/kv/{key}`, `?ttl=S`). They
//! answer in order on keep-alive connections, as the real ones do; each
//! connection's thread ends when kvbench closes it. The store keeps each
//! key's last TTL (never applied) so tests can see which SETs carried one.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::driver::Protocol;
use crate::run::{self, Config, End, Progress, Rate};
use crate::schedule::Arrival;
use crate::stats::Stats;
use crate::workload::{KeyDist, Mix, Ttl, Workload};

/// Key → (value, TTL in seconds of the last SET).
type Store = Arc<Mutex<HashMap<Vec<u8>, (Vec<u8>, Option<u64>)>>>;

/// Serves `connections` connections with `serve`, each on its own thread.
fn server(connections: usize, serve: fn(TcpStream, Store) -> std::io::Result<()>) -> (SocketAddr, Store) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let store = Store::default();
    let shared = store.clone();
    std::thread::spawn(move || {
        for _ in 0..connections {
            let (s, _) = listener.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let store = store.clone();
            std::thread::spawn(move || serve(s, store));
        }
    });
    (addr, shared)
}

fn memcached(s: TcpStream, store: Store) -> std::io::Result<()> {
    let mut out = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while r.read_line(&mut line)? > 0 {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["set", key, _, exptime, n] => {
                let mut data = vec![0; n.parse::<usize>().unwrap() + 2];
                r.read_exact(&mut data)?;
                data.truncate(data.len() - 2);
                let ttl_s = Some(exptime.parse::<u64>().expect("a numeric exptime")).filter(|s| *s > 0);
                store.lock().unwrap().insert(key.as_bytes().to_vec(), (data, ttl_s));
                out.write_all(b"STORED\r\n")?;
            }
            ["get", key] => match store.lock().unwrap().get(key.as_bytes()) {
                Some((v, _)) => {
                    out.write_all(format!("VALUE {key} 0 {}\r\n", v.len()).as_bytes())?;
                    out.write_all(v)?;
                    out.write_all(b"\r\nEND\r\n")?;
                }
                None => out.write_all(b"END\r\n")?,
            },
            _ => out.write_all(b"ERROR\r\n")?,
        }
        line.clear();
    }
    Ok(())
}

fn http(s: TcpStream, store: Store) -> std::io::Result<()> {
    let mut out = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut request = String::new();
    while r.read_line(&mut request)? > 0 {
        let mut length = 0;
        let mut header = String::new();
        while r.read_line(&mut header)? > 2 {
            if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            header.clear();
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body)?;
        let parts: Vec<&str> = request.split(' ').collect();
        let (path, query) = parts[1].split_once('?').unwrap_or((parts[1], ""));
        let key = path.strip_prefix("/v1/kv/").unwrap().as_bytes().to_vec();
        let ttl_s = query.strip_prefix("ttl=").map(|s| s.parse::<u64>().expect("whole seconds"));
        assert!(ttl_s.is_some() || query.is_empty(), "unexpected query {query:?}");
        match parts[0] {
            "PUT" => {
                store.lock().unwrap().insert(key, (body, ttl_s));
                out.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")?;
            }
            _ => match store.lock().unwrap().get(&key) {
                Some((v, _)) => {
                    out.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", v.len()).as_bytes())?;
                    out.write_all(v)?;
                }
                None => out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?,
            },
        }
        request.clear();
    }
    Ok(())
}

fn config(target: SocketAddr, protocol: Protocol, rate: Option<Rate>, end: End) -> Config {
    Config {
        targets: vec![target],
        topology: None,
        protocol,
        connections: 4,
        pipeline: if rate.is_some() { 1 } else { 8 },
        cpus: vec![crate::affinity::current().unwrap()[0]],
        end,
        warmup: Duration::from_millis(200),
        workload: Workload {
            mix: Mix { read_share: 0.5 },
            keys: 100,
            dist: KeyDist::Uniform,
            value_bytes_min: 1,
            value_bytes_max: 300,
            key_prefix: "kvbench:".into(),
            ttl: Ttl::new(0.5, 600).unwrap(),
            random_values: false,
        },
        seed: 5,
        rate,
    }
}

fn check(stats: &Stats, open_loop: bool) {
    assert_eq!(stats.errors(), 0, "{:?}", stats.first_error);
    assert!(stats.get.latency_ns.len() > stats.get.misses, "some reads hit");
    assert!(!stats.set.latency_ns.is_empty() && stats.set.misses == 0);
    if open_loop {
        assert_eq!(stats.unanswered, 0);
        assert_eq!(stats.ops(), stats.scheduled, "every scheduled request answered once");
    } else {
        assert_eq!(stats.scheduled, 0);
    }
}

#[test]
fn memcached_and_http_drivers_in_both_loops() {
    let open = Some(Rate { ops_per_sec: 2000.0, arrival: Arrival::Poisson });
    for (protocol, serve) in [(Protocol::Memcached, memcached as fn(_, _) -> _), (Protocol::Http, http)] {
        for rate in [None, open] {
            let (addr, store) = server(4, serve);
            let end = End::After(Duration::from_millis(600));
            let outcome = run::run(&config(addr, protocol, rate, end), Arc::new(Progress::default()))
                .unwrap_or_else(|e| panic!("{protocol:?} {rate:?}: {e}"));
            check(&outcome.stats, rate.is_some());
            // Half the SETs carry the TTL: some keys were last set with it,
            // some without.
            let ttls: Vec<Option<u64>> = store.lock().unwrap().values().map(|(_, t)| *t).collect();
            assert!(ttls.contains(&Some(600)) && ttls.contains(&None), "{protocol:?} {rate:?}: {ttls:?}");
        }
    }
}

#[test]
fn a_run_of_n_requests_counts_exactly_n_in_both_loops() {
    // Neither a multiple of the pipeline depth (8) nor of the connections
    // (4): the last batches are partial.
    let n = 1001;
    let open = Some(Rate { ops_per_sec: 4000.0, arrival: Arrival::Poisson });
    for rate in [None, open] {
        let (addr, _) = server(4, memcached);
        let outcome =
            run::run(&config(addr, Protocol::Memcached, rate, End::Requests(n)), Arc::new(Progress::default()))
                .unwrap_or_else(|e| panic!("{rate:?}: {e}"));
        let s = &outcome.stats;
        check(s, rate.is_some());
        assert_eq!(s.ops(), n, "{rate:?}: every request answered, none more");
        assert_eq!(s.get.latency_ns.len() + s.set.latency_ns.len(), n);
        if rate.is_some() {
            assert_eq!(s.scheduled, n);
            // 1001 requests at 4000/s: about a quarter of a second.
            assert!(outcome.measured < Duration::from_secs(2), "{:?}", outcome.measured);
        }
    }
}
