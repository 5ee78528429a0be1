//! Cluster mode of `warden node run`: this daemon is one member of a multi-node cluster.
//!
//! ```text
//!             every member                                   the leader only (with authority)
//!   ┌──────────────────────────────┐  Exec, Lease      ┌───────────────────────────────────────┐
//!   │ executor: workers, monitors, │ ◄──────────────── │ decider: Scheduler (sans-IO core)     │
//!   │ watches, the lease           │ ────────────────► │ events in, commands out; a command is │
//!   └──────────────────────────────┘  Hello, Report    │ sent only after its decisions commit  │
//!        ▲ control socket: status and operator         └──────────────┬────────────────────────┘
//!        │ commands, forwarded to the leader                          │ SetDecisions
//!                                                           openraft ─┴─► redb log (fsync)
//! ```
//!
//! Like Pacemaker's DC, the Raft leader runs the decision core for the whole cluster, and only
//! while it holds authority (a window a quorum acknowledged, `warden_cluster::Authority`): an
//! isolated openraft leader keeps calling itself leader, so openraft's word alone never counts.
//! Propose, commit, act: the decisions behind a command are committed through Raft before the
//! command is sent. Every member (witness included) runs an executor that carries out the
//! leader's commands on its own resources, monitors what the leader says runs there, and reports
//! back.
//!
//! Safety rules here (the core's simulation checks the decisions themselves):
//! - An executor accepts commands only of the highest Raft term it has seen: a deposed leader's
//!   late command is refused once the new leader has spoken. Commands for one resource run in
//!   order on its worker, so the new leader's probe answers after anything the old one started.
//! - The lease: the leader renews each member's lease every [`LEASE_EVERY`]. A member whose lease
//!   ran out ([`lease::LEASE`]: no leader with authority reached it) stops every resource it runs, top
//!   down (Pacemaker's `no-quorum-policy=stop`), and refuses starts until a leader renews it.
//!   It then says so in its next `Hello`, and the leader forgets and re-probes it.
//! - A new leader knows nothing of what runs: it restores the committed decisions (every resource
//!   possibly active everywhere) and probes every member that says hello before it acts.
//! - A node lost without a fence confirmation keeps its groups: they wait (failover is the next
//!   milestone); status says why.
//!
//! Messages are JSON over `warden_cluster`'s messenger (mutual TLS, every path); a message can
//! arrive twice (once per path) or not at all. Executors drop a command they already took (same
//! term and operation id, or older); the core ignores results that match nothing in flight.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use openraft::RaftNetworkFactory;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use warden_cluster::pki::TlsIdentity;
use warden_cluster::router::Router;
use warden_cluster::transport::TlsNetwork;
use warden_cluster::{
    raft_id, AuthorityConfig, ClusterNode, ClusterRequest, ClusterResponse, LivenessConfig, Messenger, NodeConfig, Peer, RaftId, Step,
    Wanted,
};
use warden_cluster::{Links, Prober, TypeConfig};

use super::admission::{op_of, Admission, Lead, Verdict};
use super::history::{unix_ms, History};
use super::lease::{self, LEASE, STOP_AHEAD};
use super::reload;
use super::worker::{Job, JobKind, JobResult};
use super::{
    carry_out_local, dispatch, job_event, not_carried_out, note, operator_text, sleep_until, Busy, Node, NodeError, SchedClock, Workers,
    TICK,
};
use crate::api::{self, ClusterStatus, MemberChange, MemberStatus, PathState, Request, Response, StatusReport};
use crate::config::Role;
use crate::scheduler::{
    ActionKind, Command, Decisions, Event, Failure, MonitorOutcome, NodeId, OperatorCommand, Persisted as CorePersisted, ResourceId,
    Scheduler,
};

/// Raft's heartbeat and election timeouts (ms) with the default `lost_after` (1 s); a shorter
/// one shortens them in proportion ([`raft_timing`]). Authority, the restart silence and the
/// lease derive from them. openraft 0.9 followers start an election only after the leader's
/// lease (the maximum timeout) plus a random timeout: 1.2–1.6 s after a leader's death, most
/// of a fail-over's time when the dead node led (700–1400 ms gave 2.1–2.8 s).
const RAFT_HEARTBEAT_MS: u64 = 100;
const RAFT_ELECTION_MIN_MS: u64 = 400;
const RAFT_ELECTION_MAX_MS: u64 = 800;

/// Raft's (heartbeat, election min, election max) in ms for `lost_after`: the defaults at 1 s
/// or more (a longer election would outlast the members' leases); below it the election
/// timeouts in proportion, so that a leader's death is detected about as fast as any member's
/// (Corosync's token likewise sets both), the minimum never under 3 heartbeats. The heartbeat
/// stays: openraft also bounds each AppendEntries (the authority's renewals) by it, and a
/// shorter one would fail on a loaded machine.
fn raft_timing(lost_after: Duration) -> (u64, u64, u64) {
    let scale = lost_after.as_secs_f64().min(1.0);
    let ms = |v: u64| ((v as f64) * scale).round() as u64;
    let min = ms(RAFT_ELECTION_MIN_MS).max(3 * RAFT_HEARTBEAT_MS);
    (RAFT_HEARTBEAT_MS, min, ms(RAFT_ELECTION_MAX_MS).max(min + RAFT_HEARTBEAT_MS))
}
/// Clock-rate error ρ and margin ε assumed for the authority window (those of the leases).
const DRIFT: f64 = lease::RHO;
const MARGIN: Duration = lease::EPS;
/// How often the leader renews every member's lease (and tells it what to monitor), at most
/// (see [`Silence`]).
const LEASE_EVERY: Duration = Duration::from_millis(250);
/// A fence attempt without an answer after this long counts as failed (each device call has
/// its own, shorter timeout: this only catches a task that died).
const FENCE_STUCK: Duration = Duration::from_secs(300);
/// `confirm-down` waits this long beyond the lease after the member's last hello.
const CONFIRM_MARGIN: Duration = Duration::from_secs(2);
/// A member that shut down with nothing running waits at most this long for the leader to
/// record that it left cleanly.
const GONE_WAIT: Duration = Duration::from_secs(3);
/// A member shutting down stops what still runs itself after this long (the leader did not move it).
const SHUTDOWN_FALLBACK: Duration = Duration::from_secs(60);
// The member lease (`LEASE`, `lease::watchdog_lease`) and its rules are in `lease.rs`. It must
// outlast the election of a new leader after the old one dies (about 2 s with the default
// timing above, a restarted voter's silence included; less with a shorter `lost_after`, and the
// watchdog lease with it), or a leader's death would stop groups on healthy members.
/// How long a member waits before it answers a start it refused for want of a lease.
const NO_LEASE_PAUSE: Duration = Duration::from_millis(500);
/// How often a member says hello to the leader (over every path), at most (see [`Silence`]).
const HELLO_EVERY: Duration = Duration::from_millis(250);
/// A member whose hellos the leader it knows has not answered for this long says hello to every
/// member (the leader it knows may be stale). It may exceed a short `lost_after`: the leader
/// then still hears the member's pings (its paths are up), and counts it lost on hellos alone
/// only after 3 s at least (`Silence::wedged`).
const HELLO_UNANSWERED: Duration = Duration::from_millis(750);
/// How often the leader looks for silent members: a member is counted lost within this long of
/// its silence reaching `[cluster] lost_after` (at the hello pace it was up to 250 ms more, a
/// quarter of a fail-over).
const LOST_CHECK: Duration = Duration::from_millis(20);
/// A gap this long between two of those checks is a stall of the leader's own loop (CPU
/// starvation, SIGSTOP): the members' silence is then counted only from its end, since their
/// hellos waited unread meanwhile.
const OWN_STALL: Duration = Duration::from_millis(250);
// The leader counts a member lost after `[cluster] lost_after` (default 1 s) without its hello
// when none of its paths answers the transport's pings either (a path is dead after as long
// without an answer): two signals from two parts of the member, so a stall of its main loop
// alone is not taken for its death. Detection is most of a fail-over's time. See [`Silence`].

/// When the leader counts a member lost, and the paces that make those signals fresh.
#[derive(Debug, Clone, Copy)]
struct Silence {
    /// Silent this long on every path (and no hello): lost.
    lost: Duration,
    /// No hello for this long, whatever its paths say (its transport answers, but the member
    /// itself does not): lost.
    wedged: Duration,
}

impl Silence {
    fn new(lost_after: Duration) -> Self {
        Silence { lost: lost_after, wedged: (lost_after * 3).max(Duration::from_secs(3)) }
    }

    /// The transport's path liveness: a ping at least five times per `lost` (every 200 ms at
    /// most), a path dead after `lost` without an answer.
    fn liveness(self) -> LivenessConfig {
        LivenessConfig { interval: (self.lost / 5).min(Duration::from_millis(200)), dead_after: self.lost }
    }

    /// How often a member says hello: at least four times per `lost`.
    fn hello_every(self) -> Duration {
        (self.lost / 4).min(HELLO_EVERY)
    }

    /// How often the leader renews the leases: as often as members say hello (a renewal
    /// answers the newest hello), so the lease's unrenewed stretches shrink with `lost`.
    fn lease_every(self) -> Duration {
        (self.lost / 4).min(LEASE_EVERY)
    }

    /// A gap this long between two of the leader's loss checks is its own stall
    /// ([`OWN_STALL`] at most, a quarter of `lost`).
    fn own_stall(self) -> Duration {
        (self.lost / 4).min(OWN_STALL)
    }
}
/// A new cluster (no group placed yet) waits this long for every member to say hello before it
/// places anything, so that groups start on their preferred member rather than the first to
/// answer (Pacemaker's dc-deadtime). Ends early when every member has said hello.
const JOIN_WINDOW: Duration = Duration::from_secs(10);
/// A new leader of a running cluster waits this long at most for the members its links reach to
/// say hello before it tells the core who is up: told one at a time, the core would place a
/// group away from an owner that simply had not said hello yet.
const REJOIN_WINDOW: Duration = Duration::from_secs(2);
/// How long a command forwarded to the leader may take.
const FORWARD_WAIT: Duration = Duration::from_secs(10);
/// How long a status request forwarded to the leader may take before this member answers with
/// what it knows itself (the committed decisions): status must answer while the leader is cut
/// off and before a new one is elected, as Pacemaker's `crm_mon` does.
const STATUS_WAIT: Duration = Duration::from_secs(2);
/// Messages queued per peer before sending fails (a peer that does not take them is down).
const OUTBOX: usize = 64;

/// The engine's messages between members.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "kebab-case")]
enum Msg {
    /// Leader → member: carry out a probe, start, stop or recover.
    /// `lead`: the leadership that sent it (see [`Lead`]), as on every leader's message.
    Exec { lead: Lead, command: Command },
    /// Leader → member: the lease renewed, and what to monitor there (resource → group epoch).
    /// `seq` grows with every lease of a leadership: a late copy of an older one is ignored.
    /// `nonce`: the member's newest hello the leader has, which the grant answers: the member
    /// counts its lease from when it sent that hello. `None`: no grant (a member the leader
    /// counts lost), only what to monitor.
    Lease {
        lead: Lead,
        seq: u64,
        monitors: BTreeMap<ResourceId, u64>,
        #[serde(default)]
        nonce: Option<u64>,
    },
    /// Member → leader: alive; `instance` changes at every daemon start, `rejoins` each time the
    /// member's lease ran out (either way the leader forgets what it knew and probes again).
    /// `leaving`: it is shutting down, and its groups move to other members (it is put in
    /// standby, and brought online when it says hello again as a new instance).
    /// `back`: it went to standby by shutting down and has not been brought online since (a
    /// marker in its state directory, so that it works whichever member leads by then).
    /// `gone`: it is exiting, and by its own record nothing of ours runs there any more (its
    /// last hellos; the leader records that it left cleanly, so that no leader fences it).
    Hello {
        instance: String,
        rejoins: u64,
        leaving: bool,
        #[serde(default)]
        back: bool,
        #[serde(default)]
        gone: bool,
        /// Grows with every hello of this daemon; echoed by the leader's lease grant.
        #[serde(default)]
        nonce: u64,
    },
    /// Member → leader: the result of a command or a monitor. `seq` grows with every report or
    /// operator command a member sends (they travel in order): a copy is dropped.
    /// `lead`: the leadership whose command it answers (a monitor: the newest seen).
    Report { lead: Lead, seq: u64, report: Report },
    /// Member → leader: an operator command given on the member; answered with `Reply`.
    Operator { seq: u64, id: u64, command: OperatorCommand, user: String, uid: u32 },
    /// Member → leader: the cluster's status; answered with `Status`.
    StatusRequest { id: u64 },
    /// Member → leader: `warden config apply` given on the member; answered with `Reply`.
    /// `seq` as for `Operator` (the same numbering: a copy over another path is dropped).
    ConfigApply {
        seq: u64,
        id: u64,
        text: String,
        user: String,
        uid: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member: Option<MemberChange>,
    },
    /// Leader → member: the answer to `Operator`.
    Reply { id: u64, response: Response },
    /// Leader → member: the answer to `StatusRequest`.
    Status { id: u64, status: Box<StatusReport> },
}

/// A result as it travels to the leader: a core event without its node (the sender is the node).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Report {
    Probe { resource: ResourceId, op: u64, outcome: MonitorOutcome },
    Monitor { resource: ResourceId, epoch: u64, outcome: MonitorOutcome },
    Done { resource: ResourceId, op: u64, action: ActionKind, result: Result<(), Failure> },
}

