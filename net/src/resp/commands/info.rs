//! INFO: the sections Redis tools read, with kvd's real numbers.
//!
//! - `role`: in proxy mode every node takes writes for every key, so every
//!   node is a `master`. In cluster mode a node is a `master` while it leads
//!   at least one shard, else a `slave` of the leader of its first shard.
//! - `db0:keys=`: the keys of the shards this node holds, each shard once
//!   (cluster mode: only the shards it leads, so that summing over the
//!   masters counts every key once). A follower's count may trail its
//!   leader's by a moment. `expires=` counts keys with a TTL alike.
//! - `used_memory`: what the allocator says the process holds (jemalloc's
//!   `stats.allocated`, what `--max-memory` compares with) where kvd runs
//!   with a limit, else the stored keys and values with their per-entry
//!   overhead; `used_memory_dataset` is always the latter, and
//!   `used_memory_rss` the process's resident memory.

use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::config::{appendfsync, data_dir};
use super::connection::REDIS_VERSION;
use super::{later, lower, Args, Exec};
use crate::resp::frame::Frame;
use crate::resp::session::Conn;
use crate::resp::topology::{self, NodeView};
use crate::resp::{exec, stats};
use crate::service::RespMode;

const SECTIONS: &[&str] =
    &["server", "clients", "memory", "persistence", "stats", "replication", "cpu", "cluster", "keyspace"];

pub fn info(conn: &Rc<Conn>, args: Args) -> Exec {
    let mut wanted: Vec<String> = args[1..].iter().map(|a| lower(a)).collect();
    if wanted.is_empty() || wanted.iter().any(|w| matches!(w.as_str(), "all" | "everything" | "default")) {
        wanted = SECTIONS.iter().map(|s| s.to_string()).collect();
    }
    let conn = conn.clone();
    later(async move {
        let view = match topology::node_view(&conn.svc).await {
            Ok(v) => v,
            Err(e) => return exec::core_error(e, false),
        };
        let mut text = String::new();
        for section in SECTIONS.iter().filter(|s| wanted.iter().any(|w| w == *s)) {
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            let title = format!("{}{}", section[..1].to_uppercase(), &section[1..]);
            let _ = write!(text, "# {}\r\n", if *section == "cpu" { "CPU".to_string() } else { title });
            for (key, value) in lines(&conn, section, &view) {
                let _ = write!(text, "{key}:{value}\r\n");
            }
        }
        Frame::Verbatim(text)
    })
}

fn lines(conn: &Conn, section: &str, view: &NodeView) -> Vec<(&'static str, String)> {
    match section {
        "server" => server(conn),
        "clients" => clients(conn),
        "memory" => memory(conn, view),
        "persistence" => persistence(conn, view),
        "stats" => stats_lines(conn),
        "replication" => replication(conn, view),
        "cpu" => cpu(),
        "cluster" => vec![("cluster_enabled", u8::from(conn.svc.frontend.resp_mode == RespMode::Cluster).to_string())],
        "keyspace" => {
            let leaders_only = super::server::leaders_only(conn);
            let (keys, expires) = (view.keys(leaders_only), view.expires(leaders_only));
            if keys == 0 {
                Vec::new()
            } else {
                vec![("db0", format!("keys={keys},expires={expires},avg_ttl=0"))]
            }
        }
        other => unreachable!("section {other} is listed"),
    }
}

fn server(conn: &Conn) -> Vec<(&'static str, String)> {
    let (started, _) = stats::started();
    let uptime = started.elapsed().as_secs();
    let now_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros();
    let mode = match conn.svc.frontend.resp_mode {
        RespMode::Proxy => "standalone",
        RespMode::Cluster => "cluster",
    };
    let port = topology::split_host_port(&conn.svc.endpoints.resp).map_or(0, |(_, p)| p);
    vec![
        ("redis_version", REDIS_VERSION.to_string()),
        ("redis_git_sha1", "00000000".into()),
        ("redis_git_dirty", "0".into()),
        ("redis_mode", mode.into()),
        ("kvd_version", env!("CARGO_PKG_VERSION").into()),
        ("kvd_node_id", conn.svc.layout.node_id.to_string()),
        ("os", std::env::consts::OS.into()),
        ("arch_bits", (usize::BITS).to_string()),
        ("multiplexing_api", "io_uring".into()),
        ("process_id", std::process::id().to_string()),
        ("run_id", run_id(conn)),
        ("tcp_port", port.to_string()),
        ("server_time_usec", now_us.to_string()),
        ("uptime_in_seconds", uptime.to_string()),
        ("uptime_in_days", (uptime / 86_400).to_string()),
        ("io_threads_active", "0".into()),
        ("kvd_cores", conn.svc.layout.cores.to_string()),
    ]
}

