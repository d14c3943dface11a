//! `/metrics` through a real kvd: a valid OpenMetrics exposition whose
//! counters move with the requests made (HTTP, RESP and native), whose WAL and
//! Raft series follow writes; and the Grafana dashboard in `tuning/`
//! queries only series kvd exports.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kv_engine::Condition;
use kv_net::client::Client;

use crate::cluster::CONVERGE_TIMEOUT;
use crate::harness::{data_dir, Kvd};
use crate::http_client as http;
use crate::openmetrics::{self, Exposition};
use crate::resp::{Raw, Reply};

fn scrape(addr: SocketAddr) -> Exposition {
    let a = http::get(addr, "/metrics");
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("content-type"), Some(kv_net::metrics::CONTENT_TYPE));
    openmetrics::parse(&a.text())
}

/// Scrapes until `done` holds (gauges and raft counters refresh once a second).
fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let e = scrape(addr);
        if done(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const HTTP_GET_MISS: [(&str, &str); 3] = [("protocol", "http"), ("op", "get"), ("status", "not_found")];
const NATIVE_SET_OK: [(&str, &str); 3] = [("protocol", "native"), ("op", "set"), ("status", "ok")];
const RESP_INCR_OK: [(&str, &str); 3] = [("protocol", "resp"), ("op", "incr"), ("status", "ok")];
const RESP_INCR_BAD: [(&str, &str); 3] = [("protocol", "resp"), ("op", "incr"), ("status", "bad_request")];

#[test]
fn metrics_parse_and_move_with_requests() {
    // Two cores: request counters sum both cores' slots; per-core series
    // are summed here.
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0,1"]);
    let h = kvd.http_addr;
    let before = scrape(h);
    for _ in 0..3 {
        http::get(h, "/v1/kv/missing").assert_error(404, "key_not_found");
    }
    let mut native = Client::connect(&[kvd.endpoint()], Duration::from_secs(10)).unwrap();
    native.put(b"one", b"1", Condition::Always).unwrap();
    native.put(b"two", b"2", Condition::Always).unwrap();
    assert_eq!(http::put(h, "/v1/kv/three", b"3").status, 200);
    let mut resp = Raw::connect(kvd.resp_addr);
    for n in 1..=4 {
        assert_eq!(resp.cmd(&["INCR", "counter"]), Reply::Int(n));
    }
    assert_eq!(resp.cmd(&["SET", "word", "abc"]), Reply::ok());
    let refused = resp.cmd(&["INCR", "word"]);
    assert!(matches!(&refused, Reply::Error(e) if e.contains("not an integer")), "{refused:?}");
    assert_eq!(resp.cmd(&["DEL", "word"]), Reply::Int(1));
    assert_eq!(resp.cmd(&["SET", "temporary", "t", "EX", "600"]), Reply::ok());

    let after = scrape_until(h, "the cores' gauges show 5 keys, 1 with a TTL", |e| {
        e.sum("kvd_keys", &[]) == 5.0 && e.sum("kvd_expiring_keys", &[]) == 1.0
    });
    for family in ["kvd_requests", "kvd_request_duration_seconds", "kvd_wal_fsync_duration_seconds", "kvd_keys"] {
        assert!(after.families.contains_key(family), "{family} missing from {:?}", after.families.keys());
    }
    assert_eq!(
        after.value("kvd_requests_total", &HTTP_GET_MISS),
        before.value("kvd_requests_total", &HTTP_GET_MISS) + 3.0
    );
    assert_eq!(
        after.value("kvd_requests_total", &NATIVE_SET_OK),
        before.value("kvd_requests_total", &NATIVE_SET_OK) + 2.0
    );
    assert_eq!(
        after.value("kvd_requests_total", &RESP_INCR_OK),
        before.value("kvd_requests_total", &RESP_INCR_OK) + 4.0
    );
    assert_eq!(
        after.value("kvd_requests_total", &RESP_INCR_BAD),
        before.value("kvd_requests_total", &RESP_INCR_BAD) + 1.0
    );
    let latency =
        |e: &Exposition| e.value("kvd_request_duration_seconds_count", &[("protocol", "http"), ("op", "get")]);
    assert_eq!(latency(&after), latency(&before) + 3.0);
    let grew = |name: &str| after.sum(name, &[]) > before.sum(name, &[]);
    for name in [
        "kvd_wal_append_duration_seconds_count",
        "kvd_wal_fsync_duration_seconds_count",
        "kvd_wal_written_bytes_total",
        "kvd_raft_proposals_total",
        "kvd_raft_commits_total",
        "kvd_raft_applies_total",
        "kvd_memory_bytes",
    ] {
        assert!(grew(name), "{name}: {} then {}", before.sum(name, &[]), after.sum(name, &[]));
    }
    for core in ["0", "1"] {
        assert!(after.value("kvd_raft_leader_groups", &[("core", core)]) > 0.0, "core {core} leads nothing");
    }
    assert_eq!(after.sum("kvd_raft_leaderless_groups", &[]), 0.0);
    kvd.stop();
}

/// Every `kvd_…` name in the dashboard's queries (panels and variables).
fn dashboard_metric_names(dashboard: &serde_json::Value) -> BTreeSet<String> {
    fn walk(v: &serde_json::Value, exprs: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query" | "definition", serde_json::Value::String(e)) => exprs.push(e.clone()),
                        _ => walk(v, exprs),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, exprs)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has {} queries", exprs.len());
    let mut names = BTreeSet::new();
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("kvd_") {
            let tail = &rest[i..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tuning/grafana-dashboard.json");
    let text = std::fs::read_to_string(path).expect("the dashboard exists");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let vars = dashboard["templating"]["list"].as_array().expect("template variables");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "no Prometheus datasource variable"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert!(p["targets"].as_array().is_some_and(|t| !t.is_empty()), "panel {} has no query", p["title"]);
    }

    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0"]);
    // Request series appear with the first request.
    assert_eq!(http::get(kvd.http_addr, "/health").status, 200);
    let exported = scrape(kvd.http_addr).sample_names();
    kvd.stop();
    let used = dashboard_metric_names(&dashboard);
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries series kvd does not export: {unknown:?}\nexported: {exported:?}"
    );
    for family in ["kvd_requests_total", "kvd_request_duration_seconds_bucket", "kvd_wal_fsync_duration_seconds_bucket"]
    {
        assert!(used.contains(family), "the dashboard does not chart {family}");
    }
}
