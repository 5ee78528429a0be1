//! The generic agent: runs operator-supplied scripts so that nothing written for LifeKeeper or
//! Pacemaker is lost.
//!
//! * `style = "lifekeeper"`: the four scripts of a LifeKeeper Generic ARK resource (restore,
//!   remove, quickCheck, recover), each called as `<script> -t <tag> -i <id>`; see
//!   [`lifekeeper`].
//! * `style = "ocf"`: an OCF resource agent (Pacemaker's `ocf:heartbeat:Dummy` and friends), called
//!   with the action as its argument and its parameters as `OCF_RESKEY_<name>`; see [`ocf`].
//!
//! The agent itself holds no state: every action reads the parameters from the context, runs one
//! or two programs through the host's `exec` (which checks the operator's grants) and maps their
//! exit codes. See `README.md` for the parameters, the exit-code tables and config examples.

mod lifekeeper;
mod ocf;
mod params;

use warden_sdk::*;

/// The plugin's name (must equal `warden.toml`'s).
pub(crate) const NAME: &str = "generic";

/// Default action timeouts in milliseconds (the operator can override each per resource).
pub(crate) const START_MS: u32 = 60_000;
pub(crate) const STOP_MS: u32 = 60_000;
pub(crate) const MONITOR_MS: u32 = 30_000;
pub(crate) const RECOVER_MS: u32 = 120_000;
pub(crate) const VALIDATE_MS: u32 = 30_000;
pub(crate) const MONITOR_INTERVAL_MS: u32 = 10_000;

/// Which kind of scripts this resource runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    LifeKeeper,
    Ocf,
}

fn style(ctx: &Context) -> Result<Style, AgentError> {
    match ctx.param("style").map(str::trim) {
        Some("lifekeeper") => Ok(Style::LifeKeeper),
        Some("ocf") => Ok(Style::Ocf),
        None | Some("") => Err(AgentError::InvalidConfig(
            "parameter `style` is required: `lifekeeper` (restore/remove/quickcheck/recover scripts) \
             or `ocf` (an OCF resource agent given by `agent`)"
                .into(),
        )),
        Some(other) => Err(AgentError::InvalidConfig(format!("parameter `style` must be `lifekeeper` or `ocf`, got `{other}`"))),
    }
}

struct Generic;

impl Agent for Generic {
    fn metadata() -> AgentMetadata {
        let mut m = AgentMetadata::new(
            NAME,
            env!("CARGO_PKG_VERSION"),
            "Runs operator-supplied scripts: LifeKeeper Generic ARK scripts (style=lifekeeper) \
             or an OCF resource agent such as ocf:heartbeat:Dummy (style=ocf)",
        );
        m.timeouts =
            Timeouts { start_ms: START_MS, stop_ms: STOP_MS, monitor_ms: MONITOR_MS, recover_ms: RECOVER_MS, validate_ms: VALIDATE_MS };
        m.monitor_interval_ms = MONITOR_INTERVAL_MS;
        // Static per plugin: a lifekeeper resource without a `recover` script answers `recover`
        // with `unsupported` instead (see README).
        m.local_recovery = true;
        params::describe(m)
    }

    fn validate(ctx: &Context) -> Result<(), AgentError> {
        watch_mode(ctx)?;
        match style(ctx)? {
            Style::LifeKeeper => lifekeeper::validate(ctx),
            Style::Ocf => ocf::validate(ctx),
        }
    }

    fn start(ctx: &Context) -> Result<(), AgentError> {
        match style(ctx)? {
            Style::LifeKeeper => lifekeeper::start(ctx),
            Style::Ocf => ocf::start(ctx),
        }?;
        watch_app(ctx);
        Ok(())
    }

    fn stop(ctx: &Context) -> Result<(), AgentError> {
        match style(ctx)? {
            Style::LifeKeeper => lifekeeper::stop(ctx),
            Style::Ocf => ocf::stop(ctx),
        }
    }

    fn monitor(ctx: &Context) -> Result<Health, AgentError> {
        let health = match style(ctx)? {
            Style::LifeKeeper => lifekeeper::monitor(ctx),
            Style::Ocf => ocf::monitor(ctx),
        }?;
        // Also after an engine restart: its first monitor is the probe.
        if matches!(health, Health::Running | Health::Degraded(_)) {
            watch_app(ctx);
        }
        Ok(health)
    }

    fn recover(ctx: &Context) -> Result<(), AgentError> {
        match style(ctx)? {
            Style::LifeKeeper => lifekeeper::recover(ctx),
            Style::Ocf => ocf::recover(ctx),
        }?;
        watch_app(ctx);
        Ok(())
    }
}

/// Name the application's processes (warden:agent@0.2.0 `watch`), so the engine monitors the
/// moment one exits. `watch = "none"` opts out; a watch the host refuses only means interval
/// monitoring (logged at debug level).
/// The action itself has succeeded by then: nothing here fails it (`validate` checks the
/// parameters).
fn watch_app(ctx: &Context) {
    let Ok(Some(pidfile)) = watch_mode(ctx) else { return };
    watch::try_watch(match pidfile {
        "" => watch::own_processes(),
        file => watch::pid_file(file),
    });
}

/// `None`: no watch; `Some("")`: the resource's own processes; `Some(path)`: a pid file.
fn watch_mode(ctx: &Context) -> Result<Option<&str>, AgentError> {
    match params::value(ctx, "watch").unwrap_or("auto") {
        "none" => Ok(None),
        "auto" => Ok(Some(params::path(ctx, "watch_pidfile")?.unwrap_or(""))),
        other => Err(AgentError::InvalidConfig(format!("parameter `watch` must be `auto` or `none`, got `{other}`"))),
    }
}

export_agent!(Generic);
