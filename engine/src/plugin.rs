//! The plugin host: loads agent components and runs their actions in a sandbox.
//!
//! ```text
//!   PluginHost::load(path) ──► Plugin (compiled once, cached on disk, pre-instantiated)
//!   Plugin::instance(resource, grants, limits) ──► PluginInstance (one per resource)
//!   PluginInstance::monitor(ctx, timeout) ──► Health | CallError
//! ```
//!
//! One wasmtime [`Engine`] serves the process. A [`PluginInstance`] keeps a warm instance between
//! calls and throws it away after any trap, timeout or memory exhaustion, so the next call starts
//! fresh. Its methods take `&mut self`: actions on one resource are serialised by construction
//! (the node engine gives each resource its own task that owns its instance).
//!
//! Sandbox: WASI with no preopened directories, no environment, no arguments and no sockets;
//! everything else goes through the `host` interface, checked by [`Grants`]. Every call has an
//! epoch deadline that traps a spinning guest, plus a timer that cancels a guest waiting in a host
//! call (which kills any child process group it started). Memory is capped per instance.

mod bindings;
pub mod cache;
mod compat;
pub mod exec;
pub mod fs;
pub mod grants;
mod instance;
mod output;
pub mod signing;
pub mod stall;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden_manifest::{Manifest, ManifestError, World};
use wasmtime::component::{InstancePre, Linker};
use wasmtime::{Config, Engine};

pub use cache::{CacheOutcome, ComponentCache};
pub use grants::{Denied, Grants};
pub use instance::{CallStats, PluginInstance, WatchSet, LOG_BURST, MAX_WATCH_TARGETS};
pub use signing::SignatureStatus;

use instance::HostState;

/// The newest WIT package this host implements (`wit/agent.wit`); it also loads every version
/// in [`WitVersion`].
pub const WIT_PACKAGE: &str = "warden:agent@0.2.0";

/// A released version of the agent interface a plugin was built for. The host dispatches by the
/// version a component exports; older versions are served by converting to the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum WitVersion {
    /// `warden:agent@0.1.0` (`wit/v0.1.0/agent.wit`): no `watch`.
    V0_1,
    /// `warden:agent@0.2.0` (`wit/agent.wit`): adds `host.watch`.
    V0_2,
}

impl WitVersion {
    pub fn package(self) -> &'static str {
        match self {
            WitVersion::V0_1 => "warden:agent@0.1.0",
            WitVersion::V0_2 => "warden:agent@0.2.0",
        }
    }

    /// The version whose export (`warden:agent/agent@X` or `warden:agent/fence@X`) a component
    /// has; `None` when it exports neither world of a known version.
    pub fn of_exports(exports: &[String]) -> Option<Self> {
        let has = |v: &str| exports.iter().any(|e| e == &format!("warden:agent/agent@{v}") || e == &format!("warden:agent/fence@{v}"));
        if has("0.2.0") {
            Some(WitVersion::V0_2)
        } else if has("0.1.0") {
            Some(WitVersion::V0_1)
        } else {
            None
        }
    }
}

/// Granularity of deadlines: the epoch ticker's period (50 ms: 20 wake-ups a second when idle,
/// a measurable part of an idle engine's cost).
const EPOCH_TICK: Duration = Duration::from_millis(50);

/// Time allowed for `metadata()` when a plugin is loaded.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure to load a plugin. The text names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read plugin {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("plugin {path}: {source}")]
    Manifest { path: PathBuf, source: ManifestError },
    #[error("plugin {path} is refused: {status} (this host only loads plugins signed by a trusted key)")]
    Untrusted { path: PathBuf, status: SignatureStatus },
    #[error("plugin {path} is not a valid WebAssembly component: {reason}")]
    Compile { path: PathBuf, reason: String },
    #[error("plugin {path} cannot be linked: {reason}")]
    Link { path: PathBuf, reason: String },
    #[error("plugin {path} does not implement the {world} world of warden:agent@0.2.0 or @0.1.0: {reason}")]
    WrongWorld { path: PathBuf, world: World, reason: String },
    #[error("plugin {path}: metadata() failed: {source}")]
    Metadata { path: PathBuf, source: Box<CallError> },
    #[error("plugin {path}: its manifest says it is `{manifest}` but metadata() says `{metadata}`")]
    NameMismatch { path: PathBuf, manifest: String, metadata: String },
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
}

/// One action of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Metadata,
    Validate,
    Start,
    Stop,
    Monitor,
    Recover,
    Fence,
    Status,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Metadata => "metadata",
            Action::Validate => "validate",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Monitor => "monitor",
            Action::Recover => "recover",
            Action::Fence => "fence",
            Action::Status => "status",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "metadata" => Action::Metadata,
            "validate" => Action::Validate,
            "start" => Action::Start,
            "stop" => Action::Stop,
            "monitor" => Action::Monitor,
            "recover" => Action::Recover,
            "fence" => Action::Fence,
            "status" => Action::Status,
            _ => return Err(format!("unknown action `{s}` (one of: metadata, validate, start, stop, monitor, recover, fence, status)")),
        })
    }
}

