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
    // Startup takes exactly one flush on one core (the groups' bootstrap
    // entries, terms and votes; their commit index rides the next flush);
    // every fdatasync after that fails.
    cmd.env("FAILPOINTS", "wal::fdatasync=1*off->return");
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
    assert!(kvd.wait_for_log("poisoned"), "{}", kvd.log());
    let out = harness::kvctl(&kvd.endpoint(), &["put", "x", "y"], b"");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let _ = path_str(dir.path());
    kvd.kill();
}

#[test]
fn connection_limit_refuses_the_extra_client_with_a_clear_error() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--cores", "0", "--max-connections", "2"]);
    let first = connect(&kvd);
    let second = connect(&kvd);
    let err = Client::connect(&[kvd.endpoint()], Duration::from_secs(10)).err().expect("third is refused");
    assert!(err.to_string().contains("too many connections"), "{err}");
    drop(first);
    // The slot frees up once a client leaves (bounded wait for the server to notice).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut again = Client::connect(&[kvd.endpoint()], Duration::from_secs(10));
    while again.is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        again = Client::connect(&[kvd.endpoint()], Duration::from_secs(10));
    }
    again.expect("a freed slot is reusable").ping().unwrap();
    drop(second);
    assert!(kvd.stop().success());
}

#[test]
fn deep_pipelines_beyond_the_depth_limit_are_all_answered() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--max-pipeline-depth", "4"]);
    let mut c = connect(&kvd);
    let n = 2000u64;
    let mut ids = std::collections::HashMap::new();
    for i in 0..n {
        let req = kv_net::native::codec::Request::Put {
            key: format!("p{i}").into(),
            value: format!("v{i}").into(),
            condition: Condition::Always,
        };
        ids.insert(c.send(&req), i);
    }
    for _ in 0..n {
        let (id, resp) = c.recv().unwrap();
        assert!(matches!(resp, kv_net::native::codec::Response::Written { .. }), "{resp:?}");
        assert!(ids.remove(&id).is_some(), "answer for unknown or repeated id {id}");
    }
    assert_eq!(c.get(b"p1999").unwrap().unwrap().0, b"v1999");
    assert!(kvd.stop().success());
}

#[test]
fn sigterm_answers_requests_in_flight_and_keeps_what_it_acknowledged() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &[]);
    let mut c = connect(&kvd);
    let n = 3000u64;
    for i in 0..n {
        let req = kv_net::native::codec::Request::Put {
            key: format!("t{i}").into(),
            value: format!("v{i}").into(),
            condition: Condition::Always,
        };
        c.send(&req);
    }
    c.flush().unwrap();
    kvd.signal(libc::SIGTERM);
    // Answers for everything the server read; then it closes the connection.
    let mut acked = Vec::new();
    while let Ok((id, resp)) = c.recv() {
        match resp {
            kv_net::native::codec::Response::Written { version } => acked.push((id - 1, version)),
            kv_net::native::codec::Response::Error { status: Status::ShuttingDown, .. } => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let status = kvd.stop_after_signal();
    assert!(status.success(), "{status:?}");
    assert!(!acked.is_empty(), "nothing was answered before the stop");
    let kvd = Kvd::start(dir.path(), &[]);
    let mut c = connect(&kvd);
    for (i, version) in &acked {
        assert_eq!(c.get(format!("t{i}").as_bytes()).unwrap(), Some((format!("v{i}").into_bytes(), *version)));
    }
    println!("{} of {n} pipelined writes were answered before the stop", acked.len());
    assert!(kvd.stop().success());
}

/// WAL segments of core 0, oldest first (not the spare segment).
fn segments(data: &std::path::Path) -> Vec<std::path::PathBuf> {
    let files = std::fs::read_dir(data.join("core-0/wal")).unwrap().map(|e| e.unwrap().path());
    let mut s: Vec<_> = files.filter(|p| p.extension().is_some_and(|e| e == "wal")).collect();
    s.sort();
    s
}

#[test]
fn kvd_truncates_a_torn_tail_and_refuses_a_damaged_wal() {
    let dir = data_dir();
    // Values stored as they are (not compressed): they fill segments.
    let flags = ["--cores", "0", "--wal-segment-bytes", "65536", "--compress-min-bytes", "0"];
    let kvd = Kvd::start(dir.path(), &flags);
    let mut c = connect(&kvd);
    let value = vec![b'v'; 3000];
    for i in 0..100 {
        c.put(format!("k{i}").as_bytes(), &value, Condition::Always).unwrap();
    }
    drop(c);
    kvd.kill();
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");

    // Garbage after the last record of the newest segment: a torn write.
    let last = segs.last().unwrap();
    let data = std::fs::read(last).unwrap();
    let end = data.iter().rposition(|&b| b != 0).unwrap() + 1;
    let file = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0x5A; 100], end as u64 + 64).unwrap();
    drop(file);
    let kvd = Kvd::start(dir.path(), &flags);
    let log = kvd.log();
    assert!(log.contains("torn write") && log.contains(last.to_str().unwrap()), "{log}");
    let mut c = connect(&kvd);
    assert_eq!(c.get(b"k99").unwrap().unwrap().0, value, "acknowledged data survives the repair");
    drop(c);
    assert!(kvd.stop().success());

    // A flipped bit in an older segment: refuse, naming file and offset.
    let first = &segments(dir.path())[0];
    let file = std::fs::OpenOptions::new().read(true).write(true).open(first).unwrap();
    let mut b = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut b, 5000).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[b[0] ^ 0x01], 5000).unwrap();
    drop(file);
    let out = harness::run_bounded(kvd_command(dir.path(), &flags), b"");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("WAL corrupt") && err.contains(first.to_str().unwrap()) && err.contains("offset"), "{err}");
    assert!(err.contains("Restore"), "says what to do: {err}");
}
