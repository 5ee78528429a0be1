//! The engine's own messages between members (commands to other nodes' executors, their
//! results, what to monitor), beside Raft's.
//!
//! ```text
//!   sender: Messenger::send(to, peer, body) ──every path at once──► peer's transport
//!                                                                   │ Inbound::accept_message
//!                                                                   ▼ (try_send: never waits)
//!   Ok once one path's copy was accepted ◄── Accepted | Rejected(Full | Closed)
//!                                                   bounded queue ──► ClusterNode::take_messages
//! ```
//!
//! * `from` in an [`Envelope`] is set by the receiving transport from what it authenticated
//!   (the TLS peer's certificate-checked hello; the router's link), never from the body.
//! * **A message may arrive once per path, unordered across paths**: one sent over two working
//!   paths usually arrives twice, and a later message may overtake an earlier one on another
//!   path. An error does not prove it was not delivered (the acknowledgement may be what was
//!   lost). Receivers must be idempotent (carry an id or a revision in the body and drop what
//!   they have seen).
//! * The inbound queue is bounded ([`INBOX_CAPACITY`]): when it is full the copy is refused
//!   and, if no path's copy was accepted, the sender gets [`SendError::Rejected`] with
//!   [`Rejected::Full`]. A flooding peer cannot grow the receiver's memory.
//! * Messages (and liveness pings) are accepted while the node keeps its post-restart Raft
//!   silence; only Raft RPCs and forwarded proposals are refused then.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Peer, RaftId};

/// How long [`Messenger::send`] waits for some path to deliver.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Messages a node holds before it refuses more ([`Rejected::Full`]).
pub const INBOX_CAPACITY: usize = 1024;

/// The engine's own message between members; `from` is the sender's node name as the transport
/// authenticated it (the TLS peer's certificate / the router's link), never taken from the body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: String,
    pub body: serde_json::Value,
}

/// Why a receiver refused a message, as it travels back to the sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "kebab-case")]
pub enum Rejected {
    #[error("its inbound queue is full")]
    Full,
    #[error("it no longer takes messages")]
    Closed,
}

/// Why a message was not handed over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Some path reached the peer but it refused the message (every path that answered refused).
    #[error("{peer} refused the message: {reason}")]
    Rejected { peer: String, reason: Rejected },
    /// No path delivered the message within [`MESSAGE_TIMEOUT`] (or every path failed first).
    #[error("no path delivered the message to {peer}: {last}")]
    Undelivered { peer: String, last: String },
}

/// How the engine sends its own messages to a member.
pub trait Messenger: Clone + Send + Sync + 'static {
    /// Hands `body` to member `to` over every path at once; `Ok` as soon as one path delivered
    /// it (the peer's inbound queue accepted it); `Err` when none did within
    /// [`MESSAGE_TIMEOUT`]. A message may arrive once per path and out of order across paths:
    /// receivers must be idempotent. Waits at most [`MESSAGE_TIMEOUT`]; never waits for the
    /// receiver to take the message from its queue.
    fn send(&self, to: RaftId, peer: &Peer, body: serde_json::Value) -> impl Future<Output = Result<(), SendError>> + Send;
}
