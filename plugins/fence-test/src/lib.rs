//! `fence-test`: the stand-in for power-off in tests, where cluster "nodes" are network
//! namespaces on one machine.
//!
//! A test node `NODE` **is** the network namespace `<netns_prefix>NODE` (`ip netns add`), and its
//! processes are every process in that namespace (`ip netns pids`). **fence** kills all of them
//! with SIGKILL and returns only when none is left alive; **status** is `off` when no live process
//! is left (a zombie counts as dead), `on` otherwise. A namespace that does not exist runs
//! nothing, so it is `off` (and fencing it succeeds). The namespace itself stays: like a powered
//! off machine, the node can be "booted" again by starting processes in it.
use std::time::Duration;

use warden_sdk::*;

struct FenceTest;

const IP: &str = "/usr/sbin/ip";
const KILL: &str = "/bin/kill";

fn netns(ctx: &Context, target: &str) -> Result<String, AgentError> {
    let prefix = ctx.param("netns_prefix").unwrap_or("");
    let name = format!("{prefix}{target}");
    let ok = !target.is_empty()
        && !name.starts_with('-')
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name != "."
        && name != "..";
    if ok {
        Ok(name)
    } else {
        Err(AgentError::InvalidConfig(format!("`{name}` (netns_prefix + target) is not a valid network namespace name")))
    }
}

/// Live (non-zombie) processes in the namespace; None when the namespace does not exist.
fn live_pids(ns: &str) -> Result<Option<Vec<u32>>, AgentError> {
    let cmd = Command::new(IP).args(["netns", "pids", ns]).timeout(Duration::from_secs(10));
    let out = cmd.run()?;
    if !out.success() {
        if out.stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(fail!("`{}` failed ({}): {}", cmd.display(), out.status_text(), out.output_text()));
    }
    let mut live = Vec::new();
    for pid in out.stdout.split_whitespace().filter_map(|w| w.parse::<u32>().ok()) {
        if alive(pid)? {
            live.push(pid);
        }
    }
    Ok(Some(live))
}

/// `/proc/<pid>/stat` is "pid (comm) S …": state Z (zombie) or X (dead), or no such process,
/// means dead.
fn alive(pid: u32) -> Result<bool, AgentError> {
    let path = format!("/proc/{pid}/stat");
    match fs::read_to_string(&path) {
        Ok(stat) => Ok(stat.rsplit(')').next().and_then(|r| r.trim().chars().next()).is_some_and(|s| s != 'Z' && s != 'X')),
        Err(AgentError::AccessDenied(m)) => Err(AgentError::AccessDenied(m)),
        Err(_) => Ok(false), // gone between the listing and the read
    }
}

impl FenceAgent for FenceTest {
    fn metadata() -> FenceMetadata {
        FenceMetadata {
            name: "fence-test".into(),
            version: "0.1.0".into(),
            description: "Test stand-in for power fencing: kills every process in the network namespace <netns_prefix><node>".into(),
            parameters: vec![
                Param::optional(
                    "netns_prefix",
                    "",
                    "Prefix of the node's network namespace name: node NODE is namespace <netns_prefix>NODE",
                )
                .into(),
                Param::optional("kill_wait_ms", "10000", "How long fence waits for the killed processes to die before it fails").into(),
            ],
            fence_timeout_ms: 30_000,
            status_timeout_ms: 15_000,
        }
    }

    fn validate(ctx: &Context) -> Result<(), AgentError> {
        netns(ctx, "node")?;
        ctx.param_u64("kill_wait_ms", 10_000)?;
        Ok(())
    }

    fn fence(ctx: &Context, target: &str) -> Result<(), AgentError> {
        let ns = netns(ctx, target)?;
        let wait = ctx.param_u64("kill_wait_ms", 10_000)?;
        let mut waited = 0;
        loop {
            let Some(pids) = live_pids(&ns)? else {
                log::info(format!("fence {target}: network namespace {ns} does not exist; nothing runs there"));
                return Ok(());
            };
            if pids.is_empty() {
                log::info(format!("fence {target}: no process left in network namespace {ns}"));
                return Ok(());
            }
            if waited >= wait {
                return Err(fail!("fence {target}: processes {pids:?} in network namespace {ns} survived SIGKILL for {wait} ms"));
            }
            // New processes may appear while we kill (a fork loop): kill again every round.
            let list: Vec<String> = pids.iter().map(u32::to_string).collect();
            log::warn(format!("fence {target}: killing {} in network namespace {ns}", list.join(" ")));
            let cmd = Command::new(KILL).arg("-KILL").args(list).timeout(Duration::from_secs(10));
            let out = cmd.run()?;
            // kill exits 1 when some pid was already gone: that is fine, the next round checks.
            if !out.success() && out.exit_code != Some(1) {
                return Err(fail!("`{}` failed ({}): {}", cmd.display(), out.status_text(), out.output_text()));
            }
            sleep(Duration::from_millis(100));
            waited += 100;
        }
    }

    fn status(ctx: &Context, target: &str) -> Result<PowerState, AgentError> {
        let ns = netns(ctx, target)?;
        Ok(match live_pids(&ns)? {
            None => PowerState::Off,
            Some(p) if p.is_empty() => PowerState::Off,
            Some(_) => PowerState::On,
        })
    }
}

export_fence_agent!(FenceTest);
