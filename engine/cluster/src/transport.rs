//! The peer transport: Raft messages, forwarded proposals, app messages and liveness pings over
//! mutual TLS on TCP, over every network path of a peer at once.
//!
//! ```text
//!   client                                   server
//!   TCP connect ─► TLS 1.3 handshake (both present certificates signed by the cluster CA)
//!   Hello { protocol, cluster, node } ───────►  checks protocol version and cluster name
//!                       ◄─────────────────────  Welcome { protocol, node } | Refused { reason }
//!   Request { id, rpc } ─────────────────────►  handled concurrently (≤ MAX_IN_FLIGHT per conn.)
//!   Request { id, rpc } ─────────────────────►  Raft RPCs and proposals: not while silent
//!                       ◄─────────────────────  Response { id, reply }   (any order)
//! ```
//!
//! Every message is a frame: a big-endian `u32` length, then that many bytes of JSON. Frames
//! over [`MAX_FRAME`] are refused before anything is allocated for them. No RPC framework: a
//! handful of message types do not need one.
//!
//! **Every message over every path.** A peer's addresses (`nodes.addresses`) are its network
//! paths. For each (peer, path) one long-lived actor owns one connection and a bounded request
//! queue; requests on a connection are tagged with an id, so a slow one (a proposal waiting for
//! its commit) does not hold up heartbeats or pings, and a caller that gives up never leaves a
//! stream out of frame sync (the actor still reads the late answer and drops it). A call puts the
//! same request on every path's queue at once and takes the first good answer; the others finish
//! in their actors. So a peer may receive a message once per path: Raft RPCs are idempotent,
//! app messages are documented as such ([`crate::messenger`]), and a forwarded proposal carries
//! a nonce by which the leader proposes it once (a late copy must not undo a newer proposal).
//!
//! An actor connects when a request comes and reconnects after a failure. A request that expires
//! fails alone; a connection on which requests have waited `dead_after` with nothing at all
//! received is taken as silent (a black-holed path) and dropped, failing what is pending on it
//! (a late answer to a heartbeat, say after a slow fsync, does not cost a new handshake). Every outcome is recorded per
//! path in the network's [`LinkTable`], which the liveness monitor ([`crate::links`]) reads;
//! its pings go over one path each.

mod frame;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{OptionalSend, RaftNetwork, RaftNetworkFactory, Snapshot, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};
use tokio::io::ReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::links::{LinkTable, LivenessConfig, Prober};
use crate::messenger::{Messenger, Rejected, SendError, MESSAGE_TIMEOUT};
use crate::node::{Forwarder, Inbound, ProposeError};
use crate::pki::{PkiError, TlsIdentity};
use crate::state::{ClusterRequest, ClusterResponse, ClusterState};
use crate::{Peer, RaftId, TypeConfig};

pub use frame::{read_frame, write_frame, MAX_FRAME};

/// The peer protocol's version, checked at the handshake: peers of another version are refused
/// rather than misread. 2: requests tagged with ids and answered in any order; pings and app
/// messages.
pub const PROTOCOL_VERSION: u32 = 2;
/// TLS handshake plus Hello, on both sides.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The TCP connect of a dial (within [`HANDSHAKE_TIMEOUT`]).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A server closes a connection on which no request came for this long (pings come every
/// liveness interval, so only a peer that stopped probing is closed).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections one server serves at once; more wait (peers are few: this only bounds abuse).
pub const MAX_CONNECTIONS: usize = 64;
/// Requests one connection may have in progress on the server; more wait to be read.
pub const MAX_IN_FLIGHT: usize = 32;
/// Requests waiting for one path's connection; more fail at once on that path.
const PATH_QUEUE: usize = 64;

/// Why a peer exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(u64),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("refused by the peer: {0}")]
    Refused(String),
    #[error("peer speaks protocol version {theirs}, we speak {ours}")]
    Version { ours: u32, theirs: u32 },
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("invalid peer name {0:?}")]
    Name(String),
    #[error("peer {0} has no address")]
    NoAddress(String),
    #[error("the peer is silent after a restart")]
    Silent,
    #[error("unexpected reply")]
    Unexpected,
    #[error("path {addr}: {error}")]
    Path { addr: String, error: String },
    #[error("credentials: {0}")]
    Pki(#[from] PkiError),
}

