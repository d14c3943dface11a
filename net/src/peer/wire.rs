//! Bytes of the peer protocol (node ↔ node). Pure functions; no IO.
//! Described in docs/protocol.md, "Peer protocol".
//!
//! A connection goes from core `c` of one node to core `c` of another (a
//! shard lives on the same core index on every node). The opener sends a
//! [`PeerHello`]; the acceptor answers with a [`Challenge`] proving it knows
//! the cluster secret; the opener answers with a proof of its own. Nothing
//! else is read from a connection before both proofs check out, and frame
//! lengths are bounded before any byte of a frame is decoded (raft-rs's
//! protobuf decoder must only ever see bounded input from authenticated
//! peers).
//!
//! Frame: `u32 payload length | u32 crc32 of type byte + payload | u8 type |
//! 3 reserved zero bytes | payload`.

use bytes::{Buf, Bytes};
use hmac::{Hmac, Mac};
use kv_engine::{Command, Outcome, Refusal, Stored};
use kv_replication::{Consistency, CoreError, ScanPage};
use protobuf::Message as _;
use raft::eraftpb::Message;
use sha2::Sha256;

use crate::mesh::{Op, Reply};

pub const PEER_MAGIC: [u8; 4] = *b"KVDP";
pub const PEER_VERSION: u16 = 4;
pub const NONCE_BYTES: usize = 16;
pub const MAC_BYTES: usize = 32;
pub const HELLO_BYTES: usize = 52;
pub const CHALLENGE_BYTES: usize = 72;
pub const FRAME_HEADER_BYTES: usize = 12;

const _: () = assert!(HELLO_BYTES == 36 + NONCE_BYTES);
const _: () = assert!(CHALLENGE_BYTES == 24 + NONCE_BYTES + MAC_BYTES);

pub const FRAME_RAFT: u8 = 1;
pub const FRAME_FORWARD: u8 = 2;
pub const FRAME_FORWARD_REPLY: u8 = 3;
/// A piece of one Raft message too large for a frame (a shard snapshot):
/// `group u32 | total u64 | offset u64 | bytes`. Pieces of a message are
/// sent back to back on one connection.
pub const FRAME_RAFT_PART: u8 = 4;
const PART_HEADER_BYTES: usize = 20;
/// The opener's client endpoints (UTF-8 `native=HOST:PORT resp=HOST:PORT
/// http=HOST:PORT`), sent once after the handshake so every node can tell
/// clients where its peers serve.
pub const FRAME_INFO: u8 = 5;
/// Longest endpoint text accepted in an info frame.
pub const ENDPOINT_BYTES_MAX: usize = 256;
/// Largest Raft message accepted in pieces (a shard's snapshot).
pub const RAFT_MESSAGE_BYTES_MAX: u64 = 64 << 30;
/// The start of a shard snapshot streamed on a connection of its own:
/// `group u32 | data length u64 | the MsgSnapshot, its data left out`.
/// SNAPSHOT_CHUNK frames carry the data, in order, right after it.
pub const FRAME_SNAPSHOT_HEAD: u8 = 6;
const SNAPSHOT_HEAD_BYTES: usize = 12;
/// The next bytes of the snapshot data whose head came last.
pub const FRAME_SNAPSHOT_CHUNK: u8 = 7;
/// Bytes of snapshot data per SNAPSHOT_CHUNK frame (less where the frame
/// limit is smaller): what one write hands the kernel between yields, so
/// streaming a shard never holds its core for more than a copy of this.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Snapshot data the receiver reserves up front; it grows as chunks come.
const SNAPSHOT_RESERVE_BYTES_MAX: u64 = 1 << 30;
const _: () = assert!(SNAPSHOT_RESERVE_BYTES_MAX <= RAFT_MESSAGE_BYTES_MAX);

/// Handshake refusals in a [`Challenge`].
pub const STATUS_OK: u16 = 0;
pub const STATUS_SHAPE_MISMATCH: u16 = 1;
pub const STATUS_UNKNOWN_NODE: u16 = 2;
pub const STATUS_WRONG_CORE: u16 = 3;
/// The opener's data directory is not the one the acceptor met before
/// under that node id (see [`super::incarnation`]).
pub const STATUS_FORGOTTEN: u16 = 4;

/// [`PeerHello`] and [`Challenge`] flag: the sender's data directory was
/// made to join a running cluster (`kvd --join`).
const FLAG_JOINED: u16 = 1;

type HmacSha256 = Hmac<Sha256>;

/// Opener → acceptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHello {
    pub version: u16,
    pub node: u64,
    pub core: u32,
    pub cores: u32,
    pub shards: u32,
    /// The opener's data directory's incarnation.
    pub incarnation: u64,
    pub nonce: [u8; NONCE_BYTES],
    /// The opener's directory was made by `kvd --join`: if it is new to the
    /// acceptor under a known id, it asks to be readmitted.
    pub joined: bool,
}

