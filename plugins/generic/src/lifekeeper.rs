//! `style = "lifekeeper"`: the scripts of a LifeKeeper Generic ARK resource.
//!
//! | action  | script     | missing script                                   |
//! |---------|------------|--------------------------------------------------|
//! | start   | restore    | invalid-config (required)                        |
//! | stop    | remove     | invalid-config (required)                        |
//! | monitor | quickcheck | always running                                   |
//! | recover | recover    | `unsupported`: no local recovery, fail over      |
//!
//! Each is called as `SCRIPT -t TAG -i ID` (plus `APP_INFO_FLAG INFO` when `app_info_flag` is
//! set), with `LK_TAG`, `LK_ID`, `LK_APP_INFO`, `LK_NODE`, `LK_ACTION` and `LK_EPOCH` (Warden's
//! placement epoch) in its environment.
//! Exit 0 is success, anything else failure. A quickCheck killed at `quickcheck_timeout_ms` is not
//! a failure (LifeKeeper's rule): the monitor reports degraded "check timed out".

use std::time::Duration;

use warden_sdk::*;

use crate::params::{self, APP_INFO_NODE_PREFIX, QUICKCHECK_TIMEOUT_MS};

/// The lifekeeper view of a resource's parameters.
struct Scripts<'a> {
    ctx: &'a Context,
    restore: Option<&'a str>,
    remove: Option<&'a str>,
    quickcheck: Option<&'a str>,
    recover: Option<&'a str>,
    tag: &'a str,
    id: &'a str,
    app_info: &'a str,
    app_info_flag: Option<&'a str>,
    quickcheck_timeout_ms: u64,
    env: Vec<(String, String)>,
}

/// Read and check the parameters (no host calls).
fn scripts(ctx: &Context) -> Result<Scripts<'_>, AgentError> {
    for (k, _) in &ctx.params {
        if k == "agent" {
            return Err(AgentError::InvalidConfig(
                "parameter `agent` is for style=ocf; style=lifekeeper runs `restore`, `remove`, \
                 `quickcheck` and `recover`"
                    .into(),
            ));
        }
        if !params::OWN.contains(&k.as_str()) && !k.starts_with(APP_INFO_NODE_PREFIX) {
            return Err(AgentError::InvalidConfig(format!(
                "unknown parameter `{k}` for style=lifekeeper (only style=ocf passes other \
                 parameters on, as OCF_RESKEY_*)"
            )));
        }
    }
    let tag = params::value(ctx, "tag").unwrap_or(ctx.resource.as_str());
    if tag.is_empty() {
        return Err(AgentError::InvalidConfig("parameter `tag` is empty and so is the resource name".into()));
    }
    let node_info = format!("{APP_INFO_NODE_PREFIX}{}", ctx.node);
    let app_info = ctx.param(&node_info).or_else(|| ctx.param("app_info")).unwrap_or("");
    Ok(Scripts {
        ctx,
        restore: params::path(ctx, "restore")?,
        remove: params::path(ctx, "remove")?,
        quickcheck: params::path(ctx, "quickcheck")?,
        recover: params::path(ctx, "recover")?,
        tag,
        id: params::value(ctx, "id").unwrap_or(tag),
        app_info,
        app_info_flag: params::value(ctx, "app_info_flag"),
        quickcheck_timeout_ms: ctx.param_u64("quickcheck_timeout_ms", QUICKCHECK_TIMEOUT_MS)?,
        env: params::extra_env(ctx)?,
    })
}

fn required<'a>(script: Option<&'a str>, name: &str, what: &str) -> Result<&'a str, AgentError> {
    script.ok_or_else(|| {
        AgentError::InvalidConfig(format!("style=lifekeeper needs parameter `{name}`: the absolute path of the {what} script"))
    })
}

