//! WAL unit tests: round trip, rotation, torn tails cut at every byte,
//! corruption in the middle, missing and empty segments, compaction, and the
//! golden bytes the writer must keep producing. (The sans-IO state and scan
//! are tested without files in `sansio_tests.rs`.)
//! (Fault injection lives in `engine/tests/wal_faults.rs`, a process of its
//! own, because failpoints are global.)

use std::future::Future;
use std::path::Path;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};

use super::segment::SEGMENT_HEADER_BYTES;
use super::*;

pub(crate) fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(move || async move { f().await })
        .expect("executor starts")
        .join()
        .expect("executor joins")
}

fn config(dir: &Path, segment_bytes: u64) -> WalConfig {
    WalConfig { dir: dir.to_path_buf(), core: 0, segment_bytes, fsync: FsyncPolicy::Always }
}

pub(super) fn entry(group: u32, index: u64, len: usize) -> Record {
    let data: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + index) as u8).collect();
    Record::Entry { group, term: 1 + index / 10, index, entry_type: 0, data: Bytes::from(data) }
}

pub(super) fn hard_state(group: u32, commit: u64) -> Record {
    Record::HardState { group, term: 1 + commit / 10, vote: 1, commit }
}

/// Recovers `dir`, collecting every record in order.
fn read_all(dir: &Path) -> Result<(Vec<Record>, Recovered), WalError> {
    let mut records = Vec::new();
    let recovered = recover(dir, 0, |r| {
        records.push(r);
        Ok(())
    })?;
    Ok((records, recovered))
}

/// Writes each batch with one flush, through a WAL opened on `dir`.
fn write_batches(dir: &Path, segment_bytes: u64, batches: Vec<Vec<Record>>) {
    let dir = dir.to_path_buf();
    run(move || async move {
        let (_, recovered) = read_all(&dir).expect("recovers");
        let wal = Wal::open(config(&dir, segment_bytes), recovered).await.expect("opens");
        for batch in batches {
            for r in &batch {
                wal.append(r);
            }
            wal.flush().await.expect("flushes");
        }
    });
}

pub(super) fn entries_only(records: Vec<Record>) -> Vec<Record> {
    records.into_iter().filter(|r| matches!(r, Record::Entry { .. })).collect()
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
    }
    to
}

/// The segment files of a WAL directory (not its spare), by name.
fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).and_then(segment::parse_name).is_some())
        .collect();
    files.sort();
    files
}

fn only_segment(dir: &Path) -> std::path::PathBuf {
    let mut files = segment_files(dir);
    files.sort();
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().unwrap()
}

#[test]
fn round_trip_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let first = vec![vec![entry(0, 1, 10), entry(1, 1, 0), hard_state(0, 1)], vec![entry(0, 2, 5000)]];
    write_batches(dir.path(), segment::SEGMENT_BYTES_DEFAULT, first.clone());
    // Reopen and continue in the same segment: the partial tail block must
    // be rewritten intact.
    let second = vec![vec![entry(0, 3, 1)], vec![entry(1, 2, 4090), hard_state(1, 2)]];
    write_batches(dir.path(), segment::SEGMENT_BYTES_DEFAULT, second.clone());
    let (records, recovered) = read_all(dir.path()).unwrap();
    let want: Vec<Record> = first.into_iter().chain(second).flatten().collect();
    assert_eq!(records, want);
    assert_eq!(recovered.segments.len(), 1);
    assert_eq!(recovered.next_batch, 5);
    assert!(recovered.warnings.is_empty(), "{:?}", recovered.warnings);
}

#[test]
fn rotation_starts_each_segment_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let seg = segment::SEGMENT_BYTES_MIN;
    let batches: Vec<Vec<Record>> =
        (1..=60).map(|i| vec![entry(0, i, 3000), hard_state(0, i), entry(1, i, 10), hard_state(1, i)]).collect();
    write_batches(dir.path(), seg, batches.clone());
    let (records, recovered) = read_all(dir.path()).unwrap();
    assert!(recovered.segments.len() >= 3, "{} segments", recovered.segments.len());
    let want: Vec<Record> = batches.into_iter().flatten().collect();
    assert_eq!(entries_only(records.clone()), entries_only(want));
    // Every segment after the first opens with both groups' hard states.
    for meta in &recovered.segments[1..] {
        let mut first_records = Vec::new();
        let data = std::fs::read(&meta.path).unwrap();
        let mut at = SEGMENT_HEADER_BYTES;
        while let record::Decoded::Record { record, encoded_len, .. } = record::decode(&data[at..]) {
            if matches!(record, Record::Entry { .. }) {
                break;
            }
            first_records.push(record.group());
            at += encoded_len;
        }
        first_records.sort();
        assert_eq!(first_records, vec![0, 1], "checkpoint of segment {}", meta.seq);
    }
}

