//! One resource's instance of a plugin, and the host imports it sees.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;
use wasmtime::component::ResourceTable;
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{self, host, types};
use super::exec::{self, ExecRequest};
use super::fs::{FsPool, PoolError};
use super::output::CapturedOutput;
use super::{
    Action, ActionTimeouts, AgentFailure, CallContext, CallError, Grants, Health, Limits, ParamSpec, Plugin, PluginMetadata, PowerState,
    PreBindings,
};
use warden_manifest::World;

mod watch;
pub use watch::{WatchSet, MAX_TARGETS as MAX_WATCH_TARGETS};

/// Log lines a guest may write per call before the rest are only counted.
pub const LOG_BURST: u32 = 200;
/// Longest log line kept from a guest.
const LOG_LINE_CAP: usize = 4096;
/// Guest stdout/stderr bytes kept per call.
const STDIO_CAP: usize = 64 * 1024;
/// Largest `read-file` result.
const READ_CAP: u32 = 1 << 20;
/// Refusals logged per call; the rest are counted and reported as one line (a guest can ask for
/// thousands of refused things in one call).
pub const DENIAL_LOG_BURST: u32 = 20;
/// Longest text kept from a guest's result (a failure reason, an error message): what crosses
/// the boundary is cut here, before the node keeps it anywhere (status, events, the log).
pub const REASON_CAP: usize = 4096;
/// Most bytes a guest may pass to a child on standard input.
const STDIN_CAP: usize = 1 << 20;
/// What a trap's error quotes of the guest's stderr: its last lines, at most this much.
const TRAP_TAIL_LINES: usize = 10;
const TRAP_TAIL_BYTES: usize = 2048;

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

/// Caps the instance's memory as a whole: every linear memory and every table of every core
/// instance in the component counts against one budget (a component may define any number of
/// memories; a per-memory cap lets six 60 MiB memories through a 64 MiB limit). Remembers that
/// the cap was hit so the error can say so.
struct MemoryCap {
    limit: usize,
    /// Bytes of all memories and tables granted so far in this store (a store is one instance).
    used: usize,
    hit: bool,
}

/// What one table element is counted as (a function reference is a pointer or two).
const TABLE_ELEMENT_BYTES: usize = 16;

