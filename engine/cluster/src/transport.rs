//! The peer transport: Raft messages over mutual TLS on TCP.
//!
//! ```text
//!   client                                   server
//!   TCP connect ─► TLS 1.3 handshake (both present certificates signed by the cluster CA)
//!   Hello { protocol, cluster, node } ───────►  checks protocol version and cluster name
//!                       ◄─────────────────────  Welcome { protocol, node } | Refused { reason }
//!   Rpc ─────────────────────────────────────►  handed to the node's Raft (unless silent)
//!                       ◄─────────────────────  RpcReply
//!   … one request at a time per connection (openraft sends one at a time per peer)
//! ```
//!
//! Every message is a frame: a big-endian `u32` length, then that many bytes of JSON. Frames
//! over [`MAX_FRAME`] are refused before anything is allocated for them. No RPC framework: a
//! handful of message types do not need one.
//!
//! A peer's addresses are its network paths; a connection tries them in order and stays on the
//! first that works until it fails. TODO(#11 transport): send every message over every path and
//! track per-path state for status and metrics.

mod frame;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{OptionalSend, RaftNetwork, RaftNetworkFactory, Snapshot, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::node::{Forwarder, Inbound, ProposeError};
use crate::pki::{PkiError, TlsIdentity};
use crate::state::{ClusterRequest, ClusterResponse, ClusterState};
use crate::{Peer, RaftId, TypeConfig};

pub use frame::{read_frame, write_frame, MAX_FRAME};

/// The peer protocol's version, checked at the handshake: peers of another version are refused
/// rather than misread.
pub const PROTOCOL_VERSION: u32 = 1;
/// TLS handshake plus Hello, on both sides.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A server closes a connection on which no request came for this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections one server serves at once; more wait (peers are few: this only bounds abuse).
pub const MAX_CONNECTIONS: usize = 64;

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
    /// A proposal forwarded to the leader; answered after commit.
    Propose(ClusterRequest),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RpcReply {
    Append(Result<AppendEntriesResponse<RaftId>, RaftError<RaftId>>),
    Vote(Result<VoteResponse<RaftId>, RaftError<RaftId>>),
    Snapshot(Result<SnapshotResponse<RaftId>, Fatal<RaftId>>),
    Propose(Result<ClusterResponse, ProposeError>),
    /// Restarted recently: answers nothing yet (see `AuthorityConfig::restart_silence`).
    Silent,
}

/// Accepts peers on `listener` until `stop`, handing their messages to `inbound`. Refusals (bad
/// certificate, other cluster, other protocol version) are logged and the connection closed.
pub async fn serve(
    listener: TcpListener,
    identity: &TlsIdentity,
    cluster: String,
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
        let (acceptor, cluster, inbound, me, stop) = (acceptor.clone(), cluster.clone(), inbound.clone(), me.clone(), stop.clone());
        conns.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = stop.cancelled() => {}
                r = handle(tcp, acceptor, &cluster, &me, &inbound) => if let Err(e) = r {
                    tracing::warn!(peer = %addr, error = %e, "peer connection refused or failed");
                }
            }
        });
    }
}