/// The byte range of the last record: its start and its unpadded length.
fn last_record_span(path: &Path) -> (usize, usize) {
    let data = std::fs::read(path).unwrap();
    let mut at = SEGMENT_HEADER_BYTES;
    let mut last = None;
    while let record::Decoded::Record { encoded_len, .. } = record::decode(&data[at..]) {
        let len = u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap()) as usize;
        last = Some((at, len));
        at += encoded_len;
    }
    last.expect("at least one record")
}

#[test]
fn torn_tail_cut_at_every_byte_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let batches = vec![vec![entry(0, 1, 100), entry(0, 2, 100)], vec![entry(0, 3, 100)]];
    write_batches(dir.path(), segment::SEGMENT_BYTES_MIN, batches);
    let path = only_segment(dir.path());
    let (start, len) = last_record_span(&path);
    for cut in start..start + len {
        for zero_rest in [false, true] {
            let copy = copy_dir(dir.path());
            let seg = only_segment(copy.path());
            let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
            if zero_rest {
                // A preallocated file whose last write only partly landed.
                let size = file.metadata().unwrap().len() as usize;
                file.write_all_at(&vec![0u8; size - cut], cut as u64).unwrap();
                let junk = [0xAAu8; 3];
                if cut > start {
                    file.write_all_at(&junk[..(cut - start).min(3)], start as u64 + 4).unwrap();
                }
            } else {
                file.set_len(cut as u64).unwrap();
            }
            drop(file);
            let (records, recovered) = read_all(copy.path()).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            let indexes: Vec<u64> = records
                .iter()
                .map(|r| match r {
                    Record::Entry { index, .. } => *index,
                    _ => 0,
                })
                .collect();
            assert_eq!(indexes, vec![1, 2], "cut {cut} zero_rest {zero_rest}");
            if cut > start || !zero_rest {
                let warning = recovered.warnings.join("\n");
                if cut > start {
                    assert!(warning.contains(&format!("offset {start}")), "cut {cut}: {warning}");
                    assert!(warning.contains(seg.to_str().unwrap()), "{warning}");
                }
            }
            // The repaired log takes new writes and reads back clean.
            write_batches(copy.path(), segment::SEGMENT_BYTES_MIN, vec![vec![entry(0, 3, 7)]]);
            let (records, recovered) = read_all(copy.path()).unwrap();
            assert_eq!(records.last(), Some(&entry(0, 3, 7)), "cut {cut}");
            assert!(recovered.warnings.is_empty(), "cut {cut}: {:?}", recovered.warnings);
        }
    }
}

use std::os::unix::fs::FileExt;

fn flip_bit(path: &Path, offset: u64) {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x10;
    file.write_all_at(&b, offset).unwrap();
}

#[test]
fn flipped_bit_in_the_middle_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let batches: Vec<Vec<Record>> = (1..=10).map(|i| vec![entry(0, i, 200)]).collect();
    write_batches(dir.path(), segment::SEGMENT_BYTES_DEFAULT, batches);
    let path = only_segment(dir.path());
    // Record 3 of 10: later batches were synced after it.
    let offset = SEGMENT_HEADER_BYTES as u64 + 2 * record::align_up(RECORD_HEADER + 200) as u64 + 50;
    flip_bit(&path, offset);
    let err = read_all(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, WalError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(path.to_str().unwrap()), "{msg}");
    let record_start = SEGMENT_HEADER_BYTES + 2 * record::align_up(RECORD_HEADER + 200);
    assert!(msg.contains(&format!("offset {record_start}")), "{msg}");
    assert!(msg.contains("Restore"), "says what to do: {msg}");
}

