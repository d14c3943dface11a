//! kvd configuration: every setting can come from a flag, an environment
//! variable, the TOML file or a tuning profile, in that order of
//! precedence, else a default (see `layers.rs`).
//!
//! | flag | environment | file key |
//! |---|---|---|
//! | `--data-dir` | `KVD_DATA_DIR` | `data_dir` |
//! | `--listen` | `KVD_LISTEN` | `listen` |
//! | … one row per setting, named the same way | | |
//!
//! Everything is validated once, at startup, into [`Settings`]; errors say
//! which setting is wrong and what would be accepted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use kv_engine::wal::segment::{SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MIN};
use kv_engine::wal::FsyncPolicy;
use kv_net::limits::Limits;
use kv_net::service::RespMode;
use kv_replication::layout::SHARDS_PER_CORE_DEFAULT;
use kv_replication::SNAPSHOT_WAL_BYTES_DEFAULT;
use serde::{Deserialize, Serialize};

pub const LISTEN_DEFAULT: &str = "127.0.0.1:7379";
/// RESP beside the native port, and beside (not on) Redis's 6379.
pub const RESP_LISTEN_DEFAULT: &str = "127.0.0.1:6380";
pub const HTTP_LISTEN_DEFAULT: &str = "127.0.0.1:7380";
/// Longest password accepted from `--requirepass-file`.
const PASSWORD_BYTES_MAX: usize = 4096;
pub const DATA_DIR_DEFAULT: &str = "./data";
/// glommio's registered io memory per core. Small, because `ulimit -l` is
/// often 8 MiB; larger writes fall back to ordinary allocations.
pub const IO_MEMORY_BYTES_DEFAULT: usize = 1024 * 1024;
/// glommio's defaults for ring depth and preemption.
pub const IO_RING_DEPTH_DEFAULT: usize = 128;
pub const PREEMPT_TIMER_US_DEFAULT: u64 = 100_000;
/// Requests get glommio's full default shares; background work a quarter.
pub const REQUEST_SHARES_DEFAULT: usize = 1000;
pub const BACKGROUND_SHARES_DEFAULT: usize = 250;
/// glommio's bounds on a task queue's shares.
const SHARES_RANGE: std::ops::RangeInclusive<usize> = 1..=1000;
const FSYNC_INTERVAL_MS_MAX: u64 = 60_000;

