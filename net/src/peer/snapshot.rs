//! Streaming a shard snapshot to a peer.
//!
//! raft-rs hands the transport a MsgSnapshot carrying the whole encoded
//! shard. Sent like other messages, it would be protobuf-encoded, cut into
//! frames and checksummed in one go on the leader's core (three copies of
//! the shard, the core held meanwhile), and it would sit in front of every
//! other Raft message to that node. Instead each one goes on a connection
//! of its own, opened and authenticated like any peer connection: a
//! SNAPSHOT_HEAD frame with the message minus its data, then the data in
//! SNAPSHOT_CHUNK frames of [`wire::SNAPSHOT_CHUNK_BYTES`], each written
//! from the encoded copy without copying the rest, the task yielding
//! between chunks and pacing them to the core's snapshot budget
//! ([`super::PeerConfig::snapshot_bytes_per_sec`]). The receiver
//! ([`wire::SnapshotAssembly`]) verifies the whole snapshot and loads it
//! into a shard map in its background queue, yielding between entries
//! ([`receive`]), then steps the message with the map: installing it is a
//! swap, so the receiving core goes on serving its other shards while a
//! large one loads. raft-rs is told whether the stream went out: after a
//! failure it sends the follower another snapshot, after success it waits
//! for the follower's answer.
//!
//! Architecture Invariant: a snapshot's data never crosses a link's
//! writer: the Raft messages of other groups to the same node never wait
//! behind a snapshot.

use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use kv_replication::Core;
use raft::eraftpb::Message;

use super::{handshake, io_err, wire, Link, Peers, SNAPSHOT_CHUNK_TIMEOUT};

/// A snapshot being streamed, as STATUS shows it.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Raft index the snapshot is at.
    pub index: u64,
    pub bytes: u64,
    pub sent_bytes: u64,
    /// When streaming began; `None` while it waits for its turn.
    pub started: Option<Instant>,
}

/// Streams `m` (a MsgSnapshot for `group`) to `link`'s node, at most
/// [`super::SNAPSHOT_SENDS_MAX`] at once per core, and tells the core
/// whether it went out.
pub(super) async fn send(peers: Rc<Peers>, link: Rc<Link>, group: u32, m: Message) {
    let (to, index, core) = (m.to, m.get_snapshot().get_metadata().index, peers.config.core);
    let bytes = m.get_snapshot().get_data().len();
    let progress = Progress { index, bytes: bytes as u64, sent_bytes: 0, started: None };
    peers.snapshots.borrow_mut().insert((group, to), progress);
    let result = match peers.snapshot_sends.acquire_permit(1).await {
        Ok(_permit) => {
            tracing::info!(core, group, to, index, bytes, "streaming a snapshot of shard {group} to node {to}");
            stream(&peers, &link, group, &m).await
        }
        Err(e) => Err(io_err(e)),
    };
    let started = peers.snapshots.borrow_mut().remove(&(group, to)).and_then(|p| p.started);
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    match &result {
        Ok(()) => tracing::info!(core, group, to, bytes, seconds, "sent a snapshot of shard {group} to node {to}"),
        Err(e) => tracing::warn!(core, group, to, "a snapshot of shard {group} to node {to} failed: {e}"),
    }
    peers.report_snapshot(group, to, result.is_ok());
}

async fn stream(peers: &Rc<Peers>, link: &Rc<Link>, group: u32, m: &Message) -> io::Result<()> {
    let to = m.to;
    let note = |sent: u64| {
        if let Some(p) = peers.snapshots.borrow_mut().get_mut(&(group, to)) {
            p.started.get_or_insert_with(Instant::now);
            p.sent_bytes = sent;
        }
    };
    note(0);
    let mut stream = handshake(peers, link).await?;
    let (head, data) = wire::snapshot_head(group, m);
    let mut frame = Vec::with_capacity(wire::FRAME_HEADER_BYTES + wire::SNAPSHOT_CHUNK_BYTES);
    wire::put_frame(&mut frame, wire::FRAME_SNAPSHOT_HEAD, &head);
    write(&mut stream, &frame).await?;
    let mut sent = 0;
    for piece in data.chunks(wire::snapshot_chunk_bytes(peers.config.payload_bytes_max)) {
        if peers.stopping.get() {
            return Err(io_err("the node is stopping"));
        }
        if !still_leads(peers, group) {
            // raft-rs gave this snapshot up with its leadership.
            return Err(io_err(format!("no longer leads shard {group}")));
        }
        pace(peers, piece.len()).await;
        frame.clear();
        wire::put_frame(&mut frame, wire::FRAME_SNAPSHOT_CHUNK, piece);
        write(&mut stream, &frame).await?;
        sent += piece.len() as u64;
        note(sent);
        glommio::yield_if_needed().await;
    }
    stream.close().await
}

fn still_leads(peers: &Peers, group: u32) -> bool {
    let core = peers.core.borrow();
    core.as_ref().is_none_or(|c| c.leader_of(group) == Some(peers.config.node_id))
}

/// Writes `bytes`, waiting at most [`SNAPSHOT_CHUNK_TIMEOUT`].
async fn write(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    glommio::timer::timeout(SNAPSHOT_CHUNK_TIMEOUT, async {
        stream.write_all(bytes).await.map_err(glommio::GlommioError::from)
    })
    .await
    .map_err(io_err)
}

/// Loads the snapshot a leader sent in `m` into a map, yielding between
/// entries, then steps `m` with it: the receiving core goes on serving its
/// other shards meanwhile, and installing is a swap. A snapshot that does
/// not verify is dropped (raft-rs sends another). While it loads, the
/// group's appends are dropped: the leader probes once it hears the
/// snapshot went out, and the rejection of a probe would make it stream
/// the whole snapshot again.
/// The caller marked `group` loading (`Peers::mark_loading`); this clears
/// the mark.
pub(super) async fn receive(peers: Rc<Peers>, core: Core, group: u32, m: Message, incarnation: u64) {
    load_and_step(&core, group, m, incarnation).await;
    peers.unmark_loading(group);
}

async fn load_and_step(core: &Core, group: u32, m: Message, incarnation: u64) {
    let data = m.get_snapshot().data.clone();
    let origin = PathBuf::from(format!("the snapshot of shard {group} from node {}", m.from));
    let started = Instant::now();
    match kv_engine::snapshot::load_map(&data, &origin, core.tracking(group)).await {
        Ok((meta, map)) if (meta.group, (meta.index, meta.term)) == (group, wire::snapshot_at(&m)) => {
            tracing::debug!(group, keys = map.len(), seconds = started.elapsed().as_secs_f64(), "snapshot loaded");
            core.step_loaded_snapshot(group, m, incarnation, meta, map);
        }
        Ok((meta, _)) => tracing::warn!(
            group,
            "dropped a snapshot of shard {} at index {} sent as shard {group} at index {}",
            meta.group,
            meta.index,
            wire::snapshot_at(&m).0
        ),
        Err(e) => tracing::warn!(group, "dropped a snapshot: {e}"),
    }
}

/// Waits until the core's snapshot budget allows `bytes` more, and takes
/// them from it. Every stream of the core draws on one budget, so two at
/// once share the rate; an idle budget does not save up beyond now.
async fn pace(peers: &Peers, bytes: usize) {
    let rate = peers.config.snapshot_bytes_per_sec;
    if rate == 0 {
        return;
    }
    let now = Instant::now();
    let due = peers.snapshot_due.get().max(now);
    peers.snapshot_due.set(due + Duration::from_secs_f64(bytes as f64 / rate as f64));
    if due > now {
        glommio::timer::sleep(due - now).await;
    }
}