/// What an action is told about its resource (the WIT `context`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallContext {
    pub resource: String,
    pub node: String,
    pub epoch: u64,
    pub params: BTreeMap<String, String>,
}

/// Result of a monitor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "kebab-case")]
pub enum Health {
    Running,
    Stopped,
    Degraded(String),
    Failed(String),
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Running => f.write_str("running"),
            Health::Stopped => f.write_str("stopped"),
            Health::Degraded(r) => write!(f, "degraded: {r}"),
            Health::Failed(r) => write!(f, "failed: {r}"),
        }
    }
}

/// Power state reported by a fence agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerState {
    On,
    Off,
    Unknown,
}

/// An error the agent itself returned (the WIT `agent-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentFailure {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("not installed: {0}")]
    NotInstalled(String),
    #[error("failed: {0}")]
    Failed(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Why one call into a plugin did not return a result. Affects only that call on that resource.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("plugin `{plugin}`: {action} timed out after {}", humantime(*after))]
    Timeout { plugin: String, action: Action, after: Duration },
    #[error("plugin `{plugin}`: {action} ran out of memory (limit {} MiB)", limit >> 20)]
    OutOfMemory { plugin: String, action: Action, limit: usize },
    #[error("plugin `{plugin}`: {action} trapped: {message}")]
    Trap { plugin: String, action: Action, message: String },
    #[error("plugin `{plugin}`: {action}: {error}")]
    Agent { plugin: String, action: Action, error: AgentFailure },
    #[error("plugin `{plugin}`: cannot instantiate for {action}: {message}")]
    Instantiate { plugin: String, action: Action, message: String },
    #[error("plugin `{plugin}` is a {world} and has no `{action}` action")]
    NoSuchAction { plugin: String, action: Action, world: World },
    #[error("plugin `{plugin}`: {action}: {message}")]
    Params { plugin: String, action: Action, message: String },
}

impl CallError {
    /// The agent's own error, if that is what this is.
    pub fn agent_failure(&self) -> Option<&AgentFailure> {
        match self {
            CallError::Agent { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// "1.5s", "250ms": durations as operators write them.
pub fn humantime(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        "<1ms".into()
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// A parameter an agent accepts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParamSpec {
    pub name: String,
    pub description: String,
    pub required: bool,
    pub default: Option<String>,
}

/// Default timeout per action, from the agent's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionTimeouts {
    pub validate: Duration,
    pub start: Duration,
    pub stop: Duration,
    pub monitor: Duration,
    pub recover: Duration,
    pub fence: Duration,
    pub status: Duration,
}

impl ActionTimeouts {
    pub fn get(&self, action: Action) -> Duration {
        match action {
            Action::Metadata => METADATA_TIMEOUT,
            Action::Validate => self.validate,
            Action::Start => self.start,
            Action::Stop => self.stop,
            Action::Monitor => self.monitor,
            Action::Recover => self.recover,
            Action::Fence => self.fence,
            Action::Status => self.status,
        }
    }
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginMetadata {
    pub name: String,
    pub version: String,
    pub description: String,
    pub parameters: Vec<ParamSpec>,
    pub timeouts: ActionTimeouts,
    /// Resource agents only.
    pub monitor_interval: Option<Duration>,
    pub local_recovery: bool,
}

impl PluginMetadata {
    /// Apply defaults and check the given parameters: every required one present, none unknown
    /// (unless the agent declares a parameter named `*`, which accepts any other name).
    pub fn resolve_params(&self, given: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, String> {
        let accepts_any = self.parameters.iter().any(|p| p.name == "*");
        let known = |n: &str| self.parameters.iter().any(|p| p.name == n);
        let unknown: Vec<&str> = given.keys().map(String::as_str).filter(|n| !known(n)).collect();
        if !accepts_any && !unknown.is_empty() {
            let names: Vec<&str> = self.parameters.iter().map(|p| p.name.as_str()).collect();
            return Err(format!("unknown parameter `{}` (this agent takes: {})", unknown.join("`, `"), names.join(", ")));
        }
        let mut out = given.clone();
        let mut missing = Vec::new();
        for p in self.parameters.iter().filter(|p| p.name != "*") {
            if out.contains_key(&p.name) {
                continue;
            }
            match (&p.default, p.required) {
                (Some(d), _) => {
                    out.insert(p.name.clone(), d.clone());
                }
                (None, true) => missing.push(p.name.as_str()),
                (None, false) => {}
            }
        }
        if !missing.is_empty() {
            return Err(format!("missing required parameter `{}`", missing.join("`, `")));
        }
        Ok(out)
    }
}

/// Per-instance limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Cap on the memory of one instance: all its linear memories and tables together.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // CPython (componentize-py) needs ~20 MiB at start; 256 MiB leaves room for real agents
        // while a runaway guest is still stopped long before it hurts the node.
        Self { memory_bytes: 256 << 20 }
    }
}

/// How the host is set up.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Precompiled-component cache; `None` compiles at every load.
    pub cache_dir: Option<PathBuf>,
    /// When non-empty, only plugins signed by one of these keys load.
    pub trusted_keys: Vec<ed25519_dalek::VerifyingKey>,
}

/// The process's wasmtime engine with the linker for both worlds.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<HostState>,
    cache: ComponentCache,
    trusted_keys: Vec<ed25519_dalek::VerifyingKey>,
}

/// Timing of one load, for `plugin inspect` and the benchmark.
#[derive(Debug, Clone, Copy)]
pub struct LoadStats {
    pub cache: CacheOutcome,
    pub compile_or_load: Duration,
    pub total: Duration,
}

enum PreBindings {
    Resource(bindings::resource::ResourceAgentPre<HostState>),
    Fence(bindings::fence::FenceAgentPre<HostState>),
    ResourceV0_1(bindings::v0_1::resource::ResourceAgentPre<HostState>),
    FenceV0_1(bindings::v0_1::fence::FenceAgentPre<HostState>),
}

/// A loaded plugin: compiled, linked, its metadata known. Cheap to share.
pub struct Plugin {
    pub path: PathBuf,
    pub manifest: Manifest,
    pub metadata: PluginMetadata,
    pub signature: SignatureStatus,
    /// The interfaces the component exports, e.g. `warden:agent/agent@0.2.0`.
    pub exports: Vec<String>,
    /// The agent-interface version the plugin was built for.
    pub wit: WitVersion,
    pub load_stats: LoadStats,
    pre: PreBindings,
    engine: Engine,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("path", &self.path).field("name", &self.metadata.name).finish()
    }
}

