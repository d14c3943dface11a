//! Where Raft messages for other nodes leave a core, and the seam the peer
//! transport (in `kv-net`) plugs into. Messages are tagged with their group:
//! raft-rs messages do not carry it.

use raft::eraftpb::Message;

pub trait Transport {
    /// Queues `(group, message)` pairs for their `to` nodes. MUST NOT block
    /// the core; messages may be dropped (Raft retransmits).
    fn send(&self, messages: Vec<(u32, Message)>);
}

/// The transport of a node without peers.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, messages: Vec<(u32, Message)>) {
        assert!(
            messages.is_empty(),
            "a Raft message to node {} on a node without peers: groups here have exactly one voter",
            messages[0].1.to
        );
    }
}
