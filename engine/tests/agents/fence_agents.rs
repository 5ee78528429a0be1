//! The fence agents through the real host: `fence-test` against processes in network namespaces
//! (a test node's processes), `fence-exec` against a fake fence_* agent and a fake ipmitool that
//! record what they were given.

use crate::{netns, support};
use std::process::{Child, Command};
use std::time::Duration;

use netns::{is_alive, Namespaces};
use support::*;
use warden::plugin::{AgentFailure, CallContext, Limits, Plugin, PowerState};

const T: Option<Duration> = Some(Duration::from_secs(60));

fn params(plugin: &Plugin, p: &[(&str, &str)]) -> CallContext {
    CallContext { params: plugin.metadata.resolve_params(&ctx(p).params).unwrap(), ..ctx(&[]) }
}

/// Children of the test, killed by pid and reaped when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_in(ns: &str, script: &str) -> Child {
    Command::new("/usr/sbin/ip").args(["netns", "exec", ns, "/bin/sh", "-c", script]).spawn().unwrap()
}

#[tokio::test]
async fn fence_test_kills_every_process_of_the_node_and_nothing_else() {
    let mut spaces = Namespaces::new();
    let prefix = netns::unique("wtf");
    let prefix = format!("{prefix}-");
    // Nodes n1 and n2 are the namespaces <prefix>n1 and <prefix>n2.
    let n1 = format!("{prefix}n1");
    let n2 = format!("{prefix}n2");
    for n in [&n1, &n2] {
        netns::run("/usr/sbin/ip", &["netns", "add", n]);
        spaces.names.push(n.clone());
    }
    let mut kids = Children(vec![
        spawn_in(&n1, "exec sleep 300"),
        spawn_in(&n1, "sleep 300 & sleep 300 & wait"), // with grandchildren
        spawn_in(&n2, "exec sleep 300"),
    ]);
    assert!(wait_until(Duration::from_secs(10), || Namespaces::pids(&n1).len() >= 4 && !Namespaces::pids(&n2).is_empty()).await);
    let victims = Namespaces::pids(&n1);
    let bystanders = Namespaces::pids(&n2);

    let plugin = load(&host(), &built_plugin("fence-test")).await;
    assert_eq!(plugin.name(), "fence-test");
    let granted = caps(&format!(
        r#"
exec = [{{ program = "/usr/sbin/ip", args = ["netns", "pids", "{prefix}*"] }}, {{ program = "/bin/kill", args = ["-KILL", "**"] }}]
read = ["/proc/*/stat"]
"#
    ));
    let mut inst = plugin.instance("fence", granted, Limits::default());
    let c = params(&plugin, &[("netns_prefix", &prefix)]);

    inst.validate(&c, T).await.unwrap();
    assert_eq!(inst.status(&c, "n1", T).await.unwrap(), PowerState::On);
    assert_eq!(inst.status(&c, "n2", T).await.unwrap(), PowerState::On);
    assert_eq!(inst.status(&c, "n3", T).await.unwrap(), PowerState::Off, "no namespace: nothing runs");

    inst.fence(&c, "n1", T).await.unwrap();
    // Our direct children are zombies until we reap them: dead all the same.
    for pid in &victims {
        assert!(!is_alive(*pid), "process {pid} of n1 survived fencing");
    }
    assert_eq!(inst.status(&c, "n1", T).await.unwrap(), PowerState::Off);
    for pid in &bystanders {
        assert!(is_alive(*pid), "process {pid} of n2 was killed by fencing n1");
    }
    assert_eq!(inst.status(&c, "n2", T).await.unwrap(), PowerState::On);
    inst.fence(&c, "n1", T).await.expect("fencing a node that is off succeeds");
    inst.fence(&c, "n3", T).await.expect("fencing a node without a namespace succeeds");

    // A target that is not a valid namespace name is a config error, not a kill.
    let err = inst.fence(&c, "../x", T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::InvalidConfig(_))), "{err}");
    // Without the kill grant, fencing fails (and says why) instead of claiming success.
    let only_look = caps(&format!(
        r#"exec = [{{ program = "/usr/sbin/ip", args = ["netns", "pids", "{prefix}*"] }}]
read = ["/proc/*/stat"]"#
    ));
    let mut weak = plugin.instance("fence", only_look, Limits::default());
    let err = weak.fence(&c, "n2", T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::AccessDenied(_))), "{err}");
    assert_eq!(weak.status(&c, "n2", T).await.unwrap(), PowerState::On);

    inst.fence(&c, "n2", T).await.unwrap();
    for pid in &bystanders {
        assert!(!is_alive(*pid));
    }
    for k in &mut kids.0 {
        let _ = k.wait();
    }
    drop(spaces);
}

