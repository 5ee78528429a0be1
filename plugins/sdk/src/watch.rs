//! Name what makes up the running resource, so the engine sees its death at once
//! (`warden:agent@0.2.0` `host.watch`).
//!
//! Without a watch a failure is seen at the next monitor (up to a monitor interval later). With
//! one, the engine holds a pidfd for each named process and runs a monitor the moment one
//! exits; the monitor stays the judge of health. Call it where the resource is known to be up:
//! at the end of a successful `start` or `recover`, and in `monitor` when it reports running
//! (the first monitor after an engine restart is its probe, so this re-establishes the watch).
//! It takes effect only when that call succeeds. Name the final process of a daemon (read its
//! pid file after the start returns), never a launcher that forks and exits.
//!
//! ```ignore
//! fn start(ctx: &Context) -> Result<(), AgentError> {
//!     Command::new("/usr/sbin/mydaemon").run_ok()?;
//!     watch::pid_file("/run/mydaemon.pid")?;   // needs a read grant for the file
//!     Ok(())
//! }
//! ```
//!
//! A watch is an optimisation: when it cannot be set (the host refuses a pid file outside the
//! read grants, the process is already gone), the call's error says why; most agents log it and
//! go on with interval monitoring ([`try_watch`]).

use crate::wit::host;
use crate::{AgentError, WatchTarget};

/// Watch these targets (replacing what was watched). An empty list stops watching.
pub fn targets(targets: &[WatchTarget]) -> Result<(), AgentError> {
    host::watch(targets)
}

/// Watch processes by pid.
pub fn pids(pids: &[u32]) -> Result<(), AgentError> {
    targets(&pids.iter().map(|p| WatchTarget::Pid(*p)).collect::<Vec<_>>())
}

/// Watch the process whose pid is in `path` (the host reads it now, under the read grants).
pub fn pid_file(path: &str) -> Result<(), AgentError> {
    targets(&[WatchTarget::PidFile(path.into())])
}

/// Watch the processes the agent's programs left running for this resource (everything in the
/// resource's cgroup now: a daemon and its children). For services whose processes the agent
/// cannot name. Fails on a node that runs the resource without a cgroup.
pub fn own_processes() -> Result<(), AgentError> {
    targets(&[WatchTarget::OwnProcesses])
}

/// Stop watching.
pub fn nothing() -> Result<(), AgentError> {
    targets(&[])
}

/// Set a watch as an optimisation: a refusal is logged at debug level and otherwise ignored
/// (the resource is still monitored at its interval).
pub fn try_watch(result: Result<(), AgentError>) {
    if let Err(e) = result {
        crate::log::debug(format!("no process watch ({e:?}); failures are seen at the next monitor"));
    }
}
