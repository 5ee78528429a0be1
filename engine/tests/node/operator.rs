//! The operator's side of a node: alerts, who gave an operator command, a read-only status
//! group, and `status --watch` / `events --follow` living through a daemon restart.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::node::*;

fn group(resources: &str) -> String {
    format!("\n[[groups]]\nname = \"app\"\nresources = [{resources}]\nmax_restarts = 3\n")
}

/// An alert program that appends one line per event to `out`.
fn alert_script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}

#[test]
fn alerts_run_their_program_with_the_event_fields() {
    let mut n = TestNode::new(|d| {
        let all = alert_script(
            d,
            "all.sh",
            &format!(
                "echo \"$WARDEN_ALERT_SEQ|$WARDEN_ALERT_KIND|$WARDEN_ALERT_SUBJECT|$WARDEN_ALERT_ACTION|$WARDEN_ALERT_RESULT|$WARDEN_ALERT_NODE|$CRM_alert_kind|$CRM_alert_rsc|$CRM_alert_task\" >> {}",
                d.join("all.out").display()
            ),
        );
        let nodes =
            alert_script(d, "nodes.sh", &format!("echo \"$WARDEN_ALERT_KIND $WARDEN_ALERT_MESSAGE\" >> {}", d.join("nodes.out").display()));
        // A hanging alert program is killed at its timeout and delays only its own alerts.
        let hang = alert_script(d, "hang.sh", "sleep 1000");
        format!(
            "{}{}\n[[alerts]]\nprogram = \"{}\"\n\n[[alerts]]\nname = \"node-events\"\nprogram = \"{}\"\nkinds = [\"node\"]\n\n[[alerts]]\nprogram = \"{}\"\ntimeout = \"1s\"\n",
            pid_resource(d, "svc", "300ms"),
            group("\"svc\""),
            all.display(),
            nodes.display(),
            hang.display()
        )
    });
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let all = n.dir.path().join("all.out");
    assert!(
        n.wait(LONG, |_| lines(&all).iter().any(|l| l.contains("|action|svc|start|ok|n1|resource|svc|start"))),
        "{:?}\n{}",
        lines(&all),
        n.log()
    );
    n.kill_service("svc");
    assert!(n.wait(LONG, |_| lines(&all).iter().any(|l| l.contains("|action|svc|recover|ok|"))), "{:?}", lines(&all));
    // In order, each event once.
    let seqs: Vec<u64> = lines(&all).iter().map(|l| l.split('|').next().unwrap().parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The node-only alert saw node events and nothing else.
    let nodes = n.dir.path().join("nodes.out");
    assert!(n.wait(LONG, |_| !lines(&nodes).is_empty()));
    assert!(lines(&nodes).iter().all(|l| l.starts_with("node ")), "{:?}", lines(&nodes));
    // SIGTERM: the last events (the stops, "node stopped") are still delivered.
    n.signal("-TERM");
    n.wait_exit(LONG).unwrap();
    assert!(lines(&all).iter().any(|l| l.contains("|action|svc|stop|ok|")), "{:?}", lines(&all));
    assert!(lines(&nodes).iter().any(|l| l.contains("node stopped")), "{:?}", lines(&nodes));
    assert!(n.log().contains("alert program failed"), "the hung alert is reported:\n{}", n.log());
}

#[test]
fn a_bad_alert_is_refused_at_load_and_named_by_node_check() {
    let n = TestNode::new(|d| {
        format!("{}{}\n[[alerts]]\nprogram = \"relative/alert.sh\"\nkinds = [\"nodes\"]\n", pid_resource(d, "svc", "1s"), group("\"svc\""))
    });
    let o = n.run_refused(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("alert program `relative/alert.sh` is not an absolute path"), "{err}");
    assert!(err.contains("unknown event kind `nodes`"), "{err}");
    let n = TestNode::new(|d| {
        format!("{}{}\n[[alerts]]\nprogram = \"/nonexistent/alert.sh\"\n", pid_resource(d, "svc", "1s"), group("\"svc\""))
    });
    let o = Command::new(warden_bin()).args(["node", "check", "--node", "n1", "--config"]).arg(&n.config).output().unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!o.status.success() && out.contains("alert `alert.sh`: /nonexistent/alert.sh"), "{out}");
}

