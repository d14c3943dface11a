//! The peer transport: how a core talks to the same core of other nodes.
//!
//! Each core keeps one outbound connection per peer node ([`Link`]), opened
//! on demand and re-opened after failures with a bounded backoff. Raft
//! messages queued by the core's driver go out batched: everything queued
//! for a node while the previous write was in flight leaves in the next one,
//! so the heartbeats of all groups to one node share a frame. Requests
//! forwarded to a leader travel on the same link; their replies come back on
//! it. Inbound connections are authenticated (see [`wire`]) before a single
//! message is decoded, and a Raft message is only accepted from the node
//! that authenticated, addressed to this node.
//!
//! Messages to an unreachable node are dropped: Raft retransmits.

pub mod incarnation;
pub mod snapshot;
pub mod wire;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use kv_replication::{oneshot, Core, CoreError};
use raft::eraftpb::Message;

use crate::mesh::{Op, Reply};
use crate::node::NodeSignals;
use crate::readbuf::{Reader, CHUNK_BYTES};
use crate::route::Owner;
use crate::service::Endpoints;
use incarnation::{Incarnations, Seen};
use wire::{Binding, Challenge, Forward, PeerHello};

/// Time allowed to connect and complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait after a failed connect before trying that node again.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);
/// Raft messages queued for one node before new ones are dropped.
const LINK_QUEUE_MESSAGES_MAX: usize = 65_536;
/// Forwarded requests one inbound connection runs at once; more are
/// answered Busy.
const INBOUND_FORWARDS_MAX: u64 = 4096;
/// How often a core looks at its readmissions (to record the directories
/// every core has readmitted) and, on a node that joined, dials the peers it
/// is not connected to (members start readmitting it on its handshakes;
/// see `incarnation.rs`).
const MEMBERSHIP_INTERVAL: Duration = Duration::from_secs(1);
/// Shard snapshots one core streams at once; more wait their turn. Each
/// holds an encoded copy of its shard, already made (see
/// `FILLS_PER_CORE_MAX` in the machine).
const SNAPSHOT_SENDS_MAX: u64 = 2;
/// Longest wait for the receiver to take one chunk of a snapshot: a
/// paused or cut-off receiver then costs this, and raft-rs is told the
/// snapshot failed so it sends another later.
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the next bytes of a snapshot being received: a sender
/// that vanished mid-stream closes the connection, and its partial
/// snapshot is dropped, after this. Longer than the sender's own wait, and
/// than the pacing gap between chunks at the slowest rate allowed.
const SNAPSHOT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What a core needs to know about its peers.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub node_id: u64,
    pub core: u32,
    pub cores: u32,
    pub shards: u32,
    pub secret: Arc<Vec<u8>>,
    /// Peer address of core 0 of every other node; core `c` is at port + c.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// Largest frame payload accepted (fits the largest entry).
    pub payload_bytes_max: usize,
    /// Where this node serves clients, told to peers.
    pub endpoints: Endpoints,
    /// This node's data directory's incarnation and its peers' (shared by
    /// the node's cores).
    pub incarnations: Arc<Incarnations>,
    /// Raised when a peer says this node's data directory is not the one
    /// it knew: the node stops.
    pub signals: Arc<NodeSignals>,
    /// The data directory was made by `kvd --join`: handshakes ask to be
    /// readmitted, and peers are dialled until connected.
    pub joined: bool,
    /// Snapshot bytes one core streams to peers per second, over all its
    /// snapshots; `0`: as fast as the network takes them.
    pub snapshot_bytes_per_sec: u64,
}

/// The per-core address of a node's peer listener.
pub fn core_addr(base: SocketAddr, core: u32) -> SocketAddr {
    SocketAddr::new(base.ip(), base.port() + core as u16)
}

struct Link {
    node: u64,
    addr: SocketAddr,
    raft: RefCell<Vec<(u32, Message)>>,
    forwards: RefCell<Vec<u8>>,
    forward_ids: RefCell<Vec<u64>>,
    wake: LocalSender<()>,
    up: Cell<bool>,
    broken: Cell<bool>,
    /// Connect even with nothing to send (a joined node dialling).
    dial: Cell<bool>,
}

/// A forwarded request waiting for its reply: the node asked, and the waiter.
type Waiting = (u64, oneshot::Sender<Result<Reply, CoreError>>);