/// A fake fence_* agent: appends its stdin to `log`, keeps each plug's power state in
/// `state-<plug>` (on when missing); `fail` makes off fail, `stuck` makes off a no-op.
const FAKE_FENCE_AGENT: &str = r#"#!/bin/sh
dir=$(dirname "$0")
input=$(cat)
printf '%s\n--\n' "$input" >> "$dir/log"
action=$(printf '%s\n' "$input" | sed -n 's/^action=//p')
plug=$(printf '%s\n' "$input" | sed -n 's/^plug=//p')
state="$dir/state-$plug"
case "$action" in
  off|reboot)
    if [ -e "$dir/fail" ]; then echo "Failed: Unable to connect/login to fencing device" >&2; exit 1; fi
    [ -e "$dir/stuck" ] || echo off > "$state"
    echo "Success: Powered OFF"; exit 0 ;;
  on) echo on > "$state"; echo "Success: Powered ON"; exit 0 ;;
  status)
    [ -e "$dir/status-broken" ] && { echo "Failed: Unable to obtain correct plug status" >&2; exit 1; }
    s=$(cat "$state" 2>/dev/null || echo on)
    echo "Status: $(echo $s | tr a-z A-Z)"
    [ "$s" = off ] && exit 2
    exit 0 ;;
  *) echo "unknown action $action" >&2; exit 1 ;;
esac
"#;

/// A fake ipmitool: `-H HOST chassis power off|status`; the password must come from
/// IPMI_PASSWORD (like `ipmitool -E`).
const FAKE_IPMITOOL: &str = r#"#!/bin/sh
dir=$(dirname "$0")
echo "$* pw=$IPMI_PASSWORD" >> "$dir/ipmi-log"
[ "$IPMI_PASSWORD" = s3cret ] || { echo "Error: Unable to establish IPMI v2 / RMCP+ session" >&2; exit 1; }
host=$2
case "$6" in
  off) echo off > "$dir/ipmi-$host"; echo "Chassis Power Control: Down/Off" ;;
  status) echo "Chassis Power is $(cat "$dir/ipmi-$host" 2>/dev/null || echo on)" ;;
esac
exit 0
"#;

