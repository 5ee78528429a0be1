//! One cluster member: its Raft, its durable store, its authority renewal.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{ChangeMembers, RaftNetworkFactory};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use tokio::sync::mpsc;

use crate::authority::{Authority, AuthorityConfig};
use crate::links::{self, LinkTable, Links, Prober};
use crate::membership::{Step, Wanted};
use crate::messenger::{Envelope, Rejected, INBOX_CAPACITY};
use crate::state::{ClusterRequest, ClusterResponse, ClusterState};
use crate::{store, ClusterError, Peer, Raft, RaftId, RaftMetrics, TypeConfig};

/// The store's file inside the node's cluster directory.
pub const STORE_FILE: &str = "raft.redb";

/// How to run one member.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: RaftId,
    /// Holds the store ([`STORE_FILE`]); created if missing.
    pub dir: PathBuf,
    pub raft: Arc<openraft::Config>,
    pub authority: AuthorityConfig,
}

/// What a transport delivers peers' messages to. Raft RPCs and forwarded proposals get no
/// answer while the node is silent after a restart (see [`AuthorityConfig::restart_silence`]);
/// the transport treats it as unreachable. App messages and pings are answered all the same.
#[derive(Clone)]
pub struct Inbound {
    raft: Raft,
    silent_until: Instant,
    inbox: mpsc::Sender<Envelope>,
    proposals: Arc<std::sync::Mutex<Proposals>>,
}

type ProposeOutcome = Option<Result<ClusterResponse, ProposeError>>;

/// Forwarded proposals seen lately, by (sender, nonce): a proposal sent over several paths is
/// proposed once, and its later copies get the first one's answer. Otherwise a slow path's copy
/// could commit after a newer proposal and undo it.
#[derive(Default)]
struct Proposals {
    seen: std::collections::HashMap<(String, u64), watch::Receiver<ProposeOutcome>>,
    order: std::collections::VecDeque<(String, u64)>,
}

/// Forwarded proposals remembered for deduplication (a bound on memory, not on time: a copy
/// comes at most as many proposals late as a sender makes while one path holds it).
const PROPOSALS_REMEMBERED: usize = 4096;

impl Inbound {
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn is_silent(&self) -> bool {
        Instant::now() < self.silent_until
    }

    /// Queues an app message from `from` (the name the transport authenticated). Never waits:
    /// a full queue refuses it, so a flooding peer cannot grow this node's memory.
    pub fn accept_message(&self, from: String, body: serde_json::Value) -> Result<(), Rejected> {
        self.inbox.try_send(Envelope { from, body }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Rejected::Full,
            mpsc::error::TrySendError::Closed(_) => Rejected::Closed,
        })
    }

    /// Proposes `req`, forwarded by `from` (the authenticated sender) under `nonce`, unless a
    /// copy of it (same sender and nonce, another path) came before: then answers as that copy
    /// is answered. Answered after commit.
    pub async fn propose_once(&self, from: &str, nonce: u64, req: ClusterRequest) -> Result<ClusterResponse, ProposeError> {
        let key = (from.to_owned(), nonce);
        let (done, mut earlier) = {
            let mut p = self.proposals.lock().unwrap_or_else(|e| e.into_inner());
            match p.seen.get(&key) {
                Some(rx) => (None, Some(rx.clone())),
                None => {
                    let (tx, rx) = watch::channel(None);
                    p.seen.insert(key.clone(), rx);
                    p.order.push_back(key);
                    while p.order.len() > PROPOSALS_REMEMBERED {
                        let old = p.order.pop_front().expect("not empty");
                        p.seen.remove(&old);
                    }
                    (Some(tx), None)
                }
            }
        };
        if let Some(rx) = earlier.as_mut() {
            return match rx.wait_for(Option::is_some).await {
                Ok(r) => r.clone().expect("waited for it"),
                Err(_) => Err(ProposeError::Failed("an earlier copy of this proposal was abandoned; outcome unknown".into())),
            };
        }
        let r = match self.raft.client_write(req).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader { leader: f.leader_id }),
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        };
        if let Some(tx) = done {
            tx.send_replace(Some(r.clone()));
        }
        r
    }

    /// The name this node's membership gives member `id` (the decimal id if it is not a member).
    pub fn member_name(&self, id: RaftId) -> String {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().get_node(&id).map(|p| p.name.clone()).unwrap_or_else(|| id.to_string())
    }
}

