//! Settings: parsing, precedence, validation errors that name the setting.

use super::*;
use std::collections::BTreeMap;

#[test]
fn fsync_policies() {
    assert_eq!(parse_fsync("always"), Ok(FsyncPolicy::Always));
    assert_eq!(parse_fsync("never"), Ok(FsyncPolicy::Never));
    assert_eq!(parse_fsync("interval:5"), Ok(FsyncPolicy::Interval(Duration::from_millis(5))));
    for bad in ["sometimes", "interval:", "interval:0", "interval:x", "interval:600000"] {
        assert!(parse_fsync(bad).is_err(), "{bad}");
    }
}

#[test]
fn core_lists() {
    assert_eq!(parse_cores("0").unwrap(), vec![0]);
    assert!(!parse_cores("all").unwrap().is_empty());
    assert!(parse_cores("0-0,0").unwrap() == vec![0]);
    for bad in ["", "x", "3-1", "99999", "0,,1"] {
        assert!(parse_cores(bad).is_err(), "{bad}");
    }
}

#[test]
fn file_values_fill_only_what_flags_left_unset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kvd.toml");
    std::fs::write(&path, "listen = \"127.0.0.2:1\"\nfsync = \"never\"\n").unwrap();
    let cli = Options::try_parse_from(["kvd", "--config", path.to_str().unwrap(), "--fsync", "always"]).unwrap();
    let s = Settings::from_options(cli.resolve().unwrap()).unwrap();
    assert_eq!(s.listen, "127.0.0.2:1".parse().unwrap());
    assert_eq!(s.fsync, FsyncPolicy::Always);
    std::fs::write(&path, "listen_typo = 1\n").unwrap();
    let cli = Options::try_parse_from(["kvd", "--config", path.to_str().unwrap()]).unwrap();
    assert!(cli.resolve().unwrap_err().contains("listen_typo"));
}

#[test]
fn the_example_file_lists_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning/kvd.toml");
    let from_file = Settings::from_options(Options::from_file(&path).unwrap()).unwrap();
    let defaults = Settings::from_options(Options::default()).unwrap();
    assert_eq!(from_file.to_toml(), defaults.to_toml());
}

#[test]
fn cluster_settings() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123\n").unwrap();
    let peers = "1=127.0.0.1:7480,2=127.0.0.1:7490,3=127.0.0.1:7500";
    let ok = cluster_options(peers, &secret);
    let c = Settings::from_options(ok).unwrap().cluster.expect("a cluster");
    assert_eq!((c.peers.len(), c.replication_factor, c.peer_listen.port()), (3, 3, 7480));
    assert_eq!(c.secret.len(), 20, "trailing newline trimmed");
    assert_eq!(c.join, None);
    let joining = Options { join: Some("127.0.0.1:7490".into()), ..cluster_options(peers, &secret) };
    let c = Settings::from_options(joining).unwrap().cluster.expect("a cluster");
    assert_eq!(c.join, Some("127.0.0.1:7490".parse().unwrap()));
    assert_eq!(c.snapshot_bytes_per_sec, 64 << 20, "the default");
    let paced = Options { snapshot_send_rate: Some("10mb".into()), ..cluster_options(peers, &secret) };
    assert_eq!(Settings::from_options(paced).unwrap().cluster.unwrap().snapshot_bytes_per_sec, 10 << 20);
    let bad = [
        (
            vec!["--peers", peers, "--cluster-secret-file", secret.to_str().unwrap(), "--snapshot-send-rate", "fast"],
            "snapshot_send_rate",
        ),
        (
            vec!["--peers", peers, "--cluster-secret-file", secret.to_str().unwrap(), "--snapshot-send-rate", "256kb"],
            "slowest rate",
        ),
        (vec!["--peers", peers], "secret"),
        (vec!["--peers", "2=127.0.0.1:7490"], "not in the list"),
        (vec!["--peers", "1=nowhere"], "ID=IP:PORT"),
        (
            vec!["--peers", peers, "--cluster-secret-file", secret.to_str().unwrap(), "--replication-factor", "4"],
            "replication_factor",
        ),
        (
            vec!["--peers", peers, "--cluster-secret-file", secret.to_str().unwrap(), "--persistence", "none"],
            "persistence",
        ),
        (vec!["--join", "127.0.0.1:7490"], "give --peers"),
        (
            vec!["--peers", peers, "--cluster-secret-file", secret.to_str().unwrap(), "--join", "127.0.0.1:7510"],
            "not the peer address",
        ),
        (
            vec!["--peers", peers, "--cluster-secret-file", secret.to_str().unwrap(), "--join", "127.0.0.1:7480"],
            "own peer address",
        ),
        (vec!["--peers", peers, "--cluster-secret-file", secret.to_str().unwrap(), "--join", "nowhere"], "IP:PORT"),
        (
            vec![
                "--peers",
                peers,
                "--cluster-secret-file",
                secret.to_str().unwrap(),
                "--replication-factor",
                "2",
                "--join",
                "127.0.0.1:7490",
            ],
            "3 replicas or more",
        ),
    ];
    for (args, needle) in bad {
        let cli = Options::try_parse_from(["kvd", "--cores", "0"].into_iter().chain(args.iter().copied())).unwrap();
        let err = Settings::from_options(cli).unwrap_err();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    std::fs::write(&secret, "short").unwrap();
    let cli = cluster_options(peers, &secret);
    assert!(Settings::from_options(cli).unwrap_err().contains("at least 16"));
}

