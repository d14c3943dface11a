//! Seeded garbage into the HTTP port: random bytes, and requests with
//! broken request lines, headers, lengths, chunking and escapes, mutated at
//! random. None of it may crash kvd or change what it stores. The inputs
//! never carry a well-formed write (no `PUT`/`DELETE` request line), so any
//! change to the data would be a bug.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::{data_dir, seed, Kvd};
use crate::http_client::{self as http, escape};

const INPUTS: usize = 400;
const KEYS: usize = 20;

/// Request shapes to mutate: every part of a request done wrong somewhere.
const TEMPLATES: &[&[u8]] = &[
    b"GET /v1/kv/k0 HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET /v1/kv/k1?consistency=strict HTTP/1.1\r\nhost: x\r\n\r\n",
    b"HEAD /v1/kv/k2 HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\nGET /ready HTTP/1.1\r\n\r\n",
    b"GET /v1/cluster HTTP/1.0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n",
    b"CONNECT k0:80 HTTP/1.1\r\n\r\n",
    b"GET /v1/kv/%zz%0 HTTP/1.1\r\n\r\n",
    b"GET /v1/kv/k0 HTTP/9.9\r\n\r\n",
    b"GET /v1/kv/k0\r\n\r\n",
    b"GET  /v1/kv/k0  HTTP/1.1\r\n\r\n",
    b"GET /v1/kv/k0 HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /v1/kv/k0 HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello",
    b"GET /v1/kv/k0 HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
    b"GET /v1/kv/k0 HTTP/1.1\r\ncontent-length: 99999999999999999999999\r\n\r\n",
    b"GET /v1/kv/k0 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nxx\r\n",
    b"GET /v1/kv/k0 HTTP/1.1\r\ntransfer-encoding: chunked, identity\r\ncontent-length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /v1/kv/k0 HTTP/1.1\r\nif-match: \"\r\nif-none-match: *\r\n\r\n",
    b"GET /v1/kv/k0 HTTP/1.1\r\nauthorization: Bearer \0\xff\r\n\r\n",
    b"GET /v1/kv/k0 HTTP/1.1\r\nx-kvd-ttl-seconds: 1e9\r\nexpect: 100-continue\r\n\r\n",
    b"GET /v1/kv/k0?version=1&version=2&ttl=&& HTTP/1.1\r\n\r\n",
    b"\r\n\r\n\r\n",
    b"GET /v1/kv/k0 HTTP/1.1\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n",
];

/// Whether `bytes` could hold a write: a line that starts with a write
/// method (HTTP methods are case-sensitive), at the start or after any
/// newline (pipelined requests).
fn looks_like_a_write(bytes: &[u8]) -> bool {
    let line_starts = (0..bytes.len()).filter(|&i| i == 0 || bytes[i - 1] == b'\n');
    let methods: [&[u8]; 4] = [b"PUT", b"DELETE", b"POST", b"PATCH"];
    line_starts.into_iter().any(|i| methods.iter().any(|m| bytes[i..].starts_with(m)))
}

fn mutate(rng: &mut StdRng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.gen_range(0..6) {
        let at = rng.gen_range(0..=bytes.len());
        match rng.gen_range(0..5) {
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.gen_range(0..8),
            1 => bytes.insert(at, rng.gen()),
            2 if at < bytes.len() => {
                bytes.remove(at);
            }
            3 => bytes.truncate(at),
            // A long run of one byte: oversized headers and lines.
            _ => {
                let run = vec![rng.gen::<u8>(); rng.gen_range(1..300_000)];
                bytes.splice(at..at, run);
            }
        }
    }
    bytes
}

fn input(rng: &mut StdRng) -> Vec<u8> {
    loop {
        let bytes = if rng.gen_bool(0.3) {
            (0..rng.gen_range(1..4096)).map(|_| rng.gen()).collect()
        } else {
            let template = TEMPLATES[rng.gen_range(0..TEMPLATES.len())];
            mutate(rng, template.to_vec())
        };
        if !looks_like_a_write(&bytes) {
            return bytes;
        }
    }
}

/// Sends `bytes`, ends the sending side, and reads until the server
/// closes; returns the status of the first answer, if any came.
fn send(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).expect("kvd accepts");
    s.set_read_timeout(Some(http::ANSWER_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(http::ANSWER_TIMEOUT)).unwrap();
    // The server may close before taking everything (a refused request).
    if s.write_all(bytes).is_ok() {
        let _ = s.shutdown(Shutdown::Write);
    }
    let answer = http::read_to_close(&mut s);
    let status_line = answer.strip_prefix(b"HTTP/1.1 ")?;
    std::str::from_utf8(status_line.get(..3)?).ok()?.parse().ok()
}

fn snapshot(addr: SocketAddr) -> Vec<(u16, Vec<u8>, Option<String>)> {
    (0..KEYS)
        .map(|i| {
            let a = http::get(addr, &format!("/v1/kv/k{i}"));
            (a.status, a.body.clone(), a.header("x-kvd-version").map(str::to_string))
        })
        .collect()
}

fn total_keys(addr: SocketAddr) -> u64 {
    let status = http::get(addr, "/v1/cluster").json();
    let cores = status["cores"].as_array().unwrap();
    cores.iter().flat_map(|c| c["groups"].as_array().unwrap()).map(|g| g["keys"].as_u64().unwrap()).sum()
}

#[test]
fn garbage_into_the_http_port_neither_crashes_kvd_nor_changes_data() {
    let seed = seed("http fuzz");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = data_dir();
    let mut kvd = Kvd::start(dir.path(), &["--cores", "0"]);
    let h = kvd.http_addr;
    for i in 0..KEYS {
        let value: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
        assert_eq!(http::put(h, &format!("/v1/kv/{}", escape(format!("k{i}").as_bytes())), &value).status, 200);
    }
    let before = snapshot(h);
    let mut statuses = std::collections::BTreeMap::<Option<u16>, usize>::new();
    for n in 0..INPUTS {
        let bytes = input(&mut rng);
        *statuses.entry(send(h, &bytes)).or_default() += 1;
        assert!(
            !kvd.exited(),
            "kvd died on input {n} (seed {seed}): {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        );
    }
    println!("answers by status: {statuses:?}");
    let refused: usize = statuses.iter().filter(|(s, _)| s.is_some_and(|s| s >= 400)).map(|(_, n)| n).sum();
    assert!(refused >= INPUTS / 4, "most garbage should get an error answer: {statuses:?}");
    assert_eq!(http::get(h, "/health").status, 200, "seed {seed}");
    assert_eq!(snapshot(h), before, "stored data changed (seed {seed})");
    assert_eq!(total_keys(h), KEYS as u64, "keys appeared or vanished (seed {seed})");
    assert!(kvd.stop().success(), "seed {seed}");
}
