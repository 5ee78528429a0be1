//! One task per resource, owning that resource's plugin instance. Jobs arrive over a channel and
//! run one at a time, so actions on one resource are serialised and a slow agent delays only its
//! own resource.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use std::path::PathBuf;

use super::cgroup::ResourceCgroup;
use crate::plugin::{AgentFailure, CallContext, CallError, Health, Limits, Plugin, PluginInstance, WatchSet};

/// How long a start, stop or recover waits for its record in the state directory.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(5);
use crate::scheduler::{Failure, MonitorOutcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Probe,
    Monitor,
    Start,
    Stop,
    Recover,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Probe => "probe",
            JobKind::Monitor => "monitor",
            JobKind::Start => "start",
            JobKind::Stop => "stop",
            JobKind::Recover => "recover",
        }
    }
}

#[derive(Debug)]
pub struct Job {
    pub kind: JobKind,
    /// The scheduler's operation id (0 for recurring monitors, which the engine schedules).
    pub op: u64,
    /// The placement epoch: the agent's fencing token.
    pub epoch: u64,
    /// A cluster member's lease as the member publishes it, and which of its holdings the job
    /// was admitted under: a start or recover may have waited here behind a slow call, and must
    /// not begin once that lease ran out, even if a later one holds now (when the lease lapsed
    /// the member stopped, its watchdog may have fired and the leader may have moved the group:
    /// the command is of a world that is gone). `None` on a single node.
    pub lease: Option<(watch::Receiver<LeaseView>, u64)>,
}

/// A member's lease as its workers see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseView {
    /// Until when it holds one (`None`: it holds none).
    pub until: Option<Instant>,
    /// How many times it took a lease after holding none: the same number means the lease held
    /// without a gap.
    pub holding: u64,
}

impl Job {
    pub fn new(kind: JobKind, op: u64, epoch: u64) -> Job {
        Job { kind, op, epoch, lease: None }
    }

    /// Why this job must not begin at `now`: a start or recover whose lease ran out while it
    /// waited. Answered as a host fault (nothing ran; the leader probes and decides again).
    pub fn expired(&self, now: Instant) -> Option<&'static str> {
        let (lease, admitted) = self.lease.as_ref()?;
        let starts = matches!(self.kind, JobKind::Start | JobKind::Recover);
        let view = *lease.borrow();
        let held = view.holding == *admitted && view.until.is_some_and(|until| now < until);
        (starts && !held).then_some("this member's lease ran out before the action could begin: not carried out")
    }
}

/// What a job produced, sent back to the node loop.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub resource: String,
    pub kind: JobKind,
    pub op: u64,
    pub epoch: u64,
    pub started: Instant,
    pub duration: Duration,
    pub outcome: JobOutcome,
}

#[derive(Debug, Clone)]
pub enum JobOutcome {
    Health(MonitorOutcome),
    Done(Result<(), Failure>),
}

/// The agent's typed error as the decision core sees it. A failed call after the host itself
/// could not carry out a host call (spawn failure, a lost blocking task) is a host fault: the
/// resource is probed again, never recovered, failed over or fenced for it.
pub fn failure(e: &CallError, host_faults: u32, prefix: &str) -> Failure {
    let text = format!("{prefix}{e}");
    if host_faults > 0 && !matches!(e, CallError::Timeout { .. }) {
        return Failure::HostFault(text);
    }
    match e {
        CallError::Timeout { .. } => Failure::Timeout,
        CallError::Agent { error, .. } => match error {
            AgentFailure::InvalidConfig(_) => Failure::InvalidConfig(text),
            AgentFailure::NotInstalled(_) => Failure::NotInstalled(text),
            AgentFailure::AccessDenied(_) => Failure::AccessDenied(text),
            AgentFailure::Unsupported(_) => Failure::Unsupported(text),
            AgentFailure::Failed(_) => Failure::Failed(text),
        },
        // Parameters are checked at config load; if they are still wrong, it is configuration.
        CallError::Params { .. } | CallError::NoSuchAction { .. } => Failure::InvalidConfig(text),
        CallError::OutOfMemory { .. } | CallError::Trap { .. } | CallError::Instantiate { .. } => Failure::Failed(text),
    }
}

