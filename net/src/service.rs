//! The protocol-independent request path of one core: key → shard → core,
//! then run locally or forward over the mesh. Every protocol front end
//! (native now; RESP and HTTP plug in the same way) decodes into these
//! operations and encodes the [`Reply`].

use std::cell::Cell;
use std::rc::Rc;

use std::sync::Arc;

use glommio::sync::Semaphore;
use kv_replication::{Consistency, CoreError, Layout};

use crate::limits::Limits;
use crate::mesh::{Mesh, Op, Reply};
use crate::metrics::Metrics;
use crate::route::{self, Owner};

/// Per-core state shared by every connection on the core.
pub struct Service {
    pub core_index: u32,
    pub layout: Layout,
    pub owner: Rc<Owner>,
    pub mesh: Rc<Mesh>,
    pub limits: Limits,
    pub shutdown: Shutdown,
    /// Open client connections on this core.
    pub connections: Cell<usize>,
    /// Where this node serves each protocol.
    pub endpoints: Endpoints,
    pub frontend: Frontend,
    /// The process-wide metrics (shared by every core).
    pub metrics: Arc<Metrics>,
    /// The node's memory limit and what the allocator says it holds.
    pub memory: Arc<crate::memory::Memory>,
}

/// How RESP clients are routed to a shard's leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespMode {
    /// The node forwards the request; any client works.
    Proxy,
    /// The node answers `-MOVED slot host:port`, as Redis Cluster does.
    Cluster,
}

/// Settings the client-facing protocols share.
#[derive(Debug, Clone)]
pub struct Frontend {
    pub resp_mode: RespMode,
    /// What clients must authenticate with; `None` lets everyone in.
    pub password: Option<Arc<Vec<u8>>>,
}

impl Frontend {
    /// Whether `given` is the password, compared in constant time (no early
    /// exit that would tell an attacker how much of a guess was right).
    /// `false` when no password is set.
    pub fn password_matches(&self, given: &[u8]) -> bool {
        let Some(password) = &self.password else { return false };
        let mut diff = (password.len() != given.len()) as u8;
        for (i, b) in password.iter().enumerate() {
            diff |= b ^ given.get(i).copied().unwrap_or(!b);
        }
        diff == 0
    }
}

/// Where a node serves clients, per protocol (`HOST:PORT` each). Nodes tell
/// each other theirs once a peer link is up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub native: String,
    pub resp: String,
    pub http: String,
}

impl Endpoints {
    /// `native=HOST:PORT resp=HOST:PORT http=HOST:PORT`.
    pub fn encode(&self) -> String {
        format!("native={} resp={} http={}", self.native, self.resp, self.http)
    }

    /// Reads [`Endpoints::encode`]'s text; unknown or missing keys are skipped.
    pub fn decode(text: &str) -> Endpoints {
        let mut e = Endpoints::default();
        for (key, value) in text.split_whitespace().filter_map(|part| part.split_once('=')) {
            match key {
                "native" => e.native = value.to_string(),
                "resp" => e.resp = value.to_string(),
                "http" => e.http = value.to_string(),
                _ => {}
            }
        }
        e
    }
}

impl Service {
    /// Connections this core accepts (its share of the node's limit).
    pub fn connections_max(&self) -> usize {
        self.limits.connections_max.div_ceil(self.layout.cores as usize)
    }

    /// Where a key lives: (shard, owning core).
    pub fn route(&self, key: &[u8]) -> (u32, u32) {
        let shard = self.layout.shard_of_key(key);
        (shard, self.layout.core_of_shard(shard))
    }

    /// Runs `op` for `key` wherever its shard lives.
    pub async fn execute(&self, key: &[u8], op: Op) -> Result<Reply, CoreError> {
        let (shard, owner) = self.route(key);
        self.execute_on(shard, owner, op).await
    }

    /// Runs `op` for `shard` from core `owner` of this node.
    pub async fn execute_on(&self, shard: u32, owner: u32, op: Op) -> Result<Reply, CoreError> {
        self.execute_hops(shard, owner, op, 0).await
    }

