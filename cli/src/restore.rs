//! `kvd restore FILE --data-dir DIR [--cores LIST] [--node-id N --peers
//! LIST --replication-factor R]`: a new data directory from a backup file
//! (`kvctl snapshot save`, format in [`crate::backup`]).
//!
//! The whole file is verified first (header, every shard's checksummed
//! snapshot, the trailer's checksum); a corrupt or truncated file, or a
//! data directory that exists and is not empty, is refused and nothing is
//! changed. The directory is built next to DIR under a temporary name and
//! renamed into place at the end, so a failure leaves nothing half-made:
//!
//! - `layout.toml`: a [`Layout`] with the backup's shard count (so the core
//!   count must divide it: shards = cores × shards-per-core), this node's
//!   id, and the new cluster's nodes and replication factor;
//! - for every shard this node holds, its snapshot in `core-<c>/snap/`,
//!   its membership rewritten to the new layout's replicas of the shard.
//!
//! kvd started on it loads the snapshots (each group's voters from the
//! snapshot, commit = the snapshot's index; the WAL starts empty) and
//! elects leaders: the seed of a new single node or cluster. For a cluster,
//! every node is restored from the same file with its own `--node-id` and
//! the same `--peers` and `--replication-factor`.
//!
//! Exit codes: 0 restored; 1 refused (a bad file, a non-empty directory,
//! an IO error); 2 usage (flags, or a core count that does not divide the
//! backup's shards).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use kv_engine::snapshot;
use kv_replication::Layout;

use crate::backup::{self, Backup};

const EXIT_REFUSED: u8 = 1;
const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "kvd restore",
    bin_name = "kvd restore",
    about = "Create a new data directory from a backup file (kvctl snapshot save)",
    after_help = "For a new cluster, restore every node from the same file with its own --node-id and the same \
                  --peers and --replication-factor, then start each node with those flags and its data directory."
)]
struct Args {
    /// The backup file.
    file: PathBuf,
    /// The data directory to create; it must not exist, or be empty.
    #[arg(long)]
    data_dir: PathBuf,
    /// The CPUs kvd will run on, as kvd's --cores (`all`, `0,1`, `0-3`);
    /// their number must divide the backup's shard count [default: all
    /// online CPUs].
    #[arg(long)]
    cores: Option<String>,
    /// This node's id.
    #[arg(long, default_value_t = 1)]
    node_id: u64,
    /// Every node of the new cluster, as kvd's --peers (`1=HOST:PORT,...`);
    /// none: a single node.
    #[arg(long)]
    peers: Option<String>,
    /// Replicas per shard in the new cluster [default: min(3, nodes)].
    #[arg(long)]
    replication_factor: Option<u32>,
}

/// Why the restore did not happen.
#[derive(Debug)]
struct Refusal {
    code: u8,
    message: String,
}

fn refuse(message: impl Into<String>) -> Refusal {
    Refusal { code: EXIT_REFUSED, message: message.into() }
}

fn usage(message: impl Into<String>) -> Refusal {
    Refusal { code: EXIT_USAGE, message: message.into() }
}

/// `kvd restore`'s entry point: `args` are those after `restore`.
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let args = match Args::try_parse_from(std::iter::once("kvd restore".to_string()).chain(args)) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    match run(&args) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(r) => {
            eprintln!("kvd restore: {}", r.message);
            ExitCode::from(r.code)
        }
    }
}

/// The new cluster's shape, from the flags.
struct Members {
    node_id: u64,
    nodes: Vec<u64>,
    replicas: u32,
}

fn members(args: &Args) -> Result<Members, Refusal> {
    if args.node_id == 0 {
        return Err(usage("--node-id must be at least 1"));
    }
    let Some(peers) = args.peers.as_deref().filter(|p| !p.trim().is_empty()) else {
        if args.replication_factor.is_some_and(|r| r != 1) {
            return Err(usage("--replication-factor needs --peers (a single node has one replica per shard)"));
        }
        return Ok(Members { node_id: args.node_id, nodes: vec![args.node_id], replicas: 1 });
    };
    let peers = crate::config::parse_peers(peers).map_err(usage)?;
    if !peers.contains_key(&args.node_id) {
        return Err(usage(format!("--peers does not list this node's id {}", args.node_id)));
    }
    let nodes: Vec<u64> = peers.keys().copied().collect();
    let replicas = args.replication_factor.unwrap_or((nodes.len() as u32).min(3));
    if replicas == 0 || replicas as usize > nodes.len() {
        return Err(usage(format!("--replication-factor {replicas} must be between 1 and the {} nodes", nodes.len())));
    }
    Ok(Members { node_id: args.node_id, nodes, replicas })
}