impl Report {
    fn from_event(e: Event) -> Option<Self> {
        Some(match e {
            Event::Probe { resource, op, outcome, .. } => Report::Probe { resource, op, outcome },
            Event::Monitor { resource, epoch, outcome, .. } => Report::Monitor { resource, epoch, outcome },
            Event::ActionDone { resource, op, action, result, .. } => Report::Done { resource, op, action, result },
            _ => return None,
        })
    }

    fn into_event(self, node: NodeId) -> Event {
        match self {
            Report::Probe { resource, op, outcome } => Event::Probe { resource, node, op, outcome },
            Report::Monitor { resource, epoch, outcome } => Event::Monitor { resource, node, epoch, outcome },
            Report::Done { resource, op, action, result } => Event::ActionDone { resource, node, op, action, result },
        }
    }
}

impl Decider {
    /// Takes `seq` from member `from` if it is newer than every one taken (else a copy).
    fn take_seq(&mut self, from: &str, seq: u64) -> bool {
        let last = self.seen.entry(from.to_string()).or_default();
        if seq <= *last {
            return false;
        }
        *last = seq;
        true
    }
}

/// Where an operator command's answer goes.
enum ReplyTo {
    Local(oneshot::Sender<Response>),
    Remote { to: String, id: u64 },
}

/// The members as the config names them, with their Raft ids (from their names: see
/// [`warden_cluster::membership`]) and the Raft membership the config asks for.
struct Members {
    me: String,
    my_id: RaftId,
    ids: BTreeMap<String, RaftId>,
    names: BTreeMap<RaftId, String>,
    peers: BTreeMap<String, Peer>,
    roles: BTreeMap<String, Role>,
    wanted: Wanted,
}

impl Members {
    fn from_config(node: &Node) -> Result<Self, NodeError> {
        let wanted = wanted_of(&node.cfg).map_err(|e| NodeError::Setup(format!("{e}: rename one of them")))?;
        let mut m = Members {
            me: node.name.clone(),
            my_id: raft_id(&node.name),
            ids: BTreeMap::new(),
            names: BTreeMap::new(),
            peers: BTreeMap::new(),
            roles: BTreeMap::new(),
            wanted,
        };
        for n in &node.cfg.nodes {
            let name = n.name.get_ref().clone();
            let id = raft_id(&name);
            m.ids.insert(name.clone(), id);
            m.names.insert(id, name.clone());
            m.roles.insert(name, n.role);
        }
        m.peers = m.wanted.members.values().map(|p| (p.name.clone(), p.clone())).collect();
        Ok(m)
    }

    fn others(&self) -> impl Iterator<Item = &String> {
        self.ids.keys().filter(move |n| **n != self.me)
    }
}

/// Sends one peer's messages in order; a message that could not be delivered goes back on
/// `failed` (the leader answers an undelivered command as not carried out).
async fn sender<N: Messenger>(net: N, id: RaftId, peer: Peer, mut rx: mpsc::Receiver<Msg>, failed: mpsc::UnboundedSender<(String, Msg)>) {
    while let Some(m) = rx.recv().await {
        let body = match serde_json::to_value(&m) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a peer message");
                continue;
            }
        };
        if let Err(e) = net.send(id, &peer, body).await {
            tracing::debug!(peer = %peer.name, error = %e, "message not delivered");
            let _ = failed.send((peer.name.clone(), m));
        }
    }
}

/// The outgoing side: one ordered queue per peer, and a loopback for messages to this node.
struct Outbox {
    me: String,
    queues: HashMap<String, mpsc::Sender<Msg>>,
    local: mpsc::UnboundedSender<(String, Msg)>,
    failed: mpsc::UnboundedSender<(String, Msg)>,
}

impl Outbox {
    fn send(&self, to: &str, m: Msg) {
        if to == self.me {
            let _ = self.local.send((self.me.clone(), m));
            return;
        }
        match self.queues.get(to) {
            Some(q) => {
                if let Err(e) = q.try_send(m) {
                    let m = match e {
                        mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
                    };
                    let _ = self.failed.send((to.to_string(), m));
                }
            }
            None => tracing::warn!(to, "message to an unknown member dropped"),
        }
    }
}

/// The leader's part: the decision core for the whole cluster, while this node has authority.
struct Decider {
    lead: Lead,
    sched: Scheduler,
    /// Decisions generations: proposed, and committed through Raft.
    proposed: u64,
    committed: u64,
    last: Option<Decisions>,
    /// Commands waiting for the commit of the decisions behind them.
    held: VecDeque<(u64, Command)>,
    /// Operator commands answered once their decisions are committed.
    waiting: Vec<(u64, ReplyTo, String, Instant)>,
    /// Per member: last hello, its instance and rejoin count as this leader knows them.
    hellos: HashMap<String, (Instant, String, u64)>,
    /// Members the core was told are up.
    up: BTreeSet<String>,
    /// Members put in standby because they shut down: online again when they come back.
    left: BTreeSet<String>,
    /// Per member, the highest report or operator sequence number taken (copies are dropped).
    seen: HashMap<String, u64>,
    /// The last lease sequence number sent.
    lease_seq: u64,
    /// Per member: its newest hello nonce and when it arrived, and the arrival of the hello
    /// this leader's last grant to it answered (the member's lease, counted from that hello's
    /// sending, ends no later than D after it: the base of the lease-based fence).
    /// Keyed by the member's instance too: a restarted daemon numbers its hellos from 1 again.
    nonces: HashMap<String, (String, u64, Instant)>,
    granted: HashMap<String, Instant>,
    /// After a failed commit, decisions are proposed again from then on.
    retry_at: Option<Instant>,
    /// Until then, members that say hello are not yet told to the core.
    joining_until: Option<Instant>,
    /// The cluster had never placed a group when this leader took over (it waits for every
    /// member, not only those its links reach).
    fresh: bool,
    /// Fencing in flight (node → since when), and per node the next attempt after a failure
    /// with its backoff.
    fencing: HashMap<String, Instant>,
    fence_retry: HashMap<String, (Instant, Duration)>,
    /// Members that said they left cleanly, by the instance that said so: its later (or
    /// reordered) hellos are ignored; a new instance is a new start.
    gone: HashMap<String, String>,
    /// When this leadership began (a member's lease from an earlier leader may run until
    /// the lease after it).
    since: Instant,
}

/// Runs this node as a member of its cluster until `stop`: over mutual TLS on its configured
/// addresses, or over the in-memory router it was given ([`super::InMemoryNet`]: several members
/// in one test process, with the router's faults).
pub(super) async fn run(node: Node, stop: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
    let silence = Silence::new(node.cfg.cluster.lost_after());
    let (heartbeat_interval, election_timeout_min, election_timeout_max) = raft_timing(silence.lost);
    if let Some(super::InMemoryNet(router)) = node.in_memory.clone() {
        let net = router.network(raft_id(&node.name));
        return member(node, stop, net, Listen::Memory(router)).await;
    }
    let pki_dir = node.pki_dir();
    let identity = TlsIdentity::load(&pki_dir, &node.name)
        .map(Arc::new)
        .map_err(|e| NodeError::Setup(format!("cluster credentials in {}: {e} (made by `warden cluster init`)", pki_dir.display())))?;
    // Announced at every handshake: a peer with other timing is refused (see `Hello::timing`).
    let timing = format!("raft {heartbeat_interval}/{election_timeout_min}-{election_timeout_max} ms");
    let net = TlsNetwork::with_timing(&identity, &node.cfg.cluster.name, &timing, silence.liveness())
        .map_err(|e| NodeError::Setup(format!("peer transport: {e}")))?;
    member(node, stop, net, Listen::Tls { identity, timing }).await
}

/// What a member reaches its peers through.
trait PeerNet: RaftNetworkFactory<TypeConfig> + Prober + Messenger {}
impl<T: RaftNetworkFactory<TypeConfig> + Prober + Messenger> PeerNet for T {}

/// How a member is reached: listeners on its addresses, or a place on the router.
enum Listen {
    Tls { identity: Arc<TlsIdentity>, timing: String },
    Memory(Router),
}

/// Which peers (and paths) this member reaches now.
fn links_of(net: &impl Prober) -> Links {
    net.link_table().current()
}