/// One core's peer transport.
pub struct Peers {
    config: PeerConfig,
    /// The core these links serve (set once it is open).
    core: RefCell<Option<Core>>,
    links: BTreeMap<u64, Rc<Link>>,
    waiting: RefCell<HashMap<u64, Waiting>>,
    next_id: Cell<u64>,
    stopping: Cell<bool>,
    /// Client endpoints peers announced.
    endpoints: RefCell<BTreeMap<u64, Endpoints>>,
    /// Bounds the snapshots streamed at once ([`SNAPSHOT_SENDS_MAX`]).
    snapshot_sends: Rc<Semaphore>,
    /// When the core's snapshot streams may send their next chunk: one
    /// budget for all of them ([`PeerConfig::snapshot_bytes_per_sec`]).
    snapshot_due: Cell<Instant>,
    /// Snapshots being streamed or waiting their turn, for STATUS.
    snapshots: RefCell<BTreeMap<(u32, u64), snapshot::Progress>>,
    /// Groups received snapshots are being loaded for, with how many (see
    /// [`snapshot::receive`]): their leaders' appends are dropped meanwhile.
    loading: RefCell<BTreeMap<u32, usize>>,
}

/// The [`kv_replication::transport::Transport`] face of [`Peers`].
pub struct PeerTransport(pub Rc<Peers>);

impl kv_replication::transport::Transport for PeerTransport {
    fn send(&self, messages: Vec<(u32, Message)>) {
        let mut touched = Vec::new();
        for (group, m) in messages {
            let Some(link) = self.0.links.get(&m.to) else {
                tracing::warn!(to = m.to, "a raft message for a node that is not a peer");
                continue;
            };
            if wire::is_snapshot(&m) {
                // Streamed on a connection of its own, never queued on the
                // link (where a full queue would drop it unreported).
                self.0.send_snapshot(link, group, m);
                continue;
            }
            let mut queue = link.raft.borrow_mut();
            if queue.len() < LINK_QUEUE_MESSAGES_MAX {
                queue.push((group, m));
                touched.push(link.clone());
            }
        }
        for link in touched {
            let _ = link.wake.try_send(());
        }
    }
}

impl Peers {
    /// Creates the links and starts their writer tasks.
    pub fn start(config: PeerConfig) -> Rc<Peers> {
        let mut links = BTreeMap::new();
        let mut wakeups = Vec::new();
        for (&node, &base) in &config.peers {
            let (wake, woken) = local_channel::new_bounded(1);
            let link = Rc::new(Link {
                node,
                addr: core_addr(base, config.core),
                raft: RefCell::new(Vec::new()),
                forwards: RefCell::new(Vec::new()),
                forward_ids: RefCell::new(Vec::new()),
                wake,
                up: Cell::new(false),
                broken: Cell::new(false),
                dial: Cell::new(false),
            });
            wakeups.push((link.clone(), woken));
            links.insert(node, link);
        }
        let peers = Rc::new(Peers {
            config,
            core: RefCell::new(None),
            links,
            waiting: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            stopping: Cell::new(false),
            endpoints: RefCell::new(BTreeMap::new()),
            snapshot_sends: Rc::new(Semaphore::new(SNAPSHOT_SENDS_MAX)),
            snapshot_due: Cell::new(Instant::now()),
            snapshots: RefCell::new(BTreeMap::new()),
            loading: RefCell::new(BTreeMap::new()),
        });
        for (link, woken) in wakeups {
            glommio::spawn_local(link_writer(peers.clone(), link, woken)).detach();
        }
        glommio::spawn_local(membership_task(peers.clone())).detach();
        peers
    }

    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    /// Attaches the core these links serve, once it is open: it learns the
    /// fate of snapshot messages (raft-rs must be told, or a follower whose
    /// snapshot was lost is never sent another) and readmits peers.
    /// Snapshots are streamed and loaded in its background queue.
    pub fn attach(&self, core: Core) {
        *self.core.borrow_mut() = Some(core);
    }

    fn report_snapshot(&self, group: u32, to: u64, sent: bool) {
        if let Some(core) = self.core.borrow().as_ref() {
            core.report_snapshot(group, to, sent);
        }
    }

    /// Starts streaming a snapshot message in a task of its own.
    fn send_snapshot(self: &Rc<Self>, link: &Rc<Link>, group: u32, m: Message) {
        self.spawn_background(snapshot::send(self.clone(), link.clone(), group, m));
    }

