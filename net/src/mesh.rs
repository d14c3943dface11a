//! Cross-core forwarding. Every ordered pair of cores has a bounded
//! lock-free SPSC request channel and a reply channel (glommio shared
//! channels), created on the main thread before the executors start and
//! connected by each executor. A request for a shard owned by core B,
//! arriving on core A, crosses to B, runs there, and its reply comes back.
//! Nothing is shared but the channels.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use glommio::channels::shared_channel::{self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender};
use kv_engine::{Command, Outcome, Stored};
use kv_replication::{oneshot, Consistency, CoreError, ScanPage, ShardBackup};

use crate::route::{self, Owner};

/// Requests in flight from one core to another before senders wait.
pub const MESH_CHANNEL_DEPTH: usize = 1024;

/// An operation on one shard.
#[derive(Debug, Clone)]
pub enum Op {
    Get {
        key: Bytes,
        consistency: Consistency,
    },
    Write(Command),
    /// This core's groups and links, as JSON.
    Status,
    /// A page of the shard's keys (see `kv_replication::keyspace`).
    Scan {
        cursor: u64,
        count: u32,
        consistency: Consistency,
    },
    /// A consistent copy of the shard for a backup, from its leader on this
    /// node only: never forwarded to another node (see `route::execute`).
    Backup,
}

impl Op {
    /// Whether the op may be forwarded to another node (a backup's copy is
    /// read from the node that made it; see `route::execute`).
    pub fn forwardable(&self) -> bool {
        !matches!(self, Op::Backup)
    }
}

#[derive(Debug, Clone)]
pub enum Reply {
    Value(Option<Stored>),
    Outcome(Outcome),
    Status(String),
    Keys(ScanPage),
    /// A shard's copy for a backup (see `kv_replication::Core::backup`).
    Backup(ShardBackup),
}

pub struct CrossRequest {
    id: u64,
    shard: u32,
    op: Op,
    /// Passed to `route::execute`: `HOPS_MAX` keeps the request on this node.
    hops: u8,
}

pub struct CrossReply {
    id: u64,
    result: Result<Reply, CoreError>,
}

/// One core's unconnected channel ends (built on the main thread).
pub struct MeshEnds {
    core: usize,
    requests_to: Vec<Option<SharedSender<CrossRequest>>>,
    requests_from: Vec<Option<SharedReceiver<CrossRequest>>>,
    replies_to: Vec<Option<SharedSender<CrossReply>>>,
    replies_from: Vec<Option<SharedReceiver<CrossReply>>>,
}

/// Creates the channel ends of a full mesh of `cores` cores.
pub fn build(cores: usize) -> Vec<MeshEnds> {
    let mut ends: Vec<MeshEnds> = (0..cores)
        .map(|core| MeshEnds {
            core,
            requests_to: (0..cores).map(|_| None).collect(),
            requests_from: (0..cores).map(|_| None).collect(),
            replies_to: (0..cores).map(|_| None).collect(),
            replies_from: (0..cores).map(|_| None).collect(),
        })
        .collect();
    for a in 0..cores {
        for b in (0..cores).filter(|&b| b != a) {
            let (tx, rx) = shared_channel::new_bounded(MESH_CHANNEL_DEPTH);
            ends[a].requests_to[b] = Some(tx);
            ends[b].requests_from[a] = Some(rx);
            let (tx, rx) = shared_channel::new_bounded(MESH_CHANNEL_DEPTH);
            ends[b].replies_to[a] = Some(tx);
            ends[a].replies_from[b] = Some(rx);
        }
    }
    ends
}

/// This core's side of the mesh, connected.
pub struct Mesh {
    core: usize,
    requests_to: Vec<Option<ConnectedSender<CrossRequest>>>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<Result<Reply, CoreError>>>>,
    next_id: Cell<u64>,
}

/// Connected channel ends, not yet serving.
pub struct ConnectedEnds {
    core: usize,
    requests_to: Vec<Option<ConnectedSender<CrossRequest>>>,
    requests_from: Vec<Option<ConnectedReceiver<CrossRequest>>>,
    replies_to: Vec<Option<ConnectedSender<CrossReply>>>,
    replies_from: Vec<Option<ConnectedReceiver<CrossReply>>>,
}

