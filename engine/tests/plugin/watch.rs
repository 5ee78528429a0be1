//! Plugin tier: the agent-interface versions and `host.watch` (warden:agent@0.2.0).
//!
//! A plugin built for the frozen 0.1.0 loads and runs every action through the same host; a
//! 0.2.0 agent names its processes with `watch` and the host hands back one pidfd per process;
//! bad targets get typed errors.

use crate::support;
use std::time::Duration;

use support::*;
use warden::plugin::{AgentFailure, Health, Limits, WitVersion};

const T: Option<Duration> = Some(Duration::from_secs(30));

fn daemon_script(dir: &std::path::Path, pidfile: &str) -> String {
    let script = dir.join("start.sh");
    std::fs::write(&script, format!("#!/bin/sh\nsetsid sleep 100000 </dev/null >/dev/null 2>&1 &\necho $! > {pidfile}\n")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script.display().to_string()
}

fn kill(pid: u32) {
    std::process::Command::new("/bin/kill").args(["-9", &pid.to_string()]).status().unwrap();
}

#[test]
fn the_frozen_0_1_0_wit_is_unchanged() {
    // A released version is frozen: plugins built against it must keep linking. Changing this
    // file is a new version (wit/agent.wit), never an edit.
    let text = std::fs::read(workspace_root().join("wit/v0.1.0/agent.wit")).unwrap();
    assert_eq!(blake3::hash(&text).to_hex().as_str(), FROZEN_0_1_0, "wit/v0.1.0/agent.wit changed");
    let newest = std::fs::read_to_string(workspace_root().join("wit/agent.wit")).unwrap();
    assert!(newest.contains("package warden:agent@0.2.0;"));
}

/// blake3 of `wit/v0.1.0/agent.wit` as released.
const FROZEN_0_1_0: &str = "dee08e350cba5dcb300d0f33ec4e3fecff49877aad8d59e028d3b14823116ac7";

#[tokio::test]
async fn a_plugin_built_for_0_1_0_loads_and_runs_every_action() {
    let host = host();
    let plugin = load(&host, &built_plugin("legacy-v0-1")).await;
    assert_eq!(plugin.wit, WitVersion::V0_1);
    assert_eq!(plugin.exports, vec!["warden:agent/agent@0.1.0".to_string()]);
    assert_eq!(plugin.metadata.version, "0.1.0");
    assert_eq!(plugin.metadata.parameters.len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("svc.pid").display().to_string();
    let script = daemon_script(dir.path(), &pidfile);
    let granted = caps(&format!(
        "exec = [{{ program = \"{script}\" }}, {{ program = \"/bin/kill\", args = [\"-*\", \"*\"] }}]\nread = [\"{pidfile}\", \"/proc/*/stat\", \"{script}\"]\n"
    ));
    let mut inst = plugin.instance("old", granted, Limits::default());
    let c = ctx(&[("pidfile", &pidfile), ("start", &script)]);
    inst.validate(&c, T).await.unwrap();
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Stopped);
    inst.start(&c, T).await.unwrap();
    assert!(inst.take_watch().is_none(), "0.1.0 has no watch");
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    inst.recover(&c, T).await.unwrap();
    let pid2: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert_ne!(pid, pid2, "recover made a new daemon");
    inst.stop(&c, T).await.unwrap();
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Stopped);

    // Errors cross the version boundary typed: a missing grant is access-denied.
    let mut denied = plugin.instance("old", caps(""), Limits::default());
    let err = denied.monitor(&c, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::AccessDenied(_))), "{err}");
    let missing = ctx(&[("pidfile", &pidfile), ("start", "/nonexistent/start")]);
    let mut inst = plugin.instance("old", caps("read = [\"/nonexistent/**\"]"), Limits::default());
    let err = inst.validate(&missing, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::NotInstalled(_))), "{err}");
}

#[tokio::test]
async fn an_agent_names_its_final_daemon_process_with_watch() {
    let host = host();
    let plugin = load(&host, &built_plugin("example-rust")).await;
    assert_eq!(plugin.wit, WitVersion::V0_2);
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("svc.pid").display().to_string();
    let script = daemon_script(dir.path(), &pidfile);
    let granted = caps(&format!(
        "exec = [{{ program = \"{script}\" }}, {{ program = \"/bin/kill\", args = [\"-*\", \"*\"] }}]\nread = [\"{pidfile}\", \"/proc/*/stat\"]\n"
    ));
    let mut inst = plugin.instance("svc", granted, Limits::default());
    let params = plugin.metadata.resolve_params(&ctx(&[("pidfile", &pidfile), ("start", &script)]).params).unwrap();
    let c = warden::plugin::CallContext { params, ..ctx(&[]) };

    inst.start(&c, T).await.unwrap();
    let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let set = inst.take_watch().expect("start names the daemon");
    assert_eq!(set.pids(), vec![pid], "the final daemon, not the start script");
    assert!(inst.take_watch().is_none(), "taken once");
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    assert_eq!(inst.take_watch().expect("monitor names it again").pids(), vec![pid]);

    // The pidfd the host opened becomes readable when the process dies.
    let mut poll = set.processes.into_iter().next().unwrap().1;
    assert_eq!(poll_now(&mut poll), 0, "the daemon lives");
    kill(pid);
    assert!(wait_until(Duration::from_secs(10), || poll_now(&mut poll) == 1).await, "pidfd readable after the kill");
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Stopped);
    assert!(inst.take_watch().is_none(), "a stopped resource names nothing");
}