    /// Runs `op` for `key` on this node's replica of its shard, without
    /// forwarding to another node: a replica that cannot serve it answers
    /// `NotLeader` (an election still under way is waited out, boundedly).
    /// A node without a replica answers `Unavailable`.
    pub async fn execute_here(&self, key: &[u8], op: Op) -> Result<Reply, CoreError> {
        let (shard, owner) = self.route(key);
        // A request that has used up its hops is never forwarded again.
        self.execute_hops(shard, owner, op, route::HOPS_MAX).await
    }

    async fn execute_hops(&self, shard: u32, owner: u32, op: Op, hops: u8) -> Result<Reply, CoreError> {
        if owner == self.core_index {
            route::execute(&self.owner, shard, op, hops).await
        } else {
            self.mesh.forward(owner as usize, shard, op, hops).await
        }
    }

    /// This node's view of the cluster: every core's groups and peer links,
    /// gathered from each core in turn (`kvctl cluster status`,
    /// `GET /v1/cluster`).
    pub async fn node_status(&self) -> Result<serde_json::Value, CoreError> {
        let mut cores = Vec::new();
        let mut endpoints = serde_json::Map::new();
        endpoints.insert(self.layout.node_id.to_string(), self.endpoints.native.clone().into());
        for core in 0..self.layout.cores {
            match self.execute_on(0, core, Op::Status).await? {
                Reply::Status(json) => {
                    let core: serde_json::Value = serde_json::from_str(&json).expect("status is JSON");
                    for (node, endpoint) in core["endpoints"].as_object().into_iter().flatten() {
                        endpoints.entry(node.clone()).or_insert(endpoint.clone());
                    }
                    cores.push(core);
                }
                other => unreachable!("status answered with {other:?}"),
            }
        }
        Ok(serde_json::json!({
            "node": self.layout.node_id, "nodes": self.layout.nodes, "replicas": self.layout.replicas,
            "shards": self.layout.shards, "endpoints": endpoints, "cores": cores,
        }))
    }

    /// Starts loading the entries of the `keys` this core holds, before a
    /// pipelined batch reads them (Valkey prefetches a batch's keys the
    /// same way): their cache misses overlap instead of following each
    /// other. Keys on other cores are left to their core.
    pub fn prefetch<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) {
        let local: Vec<(u32, &[u8])> = keys
            .map(|k| (self.route(k), k))
            .filter(|((_, owner), _)| *owner == self.core_index)
            .map(|((shard, _), k)| (shard, k))
            .collect();
        if !local.is_empty() {
            self.owner.core.prefetch(&local);
        }
    }

    /// A read answered without waiting, when the key's shard is on this
    /// core and this replica may serve it at `consistency`; `None` otherwise.
    pub fn try_read_now(&self, key: &[u8], consistency: Consistency) -> Option<Reply> {
        let (shard, owner) = self.route(key);
        if owner != self.core_index || consistency == Consistency::Strict {
            return None;
        }
        self.owner.core.read_now(shard, key, consistency).ok().map(Reply::Value)
    }
}

/// A core-wide stop signal: connections and listeners race it against IO.
pub struct Shutdown {
    gate: Rc<Semaphore>,
    triggered: Cell<bool>,
}

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown { gate: Rc::new(Semaphore::new(0)), triggered: Cell::new(false) }
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        self.triggered.set(true);
        self.gate.close();
    }

    pub fn is_triggered(&self) -> bool {
        self.triggered.get()
    }

    /// Resolves once `trigger` was called.
    pub async fn wait(&self) {
        // A closed semaphore fails every acquire; nothing ever signals it.
        let _ = self.gate.acquire(1).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_comparison() {
        let f = Frontend { resp_mode: RespMode::Proxy, password: Some(Arc::new(b"s3cret".to_vec())) };
        assert!(f.password_matches(b"s3cret"));
        for wrong in [&b""[..], b"s3cre", b"s3cret!", b"S3cret", b"\x00\x00\x00\x00\x00\x00"] {
            assert!(!f.password_matches(wrong), "{wrong:?}");
        }
        let open = Frontend { resp_mode: RespMode::Proxy, password: None };
        assert!(!open.password_matches(b""));
    }
}
