//! How raft-rs's log entries and membership map onto WAL records, and back.
//!
//! The engine's [`Record`] knows nothing of Raft; this is the one place that
//! translates. kvd never proposes with an entry context, so the record does
//! not carry one (asserted).

use bytes::Bytes;
use kv_engine::wal::Record;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType};

pub(crate) fn entry_record(group: u32, e: &Entry) -> Record {
    assert!(e.context.is_empty(), "kvd never proposes with a context");
    let entry_type = match e.get_entry_type() {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    };
    Record::Entry { group, term: e.term, index: e.index, entry_type, data: e.data.clone() }
}

/// Rebuilds a raft entry from its WAL record.
pub(crate) fn entry_from_record(term: u64, index: u64, entry_type: u8, data: Bytes) -> Result<Entry, String> {
    let mut e = Entry::default();
    e.set_entry_type(match entry_type {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        t => return Err(format!("unknown entry type {t}")),
    });
    e.term = term;
    e.index = index;
    e.data = data;
    Ok(e)
}

pub(crate) fn conf_state_record(group: u32, index: u64, cs: &ConfState) -> Record {
    Record::ConfState { group, index, data: conf_state_bytes(cs) }
}

pub(crate) fn conf_state_bytes(cs: &ConfState) -> Bytes {
    cs.write_to_bytes().expect("conf state encodes").into()
}

pub(crate) fn conf_state_from_bytes(data: &[u8]) -> Result<ConfState, String> {
    ConfState::parse_from_bytes(data).map_err(|e| format!("conf state does not decode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_conf_states_round_trip() {
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        (e.term, e.index, e.data) = (3, 17, Bytes::from_static(b"cc"));
        let Record::Entry { group, term, index, entry_type, data } = entry_record(5, &e) else {
            panic!("an entry becomes an entry record")
        };
        assert_eq!((group, term, index, entry_type), (5, 3, 17, 2));
        assert_eq!(entry_from_record(term, index, entry_type, data).unwrap(), e);
        assert!(entry_from_record(1, 1, 9, Bytes::new()).is_err());
        let cs = ConfState { voters: vec![1, 2, 3], learners: vec![4], ..ConfState::default() };
        let Record::ConfState { data, .. } = conf_state_record(5, 17, &cs) else { panic!("a conf state record") };
        assert_eq!(conf_state_from_bytes(&data).unwrap(), cs);
    }
}
