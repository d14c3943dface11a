//! The HTTP/JSON API through a real kvd: every route and status code,
//! conditional writes, read consistency, binary keys shared with the native
//! protocol, limits, authentication, curl, connection limits, a clean stop
//! with a keep-alive connection open, and readiness when a cluster loses
//! its quorum.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kv_engine::Condition;
use kv_net::client::Client;

use crate::cluster::{Cluster, CONVERGE_TIMEOUT};
use crate::harness::{data_dir, kvctl, path_str, stdout, Kvd};
use crate::http_client::{self as http, escape, Answer};

const KEY_MAX: usize = 100;
const VALUE_MAX: usize = 1000;

fn start_small() -> (tempfile::TempDir, Kvd) {
    let dir = data_dir();
    let (k, v) = (KEY_MAX.to_string(), VALUE_MAX.to_string());
    let kvd = Kvd::start(dir.path(), &["--cores", "0", "--max-key-bytes", &k, "--max-value-bytes", &v]);
    (dir, kvd)
}

fn version_of(a: &Answer) -> u64 {
    a.json()["version"].as_u64().unwrap_or_else(|| panic!("no version in {}", a.text()))
}

#[test]
fn kv_routes_answer_with_values_versions_and_json_errors() {
    let (_dir, kvd) = start_small();
    let h = kvd.http_addr;
    assert_ne!(kvd.http_addr, kvd.resp_addr, "each protocol has its own port");

    let put = http::put(h, "/v1/kv/greeting", b"hello");
    assert_eq!(put.status, 200, "{}", put.text());
    let v1 = version_of(&put);
    assert_eq!(put.header("etag"), Some(format!("\"{v1}\"").as_str()));
    let got = http::get(h, "/v1/kv/greeting");
    assert_eq!((got.status, got.body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(got.header("x-kvd-version"), Some(v1.to_string().as_str()));
    assert_eq!(got.header("etag"), Some(format!("\"{v1}\"").as_str()));
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    let head = http::request(h, "HEAD", "/v1/kv/greeting", &[], b"");
    assert_eq!((head.status, head.header("content-length")), (200, Some("5")));
    for level in ["strict", "lease", "stale"] {
        let got = http::get(h, &format!("/v1/kv/greeting?consistency={level}"));
        assert_eq!((got.status, got.body.as_slice()), (200, &b"hello"[..]), "{level}");
    }

    // Absent keys and unknown routes: 404 with distinct codes.
    http::get(h, "/v1/kv/nothing-here").assert_error(404, "key_not_found");
    http::request(h, "DELETE", "/v1/kv/nothing-here", &[], b"").assert_error(404, "key_not_found");
    http::get(h, "/v2/kv/greeting").assert_error(404, "no_route");
    http::get(h, "/").assert_error(404, "no_route");

    // Wrong methods: 405 with Allow.
    let post = http::request(h, "POST", "/v1/kv/greeting", &[], b"x");
    post.assert_error(405, "method_not_allowed");
    assert_eq!(post.header("allow"), Some("GET, HEAD, PUT, DELETE"));
    let put_health = http::request(h, "PUT", "/health", &[], b"");
    put_health.assert_error(405, "method_not_allowed");
    assert_eq!(put_health.header("allow"), Some("GET, HEAD"));

    // Malformed requests: 400.
    for path in [
        "/v1/kv/greeting?consistency=eventual",
        "/v1/kv/greeting?frobnicate=1",
        "/v1/kv/bad%zzescape",
        "/v1/kv/",
        "/health?verbose=1",
    ] {
        http::get(h, path).assert_error(400, "bad_request");
    }
    http::request(h, "PUT", "/v1/kv/k?version=zero", &[], b"x").assert_error(400, "bad_request");
    http::request(h, "DELETE", "/v1/kv/k", &[("if-none-match", "*")], b"").assert_error(400, "bad_request");

    // Sizes: 413, and nothing stored.
    let long_key = "k".repeat(KEY_MAX + 1);
    http::put(h, &format!("/v1/kv/{long_key}"), b"v").assert_error(413, "key_too_large");
    http::get(h, &format!("/v1/kv/{}", escape(long_key.as_bytes()))).assert_error(413, "key_too_large");
    assert_eq!(http::put(h, &format!("/v1/kv/{}", "k".repeat(KEY_MAX)), b"fits").status, 200);
    http::put(h, "/v1/kv/big", &vec![b'x'; VALUE_MAX + 1]).assert_error(413, "value_too_large");
    assert_eq!(http::put(h, "/v1/kv/big", &vec![b'x'; VALUE_MAX]).status, 200);
    // Refused by its announced length, before any of it is sent.
    let announced = format!("PUT /v1/kv/huge HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", 1u64 << 40);
    http::parse(&http::exchange(h, announced.as_bytes()), false).unwrap().assert_error(413, "value_too_large");
    // Chunked, without a length: refused once it passes the limit.
    let chunk = format!("{:x}\r\n{}\r\n", 600, "y".repeat(600));
    let chunked =
        format!("PUT /v1/kv/big HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n");
    http::parse(&http::exchange(h, chunked.as_bytes()), false).unwrap().assert_error(413, "value_too_large");
    assert_eq!(http::get(h, "/v1/kv/big").body, vec![b'x'; VALUE_MAX], "the refused writes changed nothing");
    http::get(h, "/v1/kv/huge").assert_error(404, "key_not_found");

    // TTLs: validated; a key with one reports its expiry, a plain PUT clears
    // it, and a short one makes the key disappear.
    for bad in ["/v1/kv/t?ttl=0", "/v1/kv/t?ttl=-1", "/v1/kv/t?ttl=1.5", "/v1/kv/t?ttl=99999999999999999999"] {
        http::request(h, "PUT", bad, &[], b"v").assert_error(400, "bad_request");
    }
    http::request(h, "PUT", "/v1/kv/t?ttl=5", &[("x-kvd-ttl-seconds", "5")], b"v").assert_error(400, "bad_request");
    http::get(h, "/v1/kv/t").assert_error(404, "key_not_found");
    let before = unix_ms();
    assert_eq!(http::request(h, "PUT", "/v1/kv/t?ttl=600", &[], b"v").status, 200);
    let expires: u64 = http::get(h, "/v1/kv/t").header("x-kvd-expires-at").expect("expiry reported").parse().unwrap();
    assert!((before + 599_000..=unix_ms() + 600_000).contains(&expires), "{expires} vs {before}");
    assert_eq!(http::put(h, "/v1/kv/t", b"w").status, 200);
    let got = http::get(h, "/v1/kv/t");
    assert_eq!((got.body.as_slice(), got.header("x-kvd-expires-at")), (&b"w"[..], None), "a plain PUT clears the TTL");
    let short = http::request(h, "PUT", "/v1/kv/short", &[("x-kvd-ttl-seconds", "1")], b"v");
    assert_eq!(short.status, 200, "{}", short.text());
    let deadline = Instant::now() + Duration::from_secs(30);
    while http::get(h, "/v1/kv/short").status == 200 {
        assert!(Instant::now() < deadline, "a key with a 1 s TTL still reads after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    http::get(h, "/v1/kv/short").assert_error(404, "key_not_found");
    kvd.stop();
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn conditional_writes_create_compare_and_delete() {
    let (_dir, kvd) = start_small();
    let h = kvd.http_addr;
    let created = http::request(h, "PUT", "/v1/kv/c", &[("if-none-match", "*")], b"one");
    assert_eq!(created.status, 201, "{}", created.text());
    let v1 = version_of(&created);
    let again = http::request(h, "PUT", "/v1/kv/c", &[("if-none-match", "*")], b"two");
    assert_eq!(again.assert_error(409, "version_conflict")["current_version"], v1);

    // Compare-and-set by If-Match (quoted or bare) and by ?version=.
    let stale = http::request(h, "PUT", "/v1/kv/c", &[("if-match", &format!("\"{}\"", v1 + 100))], b"x");
    assert_eq!(stale.assert_error(409, "version_conflict")["current_version"], v1);
    let v2 = version_of(&http::request(h, "PUT", "/v1/kv/c", &[("if-match", &format!("\"{v1}\""))], b"two"));
    assert!(v2 > v1);
    http::request(h, "PUT", &format!("/v1/kv/c?version={v1}"), &[], b"x").assert_error(409, "version_conflict");
    let v3 = version_of(&http::request(h, "PUT", &format!("/v1/kv/c?version={v2}"), &[], b"three"));
    assert_eq!(http::get(h, "/v1/kv/c").body, b"three");

    // If-Match: * only updates; a CAS on an absent key reports no version.
    http::request(h, "PUT", "/v1/kv/absent", &[("if-match", "*")], b"x").assert_error(409, "version_conflict");
    let cas_absent = http::request(h, "PUT", "/v1/kv/absent?version=3", &[], b"x");
    assert!(cas_absent.assert_error(409, "version_conflict")["current_version"].is_null());
    let v4 = version_of(&http::request(h, "PUT", "/v1/kv/c", &[("if-match", "*")], b"four"));

    // Conditional delete.
    http::request(h, "DELETE", "/v1/kv/c", &[("if-match", &v3.to_string())], b"").assert_error(409, "version_conflict");
    let deleted = http::request(h, "DELETE", &format!("/v1/kv/c?version={v4}"), &[], b"");
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(deleted.json(), serde_json::json!({"deleted": true, "version": v4}));
    http::get(h, "/v1/kv/c").assert_error(404, "key_not_found");
    let unconditional = http::put(h, "/v1/kv/d", b"x");
    let dv = version_of(&unconditional);
    assert_eq!(http::request(h, "DELETE", "/v1/kv/d", &[], b"").json()["version"], dv);
    kvd.stop();
}

#[test]
fn binary_keys_and_values_are_shared_with_the_native_protocol() {
    let (_dir, kvd) = start_small();
    let h = kvd.http_addr;
    let key: Vec<u8> = (0..=255u8).step_by(3).collect();
    let value: Vec<u8> = (0..=255u8).rev().collect();
    assert_eq!(http::put(h, &format!("/v1/kv/{}", escape(&key)), &value).status, 200);
    let mut native = Client::connect(&[kvd.endpoint()], Duration::from_secs(10)).unwrap();
    assert_eq!(native.get(&key).unwrap().map(|(v, _)| v), Some(value.clone()));

    // Written natively, read over HTTP; unescaped bytes stand for themselves.
    let version = native.put(b"a/b c+d", b"\x00\xff", Condition::Always).unwrap();
    let got = http::get(h, "/v1/kv/a/b%20c+d");
    assert_eq!((got.status, got.body.as_slice()), (200, &b"\x00\xff"[..]));
    assert_eq!(got.header("x-kvd-version"), Some(version.to_string().as_str()));
    kvd.stop();
}

#[test]
fn node_routes_health_ready_and_cluster_status() {
    // Default limits: kvctl reads the status through a native frame, which
    // must have room for it.
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0"]);
    let h = kvd.http_addr;
    let health = http::get(h, "/health");
    assert_eq!((health.status, health.json()), (200, serde_json::json!({"status": "ok"})));
    let ready = http::get(h, "/ready");
    assert_eq!((ready.status, ready.json()), (200, serde_json::json!({"status": "ready"})));

    // The same shape `kvctl cluster status -o json` prints.
    let cluster = http::get(h, "/v1/cluster");
    assert_eq!(cluster.status, 200);
    let via_http = cluster.json();
    let via_kvctl: serde_json::Value =
        serde_json::from_str(&stdout(&kvctl(&kvd.endpoint(), &["-o", "json", "cluster", "status"], b""))).unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&via_http), keys(&via_kvctl));
    assert_eq!(via_http["node"], 1);
    let groups = |v: &serde_json::Value| -> Vec<u64> {
        let cores = v["cores"].as_array().unwrap();
        cores
            .iter()
            .flat_map(|c| c["groups"].as_array().unwrap().iter().map(|g| g["shard"].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(groups(&via_http), groups(&via_kvctl));
    assert!(!groups(&via_http).is_empty());
    assert_eq!(via_http["cores"][0]["replayed"], true);
    kvd.stop();
}

#[test]
fn a_password_guards_every_route_but_health() {
    let dir = data_dir();
    let secret = dir.path().join("password");
    std::fs::write(&secret, "s3cret-pass\n").unwrap();
    let kvd = Kvd::start(&dir.path().join("data"), &["--cores", "0", "--requirepass-file", path_str(&secret)]);
    let h = kvd.http_addr;
    assert_eq!(http::get(h, "/health").status, 200);
    for (method, path) in [
        ("GET", "/v1/kv/k"),
        ("PUT", "/v1/kv/k"),
        ("GET", "/metrics"),
        ("GET", "/ready"),
        ("GET", "/v1/cluster"),
        ("GET", "/nope"),
    ] {
        for auth in
            [None, Some("Bearer wrong"), Some("Basic czNjcmV0LXBhc3M="), Some("Bearer s3cret-pass2"), Some("Bearer")]
        {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
            let a = http::request(h, method, path, &headers, b"v");
            a.assert_error(401, "unauthorized");
            assert!(a.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{method} {path}");
        }
    }
    let ok = [("authorization", "Bearer s3cret-pass")];
    assert_eq!(http::request(h, "PUT", "/v1/kv/k", &ok, b"v").status, 200);
    assert_eq!(http::request(h, "GET", "/v1/kv/k", &[("authorization", "bearer s3cret-pass")], b"").body, b"v");
    assert_eq!(http::request(h, "GET", "/metrics", &ok, b"").status, 200);
    assert_eq!(http::request(h, "GET", "/ready", &ok, b"").status, 200);
    kvd.stop();
}

#[test]
fn curl_reads_and_writes() {
    let (dir, kvd) = start_small();
    let url = format!("http://{}/v1/kv/from%2Fcurl", kvd.http_addr);
    let file = dir.path().join("value.bin");
    std::fs::write(&file, b"\x00binary\xff").unwrap();
    let curl = |args: &[&str]| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["--silent", "--show-error", "--max-time", "60"]).args(args);
        crate::harness::run_bounded(cmd, b"")
    };
    let put = curl(&["-X", "PUT", "--data-binary", &format!("@{}", path_str(&file)), "-w", "\n%{http_code}", &url]);
    assert!(put.status.success(), "curl: {}", crate::harness::stderr(&put));
    assert!(stdout(&put).ends_with("\n200"), "{}", stdout(&put));
    let got = curl(&[&url]);
    assert_eq!(got.stdout, b"\x00binary\xff");
    let missing = curl(&["-w", "%{http_code}", "-o", "/dev/null", &format!("http://{}/v1/kv/none", kvd.http_addr)]);
    assert_eq!(stdout(&missing), "404");
    kvd.stop();
}

#[test]
fn connections_over_the_limit_get_503_and_a_stop_closes_idle_keep_alives() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0", "--max-connections", "1"]);
    // An idle keep-alive connection holds the only slot.
    let mut idle = TcpStream::connect(kvd.http_addr).unwrap();
    idle.set_read_timeout(Some(http::ANSWER_TIMEOUT)).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut first = Vec::new();
    let answer = loop {
        if let Some(a) = http::parse(&first, false) {
            break a;
        }
        let mut buf = [0u8; 1024];
        let n = std::io::Read::read(&mut idle, &mut buf).unwrap();
        assert!(n > 0, "closed before answering");
        first.extend_from_slice(&buf[..n]);
    };
    assert_eq!(answer.status, 200);
    let refused = http::get(kvd.http_addr, "/health");
    refused.assert_error(503, "too_many_connections");
    assert_eq!(refused.header("retry-after"), Some("1"));
    // A clean stop closes the idle connection.
    assert!(kvd.stop().success());
    assert!(http::read_to_close(&mut idle).is_empty(), "nothing more was sent on the idle connection");
}

#[test]
fn ready_turns_503_when_the_cluster_loses_its_quorum() {
    let mut c = Cluster::start(3, &[]);
    let survivor = c.node(1).http_addr;
    let ready = http::get(survivor, "/ready");
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(http::put(survivor, "/v1/kv/before", b"quorum").status, 200);
    assert!(c.stop(2));
    assert!(c.stop(3));
    // Every shard of the survivor loses its leader: the survivor's own
    // leaderships end within an election timeout (check-quorum).
    let shards = http::get(survivor, "/v1/cluster").json()["cores"][0]["groups"].as_array().unwrap().len();
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let answer = loop {
        let a = http::get(survivor, "/ready");
        let leaderless = if a.status == 503 { a.json()["leaderless_shards"].as_array().map_or(0, Vec::len) } else { 0 };
        if leaderless == shards || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let json = answer.assert_error(503, "not_ready");
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(json["leaderless_shards"].as_array().unwrap().len(), shards, "{json}");
    // Writes cannot commit: a retryable 503, not a hang.
    let write = http::put(survivor, "/v1/kv/after", b"no quorum");
    assert_eq!(write.status, 503, "{}", write.text());
    assert_eq!(write.header("retry-after"), Some("1"));
    assert_eq!(http::get(survivor, "/health").status, 200, "the process still serves");
    assert_eq!(http::get(survivor, "/v1/kv/before?consistency=stale").body, b"quorum");
}

#[test]
fn pipelined_requests_are_answered_in_order_and_large_values_round_trip() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0"]);
    let h = kvd.http_addr;
    let value: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    assert_eq!(http::put(h, "/v1/kv/large", &value).status, 200);
    assert!(http::get(h, "/v1/kv/large").body == value, "a 4 MiB value came back changed");

    assert_eq!(http::put(h, "/v1/kv/p", b"piped").status, 200);
    let two =
        "GET /v1/kv/p HTTP/1.1\r\nhost: x\r\n\r\nGET /v1/kv/absent HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let bytes = http::exchange(h, two.as_bytes());
    let first = http::parse(&bytes, false).expect("a first answer");
    assert_eq!((first.status, first.body.as_slice()), (200, &b"piped"[..]));
    let second_at = bytes.windows(9).rposition(|w| w == b"HTTP/1.1 ").expect("a second answer");
    assert!(second_at > 0);
    http::parse(&bytes[second_at..], false).expect("a second answer").assert_error(404, "key_not_found");
    kvd.stop();
}

#[test]
fn headers_that_never_finish_are_cut_off_while_others_are_served() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0"]);
    let mut slow = TcpStream::connect(kvd.http_addr).unwrap();
    slow.set_read_timeout(Some(http::ANSWER_TIMEOUT)).unwrap();
    slow.write_all(b"GET /v1/kv/k HTTP/1.1\r\nhost: x\r\nx-slow: ").unwrap();
    assert_eq!(http::get(kvd.http_addr, "/health").status, 200, "other clients are served meanwhile");
    // kv_net::http::HEADER_READ_TIMEOUT (30 s) is below the client's
    // answer timeout: the read below ends with the server closing, or the
    // test fails on that timeout.
    assert!(kv_net::http::HEADER_READ_TIMEOUT < http::ANSWER_TIMEOUT);
    let answer = http::read_to_close(&mut slow);
    assert!(!answer.starts_with(b"HTTP/1.1 2"), "{:?}", String::from_utf8_lossy(&answer));
    kvd.stop();
}