impl PluginHost {
    pub fn new(opts: HostOptions) -> Result<Self, PluginError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        bindings::host::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        bindings::v0_1::host::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        spawn_epoch_ticker(&engine);
        Ok(Self { engine, linker, cache: ComponentCache::new(opts.cache_dir), trusted_keys: opts.trusted_keys })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Load, verify, compile (or fetch from the cache) and introspect a plugin.
    pub async fn load(&self, path: &Path) -> Result<Arc<Plugin>, PluginError> {
        self.load_signed(path, None).await
    }

    /// [`Self::load`], and the plugin must also be signed by `signer` (a config's `signer`).
    ///
    /// The file is read once: the signature is checked on, and the component compiled from, the
    /// same bytes (a file that changes between two reads, or a FIFO serving signed bytes first,
    /// cannot slip other bytes in). Only a regular file is read.
    pub async fn load_signed(&self, path: &Path, signer: Option<&ed25519_dalek::VerifyingKey>) -> Result<Arc<Plugin>, PluginError> {
        let started = Instant::now();
        let path = path.to_path_buf();
        let bytes = signing::read_regular_file(&path).map_err(|source| PluginError::Read { path: path.clone(), source })?;

        let mut signature = signing::check(&path, &bytes, &self.trusted_keys);
        if !self.trusted_keys.is_empty() && !matches!(signature, SignatureStatus::Trusted { .. }) {
            return Err(PluginError::Untrusted { path, status: signature });
        }
        if let Some(key) = signer {
            let by_signer = signing::check(&path, &bytes, std::slice::from_ref(key));
            if !matches!(by_signer, SignatureStatus::Trusted { .. }) {
                return Err(PluginError::Untrusted { path, status: by_signer });
            }
            if !matches!(signature, SignatureStatus::Trusted { .. }) {
                signature = by_signer;
            }
        }
        let manifest = Manifest::from_component(&bytes).map_err(|source| PluginError::Manifest { path: path.clone(), source })?;

        let compile_started = Instant::now();
        let (engine, cache) = (self.engine.clone(), self.cache.clone());
        // Compiling a large component takes seconds of CPU: keep it off the async workers.
        let (component, outcome) = tokio::task::spawn_blocking(move || cache.load(&engine, &bytes))
            .await
            .map_err(|e| PluginError::Compile { path: path.clone(), reason: e.to_string() })?
            .map_err(|e| PluginError::Compile { path: path.clone(), reason: format!("{e:#}") })?;
        let compile_or_load = compile_started.elapsed();

        let exports: Vec<String> = component.component_type().exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        // Dispatch by the version the component declares; one with neither gets the newest's
        // binding error, which names what is missing.
        let wit = WitVersion::of_exports(&exports).unwrap_or(WitVersion::V0_2);
        let pre: InstancePre<HostState> =
            self.linker.instantiate_pre(&component).map_err(|e| PluginError::Link { path: path.clone(), reason: format!("{e:#}") })?;
        let wrong = |e: wasmtime::Error| PluginError::WrongWorld { path: path.clone(), world: manifest.world, reason: format!("{e:#}") };
        let pre = match (manifest.world, wit) {
            (World::ResourceAgent, WitVersion::V0_2) => {
                PreBindings::Resource(bindings::resource::ResourceAgentPre::new(pre).map_err(wrong)?)
            }
            (World::FenceAgent, WitVersion::V0_2) => PreBindings::Fence(bindings::fence::FenceAgentPre::new(pre).map_err(wrong)?),
            (World::ResourceAgent, WitVersion::V0_1) => {
                PreBindings::ResourceV0_1(bindings::v0_1::resource::ResourceAgentPre::new(pre).map_err(wrong)?)
            }
            (World::FenceAgent, WitVersion::V0_1) => PreBindings::FenceV0_1(bindings::v0_1::fence::FenceAgentPre::new(pre).map_err(wrong)?),
        };

        let mut plugin = Plugin {
            path: path.clone(),
            metadata: placeholder_metadata(&manifest.name),
            manifest,
            signature,
            exports,
            wit,
            load_stats: LoadStats { cache: outcome, compile_or_load, total: Duration::ZERO },
            pre,
            engine: self.engine.clone(),
        };
        let metadata = {
            let mut probe = PluginInstance::new_detached(&plugin, "(load)", Grants::default(), Limits::default());
            probe.metadata_raw(&plugin).await.map_err(|e| PluginError::Metadata { path: path.clone(), source: Box::new(e) })?
        };
        if metadata.name != plugin.manifest.name {
            return Err(PluginError::NameMismatch { path, manifest: plugin.manifest.name.clone(), metadata: metadata.name });
        }
        plugin.metadata = metadata;
        plugin.load_stats.total = started.elapsed();
        tracing::debug!(plugin = %plugin.metadata.name, path = %plugin.path.display(), cache = ?outcome, took = ?plugin.load_stats.total, "plugin loaded");
        Ok(Arc::new(plugin))
    }
}

