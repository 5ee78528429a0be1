//! A guest that misbehaves on request, for the host's containment tests. The `mode` parameter
//! picks the behaviour; `mode=ok` (the default) is a well-behaved agent, used after each hostile
//! call to prove the host and the plugin still work.
use std::time::Duration;
use warden_sdk::*;

struct Hostile;

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let buf = [depth; 64];
    std::hint::black_box(&buf);
    recurse(depth + 1) + buf[3]
}

/// Small frames: exhausts the engine's wasm call stack rather than the shadow stack in memory.
#[allow(unconditional_recursion)]
fn deep(n: u64) -> u64 {
    std::hint::black_box(deep(std::hint::black_box(n + 1))) + 1
}

fn behave(ctx: &Context) -> Result<Health, AgentError> {
    match ctx.param("mode").unwrap_or("ok") {
        "ok" => Ok(Health::Running),
        "loop" => loop {
            std::hint::black_box(0u64);
        },
        "membomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "stack" => Ok(Health::Degraded(recurse(0).to_string())),
        "deep" => Ok(Health::Degraded(deep(0).to_string())),
        "panic" => panic!("hostile guest panics on purpose"),
        "exec" => {
            let program = ctx.require("program")?;
            let args: Vec<&str> = ctx.param("args").unwrap_or("").split_whitespace().collect();
            let mut cmd = Command::new(program).args(args);
            if let Some(t) = ctx.param("exec_timeout_ms") {
                cmd = cmd.timeout(Duration::from_millis(t.parse().unwrap_or(1000)));
            }
            // `env=K=V;K2=V2`: variables for the child (the environment is a capability).
            for kv in ctx.param("env").unwrap_or("").split(';').filter(|kv| !kv.is_empty()) {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                cmd = cmd.env(k, v);
            }
            if let Some(cwd) = ctx.param("cwd") {
                cmd = cmd.cwd(cwd);
            }
            let out = cmd.run()?;
            if ctx.param("show") == Some("stdout") {
                return Ok(Health::Degraded(out.stdout));
            }
            Ok(Health::Degraded(format!(
                "exit={:?} signal={:?} timed_out={} stdout_len={} stdout_truncated={} stderr_len={} stderr_truncated={}",
                out.exit_code,
                out.signal,
                out.timed_out,
                out.stdout.len(),
                out.stdout_truncated,
                out.stderr.len(),
                out.stderr_truncated
            )))
        }
        "wasi-read" => match std::fs::read(ctx.require("path")?) {
            Ok(bytes) => Ok(Health::Failed(format!("read {} bytes through WASI", bytes.len()))),
            Err(e) => Err(AgentError::AccessDenied(format!("WASI read failed: {e}"))),
        },
        "host-read" => {
            let bytes = fs::read(ctx.require("path")?, 1 << 20)?;
            Ok(Health::Degraded(String::from_utf8_lossy(&bytes).into_owned()))
        }
        "stat" => Ok(Health::Degraded(format!("{:?}", fs::stat(ctx.require("path")?)?))),
        "list" => Ok(Health::Degraded(fs::list_dir(ctx.require("path")?)?.join(","))),
        "connect" => {
            let port = ctx.param_u64("port", 0)? as u16;
            Ok(Health::Degraded(net::tcp_probe(ctx.require("host")?, port, Duration::from_millis(500))?.to_string()))
        }
        "log-flood" => {
            for i in 0..10_000 {
                log::info(format!("flood {i}"));
            }
            Ok(Health::Running)
        }
        "print-flood" => {
            let line = "x".repeat(1023);
            for _ in 0..10_000 {
                eprintln!("{line}");
            }
            Ok(Health::Running)
        }
        "sleep" => {
            sleep(Duration::from_millis(ctx.param_u64("ms", 100)?));
            Ok(Health::Running)
        }
        "env" => Ok(Health::Degraded(std::env::vars().map(|(k, _)| k).collect::<Vec<_>>().join(","))),
        // A failure reason of `size` bytes (the host must not keep megabytes of it).
        "fail-big" => Ok(Health::Failed("r".repeat(ctx.param_u64("size", 16 << 20)? as usize))),
        // `count` stat calls of `path` (refused ones must not each write a log line).
        "stat-flood" => {
            let path = ctx.require("path")?;
            let mut denied = 0;
            for _ in 0..ctx.param_u64("count", 20_000)? {
                if matches!(fs::stat(path), Err(AgentError::AccessDenied(_))) {
                    denied += 1;
                }
            }
            Ok(Health::Degraded(format!("denied={denied}")))
        }
        // A log message that tries to forge a second line of the engine's log.
        "log-forge" => {
            log::warn("innocent\n2026-01-01T00:00:00.000000Z  WARN fencing node-b confirmed off\rand\u{1b}[2J");
            Ok(Health::Running)
        }
        // A traceback on stderr, then a trap: the error must carry its last lines.
        "traceback" => {
            eprintln!("Traceback (most recent call last):");
            for i in 0..6 {
                eprintln!("  File \"agent.py\", line {i}, in frame_{i}");
            }
            eprintln!("TypeError: cannot read properties of undefined (reading 'pid')");
            std::process::abort()
        }
        // Read `path` `count` times; count the reads that returned text containing SECRET.
        "read-many" => {
            let path = ctx.require("path")?;
            let (mut ok, mut leaked, mut failed) = (0, 0, 0);
            for _ in 0..ctx.param_u64("count", 1000)? {
                match fs::read(path, 1024) {
                    Ok(b) if String::from_utf8_lossy(&b).contains("SECRET") => leaked += 1,
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            Ok(Health::Degraded(format!("ok={ok} leaked={leaked} failed={failed}")))
        }
        // `count` reads of `path` in a row, each reported (a FIFO must not hang any of them).
        "read-each" => {
            let path = ctx.require("path")?;
            let mut out = Vec::new();
            for _ in 0..ctx.param_u64("count", 1)? {
                out.push(match fs::read(path, 1024) {
                    Ok(b) => format!("ok:{}", b.len()),
                    Err(e) => format!("err:{e:?}"),
                });
            }
            Ok(Health::Degraded(out.join("|")))
        }
        other => Err(AgentError::InvalidConfig(format!("unknown mode `{other}`"))),
    }
}

impl Agent for Hostile {
    fn metadata() -> AgentMetadata {
        AgentMetadata::new("test-hostile", "0.1.0", "misbehaves on request (tests only)")
            .param(Param::optional("mode", "ok", "what to do"))
            .param(Param::optional_unset("*", "any other parameter, used by the mode"))
    }
    fn validate(ctx: &Context) -> Result<(), AgentError> {
        behave(ctx).map(|_| ())
    }
    fn start(ctx: &Context) -> Result<(), AgentError> {
        behave(ctx).map(|_| ())
    }
    fn stop(_ctx: &Context) -> Result<(), AgentError> {
        Ok(())
    }
    fn monitor(ctx: &Context) -> Result<Health, AgentError> {
        behave(ctx)
    }
}

export_agent!(Hostile);
