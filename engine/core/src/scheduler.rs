//! The decision core: a sans-IO state machine from events to commands.
//!
//! ```text
//!   Event (monitor result, action result, node up/down, fenced, operator, tick)
//!        │
//!        ▼
//!   Scheduler::handle(now, event) ──► apply to State ──► reconcile ──► Vec<Command>
//!                                                                     (probe/start/stop/recover
//!                                                                      resource R on node N,
//!                                                                      fence node N, note)
//! ```
//!
//! No sockets, no clocks, no tokio: time is the `now` argument (milliseconds). The node's
//! executor carries out commands and feeds their results back as events. The same code decides
//! for one node or many.
//!
//! **Invariant S1** (never a group active on two nodes): a resource is *possibly active* on a
//! node unless we know it is stopped there (a successful stop, a probe or monitor saying
//! stopped, or a fence confirmation). Nothing of a group is started on node D while any member
//! is possibly active on another node; a stop that fails or a node that is lost leaves its
//! resources possibly active until that node is fenced or re-probed.
//!
//! **Ordering**: a resource starts only when everything it depends on runs on the same node;
//! a resource stops only when nothing that depends on it is still active there.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use crate::model::{Role, Switchback};

pub type Millis = u64;

/// Static description of the cluster, derived from the config.
#[derive(Debug, Clone)]
pub struct Model {
    pub nodes: Vec<NodeModel>,
    /// Shared so that the scheduler can walk groups while mutating its state, without copying.
    pub groups: BTreeMap<String, std::sync::Arc<GroupModel>>,
    pub resources: BTreeMap<String, ResourceModel>,
}

#[derive(Debug, Clone)]
pub struct NodeModel {
    pub name: String,
    pub role: Role,
    /// A fence device can power this node off.
    pub fenceable: bool,
}

#[derive(Debug, Clone)]
pub struct GroupModel {
    pub name: String,
    /// Members in start order.
    pub members: Vec<String>,
    /// resource → what it needs first.
    pub deps: BTreeMap<String, Vec<String>>,
    /// resource → what needs it.
    pub dependents: BTreeMap<String, Vec<String>>,
    pub priority: Vec<String>,
    pub switchback: Switchback,
    pub max_restarts: u32,
    pub restart_window: Millis,
    pub monitor_timeouts_to_fail: u32,
    pub autostart: bool,
}

#[derive(Debug, Clone)]
pub struct ResourceModel {
    pub name: String,
    pub group: String,
    pub unmanaged: bool,
    /// The agent recovers locally (metadata `local-recovery`); otherwise a failure fails over.
    pub local_recovery: bool,
}

/// What a resource is doing on one node. Absent from the map = known stopped there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activity {
    /// State unknown; a probe (monitor) is under way.
    Probing,
    /// State unknown and the node cannot be asked (lost): needs fencing or the node's return.
    Unknown,
    Starting,
    Running,
    Stopping,
    Recovering,
    /// Failed (monitor, start or recover); possibly partly running; to be stopped or recovered.
    Failed,
    /// A stop failed: possibly running, and only fencing (or an operator cleanup) clears it.
    StopFailed,
}

