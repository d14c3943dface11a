//! Which life of each node this node has talked to.
//!
//! A node's data directory holds its Raft log and the votes it cast. A node
//! restarted on a wiped or new directory under its old id has forgotten
//! both: if it took part again it could vote twice in a term, or help elect
//! a leader that lacks an entry it had acknowledged, and an acknowledged
//! write would be lost (raft-rs also panics when a leader tells it of a
//! commit index past its empty log). So each data directory gets a random
//! **incarnation** when it is created (`<data-dir>/incarnation`), every
//! peer handshake carries both sides' incarnations, and every node records,
//! durably, the incarnation it first authenticated for each peer
//! (`<data-dir>/peers`). A peer that comes back with another incarnation is
//! refused in both directions; told so, it stops with a message.
//!
//! A cluster being created is unaffected: no node has recorded anything yet.
//!
//! **Readmission.** A node restarted on a new directory with `kvd --join`
//! says so (a flag in its handshake). Its connections are accepted, and
//! each core of this node readmits it (`Machine::readmit`): the groups
//! that still count its old directory (as a voter or a learner) neither
//! hear its votes and acknowledgements nor send it anything until they
//! have removed it; leaders then add it back as a learner, fill it and
//! promote it. Once every core reports that done for that directory
//! ([`Incarnations::core_clear`]), the record is replaced with the new
//! incarnation ([`Incarnations::replace`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const OWN_FILE: &str = "incarnation";
const PEERS_FILE: &str = "peers";

/// This node's incarnation and the ones it recorded for its peers; shared
/// by the node's cores.
#[derive(Debug)]
pub struct Incarnations {
    own: u64,
    /// Where the peers' incarnations are kept.
    file: PathBuf,
    known: Mutex<BTreeMap<u64, u64>>,
    /// Per (node, new incarnation) being readmitted: the cores whose groups
    /// no longer count the old one as a voter.
    clear: Mutex<BTreeMap<(u64, u64), BTreeSet<u32>>>,
}

/// A peer's incarnation against the one recorded for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never recorded: a peer met for the first time.
    New,
    Same,
    /// Another incarnation was recorded: the peer lost its data directory.
    Other(u64),
}