async fn member<N: PeerNet>(
    node: Node,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    net: N,
    listen: Listen,
) -> Result<(), NodeError> {
    let members = Members::from_config(&node)?;
    let my_role = members.roles[&members.me];
    let runner = my_role == Role::Node;
    let mut history = History::open(node.state_dir.join("events.jsonl"));
    for problem in history.problems().to_vec() {
        tracing::warn!("event history: {problem}");
        note(&mut history, "node", &node.name, format!("event history: {problem}"));
    }
    let clock = SchedClock::new();
    let instance = format!("{}-{}", super::boot_id(), unix_ms(SystemTime::now()));
    // Present while this member is in standby because it shut down (see `Msg::Hello::back`).
    let left_marker = node.state_dir.join("left-standby");
    let silence = Silence::new(node.cfg.cluster.lost_after());
    let (heartbeat_interval, election_timeout_min, election_timeout_max) = raft_timing(silence.lost);
    let raft_config = openraft::Config {
        cluster_name: node.cfg.cluster.name.clone(),
        heartbeat_interval,
        election_timeout_min,
        election_timeout_max,
        ..Default::default()
    };
    let raft_config = Arc::new(raft_config.validate().map_err(|e| NodeError::Setup(format!("raft timing: {e}")))?);
    let authority = AuthorityConfig::for_raft(&raft_config, DRIFT, MARGIN).expect("the constants give a window");
    let cluster_dir = node.state_dir.join("cluster");
    let mut cluster =
        ClusterNode::start(&NodeConfig { id: members.my_id, dir: cluster_dir.clone(), raft: raft_config, authority }, net.clone())
            .await
            .map_err(|e| NodeError::Setup(format!("cluster store in {}: {e}", cluster_dir.display())))?;
    let tasks = tokio_util::task::TaskTracker::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    // Listen on this node's own addresses (one per path).
    let my_peer = members.peers[&members.me].clone();
    match &listen {
        Listen::Memory(router) => router.register(members.my_id, cluster.inbound()),
        Listen::Tls { .. } if my_peer.addresses.is_empty() => {
            return Err(NodeError::Setup(format!(
                "node `{}` has no addresses: a cluster member needs at least one (nodes.addresses)",
                node.name
            )))
        }
        Listen::Tls { identity, timing } => {
            for addr in &my_peer.addresses {
                let l = tokio::net::TcpListener::bind(addr.as_str()).await.map_err(|source| NodeError::Io {
                    what: "cannot listen for peers on",
                    path: addr.into(),
                    source,
                })?;
                let (identity, name, timing, inbound, cancel) =
                    (identity.clone(), node.cfg.cluster.name.clone(), timing.clone(), cluster.inbound(), cancel.clone());
                tasks.spawn(async move {
                    if let Err(e) = warden_cluster::transport::serve(l, &identity, name, timing, inbound, cancel).await {
                        tracing::error!(error = %e, "peer listener stopped");
                    }
                });
            }
        }
    }
    // Form the cluster from the config: its voters (the leader then adds the learners, see
    // `reconcile_tick`). Every voter calls this with the same voters, which openraft allows; a
    // member that already has a log refuses it harmlessly. A member added to a running cluster
    // (`--join`) must not: its own one-member log would conflict with the cluster's.
    let formed = cluster.metrics().membership_config.membership().voter_ids().next().is_some();
    if formed {
        let known: BTreeSet<RaftId> = cluster.metrics().membership_config.membership().nodes().map(|(id, _)| *id).collect();
        if !known.iter().any(|id| members.names.contains_key(id)) {
            return Err(NodeError::Setup(format!(
                "the cluster store in {} names none of the config's members (it was formed by another cluster, or by a \
                 Warden that numbered members by their place in the config): move it away to form the cluster again",
                cluster_dir.display()
            )));
        }
    }
    // Added to a running cluster and not yet in it: a config other than this member's own is
    // the log arriving, not a reason to refuse.
    let joining = node.join && !formed;
    let mut join_noted = false;
    if joining {
        cluster_note(
            &mut history,
            &node.name,
            "joining a running cluster (--join): waiting for its leader to add this member (`warden node add`)".into(),
        );
    } else if !formed && members.wanted.voters.contains(&members.my_id) {
        let voters: BTreeMap<RaftId, Peer> =
            members.wanted.members.iter().filter(|(id, _)| members.wanted.voters.contains(id)).map(|(id, p)| (*id, p.clone())).collect();
        if let Err(e) = cluster.initialize(voters).await {
            tracing::debug!(error = %e, "cluster already formed");
        }
    }

    // Messages in: the transport's bounded queue, decoded; and this node's own, by loopback.
    let (inbox_tx, mut inbox) = mpsc::unbounded_channel::<(String, Msg)>();
    if let Some(mut rx) = cluster.take_messages() {
        let inbox_tx = inbox_tx.clone();
        let cancel = cancel.clone();
        // A peer with the cluster's certificate that this config does not list (a member added
        // by a config this daemon has not reloaded yet, or one removed) is not heard.
        let known: BTreeSet<String> = members.ids.keys().cloned().collect();
        tasks.spawn(async move {
            let mut bad = 0u64;
            while let Some(Some(env)) = cancel.run_until_cancelled(rx.recv()).await {
                if !known.contains(&env.from) {
                    continue;
                }
                match serde_json::from_value::<Msg>(env.body) {
                    Ok(m) => {
                        let _ = inbox_tx.send((env.from, m));
                    }
                    Err(e) => {
                        bad += 1;
                        if bad.is_power_of_two() {
                            tracing::warn!(from = %env.from, error = %e, count = bad, "malformed peer message ignored");
                        }
                    }
                }
            }
        });
    }
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<(String, Msg)>();
    let mut queues = HashMap::new();
    for name in members.others() {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let (net, id, peer, failed) = (net.clone(), members.ids[name], members.peers[name].clone(), failed_tx.clone());
        tasks.spawn(sender(net, id, peer, rx, failed));
        queues.insert(name.clone(), tx);
    }
    let outbox = Outbox { me: members.me.clone(), queues, local: inbox_tx.clone(), failed: failed_tx };

    // The executor: this node's resources (a witness has none).
    let cgroups = if runner { node.detect_cgroups(&mut history).await } else { None };
    // With watchdog fencing, a supervisor kills this member's resources when its lease runs out.
    let watchdog_fencing = node.cfg.cluster.watchdog_fencing;
    let lease_d = if watchdog_fencing { lease::watchdog_lease(silence.lost) } else { LEASE };
    let stop_ahead = if watchdog_fencing { STOP_AHEAD } else { Duration::ZERO };
    let mut watchdog = match (&cgroups, runner && watchdog_fencing) {
        (_, false) => None,
        (None, true) => {
            return Err(NodeError::Setup(
                "watchdog_fencing needs a writable cgroup v2 hierarchy (the watchdog kills this member's resources by cgroup); \
                 none is usable here"
                    .into(),
            ))
        }
        (Some(cg), true) => {
            let device = node.cfg.cluster.watchdog_device.as_ref().map(|d| d.get_ref().as_path());
            let (w, new) = super::watchdog::Watchdog::attach(&node.state_dir, cg.base(), releases(&node), device)
                .map_err(|e| NodeError::Setup(format!("watchdog: {e}")))?;
            if new {
                note(
                    &mut history,
                    "node",
                    &node.name,
                    "watchdog started; no watchdog survived an earlier daemon, so whatever it left running was stopped".into(),
                );
            }
            Some(w)
        }
    };
    let journal_dir = node.state_dir.join("actions");
    std::fs::create_dir_all(&journal_dir).map_err(|source| NodeError::Io {
        what: "cannot create the action journal directory",
        path: journal_dir.clone(),
        source,
    })?;
    if runner {
        node.settle_interrupted_actions(&journal_dir, cgroups.as_ref(), &mut history).await;
    }
    let (results_tx, mut results_rx) = mpsc::unbounded_channel::<JobResult>();
    let (watch_tx, mut watch_rx) = mpsc::unbounded_channel::<super::worker::WatchFired>();
    let Workers { senders: workers, intervals, plugin_of } = if runner {
        node.spawn_workers(&journal_dir, cgroups.as_ref(), &tasks, &results_tx, &watch_tx)
    } else {
        Workers { senders: HashMap::new(), intervals: HashMap::new(), plugin_of: HashMap::new() }
    };
    let (mut api_rx, _owned_socket) = node.open_control(&cancel, &tasks, history.feed.clone()).await?;
    let (mut metrics_rx, metrics_bound) = node.open_metrics(&cancel, &tasks).await?;
    let metrics_rx = &mut metrics_rx.rx;
    let mut metrics = api::metrics::Metrics::default();
    node.spawn_alerts(&history, &cancel, &tasks);

    // The proposer: commits the leader's decisions in order, latest first when several queue.
    let (propose_tx, mut propose_rx) = mpsc::unbounded_channel::<(Lead, u64, Decisions)>();
    let (commit_tx, mut commit_rx) = mpsc::unbounded_channel::<(Lead, u64, Result<(), String>)>();
    {
        let raft = cluster.raft().clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            while let Some(Some(mut next)) = cancel.run_until_cancelled(propose_rx.recv()).await {
                while let Ok(later) = propose_rx.try_recv() {
                    next = later;
                }
                let (lead, generation, decisions) = next;
                // A proposal of an earlier term of ours must not overwrite what this node, leader
                // again in a later term, restored and decides now.
                if raft.metrics().borrow().current_term != lead.term {
                    let _ = commit_tx.send((lead, generation, Err("leadership changed before it was proposed".into())));
                    continue;
                }
                let r = match raft.client_write(ClusterRequest::SetDecisions { config_version: 0, decisions }).await {
                    Ok(w) if matches!(w.data, ClusterResponse::Applied { .. }) => Ok(()),
                    Ok(w) => Err(format!("refused: {:?}", w.data)),
                    Err(e) => Err(e.to_string()),
                };
                let _ = commit_tx.send((lead, generation, r));
            }
        });
    }

    let model = {
        let mut model = node.cfg.model();
        for (name, r) in model.resources.iter_mut() {
            let rc = node.cfg.resource(name).expect("validated");
            r.local_recovery = node.plugins[rc.plugin.get_ref()].metadata.local_recovery;
        }
        model
    };
    let me = NodeId::from(node.name.as_str());
    let now_ms = || clock.now();

    note(
        &mut history,
        "node",
        &node.name,
        format!(
            "member started ({}; {} members: {}); waiting for a leader",
            if runner { "runs resources" } else { "witness: votes, runs nothing" },
            members.ids.len(),
            members.ids.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    );
    tracing::info!(node = %node.name, socket = %node.socket.display(), "member running");

    // Executor state.
    let mut busy = Busy::default();
    let mut schedule = super::schedule::MonitorSchedule::new(intervals, unix_ms(SystemTime::now()));
    // The newest leadership any leader spoke to us in: commands of older ones are refused.
    let mut admission = Admission::default();
    if runner {
        admission.started(Instant::now(), lease_d);
    }
    // The lease as the workers see it: a start queued behind a slow call checks it again
    // before it begins (published at every turn of the loop; the deadline itself is absolute).
    let (lease_tx, lease_rx) = tokio::sync::watch::channel(admission.view());
    // What the leader says to monitor here (resource → epoch), and until when it holds.
    let mut monitors: BTreeMap<ResourceId, u64> = BTreeMap::new();
    // What may run here as this member knows it: everything at start (a previous daemon may have
    // left it running), then what its own probes, monitors and actions show. A lost lease or a
    // shutdown stops these, whatever the leader last listed.
    let mut maybe_running: BTreeSet<ResourceId> =
        if runner { model.resources.keys().filter(|r| !model.resources[*r].unmanaged).cloned().collect() } else { BTreeSet::new() };
    let mut rejoins = 0u64;
    // Hellos sent (nonce, when): a lease counts from the hello its grant answers. Numbered from
    // the clock, so a grant answering an earlier daemon's hello never matches one of ours (its
    // lease would be counted from the wrong send).
    let mut hello_nonce = unix_ms(SystemTime::now()).saturating_mul(1000);
    let mut hellos_sent: VecDeque<(u64, Instant)> = VecDeque::new();
    // When a leader last answered one of our hellos (a grant echoing its number).
    let mut last_answer: Option<Instant> = None;
    // The stops of a lost lease, one at a time, top down.
    let mut self_stop: VecDeque<ResourceId> = VecDeque::new();
    let mut self_stopping: Option<ResourceId> = None;
    // Requests forwarded to the leader, waiting for its answer.
    let mut next_id = 0u64;
    // Reports and forwarded operator commands are numbered from the clock (so numbers keep
    // growing across restarts of this member): the leader drops a copy it already took.
    let mut out_seq = unix_ms(SystemTime::now()).saturating_mul(1000);
    let mut forwarded: HashMap<u64, (oneshot::Sender<Response>, Instant)> = HashMap::new();
    let mut forwarded_status: HashMap<u64, (oneshot::Sender<Response>, Instant)> = HashMap::new();

    let mut decider: Option<Decider> = None;
    // The newest leadership whose commands reached this member, and the member that leads it:
    // where the results of its commands go.
    let mut commander: Option<(Lead, String)> = None;
    let mut signals = Box::pin(stop);
    let mut shutting_down = false;
    let mut tick = tokio::time::interval(TICK);
    let mut lease_tick = tokio::time::interval(silence.lease_every());
    let mut hello_tick = tokio::time::interval(silence.hello_every());
    // The leader the last hello tick was reset for.
    let mut hello_leader: Option<String> = None;
    let mut lost_tick = tokio::time::interval(LOST_CHECK);
    // The leader walks Raft's membership to the committed config's, one step a turn (see
    // `Control::reconcile`); a step that must wait (a voter not healthy) is tried again.
    let mut reconcile_tick = tokio::time::interval(RECONCILE_EVERY);
    reconcile_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (step_tx, mut step_rx) = mpsc::unbounded_channel::<Result<Option<String>, String>>();
    let mut reconciling = false;
    let mut membership_waits: Option<String> = None;
    // The membership the committed config asks for (parsed again when the committed config
    // changes): a member removed while it leads must hand over by itself.
    let mut wanted: (Option<String>, Wanted) = (None, members.wanted.clone());
    // This member was removed from the cluster's config (`warden node remove`): it leaves once
    // it no longer votes.
    let mut removed = false;
    // When the leader last looked for silent members, and when its own last stall ended.
    let (mut last_lost_check, mut resumed) = (Instant::now(), Instant::now());
    lost_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut raft_metrics = cluster.raft().metrics();
    // The cluster runs one config: its hash is committed by the first leader, and a member whose
    // file differs says so and refuses to run (it neither says hello nor carries out commands).
    let config_hash = blake3::hash(node.cfg.text().as_bytes()).to_hex().to_string();
    let mut committed_rx = cluster.state();
    let mut config_ok = false;
    // When (and in which term) this node, leading, last proposed its config's hash.
    let mut config_proposed: Option<(u64, Instant)> = None;
    let mut refused: Option<String> = None;
    let mut pending: Vec<Command> = Vec::new();
    let mut shutdown_fallback: Option<Instant> = None;
    // Since when this member, shutting down, has nothing left running and says it is gone.
    let mut gone_since: Option<Instant> = None;
    // The barrier this node, leading, commits before deciding: (term, its index once committed,
    // when proposed).
    let mut barrier: Option<(u64, Option<u64>, Instant)> = None;
    let (barrier_tx, mut barrier_rx) = mpsc::unbounded_channel::<(u64, Result<u64, String>)>();
    // `config apply` answers, sent once the new config is committed (or refused).
    let (apply_tx, mut apply_rx) = mpsc::unbounded_channel::<(ReplyTo, Response)>();
    // This process ran under the committed config (so a new committed config is one applied
    // while it ran: it reloads), and when it reloads (the new config's hash, when).
    let mut ran_committed = false;
    // (`None` due: the reload failed; this member runs the old config until restarted.)
    let mut reload: Option<(String, Option<Instant>)> = None;
    // The leader's commands being carried out here (monitors not counted: one cut short by a
    // reload is simply run again).
    let mut actions_in_flight: usize = 0;
    // Fence devices: any member may lead, so every member can drive them.
    let fence_devices: Vec<FenceDevice> = node
        .cfg
        .fencing
        .iter()
        .map(|f| {
            let plugin = node.plugins[f.plugin.get_ref()].clone();
            FenceDevice {
                name: f.name.get_ref().clone(),
                params: plugin.metadata.resolve_params(&f.params).unwrap_or_default(),
                plugin,
                grants: f.grants.clone(),
                nodes: f.nodes.iter().map(|n| n.get_ref().clone()).collect(),
            }
        })
        .collect();
    let (fence_tx, mut fence_rx) = mpsc::unbounded_channel::<(Lead, String, Result<String, String>)>();

    loop {
        lease_tx.send_if_modified(|v| std::mem::replace(v, admission.view()) != *v);
        // The committed config against ours.
        {
            let committed = committed_rx.borrow().config_hash.clone();
            // The committed text (cloned and checked only when it is not ours: the loop turns
            // many times a second and the text can be large).
            let applied = |hash: &str| {
                let text = committed_rx.borrow().config_text.clone();
                text.filter(|t| blake3::hash(t.as_bytes()).to_hex().as_str() == hash)
            };
            match committed {
                Some(h) if h == config_hash => {
                    config_ok = true;
                    ran_committed = true;
                }
                // Removed from the cluster: no reload (the new config has no place for this
                // member); it leaves once it no longer votes.
                Some(h) if ran_committed && !removed && reload.is_none() && applied(&h).is_some_and(|t| !lists(&node, &t, &members.me)) => {
                    removed = true;
                    cluster_note(
                        &mut history,
                        &node.name,
                        "this member was removed from the cluster (`warden node remove`): it leaves once it no longer votes".into(),
                    );
                }
                // A config applied while this member ran the one before: it reloads, in turn.
                Some(h) if ran_committed && !removed && reload.is_none() && applied(&h).is_some() => {
                    let leader = current_leader(&raft_metrics, &members);
                    let wait = reload::FIRST + reload::STAGGER * reload::slot(&members.me, leader.as_deref(), members.ids.keys());
                    cluster_note(
                        &mut history,
                        &node.name,
                        format!(
                            "config {} applied to the cluster: this member reloads it in {} s (its daemon restarts in place; what runs is adopted)",
                            &h[..h.len().min(12)],
                            wait.as_secs()
                        ),
                    );
                    reload = Some((h, Some(Instant::now() + wait)));
                }
                Some(_) if ran_committed => {}
                // Added to a running cluster: the log arrives in parts, the config that adds
                // this member last.
                Some(_) if joining && !join_noted => {
                    join_noted = true;
                    cluster_note(
                        &mut history,
                        &node.name,
                        "joining: waiting for the cluster's log to reach the config that adds this member".into(),
                    );
                }
                Some(_) if joining => {}
                Some(h) if refused.is_none() => {
                    config_ok = false;
                    // The cluster's config, when it was applied with `config apply`, is kept
                    // beside the state for the operator to install.
                    let copy = node.state_dir.join("committed-config.toml");
                    let pointer = match applied(&h).as_deref().map(|t| warden_store::state::replace_durably(&copy, t.as_bytes())) {
                        Some(Ok(())) => format!(
                            "; the cluster's config (applied with `warden config apply`) is in {}: install it as {} and start again",
                            copy.display(),
                            node.cfg.source.display()
                        ),
                        _ => "; give every member the same file".into(),
                    };
                    let msg = format!(
                        "this member's config file {} (hash {}) differs from the config the cluster runs (hash {}): it refuses to run{pointer}",
                        node.cfg.source.display(),
                        &config_hash[..12],
                        &h[..h.len().min(12)]
                    );
                    tracing::error!("{msg}");
                    cluster_note(&mut history, &node.name, msg.clone());
                    refused = Some(msg);
                }
                _ => {}
            }
        }
        // A config applied meanwhile is reloaded in this member's turn, once no action is in
        // flight (a restart would cut a JP1 start short; every action ends by its timeout) and
        // the answers it waits for from the leader are in (the `config apply` that caused this
        // may be one of them, its caller still connected).
        if let Some((h, Some(due))) = reload.clone() {
            let now = Instant::now();
            if !shutting_down && now >= due && actions_in_flight == 0 && forwarded.is_empty() {
                let text = committed_rx.borrow().config_text.clone().unwrap_or_default();
                let why = match reload::write_config(&node.cfg.source, &text) {
                    Ok(()) => {
                        cluster_note(
                            &mut history,
                            &node.name,
                            format!("config {} written to {}: restarting in place", &h[..h.len().min(12)], node.cfg.source.display()),
                        );
                        // The history's writer gets a moment to put that on disk.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        format!("cannot restart in place: {}", reload::reexec())
                    }
                    Err(e) => format!("cannot write the applied config: {e}"),
                };
                let msg = format!("{why}; this member runs the old config until it is restarted with the new file");
                tracing::error!("{msg}");
                cluster_note(&mut history, &node.name, msg);
                reload = Some((h, None));
            }
        }
        // Online again (by a leader that saw us back, or the operator): the marker has done its job.
        if !shutting_down && left_marker.exists() && committed_rx.borrow().decisions.nodes.get(&me).is_some_and(|s| !s.standby) {
            let _ = std::fs::remove_file(&left_marker);
        }
        if refused.is_some() && maybe_running.is_empty() && busy.is_empty() {
            break;
        }
        // Removed: it exits once it no longer votes (its vote may still be needed for the
        // change that removes it) and nothing runs here (the leader refused the removal
        // otherwise). Its last hello says it left cleanly, for a leader still on the old config.
        // (Raft's membership without it as a voter committed, not only appended: a leader that
        // removes itself sees the new membership as soon as it appends it, and leaving before
        // a quorum of the new voters holds it could leave them a joint membership naming a
        // voter that is gone, which no later change may touch while that voter is down. The
        // committed one is what this member applied: a member removed as a voter stays a
        // learner until then, so it learns the commit.)
        if removed
            && maybe_running.is_empty()
            && busy.is_empty()
            && !raft_metrics.borrow().membership_config.membership().voter_ids().any(|id| id == members.my_id)
            && !cluster.committed_voters().contains(&members.my_id)
        {
            cluster_note(&mut history, &node.name, "removed from the cluster and no longer a voter: this daemon exits".into());
            if let Some(leader) = current_leader(&raft_metrics, &members) {
                let nonce = next_hello(&mut hello_nonce, &mut hellos_sent);
                outbox.send(&leader, Msg::Hello { instance: instance.clone(), rejoins, leaving: true, back: false, gone: true, nonce });
            }
            if let Some(w) = watchdog.take() {
                w.release();
            }
            break;
        }
        // Leadership: the decider lives while this node leads its term; it acts only with
        // authority (checked again before every command goes out).
        {
            let (state, leader_id, current_term) = {
                let m = raft_metrics.borrow();
                (m.state, m.current_leader, m.current_term)
            };
            admission.saw_term(current_term);
            let leads = state == openraft::ServerState::Leader && leader_id == Some(members.my_id);
            if decider.as_ref().is_some_and(|d| !leads || d.lead.term != current_term) {
                let d = decider.take().expect("checked");
                barrier = None;
                cluster_note(&mut history, &node.name, format!("no longer the leader (term {}); the new leader decides", d.lead.term));
                for (_, reply, text, _) in d.waiting {
                    answer(
                        &outbox,
                        reply,
                        Response::Error {
                            message: format!(
                                "leadership lost before `{text}` was committed: its outcome is unknown; check `warden status`"
                            ),
                        },
                    );
                }
                pending.clear();
            }
            if decider.is_none()
                && leads
                && !config_ok
                && config_proposed.is_none_or(|(t, at)| t != current_term || at.elapsed() > Duration::from_secs(2))
                && refused.is_none()
                && committed_rx.borrow().config_hash.is_none()
            {
                // The first leader records the cluster's config (again after 2 s if it did not
                // get through).
                config_proposed = Some((current_term, Instant::now()));
                let (raft, hash) = (cluster.raft().clone(), config_hash.clone());
                tasks.spawn(async move {
                    if let Err(e) = raft.client_write(ClusterRequest::SetConfigHash { hash }).await {
                        tracing::warn!(error = %e, "the config's hash was not committed");
                    }
                });
            }

            // Before deciding, a leader commits a barrier of its own: once it is applied,
            // everything committed before is in the state it restores, and its index makes this
            // leadership newer than any earlier one, also than this node's own before a restart
            // (openraft restores a restarted leader in its term without a new entry of its own).
            if decider.is_none()
                && leads
                && config_ok
                && barrier.is_none_or(|(t, index, at)| t != current_term || (index.is_none() && at.elapsed() > Duration::from_secs(2)))
            {
                barrier = Some((current_term, None, Instant::now()));
                let (raft, tx) = (cluster.raft().clone(), barrier_tx.clone());
                tasks.spawn(async move {
                    let r = raft.client_write(ClusterRequest::Barrier).await.map(|w| w.log_id.index).map_err(|e| e.to_string());
                    let _ = tx.send((current_term, r));
                });
            }
            let lead = barrier.and_then(|(term, index, _)| index.filter(|_| term == current_term).map(|index| Lead { term, index }));

            // A member shutting down may lead too (else nobody would renew the others' leases
            // until it is gone); it moves its own groups away like any leaving member.
            if let Some(lead) = lead.filter(|_| decider.is_none() && leads && config_ok && cluster.authority().is_some()) {
                let committed = cluster.state().borrow().clone();
                let committed_fresh = committed.decisions.groups.values().all(|g| g.owner.is_none());
                let mut sched = Scheduler::new(model.clone());
                sched.restore(&CorePersisted { decisions: committed.decisions.clone(), restarts: Default::default() }, 0);
                note(
                    &mut history,
                    "cluster",
                    &node.name,
                    format!("leader in term {current_term} with a quorum: restoring the committed decisions and probing every member"),
                );
                decider = Some(Decider {
                    lead,
                    sched,
                    proposed: 0,
                    committed: 0,
                    last: Some(committed.decisions),
                    held: VecDeque::new(),
                    waiting: Vec::new(),
                    hellos: HashMap::new(),
                    up: BTreeSet::new(),
                    left: BTreeSet::new(),
                    seen: HashMap::new(),
                    lease_seq: 0,
                    nonces: HashMap::new(),
                    granted: HashMap::new(),
                    retry_at: None,
                    // A cluster that never placed a group is forming: wait for its members.
                    joining_until: Some(Instant::now() + if committed_fresh { JOIN_WINDOW } else { REJOIN_WINDOW }),
                    fresh: committed_fresh,
                    fencing: HashMap::new(),
                    fence_retry: HashMap::new(),
                    gone: HashMap::new(),
                    since: Instant::now(),
                });
            }
        }

        // Propose, commit, act (the leader only).
        if let Some(d) = decider.as_mut() {
            let dec = d.sched.decisions();
            if d.last.as_ref() != Some(&dec) && d.retry_at.is_none_or(|t| Instant::now() >= t) {
                d.retry_at = None;
                d.proposed += 1;
                let _ = propose_tx.send((d.lead, d.proposed, dec.clone()));
                d.last = Some(dec);
            }
            let authority = cluster.authority().is_some();
            for c in std::mem::take(&mut pending) {
                match c {
                    Command::Note { subject, message } => {
                        tracing::info!(subject = %subject, "{message}");
                        note(&mut history, "decision", &subject, message);
                    }
                    // Driven below from the committed `needs_fence` (so also after a new leader
                    // took over), once it is safe to judge the node lost.
                    // (A member told up a moment later, as members are one at a time when a
                    // window ends, is no case for fencing: not noted.)
                    Command::Fence { node: n } => {
                        if !d.up.contains(n.as_str()) {
                            note(&mut history, "decision", &n, "fencing required".into());
                        }
                    }
                    c if d.proposed > d.committed || !d.held.is_empty() || !authority => d.held.push_back((d.proposed, c)),
                    c => route(&outbox, d.lead, c),
                }
            }
            // Fence who needs it: with authority, after the join window (a member that has not
            // said hello yet is not lost), never a member that says hello or that the transport
            // reaches, one attempt at a time per node, again after a failure with backoff.
            if authority && d.joining_until.is_none() && !fence_devices.is_empty() {
                let now = Instant::now();
                let wanted: Vec<String> = d
                    .sched
                    .state()
                    .decisions
                    .nodes
                    .iter()
                    .filter(|(n, s)| s.needs_fence && fence_devices.iter().any(|f| f.covers(n.as_str())))
                    .map(|(n, _)| n.to_string())
                    .collect();
                d.fence_retry.retain(|n, _| wanted.contains(n));
                let links = if wanted.is_empty() { Default::default() } else { links_of(&net) };
                for n in wanted {
                    // An attempt that never answered (its task died): counted as failed.
                    if d.fencing.get(&n).is_some_and(|t| t.elapsed() > FENCE_STUCK) {
                        d.fencing.remove(&n);
                        cluster_note(&mut history, &n, format!("fencing gave no answer within {FENCE_STUCK:?}: tried again"));
                    }
                    let reachable = links.get(n.as_str()).is_some_and(|l| l.up);
                    let due = d.fence_retry.get(&n).is_none_or(|(at, _)| now >= *at);
                    // A node that answers is fenced only for a failed stop (Pacemaker's
                    // on-fail=fence for stop): what it may still run cannot be stopped any other
                    // way. One merely cut off (it still answers the transport) is left to its lease.
                    let stop_failed = d
                        .sched
                        .state()
                        .observations
                        .resources
                        .values()
                        .any(|r| r.on.get(&NodeId::from(n.as_str())) == Some(&crate::scheduler::Activity::StopFailed));
                    // This member itself (a stop failed here while it leads): no other member
                    // acts while it leads, so it fences itself with the device, once that it
                    // needs fencing is committed (the member that leads after it confirms it).
                    let me_now = n == members.me && stop_failed && d.committed >= d.proposed;
                    if (n == members.me && !me_now)
                        || d.fencing.contains_key(&n)
                        || !due
                        || ((d.up.contains(&n) || reachable) && !stop_failed)
                    {
                        continue;
                    }
                    d.fencing.insert(n.clone(), now);
                    let why = if me_now {
                        "a stop failed on this member, which leads: it fences itself with its fence device (the member that leads next confirms it)"
                    } else if stop_failed {
                        "a stop failed there: fencing it"
                    } else {
                        "lost while it may run resources: fencing it"
                    };
                    cluster_note(&mut history, &n, why.into());
                    let (devices, me, tx, lead) = (fence_devices.clone(), me.to_string(), fence_tx.clone(), d.lead);
                    tasks.spawn(async move {
                        let r = fence_node(&devices, &me, &n).await;
                        let _ = tx.send((lead, n, r));
                    });
                }
            }
            // Watchdog fencing: a member that needs fencing (lost, or back but not yet fenced, or
            // whose stop failed) gets no lease renewal, and counts as fenced once its lease has
            // provably run out (from the hello this leader's last grant to it answered, or from
            // this leadership's start): its watchdog has killed what it ran by then.
            if authority && d.joining_until.is_none() && watchdog_fencing {
                let now = Instant::now();
                let expired: Vec<NodeId> = d
                    .sched
                    .state()
                    .decisions
                    .nodes
                    .iter()
                    .filter(|(n, s)| s.needs_fence && n.as_str() != members.me)
                    .filter(|(n, _)| lease::fenced_by_lease(now, d.granted.get(n.as_str()).copied(), d.since, lease_d))
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in expired {
                    let granted = d
                        .granted
                        .get(n.as_str())
                        .map_or("before this leader".into(), |t| format!("{:.1} s ago", t.elapsed().as_secs_f64()));
                    cluster_note(
                        &mut history,
                        &n,
                        format!("self-fenced: its lease (last granted {granted}) has run out and its watchdog killed what it ran: its groups may run elsewhere"),
                    );
                    d.fence_retry.remove(n.as_str());
                    pending.extend(d.sched.handle(now_ms(), Event::Fenced(n)));
                }
            }
            if authority {
                while d.held.front().is_some_and(|(g, _)| *g <= d.committed) {
                    let (_, c) = d.held.pop_front().expect("checked");
                    route(&outbox, d.lead, c);
                }
            }
        }

        // Monitor schedule follows what the leader says runs here.
        schedule.follow(monitors.keys(), &busy);
        // Shutdown ends when nothing runs here as far as the leader knows (it moved our groups
        // away) or our own stops are done, and no call is in flight.
        // Before it exits, a member that runs resources says so until the leader has recorded
        // that it left cleanly (then no new leader fences it), for at most GONE_WAIT.
        if shutting_down && busy.is_empty() && self_stop.is_empty() && self_stopping.is_none() && maybe_running.is_empty() {
            let since = *gone_since.get_or_insert_with(Instant::now);
            let recorded = committed_rx.borrow().decisions.nodes.get(&me).is_some_and(|s| s.left);
            if !runner || recorded || since.elapsed() >= GONE_WAIT || current_leader(&raft_metrics, &members).is_none() {
                if runner && !recorded {
                    tracing::warn!("the leader did not record that this member left cleanly: a new leader may fence it");
                }
                note(&mut history, "node", &node.name, "member stopped".into());
                // Nothing of ours runs here: the watchdog has nothing left to guard.
                if let Some(w) = watchdog.take() {
                    w.release();
                }
                break;
            }
        }
        let due = schedule.due();

        tokio::select! {
            Some(r) = results_rx.recv() => {
                busy.done(&r.resource);
                if !matches!(r.kind, JobKind::Monitor) {
                    actions_in_flight = actions_in_flight.saturating_sub(1);
                }
                let plugin = plugin_of.get(&r.resource).cloned().unwrap_or_default();
                let event = job_event(&me, &r, &plugin, &mut metrics, &mut history);
                note_running(&mut maybe_running, &event);
                schedule.returned(&r.resource, matches!(r.kind, JobKind::Monitor), monitors.contains_key(r.resource.as_str()));
                if self_stopping.as_deref() == Some(r.resource.as_str()) {
                    self_stopping = None;
                    if matches!(&event, Event::ActionDone { result: Err(_), .. }) {
                        // A dependency is never stopped under a dependent that may still run.
                        let msg = format!("lease lost: could NOT stop `{}`; what it needs is left running", r.resource);
                        tracing::error!("{msg}");
                        note(&mut history, "node", &node.name, msg);
                        let group = &model.resources[r.resource.as_str()].group;
                        self_stop.retain(|x| model.resources[x].group != *group);
                    }
                    next_self_stop(&mut self_stop, &mut self_stopping, &workers, &mut busy, &results_tx);
                }
                // Results go to the leader, with the leadership of the command they answer (a
                // monitor: the newest one); our own stops answer no command.
                let lead = admission.report_lead(&event);
                if let (Some(report), Some(lead)) = (Report::from_event(event), lead) {
                    // To the member that gave the command: Raft's view here may still name an
                    // older leader (this member itself, after a cut), and a result the leader
                    // never gets leaves its command in flight for good.
                    let to = commander.as_ref().filter(|(l, _)| *l == lead).map(|(_, n)| n.clone());
                    if let Some(leader) = to.or_else(|| current_leader(&raft_metrics, &members)) {
                        out_seq += 1;
                        outbox.send(&leader, Msg::Report { lead, seq: out_seq, report });
                    }
                }
            }
            Some(f) = watch_rx.recv() => {
                // Being stopped, or not running here as far as the leader knows: expected.
                if !shutting_down && monitors.contains_key(f.resource.as_str()) {
                    let what = if f.name.is_empty() { format!("process {}", f.pid) } else { format!("process {} ({})", f.pid, f.name) };
                    schedule.watch_fired(&f.resource, &what, &busy, &mut metrics, &mut history);
                }
            }
            _ = sleep_until(due) => {
                for r in schedule.take_due(&busy) {
                    let epoch = monitors.get(&r).copied().unwrap_or(0);
                    dispatch(&workers, &mut busy, &results_tx, &r, Job::new(JobKind::Monitor, 0, epoch));
                }
            }
            Some((from, msg)) = inbox.recv() => match msg {
                Msg::Exec { lead, command } => {
                    let Some(resource) = super::command_resource(&command).map(ResourceId::from) else { continue };
                    if !config_ok {
                        tracing::warn!(resource = %resource, "command refused: this member does not run the cluster's config");
                        continue;
                    }
                    let verdict = admission.admit(lead, &resource, &command, Instant::now(), shutting_down);
                    if !matches!(verdict, Verdict::Stale) && commander.as_ref().is_none_or(|(l, _)| lead >= *l) {
                        commander = Some((lead, from.clone()));
                    }
                    match verdict {
                        Verdict::Run => {
                            actions_in_flight += 1;
                            carry_out_local(command, &workers, &mut busy, &results_tx, &mut history, &lease_rx)
                        }
                        Verdict::Stale => tracing::info!(from = %from, lead = %lead, resource = %resource, "command of an old leadership refused"),
                        Verdict::Duplicate => {} // a copy over another path
                        Verdict::NoLease => {
                            // Nothing starts here without a lease (a leader that reached us would
                            // have renewed it first): answered as not carried out.
                            let kind = if matches!(command, Command::Start { .. }) { JobKind::Start } else { JobKind::Recover };
                            let why = "this member holds no lease (no leader reached it) or is shutting down";
                            // Answered after a pause: the leader probes and starts again at once,
                            // and without one a member that stays without a lease (its watchdog
                            // cannot be armed, say) would spin with it.
                            let result = not_carried_out(&resource, kind, op_of(&command), command_epoch(&command), why);
                            let tx = results_tx.clone();
                            tasks.spawn(async move {
                                tokio::time::sleep(NO_LEASE_PAUSE).await;
                                let _ = tx.send(result);
                            });
                            *busy.0.entry(resource.to_string()).or_default() += 1;
                        }
                    }
                }
                Msg::Lease { lead, seq, monitors: set, nonce } => {
                    let now = Instant::now();
                    let had = admission.holds_lease(now);
                    // Counted from when we sent the hello it answers (an unknown one: no grant).
                    let Some(sent) = nonce.and_then(|n| hellos_sent.iter().find(|(x, _)| *x == n).map(|(_, t)| *t)) else { continue };
                    last_answer = Some(now);
                    if lease::lease_until(sent, lease_d) <= now || !admission.renew(lead, seq, sent, lease_d) {
                        continue;
                    }
                    // No watchdog armed, no lease: a member that could not be stopped from
                    // outside must not run anything.
                    if let (Some(w), Some(until)) = (watchdog.as_mut(), admission.lease_until()) {
                        if let Err(e) = w.arm(lease::watchdog_deadline(until).saturating_duration_since(now)) {
                            tracing::error!("{e}; this member gives up its lease");
                            cluster_note(&mut history, &node.name, format!("watchdog not armed ({e}): no lease, nothing starts here"));
                            admission.drop_lease();
                            continue;
                        }
                    }
                    // Published at once: a start admitted next is admitted under this holding.
                    lease_tx.send_if_modified(|v| std::mem::replace(v, admission.view()) != *v);
                    if !had && rejoins > 0 {
                        cluster_note(&mut history, &node.name, "a leader reached this member again: it holds a lease".into());
                    }
                    if self_stop.is_empty() && self_stopping.is_none() {
                        monitors = set;
                    }
                }
                Msg::Hello { instance, rejoins, leaving, back, gone, nonce } => {
                    if let Some(d) = decider.as_mut() {
                        let name = from.clone();
                        let heard = Instant::now();
                        let newest = d.nonces.entry(name.clone()).or_insert_with(|| (instance.clone(), 0, heard));
                        if newest.0 != instance || nonce > newest.1 {
                            *newest = (instance.clone(), nonce, heard);
                        }
                        let now = Instant::now();
                        let n = NodeId::from(name.as_str());
                        // An instance that said it left: its copies and late hellos change nothing.
                        match d.gone.get(&name) {
                            Some(i) if *i == instance => continue,
                            Some(_) => {
                                d.gone.remove(&name);
                            }
                            None => {}
                        }
                        if gone {
                            d.gone.insert(name.clone(), instance.clone());
                            d.up.remove(&name);
                            d.hellos.remove(&name);
                            cluster_note(&mut history, &name, "member exiting with nothing running there: it left cleanly".into());
                            pending.extend(d.sched.handle(now_ms(), Event::NodeLeft(n)));
                            continue;
                        }
                        let known = d.hellos.get(&name).map(|(_, i, r)| (i.clone(), *r));
                        let first_hello = known.is_none();
                        d.hellos.insert(name.clone(), (now, instance.clone(), rejoins));
                        if d.joining_until.is_some() {
                            // Told to the core when the join window ends.
                        } else if !d.up.contains(&name) {
                            d.up.insert(name.clone());
                            cluster_note(&mut history, &name, "member up".into());
                            pending.extend(d.sched.handle(now_ms(), Event::NodeUp(n.clone())));
                        }
                        let restarted = known.as_ref().is_some_and(|k| k.0 != instance);
                        if known.is_some_and(|k| k != (instance, rejoins)) {
                            // It restarted or stopped everything on its own: what we knew is gone.
                            pending.extend(d.sched.handle(now_ms(), Event::NodeRestarted(n.clone())));
                        }
                        let standby_now = d.sched.state().decisions.nodes.get(&n).is_some_and(|s| s.standby);
                        if !leaving && standby_now && ((restarted && d.left.remove(&name)) || (back && first_hello)) {
                            cluster_note(&mut history, &name, "member back after its shutdown: online again".into());
                            pending.extend(d.sched.handle(now_ms(), Event::Operator(OperatorCommand::Online { node: n.clone() })));
                        }
                        let standby = d.sched.state().decisions.nodes.get(&n).is_some_and(|s| s.standby);
                        if leaving && !standby {
                            cluster_note(&mut history, &name, "member shutting down: its groups move to other members".into());
                            d.left.insert(name.clone());
                            pending.extend(d.sched.handle(now_ms(), Event::Operator(OperatorCommand::Standby { node: n })));
                        }
                    }
                }
                Msg::Report { lead, seq, report } => {
                    if let Some(d) = decider.as_mut() {
                        if !d.take_seq(&from, seq) {
                            continue; // a copy over another path
                        }
                        // A probe's or action's result answers a command of this leader only (an
                        // older leader's operation ids mean nothing here); a monitor carries
                        // its epoch, which the core checks.
                        let ours = lead == d.lead || matches!(report, Report::Monitor { .. });
                        if ours && d.up.contains(&from) {
                            let ev = report.into_event(NodeId::from(from.as_str()));
                            pending.extend(d.sched.handle(now_ms(), ev));
                        }
                    }
                }
                Msg::Operator { seq, id, command, user, uid } => {
                    let reply = ReplyTo::Remote { to: from.clone(), id };
                    if decider.as_mut().is_some_and(|d| !d.take_seq(&from, seq)) {
                        continue; // a copy over another path
                    }
                    match decider.as_mut() {
                        None => answer(&outbox, reply, Response::Error { message: "this member is not the leader (the leader changed: try again)".into() }),
                        Some(d) => match confirm_down_refusal(&command, &links_of(&net), d, &members.me, lease_d) {
                            Some(message) => answer(&outbox, reply, Response::Error { message }),
                            None => operator(d, &mut pending, &mut history, &outbox, now_ms(), command, &format!("{user}, uid {uid}, on {from}"), reply),
                        },
                    }
                }
                Msg::ConfigApply { seq, id, text, user, uid, member } => {
                    let reply = ReplyTo::Remote { to: from.clone(), id };
                    if decider.as_mut().is_some_and(|d| !d.take_seq(&from, seq)) {
                        continue; // a copy over another path
                    }
                    match decider.as_ref() {
                        None => answer(&outbox, reply, Response::Error { message: "this member is not the leader (the leader changed: try again)".into() }),
                        Some(d) => {
                            let committed = committed_rx.borrow().config_hash.clone();
                            let who = format!("{user}, uid {uid}, on {from}");
                            let change = ConfigChange { text, member, control: cluster.control() };
                            config_apply(d, &node.cfg, committed, change, &tasks, reply, &apply_tx, &mut history, &who);
                        }
                    }
                }
                Msg::StatusRequest { id } => {
                    let parts = StatusParts { node: &node, history: &history, cluster: &cluster, links: links_of(&net), members: &members, shutting_down, clock, metrics_addr: metrics_bound.clone() };
                    // Without a decider (an election under way) the last committed decisions.
                    let st = match decider.as_ref() {
                        Some(d) => cluster_status(parts, &d.sched, Some(d)),
                        None => local_status(parts, &model, NO_LEADER),
                    };
                    outbox.send(&from, Msg::Status { id, status: Box::new(st) });
                }
                Msg::Reply { id, response } => {
                    if let Some((tx, _)) = forwarded.remove(&id) {
                        let _ = tx.send(response);
                    }
                }
                Msg::Status { id, status } => {
                    if let Some((tx, _)) = forwarded_status.remove(&id) {
                        let _ = tx.send(Response::Status { status });
                    }
                }
            },
            Some((to, msg)) = failed_rx.recv() => {
                // An undelivered command is answered as not carried out (a host fault: the
                // core probes again). If it was delivered after all, the probe queues behind it.
                if let (Msg::Exec { lead, command }, Some(d)) = (&msg, decider.as_mut()) {
                    if *lead == d.lead {
                        if let Some(ev) = undelivered(command, &to) {
                            pending.extend(d.sched.handle(now_ms(), ev));
                        }
                    }
                }
            }
            Some((lead, n, result)) = fence_rx.recv() => {
                if let Some(d) = decider.as_mut().filter(|d| d.lead == lead) {
                    let since = d.fencing.remove(&n);
                    match result {
                        Ok(device) => {
                            let took = since.map(|t| t.elapsed().as_secs_f64()).unwrap_or_default();
                            cluster_note(&mut history, &n, format!("fenced by `{device}` in {took:.2} s: its groups may run elsewhere"));
                            d.fence_retry.remove(&n);
                            // Back meanwhile (a short cut) and now off: lost first, then fenced.
                            if d.up.remove(&n) {
                                pending.extend(d.sched.handle(now_ms(), Event::NodeDown(NodeId::from(n.as_str()))));
                            }
                            pending.extend(d.sched.handle(now_ms(), Event::Fenced(NodeId::from(n.as_str()))));
                        }
                        Err(e) => {
                            let backoff = d.fence_retry.get(&n).map_or(Duration::from_secs(1), |(_, b)| (*b * 2).min(Duration::from_secs(30)));
                            d.fence_retry.insert(n.clone(), (Instant::now() + backoff, backoff));
                            let msg = format!("fencing FAILED ({e}); its groups wait; again in {} s", backoff.as_secs());
                            tracing::error!(subject = %n, "{msg}");
                            note(&mut history, "cluster", &n, msg);
                        }
                    }
                }
            }
            Some((to, response)) = apply_rx.recv() => answer(&outbox, to, response),
            Some((term, result)) = barrier_rx.recv() => {
                match (result, barrier.as_mut()) {
                    (Ok(index), Some(b)) if b.0 == term => b.1 = Some(index),
                    (Ok(_), _) => {}
                    // Proposed again after 2 s while this node still leads.
                    (Err(e), _) => tracing::info!(term, error = %e, "leader's barrier not committed"),
                }
            }
            Some((lead, generation, result)) = commit_rx.recv() => {
                if let Some(d) = decider.as_mut().filter(|d| d.lead == lead) {
                    match result {
                        Ok(()) => {
                            d.committed = d.committed.max(generation);
                            let (done, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut d.waiting).into_iter().partition(|(g, ..)| *g <= d.committed);
                            d.waiting = wait;
                            for (_, reply, text, _) in done {
                                answer(&outbox, reply, Response::Ok { message: format!("accepted: {text}") });
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "decisions not committed");
                            cluster_note(&mut history, &node.name, format!("decisions not committed ({e}); held commands wait"));
                            // Propose again, after a pause (an immediate error must not spin).
                            d.last = None;
                            d.retry_at = Some(Instant::now() + Duration::from_millis(500));
                        }
                    }
                }
            }
            Some((req, caller, reply)) = api_rx.recv() => {
                match req {
                    Request::Status => match decider.as_ref() {
                        Some(d) => {
                            let st = cluster_status(StatusParts { node: &node, history: &history, cluster: &cluster, links: links_of(&net), members: &members, shutting_down, clock, metrics_addr: metrics_bound.clone() }, &d.sched, Some(d));
                            let _ = reply.send(Response::Status { status: Box::new(st) });
                        }
                        None => match current_leader(&raft_metrics, &members).filter(|l| *l != members.me) {
                            Some(leader) => {
                                next_id += 1;
                                forwarded_status.insert(next_id, (reply, Instant::now()));
                                outbox.send(&leader, Msg::StatusRequest { id: next_id });
                            }
                            None => {
                                let st = local_status(StatusParts { node: &node, history: &history, cluster: &cluster, links: links_of(&net), members: &members, shutting_down, clock, metrics_addr: metrics_bound.clone() }, &model, NO_LEADER);
                                let _ = reply.send(Response::Status { status: Box::new(st) });
                            }
                        },
                    },
                    Request::Events { since, .. } => { let _ = reply.send(Response::Events { events: history.since(since) }); }
                    Request::ResourceShow { resource } => {
                        let sched = decider.as_ref().map(|d| &d.sched);
                        let fallback;
                        let sched = match sched { Some(s) => s, None => { fallback = Scheduler::new(model.clone()); &fallback } };
                        let _ = reply.send(match node.resource_details(sched, &resource) {
                            Some(details) => Response::Resource { details: Box::new(details) },
                            None => Response::Error { message: format!("no resource named `{resource}`") },
                        });
                    }
                    Request::ConfigShow => {
                        let _ = reply.send(Response::Config { path: node.cfg.source.display().to_string(), text: node.cfg.text().to_string() });
                    }
                    Request::ConfigApply { text, member } => {
                        let who = format!("{}, uid {}", caller.user, caller.uid);
                        if shutting_down {
                            let _ = reply.send(Response::Error { message: "the node is shutting down".into() });
                        } else if let Some(d) = decider.as_ref() {
                            let committed = committed_rx.borrow().config_hash.clone();
                            let change = ConfigChange { text, member, control: cluster.control() };
                            config_apply(d, &node.cfg, committed, change, &tasks, ReplyTo::Local(reply), &apply_tx, &mut history, &who);
                        } else if let Some(leader) = current_leader(&raft_metrics, &members).filter(|l| *l != members.me) {
                            next_id += 1;
                            forwarded.insert(next_id, (reply, Instant::now()));
                            out_seq += 1;
                            outbox.send(&leader, Msg::ConfigApply { seq: out_seq, id: next_id, text, user: caller.user.clone(), uid: caller.uid, member });
                        } else {
                            let _ = reply.send(Response::Error { message: "no leader with a quorum: `config apply` needs one (see `warden status`)".into() });
                        }
                    }
                    Request::Operator { command } => {
                        if shutting_down {
                            let _ = reply.send(Response::Error { message: "the node is shutting down".into() });
                        } else if let Some(d) = decider.as_mut() {
                            let who = format!("{}, uid {}", caller.user, caller.uid);
                            match confirm_down_refusal(&command, &links_of(&net), d, &members.me, lease_d) {
                                Some(message) => { let _ = reply.send(Response::Error { message }); }
                                None => operator(d, &mut pending, &mut history, &outbox, now_ms(), command, &who, ReplyTo::Local(reply)),
                            }
                        } else if let Some(leader) = current_leader(&raft_metrics, &members).filter(|l| *l != members.me) {
                            next_id += 1;
                            forwarded.insert(next_id, (reply, Instant::now()));
                            out_seq += 1;
                            outbox.send(&leader, Msg::Operator { seq: out_seq, id: next_id, command, user: caller.user.clone(), uid: caller.uid });
                        } else {
                            let _ = reply.send(Response::Error { message: "no leader with a quorum: operator commands need one (see `warden status`)".into() });
                        }
                    }
                }
            }
            Some(reply) = metrics_rx.recv() => {
                let states: Vec<(String, String)> = monitors.keys().map(|r| (r.to_string(), "running".to_string())).collect();
                let links = cluster.link_figures();
                let cm = api::metrics::ClusterMetrics {
                    leader: decider.is_some(),
                    quorum: cluster.authority().is_some(),
                    term: admission.term(),
                    links: &links,
                };
                let _ = reply.send(metrics.render(&states) + &cm.render());
            }
            _ = raft_metrics.changed() => {
                // A new leader hears from this member at once rather than at the next tick: its
                // first decisions wait for the members' hellos (the rejoin window), a fail-over
                // after its predecessor's death among them.
                let leader = current_leader(&raft_metrics, &members);
                if leader != hello_leader {
                    if leader.is_some() {
                        hello_tick.reset_immediately();
                    }
                    hello_leader = leader;
                }
            }
            _ = committed_rx.changed() => {}
            _ = hello_tick.tick() => {
                // Status requests the leader did not answer in time: answered from here (checked
                // at this pace, a quarter of a second at most, not the core's tick).
                let now = Instant::now();
                let late: Vec<u64> = forwarded_status.iter().filter(|(_, (_, t))| now.duration_since(*t) >= STATUS_WAIT).map(|(id, _)| *id).collect();
                for id in late {
                    if let Some((tx, _)) = forwarded_status.remove(&id) {
                        let why = format!("the leader did not answer within {STATUS_WAIT:?}: the last committed decisions as this member knows them, nothing known of what runs");
                        let st = local_status(StatusParts { node: &node, history: &history, cluster: &cluster, links: links_of(&net), members: &members, shutting_down, clock, metrics_addr: metrics_bound.clone() }, &model, &why);
                        let _ = tx.send(Response::Status { status: Box::new(st) });
                    }
                }
                if !config_ok {
                    continue; // not a member until it runs the cluster's config
                }
                // To the leader while it answers; without one known, or one that has not answered
                // for a while (a restarted member's Raft state names the leader it last knew, and
                // the real leader's replication to a member it lost may be backing off), to every
                // member: the leader among them counts it up instead of lost (the others ignore a
                // hello).
                let back = !shutting_down && left_marker.exists();
                let nonce = next_hello(&mut hello_nonce, &mut hellos_sent);
                let hello = Msg::Hello { instance: instance.clone(), rejoins, leaving: shutting_down, back, gone: gone_since.is_some(), nonce };
                let answered = last_answer.is_some_and(|t| t.elapsed() < HELLO_UNANSWERED);
                match current_leader(&raft_metrics, &members).filter(|_| answered) {
                    Some(leader) => outbox.send(&leader, hello),
                    None => {
                        for name in members.ids.keys() {
                            outbox.send(name, hello.clone());
                        }
                    }
                }
                // The leader: the join window ends when every member expected has said hello
                // (checked at this pace, not the core's tick: it delays a new leader's first
                // decisions, a fail-over's among them).
                if let Some(d) = decider.as_mut() {
                    let links = cluster.link_figures();
                    let expected = |n: &String| *n == members.me || d.fresh || links.get(n).is_some_and(|l| l.up);
                    let all_joined = members.ids.keys().filter(|n| expected(n)).all(|n| d.hellos.contains_key(n));
                    if d.joining_until.is_some_and(|t| all_joined || Instant::now() >= t) {
                        d.joining_until = None;
                        let joined: Vec<String> = members.ids.keys().filter(|n| d.hellos.contains_key(*n)).cloned().collect();
                        cluster_note(&mut history, &node.name, format!("cluster formed with {}: placing groups", joined.join(", ")));
                        // All at once: told one at a time, the core would place a new group on
                        // the first member told rather than its preferred one.
                        d.up.extend(joined.iter().cloned());
                        let nodes = joined.iter().map(|n| NodeId::from(n.as_str())).collect();
                        pending.extend(d.sched.handle(now_ms(), Event::NodesUp(nodes)));
                    }
                }
            }
            // (Also in a new leader's join window: a member beyond the voters of a new cluster says
            // hello only once it is in Raft.)
            _ = reconcile_tick.tick(), if !reconciling && decider.is_some() => {
                let committed = committed_rx.borrow().clone();
                if committed.config_hash.is_some() && committed.config_hash != wanted.0 {
                    // The committed config's members (the first config is every member's own file).
                    let text = committed.config_text.clone();
                    let parsed = text.map(|t| crate::config::ClusterConfig::parse(&node.cfg.source, &t));
                    match parsed {
                        None => wanted = (committed.config_hash.clone(), members.wanted.clone()),
                        Some(Ok(cfg)) => match wanted_of(&cfg) {
                            Ok(w) => wanted = (committed.config_hash.clone(), w),
                            Err(e) => tracing::error!("the committed config's members: {e}"),
                        },
                        Some(Err(e)) => tracing::error!("the committed config does not parse here: {e}"),
                    }
                }
                let m = raft_metrics.borrow().membership_config.membership().clone();
                let in_sync = m.voter_ids().collect::<BTreeSet<_>>() == wanted.1.voters
                    && m.nodes().map(|(id, _)| *id).collect::<BTreeSet<_>>() == wanted.1.members.keys().copied().collect::<BTreeSet<_>>();
                if !in_sync && config_ok && !shutting_down && cluster.authority().is_some() {
                    reconciling = true;
                    let (control, want, tx) = (cluster.control(), wanted.1.clone(), step_tx.clone());
                    tasks.spawn(async move {
                        let r = control.reconcile(&want).await.map(|step| describe_step(&step, &want, &m)).map_err(|e| e.to_string());
                        let _ = tx.send(r);
                    });
                }
            }
            Some(r) = step_rx.recv() => {
                reconciling = false;
                match r {
                    Ok(None) => membership_waits = None,
                    Ok(Some(what)) => {
                        membership_waits = None;
                        cluster_note(&mut history, &node.name, what);
                    }
                    Err(e) if membership_waits.as_ref() != Some(&e) => {
                        cluster_note(&mut history, &node.name, format!("the membership change the config asks for waits: {e}; tried again every {RECONCILE_EVERY:?}"));
                        membership_waits = Some(e);
                    }
                    Err(_) => {}
                }
            }
            _ = lost_tick.tick(), if decider.is_some() => {
                // The leader: members silent too long are lost (fenced, if they may run
                // resources and a device covers them; else their groups wait).
                if let Some(d) = decider.as_mut() {
                    let now = Instant::now();
                    if now.duration_since(last_lost_check) > silence.own_stall() {
                        resumed = now;
                    }
                    last_lost_check = now;
                    let links = links_of(&net);
                    let silent: Vec<String> = d
                        .up
                        .iter()
                        .filter(|n| {
                            // Silence counts only while this loop ran (see OWN_STALL).
                            let quiet = d.hellos.get(*n).map_or(Duration::MAX, |(t, ..)| now.duration_since((*t).max(resumed)));
                            let reachable = links.get(n.as_str()).is_some_and(|l| l.up);
                            **n != members.me && (quiet > silence.wedged || (quiet > silence.lost && !reachable))
                        })
                        .cloned()
                        .collect();
                    for n in silent {
                        d.up.remove(&n);
                        cluster_note(&mut history, &n, "member lost (no hello): its groups wait for a fence confirmation (a fence device, or `warden node confirm-down`)".into());
                        pending.extend(d.sched.handle(now_ms(), Event::NodeDown(NodeId::from(n.as_str()))));
                    }
                }
            }
            _ = lease_tick.tick() => {
                // The leader renews every member's lease while it holds authority.
                if let Some(d) = decider.as_mut() {
                    if cluster.authority().is_some() {
                        for name in members.ids.keys() {
                            let set: BTreeMap<ResourceId, u64> = d.sched.monitored_on(&NodeId::from(name.as_str())).into_iter().map(|r| {
                                let e = d.sched.epoch(&r);
                                (r, e)
                            }).collect();
                            d.lease_seq += 1;
                            let needs_fence =
                                d.sched.state().decisions.nodes.get(&NodeId::from(name.as_str())).is_some_and(|s| s.needs_fence);
                            let counted_up = d.hellos.contains_key(name) && (d.joining_until.is_some() || d.up.contains(name));
                            let grant = lease::may_grant(counted_up, needs_fence, watchdog_fencing);
                            let newest = d.nonces.get(name).filter(|_| grant).map(|(_, n, heard)| (*n, *heard));
                            if let Some((_, heard)) = newest {
                                d.granted.insert(name.clone(), heard);
                            }
                            let nonce = newest.map(|(n, _)| n);
                            outbox.send(name, Msg::Lease { lead: d.lead, seq: d.lease_seq, monitors: set, nonce });
                        }
                    }
                }
                // This member's own lease.
                // With a watchdog it stops STOP_AHEAD early, before the watchdog fires.
                if self_stop.is_empty() && self_stopping.is_none() && admission.lease_ran_out(Instant::now(), stop_ahead) {
                    let running = to_stop(&model, &maybe_running, &busy, &unmanaged_now(&committed_rx));
                    if !running.is_empty() {
                        rejoins += 1;
                        let msg = format!("lease lost: no leader with a quorum reached this member for {lease_d:?}; stopping what may run here ({})", names(&running));
                        tracing::warn!("{msg}");
                        cluster_note(&mut history, &node.name, msg);
                        self_stop = running.into();
                        monitors.clear();
                        next_self_stop(&mut self_stop, &mut self_stopping, &workers, &mut busy, &results_tx);
                    }
                }
            }
            _ = tick.tick() => {
                if let Some(d) = decider.as_mut() {
                    // Not while members join: with nobody up yet, the core would count every
                    // member lost.
                    if d.joining_until.is_none() {
                        pending.extend(d.sched.handle(now_ms(), Event::Tick));
                    }
                    // Commands or replies held too long: a commit that does not come.
                    let now = Instant::now();
                    let (late, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut d.waiting).into_iter().partition(|(.., since)| now.duration_since(*since) >= FORWARD_WAIT);
                    d.waiting = wait;
                    for (_, reply, text, _) in late {
                        answer(&outbox, reply, Response::Error { message: format!("not committed within {FORWARD_WAIT:?}: `{text}` is carried out once it is") });
                    }
                }
                let now = Instant::now();
                let late: Vec<u64> = forwarded.iter().filter(|(_, (_, t))| now.duration_since(*t) >= FORWARD_WAIT).map(|(id, _)| *id).collect();
                for id in late {
                    if let Some((tx, _)) = forwarded.remove(&id) {
                        let _ = tx.send(Response::Error { message: format!("the leader did not answer within {FORWARD_WAIT:?}; the outcome is unknown: check `warden status`") });
                    }
                }
            }
            _ = &mut signals, if !shutting_down => {
                shutting_down = true;
                if node.leave_running {
                    note(&mut history, "node", &node.name, "member exiting; resources left running".into());
                    break;
                }
                // The leader moves our groups away (this node in standby); without one, stop
                // what runs here ourselves. Starts are refused from now on.
                match current_leader(&raft_metrics, &members) {
                    Some(leader) => {
                        note(&mut history, "node", &node.name, format!("shutting down: asking the leader ({leader}) to move this member's groups away"));
                        let nonce = next_hello(&mut hello_nonce, &mut hellos_sent);
                        outbox.send(&leader, Msg::Hello { instance: instance.clone(), rejoins, leaving: true, back: false, gone: false, nonce });
                        // Not in standby now: the standby that leaving brings is ours to undo when
                        // we are back (an operator's standby stays).
                        let standby = committed_rx.borrow().decisions.nodes.get(&me).is_some_and(|s| s.standby);
                        if !standby {
                            if let Err(e) = std::fs::write(&left_marker, b"") {
                                tracing::warn!(error = %e, "cannot record the shutdown; this member may stay in standby when it comes back");
                            }
                        }
                        shutdown_fallback = Some(Instant::now() + SHUTDOWN_FALLBACK);
                    }
                    None => {
                        let running = to_stop(&model, &maybe_running, &busy, &unmanaged_now(&committed_rx));
                        note(&mut history, "node", &node.name, format!("shutting down without a leader: stopping what runs here ({})", names(&running)));
                        self_stop = running.into();
                        monitors.clear();
                        next_self_stop(&mut self_stop, &mut self_stopping, &workers, &mut busy, &results_tx);
                    }
                }
            }
            _ = sleep_until(shutdown_fallback) => {
                shutdown_fallback = None;
                if !maybe_running.is_empty() && self_stop.is_empty() && self_stopping.is_none() {
                    let running = to_stop(&model, &maybe_running, &busy, &unmanaged_now(&committed_rx));
                    note(&mut history, "node", &node.name, format!("shutting down: the leader has not moved everything within {SHUTDOWN_FALLBACK:?}; stopping what runs here ({})", names(&running)));
                    self_stop = running.into();
                    monitors.clear();
                    next_self_stop(&mut self_stop, &mut self_stopping, &workers, &mut busy, &results_tx);
                }
            }
        }
    }
    cancel.cancel();
    drop(workers);
    drop(outbox);
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await.is_err() {
        tracing::warn!(left = tasks.len(), "some tasks did not finish within 5 s; exiting anyway");
    }
    if let Err(e) = cluster.shutdown().await {
        tracing::warn!(error = %e, "cluster member did not shut down cleanly");
    }
    if let Listen::Memory(router) = &listen {
        router.remove(members.my_id);
    }
    match refused {
        Some(msg) => Err(NodeError::Setup(msg)),
        None => Ok(()),
    }
}

