//! The node daemon (`warden node run`): loads the config and plugins, probes what really runs,
//! then drives the scheduler: commands go to per-resource workers, their results and the
//! monitors' come back as events. State that must survive a restart is persisted; what
//! resources are doing is always re-learned by probing, so a restarted daemon adopts running
//! resources instead of starting second copies.
//!
//! ```text
//!   control socket ─┐        ┌──────────── Scheduler (sans-IO) ───────────┐
//!   monitor timers ─┼─► loop ┤ events in                      commands out ├─► workers (one task
//!   job results ────┘        └──────────────────────────────────────────────┘   per resource)
//! ```

mod admission;
pub mod alerts;
pub mod cgroup;
/// The lease rules live in the core, where the seeded simulation checks them.
use warden_core::lease;
mod member;
mod reload;
pub mod rlimit;
mod schedule;
pub mod watchdog;
pub mod worker;

pub use warden_store::history;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::api::{self, GroupStatus, MonitorStatus, NodeStatus, Request, ResourceStatus, Response, StatusReport};
use crate::config::{ClusterConfig, ConfigErrors, Role};
use crate::plugin::{signing, HostOptions, Limits, Plugin, PluginError, PluginHost, SignatureStatus};
use crate::scheduler::{ActionKind, Activity, Command, Event, Failure, Millis, MonitorOutcome, NodeId, ResourceId, Scheduler};
use history::{unix_ms, EventRecord, History};
use worker::{Job, JobKind, JobOutcome, JobResult, Timeouts, Worker};

/// The longest a restart waits out one interrupted action when there are no cgroups.
const MAX_SETTLE_WAIT_MS: u64 = 10 * 60 * 1000;

/// How long an operator command waits for its decision to be durable before it is told the disk
/// does not answer.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// How often the scheduler re-evaluates time-based rules even when nothing happens.
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Plugin(#[from] PluginError),
    #[error("plugin `{name}` ({path}) is refused: {status}; the config requires it to be signed by {signer}")]
    Unsigned { name: String, path: PathBuf, status: SignatureStatus, signer: PathBuf },
    #[error("node `{0}` is not in the config (use --node NAME; the nodes are: {1})")]
    UnknownNode(String, String),
    #[error("node `{0}` is a witness: it votes in a cluster and never runs resources; it cannot run alone")]
    Witness(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("another `warden node run` is already serving {0}")]
    AlreadyRunning(PathBuf),
    #[error("{0}")]
    Store(#[from] warden_store::StoreError),
    #[error("{0}")]
    Setup(String),
}

#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    pub config: PathBuf,
    pub node: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    /// On SIGTERM, exit without stopping resources (they are adopted at the next start).
    pub leave_running: bool,
    /// Only check the config and plugins (`warden node check`): multi-node configs are fine.
    pub check_only: bool,
    /// Run this node of a multi-node config alone: the other nodes are treated as down for good
    /// (the operator guarantees they do not run Warden). Like LifeKeeper with one server up.
    pub single_node: bool,
    /// `--join`: a member added to a running cluster; it never forms a cluster itself.
    pub join: bool,
    /// Tests: reach the other members over this in-memory router (with its drops, delays and
    /// cuts) instead of mutual TLS on the configured addresses. Several members then run in one
    /// process; no certificates are needed.
    pub in_memory: Option<InMemoryNet>,
    /// The compiled-component cache: `--cache-dir` (Some(Some)), `--no-cache` (Some(None)),
    /// else (None) `daemon.cache_dir` from the config or `<state_dir>/cache`.
    pub cache: Option<Option<PathBuf>>,
    /// `--trusted-key`: only plugins signed by one of these keys load (none: no such rule).
    pub trusted_keys: Vec<ed25519_dalek::VerifyingKey>,
}

/// Least time between two monitors brought forward by one resource's watch.
const WATCH_GAP: Duration = Duration::from_secs(1);

/// A resource's config resolved against its plugin (see [`Node::resolve`]).
struct Resolved {
    params: std::collections::BTreeMap<String, String>,
    timeouts: Timeouts,
    interval: Duration,
    limits: Limits,
}

/// A control-socket request, who sent it, and where its answer goes.
type ApiCall = (Request, api::users::Caller, oneshot::Sender<Response>);

/// Requests for `/metrics`; a sender is kept so that the channel stays open without a listener.
struct MetricsRx {
    rx: mpsc::Receiver<oneshot::Sender<String>>,
    _keep: mpsc::Sender<oneshot::Sender<String>>,
}

/// The resources' workers: their queues, monitor intervals and plugin names, by resource.
struct Workers {
    senders: HashMap<String, mpsc::Sender<Job>>,
    intervals: HashMap<String, Duration>,
    plugin_of: HashMap<String, String>,
}

/// The state file format this Warden reads and writes.
/// Version 2: decisions and observations split (version 1 files are set aside; the node then
/// re-learns by probing and continues epochs from the clock).
const STATE_VERSION: u32 = 2;

/// Epochs above this are damage (they start from unix milliseconds at worst, ~2^41).
const MAX_EPOCH: u64 = 1 << 62;

/// The state file: what must survive a restart, the decision core's decisions and restart
/// counters (never what resources are doing: that is re-learned by probing).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    version: u32,
    cluster: String,
    node: String,
    /// The boot the core's times (restart counters, `failed_on`) were taken in.
    #[serde(default)]
    boot_id: String,
    state: crate::scheduler::Persisted,
}

/// The decision core's clock: milliseconds since this machine booted, counted from the kernel's
/// uptime at start plus a monotonic clock. Timers (restart windows, `failed_on` expiry) never jump
/// with the wall clock (NTP steps, an operator's `date -s`), and stay meaningful across a daemon
/// restart within one boot; the wall clock is only for display.
#[derive(Clone, Copy)]
struct SchedClock {
    start: Instant,
    uptime_at_start: Millis,
}

impl SchedClock {
    fn new() -> Self {
        let uptime = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|t| t.split_whitespace().next().and_then(|s| s.parse::<f64>().ok()))
            .map_or(0, |secs| (secs * 1000.0) as Millis);
        Self { start: Instant::now(), uptime_at_start: uptime }
    }

    fn now(&self) -> Millis {
        self.uptime_at_start + self.start.elapsed().as_millis() as Millis
    }

    /// A core timestamp as wall-clock unix milliseconds, for display.
    fn to_wall(self, t: Millis) -> u64 {
        unix_ms(SystemTime::now()).saturating_sub(self.now().saturating_sub(t))
    }
}

/// This boot's id: core times from another boot mean nothing in this one.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// A loaded, validated node, ready to run.
pub struct Node {
    cfg: ClusterConfig,
    name: String,
    state_dir: PathBuf,
    socket: PathBuf,
    plugins: BTreeMap<String, Arc<Plugin>>,
    leave_running: bool,
    single_node: bool,
    join: bool,
    in_memory: Option<InMemoryNet>,
}

/// The in-memory network of [`NodeOptions::in_memory`].
#[derive(Clone)]
pub struct InMemoryNet(pub warden_cluster::router::Router);

impl std::fmt::Debug for InMemoryNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InMemoryNet")
    }
}

/// Where the CLI and the daemon meet unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/warden/warden.sock";

/// Where a member's cluster credentials are unless `daemon.pki_dir` says otherwise.
pub const DEFAULT_PKI_DIR: &str = "/etc/warden/pki";

/// Default state directory for a cluster.
pub fn default_state_dir(cluster: &str) -> PathBuf {
    PathBuf::from("/var/lib/warden").join(cluster)
}

