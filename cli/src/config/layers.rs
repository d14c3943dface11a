//! Where settings come from, and in what order they win:
//!
//! flags > environment (`KVD_*`) > config file (`--config`) > tuning
//! profile (`--profile`, `KVD_PROFILE`, or the file's `profile` key) >
//! defaults.
//!
//! Each layer is turned into a TOML table of the keys it sets and the
//! tables are laid over each other, so every setting is merged the same
//! way and remembers its source (`--print-config` shows it). A profile may
//! only set tuning keys ([`PROFILE_KEYS`]): a host's addresses, identity and
//! secrets belong to its config file. An unknown key or a value of the
//! wrong type is refused naming the file and the key; a value that parses
//! but is out of range is refused by validation, which the caller
//! annotates with the value's source ([`annotate`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use super::Options;

/// The keys a tuning profile may set.
pub const PROFILE_KEYS: &[&str] = &[
    "cores",
    "placement",
    "shards_per_core",
    "io_ring_depth",
    "spin_before_park_us",
    "preempt_timer_us",
    "request_shares",
    "background_shares",
    "io_memory_bytes",
    "wal_segment_bytes",
    "snapshot_wal_bytes",
    "wal_batch_bytes_max",
    "fsync",
    "max_memory",
    "eviction_policy",
    "compress_min_bytes",
    "max_connections",
    "max_pipeline_depth",
    "raft_log_retain_entries",
    "snapshot_send_rate",
];

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    Profile(PathBuf),
    File(PathBuf),
    Env,
    Flag,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Profile(p) => write!(f, "profile {}", p.display()),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env => f.write_str("environment"),
            Source::Flag => f.write_str("flag"),
        }
    }
}

/// The merged options and each setting's source, by key.
#[derive(Debug, Clone)]
pub struct Layered {
    pub options: Options,
    pub sources: BTreeMap<String, Source>,
}

/// Parses the command line (exiting with clap's message on a usage error,
/// or after `--help`), then lays the file, the profile and the defaults
/// under it.
pub fn load(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> Result<Layered, String> {
    let matches = Options::command().get_matches_from(args);
    let cli = Options::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let mut cli_sources = BTreeMap::new();
    for key in table(&cli).keys() {
        let source = match matches.value_source(key) {
            Some(ValueSource::EnvVariable) => Source::Env,
            _ => Source::Flag,
        };
        cli_sources.insert(key.clone(), source);
    }
    merge(cli, cli_sources)
}

/// Lays the file, the profile and the defaults under `cli`, whose keys
/// came from `cli_sources`.
pub fn merge(cli: Options, cli_sources: BTreeMap<String, Source>) -> Result<Layered, String> {
    let file = match &cli.config {
        Some(path) => Some((path.clone(), Options::from_file(path)?)),
        None => None,
    };
    let profile_path = cli.profile.clone().or_else(|| file.as_ref().and_then(|(_, f)| f.profile.clone()));
    let mut layers: Vec<(toml::Table, Source)> = vec![(table(&Options::defaults()), Source::Default)];
    if let Some(path) = profile_path {
        layers.push((read_profile(&path)?, Source::Profile(path)));
    }
    if let Some((path, options)) = &file {
        layers.push((table(options), Source::File(path.clone())));
    }
    let (mut merged, mut sources) = (toml::Table::new(), BTreeMap::new());
    for (layer, source) in layers {
        for (key, value) in layer {
            sources.insert(key.clone(), source.clone());
            merged.insert(key, value);
        }
    }
    for (key, value) in table(&cli) {
        sources.insert(key.clone(), cli_sources.get(&key).cloned().unwrap_or(Source::Flag));
        merged.insert(key, value);
    }
    let mut options: Options =
        toml::Value::Table(merged).try_into().map_err(|e| format!("settings do not fit together: {e}"))?;
    (options.config, options.print_config) = (cli.config, cli.print_config);
    Ok(Layered { options, sources })
}

/// The keys `options` sets, as a TOML table.
fn table(options: &Options) -> toml::Table {
    match toml::Value::try_from(options).expect("options serialise") {
        toml::Value::Table(t) => t,
        _ => unreachable!("options serialise as a table"),
    }
}

/// A profile's keys, checked: only tuning keys, each of the right type.
fn read_profile(path: &Path) -> Result<toml::Table, String> {
    let err = |why: String| format!("profile {}: {why}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let t: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    if let Some(key) = t.keys().find(|k| !PROFILE_KEYS.contains(&k.as_str())) {
        let why = match Options::known_key(key) {
            true => format!("`{key}` is not a tuning setting: set it in the config file or with a flag"),
            false => format!("unknown key `{key}`; a profile sets {}", PROFILE_KEYS.join(", ")),
        };
        return Err(err(why));
    }
    // Types checked as the config file's are.
    let typed: Options = toml::Value::Table(t).try_into().map_err(|e| err(e.to_string()))?;
    Ok(table(&typed))
}

/// A validation error (`"key: why"`) with the source of the key's value,
/// when that was a file.
pub fn annotate(error: String, sources: &BTreeMap<String, Source>) -> String {
    let key = error.split([':', ' ']).next().unwrap_or_default();
    match sources.get(key) {
        Some(source @ (Source::Profile(_) | Source::File(_))) => format!("{source}: {error}"),
        _ => error,
    }
}

/// The settings as TOML, each line followed by where its value came from.
pub fn describe(effective: &Options, sources: &BTreeMap<String, Source>) -> String {
    let mut out = String::new();
    for (key, value) in table(effective) {
        let line = format!("{key} = {value}");
        let source = sources.get(&key).cloned().unwrap_or(Source::Default);
        out.push_str(&format!("{line:<48} # {source}\n"));
    }
    out
}