/// A watched process of a resource exited (warden:agent@0.2.0 `watch`): the node runs a
/// monitor at once.
#[derive(Debug, Clone)]
pub struct WatchFired {
    pub resource: String,
    pub pid: u32,
    /// The process's name when the watch began (`/proc/<pid>/comm`), for the operator.
    pub name: String,
}

/// Per-action timeouts for one resource (config overrides applied over agent defaults).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub start: Duration,
    pub stop: Duration,
    pub monitor: Duration,
    pub recover: Duration,
    pub validate: Duration,
}

pub struct Worker {
    pub resource: String,
    pub node: String,
    pub params: std::collections::BTreeMap<String, String>,
    pub timeouts: Timeouts,
    pub instance: PluginInstance,
    validated: bool,
    /// Where a start, stop or recover is recorded before it runs (see [`ActionRecord`]).
    journal: Option<PathBuf>,
    /// The resource's cgroup: killed as a whole at a start/recover timeout and after a stop.
    cgroup: Option<ResourceCgroup>,
    /// A journal write or removal that overran its timeout and still runs.
    journal_pending: Option<tokio::task::JoinHandle<()>>,
    /// Where a watched process's exit is reported (None: watches are not used).
    watch_tx: Option<mpsc::UnboundedSender<WatchFired>>,
    /// The pids watched now (sorted) and one task per pid waiting on its pidfd. Replacing the
    /// set drops the tasks (a `JoinSet` aborts its tasks when dropped), so nothing is detached.
    watching: Vec<u32>,
    watchers: tokio::task::JoinSet<()>,
}

/// A start, stop or recover in flight, written durably (`<state_dir>/actions/<resource>.json`)
/// before the agent is called and removed when the call returns. If the daemon dies meanwhile,
/// the next daemon finds it and kills (or waits out) what the interrupted action left running
/// before it probes: an orphaned start finishing after the new daemon's probe would otherwise
/// be a second copy.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ActionRecord {
    pub resource: String,
    pub action: String,
    pub epoch: u64,
    /// Unix milliseconds when the action started and when its timeout ends.
    pub started_ms: u64,
    pub deadline_ms: u64,
    /// The action's programs ran in the resource's cgroup (else the next start waits it out).
    #[serde(default = "yes")]
    pub cgroup: bool,
}

fn yes() -> bool {
    true
}

/// How a worker runs its resource: the config resolved against the plugin, and where its
/// actions are recorded and its processes kept.
pub struct Setup {
    pub params: std::collections::BTreeMap<String, String>,
    pub grants: warden_manifest::Capabilities,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub journal: Option<PathBuf>,
    pub cgroup: Option<ResourceCgroup>,
    /// Where the exits of the processes the agent names with `watch` are reported.
    pub watch: Option<mpsc::UnboundedSender<WatchFired>>,
}

impl Worker {
    pub fn new(plugin: &Arc<Plugin>, resource: &str, node: &str, setup: Setup) -> Self {
        let Setup { params, grants, timeouts, limits, journal, cgroup, watch } = setup;
        let mut instance = plugin.instance(resource, grants, limits);
        instance.set_cgroup(cgroup.as_ref().map(|c| c.path()));
        Self {
            resource: resource.into(),
            node: node.into(),
            params,
            timeouts,
            instance,
            validated: false,
            journal,
            cgroup,
            journal_pending: None,
            watch_tx: watch,
            watching: Vec::new(),
            watchers: tokio::task::JoinSet::new(),
        }
    }

    /// Make what the agent named with `watch` current, as the call's outcome allows: a
    /// successful start or recover replaces the set (none named: nothing is watched, the old
    /// processes are gone); a healthy monitor or probe replaces it only when it named one; any
    /// other outcome ends the watch (local recovery or a stop follows).
    fn update_watch(&mut self, kind: JobKind, outcome: &JobOutcome) {
        let named = self.instance.take_watch();
        let next = match (kind, outcome) {
            (JobKind::Start | JobKind::Recover, JobOutcome::Done(Ok(()))) => Some(named.unwrap_or_default()),
            (JobKind::Probe | JobKind::Monitor, JobOutcome::Health(MonitorOutcome::Running | MonitorOutcome::Degraded(_))) => named,
            _ => Some(WatchSet::default()),
        };
        if let Some(set) = next {
            self.set_watch(set);
        }
    }