impl MeshEnds {
    /// Connects every channel end. Each connect waits for its peer core to
    /// connect the other end, so every core calls this first thing, before
    /// anything that can fail.
    pub async fn connect(self) -> ConnectedEnds {
        // Start all connects before awaiting any: awaiting group by group
        // would deadlock two cores.
        let requests_to = spawn_connects(self.requests_to, |s| s.connect());
        let requests_from = spawn_connects(self.requests_from, |r| r.connect());
        let replies_to = spawn_connects(self.replies_to, |s| s.connect());
        let replies_from = spawn_connects(self.replies_from, |r| r.connect());
        ConnectedEnds {
            core: self.core,
            requests_to: join_all(requests_to).await,
            requests_from: join_all(requests_from).await,
            replies_to: join_all(replies_to).await,
            replies_from: join_all(replies_from).await,
        }
    }
}

impl ConnectedEnds {
    /// Starts the tasks that serve other cores' requests with `owner` and
    /// route replies back to their waiters.
    pub fn start(self, owner: Rc<Owner>) -> Rc<Mesh> {
        let mesh = Rc::new(Mesh {
            core: self.core,
            requests_to: self.requests_to,
            waiting: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
        });
        let pairs = self.requests_from.into_iter().zip(self.replies_to);
        for (rx, tx) in pairs.filter_map(|(rx, tx)| Some((rx?, tx?))) {
            glommio::spawn_local(serve_peer(rx, Rc::new(tx), owner.clone())).detach();
        }
        for rx in self.replies_from.into_iter().flatten() {
            glommio::spawn_local(route_replies(rx, mesh.clone())).detach();
        }
        mesh
    }
}

fn spawn_connects<T, C, F>(ends: Vec<Option<T>>, connect: impl Fn(T) -> F) -> Vec<Option<glommio::Task<C>>>
where
    C: 'static,
    F: std::future::Future<Output = C> + 'static,
{
    ends.into_iter().map(|e| e.map(|e| glommio::spawn_local(connect(e)))).collect()
}

async fn join_all<C>(tasks: Vec<Option<glommio::Task<C>>>) -> Vec<Option<C>> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(match t {
            Some(t) => Some(t.await),
            None => None,
        });
    }
    out
}

impl Mesh {
    /// Runs `op` on core `to`, which owns `shard`, as a request that was
    /// already forwarded `hops` times (see `route::execute`).
    pub async fn forward(&self, to: usize, shard: u32, op: Op, hops: u8) -> Result<Reply, CoreError> {
        assert_ne!(to, self.core, "forwarding to self");
        let sender = self.requests_to[to].as_ref().expect("mesh connects every other core");
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.waiting.borrow_mut().insert(id, tx);
        if sender.send(CrossRequest { id, shard, op, hops }).await.is_err() {
            self.waiting.borrow_mut().remove(&id);
            return Err(CoreError::ShuttingDown);
        }
        rx.await.unwrap_or(Err(CoreError::ShuttingDown))
    }
}

async fn serve_peer(
    requests: ConnectedReceiver<CrossRequest>,
    replies: Rc<ConnectedSender<CrossReply>>,
    owner: Rc<Owner>,
) {
    while let Some(req) = requests.recv().await {
        let (owner, replies) = (owner.clone(), replies.clone());
        glommio::spawn_local(async move {
            let result = route::execute(&owner, req.shard, req.op, req.hops).await;
            // The requesting core is gone only when the node is stopping.
            let _ = replies.send(CrossReply { id: req.id, result }).await;
        })
        .detach();
    }
}

async fn route_replies(replies: ConnectedReceiver<CrossReply>, mesh: Rc<Mesh>) {
    while let Some(reply) = replies.recv().await {
        let waiter = mesh.waiting.borrow_mut().remove(&reply.id);
        if let Some(w) = waiter {
            w.send(reply.result);
        }
    }
}
