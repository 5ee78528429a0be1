//! Warden's replicated cluster state.
//!
//! ```text
//!   leader's scheduler ──ClusterRequest──► Raft (openraft) ──append──► LogStore (redb, fsync)
//!                                              │ committed
//!                                              ▼
//!                                       StateMachine: ClusterState::apply (deterministic)
//!                                              │
//!                                              ▼
//!                              every node's executor acts on committed decisions
//! ```
//!
//! * [`ClusterState`] is what is replicated: the decision core's [`Decisions`] and the version of
//!   the config they were decided under. [`ClusterState::apply`] is pure, so every node that
//!   applies the same log reaches the same state.
//! * [`store`] keeps the log, the vote and the snapshot in one redb file; every write is a
//!   durable redb commit (fsync) before openraft is told it is done, so a vote or an entry
//!   acknowledged to a peer survives a crash.
//! * [`authority::Authority`] says whether this node may act as leader: only within a window
//!   that a quorum acknowledged, never from openraft's "I am leader" alone (an isolated
//!   openraft 0.9 leader keeps calling itself leader).
//! * [`router`] is an in-memory network for tests that can drop, delay, partition and cut one
//!   direction; [`node::ClusterNode`] runs one member (Raft + store + authority + liveness).
//! * [`messenger`] carries the engine's own messages between members over every path;
//!   [`links`] says which peers (and which of their paths) are up, for status and metrics.
//!
//! [`Decisions`]: warden_core::scheduler::Decisions

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

pub mod authority;
pub mod links;
pub mod membership;
pub mod messenger;
pub mod node;
pub mod pki;
pub mod router;
pub mod state;
pub mod store;
pub mod transport;

pub use authority::{Authority, AuthorityConfig};
pub use links::{LinkTable, Links, LivenessConfig, PathStatus, PeerLink, Prober};
pub use membership::{raft_id, Step, Wanted};
pub use messenger::{Envelope, Messenger, Rejected, SendError, MESSAGE_TIMEOUT};
pub use node::{ClusterNode, Control, Forwarder, NodeConfig, ProposeError};
pub use state::{ClusterRequest, ClusterResponse, ClusterState};

/// A member's Raft id. openraft needs a small `Copy` id; the member's name lives in [`Peer`].
pub type RaftId = u64;

/// What the cluster knows about a member: its name and the addresses of its paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub name: String,
    /// One address per network path (`nodes.addresses`); empty for the in-memory router.
    pub addresses: Vec<String>,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.name, self.addresses)
    }
}

openraft::declare_raft_types!(
    /// openraft's type configuration for Warden.
    pub TypeConfig:
        D = ClusterRequest,
        R = ClusterResponse,
        NodeId = RaftId,
        Node = Peer,
        // Sent whole: the replicated state is small (decisions, not observations).
        SnapshotData = ClusterState,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<RaftId, Peer>;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster store: {0}")]
    Store(#[from] store::StoreError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<RaftId> },
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("invalid raft config: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("{0}")]
    Io(#[from] io::Error),
}