/// Flags (and their environment variables); the same fields, by the same
/// names in snake_case, make up the TOML file.
#[derive(Debug, Clone, Default, Parser, Serialize, Deserialize)]
#[command(
    name = "kvd",
    version,
    about = "kvd: a thread-per-core, Raft-replicated key-value store",
    after_help = "Precedence: flags > environment (KVD_*) > config file (--config) > tuning profile \
                  (--profile) > defaults.\n`kvd --print-config` shows the settings a start would use and \
                  where each came from."
)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "KVD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective settings as TOML, with where each came from, and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
    /// Tuning profile (TOML, e.g. tuning/latency.toml), under the config file and flags.
    #[arg(long, env = "KVD_PROFILE")]
    pub profile: Option<PathBuf>,

    /// Directory for WALs, snapshots and the layout file [default: ./data].
    #[arg(long, env = "KVD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Native protocol address, HOST:PORT (port 0 picks one) [default: 127.0.0.1:7379].
    #[arg(long, env = "KVD_LISTEN")]
    pub listen: Option<String>,
    /// RESP (Redis protocol) address, HOST:PORT [default: 127.0.0.1:6380].
    #[arg(long, env = "KVD_RESP_LISTEN")]
    pub resp_listen: Option<String>,
    /// HTTP/JSON and /metrics address, HOST:PORT [default: 127.0.0.1:7380].
    #[arg(long, env = "KVD_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// RESP routing: proxy (forward to the leader) | cluster (answer -MOVED) [default: proxy].
    #[arg(long, env = "KVD_RESP_MODE")]
    pub resp_mode: Option<String>,
    /// File holding the password clients must give (RESP AUTH, HTTP bearer, native hello) [default: none].
    #[arg(long, env = "KVD_REQUIREPASS_FILE")]
    pub requirepass_file: Option<PathBuf>,
    /// CPUs that run shards, e.g. `0,1` or `0-3` [default: every online CPU].
    #[arg(long, env = "KVD_CORES")]
    pub cores: Option<String>,
    /// When the WAL is fsynced: always | interval:<ms> | never [default: always].
    #[arg(long, env = "KVD_FSYNC")]
    pub fsync: Option<String>,
    /// wal (durable) | none (in-memory cache, no files) [default: wal].
    #[arg(long, env = "KVD_PERSISTENCE")]
    pub persistence: Option<String>,
    /// This node's id (≥ 1) [default: 1].
    #[arg(long, env = "KVD_NODE_ID")]
    pub node_id: Option<u64>,
    /// Log filter: error | warn | info | debug | trace, or directives [default: info].
    #[arg(long, env = "KVD_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format: plain | json [default: plain].
    #[arg(long, env = "KVD_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Shards per core when a data directory is created [default: 8].
    #[arg(long, env = "KVD_SHARDS_PER_CORE")]
    pub shards_per_core: Option<u32>,
    /// Largest key in bytes [default: 65536].
    #[arg(long, env = "KVD_MAX_KEY_BYTES")]
    pub max_key_bytes: Option<usize>,
    /// Largest value in bytes, at most 536870912 [default: 16777216].
    #[arg(long, env = "KVD_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Largest protocol frame in bytes [default: fits the largest key and value].
    #[arg(long, env = "KVD_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Requests in flight per connection [default: 1024].
    #[arg(long, env = "KVD_MAX_PIPELINE_DEPTH")]
    pub max_pipeline_depth: Option<usize>,
    /// Client connections per node [default: 10000].
    #[arg(long, env = "KVD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// WAL segment file size in bytes [default: 67108864].
    #[arg(long, env = "KVD_WAL_SEGMENT_BYTES")]
    pub wal_segment_bytes: Option<u64>,
    /// WAL bytes written between snapshots of a core's shards [default: 268435456].
    #[arg(long, env = "KVD_SNAPSHOT_WAL_BYTES")]
    pub snapshot_wal_bytes: Option<u64>,
    /// Record bytes one WAL write + fdatasync carries at most; 0: everything waiting [default: 0].
    #[arg(long, env = "KVD_WAL_BATCH_BYTES_MAX")]
    pub wal_batch_bytes_max: Option<u64>,
    /// io_uring buffer memory per core in bytes [default: 1048576].
    #[arg(long, env = "KVD_IO_MEMORY_BYTES")]
    pub io_memory_bytes: Option<usize>,
    /// Applied Raft entries each shard keeps in memory for lagging followers [default: 4096].
    #[arg(long, env = "KVD_RAFT_LOG_RETAIN_ENTRIES")]
    pub raft_log_retain_entries: Option<u64>,
    /// Every node of the cluster with its peer address (this node's too):
    /// `1=HOST:PORT,2=HOST:PORT,...`. Core c of a node uses PORT + c. Empty: a single node.
    #[arg(long, env = "KVD_PEERS")]
    pub peers: Option<String>,
    /// Where this node's peer listener binds [default: its entry in --peers].
    #[arg(long, env = "KVD_PEER_LISTEN")]
    pub peer_listen: Option<String>,
    /// Starts this node on a new data directory in a running cluster, through
    /// a member's peer address (one listed in --peers). A node whose data
    /// directory was lost is started this way, under its old id and flags:
    /// the members remove its lost replicas, then add it back and fill it
    /// from their snapshots. Ignored once the directory exists.
    #[arg(long, env = "KVD_JOIN")]
    pub join: Option<String>,
    /// Replicas per shard, at most the number of nodes [default: min(3, nodes)].
    #[arg(long, env = "KVD_REPLICATION_FACTOR")]
    pub replication_factor: Option<u32>,
    /// File holding the secret every node of the cluster shares (at least 16 bytes).
    #[arg(long, env = "KVD_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Snapshot bytes per second each core streams to peers filling a replica, in bytes
    /// or with a unit (`64mb`); 0: no limit [default: 64mb].
    #[arg(long, env = "KVD_SNAPSHOT_SEND_RATE")]
    pub snapshot_send_rate: Option<String>,
    /// Memory the node may hold, in bytes or with a unit (`4gb`, `512mb`); 0: no limit [default: 0].
    #[arg(long, env = "KVD_MAX_MEMORY")]
    pub max_memory: Option<String>,
    /// What to do past --max-memory: noeviction | allkeys-lru | allkeys-lfu | volatile-lru |
    /// volatile-lfu | volatile-ttl | allkeys-random | volatile-random [default: noeviction].
    #[arg(long, env = "KVD_EVICTION_POLICY")]
    pub eviction_policy: Option<String>,
    /// Values at least this long are stored zstd-compressed when that saves space; 0: never [default: 1024].
    #[arg(long, env = "KVD_COMPRESS_MIN_BYTES")]
    pub compress_min_bytes: Option<usize>,
    /// pinned: each core's executor runs on its CPU only | unpinned: the kernel places it [default: pinned].
    #[arg(long, env = "KVD_PLACEMENT")]
    pub placement: Option<String>,
    /// io_uring submission queue entries per ring [default: 128].
    #[arg(long, env = "KVD_IO_RING_DEPTH")]
    pub io_ring_depth: Option<usize>,
    /// Microseconds an idle core polls before it sleeps (trades CPU for latency); 0: sleep at once [default: 0].
    #[arg(long, env = "KVD_SPIN_BEFORE_PARK_US")]
    pub spin_before_park_us: Option<u64>,
    /// Microseconds a task queue runs before it yields to another that waits [default: 100000].
    #[arg(long, env = "KVD_PREEMPT_TIMER_US")]
    pub preempt_timer_us: Option<u64>,
    /// CPU shares of request handling on a busy core, 1..=1000 [default: 1000].
    #[arg(long, env = "KVD_REQUEST_SHARES")]
    pub request_shares: Option<usize>,
    /// CPU shares of snapshots, expiry and eviction on a busy core, 1..=1000 [default: 250].
    #[arg(long, env = "KVD_BACKGROUND_SHARES")]
    pub background_shares: Option<usize>,
}