impl PeerHello {
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut b = [0u8; HELLO_BYTES];
        b[0..4].copy_from_slice(&PEER_MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        let flags = if self.joined { FLAG_JOINED } else { 0 };
        b[6..8].copy_from_slice(&flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.node.to_le_bytes());
        b[16..20].copy_from_slice(&self.core.to_le_bytes());
        b[20..24].copy_from_slice(&self.cores.to_le_bytes());
        b[24..28].copy_from_slice(&self.shards.to_le_bytes());
        b[28..36].copy_from_slice(&self.incarnation.to_le_bytes());
        b[36..HELLO_BYTES].copy_from_slice(&self.nonce);
        b
    }

    pub fn decode(b: &[u8; HELLO_BYTES]) -> Option<PeerHello> {
        let flags = u16::from_le_bytes([b[6], b[7]]);
        if b[0..4] != PEER_MAGIC || flags & !FLAG_JOINED != 0 {
            return None;
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        Some(PeerHello {
            version: u16::from_le_bytes([b[4], b[5]]),
            node: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            core: u32_at(16),
            cores: u32_at(20),
            shards: u32_at(24),
            incarnation: u64::from_le_bytes(b[28..36].try_into().expect("8 bytes")),
            nonce: b[36..HELLO_BYTES].try_into().expect("nonce"),
            joined: flags & FLAG_JOINED != 0,
        })
    }
}

/// Acceptor → opener: its identity, its nonce, and its proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    pub status: u16,
    pub node: u64,
    /// The acceptor's data directory's incarnation.
    pub incarnation: u64,
    pub nonce: [u8; NONCE_BYTES],
    pub mac: [u8; MAC_BYTES],
    /// The acceptor's directory was made by `kvd --join`.
    pub joined: bool,
}

impl Challenge {
    pub fn encode(&self) -> [u8; CHALLENGE_BYTES] {
        let mut b = [0u8; CHALLENGE_BYTES];
        b[0..4].copy_from_slice(&PEER_MAGIC);
        b[4..6].copy_from_slice(&self.status.to_le_bytes());
        let flags = if self.joined { FLAG_JOINED } else { 0 };
        b[6..8].copy_from_slice(&flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.node.to_le_bytes());
        b[16..24].copy_from_slice(&self.incarnation.to_le_bytes());
        b[24..40].copy_from_slice(&self.nonce);
        b[40..72].copy_from_slice(&self.mac);
        b
    }

    pub fn decode(b: &[u8; CHALLENGE_BYTES]) -> Option<Challenge> {
        let flags = u16::from_le_bytes([b[6], b[7]]);
        (b[0..4] == PEER_MAGIC && flags & !FLAG_JOINED == 0).then(|| Challenge {
            status: u16::from_le_bytes([b[4], b[5]]),
            joined: flags & FLAG_JOINED != 0,
            node: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            incarnation: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            nonce: b[24..40].try_into().expect("nonce"),
            mac: b[40..72].try_into().expect("mac"),
        })
    }
}

/// What one side's handshake proof binds.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// `server` (the acceptor's proof) or `client` (the opener's).
    pub role: &'a str,
    /// The prover's node id and incarnation.
    pub from: (u64, u64),
    /// The verifier's node id and the incarnation the prover knows for it.
    pub to: (u64, u64),
    pub core: u32,
    /// The verifier's nonce, then the prover's.
    pub nonces: (&'a [u8], &'a [u8]),
    /// The handshake status the prover sends (`STATUS_OK` for the client).
    pub status: u16,
    /// The opener's [`PeerHello::joined`] and the acceptor's
    /// [`Challenge::joined`] (so neither can be flipped in flight).
    pub joined: (bool, bool),
}

impl<'a> Binding<'a> {
    /// The acceptor's proof; `acceptor` and `opener` are (node id,
    /// incarnation), `nonces` the opener's then the acceptor's.
    pub fn server(
        acceptor: (u64, u64),
        opener: (u64, u64),
        core: u32,
        nonces: (&'a [u8], &'a [u8]),
        status: u16,
    ) -> Binding<'a> {
        Binding { role: "server", from: acceptor, to: opener, core, nonces, status, joined: (false, false) }
    }

    /// The opener's proof; `nonces` the acceptor's then the opener's.
    pub fn client(opener: (u64, u64), acceptor: (u64, u64), core: u32, nonces: (&'a [u8], &'a [u8])) -> Binding<'a> {
        Binding { role: "client", from: opener, to: acceptor, core, nonces, status: STATUS_OK, joined: (false, false) }
    }

    /// Binds the opener's and the acceptor's `joined` flags too.
    pub fn joined(self, opener: bool, acceptor: bool) -> Binding<'a> {
        Binding { joined: (opener, acceptor), ..self }
    }
}

/// The HMAC-SHA256 state over who is talking to whom (which lives of
/// them) on which core, both nonces and the status: a proof cannot be
/// replayed on another connection or reflected back (the role is part of
/// it), and a refusal cannot be forged.
fn proof_mac(secret: &[u8], b: &Binding) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"kvd-peer-v3 ");
    mac.update(b.role.as_bytes());
    for v in [b.from.0, b.from.1, b.to.0, b.to.1] {
        mac.update(&v.to_le_bytes());
    }
    mac.update(&b.core.to_le_bytes());
    mac.update(&b.status.to_le_bytes());
    mac.update(&[u8::from(b.joined.0), u8::from(b.joined.1)]);
    mac.update(b.nonces.0);
    mac.update(b.nonces.1);
    mac
}