/// The client's first message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub protocol: u32,
    pub cluster: String,
    pub node: String,
    /// The timing every voter must share (the engine's Raft heartbeat and election timeouts):
    /// a leader's authority window counts on its voters' election timeouts being its own, so a
    /// peer with other timing is refused like a peer of another cluster.
    #[serde(default)]
    pub timing: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum HelloReply {
    Welcome { protocol: u32, node: String },
    Refused { reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<RaftId>),
    Snapshot {
        vote: Vote<RaftId>,
        meta: SnapshotMeta<RaftId, Peer>,
        state: ClusterState,
    },
    /// A proposal forwarded to the leader; answered after commit. Its copies on other paths
    /// carry the same nonce and are proposed once (see `Inbound::propose_once`).
    Propose {
        nonce: u64,
        request: ClusterRequest,
    },
    /// An app message for the receiver's inbound queue (answered while silent too).
    Message(serde_json::Value),
    /// Liveness (answered while silent too).
    Ping,
}

impl Rpc {
    /// Raft's own traffic, which a node silent after a restart does not answer.
    fn is_raft(&self) -> bool {
        !matches!(self, Rpc::Message(_) | Rpc::Ping)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RpcReply {
    Append(Result<AppendEntriesResponse<RaftId>, RaftError<RaftId>>),
    Vote(Result<VoteResponse<RaftId>, RaftError<RaftId>>),
    Snapshot(Result<SnapshotResponse<RaftId>, Fatal<RaftId>>),
    Propose(Result<ClusterResponse, ProposeError>),
    Message(Result<(), Rejected>),
    Pong,
    /// Restarted recently: answers no Raft message yet (see `AuthorityConfig::restart_silence`).
    Silent,
}

/// A request frame as the client writes it (the request is shared by every path's actor).
#[derive(Serialize)]
struct RequestOut<'a> {
    id: u64,
    rpc: &'a Rpc,
}

#[derive(Deserialize)]
struct RequestIn {
    id: u64,
    rpc: Rpc,
}

#[derive(Serialize, Deserialize)]
struct Response {
    id: u64,
    reply: RpcReply,
}

/// Accepts peers on `listener` until `stop`, handing their messages to `inbound`. Refusals (bad
/// certificate, other cluster, other protocol version, other timing) are logged and the
/// connection closed.
pub async fn serve(
    listener: TcpListener,
    identity: &TlsIdentity,
    cluster: String,
    timing: String,
    inbound: Inbound,
    stop: CancellationToken,
) -> Result<(), TransportError> {
    let acceptor = TlsAcceptor::from(identity.server_config()?);
    let me = identity.node.clone();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            p = slots.clone().acquire_owned() => p.expect("never closed"),
        };
        let (tcp, addr) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
        let (acceptor, cluster, timing, inbound, me, stop) =
            (acceptor.clone(), cluster.clone(), timing.clone(), inbound.clone(), me.clone(), stop.clone());
        conns.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = stop.cancelled() => {}
                r = handle(tcp, acceptor, &cluster, &timing, &me, &inbound) => if let Err(e) = r {
                    tracing::warn!(peer = %addr, error = %e, "peer connection refused or failed");
                }
            }
        });
    }
}

