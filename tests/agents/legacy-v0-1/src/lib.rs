//! A pid-file daemon agent written directly against the frozen `wit/v0.1.0/agent.wit` (no SDK,
//! which follows the newest version): start runs `start` and waits for a live pid in `pidfile`,
//! stop sends TERM then KILL, monitor checks the pid in /proc. It has no `watch` (0.1.0 has
//! none), so the engine monitors it on its interval only.

#![allow(unsafe_code)] // the generated bindings use unsafe for the canonical ABI

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "resource-agent",
});

use exports::warden::agent::agent::{AgentMetadata, Guest};
use warden::agent::host;
use warden::agent::types::{AgentError, Context, Health, Parameter, Timeouts};

struct Legacy;

fn param<'a>(ctx: &'a Context, name: &str) -> Result<&'a str, AgentError> {
    ctx.params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| AgentError::InvalidConfig(format!("parameter `{name}` is required")))
}

fn live_pid(ctx: &Context) -> Result<Option<u32>, AgentError> {
    let file = param(ctx, "pidfile")?;
    if host::stat(file)?.is_none() {
        return Ok(None);
    }
    let Ok(pid) = String::from_utf8_lossy(&host::read_file(file, 64)?).trim().parse::<u32>() else { return Ok(None) };
    let stat = host::read_file(&format!("/proc/{pid}/stat"), 4096).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let state = stat.rsplit(')').next().and_then(|r| r.trim().chars().next());
    Ok(state.filter(|s| *s != 'Z' && *s != 'X').map(|_| pid))
}

fn wait_until(ms: u32, ok: impl Fn() -> Result<bool, AgentError>) -> Result<bool, AgentError> {
    for _ in 0..ms / 100 {
        if ok()? {
            return Ok(true);
        }
        host::sleep(100);
    }
    ok()
}

fn run(program: &str, args: &[String]) -> Result<host::ExecOutput, AgentError> {
    host::exec(program, args, &host::ExecOptions { env: Vec::new(), stdin: None, timeout_ms: None, cwd: None })
}

impl Guest for Legacy {
    fn metadata() -> AgentMetadata {
        let p =
            |name: &str, description: &str| Parameter { name: name.into(), description: description.into(), required: true, default: None };
        AgentMetadata {
            name: "legacy-v0-1".into(),
            version: "0.1.0".into(),
            description: "A daemon tracked by its pid file, built for warden:agent@0.1.0 (tests only)".into(),
            parameters: vec![p("pidfile", "the daemon's pid file"), p("start", "a program that starts the daemon")],
            timeouts: Timeouts { start_ms: 30_000, stop_ms: 30_000, monitor_ms: 5_000, recover_ms: 60_000, validate_ms: 5_000 },
            monitor_interval_ms: 5_000,
            local_recovery: true,
        }
    }

    fn validate(ctx: Context) -> Result<(), AgentError> {
        match host::stat(param(&ctx, "start")?)? {
            Some(_) => Ok(()),
            None => Err(AgentError::NotInstalled(format!("{} does not exist", param(&ctx, "start")?))),
        }
    }

    fn start(ctx: Context) -> Result<(), AgentError> {
        if live_pid(&ctx)?.is_some() {
            return Ok(());
        }
        let out = run(param(&ctx, "start")?, &[])?;
        if out.exit_code != Some(0) || !wait_until(10_000, || Ok(live_pid(&ctx)?.is_some()))? {
            return Err(AgentError::Failed(format!("start failed: {:?} {}", out.exit_code, out.stderr)));
        }
        host::log(host::Level::Info, "daemon started (0.1.0 agent)");
        Ok(())
    }

    fn stop(ctx: Context) -> Result<(), AgentError> {
        let Some(pid) = live_pid(&ctx)? else { return Ok(()) };
        for signal in ["-TERM", "-KILL"] {
            run("/bin/kill", &[signal.into(), pid.to_string()])?;
            if wait_until(3_000, || Ok(live_pid(&ctx)?.is_none()))? {
                return Ok(());
            }
        }
        Err(AgentError::Failed(format!("process {pid} survived KILL")))
    }

    fn monitor(ctx: Context) -> Result<Health, AgentError> {
        Ok(if live_pid(&ctx)?.is_some() { Health::Running } else { Health::Stopped })
    }

    fn recover(ctx: Context) -> Result<(), AgentError> {
        Self::stop(ctx.clone())?;
        Self::start(ctx)
    }
}

export!(Legacy);