impl MemoryCap {
    fn grow(&mut self, current: usize, desired: usize) -> wasmtime::Result<bool> {
        let total = self.used.saturating_add(desired.saturating_sub(current));
        if total > self.limit {
            self.hit = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} MiB reached (all memories and tables together)",
                self.limit >> 20
            )));
        }
        // Counted when granted; a growth that then fails still counts (the error is the cap's
        // friend: never under-counting is what matters).
        self.used = total;
        Ok(true)
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(current, desired)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow(current.saturating_mul(TABLE_ELEMENT_BYTES), desired.saturating_mul(TABLE_ELEMENT_BYTES))
    }

    // Counts, not bytes: each memory reserves address space however small it is. Generous for
    // real components (CPython has a handful of core instances), far below wasmtime's 10,000.
    fn instances(&self) -> usize {
        1000
    }
    fn memories(&self) -> usize {
        100
    }
    fn tables(&self) -> usize {
        1000
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
    fs_pool: FsPool,
    deadline: super::stall::Deadline,
    stats: CallStats,
    stdout: CapturedOutput,
    stderr: CapturedOutput,
    /// What the guest named with `watch` during this call (warden:agent@0.2.0).
    watch: Option<WatchSet>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// `/proc/<pid>/{stat,status,statm,comm}` (or `/proc/self/…`): kernel-generated from memory,
/// no storage and no lock a stuck process could hold (unlike `cmdline` or `environ`, which take
/// the target's memory-map lock).
fn proc_status_file(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/proc/") else { return false };
    let Some((pid, file)) = rest.split_once('/') else { return false };
    (pid == "self" || (!pid.is_empty() && pid.len() <= 10 && pid.bytes().all(|b| b.is_ascii_digit())))
        && matches!(file, "stat" | "status" | "statm" | "comm")
}

impl HostState {
    fn remaining(&self) -> Duration {
        self.deadline.remaining()
    }

    /// Check a read grant and run a filesystem operation on what the path really is, off the
    /// async workers, on the resource's bounded pool and under the action's deadline: a hung
    /// mount (NFS, a dead shared disk) or a FIFO must stall only this call, never the engine.
    /// The path is resolved beneath `/` without following symlinks (`fs::resolve`), the grants
    /// are checked on the resolved path, and `op` acts on exactly what was checked.
    async fn fs_call<T: Send + 'static>(
        &mut self,
        import: &'static str,
        path: String,
        op: impl FnOnce(Option<(&std::os::fd::OwnedFd, Option<&std::ffi::OsStr>)>, &str) -> Result<T, String> + Send + 'static,
    ) -> Result<T, types::AgentError> {
        self.stats.host_calls += 1;
        if let Err(denied) = self.grants.check_read_as_written(&path) {
            return Err(self.deny(import, denied));
        }
        let grants = self.grants.clone();
        let inline = proc_status_file(&path);
        let job = move || -> Result<Result<T, String>, super::Denied> {
            let r = match super::fs::resolve(&path) {
                Ok(r) => r,
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(op(None, &path)),
                Err(e) => return Ok(Err(format!("{import} {path}: {e}"))),
            };
            grants.check_read_resolved(&path, &r.path)?;
            Ok(match &r.found {
                Some((dir, name)) => op(Some((dir, name.as_deref())), &path),
                None => op(None, &path),
            })
        };
        if inline {
            // A process's own status files are generated by the kernel from memory: reading
            // them cannot hang on storage, so they skip the hop to a thread (most monitors
            // read one; the hop costs a thread start and two context switches).
            return match job() {
                Ok(r) => r.map_err(types::AgentError::Failed),
                Err(denied) => Err(self.deny(import, denied)),
            };
        }
        match self.fs_pool.run(self.remaining(), job).await {
            Ok(Ok(r)) => r.map_err(types::AgentError::Failed),
            Ok(Err(denied)) => Err(self.deny(import, denied)),
            Err(e @ (PoolError::Spawn(_) | PoolError::Lost)) => {
                self.stats.host_faults += 1;
                Err(types::AgentError::Failed(format!("{import}: {e}")))
            }
            Err(e) => Err(types::AgentError::Failed(format!("{import}: {e}"))),
        }
    }

    fn deny(&mut self, import: &str, denied: super::Denied) -> types::AgentError {
        self.stats.denials += 1;
        // Refusals are rate-limited like guest logs: a guest asking for 20,000 refused things in
        // one call must not write 20,000 log lines (the rest are counted and summed up at the
        // end of the call).
        if self.stats.denials <= DENIAL_LOG_BURST {
            tracing::warn!(plugin = %self.plugin, resource = %self.resource, import, refused = %Escaped(&denied.to_string()), "access denied");
        }
        types::AgentError::AccessDenied(denied.to_string())
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    async fn exec(&mut self, program: String, args: Vec<String>, opts: host::ExecOptions) -> Result<host::ExecOutput, types::AgentError> {
        self.stats.host_calls += 1;
        // Everything that needs no filesystem first: bounded, linear-time checks.
        if let Err(d) = self.grants.check_exec(&program, &args) {
            return Err(self.deny("exec", d));
        }
        if let Err(d) = self.grants.check_env(&program, &opts.env) {
            return Err(self.deny("exec", d));
        }
        if opts.stdin.as_ref().is_some_and(|s| s.len() > STDIN_CAP) {
            let d =
                super::Denied::BadRequest { what: format!("exec `{program}`"), reason: format!("standard input over {STDIN_CAP} bytes") };
            return Err(self.deny("exec", d));
        }
        if let Some(cwd) = &opts.cwd {
            if let Err(d) = self.grants.check_read_as_written(cwd) {
                return Err(self.deny("exec", d));
            }
        }
        // Then resolve the program and the working directory on the pool (either may sit on a
        // hung mount) and check the grants on what they really are.
        let (grants, p, a, cwd) = (self.grants.clone(), program.clone(), args.clone(), opts.cwd.clone());
        let resolved = self
            .fs_pool
            .run(self.remaining(), move || -> Result<Result<(String, Option<String>), types::AgentError>, super::Denied> {
                let real = match super::fs::resolve(&p) {
                    Ok(r) if r.found.is_some() => r,
                    Ok(_) => return Ok(Err(types::AgentError::NotInstalled(format!("`{p}` does not exist")))),
                    Err(e) => return Ok(Err(types::AgentError::NotInstalled(format!("`{p}`: {e}")))),
                };
                grants.check_exec_resolved(&p, &real.path, &a)?;
                let (dir, name) = real.found.as_ref().expect("found");
                match super::fs::kind(dir, name.as_deref()) {
                    Ok(rustix::fs::FileType::RegularFile) => {}
                    Ok(t) => {
                        return Ok(Err(types::AgentError::NotInstalled(format!("`{p}` is {}, not a program", super::fs::type_name(t)))))
                    }
                    Err(e) => return Ok(Err(types::AgentError::NotInstalled(format!("`{p}`: {e}")))),
                }
                let cwd = match cwd {
                    None => None,
                    Some(c) => {
                        let r = super::fs::resolve(&c)
                            .map_err(|e| super::Denied::BadRequest { what: format!("exec in `{c}`"), reason: e.to_string() })?;
                        grants.check_read_resolved(&c, &r.path)?;
                        match &r.found {
                            Some((dir, name)) if matches!(super::fs::kind(dir, name.as_deref()), Ok(rustix::fs::FileType::Directory)) => {}
                            _ => return Ok(Err(types::AgentError::Failed(format!("working directory `{c}` is not a directory")))),
                        }
                        Some(r.path.to_string_lossy().into_owned())
                    }
                };
                Ok(Ok((real.path.to_string_lossy().into_owned(), cwd)))
            })
            .await;
        let (real_program, real_cwd) = match resolved {
            Ok(Ok(Ok(v))) => v,
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(d)) => return Err(self.deny("exec", d)),
            Err(e @ (PoolError::Spawn(_) | PoolError::Lost)) => {
                self.stats.host_faults += 1;
                return Err(types::AgentError::Failed(format!("exec: {e}")));
            }
            Err(e) => return Err(types::AgentError::Failed(format!("exec `{program}`: {e}"))),
        };
        let mut timeout = self.remaining();
        if let Some(ms) = opts.timeout_ms {
            timeout = timeout.min(Duration::from_millis(ms.into()));
        }
        let span = tracing::debug_span!("host.exec", plugin = %self.plugin, resource = %self.resource, program = %program);
        let req = ExecRequest {
            program: real_program,
            arg0: Some(program),
            args,
            env: opts.env,
            stdin: opts.stdin,
            cwd: real_cwd,
            timeout,
            cgroup: self.cgroup.clone(),
        };
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
        let message = cap_text(message, LOG_LINE_CAP);
        // Escaped: a newline in a guest's message must not forge a line of the engine's log.
        let message = Escaped(&message);
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
        self.fs_call("stat", path, |found, path| match found {
            None => Ok(None),
            Some((dir, name)) => match super::fs::kind(dir, name) {
                Ok(rustix::fs::FileType::RegularFile) => Ok(Some(host::FileKind::File)),
                Ok(rustix::fs::FileType::Directory) => Ok(Some(host::FileKind::Directory)),
                Ok(rustix::fs::FileType::Symlink) => Ok(Some(host::FileKind::Symlink)),
                Ok(_) => Ok(Some(host::FileKind::Other)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("stat {path}: {e}")),
            },
        })
        .await
    }

    async fn read_file(&mut self, path: String, max_bytes: u32) -> Result<Vec<u8>, types::AgentError> {
        let cap = max_bytes.min(READ_CAP) as u64;
        self.fs_call("read-file", path, move |found, path| match found {
            None => Err(format!("read {path}: No such file or directory (os error 2)")),
            Some((dir, name)) => super::fs::read_regular(dir, name, cap).map_err(|e| format!("read {path}: {e}")),
        })
        .await
    }

    async fn list_dir(&mut self, path: String) -> Result<Vec<String>, types::AgentError> {
        self.fs_call("list-dir", path, |found, path| match found {
            None => Err(format!("list {path}: No such file or directory (os error 2)")),
            Some((dir, name)) => super::fs::list_directory(dir, name).map_err(|e| format!("list {path}: {e}")),
        })
        .await
    }

    async fn tcp_probe(&mut self, host_name: String, port: u16, timeout_ms: u32) -> Result<bool, types::AgentError> {
        self.stats.host_calls += 1;
        self.grants.check_connect(&host_name, port).map_err(|d| self.deny("tcp-probe", d))?;
        let timeout = self.remaining().min(Duration::from_millis(timeout_ms.into()));
        let literal = host_name.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().ok();
        let addrs: Vec<std::net::SocketAddr> = match literal {
            Some(ip) => vec![std::net::SocketAddr::new(ip, port)],
            None => {
                // A name is resolved once, on the pool (the resolver may hang), and only the
                // addresses it gave that the grants allow are connected to: no second lookup
                // can return something else between the check and the connection.
                let name = host_name.clone();
                let looked_up = self.fs_pool.run(timeout, move || std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), port))).await;
                let all: Vec<std::net::SocketAddr> = match looked_up {
                    Ok(Ok(a)) => a.collect(),
                    Ok(Err(_)) | Err(_) => return Ok(false),
                };
                let mut allowed = Vec::new();
                let mut refused = None;
                for a in all {
                    match self.grants.check_connect_addr(&host_name, a) {
                        Ok(()) => allowed.push(a),
                        Err(d) => refused = refused.or(Some(d)),
                    }
                }
                if allowed.is_empty() {
                    return match refused {
                        Some(d) => Err(self.deny("tcp-probe", d)),
                        None => Ok(false),
                    };
                }
                allowed
            }
        };
        let connect = async {
            for a in addrs {
                if tokio::net::TcpStream::connect(a).await.is_ok() {
                    return true;
                }
            }
            false
        };
        Ok(tokio::time::timeout(timeout, connect).await.unwrap_or(false))
    }

    async fn sleep(&mut self, ms: u32) {
        tokio::time::sleep(Duration::from_millis(ms.into())).await;
    }

    async fn watch(&mut self, targets: Vec<host::WatchTarget>) -> Result<(), types::AgentError> {
        self.watch_call(targets).await
    }
}