async fn handle(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    cluster: &str,
    timing: &str,
    me: &str,
    inbound: &Inbound,
) -> Result<(), TransportError> {
    tcp.set_nodelay(true)?;
    let (mut tls, hello) = timeout(HANDSHAKE_TIMEOUT, async {
        let mut tls = acceptor.accept(tcp).await?;
        let hello: Hello = read_frame(&mut tls).await?;
        Ok::<_, TransportError>((tls, hello))
    })
    .await
    .map_err(|_| TransportError::Timeout("handshake"))??;
    let refusal = if hello.protocol != PROTOCOL_VERSION {
        Some(TransportError::Version { ours: PROTOCOL_VERSION, theirs: hello.protocol })
    } else if hello.cluster != cluster {
        Some(TransportError::Refused(format!("node {} is of cluster {:?}, not {cluster:?}", hello.node, hello.cluster)))
    } else if hello.timing != timing {
        Some(TransportError::Refused(format!(
            "node {} runs with timing {:?}, this node with {timing:?}: every member needs the same [cluster] lost_after",
            hello.node, hello.timing
        )))
    } else if !certificate_names(&tls, &hello.node) {
        // Signed by our CA but for another node: a member must not speak for another.
        Some(TransportError::Refused(format!("the certificate presented is not node {}'s", hello.node)))
    } else {
        None
    };
    if let Some(e) = refusal {
        let _ = write_frame(&mut tls, &HelloReply::Refused { reason: e.to_string() }).await;
        return Err(e);
    }
    write_frame(&mut tls, &HelloReply::Welcome { protocol: PROTOCOL_VERSION, node: me.to_owned() }).await?;
    // The sender of app messages is the node the certificate was checked for, never the body.
    let peer = hello.node;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let (replies, mut to_write) = mpsc::channel::<Response>(MAX_IN_FLIGHT);
    let writer = async move {
        while let Some(r) = to_write.recv().await {
            write_frame(&mut wr, &r).await?;
        }
        Ok::<_, TransportError>(())
    };
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let reader = async {
        // Dropped with the connection: requests in progress are abandoned with it.
        let mut work = JoinSet::new();
        loop {
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let req: RequestIn = match timeout(IDLE_TIMEOUT, read_frame(&mut rd)).await {
                Err(_) => return Ok(()),
                Ok(Err(TransportError::Io(e))) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(r) => r?,
            };
            while work.try_join_next().is_some() {}
            let (inbound, peer, replies) = (inbound.clone(), peer.clone(), replies.clone());
            work.spawn(async move {
                let _permit = permit;
                let reply = answer(&inbound, &peer, req.rpc).await;
                let _ = replies.send(Response { id: req.id, reply }).await;
            });
        }
    };
    // Either side ending ends the connection.
    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}

async fn answer(inbound: &Inbound, peer: &str, rpc: Rpc) -> RpcReply {
    if rpc.is_raft() && inbound.is_silent() {
        return RpcReply::Silent;
    }
    match rpc {
        Rpc::Append(req) => RpcReply::Append(inbound.raft().append_entries(req).await),
        Rpc::Vote(req) => RpcReply::Vote(inbound.raft().vote(req).await),
        Rpc::Snapshot { vote, meta, state } => {
            RpcReply::Snapshot(inbound.raft().install_full_snapshot(vote, Snapshot { meta, snapshot: Box::new(state) }).await)
        }
        Rpc::Propose { nonce, request } => RpcReply::Propose(inbound.propose_once(peer, nonce, request).await),
        Rpc::Message(body) => RpcReply::Message(inbound.accept_message(peer.to_owned(), body)),
        Rpc::Ping => RpcReply::Pong,
    }
}

/// Whether the client's certificate (already verified against the cluster CA) names `node`.
fn certificate_names(tls: &tokio_rustls::server::TlsStream<TcpStream>, node: &str) -> bool {
    let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else { return false };
    let Ok(name) = rustls::pki_types::ServerName::try_from(node) else { return false };
    webpki::EndEntityCert::try_from(cert).is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}

/// Connects to `addr`, checks that the server holds the certificate of `server_name`, and says
/// hello. Fails if either side refuses the other.
pub async fn connect(
    connector: &TlsConnector,
    addr: &str,
    server_name: &str,
    hello: &Hello,
) -> Result<TlsStream<TcpStream>, TransportError> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).map_err(|_| TransportError::Name(server_name.to_owned()))?;
    timeout(HANDSHAKE_TIMEOUT, async {
        // The TCP connect alone is bounded tighter: a SYN sent while the peer was unreachable
        // is retried by the kernel only after 1 s, then 3 s; giving up after CONNECT_TIMEOUT
        // and dialling again reaches a peer that came back within a ping or two.
        let tcp = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
        tcp.set_nodelay(true)?;
        let mut tls = connector.connect(name, tcp).await?;
        write_frame(&mut tls, hello).await?;
        // With TLS 1.3 the server judges our certificate after our side of the handshake is
        // done: a refusal shows here, as an alert instead of a reply.
        match read_frame::<HelloReply, _>(&mut tls).await? {
            HelloReply::Welcome { protocol, .. } if protocol == PROTOCOL_VERSION => Ok(tls),
            HelloReply::Welcome { protocol, .. } => Err(TransportError::Version { ours: PROTOCOL_VERSION, theirs: protocol }),
            HelloReply::Refused { reason } => Err(TransportError::Refused(reason)),
        }
    })
    .await
    .map_err(|_| TransportError::Timeout("handshake"))?
}