fn placeholder_metadata(name: &str) -> PluginMetadata {
    let t = METADATA_TIMEOUT;
    PluginMetadata {
        name: name.into(),
        version: String::new(),
        description: String::new(),
        parameters: Vec::new(),
        timeouts: ActionTimeouts { validate: t, start: t, stop: t, monitor: t, recover: t, fence: t, status: t },
        monitor_interval: None,
        local_recovery: false,
    }
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn world(&self) -> World {
        self.manifest.world
    }

    /// A new instance for `resource`, with that resource's grants. The wasm instance itself is
    /// created lazily at the first call, and again after any call that trapped.
    pub fn instance(self: &Arc<Self>, resource: &str, granted: warden_manifest::Capabilities, limits: Limits) -> PluginInstance {
        let grants = Grants::new(self.manifest.capabilities.clone(), granted);
        PluginInstance::new(self.clone(), resource, grants, limits)
    }
}

/// Advance the engine's epoch every [`EPOCH_TICK`] so deadlines fire; stops with the engine.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("warden-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn the epoch ticker thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(params: Vec<ParamSpec>) -> PluginMetadata {
        PluginMetadata { parameters: params, ..placeholder_metadata("t") }
    }
    fn p(name: &str, required: bool, default: Option<&str>) -> ParamSpec {
        ParamSpec { name: name.into(), description: String::new(), required, default: default.map(Into::into) }
    }
    fn given(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn params_get_defaults_and_required_are_enforced() {
        let m = meta(vec![p("host", true, None), p("port", false, Some("80")), p("opt", false, None)]);
        assert_eq!(m.resolve_params(&given(&[("host", "a")])).unwrap(), given(&[("host", "a"), ("port", "80")]));
        assert_eq!(m.resolve_params(&given(&[])).unwrap_err(), "missing required parameter `host`");
        let err = m.resolve_params(&given(&[("host", "a"), ("prot", "1")])).unwrap_err();
        assert_eq!(err, "unknown parameter `prot` (this agent takes: host, port, opt)");
    }

    #[test]
    fn wildcard_parameter_accepts_any_name() {
        let m = meta(vec![p("agent", true, None), p("*", false, None)]);
        assert!(m.resolve_params(&given(&[("agent", "x"), ("state", "/tmp/s")])).is_ok());
    }

    #[test]
    fn humantime_is_readable() {
        assert_eq!(humantime(Duration::from_secs(2)), "2s");
        assert_eq!(humantime(Duration::from_millis(250)), "250ms");
        assert_eq!(humantime(Duration::from_millis(1500)), "1.5s");
        assert_eq!(humantime(Duration::from_micros(300)), "<1ms");
    }
}
