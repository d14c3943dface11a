//! CONFIG GET / SET / RESETSTAT over the Redis parameters that have a
//! meaning for kvd, answered from kvd's real settings.
//!
//! kvd takes its settings from flags, environment and its TOML file, once
//! at start; none can change while it runs. CONFIG SET therefore accepts a
//! parameter set to the value it already has (so set-up scripts that pin
//! e.g. `save ""` pass) and otherwise answers an error that names the flag.
//! `requirepass` reads as empty: the password is never sent back.

use std::rc::Rc;

use kv_engine::wal::FsyncPolicy;

use super::{now, Args, Exec};
use crate::keyspace::glob_match;
use crate::resp::frame::{Frame, OK};
use crate::resp::session::Conn;
use crate::resp::{stats, topology};
use crate::service::RespMode;

/// A parameter: its Redis name, the kvd flag that sets it (if any), and
/// how to read its value.
struct Param {
    name: &'static str,
    flag: Option<&'static str>,
    value: fn(&Conn) -> String,
}

const PARAMS: &[Param] = &[
    Param { name: "save", flag: None, value: |_| String::new() },
    Param {
        name: "appendonly",
        flag: Some("--persistence"),
        value: |c| yes_no(c.svc.owner.core.config().persistence.is_some()),
    },
    Param { name: "appendfsync", flag: Some("--fsync"), value: appendfsync },
    Param { name: "dir", flag: Some("--data-dir"), value: data_dir },
    Param { name: "maxmemory", flag: Some("--max-memory"), value: |c| c.svc.memory.limit.unwrap_or(0).to_string() },
    Param {
        name: "maxmemory-policy",
        flag: Some("--eviction-policy"),
        value: |c| c.svc.memory.policy.name().to_string(),
    },
    Param { name: "maxmemory-samples", flag: None, value: |_| kv_engine::evict::EVICTION_SAMPLES.to_string() },
    Param { name: "databases", flag: None, value: |_| "1".into() },
    Param { name: "port", flag: Some("--resp-listen"), value: |c| resp_addr(c).1 },
    Param { name: "bind", flag: Some("--resp-listen"), value: |c| resp_addr(c).0 },
    Param { name: "requirepass", flag: Some("--requirepass-file"), value: |_| String::new() },
    Param { name: "maxclients", flag: Some("--max-connections"), value: |c| c.svc.limits.connections_max.to_string() },
    Param {
        name: "proto-max-bulk-len",
        flag: Some("--max-frame-bytes"),
        value: |c| c.caps().bulk_bytes_max.to_string(),
    },
    Param { name: "client-query-buffer-limit", flag: None, value: |c| c.caps().command_bytes_max.to_string() },
    Param {
        name: "cluster-enabled",
        flag: Some("--resp-mode"),
        value: |c| yes_no(c.svc.frontend.resp_mode == RespMode::Cluster),
    },
    Param { name: "timeout", flag: None, value: |_| "0".into() },
    Param { name: "tcp-keepalive", flag: None, value: |_| "0".into() },
    Param { name: "protected-mode", flag: None, value: |_| "no".into() },
    Param { name: "hz", flag: None, value: |_| "10".into() },
    Param { name: "io-threads", flag: Some("--cores"), value: |c| c.svc.layout.cores.to_string() },
];

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn resp_addr(conn: &Conn) -> (String, String) {
    topology::split_host_port(&conn.svc.endpoints.resp).map(|(h, p)| (h, p.to_string())).unwrap_or_default()
}

/// The fsync policy in Redis's words: `always`, `everysec` (any interval),
/// `no`; empty without persistence.
pub fn appendfsync(conn: &Conn) -> String {
    match conn.svc.owner.core.config().persistence.as_ref().map(|p| p.fsync) {
        Some(FsyncPolicy::Always) => "always".into(),
        Some(FsyncPolicy::Interval(_)) => "everysec".into(),
        Some(FsyncPolicy::Never) => "no".into(),
        None => String::new(),
    }
}

/// The data directory (each core keeps `core-<n>` in it); empty in memory.
pub fn data_dir(conn: &Conn) -> String {
    let persistence = conn.svc.owner.core.config().persistence.as_ref();
    persistence.and_then(|p| p.dir.parent()).map(|d| d.display().to_string()).unwrap_or_default()
}

pub fn get(conn: &Rc<Conn>, args: Args) -> Exec {
    let mut pairs = Vec::new();
    for param in PARAMS {
        if args[2..].iter().any(|pattern| glob_match(&pattern.to_ascii_lowercase(), param.name.as_bytes())) {
            pairs.push((Frame::bulk(param.name), Frame::bulk((param.value)(conn))));
        }
    }
    now(Frame::Map(pairs))
}

pub fn set(conn: &Rc<Conn>, args: Args) -> Exec {
    if !args.len().is_multiple_of(2) {
        return now(Frame::error("ERR wrong number of arguments for 'config|set' command"));
    }
    for pair in args[2..].chunks(2) {
        let name = String::from_utf8_lossy(&pair[0]).to_ascii_lowercase();
        let Some(param) = PARAMS.iter().find(|p| p.name == name) else {
            return now(Frame::error(format!("ERR Unknown option or number of arguments for CONFIG SET - '{name}'")));
        };
        let current = (param.value)(conn);
        let wanted = String::from_utf8_lossy(&pair[1]);
        if param.name != "requirepass" && wanted.eq_ignore_ascii_case(&current) {
            continue;
        }
        let how = match param.flag {
            Some(flag) => format!("set it with {flag} and restart"),
            None => "kvd has no such setting".into(),
        };
        return now(Frame::error(format!("ERR CONFIG SET '{name}' cannot change while kvd runs: {how}")));
    }
    now(OK)
}

pub fn resetstat(_: &Rc<Conn>, _: Args) -> Exec {
    stats::reset();
    now(OK)
}

pub fn rewrite(_: &Rc<Conn>, _: Args) -> Exec {
    now(Frame::error("ERR kvd has no config file to rewrite: its settings come from flags, environment and --config"))
}
