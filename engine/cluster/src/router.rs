//! An in-memory network for in-process cluster tests: every member's Raft in one process,
//! messages serialised to JSON and back (as on the wire), with faults injected per link.
//!
//! Faults: a link (`from → to`) can be cut (its messages are lost), lose its next n messages, or
//! be delayed (delivered late, still delivered after a later cut, as on a real network); a node can be isolated, removed
//! (down) and registered again (restarted). An RPC is a round trip: cutting `from → to` loses the
//! request, cutting `to → from` loses only the answer (the receiver has acted on it).
//!
//! App messages ([`Messenger`]) and liveness pings take the same links and obey the same faults,
//! except that a node silent after a restart still answers them (its silence is about votes).
//!
//! Paths: a peer whose `Peer::addresses` are empty (the usual test setup) is reached over one
//! pseudo-path per link, named [`ROUTER_PATH`]. A peer with addresses is reached over one path
//! per address, as over TLS: every message goes over every path at once (so it may arrive once
//! per path), the first good answer wins, and [`Router::cut_path`] silences one path in one
//! direction. Link faults (cut, isolate, delay, lose) apply to every path of the link; a loss
//! counted by [`Router::lose_next`] takes one copy.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::error::{Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{OptionalSend, RaftNetwork, RaftNetworkFactory, Snapshot, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::links::{LinkTable, LivenessConfig, Prober};
use crate::messenger::{Messenger, SendError, MESSAGE_TIMEOUT};
use crate::node::{Forwarder, Inbound, ProposeError};
use crate::state::{ClusterRequest, ClusterResponse};
use crate::{Peer, RaftId, TypeConfig};

#[derive(Default)]
struct Links {
    nodes: BTreeMap<RaftId, Inbound>,
    cut: BTreeSet<(RaftId, RaftId)>,
    /// One path of a link cut, one direction: (from, to, path).
    path_cut: BTreeSet<(RaftId, RaftId, String)>,
    isolated: BTreeSet<RaftId>,
    delay: BTreeMap<(RaftId, RaftId), Duration>,
    /// Messages still to lose on a link.
    to_lose: BTreeMap<(RaftId, RaftId), u64>,
    lost: u64,
    /// Each member's link table, kept across its restarts.
    tables: BTreeMap<RaftId, Arc<LinkTable>>,
    liveness: LivenessConfig,
}

impl Links {
    fn is_cut(&self, from: RaftId, to: RaftId, path: &str) -> bool {
        self.cut.contains(&(from, to))
            || self.isolated.contains(&from)
            || self.isolated.contains(&to)
            || self.path_cut.contains(&(from, to, path.to_owned()))
    }