/// The proof one side sends.
pub fn proof(secret: &[u8], binding: &Binding) -> [u8; MAC_BYTES] {
    proof_mac(secret, binding).finalize().into_bytes().into()
}

/// Constant-time comparison of a received proof with the expected one.
pub fn proof_matches(secret: &[u8], binding: &Binding, got: &[u8]) -> bool {
    proof_mac(secret, binding).verify_slice(got).is_ok()
}

/// Appends one frame.
pub fn put_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    out.extend_from_slice(&u32::try_from(payload.len()).expect("frame fits u32").to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(payload);
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    TooLarge(usize),
    Checksum,
    Reserved,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(f, "peer frame of {n} bytes exceeds the limit"),
            FrameError::Checksum => write!(f, "peer frame checksum mismatch"),
            FrameError::Reserved => write!(f, "peer frame reserved bytes are not zero"),
        }
    }
}

/// A frame found in a buffer: its type, payload, and bytes used.
pub type Taken<'a> = (u8, &'a [u8], usize);

/// The frame at the start of `buf`: `Ok(None)` if incomplete, else its type,
/// payload and total length. The length is checked before anything else.
pub fn take_frame(buf: &[u8], payload_bytes_max: usize) -> Result<Option<Taken<'_>>, FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if len > payload_bytes_max {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < FRAME_HEADER_BYTES + len {
        return Ok(None);
    }
    if buf[9..12] != [0, 0, 0] {
        return Err(FrameError::Reserved);
    }
    let (kind, payload) = (buf[8], &buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len]);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    if crc.finalize() != u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) {
        return Err(FrameError::Checksum);
    }
    Ok(Some((kind, payload, FRAME_HEADER_BYTES + len)))
}

/// Appends Raft messages as frames of at most `payload_bytes_max` each
/// (a single larger message gets a frame of its own).
pub fn put_raft_frames(out: &mut Vec<u8>, messages: &[(u32, Message)], payload_bytes_max: usize) {
    let mut payload = Vec::new();
    let mut count = 0u32;
    let flush = |out: &mut Vec<u8>, payload: &mut Vec<u8>, count: &mut u32| {
        if *count > 0 {
            let mut framed = count.to_le_bytes().to_vec();
            framed.append(payload);
            put_frame(out, FRAME_RAFT, &framed);
            *count = 0;
        }
    };
    for (group, m) in messages {
        let bytes = m.write_to_bytes().expect("raft messages encode");
        if bytes.len() + 12 > payload_bytes_max {
            flush(out, &mut payload, &mut count);
            put_parts(out, *group, &bytes, payload_bytes_max);
            continue;
        }
        if count > 0 && payload.len() + bytes.len() + 12 > payload_bytes_max {
            flush(out, &mut payload, &mut count);
        }
        payload.extend_from_slice(&group.to_le_bytes());
        payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        payload.extend_from_slice(&bytes);
        count += 1;
    }
    flush(out, &mut payload, &mut count);
}

fn put_parts(out: &mut Vec<u8>, group: u32, bytes: &[u8], payload_bytes_max: usize) {
    let chunk = payload_bytes_max - PART_HEADER_BYTES;
    for (i, piece) in bytes.chunks(chunk).enumerate() {
        let mut p = Vec::with_capacity(PART_HEADER_BYTES + piece.len());
        p.extend_from_slice(&group.to_le_bytes());
        p.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        p.extend_from_slice(&((i * chunk) as u64).to_le_bytes());
        p.extend_from_slice(piece);
        put_frame(out, FRAME_RAFT_PART, &p);
    }
}

/// Reassembles Raft messages sent in pieces on one connection.
#[derive(Debug, Default)]
pub struct Reassembly {
    current: Option<(u32, u64, Vec<u8>)>,
}

impl Reassembly {
    /// Adds a piece; returns the message once it is whole.
    pub fn add(&mut self, payload: &[u8]) -> Result<Option<(u32, Message)>, String> {
        if payload.len() < PART_HEADER_BYTES {
            return Err("raft part shorter than its header".into());
        }
        let group = u32::from_le_bytes(payload[0..4].try_into().expect("4 bytes"));
        let total = u64::from_le_bytes(payload[4..12].try_into().expect("8 bytes"));
        let offset = u64::from_le_bytes(payload[12..20].try_into().expect("8 bytes"));
        let piece = &payload[PART_HEADER_BYTES..];
        if total > RAFT_MESSAGE_BYTES_MAX {
            return Err(format!("a raft message of {total} bytes exceeds the limit"));
        }
        if offset == 0 {
            self.current = Some((group, total, Vec::with_capacity(total.min(1 << 30) as usize)));
        }
        let Some((g, t, buf)) = self.current.as_mut() else {
            return Err("a raft part without its beginning".into());
        };
        if *g != group || *t != total || offset != buf.len() as u64 || buf.len() as u64 + piece.len() as u64 > total {
            return Err("raft parts out of order".into());
        }
        buf.extend_from_slice(piece);
        if (buf.len() as u64) < total {
            return Ok(None);
        }
        let (group, _, bytes) = self.current.take().expect("present");
        tracing::info!(group, bytes = bytes.len(), "reassembled a raft message sent in pieces");
        let m = Message::parse_from_bytes(&bytes).map_err(|e| format!("raft message does not decode: {e}"))?;
        Ok(Some((group, m)))
    }
}