const RECORD_HEADER: usize = record::RECORD_HEADER_BYTES;

#[test]
fn flipped_bit_in_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let batches: Vec<Vec<Record>> = (1..=4).map(|i| vec![entry(0, i, 200)]).collect();
    write_batches(dir.path(), segment::SEGMENT_BYTES_DEFAULT, batches);
    let path = only_segment(dir.path());
    let (start, _) = last_record_span(&path);
    flip_bit(&path, start as u64 + 60);
    let (records, recovered) = read_all(dir.path()).unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(recovered.warnings.len(), 1);
}

#[test]
fn corruption_in_an_older_segment_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let batches: Vec<Vec<Record>> = (1..=40).map(|i| vec![entry(0, i, 4000)]).collect();
    write_batches(dir.path(), segment::SEGMENT_BYTES_MIN, batches);
    let first = segment::path(dir.path(), 1);
    flip_bit(&first, SEGMENT_HEADER_BYTES as u64 + 100);
    let err = read_all(dir.path()).unwrap_err();
    assert!(matches!(err, WalError::Corrupt { offset, .. } if offset == SEGMENT_HEADER_BYTES as u64), "{err}");
}

#[test]
fn missing_middle_segment_refuses_and_empty_last_segment_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let batches: Vec<Vec<Record>> = (1..=40).map(|i| vec![entry(0, i, 4000)]).collect();
    write_batches(dir.path(), segment::SEGMENT_BYTES_MIN, batches);
    let (_, recovered) = read_all(dir.path()).unwrap();
    let last = recovered.segments.last().unwrap().seq;
    assert!(last >= 3);

    // An empty (created, never written) segment after the last one.
    let empty = segment::path(dir.path(), last + 1);
    std::fs::File::create(&empty).unwrap().set_len(segment::SEGMENT_BYTES_MIN).unwrap();
    let (records, recovered) = read_all(dir.path()).unwrap();
    assert_eq!(records.len(), 40);
    assert!(!empty.exists());
    assert!(recovered.warnings[0].contains("never written"), "{:?}", recovered.warnings);
    // A zero-length one too.
    std::fs::File::create(&empty).unwrap();
    assert_eq!(read_all(dir.path()).unwrap().0.len(), 40);
    assert!(!empty.exists());

    std::fs::remove_file(segment::path(dir.path(), 2)).unwrap();
    let err = read_all(dir.path()).unwrap_err();
    assert!(err.to_string().contains("segment 2 is missing"), "{err}");
}

#[test]
fn compaction_deletes_covered_segments_and_recovery_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let seg = segment::SEGMENT_BYTES_MIN;
    let batches: Vec<Vec<Record>> =
        (1..=60).map(|i| vec![entry(0, i, 3000), entry(1, i, 100), hard_state(0, i), hard_state(1, i)]).collect();
    write_batches(&path, seg, batches);
    let before = read_all(&path).unwrap().1.segments.len();
    let p = path.clone();
    let deleted = run(move || async move {
        let (_, recovered) = read_all(&p).unwrap();
        let wal = Wal::open(config(&p, seg), recovered).await.unwrap();
        // Group 0 snapshotted at 45, group 1 at 40.
        wal.compact(|g| if g == 0 { 45 } else { 40 }).await.unwrap()
    });
    assert!(deleted >= 1 && deleted < before, "deleted {deleted} of {before}");
    let (records, recovered) = read_all(&path).unwrap();
    assert_eq!(recovered.segments.len(), before - deleted);
    assert_eq!(recovered.segments[0].seq, deleted as u64 + 1);
    // Every entry above the snapshots survives, in order, without gaps.
    for group in [0u32, 1] {
        let snap = if group == 0 { 45 } else { 40 };
        let idx: Vec<u64> = records
            .iter()
            .filter_map(|r| match r {
                Record::Entry { group: g, index, .. } if *g == group => Some(*index),
                _ => None,
            })
            .collect();
        assert!(idx[0] <= snap + 1, "group {group} starts at {}", idx[0]);
        assert_eq!(*idx.last().unwrap(), 60);
        assert!(idx.windows(2).all(|w| w[1] == w[0] + 1));
    }
    // The first surviving segment still knows every group's hard state.
    let hs_groups: Vec<u32> =
        records.iter().take_while(|r| !matches!(r, Record::Entry { .. })).map(|r| r.group()).collect();
    assert_eq!(hs_groups.len(), 2, "{hs_groups:?}");
}