fn write_script(path: &std::path::Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn fence_exec_drives_a_fence_agent_over_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let agent = write_script(&dir.path().join("fence_fake"), FAKE_FENCE_AGENT);
    let log = dir.path().join("log");
    let plugin = load(&host(), &built_plugin("fence-exec")).await;
    assert_eq!(plugin.name(), "fence-exec");
    let mut inst = plugin.instance("stonith", caps(&format!(r#"exec = [{{ program = "{agent}" }}]"#)), Limits::default());
    let c = params(
        &plugin,
        &[("command", &agent), ("ip", "10.0.0.5"), ("username", "admin"), ("password", "s3cret"), ("verify_timeout_ms", "3000")],
    );

    inst.validate(&c, T).await.unwrap();
    assert_eq!(inst.status(&c, "node-b", T).await.unwrap(), PowerState::On, "exit 0 = on");
    inst.fence(&c, "node-b", T).await.unwrap();
    assert_eq!(inst.status(&c, "node-b", T).await.unwrap(), PowerState::Off, "exit 2 = off");
    let recorded = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = recorded.split("--\n").filter(|s| !s.is_empty()).collect();
    // status, off, status (verify), status
    assert_eq!(calls.len(), 4, "{recorded}");
    assert!(calls[0].lines().any(|l| l == "action=status"), "{recorded}");
    let off = calls[1];
    for line in ["action=off", "plug=node-b", "ip=10.0.0.5", "username=admin", "password=s3cret"] {
        assert!(off.lines().any(|l| l == line), "missing `{line}` in {off}");
    }
    assert!(!off.contains("command=") && !off.contains("verify_timeout_ms="), "the agent's own parameters are not passed on: {off}");
    assert!(calls[2].lines().any(|l| l == "action=status"), "off is verified with status");

    // target_map: the device knows node-c as plug 7.
    let mapped = params(&plugin, &[("command", &agent), ("target_map", "node-c:7;node-d:8")]);
    inst.fence(&mapped, "node-c", T).await.unwrap();
    assert!(std::fs::read_to_string(&log).unwrap().contains("action=off\nplug=7\n"));
    assert_eq!(std::fs::read_to_string(dir.path().join("state-7")).unwrap().trim(), "off");
    let err = inst.fence(&mapped, "node-x", T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::InvalidConfig(m)) if m.contains("node-x")), "{err}");

    // The device fails: fence fails with the agent's message, and the node is not off.
    std::fs::write(dir.path().join("fail"), "").unwrap();
    let err = inst.fence(&c, "node-e", T).await.unwrap_err();
    assert!(
        matches!(err.agent_failure(), Some(AgentFailure::Failed(m)) if m.contains("exit 1") && m.contains("Unable to connect")),
        "{err}"
    );
    assert_eq!(inst.status(&c, "node-e", T).await.unwrap(), PowerState::On);
    std::fs::remove_file(dir.path().join("fail")).unwrap();

    // off "succeeds" but the node stays on: not confirmed, so fence fails.
    std::fs::write(dir.path().join("stuck"), "").unwrap();
    let err = inst.fence(&c, "node-f", T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::Failed(m)) if m.contains("not confirmed off")), "{err}");
    std::fs::remove_file(dir.path().join("stuck")).unwrap();

    // A status the agent cannot determine (exit 1) is an error, not a guess.
    std::fs::write(dir.path().join("status-broken"), "").unwrap();
    let err = inst.status(&c, "node-b", T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::Failed(m)) if m.contains("exit 1")), "{err}");

    // Not granted: access denied.
    let mut denied = plugin.instance("stonith", caps(""), Limits::default());
    let err = denied.fence(&c, "node-b", T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::AccessDenied(_))), "{err}");
}

#[tokio::test]
async fn fence_exec_runs_a_command_with_argument_templates() {
    let dir = tempfile::tempdir().unwrap();
    let tool = write_script(&dir.path().join("ipmitool"), FAKE_IPMITOOL);
    let plugin = load(&host(), &built_plugin("fence-exec")).await;
    let granted = caps(&format!(
        r#"exec = [{{ program = "{tool}", args = ["-H", "*-ipmi", "-E", "chassis", "power", "*"] }}]
env = ["IPMI_PASSWORD"]"#
    ));
    let mut inst = plugin.instance("ipmi", granted, Limits::default());
    let base = [
        ("command", tool.as_str()),
        ("style", "args"),
        ("off_args", "-H {target}-ipmi -E chassis power off"),
        ("status_args", "-H {target}-ipmi -E chassis power status"),
        ("status_on_text", "is on"),
        ("status_off_text", "is off"),
        ("IPMI_PASSWORD", "s3cret"),
    ];
    let c = params(&plugin, &base);
    inst.validate(&c, T).await.unwrap();
    assert_eq!(inst.status(&c, "node-b", T).await.unwrap(), PowerState::On);
    inst.fence(&c, "node-b", T).await.unwrap();
    assert_eq!(inst.status(&c, "node-b", T).await.unwrap(), PowerState::Off);
    let log = std::fs::read_to_string(dir.path().join("ipmi-log")).unwrap();
    assert!(log.contains("-H node-b-ipmi -E chassis power off pw=s3cret"), "{log}");

    // A wrong password from the environment: the tool fails, and so does fence.
    let mut wrong = base.to_vec();
    wrong.retain(|(k, _)| *k != "IPMI_PASSWORD");
    wrong.push(("IPMI_PASSWORD", "nope"));
    let err = inst.fence(&params(&plugin, &wrong), "node-c", T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::Failed(m)) if m.contains("RMCP+")), "{err}");

    // args style without status_args cannot verify: a config error unless verify_off=false.
    let mut no_status = base.to_vec();
    no_status.retain(|(k, _)| *k != "status_args");
    let err = inst.validate(&params(&plugin, &no_status), T).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::InvalidConfig(m)) if m.contains("status_args")), "{err}");
}