#[test]
fn every_setting_can_come_from_the_file() {
    // Each key the file accepts must survive the merge: a key missing
    // from `fill!` would be parsed and then silently ignored.
    let dir = tempfile::tempdir().unwrap();
    let text = "data_dir = \"/d\"\nlisten = \"127.0.0.9:1\"\ncores = \"0\"\nfsync = \"never\"\n\
                persistence = \"wal\"\nnode_id = 2\nlog_level = \"warn\"\nlog_format = \"json\"\n\
                shards_per_core = 3\nmax_key_bytes = 10\nmax_value_bytes = 20\nmax_frame_bytes = 999\n\
                max_pipeline_depth = 7\nmax_connections = 8\nwal_segment_bytes = 1048576\n\
                snapshot_wal_bytes = 5\nio_memory_bytes = 6\nraft_log_retain_entries = 9\n\
                peers = \"2=127.0.0.1:7480\"\npeer_listen = \"127.0.0.1:7480\"\nreplication_factor = 1\n\
                cluster_secret_file = \"/s\"\nmax_memory = \"1gb\"\neviction_policy = \"allkeys-lru\"\n\
                compress_min_bytes = 4096\n";
    let path = dir.path().join("all.toml");
    std::fs::write(&path, text).unwrap();
    let file: toml::Value = toml::from_str(text).unwrap();
    let merged = Options { config: Some(path), ..Options::default() }.resolve().unwrap();
    let merged: toml::Value = toml::from_str(&toml::to_string(&merged).unwrap()).unwrap();
    for (key, value) in file.as_table().unwrap() {
        assert_eq!(merged.get(key), Some(value), "{key} was dropped by the merge");
    }
}