    fn set_watch(&mut self, set: WatchSet) {
        let Some(tx) = &self.watch_tx else { return };
        let pids = set.pids();
        if pids == self.watching && self.watchers.try_join_next().is_none() {
            // The same processes, none exited: keep the pidfds opened first (a pid reused since
            // cannot be mistaken for them); the new ones close here. (Once one has exited, a
            // process now holding the same pid is a new one: watch it.)
            return;
        }
        self.watchers = tokio::task::JoinSet::new();
        for (pid, fd) in set.processes {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim().to_string()).unwrap_or_default();
            let (tx, resource) = (tx.clone(), self.resource.clone());
            self.watchers.spawn(async move {
                // A pidfd becomes readable when its process exits: epoll, no polling.
                match register_pidfd(fd) {
                    Ok(afd) => {
                        let _ = afd.readable().await;
                    }
                    Err(e) => {
                        tracing::warn!(resource, pid, error = %e, "cannot watch the process; its failures are seen at the next monitor");
                        return;
                    }
                }
                let _ = tx.send(WatchFired { resource, pid, name });
            });
        }
        if !pids.is_empty() || !self.watching.is_empty() {
            tracing::debug!(resource = %self.resource, ?pids, "watching the resource's processes");
        }
        self.watching = pids;
    }

    /// Record the action durably before it runs; an action that cannot be recorded does not run.
    async fn record(&mut self, kind: JobKind, epoch: u64, timeout: Duration) -> Result<(), String> {
        let Some(path) = self.journal.clone() else { return Ok(()) };
        self.journal_settled()?;
        let now = super::history::unix_ms(std::time::SystemTime::now());
        let rec = ActionRecord {
            resource: self.resource.clone(),
            action: kind.as_str().into(),
            epoch,
            started_ms: now,
            deadline_ms: now.saturating_add(timeout.as_millis() as u64),
            cgroup: self.cgroup.is_some(),
        };
        let bytes = serde_json::to_vec(&rec).map_err(|e| e.to_string())?;
        // On the blocking pool, bounded: a hung state disk stalls this resource only, and the
        // action is refused (a host fault, probed again) rather than run unrecorded.
        let target = path.clone();
        let mut write = tokio::task::spawn_blocking(move || warden_store::state::replace_durably(&target, &bytes));
        match tokio::time::timeout(JOURNAL_TIMEOUT, &mut write).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("cannot record the action in the state directory: {e}")),
            Ok(Err(e)) => Err(format!("cannot record the action: {e}")),
            Err(_) => {
                // The write goes on in the background; if it lands, it records an action that was
                // refused, so take the record back once it has, and refuse further actions until
                // then (two journal operations must never race on one file).
                self.journal_pending = Some(tokio::spawn(async move {
                    let _ = write.await;
                    let _ = tokio::task::spawn_blocking(move || warden_store::state::remove_durably(&path)).await;
                }));
                Err(format!("the state directory did not answer within {JOURNAL_TIMEOUT:?}"))
            }
        }
    }

    /// A journal operation that overran its timeout must finish before the next one starts.
    fn journal_settled(&mut self) -> Result<(), String> {
        match &self.journal_pending {
            Some(h) if !h.is_finished() => Err("an earlier write to the state directory has not finished (hung disk?)".into()),
            _ => {
                self.journal_pending = None;
                Ok(())
            }
        }
    }

    async fn forget(&mut self) {
        let Some(path) = self.journal.clone() else { return };
        let mut remove = tokio::task::spawn_blocking(move || warden_store::state::remove_durably(&path));
        match tokio::time::timeout(JOURNAL_TIMEOUT, &mut remove).await {
            Ok(Ok(Ok(()))) => {}
            Err(_) => {
                tracing::error!(resource = %self.resource, "clearing the action record is slow (hung disk?); new actions wait for it");
                self.journal_pending = Some(tokio::spawn(async move {
                    let _ = remove.await;
                }));
            }
            other => {
                tracing::error!(resource = %self.resource, ?other, "cannot clear the action record; the next daemon start will kill this resource's processes before probing")
            }
        }
    }

    /// Kill whatever is left in the resource's cgroup.
    async fn kill_cgroup(&mut self, why: &str) {
        if let Some(cg) = &self.cgroup {
            let n = cg.kill_all(Duration::from_secs(5)).await;
            if n > 0 {
                tracing::warn!(resource = %self.resource, processes = n, "{why}: killed the resource's remaining processes (its cgroup)");
            }
        }
    }

    /// Run jobs until the channel closes.
    pub async fn run(mut self, mut jobs: mpsc::Receiver<Job>, results: mpsc::UnboundedSender<JobResult>) {
        while let Some(job) = jobs.recv().await {
            let started = Instant::now();
            // If this task panics mid-job, the guard still answers this job and every job queued
            // behind it, so the node never waits forever (later jobs fail at once: the queue is
            // gone with the task).
            let mut guard = PanicAnswer {
                results: &results,
                queued: &mut jobs,
                resource: self.resource.clone(),
                kind: job.kind,
                op: job.op,
                epoch: job.epoch,
                started,
                armed: true,
            };
            if job.kind == JobKind::Stop {
                // The processes are about to exit on purpose.
                self.set_watch(WatchSet::default());
            }
            let outcome = match job.expired(Instant::now()) {
                Some(why) => JobOutcome::Done(Err(Failure::HostFault(why.into()))),
                None => self.execute(&job).await,
            };
            guard.armed = false;
            self.update_watch(job.kind, &outcome);
            let r = JobResult {
                resource: self.resource.clone(),
                kind: job.kind,
                op: job.op,
                epoch: job.epoch,
                started,
                duration: started.elapsed(),
                outcome,
            };
            if results.send(r).is_err() {
                break;
            }
        }
    }

    fn ctx(&self, epoch: u64) -> CallContext {
        CallContext { resource: self.resource.clone(), node: self.node.clone(), epoch, params: self.params.clone() }
    }

    async fn execute(&mut self, job: &Job) -> JobOutcome {
        let ctx = self.ctx(job.epoch);
        let t = self.timeouts;
        match job.kind {
            JobKind::Probe | JobKind::Monitor => JobOutcome::Health(match self.instance.monitor(&ctx, Some(t.monitor)).await {
                Ok(Health::Running) => MonitorOutcome::Running,
                Ok(Health::Stopped) => MonitorOutcome::Stopped,
                Ok(Health::Degraded(r)) => MonitorOutcome::Degraded(r),
                Ok(Health::Failed(r)) => MonitorOutcome::Failed(r),
                Err(e) => MonitorOutcome::Error(failure(&e, self.instance.last_stats().host_faults, "")),
            }),
            JobKind::Start | JobKind::Stop | JobKind::Recover => {
                let timeout = match job.kind {
                    JobKind::Start => t.start + t.validate,
                    JobKind::Stop => t.stop,
                    _ => t.recover,
                };
                if job.kind == JobKind::Start && !self.validated {
                    // Before the journal: validate starts nothing (wit/agent.wit).
                    if let Err(e) = self.instance.validate(&ctx, Some(t.validate)).await {
                        let host_faults = self.instance.last_stats().host_faults;
                        return JobOutcome::Done(Err(failure(&e, host_faults, "validate: ")));
                    }
                    self.validated = true;
                }
                if let Err(e) = self.record(job.kind, job.epoch, timeout).await {
                    return JobOutcome::Done(Err(Failure::HostFault(e)));
                }
                // The validation and the journal write took time: a cluster member's lease is
                // checked again right before the agent acts.
                if let Some(why) = job.expired(Instant::now()) {
                    self.forget().await;
                    return JobOutcome::Done(Err(Failure::HostFault(why.into())));
                }
                let out = self.act(job, &ctx).await;
                let timed_out = matches!(&out, Err((CallError::Timeout { .. }, _)));
                match job.kind {
                    // A start or recover that overran: kill what it started, as a whole.
                    JobKind::Start | JobKind::Recover if timed_out => self.kill_cgroup("the action timed out").await,
                    // After a stop nothing of the resource may run: a child that escaped the
                    // agent's stop (setsid, a forgotten helper) goes too.
                    JobKind::Stop => self.kill_cgroup("after stop").await,
                    _ => {}
                }
                self.forget().await;
                let host_faults = self.instance.last_stats().host_faults;
                JobOutcome::Done(out.map_err(|(e, prefix)| failure(&e, host_faults, prefix)))
            }
        }
    }

    /// Run the agent's action (validated first, see `execute`).
    async fn act(&mut self, job: &Job, ctx: &CallContext) -> Result<(), (CallError, &'static str)> {
        let t = self.timeouts;
        match job.kind {
            JobKind::Probe | JobKind::Monitor => unreachable!("health checks are not journalled"),
            JobKind::Start => self.instance.start(ctx, Some(t.start)).await.map_err(|e| (e, "")),
            JobKind::Stop => self.instance.stop(ctx, Some(t.stop)).await.map_err(|e| (e, "")),
            JobKind::Recover => self.instance.recover(ctx, Some(t.recover)).await.map_err(|e| (e, "")),
        }
    }
}