enum Bindings {
    Resource(bindings::resource::ResourceAgent),
    Fence(bindings::fence::FenceAgent),
    ResourceV0_1(bindings::v0_1::resource::ResourceAgent),
    FenceV0_1(bindings::v0_1::fence::FenceAgent),
}

struct Warm {
    store: Store<HostState>,
    bindings: Bindings,
}

/// A request to the guest (one per action).
pub(super) enum Request {
    Metadata,
    Validate(types::Context),
    Start(types::Context),
    Stop(types::Context),
    Monitor(types::Context),
    Recover(types::Context),
    Fence(types::Context, String),
    Status(types::Context, String),
}

pub(super) enum Response {
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
    /// The resource's filesystem threads: kept across instances, so threads stuck from an
    /// abandoned call still count against the next ones.
    fs_pool: FsPool,
    warm: Option<Warm>,
    last_stats: CallStats,
    /// What the last call named with `watch`, until taken.
    last_watch: Option<WatchSet>,
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
            fs_pool: FsPool::with_shared_threads(),
            warm: None,
            last_stats: CallStats::default(),
            last_watch: None,
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

    /// What the last call named with `watch` (warden:agent@0.2.0), if it did: the processes
    /// that make up the running resource. The caller decides whether the call's outcome makes
    /// them current (a successful start, recover or healthy monitor).
    pub fn take_watch(&mut self) -> Option<WatchSet> {
        self.last_watch.take()
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
                // Cut at the boundary: a 16 MiB reason every 100 ms must not reach the node.
                types::Health::Degraded(r) => Health::Degraded(cap_text(r, REASON_CAP)),
                types::Health::Failed(r) => Health::Failed(cap_text(r, REASON_CAP)),
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
        let c = |m: String| cap_text(m, REASON_CAP);
        let error = match e {
            types::AgentError::InvalidConfig(m) => AgentFailure::InvalidConfig(c(m)),
            types::AgentError::NotInstalled(m) => AgentFailure::NotInstalled(c(m)),
            types::AgentError::Failed(m) => AgentFailure::Failed(c(m)),
            types::AgentError::AccessDenied(m) => AgentFailure::AccessDenied(c(m)),
            types::AgentError::Unsupported(m) => AgentFailure::Unsupported(c(m)),
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
                s.watch = None;
            }
            self.last_watch = None;
            warm.store.set_epoch_deadline(YIELD_TICKS);

            // Time the host was stalled (SIGSTOP, a frozen VM) does not count against the action.
            let outcome = super::stall::timeout(timeout, dispatch(&warm.bindings, &mut warm.store, req, self.world)).await;
            self.last_stats = warm.store.data().stats;
            self.last_watch = warm.store.data_mut().watch.take();
            let stderr_tail = self.forward_stdio(&warm.store);
            if self.last_stats.logs_suppressed > 0 {
                tracing::warn!(suppressed = self.last_stats.logs_suppressed, "guest log rate limit reached; messages dropped");
            }
            if self.last_stats.denials > DENIAL_LOG_BURST {
                tracing::warn!(
                    refused = self.last_stats.denials,
                    logged = DENIAL_LOG_BURST,
                    "more host calls were refused than are logged per call"
                );
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
        let mut message = match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => return CallError::Timeout { plugin, action, after: timeout },
            Some(trap) => trap.to_string(),
            None => first_line(&format!("{e:#}")),
        };
        // The cause is usually on stderr (a Rust panic message, a Python traceback, a JS
        // TypeError): the one-line error must carry it, not only the log at `info`.
        if !stderr_tail.is_empty() {
            message.push_str("; guest stderr: ");
            message.push_str(&stderr_tail);
        }
        CallError::Trap { plugin, action, message }
    }