/// What the watchdog undoes when it fires besides killing processes: the virtual IPs and mounts
/// of this member's managed resources.
fn releases(node: &Node) -> Vec<super::watchdog::Release> {
    node.cfg.resources.iter().filter(|r| !r.unmanaged).flat_map(|r| super::watchdog::Release::of_params(r.params.get_ref())).collect()
}

/// The next hello's nonce, remembered with its send time (the last 64: a grant answering an
/// older one is not counted).
fn next_hello(nonce: &mut u64, sent: &mut VecDeque<(u64, Instant)>) -> u64 {
    *nonce += 1;
    sent.push_back((*nonce, Instant::now()));
    while sent.len() > 64 {
        sent.pop_front();
    }
    *nonce
}

/// A configured fence device, as the leader drives it.
#[derive(Clone)]
struct FenceDevice {
    name: String,
    plugin: Arc<crate::plugin::Plugin>,
    params: BTreeMap<String, String>,
    grants: warden_manifest::Capabilities,
    /// The nodes it can fence (empty: every node).
    nodes: Vec<String>,
}

impl FenceDevice {
    fn covers(&self, node: &str) -> bool {
        self.nodes.is_empty() || self.nodes.iter().any(|n| n == node)
    }
}

/// Fences `target` with the devices that cover it, in config order, until one succeeds (the
/// agent confirms the node off: fence-exec checks its status after `off`). `Ok(device)`, or
/// every device's error.
async fn fence_node(devices: &[FenceDevice], me: &str, target: &str) -> Result<String, String> {
    use tracing::Instrument;
    let mut errors = Vec::new();
    for d in devices.iter().filter(|d| d.covers(target)) {
        let mut inst = d.plugin.instance(&d.name, d.grants.clone(), crate::plugin::Limits::default());
        let ctx = crate::plugin::CallContext { resource: d.name.clone(), node: me.to_string(), epoch: 0, params: d.params.clone() };
        let span = tracing::info_span!("fence", device = %d.name, target);
        match inst.fence(&ctx, target, None).instrument(span).await {
            Ok(()) => return Ok(d.name.clone()),
            Err(e) => errors.push(format!("`{}`: {e}", d.name)),
        }
    }
    if errors.is_empty() {
        errors.push(format!("no fence device covers `{target}`"));
    }
    Err(errors.join("; "))
}

