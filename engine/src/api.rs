//! The local control API: newline-delimited JSON over a Unix socket that only root can open
//! (mode 0600). The CLI sends one request per connection; `events --follow` keeps the connection
//! and receives one event per line. Every message carries the protocol version.

pub mod listen;
pub mod metrics;
pub mod users;

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::node::history::EventRecord;
use crate::scheduler::OperatorCommand;

pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Events {
        since: u64,
        follow: bool,
    },
    Operator {
        command: OperatorCommand,
    },
    /// Everything a resource runs with (`warden resource show`).
    ResourceShow {
        resource: String,
    },
    /// The config the node runs (`warden config show`).
    ConfigShow,
    /// Make `text` the cluster's config (`warden config apply`); answered once committed.
    /// `member`: the one member this config adds or removes (`warden node add|remove`); without
    /// it the members must stay as they are.
    ConfigApply {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member: Option<MemberChange>,
    },
}

/// The membership change a new config makes (`warden node add|remove`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberChange {
    Add(String),
    Remove(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "kebab-case")]
pub enum Response {
    Status { status: Box<StatusReport> },
    Events { events: Vec<EventRecord> },
    Event { event: EventRecord },
    Ok { message: String },
    Error { message: String },
    Resource { details: Box<ResourceDetails> },
    Config { path: String, text: String },
}

/// `warden resource show`: a resource as the node runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceDetails {
    pub name: String,
    pub group: String,
    pub plugin: String,
    pub plugin_path: String,
    pub plugin_version: String,
    /// The agent-interface version the plugin implements, e.g. `warden:agent@0.2.0`.
    pub wit: String,
    /// Parameters with the agent's defaults applied.
    pub params: std::collections::BTreeMap<String, String>,
    /// Per action, the config's override or the agent's default.
    pub timeouts_ms: std::collections::BTreeMap<String, u64>,
    pub monitor_interval_ms: u64,
    pub memory_mib: u64,
    pub unmanaged: bool,
    /// What it needs running first, and what needs it (in its group).
    pub depends_on: Vec<String>,
    pub needed_by: Vec<String>,
    /// The operator's grants (the second key; the plugin's manifest is the first).
    pub grants: serde_json::Value,
    pub max_restarts: u32,
    pub restart_window_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub cluster: String,
    pub node: String,
    pub now_ms: u64,
    pub shutting_down: bool,
    /// Set while the state file cannot be written: decisions are held until it is durable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_error: Option<String>,
    /// Where `/metrics` is served (as bound: a configured port 0 shows the port picked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    /// In a cluster: leader, term, quorum and each member's reachability per path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_info: Option<ClusterStatus>,
    pub nodes: Vec<NodeStatus>,
    pub groups: Vec<GroupStatus>,
    pub resources: Vec<ResourceStatus>,
    pub recent: Vec<EventRecord>,
}

