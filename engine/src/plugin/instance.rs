//! One resource's instance of a plugin, and the host imports it sees.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;
use wasmtime::component::ResourceTable;
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{self, host, types};
use super::exec::{self, ExecRequest};
use super::output::CapturedOutput;
use super::{
    Action, ActionTimeouts, AgentFailure, CallContext, CallError, Grants, Health, Limits, ParamSpec, Plugin, PluginMetadata, PowerState,
    PreBindings,
};
use warden_manifest::World;

/// Log lines a guest may write per call before the rest are only counted.
pub const LOG_BURST: u32 = 200;
/// Longest log line kept from a guest.
const LOG_LINE_CAP: usize = 4096;
/// Guest stdout/stderr bytes kept per call.
const STDIO_CAP: usize = 64 * 1024;
/// Largest `read-file` result.
const READ_CAP: u32 = 1 << 20;

/// Per-call counters, for tests and the node engine's event history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    pub logs_emitted: u32,
    pub logs_suppressed: u32,
    pub host_calls: u32,
    pub denials: u32,
    /// A fresh instance was created for this call (none was warm).
    pub fresh_instance: bool,
    /// The host could not carry out a host call (a program could not be spawned: EMFILE, EAGAIN,
    /// ENOMEM, the cgroup could not be joined; a blocking-pool task was lost). A call that fails
    /// after one is the engine's fault, not the resource's.
    pub host_faults: u32,
}

/// Caps linear memory; remembers that the cap was hit so the error can say so.
struct MemoryCap {
    limit: usize,
    hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Err(wasmtime::Error::msg(format!("memory limit of {} MiB reached", self.limit >> 20)));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The store data of one instance: WASI (mostly empty), limits, grants and per-call state.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    plugin: Arc<str>,
    resource: Arc<str>,
    grants: Arc<Grants>,
    cgroup: Option<Arc<std::path::Path>>,
    deadline: super::stall::Deadline,
    stats: CallStats,
    stdout: CapturedOutput,
    stderr: CapturedOutput,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl HostState {
    fn remaining(&self) -> Duration {
        self.deadline.remaining()
    }

    /// Check a read grant and run a filesystem operation on the resolved path, off the async
    /// workers and under the action's deadline: a hung mount (NFS, a dead shared disk) must
    /// stall only this call, never the engine.
    async fn fs_call<T: Send + 'static>(
        &mut self,
        import: &'static str,
        path: String,
        op: impl FnOnce(&std::path::Path, &str) -> Result<T, String> + Send + 'static,
    ) -> Result<T, types::AgentError> {
        self.stats.host_calls += 1;
        if let Err(denied) = self.grants.check_read_as_written(&path) {
            return Err(self.deny(import, denied));
        }
        let grants = self.grants.clone();
        let remaining = self.remaining();
        let job = tokio::task::spawn_blocking(move || match grants.check_read(&path) {
            Ok(real) => Ok(op(&real, &path)),
            Err(d) => Err(d),
        });
        match super::stall::timeout(remaining, job).await {
            Ok(Ok(Ok(r))) => r.map_err(types::AgentError::Failed),
            Ok(Ok(Err(denied))) => Err(self.deny(import, denied)),
            Ok(Err(e)) => {
                self.stats.host_faults += 1;
                Err(types::AgentError::Failed(format!("{import}: {e}")))
            }
            Err(_) => Err(types::AgentError::Failed(format!("{import}: the filesystem did not answer before the action's deadline"))),
        }
    }

