//! Starting and stopping kvd: bad flags, occupied ports, unusable or locked
//! data directories, clean shutdown, fsync policies, in-memory mode, and a
//! WAL poisoned by a failed fsync.

use std::time::Duration;

use kv_engine::Condition;
use kv_net::client::{Client, ClientError};
use kv_net::native::codec::Status;

use crate::harness::{self, data_dir, kvd_command, path_str, stderr, Kvd};

fn connect(kvd: &Kvd) -> Client {
    Client::connect(&[kvd.endpoint()], Duration::from_secs(10)).expect("connects")
}

#[test]
fn bad_flags_and_bad_values_exit_with_a_message() {
    let out = harness::run_kvd(&["--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = harness::run_kvd(&["--fsync", "sometimes"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("fsync"), "{}", stderr(&out));
    let out = harness::run_kvd(&["--cores", "0-4096"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not online"), "{}", stderr(&out));
}

#[test]
fn occupied_port_and_unusable_or_locked_data_dir_are_refused() {
    let dir = data_dir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut cmd = kvd_command(dir.path(), &["--listen", &addr]);
    cmd.stderr(std::process::Stdio::piped());
    let out = harness::run_bounded(cmd, b"");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot listen on"), "{}", stderr(&out));

    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = harness::run_bounded(kvd_command(&file, &[]), b"");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unusable"), "{}", stderr(&out));

    let first = Kvd::start(dir.path(), &[]);
    let out = harness::run_bounded(kvd_command(dir.path(), &[]), b"");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("in use by another kvd"), "{}", stderr(&out));
    first.stop();
}

#[test]
fn a_data_dir_refuses_a_different_core_count() {
    let dir = data_dir();
    Kvd::start(dir.path(), &["--cores", "0"]).stop();
    let out = harness::run_bounded(kvd_command(dir.path(), &["--cores", "0,1"]), b"");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("created with 1 cores"), "{}", stderr(&out));
}

#[test]
fn sigterm_stops_cleanly_and_never_policy_data_survives_it() {
    for fsync in ["always", "never", "interval:5"] {
        let dir = data_dir();
        let kvd = Kvd::start(dir.path(), &["--fsync", fsync]);
        let mut c = connect(&kvd);
        let mut versions = Vec::new();
        for i in 0..100 {
            versions.push(c.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes(), Condition::Always).unwrap());
        }
        drop(c);
        let log = kvd.log();
        let status = kvd.stop();
        assert!(status.success(), "{fsync}: exit {status:?}\n{log}");
        let kvd = Kvd::start(dir.path(), &["--fsync", fsync]);
        let mut c = connect(&kvd);
        for (i, version) in versions.into_iter().enumerate() {
            let got = c.get(format!("k{i}").as_bytes()).unwrap();
            assert_eq!(got, Some((format!("v{i}").into_bytes(), version)), "{fsync}: key k{i}");
        }
        assert!(kvd.stop().success());
    }
}

#[test]
fn in_memory_mode_keeps_no_files() {
    let dir = data_dir();
    let data = dir.path().join("data");
    let kvd = Kvd::start(&data, &["--persistence", "none"]);
    let mut c = connect(&kvd);
    c.put(b"k", b"v", Condition::Always).unwrap();
    assert_eq!(c.get(b"k").unwrap().unwrap().0, b"v");
    assert!(kvd.stop().success());
    assert!(!data.exists(), "persistence none created {}", data.display());
}

#[test]
fn a_failed_fsync_poisons_the_wal_and_the_server_says_why() {
    let dir = data_dir();
    let mut cmd = kvd_command(dir.path(), &["--cores", "0"]);
    // Startup takes exactly two flushes on one core (the groups' bootstrap
    // entries, then their commit); every fdatasync after that fails.
    cmd.env("FAILPOINTS", "wal::fdatasync=2*off->return");
    let kvd = Kvd::start_command(cmd).expect("starts");
    let mut c = connect(&kvd);
    let err = c.put(b"k", b"v", Condition::Always).unwrap_err();
    match &err {
        ClientError::Server { status: Status::Unavailable, message } => {
            assert!(message.contains("injected fault"), "{message}")
        }
        other => panic!("expected UNAVAILABLE, got {other}"),
    }
    // Reads still work; later writes are refused with the reason.
    assert_eq!(c.get(b"k").unwrap(), None);
    let again = c.put(b"other", b"v", Condition::Always).unwrap_err();
    assert!(again.to_string().contains("poisoned"), "{again}");
    assert!(kvd.log().contains("poisoned"), "{}", kvd.log());
    let out = harness::kvctl(&kvd.endpoint(), &["put", "x", "y"], b"");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let _ = path_str(dir.path());
    kvd.kill();
}
