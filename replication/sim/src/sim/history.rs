//! The record of what the simulated clients asked and learned, in the
//! order operations were invoked: the input of every check, and what
//! `kvsim --print-history` prints (one line per operation, byte for byte
//! the same for the same seed).

use std::fmt::Write as _;

use bytes::Bytes;
use kv_replication::Consistency;

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    Put {
        value: Bytes,
    },
    /// A put with a TTL far beyond the run (it never expires in it).
    PutLongTtl {
        value: Bytes,
    },
    /// A put with a TTL that runs out during the run (keys outside the
    /// linearizability check).
    PutShortTtl {
        value: Bytes,
        ttl_ms: u64,
    },
    Delete,
    /// A put only if the key is at `version`, which held `expected`.
    Cas {
        expected: Bytes,
        version: u64,
        value: Bytes,
    },
    Get {
        consistency: Consistency,
    },
}

/// What the client learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Result {
    Written {
        version: u64,
    },
    Deleted {
        existed: bool,
    },
    CasFailed,
    Read {
        value: Option<(Bytes, u64)>,
    },
    /// No answer in time, or an error that leaves the outcome open.
    Unknown {
        why: String,
    },
}

#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub id: u64,
    pub key: Bytes,
    pub kind: OpKind,
    pub invoked_us: u64,
    /// When the answer arrived; `None` while pending or when unknown.
    pub completed_us: Option<u64>,
    pub result: Option<Result>,
    /// Nodes the operation was sent to, in order.
    pub nodes: Vec<u64>,
}

#[derive(Debug, Default)]
pub struct History {
    pub ops: Vec<Op>,
}

/// The client id evictions are recorded under.
pub const EVICTOR: usize = usize::MAX - 1;

impl History {
    /// An eviction proposed for `key` at `now_us`: a delete whose outcome
    /// is unknown.
    pub fn record_eviction(&mut self, key: bytes::Bytes, now_us: u64) {
        let id = self.ops.len() as u64;
        let result = Some(Result::Unknown { why: "evicted".into() });
        let op = Op {
            client: EVICTOR,
            id,
            key,
            kind: OpKind::Delete,
            invoked_us: now_us,
            completed_us: None,
            result,
            nodes: Vec::new(),
        };
        self.ops.push(op);
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for op in &self.ops {
            let _ = writeln!(out, "{}", describe(op));
        }
        out
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(op: &Op) -> String {
    let kind = match &op.kind {
        OpKind::Put { value } => format!("put {}", show(value)),
        OpKind::PutLongTtl { value } => format!("put {} ttl=long", show(value)),
        OpKind::PutShortTtl { value, ttl_ms } => format!("put {} ttl={ttl_ms}ms", show(value)),
        OpKind::Delete => "delete".to_string(),
        OpKind::Cas { expected, version, value } => format!("cas {}@{version} -> {}", show(expected), show(value)),
        OpKind::Get { consistency } => format!("get {consistency:?}").to_lowercase(),
    };
    let result = match &op.result {
        None => "pending".to_string(),
        Some(Result::Written { version }) => format!("ok v{version}"),
        Some(Result::Deleted { existed }) => format!("deleted existed={existed}"),
        Some(Result::CasFailed) => "condition failed".to_string(),
        Some(Result::Read { value: None }) => "absent".to_string(),
        Some(Result::Read { value: Some((v, version)) }) => format!("{} v{version}", show(v)),
        Some(Result::Unknown { why }) => format!("unknown ({why})"),
    };
    let done = op.completed_us.map_or("-".to_string(), |t| t.to_string());
    let nodes: Vec<String> = op.nodes.iter().map(|n| n.to_string()).collect();
    let client = if op.client == EVICTOR { "evictor".to_string() } else { format!("c{}", op.client) };
    format!(
        "{:>10} {:>10} {} #{} {} {} => {} via [{}]",
        op.invoked_us,
        done,
        client,
        op.id,
        show(&op.key),
        kind,
        result,
        nodes.join(",")
    )
}
