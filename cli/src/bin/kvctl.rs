//! `kvctl`: the command-line client. One command per invocation, errors on
//! stderr, and an exit code per kind of outcome (see `EXIT_CODES`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::{Parser, Subcommand, ValueEnum};
use kv_cli::backup;
use kv_engine::snapshot;
use kv_engine::Condition;
use kv_net::client::{BackupBegun, Client, ClientError, WriteResult};
use kv_net::cluster_client::{parse_topology, Topology};
use kv_net::native::codec::Status;
use kv_replication::Consistency;
use serde_json::json;

const EXIT_CODES: &str = "Exit codes:
  0  success
  1  key not found
  2  usage error (bad flags or arguments)
  3  server error (the server refused or failed the request)
  4  connection failure (no endpoint reachable, or the connection broke)
  5  condition failed (key exists for put --if-absent; version mismatch for cas/delete --version)
snapshot save: 2 also when FILE cannot be written; 3 when a shard's leader was not found within 30 s";

const EXIT_NOT_FOUND: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_SERVER: u8 = 3;
const EXIT_CONNECTION: u8 = 4;
const EXIT_CONDITION: u8 = 5;

#[derive(Parser)]
#[command(name = "kvctl", version, about = "Command-line client for kvd", after_help = EXIT_CODES)]
struct Cli {
    /// Servers to try, in order: HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "KVCTL_ENDPOINTS", default_value = "127.0.0.1:7379", value_delimiter = ',', action = clap::ArgAction::Set, global = true)]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Raw, global = true)]
    output: Output,
    /// Seconds to wait for a connection or an answer.
    #[arg(long, default_value_t = 5.0, global = true)]
    timeout: f64,
    /// File holding the node's password (kvd --requirepass-file).
    #[arg(long, env = "KVCTL_PASSWORD_FILE", global = true)]
    password_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Raw,
    Json,
    Table,
}

