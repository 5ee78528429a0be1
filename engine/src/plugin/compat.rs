//! Plugins built for `warden:agent@0.1.0` keep loading and working unchanged.
//!
//! The 0.1.0 host imports are implemented by converting their arguments to the newest version's
//! types and calling the newest implementation (so a fix reaches every version), then converting
//! the answer back. The 0.1.0 exports are called with a converted context and their answers
//! converted up. The two versions' types are the same shapes (0.2.0 only added `watch`), so every
//! conversion here is total.

use wasmtime::Store;

use super::bindings::{self, host, types, v0_1};
use super::instance::{HostState, Request, Response};

type OldError = v0_1::types::AgentError;

fn error_down(e: types::AgentError) -> OldError {
    match e {
        types::AgentError::InvalidConfig(m) => OldError::InvalidConfig(m),
        types::AgentError::NotInstalled(m) => OldError::NotInstalled(m),
        types::AgentError::Failed(m) => OldError::Failed(m),
        types::AgentError::AccessDenied(m) => OldError::AccessDenied(m),
        types::AgentError::Unsupported(m) => OldError::Unsupported(m),
    }
}

fn error_up(e: OldError) -> types::AgentError {
    match e {
        OldError::InvalidConfig(m) => types::AgentError::InvalidConfig(m),
        OldError::NotInstalled(m) => types::AgentError::NotInstalled(m),
        OldError::Failed(m) => types::AgentError::Failed(m),
        OldError::AccessDenied(m) => types::AgentError::AccessDenied(m),
        OldError::Unsupported(m) => types::AgentError::Unsupported(m),
    }
}

fn context_down(c: types::Context) -> v0_1::types::Context {
    v0_1::types::Context { resource: c.resource, node: c.node, epoch: c.epoch, params: c.params }
}

fn parameter_up(p: v0_1::types::Parameter) -> types::Parameter {
    types::Parameter { name: p.name, description: p.description, required: p.required, default: p.default }
}

impl v0_1::types::Host for HostState {}

impl v0_1::host::Host for HostState {
    async fn exec(&mut self, program: String, args: Vec<String>, o: v0_1::host::ExecOptions) -> Result<v0_1::host::ExecOutput, OldError> {
        let opts = host::ExecOptions { env: o.env, stdin: o.stdin, timeout_ms: o.timeout_ms, cwd: o.cwd };
        host::Host::exec(self, program, args, opts)
            .await
            .map(|r| v0_1::host::ExecOutput {
                exit_code: r.exit_code,
                signal: r.signal,
                timed_out: r.timed_out,
                stdout: r.stdout,
                stderr: r.stderr,
                stdout_truncated: r.stdout_truncated,
                stderr_truncated: r.stderr_truncated,
            })
            .map_err(error_down)
    }

    async fn log(&mut self, level: v0_1::host::Level, message: String) {
        use v0_1::host::Level as L;
        let level = match level {
            L::Trace => host::Level::Trace,
            L::Debug => host::Level::Debug,
            L::Info => host::Level::Info,
            L::Warn => host::Level::Warn,
            L::Error => host::Level::Error,
        };
        host::Host::log(self, level, message).await
    }

    async fn stat(&mut self, path: String) -> Result<Option<v0_1::host::FileKind>, OldError> {
        use v0_1::host::FileKind as K;
        host::Host::stat(self, path)
            .await
            .map(|k| {
                k.map(|k| match k {
                    host::FileKind::File => K::File,
                    host::FileKind::Directory => K::Directory,
                    host::FileKind::Symlink => K::Symlink,
                    host::FileKind::Other => K::Other,
                })
            })
            .map_err(error_down)
    }

    async fn read_file(&mut self, path: String, max_bytes: u32) -> Result<Vec<u8>, OldError> {
        host::Host::read_file(self, path, max_bytes).await.map_err(error_down)
    }

    async fn list_dir(&mut self, path: String) -> Result<Vec<String>, OldError> {
        host::Host::list_dir(self, path).await.map_err(error_down)
    }