fn online_cpus() -> Result<usize, Refusal> {
    std::thread::available_parallelism().map(|n| n.get()).map_err(|e| refuse(format!("cannot count the CPUs: {e}")))
}

/// How many cores `--cores` selects (kvd's syntax; the CPUs need not be
/// online here: only their number matters to the layout).
fn core_count(cores: Option<&str>) -> Result<usize, Refusal> {
    let text = match cores {
        None | Some("all") => return online_cpus(),
        Some(t) => t,
    };
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let err = || usage(format!("--cores: {part:?} in {text:?} is not a CPU number or range like 0-3"));
        let (lo, hi): (usize, usize) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().map_err(|_| err())?, b.trim().parse().map_err(|_| err())?),
            None => {
                let n = part.parse().map_err(|_| err())?;
                (n, n)
            }
        };
        if lo > hi || hi - lo > 1 << 16 {
            return Err(err());
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus.len())
}

/// Refuses a core count that does not divide the backup's shards, naming
/// the counts that do.
fn check_cores(cores: usize, shards: u32, given: bool) -> Result<u32, Refusal> {
    if (shards as usize).checked_rem(cores) == Some(0) {
        return Ok(cores as u32);
    }
    let fits: Vec<String> = (1..=shards).filter(|c| shards.checked_rem(*c) == Some(0)).map(|c| c.to_string()).collect();
    let which =
        if given { format!("--cores selects {cores} CPUs") } else { format!("this machine has {cores} online CPUs") };
    Err(usage(format!(
        "the backup has {shards} shards and a data directory has cores × shards-per-core shards, so the number of \
         cores must divide {shards}: {which}. Give --cores with one of these many CPUs: {} (e.g. --cores 0 for one, \
         --cores 0-1 for two), and start kvd with the same --cores",
        fits.join(", ")
    )))
}

/// DIR must not exist, or be an empty directory.
fn check_target(dir: &Path) -> Result<(), Refusal> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(refuse(format!("data directory {}: {e}", dir.display()))),
        Ok(m) if !m.is_dir() => Err(refuse(format!("{} exists and is not a directory", dir.display()))),
        Ok(_) => {
            let mut entries = std::fs::read_dir(dir).map_err(|e| refuse(format!("{}: {e}", dir.display())))?;
            match entries.next() {
                None => Ok(()),
                Some(_) => Err(refuse(format!(
                    "the data directory {} is not empty: a restore creates a new data directory and never \
                     touches an existing one (move it aside, or give another --data-dir)",
                    dir.display()
                ))),
            }
        }
    }
}

/// A directory under construction: removed when dropped unless committed.
struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> Refusal + '_ {
    move |e| refuse(format!("{}: {e}", what.display()))
}

fn run(args: &Args) -> Result<String, Refusal> {
    let members = members(args)?;
    let cores_given = args.cores.is_some();
    let cores = core_count(args.cores.as_deref())?;
    check_target(&args.data_dir)?;
    let data = std::fs::read(&args.file).map_err(|e| refuse(format!("cannot read {}: {e}", args.file.display())))?;
    let backup = backup::verify(&data)
        .map_err(|e| refuse(format!("{} is not a usable backup, nothing was restored: {e}", args.file.display())))?;
    let shards = backup.header.shards;
    let cores = check_cores(cores, shards, cores_given)?;
    // A single node is a cluster of itself (what `Layout::new` makes too).
    let layout = Layout::cluster(members.node_id, members.nodes.clone(), members.replicas, cores, shards / cores);
    assert_eq!(layout.shards, shards, "cores × shards per core is the backup's shard count");
    let (held, keys) = build(args, &layout, &backup)?;
    let header = &backup.header;
    let cluster = match &args.peers {
        Some(p) => format!(" --peers {p} --replication-factor {} --cluster-secret-file ...", layout.replicas),
        None => String::new(),
    };
    Ok(format!(
        "restored {file} ({taken} keys in {shards} shards, from a {n}-node cluster with {r} replicas per shard) \
         into {dir}: node {node} of nodes {nodes:?}, {cores} cores, {held} shards and {keys} keys on this node.\n\
         Start it with: kvd --data-dir {dir} --cores {cores_flag} --node-id {node}{cluster}",
        file = args.file.display(),
        taken = backup.keys(),
        n = header.nodes,
        r = header.replicas,
        dir = args.data_dir.display(),
        node = layout.node_id,
        nodes = layout.nodes,
        cores_flag = args.cores.as_deref().unwrap_or("all"),
    ))
}