    fn deny(&mut self, import: &str, denied: super::Denied) -> types::AgentError {
        self.stats.denials += 1;
        tracing::warn!(plugin = %self.plugin, resource = %self.resource, import, refused = %denied, "access denied");
        types::AgentError::AccessDenied(denied.to_string())
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    async fn exec(&mut self, program: String, args: Vec<String>, opts: host::ExecOptions) -> Result<host::ExecOutput, types::AgentError> {
        self.stats.host_calls += 1;
        if let Err(d) = self.grants.check_exec(&program, &args) {
            return Err(self.deny("exec", d));
        }
        if let Err(d) = super::grants::check_env(&program, &opts.env) {
            return Err(self.deny("exec", d));
        }
        if let Some(cwd) = &opts.cwd {
            if let Err(d) = self.grants.check_read(cwd) {
                return Err(self.deny("exec", d));
            }
        }
        let mut timeout = self.remaining();
        if let Some(ms) = opts.timeout_ms {
            timeout = timeout.min(Duration::from_millis(ms.into()));
        }
        let span = tracing::debug_span!("host.exec", plugin = %self.plugin, resource = %self.resource, program = %program);
        let req = ExecRequest { program, args, env: opts.env, stdin: opts.stdin, cwd: opts.cwd, timeout, cgroup: self.cgroup.clone() };
        match exec::run(req).instrument(span).await {
            Ok(r) => Ok(host::ExecOutput {
                exit_code: r.exit_code,
                signal: r.signal,
                timed_out: r.timed_out,
                stdout: r.stdout.text,
                stderr: r.stderr.text,
                stdout_truncated: r.stdout.truncated,
                stderr_truncated: r.stderr.truncated,
            }),
            Err(e @ exec::ExecError::NotFound(_)) => Err(types::AgentError::NotInstalled(e.to_string())),
            Err(e) => {
                self.stats.host_faults += 1;
                tracing::warn!(error = %e, "host fault: cannot start a program for the agent");
                Err(types::AgentError::Failed(e.to_string()))
            }
        }
    }

    async fn log(&mut self, level: host::Level, message: String) {
        if self.stats.logs_emitted >= LOG_BURST {
            self.stats.logs_suppressed += 1;
            return;
        }
        self.stats.logs_emitted += 1;
        let mut message = message;
        if message.len() > LOG_LINE_CAP {
            let mut cut = LOG_LINE_CAP;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [truncated]");
        }
        let (plugin, resource) = (&*self.plugin, &*self.resource);
        match level {
            host::Level::Trace => tracing::trace!(plugin, resource, "{message}"),
            host::Level::Debug => tracing::debug!(plugin, resource, "{message}"),
            host::Level::Info => tracing::info!(plugin, resource, "{message}"),
            host::Level::Warn => tracing::warn!(plugin, resource, "{message}"),
            host::Level::Error => tracing::error!(plugin, resource, "{message}"),
        }
    }

    async fn stat(&mut self, path: String) -> Result<Option<host::FileKind>, types::AgentError> {
        self.fs_call("stat", path, |real, path| match std::fs::symlink_metadata(real) {
            Ok(m) if m.is_file() => Ok(Some(host::FileKind::File)),
            Ok(m) if m.is_dir() => Ok(Some(host::FileKind::Directory)),
            Ok(m) if m.file_type().is_symlink() => Ok(Some(host::FileKind::Symlink)),
            Ok(_) => Ok(Some(host::FileKind::Other)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("stat {path}: {e}")),
        })
        .await
    }

    async fn read_file(&mut self, path: String, max_bytes: u32) -> Result<Vec<u8>, types::AgentError> {
        let cap = max_bytes.min(READ_CAP) as u64;
        self.fs_call("read-file", path, move |real, path| {
            use std::io::Read;
            let mut out = Vec::new();
            std::fs::File::open(real).and_then(|f| f.take(cap).read_to_end(&mut out)).map_err(|e| format!("read {path}: {e}"))?;
            Ok(out)
        })
        .await
    }

    async fn list_dir(&mut self, path: String) -> Result<Vec<String>, types::AgentError> {
        self.fs_call("list-dir", path, |real, path| {
            let mut names: Vec<String> = std::fs::read_dir(real)
                .map_err(|e| format!("list {path}: {e}"))?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect();
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn tcp_probe(&mut self, host_name: String, port: u16, timeout_ms: u32) -> Result<bool, types::AgentError> {
        self.stats.host_calls += 1;
        self.grants.check_connect(&host_name, port).map_err(|d| self.deny("tcp-probe", d))?;
        let timeout = self.remaining().min(Duration::from_millis(timeout_ms.into()));
        let connect = tokio::net::TcpStream::connect((host_name.as_str(), port));
        Ok(matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_))))
    }

    async fn sleep(&mut self, ms: u32) {
        tokio::time::sleep(Duration::from_millis(ms.into())).await;
    }
}

enum Bindings {
    Resource(bindings::resource::ResourceAgent),
    Fence(bindings::fence::FenceAgent),
}

struct Warm {
    store: Store<HostState>,
    bindings: Bindings,
}

/// A request to the guest (one per action).
enum Request {
    Metadata,
    Validate(types::Context),
    Start(types::Context),
    Stop(types::Context),
    Monitor(types::Context),
    Recover(types::Context),
    Fence(types::Context, String),
    Status(types::Context, String),
}

enum Response {
    AgentMetadata(bindings::resource::exports::warden::agent::agent::AgentMetadata),
    FenceMetadata(bindings::fence::exports::warden::agent::fence::FenceMetadata),
    Unit(Result<(), types::AgentError>),
    Health(Result<types::Health, types::AgentError>),
    Power(Result<bindings::fence::exports::warden::agent::fence::PowerState, types::AgentError>),
}

/// A plugin instantiated for one resource. Keeps a warm wasm instance between calls.
pub struct PluginInstance {
    plugin: Option<Arc<Plugin>>,
    name: Arc<str>,
    world: World,
    resource: Arc<str>,
    grants: Arc<Grants>,
    limits: Limits,
    /// Programs this instance runs join this cgroup (the node gives each resource its own).
    cgroup: Option<Arc<std::path::Path>>,
    warm: Option<Warm>,
    last_stats: CallStats,
}

impl PluginInstance {
    pub(super) fn new(plugin: Arc<Plugin>, resource: &str, grants: Grants, limits: Limits) -> Self {
        let mut me = Self::new_detached(&plugin, resource, grants, limits);
        me.plugin = Some(plugin);
        me
    }