impl Activity {
    fn in_flight(&self) -> bool {
        matches!(self, Activity::Probing | Activity::Starting | Activity::Stopping | Activity::Recovering)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Started,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub up: bool,
    pub standby: bool,
    /// A resource could not be stopped there, or the node was lost while running resources.
    pub needs_fence: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub target: Target,
    pub owner: Option<String>,
    pub epoch: u64,
    /// Nodes where the group failed (recovery exhausted, start failed): not eligible until cleanup.
    pub failed_on: BTreeSet<String>,
    /// Operator's `group move --to`.
    pub move_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorRecord {
    pub at: Millis,
    pub node: String,
    pub outcome: MonitorOutcome,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceState {
    pub on: BTreeMap<String, Activity>,
    /// Times of local recoveries, for `max_restarts` within `restart_window`.
    pub restarts: Vec<Millis>,
    pub monitor_timeouts: u32,
    pub last_monitor: Option<MonitorRecord>,
    /// Last failure reason, for status.
    pub last_failure: Option<String>,
}

/// Everything that changes. Serialised to the node's state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub nodes: BTreeMap<String, NodeState>,
    pub groups: BTreeMap<String, GroupState>,
    pub resources: BTreeMap<String, ResourceState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "reason", rename_all = "kebab-case")]
pub enum MonitorOutcome {
    Running,
    Degraded(String),
    Stopped,
    Failed(String),
    /// The monitor overran its timeout: retried, a failure only after several in a row.
    Timeout,
    /// The agent returned an error or trapped.
    Error(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    Start,
    Stop,
    Recover,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum OperatorCommand {
    MoveGroup { group: String, to: Option<String> },
    StartGroup { group: String },
    StopGroup { group: String },
    Cleanup { resource: String },
    Standby { node: String },
    Online { node: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Re-evaluate (restart windows age with time).
    Tick,
    NodeUp(String),
    NodeDown(String),
    /// A fence device confirmed `node` is off: nothing runs there.
    Fenced(String),
    Probe {
        resource: String,
        node: String,
        outcome: MonitorOutcome,
    },
    Monitor {
        resource: String,
        node: String,
        outcome: MonitorOutcome,
    },
    ActionDone {
        resource: String,
        node: String,
        action: ActionKind,
        result: Result<(), String>,
    },
    Operator(OperatorCommand),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Command {
    Probe {
        resource: String,
        node: String,
    },
    Start {
        resource: String,
        node: String,
        epoch: u64,
    },
    Stop {
        resource: String,
        node: String,
    },
    Recover {
        resource: String,
        node: String,
        epoch: u64,
    },
    Fence {
        node: String,
    },
    /// A decision worth recording in the event history.
    Note {
        subject: String,
        message: String,
    },
}

pub struct Scheduler {
    model: Model,
    state: State,
    /// Fence requests already issued (not repeated until answered).
    fencing: BTreeSet<String>,
    /// The node is shutting down: every group is stopped here, targets are kept.
    shutting_down: bool,
    /// Whether the last event changed anything beyond monitor bookkeeping.
    changed: bool,
}

impl Scheduler {
    /// A fresh scheduler: every node down until told otherwise, every resource unknown
    /// (probed when its node comes up), groups targeted by `autostart`.
    pub fn new(model: Model) -> Self {
        let state = State {
            nodes: model.nodes.iter().map(|n| (n.name.clone(), NodeState { up: false, standby: false, needs_fence: false })).collect(),
            groups: model
                .groups
                .values()
                .map(|g| {
                    let target = if g.autostart { Target::Started } else { Target::Stopped };
                    (g.name.clone(), GroupState { target, owner: None, epoch: 0, failed_on: BTreeSet::new(), move_to: None })
                })
                .collect(),
            resources: model.resources.keys().map(|r| (r.clone(), ResourceState::default())).collect(),
        };
        Self { model, state, fencing: BTreeSet::new(), shutting_down: false, changed: true }
    }

    /// Restore what was persisted (targets, owners, epochs, failure counts, standby), forgetting
    /// what resources were doing: that is re-learned by probing. Unknown names are ignored.
    pub fn restore(&mut self, saved: &State) {
        for (name, g) in &saved.groups {
            if let Some(cur) = self.state.groups.get_mut(name) {
                cur.target = g.target;
                cur.owner = g.owner.clone();
                cur.epoch = g.epoch;
                cur.failed_on = g.failed_on.clone();
                cur.move_to = g.move_to.clone();
            }
        }
        for (name, r) in &saved.resources {
            if let Some(cur) = self.state.resources.get_mut(name) {
                cur.restarts = r.restarts.clone();
                cur.last_failure = r.last_failure.clone();
            }
        }
        for (name, n) in &saved.nodes {
            if let Some(cur) = self.state.nodes.get_mut(name) {
                cur.standby = n.standby;
            }
        }
    }

    pub fn state(&self) -> &State {
        &self.state
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
                if let Some(to) = to {
                    node(to)?;
                    let gm = &self.model.groups[g];
                    if !self.eligible(gm, to, true) {
                        return Err(format!(
                            "node `{to}` cannot run group `{g}` now (down, standby, witness, failed there, or not in its priority list)"
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
            OperatorCommand::Standby { node: n } | OperatorCommand::Online { node: n } => node(n),
        }
    }

    /// Apply one event and return what to do now.
    pub fn handle(&mut self, now: Millis, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        // A healthy monitor of a running resource (the overwhelmingly common event) changes only
        // bookkeeping: skip the O(groups) reconcile, and tell the caller nothing else changed.
        let routine = match &event {
            Event::Monitor { resource, node, outcome: MonitorOutcome::Running | MonitorOutcome::Degraded(_) } => {
                self.state.resources.get(resource).and_then(|r| r.on.get(node)) == Some(&Activity::Running)
            }
            _ => false,
        };
        self.apply(now, event, &mut out);
        self.changed = !routine;
        if !routine {
            self.reconcile(now, &mut out);
        }
        out
    }

    /// False when the last event only refreshed monitor bookkeeping (nothing to persist, no new
    /// resources to monitor).
    pub fn changed(&self) -> bool {
        self.changed
    }

    fn set(&mut self, resource: &str, node: &str, a: Option<Activity>) {
        if let Some(r) = self.state.resources.get_mut(resource) {
            match a {
                Some(a) => {
                    r.on.insert(node.to_string(), a);
                }
                None => {
                    r.on.remove(node);
                }
            }
        }
    }

    fn group_of(&self, resource: &str) -> Option<&GroupModel> {
        self.model.resources.get(resource).and_then(|r| self.model.groups.get(&r.group)).map(|g| &**g)
    }

    fn apply(&mut self, now: Millis, event: Event, out: &mut Vec<Command>) {
        match event {
            Event::Tick => {}
            Event::NodeUp(n) => {
                if let Some(ns) = self.state.nodes.get_mut(&n) {
                    ns.up = true;
                }
                // Anything we could not know about this node is asked for now; resources we never
                // heard of on it are probed too (a restarted daemon adopts what still runs).
                let names: Vec<String> = self.model.resources.keys().cloned().collect();
                for r in names {
                    let cur = self.state.resources[&r].on.get(&n).cloned();
                    if matches!(cur, None | Some(Activity::Unknown)) && self.is_runner(&n) {
                        self.set(&r, &n, Some(Activity::Probing));
                        out.push(Command::Probe { resource: r, node: n.clone() });
                    }
                }
            }
            Event::NodeDown(n) => {
                if let Some(ns) = self.state.nodes.get_mut(&n) {
                    ns.up = false;
                }
                let mut had_any = false;
                for r in self.state.resources.values_mut() {
                    if let Some(a) = r.on.get_mut(&n) {
                        *a = Activity::Unknown;
                        had_any = true;
                    }
                }
                if had_any {
                    out.push(Command::Note {
                        subject: n.clone(),
                        message: "node lost while running resources: fencing required before they run elsewhere".into(),
                    });
                }
            }
            Event::Fenced(n) => {
                self.fencing.remove(&n);
                for r in self.state.resources.values_mut() {
                    r.on.remove(&n);
                }
                if let Some(ns) = self.state.nodes.get_mut(&n) {
                    ns.needs_fence = false;
                }
                out.push(Command::Note { subject: n, message: "fenced: nothing runs there any more".into() });
            }
            Event::Probe { resource, node, outcome } => {
                let a = match &outcome {
                    MonitorOutcome::Running | MonitorOutcome::Degraded(_) => Some(Activity::Running),
                    MonitorOutcome::Stopped => None,
                    // We cannot tell: assume it may be partly running, so it gets a stop.
                    MonitorOutcome::Failed(_) | MonitorOutcome::Timeout | MonitorOutcome::Error(_) => Some(Activity::Failed),
                };
                if matches!(self.state.resources.get(&resource).and_then(|r| r.on.get(&node)), Some(Activity::Probing)) {
                    self.set(&resource, &node, a);
                }
                if let Some(r) = self.state.resources.get_mut(&resource) {
                    r.last_monitor = Some(MonitorRecord { at: now, node, outcome });
                }
            }
            Event::Monitor { resource, node, outcome } => self.on_monitor(now, resource, node, outcome, out),
            Event::ActionDone { resource, node, action, result } => self.on_action(now, resource, node, action, result, out),
            Event::Operator(cmd) => self.on_operator(cmd, out),
        }
    }

    fn is_runner(&self, node: &str) -> bool {
        self.model.nodes.iter().any(|n| n.name == node && n.role == Role::Node)
    }

    fn on_monitor(&mut self, now: Millis, resource: String, node: String, outcome: MonitorOutcome, out: &mut Vec<Command>) {
        let Some(rm) = self.model.resources.get(&resource).cloned() else { return };
        let gm = std::sync::Arc::clone(&self.model.groups[&rm.group]);
        if let Some(r) = self.state.resources.get_mut(&resource) {
            r.last_monitor = Some(MonitorRecord { at: now, node: node.clone(), outcome: outcome.clone() });
        }
        let current = self.state.resources[&resource].on.get(&node).cloned();
        if rm.unmanaged {
            // Only reported; never acted on.
            let a = match outcome {
                MonitorOutcome::Running | MonitorOutcome::Degraded(_) => Some(Activity::Running),
                MonitorOutcome::Stopped => None,
                MonitorOutcome::Failed(_) | MonitorOutcome::Error(_) => Some(Activity::Failed),
                MonitorOutcome::Timeout => current,
            };
            self.set(&resource, &node, a);
            return;
        }
        // A result about a resource in transition is stale: the action's result decides.
        if current.as_ref().is_some_and(Activity::in_flight) {
            return;
        }
        let failure = match &outcome {
            MonitorOutcome::Running | MonitorOutcome::Degraded(_) => {
                self.state.resources.get_mut(&resource).unwrap().monitor_timeouts = 0;
                if current.is_none() {
                    // Running where we thought it stopped: it is active, so it counts (and will be
                    // stopped if this is not the group's node).
                    self.set(&resource, &node, Some(Activity::Running));
                }
                None
            }
            MonitorOutcome::Timeout => {
                let r = self.state.resources.get_mut(&resource).unwrap();
                r.monitor_timeouts += 1;
                if r.monitor_timeouts >= gm.monitor_timeouts_to_fail {
                    Some(format!("{} monitor timeouts in a row", r.monitor_timeouts))
                } else {
                    None
                }
            }
            MonitorOutcome::Stopped => match current {
                Some(Activity::Running) => Some("stopped unexpectedly".to_string()),
                _ => {
                    self.set(&resource, &node, None);
                    None
                }
            },
            MonitorOutcome::Failed(reason) => Some(reason.clone()),
            MonitorOutcome::Error(reason) => Some(format!("monitor error: {reason}")),
        };
        let Some(reason) = failure else { return };
        if current != Some(Activity::Running) {
            return;
        }
        let r = self.state.resources.get_mut(&resource).unwrap();
        r.monitor_timeouts = 0;
        r.last_failure = Some(reason.clone());
        r.restarts.retain(|t| now.saturating_sub(*t) < gm.restart_window);
        let owner = self.state.groups[&gm.name].owner.clone();
        if rm.local_recovery && owner.as_deref() == Some(node.as_str()) && (r.restarts.len() as u32) < gm.max_restarts {
            r.restarts.push(now);
            let n = r.restarts.len();
            self.set(&resource, &node, Some(Activity::Recovering));
            let epoch = self.state.groups[&gm.name].epoch;
            out.push(Command::Note {
                subject: resource.clone(),
                message: format!("monitor failed; local recovery {n} of {}", gm.max_restarts),
            });
            out.push(Command::Recover { resource, node, epoch });
        } else {
            self.set(&resource, &node, Some(Activity::Failed));
            self.fail_group_on(&gm.name, &node, &format!("resource `{resource}` failed ({reason}) and local recovery is exhausted"), out);
        }
    }

    fn fail_group_on(&mut self, group: &str, node: &str, why: &str, out: &mut Vec<Command>) {
        let g = self.state.groups.get_mut(group).unwrap();
        if g.failed_on.insert(node.to_string()) {
            out.push(Command::Note { subject: group.to_string(), message: format!("group failed on {node}: {why}") });
        }
    }

    fn on_action(
        &mut self,
        now: Millis,
        resource: String,
        node: String,
        action: ActionKind,
        result: Result<(), String>,
        out: &mut Vec<Command>,
    ) {
        let Some(group) = self.group_of(&resource).map(|g| g.name.clone()) else { return };
        let _ = now;
        match (action, result) {
            (ActionKind::Start | ActionKind::Recover, Ok(())) => {
                self.set(&resource, &node, Some(Activity::Running));
                let r = self.state.resources.get_mut(&resource).unwrap();
                r.monitor_timeouts = 0;
                // The last monitor described the resource before this action; the next one tells.
                r.last_monitor = None;
            }
            (ActionKind::Start | ActionKind::Recover, Err(e)) => {
                let verb = if action == ActionKind::Start { "start" } else { "recover" };
                self.set(&resource, &node, Some(Activity::Failed));
                self.state.resources.get_mut(&resource).unwrap().last_failure = Some(format!("{verb} failed: {e}"));
                self.fail_group_on(&group, &node, &format!("{verb} of `{resource}` failed: {e}"), out);
            }
            (ActionKind::Stop, Ok(())) => self.set(&resource, &node, None),
            (ActionKind::Stop, Err(e)) => {
                self.set(&resource, &node, Some(Activity::StopFailed));
                self.state.resources.get_mut(&resource).unwrap().last_failure = Some(format!("stop failed: {e}"));
                self.fail_group_on(
                    &group,
                    &node,
                    &format!("stop of `{resource}` failed ({e}); the node must be fenced before the group runs elsewhere"),
                    out,
                );
            }
        }
    }

    fn on_operator(&mut self, cmd: OperatorCommand, out: &mut Vec<Command>) {
        if self.check_operator(&cmd).is_err() {
            return;
        }
        match cmd {
            OperatorCommand::MoveGroup { group, to } => {
                let target = to.or_else(|| self.next_node(&self.model.groups[&group]));
                let g = self.state.groups.get_mut(&group).unwrap();
                // The operator asks for this node: forget an old failure there, once. A new
                // failure there counts again (no endless retry on a node that keeps failing).
                if let Some(t) = &target {
                    g.failed_on.remove(t);
                }
                g.move_to = target;
                g.target = Target::Started;
            }
            OperatorCommand::StartGroup { group } => {
                let g = self.state.groups.get_mut(&group).unwrap();
                g.target = Target::Started;
            }
            OperatorCommand::StopGroup { group } => {
                let g = self.state.groups.get_mut(&group).unwrap();
                g.target = Target::Stopped;
                g.move_to = None;
            }
            OperatorCommand::Cleanup { resource } => {
                let group = self.model.resources[&resource].group.clone();
                let r = self.state.resources.get_mut(&resource).unwrap();
                r.restarts.clear();
                r.monitor_timeouts = 0;
                r.last_failure = None;
                let failed_nodes: Vec<String> =
                    r.on.iter().filter(|(_, a)| matches!(a, Activity::Failed | Activity::StopFailed)).map(|(n, _)| n.clone()).collect();
                self.state.groups.get_mut(&group).unwrap().failed_on.clear();
                for n in failed_nodes {
                    if self.state.nodes.get(&n).is_some_and(|s| s.up) {
                        // Learn the truth again instead of trusting the old failure.
                        self.set(&resource, &n, Some(Activity::Probing));
                        out.push(Command::Probe { resource: resource.clone(), node: n.clone() });
                    }
                }
                out.push(Command::Note { subject: resource, message: "failures cleaned up by the operator".into() });
            }
            OperatorCommand::Standby { node } => self.state.nodes.get_mut(&node).unwrap().standby = true,
            OperatorCommand::Online { node } => self.state.nodes.get_mut(&node).unwrap().standby = false,
        }
    }

    /// Can `node` run group `g`? `ignore_failed` is for checking an explicit operator move.
    fn eligible(&self, g: &GroupModel, node: &str, ignore_failed: bool) -> bool {
        let Some(ns) = self.state.nodes.get(node) else { return false };
        ns.up
            && !ns.standby
            && !ns.needs_fence
            && self.is_runner(node)
            && g.priority.iter().any(|p| p == node)
            && (ignore_failed || !self.state.groups[&g.name].failed_on.contains(node))
    }

    fn next_node(&self, g: &GroupModel) -> Option<String> {
        let owner = self.state.groups[&g.name].owner.clone();
        g.priority.iter().find(|n| Some(n.as_str()) != owner.as_deref() && self.eligible(g, n, false)).cloned()
    }

    fn desired_owner(&self, g: &GroupModel) -> Option<String> {
        let gs = &self.state.groups[&g.name];
        if gs.target == Target::Stopped || self.shutting_down {
            return None;
        }
        if let Some(m) = &gs.move_to {
            if self.eligible(g, m, false) {
                return Some(m.clone());
            }
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

    fn reconcile(&mut self, _now: Millis, out: &mut Vec<Command>) {
        let groups: Vec<std::sync::Arc<GroupModel>> = self.model.groups.values().cloned().collect();
        for g in &groups {
            let desired = self.desired_owner(g);
            let gs = self.state.groups.get_mut(&g.name).unwrap();
            if gs.owner != desired {
                if let Some(d) = &desired {
                    gs.epoch += 1;
                    out.push(Command::Note { subject: g.name.clone(), message: format!("placed on {d} (epoch {})", gs.epoch) });
                }
                gs.owner = desired.clone();
            }
            let nodes: BTreeSet<String> = g.members.iter().flat_map(|r| self.state.resources[r].on.keys().cloned()).collect();
            let mut clear_elsewhere = true;
            for n in &nodes {
                if Some(n) == desired.as_ref() {
                    continue;
                }
                if !self.stop_group_on(g, n, out) {
                    clear_elsewhere = false;
                }
            }
            // On the owner: a failed resource that will not be recovered is stopped there too
            // when the group cannot stay (handled above, since owner moved). Start bottom-up.
            if let Some(d) = &desired {
                if clear_elsewhere && self.state.nodes.get(d).is_some_and(|n| n.up) {
                    self.start_group_on(g, d, out);
                }
            }
            // With intelligent switchback an operator move is one-shot: once the group runs there
            // it simply stays. With automatic switchback the move holds (else the group would
            // bounce straight back) until the operator moves or stops the group again.
            let arrived = {
                let gs = &self.state.groups[&g.name];
                g.switchback == Switchback::Intelligent
                    && gs.move_to.is_some()
                    && gs.owner == gs.move_to
                    && self.group_running_on(g, gs.move_to.as_deref())
            };
            if arrived {
                self.state.groups.get_mut(&g.name).unwrap().move_to = None;
            }
        }
        // A node needs fencing while something may run there that we cannot stop: a failed stop,
        // or anything at all on a node we lost. (Derived every time, so a node that comes back
        // and answers its probes is cleared.)
        let names: Vec<String> = self.state.nodes.keys().cloned().collect();
        for n in names {
            let up = self.state.nodes[&n].up;
            let stuck = self.state.resources.iter().any(|(r, st)| {
                !self.model.resources[r].unmanaged
                    && st
                        .on
                        .get(&n)
                        .is_some_and(|a| *a == Activity::StopFailed || (!up && *a != Activity::Probing) || *a == Activity::Unknown)
            });
            self.state.nodes.get_mut(&n).unwrap().needs_fence = stuck;
            if !stuck {
                self.fencing.remove(&n);
            }
        }
        // Ask for fencing of nodes that need it and hold something possibly active.
        let need: Vec<String> = self
            .state
            .nodes
            .iter()
            .filter(|(_, s)| s.needs_fence)
            .map(|(n, _)| n.clone())
            .filter(|n| self.model.nodes.iter().any(|m| &m.name == n && m.fenceable))
            .collect();
        for n in need {
            if self.fencing.insert(n.clone()) {
                out.push(Command::Fence { node: n });
            }
        }
    }

    fn group_running_on(&self, g: &GroupModel, node: Option<&str>) -> bool {
        let Some(node) = node else { return false };
        g.members.iter().all(|r| self.state.resources[r].on.get(node) == Some(&Activity::Running))
    }

    /// Stop every managed member on `node`, top-down. True when nothing is possibly active there.
    fn stop_group_on(&mut self, g: &GroupModel, node: &str, out: &mut Vec<Command>) -> bool {
        let up = self.state.nodes.get(node).is_some_and(|n| n.up);
        let mut clear = true;
        for r in g.members.iter().rev() {
            let Some(a) = self.state.resources[r].on.get(node).cloned() else { continue };
            if self.model.resources[r].unmanaged {
                // Never acted on, and does not hold the group back.
                continue;
            }
            clear = false;
            match a {
                Activity::Running | Activity::Failed if up => {
                    let dependents_active = g
                        .dependents
                        .get(r)
                        .into_iter()
                        .flatten()
                        .any(|d| !self.model.resources[d].unmanaged && self.state.resources[d].on.contains_key(node));
                    if !dependents_active {
                        self.set(r, node, Some(Activity::Stopping));
                        out.push(Command::Stop { resource: r.clone(), node: node.to_string() });
                    }
                }
                Activity::Unknown | Activity::StopFailed | Activity::Running | Activity::Failed => {
                    // Possibly active where we cannot act: fencing (or the node's return) decides.
                }
                Activity::Probing | Activity::Starting | Activity::Stopping | Activity::Recovering => {}
            }
        }
        clear
    }

    /// Start members on `node` bottom-up, each once everything it depends on runs there. A member
    /// that failed there without being recovered (a failed probe) is first stopped, with what
    /// depends on it, and then started again in order.
    fn start_group_on(&mut self, g: &GroupModel, node: &str, out: &mut Vec<Command>) {
        let failed: Vec<String> = g
            .members
            .iter()
            .filter(|r| !self.model.resources[*r].unmanaged && self.state.resources[*r].on.get(node) == Some(&Activity::Failed))
            .cloned()
            .collect();
        if !failed.is_empty() {
            let mut restart: BTreeSet<String> = BTreeSet::new();
            let mut todo = failed;
            while let Some(r) = todo.pop() {
                if restart.insert(r.clone()) {
                    todo.extend(g.dependents.get(&r).into_iter().flatten().cloned());
                }
            }
            for r in g.members.iter().rev().filter(|r| restart.contains(*r)) {
                if self.model.resources[r].unmanaged {
                    continue;
                }
                let active_dependents = g
                    .dependents
                    .get(r)
                    .into_iter()
                    .flatten()
                    .any(|d| !self.model.resources[d].unmanaged && self.state.resources[d].on.contains_key(node));
                if matches!(self.state.resources[r].on.get(node), Some(Activity::Running | Activity::Failed)) && !active_dependents {
                    self.set(r, node, Some(Activity::Stopping));
                    out.push(Command::Stop { resource: r.clone(), node: node.to_string() });
                }
            }
            return;
        }
        let epoch = self.state.groups[&g.name].epoch;
        for r in &g.members {
            if self.model.resources[r].unmanaged {
                continue;
            }
            if self.state.resources[r].on.contains_key(node) {
                continue; // running, in flight, or failed (recovery or a stop decides)
            }
            let deps_ok = g.deps.get(r).into_iter().flatten().all(|d| self.state.resources[d].on.get(node) == Some(&Activity::Running));
            if deps_ok {
                self.set(r, node, Some(Activity::Starting));
                out.push(Command::Start { resource: r.clone(), node: node.to_string(), epoch });
            }
        }
    }

    /// For status: a one-word state of a group.
    pub fn group_status(&self, group: &str) -> &'static str {
        let g = &self.model.groups[group];
        let gs = &self.state.groups[group];
        let active: Vec<&Activity> = g.members.iter().flat_map(|r| self.state.resources[r].on.values()).collect();
        let managed_all_running = |n: &str| {
            g.members.iter().all(|r| self.model.resources[r].unmanaged || self.state.resources[r].on.get(n) == Some(&Activity::Running))
        };
        if active.iter().any(|a| **a == Activity::StopFailed) {
            return "stop-failed";
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

    fn group_nodes(&self, g: &GroupModel) -> BTreeSet<String> {
        g.members.iter().filter(|r| !self.model.resources[*r].unmanaged).flat_map(|r| self.state.resources[r].on.keys().cloned()).collect()
    }

    /// Resources to monitor on `node`: managed ones running there, and every unmanaged one.
    pub fn monitored_on(&self, node: &str) -> Vec<String> {
        self.model
            .resources
            .values()
            .filter(|r| r.unmanaged || matches!(self.state.resources[&r.name].on.get(node), Some(Activity::Running)))
            .map(|r| r.name.clone())
            .collect()
    }

    /// Managed resources possibly active on `node` (reported when a shutdown ends).
    pub fn active_on(&self, node: &str) -> Vec<String> {
        self.model
            .resources
            .values()
            .filter(|r| !r.unmanaged && self.state.resources[&r.name].on.contains_key(node))
            .map(|r| r.name.clone())
            .collect()
    }

    /// Resources on `node` whose stop failed.
    pub fn stop_failed_on(&self, node: &str) -> Vec<String> {
        self.model
            .resources
            .values()
            .filter(|r| self.state.resources[&r.name].on.get(node) == Some(&Activity::StopFailed))
            .map(|r| r.name.clone())
            .collect()
    }

    /// Stop every group (node shutdown). Targets are kept, so the next start brings them back.
    pub fn stop_all(&mut self, now: Millis) -> Vec<Command> {
        self.shutting_down = true;
        let mut out = Vec::new();
        self.reconcile(now, &mut out);
        out
    }
}

#[cfg(test)]
#[path = "scheduler/tests.rs"]
mod tests;