impl Options {
    /// Options from the command line and environment, with the config
    /// file's, then the profile's values filling what those left unset.
    pub fn resolve(self) -> Result<Options, String> {
        layers::merge(self, BTreeMap::new()).map(|l| l.options)
    }

    pub fn from_file(path: &Path) -> Result<Options, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Fills every setting `self` leaves unset from `o`.
    fn fill_from(&mut self, o: &Options) {
        let mut merged = toml::Value::try_from(o).expect("options serialise");
        let mine = toml::Value::try_from(&*self).expect("options serialise");
        if let (toml::Value::Table(m), toml::Value::Table(t)) = (&mut merged, mine) {
            m.extend(t);
        }
        let (config, print) = (self.config.take(), self.print_config);
        *self = merged.try_into().expect("merged options deserialise");
        (self.config, self.print_config) = (config, print);
    }

    /// Whether `key` names a setting.
    pub fn known_key(key: &str) -> bool {
        Options::command().get_arguments().any(|a| a.get_id() == key)
    }

    /// The defaults, as options (so `--print-config` can show them).
    pub(crate) fn defaults() -> Options {
        let limits = Limits::default();
        Options {
            data_dir: Some(PathBuf::from(DATA_DIR_DEFAULT)),
            listen: Some(LISTEN_DEFAULT.to_string()),
            resp_listen: Some(RESP_LISTEN_DEFAULT.to_string()),
            http_listen: Some(HTTP_LISTEN_DEFAULT.to_string()),
            resp_mode: Some("proxy".to_string()),
            cores: Some("all".to_string()),
            fsync: Some("always".to_string()),
            persistence: Some("wal".to_string()),
            node_id: Some(1),
            log_level: Some("info".to_string()),
            log_format: Some("plain".to_string()),
            shards_per_core: Some(SHARDS_PER_CORE_DEFAULT),
            max_key_bytes: Some(limits.key_bytes_max),
            max_value_bytes: Some(limits.value_bytes_max),
            max_frame_bytes: None,
            max_pipeline_depth: Some(limits.pipeline_depth_max),
            max_connections: Some(limits.connections_max),
            wal_segment_bytes: Some(SEGMENT_BYTES_DEFAULT),
            snapshot_wal_bytes: Some(SNAPSHOT_WAL_BYTES_DEFAULT),
            wal_batch_bytes_max: Some(0),
            io_memory_bytes: Some(IO_MEMORY_BYTES_DEFAULT),
            raft_log_retain_entries: Some(kv_replication::LOG_RETAIN_ENTRIES_DEFAULT),
            max_memory: Some("0".to_string()),
            eviction_policy: Some("noeviction".to_string()),
            compress_min_bytes: Some(kv_engine::compress::COMPRESS_MIN_BYTES_DEFAULT),
            snapshot_send_rate: Some(SNAPSHOT_SEND_RATE_DEFAULT.to_string()),
            placement: Some("pinned".to_string()),
            io_ring_depth: Some(IO_RING_DEPTH_DEFAULT),
            spin_before_park_us: Some(0),
            preempt_timer_us: Some(PREEMPT_TIMER_US_DEFAULT),
            request_shares: Some(REQUEST_SHARES_DEFAULT),
            background_shares: Some(BACKGROUND_SHARES_DEFAULT),
            ..Options::default()
        }
    }
}

