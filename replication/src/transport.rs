//! Where Raft messages for other nodes leave a core. A single node has no
//! peers, so its groups (one voter each) never produce messages; the peer
//! transport plugs in here.

use raft::eraftpb::Message;

pub trait Transport {
    /// Sends messages to their `to` nodes. MUST NOT block the core.
    fn send(&self, messages: Vec<Message>);
}

/// The transport of a node without peers.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, messages: Vec<Message>) {
        assert!(
            messages.is_empty(),
            "a Raft message to node {} on a node without peers: groups here have exactly one voter",
            messages[0].to
        );
    }
}