#[test]
fn errors_name_the_setting() {
    let bad = [
        (vec!["--listen", "nowhere"], "listen"),
        (vec!["--persistence", "disk"], "persistence"),
        (vec!["--max-value-bytes", "999999999999"], "hard limit"),
        (vec!["--log-format", "xml"], "log_format"),
        (vec!["--node-id", "0"], "node_id"),
        (vec!["--wal-segment-bytes", "10"], "wal_segment_bytes"),
        (vec!["--max-memory", "lots"], "max_memory"),
        (vec!["--eviction-policy", "lru"], "eviction_policy"),
    ];
    for (args, needle) in bad {
        let cli = Options::try_parse_from(std::iter::once("kvd").chain(args.iter().copied())).unwrap();
        let err = Settings::from_options(cli).unwrap_err();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

fn profile_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("profile.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_profile_lies_under_the_file_and_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let profile = profile_file(dir.path(), "fsync = \"never\"\nio_ring_depth = 256\nmax_pipeline_depth = 9\n");
    let file = dir.path().join("kvd.toml");
    std::fs::write(&file, format!("profile = {:?}\nmax_pipeline_depth = 10\n", profile.to_str().unwrap())).unwrap();
    let cli = Options::try_parse_from(["kvd", "--config", file.to_str().unwrap(), "--io-ring-depth", "64"]).unwrap();
    let mut flags = BTreeMap::new();
    flags.insert("io_ring_depth".to_string(), layers::Source::Flag);
    let layered = layers::merge(cli, flags).unwrap();
    let s = Settings::from_options(layered.options.clone()).unwrap();
    assert_eq!(s.fsync, FsyncPolicy::Never, "from the profile");
    assert_eq!(s.limits.pipeline_depth_max, 10, "the file over the profile");
    assert_eq!(s.executor.io_ring_depth, 64, "the flag over both");
    let text = s.describe(&layered.sources);
    let line = |key: &str| text.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap().to_string();
    assert!(line("fsync").ends_with(&format!("# profile {}", profile.display())), "{text}");
    assert!(line("max_pipeline_depth").ends_with(&format!("# config file {}", file.display())), "{text}");
    assert!(line("io_ring_depth").ends_with("# flag"), "{text}");
    assert!(line("data_dir").ends_with("# default"), "{text}");
}

#[test]
fn a_profile_refuses_what_is_not_tuning_with_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("listen = \"0.0.0.0:1\"\n", "`listen` is not a tuning setting"),
        ("spin_before_park = 3\n", "unknown key `spin_before_park`"),
        ("io_ring_depth = \"deep\"\n", "io_ring_depth"),
    ];
    for (text, needle) in cases {
        let profile = profile_file(dir.path(), text);
        let cli = Options { profile: Some(profile.clone()), ..Options::default() };
        let err = layers::merge(cli, BTreeMap::new()).unwrap_err();
        assert!(err.contains(&profile.display().to_string()) && err.contains(needle), "{text}: {err}");
    }
    // Parses, but out of range: validation names the key, annotated with the file.
    let profile = profile_file(dir.path(), "io_ring_depth = 1\n");
    let layered =
        layers::merge(Options { profile: Some(profile.clone()), ..Options::default() }, BTreeMap::new()).unwrap();
    let err = layers::annotate(Settings::from_options(layered.options).unwrap_err(), &layered.sources);
    assert!(err.starts_with(&format!("profile {}: io_ring_depth:", profile.display())), "{err}");
}

#[test]
fn the_shipped_profiles_are_valid_and_small_vm_is_the_default() {
    let tuning = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning");
    for name in ["small-vm", "latency", "throughput"] {
        let profile = tuning.join(format!("{name}.toml"));
        let layered = layers::merge(Options { profile: Some(profile), ..Options::default() }, BTreeMap::new())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut s = Settings::from_options(layered.options).unwrap_or_else(|e| panic!("{name}: {e}"));
        s.effective.profile = None;
        if name == "small-vm" {
            assert_eq!(s.to_toml(), Settings::from_options(Options::default()).unwrap().to_toml());
        }
    }
}

/// `kvd --cores 0 --peers PEERS --cluster-secret-file SECRET`.
fn cluster_options(peers: &str, secret: &std::path::Path) -> Options {
    Options::try_parse_from([
        "kvd",
        "--cores",
        "0",
        "--peers",
        peers,
        "--cluster-secret-file",
        secret.to_str().unwrap(),
    ])
    .unwrap()
}
