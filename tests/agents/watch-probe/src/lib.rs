//! Tests only. `monitor` calls `watch` with the targets in parameter `targets`
//! (`pid:N`, `pidfile:PATH`, `own`, separated by `,`; `many:N` names N copies of pid 1) and
//! answers `running` when the host accepted them, else `failed("<the host's error>")`. `start`
//! and `stop` do nothing.

use warden_sdk::*;

struct WatchProbe;

fn targets(spec: &str) -> Vec<WatchTarget> {
    let mut out = Vec::new();
    for t in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match t.split_once(':') {
            Some(("pid", n)) => out.push(WatchTarget::Pid(n.parse().unwrap_or(0))),
            Some(("pidfile", p)) => out.push(WatchTarget::PidFile(p.into())),
            Some(("many", n)) => out.extend((0..n.parse::<usize>().unwrap_or(0)).map(|_| WatchTarget::Pid(1))),
            _ if t == "own" => out.push(WatchTarget::OwnProcesses),
            _ => {}
        }
    }
    out
}

impl Agent for WatchProbe {
    fn metadata() -> AgentMetadata {
        AgentMetadata::new("watch-probe", "0.2.0", "calls watch with the targets it is given (tests only)").param(Param::optional(
            "targets",
            "",
            "pid:N, pidfile:PATH, own, many:N separated by commas",
        ))
    }

    fn start(_: &Context) -> Result<(), AgentError> {
        Ok(())
    }

    fn stop(_: &Context) -> Result<(), AgentError> {
        Ok(())
    }

    fn monitor(ctx: &Context) -> Result<Health, AgentError> {
        Ok(match watch::targets(&targets(ctx.param("targets").unwrap_or(""))) {
            Ok(()) => Health::Running,
            Err(e) => Health::Failed(format!("{e:?}")),
        })
    }
}

export_agent!(WatchProbe);
