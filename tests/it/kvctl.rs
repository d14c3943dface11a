//! kvctl against a real kvd: every command, output format and exit code;
//! and kvd's configuration precedence (flags > env > file > defaults).

use crate::harness::{self, data_dir, kvctl, path_str, stderr, stdout, Kvd};

fn code(out: &std::process::Output) -> i32 {
    out.status.code().expect("exited, not signalled")
}

#[test]
fn commands_outputs_and_exit_codes() {
    let dir = data_dir();
    let kvd = Kvd::start(dir.path(), &["--max-value-bytes", "1000"]);
    let ep = kvd.endpoint();

    // put from an argument prints the version; get prints the exact bytes.
    let put = kvctl(&ep, &["put", "greeting", "hello"], b"");
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    let v1: u64 = stdout(&put).trim().parse().expect("put prints a version");
    let get = kvctl(&ep, &["get", "greeting"], b"");
    assert_eq!((code(&get), get.stdout.as_slice()), (0, &b"hello"[..]));

    // Value from stdin, binary-safe.
    let binary: Vec<u8> = (0..=255u8).collect();
    assert_eq!(code(&kvctl(&ep, &["put", "bin"], &binary)), 0);
    assert_eq!(kvctl(&ep, &["get", "bin"], b"").stdout, binary);
    let json = stdout(&kvctl(&ep, &["-o", "json", "get", "bin"], b""));
    assert!(json.contains("\"value_base64\""), "{json}");

    // Value from a file.
    let file = dir.path().join("value.txt");
    std::fs::write(&file, b"from a file").unwrap();
    assert_eq!(code(&kvctl(&ep, &["put", "f", "--file", path_str(&file)], b"")), 0);
    assert_eq!(kvctl(&ep, &["get", "f"], b"").stdout, b"from a file");

    // JSON and table output carry the version.
    let json: serde_json::Value =
        serde_json::from_slice(&kvctl(&ep, &["-o", "json", "get", "greeting"], b"").stdout).unwrap();
    assert_eq!(json["value"], "hello");
    assert_eq!(json["version"], v1);
    let table = stdout(&kvctl(&ep, &["-o", "table", "get", "greeting"], b""));
    assert!(table.starts_with("KEY") && table.contains(&format!("greeting  {v1}")), "{table}");

    // Not found: 1.
    let missing = kvctl(&ep, &["get", "missing"], b"");
    assert_eq!(code(&missing), 1);
    assert!(stderr(&missing).contains("not found"));
    assert_eq!(code(&kvctl(&ep, &["update", "missing", "x"], b"")), 1);
    assert_eq!(code(&kvctl(&ep, &["delete", "missing"], b"")), 1);
    assert_eq!(code(&kvctl(&ep, &["cas", "missing", "x", "--version", "1"], b"")), 1);

    // Conditions: update, put --if-absent, cas, delete --version.
    let upd = kvctl(&ep, &["update", "greeting", "hi"], b"");
    assert_eq!(code(&upd), 0);
    let v2: u64 = stdout(&upd).trim().parse().unwrap();
    assert!(v2 > v1);
    let absent = kvctl(&ep, &["put", "greeting", "x", "--if-absent"], b"");
    assert_eq!(code(&absent), 5, "{}", stderr(&absent));
    assert!(stderr(&absent).contains(&format!("version {v2}")));
    assert_eq!(code(&kvctl(&ep, &["cas", "greeting", "x", "--version", &v1.to_string()], b"")), 5);
    let cas = kvctl(&ep, &["cas", "greeting", "swapped", "--version", &v2.to_string()], b"");
    assert_eq!(code(&cas), 0, "{}", stderr(&cas));
    let v3: u64 = stdout(&cas).trim().parse().unwrap();
    assert_eq!(kvctl(&ep, &["get", "greeting"], b"").stdout, b"swapped");
    assert_eq!(code(&kvctl(&ep, &["delete", "greeting", "--version", &v2.to_string()], b"")), 5);
    let del = kvctl(&ep, &["delete", "greeting", "--version", &v3.to_string()], b"");
    assert_eq!((code(&del), stdout(&del).trim()), (0, v3.to_string().as_str()));
    assert_eq!(code(&kvctl(&ep, &["get", "greeting"], b"")), 1);

    // Server error: 3 (value over the server's limit), and data unchanged.
    let big = vec![b'x'; 1001];
    let too_big = kvctl(&ep, &["put", "f"], &big);
    assert_eq!(code(&too_big), 3, "{}", stderr(&too_big));
    assert!(stderr(&too_big).contains("VALUE_TOO_LARGE"), "{}", stderr(&too_big));
    assert_eq!(kvctl(&ep, &["get", "f"], b"").stdout, b"from a file");

    // Usage errors: 2.
    assert_eq!(code(&kvctl(&ep, &["put", "k", "v", "--file", "/dev/null"], b"")), 2);
    assert_eq!(code(&kvctl(&ep, &["frobnicate"], b"")), 2);
    assert_eq!(code(&kvctl(&ep, &["cas", "k", "v"], b"")), 2, "cas needs --version");

    // ping, and the endpoints variable.
    let ping = kvctl(&ep, &["ping"], b"");
    assert_eq!((code(&ping), stdout(&ping).trim()), (0, "PONG"));
    let mut cmd = std::process::Command::new(harness::kvctl_bin());
    cmd.args(["get", "f"]).env("KVCTL_ENDPOINTS", format!("127.0.0.1:1,{ep}"));
    let via_env = harness::run_bounded(cmd, b"");
    assert_eq!((code(&via_env), via_env.stdout.as_slice()), (0, &b"from a file"[..]));
    kvd.stop();
}