/// Builds the data directory under a temporary name beside DIR and renames
/// it into place. Returns the shards and keys this node holds.
fn build(args: &Args, layout: &Layout, backup: &Backup<'_>) -> Result<(u32, u64), Refusal> {
    let dir = &args.data_dir;
    let name = dir.file_name().ok_or_else(|| usage(format!("--data-dir {} has no name", dir.display())))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    kv_engine::fsutil::create_dir_durable(&parent).map_err(io(&parent))?;
    let mut staging_name = std::ffi::OsString::from(".");
    staging_name.push(name);
    staging_name.push(format!(".restore-{}", std::process::id()));
    let staging = Staging { path: parent.join(staging_name), committed: false };
    if staging.path.exists() {
        std::fs::remove_dir_all(&staging.path).map_err(io(&staging.path))?;
    }
    std::fs::create_dir(&staging.path).map_err(io(&staging.path))?;
    Layout::load_or_create(&staging.path, layout.clone()).map_err(|e| refuse(e.to_string()))?;
    let core_dir = |c: u32| staging.path.join(format!("core-{c}"));
    for c in 0..layout.cores {
        std::fs::create_dir_all(core_dir(c).join("snap")).map_err(io(&core_dir(c)))?;
    }
    let (mut held, mut keys) = (0, 0);
    for copy in backup.shards.iter().filter(|s| layout.hosts(s.shard)) {
        let origin = PathBuf::from(format!("{} (shard {})", args.file.display(), copy.shard));
        let (mut meta, entries) = snapshot::decode(copy.snapshot, &origin).map_err(|e| refuse(e.to_string()))?;
        // The new cluster's members: the old ones may not exist any more.
        meta.conf_state = kv_replication::conf_state_of_voters(&layout.replicas_of(copy.shard));
        let bytes = snapshot::encode_blocking(&meta, &entries);
        let snap_dir = core_dir(layout.core_of_shard(copy.shard)).join("snap");
        let path = snap_dir.join(snapshot::file_name(meta.group, meta.index));
        kv_engine::fsutil::write_durable(&path, &bytes).map_err(io(&path))?;
        held += 1;
        keys += entries.len() as u64;
    }
    // IMPORTANT: directory fsyncs, innermost first: every entry is durable
    // before the rename that makes the directory visible under its name.
    for c in 0..layout.cores {
        kv_engine::fsutil::sync_dir(&core_dir(c).join("snap")).map_err(io(&core_dir(c)))?;
        kv_engine::fsutil::sync_dir(&core_dir(c)).map_err(io(&core_dir(c)))?;
    }
    kv_engine::fsutil::sync_dir(&staging.path).map_err(io(&staging.path))?;
    // Checked again just before: another process may have filled DIR.
    check_target(dir)?;
    let mut staging = staging;
    std::fs::rename(&staging.path, dir).map_err(io(dir))?;
    staging.committed = true;
    kv_engine::fsutil::sync_dir(&parent).map_err(io(&parent))?;
    Ok((held, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_counts() {
        assert_eq!(core_count(Some("0")).ok(), Some(1));
        assert_eq!(core_count(Some("0-3")).ok(), Some(4));
        assert_eq!(core_count(Some("0,2-3,3")).ok(), Some(3));
        assert!(core_count(Some("x")).is_err());
        assert!(core_count(Some("3-1")).is_err());
        assert_eq!(check_cores(2, 16, true).ok(), Some(2));
        let err = check_cores(3, 16, true).unwrap_err();
        assert_eq!(err.code, EXIT_USAGE);
        assert!(err.message.contains("1, 2, 4, 8, 16"), "{}", err.message);
    }

    #[test]
    fn members_from_flags() {
        let args = |extra: &[&str]| Args::try_parse_from(["kvd restore", "f", "--data-dir", "d"].iter().chain(extra));
        let m = members(&args(&[]).unwrap()).unwrap();
        assert_eq!((m.node_id, m.nodes, m.replicas), (1, vec![1], 1));
        let peers = "1=127.0.0.1:7480,2=127.0.0.2:7480,3=127.0.0.3:7480";
        let m = members(&args(&["--node-id", "2", "--peers", peers]).unwrap()).unwrap();
        assert_eq!((m.node_id, m.nodes, m.replicas), (2, vec![1, 2, 3], 3));
        assert!(members(&args(&["--node-id", "4", "--peers", peers]).unwrap()).is_err());
        assert!(members(&args(&["--peers", peers, "--replication-factor", "4"]).unwrap()).is_err());
        assert!(members(&args(&["--replication-factor", "2"]).unwrap()).is_err());
    }

    #[test]
    fn a_non_empty_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_target(&dir.path().join("new")).is_ok());
        assert!(check_target(dir.path()).is_ok(), "empty");
        std::fs::write(dir.path().join("x"), b"x").unwrap();
        assert!(check_target(dir.path()).unwrap_err().message.contains("not empty"));
        assert!(check_target(&dir.path().join("x")).unwrap_err().message.contains("not a directory"));
    }
}
