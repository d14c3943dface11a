//! `--requirepass-file`: NOAUTH before AUTH, WRONGPASS for a wrong password,
//! OK after; HELLO with AUTH; Redis's size caps before authentication.

use super::{cli_ok, encode, Raw, Reply};
use crate::harness::{data_dir, Kvd};

const PASSWORD: &str = "correct horse battery staple";

fn start() -> (tempfile::TempDir, Kvd) {
    let dir = data_dir();
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let kvd = Kvd::start(&dir.path().join("data"), &["--cores", "0", "--requirepass-file", file.to_str().unwrap()]);
    (dir, kvd)
}

fn error(text: &str) -> Reply {
    Reply::Error(text.into())
}

#[test]
fn commands_need_auth_and_wrong_passwords_are_refused() {
    let (_dir, kvd) = start();
    let mut c = Raw::connect(kvd.resp_addr);
    let noauth = error("NOAUTH Authentication required.");
    assert_eq!(c.cmd(&["GET", "k"]), noauth);
    assert_eq!(c.cmd(&["PING"]), noauth);
    assert_eq!(c.cmd(&["CLUSTER", "SLOTS"]), noauth);
    // Unknown commands and arity are checked first, as in Redis.
    assert!(c.cmd(&["NOSUCH"]).text().starts_with("ERR unknown command"));
    let wrongpass = error("WRONGPASS invalid username-password pair or user is disabled.");
    assert_eq!(c.cmd(&["AUTH", "guess"]), wrongpass);
    assert_eq!(c.cmd(&["AUTH", "someone", PASSWORD]), wrongpass);
    assert_eq!(c.cmd(&["AUTH", "default", "guess"]), wrongpass);
    assert!(c.cmd(&["HELLO", "3"]).text().starts_with("NOAUTH HELLO must be called"));
    assert_eq!(c.cmd(&["SET", "k", "v"]), noauth);
    assert_eq!(c.cmd(&["AUTH", PASSWORD]), Reply::ok());
    assert_eq!(c.cmd(&["SET", "k", "v"]), Reply::ok());
    assert_eq!(c.cmd(&["GET", "k"]), Reply::bulk("v"));
    // RESET forgets the authentication.
    assert_eq!(c.cmd(&["RESET"]), Reply::Simple("RESET".into()));
    assert_eq!(c.cmd(&["GET", "k"]), noauth);
    assert_eq!(c.cmd(&["AUTH", "default", PASSWORD]), Reply::ok());
    assert_eq!(c.cmd(&["GET", "k"]), Reply::bulk("v"));

    // HELLO AUTH authenticates and switches protocol in one step.
    let mut h = Raw::connect(kvd.resp_addr);
    assert_eq!(h.cmd(&["HELLO", "3", "AUTH", "default", "nope"]), wrongpass);
    let Reply::Map(fields) = h.cmd(&["HELLO", "3", "AUTH", "default", PASSWORD, "SETNAME", "tester"]) else {
        panic!("HELLO 3 answers a map")
    };
    assert!(fields.contains(&(Reply::bulk("proto"), Reply::Int(3))), "{fields:?}");
    assert_eq!(h.cmd(&["CLIENT", "GETNAME"]), Reply::bulk("tester"));
    assert_eq!(h.cmd(&["GET", "missing"]), Reply::Nil);

    // redis-cli with -a.
    let out = cli_ok(kvd.resp_addr, &["--no-auth-warning", "-a", PASSWORD, "GET", "k"]);
    assert_eq!(out, "v");
    assert_eq!(cli_ok(kvd.resp_addr, &["GET", "k"]), "NOAUTH Authentication required.");
    assert!(kvd.stop().success());
}

#[test]
fn size_caps_before_authentication() {
    let (_dir, kvd) = start();
    let mut c = Raw::connect(kvd.resp_addr);
    c.send(b"*11\r\n");
    assert_eq!(c.read().unwrap(), error("ERR Protocol error: unauthenticated multibulk length"));
    assert!(c.closed_by_server());

    let mut c = Raw::connect(kvd.resp_addr);
    c.send(b"*2\r\n$3\r\nGET\r\n$16385\r\n");
    assert_eq!(c.read().unwrap(), error("ERR Protocol error: unauthenticated bulk length"));
    assert!(c.closed_by_server());

    // At the caps, a command is read (and refused for want of AUTH); after
    // AUTH, in the same pipeline, large values are fine.
    let mut c = Raw::connect(kvd.resp_addr);
    let big = vec![b'x'; 100_000];
    let mut pipeline = encode(&[b"GET", &[b'k'; 16384]]);
    pipeline.extend_from_slice(&encode(&[b"AUTH", PASSWORD.as_bytes()]));
    pipeline.extend_from_slice(&encode(&[b"SET", b"big", &big]));
    pipeline
        .extend_from_slice(&encode(&[b"MGET", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9", b"10", b"big"]));
    c.send(&pipeline);
    assert_eq!(c.read().unwrap(), error("NOAUTH Authentication required."));
    assert_eq!(c.read().unwrap(), Reply::ok());
    assert_eq!(c.read().unwrap(), Reply::ok());
    let Reply::Array(values) = c.read().unwrap() else { panic!("MGET answers an array") };
    assert_eq!(values.len(), 11);
    assert_eq!(values[10], Reply::Bulk(big));
    assert!(kvd.stop().success());
}