/// How often the leader compares Raft's membership with the committed config's.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// Whether `text` (a committed config) lists `me` among its nodes (a text that does not parse
/// here counts as listing it: the reload then reports the problem).
fn lists(node: &Node, text: &str, me: &str) -> bool {
    crate::config::ClusterConfig::parse(&node.cfg.source, text).map_or(true, |c| c.nodes.iter().any(|n| n.name.get_ref() == me))
}

/// The Raft membership `cfg` asks for.
fn wanted_of(cfg: &crate::config::ClusterConfig) -> Result<Wanted, String> {
    let listed: Vec<(Peer, bool)> = cfg
        .nodes
        .iter()
        .map(|n| {
            let peer = Peer { name: n.name.get_ref().clone(), addresses: n.addresses.iter().map(|a| a.get_ref().clone()).collect() };
            (peer, n.role == Role::Witness)
        })
        .collect();
    Wanted::new(&listed).map_err(|(a, b)| format!("nodes `{a}` and `{b}` have the same Raft id (a hash of the name)"))
}

/// What a membership step did, for the history (`None`: nothing to do).
fn describe_step(step: &Step, want: &Wanted, before: &openraft::Membership<RaftId, Peer>) -> Option<String> {
    let name =
        |id: &RaftId| want.members.get(id).or_else(|| before.get_node(id)).map_or_else(|| format!("raft id {id}"), |p| p.name.clone());
    let names = |ids: &mut dyn Iterator<Item = &RaftId>| ids.map(name).collect::<Vec<_>>().join(", ");
    match step {
        Step::InSync => None,
        Step::AddedLearners(ids) => {
            Some(format!("added to Raft as learners (they receive the log, they do not vote): {}", names(&mut ids.iter())))
        }
        Step::ChangedVoters { from, to } => {
            Some(format!("the voters are now {} (were {})", names(&mut to.iter()), names(&mut from.iter())))
        }
        Step::Removed(ids) => Some(format!("removed from Raft: {}", names(&mut ids.iter()))),
    }
}