    /// An instance not yet tied to an `Arc<Plugin>` (used while the plugin is being loaded).
    pub(super) fn new_detached(plugin: &Plugin, resource: &str, grants: Grants, limits: Limits) -> Self {
        Self {
            plugin: None,
            name: plugin.manifest.name.as_str().into(),
            world: plugin.manifest.world,
            resource: resource.into(),
            grants: Arc::new(grants),
            limits,
            cgroup: None,
            warm: None,
            last_stats: CallStats::default(),
        }
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        self.plugin.as_ref().expect("attached instance")
    }

    /// Put every program this instance runs from now on into the cgroup at `dir`.
    pub fn set_cgroup(&mut self, dir: Option<&std::path::Path>) {
        self.cgroup = dir.map(Arc::from);
        self.warm = None;
    }

    /// Counters of the last call.
    pub fn last_stats(&self) -> CallStats {
        self.last_stats
    }

    /// Whether a warm instance is ready (false after a trap or timeout until the next call).
    pub fn is_warm(&self) -> bool {
        self.warm.is_some()
    }

    /// Drop the warm instance, so the next call starts from a fresh one.
    pub fn reset(&mut self) {
        self.warm = None;
    }

    fn timeout_for(&self, action: Action) -> Duration {
        self.plugin.as_ref().map_or(super::METADATA_TIMEOUT, |p| p.metadata.timeouts.get(action))
    }

    pub async fn validate(&mut self, ctx: &CallContext, timeout: Option<Duration>) -> Result<(), CallError> {
        let t = timeout.unwrap_or(self.timeout_for(Action::Validate));
        self.unit(Action::Validate, ctx, t).await
    }

    pub async fn start(&mut self, ctx: &CallContext, timeout: Option<Duration>) -> Result<(), CallError> {
        let t = timeout.unwrap_or(self.timeout_for(Action::Start));
        self.unit(Action::Start, ctx, t).await
    }

    pub async fn stop(&mut self, ctx: &CallContext, timeout: Option<Duration>) -> Result<(), CallError> {
        let t = timeout.unwrap_or(self.timeout_for(Action::Stop));
        self.unit(Action::Stop, ctx, t).await
    }

    pub async fn recover(&mut self, ctx: &CallContext, timeout: Option<Duration>) -> Result<(), CallError> {
        let t = timeout.unwrap_or(self.timeout_for(Action::Recover));
        self.unit(Action::Recover, ctx, t).await
    }

    pub async fn monitor(&mut self, ctx: &CallContext, timeout: Option<Duration>) -> Result<Health, CallError> {
        let t = timeout.unwrap_or(self.timeout_for(Action::Monitor));
        match self.call(Action::Monitor, Request::Monitor(wit_ctx(ctx)), t).await? {
            Response::Health(Ok(h)) => Ok(match h {
                types::Health::Running => Health::Running,
                types::Health::Stopped => Health::Stopped,
                types::Health::Degraded(r) => Health::Degraded(r),
                types::Health::Failed(r) => Health::Failed(r),
            }),
            Response::Health(Err(e)) => Err(self.agent_error(Action::Monitor, e)),
            _ => unreachable!("monitor returns health"),
        }
    }

