//! Garbage into the RESP port: seeded random bytes, truncated and mangled
//! frames, protocol errors and HTTP requests never crash kvd and never
//! change stored data; protocol errors and HTTP close the connection.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::{encode, Raw, Reply, IO_TIMEOUT};
use crate::harness::{data_dir, seed, Kvd};

const KNOWN_KEYS: usize = 200;

fn known(i: usize) -> (String, String) {
    (format!("known:{i}"), format!("value {i} \r\n\0 binary"))
}

/// One connection's worth of bad input.
fn garbage(rng: &mut impl Rng) -> Vec<u8> {
    let valid = || {
        let mut v = encode(&[b"GET", b"known:1"]);
        v.extend_from_slice(&encode(&[b"SET", b"fuzz:key", b"fuzz value"]));
        v.extend_from_slice(b"PING\r\n");
        v
    };
    match rng.gen_range(0..5) {
        0 => {
            let mut b = vec![0; rng.gen_range(1..4096)];
            rng.fill_bytes(&mut b);
            b
        }
        1 => {
            let v = valid();
            v[..rng.gen_range(0..v.len())].to_vec()
        }
        2 => {
            let mut v = valid();
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.gen();
            }
            v
        }
        3 => {
            let pieces: [&[u8]; 10] =
                [b"*", b"$", b"\r\n", b"-1", b"99999999999", b"3", b"GET", b"\"", b"*2\r\n$3\r\nSET\r\n", b"\n"];
            (0..rng.gen_range(1..60)).flat_map(|_| pieces[rng.gen_range(0..pieces.len())].to_vec()).collect()
        }
        _ => {
            // A huge announced length with little data behind it.
            format!("*2\r\n$3\r\nSET\r\n${}\r\nabc", rng.gen_range(1_000_000..400_000_000)).into_bytes()
        }
    }
}

#[test]
fn garbage_never_crashes_kvd_nor_changes_data() {
    let seed = seed("resp bad input");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = data_dir();
    let mut kvd = Kvd::start(dir.path(), &["--cores", "0,1"]);
    let mut c = Raw::connect(kvd.resp_addr);
    for i in 0..KNOWN_KEYS {
        let (k, v) = known(i);
        assert_eq!(c.cmd(&["SET", &k, &v]), Reply::ok());
    }
    for round in 0..300 {
        let bytes = garbage(&mut rng);
        let stream = TcpStream::connect_timeout(&kvd.resp_addr, IO_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut w = stream.try_clone().unwrap();
        // The server may close first (a protocol error): a failed write is fine.
        let _ = w.write_all(&bytes);
        if round % 2 == 0 {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &stream, &mut sink);
        assert!(!kvd.exited(), "kvd died after input {round} (seed {seed}): {bytes:?}\n{}", kvd.log());
    }
    for i in 0..KNOWN_KEYS {
        let (k, v) = known(i);
        assert_eq!(c.cmd(&["GET", &k]), Reply::bulk(&v), "{k} (seed {seed})");
    }
    assert_eq!(c.cmd(&["PING"]), Reply::Simple("PONG".into()));
    assert!(kvd.stop().success());
}

#[test]
fn protocol_errors_and_http_requests_close_the_connection() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0"]);
    let cases: &[(&[u8], Option<&str>)] = &[
        (b"*1\r\n$x\r\n", Some("ERR Protocol error: invalid bulk length")),
        (b"*a\r\n", Some("ERR Protocol error: invalid multibulk length")),
        (b"*1\r\n:1\r\n", Some("ERR Protocol error: expected '$', got ':'")),
        (b"SET \"unbalanced\r\n", Some("ERR Protocol error: unbalanced quotes in request")),
        (b"POST / HTTP/1.1\r\nHost: example\r\n\r\n", None),
    ];
    for (input, reply) in cases {
        let mut c = Raw::connect(kvd.resp_addr);
        assert_eq!(c.cmd(&["PING"]), Reply::Simple("PONG".into()));
        c.send(input);
        if let Some(reply) = reply {
            assert_eq!(c.read().unwrap(), Reply::Error(reply.to_string()));
        }
        assert!(c.closed_by_server(), "{:?} left the connection open", String::from_utf8_lossy(input));
    }
    // `GET / HTTP/1.1` is a valid (wrong) inline command; the Host line
    // after it gives the request away.
    let mut c = Raw::connect(kvd.resp_addr);
    c.send(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n");
    assert_eq!(c.read().unwrap(), Reply::Error("ERR wrong number of arguments for 'get' command".into()));
    assert!(c.closed_by_server());
    assert!(kvd.wait_for_log("HTTP request on the RESP port"), "{}", kvd.log());
    // An inline GET of one key is still fine.
    let mut c = Raw::connect(kvd.resp_addr);
    c.send(b"SET k v\r\nGET k\r\n");
    assert_eq!(c.read().unwrap(), Reply::ok());
    assert_eq!(c.read().unwrap(), Reply::bulk("v"));
    assert!(kvd.stop().success());
}

#[test]
fn oversized_keys_and_values_are_refused_and_the_connection_stays_open() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0", "--max-key-bytes", "1024", "--max-value-bytes", "65536"]);
    let mut c = Raw::connect(kvd.resp_addr);
    let big_value = "v".repeat(65_537);
    let big_key = "k".repeat(1025);
    let refused = |r: Reply| match r {
        Reply::Error(e) if e.starts_with("ERR ") => e,
        other => panic!("expected an error, got {other:?}"),
    };
    assert!(refused(c.cmd(&["SET", "k", &big_value])).contains("exceeds maximum allowed size"));
    assert!(refused(c.cmd(&["SET", &big_key, "v"])).contains("key of 1025 bytes exceeds the limit of 1024 bytes"));
    refused(c.cmd(&["GET", &big_key]));
    // Checked before anything is written.
    refused(c.cmd(&["MSET", "ok", "v", "k", &big_value]));
    assert_eq!(c.cmd(&["MGET", "ok", "k"]), Reply::Array(vec![Reply::Nil, Reply::Nil]));
    assert_eq!(c.cmd(&["SET", "k", &"v".repeat(65_536)]), Reply::ok());
    assert_eq!(c.cmd(&["STRLEN", "k"]), Reply::Int(65_536));
    // A bulk string longer than any frame cannot be a command: the stream
    // is given up.
    c.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$999999999\r\n");
    assert_eq!(c.read().unwrap(), Reply::Error("ERR Protocol error: invalid bulk length".into()));
    assert!(c.closed_by_server());
    assert_eq!(Raw::connect(kvd.resp_addr).cmd(&["STRLEN", "k"]), Reply::Int(65_536));
    assert!(kvd.stop().success());
}