/// How each core's executor runs (a tuning profile's business).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutorTuning {
    /// Each executor on its own CPU (`true`), or placed by the kernel.
    pub pinned: bool,
    pub io_ring_depth: usize,
    /// Busy polling before an idle executor sleeps.
    pub spin_before_park: Option<Duration>,
    pub preempt_timer: Duration,
    /// glommio shares of the request and the background task queues.
    pub request_shares: usize,
    pub background_shares: usize,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub resp_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub resp_mode: RespMode,
    /// What clients must authenticate with; `None` lets everyone in.
    pub password: Option<Arc<Vec<u8>>>,
    /// CPU ids, one shard core each.
    pub cpus: Vec<usize>,
    pub fsync: FsyncPolicy,
    pub persistent: bool,
    pub node_id: u64,
    pub log_level: String,
    pub log_json: bool,
    pub shards_per_core: u32,
    pub limits: Limits,
    pub wal_segment_bytes: u64,
    pub snapshot_wal_bytes: u64,
    pub wal_batch_bytes_max: u64,
    pub io_memory_bytes: usize,
    pub raft_log_retain_entries: u64,
    /// `None` for a single node.
    pub cluster: Option<ClusterSettings>,
    /// Bytes the node may hold (`None`: no limit), and what happens past it.
    pub max_memory: Option<u64>,
    pub eviction_policy: kv_engine::evict::Policy,
    /// Values at least this long are proposed compressed (0: never).
    pub compress_min_bytes: usize,
    pub executor: ExecutorTuning,
    /// The resolved options, defaults filled in (for `--print-config`).
    pub effective: Options,
}

/// A node's place in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Peer address (core 0) of every node, this one included.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// Where this node's core 0 peer listener binds.
    pub peer_listen: SocketAddr,
    pub replication_factor: u32,
    pub secret: Arc<Vec<u8>>,
    /// `--join`: the member this node joins through.
    pub join: Option<SocketAddr>,
    /// Snapshot bytes a core streams to peers per second (0: no limit).
    pub snapshot_bytes_per_sec: u64,
}

/// `--snapshot-send-rate`'s default: on a 1 Gbit/s link it leaves about
/// half the bandwidth to requests and Raft, and a core spends a few
/// percent of its time on it; a shard of 1 GiB takes 16 s to fill.
pub const SNAPSHOT_SEND_RATE_DEFAULT: &str = "64mb";
/// The slowest `--snapshot-send-rate` (bytes per second) accepted: a
/// 1 MiB chunk a second, so a receiver (which gives up on a sender silent
/// for 20 s) and raft-rs never wait long between chunks.
pub const SNAPSHOT_SEND_RATE_MIN: u64 = 1 << 20;

/// Shortest cluster secret accepted.
pub const CLUSTER_SECRET_BYTES_MIN: usize = 16;

