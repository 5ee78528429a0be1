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
            let out = cmd.run()?;
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