    fn spawn_background(&self, work: impl std::future::Future<Output = ()> + 'static) {
        let core = self.core.borrow().clone();
        match core {
            Some(core) => core.spawn_background(work),
            None => {
                glommio::spawn_local(work).detach();
            }
        }
    }

    /// Marks `group` as loading a received snapshot (its appends are
    /// dropped meanwhile); [`Peers::unmark_loading`] once per mark.
    fn mark_loading(&self, group: u32) {
        *self.loading.borrow_mut().entry(group).or_default() += 1;
    }

    fn unmark_loading(&self, group: u32) {
        let mut loading = self.loading.borrow_mut();
        match loading.get_mut(&group) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                loading.remove(&group);
            }
        }
    }

    /// Records the new directories every core of this node has readmitted
    /// (no group here counts their nodes' old ones any more).
    fn record_readmitted(&self) {
        let c = &self.config;
        let Some(done) = self.core.borrow().as_ref().map(|core| core.readmissions()) else { return };
        for (node, incarnation, _) in done.into_iter().filter(|(_, _, pending)| pending.is_empty()) {
            c.incarnations.core_clear(node, incarnation, c.core);
            if c.incarnations.seen(node, incarnation) == Seen::Same
                || !c.incarnations.admissible(node, incarnation, c.cores)
            {
                continue;
            }
            match c.incarnations.replace(node, incarnation) {
                Ok(()) => tracing::info!(
                    node,
                    "node {node}'s new data directory is readmitted: no shard here counts its old one any more"
                ),
                Err(e) => tracing::warn!(node, "cannot record node {node}'s new data directory: {e}"),
            }
        }
    }

    /// Native-protocol endpoints of the peers that announced theirs, by node.
    pub fn endpoints(&self) -> BTreeMap<u64, String> {
        self.endpoints.borrow().iter().map(|(n, e)| (*n, e.native.clone())).collect()
    }

    /// Every protocol's endpoint of the peers that announced theirs, by node.
    pub fn all_endpoints(&self) -> BTreeMap<u64, Endpoints> {
        self.endpoints.borrow().clone()
    }

    /// The snapshots this core is streaming or about to, by shard and
    /// receiving node.
    pub fn snapshot_progress(&self) -> Vec<(u32, u64, snapshot::Progress)> {
        self.snapshots.borrow().iter().map(|(&(group, to), p)| (group, to, p.clone())).collect()
    }

    /// Whether each peer's link is connected, by node.
    pub fn link_states(&self) -> Vec<(u64, SocketAddr, bool)> {
        self.links.values().map(|l| (l.node, l.addr, l.up.get())).collect()
    }

    pub fn stop(&self) {
        self.stopping.set(true);
        for link in self.links.values() {
            let _ = link.wake.try_send(());
        }
    }

    /// Runs `op` for `shard` on node `node` (same core), `hops` forwards so
    /// far, waiting at most `timeout` for the answer. A peer that stops
    /// answering (paused, or cut off by a network that drops packets
    /// without resetting connections) costs the timeout, then the request
    /// ends with `Dropped`: it may have run there, so its outcome is unknown.
    pub async fn forward(
        &self,
        node: u64,
        shard: u32,
        op: Op,
        hops: u8,
        timeout: Duration,
    ) -> Result<Reply, CoreError> {
        if !op.forwardable() {
            return Err(CoreError::Unavailable(format!("{op:?} is served only by the node asked")));
        }
        let link = self.links.get(&node).ok_or_else(|| CoreError::Unavailable(format!("node {node} is not a peer")))?;
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.waiting.borrow_mut().insert(id, (node, tx));
        wire::put_frame(
            &mut link.forwards.borrow_mut(),
            wire::FRAME_FORWARD,
            &wire::encode_forward(&Forward { id, shard, hops, op }),
        );
        link.forward_ids.borrow_mut().push(id);
        let _ = link.wake.try_send(());
        let answer = glommio::timer::timeout(timeout, async { Ok(rx.await) }).await;
        match answer {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CoreError::Unavailable(format!("node {node} went away"))),
            Err(_) => {
                // A late answer finds no waiter and is dropped.
                self.waiting.borrow_mut().remove(&id);
                tracing::debug!(
                    core = self.config.core,
                    node,
                    shard,
                    "a forwarded request got no answer in {timeout:?}"
                );
                Err(CoreError::Dropped)
            }
        }
    }

    /// Fails forwards that never left this node: safe to retry anywhere.
    fn fail(&self, ids: impl IntoIterator<Item = u64>, why: &str) {
        self.fail_with(ids, CoreError::Unavailable(why.to_string()));
    }

    fn fail_with(&self, ids: impl IntoIterator<Item = u64>, err: CoreError) {
        for id in ids {
            let waiter = self.waiting.borrow_mut().remove(&id);
            if let Some((_, tx)) = waiter {
                tx.send(Err(err.clone()));
            }
        }
    }

    /// Fails every forward waiting on `node`: they may have run there, so
    /// their outcome is unknown.
    fn fail_node(&self, node: u64) {
        let ids: Vec<u64> = self.waiting.borrow().iter().filter(|(_, (n, _))| *n == node).map(|(id, _)| *id).collect();
        self.fail_with(ids, CoreError::Dropped);
    }
}