/// Run the CLI as uid 65534 with primary group `gid` and no other groups.
fn cli_as(n: &TestNode, gid: u32, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups", warden_bin()])
        .args(args)
        .env("WARDEN_SOCKET", &n.socket)
        .output()
        .unwrap()
}

#[test]
fn a_status_group_reads_status_and_events_but_gives_no_commands() {
    let mut n = TestNode::new(|d| format!("{}{}\n[daemon]\nstatus_group = \"4242\"\n", pid_resource(d, "svc", "1s"), group("\"svc\"")));
    // The test directory holds the socket: let others through it.
    std::fs::set_permissions(n.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());

    let o = cli_as(&n, 4242, &["status"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("STARTED"));
    let o = cli_as(&n, 4242, &["events"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("start"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli_as(&n, 4242, &["group", "stop", "app"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("operator commands and config details need root"), "{err}");
    assert_eq!(n.group_state("app"), "started");
    for secret in [&["config", "show"][..], &["resource", "show", "svc"][..]] {
        let o = cli_as(&n, 4242, secret);
        assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("config details need root"), "{secret:?}");
    }
    // Not in the group: nothing at all (the socket's mode refuses the connection).
    let o = cli_as(&n, 4243, &["status"]);
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(!o.status.success() && err.contains("permission denied"), "{err}");

    // Root's commands say who gave them.
    let o = n.cli(&["group", "stop", "app", "--wait"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = n.events();
    let op = ev.iter().find(|e| e["kind"] == "operator").expect("operator event");
    assert!(op["message"].as_str().unwrap().ends_with("(by root, uid 0)"), "{op}");
}

#[test]
fn events_follow_and_status_watch_outlive_a_daemon_restart() {
    let mut n = TestNode::new(|d| format!("{}{}", pid_resource(d, "svc", "1s"), group("\"svc\"")));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let mut follow = Command::new(warden_bin())
        .args(["events", "--follow", "--json"])
        .env("WARDEN_SOCKET", &n.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut watch = Command::new(warden_bin())
        .args(["status", "--watch"])
        .env("WARDEN_SOCKET", &n.socket)
        .env("COLUMNS", "40")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // What --watch printed so far.
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let (screen, out) = (screen.clone(), watch.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let mut s = screen.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
    }
    let renders = |screen: &std::sync::Mutex<String>| screen.lock().unwrap().matches("Cluster t").count();
    assert!(n.wait(LONG, |_| renders(&screen) > 0), "--watch shows the status");
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let _ = tx.send(v["seq"].as_u64().unwrap());
        }
    });
    let mut seen = Vec::new();
    let mut drain = |until: &dyn Fn(&[u64]) -> bool| {
        let deadline = std::time::Instant::now() + LONG;
        while !until(&seen) && std::time::Instant::now() < deadline {
            if let Ok(s) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.push(s);
            }
        }
        seen.clone()
    };
    let before = drain(&|s| !s.is_empty());
    let last_before = *before.last().unwrap();

    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let renders_before = renders(&screen);
    assert!(n.wait(LONG, |_| renders(&screen) > renders_before + 1), "--watch shows the restarted node");
    let o = n.cli(&["group", "stop", "app", "--wait"]);
    assert!(o.status.success());
    let stop_seq = n.events().iter().filter(|e| e["kind"] == "operator").map(|e| e["seq"].as_u64().unwrap()).max().unwrap();
    let after = drain(&|s| s.contains(&stop_seq));
    assert!(after.contains(&stop_seq), "events --follow reconnected and showed the new events: {after:?}");
    let mut sorted = after.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), after.len(), "no event shown twice: {after:?}");
    assert!(after.iter().any(|s| *s > last_before));
    assert!(follow.try_wait().unwrap().is_none(), "--follow is still running");
    assert!(watch.try_wait().unwrap().is_none(), "--watch is still running after the restart");
    let _ = follow.kill();
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = follow.wait();
    let text = screen.lock().unwrap().clone();
    // Every line fits the 40 columns it was given.
    assert!(text.lines().all(|l| l.replace("\x1b[2J\x1b[H", "").chars().count() <= 40), "{text}");
}

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn resource_show_config_show_and_status_details() {
    let mut n = TestNode::new(|d| {
        // A LifeKeeper-style generic resource whose quickCheck overruns its own limit: degraded.
        let lk = d.join("lk");
        std::fs::create_dir(&lk).unwrap();
        for (name, body) in [("restore", "exit 0"), ("remove", "exit 0"), ("quickCheck", "sleep 5")] {
            std::fs::write(lk.join(name), format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(lk.join(name), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        format!(
            r#"{chain}
{generic}

[[resources]]
name = "lk"
plugin = "generic"
params = {{ style = "lifekeeper", restore = "{lk}/restore", remove = "{lk}/remove", quickcheck = "{lk}/quickCheck", quickcheck_timeout_ms = "200", watch = "none" }}
grants = {{ exec = [{{ program = "{lk}/*" }}], read = ["{lk}/"], env = ["LK*"] }}
monitor_interval = "500ms"

[[groups]]
name = "lkg"
resources = ["lk"]

[daemon]
metrics_addr = "127.0.0.1:0"
"#,
            chain = chain3(d, 3),
            generic = generic_plugin(),
            lk = lk.display()
        )
    });
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started" && n.group_state("lkg") == "started"), "{}", n.log());

    let b = json(&n.cli(&["resource", "show", "b", "--json"]));
    assert_eq!(b["group"], "app");
    assert_eq!(b["plugin"], "example-rust");
    assert_eq!(b["wit"], "warden:agent@0.2.0");
    assert_eq!(b["depends_on"], serde_json::json!(["a"]));
    assert_eq!(b["needed_by"], serde_json::json!(["c"]));
    assert_eq!(b["monitor_interval_ms"], 300);
    assert_eq!(b["params"]["stop_grace_ms"], "1000");
    assert_eq!(b["timeouts_ms"]["monitor"], 20000, "the agent's default where the config sets none");
    assert_eq!(b["max_restarts"], 3);
    assert!(b["grants"]["exec"].as_array().unwrap().len() == 2, "{b}");
    let text = String::from_utf8_lossy(&n.cli(&["resource", "show", "b"]).stdout).to_string();
    assert!(text.contains("depends on:    a") && text.contains("needed by:     c") && text.contains("stop_grace_ms = \"1000\""), "{text}");
    let o = n.cli(&["resource", "show", "nope"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no resource named `nope`"));

    let cfg = json(&n.cli(&["config", "show", "--json"]));
    assert_eq!(cfg["path"], n.config.display().to_string());
    assert_eq!(cfg["text"], std::fs::read_to_string(&n.config).unwrap());

    // Failures with their limit and time; the dependency tree; degraded as degraded.
    n.kill_service("b");
    assert!(n.wait(LONG, |n| n.resource("b")["restarts"] == 1 && n.group_state("app") == "started"), "{}", n.log());
    assert!(n.wait(LONG, |n| n.resource("lk")["last_monitor"]["result"] == "degraded"), "{}", n.log());
    let st = String::from_utf8_lossy(&n.cli(&["status"]).stdout).to_string();
    let b_line = st.lines().find(|l| l.trim_start().starts_with("b ")).unwrap();
    assert!(b_line.ends_with("1/3 in 10m"), "{b_line}");
    assert!(st.contains("last failure (20"), "the failure's time is shown:\n{st}");
    assert!(st.contains("c\n") && st.contains("└─ b") && st.contains("   └─ a"), "the dependency tree, top-down:\n{st}");
    assert!(st.contains("degraded@n1") && st.contains("DEGRADED:"), "{st}");
    let body = n.metrics();
    assert!(body.contains("warden_resource_state{resource=\"lk\",state=\"degraded\"} 1"), "{body}");
    // The kill of b came through its process watch.
    assert!(body.contains("warden_watch_exits_total{resource=\"b\"} 1"), "{body}");
}

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn resource_stop_start_restart_manage_and_maintenance() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());

    // Stop b: c (which needs it) goes first, a keeps running; it stays stopped.
    let out = ok(n.cli(&["resource", "stop", "b", "--wait"]));
    assert!(out.contains("resource `b` stopped"), "{out}");
    assert!(n.alive("a") && !n.alive("b") && !n.alive("c"));
    let acts = n.actions();
    let pos = |r: &str, a: &str| acts.iter().rposition(|(s, x, _)| s == r && x == a).unwrap();
    assert!(pos("c", "stop") < pos("b", "stop"), "top-down: {acts:?}");
    let st = ok(n.cli(&["status"]));
    assert!(st.contains("stopped by the operator") && st.contains("held stopped"), "{st}");
    assert_eq!(n.group_state("app"), "started");
    // Survives a daemon restart: a decision, persisted.
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    assert!(!n.alive("b") && !n.alive("c"), "still stopped after the restart");
    let out = ok(n.cli(&["resource", "start", "b", "--wait"]));
    assert!(out.contains("resource `b` running on n1"), "{out}");
    assert!(n.wait(LONG, |n| n.alive("c")), "c comes back after b");

    // Restart: a new process, the same placement.
    let old = n.daemon_pid("b").unwrap();
    let out = ok(n.cli(&["resource", "restart", "b"]));
    assert!(out.contains("stopped") && out.contains("running on n1"), "{out}");
    assert!(n.wait(LONG, |n| n.alive("b") && n.alive("c") && n.daemon_pid("b") != Some(old)));

    // Unmanage: a kill is reported, not recovered; manage probes and recovers.
    ok(n.cli(&["resource", "unmanage", "a"]));
    let o = n.cli(&["resource", "stop", "a"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("is unmanaged"), "{}", String::from_utf8_lossy(&o.stderr));
    let pid = n.daemon_pid("a").unwrap();
    n.kill_service("a");
    assert!(
        n.wait(LONG, |n| n.resource("a")["last_monitor"]["result"] == "stopped" || n.resource("a")["last_monitor"]["result"] == "failed")
    );
    assert!(!n.alive("a") && n.daemon_pid("a") == Some(pid), "unmanaged: not acted on");
    ok(n.cli(&["resource", "manage", "a"]));
    assert!(n.wait(LONG, |n| n.alive("a") && n.group_state("app") == "started"), "{}", n.log());

    // Maintenance: nothing is acted on, not even at SIGTERM; the next start adopts.
    ok(n.cli(&["node", "maintenance", "on", "n1"]));
    assert!(n.wait(LONG, |n| n.group_state("app") == "maintenance"));
    let st = ok(n.cli(&["status"]));
    assert!(st.contains("MAINTENANCE"), "{st}");
    let o = n.cli(&["group", "stop", "app", "--wait", "--timeout", "2"]);
    assert!(!o.status.success(), "a group stop is not carried out in maintenance");
    assert!(String::from_utf8_lossy(&o.stdout).contains("carried out when its maintenance ends"), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(n.alive("a") && n.alive("b") && n.alive("c"));
    n.signal("-TERM");
    n.wait_exit(LONG).unwrap();
    assert!(n.alive("a") && n.alive("b") && n.alive("c"), "maintenance: SIGTERM leaves them running");
    assert!(n.events().iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("in maintenance, so its resources were left"))));
    n.start(&[]);
    ok(n.cli(&["node", "maintenance", "off", "n1"]));
    // The stop asked for during maintenance is carried out now.
    assert!(n.wait(LONG, |n| n.group_state("app") == "stopped"), "{}", n.log());
    assert!(!n.alive("a") && !n.alive("b") && !n.alive("c"));
}

#[test]
fn a_waiting_group_says_why_in_status() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    ok(n.cli(&["node", "standby", "n1"]));
    assert!(n.wait(LONG, |n| n.group_state("app") == "waiting"), "{}", n.log());
    let st = ok(n.cli(&["status"]));
    assert!(st.contains("waiting: n1: in standby"), "{st}");
}