    /// Whether the next message on the link is one of those to lose (and counts it).
    fn lose_one(&mut self, from: RaftId, to: RaftId) -> bool {
        match self.to_lose.get_mut(&(from, to)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

/// The shared in-memory network. Cheap to clone.
#[derive(Clone, Default)]
pub struct Router {
    links: Arc<Mutex<Links>>,
    /// Tags forwarded proposals; one counter for every member's networks, so that two networks
    /// of one member never reuse a nonce the leader remembers.
    nonces: Arc<AtomicU64>,
}

/// Why a message did not arrive.
#[derive(Debug, thiserror::Error)]
#[error("message {from} → {to} lost: {why}")]
pub struct Lost {
    from: RaftId,
    to: RaftId,
    why: &'static str,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    fn links(&self) -> MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A router whose members probe their links with `config` (default: [`LivenessConfig`]'s).
    pub fn with_liveness(config: LivenessConfig) -> Self {
        let r = Self::default();
        r.links().liveness = config;
        r
    }

    /// The network that member `from` uses to reach the others.
    pub fn network(&self, from: RaftId) -> RouterNetwork {
        let mut l = self.links();
        let config = l.liveness;
        let table = l.tables.entry(from).or_insert_with(|| LinkTable::new(config)).clone();
        RouterNetwork { router: self.clone(), from, table }
    }

    /// Connects a (re)started member.
    pub fn register(&self, id: RaftId, inbound: Inbound) {
        self.links().nodes.insert(id, inbound);
    }

    /// Takes a member off the network (it is down): messages to it are lost.
    pub fn remove(&self, id: RaftId) {
        self.links().nodes.remove(&id);
    }

    /// Loses every message from `from` to `to` (one direction).
    pub fn cut(&self, from: RaftId, to: RaftId) {
        self.links().cut.insert((from, to));
    }

    /// Loses every message from `from` to `to` over the path `path` (one of `to`'s addresses;
    /// one direction: the answers to `to`'s requests over that path are lost).
    pub fn cut_path(&self, from: RaftId, to: RaftId, path: &str) {
        self.links().path_cut.insert((from, to, path.to_owned()));
    }

    /// Loses every message to and from `id`.
    pub fn isolate(&self, id: RaftId) {
        self.links().isolated.insert(id);
    }

    /// Cuts every link between the two sides, both ways.
    pub fn partition(&self, a: &[RaftId], b: &[RaftId]) {
        let mut l = self.links();
        for &x in a {
            for &y in b {
                l.cut.insert((x, y));
                l.cut.insert((y, x));
            }
        }
    }

    /// Delays every message from `from` to `to` by `by`.
    pub fn delay(&self, from: RaftId, to: RaftId, by: Duration) {
        self.links().delay.insert((from, to), by);
    }

    /// Loses the next `n` messages from `from` to `to` (requests or answers), then delivers again.
    pub fn lose_next(&self, from: RaftId, to: RaftId, n: u64) {
        *self.links().to_lose.entry((from, to)).or_default() += n;
    }

    /// Restores every link (cuts, isolation, delays, losses); removed members stay removed.
    pub fn heal(&self) {
        let mut l = self.links();
        l.cut.clear();
        l.path_cut.clear();
        l.isolated.clear();
        l.delay.clear();
        l.to_lose.clear();
    }

    /// Messages lost so far (requests and answers).
    pub fn lost(&self) -> u64 {
        self.links().lost
    }

    /// Carries one round trip from `from` to `to`: the request through the link's faults, then
    /// `call` on the receiver, then the answer back through the reverse link's faults.
    /// A Raft message: lost while the receiver keeps its post-restart silence.
    pub async fn deliver<T, F, Fut>(&self, from: RaftId, to: RaftId, call: F) -> Result<T, Lost>
    where
        F: FnOnce(Inbound) -> Fut,
        Fut: Future<Output = T>,
    {
        self.carry(from, to, true, ROUTER_PATH, call).await
    }

    async fn carry<T, F, Fut>(&self, from: RaftId, to: RaftId, raft: bool, path: &str, call: F) -> Result<T, Lost>
    where
        F: FnOnce(Inbound) -> Fut,
        Fut: Future<Output = T>,
    {
        let lost = |why| Lost { from, to, why };
        let (target, delay) = {
            let mut l = self.links();
            let target = l.nodes.get(&to).cloned();
            let why = match &target {
                _ if l.is_cut(from, to, path) => Some("link cut"),
                _ if l.lose_one(from, to) => Some("lost on the link"),
                None => Some("node down"),
                Some(t) if raft && t.is_silent() => Some("node silent after restart"),
                Some(_) => None,
            };
            if let Some(why) = why {
                l.lost += 1;
                return Err(lost(why));
            }
            (target.expect("checked above"), l.delay.get(&(from, to)).copied())
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let answer = call(target).await;
        let back_delay = {
            let mut l = self.links();
            if l.is_cut(to, from, path) || l.lose_one(to, from) {
                l.lost += 1;
                return Err(lost("answer lost"));
            }
            l.delay.get(&(to, from)).copied()
        };
        if let Some(d) = back_delay {
            tokio::time::sleep(d).await;
        }
        Ok(answer)
    }
}

/// As on the wire: what cannot be encoded and decoded does not arrive.
fn wire<T: Serialize + DeserializeOwned>(t: &T) -> Result<T, serde_json::Error> {
    serde_json::from_slice(&serde_json::to_vec(t)?)
}

/// The paths to `peer`: its addresses, or the link's one pseudo-path when it has none.
fn paths_of(peer: &Peer) -> Vec<String> {
    if peer.addresses.is_empty() {
        vec![ROUTER_PATH.to_owned()]
    } else {
        peer.addresses.clone()
    }
}

/// The one pseudo-path of a router link, as it shows in [`crate::Links`].
pub const ROUTER_PATH: &str = "router";

/// One member's view of the router.
#[derive(Clone)]
pub struct RouterNetwork {
    router: Router,
    from: RaftId,
    table: Arc<LinkTable>,
}

impl RouterNetwork {
    /// Carries a copy of one round trip over each path to `peer` at once (`call` makes each
    /// copy's work on the receiver) and returns the first answer for which `good` holds, else
    /// the last answer, else the last loss. Copies still under way go on in the background, as
    /// on a network. Each copy's outcome is recorded for its path.
    async fn over_paths<T, F, Fut>(&self, to: RaftId, peer: &Peer, raft: bool, good: fn(&T) -> bool, call: F) -> Result<T, Lost>
    where
        F: Fn(Inbound) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = T> + Send,
        T: Send + 'static,
    {
        let paths = paths_of(peer);
        let (tx, mut rx) = tokio::sync::mpsc::channel(paths.len());
        for path in paths {
            let (router, table, name, call, tx, from) =
                (self.router.clone(), self.table.clone(), peer.name.clone(), call.clone(), tx.clone(), self.from);
            tokio::spawn(async move {
                let started = Instant::now();
                let r = router.carry(from, to, raft, &path, call).await;
                match &r {
                    Ok(_) => table.record_ok(&name, &path, started.elapsed()),
                    Err(e) => table.record_err(&name, &path, &e.to_string()),
                }
                let _ = tx.send(r).await;
            });
        }
        drop(tx);
        let mut last = None;
        while let Some(r) = rx.recv().await {
            match r {
                Ok(t) if good(&t) => return Ok(t),
                r => {
                    if last.as_ref().is_none_or(|l: &Result<T, Lost>| l.is_err()) {
                        last = Some(r);
                    }
                }
            }
        }
        last.expect("at least one path")
    }
}

fn any<T>(_: &T) -> bool {
    true
}

impl Forwarder for RouterNetwork {
    async fn forward(&self, leader: RaftId, peer: &Peer, req: &ClusterRequest) -> Result<ClusterResponse, ProposeError> {
        let req = wire(req).map_err(|e| ProposeError::Failed(e.to_string()))?;
        let (from, nonce) = (self.from, self.router.nonces.fetch_add(1, Ordering::Relaxed));
        let answer = self
            .over_paths(leader, peer, true, any, move |n| {
                let req = req.clone();
                async move { n.propose_once(&n.member_name(from), nonce, req).await }
            })
            .await
            .map_err(|e| ProposeError::Failed(e.to_string()))?;
        wire(&answer).map_err(|e| ProposeError::Failed(e.to_string()))?
    }
}

impl Messenger for RouterNetwork {
    async fn send(&self, to: RaftId, peer: &Peer, body: serde_json::Value) -> Result<(), SendError> {
        let undelivered = |last: String| SendError::Undelivered { peer: peer.name.clone(), last };
        let body = wire(&body).map_err(|e| undelivered(e.to_string()))?;
        let from = self.from;
        let carried = self.over_paths(to, peer, false, Result::is_ok, move |n| {
            let body = body.clone();
            async move { n.accept_message(n.member_name(from), body) }
        });
        let r = tokio::time::timeout(MESSAGE_TIMEOUT, carried).await.unwrap_or(Err(Lost { from, to, why: "timed out" }));
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => {
                Err(SendError::Rejected { peer: peer.name.clone(), reason: wire(&reason).map_err(|e| undelivered(e.to_string()))? })
            }
            Err(lost) => Err(undelivered(lost.to_string())),
        }
    }
}

impl Prober for RouterNetwork {
    fn link_table(&self) -> Arc<LinkTable> {
        self.table.clone()
    }

    fn paths(&self, peer: &Peer) -> Vec<String> {
        paths_of(peer)
    }

    async fn ping(&self, to: RaftId, peer: &Peer, path: &str, ttl: Duration) {
        let (from, started) = (self.from, Instant::now());
        let carried = self.router.carry(from, to, false, path, |_| async {});
        match tokio::time::timeout(ttl, carried).await.unwrap_or(Err(Lost { from, to, why: "ping timed out" })) {
            Ok(()) => self.table.record_ok(&peer.name, path, started.elapsed()),
            Err(e) => self.table.record_err(&peer.name, path, &e.to_string()),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for RouterNetwork {
    type Network = Connection;

    async fn new_client(&mut self, target: RaftId, node: &Peer) -> Connection {
        Connection { net: self.clone(), target, peer: node.clone() }
    }
}

/// A member's connection to one peer.
pub struct Connection {
    net: RouterNetwork,
    target: RaftId,
    peer: Peer,
}

type RpcError = RPCError<RaftId, Peer, RaftError<RaftId>>;

fn unreachable(e: Lost) -> RpcError {
    RPCError::Unreachable(Unreachable::new(&io::Error::new(io::ErrorKind::NotConnected, e.to_string())))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftId>, RpcError> {
        let rpc = wire(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = self
            .net
            .over_paths(self.target, &self.peer, true, any, move |n| {
                let rpc = rpc.clone();
                async move { n.raft().append_entries(rpc).await }
            })
            .await;
        let answer = answer.map_err(unreachable)?.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))?;
        wire(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    async fn vote(&mut self, rpc: VoteRequest<RaftId>, _option: RPCOption) -> Result<VoteResponse<RaftId>, RpcError> {
        let rpc = wire(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = self
            .net
            .over_paths(self.target, &self.peer, true, any, move |n| {
                let rpc = rpc.clone();
                async move { n.raft().vote(rpc).await }
            })
            .await;
        let answer = answer.map_err(unreachable)?.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))?;
        wire(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<RaftId>,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<RaftId>, StreamingError<TypeConfig, Fatal<RaftId>>> {
        let network = |e: serde_json::Error| StreamingError::Network(NetworkError::new(&e));
        let (vote, meta, data) = wire(&(vote, snapshot.meta, *snapshot.snapshot)).map_err(network)?;
        let answer = self
            .net
            .over_paths(self.target, &self.peer, true, any, move |n| {
                let snapshot = Snapshot { meta: meta.clone(), snapshot: Box::new(data.clone()) };
                async move { n.raft().install_full_snapshot(vote, snapshot).await }
            })
            .await;
        let answer = answer
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&io::Error::new(io::ErrorKind::NotConnected, e.to_string()))))?
            .map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))?;
        wire(&answer).map_err(network)
    }
}