#[test]
fn a_large_record_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let big = entry(0, 2, 300 * 1024);
    write_batches(dir.path(), segment::SEGMENT_BYTES_MIN, vec![vec![entry(0, 1, 10)], vec![big.clone()]]);
    let (records, recovered) = read_all(dir.path()).unwrap();
    assert_eq!(records.last(), Some(&big));
    assert_eq!(recovered.segments.len(), 2);
}

/// Regression: compaction racing a rotation deleted the segment being
/// rotated out (the newest on disk), losing every group's hard state.
/// The segment a rotation creates joins the bookkeeping only once its flush
/// finished, so compaction mid-rotation keeps the old one; afterwards the
/// old one may go, because the new one starts with the checkpoint.
#[test]
fn compaction_during_a_rotation_keeps_the_newest_segment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    run(move || async move {
        let wal = std::rc::Rc::new(
            Wal::open(config(&d, segment::SEGMENT_BYTES_MIN), recover(&d, 0, |_| Ok(())).unwrap()).await.unwrap(),
        );
        wal.append(&entry(0, 1, 10));
        wal.append(&hard_state(0, 1));
        wal.flush().await.unwrap();
        // A batch too big for segment 1: its flush rotates.
        wal.append(&entry(0, 2, 100 * 1024));
        let w = wal.clone();
        let flushing = glommio::spawn_local(async move { w.flush().await });
        futures_lite::future::yield_now().await;
        assert!(wal.is_flushing(), "the rotating flush is under way");
        assert_eq!(wal.compact(|_| 3).await.unwrap(), 0, "nothing deletable mid-rotation");
        flushing.await.unwrap();
        let deleted = wal.compact(|_| 3).await.unwrap();
        assert_eq!(deleted, 1, "the old segment, once the new one holds the checkpoint");
        assert_eq!(wal.segment_count(), 1);
    });
    let (records, recovered) = read_all(dir.path()).unwrap();
    assert_eq!(recovered.segments.len(), 1);
    assert!(records.contains(&hard_state(0, 1)), "hard state survives: {records:?}");
}

/// Regression: a last segment cut at a record boundary recovered silently.
#[test]
fn a_truncated_last_segment_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let batches: Vec<Vec<Record>> = (1..=10).map(|i| vec![entry(0, i, 200)]).collect();
    write_batches(dir.path(), segment::SEGMENT_BYTES_DEFAULT, batches);
    let path = only_segment(dir.path());
    let boundary = SEGMENT_HEADER_BYTES + 6 * record::align_up(RECORD_HEADER + 200);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(boundary as u64).unwrap();
    let (records, recovered) = read_all(dir.path()).unwrap();
    assert_eq!(records.len(), 6);
    let warning = recovered.warnings.join("\n");
    assert!(warning.contains("truncated") && warning.contains(path.to_str().unwrap()), "{warning}");
    // Reported once: the repair restored the file's length.
    assert!(read_all(dir.path()).unwrap().1.warnings.is_empty());
}

/// The batches of the writer's golden files: two runs (the second continues
/// the first's last segment after recovery), several rotations, one batch
/// bigger than a segment, conf states in the checkpoints.
pub(super) fn golden_batches(indexes: std::ops::RangeInclusive<u64>) -> Vec<Vec<Record>> {
    let batch = |i: u64| {
        let len = if i == 40 { 70 * 1024 } else { 2500 + i as usize * 37 };
        let mut b = vec![entry(0, i, len), hard_state(0, i), entry(1, i, i as usize * 13)];
        if i.is_multiple_of(7) {
            b.push(Record::ConfState { group: 1, index: i, data: Bytes::from(vec![1, i as u8, 7]) });
        }
        b
    };
    indexes.map(batch).collect()
}