impl Node {
    /// Load the config, check it, load and verify every plugin, and check resources against them.
    pub async fn load(opts: &NodeOptions) -> Result<Self, NodeError> {
        let cfg = ClusterConfig::load(&opts.config)?;
        let first_runner = || cfg.nodes.iter().find(|n| n.role == Role::Node).map(|n| n.name.get_ref().clone());
        let name = match &opts.node {
            Some(n) => n.clone(),
            // A check without --node looks at the config as the first node would.
            None if opts.check_only => first_runner().unwrap_or_default(),
            None => crate::cli::hostname(),
        };
        let names = || cfg.nodes.iter().map(|n| n.name.get_ref().clone()).collect::<Vec<_>>().join(", ");
        let me = cfg.node(&name).ok_or_else(|| NodeError::UnknownNode(name.clone(), names()))?;
        let member = cfg.nodes.len() > 1 && !opts.single_node;
        // A witness votes in a cluster; alone it would have nothing to do.
        if me.role == Role::Witness && !member {
            return Err(NodeError::Witness(name));
        }
        // (Over the in-memory router, addresses only name paths and no certificate is needed.)
        if member && !opts.check_only && opts.in_memory.is_none() {
            if me.addresses.is_empty() {
                return Err(NodeError::Setup(format!(
                    "node `{name}` has no addresses: a cluster member needs at least one (`addresses` under [[nodes]]); \
                     to run only this node of the cluster (the others must not run Warden), pass --single-node"
                )));
            }
            let dir = cfg.daemon.pki_dir.as_ref().map(|p| cfg.resolve_path(p)).unwrap_or_else(|| PathBuf::from(DEFAULT_PKI_DIR));
            if let Err(e) = warden_cluster::pki::TlsIdentity::load(&dir, &name) {
                return Err(NodeError::Setup(format!(
                    "cluster credentials for `{name}` in {}: {e}. Make them with `warden cluster init --dir DIR --name {} NODE...` \
                     and set daemon.pki_dir; to run only this node of the cluster (the others must not run Warden), pass --single-node",
                    dir.display(),
                    cfg.cluster.name
                )));
            }
        }
        let state_dir = opts
            .state_dir
            .clone()
            .or_else(|| cfg.daemon.state_dir.clone().map(|p| cfg.resolve_path(&p)))
            .unwrap_or_else(|| default_state_dir(&cfg.cluster.name));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&state_dir).map_err(|source| NodeError::Io {
                what: "cannot create the state directory",
                path: state_dir.clone(),
                source,
            })?;
        }
        let socket = opts
            .socket
            .clone()
            .or_else(|| cfg.daemon.control_socket.clone().map(|p| cfg.resolve_path(&p)))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        let cache = match &opts.cache {
            Some(choice) => choice.clone(),
            None => Some(cfg.daemon.cache_dir.clone().map(|p| cfg.resolve_path(&p)).unwrap_or_else(|| state_dir.join("cache"))),
        };
        // The operator's --trusted-key applies to the node's plugins as to every other command.
        let host = PluginHost::new(HostOptions { cache_dir: cache, trusted_keys: opts.trusted_keys.clone() })?;
        let mut plugins = BTreeMap::new();
        for p in &cfg.plugins {
            let path = cfg.resolve_path(p.path.get_ref());
            let signer_key = match &p.signer {
                None => None,
                Some(signer) => {
                    let signer = cfg.resolve_path(signer.get_ref());
                    let key = signing::read_public_key(&signer).map_err(|e| NodeError::Io {
                        what: "cannot read the signer key",
                        path: signer.clone(),
                        source: std::io::Error::other(e.to_string()),
                    })?;
                    Some((key, signer))
                }
            };
            // One read of the plugin: its signature is checked on the bytes that are loaded.
            let loaded = host.load_signed(&path, signer_key.as_ref().map(|(k, _)| k)).await;
            if let (Err(PluginError::Untrusted { status, .. }), Some((_, signer))) = (&loaded, &signer_key) {
                return Err(NodeError::Unsigned { name: p.name.get_ref().clone(), path, status: status.clone(), signer: signer.clone() });
            }
            let loaded = loaded.map_err(|e| {
                // Point at the config line as well as the plugin problem.
                NodeError::Config(ConfigErrors(vec![cfg.error_at(
                    p.path.span(),
                    format!("plugin `{}`: {e}", p.name.get_ref()),
                    Some("build plugins with `cargo xtask plugins`; paths are relative to the config file".into()),
                )]))
            })?;
            plugins.insert(p.name.get_ref().clone(), loaded);
        }
        cfg.check_plugins(&plugins)?;
        Ok(Self {
            cfg,
            name,
            state_dir,
            socket,
            plugins,
            leave_running: opts.leave_running,
            single_node: opts.single_node,
            join: opts.join,
            in_memory: opts.in_memory.clone(),
        })
    }

    /// A resource's config resolved against its plugin: parameters with the agent's defaults,
    /// timeouts and interval with the config's overrides, limits.
    fn resolve(&self, rc: &crate::config::ResourceConfig) -> Resolved {
        let m = &self.plugins[rc.plugin.get_ref()].metadata;
        let t = &rc.timeouts;
        Resolved {
            params: m.resolve_params(rc.params.get_ref()).expect("checked by check_plugins"),
            timeouts: Timeouts {
                start: t.start.map_or(m.timeouts.start, |d| d.get()),
                stop: t.stop.map_or(m.timeouts.stop, |d| d.get()),
                monitor: t.monitor.map_or(m.timeouts.monitor, |d| d.get()),
                recover: t.recover.map_or(m.timeouts.recover, |d| d.get()),
                validate: t.validate.map_or(m.timeouts.validate, |d| d.get()),
            },
            interval: rc
                .monitor_interval
                .map(|d| d.get())
                .or(m.monitor_interval)
                .unwrap_or(Duration::from_secs(10))
                .max(Duration::from_millis(50)),
            limits: Limits { memory_bytes: rc.memory_mib.map_or(Limits::default().memory_bytes, |m| m << 20) },
        }
    }

    /// `warden resource show`: everything the node runs a resource with.
    fn resource_details(&self, sched: &Scheduler, name: &str) -> Option<api::ResourceDetails> {
        let rc = self.cfg.resource(name)?;
        let plugin = &self.plugins[rc.plugin.get_ref()];
        let Resolved { params, timeouts, interval, limits } = self.resolve(rc);
        let model = sched.model();
        let group = model.resources.get(name)?.group.clone();
        let g = &model.groups[&group];
        let ms = |d: Duration| d.as_millis() as u64;
        Some(api::ResourceDetails {
            name: name.into(),
            group: group.to_string(),
            plugin: rc.plugin.get_ref().clone(),
            plugin_path: plugin.path.display().to_string(),
            plugin_version: plugin.metadata.version.clone(),
            wit: plugin.wit.package().into(),
            params,
            timeouts_ms: [
                ("start", ms(timeouts.start)),
                ("stop", ms(timeouts.stop)),
                ("monitor", ms(timeouts.monitor)),
                ("recover", ms(timeouts.recover)),
                ("validate", ms(timeouts.validate)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            monitor_interval_ms: ms(interval),
            memory_mib: (limits.memory_bytes >> 20) as u64,
            // As the node treats it now: the config, the operator's manage/unmanage, maintenance.
            unmanaged: sched.unmanaged(&ResourceId::from(name)),
            depends_on: g.deps.get(name).into_iter().flatten().map(ResourceId::to_string).collect(),
            needed_by: g.dependents.get(name).into_iter().flatten().map(ResourceId::to_string).collect(),
            grants: serde_json::to_value(rc.grants.get_ref()).unwrap_or_default(),
            max_restarts: g.max_restarts,
            restart_window_ms: g.restart_window,
        })
    }

    /// Call every resource's and fence device's `validate` with its real parameters and grants,
    /// as this node would (wit/agent.wit: validate is called at config load). Returns one line
    /// per failure, naming the resource or device, its plugin and what the agent said.
    pub async fn validate_all(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for rc in &self.cfg.resources {
            let plugin = &self.plugins[rc.plugin.get_ref()];
            let params = plugin.metadata.resolve_params(rc.params.get_ref()).unwrap_or_default();
            let timeout = rc.timeouts.validate.map_or(plugin.metadata.timeouts.validate, |d| d.get());
            let limits = Limits { memory_bytes: rc.memory_mib.map_or(Limits::default().memory_bytes, |m| m << 20) };
            let mut inst = plugin.instance(rc.name.get_ref(), rc.grants.get_ref().clone(), limits);
            let ctx = crate::plugin::CallContext { resource: rc.name.get_ref().clone(), node: self.name.clone(), epoch: 0, params };
            if let Err(e) = inst.validate(&ctx, Some(timeout)).await {
                failures.push(format!("resource `{}` (plugin `{}`): validate failed: {e}", rc.name.get_ref(), rc.plugin.get_ref()));
            }
        }
        for f in &self.cfg.fencing {
            let plugin = &self.plugins[f.plugin.get_ref()];
            let params = plugin.metadata.resolve_params(&f.params).unwrap_or_default();
            let mut inst = plugin.instance(f.name.get_ref(), f.grants.clone(), Limits::default());
            let ctx = crate::plugin::CallContext { resource: f.name.get_ref().clone(), node: self.name.clone(), epoch: 0, params };
            if let Err(e) = inst.validate(&ctx, Some(plugin.metadata.timeouts.validate)).await {
                failures.push(format!("fence device `{}` (plugin `{}`): validate failed: {e}", f.name.get_ref(), f.plugin.get_ref()));
            }
        }
        for a in &self.cfg.alerts {
            use std::os::unix::fs::PermissionsExt;
            let program = a.program.get_ref();
            match std::fs::metadata(program) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
                Ok(_) => failures.push(format!("alert `{}`: {program} is not an executable file", a.label())),
                Err(e) => failures.push(format!("alert `{}`: {program}: {e}", a.label())),
            }
        }
        if let Some(g) = &self.cfg.daemon.status_group {
            if let Err(e) = api::users::group_id(g) {
                failures.push(format!("daemon.status_group: {e}"));
            }
        }
        failures
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Run until SIGTERM/SIGINT (or `stop` resolves).
    pub async fn run(self, stop: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
        // One daemon per state directory and per control socket, for the daemon's whole life:
        // two daemons on one state would both start the same groups. Taken before anything is
        // read or probed.
        let _locks = self.lock()?;
        if self.is_member() {
            return member::run(self, stop).await;
        }
        let mut model = self.cfg.model();
        for (name, r) in model.resources.iter_mut() {
            let rc = self.cfg.resource(name).expect("validated");
            r.local_recovery = self.plugins[rc.plugin.get_ref()].metadata.local_recovery;
        }
        let mut sched = Scheduler::new(model);
        let mut history = History::open(self.state_dir.join("events.jsonl"));
        // Load the last durable state (or the generation before it), validated: a state file
        // of another node or cluster, of an unknown version, or with epochs out of range is
        // damage, set aside for a post-mortem, never used.
        let state_file = warden_store::DurableFile::new(&self.state_dir, "state.json");
        let (cluster, node) = (self.cfg.cluster.name.clone(), self.name.clone());
        let loaded = state_file.load::<Persisted>(|p| {
            if p.version != STATE_VERSION {
                return Err(format!("state version {} (this Warden writes {STATE_VERSION})", p.version));
            }
            if p.cluster != cluster || p.node != node {
                return Err(format!("state of node `{}` in cluster `{}` (this is `{node}` in `{cluster}`)", p.node, p.cluster));
            }
            if let Some((g, e)) = p.state.decisions.groups.iter().map(|(g, s)| (g, s.epoch)).find(|(_, e)| *e > MAX_EPOCH) {
                return Err(format!("group `{g}` has epoch {e}, beyond the valid range"));
            }
            Ok(())
        });
        for problem in &loaded.problems {
            tracing::warn!("state: {problem}");
            note(&mut history, "node", &self.name, format!("state file: {problem}"));
        }
        for problem in history.problems().to_vec() {
            tracing::warn!("event history: {problem}");
            note(&mut history, "node", &self.name, format!("event history: {problem}"));
        }
        let clock = SchedClock::new();
        let this_boot = boot_id();
        match loaded.value {
            Some(mut p) => {
                if p.boot_id != this_boot {
                    // Restart times from another boot cannot be compared with this boot's clock:
                    // forget them, and let failures count from now (a full window from now).
                    p.state.restarts.clear();
                    for g in p.state.decisions.groups.values_mut() {
                        for f in g.failed_on.values_mut() {
                            f.at = clock.now();
                        }
                    }
                }
                // The previous generation may predate epochs already handed out (the current file
                // was damaged, not missing): continue them from the clock as when state is lost.
                let floor = if loaded.used == warden_store::Generation::Previous {
                    note(&mut history, "node", &self.name, "using the previous generation of the state file".into());
                    unix_ms(SystemTime::now()).min(MAX_EPOCH)
                } else {
                    0
                };
                sched.restore(&p.state, floor);
            }
            None => {
                // Nothing durable survived (first start, or every generation damaged). Epochs must
                // still never go backwards (agents use them as fencing tokens): start them from
                // the wall clock in milliseconds, above anything counted up one move at a time.
                let floor = unix_ms(SystemTime::now()).min(MAX_EPOCH);
                let fresh = sched.persisted();
                sched.restore(&fresh, floor);
                if !loaded.problems.is_empty() {
                    note(
                        &mut history,
                        "node",
                        &self.name,
                        format!("no usable state; re-learning by probing; epochs continue from {floor}"),
                    );
                }
            }
        }

        let cgroups = self.detect_cgroups(&mut history).await;
        let journal_dir = self.state_dir.join("actions");
        std::fs::create_dir_all(&journal_dir).map_err(|source| NodeError::Io {
            what: "cannot create the action journal directory",
            path: journal_dir.clone(),
            source,
        })?;
        // Before anything is probed: what an interrupted start, stop or recover of the previous
        // daemon left running is killed (or waited out), or the probe could adopt half of it and
        // the orphaned action finish a second copy afterwards.
        self.settle_interrupted_actions(&journal_dir, cgroups.as_ref(), &mut history).await;

        // Every task of the daemon is tracked: listeners stop on `cancel`, workers when their
        // queues close, and the daemon waits (bounded) for them before it exits.
        let tasks = tokio_util::task::TaskTracker::new();
        let cancel = tokio_util::sync::CancellationToken::new();

        // Workers.
        let (results_tx, mut results_rx) = mpsc::unbounded_channel::<JobResult>();
        // Exits of the processes agents name with `watch`: each brings the resource's monitor forward.
        let (watch_tx, mut watch_rx) = mpsc::unbounded_channel::<worker::WatchFired>();
        let Workers { senders: workers, intervals, plugin_of } =
            self.spawn_workers(&journal_dir, cgroups.as_ref(), &tasks, &results_tx, &watch_tx);

        let (mut api_rx, _owned_socket) = self.open_control(&cancel, &tasks, history.feed.clone()).await?;

        let (mut metrics_rx, metrics_bound) = self.open_metrics(&cancel, &tasks).await?;
        let metrics_rx = &mut metrics_rx.rx;
        let mut metrics = api::metrics::Metrics::default();
        self.spawn_alerts(&history, &cancel, &tasks);

        let mut signals = Box::pin(stop);
        // The core's time is the boot clock (see SchedClock): monotonic, and meaningful across a
        // daemon restart within one boot.
        let now_ms = || clock.now();
        // This node, as the core names it.
        let me = NodeId::from(self.name.as_str());
        // Jobs queued or running per resource (a count: a stop can be queued behind a monitor).
        let mut busy = Busy::default();
        let mut schedule = schedule::MonitorSchedule::new(intervals, unix_ms(SystemTime::now()));
        let mut shutting_down = false;
        let mut tick = tokio::time::interval(TICK);

        note(
            &mut history,
            "node",
            &self.name,
            format!("node started ({} resources in {} groups); probing what runs", self.cfg.resources.len(), self.cfg.groups.len()),
        );
        if self.single_node && self.cfg.nodes.len() > 1 {
            let others: Vec<String> = self.cfg.nodes.iter().map(|n| n.name.get_ref().clone()).filter(|n| *n != self.name).collect();
            let msg = format!("--single-node: running alone; {} are treated as down and must not run Warden", others.join(", "));
            tracing::warn!("{msg}");
            note(&mut history, "node", &self.name, msg);
        }
        tracing::info!(node = %self.name, socket = %self.socket.display(), "node running");
        let mut pending = Vec::new();
        if self.single_node {
            // --single-node is the operator's word that the other nodes run nothing of ours
            // (they do not run Warden): a manual fence confirmation for each.
            for other in self.cfg.nodes.iter().map(|n| n.name.get_ref()).filter(|n| **n != self.name) {
                pending.extend(sched.handle(now_ms(), Event::Fenced(other.into())));
            }
        }
        pending.extend(sched.handle(now_ms(), Event::NodeUp(me.clone())));

        // Propose, persist, act: a command is carried out only once the decision behind it is
        // durable. The writer thread does the disk work, so a hung disk stalls only decisions
        // that change durable state; monitors, local recovery and status go on.
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<warden_store::WriteAck>();
        let writer = warden_store::StateWriter::spawn(state_file.clone(), ack_tx);
        let mut submitted_gen = 0u64;
        let mut durable_gen = 0u64;
        // The generation that holds the latest change of decisions (targets, placements, epochs,
        // failures, standby); commands wait for it.
        let mut decision_gen = 0u64;
        let mut last_submitted: Option<crate::scheduler::Persisted> = None;
        let mut held: std::collections::VecDeque<(u64, Command)> = std::collections::VecDeque::new();
        // (generation, reply, command text, since): answered once durable, with an error after a
        // failed write of that generation, or after REPLY_WAIT without any answer from the disk.
        let mut waiting_replies: Vec<(u64, oneshot::Sender<Response>, String, Instant)> = Vec::new();
        let mut new_reply: Option<(oneshot::Sender<Response>, String)> = None;
        let mut state_error: Option<String> = None;

        loop {
            // Propose: submit what must survive a restart when it changed. Shutdown stops are not
            // persisted as targets (the scheduler keeps targets), so the next start resumes.
            // Routine healthy monitors change nothing durable: skip the O(n) work for them.
            let routine = !sched.changed() && pending.is_empty();
            if !routine {
                let d = sched.persisted();
                if last_submitted.as_ref() != Some(&d) {
                    submitted_gen += 1;
                    // Only a change of decisions holds commands back; restart counters alone
                    // are written lazily (local recovery never waits on a disk).
                    if last_submitted.as_ref().is_none_or(|l| l.decisions != d.decisions) {
                        decision_gen = submitted_gen;
                    }
                    let p = Persisted {
                        version: STATE_VERSION,
                        cluster: self.cfg.cluster.name.clone(),
                        node: self.name.clone(),
                        boot_id: this_boot.clone(),
                        state: d.clone(),
                    };
                    if let Err(e) = writer.submit(submitted_gen, &p) {
                        tracing::error!(error = %e, "cannot encode the node state");
                    }
                    last_submitted = Some(d);
                }
            }
            if let Some((reply, text)) = new_reply.take() {
                if decision_gen > durable_gen {
                    waiting_replies.push((decision_gen, reply, text, Instant::now()));
                } else {
                    let _ = reply.send(Response::Ok { message: format!("accepted: {text}") });
                }
            }
            // Act: what this round decided waits behind any decision not yet durable.
            for c in std::mem::take(&mut pending) {
                match c {
                    Command::Note { subject, message } => {
                        tracing::info!(subject = %subject, "{message}");
                        note(&mut history, "decision", &subject, message);
                    }
                    // At shutdown nothing waits on the disk: stopping must finish even when the
                    // state cannot be written (shutdown stops change no decision).
                    c if !shutting_down && (decision_gen > durable_gen || !held.is_empty()) => {
                        if let Some(r) = command_resource(&c) {
                            *busy.0.entry(r.to_string()).or_default() += 1;
                        }
                        held.push_back((decision_gen, c));
                    }
                    c => carry_out(c, &workers, &mut busy, &results_tx, &mut history, false, None),
                }
            }
            while held.front().is_some_and(|(g, _)| *g <= durable_gen) {
                let (_, c) = held.pop_front().expect("checked");
                carry_out(c, &workers, &mut busy, &results_tx, &mut history, true, None);
            }
            // Monitor schedule follows what is running here.
            if !routine {
                schedule.follow(&sched.monitored_on(&me), &busy);
            }
            // Shutdown ends when nothing is in flight and the scheduler asks for nothing more:
            // either everything stopped, or a failed stop blocks the rest (a dependency is never
            // stopped under a dependent that may still run).
            if shutting_down && busy.is_empty() {
                let left = sched.active_on(&me);
                let msg = if sched.in_maintenance(&me) {
                    "node stopped; in maintenance, so its resources were left as they were (adopted at the next start)".to_string()
                } else if left.is_empty() {
                    "node stopped; all resources stopped".to_string()
                } else {
                    format!(
                        "node stopped; could NOT stop {} (stop failed: {}); they may still run",
                        left.join(", "),
                        sched.stop_failed_on(&me).join(", ")
                    )
                };
                note(&mut history, "node", &self.name, msg);
                break;
            }
            let due = schedule.due();

            tokio::select! {
                Some(r) = results_rx.recv() => {
                    busy.done(&r.resource);
                    let plugin = plugin_of[&r.resource].clone();
                    let event = job_event(&me, &r, &plugin, &mut metrics, &mut history);
                    schedule.returned(&r.resource, matches!(r.kind, JobKind::Monitor), true);
                    pending = sched.handle(now_ms(), event);
                }
                Some(f) = watch_rx.recv() => {
                    // Only a resource monitored here has a current watch; an exit reported by a
                    // watch being replaced is ignored the same way. During shutdown everything
                    // is being stopped: an exit is expected.
                    if !shutting_down {
                        let what = if f.name.is_empty() { format!("process {}", f.pid) } else { format!("process {} ({})", f.pid, f.name) };
                        schedule.watch_fired(&f.resource, &what, &busy, &mut metrics, &mut history);
                    }
                }
                _ = sleep_until(due) => {
                    for r in schedule.take_due(&busy) {
                        dispatch(&workers, &mut busy, &results_tx, &r, Job::new(JobKind::Monitor, 0, sched.epoch(&r)));
                    }
                }
                Some(ack) = ack_rx.recv() => match ack.result {
                    Ok(()) => {
                        durable_gen = durable_gen.max(ack.generation);
                        if state_error.take().is_some() {
                            note(&mut history, "node", &self.name, "the state file is durable again; held commands go ahead".into());
                        }
                        let (done, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut waiting_replies).into_iter().partition(|(g, ..)| *g <= durable_gen);
                        waiting_replies = wait;
                        for (_, reply, text, _) in done {
                            let _ = reply.send(Response::Ok { message: format!("accepted: {text}") });
                        }
                    }
                    Err(e) => {
                        metrics.state_write_failure();
                        if state_error.as_deref() != Some(e.as_str()) {
                            tracing::error!(error = %e, "cannot write the state file; decisions are held until it is durable");
                            note(&mut history, "node", &self.name, format!("cannot write the state file ({e}); new decisions are held until it is durable (retrying)"));
                        }
                        // Only what waited for this generation (or an older one) failed with it.
                        let (failed, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut waiting_replies).into_iter().partition(|(g, ..)| *g <= ack.generation);
                        waiting_replies = wait;
                        for (_, reply, text, _) in failed {
                            let message = format!("not acknowledged: the state could not be made durable ({e}); Warden keeps retrying and carries out `{text}` only once it is written");
                            let _ = reply.send(Response::Error { message });
                        }
                        state_error = Some(e);
                    }
                },
                Some((req, caller, reply)) = api_rx.recv() => {
                    let resp = match req {
                        Request::Status => {
                            let mut st = self.status(&sched, &history, shutting_down, clock);
                            st.state_error = state_error.clone();
                            st.metrics_addr = metrics_bound.clone();
                            Response::Status { status: Box::new(st) }
                        }
                        Request::Events { since, .. } => Response::Events { events: history.since(since) },
                        Request::ResourceShow { resource } => match self.resource_details(&sched, &resource) {
                            Some(details) => Response::Resource { details: Box::new(details) },
                            None => Response::Error { message: format!("no resource named `{resource}`") },
                        },
                        Request::ConfigShow => Response::Config {
                            path: self.cfg.source.display().to_string(),
                            text: self.cfg.text().to_string(),
                        },
                        Request::ConfigApply { .. } => Response::Error {
                            message: "`config apply` changes a cluster's config; a single node reads its file at start: edit the file, \
                                      check it (`warden node check`) and restart the node (`--leave-running` keeps what runs)"
                                .into(),
                        },
                        Request::Operator { command } => match sched.check_operator(&command) {
                            Err(message) => Response::Error { message },
                            Ok(()) if shutting_down => Response::Error { message: "the node is shutting down".into() },
                            Ok(()) => {
                                let text = operator_text(&command);
                                // Who asked, as LifeKeeper's and Pacemaker's logs say.
                                note(&mut history, "operator", "operator", format!("{text} (by {}, uid {})", caller.user, caller.uid));
                                // A group on a node in maintenance is left alone: say that the
                                // command waits for the end of maintenance.
                                let deferred = match &command {
                                    crate::scheduler::OperatorCommand::MoveGroup { group, .. }
                                    | crate::scheduler::OperatorCommand::StartGroup { group }
                                    | crate::scheduler::OperatorCommand::StopGroup { group } => {
                                        sched.state().decisions.groups.get(group).and_then(|g| g.owner.clone()).filter(|o| sched.in_maintenance(o))
                                    }
                                    _ => None,
                                };
                                let text = match deferred {
                                    Some(n) => format!("{text}; node `{n}` is in maintenance: carried out when its maintenance ends"),
                                    None => text,
                                };
                                pending = sched.handle(now_ms(), Event::Operator(command));
                                // Answered once the decision is durable (top of the loop).
                                new_reply = Some((reply, text));
                                continue;
                            }
                        },
                    };
                    let _ = reply.send(resp);
                }
                Some(reply) = metrics_rx.recv() => {
                    let states: Vec<(String, String)> = sched.state().observations.resources.iter().map(|(r, s)| {
                        let st = match s.on.get(&me) {
                            None => "stopped".to_string(),
                            // Running but impaired: its own state, so alerting rules can see it.
                            Some(Activity::Running) if s.last_monitor.as_ref().is_some_and(|m| matches!(m.outcome, MonitorOutcome::Degraded(_))) => "degraded".to_string(),
                            Some(a) => activity_name(a),
                        };
                        (r.to_string(), st)
                    }).collect();
                    let _ = reply.send(metrics.render(&states));
                }
                _ = tick.tick() => {
                    pending = sched.handle(now_ms(), Event::Tick);
                    // A disk that does not answer at all (hung, frozen): tell the operator rather
                    // than keep the connection (and a control slot) forever.
                    let (late, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut waiting_replies).into_iter().partition(|(.., since)| since.elapsed() >= REPLY_WAIT);
                    waiting_replies = wait;
                    for (_, reply, text, _) in late {
                        let message = format!("not acknowledged yet: the state directory has not confirmed the write within {REPLY_WAIT:?} (hung disk?); Warden carries out `{text}` once it is written");
                        let _ = reply.send(Response::Error { message });
                    }
                }
                _ = &mut signals, if !shutting_down => {
                    if self.leave_running {
                        note(&mut history, "node", &self.name, "node exiting; resources left running (they are adopted at the next start)".into());
                        break;
                    }
                    shutting_down = true;
                    note(&mut history, "node", &self.name, "shutting down: stopping every group top-down".into());
                    // Held commands were never carried out: probes and stops go now; starts and
                    // recoveries are answered as host faults (nothing ran), so nothing waits on
                    // a disk that may never answer.
                    for (_, c) in std::mem::take(&mut held) {
                        let kind = if matches!(c, Command::Start { .. }) { JobKind::Start } else { JobKind::Recover };
                        match c {
                            Command::Start { resource, op, epoch, .. } | Command::Recover { resource, op, epoch, .. } => {
                                let why = "not carried out: the node is shutting down and the decision was never durable";
                                let _ = results_tx.send(not_carried_out(&resource, kind, op, epoch, why));
                            }
                            c => carry_out(c, &workers, &mut busy, &results_tx, &mut history, true, None),
                        }
                    }
                    pending = sched.stop_all(now_ms());
                }
            }
        }
        // Stop the listeners and the workers and wait for them, bounded: a worker stuck in an
        // agent call (only with --leave-running) must not keep the daemon alive.
        cancel.cancel();
        drop(workers);
        tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await.is_err() {
            tracing::warn!(left = tasks.len(), "some tasks did not finish within 5 s; exiting anyway");
        }
        // Give the last state a bounded chance to reach the disk (a hung disk must not hang exit).
        if let Err(e) = writer.shutdown(Duration::from_secs(5)) {
            tracing::error!(error = %e, "the last state was not written before exit");
        }
        Ok(())
    }

    /// Each resource's processes live in their own cgroup; where there is none, say so.
    async fn detect_cgroups(&self, history: &mut History) -> Option<cgroup::Cgroups> {
        match cgroup::Cgroups::detect(&self.cfg.cluster.name, &self.state_dir) {
            Ok(c) => match c.check_joinable().await {
                Ok(()) => {
                    tracing::info!(base = %c.base().display(), "each resource's processes run in their own cgroup");
                    Some(c)
                }
                Err(e) => {
                    let msg = format!(
                            "the cgroup tree {} cannot take processes ({e}): falling back to process groups; a process that leaves its \
                             process group escapes the kill at a timeout or stop, and after a crash interrupted actions are waited out, not killed",
                            c.base().display()
                        );
                    tracing::warn!("{msg}");
                    note(history, "node", &self.name, msg);
                    None
                }
            },
            Err(e) => {
                let msg = format!(
                        "no usable cgroup2 hierarchy ({e}): falling back to process groups; a process that leaves its \
                         process group escapes the kill at a timeout or stop, and after a crash interrupted actions are waited out, not killed"
                    );
                tracing::warn!("{msg}");
                note(history, "node", &self.name, msg);
                None
            }
        }
    }

    /// One worker task per resource, tracked by `tasks`.
    fn spawn_workers(
        &self,
        journal_dir: &Path,
        cgroups: Option<&cgroup::Cgroups>,
        tasks: &tokio_util::task::TaskTracker,
        results_tx: &mpsc::UnboundedSender<JobResult>,
        watch_tx: &mpsc::UnboundedSender<worker::WatchFired>,
    ) -> Workers {
        let mut workers: HashMap<String, mpsc::Sender<Job>> = HashMap::new();
        let mut intervals: HashMap<String, Duration> = HashMap::new();
        let mut plugin_of: HashMap<String, String> = HashMap::new();
        for rc in &self.cfg.resources {
            let plugin = &self.plugins[rc.plugin.get_ref()];
            let Resolved { params, timeouts, interval, limits } = self.resolve(rc);
            let cg = match cgroups.map(|c| c.resource(rc.name.get_ref())) {
                Some(Ok(cg)) => Some(cg),
                Some(Err(e)) => {
                    tracing::warn!(resource = %rc.name.get_ref(), error = %e, "no cgroup for this resource; process groups only");
                    None
                }
                None => None,
            };
            // One file per resource; a name never leads out of the directory.
            let journal = Some(journal_dir.join(format!("{}.json", rc.name.get_ref().replace('/', "_"))));
            let setup = worker::Setup {
                params,
                grants: rc.grants.get_ref().clone(),
                timeouts,
                limits,
                journal,
                cgroup: cg,
                watch: Some(watch_tx.clone()),
            };
            let w = Worker::new(plugin, rc.name.get_ref(), &self.name, setup);
            let (tx, rx) = mpsc::channel(64);
            tasks.spawn(w.run(rx, results_tx.clone()));
            workers.insert(rc.name.get_ref().clone(), tx);
            intervals.insert(rc.name.get_ref().clone(), interval);
            plugin_of.insert(rc.name.get_ref().clone(), rc.plugin.get_ref().clone());
        }
        Workers { senders: workers, intervals, plugin_of }
    }

    /// The control socket, served until `cancel`; requests arrive on the returned channel. The
    /// returned path guard removes the socket at exit (only this daemon's own).
    async fn open_control(
        &self,
        cancel: &tokio_util::sync::CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
        feed: tokio::sync::broadcast::Sender<history::EventRecord>,
    ) -> Result<(mpsc::Receiver<ApiCall>, warden_store::OwnedPath), NodeError> {
        // Control socket. We hold its lock, so whatever is at the path is a leftover of a dead
        // daemon (or a daemon of an older version that took no lock: refuse if it answers).
        if let Ok(meta) = std::fs::symlink_metadata(&self.socket) {
            use std::os::unix::fs::FileTypeExt;
            // Never delete what is not a socket (a mistyped control_socket naming a file).
            if !meta.file_type().is_socket() {
                return Err(NodeError::Io {
                    what: "the control socket path exists and is not a socket",
                    path: self.socket.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                });
            }
            if tokio::net::UnixStream::connect(&self.socket).await.is_ok() {
                return Err(NodeError::AlreadyRunning(self.socket.clone()));
            }
            let _ = std::fs::remove_file(&self.socket);
        }
        let listener = tokio::net::UnixListener::bind(&self.socket).map_err(|source| NodeError::Io {
            what: "cannot open the control socket",
            path: self.socket.clone(),
            source,
        })?;
        // Only this daemon's own socket is removed when it exits.
        let _owned_socket = warden_store::OwnedPath::claim(&self.socket)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o600)).map_err(|source| NodeError::Io {
                what: "cannot restrict the control socket",
                path: self.socket.clone(),
                source,
            })?;
        }
        // A read-only status group: the socket is group-readable and -writable for it.
        let status_gid = match &self.cfg.daemon.status_group {
            None => None,
            Some(g) => {
                let gid = api::users::group_id(g).map_err(|e| NodeError::Setup(format!("daemon.status_group: {e}")))?;
                use std::os::unix::fs::PermissionsExt;
                std::os::unix::fs::chown(&self.socket, None, Some(gid))
                    .and_then(|()| std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o660)))
                    .map_err(|source| NodeError::Io {
                        what: "cannot give the status group access to the control socket",
                        path: self.socket.clone(),
                        source,
                    })?;
                Some(gid)
            }
        };
        let (api_tx, api_rx) = mpsc::channel::<(Request, api::users::Caller, oneshot::Sender<Response>)>(64);
        let owner_uid = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&self.socket).map(|m| m.uid()).unwrap_or(0)
        };
        {
            let (cancel, tracker) = (cancel.clone(), tasks.clone());
            tasks.spawn(async move {
                cancel.run_until_cancelled(api::listen::serve_control(listener, owner_uid, status_gid, api_tx, feed, tracker)).await;
            });
        }
        Ok((api_rx, _owned_socket))
    }

    /// `/metrics` when configured: requests arrive on the returned channel; the address as bound.
    async fn open_metrics(
        &self,
        cancel: &tokio_util::sync::CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Result<(MetricsRx, Option<String>), NodeError> {
        let (metrics_tx, metrics_rx) = mpsc::channel::<oneshot::Sender<String>>(8);
        // Without a listener the channel must stay open (and empty): keep a sender.
        let metrics_tx_keep = metrics_tx.clone();
        let mut metrics_bound: Option<String> = None;
        if let Some(addr) = &self.cfg.daemon.metrics_addr {
            let l = tokio::net::TcpListener::bind(addr.get_ref().as_str()).await.map_err(|source| NodeError::Io {
                what: "cannot listen for metrics on",
                path: addr.get_ref().into(),
                source,
            })?;
            // The address really bound (port 0 in the config picks a free one): shown in status.
            metrics_bound = l.local_addr().ok().map(|a| a.to_string());
            let (cancel, tracker) = (cancel.clone(), tasks.clone());
            tasks.spawn(async move {
                cancel.run_until_cancelled(api::listen::serve_metrics(l, metrics_tx, tracker)).await;
            });
        }
        Ok((MetricsRx { rx: metrics_rx, _keep: metrics_tx_keep }, metrics_bound))
    }

    /// Alerts read the history's feed from here on (the "node started" event included).
    fn spawn_alerts(&self, history: &History, cancel: &tokio_util::sync::CancellationToken, tasks: &tokio_util::task::TaskTracker) {
        for a in &self.cfg.alerts {
            let alert = alerts::Alert::from_config(a);
            tracing::info!(alert = %alert.label, program = %alert.program, "alert configured");
            let run = alerts::run(alert, self.cfg.cluster.name.clone(), self.name.clone(), history.feed.subscribe(), cancel.clone());
            tasks.spawn(run);
        }
    }

    /// Where this member's cluster credentials are (`warden cluster init` makes them).
    fn pki_dir(&self) -> PathBuf {
        self.cfg.daemon.pki_dir.as_ref().map(|p| self.cfg.resolve_path(p)).unwrap_or_else(|| PathBuf::from(DEFAULT_PKI_DIR))
    }

    /// Whether this daemon is one member of a multi-node cluster (not `--single-node`).
    fn is_member(&self) -> bool {
        self.cfg.nodes.len() > 1 && !self.single_node
    }

    /// The state directory's and the control socket's locks, held for the daemon's life: two
    /// daemons on one state would both start the same groups. Taken before anything is read or
    /// probed. Also raises the open-file limit.
    fn lock(&self) -> Result<(warden_store::StateDirLock, warden_store::StateDirLock), NodeError> {
        let state_lock = warden_store::StateDirLock::acquire(&self.state_dir)?;
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut socket_lock_path = self.socket.clone().into_os_string();
        socket_lock_path.push(".lock");
        let socket_lock = warden_store::StateDirLock::acquire_file(Path::new(&socket_lock_path))?;
        match rlimit::raise_nofile() {
            Ok((before, after)) => tracing::debug!(before, after, "open-file limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
        Ok((state_lock, socket_lock))
    }

    /// Kill (with cgroups) or wait out (without) what interrupted actions left running.
    async fn settle_interrupted_actions(&self, dir: &Path, cgroups: Option<&cgroup::Cgroups>, history: &mut History) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut records: Vec<(PathBuf, Option<worker::ActionRecord>)> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                let rec = std::fs::read(&p).ok().and_then(|b| serde_json::from_slice::<worker::ActionRecord>(&b).ok());
                (p, rec)
            })
            .collect();
        records.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, rec) in records {
            // A torn or unreadable record still names its resource by file name.
            let resource = rec
                .as_ref()
                .map(|r| r.resource.clone())
                .unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
            let action = rec.as_ref().map_or("an action".to_string(), |r| format!("`{}` (epoch {})", r.action, r.epoch));
            // An action that ran without a cgroup left nothing in one: wait it out instead.
            let had_cgroup = rec.as_ref().is_none_or(|r| r.cgroup);
            let message = match (cgroups.filter(|_| had_cgroup).map(|c| c.resource(&resource)), &rec) {
                (Some(Ok(cg)), _) => {
                    let n = cg.kill_all(Duration::from_secs(10)).await;
                    format!("the previous daemon died during {action}; killed the {n} process(es) it left in the resource's cgroup before probing")
                }
                (_, Some(r)) => {
                    let now = unix_ms(SystemTime::now());
                    // Without cgroups nothing can find the orphans: wait until the interrupted
                    // action's own timeout has passed, at most that timeout from now.
                    // Bounded whatever the record says (a damaged one must not stall the start).
                    let wait = r.deadline_ms.saturating_sub(now).min(r.deadline_ms.saturating_sub(r.started_ms)).min(MAX_SETTLE_WAIT_MS);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    format!(
                        "the previous daemon died during {action}; waited {wait} ms for its timeout to pass before probing (no cgroups)"
                    )
                }
                (_, None) => {
                    "the previous daemon died during an action (record unreadable) and there are no cgroups: probing at once".to_string()
                }
            };
            tracing::warn!(resource = %resource, "{message}");
            note(history, "node", &resource, message);
            if let Err(e) = warden_store::state::remove_durably(&path) {
                tracing::error!(path = %path.display(), error = %e, "cannot remove the action record");
            }
        }
    }

    fn status(&self, sched: &Scheduler, history: &History, shutting_down: bool, clock: SchedClock) -> StatusReport {
        let st = sched.state();
        let model = sched.model();
        StatusReport {
            cluster: self.cfg.cluster.name.clone(),
            node: self.name.clone(),
            now_ms: unix_ms(SystemTime::now()),
            shutting_down,
            state_error: None,
            metrics_addr: None,
            cluster_info: None,
            nodes: model
                .nodes
                .iter()
                .map(|n| {
                    let d = &st.decisions.nodes[&n.name];
                    NodeStatus {
                        name: n.name.to_string(),
                        role: format!("{:?}", n.role).to_lowercase(),
                        up: st.observations.nodes.get(&n.name).is_some_and(|o| o.up),
                        standby: d.standby,
                        needs_fence: d.needs_fence,
                        maintenance: d.maintenance,
                        left: d.left,
                    }
                })
                .collect(),
            groups: model
                .groups
                .values()
                .map(|g| {
                    let gs = &st.decisions.groups[&g.name];
                    GroupStatus {
                        name: g.name.to_string(),
                        state: sched.group_status(&g.name).into(),
                        target: format!("{:?}", gs.target).to_lowercase(),
                        owner: gs.owner.as_ref().map(NodeId::to_string),
                        epoch: gs.epoch,
                        failed_on: gs.failed_on.keys().map(NodeId::to_string).collect(),
                        resources: g.members.iter().map(ResourceId::to_string).collect(),
                        waiting: sched.why_waiting(&g.name),
                        deps: g
                            .deps
                            .iter()
                            .filter(|(_, d)| !d.is_empty())
                            .map(|(r, d)| (r.to_string(), d.iter().map(ResourceId::to_string).collect()))
                            .collect(),
                    }
                })
                .collect(),
            resources: model
                .groups
                .values()
                .flat_map(|g| g.members.iter())
                .map(|r| {
                    let rs = &st.observations.resources[r];
                    let rd = &st.decisions.resources[r];
                    let rm = &model.resources[r];
                    let g = &model.groups[&rm.group];
                    let restarts = rs.restarts.get(self.name.as_str());
                    ResourceStatus {
                        name: r.to_string(),
                        group: rm.group.to_string(),
                        plugin: self.cfg.resource(r).map(|c| c.plugin.get_ref().clone()).unwrap_or_default(),
                        unmanaged: sched.unmanaged(r),
                        on: rs.on.iter().map(|(n, a)| (n.to_string(), activity_name(a))).collect(),
                        last_monitor: rs.last_monitor.as_ref().map(|m| {
                            let (result, reason) = outcome_parts(&m.outcome);
                            MonitorStatus { at_ms: clock.to_wall(m.at), result, reason }
                        }),
                        restarts: restarts.map_or(0, Vec::len),
                        max_restarts: g.max_restarts,
                        restart_window_ms: g.restart_window,
                        last_restart_at_ms: restarts.and_then(|v| v.iter().max()).map(|t| clock.to_wall(*t)),
                        last_failure: rs.last_failure.clone(),
                        blocked: rd.blocked.clone(),
                        ineligible: rd.ineligible.iter().map(|(n, why)| (n.to_string(), why.clone())).collect(),
                        held_stopped: if rd.stopped {
                            Some(format!("stopped by the operator (`warden resource start {r}` to start it)"))
                        } else if sched.held_stopped(g, r) {
                            Some("held stopped: something it needs was stopped by the operator".into())
                        } else {
                            None
                        },
                    }
                })
                .collect(),
            recent: history.last(10),
        }
    }
}