/// Register a pidfd with the runtime's reactor (it becomes readable when the process exits).
#[allow(unsafe_code)] // AsyncFd::register_with_interest: its safety rule is about the descriptor's ownership
fn register_pidfd(fd: std::os::fd::OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the AsyncFd takes the OwnedFd itself: the descriptor stays open and refers to the
    // same pidfd until the AsyncFd is dropped, and nothing else can close or replace it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(|e| e.into())
}

struct PanicAnswer<'a> {
    results: &'a mpsc::UnboundedSender<JobResult>,
    queued: &'a mut mpsc::Receiver<Job>,
    resource: String,
    kind: JobKind,
    op: u64,
    epoch: u64,
    started: Instant,
    armed: bool,
}

impl Drop for PanicAnswer<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let answer = |kind: JobKind, op: u64, epoch: u64, why: &str| {
            let why = Failure::HostFault(why.to_string());
            let outcome = match kind {
                JobKind::Probe | JobKind::Monitor => JobOutcome::Health(MonitorOutcome::Error(why)),
                _ => JobOutcome::Done(Err(why)),
            };
            let _ = self.results.send(JobResult {
                resource: self.resource.clone(),
                kind,
                op,
                epoch,
                started: self.started,
                duration: self.started.elapsed(),
                outcome,
            });
        };
        answer(self.kind, self.op, self.epoch, "the resource's worker crashed during this action");
        self.queued.close();
        while let Ok(j) = self.queued.try_recv() {
            answer(j.kind, j.op, j.epoch, "the resource's worker crashed before this action ran");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_whose_lease_ran_out_while_it_waited_does_not_begin() {
        let t0 = Instant::now();
        let held = |until: Option<Instant>, holding| LeaseView { until, holding };
        let (tx, rx) = watch::channel(held(Some(t0 + Duration::from_secs(10)), 1));
        let start = Job { lease: Some((rx.clone(), 1)), ..Job::new(JobKind::Start, 7, 2) };
        let recover = Job { lease: Some((rx.clone(), 1)), ..Job::new(JobKind::Recover, 8, 2) };
        let stop = Job { lease: Some((rx.clone(), 1)), ..Job::new(JobKind::Stop, 9, 2) };
        assert_eq!(start.expired(t0), None, "within the lease");
        assert!(start.expired(t0 + Duration::from_secs(10)).is_some(), "the lease ran out while it waited");
        assert!(recover.expired(t0 + Duration::from_secs(11)).is_some());
        assert_eq!(stop.expired(t0 + Duration::from_secs(11)), None, "stopping is always safe");
        // Renewed meanwhile without a gap: it begins.
        tx.send_replace(held(Some(t0 + Duration::from_secs(20)), 1));
        assert_eq!(start.expired(t0 + Duration::from_secs(11)), None);
        // The lease lost (no leader): nothing starts.
        tx.send_replace(held(None, 1));
        assert!(start.expired(t0).is_some());
        // Lost and taken again: a start admitted under the earlier holding never begins.
        tx.send_replace(held(Some(t0 + Duration::from_secs(30)), 2));
        assert!(start.expired(t0 + Duration::from_secs(11)).is_some(), "the lease lapsed since it was admitted");
        let later = Job { lease: Some((rx.clone(), 2)), ..Job::new(JobKind::Start, 10, 3) };
        assert_eq!(later.expired(t0 + Duration::from_secs(11)), None);
        // A single node has no lease.
        assert_eq!(Job::new(JobKind::Start, 1, 1).expired(t0), None);
    }
}