/// A zero-timeout poll(2) of a pidfd: 1 once its process has exited.
fn poll_now(fd: &mut std::os::fd::OwnedFd) -> usize {
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })).unwrap()
}

async fn probe_watch(targets: &str, grants: &str, cgroup: Option<&std::path::Path>) -> (Health, Option<Vec<u32>>, u32) {
    let host = host();
    let plugin = load(&host, &built_plugin("watch-probe")).await;
    let mut inst = plugin.instance("w", caps(grants), Limits::default());
    inst.set_cgroup(cgroup);
    let params = plugin.metadata.resolve_params(&ctx(&[("targets", targets)]).params).unwrap();
    let c = warden::plugin::CallContext { params, ..ctx(&[]) };
    let h = inst.monitor(&c, T).await.unwrap();
    (h, inst.take_watch().map(|s| s.pids()), inst.last_stats().denials)
}

#[tokio::test]
async fn watch_targets_are_checked_and_refused_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("/bin/sleep").arg("100000").spawn().unwrap();
    let pid = child.id();
    let pidfile = dir.path().join("p.pid");
    std::fs::write(&pidfile, format!("{pid}\n")).unwrap();
    let grant = format!("read = [\"{}\"]", pidfile.display());

    // A pid and a pid file (under a read grant): both name the same process, watched once.
    let (h, pids, _) = probe_watch(&format!("pid:{pid},pidfile:{}", pidfile.display()), &grant, None).await;
    assert_eq!((h, pids), (Health::Running, Some(vec![pid])));

    // A pid file outside the read grants: access-denied, and nothing is watched.
    let (h, pids, denials) = probe_watch(&format!("pidfile:{}", pidfile.display()), "", None).await;
    assert!(matches!(&h, Health::Failed(m) if m.contains("AccessDenied")), "{h:?}");
    assert_eq!((pids, denials), (None, 1));

    // No such process; a pid file without a pid.
    let (h, pids, _) = probe_watch("pid:2147483000", "", None).await;
    assert!(matches!(&h, Health::Failed(m) if m.contains("no process with pid")), "{h:?}");
    assert_eq!(pids, None);
    let empty = dir.path().join("empty.pid");
    std::fs::write(&empty, "\n").unwrap();
    let (h, _, _) = probe_watch(&format!("pidfile:{}", empty.display()), &format!("read = [\"{}\"]", empty.display()), None).await;
    assert!(matches!(&h, Health::Failed(m) if m.contains("holds no pid")), "{h:?}");

    // Too many targets: invalid-config.
    let (h, _, _) = probe_watch(&format!("many:{}", warden::plugin::MAX_WATCH_TARGETS + 1), "", None).await;
    assert!(matches!(&h, Health::Failed(m) if m.contains("InvalidConfig")), "{h:?}");

    // own-processes without a cgroup: refused, saying what to do instead.
    let (h, _, _) = probe_watch("own", "", None).await;
    assert!(matches!(&h, Health::Failed(m) if m.contains("pid file instead")), "{h:?}");

    // An empty list is accepted: it stops watching.
    let (h, pids, _) = probe_watch("", "", None).await;
    assert_eq!((h, pids), (Health::Running, Some(vec![])));
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn own_processes_are_what_runs_in_the_resource_cgroup() {
    let state = tempfile::tempdir().unwrap();
    let cgroups = warden::node::cgroup::Cgroups::detect("watchtest", state.path()).expect("a cgroup2 hierarchy (tests run as root)");
    let cg = cgroups.resource("w").unwrap();
    let mut a = std::process::Command::new("/bin/sleep").arg("100000").spawn().unwrap();
    let mut b = std::process::Command::new("/bin/sleep").arg("100001").spawn().unwrap();
    for p in [a.id(), b.id()] {
        std::fs::write(cg.path().join("cgroup.procs"), p.to_string()).unwrap();
    }
    let (h, pids, _) = probe_watch("own", "", Some(cg.path())).await;
    let mut want = vec![a.id(), b.id()];
    want.sort();
    assert_eq!((h, pids), (Health::Running, Some(want)));
    // With a cgroup, a named pid must be one of the resource's own processes.
    let (h, pids, _) = probe_watch(&format!("pid:{}", a.id()), "", Some(cg.path())).await;
    assert_eq!((h, pids), (Health::Running, Some(vec![a.id()])));
    let (h, pids, denials) = probe_watch(&format!("pid:{}", std::process::id()), "", Some(cg.path())).await;
    assert!(matches!(&h, Health::Failed(m) if m.contains("AccessDenied") && m.contains("not one of this resource's processes")), "{h:?}");
    assert_eq!((pids, denials), (None, 1));
    let _ = cg.kill_all(Duration::from_secs(5)).await;
    let _ = a.wait();
    let _ = b.wait();
    let _ = std::fs::remove_dir(cg.path());
    let _ = std::fs::remove_dir(cgroups.base());
}
