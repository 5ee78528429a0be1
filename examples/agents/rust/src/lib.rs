//! Example agent: a daemon tracked by its pid file. Monitor reads the pid file and checks the
//! process in /proc (a zombie counts as dead); start runs `start` and waits for the pid file;
//! stop sends TERM, then KILL after `stop_grace_ms`.
use std::time::Duration;
use warden_sdk::*;

struct PidFile;

fn pid(ctx: &Context) -> Result<Option<u32>, AgentError> {
    let path = ctx.require("pidfile")?;
    if !fs::exists(path)? {
        return Ok(None);
    }
    let pid = fs::read_to_string(path)?.trim().parse().ok();
    // /proc/<pid>/stat: "pid (comm) S ..."; state Z (zombie) or X (dead) means gone.
    let alive = |p: u32| match fs::read_to_string(&format!("/proc/{p}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|r| r.trim().chars().next()).is_some_and(|s| s != 'Z' && s != 'X'),
        Err(_) => false,
    };
    Ok(pid.filter(|p| alive(*p)))
}

fn wait_until(ms: u64, ok: impl Fn() -> Result<bool, AgentError>) -> Result<bool, AgentError> {
    for _ in 0..ms.div_ceil(100) {
        if ok()? {
            return Ok(true);
        }
        sleep(Duration::from_millis(100));
    }
    ok()
}

impl Agent for PidFile {
    fn metadata() -> AgentMetadata {
        AgentMetadata::new("example-rust", "0.1.0", "A daemon tracked by its pid file (example agent in Rust)")
            .param(Param::required("pidfile", "Absolute path of the daemon's pid file"))
            .param(Param::required("start", "Absolute path of a program that starts the daemon and writes the pid file"))
            .param(Param::optional("start_args", "", "Arguments for `start`, separated by spaces"))
            .param(Param::optional("stop_grace_ms", "5000", "How long to wait after TERM before KILL"))
    }

    fn start(ctx: &Context) -> Result<(), AgentError> {
        if pid(ctx)?.is_some() {
            return Ok(());
        }
        let out = Command::new(ctx.require("start")?).args(ctx.param("start_args").unwrap_or("").split_whitespace()).run()?;
        if !out.success() {
            return Err(fail!("start program failed ({}): {}", out.status_text(), out.output_text()));
        }
        match wait_until(10_000, || Ok(pid(ctx)?.is_some()))? {
            true => Ok(()),
            false => Err(fail!("no live process in {} after start", ctx.require("pidfile")?)),
        }
    }

    fn stop(ctx: &Context) -> Result<(), AgentError> {
        let Some(p) = pid(ctx)? else { return Ok(()) };
        Command::new("/bin/kill").args(["-TERM", &p.to_string()]).run()?;
        if !wait_until(ctx.param_u64("stop_grace_ms", 5000)?, || Ok(pid(ctx)?.is_none()))? {
            Command::new("/bin/kill").args(["-KILL", &p.to_string()]).run()?;
            if !wait_until(2000, || Ok(pid(ctx)?.is_none()))? {
                return Err(fail!("process {p} survived KILL"));
            }
        }
        Ok(())
    }

    fn monitor(ctx: &Context) -> Result<Health, AgentError> {
        Ok(if pid(ctx)?.is_some() { Health::Running } else { Health::Stopped })
    }
}

export_agent!(PidFile);