/// The cluster as the answering member sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The member whose view this is (the leader, unless none could be reached).
    pub answered_by: String,
    pub leader: Option<String>,
    pub term: u64,
    /// The answering member leads with a quorum's acknowledgement (decisions are being made).
    pub quorum: bool,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    pub role: String,
    /// In Raft: `voter`, `learner` (receives the log, never votes), or `joining` (in the config,
    /// not yet in Raft's membership: the leader adds it).
    #[serde(default)]
    pub raft: String,
    /// At least one path to it works (always true for the answering member itself).
    pub reachable: bool,
    pub paths: Vec<PathState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathState {
    pub addr: String,
    pub up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: String,
    pub up: bool,
    pub standby: bool,
    pub needs_fence: bool,
    /// The operator's maintenance: what runs there is left alone.
    #[serde(default)]
    pub maintenance: bool,
    /// In a cluster: its daemon shut down cleanly with nothing running there (not fenced, not
    /// waited for).
    #[serde(default)]
    pub left: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub state: String,
    pub target: String,
    pub owner: Option<String>,
    pub epoch: u64,
    pub failed_on: Vec<String>,
    pub resources: Vec<String>,
    /// Why a group that should run is not running anywhere (state `waiting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// resource → what it needs running first (the group's dependency graph).
    #[serde(default)]
    pub deps: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub name: String,
    pub group: String,
    pub plugin: String,
    pub unmanaged: bool,
    /// What it is doing on each node where it is not known stopped.
    pub on: Vec<(String, String)>,
    pub last_monitor: Option<MonitorStatus>,
    /// Local recoveries on this node within the group's window, of at most `max_restarts`.
    pub restarts: usize,
    #[serde(default)]
    pub max_restarts: u32,
    #[serde(default)]
    pub restart_window_ms: u64,
    /// When the last local recovery (of those counted) began, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart_at_ms: Option<u64>,
    pub last_failure: Option<String>,
    /// The agent said `invalid-config`: not retried; its group is frozen until `resource cleanup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// Stopped by the operator (`resource stop`), or held stopped because something it needs is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_stopped: Option<String>,
    /// Nodes that cannot run it (`not-installed` there), with the agent's reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ineligible: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorStatus {
    pub at_ms: u64,
    pub result: String,
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the Warden node at {path}: {source} (is `warden node run` running? pass --socket or set WARDEN_SOCKET)")]
    Connect { path: String, source: std::io::Error },
    #[error("control connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad answer from the node: {0}")]
    Protocol(String),
}

/// A connection to a node's control socket.
pub struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let s = UnixStream::connect(path).await.map_err(|source| ClientError::Connect { path: path.display().to_string(), source })?;
        let (r, w) = s.into_split();
        Ok(Self { reader: BufReader::new(r), writer: w })
    }

    pub async fn send(&mut self, req: Request) -> Result<(), ClientError> {
        let mut line =
            serde_json::to_string(&Envelope { v: PROTOCOL_VERSION, body: req }).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        self.writer.write_all(line.as_bytes()).await?;
        Ok(())
    }

    /// The next response; `None` when the node closed the connection.
    pub async fn recv(&mut self) -> Result<Option<Response>, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let env: Envelope<Response> = serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("{e}: {line}")))?;
        if env.v != PROTOCOL_VERSION {
            return Err(ClientError::Protocol(format!("protocol version {} (this CLI speaks {PROTOCOL_VERSION})", env.v)));
        }
        Ok(Some(env.body))
    }

    /// One request, one response.
    pub async fn call(path: &Path, req: Request) -> Result<Response, ClientError> {
        let mut c = Self::connect(path).await?;
        c.send(req).await?;
        c.recv().await?.ok_or_else(|| ClientError::Protocol("connection closed".into()))
    }
}

/// The largest request line accepted (a request is a few hundred bytes).
/// (1 MiB: a `config apply` carries the whole config file.)
pub const MAX_REQUEST_BYTES: u64 = 1024 * 1024;

/// Read one request line from a server-side connection.
pub async fn read_request(reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Result<Option<Request>, String> {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    // Never buffer more than the limit, whatever the client sends.
    match (&mut *reader).take(MAX_REQUEST_BYTES + 1).read_until(b'\n', &mut raw).await {
        Ok(0) => Ok(None),
        Ok(n) if n as u64 > MAX_REQUEST_BYTES => Err(format!("request too large (over {MAX_REQUEST_BYTES} bytes)")),
        Ok(_) => {
            let line = String::from_utf8(raw).map_err(|_| "bad request: not UTF-8".to_string())?;
            let env: Envelope<Request> = serde_json::from_str(&line).map_err(|e| format!("bad request: {e}"))?;
            if env.v != PROTOCOL_VERSION {
                return Err(format!("protocol version {} is not supported (this node speaks {PROTOCOL_VERSION})", env.v));
            }
            Ok(Some(env.body))
        }
        Err(e) => Err(e.to_string()),
    }
}

pub async fn write_response(writer: &mut tokio::net::unix::OwnedWriteHalf, resp: Response) -> std::io::Result<()> {
    let mut line = serde_json::to_string(&Envelope { v: PROTOCOL_VERSION, body: resp }).unwrap_or_default();
    line.push('\n');
    writer.write_all(line.as_bytes()).await
}