async fn link_writer(peers: Rc<Peers>, link: Rc<Link>, woken: LocalReceiver<()>) {
    let mut conn: Option<TcpStream> = None;
    let mut retry_at = Instant::now();
    while woken.recv().await.is_some() {
        if peers.stopping.get() {
            break;
        }
        let raft = std::mem::take(&mut *link.raft.borrow_mut());
        let forwards = std::mem::take(&mut *link.forwards.borrow_mut());
        let ids = std::mem::take(&mut *link.forward_ids.borrow_mut());
        let dial = link.dial.replace(false);
        if raft.is_empty() && forwards.is_empty() && !dial {
            continue;
        }
        if link.broken.replace(false) {
            conn = None;
        }
        if conn.is_none() {
            if Instant::now() < retry_at {
                peers.fail(ids, &format!("node {} is unreachable", link.node));
                continue;
            }
            match connect(&peers, &link).await {
                Ok(stream) => {
                    if !link.up.replace(true) {
                        tracing::info!(core = peers.config.core, node = link.node, addr = %link.addr, "peer link up");
                    }
                    conn = Some(stream);
                }
                Err(e) => {
                    if link.up.replace(false) {
                        tracing::warn!(core = peers.config.core, node = link.node, "peer link down: {e}");
                    } else {
                        tracing::debug!(core = peers.config.core, node = link.node, "cannot reach peer: {e}");
                    }
                    retry_at = Instant::now() + RECONNECT_BACKOFF;
                    peers.fail(ids, &format!("node {} is unreachable: {e}", link.node));
                    continue;
                }
            }
        }
        let mut out = Vec::new();
        wire::put_raft_frames(&mut out, &raft, peers.config.payload_bytes_max);
        out.extend_from_slice(&forwards);
        if out.is_empty() {
            continue;
        }
        let stream = conn.as_mut().expect("connected above");
        if let Err(e) = stream.write_all(&out).await {
            tracing::warn!(core = peers.config.core, node = link.node, "peer link down: {e}");
            link.up.set(false);
            conn = None;
            // Part of the batch may have arrived: outcome unknown.
            peers.fail_with(ids, CoreError::Dropped);
        }
    }
    peers.fail_node(link.node);
}