impl Settings {
    pub fn from_options(options: Options) -> Result<Settings, String> {
        let mut o = options;
        o.fill_from(&Options::defaults());
        let get = |v: &Option<String>| v.clone().expect("defaults fill every field");
        let listen = get(&o.listen);
        let listen = listen
            .parse::<SocketAddr>()
            .map_err(|_| format!("listen: {listen:?} is not an IP:PORT address (e.g. 127.0.0.1:7379)"))?;
        let resp_listen = parse_addr("resp_listen", &get(&o.resp_listen))?;
        let http_listen = parse_addr("http_listen", &get(&o.http_listen))?;
        let resp_mode = match get(&o.resp_mode).as_str() {
            "proxy" => RespMode::Proxy,
            "cluster" => RespMode::Cluster,
            other => return Err(format!("resp_mode: {other:?} is not one of proxy, cluster")),
        };
        let password = match &o.requirepass_file {
            Some(path) => Some(Arc::new(read_password(path)?)),
            None => None,
        };
        let (key, value) = (o.max_key_bytes.expect("default"), o.max_value_bytes.expect("default"));
        let limits = Limits {
            key_bytes_max: key,
            value_bytes_max: value,
            frame_bytes_max: o.max_frame_bytes.unwrap_or_else(|| Limits::frame_bytes_for(key, value)),
            pipeline_depth_max: o.max_pipeline_depth.expect("default"),
            connections_max: o.max_connections.expect("default"),
        };
        limits.validate()?;
        o.max_frame_bytes = Some(limits.frame_bytes_max);
        let persistent = match get(&o.persistence).as_str() {
            "wal" => true,
            "none" => false,
            other => return Err(format!("persistence: {other:?} is not one of wal, none")),
        };
        let node_id = o.node_id.expect("default");
        if node_id == 0 {
            return Err("node_id: must be at least 1".to_string());
        }
        let log_level = get(&o.log_level);
        crate::logging::check_filter(&log_level)?;
        let log_json = match get(&o.log_format).as_str() {
            "plain" => false,
            "json" => true,
            other => return Err(format!("log_format: {other:?} is not one of plain, json")),
        };
        let wal_segment_bytes = o.wal_segment_bytes.expect("default");
        if wal_segment_bytes < SEGMENT_BYTES_MIN {
            return Err(format!("wal_segment_bytes: {wal_segment_bytes} is below the minimum of {SEGMENT_BYTES_MIN}"));
        }
        let shards_per_core = o.shards_per_core.expect("default");
        if !(1..=1024).contains(&shards_per_core) {
            return Err(format!("shards_per_core: {shards_per_core} is not between 1 and 1024"));
        }
        let cpus = parse_cores(&get(&o.cores))?;
        let max_memory_text = get(&o.max_memory);
        let max_memory = kv_net::memory::parse_size(&max_memory_text).ok_or_else(|| {
            format!("max_memory: {max_memory_text:?} is not a size in bytes or with a unit (e.g. 4gb, 512mb)")
        })?;
        let policy_text = get(&o.eviction_policy);
        let eviction_policy = kv_engine::evict::Policy::parse(&policy_text).ok_or_else(|| {
            format!("eviction_policy: {policy_text:?} is not one of {}", kv_engine::evict::Policy::NAMES.join(", "))
        })?;
        let cluster = parse_cluster(&o, node_id, cpus.len())?;
        if cluster.is_some() && !persistent {
            return Err("persistence: none cannot be used in a cluster: a node that forgets its Raft votes \
                        on restart can elect two leaders"
                .to_string());
        }
        Ok(Settings {
            data_dir: o.data_dir.clone().expect("default"),
            listen,
            resp_listen,
            http_listen,
            resp_mode,
            password,
            cpus,
            cluster,
            fsync: parse_fsync(&get(&o.fsync))?,
            persistent,
            node_id,
            log_level,
            log_json,
            shards_per_core,
            limits,
            wal_segment_bytes,
            snapshot_wal_bytes: o.snapshot_wal_bytes.expect("default").max(1),
            wal_batch_bytes_max: o.wal_batch_bytes_max.expect("default"),
            io_memory_bytes: o.io_memory_bytes.expect("default"),
            raft_log_retain_entries: o.raft_log_retain_entries.expect("default").max(1),
            max_memory: (max_memory > 0).then_some(max_memory),
            eviction_policy,
            compress_min_bytes: o.compress_min_bytes.expect("default"),
            executor: parse_executor(&o)?,
            effective: o,
        })
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(&self.effective).expect("options serialise")
    }