/// Why a proposal handed to another member was not applied, as it travels between members.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<RaftId> },
    #[error("{0}")]
    Failed(String),
}

impl From<ClusterError> for ProposeError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::NotLeader { leader } => ProposeError::NotLeader { leader },
            e => ProposeError::Failed(e.to_string()),
        }
    }
}

/// How a member hands a proposal to the leader (the peer transport, or the test router). The
/// leader answers after commit, as for its own proposals.
pub trait Forwarder: Send + Sync {
    fn forward(
        &self,
        leader: RaftId,
        peer: &Peer,
        req: &ClusterRequest,
    ) -> impl Future<Output = Result<ClusterResponse, ProposeError>> + Send;
}

/// How many times [`ClusterNode::submit`] follows a changing leader before giving up.
const SUBMIT_ATTEMPTS: usize = 5;

/// A running member. Dropping it aborts its tasks; [`ClusterNode::shutdown`] stops it cleanly.
pub struct ClusterNode {
    id: RaftId,
    raft: Raft,
    state: watch::Receiver<ClusterState>,
    voters: watch::Receiver<BTreeSet<RaftId>>,
    authority: Authority,
    inbound: Inbound,
    messages: Option<mpsc::Receiver<Envelope>>,
    links: Arc<LinkTable>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

fn raft_error<E: std::fmt::Display>(e: E) -> ClusterError {
    ClusterError::Raft(e.to_string())
}

impl ClusterNode {
    /// Opens the store in `config.dir` (recovering the log, vote and snapshot written before)
    /// and starts Raft and the authority renewal. A node whose store holds a vote has run
    /// before: it stays silent for the restart silence. Also starts the liveness monitor, which
    /// pings every member's every path (see [`links`]).
    pub async fn start<N: RaftNetworkFactory<TypeConfig> + Prober>(config: &NodeConfig, network: N) -> Result<Self, ClusterError> {
        std::fs::create_dir_all(&config.dir)?;
        let (mut log, sm) = store::open(&config.dir.join(STORE_FILE)).await?;
        let restarted = log.read_vote().await.map_err(raft_error)?.is_some();
        let state = sm.subscribe();
        let voters = sm.subscribe_voters();
        let prober = network.clone();
        let raft = Raft::new(config.id, config.raft.clone(), network, log, sm).await.map_err(raft_error)?;
        let silent_until = Instant::now() + if restarted { config.authority.restart_silence } else { Default::default() };
        if restarted {
            tracing::info!(node = config.id, silence = ?config.authority.restart_silence, "restarted: silent before answering peers");
        }
        let authority = Authority::new(raft.clone(), config.authority);
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(authority.clone().run(stop.clone()));
        let links = prober.link_table();
        tasks.spawn(links::monitor(prober, raft.clone(), config.id, stop.clone()));
        let (inbox, messages) = mpsc::channel(INBOX_CAPACITY);
        Ok(Self {
            id: config.id,
            inbound: Inbound { raft: raft.clone(), silent_until, inbox, proposals: Default::default() },
            messages: Some(messages),
            links,
            raft,
            state,
            voters,
            authority,
            stop,
            tasks,
        })
    }

    /// The app messages peers sent this node (see [`crate::messenger`]), once: later calls
    /// return `None`. The queue is bounded; until it is taken and drained, peers' messages
    /// fill it and are then refused.
    pub fn take_messages(&mut self) -> Option<mpsc::Receiver<Envelope>> {
        self.messages.take()
    }

    /// Which peers this node reaches, over which paths; changes whenever a peer or a path goes
    /// up or down (its figures are those of that moment: see [`ClusterNode::link_figures`]).
    pub fn links(&self) -> watch::Receiver<Links> {
        self.links.subscribe()
    }

    /// The latest per-path figures (time since the last success, round-trip time, failures).
    pub fn link_figures(&self) -> Links {
        self.links.current()
    }