/// Whether `m` carries a shard snapshot (streamed, not framed with the rest).
pub fn is_snapshot(m: &Message) -> bool {
    m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot
}

/// The index and term a MsgSnapshot's metadata names.
pub fn snapshot_at(m: &Message) -> (u64, u64) {
    let meta = m.get_snapshot().get_metadata();
    (meta.index, meta.term)
}

/// The payload of the SNAPSHOT_HEAD frame that starts streaming `m` (a
/// MsgSnapshot), and the snapshot data its chunks must carry: the data
/// never goes through protobuf, so it is never copied whole on the way.
pub fn snapshot_head(group: u32, m: &Message) -> (Vec<u8>, Bytes) {
    let data = m.get_snapshot().data.clone();
    let mut bare = m.clone();
    bare.mut_snapshot().set_data(Bytes::new());
    let mut p = Vec::with_capacity(SNAPSHOT_HEAD_BYTES + 256);
    p.extend_from_slice(&group.to_le_bytes());
    p.extend_from_slice(&(data.len() as u64).to_le_bytes());
    bare.write_to_vec(&mut p).expect("raft messages encode");
    (p, data)
}

/// The data bytes one SNAPSHOT_CHUNK frame carries under the frame limit.
pub fn snapshot_chunk_bytes(payload_bytes_max: usize) -> usize {
    SNAPSHOT_CHUNK_BYTES.min(payload_bytes_max).max(1)
}

/// Reassembles a snapshot streamed on one connection: a head, then its
/// chunks in order. The message is whole once the last chunk is in.
#[derive(Debug, Default)]
pub struct SnapshotAssembly {
    current: Option<(u32, Message, u64, Vec<u8>)>,
}

impl SnapshotAssembly {
    /// Starts a snapshot (a SNAPSHOT_HEAD payload); a message without data
    /// is whole at once.
    pub fn head(&mut self, mut payload: &[u8]) -> Result<Option<(u32, Message)>, String> {
        if payload.len() < SNAPSHOT_HEAD_BYTES {
            return Err("snapshot head shorter than its header".into());
        }
        if self.current.is_some() {
            return Err("a snapshot head before the previous snapshot's last chunk".into());
        }
        let group = payload.get_u32_le();
        let total = payload.get_u64_le();
        if total > RAFT_MESSAGE_BYTES_MAX {
            return Err(format!("a snapshot of {total} bytes exceeds the limit"));
        }
        let m = Message::parse_from_bytes(payload).map_err(|e| format!("snapshot head does not decode: {e}"))?;
        if !is_snapshot(&m) || !m.get_snapshot().get_data().is_empty() {
            return Err("a snapshot head that is not a bare MsgSnapshot".into());
        }
        let data = Vec::with_capacity(total.min(SNAPSHOT_RESERVE_BYTES_MAX) as usize);
        self.current = Some((group, m, total, data));
        self.finish()
    }

    /// The group and index of the snapshot being received, if one is.
    pub fn started(&self) -> Option<(u32, u64)> {
        self.current.as_ref().map(|(group, m, _, _)| (*group, snapshot_at(m).0))
    }

    /// Adds a chunk (a SNAPSHOT_CHUNK payload).
    pub fn chunk(&mut self, piece: &[u8]) -> Result<Option<(u32, Message)>, String> {
        let Some((_, _, total, data)) = self.current.as_mut() else {
            return Err("a snapshot chunk without its head".into());
        };
        if data.len() as u64 + piece.len() as u64 > *total {
            return Err("snapshot chunks longer than their head said".into());
        }
        data.extend_from_slice(piece);
        self.finish()
    }

    fn finish(&mut self) -> Result<Option<(u32, Message)>, String> {
        match &self.current {
            Some((_, _, total, data)) if data.len() as u64 == *total => {}
            _ => return Ok(None),
        }
        let (group, mut m, _, data) = self.current.take().expect("present");
        m.mut_snapshot().set_data(Bytes::from(data));
        Ok(Some((group, m)))
    }
}

/// Decodes a Raft frame's payload into `(group, message)` pairs.
pub fn decode_raft(mut payload: &[u8]) -> Result<Vec<(u32, Message)>, String> {
    if payload.len() < 4 {
        return Err("raft frame shorter than its count".into());
    }
    let count = payload.get_u32_le() as usize;
    let mut out = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        if payload.len() < 8 {
            return Err("raft frame truncated".into());
        }
        let group = payload.get_u32_le();
        let len = payload.get_u32_le() as usize;
        if payload.len() < len {
            return Err("raft message truncated".into());
        }
        let m = Message::parse_from_bytes(&payload[..len]).map_err(|e| format!("raft message does not decode: {e}"))?;
        payload.advance(len);
        out.push((group, m));
    }
    if !payload.is_empty() {
        return Err("bytes after the last raft message".into());
    }
    Ok(out)
}

/// A request forwarded to the node that can serve it.
#[derive(Debug, Clone)]
pub struct Forward {
    pub id: u64,
    pub shard: u32,
    pub hops: u8,
    pub op: Op,
}