/// How long a forwarded proposal may take, commit included.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request handed to one path's actor; the answer goes to the caller's channel, shared by the
/// request's copies on every path.
struct PathRequest {
    rpc: Arc<Rpc>,
    deadline: Instant,
    reply: mpsc::Sender<(String, Result<RpcReply, TransportError>)>,
}

impl PathRequest {
    /// The caller has its answer or gave up: no need to send this copy.
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn answer(&self, addr: &str, r: Result<RpcReply, TransportError>) {
        // Capacity is one per path, so this never fails while the caller waits.
        let _ = self.reply.try_send((addr.to_owned(), r));
    }
}

struct NetInner {
    connector: TlsConnector,
    hello: Hello,
    table: Arc<LinkTable>,
    /// One actor per (peer name, address).
    paths: Mutex<HashMap<(String, String), mpsc::Sender<PathRequest>>>,
    /// Tags forwarded proposals. Starts at the wall clock in nanoseconds, so that a restarted
    /// sender does not reuse the nonces the leader remembers from before.
    nonces: std::sync::atomic::AtomicU64,
    stop: CancellationToken,
}

impl Drop for NetInner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// This node's side of the transport: a `RaftNetworkFactory` for openraft, a [`Forwarder`] for
/// proposals, a [`Messenger`] for app messages and a [`Prober`] for liveness. Clones share the
/// path actors and the link table.
#[derive(Clone)]
pub struct TlsNetwork {
    inner: Arc<NetInner>,
}

impl TlsNetwork {
    /// With the default liveness timing ([`LivenessConfig::default`]).
    pub fn new(identity: &TlsIdentity, cluster: &str) -> Result<Self, TransportError> {
        Self::with_liveness(identity, cluster, LivenessConfig::default())
    }

    pub fn with_liveness(identity: &TlsIdentity, cluster: &str, liveness: LivenessConfig) -> Result<Self, TransportError> {
        Self::with_timing(identity, cluster, "", liveness)
    }