    /// The settings with where each came from (`kvd --print-config`).
    pub fn describe(&self, sources: &BTreeMap<String, layers::Source>) -> String {
        layers::describe(&self.effective, sources)
    }
}

fn parse_executor(o: &Options) -> Result<ExecutorTuning, String> {
    let pinned = match o.placement.as_deref().expect("default") {
        "pinned" => true,
        "unpinned" => false,
        other => return Err(format!("placement: {other:?} is not one of pinned, unpinned")),
    };
    let io_ring_depth = o.io_ring_depth.expect("default");
    if !(8..=32_768).contains(&io_ring_depth) {
        return Err(format!("io_ring_depth: {io_ring_depth} is not between 8 and 32768"));
    }
    let spin = o.spin_before_park_us.expect("default");
    if spin > 1_000_000 {
        return Err(format!("spin_before_park_us: {spin} is over a second (1000000)"));
    }
    let preempt = o.preempt_timer_us.expect("default");
    if !(100..=1_000_000).contains(&preempt) {
        return Err(format!("preempt_timer_us: {preempt} is not between 100 and 1000000"));
    }
    let shares = |name: &str, v: Option<usize>| {
        let v = v.expect("default");
        if SHARES_RANGE.contains(&v) {
            Ok(v)
        } else {
            Err(format!("{name}: {v} is not between 1 and 1000"))
        }
    };
    Ok(ExecutorTuning {
        pinned,
        io_ring_depth,
        spin_before_park: (spin > 0).then(|| Duration::from_micros(spin)),
        preempt_timer: Duration::from_micros(preempt),
        request_shares: shares("request_shares", o.request_shares)?,
        background_shares: shares("background_shares", o.background_shares)?,
    })
}

fn parse_addr(name: &str, text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| format!("{name}: {text:?} is not an IP:PORT address (e.g. 127.0.0.1:6380)"))
}