#[test]
fn connection_failure_exits_4_and_help_lists_exit_codes() {
    // Nothing listens on port 1 of this loopback address.
    let out = kvctl("127.0.0.1:1", &["ping"], b"");
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("could not connect"));
    let help = harness::run_bounded(
        {
            let mut c = std::process::Command::new(harness::kvctl_bin());
            c.arg("--help");
            c
        },
        b"",
    );
    let text = stdout(&help);
    for needle in ["Exit codes", "1  key not found", "4  connection failure"] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    let version = harness::run_kvd(&["--version"], &[]);
    assert!(stdout(&version).starts_with("kvd "), "{}", stdout(&version));
}

#[test]
fn config_precedence_is_flags_then_env_then_file_then_defaults() {
    let dir = data_dir();
    let file = dir.path().join("kvd.toml");
    std::fs::write(&file, "listen = \"127.0.0.3:1003\"\nfsync = \"never\"\nmax_key_bytes = 100\n").unwrap();
    let cfg = path_str(&file);
    let listen_of = |out: &std::process::Output| -> String {
        let text = stdout(out);
        assert!(out.status.success(), "{text}{}", stderr(out));
        let value: toml::Value = toml::from_str(&text).expect("print-config is TOML");
        value["listen"].as_str().unwrap().to_string()
    };
    let env = [("KVD_LISTEN", "127.0.0.2:1002")];
    let all = harness::run_kvd(&["--config", cfg, "--listen", "127.0.0.1:1001", "--print-config"], &env);
    assert_eq!(listen_of(&all), "127.0.0.1:1001", "flag beats env and file");
    let env_file = harness::run_kvd(&["--config", cfg, "--print-config"], &env);
    assert_eq!(listen_of(&env_file), "127.0.0.2:1002", "env beats file");
    let file_only = harness::run_kvd(&["--config", cfg, "--print-config"], &[]);
    assert_eq!(listen_of(&file_only), "127.0.0.3:1003", "file beats default");
    assert!(stdout(&file_only).contains("fsync = \"never\"") && stdout(&file_only).contains("max_key_bytes = 100"));
    let defaults = harness::run_kvd(&["--print-config"], &[]);
    assert_eq!(listen_of(&defaults), "127.0.0.1:7379");
    // The config file can also come from the environment.
    let via_env = harness::run_kvd(&["--print-config"], &[("KVD_CONFIG", cfg)]);
    assert_eq!(listen_of(&via_env), "127.0.0.3:1003");
    // A profile lies under the file; every line says where it came from.
    let profile = dir.path().join("p.toml");
    std::fs::write(&profile, "fsync = \"interval:5\"\nio_ring_depth = 64\n").unwrap();
    let out = harness::run_kvd(&["--config", cfg, "--profile", path_str(&profile), "--print-config"], &env);
    let text = stdout(&out);
    let line = |key: &str| text.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or_default().to_string();
    assert!(line("io_ring_depth").ends_with(&format!("# profile {}", path_str(&profile))), "{text}");
    assert!(line("fsync").contains("\"never\"") && line("fsync").ends_with(&format!("# config file {cfg}")), "{text}");
    assert!(line("listen").ends_with("# environment") && line("data_dir").ends_with("# default"), "{text}");
}

