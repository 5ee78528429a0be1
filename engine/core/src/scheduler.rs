//! The decision core: a sans-IO state machine from events to commands.
//!
//! ```text
//!   Event (probe/monitor/action result, node up/down/restarted, fenced, operator, tick)
//!        │
//!        ▼
//!   Scheduler::handle(now, event) ──► apply to State ──► reconcile ──► Vec<Command>
//!                                                                     (probe/start/stop/recover
//!                                                                      resource R on node N with
//!                                                                      op id and epoch, fence
//!                                                                      node N, note)
//! ```
//!
//! No sockets, no clocks, no tokio: time is the `now` argument (milliseconds). The node's
//! executor carries out commands and feeds their results back as events. The same code decides
//! for one node or many.
//!
//! # Operations and epochs
//!
//! Every [`Command::Probe`], [`Command::Start`], [`Command::Stop`] and [`Command::Recover`]
//! carries an operation id `op` (a per-scheduler counter, strictly increasing) and the group's
//! placement `epoch`. The answer ([`Event::Probe`], [`Event::ActionDone`]) carries the `op` it
//! answers. The scheduler keeps the operations in flight per (resource, node)
//! ([`Observations::in_flight`]); a result whose op is not in flight (late, duplicated, or from
//! before a daemon restart) is ignored. Recurring monitors are scheduled by the engine itself, so
//! [`Event::Monitor`] carries the `epoch` the engine knew when it ran the monitor: results from
//! an older epoch are ignored, and so is every monitor result for a resource while an operation
//! is in flight for it on that node.
//!
//! **Executor contract** (what makes late delivery safe): on one node, the commands for one
//! resource are carried out one at a time, in the order they were issued (a probe issued after a
//! start answers after that start was carried out). A daemon restart forgets its queue (commands
//! not yet begun never run) and is reported with [`Event::NodeRestarted`]. So a probe answer
//! supersedes every earlier operation on that (resource, node): they are dropped from the
//! in-flight map and their late results ignored.
//!
//! # Failures
//!
//! Agent errors are typed ([`Failure`], after the WIT `agent-error`, plus `Timeout` and
//! `HostFault`):
//! * `NotInstalled` from a probe or start: known stopped there, and that node is ineligible for
//!   the resource's group ([`ResourceDecision::ineligible`], with the reason). Never fencing.
//! * `InvalidConfig` (any call): not retried. The resource is blocked
//!   ([`ResourceDecision::blocked`]) and its group is frozen (not started, moved or stopped)
//!   until the operator's `Cleanup`. When nothing could have started it there (no start or
//!   recover issued since it was last known stopped), it is known stopped: no fencing.
//! * `HostFault` (the engine could not run the call: EMFILE, spawn failure, its own stall):
//!   the resource is probed again (never recovered, failed over or fenced for it). A probe that
//!   times out or hits a host fault leaves the resource possibly active
//!   ([`Activity::Unsure`]); it is probed again on the next [`Event::Tick`].
//! * `Unsupported` from `recover`: no local recovery, the group fails over at once.
//!
//! # State: decisions and observations
//!
//! [`State`] is split in two. [`Decisions`] (targets, placements with owner and epoch,
//! `failed_on`, standby, fence records, blocked/ineligible resources) are what a cluster
//! replicates and what the engine persists *before* carrying out commands (propose, persist,
//! act): [`Scheduler::decisions_changed`] says whether the last event changed them.
//! [`Observations`] (activity per resource and node, operations in flight, last monitor, restart
//! and monitor-timeout counters per resource and node) are per-node knowledge, re-learned by
//! probing. [`Persisted`] (decisions plus restart counters) is what survives a restart:
//! [`Scheduler::persisted`] and [`Scheduler::restore`].
//!
//! **Epochs** never go backwards: `restore` takes an `epoch_floor` (the engine derives it from
//! wall-clock milliseconds when it lost its state); restored epochs are raised to at least the
//! floor and every new epoch is greater than both the floor and the previous epoch. Arithmetic
//! saturates: a group whose epoch would pass `u64::MAX - 1` is not moved (a note says why).
//!
//! # The engine's loop
//!
//! ```text
//!   cmds = s.handle(now, event)
//!   if s.decisions_changed() { persist(s.persisted()) }   // before acting
//!   for c in cmds { carry out c; later feed back Event::Probe/ActionDone with c's op }
//! ```
//! Feed [`Event::Tick`] periodically (restart windows age, `failed_on` entries expire after
//! the group's `failure_timeout` when it has one, unsure resources are probed again). Run recurring monitors for
//! [`Scheduler::monitored_on`] with [`Scheduler::epoch`] of the resource and feed the answers as
//! [`Event::Monitor`]. After losing state, build a new scheduler, [`Scheduler::restore`] the
//! persisted form with an epoch floor (e.g. wall-clock ms), then feed `NodeUp` for the nodes.
//!
//! **Invariant S1** (never a group active on two nodes): a resource is *possibly active* on a
//! node unless we know it is stopped there (a successful stop, a probe saying stopped or not
//! installed, or a fence confirmation). Nothing of a group is started on node D while any member
//! is possibly active on another node; a stop that fails or a node that is lost leaves its
//! resources possibly active until that node is fenced or re-probed.
//!
//! **Ordering**: a resource starts only when everything it depends on runs on the same node;
//! a resource stops only when nothing that depends on it is still active there.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use crate::id::{GroupId, NodeId, ResourceId};
pub use crate::model::{Role, Switchback};

pub type Millis = u64;

/// A few words for what a resource is doing on a node (for operators).
fn activity_word(a: &Activity) -> &'static str {
    match a {
        Activity::Probing => "being probed",
        Activity::Unknown => "in an unknown state (its node is lost)",
        Activity::Unsure => "in an unsure state (probing again)",
        Activity::Starting => "starting",
        Activity::Running => "running",
        Activity::Stopping => "stopping",
        Activity::Recovering => "recovering",
        Activity::Failed => "failed",
        Activity::StopFailed => "stop-failed",
    }
}

/// Static description of the cluster, derived from the config.
#[derive(Debug, Clone)]
pub struct Model {
    pub nodes: Vec<NodeModel>,
    /// Shared so that the scheduler can walk groups while mutating its state, without copying.
    pub groups: BTreeMap<GroupId, std::sync::Arc<GroupModel>>,
    pub resources: BTreeMap<ResourceId, ResourceModel>,
}

#[derive(Debug, Clone)]
pub struct NodeModel {
    pub name: NodeId,
    pub role: Role,
    /// A fence device can power this node off.
    pub fenceable: bool,
}

#[derive(Debug, Clone)]
pub struct GroupModel {
    pub name: GroupId,
    /// Members in start order.
    pub members: Vec<ResourceId>,
    /// resource → what it needs first.
    pub deps: BTreeMap<ResourceId, Vec<ResourceId>>,
    /// resource → what needs it.
    pub dependents: BTreeMap<ResourceId, Vec<ResourceId>>,
    pub priority: Vec<NodeId>,
    pub switchback: Switchback,
    pub max_restarts: u32,
    pub restart_window: Millis,
    /// How long after a failure the node is eligible again by itself (Pacemaker's
    /// `failure-timeout`). None: until the operator's cleanup or `group start` (the default, as
    /// in LifeKeeper and Pacemaker).
    pub failure_timeout: Option<Millis>,
    pub monitor_timeouts_to_fail: u32,
    pub autostart: bool,
}

#[derive(Debug, Clone)]
pub struct ResourceModel {
    pub name: ResourceId,
    pub group: GroupId,
    pub unmanaged: bool,
    /// The agent recovers locally (metadata `local-recovery`); otherwise a failure fails over.
    pub local_recovery: bool,
}

/// What a resource is doing on one node. Absent from the map = known stopped there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activity {
    /// State unknown; a probe is under way.
    Probing,
    /// State unknown and the node cannot be asked (lost): needs fencing or the node's return.
    Unknown,
    /// State unknown on a reachable node (a probe timed out or hit a host fault, or an action
    /// hit a host fault): possibly active, probed again on the next tick. Never fenced for.
    Unsure,
    Starting,
    Running,
    Stopping,
    Recovering,
    /// Failed (monitor, start or recover); possibly partly running; to be stopped or recovered.
    Failed,
    /// A stop failed: possibly running, and only fencing (or an operator cleanup) clears it.
    StopFailed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Started,
    Stopped,
}

/// Why a group may not run on a node (until it expires or the operator cleans up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedOn {
    /// When it failed; the entry is dropped on a tick once `restart_window` has passed.
    pub at: Millis,
    pub reason: String,
}

/// Replicated decision about a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub target: Target,
    pub owner: Option<NodeId>,
    pub epoch: u64,
    /// Nodes where the group failed (recovery exhausted, start failed): not eligible until
    /// cleanup, or until `restart_window` has passed since the failure.
    pub failed_on: BTreeMap<NodeId, FailedOn>,
    /// Operator's `group move --to`.
    pub move_to: Option<NodeId>,
}