/// A new config on its way to the leader's commit.
struct ConfigChange {
    text: String,
    /// The member it adds or removes (`warden node add|remove`).
    member: Option<MemberChange>,
    control: warden_cluster::Control,
}

/// The leader's part of `warden config apply` and `warden node add|remove`: the new text is
/// validated as this member loads its file and against what runs ([`reload::change_refusal`]);
/// a membership change also waits for every voter to acknowledge a fresh entry (none is made
/// while one is not healthy); then it is committed with the hash of the config it replaces. The
/// answer (through `tx`) comes once committed, or with the refusal. The Raft membership follows
/// the committed config afterwards, step by step (`reconcile_tick`).
#[allow(clippy::too_many_arguments)]
fn config_apply(
    d: &Decider,
    current: &crate::config::ClusterConfig,
    committed: Option<String>,
    change: ConfigChange,
    tasks: &tokio_util::task::TaskTracker,
    to: ReplyTo,
    tx: &mpsc::UnboundedSender<(ReplyTo, Response)>,
    history: &mut History,
    who: &str,
) {
    let ConfigChange { text, member, control } = change;
    let refusal = (|| {
        let new = crate::config::ClusterConfig::parse(&current.source, &text).map_err(|e| format!("the new config is not valid:\n{e}"))?;
        let previous = committed.ok_or("the cluster has not recorded its config yet: try again in a moment")?;
        let hash = blake3::hash(text.as_bytes()).to_hex().to_string();
        if hash == previous {
            return Err("the cluster already runs this config".into());
        }
        match reload::change_refusal(current, &new, &d.sched, member.as_ref()) {
            Some(why) => Err(why),
            None => Ok((previous, hash)),
        }
    })();
    let (previous, hash) = match refusal {
        Ok(x) => x,
        Err(message) => {
            let _ = tx.send((to, Response::Error { message }));
            return;
        }
    };
    let what = match &member {
        None => format!("config {} applied by {who}: committing it", &hash[..12]),
        Some(MemberChange::Add(n)) => {
            format!("node `{n}` added by {who} (config {}): committing it once every voter is healthy", &hash[..12])
        }
        Some(MemberChange::Remove(n)) => {
            format!("node `{n}` removed by {who} (config {}): committing it once every voter is healthy", &hash[..12])
        }
    };
    cluster_note(history, &current.cluster.name, what);
    let tx = tx.clone();
    tasks.spawn(async move {
        let short = hash[..12].to_string();
        if member.is_some() {
            if let Err(e) = control.voters_healthy(&BTreeSet::new()).await {
                let message = format!("membership changes wait until every voter is healthy, and this one did not: {e}; nothing was changed");
                let _ = tx.send((to, Response::Error { message }));
                return;
            }
        }
        let added = match &member {
            Some(MemberChange::Add(n)) => Some(n.clone()),
            _ => None,
        };
        let response = match control.raft().client_write(ClusterRequest::ApplyConfig { previous, hash, text, added }).await {
            Ok(w) => match w.data {
                ClusterResponse::Applied { .. } => {
                    let reload = format!(
                        "every member reloads it in turn (about {} s each, the leader last); what runs keeps running",
                        reload::STAGGER.as_secs()
                    );
                    let message = match &member {
                        None => format!("config {short} committed; {reload}"),
                        Some(MemberChange::Add(n)) => format!(
                            "node `{n}` added (config {short} committed); {reload}. Start it with `warden node run --config FILE --node {n} --join`: \
                             it joins as a learner and votes if the config makes it one of the 3 or 5 voters (`warden status` shows which)"
                        ),
                        Some(MemberChange::Remove(n)) => format!(
                            "node `{n}` removed (config {short} committed); {reload}. `{n}` stops voting, then its daemon exits"
                        ),
                    };
                    Response::Ok { message }
                }
                ClusterResponse::ConfigDiffers { committed } => Response::Error {
                    message: format!(
                        "another config was applied meanwhile (hash {}): see `warden config show`, then apply again",
                        &committed[..committed.len().min(12)]
                    ),
                },
                other => Response::Error { message: format!("unexpected answer from the replicated state: {other:?}") },
            },
            Err(e) => Response::Error { message: format!("the new config was not committed ({e}): its outcome is unknown; see `warden status`") },
        };
        let _ = tx.send((to, response));
    });
}