/// See [`MEMBERSHIP_INTERVAL`].
async fn membership_task(peers: Rc<Peers>) {
    while !peers.stopping.get() {
        peers.record_readmitted();
        if peers.config.joined {
            for link in peers.links.values().filter(|l| !l.up.get()) {
                link.dial.set(true);
                let _ = link.wake.try_send(());
            }
        }
        glommio::timer::sleep(MEMBERSHIP_INTERVAL).await;
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Opens an authenticated connection to `link`'s node and starts the task
/// that reads forward replies from it.
async fn connect(peers: &Rc<Peers>, link: &Rc<Link>) -> io::Result<TcpStream> {
    let stream = handshake(peers, link).await?;
    let reader = crate::outbox::dup(&stream)?;
    glommio::spawn_local(read_replies(peers.clone(), link.clone(), reader)).detach();
    Ok(stream)
}

/// Opens a connection to `link`'s node and authenticates both ends.
async fn handshake(peers: &Rc<Peers>, link: &Rc<Link>) -> io::Result<TcpStream> {
    let c = &peers.config;
    let handshake = async {
        let mut stream = TcpStream::connect(link.addr).await?;
        stream.set_nodelay(true)?;
        let nonce: [u8; wire::NONCE_BYTES] = rand::random();
        let own = c.incarnations.own();
        let hello = PeerHello {
            version: wire::PEER_VERSION,
            node: c.node_id,
            core: c.core,
            cores: c.cores,
            shards: c.shards,
            incarnation: own,
            nonce,
            joined: c.joined,
        };
        stream.write_all(&hello.encode()).await?;
        let mut buf = [0u8; wire::CHALLENGE_BYTES];
        stream.read_exact(&mut buf).await?;
        let ch = Challenge::decode(&buf).ok_or_else(|| io_err("not a kvd peer (bad magic)"))?;
        match ch.status {
            wire::STATUS_OK | wire::STATUS_FORGOTTEN => {}
            wire::STATUS_SHAPE_MISMATCH => return Err(io_err("the peer has a different number of cores or shards")),
            wire::STATUS_UNKNOWN_NODE => return Err(io_err(format!("the peer does not know node {}", c.node_id))),
            wire::STATUS_WRONG_CORE => {
                return Err(io_err(format!(
                    "the peer refused core {} or peer protocol version {} (every node must run the same version)",
                    c.core,
                    wire::PEER_VERSION
                )))
            }
            s => return Err(io_err(format!("the peer refused the handshake (status {s})"))),
        }
        let server =
            Binding::server((link.node, ch.incarnation), (c.node_id, own), c.core, (&nonce, &ch.nonce), ch.status)
                .joined(c.joined, ch.joined);
        if ch.node != link.node || !wire::proof_matches(&c.secret, &server, &ch.mac) {
            return Err(io_err("the peer failed authentication: is the cluster secret the same everywhere?"));
        }
        if ch.status == wire::STATUS_FORGOTTEN {
            // Authenticated: the cluster itself says this directory is new.
            c.signals.fail_with(forgotten_message(c, link.node));
            return Err(io_err(format!("node {} knows this node with another data directory", link.node)));
        }
        peers.check_incarnation(link.node, ch.incarnation, ch.joined)?;
        let client = Binding::client((c.node_id, own), (link.node, ch.incarnation), c.core, (&ch.nonce, &nonce))
            .joined(c.joined, ch.joined);
        stream.write_all(&wire::proof(&c.secret, &client)).await?;
        let mut info = Vec::new();
        wire::put_frame(&mut info, wire::FRAME_INFO, c.endpoints.encode().as_bytes());
        stream.write_all(&info).await?;
        Ok::<TcpStream, io::Error>(stream)
    };
    glommio::timer::timeout(HANDSHAKE_TIMEOUT, async { handshake.await.map_err(glommio::GlommioError::from) })
        .await
        .map_err(io_err)
}

async fn read_replies(peers: Rc<Peers>, link: Rc<Link>, mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut reader = Reader::default();
    let result: Result<(), String> = async {
        loop {
            while let Some((kind, payload, used)) =
                wire::take_frame(&buf, peers.config.payload_bytes_max).map_err(|e| e.to_string())?
            {
                if kind != wire::FRAME_FORWARD_REPLY {
                    return Err(format!("unexpected frame type {kind} on an outbound link"));
                }
                let (id, result) = wire::decode_reply(payload)?;
                let waiter = peers.waiting.borrow_mut().remove(&id);
                if let Some((_, tx)) = waiter {
                    tx.send(result);
                }
                buf.drain(..used);
            }
            if reader.read(&mut stream, &mut buf, CHUNK_BYTES).await.map_err(|e| e.to_string())? == 0 {
                return Err("closed by the peer".into());
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(core = peers.config.core, node = link.node, "peer link reader ended: {e}");
    }
    link.broken.set(true);
    link.up.set(false);
    peers.fail_node(link.node);
}

/// Accepts peer connections for this core until the node stops accepting.
/// Connections already open keep running: the node's own writes in flight
/// still need its followers' answers.
pub async fn accept_loop(listener: glommio::net::TcpListener, peers: Rc<Peers>, svc: Rc<crate::service::Service>) {
    let owner = svc.owner.clone();
    crate::listener::accept_loop(listener, svc, move |stream, _| {
        let (peers, owner) = (peers.clone(), owner.clone());
        async move {
            if let Err(e) = serve_inbound(stream, &peers, &owner).await {
                tracing::debug!(core = peers.config.core, "peer connection closed: {e}");
            }
        }
    })
    .await
}

/// The acceptor's half of the handshake; returns the authenticated node and
/// its data directory's incarnation.
async fn accept_handshake(stream: &mut TcpStream, peers: &Peers) -> io::Result<(u64, u64)> {
    let c = &peers.config;
    let mut buf = [0u8; wire::HELLO_BYTES];
    stream.read_exact(&mut buf).await?;
    let hello = PeerHello::decode(&buf).ok_or_else(|| io_err("not a kvd peer (bad magic)"))?;
    let status = if !c.peers.contains_key(&hello.node) {
        wire::STATUS_UNKNOWN_NODE
    } else if hello.cores != c.cores || hello.shards != c.shards {
        wire::STATUS_SHAPE_MISMATCH
    } else if hello.core != c.core || hello.version != wire::PEER_VERSION {
        wire::STATUS_WRONG_CORE
    } else if let (Seen::Other(_), false) = (c.incarnations.seen(hello.node, hello.incarnation), hello.joined) {
        wire::STATUS_FORGOTTEN
    } else {
        wire::STATUS_OK
    };
    let nonce: [u8; wire::NONCE_BYTES] = rand::random();
    let own = c.incarnations.own();
    let server =
        Binding::server((c.node_id, own), (hello.node, hello.incarnation), c.core, (&hello.nonce, &nonce), status)
            .joined(hello.joined, c.joined);
    let mac = wire::proof(&c.secret, &server);
    let challenge = Challenge { status, node: c.node_id, incarnation: own, nonce, mac, joined: c.joined };
    stream.write_all(&challenge.encode()).await?;
    if status != wire::STATUS_OK {
        return Err(io_err(format!("refused node {} (status {status})", hello.node)));
    }
    let mut proof = [0u8; wire::MAC_BYTES];
    stream.read_exact(&mut proof).await?;
    let client = Binding::client((hello.node, hello.incarnation), (c.node_id, own), c.core, (&nonce, &hello.nonce))
        .joined(hello.joined, c.joined);
    if !wire::proof_matches(&c.secret, &client, &proof) {
        tracing::warn!(core = c.core, claimed = hello.node, "a peer failed authentication (wrong cluster secret?)");
        return Err(io_err("authentication failed"));
    }
    peers.check_incarnation(hello.node, hello.incarnation, hello.joined)?;
    Ok((hello.node, hello.incarnation))
}

impl Peers {
    /// Checks an authenticated peer's data directory: recorded the first
    /// time; refused if it is not the one recorded, unless the peer joined
    /// (`kvd --join`): a joined directory is never taken on trust, even at
    /// a first meeting (its node may have voted here on the one it lost):
    /// this core readmits it, and it is recorded once every core has.
    fn check_incarnation(&self, node: u64, incarnation: u64, joined: bool) -> io::Result<()> {
        let c = &self.config;
        let seen = c.incarnations.seen(node, incarnation);
        if seen == Seen::Same {
            return Ok(());
        }
        if joined {
            let core = self.core.borrow();
            let core = core.as_ref().ok_or_else(|| io_err("this core is still starting"))?;
            if !core.readmitted(node, incarnation) {
                tracing::info!(core = c.core, node, "node {node} joined on a new data directory: readmitting it");
            }
            core.readmit(node, incarnation);
            return Ok(());
        }
        match c.incarnations.record(node, incarnation) {
            Ok(Seen::New) => {
                tracing::debug!(core = c.core, node, incarnation = format_args!("{incarnation:016x}"), "met a peer");
                Ok(())
            }
            Ok(Seen::Same) => Ok(()),
            Ok(Seen::Other(known)) => {
                let why = format!(
                    "node {node} came back with a new data directory (incarnation {incarnation:016x}, this node \
                     knew {known:016x}) without --join: it forgot its Raft log and votes, so it is refused"
                );
                tracing::warn!(core = c.core, "{why}");
                Err(io_err(why))
            }
            Err(e) => Err(io_err(format!("cannot record node {node}'s incarnation: {e}"))),
        }
    }
}

/// What a node told that its data directory is new says as it stops.
fn forgotten_message(c: &PeerConfig, by: u64) -> String {
    format!(
        "node {by} knows node {id} with another data directory: this one is new (wiped, replaced or restored), so \
         node {id} has forgotten the Raft log and votes the cluster counts on, and must not rejoin under id {id}. \
         Start it on its old data directory; or, if that is lost, start it again with the same flags plus \
         `--join HOST:PORT` (another member's peer address): the members then remove its lost replicas and add \
         it back, filled from their snapshots. If another machine runs as node {id}, give this one its own id",
        id = c.node_id
    )
}

async fn serve_inbound(mut stream: TcpStream, peers: &Rc<Peers>, owner: &Rc<Owner>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let handshake = glommio::timer::timeout(HANDSHAKE_TIMEOUT, async {
        accept_handshake(&mut stream, peers).await.map_err(glommio::GlommioError::from)
    });
    let (from, incarnation) = handshake.await.map_err(io_err)?;
    let (wake, woken) = local_channel::new_bounded(1);
    let conn = Inbound {
        from,
        incarnation,
        peers: peers.clone(),
        owner: owner.clone(),
        replies: Rc::new(RefCell::new(Vec::new())),
        wake: Rc::new(wake),
        slots: Rc::new(Semaphore::new(INBOUND_FORWARDS_MAX)),
        parts: RefCell::new(wire::Reassembly::default()),
        snapshot: RefCell::new(wire::SnapshotAssembly::default()),
        marked: Cell::new(None),
    };
    let writer = glommio::spawn_local(write_replies(crate::outbox::dup(&stream)?, conn.replies.clone(), woken));
    let mut buf = Vec::new();
    let mut reader = Reader::default();
    let result: io::Result<()> = async {
        loop {
            while let Some((kind, payload, used)) =
                wire::take_frame(&buf, peers.config.payload_bytes_max).map_err(io_err)?
            {
                let payload = payload.to_vec();
                buf.drain(..used);
                conn.handle(kind, &payload).await?;
            }
            let read = reader.read(&mut stream, &mut buf, CHUNK_BYTES);
            let n = if conn.snapshot.borrow().started().is_some() {
                // A sender that vanished mid-snapshot (no FIN, no RST)
                // must not hold the partial shard here for good.
                let read = async { read.await.map_err(glommio::GlommioError::from) };
                glommio::timer::timeout(SNAPSHOT_RECEIVE_TIMEOUT, read).await.map_err(io_err)?
            } else {
                read.await?
            };
            if n == 0 {
                return Ok(());
            }
        }
    }
    .await;
    drop(conn);
    writer.await;
    result
}

/// One authenticated inbound connection from node `from`.
struct Inbound {
    from: u64,
    /// The data directory `from` runs on, as its handshake said.
    incarnation: u64,
    peers: Rc<Peers>,
    owner: Rc<Owner>,
    replies: Rc<RefCell<Vec<u8>>>,
    wake: Rc<LocalSender<()>>,
    slots: Rc<Semaphore>,
    parts: RefCell<wire::Reassembly>,
    /// A snapshot streamed on this connection (see [`snapshot`]).
    snapshot: RefCell<wire::SnapshotAssembly>,
    /// The group this connection's snapshot marked as loading, from its
    /// head on (see [`Peers::mark_loading`]); handed to the task that
    /// loads it, or cleared if the connection ends first.
    marked: Cell<Option<u32>>,
}

impl Drop for Inbound {
    fn drop(&mut self) {
        if let Some(group) = self.marked.take() {
            self.peers.unmark_loading(group);
        }
    }
}

impl Inbound {
    async fn handle(&self, kind: u8, payload: &[u8]) -> io::Result<()> {
        match kind {
            wire::FRAME_RAFT => {
                for (group, m) in wire::decode_raft(payload).map_err(io_err)? {
                    self.deliver(group, m);
                }
            }
            wire::FRAME_RAFT_PART => {
                let whole = self.parts.borrow_mut().add(payload).map_err(io_err)?;
                if let Some((group, m)) = whole {
                    self.deliver(group, m);
                }
            }
            wire::FRAME_SNAPSHOT_HEAD => {
                let whole = self.snapshot.borrow_mut().head(payload).map_err(io_err)?;
                let started = self.snapshot.borrow().started();
                if let Some((group, index)) = started.or(whole.as_ref().map(|(g, m)| (*g, wire::snapshot_at(m).0))) {
                    // From the head on: the sender reports the snapshot sent
                    // once its last chunk is written, and the leader's next
                    // probe may come before this end has read it.
                    if self.owner.core.would_install(group, index) {
                        self.peers.mark_loading(group);
                        self.marked.set(Some(group));
                    }
                }
                self.deliver_snapshot(whole);
            }
            wire::FRAME_SNAPSHOT_CHUNK => {
                let whole = self.snapshot.borrow_mut().chunk(payload).map_err(io_err)?;
                self.deliver_snapshot(whole);
            }
            wire::FRAME_INFO if payload.len() <= wire::ENDPOINT_BYTES_MAX => {
                let endpoints = Endpoints::decode(&String::from_utf8_lossy(payload));
                self.peers.endpoints.borrow_mut().insert(self.from, endpoints);
            }
            wire::FRAME_FORWARD => self.forward(payload).await?,
            k => return Err(io_err(format!("unexpected frame type {k} from node {}", self.from))),
        }
        Ok(())
    }

    /// Steps a Raft message, if it really is from this peer and for us.
    fn deliver(&self, group: u32, m: Message) {
        if m.from != self.from || m.to != self.peers.config.node_id {
            tracing::warn!(
                from = self.from,
                claimed = m.from,
                to = m.to,
                "dropped a raft message with a forged address"
            );
            return;
        }
        if m.get_msg_type() == raft::eraftpb::MessageType::MsgAppend && self.peers.loading.borrow().contains_key(&group)
        {
            // Rejected, it would make the leader send the snapshot being
            // loaded again; dropped, it is resent once this one is in.
            return;
        }
        self.owner.core.step(group, m, self.incarnation);
    }

    /// Loads a whole snapshot into a map in the background (yielding), then
    /// steps its message (see [`snapshot::receive`]). One raft-rs would not
    /// install (this replica committed past it) is stepped as it is.
    fn deliver_snapshot(&self, whole: Option<(u32, Message)>) {
        let Some((group, m)) = whole else { return };
        let marked = self.marked.take();
        if marked != Some(group) || m.from != self.from || m.to != self.peers.config.node_id {
            if let Some(g) = marked {
                self.peers.unmark_loading(g);
            }
            return self.deliver(group, m);
        }
        tracing::info!(
            core = self.peers.config.core,
            from = self.from,
            group,
            index = m.get_snapshot().get_metadata().index,
            bytes = m.get_snapshot().get_data().len(),
            "received a snapshot of shard {group}"
        );
        self.peers.spawn_background(snapshot::receive(
            self.peers.clone(),
            self.owner.core.clone(),
            group,
            m,
            self.incarnation,
        ));
    }

    /// Runs a forwarded request in a task of its own (bounded per connection).
    async fn forward(&self, payload: &[u8]) -> io::Result<()> {
        let f = wire::decode_forward(payload).map_err(io_err)?;
        // At the limit, refuse rather than stop reading: the Raft frames
        // behind this one (a follower's acknowledgements, say) may be what
        // the running forwards wait for. Nothing was proposed: retryable.
        if !self.slots.try_acquire(1).map_err(io_err)? {
            wire::put_frame(
                &mut self.replies.borrow_mut(),
                wire::FRAME_FORWARD_REPLY,
                &wire::encode_reply(f.id, &Err(CoreError::Busy)),
            );
            let _ = self.wake.try_send(());
            return Ok(());
        }
        let (owner, replies, wake, slots) =
            (self.owner.clone(), self.replies.clone(), self.wake.clone(), self.slots.clone());
        glommio::spawn_local(async move {
            let result = crate::route::execute(&owner, f.shard, f.op, f.hops).await;
            wire::put_frame(&mut replies.borrow_mut(), wire::FRAME_FORWARD_REPLY, &wire::encode_reply(f.id, &result));
            let _ = wake.try_send(());
            slots.signal(1);
        })
        .detach();
        Ok(())
    }
}

async fn write_replies(mut stream: TcpStream, replies: Rc<RefCell<Vec<u8>>>, woken: LocalReceiver<()>) {
    while woken.recv().await.is_some() {
        let bytes = std::mem::take(&mut *replies.borrow_mut());
        if !bytes.is_empty() && stream.write_all(&bytes).await.is_err() {
            return;
        }
    }
}