    pub fn id(&self) -> RaftId {
        self.id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// What the transport hands peers' messages to.
    pub fn inbound(&self) -> Inbound {
        self.inbound.clone()
    }

    /// openraft's current metrics (its own view: state, term, leader, log indexes).
    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The applied state; a receiver sees every change.
    pub fn state(&self) -> watch::Receiver<ClusterState> {
        self.state.clone()
    }

    /// The voters of the membership this node has applied (committed; openraft's metrics show
    /// the newest one appended, which a leader sees before any other voter holds it).
    pub fn committed_voters(&self) -> BTreeSet<RaftId> {
        self.voters.borrow().clone()
    }

    /// Until when this node may act as leader (place groups, order fencing), or `None`. Unlike
    /// openraft's state, it lapses when no quorum acknowledged this node within the window.
    pub fn authority(&self) -> Option<Instant> {
        self.authority.check()
    }

    /// Forms a new cluster of `members` (once, on one node; the others learn it).
    pub async fn initialize(&self, members: BTreeMap<RaftId, Peer>) -> Result<(), ClusterError> {
        self.raft.initialize(members).await.map_err(raft_error)
    }

    /// Proposes a change and answers once it is committed and applied here. Only the leader
    /// accepts; elsewhere the answer names the leader to forward to. Committing needs a quorum,
    /// so a deposed leader's proposal fails rather than commits.
    pub async fn propose(&self, req: ClusterRequest) -> Result<ClusterResponse, ClusterError> {
        match self.raft.client_write(req).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ClusterError::NotLeader { leader: f.leader_id }),
            Err(e) => Err(raft_error(e)),
        }
    }

    /// Proposes a change from any member: here if this node leads, otherwise through `via` to
    /// the leader; answered after commit. A `Failed` answer does not say the change was not
    /// applied (the connection may have broken after the leader committed it): callers propose
    /// whole replacements, which are safe to repeat. Follows a leader change a few times; waits (bounded by
    /// the election timeout, per attempt) while no leader is known.
    pub async fn submit<F: Forwarder>(&self, via: &F, req: ClusterRequest) -> Result<ClusterResponse, ProposeError> {
        let mut last = ProposeError::NotLeader { leader: None };
        for _ in 0..SUBMIT_ATTEMPTS {
            let leader = match &last {
                ProposeError::NotLeader { leader: Some(l) } => *l,
                _ => {
                    let wait = Duration::from_millis(2 * self.raft.config().election_timeout_max);
                    match self.raft.wait(Some(wait)).metrics(|m| m.current_leader.is_some(), "a leader").await {
                        Ok(m) => m.current_leader.expect("waited for it"),
                        Err(_) => return Err(ProposeError::NotLeader { leader: None }),
                    }
                }
            };
            let result = if leader == self.id {
                self.propose(req.clone()).await.map_err(ProposeError::from)
            } else {
                let peer = self.metrics().membership_config.membership().get_node(&leader).cloned();
                let Some(peer) = peer else { return Err(ProposeError::Failed(format!("leader {leader} is not a member"))) };
                via.forward(leader, &peer, &req).await
            };
            match result {
                Err(e @ ProposeError::NotLeader { .. }) => last = e,
                r => return r,
            }
        }
        Err(last)
    }

    /// Adds a member as a learner: it receives the log and never votes (further nodes beyond the
    /// 3 or 5 voters, and the step before becoming a voter). Leader only; returns once the
    /// learner has caught up.
    pub async fn add_learner(&self, id: RaftId, peer: Peer) -> Result<(), ClusterError> {
        match self.raft.add_learner(id, peer, true).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ClusterError::NotLeader { leader: f.leader_id }),
            Err(e) => Err(raft_error(e)),
        }
    }

    /// Replaces the voters (an explicit operator command: `warden node add|remove`). Refused
    /// unless this node has authority and every current and future voter acknowledges a freshly
    /// committed barrier entry within one election timeout: changing membership while a voter is
    /// unhealthy could leave the new configuration without a working quorum.
    pub async fn change_voters(&self, voters: BTreeSet<RaftId>) -> Result<(), ClusterError> {
        self.control().replace_voters(voters, false).await
    }

    /// See [`Control::reconcile`].
    pub async fn reconcile(&self, want: &Wanted) -> Result<Step, ClusterError> {
        self.control().reconcile(want).await
    }

    /// A handle for membership work from another task.
    pub fn control(&self) -> Control {
        Control { id: self.id, raft: self.raft.clone(), authority: self.authority.clone() }
    }

    /// Stops the renewal and Raft; the store is closed once Raft's tasks have let it go.
    pub async fn shutdown(mut self) -> Result<(), ClusterError> {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.raft.shutdown().await.map_err(raft_error)
    }
}

/// Membership work that may run in its own task while the member's loop goes on (cheap to
/// clone).
#[derive(Clone)]
pub struct Control {
    id: RaftId,
    raft: Raft,
    authority: Authority,
}