/// A cluster event: in the history and the log.
fn cluster_note(history: &mut History, subject: &str, message: String) {
    tracing::info!(subject, "{message}");
    note(history, "cluster", subject, message);
}

/// Sends a command to the member it is for (this node included, by loopback).
fn route(outbox: &Outbox, lead: Lead, c: Command) {
    let to = match &c {
        Command::Probe { node, .. } | Command::Start { node, .. } | Command::Stop { node, .. } | Command::Recover { node, .. } => {
            node.to_string()
        }
        _ => return,
    };
    outbox.send(&to, Msg::Exec { lead, command: c });
}

fn answer(outbox: &Outbox, to: ReplyTo, response: Response) {
    match to {
        ReplyTo::Local(tx) => {
            let _ = tx.send(response);
        }
        ReplyTo::Remote { to, id } => outbox.send(&to, Msg::Reply { id, response }),
    }
}

fn command_epoch(c: &Command) -> u64 {
    match c {
        Command::Probe { epoch, .. } | Command::Start { epoch, .. } | Command::Stop { epoch, .. } | Command::Recover { epoch, .. } => {
            *epoch
        }
        _ => 0,
    }
}

/// The core's event for a command that never reached its member: a host fault, probed again.
fn undelivered(c: &Command, to: &str) -> Option<Event> {
    let why = Failure::HostFault(format!("the command did not reach {to}"));
    let node = NodeId::from(to);
    Some(match c.clone() {
        Command::Probe { resource, op, .. } => Event::Probe { resource, node, op, outcome: MonitorOutcome::Error(why) },
        Command::Start { resource, op, .. } => Event::ActionDone { resource, node, op, action: ActionKind::Start, result: Err(why) },
        Command::Stop { resource, op, .. } => Event::ActionDone { resource, node, op, action: ActionKind::Stop, result: Err(why) },
        Command::Recover { resource, op, .. } => Event::ActionDone { resource, node, op, action: ActionKind::Recover, result: Err(why) },
        _ => return None,
    })
}