    /// Send what the guest printed to the log; return the last line of stderr for error messages.
    fn forward_stdio(&self, store: &Store<HostState>) -> String {
        let mut last = String::new();
        for (stream, out) in [("stdout", &store.data().stdout), ("stderr", &store.data().stderr)] {
            let (text, dropped) = out.take();
            for line in text.lines().filter(|l| !l.trim().is_empty()).take(20) {
                tracing::info!(stream, "guest: {}", Escaped(line));
            }
            if dropped > 0 {
                tracing::warn!(stream, dropped_bytes = dropped, "guest output over the limit was dropped");
            }
            if stream == "stderr" {
                last = stderr_tail(&text);
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
            memory: MemoryCap { limit: self.limits.memory_bytes, used: 0, hit: false },
            plugin: self.name.clone(),
            resource: self.resource.clone(),
            grants: self.grants.clone(),
            cgroup: self.cgroup.clone(),
            fs_pool: self.fs_pool.clone(),
            deadline: super::stall::Deadline::after(timeout),
            stats: CallStats::default(),
            stdout,
            stderr,
            watch: None,
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
        let limit = self.limits.memory_bytes;
        let name = self.name.clone();
        let err = |store: &Store<HostState>, e: wasmtime::Error| {
            // A component whose memories and tables together exceed the cap fails here, as it
            // is instantiated: that is running out of memory, not a broken plugin.
            if store.data().memory.hit {
                CallError::OutOfMemory { plugin: name.to_string(), action, limit }
            } else {
                CallError::Instantiate { plugin: name.to_string(), action, message: first_line(&format!("{e:#}")) }
            }
        };
        macro_rules! instantiate {
            ($variant:ident, $pre:expr) => {{
                let r = tokio::time::timeout(timeout, $pre.instantiate_async(&mut store))
                    .await
                    .map_err(|_| self.timeout_err(action, timeout))?;
                Bindings::$variant(r.map_err(|e| err(&store, e))?)
            }};
        }
        let bindings = match &plugin.pre {
            PreBindings::Resource(pre) => instantiate!(Resource, pre),
            PreBindings::Fence(pre) => instantiate!(Fence, pre),
            PreBindings::ResourceV0_1(pre) => instantiate!(ResourceV0_1, pre),
            PreBindings::FenceV0_1(pre) => instantiate!(FenceV0_1, pre),
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
        (Bindings::ResourceV0_1(b), req) => match super::compat::dispatch_resource(b, store, req).await? {
            Some(r) => r,
            None => return Ok(Err(world)),
        },
        (Bindings::FenceV0_1(b), req) => match super::compat::dispatch_fence(b, store, req).await? {
            Some(r) => r,
            None => return Ok(Err(world)),
        },
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

/// Epoch ticks between yields of running guest code (with a 50 ms tick: at most 50 ms).
const YIELD_TICKS: u64 = 1;

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// `text` cut to at most `cap` bytes (on a character boundary), marked when cut.
pub(super) fn cap_text(mut text: String, cap: usize) -> String {
    if text.len() > cap {
        let total = text.len();
        let mut cut = cap;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(&format!(" [truncated from {total} bytes]"));
    }
    text
}

/// The last lines of a guest's stderr, for a trap's error: up to [`TRAP_TAIL_LINES`] non-empty
/// lines (a traceback's last frames and its exception), at most [`TRAP_TAIL_BYTES`], joined with
/// ` | ` so the error stays one line.
fn stderr_tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("note:")).collect();
    let mut picked: Vec<String> = Vec::new();
    let mut bytes = 0;
    for l in lines.iter().rev().take(TRAP_TAIL_LINES) {
        let l = Escaped(l.trim_end()).to_string();
        if bytes + l.len() > TRAP_TAIL_BYTES {
            if picked.is_empty() {
                picked.push(cap_text(l, TRAP_TAIL_BYTES));
            }
            break;
        }
        bytes += l.len() + 3;
        picked.push(l);
    }
    picked.reverse();
    picked.join(" | ")
}

/// Guest-provided text for the log: control characters (a newline that would start a forged
/// log line, a carriage return, terminal escapes) are shown escaped (`\n`, `\u{1b}`).
pub(super) struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        let s = self.0;
        if !s.chars().any(char::is_control) {
            return f.write_str(s);
        }
        for c in s.chars() {
            if c.is_control() {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::proc_status_file;

    #[test]
    fn only_kernel_status_files_of_a_process_are_read_inline() {
        for ok in ["/proc/1/stat", "/proc/123456/status", "/proc/self/stat", "/proc/42/comm", "/proc/42/statm"] {
            assert!(proc_status_file(ok), "{ok}");
        }
        for no in [
            "/proc/1/cmdline",
            "/proc/1/environ",
            "/proc/1/root/etc/shadow",
            "/proc/1/cwd/stat",
            "/proc/mounts",
            "/proc//stat",
            "/proc/1x/stat",
            "/var/run/x.pid",
            "/proc/1/stat/..",
        ] {
            assert!(!proc_status_file(no), "{no}");
        }
    }
}
