//! One task per resource, owning that resource's plugin instance. Jobs arrive over a channel and
//! run one at a time, so actions on one resource are serialised and a slow agent delays only its
//! own resource.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::plugin::{AgentFailure, CallContext, CallError, Health, Limits, Plugin, PluginInstance};
use crate::scheduler::MonitorOutcome;

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
    pub epoch: u64,
}

/// What a job produced, sent back to the node loop.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub resource: String,
    pub kind: JobKind,
    pub started: Instant,
    pub duration: Duration,
    pub outcome: JobOutcome,
}

#[derive(Debug, Clone)]
pub enum JobOutcome {
    Health(MonitorOutcome),
    Done(Result<(), String>),
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
}

impl Worker {
    pub fn new(
        plugin: &Arc<Plugin>,
        resource: &str,
        node: &str,
        params: std::collections::BTreeMap<String, String>,
        grants: warden_manifest::Capabilities,
        timeouts: Timeouts,
        limits: Limits,
    ) -> Self {
        Self {
            resource: resource.into(),
            node: node.into(),
            params,
            timeouts,
            instance: plugin.instance(resource, grants, limits),
            validated: false,
        }
    }

    /// Run jobs until the channel closes.
    pub async fn run(mut self, mut jobs: mpsc::Receiver<Job>, results: mpsc::UnboundedSender<JobResult>) {
        while let Some(job) = jobs.recv().await {
            let started = Instant::now();
            // If this task panics mid-job, the guard still answers, so the node never waits
            // forever for this job (later jobs fail at once: the queue is gone with the task).
            let mut guard = PanicAnswer { results: &results, resource: self.resource.clone(), kind: job.kind, started, armed: true };
            let outcome = self.execute(&job).await;
            guard.armed = false;
            let r = JobResult { resource: self.resource.clone(), kind: job.kind, started, duration: started.elapsed(), outcome };
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
                Err(CallError::Timeout { .. }) => MonitorOutcome::Timeout,
                Err(e) => MonitorOutcome::Error(e.to_string()),
            }),
            JobKind::Start => {
                if !self.validated {
                    if let Err(e) = self.instance.validate(&ctx, Some(t.validate)).await {
                        return JobOutcome::Done(Err(format!("validate: {e}")));
                    }
                    self.validated = true;
                }
                JobOutcome::Done(self.instance.start(&ctx, Some(t.start)).await.map_err(|e| e.to_string()))
            }
            JobKind::Stop => JobOutcome::Done(self.instance.stop(&ctx, Some(t.stop)).await.map_err(|e| e.to_string())),
            JobKind::Recover => JobOutcome::Done(match self.instance.recover(&ctx, Some(t.recover)).await {
                // "No local recovery" (a LifeKeeper resource without a recover script): the
                // recovery fails and the scheduler fails the group over.
                Err(CallError::Agent { error: AgentFailure::Unsupported(m), .. }) => {
                    Err(format!("no local recovery for this resource ({m})"))
                }
                other => other.map_err(|e| e.to_string()),
            }),
        }
    }
}

struct PanicAnswer<'a> {
    results: &'a mpsc::UnboundedSender<JobResult>,
    resource: String,
    kind: JobKind,
    started: Instant,
    armed: bool,
}

impl Drop for PanicAnswer<'_> {
    fn drop(&mut self) {
        if self.armed {
            let why = "the resource's worker crashed during this action".to_string();
            let outcome = match self.kind {
                JobKind::Probe | JobKind::Monitor => JobOutcome::Health(MonitorOutcome::Error(why)),
                _ => JobOutcome::Done(Err(why)),
            };
            let _ = self.results.send(JobResult {
                resource: std::mem::take(&mut self.resource),
                kind: self.kind,
                started: self.started,
                duration: self.started.elapsed(),
                outcome,
            });
        }
    }
}