async fn handle(tcp: TcpStream, acceptor: TlsAcceptor, cluster: &str, me: &str, inbound: &Inbound) -> Result<(), TransportError> {
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
    loop {
        let rpc: Rpc = match timeout(IDLE_TIMEOUT, read_frame(&mut tls)).await {
            Err(_) => return Ok(()),
            Ok(Err(TransportError::Io(e))) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        let reply = if inbound.is_silent() {
            RpcReply::Silent
        } else {
            match rpc {
                Rpc::Append(req) => RpcReply::Append(inbound.raft().append_entries(req).await),
                Rpc::Vote(req) => RpcReply::Vote(inbound.raft().vote(req).await),
                Rpc::Snapshot { vote, meta, state } => {
                    RpcReply::Snapshot(inbound.raft().install_full_snapshot(vote, Snapshot { meta, snapshot: Box::new(state) }).await)
                }
                Rpc::Propose(req) => RpcReply::Propose(match inbound.raft().client_write(req).await {
                    Ok(r) => Ok(r.data),
                    Err(RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                        Err(ProposeError::NotLeader { leader: f.leader_id })
                    }
                    Err(e) => Err(ProposeError::Failed(e.to_string())),
                }),
            }
        };
        write_frame(&mut tls, &reply).await?;
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
        let tcp = TcpStream::connect(addr).await?;
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

/// Idle connections kept per peer. openraft opens a client per replication stream and another
/// for every leadership check (each authority renewal), so without reuse every renewal would pay
/// a TCP and TLS handshake per peer.
const IDLE_PER_PEER: usize = 4;

/// A connection and the path (address) it runs over.
struct PathStream {
    tls: TlsStream<TcpStream>,
    addr: String,
}

type Pool = Arc<std::sync::Mutex<std::collections::BTreeMap<RaftId, Vec<PathStream>>>>;

/// What the last use of one path to one peer showed, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathStatus {
    pub peer: String,
    pub addr: String,
    /// The last connection or exchange over this path worked.
    pub up: bool,
    pub last_error: Option<String>,
}

type Paths = Arc<std::sync::Mutex<std::collections::BTreeMap<(String, String), PathStatus>>>;

/// This node's side of the transport: a `RaftNetworkFactory` for openraft.
#[derive(Clone)]
pub struct TlsNetwork {
    connector: TlsConnector,
    hello: Hello,
    idle: Pool,
    paths: Paths,
}

impl TlsNetwork {
    pub fn new(identity: &TlsIdentity, cluster: &str) -> Result<Self, TransportError> {
        Ok(Self {
            connector: TlsConnector::from(identity.client_config()?),
            hello: Hello { protocol: PROTOCOL_VERSION, cluster: cluster.to_owned(), node: identity.node.clone() },
            idle: Pool::default(),
            paths: Paths::default(),
        })
    }

    /// Each path used so far, by peer and address. A path not yet needed (a later address while
    /// an earlier one works) is not listed. TODO(#11 transport): probe every path.
    pub fn paths(&self) -> Vec<PathStatus> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    fn record(&self, peer: &str, addr: &str, result: Result<(), &TransportError>) {
        let status = PathStatus {
            peer: peer.to_owned(),
            addr: addr.to_owned(),
            up: result.is_ok(),
            last_error: result.err().map(|e| e.to_string()),
        };
        let mut paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
        // Keep the last error while the path is up again: status shows what happened.
        let last_error =
            status.last_error.clone().or_else(|| paths.get(&(status.peer.clone(), status.addr.clone())).and_then(|p| p.last_error.clone()));
        paths.insert((status.peer.clone(), status.addr.clone()), PathStatus { last_error, ..status });
    }
}

impl Forwarder for TlsNetwork {
    async fn forward(&self, leader: RaftId, peer: &Peer, req: &ClusterRequest) -> Result<ClusterResponse, ProposeError> {
        let mut conn = TlsConnection { net: self.clone(), target: leader, peer: peer.clone(), stream: None };
        match conn.call(&Rpc::Propose(req.clone()), PROPOSE_TIMEOUT).await {
            Ok(RpcReply::Propose(r)) => r,
            Ok(_) => Err(ProposeError::Failed(TransportError::Unexpected.to_string())),
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for TlsNetwork {
    type Network = TlsConnection;

    async fn new_client(&mut self, target: RaftId, node: &Peer) -> TlsConnection {
        TlsConnection { net: self.clone(), target, peer: node.clone(), stream: None }
    }
}

/// A connection to one peer, opened on first use and again after a failure.
pub struct TlsConnection {
    net: TlsNetwork,
    target: RaftId,
    peer: Peer,
    stream: Option<PathStream>,
}

impl TlsConnection {
    /// An idle connection to the peer (`true`: reused), or a new one over the first path that works.
    async fn open(&self) -> Result<(PathStream, bool), TransportError> {
        let reused = self.net.idle.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&self.target).and_then(Vec::pop);
        if let Some(s) = reused {
            return Ok((s, true));
        }
        let mut last = TransportError::NoAddress(self.peer.name.clone());
        for addr in &self.peer.addresses {
            match connect(&self.net.connector, addr, &self.peer.name, &self.net.hello).await {
                Ok(tls) => {
                    self.net.record(&self.peer.name, addr, Ok(()));
                    return Ok((PathStream { tls, addr: addr.clone() }, false));
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer.name, %addr, error = %e, "path failed");
                    self.net.record(&self.peer.name, addr, Err(&e));
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// One request and its answer, within `ttl`. A kept connection may have been closed by the
    /// peer meanwhile (idle timeout, restart): then the request is sent again on a new one (Raft
    /// requests may be delivered twice).
    async fn call(&mut self, rpc: &Rpc, ttl: Duration) -> Result<RpcReply, TransportError> {
        let r = timeout(ttl, async {
            loop {
                let reused = match self.stream {
                    Some(_) => true,
                    None => {
                        let (s, reused) = self.open().await?;
                        self.stream = Some(s);
                        reused
                    }
                };
                let s = self.stream.as_mut().expect("opened above");
                let r = async {
                    write_frame(&mut s.tls, rpc).await?;
                    read_frame::<RpcReply, _>(&mut s.tls).await
                }
                .await;
                self.net.record(&self.peer.name, &s.addr, r.as_ref().map(|_| ()));
                match r {
                    Ok(reply) => return Ok(reply),
                    Err(e) => {
                        // The stream may hold half a frame: never reuse it.
                        self.stream = None;
                        if !reused {
                            return Err(e);
                        }
                    }
                }
            }
        })
        .await
        .unwrap_or(Err(TransportError::Timeout("rpc")));
        if r.is_err() {
            self.stream = None;
        }
        match r? {
            RpcReply::Silent => Err(TransportError::Silent),
            reply => Ok(reply),
        }
    }
}

impl Drop for TlsConnection {
    /// A stream between whole exchanges goes back to the pool; one that failed was dropped
    /// already (it may hold half a frame).
    fn drop(&mut self) {
        if let Some(s) = self.stream.take() {
            let mut idle = self.net.idle.lock().unwrap_or_else(|e| e.into_inner());
            let streams = idle.entry(self.target).or_default();
            if streams.len() < IDLE_PER_PEER {
                streams.push(s);
            }
        }
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
        match self.call(&Rpc::Append(rpc), option.hard_ttl()).await.map_err(unreachable)? {
            RpcReply::Append(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(RPCError::Network(NetworkError::new(&TransportError::Unexpected))),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<RaftId>, option: RPCOption) -> Result<VoteResponse<RaftId>, RpcError> {
        match self.call(&Rpc::Vote(rpc), option.hard_ttl()).await.map_err(unreachable)? {
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
        match self.call(&rpc, option.hard_ttl()).await.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))? {
            RpcReply::Snapshot(r) => r.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(StreamingError::Network(NetworkError::new(&TransportError::Unexpected))),
        }
    }
}