    /// With the `timing` its hellos announce (see [`Hello::timing`]; [`serve`] refuses peers
    /// whose timing differs from the one it is given).
    pub fn with_timing(identity: &TlsIdentity, cluster: &str, timing: &str, liveness: LivenessConfig) -> Result<Self, TransportError> {
        Ok(Self {
            inner: Arc::new(NetInner {
                connector: TlsConnector::from(identity.client_config()?),
                hello: Hello {
                    protocol: PROTOCOL_VERSION,
                    cluster: cluster.to_owned(),
                    node: identity.node.clone(),
                    timing: timing.to_owned(),
                },
                table: LinkTable::new(liveness),
                paths: Mutex::default(),
                nonces: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2))
                    .into(),
                stop: CancellationToken::new(),
            }),
        })
    }

    /// Each path's latest figures, by peer (the same as `ClusterNode::link_figures`).
    pub fn links(&self) -> crate::Links {
        self.inner.table.current()
    }

    /// Stops every path actor and closes their connections (also done when the last clone is
    /// dropped). Later calls fail.
    pub fn close(&self) {
        self.inner.stop.cancel();
    }

    /// The queue of the actor for `peer` over `addr`, started on first use.
    fn path(&self, peer: &str, addr: &str) -> mpsc::Sender<PathRequest> {
        let mut paths = self.inner.paths.lock().unwrap_or_else(|e| e.into_inner());
        let key = (peer.to_owned(), addr.to_owned());
        if let Some(tx) = paths.get(&key).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(PATH_QUEUE);
        let actor = PathActor {
            connector: self.inner.connector.clone(),
            hello: self.inner.hello.clone(),
            table: self.inner.table.clone(),
            peer: peer.to_owned(),
            addr: addr.to_owned(),
            next_id: 0,
        };
        tokio::spawn(actor.run(rx, self.inner.stop.clone()));
        paths.insert(key, tx.clone());
        tx
    }

    /// Sends `rpc` over each of `addrs` at once and returns the first good answer, within `ttl`.
    /// The copies on the other paths complete in their actors (and are recorded there).
    async fn call_over(&self, peer: &str, addrs: &[String], rpc: Rpc, ttl: Duration) -> Result<RpcReply, TransportError> {
        if addrs.is_empty() {
            return Err(TransportError::NoAddress(peer.to_owned()));
        }
        let deadline = Instant::now() + ttl;
        let rpc = Arc::new(rpc);
        let (reply, mut replies) = mpsc::channel(addrs.len());
        let mut waiting = 0;
        let mut last = None;
        for addr in addrs {
            match self.path(peer, addr).try_send(PathRequest { rpc: rpc.clone(), deadline, reply: reply.clone() }) {
                Ok(()) => waiting += 1,
                Err(_) => {
                    let e = TransportError::Path { addr: addr.clone(), error: "too many requests waiting".into() };
                    self.inner.table.record_err(peer, addr, &e.to_string());
                    last = Some(e);
                }
            }
        }
        drop(reply);
        let mut silent = false;
        let first_good = timeout_at(deadline, async {
            while waiting > 0 {
                let Some((_, r)) = replies.recv().await else { break };
                waiting -= 1;
                match r {
                    Ok(RpcReply::Silent) => silent = true,
                    Ok(reply) => return Some(reply),
                    Err(e) => last = Some(e),
                }
            }
            None
        })
        .await;
        match first_good {
            Ok(Some(reply)) => Ok(reply),
            _ if silent => Err(TransportError::Silent),
            Ok(None) => Err(last.unwrap_or(TransportError::Timeout("rpc"))),
            Err(_) => Err(TransportError::Timeout("rpc")),
        }
    }
}

/// Owns the connection to one peer over one path, and the requests in progress on it.
struct PathActor {
    connector: TlsConnector,
    hello: Hello,
    table: Arc<LinkTable>,
    peer: String,
    addr: String,
    next_id: u64,
}

/// A request written on the connection, waiting for its answer (a slow answer to one does not
/// hold up the others; an answer after the caller gave up is read and dropped).
struct Pending {
    req: PathRequest,
    sent: Instant,
}