pub fn activity_name(a: &Activity) -> String {
    serde_json::to_value(a).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn outcome_parts(o: &MonitorOutcome) -> (String, Option<String>) {
    match o {
        MonitorOutcome::Running => ("running".into(), None),
        MonitorOutcome::Degraded(r) => ("degraded".into(), Some(r.clone())),
        MonitorOutcome::Stopped => ("stopped".into(), None),
        MonitorOutcome::Failed(r) => ("failed".into(), Some(r.clone())),
        MonitorOutcome::Error(Failure::Timeout) => ("timeout".into(), None),
        MonitorOutcome::Error(Failure::HostFault(r)) => ("host-fault".into(), Some(r.clone())),
        MonitorOutcome::Error(f) => ("error".into(), Some(f.to_string())),
    }
}

/// An operator command in words, for its answer and the event history.
fn operator_text(c: &crate::scheduler::OperatorCommand) -> String {
    use crate::scheduler::OperatorCommand as O;
    match c {
        O::MoveGroup { group, to: Some(to) } => format!("move group `{group}` to {to}"),
        O::MoveGroup { group, to: None } => format!("move group `{group}` to the next eligible node"),
        O::StartGroup { group } => format!("start group `{group}`"),
        O::StopGroup { group } => format!("stop group `{group}`"),
        O::Cleanup { resource } => format!("clean up resource `{resource}`"),
        O::Standby { node } => format!("put node `{node}` in standby"),
        O::Online { node } => format!("bring node `{node}` online"),
        O::StopResource { resource } => format!("stop resource `{resource}` (and what depends on it)"),
        O::StartResource { resource } => format!("start resource `{resource}` again"),
        O::SetManaged { resource, managed: true } => format!("manage resource `{resource}`"),
        O::SetManaged { resource, managed: false } => format!("unmanage resource `{resource}` (monitor only)"),
        O::Maintenance { node, on: true } => format!("put node `{node}` in maintenance (nothing is acted on)"),
        O::Maintenance { node, on: false } => format!("end maintenance on node `{node}`"),
        O::ConfirmDown { node } => format!("confirm node `{node}` is off (its groups may run elsewhere)"),
    }
}

fn command_resource(c: &Command) -> Option<&str> {
    match c {
        Command::Probe { resource, .. }
        | Command::Start { resource, .. }
        | Command::Stop { resource, .. }
        | Command::Recover { resource, .. } => Some(resource),
        _ => None,
    }
}

/// Record a node event or decision (no action) in the history.
fn note(history: &mut History, kind: &str, subject: &str, message: String) {
    history.record(EventRecord {
        seq: 0,
        at_ms: unix_ms(SystemTime::now()),
        kind: kind.into(),
        subject: subject.into(),
        action: None,
        duration_ms: None,
        result: String::new(),
        message,
    });
}

/// Hand a command to its resource's worker. `counted`: its busy count was taken when it was held.
fn carry_out(
    c: Command,
    workers: &HashMap<String, mpsc::Sender<Job>>,
    busy: &mut Busy,
    results: &mpsc::UnboundedSender<JobResult>,
    history: &mut History,
    counted: bool,
    lease: Option<(tokio::sync::watch::Receiver<worker::LeaseView>, u64)>,
) {
    if counted {
        if let Some(r) = command_resource(&c) {
            busy.done(r);
        }
    }
    match c {
        Command::Probe { resource, op, epoch, .. } => {
            dispatch(workers, busy, results, &resource, Job { lease, ..Job::new(JobKind::Probe, op, epoch) })
        }
        Command::Start { resource, op, epoch, .. } => {
            dispatch(workers, busy, results, &resource, Job { lease, ..Job::new(JobKind::Start, op, epoch) })
        }
        Command::Stop { resource, op, epoch, .. } => {
            dispatch(workers, busy, results, &resource, Job { lease, ..Job::new(JobKind::Stop, op, epoch) })
        }
        Command::Recover { resource, op, epoch, .. } => {
            dispatch(workers, busy, results, &resource, Job { lease, ..Job::new(JobKind::Recover, op, epoch) })
        }
        Command::Fence { node } => {
            note(history, "decision", &node, "fencing needed, but no fence device is configured for this node: confirm by hand".into())
        }
        Command::Note { subject, message } => note(history, "decision", &subject, message),
    }
}

/// Hand a command from the cluster's leader to its resource's worker (never held here: the
/// leader held it until its decisions were committed). A start or recover begins only while
/// the member's `lease` holds.
fn carry_out_local(
    c: Command,
    workers: &HashMap<String, mpsc::Sender<Job>>,
    busy: &mut Busy,
    results: &mpsc::UnboundedSender<JobResult>,
    history: &mut History,
    lease: &tokio::sync::watch::Receiver<worker::LeaseView>,
) {
    // Admitted under the lease's current holding, which the member published before this.
    let holding = lease.borrow().holding;
    carry_out(c, workers, busy, results, history, false, Some((lease.clone(), holding)))
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Jobs queued or running, per resource.
#[derive(Default)]
struct Busy(HashMap<String, usize>);

impl Busy {
    fn contains(&self, r: &str) -> bool {
        self.0.get(r).is_some_and(|n| *n > 0)
    }
    fn is_empty(&self) -> bool {
        self.0.values().all(|n| *n == 0)
    }
    fn done(&mut self, r: &str) {
        if let Some(n) = self.0.get_mut(r) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Queue a job on a resource's worker. If the worker cannot take it (it died), the job fails
/// at once, so the scheduler never waits for an answer that will not come.
fn dispatch(
    workers: &HashMap<String, mpsc::Sender<Job>>,
    busy: &mut Busy,
    results: &mpsc::UnboundedSender<JobResult>,
    resource: &str,
    job: Job,
) {
    let (kind, op, epoch) = (job.kind, job.op, job.epoch);
    let sent = workers.get(resource).is_some_and(|w| w.try_send(job).is_ok());
    *busy.0.entry(resource.to_string()).or_default() += 1;
    if !sent {
        tracing::error!(resource, action = kind.as_str(), "the resource's worker is gone or its queue is full; the action fails");
        let _ = results.send(not_carried_out(resource, kind, op, epoch, "the resource's worker is not answering"));
    }
}

/// The answer to a job the engine could not carry out: a host fault (the resource is probed
/// again, never recovered, failed over or fenced for it).
fn not_carried_out(resource: &str, kind: JobKind, op: u64, epoch: u64, why: &str) -> JobResult {
    let why = Failure::HostFault(why.into());
    let outcome = match kind {
        JobKind::Probe | JobKind::Monitor => JobOutcome::Health(MonitorOutcome::Error(why)),
        _ => JobOutcome::Done(Err(why)),
    };
    JobResult { resource: resource.to_string(), kind, op, epoch, started: Instant::now(), duration: Duration::ZERO, outcome }
}

/// Turn a job result into a scheduler event, recording history and metrics on the way.
fn job_event(node: &NodeId, r: &JobResult, plugin: &str, metrics: &mut api::metrics::Metrics, history: &mut History) -> Event {
    let at_ms = unix_ms(SystemTime::now() - r.duration);
    let mut rec = EventRecord {
        seq: 0,
        at_ms,
        kind: "action".into(),
        subject: r.resource.clone(),
        action: Some(r.kind.as_str().into()),
        duration_ms: Some(r.duration.as_millis() as u64),
        result: String::new(),
        message: String::new(),
    };
    match &r.outcome {
        JobOutcome::Health(o) => {
            let (result, reason) = outcome_parts(o);
            let healthy = matches!(o, MonitorOutcome::Running | MonitorOutcome::Degraded(_));
            let metric_result = if healthy { "ok" } else { result.as_str() };
            metrics.action(plugin, r.kind.as_str(), metric_result, r.duration);
            let is_probe = r.kind == JobKind::Probe;
            if !healthy && !is_probe {
                metrics.monitor_failure(&r.resource);
            }
            // Probes and unhealthy monitors are history; healthy monitors only update status.
            if is_probe || !healthy {
                rec.kind = if is_probe { "action".into() } else { "monitor".into() };
                rec.result = result;
                rec.message = reason.unwrap_or_default();
                history.record(rec);
            }
            if is_probe {
                Event::Probe { resource: r.resource.as_str().into(), node: node.clone(), op: r.op, outcome: o.clone() }
            } else {
                Event::Monitor { resource: r.resource.as_str().into(), node: node.clone(), epoch: r.epoch, outcome: o.clone() }
            }
        }
        JobOutcome::Done(res) => {
            rec.result = match res {
                Ok(()) => "ok".into(),
                Err(Failure::Timeout) => "timeout".into(),
                Err(Failure::HostFault(_)) => "host-fault".into(),
                Err(_) => "failed".into(),
            };
            rec.message = res.as_ref().err().map(|f| f.to_string()).unwrap_or_default();
            metrics.action(plugin, r.kind.as_str(), &rec.result, r.duration);
            history.record(rec);
            let action = match r.kind {
                JobKind::Start => ActionKind::Start,
                JobKind::Stop => ActionKind::Stop,
                _ => ActionKind::Recover,
            };
            Event::ActionDone { resource: r.resource.as_str().into(), node: node.clone(), op: r.op, action, result: res.clone() }
        }
    }
}