    pub async fn fence(&mut self, ctx: &CallContext, target: &str, timeout: Option<Duration>) -> Result<(), CallError> {
        let t = timeout.unwrap_or(self.timeout_for(Action::Fence));
        match self.call(Action::Fence, Request::Fence(wit_ctx(ctx), target.into()), t).await? {
            Response::Unit(r) => r.map_err(|e| self.agent_error(Action::Fence, e)),
            _ => unreachable!("fence returns unit"),
        }
    }

    pub async fn status(&mut self, ctx: &CallContext, target: &str, timeout: Option<Duration>) -> Result<PowerState, CallError> {
        use bindings::fence::exports::warden::agent::fence::PowerState as P;
        let t = timeout.unwrap_or(self.timeout_for(Action::Status));
        match self.call(Action::Status, Request::Status(wit_ctx(ctx), target.into()), t).await? {
            Response::Power(Ok(p)) => Ok(match p {
                P::On => PowerState::On,
                P::Off => PowerState::Off,
                P::Unknown => PowerState::Unknown,
            }),
            Response::Power(Err(e)) => Err(self.agent_error(Action::Status, e)),
            _ => unreachable!("status returns a power state"),
        }
    }

    /// Call `metadata()` on the guest (the loaded plugin caches the result in `Plugin::metadata`).
    pub(super) async fn metadata_raw(&mut self, plugin: &Plugin) -> Result<PluginMetadata, CallError> {
        let resp = self.call_with(plugin, Action::Metadata, Request::Metadata, super::METADATA_TIMEOUT).await?;
        Ok(match resp {
            Response::AgentMetadata(m) => PluginMetadata {
                name: m.name,
                version: m.version,
                description: m.description,
                parameters: m.parameters.into_iter().map(param_spec).collect(),
                timeouts: ActionTimeouts {
                    validate: ms(m.timeouts.validate_ms),
                    start: ms(m.timeouts.start_ms),
                    stop: ms(m.timeouts.stop_ms),
                    monitor: ms(m.timeouts.monitor_ms),
                    recover: ms(m.timeouts.recover_ms),
                    fence: ms(m.timeouts.stop_ms),
                    status: ms(m.timeouts.monitor_ms),
                },
                monitor_interval: Some(ms(m.monitor_interval_ms)),
                local_recovery: m.local_recovery,
            },
            Response::FenceMetadata(m) => PluginMetadata {
                name: m.name,
                version: m.version,
                description: m.description,
                parameters: m.parameters.into_iter().map(param_spec).collect(),
                timeouts: ActionTimeouts {
                    validate: ms(m.status_timeout_ms),
                    start: ms(m.fence_timeout_ms),
                    stop: ms(m.fence_timeout_ms),
                    monitor: ms(m.status_timeout_ms),
                    recover: ms(m.fence_timeout_ms),
                    fence: ms(m.fence_timeout_ms),
                    status: ms(m.status_timeout_ms),
                },
                monitor_interval: None,
                local_recovery: false,
            },
            _ => unreachable!("metadata returns metadata"),
        })
    }

    async fn unit(&mut self, action: Action, ctx: &CallContext, timeout: Duration) -> Result<(), CallError> {
        let c = wit_ctx(ctx);
        let req = match action {
            Action::Validate => Request::Validate(c),
            Action::Start => Request::Start(c),
            Action::Stop => Request::Stop(c),
            Action::Recover => Request::Recover(c),
            _ => unreachable!("not a unit action"),
        };
        match self.call(action, req, timeout).await? {
            Response::Unit(r) => r.map_err(|e| self.agent_error(action, e)),
            _ => unreachable!("unit action returns unit"),
        }
    }

    fn agent_error(&self, action: Action, e: types::AgentError) -> CallError {
        let error = match e {
            types::AgentError::InvalidConfig(m) => AgentFailure::InvalidConfig(m),
            types::AgentError::NotInstalled(m) => AgentFailure::NotInstalled(m),
            types::AgentError::Failed(m) => AgentFailure::Failed(m),
            types::AgentError::AccessDenied(m) => AgentFailure::AccessDenied(m),
            types::AgentError::Unsupported(m) => AgentFailure::Unsupported(m),
        };
        CallError::Agent { plugin: self.name.to_string(), action, error }
    }

