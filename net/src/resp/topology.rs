//! The cluster as Redis Cluster clients see it: slot ranges (one per
//! shard), each with a master and replicas, each node at its RESP address
//! and named by 40 hex digits.
//!
//! A shard's master is its current leader when this node knows it (it holds
//! a replica of the shard), else its preferred leader (the first of its
//! replicas): a client sent there is redirected once more if that guess is
//! stale. Replicas are the shard's other replica nodes. The leaders come
//! from every core's status, gathered over the mesh.

use std::collections::BTreeMap;
use std::ops::Range;

use kv_replication::CoreError;
use sha2::{Digest, Sha256};

use crate::mesh::{Op, Reply};
use crate::service::Service;

/// One Raft group of this node, as its core reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub shard: u32,
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub keys: u64,
    /// Keys with a TTL.
    pub expires: u64,
    pub bytes: u64,
}

/// What every core of this node reports.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub groups: Vec<GroupView>,
    /// Why a core's WAL refuses writes, if one does.
    pub poisoned: Option<String>,
}

impl NodeView {
    /// Keys this node answers for without counting a shard twice: in proxy
    /// mode every shard it holds (each is on one core), in cluster mode only
    /// the shards it leads, so that summing over a cluster's masters counts
    /// each key once.
    pub fn keys(&self, leaders_only: bool) -> u64 {
        self.groups.iter().filter(|g| g.is_leader || !leaders_only).map(|g| g.keys).sum()
    }

    /// Keys with a TTL, counted as [`NodeView::keys`] counts keys.
    pub fn expires(&self, leaders_only: bool) -> u64 {
        self.groups.iter().filter(|g| g.is_leader || !leaders_only).map(|g| g.expires).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.groups.iter().map(|g| g.bytes).sum()
    }

    pub fn shards_led(&self) -> usize {
        self.groups.iter().filter(|g| g.is_leader).count()
    }
}

/// Gathers every core's groups (one status request per core).
pub async fn node_view(svc: &Service) -> Result<NodeView, CoreError> {
    let mut view = NodeView::default();
    for core in 0..svc.layout.cores {
        let Reply::Status(json) = svc.execute_on(0, core, Op::Status).await? else {
            unreachable!("a status request is answered with a status")
        };
        let status: serde_json::Value = serde_json::from_str(&json).expect("core status is JSON");
        if let Some(why) = status["poisoned"].as_str() {
            view.poisoned = Some(why.to_string());
        }
        for g in status["groups"].as_array().into_iter().flatten() {
            view.groups.push(GroupView {
                shard: g["shard"].as_u64().expect("group has a shard") as u32,
                leader: g["leader"].as_u64(),
                is_leader: g["is_leader"].as_bool().unwrap_or(false),
                keys: g["keys"].as_u64().unwrap_or(0),
                expires: g["expires"].as_u64().unwrap_or(0),
                bytes: g["bytes"].as_u64().unwrap_or(0),
            });
        }
    }
    Ok(view)
}

/// One shard as a slot range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardView {
    pub shard: u32,
    pub slots: Range<u32>,
    pub master: u64,
    pub replicas: Vec<u64>,
}

/// Every shard of the cluster, in slot order.
pub fn shards(svc: &Service, view: &NodeView) -> Vec<ShardView> {
    let leaders: BTreeMap<u32, u64> = view.groups.iter().filter_map(|g| Some((g.shard, g.leader?))).collect();
    (0..svc.layout.shards)
        .map(|shard| {
            let members = svc.layout.replicas_of(shard);
            let master = leaders.get(&shard).copied().unwrap_or(members[0]);
            let replicas = members.into_iter().filter(|n| *n != master).collect();
            ShardView { shard, slots: svc.layout.slots_of_shard(shard), master, replicas }
        })
        .collect()
}

/// A node's RESP address as `(host, port)`, if known: this node's own, or
/// what a peer announced once its link came up.
pub fn resp_endpoint(svc: &Service, node: u64) -> Option<(String, u16)> {
    let text = if node == svc.layout.node_id {
        svc.endpoints.resp.clone()
    } else {
        svc.owner.peers.as_ref()?.all_endpoints().get(&node)?.resp.clone()
    };
    split_host_port(&text)
}

pub fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

/// The 40-hex-digit name Redis Cluster clients know node `node` by; the
/// same on every node and across restarts.
pub fn node_name(node: u64) -> String {
    let digest = Sha256::digest(format!("kvd node {node}").as_bytes());
    digest[..20].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_stable_and_distinct() {
        let a = node_name(1);
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, node_name(1));
        assert_ne!(a, node_name(2));
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("127.0.0.1:6380"), Some(("127.0.0.1".into(), 6380)));
        assert_eq!(split_host_port("[::1]:7"), Some(("::1".into(), 7)));
        assert_eq!(split_host_port("nohost"), None);
    }
}