fn consistency_code(c: Consistency) -> u8 {
    match c {
        Consistency::Lease => 0,
        Consistency::Strict => 1,
        Consistency::Stale => 2,
    }
}

pub fn consistency_from(code: u8) -> Option<Consistency> {
    Some(match code {
        0 => Consistency::Lease,
        1 => Consistency::Strict,
        2 => Consistency::Stale,
        _ => return None,
    })
}

pub fn encode_forward(f: &Forward) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&f.id.to_le_bytes());
    p.extend_from_slice(&f.shard.to_le_bytes());
    p.push(f.hops);
    match &f.op {
        Op::Get { key, consistency } => {
            p.extend_from_slice(&[1, consistency_code(*consistency)]);
            p.extend_from_slice(key);
        }
        Op::Write(command) => {
            p.extend_from_slice(&[2, 0]);
            p.extend_from_slice(&command.encode(0));
        }
        Op::Status => p.extend_from_slice(&[3, 0]),
        Op::Backup => unreachable!("a backup is served on the node asked, never forwarded (route::execute)"),
        Op::Scan { cursor, count, consistency } => {
            p.extend_from_slice(&[4, consistency_code(*consistency)]);
            p.extend_from_slice(&cursor.to_le_bytes());
            p.extend_from_slice(&count.to_le_bytes());
        }
    }
    p
}

pub fn decode_forward(payload: &[u8]) -> Result<Forward, String> {
    if payload.len() < 15 {
        return Err("forward shorter than its header".into());
    }
    let id = u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes"));
    let shard = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes"));
    let hops = payload[12];
    let body = Bytes::copy_from_slice(&payload[15..]);
    let op = match payload[13] {
        1 => Op::Get { key: body, consistency: consistency_from(payload[14]).ok_or("unknown consistency")? },
        2 => match Command::decode(&body).map_err(|e| e.to_string())? {
            // Compression happens on the leader, after forwarding.
            d if d.compressed => return Err("a forwarded write with a compressed value".into()),
            d => Op::Write(d.command),
        },
        3 => Op::Status,
        4 if body.len() == 12 => Op::Scan {
            cursor: u64::from_le_bytes(body[0..8].try_into().expect("8 bytes")),
            count: u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")),
            consistency: consistency_from(payload[14]).ok_or("unknown consistency")?,
        },
        k => return Err(format!("unknown forward kind {k}")),
    };
    Ok(Forward { id, shard, hops, op })
}

fn put_opt(p: &mut Vec<u8>, v: Option<u64>) {
    p.push(v.is_some() as u8);
    p.extend_from_slice(&v.unwrap_or(0).to_le_bytes());
}

fn put_text(p: &mut Vec<u8>, tag: u8, text: &str) {
    p.push(tag);
    p.extend_from_slice(text.as_bytes());
}

pub fn encode_reply(id: u64, result: &Result<Reply, CoreError>) -> Vec<u8> {
    let mut p = id.to_le_bytes().to_vec();
    match result {
        Ok(Reply::Value(None)) => p.push(1),
        Ok(Reply::Value(Some(s))) => {
            p.push(2);
            p.extend_from_slice(&s.version.to_le_bytes());
            p.extend_from_slice(&s.expires_at_ms.to_le_bytes());
            p.extend_from_slice(&s.value);
        }
        Ok(Reply::Outcome(Outcome::Written { version })) => {
            p.push(3);
            p.extend_from_slice(&version.to_le_bytes());
        }
        Ok(Reply::Outcome(Outcome::Deleted { version })) => {
            p.push(4);
            p.extend_from_slice(&version.to_le_bytes());
        }
        Ok(Reply::Outcome(Outcome::NotFound)) => p.push(5),
        Ok(Reply::Outcome(Outcome::ConditionFailed { current_version })) => {
            p.push(6);
            put_opt(&mut p, *current_version);
        }
        Ok(Reply::Status(json)) => put_text(&mut p, 7, json),
        // No forward asks for a backup (`decode_forward` has no such kind).
        Ok(Reply::Backup(_)) => put_text(&mut p, 22, "a backup is not served through a forward"),
        Ok(Reply::Outcome(Outcome::Previous { value, version })) => {
            p.push(8);
            put_opt(&mut p, *version);
            p.push(value.is_some() as u8);
            p.extend_from_slice(value.as_deref().unwrap_or_default());
        }
        Ok(Reply::Outcome(Outcome::Integer(n))) => {
            p.push(9);
            p.extend_from_slice(&n.to_le_bytes());
        }
        Ok(Reply::Outcome(Outcome::Bulk(b))) => {
            p.push(10);
            p.extend_from_slice(b);
        }
        Ok(Reply::Outcome(Outcome::Refused(r))) => p.extend_from_slice(&[11, refusal_code(*r)]),
        Ok(Reply::Keys(page)) => {
            p.push(12);
            put_opt(&mut p, page.next);
            p.extend_from_slice(&page.keys_total.to_le_bytes());
            p.extend_from_slice(&page.expires_total.to_le_bytes());
            for key in &page.keys {
                p.extend_from_slice(&(key.len() as u32).to_le_bytes());
                p.extend_from_slice(key);
            }
        }
        Err(CoreError::NotLeader { leader }) => {
            p.push(16);
            put_opt(&mut p, *leader);
        }
        Err(CoreError::Poisoned(why)) => put_text(&mut p, 17, why),
        Err(CoreError::ShuttingDown) => p.push(18),
        Err(CoreError::Dropped) => p.push(19),
        Err(CoreError::Busy) => p.push(20),
        Err(CoreError::WrongCore(shard)) => {
            p.push(21);
            p.extend_from_slice(&shard.to_le_bytes());
        }
        Err(CoreError::Unavailable(why)) => put_text(&mut p, 22, why),
        Err(CoreError::OutOfMemory) => p.push(23),
    }
    p
}