impl PathActor {
    async fn run(mut self, mut queue: mpsc::Receiver<PathRequest>, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                r = queue.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
            };
            if first.abandoned() {
                continue;
            }
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                r = connect(&self.connector, &self.addr, &self.peer, &self.hello) => r,
            };
            let e = match connected {
                Ok(tls) => self.serve(tls, first, &mut queue, &stop).await,
                Err(e) => {
                    self.fail(&first, &e);
                    e
                }
            };
            // Whatever queued meanwhile went for this connection: fail it rather than make it
            // wait for the next attempt.
            while let Ok(r) = queue.try_recv() {
                if !r.abandoned() {
                    self.fail(&r, &e);
                }
            }
            tracing::debug!(peer = %self.peer, addr = %self.addr, error = %e, "path connection closed");
        }
    }

    fn fail(&self, req: &PathRequest, e: &TransportError) {
        self.table.record_err(&self.peer, &self.addr, &e.to_string());
        req.answer(&self.addr, Err(TransportError::Path { addr: self.addr.clone(), error: e.to_string() }));
    }

    /// Carries requests over `tls` until it fails or goes silent; returns why it ended, having
    /// failed every request pending on it.
    async fn serve(
        &mut self,
        tls: TlsStream<TcpStream>,
        first: PathRequest,
        queue: &mut mpsc::Receiver<PathRequest>,
        stop: &CancellationToken,
    ) -> TransportError {
        let (rd, mut wr) = tokio::io::split(tls);
        let (answers, mut answered) = mpsc::channel(MAX_IN_FLIGHT);
        let reader = AbortOnDrop(tokio::spawn(read_responses(rd, answers)));
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        // Since when requests have waited with nothing at all received: after `silence`, the path
        // is taken as silent (black-holed) and the connection dropped. Proposals do not count:
        // they wait for a commit by design.
        let silence = self.table.config().dead_after;
        let mut waiting_since: Option<Instant> = None;
        let mut next = Some(first);
        let end = loop {
            if let Some(req) = next.take().filter(|r| !r.abandoned()) {
                if req.deadline <= Instant::now() {
                    // Waited out its time in the queue (while connecting): not worth sending.
                    self.fail(&req, &TransportError::Timeout("waiting for the path"));
                    continue;
                }
                let id = self.next_id;
                self.next_id += 1;
                // A write cut short leaves half a frame: the connection cannot be used after it.
                match timeout_at(req.deadline, write_frame(&mut wr, &RequestOut { id, rpc: &req.rpc })).await {
                    Ok(Ok(())) => {
                        if !matches!(*req.rpc, Rpc::Propose { .. }) {
                            waiting_since.get_or_insert_with(Instant::now);
                        }
                        pending.insert(id, Pending { req, sent: Instant::now() });
                    }
                    Ok(Err(e)) => {
                        self.fail(&req, &e);
                        break e;
                    }
                    Err(_) => {
                        let e = TransportError::Timeout("write");
                        self.fail(&req, &e);
                        break e;
                    }
                }
            }
            let expiry = pending.values().map(|p| p.req.deadline).chain(waiting_since.map(|t| t + silence)).min();
            tokio::select! {
                _ = stop.cancelled() => break TransportError::Timeout("closed"),
                r = queue.recv() => match r {
                    Some(r) if !r.abandoned() => next = Some(r),
                    Some(_) => {}
                    None => break TransportError::Timeout("closed"),
                },
                r = answered.recv() => match r {
                    Some(Ok(Response { id, reply })) => {
                        if let Some(p) = pending.remove(&id) {
                            self.table.record_ok(&self.peer, &self.addr, p.sent.elapsed());
                            p.req.answer(&self.addr, Ok(reply));
                        }
                        // The peer speaks: what is still pending has waited since now.
                        let others = pending.values().any(|p| !matches!(*p.req.rpc, Rpc::Propose { .. }));
                        waiting_since = others.then(Instant::now);
                    }
                    Some(Err(e)) => break e,
                    None => break TransportError::Unexpected,
                },
                _ = sleep_until(expiry) => {
                    let now = Instant::now();
                    let expired: Vec<u64> = pending.iter().filter(|(_, p)| p.req.deadline <= now).map(|(id, _)| *id).collect();
                    for id in expired {
                        let p = pending.remove(&id).expect("listed above");
                        self.fail(&p.req, &TransportError::Timeout("no answer in time"));
                    }
                    if waiting_since.is_some_and(|t| t + silence <= now) {
                        break TransportError::Timeout("the path went silent");
                    }
                }
            }
        };
        drop(reader);
        for (_, p) in pending {
            self.fail(&p.req, &end);
        }
        end
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Aborts a task when the owner is done with it (a reader blocked on a silent socket).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads answers off a connection and hands them to its actor until the stream fails.
async fn read_responses(mut rd: ReadHalf<TlsStream<TcpStream>>, to: mpsc::Sender<Result<Response, TransportError>>) {
    loop {
        let r = read_frame::<Response, _>(&mut rd).await;
        let failed = r.is_err();
        if to.send(r).await.is_err() || failed {
            return;
        }
    }
}

impl Forwarder for TlsNetwork {
    async fn forward(&self, _leader: RaftId, peer: &Peer, req: &ClusterRequest) -> Result<ClusterResponse, ProposeError> {
        let nonce = self.inner.nonces.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rpc = Rpc::Propose { nonce, request: req.clone() };
        match self.call_over(&peer.name, &peer.addresses, rpc, PROPOSE_TIMEOUT).await {
            Ok(RpcReply::Propose(r)) => r,
            Ok(_) => Err(ProposeError::Failed(TransportError::Unexpected.to_string())),
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        }
    }
}

impl Messenger for TlsNetwork {
    async fn send(&self, _to: RaftId, peer: &Peer, body: serde_json::Value) -> Result<(), SendError> {
        let undelivered = |e: &dyn std::fmt::Display| SendError::Undelivered { peer: peer.name.clone(), last: e.to_string() };
        // Every path's answer is needed to tell "refused by all" from "one accepted", so this
        // waits for them rather than taking the first answer.
        let deadline = Instant::now() + MESSAGE_TIMEOUT;
        if peer.addresses.is_empty() {
            return Err(undelivered(&TransportError::NoAddress(peer.name.clone())));
        }
        let rpc = Arc::new(Rpc::Message(body));
        let (reply, mut replies) = mpsc::channel(peer.addresses.len());
        let mut waiting = 0;
        for addr in &peer.addresses {
            if self.path(&peer.name, addr).try_send(PathRequest { rpc: rpc.clone(), deadline, reply: reply.clone() }).is_ok() {
                waiting += 1;
            }
        }
        drop(reply);
        let mut rejected = None;
        let mut last: Option<String> = None;
        let r = timeout_at(deadline, async {
            while waiting > 0 {
                let Some((addr, r)) = replies.recv().await else { break };
                waiting -= 1;
                match r {
                    Ok(RpcReply::Message(Ok(()))) => return true,
                    Ok(RpcReply::Message(Err(why))) => rejected = Some(why),
                    Ok(_) => last = Some(format!("{addr}: {}", TransportError::Unexpected)),
                    Err(e) => last = Some(e.to_string()),
                }
            }
            false
        })
        .await;
        match (r, rejected) {
            (Ok(true), _) => Ok(()),
            (_, Some(reason)) => Err(SendError::Rejected { peer: peer.name.clone(), reason }),
            (Ok(false), None) => Err(undelivered(&last.unwrap_or_else(|| "every path's queue is full".into()))),
            (Err(_), None) => Err(undelivered(&format!("timed out after {MESSAGE_TIMEOUT:?}"))),
        }
    }
}

impl Prober for TlsNetwork {
    fn link_table(&self) -> Arc<LinkTable> {
        self.inner.table.clone()
    }

    fn paths(&self, peer: &Peer) -> Vec<String> {
        peer.addresses.clone()
    }

    async fn ping(&self, _to: RaftId, peer: &Peer, path: &str, ttl: Duration) {
        // Outcomes are recorded by the path's actor.
        let _ = self.call_over(&peer.name, &[path.to_owned()], Rpc::Ping, ttl).await;
    }
}

impl RaftNetworkFactory<TypeConfig> for TlsNetwork {
    type Network = TlsConnection;

    async fn new_client(&mut self, target: RaftId, node: &Peer) -> TlsConnection {
        TlsConnection { net: self.clone(), target, peer: node.clone() }
    }
}

/// openraft's client for one peer: each call goes over all the peer's paths.
pub struct TlsConnection {
    net: TlsNetwork,
    target: RaftId,
    peer: Peer,
}

impl TlsConnection {
    async fn call(&self, rpc: Rpc, ttl: Duration) -> Result<RpcReply, TransportError> {
        self.net.call_over(&self.peer.name, &self.peer.addresses, rpc, ttl).await
    }
}

type RpcError = RPCError<RaftId, Peer, RaftError<RaftId>>;

fn unreachable(e: TransportError) -> RpcError {
    RPCError::Unreachable(Unreachable::new(&e))
}

impl RaftNetwork<TypeConfig> for TlsConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftId>, RpcError> {
        match self.call(Rpc::Append(rpc), option.hard_ttl()).await.map_err(unreachable)? {
            RpcReply::Append(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(RPCError::Network(NetworkError::new(&TransportError::Unexpected))),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<RaftId>, option: RPCOption) -> Result<VoteResponse<RaftId>, RpcError> {
        match self.call(Rpc::Vote(rpc), option.hard_ttl()).await.map_err(unreachable)? {
            RpcReply::Vote(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(RPCError::Network(NetworkError::new(&TransportError::Unexpected))),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<RaftId>,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<RaftId>, StreamingError<TypeConfig, Fatal<RaftId>>> {
        let rpc = Rpc::Snapshot { vote, meta: snapshot.meta, state: *snapshot.snapshot };
        match self.call(rpc, option.hard_ttl()).await.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))? {
            RpcReply::Snapshot(r) => r.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(StreamingError::Network(NetworkError::new(&TransportError::Unexpected))),
        }
    }
}