impl Incarnations {
    /// Reads this node's incarnation from `data_dir` (creating it, durably,
    /// if the directory has none: it is new) and the peers' records.
    pub fn open(data_dir: &Path) -> Result<Incarnations, String> {
        let own_path = data_dir.join(OWN_FILE);
        let own = match std::fs::read_to_string(&own_path) {
            Ok(text) => parse_hex(text.trim()).ok_or_else(|| format!("{}: not an incarnation", own_path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let own = rand::random::<u64>().max(1);
                kv_engine::fsutil::write_durable(&own_path, format!("{own:016x}\n").as_bytes())
                    .map_err(|e| format!("{}: {e}", own_path.display()))?;
                own
            }
            Err(e) => return Err(format!("{}: {e}", own_path.display())),
        };
        let file = data_dir.join(PEERS_FILE);
        let known = match std::fs::read_to_string(&file) {
            Ok(text) => parse_peers(&text).map_err(|e| format!("{}: {e}", file.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        Ok(Incarnations { own, file, known: Mutex::new(known), clear: Mutex::default() })
    }

    pub fn own(&self) -> u64 {
        self.own
    }

    pub fn seen(&self, node: u64, incarnation: u64) -> Seen {
        match self.known.lock().expect("not poisoned").get(&node) {
            None => Seen::New,
            Some(&known) if known == incarnation => Seen::Same,
            Some(&known) => Seen::Other(known),
        }
    }

    /// Records `node`'s incarnation, durably, if none is recorded yet (call
    /// only once the peer is authenticated). Returns what is recorded now.
    pub fn record(&self, node: u64, incarnation: u64) -> io::Result<Seen> {
        let mut known = self.known.lock().expect("not poisoned");
        if let Some(&k) = known.get(&node) {
            return Ok(if k == incarnation { Seen::Same } else { Seen::Other(k) });
        }
        known.insert(node, incarnation);
        // Rare (once per peer for the life of the data directory) and
        // small: written while holding the lock so records never race.
        if let Err(e) = kv_engine::fsutil::write_durable(&self.file, render_peers(&known).as_bytes()) {
            known.remove(&node);
            return Err(e);
        }
        Ok(Seen::New)
    }
}

impl Incarnations {
    /// Core `core` no longer counts `node`'s directory before `incarnation`
    /// as a voter in any of its groups.
    pub fn core_clear(&self, node: u64, incarnation: u64, core: u32) {
        self.clear.lock().expect("not poisoned").entry((node, incarnation)).or_default().insert(core);
    }

    /// Whether every one of this node's `cores` is clear of `node`'s old
    /// directory (see [`Incarnations::core_clear`]).
    pub fn admissible(&self, node: u64, incarnation: u64, cores: u32) -> bool {
        let clear = self.clear.lock().expect("not poisoned");
        clear.get(&(node, incarnation)).is_some_and(|c| (0..cores).all(|core| c.contains(&core)))
    }

    /// Replaces `node`'s record with `incarnation`, durably: its new
    /// directory is admitted (call only once [`Incarnations::admissible`]).
    pub fn replace(&self, node: u64, incarnation: u64) -> io::Result<()> {
        let mut known = self.known.lock().expect("not poisoned");
        let before = known.insert(node, incarnation);
        if before == Some(incarnation) {
            return Ok(());
        }
        if let Err(e) = kv_engine::fsutil::write_durable(&self.file, render_peers(&known).as_bytes()) {
            match before {
                Some(b) => known.insert(node, b),
                None => known.remove(&node),
            };
            return Err(e);
        }
        Ok(())
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok().filter(|&v| v != 0)
}

fn render_peers(known: &BTreeMap<u64, u64>) -> String {
    let mut out = String::from("# node id, then the incarnation of its data directory this node first met\n");
    for (node, inc) in known {
        out.push_str(&format!("{node} {inc:016x}\n"));
    }
    out
}

fn parse_peers(text: &str) -> Result<BTreeMap<u64, u64>, String> {
    let mut known = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: expected `NODE-ID INCARNATION`, got {line:?}", n + 1);
        let (node, inc) = line.split_once(' ').ok_or_else(bad)?;
        known.insert(node.parse().map_err(|_| bad())?, parse_hex(inc.trim()).ok_or_else(bad)?);
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_keeps_its_incarnation_and_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let first = Incarnations::open(dir.path()).unwrap();
        assert_eq!(first.seen(2, 7), Seen::New);
        assert_eq!(first.record(2, 7).unwrap(), Seen::New);
        assert_eq!(first.record(2, 8).unwrap(), Seen::Other(7), "a record is never replaced");
        assert_eq!(first.record(3, 9).unwrap(), Seen::New);
        let again = Incarnations::open(dir.path()).unwrap();
        assert_eq!(again.own(), first.own());
        assert_eq!((again.seen(2, 7), again.seen(2, 8), again.seen(3, 9)), (Seen::Same, Seen::Other(7), Seen::Same));
        let wiped = tempfile::tempdir().unwrap();
        let other = Incarnations::open(wiped.path()).unwrap();
        assert_ne!(other.own(), first.own(), "a new directory is a new incarnation");
        assert_eq!(other.seen(2, 7), Seen::New);
    }

    #[test]
    fn a_new_directory_is_admitted_once_every_core_is_clear_of_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let inc = Incarnations::open(dir.path()).unwrap();
        inc.record(2, 7).unwrap();
        assert!(!inc.admissible(2, 8, 2));
        inc.core_clear(2, 8, 1);
        assert!(!inc.admissible(2, 8, 2), "core 0 still counts the old directory");
        inc.core_clear(2, 9, 0);
        assert!(!inc.admissible(2, 8, 2), "clear of another directory");
        inc.core_clear(2, 8, 0);
        assert!(inc.admissible(2, 8, 2));
        inc.replace(2, 8).unwrap();
        assert_eq!((inc.seen(2, 8), inc.seen(2, 7)), (Seen::Same, Seen::Other(8)));
        let again = Incarnations::open(dir.path()).unwrap();
        assert_eq!(again.seen(2, 8), Seen::Same, "the replacement is durable");
    }

    #[test]
    fn damaged_files_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PEERS_FILE), "2 nothex\n").unwrap();
        let e = Incarnations::open(dir.path()).unwrap_err();
        assert!(e.contains("peers") && e.contains("line 1"), "{e}");
        std::fs::write(dir.path().join(OWN_FILE), "zz\n").unwrap();
        let e = Incarnations::open(dir.path()).unwrap_err();
        assert!(e.contains("incarnation"), "{e}");
    }
}