fn current_leader(m: &tokio::sync::watch::Receiver<warden_cluster::RaftMetrics>, members: &Members) -> Option<String> {
    m.borrow().current_leader.and_then(|id| members.names.get(&id).cloned())
}

/// What this member must stop when it stops on its own: every resource of each group that runs
/// or is busy here, dependents before what they need (groups in config order).
fn to_stop(
    model: &crate::scheduler::Model,
    maybe: &BTreeSet<ResourceId>,
    busy: &Busy,
    unmanaged: &BTreeSet<ResourceId>,
) -> Vec<ResourceId> {
    let mut out = Vec::new();
    for g in model.groups.values() {
        if g.members.iter().any(|r| maybe.contains(r) || busy.contains(r)) {
            // Never what the cluster does not manage (config or operator): it is left alone.
            out.extend(g.members.iter().rev().filter(|r| !model.resources[*r].unmanaged && !unmanaged.contains(*r)).cloned());
        }
    }
    out
}

/// Resources the operator unmanaged (`resource unmanage`), as committed.
fn unmanaged_now(committed: &tokio::sync::watch::Receiver<warden_cluster::ClusterState>) -> BTreeSet<ResourceId> {
    committed.borrow().decisions.resources.iter().filter(|(_, d)| d.managed == Some(false)).map(|(r, _)| r.clone()).collect()
}

/// Keeps what may run here up to date from a result of this member's own calls.
fn note_running(maybe: &mut BTreeSet<ResourceId>, event: &Event) {
    match event {
        Event::Probe { resource, outcome, .. } | Event::Monitor { resource, outcome, .. } => match outcome {
            MonitorOutcome::Stopped => {
                maybe.remove(resource);
            }
            // Running, degraded, failed or unsure: it may run.
            _ => {
                maybe.insert(resource.clone());
            }
        },
        Event::ActionDone { resource, action: ActionKind::Stop, result: Ok(()), .. } => {
            maybe.remove(resource);
        }
        Event::ActionDone { resource, .. } => {
            maybe.insert(resource.clone());
        }
        _ => {}
    }
}

fn names(rs: &[ResourceId]) -> String {
    if rs.is_empty() {
        return "nothing".into();
    }
    rs.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
}

/// Starts the next stop of a lost lease or a shutdown.
fn next_self_stop(
    queue: &mut VecDeque<ResourceId>,
    current: &mut Option<ResourceId>,
    workers: &HashMap<String, mpsc::Sender<Job>>,
    busy: &mut Busy,
    results: &mpsc::UnboundedSender<JobResult>,
) {
    if current.is_some() {
        return;
    }
    // A resource without a worker here (a witness runs none) has nothing to stop.
    while let Some(r) = queue.pop_front() {
        if workers.contains_key(r.as_str()) {
            dispatch(workers, busy, results, &r, Job::new(JobKind::Stop, 0, 0));
            *current = Some(r);
            return;
        }
    }
}

/// An operator command on the leader: checked, recorded with who gave it, decided, and answered
/// once the decisions behind it are committed.
#[allow(clippy::too_many_arguments)]
fn operator(
    d: &mut Decider,
    pending: &mut Vec<Command>,
    history: &mut History,
    outbox: &Outbox,
    now: u64,
    command: OperatorCommand,
    who: &str,
    reply: ReplyTo,
) {
    if let Err(message) = d.sched.check_operator(&command) {
        answer(outbox, reply, Response::Error { message });
        return;
    }
    let text = operator_text(&command);
    note(history, "operator", "operator", format!("{text} (by {who})"));
    pending.extend(d.sched.handle(now, Event::Operator(command)));
    // Answered once committed; a command that changed nothing is answered at once.
    if d.last.as_ref() != Some(&d.sched.decisions()) {
        d.waiting.push((d.proposed + 1, reply, text, Instant::now()));
    } else if d.proposed > d.committed {
        d.waiting.push((d.proposed, reply, text, Instant::now()));
    } else {
        answer(outbox, reply, Response::Ok { message: format!("accepted: {text}") });
    }
}

/// What the leader refuses of `confirm-down` besides the core (which refuses it for a member up
/// by its hellos): the leader itself; a member the transport still reaches (one that answers
/// pings but says no hello, say one that refuses the config, is not off either); and a member
/// whose lease may still let it run its groups (cut off but alive, it stops them when its lease
/// runs out: the lease after its last hello, or after this leadership began, plus a margin for
/// a late lease message).
fn confirm_down_refusal(command: &OperatorCommand, links: &Links, d: &Decider, me: &str, lease_d: Duration) -> Option<String> {
    let OperatorCommand::ConfirmDown { node } = command else { return None };
    if node.as_str() == me {
        return Some(format!("node `{node}` is the leader answering this command: it is up"));
    }
    if links.get(node.as_str()).is_some_and(|l| l.up) {
        return Some(format!("node `{node}` answers on the cluster network: confirm-down is only for a lost node that is really off"));
    }
    let heard = d.hellos.get(node.as_str()).map_or(d.since, |(t, ..)| (*t).max(d.since));
    let left = (lease_d + CONFIRM_MARGIN).saturating_sub(heard.elapsed());
    (!left.is_zero()).then(|| {
        format!(
            "node `{node}` was heard {:.0} s ago: if it is cut off but alive, its lease lets it run its groups until it runs out; \
             confirm-down is accepted {:.0} s from now",
            heard.elapsed().as_secs_f64(),
            left.as_secs_f64().ceil()
        )
    })
}

/// The cluster part of status, as this member sees it.
fn cluster_part(cluster: &ClusterNode, links: &Links, members: &Members, decider: Option<&Decider>) -> ClusterStatus {
    let m = cluster.metrics();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<RaftId> = membership.voter_ids().collect();
    ClusterStatus {
        answered_by: members.me.clone(),
        leader: m.current_leader.and_then(|id| members.names.get(&id).cloned()),
        term: m.current_term,
        quorum: decider.is_some() && cluster.authority().is_some(),
        members: members
            .ids
            .keys()
            .map(|name| {
                let link = links.get(name);
                MemberStatus {
                    name: name.clone(),
                    role: format!("{:?}", members.roles[name]).to_lowercase(),
                    raft: match members.ids[name] {
                        id if voters.contains(&id) => "voter",
                        id if membership.get_node(&id).is_some() => "learner",
                        _ => "joining",
                    }
                    .into(),
                    reachable: *name == members.me || link.is_some_and(|l| l.up),
                    paths: link
                        .map(|l| {
                            l.paths.iter().map(|p| PathState { addr: p.addr.clone(), up: p.up, last_error: p.last_error.clone() }).collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect(),
    }
}

/// What status needs of a member besides the core: for [`cluster_status`].
struct StatusParts<'a> {
    node: &'a Node,
    history: &'a History,
    cluster: &'a ClusterNode,
    links: Links,
    members: &'a Members,
    shutting_down: bool,
    clock: SchedClock,
    metrics_addr: Option<String>,
}

/// The status report: the core's view (the leader's, or the committed decisions without one)
/// and the cluster as this member sees it.
fn cluster_status(p: StatusParts<'_>, sched: &Scheduler, decider: Option<&Decider>) -> StatusReport {
    let mut st = p.node.status(sched, p.history, p.shutting_down, p.clock);
    st.metrics_addr = p.metrics_addr;
    st.cluster_info = Some(cluster_part(p.cluster, &p.links, p.members, decider));
    st
}

/// Why [`local_status`] answers when there is no leader.
const NO_LEADER: &str = "no leader with a quorum: the cluster decides nothing until one is elected";

/// Status without a leader (or while it does not answer): the last committed decisions (owners
/// and epochs), nothing known of what runs; `why` is shown on every group.
fn local_status(p: StatusParts<'_>, model: &crate::scheduler::Model, why: &str) -> StatusReport {
    let mut sched = Scheduler::new(model.clone());
    let committed = p.cluster.state().borrow().decisions.clone();
    sched.restore(&CorePersisted { decisions: committed, restarts: Default::default() }, 0);
    let mut st = cluster_status(p, &sched, None);
    for g in &mut st.groups {
        g.waiting = Some(why.into());
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_timing_follows_a_shorter_lost_after_and_keeps_its_rules() {
        assert_eq!(raft_timing(Duration::from_secs(1)), (100, 400, 800));
        assert_eq!(raft_timing(Duration::from_secs(30)), (100, 400, 800), "never longer than the default");
        assert_eq!(raft_timing(Duration::from_millis(700)), (100, 300, 560));
        assert_eq!(raft_timing(Duration::from_millis(500)), (100, 300, 400));
        for ms in (500..=1000).step_by(10) {
            let (h, min, max) = raft_timing(Duration::from_millis(ms));
            assert!(h == RAFT_HEARTBEAT_MS && min >= 3 * h && max > min, "{ms}: {h} {min} {max}");
            // A member is counted lost no later than a leader is replaced.
            assert!(min + max >= ms, "{ms}");
            let cfg =
                openraft::Config { heartbeat_interval: h, election_timeout_min: min, election_timeout_max: max, ..Default::default() };
            let cfg = cfg.validate().expect("openraft accepts it");
            assert!(AuthorityConfig::for_raft(&cfg, DRIFT, MARGIN).is_some(), "{ms}: an authority window");
        }
        let s = Silence::new(Duration::from_millis(700));
        assert_eq!(s.liveness().dead_after, Duration::from_millis(700));
        assert_eq!(s.liveness().interval, Duration::from_millis(140));
        assert_eq!(s.hello_every(), Duration::from_millis(175));
        assert_eq!(s.lease_every(), Duration::from_millis(175));
        assert_eq!(s.own_stall(), Duration::from_millis(175));
        let d = Silence::new(Duration::from_secs(1));
        assert_eq!((d.hello_every(), d.lease_every(), d.own_stall()), (HELLO_EVERY, LEASE_EVERY, OWN_STALL), "the defaults");
        assert_eq!(s.wedged, Duration::from_secs(3));
        assert_eq!(Silence::new(Duration::from_secs(2)).wedged, Duration::from_secs(6));
    }
}