    async fn call(&mut self, action: Action, req: Request, timeout: Duration) -> Result<Response, CallError> {
        let plugin = self.plugin.clone().expect("attached instance");
        self.call_with(&plugin, action, req, timeout).await
    }

    /// Run one request under the deadline, classify what went wrong, keep or drop the instance.
    async fn call_with(&mut self, plugin: &Plugin, action: Action, req: Request, timeout: Duration) -> Result<Response, CallError> {
        let span = tracing::info_span!("agent", plugin = %self.name, resource = %self.resource, action = %action);
        async {
            let started = Instant::now();
            let fresh = self.warm.is_none();
            let mut warm = match self.warm.take() {
                Some(w) => w,
                None => self.instantiate(plugin, action, timeout).await?,
            };
            {
                let s = warm.store.data_mut();
                s.deadline = super::stall::Deadline::after(timeout);
                s.stats = CallStats { fresh_instance: fresh, ..CallStats::default() };
            }
            warm.store.set_epoch_deadline(YIELD_TICKS);

            // Time the host was stalled (SIGSTOP, a frozen VM) does not count against the action.
            let outcome = super::stall::timeout(timeout, dispatch(&warm.bindings, &mut warm.store, req, self.world)).await;
            self.last_stats = warm.store.data().stats;
            let stderr_tail = self.forward_stdio(&warm.store);
            if self.last_stats.logs_suppressed > 0 {
                tracing::warn!(suppressed = self.last_stats.logs_suppressed, "guest log rate limit reached; messages dropped");
            }
            let result = match outcome {
                Ok(Ok(Ok(resp))) => {
                    self.warm = Some(warm);
                    Ok(resp)
                }
                Ok(Ok(Err(missing))) => Err(CallError::NoSuchAction { plugin: self.name.to_string(), action, world: missing }),
                Err(_elapsed) => Err(CallError::Timeout { plugin: self.name.to_string(), action, after: timeout }),
                Ok(Err(e)) => Err(self.classify(action, timeout, &warm.store, e, stderr_tail)),
            };
            match &result {
                Ok(_) => tracing::debug!(took = ?started.elapsed(), "agent call done"),
                // The caller reports the failure (event history, CLI); this is for tracing.
                Err(e) => tracing::info!(took = ?started.elapsed(), error = %e, "agent call failed"),
            }
            result
        }
        .instrument(span)
        .await
    }

    fn classify(&self, action: Action, timeout: Duration, store: &Store<HostState>, e: wasmtime::Error, stderr_tail: String) -> CallError {
        let plugin = self.name.to_string();
        if store.data().memory.hit {
            return CallError::OutOfMemory { plugin, action, limit: self.limits.memory_bytes };
        }
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => CallError::Timeout { plugin, action, after: timeout },
            Some(trap) => {
                let mut message = trap.to_string();
                if !stderr_tail.is_empty() {
                    message.push_str("; guest said: ");
                    message.push_str(&stderr_tail);
                }
                CallError::Trap { plugin, action, message }
            }
            None => CallError::Trap { plugin, action, message: first_line(&format!("{e:#}")) },
        }
    }