/// The password file's content, without one trailing newline.
fn read_password(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(path).map_err(|e| format!("requirepass_file {}: {e}", path.display()))?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
    }
    if bytes.is_empty() || bytes.len() > PASSWORD_BYTES_MAX {
        return Err(format!(
            "requirepass_file {}: the password must be 1 to {PASSWORD_BYTES_MAX} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

/// `1=HOST:PORT,2=HOST:PORT`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, SocketAddr>, String> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let err = || format!("peers: {part:?} is not ID=IP:PORT (e.g. 2=127.0.0.1:7480)");
        let (id, addr) = part.split_once('=').ok_or_else(err)?;
        let id: u64 = id.trim().parse().map_err(|_| err())?;
        let addr: SocketAddr = addr.trim().parse().map_err(|_| err())?;
        if id == 0 || peers.insert(id, addr).is_some() {
            return Err(format!("peers: node id {id} is zero or listed twice"));
        }
    }
    Ok(peers)
}

fn parse_cluster(o: &Options, node_id: u64, cores: usize) -> Result<Option<ClusterSettings>, String> {
    let peers = parse_peers(o.peers.as_deref().unwrap_or(""))?;
    if peers.is_empty() {
        if o.join.is_some() {
            return Err("join: a node joins a cluster: give --peers (every node, this one too) as well".into());
        }
        return Ok(None);
    }
    let own = *peers.get(&node_id).ok_or_else(|| format!("peers: this node's id {node_id} is not in the list"))?;
    let peer_listen = match &o.peer_listen {
        Some(a) => a.parse().map_err(|_| format!("peer_listen: {a:?} is not an IP:PORT address"))?,
        None => own,
    };
    for (id, addr) in peers.iter().map(|(i, a)| (*i, *a)).chain([(node_id, peer_listen)]) {
        if addr.port() == 0 || addr.port() as usize + cores > 65536 {
            return Err(format!("peers: node {id}'s port {} leaves no room for {cores} per-core ports", addr.port()));
        }
    }
    let nodes = peers.len() as u32;
    let replication_factor = o.replication_factor.unwrap_or(nodes.min(3));
    if replication_factor == 0 || replication_factor > nodes {
        return Err(format!("replication_factor: {replication_factor} must be between 1 and the {nodes} nodes"));
    }
    let path = o.cluster_secret_file.as_ref().ok_or("cluster_secret_file: a cluster needs a shared secret file")?;
    let secret = std::fs::read(path).map_err(|e| format!("cluster_secret_file {}: {e}", path.display()))?;
    let secret = secret.trim_ascii().to_vec();
    if secret.len() < CLUSTER_SECRET_BYTES_MIN {
        return Err(format!(
            "cluster_secret_file {}: the secret must be at least {CLUSTER_SECRET_BYTES_MIN} bytes",
            path.display()
        ));
    }
    let join = o.join.as_deref().map(|a| parse_join(a, &peers, node_id)).transpose()?;
    if join.is_some() && replication_factor < 3 {
        return Err(format!(
            "join: with {replication_factor} replica(s) per shard a lost node cannot be readmitted: its lost \
             replica must be removed first, which takes a majority of each shard without it (3 replicas or more)"
        ));
    }
    let rate_text = o.snapshot_send_rate.as_deref().unwrap_or(SNAPSHOT_SEND_RATE_DEFAULT);
    let snapshot_bytes_per_sec = kv_net::memory::parse_size(rate_text).ok_or_else(|| {
        format!("snapshot_send_rate: {rate_text:?} is not bytes per second, plain or with a unit (e.g. 64mb)")
    })?;
    if snapshot_bytes_per_sec != 0 && snapshot_bytes_per_sec < SNAPSHOT_SEND_RATE_MIN {
        return Err(format!("snapshot_send_rate: {rate_text:?} is below the slowest rate, 1mb (or 0: no limit)"));
    }
    Ok(Some(ClusterSettings {
        peers,
        peer_listen,
        replication_factor,
        secret: Arc::new(secret),
        join,
        snapshot_bytes_per_sec,
    }))
}

/// `--join HOST:PORT`: the peer address of another member in --peers.
fn parse_join(addr: &str, peers: &BTreeMap<u64, SocketAddr>, node_id: u64) -> Result<SocketAddr, String> {
    let join: SocketAddr = addr.parse().map_err(|_| format!("join: {addr:?} is not an IP:PORT address"))?;
    match peers.iter().find(|(_, a)| **a == join) {
        Some((&id, _)) if id != node_id => Ok(join),
        Some(_) => Err(format!("join: {join} is this node's own peer address; name another member's")),
        None => Err(format!(
            "join: {join} is not the peer address of a node in --peers; this version joins a node listed \
             there (give every node the same --peers)"
        )),
    }
}

/// `always`, `never` or `interval:<ms>`.
pub fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    let err = || format!("fsync: {s:?} is not one of always, never, interval:<ms> (1..={FSYNC_INTERVAL_MS_MAX})");
    match s {
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        _ => {
            let ms: u64 = s.strip_prefix("interval:").ok_or_else(err)?.parse().map_err(|_| err())?;
            if !(1..=FSYNC_INTERVAL_MS_MAX).contains(&ms) {
                return Err(err());
            }
            Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
        }
    }
}

/// `all`, or a list like `0,2-3`. Every CPU must be online.
pub fn parse_cores(s: &str) -> Result<Vec<usize>, String> {
    let online: Vec<usize> = glommio::CpuSet::online()
        .map_err(|e| format!("cannot read the online CPUs: {e}"))?
        .into_iter()
        .map(|l| l.cpu)
        .collect();
    let mut cpus = Vec::new();
    if s == "all" {
        cpus = online.clone();
    } else {
        for part in s.split(',').map(str::trim) {
            let err = || format!("cores: {part:?} in {s:?} is not a CPU number or range like 0-3");
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.parse().map_err(|_| err())?, b.parse().map_err(|_| err())?),
                None => {
                    let n: usize = part.parse().map_err(|_| err())?;
                    (n, n)
                }
            };
            if lo > hi {
                return Err(err());
            }
            cpus.extend(lo..=hi);
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    if let Some(bad) = cpus.iter().find(|c| !online.contains(c)) {
        return Err(format!("cores: CPU {bad} is not online (online: {online:?})"));
    }
    if cpus.is_empty() {
        return Err("cores: no CPU selected".to_string());
    }
    Ok(cpus)
}

pub mod layers;
#[cfg(test)]
mod tests;
