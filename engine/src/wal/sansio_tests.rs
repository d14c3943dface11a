//! Tests of the sans-IO WAL alone: [`WalState`] runs its plans against an
//! in-memory disk (one zero-filled `Vec` per segment, as preallocation
//! leaves it), and [`scan`] reads that disk back. No executor, no files.
//! The plans must produce byte for byte the files the glommio writer wrote
//! before the split (`tests::GOLDEN`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};

use super::record::{self, Decoded};
use super::segment::{self, SEGMENT_BYTES_MIN, SEGMENT_HEADER_BYTES};
use super::tests::{entries_only, entry, golden_batches, hard_state, GOLDEN};
use super::*;

const DIR: &str = "/wal";
const BLOCK: u64 = SEGMENT_HEADER_BYTES as u64;

/// Segment files by sequence number.
#[derive(Default, Clone)]
struct Disk {
    files: BTreeMap<u64, Vec<u8>>,
}

impl Disk {
    /// Does what the glommio `Wal` does with a plan, in the same order.
    fn run(&mut self, plan: &FlushPlan) {
        if let Some(rotation) = &plan.rotate {
            if let Some(old) = rotation.sync_old {
                assert_eq!(old + 1, rotation.seq, "the old segment precedes the new one");
                assert!(self.files.contains_key(&old), "the old segment exists");
            }
            assert_eq!(rotation.path, segment::path(Path::new(DIR), rotation.seq));
            let fresh = vec![0u8; rotation.capacity as usize];
            assert!(self.files.insert(rotation.seq, fresh).is_none(), "segments are created new");
        }
        assert_eq!(plan.write_offset % BLOCK, 0, "writes start at a block boundary");
        assert_eq!(plan.write_bytes.len() as u64 % BLOCK, 0, "writes are whole blocks");
        let file = self.files.get_mut(&plan.write_seq).expect("the written segment exists");
        let (at, bytes) = (plan.write_offset as usize, &plan.write_bytes);
        if file.len() < at + bytes.len() {
            file.resize(at + bytes.len(), 0);
        }
        file[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn scan(&self) -> Result<(Vec<Record>, Recovered, Vec<Repair>), WalError> {
        let mut records = Vec::new();
        let segments = self.files.iter().map(|(&seq, data)| (seq, data.clone())).collect();
        let (recovered, repairs) = scan(0, Path::new(DIR), segments, |r| {
            records.push(r);
            Ok(())
        })?;
        Ok((records, recovered, repairs))
    }
}

/// What a finished flush did, for the tests to look at.
struct Done {
    rotate: Option<Rotation>,
    seq: u64,
    offset: u64,
    bytes: Vec<u8>,
    end: u64,
    batch: u64,
}

fn fresh(segment_bytes: u64) -> WalState {
    let recovered = Recovered { next_batch: 1, ..Recovered::default() };
    WalState::new(0, segment_bytes, FsyncPolicy::Always, PathBuf::from(DIR), recovered)
}

/// Stages `batch`, plans the flush, runs it on `disk`, reports success.
fn flush(state: &mut WalState, disk: &mut Disk, batch: &[Record]) -> Done {
    for r in batch {
        state.append(r);
    }
    let plan = state.begin_flush().unwrap().expect("something staged");
    assert!(state.is_flushing());
    assert!(plan.sync, "policy always");
    disk.run(&plan);
    let done = Done {
        rotate: plan.rotate.clone(),
        seq: plan.write_seq,
        offset: plan.write_offset,
        bytes: plan.write_bytes.clone(),
        end: plan.end(),
        batch: plan.batch,
    };
    state.finish_flush(plan, Ok(())).unwrap();
    assert!(!state.is_flushing());
    done
}

/// The records at the start of a segment, up to its first entry.
fn leading_meta(data: &[u8]) -> Vec<(Record, u64)> {
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    while let Decoded::Record { record, batch, encoded_len, .. } = record::decode(&data[at..]) {
        if matches!(record, Record::Entry { .. }) {
            break;
        }
        out.push((record, batch));
        at += encoded_len;
    }
    out
}

#[test]
fn plans_write_the_golden_bytes_and_scan_reads_them_back() {
    let mut disk = Disk::default();
    let mut state = fresh(SEGMENT_BYTES_MIN);
    let first = golden_batches(1..=30);
    for batch in &first {
        flush(&mut state, &mut disk, batch);
    }
    // Reopen from what the disk holds: the kept block comes from the scan.
    let (_, recovered, repairs) = disk.scan().unwrap();
    assert!(repairs.is_empty());
    let tail = recovered.tail.clone().expect("a tail");
    assert_eq!(tail.end % BLOCK, tail.last_block.len() as u64);
    let mut state = WalState::new(0, SEGMENT_BYTES_MIN, FsyncPolicy::Always, PathBuf::from(DIR), recovered);
    let second = golden_batches(31..=45);
    let done = flush(&mut state, &mut disk, &second[0]);
    assert!(done.rotate.is_none(), "the reopened WAL continues its last segment");
    assert_eq!((done.seq, done.offset), (tail.seq, tail.end - tail.last_block.len() as u64));
    assert_eq!(&done.bytes[..tail.last_block.len()], &tail.last_block[..], "the kept block is rewritten");
    for batch in &second[1..] {
        flush(&mut state, &mut disk, batch);
    }
    let found: Vec<(String, usize, u32)> =
        disk.files.iter().map(|(&seq, d)| (segment::file_name(seq), d.len(), crc32fast::hash(d))).collect();
    let want: Vec<(String, usize, u32)> = GOLDEN.iter().map(|&(n, l, c)| (n.to_string(), l, c)).collect();
    assert_eq!(found, want, "byte for byte what the glommio writer wrote");

    let (records, recovered, repairs) = disk.scan().unwrap();
    assert!(repairs.is_empty() && recovered.warnings.is_empty(), "{:?}", recovered.warnings);
    let all: Vec<Record> = first.into_iter().chain(second).flatten().collect();
    assert_eq!(entries_only(records), entries_only(all));
    assert_eq!(recovered.next_batch, 46);
    assert_eq!(state.segments().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(state.segments().cloned().collect::<Vec<_>>(), recovered.segments, "same bookkeeping as a scan");
}

#[test]
fn a_flush_rewrites_the_kept_partial_block() {
    let mut disk = Disk::default();
    let mut state = fresh(SEGMENT_BYTES_MIN);
    assert!(state.begin_flush().unwrap().is_none(), "nothing staged, nothing to do");
    let first = flush(&mut state, &mut disk, &[entry(0, 1, 10), hard_state(0, 1)]);
    let rotation = first.rotate.expect("the first flush creates segment 1");
    assert_eq!((rotation.sync_old, rotation.seq, rotation.capacity), (None, 1, SEGMENT_BYTES_MIN));
    assert_eq!(first.offset, 0);
    assert_eq!(&first.bytes[..SEGMENT_HEADER_BYTES], &segment::encode_header(0, 1, SEGMENT_BYTES_MIN)[..]);
    assert_eq!(first.bytes.len() as u64, 2 * BLOCK);
    assert_eq!(state.current_segment(), Some(1));

    let second = flush(&mut state, &mut disk, &[entry(0, 2, 20)]);
    assert!(second.rotate.is_none());
    assert_eq!((second.seq, second.offset, second.batch), (1, BLOCK, first.batch + 1));
    assert_eq!(&second.bytes[..(first.end - BLOCK) as usize], &first.bytes[BLOCK as usize..first.end as usize]);
    assert!(second.bytes[(second.end - BLOCK) as usize..].iter().all(|&b| b == 0), "zero padding");
    assert_eq!(state.bytes_since_compaction(), (first.end - BLOCK) + (second.end - first.end));

    let (records, recovered, _) = disk.scan().unwrap();
    assert_eq!(records, vec![entry(0, 1, 10), hard_state(0, 1), entry(0, 2, 20)]);
    assert_eq!(recovered.tail.unwrap().end, second.end);
}

#[test]
fn a_full_segment_rotates_to_one_that_starts_with_the_checkpoint() {
    let mut disk = Disk::default();
    let mut state = fresh(SEGMENT_BYTES_MIN);
    let conf = Record::ConfState { group: 1, index: 1, data: bytes::Bytes::from_static(b"voters") };
    flush(&mut state, &mut disk, &[entry(0, 1, 10), hard_state(0, 1), conf.clone()]);
    let mut i = 2;
    let done = loop {
        let done = flush(&mut state, &mut disk, &[entry(0, i, 3000), hard_state(0, i)]);
        if done.rotate.is_some() {
            break done;
        }
        i += 1;
    };
    let rotation = done.rotate.unwrap();
    assert_eq!((rotation.sync_old, rotation.seq, done.seq, done.offset), (Some(1), 2, 2, 0));
    // Segment 1 could not take the batch; it was not written to.
    assert!(disk.files[&1].len() as u64 >= SEGMENT_BYTES_MIN);
    let data = &disk.files[&2];
    assert_eq!(&data[..SEGMENT_HEADER_BYTES], &segment::encode_header(0, 2, rotation.capacity)[..]);
    // The checkpoint is the state as of the previous batch, numbered with
    // this batch; this batch's entry follows it.
    assert_eq!(leading_meta(data), vec![(hard_state(0, i - 1), done.batch), (conf, done.batch)]);
    assert_eq!((state.current_segment(), state.segment_count()), (Some(2), 2));
}

#[test]
fn a_batch_bigger_than_a_segment_gets_a_segment_of_its_size() {
    let mut disk = Disk::default();
    let mut state = fresh(SEGMENT_BYTES_MIN);
    flush(&mut state, &mut disk, &[entry(0, 1, 10)]);
    let big = entry(0, 2, 300 * 1024);
    let done = flush(&mut state, &mut disk, std::slice::from_ref(&big));
    let capacity = done.rotate.expect("rotates").capacity;
    assert!(capacity > SEGMENT_BYTES_MIN && capacity.is_multiple_of(BLOCK) && capacity >= done.end);
    assert_eq!(disk.scan().unwrap().0.last(), Some(&big));
}

#[test]
fn a_failed_flush_poisons_for_good() {
    let mut disk = Disk::default();
    let mut state = fresh(SEGMENT_BYTES_MIN);
    flush(&mut state, &mut disk, &[entry(0, 1, 10)]);
    state.append(&entry(0, 2, 10));
    let plan = state.begin_flush().unwrap().unwrap();
    let failed = WalError::io(Path::new(DIR), "fdatasync segment", std::io::Error::other("disk on fire"));
    let err = state.finish_flush(plan, Err(failed)).unwrap_err();
    assert!(matches!(&err, WalError::Poisoned(why) if why.contains("disk on fire")), "{err}");
    assert!(!state.is_flushing());
    assert!(state.poisoned().unwrap().contains("disk on fire"));
    // The bookkeeping did not advance past the failed batch.
    assert_eq!(state.bytes_since_compaction(), entry(0, 1, 10).encoded_len() as u64);
    assert_eq!(state.segments().next().unwrap().max_index[&0], 1);
    state.append(&entry(0, 3, 10));
    assert!(matches!(state.begin_flush(), Err(WalError::Poisoned(_))));
    assert!(matches!(state.sync_target(), Err(WalError::Poisoned(_))));
    state.poison("a later failure".into());
    assert!(state.poisoned().unwrap().contains("disk on fire"), "the first reason is kept");
}

#[test]
#[should_panic(expected = "two WAL flushes at once")]
fn two_flushes_at_once_are_refused() {
    let mut state = fresh(SEGMENT_BYTES_MIN);
    state.append(&entry(0, 1, 10));
    let _plan = state.begin_flush().unwrap();
    state.append(&entry(0, 2, 10));
    let _ = state.begin_flush();
}

#[test]
fn compaction_takes_a_covered_prefix_and_never_the_newest_segment() {
    let mut disk = Disk::default();
    let mut state = fresh(SEGMENT_BYTES_MIN);
    for i in 1..=60 {
        flush(&mut state, &mut disk, &[entry(0, i, 4000), entry(1, i, 10)]);
    }
    let maxima: Vec<u64> = state.segments().map(|m| m.max_index[&0]).collect();
    assert!(maxima.len() >= 4, "{maxima:?}");

    // A group whose snapshot lags holds everything back.
    assert!(state.take_compactable(|g| if g == 0 { u64::MAX } else { 0 }).is_empty());
    assert_eq!(state.bytes_since_compaction(), 0);
    // Exactly the segments the snapshots cover, oldest first.
    let doomed = state.take_compactable(|_| maxima[1]);
    assert_eq!(doomed.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(doomed[0].path, segment::path(Path::new(DIR), 1));
    // Everything covered: all but the newest.
    let newest = state.current_segment().unwrap();
    let doomed = state.take_compactable(|_| u64::MAX);
    assert_eq!(doomed.last().unwrap().seq, newest - 1);
    assert_eq!(state.segments().map(|m| m.seq).collect::<Vec<_>>(), vec![newest]);
    assert!(state.take_compactable(|_| u64::MAX).is_empty());
}

/// While a rotation is in flight, the segment it rotates out is still the
/// newest known one: compaction keeps it, and may take it once the flush
/// finished (the new segment starts with the checkpoint).
#[test]
fn compaction_mid_rotation_keeps_the_segment_rotated_out() {
    let mut disk = Disk::default();
    let mut state = fresh(SEGMENT_BYTES_MIN);
    for i in 1..=40 {
        flush(&mut state, &mut disk, &[entry(0, i, 4000)]);
    }
    state.append(&entry(0, 41, 60 * 1024));
    let plan = state.begin_flush().unwrap().unwrap();
    let old = plan.rotate.as_ref().and_then(|r| r.sync_old).expect("the batch rotates");
    let taken = state.take_compactable(|_| u64::MAX);
    assert!(!taken.is_empty() && taken.iter().all(|m| m.seq < old));
    assert_eq!(state.segments().map(|m| m.seq).collect::<Vec<_>>(), vec![old]);
    disk.run(&plan);
    state.finish_flush(plan, Ok(())).unwrap();
    assert_eq!(state.segments().map(|m| m.seq).collect::<Vec<_>>(), vec![old, old + 1]);
    let taken = state.take_compactable(|_| u64::MAX);
    assert_eq!(taken.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![old]);
}

#[test]
fn random_batches_read_back_in_order() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut disk = Disk::default();
    let mut state = fresh(SEGMENT_BYTES_MIN);
    let mut want = Vec::new();
    let mut index = [0u64; 3];
    // The model of the checkpoint: each group's latest hard state.
    let mut latest = BTreeMap::new();
    let mut rotations = 0;
    for _ in 0..300 {
        let mut batch = Vec::new();
        for _ in 0..rng.gen_range(1..6) {
            let group = rng.gen_range(0..3usize);
            index[group] += 1;
            let len = if rng.gen_bool(0.02) { rng.gen_range(0..100_000) } else { rng.gen_range(0..3000) };
            batch.push(entry(group as u32, index[group], len));
            if rng.gen_bool(0.3) {
                batch.push(hard_state(group as u32, index[group]));
            }
        }
        let done = flush(&mut state, &mut disk, &batch);
        if done.rotate.is_some() && done.seq > 1 {
            let want: Vec<(Record, u64)> = latest.values().map(|r: &Record| (r.clone(), done.batch)).collect();
            assert_eq!(leading_meta(&disk.files[&done.seq]), want, "checkpoint of segment {}", done.seq);
            rotations += 1;
        }
        for r in &batch {
            if let Record::HardState { group, .. } = r {
                latest.insert(*group, r.clone());
            }
        }
        want.extend(batch);
    }
    assert!(rotations > 5, "{rotations} rotations");
    let (records, recovered, repairs) = disk.scan().unwrap();
    assert!(repairs.is_empty() && recovered.warnings.is_empty());
    assert_eq!(entries_only(records), entries_only(want));
    assert_eq!(recovered.next_batch, state.next_batch());
    assert_eq!(recovered.latest_meta, latest.into_values().collect::<Vec<_>>());
}

/// A disk with one segment of four batches; the start of the last record.
fn four_batches() -> (Disk, usize) {
    let mut disk = Disk::default();
    let mut state = fresh(SEGMENT_BYTES_MIN);
    let mut last = 0;
    for i in 1..=4 {
        last = flush(&mut state, &mut disk, &[entry(0, i, 200)]).end as usize - entry(0, i, 200).encoded_len();
    }
    (disk, last)
}

/// Applies repairs the way `recover` does, to the in-memory disk.
fn repair(disk: &mut Disk, repairs: &[Repair]) {
    for r in repairs {
        match r {
            Repair::RemoveSegment { seq, .. } => assert!(disk.files.remove(seq).is_some()),
            Repair::ZeroTail { seq, from, to, .. } => {
                disk.files.get_mut(seq).unwrap()[*from as usize..*to as usize].iter_mut().for_each(|b| *b = 0)
            }
            Repair::RestoreLength { seq, capacity, .. } => {
                disk.files.get_mut(seq).unwrap().resize(*capacity as usize, 0)
            }
        }
    }
    let (_, recovered, again) = disk.scan().unwrap();
    assert!(again.is_empty() && recovered.warnings.is_empty(), "repaired once: {again:?}");
}

#[test]
fn scan_removes_an_unwritten_last_segment() {
    let (disk, _) = four_batches();
    let unwritten =
        [vec![0u8; SEGMENT_BYTES_MIN as usize], Vec::new(), segment::encode_header(0, 2, 1 << 20)[..100].to_vec()];
    for (i, data) in unwritten.into_iter().enumerate() {
        let mut disk = disk.clone();
        disk.files.insert(2, data);
        let (records, recovered, repairs) = disk.scan().unwrap();
        assert_eq!(repairs, vec![Repair::RemoveSegment { seq: 2, path: segment::path(Path::new(DIR), 2) }]);
        assert_eq!(records.len(), 4);
        assert_eq!((recovered.tail.unwrap().seq, recovered.segments.len()), (1, 1));
        let want = if i == 2 { "shorter than its header" } else { "never written" };
        assert!(recovered.warnings[0].contains(want), "{:?}", recovered.warnings);
        repair(&mut disk, &repairs);
    }
}

#[test]
fn scan_zeroes_a_torn_tail() {
    let (mut disk, last) = four_batches();
    disk.files.get_mut(&1).unwrap()[last + 60] ^= 0x10;
    let (records, recovered, repairs) = disk.scan().unwrap();
    assert_eq!(records.len(), 3);
    let dirty_end = last + record::RECORD_HEADER_BYTES + 200;
    let path = segment::path(Path::new(DIR), 1);
    assert_eq!(repairs, vec![Repair::ZeroTail { seq: 1, path, from: last as u64, to: dirty_end as u64 }]);
    let tail = recovered.tail.unwrap();
    assert_eq!(tail.end, last as u64);
    let block_start = last - last % SEGMENT_HEADER_BYTES;
    assert_eq!(tail.last_block, disk.files[&1][block_start..last]);
    repair(&mut disk, &repairs);
}

#[test]
fn scan_restores_the_length_of_a_cut_segment() {
    let (disk, last) = four_batches();
    let path = segment::path(Path::new(DIR), 1);
    let restore = Repair::RestoreLength { seq: 1, path: path.clone(), capacity: SEGMENT_BYTES_MIN };
    // Cut at a record boundary: only the length comes back.
    let mut cut = disk.clone();
    cut.files.get_mut(&1).unwrap().truncate(last);
    let (records, recovered, repairs) = cut.scan().unwrap();
    assert_eq!((records.len(), repairs.clone()), (3, vec![restore.clone()]));
    assert!(recovered.warnings[0].contains("truncated"), "{:?}", recovered.warnings);
    repair(&mut cut, &repairs);
    // Cut inside the last record: the length, then the torn bytes.
    let mut cut = disk.clone();
    cut.files.get_mut(&1).unwrap().truncate(last + 50);
    let (_, _, repairs) = cut.scan().unwrap();
    let zero = Repair::ZeroTail { seq: 1, path, from: last as u64, to: last as u64 + 50 };
    assert_eq!(repairs, vec![restore, zero]);
    repair(&mut cut, &repairs);
}

#[test]
fn scan_refuses_a_bad_record_followed_by_a_later_synced_batch() {
    let (mut disk, last) = four_batches();
    // Record 2 of 4: batch 4 (synced) proves it had been durable.
    let second = SEGMENT_HEADER_BYTES + entry(0, 1, 200).encoded_len();
    assert!(second < last);
    disk.files.get_mut(&1).unwrap()[second + 60] ^= 0x10;
    let err = disk.scan().unwrap_err();
    assert!(matches!(err, WalError::Corrupt { offset, .. } if offset == second as u64), "{err}");
}
