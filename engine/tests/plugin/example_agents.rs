//! Plugin tier: the example agents in Rust, Python and JavaScript, built by `cargo xtask plugins`,
//! run through the same host against real processes and a real TCP service.

use crate::support;
use std::time::Duration;

use support::*;
use warden::plugin::{AgentFailure, Health, Limits};

const T: Option<Duration> = Some(Duration::from_secs(30));

/// Start, monitor, kill -9 behind the agent's back, monitor, start again, stop: a pid-file agent.
async fn pid_file_agent_lifecycle(plugin_name: &str) {
    let host = host();
    let plugin = load(&host, &built_plugin(plugin_name)).await;
    assert_eq!(plugin.name(), plugin_name);
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("svc.pid").display().to_string();
    let daemon = workspace_root().join("examples/agents/demo-daemon.sh").display().to_string();
    let granted = caps(&format!(
        r#"
exec = [{{ program = "{daemon}" }}, {{ program = "/bin/kill", args = ["-*", "*"] }}]
read = ["{pidfile}", "/proc/*/stat", "{daemon}"]
"#
    ));
    let mut inst = plugin.instance("svc", granted, Limits::default());
    let params =
        plugin.metadata.resolve_params(&ctx(&[("pidfile", &pidfile), ("start", &daemon), ("start_args", &pidfile)]).params).unwrap();
    let c = warden::plugin::CallContext { params, ..ctx(&[]) };

    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Stopped);
    inst.start(&c, T).await.unwrap();
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // The example names its daemon with `watch` (warden:agent@0.2.0) at start and in monitor.
    assert_eq!(inst.take_watch().map(|w| w.pids()), Some(vec![pid as u32]), "{plugin_name} watches its daemon after start");
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    assert_eq!(inst.take_watch().map(|w| w.pids()), Some(vec![pid as u32]), "{plugin_name} watches its daemon in monitor");
    inst.start(&c, T).await.expect("start is idempotent");
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim().parse::<i32>().unwrap(), pid, "no second copy");

    // Kill the daemon: it becomes a zombie until PID 1 reaps it; the agent must call it dead.
    std::process::Command::new("/bin/kill").args(["-9", &pid.to_string()]).status().unwrap();
    let mut seen = Health::Running;
    for _ in 0..50 {
        seen = inst.monitor(&c, T).await.unwrap();
        if seen == Health::Stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, Health::Stopped, "monitor must notice the killed daemon");

    inst.start(&c, T).await.unwrap();
    let pid2: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert_ne!(pid2 as i32, pid);
    // Every action of the example: validate, and recover (stop + start: a new daemon).
    inst.validate(&c, T).await.unwrap();
    inst.recover(&c, T).await.expect("recover restarts the daemon");
    let pid3: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert_ne!(pid3, pid2, "recover made a new daemon");
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    inst.stop(&c, T).await.unwrap();
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Stopped);
    inst.stop(&c, T).await.expect("stopping a stopped resource succeeds");

    // Without the pid file grant the agent gets access-denied, not a crash.
    let mut denied = plugin.instance("svc", caps(""), Limits::default());
    let err = denied.monitor(&c, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::AccessDenied(_))), "{err}");
}

#[tokio::test]
async fn rust_example_manages_a_pid_file_daemon() {
    pid_file_agent_lifecycle("example-rust").await;
}

#[tokio::test]
async fn js_example_manages_a_pid_file_daemon() {
    pid_file_agent_lifecycle("example-js").await;
}

#[tokio::test]
async fn python_example_manages_a_tcp_service() {
    let host = host();
    let plugin = load(&host, &built_plugin("example-python")).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pidfile = dir.path().join("http.pid");
    // A real TCP service: python's http.server, detached, with a pid file; and a stop script.
    let start = dir.path().join("start.sh");
    let stop = dir.path().join("stop.sh");
    std::fs::write(
        &start,
        format!(
            "#!/bin/sh\nsetsid python3 -m http.server {port} --bind 127.0.0.1 </dev/null >/dev/null 2>&1 &\necho $! > {}\n",
            pidfile.display()
        ),
    )
    .unwrap();
    std::fs::write(&stop, format!("#!/bin/sh\nkill $(cat {})\n", pidfile.display())).unwrap();
    for f in [&start, &stop] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let (start, stop) = (start.display().to_string(), stop.display().to_string());
    let granted = caps(&format!(
        r#"
exec = [{{ program = "{start}" }}, {{ program = "{stop}" }}]
read = ["{start}", "{stop}"]
connect = ["127.0.0.1:{port}"]
"#
    ));
    let mut inst = plugin.instance("web", granted, Limits::default());
    // The resource's own cgroup, as a node gives it: the agent watches what its start left there.
    let state = tempfile::tempdir().unwrap();
    let cgroups = warden::node::cgroup::Cgroups::detect("pyexample", state.path()).expect("a cgroup2 hierarchy (tests run as root)");
    let cg = cgroups.resource("web").unwrap();
    inst.set_cgroup(Some(cg.path()));
    let params = plugin.metadata.resolve_params(&ctx(&[("port", &port.to_string()), ("start", &start), ("stop", &stop)]).params).unwrap();
    let c = warden::plugin::CallContext { params, ..ctx(&[]) };

    inst.validate(&c, T).await.unwrap();
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Stopped);
    inst.start(&c, T).await.unwrap();
    let server: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert_eq!(inst.take_watch().map(|w| w.pids()), Some(vec![server]), "the Python example watches the service it started");
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    inst.recover(&c, T).await.expect("recover restarts the service");
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    inst.stop(&c, T).await.unwrap();
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Stopped);
    let _ = cg.kill_all(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir(cg.path());
    let _ = std::fs::remove_dir(cgroups.base());

    // A Python agent's errors arrive typed, like a Rust agent's.
    let bad = warden::plugin::CallContext { params: [("port".to_string(), "http".to_string())].into(), ..ctx(&[]) };
    let err = inst.monitor(&bad, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::InvalidConfig(m)) if m.contains("`port` must be a number")), "{err}");
    // And a probe outside the grant is denied.
    let other = warden::plugin::CallContext { params: [("port".to_string(), "1".to_string())].into(), ..ctx(&[]) };
    let err = inst.monitor(&other, T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::AccessDenied(_))), "{err}");
}

#[tokio::test]
async fn every_example_reports_its_metadata() {
    let host = host();
    for name in ["example-rust", "example-python", "example-js"] {
        let p = load(&host, &built_plugin(name)).await;
        assert_eq!(p.metadata.name, name);
        assert!(!p.metadata.parameters.is_empty(), "{name} documents its parameters");
        assert!(p.exports.iter().any(|e| e == "warden:agent/agent@0.2.0"), "{name}: {:?}", p.exports);
        assert_eq!(p.wit, warden::plugin::WitVersion::V0_2, "{name}");
    }
}