/// 40 hex digits, new for every start of the process (as Redis's run id).
fn run_id(conn: &Conn) -> String {
    let (_, wall) = stats::started();
    let nanos = wall.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    let seed = nanos as u64 ^ conn.svc.layout.node_id.rotate_left(32) ^ std::process::id() as u64;
    topology::node_name(seed)
}

fn clients(conn: &Conn) -> Vec<(&'static str, String)> {
    vec![
        ("connected_clients", stats::totals().clients.to_string()),
        ("cluster_connections", "0".into()),
        ("maxclients", conn.svc.limits.connections_max.to_string()),
        ("blocked_clients", "0".into()),
        ("tracking_clients", "0".into()),
    ]
}

fn memory(conn: &Conn, view: &NodeView) -> Vec<(&'static str, String)> {
    let dataset = view.bytes();
    let memory = &conn.svc.memory;
    let used = if memory.limit.is_some() { memory.used() } else { dataset };
    let rss = resident_bytes();
    let max = memory.limit.unwrap_or(0);
    vec![
        ("used_memory", used.to_string()),
        ("used_memory_human", human(used)),
        ("used_memory_rss", rss.to_string()),
        ("used_memory_rss_human", human(rss)),
        ("used_memory_dataset", dataset.to_string()),
        ("maxmemory", max.to_string()),
        ("maxmemory_human", human(max)),
        ("maxmemory_policy", memory.policy.name().into()),
        ("mem_allocator", "jemalloc".into()),
    ]
}

fn persistence(conn: &Conn, view: &NodeView) -> Vec<(&'static str, String)> {
    let (_, started) = stats::started();
    let aof = conn.svc.owner.core.config().persistence.is_some();
    let write_status = if view.poisoned.is_some() { "err" } else { "ok" };
    vec![
        ("loading", "0".into()),
        ("async_loading", "0".into()),
        ("rdb_changes_since_last_save", "0".into()),
        ("rdb_bgsave_in_progress", "0".into()),
        ("rdb_last_save_time", started.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs().to_string()),
        ("rdb_last_bgsave_status", "ok".into()),
        ("aof_enabled", u8::from(aof).to_string()),
        ("aof_rewrite_in_progress", "0".into()),
        ("aof_last_write_status", write_status.into()),
        ("kvd_fsync", appendfsync(conn)),
        ("kvd_data_dir", data_dir(conn)),
    ]
}

fn stats_lines(conn: &Conn) -> Vec<(&'static str, String)> {
    let t = stats::totals();
    vec![
        ("total_connections_received", t.connections_total.to_string()),
        ("total_commands_processed", t.commands_total.to_string()),
        ("instantaneous_ops_per_sec", "0".into()),
        ("total_net_input_bytes", t.net_input_bytes.to_string()),
        ("total_net_output_bytes", t.net_output_bytes.to_string()),
        ("rejected_connections", t.rejected_connections.to_string()),
        ("expired_keys", "0".into()),
        ("evicted_keys", conn.svc.memory.evicted().to_string()),
        ("keyspace_hits", t.keyspace_hits.to_string()),
        ("keyspace_misses", t.keyspace_misses.to_string()),
        ("total_error_replies", t.error_replies.to_string()),
    ]
}

fn replication(conn: &Conn, view: &NodeView) -> Vec<(&'static str, String)> {
    let svc = &conn.svc;
    let led = view.shards_led();
    let mut lines = Vec::new();
    let master_of = view.groups.iter().find_map(|g| g.leader.filter(|l| *l != svc.layout.node_id));
    match (svc.frontend.resp_mode, led, master_of) {
        (RespMode::Cluster, 0, Some(leader)) => {
            let (host, port) = topology::resp_endpoint(svc, leader).unwrap_or_default();
            lines.push(("role", "slave".to_string()));
            lines.push(("master_host", host));
            lines.push(("master_port", port.to_string()));
            lines.push(("master_link_status", "up".into()));
        }
        _ => lines.push(("role", "master".to_string())),
    }
    lines.push(("connected_slaves", "0".into()));
    lines.push(("kvd_shards_held", view.groups.len().to_string()));
    lines.push(("kvd_shards_led", led.to_string()));
    lines.push(("kvd_replicas_per_shard", svc.layout.replicas.to_string()));
    lines.push(("master_repl_offset", "0".into()));
    lines
}

fn cpu() -> Vec<(&'static str, String)> {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| format!("{}.{:06}", t.tv_sec, t.tv_usec);
    vec![("used_cpu_sys", secs(usage.ru_stime)), ("used_cpu_user", secs(usage.ru_utime))]
}

/// Resident memory from /proc (0 where there is none).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    pages * page
}

/// Redis's human-readable sizes: `512B`, `1.50K`, `3.00M`, ...
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0B");
        assert_eq!(human(1023), "1023B");
        assert_eq!(human(1536), "1.50K");
        assert_eq!(human(3 * 1024 * 1024), "3.00M");
    }
}