pub fn decode_reply(payload: &[u8]) -> Result<(u64, Result<Reply, CoreError>), String> {
    if payload.len() < 9 {
        return Err("forward reply shorter than its header".into());
    }
    let id = u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes"));
    let rest = &payload[9..];
    let u64_at = |b: &[u8]| b.get(..8).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes"))).ok_or("short reply");
    let opt = |b: &[u8]| -> Result<Option<u64>, String> {
        let v = u64_at(b.get(1..).ok_or("short reply")?)?;
        Ok((b[0] != 0).then_some(v))
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    let result = match payload[8] {
        1 => Ok(Reply::Value(None)),
        2 => {
            let expires_at_ms = u64_at(rest.get(8..).ok_or("short reply")?)?;
            let value = Bytes::copy_from_slice(&rest[16..]);
            Ok(Reply::Value(Some(Stored::with_expiry(value, u64_at(rest)?, expires_at_ms))))
        }
        3 => Ok(Reply::Outcome(Outcome::Written { version: u64_at(rest)? })),
        4 => Ok(Reply::Outcome(Outcome::Deleted { version: u64_at(rest)? })),
        5 => Ok(Reply::Outcome(Outcome::NotFound)),
        6 => Ok(Reply::Outcome(Outcome::ConditionFailed { current_version: opt(rest)? })),
        7 => Ok(Reply::Status(text())),
        8 => {
            let version = opt(rest)?;
            let value = match rest.get(9) {
                Some(0) => None,
                Some(_) => Some(Bytes::copy_from_slice(&rest[10..])),
                None => return Err("short reply".into()),
            };
            Ok(Reply::Outcome(Outcome::Previous { value, version }))
        }
        9 => Ok(Reply::Outcome(Outcome::Integer(u64_at(rest)? as i64))),
        10 => Ok(Reply::Outcome(Outcome::Bulk(Bytes::copy_from_slice(rest)))),
        11 => Ok(Reply::Outcome(Outcome::Refused(refusal_from(*rest.first().ok_or("short reply")?)?))),
        12 => Ok(Reply::Keys(decode_page(rest)?)),
        16 => Err(CoreError::NotLeader { leader: opt(rest)? }),
        17 => Err(CoreError::Poisoned(text())),
        18 => Err(CoreError::ShuttingDown),
        19 => Err(CoreError::Dropped),
        20 => Err(CoreError::Busy),
        21 => Err(CoreError::WrongCore(u32::from_le_bytes(rest.get(..4).ok_or("short reply")?.try_into().expect("4")))),
        22 => Err(CoreError::Unavailable(text())),
        23 => Err(CoreError::OutOfMemory),
        t => return Err(format!("unknown reply tag {t}")),
    };
    Ok((id, result))
}

const REFUSALS: [Refusal; 5] =
    [Refusal::NotInteger, Refusal::NotFloat, Refusal::Overflow, Refusal::NoSuchKey, Refusal::TooLarge];

fn refusal_code(r: Refusal) -> u8 {
    REFUSALS.iter().position(|x| *x == r).expect("every refusal is listed") as u8
}

fn refusal_from(code: u8) -> Result<Refusal, String> {
    REFUSALS.get(code as usize).copied().ok_or_else(|| format!("unknown refusal {code}"))
}

/// `next (u8 flag, u64) | keys_total u64 | expires_total u64 | { u32 len, key }*`.
fn decode_page(b: &[u8]) -> Result<ScanPage, String> {
    let u64_at = |at: usize| b.get(at..at + 8).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")));
    let short = || "short scan reply".to_string();
    let next = (b.first().ok_or_else(short)? != &0).then_some(u64_at(1).ok_or_else(short)?);
    let (keys_total, expires_total) = (u64_at(9).ok_or_else(short)?, u64_at(17).ok_or_else(short)?);
    let (mut keys, mut at) = (Vec::new(), 25);
    while at < b.len() {
        let len = b.get(at..at + 4).ok_or_else(short)?;
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        keys.push(Bytes::copy_from_slice(b.get(at + 4..at + 4 + len).ok_or_else(short)?));
        at += 4 + len;
    }
    Ok(ScanPage { keys, next, keys_total, expires_total })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_engine::Condition;

    #[test]
    fn handshake_messages_round_trip_and_proofs_bind_everything() {
        let h = PeerHello {
            version: 2,
            node: 3,
            core: 1,
            cores: 2,
            shards: 16,
            incarnation: 5,
            nonce: [7; NONCE_BYTES],
            joined: false,
        };
        assert_eq!(PeerHello::decode(&h.encode()), Some(h));
        let j = PeerHello { joined: true, ..h };
        assert_eq!(PeerHello::decode(&j.encode()), Some(j));
        let mut unknown_flag = h.encode();
        unknown_flag[6] = 2;
        assert_eq!(PeerHello::decode(&unknown_flag), None, "an unknown flag is refused");
        let c = Challenge {
            status: 0,
            node: 2,
            incarnation: 6,
            nonce: [9; NONCE_BYTES],
            mac: [1; MAC_BYTES],
            joined: false,
        };
        assert_eq!(Challenge::decode(&c.encode()), Some(c));
        let j = Challenge { joined: true, ..c };
        assert_eq!(Challenge::decode(&j.encode()), Some(j));
        let b = Binding {
            role: "server",
            from: (2, 6),
            to: (3, 5),
            core: 1,
            nonces: (&[1; 16], &[2; 16]),
            status: STATUS_OK,
            joined: (false, false),
        };
        let p = proof(b"secret", &b);
        assert!(proof_matches(b"secret", &b, &p));
        assert!(!proof_matches(b"other", &b, &p));
        for wrong in [
            Binding { role: "client", ..b },
            Binding { from: (3, 6), to: (2, 5), ..b },
            Binding { from: (2, 7), ..b },
            Binding { to: (3, 4), ..b },
            Binding { core: 0, ..b },
            Binding { status: STATUS_FORGOTTEN, ..b },
            b.joined(true, false),
            b.joined(false, true),
            Binding { nonces: (&[2; 16], &[1; 16]), ..b },
        ] {
            assert!(!proof_matches(b"secret", &wrong, &p), "{wrong:?}");
        }
    }

    #[test]
    fn frames_are_bounded_and_checksummed() {
        let mut out = Vec::new();
        put_frame(&mut out, FRAME_FORWARD, b"payload");
        assert_eq!(take_frame(&out, 100).unwrap(), Some((FRAME_FORWARD, &b"payload"[..], out.len())));
        assert_eq!(take_frame(&out[..out.len() - 1], 100).unwrap(), None);
        assert_eq!(take_frame(&out, 3), Err(FrameError::TooLarge(7)));
        let mut bad = out.clone();
        bad[14] ^= 1;
        assert_eq!(take_frame(&bad, 100), Err(FrameError::Checksum));
    }

    #[test]
    fn raft_batches_split_and_round_trip() {
        let msgs: Vec<(u32, Message)> = (0..50)
            .map(|i| {
                let m = Message { to: 2, from: 1, term: i, context: vec![i as u8; 100].into(), ..Message::default() };
                (i as u32 % 7, m)
            })
            .collect();
        let mut out = Vec::new();
        put_raft_frames(&mut out, &msgs, 1000);
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((kind, payload, used)) = take_frame(&out[at..], 1000 + 200).unwrap() {
            assert_eq!(kind, FRAME_RAFT);
            got.extend(decode_raft(payload).unwrap());
            at += used;
        }
        assert_eq!(got, msgs);
        assert!(decode_raft(&[5, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn large_messages_travel_in_parts() {
        let big = Message { to: 2, from: 1, context: vec![7u8; 10_000].into(), ..Message::default() };
        let small = Message { to: 2, from: 1, term: 4, ..Message::default() };
        let mut out = Vec::new();
        put_raft_frames(&mut out, &[(3, small.clone()), (5, big.clone()), (3, small.clone())], 1000);
        let (mut at, mut got, mut parts, mut re) = (0, Vec::new(), 0, Reassembly::default());
        while let Some((kind, payload, used)) = take_frame(&out[at..], 1000).unwrap() {
            match kind {
                FRAME_RAFT => got.extend(decode_raft(payload).unwrap()),
                FRAME_RAFT_PART => {
                    parts += 1;
                    got.extend(re.add(payload).unwrap());
                }
                k => panic!("frame {k}"),
            }
            at += used;
        }
        assert!(parts > 10);
        assert_eq!(got, vec![(3, small.clone()), (5, big), (3, small)]);
        // A piece from the middle without its beginning is refused.
        let mut lone = Reassembly::default();
        let mut p = 3u32.to_le_bytes().to_vec();
        p.extend_from_slice(&100u64.to_le_bytes());
        p.extend_from_slice(&50u64.to_le_bytes());
        assert!(lone.add(&p).is_err());
    }

    fn snapshot_message(data: Vec<u8>) -> Message {
        let mut m = Message { to: 2, from: 1, term: 5, ..Message::default() };
        m.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
        m.mut_snapshot().set_data(data.into());
        m.mut_snapshot().mut_metadata().index = 77;
        m.mut_snapshot().mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        m
    }

    #[test]
    fn snapshots_stream_as_a_head_and_chunks() {
        let m = snapshot_message((0..10_000u32).map(|i| (i % 251) as u8).collect());
        let (head, data) = snapshot_head(9, &m);
        assert!(head.len() < 100, "the head leaves the data out: {} bytes", head.len());
        assert_eq!(snapshot_chunk_bytes(1000), 1000);
        assert_eq!(snapshot_chunk_bytes(64 << 20), SNAPSHOT_CHUNK_BYTES);
        let mut out = Vec::new();
        put_frame(&mut out, FRAME_SNAPSHOT_HEAD, &head);
        for piece in data.chunks(snapshot_chunk_bytes(1000)) {
            put_frame(&mut out, FRAME_SNAPSHOT_CHUNK, piece);
        }
        let (mut at, mut got, mut asm) = (0, Vec::new(), SnapshotAssembly::default());
        assert_eq!(asm.started(), None);
        while let Some((kind, payload, used)) = take_frame(&out[at..], 1000).unwrap() {
            if at > 0 {
                assert_eq!(asm.started(), Some((9, 77)), "under way from the head to the last chunk");
            }
            let whole = match kind {
                FRAME_SNAPSHOT_HEAD => asm.head(payload).unwrap(),
                FRAME_SNAPSHOT_CHUNK => asm.chunk(payload).unwrap(),
                k => panic!("frame {k}"),
            };
            // Nothing is delivered before the last chunk.
            assert_eq!(whole.is_some(), at + used == out.len());
            got.extend(whole);
            at += used;
        }
        assert_eq!(got, vec![(9, m)]);
        assert_eq!(asm.started(), None, "done");
        // A snapshot without data is whole with its head.
        let empty = snapshot_message(Vec::new());
        assert_eq!(SnapshotAssembly::default().head(&snapshot_head(4, &empty).0).unwrap(), Some((4, empty)));
    }

    #[test]
    fn snapshot_streams_out_of_shape_are_refused() {
        let m = snapshot_message(vec![1; 100]);
        let (head, _) = snapshot_head(9, &m);
        // A chunk without its head, a head over an unfinished snapshot, and
        // more data than the head announced.
        assert!(SnapshotAssembly::default().chunk(&[1; 10]).is_err());
        let mut asm = SnapshotAssembly::default();
        assert_eq!(asm.head(&head).unwrap(), None);
        assert!(asm.head(&head).is_err());
        assert_eq!(asm.chunk(&[1; 60]).unwrap(), None);
        assert!(asm.chunk(&[1; 41]).is_err());
        // A head over the size limit, a head that is no MsgSnapshot, and one
        // that carries its data inline.
        let mut huge = head.clone();
        huge[4..12].copy_from_slice(&(RAFT_MESSAGE_BYTES_MAX + 1).to_le_bytes());
        assert!(SnapshotAssembly::default().head(&huge).is_err());
        let mut p = 9u32.to_le_bytes().to_vec();
        p.extend_from_slice(&0u64.to_le_bytes());
        p.extend(Message { to: 2, from: 1, ..Message::default() }.write_to_bytes().unwrap());
        assert!(SnapshotAssembly::default().head(&p).is_err());
        let mut inline = 9u32.to_le_bytes().to_vec();
        inline.extend_from_slice(&0u64.to_le_bytes());
        inline.extend(m.write_to_bytes().unwrap());
        assert!(SnapshotAssembly::default().head(&inline).is_err());
        assert!(SnapshotAssembly::default().head(&[0; 5]).is_err());
    }

    #[test]
    fn forwards_and_replies_round_trip() {
        let ops = [
            Op::Get { key: Bytes::from_static(b"k"), consistency: Consistency::Strict },
            Op::Write(Command::Put { key: "k".into(), value: "v".into(), condition: Condition::IfVersion(3) }),
            Op::Status,
            Op::Scan { cursor: u64::MAX - 1, count: 10, consistency: Consistency::Stale },
            Op::Write(Command::Reap { keys: vec!["a".into(), "b".into()] }),
        ];
        for op in ops {
            let f = decode_forward(&encode_forward(&Forward { id: 9, shard: 4, hops: 1, op: op.clone() })).unwrap();
            assert_eq!((f.id, f.shard, f.hops, format!("{:?}", f.op)), (9, 4, 1, format!("{op:?}")));
        }
        let results: Vec<Result<Reply, CoreError>> = vec![
            Ok(Reply::Value(Some(Stored::with_expiry("v".into(), 5, 77)))),
            Ok(Reply::Outcome(Outcome::Previous { value: Some("old".into()), version: None })),
            Ok(Reply::Outcome(Outcome::Previous { value: None, version: Some(8) })),
            Ok(Reply::Outcome(Outcome::Previous { value: Some("".into()), version: Some(8) })),
            Ok(Reply::Outcome(Outcome::Integer(-5))),
            Ok(Reply::Outcome(Outcome::Bulk("1.5".into()))),
            Ok(Reply::Outcome(Outcome::Refused(Refusal::TooLarge))),
            Ok(Reply::Keys(ScanPage {
                keys: vec!["x".into(), "".into()],
                next: Some(3),
                keys_total: 9,
                expires_total: 1,
            })),
            Ok(Reply::Keys(ScanPage { keys: vec![], next: None, keys_total: 0, expires_total: 0 })),
            Ok(Reply::Value(None)),
            Ok(Reply::Outcome(Outcome::ConditionFailed { current_version: Some(2) })),
            Ok(Reply::Status("{}".into())),
            Err(CoreError::NotLeader { leader: Some(3) }),
            Err(CoreError::Unavailable("no leader".into())),
            Err(CoreError::OutOfMemory),
        ];
        for r in results {
            let (id, back) = decode_reply(&encode_reply(7, &r)).unwrap();
            assert_eq!((id, format!("{back:?}")), (7, format!("{r:?}")));
        }
    }
}