impl Scripts<'_> {
    /// `SCRIPT -t TAG -i ID [FLAG INFO]` with the LK_* environment.
    fn command(&self, script: &str, action: &str) -> Command {
        let mut cmd = Command::new(script).args(["-t", self.tag, "-i", self.id]);
        if let Some(flag) = self.app_info_flag {
            cmd = cmd.arg(flag).arg(self.app_info);
        }
        for (k, v) in &self.env {
            cmd = cmd.env(k.as_str(), v.as_str());
        }
        cmd.env("LK_TAG", self.tag)
            .env("LK_ID", self.id)
            .env("LK_APP_INFO", self.app_info)
            .env("LK_NODE", self.ctx.node.as_str())
            // Not LifeKeeper's: the placement epoch, Warden's fencing token (it only grows; a
            // script that writes to shared storage can tag its writes with it).
            .env("LK_EPOCH", self.ctx.epoch.to_string())
            .env("LK_ACTION", action)
    }

    /// Run a script to completion (bounded by the action's deadline); Ok when it exited 0.
    fn run(&self, script: &str, action: &str) -> Result<(), AgentError> {
        let cmd = self.command(script, action);
        log::debug(format!("{action}: {}", cmd.display()));
        let out = cmd.run()?;
        if out.success() {
            return Ok(());
        }
        Err(fail!("{action} script {script} failed ({}): {}", out.status_text(), params::brief(&out.output_text())))
    }
}

pub(crate) fn validate(ctx: &Context) -> Result<(), AgentError> {
    let s = scripts(ctx)?;
    let restore = required(s.restore, "restore", "restore (start)")?;
    let remove = required(s.remove, "remove", "remove (stop)")?;
    params::check_program("restore", restore)?;
    params::check_program("remove", remove)?;
    if let Some(q) = s.quickcheck {
        params::check_program("quickcheck", q)?;
    } else {
        log::info("no `quickcheck` script: the resource is always reported healthy");
    }
    if let Some(r) = s.recover {
        params::check_program("recover", r)?;
    } else {
        log::info("no `recover` script: no local recovery, a failure fails the resource over");
    }
    Ok(())
}

/// restore. It must succeed when the application already runs: that is the script's job, as in
/// LifeKeeper.
pub(crate) fn start(ctx: &Context) -> Result<(), AgentError> {
    let s = scripts(ctx)?;
    let restore = required(s.restore, "restore", "restore (start)")?;
    s.run(restore, "restore")
}

/// remove. A failure means "may still be running".
pub(crate) fn stop(ctx: &Context) -> Result<(), AgentError> {
    let s = scripts(ctx)?;
    let remove = required(s.remove, "remove", "remove (stop)")?;
    s.run(remove, "remove").map_err(|e| match e {
        AgentError::Failed(m) => AgentError::Failed(format!("{m}; the resource may still be running")),
        other => other,
    })
}

/// quickCheck: exit 0 = running, another exit = failed, killed at its own timeout = degraded
/// ("check timed out", not a failure). No quickcheck script = always running.
pub(crate) fn monitor(ctx: &Context) -> Result<Health, AgentError> {
    let s = scripts(ctx)?;
    let Some(qc) = s.quickcheck else {
        return Ok(Health::Running);
    };
    let cmd = s.command(qc, "quickCheck").timeout(Duration::from_millis(s.quickcheck_timeout_ms));
    let out = cmd.run()?;
    if out.timed_out {
        let msg = format!(
            "check timed out: quickCheck {qc} ran longer than {} ms and was killed; not counted \
             as a failure (LifeKeeper rule), it runs again at the next interval",
            s.quickcheck_timeout_ms
        );
        log::warn(&msg);
        return Ok(Health::Degraded(msg));
    }
    if out.success() {
        return Ok(Health::Running);
    }
    Ok(Health::Failed(format!("quickCheck {qc} failed ({}): {}", out.status_text(), params::brief(&out.output_text()))))
}

/// recover, or `unsupported` when there is no recover script: as in LifeKeeper, the resource then
/// has no local recovery and fails over at once.
pub(crate) fn recover(ctx: &Context) -> Result<(), AgentError> {
    let s = scripts(ctx)?;
    let Some(r) = s.recover else {
        return Err(AgentError::Unsupported(
            "no `recover` script: as in LifeKeeper, this resource has no local recovery and \
             fails over at once"
                .into(),
        ));
    };
    s.run(r, "recover").map_err(|e| match e {
        AgentError::Failed(m) => AgentError::Failed(format!("{m}; the resource fails over")),
        other => other,
    })
}