impl Control {
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    async fn replace_voters(&self, voters: BTreeSet<RaftId>, retain: bool) -> Result<(), ClusterError> {
        self.voters_healthy(&voters).await?;
        match self.raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), retain).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ClusterError::NotLeader { leader: f.leader_id }),
            Err(e) => Err(raft_error(e)),
        }
    }

    /// Ok when this node has authority and every voter, and every one of `also`, acknowledges a
    /// freshly committed barrier entry within one election timeout (the check before any
    /// membership change, and before `warden node add|remove` commits anything).
    pub async fn voters_healthy(&self, also: &BTreeSet<RaftId>) -> Result<(), ClusterError> {
        if self.authority.check().is_none() {
            return Err(ClusterError::NotLeader { leader: self.raft.metrics().borrow().clone().current_leader.filter(|l| *l != self.id) });
        }
        // A fresh entry: an idle log would count a voter that went down after acknowledging
        // the last one as healthy.
        let target = match self.raft.client_write(ClusterRequest::Barrier).await {
            Ok(r) => Some(r.log_id.index),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => return Err(ClusterError::NotLeader { leader: f.leader_id }),
            Err(e) => return Err(raft_error(e)),
        };
        let m = self.raft.metrics().borrow().clone();
        let all: BTreeSet<RaftId> =
            m.membership_config.membership().voter_ids().chain(also.iter().copied()).filter(|v| *v != self.id).collect();
        let wait = Duration::from_millis(self.raft.config().election_timeout_max);
        let healthy = |m: &RaftMetrics| {
            let Some(repl) = &m.replication else { return false };
            all.iter().all(|v| repl.get(v).is_some_and(|matched| matched.map(|l| l.index) >= target))
        };
        if let Err(e) = self.raft.wait(Some(wait)).metrics(healthy, "every voter acknowledges the log").await {
            let m = self.raft.metrics().borrow().clone();
            let repl = m.replication.unwrap_or_default();
            let lagging: Vec<_> = all.iter().filter(|v| repl.get(v).is_none_or(|matched| matched.map(|l| l.index) < target)).collect();
            return Err(ClusterError::Membership(format!("not every voter is healthy: {lagging:?} did not acknowledge the log ({e})")));
        }
        Ok(())
    }

    /// One step towards the membership `want` (leader only, with authority): first every
    /// missing member is added as a learner (without waiting for it); then, once every current
    /// and future voter is healthy (see [`ClusterNode::voters_healthy`]; a learner that has not
    /// caught up is not), the voters are replaced, former voters still wanted staying learners;
    /// last, members no longer wanted are removed. Call it again until [`Step::InSync`]; an
    /// error (no authority, a voter not healthy) changes nothing and is worth retrying later.
    pub async fn reconcile(&self, want: &Wanted) -> Result<Step, ClusterError> {
        if self.authority.check().is_none() {
            return Err(ClusterError::NotLeader { leader: self.raft.metrics().borrow().clone().current_leader.filter(|l| *l != self.id) });
        }
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let missing: BTreeMap<RaftId, Peer> =
            want.members.iter().filter(|(id, _)| membership.get_node(id).is_none()).map(|(id, p)| (*id, p.clone())).collect();
        if !missing.is_empty() {
            let ids = missing.keys().copied().collect();
            written(self.raft.change_membership(ChangeMembers::AddNodes(missing), true).await)?;
            return Ok(Step::AddedLearners(ids));
        }
        let voters: BTreeSet<RaftId> = membership.voter_ids().collect();
        if voters != want.voters {
            self.replace_voters(want.voters.clone(), true).await?;
            return Ok(Step::ChangedVoters { from: voters, to: want.voters.clone() });
        }
        let extra: BTreeSet<RaftId> = membership.nodes().map(|(id, _)| *id).filter(|id| !want.members.contains_key(id)).collect();
        if !extra.is_empty() {
            written(self.raft.change_membership(ChangeMembers::RemoveNodes(extra.clone()), true).await)?;
            return Ok(Step::Removed(extra.into_iter().collect()));
        }
        Ok(Step::InSync)
    }
}

/// A membership write's outcome: a follower's refusal names the leader.
#[allow(clippy::result_large_err)] // the crate's error, as every async fn here returns it
fn written<T>(r: Result<T, RaftError<RaftId, ClientWriteError<RaftId, Peer>>>) -> Result<(), ClusterError> {
    match r {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(ClusterError::NotLeader { leader: f.leader_id }),
        Err(e) => Err(raft_error(e)),
    }
}
