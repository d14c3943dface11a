//! A client that learns the cluster's topology and sends each request
//! straight to its shard's leader.
//!
//! It reads a node's STATUS (which node leads which shard, and every node's
//! client endpoint), computes a key's shard as the nodes do, and keeps one
//! connection per node. Any node also forwards requests it cannot serve, so
//! a stale topology costs a hop, not an error: when the leader it chose
//! answers NOT_LEADER or UNAVAILABLE, or cannot be reached, the client
//! refreshes the topology and sends the request once more through any node.
//! A write whose outcome is unknown (RETRY) is never re-sent.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_engine::Condition;
use kv_replication::layout::shard_of_key;
use kv_replication::Consistency;

use crate::client::{Client, ClientError, WriteResult};
use crate::native::codec::Status;

/// Which node leads each shard, and where every node serves clients.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub shards: u32,
    /// Leader of each shard, if the answering node knew one.
    pub leaders: Vec<Option<u64>>,
    pub endpoints: BTreeMap<u64, String>,
}

impl Topology {
    /// The endpoint of the leader of `key`'s shard, if known.
    pub fn leader_endpoint(&self, key: &[u8]) -> Option<&str> {
        let shard = shard_of_key(key, self.shards.max(1)) as usize;
        let leader = self.leaders.get(shard).copied().flatten()?;
        self.endpoints.get(&leader).map(String::as_str)
    }
}

pub struct ClusterClient {
    seeds: Vec<String>,
    timeout: Duration,
    topology: Topology,
    clients: BTreeMap<String, Client>,
    last_endpoint: String,
}

impl ClusterClient {
    /// Connects to the first reachable seed and reads the topology.
    pub fn connect(seeds: &[String], timeout: Duration) -> Result<ClusterClient, ClientError> {
        let mut c = ClusterClient {
            seeds: seeds.to_vec(),
            timeout,
            topology: Topology::default(),
            clients: BTreeMap::new(),
            last_endpoint: String::new(),
        };
        c.refresh()?;
        Ok(c)
    }

    /// Re-reads the topology from any reachable node.
    pub fn refresh(&mut self) -> Result<(), ClientError> {
        let mut last = None;
        let candidates: Vec<String> = self.seeds.iter().chain(self.topology.endpoints.values()).cloned().collect();
        for endpoint in candidates {
            match self.client(&endpoint).and_then(|c| c.status()) {
                Ok(json) => {
                    self.topology = parse_topology(&json)?;
                    return Ok(());
                }
                Err(e) => {
                    self.clients.remove(&endpoint);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Protocol("no seed endpoints".into())))
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The endpoint the last request went to (where routing sent it).
    pub fn last_endpoint(&self) -> &str {
        &self.last_endpoint
    }

    fn client(&mut self, endpoint: &str) -> Result<&mut Client, ClientError> {
        if !self.clients.contains_key(endpoint) {
            let c = Client::connect(&[endpoint.to_string()], self.timeout)?;
            self.clients.insert(endpoint.to_string(), c);
        }
        Ok(self.clients.get_mut(endpoint).expect("inserted above"))
    }

    /// Where a request for `key` goes: its shard's leader, else a seed.
    fn route(&self, key: &[u8]) -> String {
        let t = &self.topology;
        let leader =
            (t.shards > 0).then(|| t.leaders.get(shard_of_key(key, t.shards) as usize).copied().flatten()).flatten();
        leader.and_then(|l| t.endpoints.get(&l).cloned()).unwrap_or_else(|| self.seeds[0].clone())
    }

    /// Runs `call` against the key's leader. On a routing miss it refreshes
    /// the topology and tries the (possibly new) leader, then every other
    /// known node in turn: any node forwards to the leader, waiting out an
    /// election. Bounded by the number of known nodes.
    fn run<T>(
        &mut self,
        key: &[u8],
        retry_unknown: bool,
        call: impl Fn(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut tried: Vec<String> = Vec::new();
        let mut endpoint = self.route(key);
        loop {
            self.last_endpoint = endpoint.clone();
            let result = self.client(&endpoint).and_then(&call);
            let misrouted = match &result {
                Err(ClientError::Server { status: Status::NotLeader | Status::Unavailable, .. }) => true,
                Err(ClientError::Server { status: Status::Retry, .. }) => retry_unknown,
                Err(ClientError::Connect { .. }) => true,
                // The connection broke: for a write, whether it ran is unknown.
                Err(ClientError::Io(_)) => retry_unknown,
                _ => false,
            };
            if !misrouted {
                return result;
            }
            self.clients.remove(&endpoint);
            tried.push(endpoint);
            if tried.len() == 1 {
                let _ = self.refresh();
            }
            let routed = self.route(key);
            let others = self.seeds.iter().chain(self.topology.endpoints.values());
            match std::iter::once(&routed).chain(others).find(|e| !tried.contains(e)) {
                Some(next) => endpoint = next.clone(),
                None => return result,
            }
        }
    }

    pub fn get_with(&mut self, key: &[u8], consistency: Consistency) -> Result<Option<(Vec<u8>, u64)>, ClientError> {
        self.run(key, true, |c| c.get_with(key, consistency))
    }

    pub fn get(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>, ClientError> {
        self.get_with(key, Consistency::Lease)
    }

    pub fn put_if(&mut self, key: &[u8], value: &[u8], condition: Condition) -> Result<WriteResult, ClientError> {
        self.run(key, false, |c| c.put_if(key, value, condition))
    }

    pub fn delete(&mut self, key: &[u8], condition: Condition) -> Result<WriteResult, ClientError> {
        self.run(key, false, |c| c.delete(key, condition))
    }
}

/// The topology in a STATUS document (docs/protocol.md §6).
pub fn parse_topology(json: &str) -> Result<Topology, ClientError> {
    let bad = |what: &str| ClientError::Protocol(format!("malformed STATUS: {what}"));
    let v: serde_json::Value = serde_json::from_str(json).map_err(|_| bad("not JSON"))?;
    let shards = v["shards"].as_u64().ok_or_else(|| bad("no shards"))? as u32;
    let mut leaders = vec![None; shards as usize];
    for g in v["cores"].as_array().into_iter().flatten().flat_map(|c| c["groups"].as_array().into_iter().flatten()) {
        if let (Some(s), Some(l)) = (g["shard"].as_u64(), g["leader"].as_u64()) {
            if let Some(slot) = leaders.get_mut(s as usize) {
                *slot = Some(l);
            }
        }
    }
    let endpoints = v["endpoints"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(n, e)| Some((n.parse().ok()?, e.as_str()?.to_string())))
        .collect();
    Ok(Topology { shards, leaders, endpoints })
}
