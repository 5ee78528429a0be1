//! Example agent: a daemon tracked by its pid file. Monitor reads the pid file and checks the
//! process in /proc (a zombie counts as dead); start runs `start` and waits for the pid file;
//! stop sends TERM, then KILL after `stop_grace_ms`. Start and monitor name the daemon's pid
//! with `watch` (warden:agent@0.2.0), so the engine sees it die at once instead of at the next
//! monitor.
use std::time::Duration;
use warden_sdk::*;

struct PidFile;

fn pid(ctx: &Context) -> Result<Option<u32>, AgentError> {
    let path = ctx.require("pidfile")?;
    if !fs::exists(path)? {
        return Ok(None);
    }
    let Ok(pid) = fs::read_to_string(path)?.trim().parse::<u32>() else { return Ok(None) };
    // /proc/<pid>/stat is "pid (comm) S ...": state Z (zombie) or X means gone.
    let stat = fs::read_to_string(&format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().and_then(|r| r.trim().chars().next());
    Ok(state.filter(|s| *s != 'Z' && *s != 'X').map(|_| pid))
}

fn wait_until(ms: u64, ok: impl Fn() -> Result<bool, AgentError>) -> Result<bool, AgentError> {
    for _ in 0..ms / 100 {
        if ok()? {
            return Ok(true);
        }
        sleep(Duration::from_millis(100));
    }
    ok()
}

impl Agent for PidFile {
    fn metadata() -> AgentMetadata {
        AgentMetadata::new("example-rust", "0.2.0", "A daemon tracked by its pid file (example agent in Rust)")
            .param(Param::required("pidfile", "Absolute path of the daemon's pid file"))
            .param(Param::required("start", "Absolute path of a program that starts the daemon and writes the pid file"))
            .param(Param::optional("start_args", "", "Arguments for `start`, separated by spaces"))
            .param(Param::optional("stop_grace_ms", "5000", "How long to wait after TERM before KILL"))
    }

    fn start(ctx: &Context) -> Result<(), AgentError> {
        if pid(ctx)?.is_none() {
            let out = Command::new(ctx.require("start")?).args(ctx.param("start_args").unwrap_or("").split_whitespace()).run()?;
            if !out.success() || !wait_until(10_000, || Ok(pid(ctx)?.is_some()))? {
                return Err(fail!("start failed ({}): {}", out.status_text(), out.output_text()));
            }
        }
        // The daemon's final pid (from its pid file, after any forking): its exit is seen at once.
        if let Some(p) = pid(ctx)? {
            watch::try_watch(watch::pids(&[p]));
        }
        Ok(())
    }

    fn stop(ctx: &Context) -> Result<(), AgentError> {
        let Some(p) = pid(ctx)? else { return Ok(()) };
        for (signal, grace) in [("-TERM", ctx.param_u64("stop_grace_ms", 5000)?), ("-KILL", 2000)] {
            Command::new("/bin/kill").args([signal, &p.to_string()]).run()?;
            if wait_until(grace, || Ok(pid(ctx)?.is_none()))? {
                return Ok(());
            }
        }
        Err(fail!("process {p} survived KILL"))
    }

    fn monitor(ctx: &Context) -> Result<Health, AgentError> {
        Ok(match pid(ctx)? {
            Some(p) => {
                // Also after an engine restart (its first monitor is the probe).
                watch::try_watch(watch::pids(&[p]));
                Health::Running
            }
            None => Health::Stopped,
        })
    }
}

export_agent!(PidFile);