/// (file name, length, crc32) of each segment `golden_batches` leaves, as
/// written by the WAL before its logic moved into `WalState`: the on-disk
/// bytes must not change.
pub(super) const GOLDEN: [(&str, usize, u32); 5] = [
    ("00000000000000000001.wal", 65536, 0x56b263a6),
    ("00000000000000000002.wal", 65536, 0xab17d667),
    ("00000000000000000003.wal", 65536, 0xededdb6a),
    ("00000000000000000004.wal", 77824, 0xa0db1a45),
    ("00000000000000000005.wal", 65536, 0xc06d76bf),
];

#[test]
fn the_writer_writes_the_golden_bytes() {
    let dir = tempfile::tempdir().unwrap();
    write_batches(dir.path(), segment::SEGMENT_BYTES_MIN, golden_batches(1..=30));
    write_batches(dir.path(), segment::SEGMENT_BYTES_MIN, golden_batches(31..=45));
    let files = segment_files(dir.path());
    let found: Vec<(String, usize, u32)> = files
        .iter()
        .map(|f| {
            let data = std::fs::read(f).unwrap();
            (f.file_name().unwrap().to_str().unwrap().to_string(), data.len(), crc32fast::hash(&data))
        })
        .collect();
    let want: Vec<(String, usize, u32)> = GOLDEN.iter().map(|&(n, l, c)| (n.to_string(), l, c)).collect();
    assert_eq!(found, want);
}

/// A spare left over by an earlier run (here: garbage) is neither read as
/// a segment nor kept; once the current segment is half full a spare is
/// zeroed in the background, and the next rotation takes it (the same
/// file: its inode).
#[test]
fn rotations_take_the_zeroed_spare_and_a_leftover_spare_is_ignored() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(spare::SPARE_NAME), [0xEEu8; 5000]).unwrap();
    let path = dir.path().to_path_buf();
    let (used, spare_inode) = run(move || async move {
        let (records, recovered) = read_all(&path).expect("a leftover spare is not a segment");
        assert!(records.is_empty());
        let wal = Wal::open(config(&path, segment::SEGMENT_BYTES_MIN), recovered).await.expect("opens");
        let spare = path.join(spare::SPARE_NAME);
        assert!(!spare.exists(), "the leftover spare is removed");
        let mut index = 0;
        let mut write = async |wal: &Wal| {
            index += 1;
            wal.append(&entry(1, index, 1000));
            wal.flush().await.expect("flushes");
            assert!(index < 1000, "no rotation");
        };
        // Half a segment: the spare is being zeroed.
        while !spare.exists() {
            write(&wal).await;
        }
        for _ in 0..500 {
            if wal.spare_ready() {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(wal.spare_ready(), "the spare was not zeroed within 5 s");
        let zeroed = std::fs::read(&spare).unwrap();
        assert_eq!(zeroed.len() as u64, segment::SEGMENT_BYTES_MIN);
        assert!(zeroed.iter().all(|&b| b == 0));
        let inode = std::fs::metadata(&spare).unwrap().ino();
        while wal.segment_count() < 2 {
            write(&wal).await;
        }
        (segment_files(&path), inode)
    });
    let inodes: Vec<u64> = used.iter().map(|p| std::fs::metadata(p).unwrap().ino()).collect();
    assert_eq!(inodes.last(), Some(&spare_inode), "the new segment is not the zeroed spare: {used:?}");
    let (records, _) = read_all(dir.path()).expect("recovers");
    assert!(!entries_only(records).is_empty());
}

/// A spare that cannot be made (here its name is taken by a directory)
/// costs nothing but the speed-up: rotations create their segments the
/// old way and every record is recovered.
#[test]
fn a_spare_that_cannot_be_made_leaves_rotations_working() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let written = run(move || async move {
        let (_, recovered) = read_all(&path).expect("recovers");
        let wal = Wal::open(config(&path, segment::SEGMENT_BYTES_MIN), recovered).await.expect("opens");
        std::fs::create_dir(path.join(spare::SPARE_NAME)).unwrap();
        let mut index = 0;
        while wal.segment_count() < 3 {
            index += 1;
            wal.append(&entry(1, index, 1000));
            wal.flush().await.expect("flushes without a spare");
            assert!(index < 1000, "no rotation");
        }
        assert!(!wal.spare_ready());
        index
    });
    let (records, _) = read_all(dir.path()).expect("recovers");
    assert_eq!(entries_only(records).len() as u64, written);
}