    async fn tcp_probe(&mut self, host_name: String, port: u16, timeout_ms: u32) -> Result<bool, OldError> {
        host::Host::tcp_probe(self, host_name, port, timeout_ms).await.map_err(error_down)
    }

    async fn sleep(&mut self, ms: u32) {
        host::Host::sleep(self, ms).await
    }
}

/// Call a 0.1.0 resource agent; `None` when the request is not an action of its world.
pub(super) async fn dispatch_resource(
    b: &v0_1::resource::ResourceAgent,
    store: &mut Store<HostState>,
    req: Request,
) -> wasmtime::Result<Option<Response>> {
    use bindings::resource::exports::warden::agent::agent as new;
    use v0_1::resource::exports::warden::agent::agent as old;
    let a = b.warden_agent_agent();
    let unit = |r: Result<(), OldError>| Response::Unit(r.map_err(error_up));
    Ok(Some(match req {
        Request::Metadata => {
            let m: old::AgentMetadata = a.call_metadata(&mut *store).await?;
            Response::AgentMetadata(new::AgentMetadata {
                name: m.name,
                version: m.version,
                description: m.description,
                parameters: m.parameters.into_iter().map(parameter_up).collect(),
                timeouts: types::Timeouts {
                    start_ms: m.timeouts.start_ms,
                    stop_ms: m.timeouts.stop_ms,
                    monitor_ms: m.timeouts.monitor_ms,
                    recover_ms: m.timeouts.recover_ms,
                    validate_ms: m.timeouts.validate_ms,
                },
                monitor_interval_ms: m.monitor_interval_ms,
                local_recovery: m.local_recovery,
            })
        }
        Request::Validate(c) => unit(a.call_validate(&mut *store, &context_down(c)).await?),
        Request::Start(c) => unit(a.call_start(&mut *store, &context_down(c)).await?),
        Request::Stop(c) => unit(a.call_stop(&mut *store, &context_down(c)).await?),
        Request::Recover(c) => unit(a.call_recover(&mut *store, &context_down(c)).await?),
        Request::Monitor(c) => Response::Health(
            a.call_monitor(&mut *store, &context_down(c))
                .await?
                .map(|h| match h {
                    v0_1::types::Health::Running => types::Health::Running,
                    v0_1::types::Health::Stopped => types::Health::Stopped,
                    v0_1::types::Health::Degraded(r) => types::Health::Degraded(r),
                    v0_1::types::Health::Failed(r) => types::Health::Failed(r),
                })
                .map_err(error_up),
        ),
        Request::Fence(..) | Request::Status(..) => return Ok(None),
    }))
}

/// Call a 0.1.0 fence agent; `None` when the request is not an action of its world.
pub(super) async fn dispatch_fence(
    b: &v0_1::fence::FenceAgent,
    store: &mut Store<HostState>,
    req: Request,
) -> wasmtime::Result<Option<Response>> {
    use bindings::fence::exports::warden::agent::fence as new;
    use v0_1::fence::exports::warden::agent::fence as old;
    let f = b.warden_agent_fence();
    Ok(Some(match req {
        Request::Metadata => {
            let m: old::FenceMetadata = f.call_metadata(&mut *store).await?;
            Response::FenceMetadata(new::FenceMetadata {
                name: m.name,
                version: m.version,
                description: m.description,
                parameters: m.parameters.into_iter().map(parameter_up).collect(),
                fence_timeout_ms: m.fence_timeout_ms,
                status_timeout_ms: m.status_timeout_ms,
            })
        }
        Request::Validate(c) => Response::Unit(f.call_validate(&mut *store, &context_down(c)).await?.map_err(error_up)),
        Request::Fence(c, t) => Response::Unit(f.call_fence(&mut *store, &context_down(c), &t).await?.map_err(error_up)),
        Request::Status(c, t) => Response::Power(
            f.call_status(&mut *store, &context_down(c), &t)
                .await?
                .map(|p| match p {
                    old::PowerState::On => new::PowerState::On,
                    old::PowerState::Off => new::PowerState::Off,
                    old::PowerState::Unknown => new::PowerState::Unknown,
                })
                .map_err(error_up),
        ),
        _ => return Ok(None),
    }))
}
