//! An in-memory network for in-process cluster tests: every member's Raft in one process,
//! messages serialised to JSON and back (as on the wire), with faults injected per link.
//!
//! Faults: a link (`from → to`) can be cut (its messages are lost), lose its next n messages, or
//! be delayed (delivered late,
//! still delivered after a later cut, as on a real network); a node can be isolated, removed
//! (down) and registered again (restarted). An RPC is a round trip: cutting `from → to` loses the
//! request, cutting `to → from` loses only the answer (the receiver has acted on it).
//!
//! App messages ([`Messenger`]) and liveness pings take the same links and obey the same faults,
//! except that a node silent after a restart still answers them (its silence is about votes).
//! Each link is one pseudo-path, named [`ROUTER_PATH`], in the links a node reports: cutting
//! either direction of a link brings its path, hence the peer, down.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use openraft::error::{Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{OptionalSend, RaftNetwork, RaftNetworkFactory, Snapshot, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::links::{LinkTable, LivenessConfig, Prober};
use crate::messenger::{Messenger, SendError, MESSAGE_TIMEOUT};
use crate::node::{Forwarder, Inbound, ProposeError};
use crate::state::{ClusterRequest, ClusterResponse};
use crate::{Peer, RaftId, TypeConfig};

#[derive(Default)]
struct Links {
    nodes: BTreeMap<RaftId, Inbound>,
    cut: BTreeSet<(RaftId, RaftId)>,
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
    fn is_cut(&self, from: RaftId, to: RaftId) -> bool {
        self.cut.contains(&(from, to)) || self.isolated.contains(&from) || self.isolated.contains(&to)
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
        self.carry(from, to, true, call).await
    }

    async fn carry<T, F, Fut>(&self, from: RaftId, to: RaftId, raft: bool, call: F) -> Result<T, Lost>
    where
        F: FnOnce(Inbound) -> Fut,
        Fut: Future<Output = T>,
    {
        let lost = |why| Lost { from, to, why };
        let (target, delay) = {
            let mut l = self.links();
            let target = l.nodes.get(&to).cloned();
            let why = match &target {
                _ if l.is_cut(from, to) => Some("link cut"),
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
            if l.is_cut(to, from) || l.lose_one(to, from) {
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

impl Forwarder for RouterNetwork {
    async fn forward(&self, leader: RaftId, _peer: &Peer, req: &ClusterRequest) -> Result<ClusterResponse, ProposeError> {
        let req = wire(req).map_err(|e| ProposeError::Failed(e.to_string()))?;
        let answer = self
            .router
            .deliver(self.from, leader, |n| async move {
                match n.raft().client_write(req).await {
                    Ok(r) => Ok(r.data),
                    Err(openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                        Err(ProposeError::NotLeader { leader: f.leader_id })
                    }
                    Err(e) => Err(ProposeError::Failed(e.to_string())),
                }
            })
            .await
            .map_err(|e| ProposeError::Failed(e.to_string()))?;
        wire(&answer).map_err(|e| ProposeError::Failed(e.to_string()))?
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
    fn record<T, E: std::fmt::Display>(&self, peer: &str, started: Instant, r: &Result<T, E>) {
        match r {
            Ok(_) => self.table.record_ok(peer, ROUTER_PATH, started.elapsed()),
            Err(e) => self.table.record_err(peer, ROUTER_PATH, &e.to_string()),
        }
    }
}

impl Messenger for RouterNetwork {
    async fn send(&self, to: RaftId, peer: &Peer, body: serde_json::Value) -> Result<(), SendError> {
        let undelivered = |last: String| SendError::Undelivered { peer: peer.name.clone(), last };
        let body = wire(&body).map_err(|e| undelivered(e.to_string()))?;
        let (from, started) = (self.from, Instant::now());
        let carried = self.router.carry(from, to, false, |n| async move { n.accept_message(n.member_name(from), body) });
        let r = tokio::time::timeout(MESSAGE_TIMEOUT, carried).await.unwrap_or(Err(Lost { from, to, why: "timed out" }));
        self.record(&peer.name, started, &r);
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

    fn paths(&self, _peer: &Peer) -> Vec<String> {
        vec![ROUTER_PATH.to_owned()]
    }

    async fn ping(&self, to: RaftId, peer: &Peer, _path: &str, ttl: Duration) {
        let (from, started) = (self.from, Instant::now());
        let carried = self.router.carry(from, to, false, |_| async {});
        let r = tokio::time::timeout(ttl, carried).await.unwrap_or(Err(Lost { from, to, why: "ping timed out" }));
        self.record(&peer.name, started, &r);
    }
}

impl RaftNetworkFactory<TypeConfig> for RouterNetwork {
    type Network = Connection;

    async fn new_client(&mut self, target: RaftId, node: &Peer) -> Connection {
        Connection { net: self.clone(), router: self.router.clone(), from: self.from, target, name: node.name.clone() }
    }
}

/// A member's connection to one peer.
pub struct Connection {
    net: RouterNetwork,
    router: Router,
    from: RaftId,
    target: RaftId,
    name: String,
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
        let started = Instant::now();
        let answer = self.router.deliver(self.from, self.target, |n| async move { n.raft().append_entries(rpc).await }).await;
        self.net.record(&self.name, started, &answer);
        let answer = answer.map_err(unreachable)?.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))?;
        wire(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    async fn vote(&mut self, rpc: VoteRequest<RaftId>, _option: RPCOption) -> Result<VoteResponse<RaftId>, RpcError> {
        let rpc = wire(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let started = Instant::now();
        let answer = self.router.deliver(self.from, self.target, |n| async move { n.raft().vote(rpc).await }).await;
        self.net.record(&self.name, started, &answer);
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
        let snapshot = Snapshot { meta, snapshot: Box::new(data) };
        let answer =
            self.router.deliver(self.from, self.target, |n| async move { n.raft().install_full_snapshot(vote, snapshot).await }).await;
        let answer = answer
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&io::Error::new(io::ErrorKind::NotConnected, e.to_string()))))?
            .map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))?;
        wire(&answer).map_err(network)
    }
}