/// Replicated decision about a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDecision {
    pub standby: bool,
    /// Something may run there that we cannot stop (a failed stop, or anything on a lost node):
    /// its groups run nowhere else until it is fenced or answers its probes.
    pub needs_fence: bool,
    /// A fence command was issued and not yet confirmed.
    pub fence_requested: bool,
    /// When the last fence confirmation arrived.
    pub last_fenced: Option<Millis>,
    /// Maintenance (the operator's): what runs there stays as it is, monitored and reported but
    /// never started, stopped, recovered or moved; nothing new is placed there.
    #[serde(default, skip_serializing_if = "is_false")]
    pub maintenance: bool,
    /// The node's daemon left cleanly with nothing of ours running there (a member's shutdown,
    /// [`Event::NodeLeft`]): until it is back, nothing runs there, so a new leader neither
    /// waits for its probes nor fences it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub left: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Replicated decision about a resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDecision {
    /// `invalid-config`: not retried, its group is frozen (not started, moved or stopped) until
    /// the operator's cleanup. The agent's message.
    pub blocked: Option<String>,
    /// node → why this node cannot run the resource (`not-installed`); the group is not placed
    /// there until the operator's cleanup.
    pub ineligible: BTreeMap<NodeId, String>,
    /// The operator stopped this resource (`resource stop`): it and what depends on it stay
    /// stopped while the rest of its group runs, until `resource start`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stopped: bool,
    /// The operator's `resource manage` (Some(true)) or `unmanage` (Some(false)), over the
    /// config's `unmanaged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
}

/// What a cluster replicates and the engine persists before acting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decisions {
    pub groups: BTreeMap<GroupId, GroupState>,
    pub nodes: BTreeMap<NodeId, NodeDecision>,
    pub resources: BTreeMap<ResourceId, ResourceDecision>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeObservation {
    /// Reachable (membership says so).
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorRecord {
    pub at: Millis,
    pub node: NodeId,
    pub outcome: MonitorOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    Probe,
    Start,
    Stop,
    Recover,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub op: u64,
    pub kind: OpKind,
    pub epoch: u64,
}

/// Per-node knowledge about a resource (re-learned by probing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceObservation {
    /// node → activity. Absent = known stopped there.
    pub on: BTreeMap<NodeId, Activity>,
    /// node → operations issued and not answered, oldest first.
    pub in_flight: BTreeMap<NodeId, Vec<InFlight>>,
    /// Nodes where a start or recover was issued since the resource was last known stopped
    /// there (or where we cannot know): an `invalid-config` there does not prove it stopped.
    pub may_have_run: BTreeSet<NodeId>,
    /// node → times of local recoveries there, for `max_restarts` within `restart_window`.
    pub restarts: BTreeMap<NodeId, Vec<Millis>>,
    /// node → monitor timeouts in a row there.
    pub monitor_timeouts: BTreeMap<NodeId, u32>,
    pub last_monitor: Option<MonitorRecord>,
    /// Last failure reason, for status.
    pub last_failure: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observations {
    pub nodes: BTreeMap<NodeId, NodeObservation>,
    pub resources: BTreeMap<ResourceId, ResourceObservation>,
}

/// Everything that changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub decisions: Decisions,
    pub observations: Observations,
}

/// What must survive a restart: decisions, plus restart counters (resource → node → times).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    pub decisions: Decisions,
    pub restarts: BTreeMap<ResourceId, BTreeMap<NodeId, Vec<Millis>>>,
}

/// Why a call did not succeed: the WIT `agent-error` variants, plus what the engine itself saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "error", content = "reason", rename_all = "kebab-case")]
pub enum Failure {
    /// The action ran and failed.
    Failed(String),
    /// A parameter is missing or wrong: not retried, the resource is blocked until cleanup.
    InvalidConfig(String),
    /// The software is not installed on this node: the node is ineligible for the resource.
    NotInstalled(String),
    /// A host call was refused by the capability check.
    AccessDenied(String),
    /// The agent does not implement this action (from recover: no local recovery).
    Unsupported(String),
    /// The call overran its timeout.
    Timeout,
    /// The engine itself could not run the call (EMFILE, spawn failure, its own stall).
    HostFault(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Failed(s) => write!(f, "failed: {s}"),
            Failure::InvalidConfig(s) => write!(f, "invalid config: {s}"),
            Failure::NotInstalled(s) => write!(f, "not installed: {s}"),
            Failure::AccessDenied(s) => write!(f, "access denied: {s}"),
            Failure::Unsupported(s) => write!(f, "unsupported: {s}"),
            Failure::Timeout => write!(f, "timed out"),
            Failure::HostFault(s) => write!(f, "host fault: {s}"),
        }
    }
}

