//! Starting a core from its data directory: read each shard's newest
//! snapshot and the WAL from disk, hand them to the [`Restorer`] (which
//! rebuilds the state machine without IO), open the WAL for writing, and
//! start the glue.

use std::path::Path;
use std::rc::Rc;

use kv_engine::snapshot::{self, SnapshotError};
use kv_engine::wal::{self, Wal, WalConfig};

use crate::core::Core;
use crate::machine::MachineConfig;
use crate::restore::{RestoreConfig, Restorer, StartError};
use crate::transport::Transport;
use crate::CoreConfig;

impl Core {
    /// Opens (or creates) the core's data and starts its driver.
    pub async fn open(config: CoreConfig, transport: Box<dyn Transport>) -> Result<Core, StartError> {
        let mut restorer = Restorer::new(config.core, config.layout.shards_of_core(config.core));
        let mut wal = None;
        if let Some(p) = &config.persistence {
            let (wal_dir, snap_dir) = (p.dir.join("wal"), p.dir.join("snap"));
            for dir in [&p.dir, &wal_dir, &snap_dir] {
                kv_engine::fsutil::create_dir_durable(dir)
                    .map_err(|e| StartError::Dir { path: dir.display().to_string(), why: e.to_string() })?;
            }
            load_snapshots(&snap_dir, &mut restorer)?;
            let recovered = wal::recover(&wal_dir, config.core, |record| restorer.replay(record))?;
            tracing::info!(
                core = config.core,
                records = recovered.records,
                segments = recovered.segments.len(),
                "WAL replayed"
            );
            let wal_config =
                WalConfig { dir: wal_dir, core: config.core, segment_bytes: p.segment_bytes, fsync: p.fsync };
            wal = Some(Rc::new(Wal::open(wal_config, recovered).await?));
        }
        let machine = MachineConfig {
            node_id: config.layout.node_id,
            core: config.core,
            durable: config.persistence.is_some(),
            wal_batch_bytes_max: config.persistence.as_ref().map_or(0, |p| p.wal_batch_bytes_max),
        };
        let restore = RestoreConfig {
            machine,
            tick: config.tick,
            log_retain_entries: config.log_retain_entries,
            compress_min_bytes: config.compress_min_bytes,
        };
        let machine = restorer.finish(restore, |shard| config.layout.replicas_of(shard), config.layout.joined)?;
        Ok(Core::start(config, machine, wal, transport))
    }
}

/// Hands the newest snapshot of every shard in `dir` to the restorer.
fn load_snapshots(dir: &Path, restorer: &mut Restorer) -> Result<(), StartError> {
    for (group, files) in snapshot::list(dir)? {
        let (index, path) = files.last().expect("listed groups have files");
        let (meta, entries) = snapshot::read(path)?;
        if meta.group != group || meta.index != *index {
            let reason =
                format!("file name says shard {group} at {index}, content says shard {} at {}", meta.group, meta.index);
            return Err(SnapshotError::Corrupt { path: path.clone(), reason }.into());
        }
        restorer.load_snapshot(meta, entries, path)?;
    }
    Ok(())
}