#[derive(Subcommand)]
enum Command {
    /// Print a key's value (raw: the bytes exactly as stored).
    Get {
        key: OsString,
        /// strict (confirmed with a quorum), lease (leader's lease; default), stale (any replica).
        #[arg(long, value_enum, default_value_t = ReadLevel::Lease)]
        consistency: ReadLevel,
    },
    /// Print how long until a key expires, in seconds (`none`: never).
    Ttl {
        key: OsString,
        #[arg(long, value_enum, default_value_t = ReadLevel::Lease)]
        consistency: ReadLevel,
    },
    /// Store a value (from VALUE, --file, or stdin); prints the new version.
    Put {
        key: OsString,
        value: Option<OsString>,
        #[arg(long)]
        file: Option<PathBuf>,
        /// Only if the key does not exist yet.
        #[arg(long)]
        if_absent: bool,
        /// Expire the key after this long: seconds, or a number with ms, s, m, h or d (e.g. 1500ms, 10m).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Replace the value of an existing key; prints the new version.
    Update {
        key: OsString,
        value: Option<OsString>,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Compare-and-set: store only if the key's version is --version.
    Cas {
        key: OsString,
        value: Option<OsString>,
        #[arg(long)]
        version: u64,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Delete a key (only at --version, if given); prints the deleted version.
    Delete {
        key: OsString,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Check that a server answers.
    Ping,
    /// Cluster administration.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Backups (restore one with `kvd restore FILE --data-dir DIR`).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Save a consistent point-in-time copy of every shard, each taken on
    /// its leader, into one file (written to FILE.tmp, fsynced, renamed).
    Save { file: PathBuf },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Nodes and links as the answering node sees them, and per shard its
    /// leader, term, commit and applied index, and follower lag.
    Status,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReadLevel {
    Strict,
    Lease,
    Stale,
}

impl From<ReadLevel> for Consistency {
    fn from(r: ReadLevel) -> Consistency {
        match r {
            ReadLevel::Strict => Consistency::Strict,
            ReadLevel::Lease => Consistency::Lease,
            ReadLevel::Stale => Consistency::Stale,
        }
    }
}

/// A failed command: what to print and how to exit.
struct Failure {
    code: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let code = match &e {
            ClientError::Connect { .. } | ClientError::Io(_) => EXIT_CONNECTION,
            ClientError::Protocol(_) | ClientError::Server { .. } => EXIT_SERVER,
        };
        Failure { code, message: e.to_string() }
    }
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure { code, message: message.into() }
}

fn main() -> ExitCode {
    // Like other Unix tools: a closed pipe (`| head`) ends the process
    // quietly instead of a panic on the next print.
    // SAFETY: restoring a signal's default disposition at startup.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("kvctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    if !(cli.timeout.is_finite() && cli.timeout > 0.0) {
        return Err(fail(EXIT_USAGE, "--timeout must be a positive number of seconds"));
    }
    let timeout = Duration::from_secs_f64(cli.timeout);
    // Read a value before connecting, so usage errors need no server.
    let value = match &cli.command {
        Command::Put { value, file, .. } | Command::Update { value, file, .. } | Command::Cas { value, file, .. } => {
            Some(read_value(value.as_ref(), file.as_ref())?)
        }
        _ => None,
    };
    let password = read_password(&cli)?;
    if let Command::Snapshot { command: SnapshotCommand::Save { file } } = &cli.command {
        return snapshot_save(&cli.endpoints, timeout, password, file, cli.output);
    }
    let started = Instant::now();
    let mut client = Client::connect(&cli.endpoints, timeout)?;
    if let Some(password) = &password {
        client.authenticate(password)?;
    }
    let out = cli.output;
    match cli.command {
        Command::Ping => {
            client.ping()?;
            let rtt = started.elapsed();
            print_ping(out, client.endpoint(), rtt);
            Ok(())
        }
        Command::Cluster { command: ClusterCommand::Status } => {
            let status: serde_json::Value = serde_json::from_str(&client.status()?)
                .map_err(|e| fail(EXIT_SERVER, format!("the server sent a malformed status: {e}")))?;
            match out {
                Output::Json => println!("{status}"),
                Output::Raw | Output::Table => print_status(&status),
            }
            Ok(())
        }
        Command::Snapshot { .. } => unreachable!("handled above"),
        Command::Get { key, consistency } => {
            let key = key.as_bytes();
            match client.get_with(key, consistency.into())? {
                Some((value, version)) => {
                    print_value(out, key, &value, version);
                    Ok(())
                }
                None => Err(fail(EXIT_NOT_FOUND, format!("key not found: {}", show(key)))),
            }
        }
        Command::Ttl { key, consistency } => {
            let key = key.as_bytes();
            match client.expiry(key, consistency.into())? {
                Some((version, expires_at_ms)) => {
                    print_expiry(out, key, version, expires_at_ms);
                    Ok(())
                }
                None => Err(fail(EXIT_NOT_FOUND, format!("key not found: {}", show(key)))),
            }
        }
        Command::Put { key, if_absent, ttl, .. } => {
            let condition = if if_absent { Condition::IfAbsent } else { Condition::Always };
            write(out, &mut client, key.as_bytes(), &value.expect("read above"), condition, ttl)
        }
        Command::Update { key, .. } => {
            write(out, &mut client, key.as_bytes(), &value.expect("read above"), Condition::IfExists, None)
        }
        Command::Cas { key, version, .. } => {
            let condition = Condition::IfVersion(version);
            write(out, &mut client, key.as_bytes(), &value.expect("read above"), condition, None)
        }
        Command::Delete { key, version } => {
            let key = key.as_bytes();
            let condition = version.map_or(Condition::Always, Condition::IfVersion);
            match client.delete(key, condition)? {
                WriteResult::Written { version } => {
                    print_version(out, key, "deleted_version", version);
                    Ok(())
                }
                other => Err(condition_failure(key, other)),
            }
        }
    }
}

/// The password from `--password-file`, without a final newline.
fn read_password(cli: &Cli) -> Result<Option<Vec<u8>>, Failure> {
    let Some(path) = &cli.password_file else { return Ok(None) };
    let mut password = std::fs::read(path)
        .map_err(|e| fail(EXIT_USAGE, format!("cannot read the password file {}: {e}", path.display())))?;
    if password.ends_with(b"\n") {
        password.pop();
    }
    Ok(Some(password))
}

/// How long `snapshot save` keeps looking for a shard's leader (through
/// elections and unreachable nodes) before it gives up.
const BACKUP_LEADER_WAIT: Duration = Duration::from_secs(30);
/// The least time `snapshot save` waits for an answer: a leader copies and
/// encodes a whole shard before it answers BACKUP_BEGIN.
const BACKUP_ANSWER_TIMEOUT_MIN: Duration = Duration::from_secs(60);

/// Connections to the nodes, and the topology (who leads which shard) as
/// the last STATUS told it.
struct Fetcher {
    seeds: Vec<String>,
    timeout: Duration,
    password: Option<Vec<u8>>,
    clients: BTreeMap<String, Client>,
    topology: Topology,
}

impl Fetcher {
    fn client(&mut self, endpoint: &str) -> Result<&mut Client, ClientError> {
        if !self.clients.contains_key(endpoint) {
            let mut c = Client::connect(&[endpoint.to_string()], self.timeout)?;
            if let Some(p) = &self.password {
                c.authenticate(p)?;
            }
            c.set_timeout(Some(self.timeout.max(BACKUP_ANSWER_TIMEOUT_MIN)))?;
            self.clients.insert(endpoint.to_string(), c);
        }
        Ok(self.clients.get_mut(endpoint).expect("inserted above"))
    }

    /// Every endpoint known: the seeds, then the nodes STATUS named.
    fn endpoints(&self) -> Vec<String> {
        let mut all = self.seeds.clone();
        for e in self.topology.endpoints.values() {
            if !all.contains(e) {
                all.push(e.clone());
            }
        }
        all
    }

    /// STATUS from the first node that answers; the topology is kept.
    fn refresh(&mut self) -> Result<(serde_json::Value, u32), ClientError> {
        let mut last = None;
        for endpoint in self.endpoints() {
            let answered = self.client(&endpoint).and_then(|c| Ok((c.status()?, c.welcome().cores)));
            match answered {
                Ok((json, cores)) => {
                    self.topology = parse_topology(&json)?;
                    let status = serde_json::from_str(&json)
                        .map_err(|e| ClientError::Protocol(format!("malformed STATUS: {e}")))?;
                    return Ok((status, cores));
                }
                Err(e) => {
                    self.clients.remove(&endpoint);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Protocol("no endpoints".into())))
    }

    /// A whole copy of `shard` from its leader, and the endpoint that sent
    /// it. Asks the leader STATUS names; when that is not (or no longer)
    /// the leader, or cannot be reached, re-reads STATUS and asks again,
    /// trying the other nodes in turn, for up to [`BACKUP_LEADER_WAIT`].
    fn shard(&mut self, shard: u32) -> Result<(BackupBegun, Vec<u8>, String), ClientError> {
        let deadline = Instant::now() + BACKUP_LEADER_WAIT;
        let mut attempt = 0usize;
        loop {
            let leader = self.topology.leaders.get(shard as usize).copied().flatten();
            let leader_endpoint = leader.and_then(|l| self.topology.endpoints.get(&l).cloned());
            let others = self.endpoints();
            let endpoint = match leader_endpoint {
                Some(e) if attempt & 1 == 0 => e,
                _ => others[(attempt / 2) % others.len()].clone(),
            };
            attempt += 1;
            let result = self.client(&endpoint).and_then(|c| c.backup_shard(shard));
            let retry = match &result {
                Ok(_) => false,
                Err(ClientError::Server { status, .. }) => {
                    matches!(status, Status::NotLeader | Status::Unavailable | Status::Retry | Status::ShuttingDown)
                }
                Err(ClientError::Connect { .. } | ClientError::Io(_) | ClientError::Protocol(_)) => {
                    self.clients.remove(&endpoint);
                    true
                }
            };
            match result {
                Ok((begun, bytes)) => return Ok((begun, bytes, endpoint)),
                Err(e) if !retry || Instant::now() >= deadline => {
                    return Err(match e {
                        ClientError::Server { status, message } => ClientError::Server {
                            status,
                            message: format!("shard {shard} (asked {endpoint}): {message}"),
                        },
                        other => other,
                    })
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    let _ = self.refresh();
                }
            }
        }
    }
}

/// `kvctl snapshot save FILE`: every shard's copy from its leader, checked
/// (`snapshot::decode`) and written to one backup file
/// (`kv_cli::backup`). Each shard is a point in time of its own; the
/// shards are not copied at one instant.
fn snapshot_save(
    seeds: &[String],
    timeout: Duration,
    password: Option<Vec<u8>>,
    file: &Path,
    out: Output,
) -> Result<(), Failure> {
    let mut fetcher =
        Fetcher { seeds: seeds.to_vec(), timeout, password, clients: BTreeMap::new(), topology: Topology::default() };
    let (status, cores) = fetcher.refresh()?;
    let number = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let header = backup::Header {
        shards: fetcher.topology.shards,
        slots: kv_engine::slot::SLOT_COUNT as u32,
        nodes: status["nodes"].as_array().map_or(1, |n| n.len() as u32),
        replicas: number(&status["replicas"]) as u32,
        cores,
        node_id: number(&status["node"]),
        created_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    if header.shards == 0 {
        return Err(fail(EXIT_SERVER, "the server's STATUS names no shards"));
    }
    let cannot_write = |e: std::io::Error| fail(EXIT_USAGE, format!("cannot write {}: {e}", file.display()));
    let mut writer = backup::Writer::create(file, &header).map_err(cannot_write)?;
    let mut keys = 0u64;
    for shard in 0..header.shards {
        let (begun, bytes, endpoint) = fetcher.shard(shard)?;
        let origin = PathBuf::from(format!("shard {shard} from {endpoint}"));
        let (meta, entries) = snapshot::decode(&bytes, &origin).map_err(|e| fail(EXIT_SERVER, e.to_string()))?;
        if (meta.group, meta.index, meta.term) != (shard, begun.index, begun.term) {
            return Err(fail(
                EXIT_SERVER,
                format!(
                    "{endpoint} sent shard {} at index {} for shard {shard} at index {}",
                    meta.group, meta.index, begun.index
                ),
            ));
        }
        keys += entries.len() as u64;
        writer.shard(shard, begun.index, begun.term, &bytes).map_err(cannot_write)?;
    }
    let bytes = writer.finish().map_err(cannot_write)?;
    let shards = header.shards;
    match out {
        Output::Raw => println!("saved {}: {shards} shards, {keys} keys, {bytes} bytes", file.display()),
        Output::Json => {
            println!("{}", json!({"file": file.display().to_string(), "shards": shards, "keys": keys, "bytes": bytes}))
        }
        Output::Table => print_table(
            &["FILE", "SHARDS", "KEYS", "BYTES"],
            &[file.display().to_string(), shards.to_string(), keys.to_string(), bytes.to_string()],
        ),
    }
    Ok(())
}

/// `10` (seconds), `1500ms`, `10s`, `5m`, `2h`, `1d`; at least 1 ms.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 30, 1500ms, 10s, 5m"))?;
    let ms_per_unit = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown unit {other:?} in {text:?}: use ms, s, m, h or d")),
    };
    match n.checked_mul(ms_per_unit) {
        Some(0) => Err("a TTL must be at least 1 ms".to_string()),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Err(format!("{text:?} is too long a TTL")),
    }
}

fn read_value(value: Option<&OsString>, file: Option<&PathBuf>) -> Result<Vec<u8>, Failure> {
    match (value, file) {
        (Some(_), Some(_)) => Err(fail(EXIT_USAGE, "give the value as an argument or with --file, not both")),
        (Some(v), None) => Ok(v.as_bytes().to_vec()),
        (None, Some(path)) => {
            std::fs::read(path).map_err(|e| fail(EXIT_USAGE, format!("cannot read {}: {e}", path.display())))
        }
        (None, None) => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map_err(|e| fail(EXIT_USAGE, format!("cannot read stdin: {e}")))?;
            Ok(buf)
        }
    }
}

fn write(
    out: Output,
    client: &mut Client,
    key: &[u8],
    value: &[u8],
    condition: Condition,
    ttl: Option<Duration>,
) -> Result<(), Failure> {
    match client.put_with_ttl(key, value, condition, ttl)? {
        WriteResult::Written { version } => {
            print_version(out, key, "version", version);
            Ok(())
        }
        other => Err(condition_failure(key, other)),
    }
}

fn condition_failure(key: &[u8], result: WriteResult) -> Failure {
    match result {
        WriteResult::NotFound | WriteResult::ConditionFailed { current_version: None } => {
            fail(EXIT_NOT_FOUND, format!("key not found: {}", show(key)))
        }
        WriteResult::ConditionFailed { current_version: Some(v) } => {
            fail(EXIT_CONDITION, format!("condition failed: {} exists at version {v}", show(key)))
        }
        WriteResult::Written { .. } => unreachable!("not a failure"),
    }
}

/// A key or value for humans: itself if UTF-8, else its base64.
fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => format!("base64:{}", base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

/// JSON fields for bytes: `name` if UTF-8, else `name_base64`.
fn json_bytes(map: &mut serde_json::Map<String, serde_json::Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => map.insert(name.to_string(), json!(s)),
        Err(_) => map.insert(format!("{name}_base64"), json!(base64::engine::general_purpose::STANDARD.encode(bytes))),
    };
}

/// Time left measured with this machine's clock (the server stamped the
/// expiry with its own).
fn print_expiry(out: Output, key: &[u8], version: u64, expires_at_ms: Option<u64>) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let left_ms = expires_at_ms.map(|at| at.saturating_sub(now));
    let left = left_ms.map_or("none".to_string(), |ms| format!("{}.{:03}", ms / 1000, ms % 1000));
    let mut stdout = std::io::stdout().lock();
    match out {
        Output::Raw => {
            let _ = writeln!(stdout, "{left}");
        }
        Output::Table => print_table(&["KEY", "VERSION", "TTL"], &[show(key), version.to_string(), left]),
        Output::Json => {
            let mut m = serde_json::Map::new();
            json_bytes(&mut m, "key", key);
            m.insert("version".into(), json!(version));
            m.insert("expires_at_ms".into(), json!(expires_at_ms));
            m.insert("ttl_ms".into(), json!(left_ms));
            let _ = writeln!(stdout, "{}", serde_json::Value::Object(m));
        }
    }
}

fn print_value(out: Output, key: &[u8], value: &[u8], version: u64) {
    let mut stdout = std::io::stdout().lock();
    match out {
        Output::Raw => {
            let _ = stdout.write_all(value);
            if std::io::stdout().is_terminal() {
                let _ = stdout.write_all(b"\n");
            }
        }
        Output::Json => {
            let mut m = serde_json::Map::new();
            json_bytes(&mut m, "key", key);
            json_bytes(&mut m, "value", value);
            m.insert("version".into(), json!(version));
            let _ = writeln!(stdout, "{}", serde_json::Value::Object(m));
        }
        Output::Table => print_table(&["KEY", "VERSION", "VALUE"], &[show(key), version.to_string(), show(value)]),
    }
}

fn print_version(out: Output, key: &[u8], field: &str, version: u64) {
    match out {
        Output::Raw => println!("{version}"),
        Output::Json => {
            let mut m = serde_json::Map::new();
            json_bytes(&mut m, "key", key);
            m.insert(field.into(), json!(version));
            println!("{}", serde_json::Value::Object(m));
        }
        Output::Table => print_table(&["KEY", &field.to_uppercase()], &[show(key), version.to_string()]),
    }
}

fn print_ping(out: Output, endpoint: &str, rtt: Duration) {
    match out {
        Output::Raw => println!("PONG"),
        Output::Json => println!("{}", json!({"ok": true, "endpoint": endpoint, "rtt_ms": rtt.as_secs_f64() * 1000.0})),
        Output::Table => {
            print_table(&["ENDPOINT", "RTT_MS"], &[endpoint.to_string(), format!("{:.3}", rtt.as_secs_f64() * 1000.0)])
        }
    }
}

/// The status as tables: links, then one row per shard.
fn print_status(s: &serde_json::Value) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "node {} of nodes {} ({} replicas per shard, {} shards)",
        s["node"],
        text(&s["nodes"]),
        s["replicas"],
        s["shards"]
    );
    let mut links = vec![];
    let mut shards = vec![];
    let mut readmissions = vec![];
    let mut snapshots = vec![];
    for core in s["cores"].as_array().into_iter().flatten() {
        for p in core["snapshots_sending"].as_array().into_iter().flatten() {
            let mb = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as f64 / (1 << 20) as f64;
            let state = match p["seconds"].as_f64() {
                Some(s) => format!("{:.1} of {:.1} MiB in {s:.1} s", mb(&p["sent_bytes"]), mb(&p["bytes"])),
                None => format!("{:.1} MiB, waiting its turn", mb(&p["bytes"])),
            };
            snapshots.push(vec![format!("{}/{}", text(&p["shard"]), text(&core["core"])), text(&p["to"]), state]);
        }
        for r in core["readmissions"].as_array().into_iter().flatten() {
            let waiting = r["waiting_shards"].as_array().map_or(0, |w| w.len());
            let state =
                if waiting == 0 { "done".to_string() } else { format!("{waiting} shards still count the old one") };
            readmissions.push(vec![
                format!("{}/{}", text(&r["node"]), text(&core["core"])),
                text(&r["incarnation"]),
                state,
            ]);
        }
        for l in core["links"].as_array().into_iter().flatten() {
            let up = if l["connected"] == true { "up" } else { "down" };
            links.push(vec![format!("{}/{}", text(&l["node"]), text(&core["core"])), text(&l["addr"]), up.to_string()]);
        }
        for g in core["groups"].as_array().into_iter().flatten() {
            let lag = g["follower_lag"]
                .as_object()
                .map(|m| m.iter().map(|(n, l)| format!("{n}:{l}")).collect::<Vec<_>>().join(","));
            shards.push(vec![
                text(&g["shard"]),
                text(&core["core"]),
                text(&g["replicas"]),
                text(&g["voters"]),
                text(&g["learners"]).replace("[]", "-"),
                text(&g["leader"]),
                text(&g["term"]),
                text(&g["commit"]),
                text(&g["applied"]),
                text(&g["keys"]),
                lag.filter(|l| !l.is_empty()).unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    if !links.is_empty() {
        println!();
        print_rows(&["PEER/CORE", "ADDR", "LINK"], &links);
    }
    if !readmissions.is_empty() {
        println!();
        print_rows(&["READMITTING/CORE", "NEW_DIRECTORY", "STATE"], &readmissions);
    }
    if !snapshots.is_empty() {
        println!();
        print_rows(&["SNAPSHOT/CORE", "TO", "SENT"], &snapshots);
    }
    println!();
    print_rows(
        &[
            "SHARD",
            "CORE",
            "REPLICAS",
            "VOTERS",
            "LEARNERS",
            "LEADER",
            "TERM",
            "COMMIT",
            "APPLIED",
            "KEYS",
            "FOLLOWER_LAG",
        ],
        &shards,
    );
}

fn print_rows(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn print_table(header: &[&str], row: &[String]) {
    let widths: Vec<usize> = header.iter().zip(row).map(|(h, r)| h.len().max(r.chars().count())).collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    line(row.to_vec());
}