#[test]
fn a_bad_profile_stops_kvd_naming_the_file_and_the_key() {
    let dir = data_dir();
    let profile = dir.path().join("bad.toml");
    for (text, needle) in [
        ("listen = \"0.0.0.0:1\"\n", "`listen` is not a tuning setting"),
        ("io_ring_deep = 64\n", "unknown key `io_ring_deep`"),
        ("preempt_timer_us = 5\n", "preempt_timer_us: 5 is not between"),
    ] {
        std::fs::write(&profile, text).unwrap();
        let out = harness::run_kvd(&["--profile", path_str(&profile), "--print-config"], &[]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = stderr(&out);
        assert!(err.contains(path_str(&profile)) && err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn kvd_serves_under_every_shipped_profile() {
    let tuning = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning");
    for name in ["small-vm", "latency", "throughput"] {
        let dir = data_dir();
        let profile = tuning.join(format!("{name}.toml"));
        // One core, and an unpinned run too: the profile's other keys hold.
        let kvd = Kvd::start(dir.path(), &["--profile", path_str(&profile), "--cores", "0", "--placement", "unpinned"]);
        let out = harness::kvctl(&kvd.endpoint(), &["put", "k", name], b"");
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(stdout(&harness::kvctl(&kvd.endpoint(), &["get", "k"], b"")).trim(), name);
        assert!(kvd.stop().success(), "{name}: a clean stop");
    }
}

/// With `--requirepass-file`, native clients must AUTH first; a wrong
/// password is refused and the data stays untouched.
#[test]
fn native_protocol_requires_the_password() {
    let dir = data_dir();
    let secret = dir.path().join("password");
    std::fs::write(&secret, "open sesame\n").unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "open barley").unwrap();
    let kvd = Kvd::start(&dir.path().join("data"), &["--requirepass-file", secret.to_str().unwrap()]);
    let ep = kvd.endpoint();
    let denied = kvctl(&ep, &["put", "k", "v"], b"");
    assert_eq!(denied.status.code(), Some(3), "{}", stderr(&denied));
    assert!(stderr(&denied).contains("UNAUTHENTICATED"), "{}", stderr(&denied));
    let bad = kvctl(&ep, &["--password-file", wrong.to_str().unwrap(), "put", "k", "v"], b"");
    assert_eq!(bad.status.code(), Some(3), "{}", stderr(&bad));
    let ok = kvctl(&ep, &["--password-file", secret.to_str().unwrap(), "put", "k", "v"], b"");
    assert!(ok.status.success(), "{}", stderr(&ok));
    let got = kvctl(&ep, &["--password-file", secret.to_str().unwrap(), "get", "k"], b"");
    assert_eq!(stdout(&got), "v");
    // PING works before authentication (health checks); a large frame does not.
    let mut c = kv_net::client::Client::connect(std::slice::from_ref(&ep), std::time::Duration::from_secs(10)).unwrap();
    c.ping().unwrap();
    let big = vec![b'x'; 100 * 1024];
    assert!(c.put(b"big", &big, kv_engine::Condition::Always).is_err());
    assert!(kvd.stop().success());
}