/// A probe's or monitor's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "reason", rename_all = "kebab-case")]
pub enum MonitorOutcome {
    Running,
    Degraded(String),
    Stopped,
    /// The agent says the resource is not working.
    Failed(String),
    /// The call itself did not succeed. A monitor `Timeout` is retried, a failure only after
    /// `monitor_timeouts_to_fail` in a row.
    Error(Failure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    Start,
    Stop,
    Recover,
}

impl ActionKind {
    fn op_kind(self) -> OpKind {
        match self {
            ActionKind::Start => OpKind::Start,
            ActionKind::Stop => OpKind::Stop,
            ActionKind::Recover => OpKind::Recover,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum OperatorCommand {
    MoveGroup {
        group: GroupId,
        to: Option<NodeId>,
    },
    StartGroup {
        group: GroupId,
    },
    StopGroup {
        group: GroupId,
    },
    Cleanup {
        resource: ResourceId,
    },
    Standby {
        node: NodeId,
    },
    Online {
        node: NodeId,
    },
    /// Stop one resource (and what depends on it in its group); the rest keeps running.
    StopResource {
        resource: ResourceId,
    },
    /// Undo `StopResource`.
    StartResource {
        resource: ResourceId,
    },
    /// Monitor and report only (`manage = false`) or act again (`true`), over the config.
    SetManaged {
        resource: ResourceId,
        managed: bool,
    },
    /// Maintenance on `node` (`on`) or back to normal.
    Maintenance {
        node: NodeId,
        on: bool,
    },
    /// The operator confirms that `node`, lost, is really off (powered off, or nothing of ours
    /// can run there): a manual fence confirmation, like Pacemaker's `stonith_admin --confirm`,
    /// for nodes without a fence device. Refused while the node is up.
    ConfirmDown {
        node: NodeId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Re-evaluate: restart windows and `failed_on` entries age, unsure resources are probed.
    Tick,
    NodeUp(NodeId),
    /// Several nodes up at once (a cluster formed, a new leader counting who answered): every
    /// one is counted before anything is placed, so a group not placed yet goes to its
    /// preferred node rather than to the first one told.
    NodesUp(Vec<NodeId>),
    NodeDown(NodeId),
    /// The node's daemon restarted: its queue is gone (commands not yet begun never run), what
    /// we knew about its resources is forgotten and re-probed; its processes may still run.
    NodeRestarted(NodeId),
    /// A fence device confirmed `node` is off: nothing runs there.
    Fenced(NodeId),
    /// `node`'s daemon is shutting down cleanly and says nothing of ours runs there any more
    /// (its own record of what it stopped). Resources left alone there (unmanaged by the
    /// operator, maintenance) stay possibly active, and then the node has not left cleanly.
    NodeLeft(NodeId),
    /// Answer to `Command::Probe` with the same `op`.
    Probe {
        resource: ResourceId,
        node: NodeId,
        op: u64,
        outcome: MonitorOutcome,
    },
    /// A recurring monitor run by the engine, with the group epoch it knew.
    Monitor {
        resource: ResourceId,
        node: NodeId,
        epoch: u64,
        outcome: MonitorOutcome,
    },
    /// Answer to `Command::Start`/`Stop`/`Recover` with the same `op`.
    ActionDone {
        resource: ResourceId,
        node: NodeId,
        op: u64,
        action: ActionKind,
        result: Result<(), Failure>,
    },
    Operator(OperatorCommand),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Command {
    Probe {
        resource: ResourceId,
        node: NodeId,
        op: u64,
        epoch: u64,
    },
    Start {
        resource: ResourceId,
        node: NodeId,
        op: u64,
        epoch: u64,
    },
    Stop {
        resource: ResourceId,
        node: NodeId,
        op: u64,
        epoch: u64,
    },
    Recover {
        resource: ResourceId,
        node: NodeId,
        op: u64,
        epoch: u64,
    },
    Fence {
        node: NodeId,
    },
    /// A decision worth recording in the event history.
    Note {
        subject: String,
        message: String,
    },
}

/// The highest epoch ever assigned; a group at it is not moved any more.
pub const MAX_EPOCH: u64 = u64::MAX - 1;

pub struct Scheduler {
    model: Model,
    state: State,
    /// The node is shutting down: every group is stopped here, targets are kept.
    shutting_down: bool,
    /// Whether the last event changed anything beyond monitor bookkeeping.
    changed: bool,
    /// Whether the last event changed the decisions.
    decisions_changed: bool,
    /// Bumped whenever an event changes the decisions.
    generation: u64,
    /// Every new epoch is above this.
    epoch_floor: u64,
    /// The last operation id issued.
    last_op: u64,
    /// Nodes in maintenance, and resources stopped or (un)managed by the operator: with none
    /// (the usual case) the hot paths skip those checks. Recounted after every operator
    /// command and restore.
    overrides: Overrides,
}

#[derive(Debug, Clone, Copy, Default)]
struct Overrides {
    maintenance: bool,
    stopped: bool,
}

impl Scheduler {
    /// A fresh scheduler: every node down until told otherwise, every resource unknown
    /// (probed when its node comes up), groups targeted by `autostart`.
    pub fn new(model: Model) -> Self {
        let decisions = Decisions {
            nodes: model.nodes.iter().map(|n| (n.name.clone(), NodeDecision::default())).collect(),
            groups: model
                .groups
                .values()
                .map(|g| {
                    let target = if g.autostart { Target::Started } else { Target::Stopped };
                    (g.name.clone(), GroupState { target, owner: None, epoch: 0, failed_on: BTreeMap::new(), move_to: None })
                })
                .collect(),
            resources: model.resources.keys().map(|r| (r.clone(), ResourceDecision::default())).collect(),
        };
        let observations = Observations {
            nodes: model.nodes.iter().map(|n| (n.name.clone(), NodeObservation::default())).collect(),
            resources: model.resources.keys().map(|r| (r.clone(), ResourceObservation::default())).collect(),
        };
        Self {
            model,
            state: State { decisions, observations },
            shutting_down: false,
            changed: true,
            decisions_changed: true,
            generation: 0,
            epoch_floor: 0,
            last_op: 0,
            overrides: Overrides::default(),
        }
    }

    fn recount_overrides(&mut self) {
        let d = &self.state.decisions;
        self.overrides =
            Overrides { maintenance: d.nodes.values().any(|n| n.maintenance), stopped: d.resources.values().any(|r| r.stopped) };
    }

    /// Restore what was persisted (targets, owners, epochs, failures, blocks, standby, restart
    /// counters). What resources were doing is re-learned by probing: until a node is up and
    /// has answered, every resource counts as possibly active there ([`Activity::Unknown`]), so
    /// a node that never returns must be fenced before its groups run elsewhere. Feed `NodeUp`
    /// for every reachable node promptly after restoring. Epochs are raised to at least `epoch_floor`,
    /// and every later epoch is above it. Unknown names are ignored.
    pub fn restore(&mut self, saved: &Persisted, epoch_floor: u64) {
        self.epoch_floor = self.epoch_floor.max(epoch_floor.min(MAX_EPOCH));
        let d = &mut self.state.decisions;
        for (name, g) in &saved.decisions.groups {
            if let Some(cur) = d.groups.get_mut(name) {
                *cur = g.clone();
            }
        }
        for g in d.groups.values_mut() {
            g.epoch = g.epoch.max(self.epoch_floor);
        }
        for (name, r) in &saved.decisions.resources {
            if let Some(cur) = d.resources.get_mut(name) {
                *cur = r.clone();
            }
        }
        for (name, n) in &saved.decisions.nodes {
            if let Some(cur) = d.nodes.get_mut(name) {
                cur.standby = n.standby;
                cur.maintenance = n.maintenance;
                cur.last_fenced = n.last_fenced;
                cur.left = n.left;
            }
        }
        for (name, per_node) in &saved.restarts {
            if let Some(cur) = self.state.observations.resources.get_mut(name) {
                cur.restarts = per_node.clone();
            }
        }
        self.recount_overrides();
        // We ran before and do not know what still runs where: every resource is possibly
        // active on every node until that node answers its probes (or is fenced).
        // A node that left cleanly runs nothing until it is back.
        let runners: Vec<NodeId> = self
            .model
            .nodes
            .iter()
            .filter(|n| n.role == Role::Node && !self.state.decisions.nodes.get(&n.name).is_some_and(|d| d.left))
            .map(|n| n.name.clone())
            .collect();
        for r in self.state.observations.resources.values_mut() {
            for n in &runners {
                r.may_have_run.insert(n.clone());
                r.on.entry(n.clone()).or_insert(Activity::Unknown);
            }
        }
        self.decisions_changed = true;
        self.generation += 1;
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The replicated decisions (cheap to compare with an earlier copy).
    pub fn decisions(&self) -> Decisions {
        self.state.decisions.clone()
    }

    /// What to persist so that [`Scheduler::restore`] can bring it back.
    pub fn persisted(&self) -> Persisted {
        Persisted {
            decisions: self.state.decisions.clone(),
            restarts: self.state.observations.resources.iter().map(|(r, o)| (r.clone(), o.restarts.clone())).collect(),
        }
    }

    /// Whether the last handled event (or `restore`/`stop_all`) changed the decisions: persist
    /// them before carrying out the commands it returned.
    pub fn decisions_changed(&self) -> bool {
        self.decisions_changed
    }

    /// Bumped each time an event changes the decisions.
    pub fn decisions_generation(&self) -> u64 {
        self.generation
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Check an operator command before it is queued; the error is shown to the operator.
    pub fn check_operator(&self, cmd: &OperatorCommand) -> Result<(), String> {
        let group = |g: &str| self.model.groups.get(g).map(|_| ()).ok_or_else(|| format!("no group named `{g}`"));
        let node = |n: &str| self.model.nodes.iter().find(|x| x.name == n).map(|_| ()).ok_or_else(|| format!("no node named `{n}`"));
        match cmd {
            OperatorCommand::MoveGroup { group: g, to } => {
                group(g)?;
                if let Some(b) = self.blocked_member(&self.model.groups[g]) {
                    return Err(format!("group `{g}` is blocked: resource `{b}` has an invalid config (fix it, then clean up)"));
                }
                if let Some(to) = to {
                    node(to)?;
                    let gm = &self.model.groups[g];
                    if !self.eligible(gm, to, true) {
                        return Err(format!(
                            "node `{to}` cannot run group `{g}` now (down, standby, witness, not installed, failed there, or not in its priority list)"
                        ));
                    }
                } else if self.next_node(&self.model.groups[g]).is_none() {
                    return Err(format!("no other node can run group `{g}` now"));
                }
                Ok(())
            }
            OperatorCommand::StartGroup { group: g } | OperatorCommand::StopGroup { group: g } => group(g),
            OperatorCommand::Cleanup { resource } => {
                self.model.resources.get(resource).map(|_| ()).ok_or_else(|| format!("no resource named `{resource}`"))
            }
            OperatorCommand::Standby { node: n } | OperatorCommand::Online { node: n } | OperatorCommand::Maintenance { node: n, .. } => {
                node(n)
            }
            OperatorCommand::ConfirmDown { node: n } => {
                node(n)?;
                if self.up(n) {
                    return Err(format!(
                        "node `{n}` is up (it answers): confirm-down is only for a lost node that is really off; if it must stop, stop it first"
                    ));
                }
                Ok(())
            }
            OperatorCommand::StopResource { resource } => {
                let rm = self.model.resources.get(resource).ok_or_else(|| format!("no resource named `{resource}`"))?;
                let d = &self.state.decisions.resources[resource];
                if !d.managed.map_or(rm.unmanaged, |m| !m) && self.unmanaged(resource) {
                    return Err(format!(
                        "resource `{resource}` is on a node in maintenance: nothing is acted on there (`warden node maintenance off NODE` first)"
                    ));
                }
                if self.unmanaged(resource) {
                    return Err(format!("resource `{resource}` is unmanaged (monitored only); `warden resource manage {resource}` first"));
                }
                Ok(())
            }
            // Always allowed: it only lifts an earlier stop (which also holds what needs it).
            OperatorCommand::StartResource { resource } => {
                self.model.resources.get(resource).map(|_| ()).ok_or_else(|| format!("no resource named `{resource}`"))
            }
            OperatorCommand::SetManaged { resource, .. } => {
                self.model.resources.get(resource).map(|_| ()).ok_or_else(|| format!("no resource named `{resource}`"))
            }
        }
    }

    /// Apply one event and return what to do now.
    pub fn handle(&mut self, now: Millis, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        // A healthy monitor of a running resource (the overwhelmingly common event) changes only
        // bookkeeping: skip the O(groups) reconcile, and tell the caller nothing else changed.
        let routine = match &event {
            Event::Monitor { resource, node, outcome: MonitorOutcome::Running | MonitorOutcome::Degraded(_), .. } => {
                self.activity(resource, node) == Some(&Activity::Running)
            }
            _ => false,
        };
        if routine {
            self.apply(now, event, &mut out);
            self.changed = false;
            self.decisions_changed = false;
            return out;
        }
        let before = self.state.decisions.clone();
        self.apply(now, event, &mut out);
        self.reconcile(now, &mut out);
        self.changed = true;
        self.decisions_changed = before != self.state.decisions;
        if self.decisions_changed {
            self.generation += 1;
        }
        out
    }

    /// False when the last event only refreshed monitor bookkeeping (nothing to persist, no new
    /// resources to monitor).
    pub fn changed(&self) -> bool {
        self.changed
    }

    fn activity(&self, resource: &ResourceId, node: &NodeId) -> Option<&Activity> {
        self.state.observations.resources.get(resource).and_then(|r| r.on.get(node))
    }

    fn obs(&mut self, resource: &ResourceId) -> &mut ResourceObservation {
        self.state.observations.resources.get_mut(resource).expect("resource in the model")
    }

    fn up(&self, node: &NodeId) -> bool {
        self.state.observations.nodes.get(node).is_some_and(|n| n.up)
    }

    fn set(&mut self, resource: &ResourceId, node: &NodeId, a: Option<Activity>) {
        if let Some(r) = self.state.observations.resources.get_mut(resource) {
            match a {
                Some(a) => {
                    r.on.insert(node.clone(), a);
                }
                None => {
                    r.on.remove(node);
                    r.may_have_run.remove(node);
                }
            }
        }
    }

    fn group_of(&self, resource: &ResourceId) -> Option<&GroupModel> {
        self.model.resources.get(resource).and_then(|r| self.model.groups.get(&r.group)).map(|g| &**g)
    }

    fn epoch_of(&self, resource: &ResourceId) -> u64 {
        self.model.resources.get(resource).and_then(|r| self.state.decisions.groups.get(&r.group)).map_or(0, |g| g.epoch)
    }

    fn has_in_flight(&self, resource: &ResourceId, node: &NodeId) -> bool {
        self.state.observations.resources.get(resource).and_then(|r| r.in_flight.get(node)).is_some_and(|v| !v.is_empty())
    }

    /// Issue an operation: a new op id, recorded in flight, the activity it implies.
    fn issue(&mut self, kind: OpKind, resource: &ResourceId, node: &NodeId, out: &mut Vec<Command>) {
        self.last_op = self.last_op.saturating_add(1);
        let op = self.last_op;
        let epoch = self.epoch_of(resource);
        let (activity, cmd) = match kind {
            OpKind::Probe => (Activity::Probing, Command::Probe { resource: resource.clone(), node: node.clone(), op, epoch }),
            OpKind::Start => (Activity::Starting, Command::Start { resource: resource.clone(), node: node.clone(), op, epoch }),
            OpKind::Stop => (Activity::Stopping, Command::Stop { resource: resource.clone(), node: node.clone(), op, epoch }),
            OpKind::Recover => (Activity::Recovering, Command::Recover { resource: resource.clone(), node: node.clone(), op, epoch }),
        };
        let r = self.obs(resource);
        r.in_flight.entry(node.clone()).or_default().push(InFlight { op, kind, epoch });
        if matches!(kind, OpKind::Start | OpKind::Recover) {
            r.may_have_run.insert(node.clone());
        }
        r.on.insert(node.clone(), activity);
        out.push(cmd);
    }

    /// Accept the answer to `op` on (resource, node): None when it answers nothing in flight
    /// (ignored). Otherwise the op and every earlier one there are done (the executor runs them
    /// in order), and the result says whether no later op is still in flight (this answer
    /// decides the activity).
    fn take_op(&mut self, resource: &ResourceId, node: &NodeId, op: u64, kind: OpKind) -> Option<bool> {
        let r = self.state.observations.resources.get_mut(resource)?;
        let list = r.in_flight.get_mut(node)?;
        list.iter().find(|f| f.op == op && f.kind == kind)?;
        list.retain(|f| f.op > op);
        let last = list.is_empty();
        if last {
            r.in_flight.remove(node);
        }
        Some(last)
    }

    fn forget_node_ops(&mut self, node: &NodeId) {
        for r in self.state.observations.resources.values_mut() {
            r.in_flight.remove(node);
        }
    }

    fn apply(&mut self, now: Millis, event: Event, out: &mut Vec<Command>) {
        match event {
            Event::Tick => self.on_tick(now, out),
            Event::NodeUp(n) => {
                if let Some(ns) = self.state.observations.nodes.get_mut(&n) {
                    ns.up = true;
                }
                if let Some(d) = self.state.decisions.nodes.get_mut(&n) {
                    d.left = false;
                }
                // Ask about every resource there: what we knew may be stale, and what ran
                // before (a restarted daemon, late commands) is adopted. A probe answers after
                // every earlier command for that resource there.
                if self.is_runner(&n) {
                    let names: Vec<ResourceId> = self.model.resources.keys().cloned().collect();
                    for r in names {
                        self.issue(OpKind::Probe, &r, &n, out);
                    }
                }
            }
            Event::NodesUp(nodes) => {
                for n in nodes {
                    self.apply(now, Event::NodeUp(n), out);
                }
            }
            Event::NodeRestarted(n) => {
                // Its queue is gone: nothing in flight there will answer or run later.
                self.forget_node_ops(&n);
                for r in self.state.observations.resources.values_mut() {
                    r.on.remove(&n);
                    r.monitor_timeouts.remove(&n);
                    r.may_have_run.insert(n.clone());
                }
                if self.is_runner(&n) {
                    let up = self.up(&n);
                    let names: Vec<ResourceId> = self.model.resources.keys().cloned().collect();
                    for r in names {
                        if up {
                            self.issue(OpKind::Probe, &r, &n, out);
                        } else {
                            self.set(&r, &n, Some(Activity::Unknown));
                        }
                    }
                }
                out.push(Command::Note { subject: n.to_string(), message: "daemon restarted: resources there are probed again".into() });
            }
            Event::NodeDown(n) => {
                if let Some(ns) = self.state.observations.nodes.get_mut(&n) {
                    ns.up = false;
                }
                // Operations in flight stay recorded: the node may still carry them out.
                let had_any = self.state.observations.resources.iter().any(|(name, r)| r.on.contains_key(&n) && !self.external(name));
                for r in self.state.observations.resources.values_mut() {
                    if let Some(a) = r.on.get_mut(&n) {
                        *a = Activity::Unknown;
                    }
                }
                if had_any {
                    out.push(Command::Note {
                        subject: n.to_string(),
                        message: "node lost while running resources: fencing required before they run elsewhere".into(),
                    });
                }
            }
            Event::Fenced(n) => self.fenced(now, n, "fenced: nothing runs there any more", out),
            Event::NodeLeft(n) => {
                if let Some(ns) = self.state.observations.nodes.get_mut(&n) {
                    ns.up = false;
                }
                self.forget_node_ops(&n);
                let kept: Vec<ResourceId> =
                    self.model.resources.keys().filter(|r| self.unmanaged(r) && !self.external(r)).cloned().collect();
                let mut left_alone = Vec::new();
                for (name, r) in self.state.observations.resources.iter_mut() {
                    if kept.contains(name) && r.on.contains_key(&n) {
                        r.on.insert(n.clone(), Activity::Unknown);
                        left_alone.push(name.to_string());
                    } else {
                        r.on.remove(&n);
                        r.may_have_run.remove(&n);
                    }
                    r.monitor_timeouts.remove(&n);
                }
                if let Some(d) = self.state.decisions.nodes.get_mut(&n) {
                    d.left = left_alone.is_empty();
                }
                let message = if left_alone.is_empty() {
                    "left cleanly: nothing runs there".to_string()
                } else {
                    format!(
                        "left with resources it leaves alone possibly running ({}): their groups wait for it or a fence",
                        left_alone.join(", ")
                    )
                };
                out.push(Command::Note { subject: n.to_string(), message });
            }
            Event::Probe { resource, node, op, outcome } => self.on_probe(now, resource, node, op, outcome, out),
            Event::Monitor { resource, node, epoch, outcome } => self.on_monitor(now, resource, node, epoch, outcome, out),
            Event::ActionDone { resource, node, op, action, result } => self.on_action(now, resource, node, op, action, result, out),
            Event::Operator(cmd) => {
                self.on_operator(now, cmd, out);
                self.recount_overrides();
            }
        }
    }

    fn on_tick(&mut self, now: Millis, out: &mut Vec<Command>) {
        let groups: Vec<std::sync::Arc<GroupModel>> = self.model.groups.values().cloned().collect();
        for g in &groups {
            let window = g.restart_window;
            for r in &g.members {
                let o = self.obs(r);
                for times in o.restarts.values_mut() {
                    times.retain(|t| now.saturating_sub(*t) < window);
                }
                o.restarts.retain(|_, v| !v.is_empty());
            }
            let Some(timeout) = g.failure_timeout else { continue };
            let gs = self.state.decisions.groups.get_mut(&g.name).unwrap();
            let expired: Vec<NodeId> =
                gs.failed_on.iter().filter(|(_, f)| now.saturating_sub(f.at) >= timeout).map(|(n, _)| n.clone()).collect();
            for n in expired {
                gs.failed_on.remove(&n);
                out.push(Command::Note {
                    subject: g.name.to_string(),
                    message: format!("failure on {n} expired (failure_timeout passed)"),
                });
            }
        }
        // Resources whose state is unsure on a reachable node are asked again.
        let mut again = Vec::new();
        for (r, o) in &self.state.observations.resources {
            for (n, a) in &o.on {
                if *a == Activity::Unsure && self.up(n) && o.in_flight.get(n).is_none_or(|v| v.is_empty()) {
                    again.push((r.clone(), n.clone()));
                }
            }
        }
        for (r, n) in again {
            self.issue(OpKind::Probe, &r, &n, out);
        }
    }

    fn is_runner(&self, node: &NodeId) -> bool {
        self.model.nodes.iter().any(|n| n.name == *node && n.role == Role::Node)
    }

    fn block(&mut self, resource: &ResourceId, node: &NodeId, why: &str, out: &mut Vec<Command>) {
        if self.unmanaged(resource) {
            return;
        }
        let d = self.state.decisions.resources.get_mut(resource).unwrap();
        if d.blocked.is_none() {
            d.blocked = Some(format!("on {node}: {why}"));
            out.push(Command::Note {
                subject: resource.to_string(),
                message: format!("invalid config on {node} ({why}): blocked, its group is frozen until cleanup"),
            });
        }
        self.obs(resource).last_failure = Some(format!("invalid config: {why}"));
    }

    fn mark_ineligible(&mut self, resource: &ResourceId, node: &NodeId, why: &str, out: &mut Vec<Command>) {
        let d = self.state.decisions.resources.get_mut(resource).unwrap();
        if d.ineligible.insert(node.clone(), why.to_string()).is_none() {
            out.push(Command::Note {
                subject: resource.to_string(),
                message: format!("not installed on {node} ({why}): that node cannot run its group until cleanup"),
            });
        }
    }

    fn on_probe(&mut self, now: Millis, resource: ResourceId, node: NodeId, op: u64, outcome: MonitorOutcome, out: &mut Vec<Command>) {
        let Some(last) = self.take_op(&resource, &node, op, OpKind::Probe) else { return };
        if !last {
            // A later probe is in flight there: its answer decides.
            return;
        }
        let may_have_run = self.state.observations.resources[&resource].may_have_run.contains(&node);
        let a = match &outcome {
            MonitorOutcome::Running | MonitorOutcome::Degraded(_) => Some(Activity::Running),
            MonitorOutcome::Stopped => None,
            MonitorOutcome::Error(Failure::NotInstalled(why)) => {
                self.mark_ineligible(&resource, &node, why, out);
                None
            }
            MonitorOutcome::Error(Failure::InvalidConfig(why)) => {
                self.block(&resource, &node, why, out);
                if may_have_run {
                    Some(Activity::Failed)
                } else {
                    None
                }
            }
            // We cannot tell: possibly active, asked again on the next tick.
            MonitorOutcome::Error(Failure::Timeout | Failure::HostFault(_)) => Some(Activity::Unsure),
            // The agent says it is broken: it may be partly running, so it gets a stop.
            MonitorOutcome::Failed(_) | MonitorOutcome::Error(Failure::Failed(_) | Failure::AccessDenied(_) | Failure::Unsupported(_)) => {
                Some(Activity::Failed)
            }
        };
        if matches!(a, Some(Activity::Running | Activity::Failed)) {
            self.obs(&resource).may_have_run.insert(node.clone());
        }
        self.set(&resource, &node, a);
        self.obs(&resource).last_monitor = Some(MonitorRecord { at: now, node, outcome });
    }

    fn on_monitor(&mut self, now: Millis, resource: ResourceId, node: NodeId, epoch: u64, outcome: MonitorOutcome, out: &mut Vec<Command>) {
        let Some(rm) = self.model.resources.get(&resource).cloned() else { return };
        let gm = std::sync::Arc::clone(&self.model.groups[&rm.group]);
        // Stale: from an older placement, or about a resource an action is working on (the
        // action's result decides).
        if epoch < self.state.decisions.groups[&gm.name].epoch || self.has_in_flight(&resource, &node) {
            return;
        }
        self.obs(&resource).last_monitor = Some(MonitorRecord { at: now, node: node.clone(), outcome: outcome.clone() });
        let current = self.activity(&resource, &node).cloned();
        if self.unmanaged(&resource) {
            // Only reported; never acted on.
            let a = match outcome {
                MonitorOutcome::Running | MonitorOutcome::Degraded(_) => Some(Activity::Running),
                MonitorOutcome::Stopped => None,
                MonitorOutcome::Failed(_) | MonitorOutcome::Error(Failure::Failed(_)) => Some(Activity::Failed),
                MonitorOutcome::Error(_) => current,
            };
            self.set(&resource, &node, a);
            return;
        }
        let failure = match &outcome {
            MonitorOutcome::Running | MonitorOutcome::Degraded(_) => {
                self.obs(&resource).monitor_timeouts.remove(&node);
                if current.is_none() {
                    // Running where we thought it stopped: it is active, so it counts (and will be
                    // stopped if this is not the group's node).
                    self.set(&resource, &node, Some(Activity::Running));
                    self.obs(&resource).may_have_run.insert(node.clone());
                }
                None
            }
            MonitorOutcome::Error(Failure::Timeout) => {
                let n = {
                    let c = self.obs(&resource).monitor_timeouts.entry(node.clone()).or_default();
                    *c = c.saturating_add(1);
                    *c
                };
                (n >= gm.monitor_timeouts_to_fail).then(|| format!("{n} monitor timeouts in a row"))
            }
            MonitorOutcome::Error(Failure::HostFault(why)) => {
                // The engine could not ask: not the resource's fault. Ask again.
                if current == Some(Activity::Running) {
                    self.obs(&resource).last_failure = Some(format!("monitor host fault: {why}"));
                    self.issue(OpKind::Probe, &resource, &node, out);
                }
                None
            }
            MonitorOutcome::Error(Failure::InvalidConfig(why)) => {
                if current.is_some() {
                    self.block(&resource, &node, why, out);
                }
                None
            }
            // A monitor never proves a resource stopped (it may be older than a late start):
            // only a probe, a stop or a fence does. A stopped resource we thought running failed.
            MonitorOutcome::Stopped => (current == Some(Activity::Running)).then(|| "stopped unexpectedly".to_string()),
            MonitorOutcome::Failed(reason) => Some(reason.clone()),
            MonitorOutcome::Error(Failure::NotInstalled(why)) => {
                if current.is_some() {
                    self.mark_ineligible(&resource, &node, why, out);
                }
                Some(format!("not installed: {why}"))
            }
            MonitorOutcome::Error(e) => Some(format!("monitor error: {e}")),
        };
        let Some(reason) = failure else { return };
        if current != Some(Activity::Running) {
            return;
        }
        if self.held_stopped(&gm, &resource) {
            // The operator asked for it stopped: a failure on the way there is no reason to
            // recover it or fail the group over; it is stopped like the rest (`start_group_on`).
            self.obs(&resource).last_failure = Some(reason);
            self.set(&resource, &node, Some(Activity::Failed));
            self.obs(&resource).may_have_run.insert(node.clone());
            return;
        }
        let blocked = self.blocked_member(&gm).is_some();
        let window = gm.restart_window;
        let r = self.obs(&resource);
        r.monitor_timeouts.remove(&node);
        r.last_failure = Some(reason.clone());
        let times = r.restarts.entry(node.clone()).or_default();
        times.retain(|t| now.saturating_sub(*t) < window);
        let used = times.len() as u32;
        let owner = self.state.decisions.groups[&gm.name].owner.clone();
        if rm.local_recovery && !blocked && owner.as_ref() == Some(&node) && used < gm.max_restarts {
            self.obs(&resource).restarts.entry(node.clone()).or_default().push(now);
            out.push(Command::Note {
                subject: resource.to_string(),
                message: format!("monitor failed ({reason}); local recovery {} of {}", used + 1, gm.max_restarts),
            });
            self.issue(OpKind::Recover, &resource, &node, out);
        } else {
            self.set(&resource, &node, Some(Activity::Failed));
            self.obs(&resource).may_have_run.insert(node.clone());
            self.fail_group_on(
                now,
                &gm.name,
                &node,
                &format!("resource `{resource}` failed ({reason}) and local recovery is exhausted"),
                out,
            );
        }
    }

    fn fail_group_on(&mut self, now: Millis, group: &GroupId, node: &NodeId, why: &str, out: &mut Vec<Command>) {
        let g = self.state.decisions.groups.get_mut(group).unwrap();
        if !g.failed_on.contains_key(node) {
            g.failed_on.insert(node.clone(), FailedOn { at: now, reason: why.to_string() });
            out.push(Command::Note { subject: group.to_string(), message: format!("group failed on {node}: {why}") });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_action(
        &mut self,
        now: Millis,
        resource: ResourceId,
        node: NodeId,
        op: u64,
        action: ActionKind,
        result: Result<(), Failure>,
        out: &mut Vec<Command>,
    ) {
        let Some(group) = self.group_of(&resource).map(|g| g.name.clone()) else { return };
        let Some(last) = self.take_op(&resource, &node, op, action.op_kind()) else { return };
        if !last {
            // A later operation (a probe) is in flight there: its answer decides.
            if let Err(e) = &result {
                self.obs(&resource).last_failure = Some(format!("{action:?} failed: {e}"));
            }
            return;
        }
        let may_have_run = self.state.observations.resources[&resource].may_have_run.contains(&node);
        match (action, result) {
            (_, Err(Failure::HostFault(why))) => {
                // The engine could not run it: we do not know what happened. Ask.
                self.obs(&resource).last_failure = Some(format!("{action:?}: host fault: {why}"));
                if self.up(&node) {
                    self.issue(OpKind::Probe, &resource, &node, out);
                } else {
                    self.set(&resource, &node, Some(Activity::Unknown));
                }
            }
            (ActionKind::Start | ActionKind::Recover, Ok(())) => {
                self.set(&resource, &node, Some(Activity::Running));
                let r = self.obs(&resource);
                r.monitor_timeouts.remove(&node);
                // The last monitor described the resource before this action; the next one tells.
                r.last_monitor = None;
            }
            (ActionKind::Start, Err(Failure::NotInstalled(why))) => {
                self.set(&resource, &node, None);
                self.mark_ineligible(&resource, &node, &why, out);
            }
            (ActionKind::Start, Err(Failure::InvalidConfig(why))) => {
                // The agent refused to start it, and a start is only issued where the resource
                // is known stopped: nothing runs there. No fencing.
                self.block(&resource, &node, &why, out);
                self.set(&resource, &node, None);
            }
            (ActionKind::Recover, Err(Failure::InvalidConfig(why))) => {
                self.block(&resource, &node, &why, out);
                self.set(&resource, &node, Some(Activity::Failed));
            }
            (ActionKind::Start | ActionKind::Recover, Err(e)) => {
                let verb = if action == ActionKind::Start { "start" } else { "recover" };
                self.set(&resource, &node, Some(Activity::Failed));
                self.obs(&resource).last_failure = Some(format!("{verb} failed: {e}"));
                self.fail_group_on(now, &group, &node, &format!("{verb} of `{resource}` failed: {e}"), out);
            }
            (ActionKind::Stop, Ok(())) => self.set(&resource, &node, None),
            (ActionKind::Stop, Err(Failure::NotInstalled(why))) => {
                self.set(&resource, &node, None);
                self.mark_ineligible(&resource, &node, &why, out);
            }
            (ActionKind::Stop, Err(Failure::InvalidConfig(why))) if !may_have_run => {
                // Nothing could have started it there: known stopped, no fencing.
                self.block(&resource, &node, &why, out);
                self.set(&resource, &node, None);
            }
            (ActionKind::Stop, Err(e)) => {
                if let Failure::InvalidConfig(why) = &e {
                    self.block(&resource, &node, why, out);
                }
                self.set(&resource, &node, Some(Activity::StopFailed));
                self.obs(&resource).last_failure = Some(format!("stop failed: {e}"));
                self.fail_group_on(
                    now,
                    &group,
                    &node,
                    &format!("stop of `{resource}` failed ({e}); the node must be fenced before the group runs elsewhere"),
                    out,
                );
            }
        }
    }

    /// `n` is known off (a fence device confirmed it, or the operator did): nothing runs there.
    fn fenced(&mut self, now: Millis, n: NodeId, why: &str, out: &mut Vec<Command>) {
        self.forget_node_ops(&n);
        for r in self.state.observations.resources.values_mut() {
            r.on.remove(&n);
            r.may_have_run.remove(&n);
            r.monitor_timeouts.remove(&n);
        }
        if let Some(ns) = self.state.decisions.nodes.get_mut(&n) {
            ns.needs_fence = false;
            ns.fence_requested = false;
            ns.last_fenced = Some(now);
        }
        out.push(Command::Note { subject: n.to_string(), message: why.into() });
    }

    fn on_operator(&mut self, now: Millis, cmd: OperatorCommand, out: &mut Vec<Command>) {
        if self.check_operator(&cmd).is_err() {
            return;
        }
        match cmd {
            OperatorCommand::MoveGroup { group, to } => {
                let target = to.or_else(|| self.next_node(&self.model.groups[&group]));
                let g = self.state.decisions.groups.get_mut(&group).unwrap();
                // The operator asks for this node: forget an old failure there, once. A new
                // failure there counts again (no endless retry on a node that keeps failing).
                if let Some(t) = &target {
                    g.failed_on.remove(t);
                }
                g.move_to = target;
                g.target = Target::Started;
            }
            OperatorCommand::StartGroup { group } => {
                // Starting a FAILED group is the operator saying "try again": its failures are
                // forgotten (not a blocked member's invalid config: that needs a cleanup).
                let g = self.state.decisions.groups.get_mut(&group).unwrap();
                g.target = Target::Started;
                let was_failed = !g.failed_on.is_empty();
                g.failed_on.clear();
                if was_failed {
                    for r in self.model.groups[&group].members.clone() {
                        let o = self.obs(&r);
                        o.restarts.clear();
                        o.monitor_timeouts.clear();
                    }
                    out.push(Command::Note { subject: group.to_string(), message: "failures cleared by `group start`".into() });
                }
            }
            OperatorCommand::StopGroup { group } => {
                let g = self.state.decisions.groups.get_mut(&group).unwrap();
                g.target = Target::Stopped;
                g.move_to = None;
            }
            OperatorCommand::Cleanup { resource } => {
                let group = self.model.resources[&resource].group.clone();
                let r = self.obs(&resource);
                r.restarts.clear();
                r.monitor_timeouts.clear();
                r.last_failure = None;
                let d = self.state.decisions.resources.get_mut(&resource).unwrap();
                d.blocked = None;
                d.ineligible.clear();
                self.state.decisions.groups.get_mut(&group).unwrap().failed_on.clear();
                // Learn the truth again instead of trusting old failures (or an invalid-config
                // probe that took the resource for stopped).
                let nodes: Vec<NodeId> =
                    self.model.nodes.iter().filter(|n| n.role == Role::Node && self.up(&n.name)).map(|n| n.name.clone()).collect();
                for n in nodes {
                    // Also where something is in flight: this probe answers after it, and an
                    // older answer (say, from before the config was fixed) no longer decides.
                    self.issue(OpKind::Probe, &resource, &n, out);
                }
                out.push(Command::Note { subject: resource.to_string(), message: "failures cleaned up by the operator".into() });
            }
            OperatorCommand::Standby { node } => self.state.decisions.nodes.get_mut(&node).unwrap().standby = true,
            OperatorCommand::Online { node } => self.state.decisions.nodes.get_mut(&node).unwrap().standby = false,
            OperatorCommand::StopResource { resource } => self.state.decisions.resources.get_mut(&resource).unwrap().stopped = true,
            OperatorCommand::StartResource { resource } => self.state.decisions.resources.get_mut(&resource).unwrap().stopped = false,
            OperatorCommand::SetManaged { resource, managed } => {
                let config = !self.model.resources[&resource].unmanaged;
                // Back to what the config says is stored as no override.
                self.state.decisions.resources.get_mut(&resource).unwrap().managed = (managed != config).then_some(managed);
                if managed {
                    // It was left alone: learn what it is doing before acting on it.
                    let nodes: Vec<NodeId> =
                        self.model.nodes.iter().filter(|n| n.role == Role::Node && self.up(&n.name)).map(|n| n.name.clone()).collect();
                    for n in nodes {
                        self.issue(OpKind::Probe, &resource, &n, out);
                    }
                }
            }
            OperatorCommand::ConfirmDown { node } => {
                self.fenced(now, node, "confirmed off by the operator: nothing runs there any more", out)
            }
            OperatorCommand::Maintenance { node, on } => {
                self.state.decisions.nodes.get_mut(&node).unwrap().maintenance = on;
                if !on {
                    // Things may have changed behind our back: probe what runs there.
                    if self.up(&node) && self.is_runner(&node) {
                        for r in self.model.resources.keys().cloned().collect::<Vec<_>>() {
                            self.issue(OpKind::Probe, &r, &node, out);
                        }
                    }
                }
            }
        }
    }

    /// Monitored and reported, never acted on: the config's `unmanaged` (or the operator's
    /// override), or possibly active on (or owned by) a node in maintenance.
    pub fn unmanaged(&self, r: &ResourceId) -> bool {
        let rm = &self.model.resources[r];
        let d = &self.state.decisions.resources[r];
        if d.managed.map_or(rm.unmanaged, |m| !m) {
            return true;
        }
        if !self.overrides.maintenance {
            return false;
        }
        let owner = self.state.decisions.groups[&rm.group].owner.as_ref();
        owner.is_some_and(|o| self.in_maintenance(o)) || self.state.observations.resources[r].on.keys().any(|n| self.in_maintenance(n))
    }

    /// Unmanaged by the config, with no operator override: something outside the cluster's
    /// control (a service every node runs). It never holds its group back and never counts for
    /// fencing. A resource the operator left alone (`unmanage`, maintenance) is not external:
    /// it is not acted on, but where it may run it still counts.
    pub fn external(&self, r: &ResourceId) -> bool {
        self.model.resources[r].unmanaged && self.state.decisions.resources[r].managed.is_none()
    }

    /// The operator put `node` in maintenance.
    pub fn in_maintenance(&self, node: &NodeId) -> bool {
        self.state.decisions.nodes.get(node).is_some_and(|n| n.maintenance)
    }

    /// `r` is kept stopped by the operator: it or something it needs (in its group) was stopped
    /// with `resource stop`.
    pub fn held_stopped(&self, g: &GroupModel, r: &ResourceId) -> bool {
        if !self.overrides.stopped {
            return false;
        }
        let mut todo = vec![r];
        let mut seen = BTreeSet::new();
        while let Some(x) = todo.pop() {
            if !seen.insert(x) {
                continue;
            }
            if self.state.decisions.resources[x].stopped {
                return true;
            }
            todo.extend(g.deps.get(x).into_iter().flatten());
        }
        false
    }

    /// Why a group that should run does not run anywhere (its state is `waiting`), in words.
    pub fn why_waiting(&self, group: &GroupId) -> Option<String> {
        let g = self.model.groups.get(group)?;
        let gs = &self.state.decisions.groups[group];
        if gs.target != Target::Started || gs.owner.is_some() {
            return None;
        }
        let mut reasons = Vec::new();
        for n in &g.priority {
            let Some(ns) = self.state.decisions.nodes.get(n) else { continue };
            let why = if !self.is_runner(n) {
                "a witness".to_string()
            } else if !self.up(n) {
                "down".to_string()
            } else if ns.standby {
                "in standby".to_string()
            } else if ns.maintenance {
                "in maintenance".to_string()
            } else if ns.needs_fence {
                "needs fencing".to_string()
            } else if let Some((r, why)) =
                g.members.iter().find_map(|r| self.state.decisions.resources[r].ineligible.get(n).map(|w| (r, w)))
            {
                format!("cannot run `{r}` ({why})")
            } else if gs.failed_on.contains_key(n) {
                "the group failed there (`warden resource cleanup` or `group start` to retry)".to_string()
            } else {
                continue;
            };
            reasons.push(format!("{n}: {why}"));
        }
        // Possibly active elsewhere: nothing starts until that is settled.
        let elsewhere: Vec<String> = g
            .members
            .iter()
            .flat_map(|r| self.state.observations.resources[r].on.iter().map(move |(n, a)| format!("{r} is {} on {n}", activity_word(a))))
            .collect();
        if !elsewhere.is_empty() {
            reasons.push(format!("waiting for {}", elsewhere.join(", ")));
        }
        if reasons.is_empty() {
            reasons.push("no node in its priority list can run it".into());
        }
        Some(reasons.join("; "))
    }

    /// A managed member of `g` blocked by an invalid config.
    fn blocked_member(&self, g: &GroupModel) -> Option<ResourceId> {
        g.members.iter().find(|r| self.state.decisions.resources[*r].blocked.is_some()).cloned()
    }

    /// Can `node` run group `g`? `ignore_failed` is for checking an explicit operator move.
    fn eligible(&self, g: &GroupModel, node: &NodeId, ignore_failed: bool) -> bool {
        let Some(ns) = self.state.decisions.nodes.get(node) else { return false };
        self.up(node)
            && !ns.standby
            && !ns.maintenance
            && !ns.needs_fence
            && self.is_runner(node)
            && g.priority.iter().any(|p| p == node)
            && g.members.iter().all(|r| !self.state.decisions.resources[r].ineligible.contains_key(node))
            && (ignore_failed || !self.state.decisions.groups[&g.name].failed_on.contains_key(node))
    }

    fn next_node(&self, g: &GroupModel) -> Option<NodeId> {
        let owner = self.state.decisions.groups[&g.name].owner.clone();
        g.priority.iter().find(|n| Some(*n) != owner.as_ref() && self.eligible(g, n, false)).cloned()
    }

    fn desired_owner(&self, g: &GroupModel) -> Option<NodeId> {
        let gs = &self.state.decisions.groups[&g.name];
        // A group on a node in maintenance stays there, whatever else is asked: nothing of it is
        // acted on until maintenance ends.
        // A node in maintenance that is lost is handled like any lost node (fenced where a
        // device can, then its groups run elsewhere): the pin holds only while it is up.
        if let Some(o) = gs.owner.as_ref().filter(|o| self.in_maintenance(o) && self.up(o)) {
            return Some(o.clone());
        }
        if gs.target == Target::Stopped || self.shutting_down {
            return None;
        }
        if let Some(m) = &gs.move_to {
            if self.eligible(g, m, false) {
                return Some(m.clone());
            }
        }
        // A lost owner on which the group may still run keeps it: nothing can start elsewhere
        // before that node answers or is fenced anyway, and a decision moved away would move the
        // group as soon as the node came back (after nothing worse than a restart of its daemon).
        if let Some(o) = gs.owner.as_ref().filter(|o| !self.up(o) && self.may_run_on(g, o)) {
            return Some(o.clone());
        }
        if g.switchback == Switchback::Intelligent {
            if let Some(o) = &gs.owner {
                if self.eligible(g, o, false) {
                    return Some(o.clone());
                }
            }
        }
        g.priority.iter().find(|n| self.eligible(g, n, false)).cloned()
    }

    /// Some member of `g` (that the cluster manages or the operator left alone) may be active on
    /// `node`: not known stopped there.
    fn may_run_on(&self, g: &GroupModel, node: &NodeId) -> bool {
        g.members.iter().any(|r| !self.external(r) && self.activity(r, node).is_some())
    }

    fn reconcile(&mut self, _now: Millis, out: &mut Vec<Command>) {
        // Placement reads `needs_fence` (through `eligible`): derive it from what is known now,
        // not from the previous round (a node that just came back is not stuck any more).
        let stuck = self.stuck_nodes();
        for (n, nd) in self.state.decisions.nodes.iter_mut() {
            nd.needs_fence = stuck.contains(n);
        }
        let groups: Vec<std::sync::Arc<GroupModel>> = self.model.groups.values().cloned().collect();
        for g in &groups {
            if self.blocked_member(g).is_some() {
                // Frozen until the operator cleans up: not started, moved or stopped.
                continue;
            }
            let desired = self.desired_owner(g);
            let gs = self.state.decisions.groups.get_mut(&g.name).unwrap();
            if gs.owner != desired {
                if let Some(d) = &desired {
                    let base = gs.epoch.max(self.epoch_floor);
                    match base.checked_add(1).filter(|e| *e <= MAX_EPOCH) {
                        Some(e) => {
                            gs.epoch = e;
                            out.push(Command::Note { subject: g.name.to_string(), message: format!("placed on {d} (epoch {e})") });
                        }
                        None => {
                            out.push(Command::Note {
                                subject: g.name.to_string(),
                                message: format!("not moved to {d}: its epoch is exhausted ({})", gs.epoch),
                            });
                            continue;
                        }
                    }
                }
                gs.owner = desired.clone();
            }
            let nodes: BTreeSet<NodeId> = g.members.iter().flat_map(|r| self.state.observations.resources[r].on.keys().cloned()).collect();
            let mut clear_elsewhere = true;
            for n in &nodes {
                if Some(n) == desired.as_ref() {
                    continue;
                }
                if !self.stop_group_on(g, n, out) {
                    clear_elsewhere = false;
                }
            }
            if let Some(d) = &desired {
                if clear_elsewhere && self.up(d) {
                    self.start_group_on(g, d, out);
                }
            }
            // With intelligent switchback an operator move is one-shot: once the group runs there
            // it simply stays. With automatic switchback the move holds (else the group would
            // bounce straight back) until the operator moves or stops the group again.
            let arrived = {
                let gs = &self.state.decisions.groups[&g.name];
                g.switchback == Switchback::Intelligent
                    && gs.move_to.is_some()
                    && gs.owner == gs.move_to
                    && self.group_running_on(g, gs.move_to.as_ref())
            };
            if arrived {
                self.state.decisions.groups.get_mut(&g.name).unwrap().move_to = None;
            }
        }
        let stuck = self.stuck_nodes();
        for m in &self.model.nodes {
            let stuck = stuck.contains(&m.name);
            let Some(nd) = self.state.decisions.nodes.get_mut(&m.name) else { continue };
            nd.needs_fence = stuck;
            if !stuck {
                nd.fence_requested = false;
            } else if m.fenceable && !nd.fence_requested {
                nd.fence_requested = true;
                out.push(Command::Fence { node: m.name.clone() });
            }
        }
    }

    /// Nodes that need fencing: something may run there that we cannot stop (a failed stop, or
    /// anything at all on a node we lost). Derived every time, so a node that comes back and
    /// answers its probes is cleared.
    fn stuck_nodes(&self) -> BTreeSet<NodeId> {
        let mut stuck: BTreeSet<NodeId> = BTreeSet::new();
        for (r, st) in &self.state.observations.resources {
            // A member left alone by the operator (unmanage, maintenance) still counts: it may
            // run there and must not run twice.
            if self.external(r) {
                continue;
            }
            for (n, a) in &st.on {
                if *a == Activity::StopFailed || !self.up(n) {
                    stuck.insert(n.clone());
                }
            }
        }
        stuck
    }

    fn group_running_on(&self, g: &GroupModel, node: Option<&NodeId>) -> bool {
        let Some(node) = node else { return false };
        g.members.iter().all(|r| self.activity(r, node) == Some(&Activity::Running))
    }

    fn dependents_active(&self, g: &GroupModel, r: &ResourceId, node: &NodeId) -> bool {
        g.dependents.get(r).into_iter().flatten().any(|d| !self.external(d) && self.state.observations.resources[d].on.contains_key(node))
    }

    /// Stop every managed member on `node`, top-down. True when nothing is possibly active there.
    fn stop_group_on(&mut self, g: &GroupModel, node: &NodeId, out: &mut Vec<Command>) -> bool {
        let up = self.up(node);
        let mut clear = true;
        for r in g.members.iter().rev() {
            let Some(a) = self.activity(r, node).cloned() else { continue };
            if self.unmanaged(r) {
                // Never acted on. An external one (unmanaged in the config) does not hold the
                // group back; one the operator left alone (unmanage, maintenance) may still run
                // here, so the group waits for it (it must not run twice).
                if !self.external(r) {
                    clear = false;
                }
                continue;
            }
            clear = false;
            if matches!(a, Activity::Running | Activity::Failed)
                && up
                && !self.has_in_flight(r, node)
                && !self.dependents_active(g, r, node)
            {
                self.issue(OpKind::Stop, r, node, out);
            }
            // Otherwise possibly active where we cannot act now (lost, stop failed, unsure, in
            // flight): fencing, a probe or the action's result decides.
        }
        clear
    }

    /// Start members on `node` bottom-up, each once everything it depends on runs there. A member
    /// that failed there without being recovered (a failed probe) is first stopped, with what
    /// depends on it, and then started again in order.
    fn start_group_on(&mut self, g: &GroupModel, node: &NodeId, out: &mut Vec<Command>) {
        let failed: Vec<ResourceId> =
            g.members.iter().filter(|r| !self.unmanaged(r) && self.activity(r, node) == Some(&Activity::Failed)).cloned().collect();
        if !failed.is_empty() {
            let mut restart: BTreeSet<ResourceId> = BTreeSet::new();
            let mut todo = failed;
            while let Some(r) = todo.pop() {
                if restart.insert(r.clone()) {
                    todo.extend(g.dependents.get(&r).into_iter().flatten().cloned());
                }
            }
            for r in g.members.iter().rev().filter(|r| restart.contains(*r)) {
                if self.unmanaged(r) {
                    continue;
                }
                if matches!(self.activity(r, node), Some(Activity::Running | Activity::Failed))
                    && !self.has_in_flight(r, node)
                    && !self.dependents_active(g, r, node)
                {
                    self.issue(OpKind::Stop, r, node, out);
                }
            }
            return;
        }
        // Members the operator stopped (and what needs them): stopped top-down, never started.
        for r in g.members.iter().rev() {
            if self.unmanaged(r) || !self.held_stopped(g, r) {
                continue;
            }
            if matches!(self.activity(r, node), Some(Activity::Running | Activity::Failed))
                && !self.has_in_flight(r, node)
                && !self.dependents_active(g, r, node)
            {
                self.issue(OpKind::Stop, r, node, out);
            }
        }
        for r in &g.members {
            if self.unmanaged(r) || self.held_stopped(g, r) {
                continue;
            }
            if self.state.observations.resources[r].on.contains_key(node) || self.has_in_flight(r, node) {
                continue; // running, in flight, unsure or failed (recovery, a probe or a stop decides)
            }
            let deps_ok = g.deps.get(r).into_iter().flatten().all(|d| self.activity(d, node) == Some(&Activity::Running));
            if deps_ok {
                self.issue(OpKind::Start, r, node, out);
            }
        }
    }

    /// For status: a one-word state of a group.
    pub fn group_status(&self, group: &GroupId) -> &'static str {
        let g = &self.model.groups[group];
        let gs = &self.state.decisions.groups[group];
        let res = &self.state.observations.resources;
        let active: Vec<&Activity> = g.members.iter().flat_map(|r| res[r].on.values()).collect();
        let managed_all_running = |n: &NodeId| {
            g.members.iter().all(|r| self.unmanaged(r) || self.held_stopped(g, r) || res[r].on.get(n) == Some(&Activity::Running))
        };
        if active.iter().any(|a| **a == Activity::StopFailed) {
            return "stop-failed";
        }
        if self.blocked_member(g).is_some() {
            return "blocked";
        }
        if gs.owner.as_ref().is_some_and(|o| self.in_maintenance(o)) {
            return "maintenance";
        }
        match (&gs.target, &gs.owner) {
            (Target::Stopped, _) if active.is_empty() => "stopped",
            (Target::Stopped, _) => "stopping",
            (Target::Started, None) if !gs.failed_on.is_empty() => {
                if active.is_empty() {
                    "failed"
                } else {
                    "failing"
                }
            }
            (Target::Started, None) => "waiting",
            (Target::Started, Some(o)) if managed_all_running(o) && self.group_nodes(g).len() <= 1 => "started",
            (Target::Started, Some(_)) if active.iter().any(|a| **a == Activity::Recovering) => "recovering",
            (Target::Started, Some(_)) => "starting",
        }
    }

    /// For status: the nodes a group's managed members are seen on. A node whose state is only
    /// unknown (a lost node, or any node in a new leader's restored state before it answers its
    /// probes) does not count: the group runs on its owner alone as far as anyone can see, and
    /// the resources still show `unknown` there.
    fn group_nodes(&self, g: &GroupModel) -> BTreeSet<NodeId> {
        g.members
            .iter()
            .filter(|r| !self.unmanaged(r))
            .flat_map(|r| self.state.observations.resources[r].on.iter().filter(|(_, a)| **a != Activity::Unknown).map(|(n, _)| n.clone()))
            .collect()
    }

    /// Resources to monitor on `node`: managed ones running there with nothing in flight, and
    /// every unmanaged one. Run each monitor with the group's current epoch ([`Scheduler::epoch`]).
    pub fn monitored_on(&self, node: &NodeId) -> Vec<ResourceId> {
        self.model
            .resources
            .values()
            .filter(|r| {
                self.unmanaged(&r.name) || (self.activity(&r.name, node) == Some(&Activity::Running) && !self.has_in_flight(&r.name, node))
            })
            .map(|r| r.name.clone())
            .collect()
    }

    /// The current placement epoch of `resource`'s group (0 for an unknown resource).
    pub fn epoch(&self, resource: &ResourceId) -> u64 {
        self.epoch_of(resource)
    }

    /// Managed resources possibly active on `node` (reported when a shutdown ends).
    pub fn active_on(&self, node: &NodeId) -> Vec<ResourceId> {
        self.model
            .resources
            .values()
            .filter(|r| !self.unmanaged(&r.name) && self.state.observations.resources[&r.name].on.contains_key(node))
            .map(|r| r.name.clone())
            .collect()
    }

    /// Resources on `node` whose stop failed.
    pub fn stop_failed_on(&self, node: &NodeId) -> Vec<ResourceId> {
        self.model
            .resources
            .values()
            .filter(|r| self.activity(&r.name, node) == Some(&Activity::StopFailed))
            .map(|r| r.name.clone())
            .collect()
    }

    /// Blocked resources (invalid config) and why.
    pub fn blocked(&self) -> BTreeMap<ResourceId, String> {
        self.state.decisions.resources.iter().filter_map(|(r, d)| d.blocked.clone().map(|b| (r.clone(), b))).collect()
    }

    /// (resource, node) pairs where the resource cannot run (not installed), and why.
    pub fn ineligible(&self) -> BTreeMap<(ResourceId, NodeId), String> {
        self.state
            .decisions
            .resources
            .iter()
            .flat_map(|(r, d)| d.ineligible.iter().map(move |(n, why)| ((r.clone(), n.clone()), why.clone())))
            .collect()
    }

    /// Stop every group (node shutdown). Targets are kept, so the next start brings them back.
    pub fn stop_all(&mut self, now: Millis) -> Vec<Command> {
        self.shutting_down = true;
        let mut out = Vec::new();
        let before = self.state.decisions.clone();
        self.reconcile(now, &mut out);
        self.decisions_changed = before != self.state.decisions;
        if self.decisions_changed {
            self.generation += 1;
        }
        out
    }
}

#[cfg(test)]
#[path = "scheduler/tests.rs"]
mod tests;