    /// Send what the guest printed to the log; return the last line of stderr for error messages.
    fn forward_stdio(&self, store: &Store<HostState>) -> String {
        let mut last = String::new();
        for (stream, out) in [("stdout", &store.data().stdout), ("stderr", &store.data().stderr)] {
            let (text, dropped) = out.take();
            for line in text.lines().filter(|l| !l.trim().is_empty()).take(20) {
                tracing::info!(stream, "guest: {line}");
            }
            if dropped > 0 {
                tracing::warn!(stream, dropped_bytes = dropped, "guest output over the limit was dropped");
            }
            if stream == "stderr" {
                // Rust panics print "panicked at <file>:<line>:" then the message on the next line.
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("note:")).collect();
                last = lines.iter().rev().take(2).rev().cloned().collect::<Vec<_>>().join(" ");
                if last.len() > 512 {
                    last.truncate(last.char_indices().nth(512).map_or(last.len(), |(i, _)| i));
                }
            }
        }
        last
    }

    async fn instantiate(&mut self, plugin: &Plugin, action: Action, timeout: Duration) -> Result<Warm, CallError> {
        let stdout = CapturedOutput::new(STDIO_CAP);
        let stderr = CapturedOutput::new(STDIO_CAP);
        // Nothing from the host leaks in: no preopened directories, no environment, no
        // arguments, no sockets, empty stdin. Clocks and randomness stay: language runtimes need
        // them, and they open nothing.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap { limit: self.limits.memory_bytes, hit: false },
            plugin: self.name.clone(),
            resource: self.resource.clone(),
            grants: self.grants.clone(),
            cgroup: self.cgroup.clone(),
            deadline: super::stall::Deadline::after(timeout),
            stats: CallStats::default(),
            stdout,
            stderr,
        };
        let mut store = Store::new(&plugin.engine, state);
        store.limiter(|s| &mut s.memory);
        // Guest code yields to the async runtime every few ticks (so a spinning guest never holds
        // a worker thread for long) and traps once the action's deadline has passed.
        store.epoch_deadline_callback(|ctx| {
            Ok(if ctx.data().deadline.passed() {
                wasmtime::UpdateDeadline::Interrupt
            } else {
                wasmtime::UpdateDeadline::Yield(YIELD_TICKS)
            })
        });
        store.set_epoch_deadline(YIELD_TICKS);
        let err =
            |e: wasmtime::Error| CallError::Instantiate { plugin: self.name.to_string(), action, message: first_line(&format!("{e:#}")) };
        let bindings = match &plugin.pre {
            PreBindings::Resource(pre) => Bindings::Resource(
                tokio::time::timeout(timeout, pre.instantiate_async(&mut store))
                    .await
                    .map_err(|_| self.timeout_err(action, timeout))?
                    .map_err(err)?,
            ),
            PreBindings::Fence(pre) => Bindings::Fence(
                tokio::time::timeout(timeout, pre.instantiate_async(&mut store))
                    .await
                    .map_err(|_| self.timeout_err(action, timeout))?
                    .map_err(err)?,
            ),
        };
        Ok(Warm { store, bindings })
    }

    fn timeout_err(&self, action: Action, after: Duration) -> CallError {
        CallError::Timeout { plugin: self.name.to_string(), action, after }
    }
}

/// Ok(Err(world)) when the action does not exist in the plugin's world.
async fn dispatch(b: &Bindings, store: &mut Store<HostState>, req: Request, world: World) -> wasmtime::Result<Result<Response, World>> {
    Ok(Ok(match (b, req) {
        (Bindings::Resource(b), req) => {
            let a = b.warden_agent_agent();
            match req {
                Request::Metadata => Response::AgentMetadata(a.call_metadata(&mut *store).await?),
                Request::Validate(c) => Response::Unit(a.call_validate(&mut *store, &c).await?),
                Request::Start(c) => Response::Unit(a.call_start(&mut *store, &c).await?),
                Request::Stop(c) => Response::Unit(a.call_stop(&mut *store, &c).await?),
                Request::Monitor(c) => Response::Health(a.call_monitor(&mut *store, &c).await?),
                Request::Recover(c) => Response::Unit(a.call_recover(&mut *store, &c).await?),
                Request::Fence(..) | Request::Status(..) => return Ok(Err(world)),
            }
        }
        (Bindings::Fence(b), req) => {
            let f = b.warden_agent_fence();
            match req {
                Request::Metadata => Response::FenceMetadata(f.call_metadata(&mut *store).await?),
                Request::Validate(c) => Response::Unit(f.call_validate(&mut *store, &c).await?),
                Request::Fence(c, t) => Response::Unit(f.call_fence(&mut *store, &c, &t).await?),
                Request::Status(c, t) => Response::Power(f.call_status(&mut *store, &c, &t).await?),
                _ => return Ok(Err(world)),
            }
        }
    }))
}

fn wit_ctx(c: &CallContext) -> types::Context {
    types::Context {
        resource: c.resource.clone(),
        node: c.node.clone(),
        epoch: c.epoch,
        params: c.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

fn param_spec(p: types::Parameter) -> ParamSpec {
    ParamSpec { name: p.name, description: p.description, required: p.required, default: p.default }
}

fn ms(v: u32) -> Duration {
    Duration::from_millis(v.into())
}

/// Epoch ticks between yields of running guest code (with a 10 ms tick: 50 ms).
const YIELD_TICKS: u64 = 5;

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}
