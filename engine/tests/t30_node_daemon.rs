//! Node tier: the real `warden node run` on a temporary config, driven through the CLI.

#[path = "support/node.rs"]
mod node;

use std::time::Duration;

use node::*;

const LONG: Duration = Duration::from_secs(60);

fn chain3(dir: &std::path::Path, max_restarts: u32) -> String {
    format!(
        "{}{}{}\n[[groups]]\nname = \"app\"\nresources = [\"a\", \"b\", \"c\"]\nmax_restarts = {max_restarts}\n",
        pid_resource(dir, "a", "300ms"),
        pid_resource(dir, "b", "300ms"),
        pid_resource(dir, "c", "300ms")
    )
}

fn position(actions: &[(String, String, String)], subject: &str, action: &str) -> usize {
    actions
        .iter()
        .position(|(s, a, r)| s == subject && a == action && r == "ok")
        .unwrap_or_else(|| panic!("no successful {action} of {subject} in {actions:?}"))
}

#[test]
fn starts_the_group_bottom_up_and_reports_status() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    for r in ["a", "b", "c"] {
        assert!(n.alive(r), "{r} is not running");
        assert_eq!(n.resource(r)["on"][0], serde_json::json!(["n1", "running"]));
    }
    let acts = n.actions();
    assert!(position(&acts, "a", "start") < position(&acts, "b", "start"));
    assert!(position(&acts, "b", "start") < position(&acts, "c", "start"));
    // Probes came first: nothing started before every resource was probed.
    let first_start = acts.iter().position(|(_, a, _)| a == "start").unwrap();
    assert_eq!(acts[..first_start].iter().filter(|(_, a, _)| a == "probe").count(), 3);
    let text = n.cli(&["status"]);
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(out.contains("STARTED") && out.contains("running@n1"), "{out}");
}

#[test]
fn killed_service_is_recovered_locally() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"));
    let old = n.daemon_pid("b").unwrap();
    n.kill_service("b");
    assert!(n.wait(LONG, |n| n.daemon_pid("b") != Some(old) && n.alive("b") && n.group_state("app") == "started"), "{}", n.log());
    assert_eq!(n.resource("b")["restarts"], 1);
    let acts = n.actions();
    assert!(acts.iter().any(|(s, a, r)| s == "b" && a == "recover" && r == "ok"), "{acts:?}");
    // Only b was touched.
    assert_eq!(acts.iter().filter(|(s, a, _)| s == "a" && a == "start").count(), 1);
}

#[test]
fn restart_limit_exhausted_fails_the_group_and_cleanup_restores_it() {
    let mut n = TestNode::new(|d| chain3(d, 1));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"));
    n.kill_service("b");
    assert!(n.wait(LONG, |n| n.resource("b")["restarts"] == 1 && n.alive("b")), "{}", n.log());
    n.kill_service("b");
    assert!(n.wait(LONG, |n| n.group_state("app") == "failed"), "{}\n{:?}", n.log(), n.status());
    // Failed group: nothing left half-running.
    for r in ["a", "b", "c"] {
        assert!(!n.alive(r), "{r} still runs in a failed group");
    }
    let acts = n.actions();
    let stops: Vec<&String> = acts.iter().filter(|(_, a, r)| a == "stop" && r == "ok").map(|(s, _, _)| s).collect();
    assert_eq!(stops, vec!["c", "b", "a"], "stopped top-down");
    let o = n.cli(&["resource", "cleanup", "b"]);
    assert!(o.status.success(), "{o:?}");
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
}

#[test]
fn sigterm_stops_top_down_and_exits() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"));
    n.signal("-TERM");
    let status = n.wait_exit(LONG).expect("the node exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", n.log());
    let acts = n.actions();
    let stops: Vec<&String> = acts.iter().filter(|(_, a, _)| a == "stop").map(|(s, _, _)| s).collect();
    assert_eq!(stops, vec!["c", "b", "a"]);
    for r in ["a", "b", "c"] {
        assert!(!n.alive(r));
    }
}

#[test]
fn daemon_crash_and_restart_adopts_running_resources() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"));
    let pids: Vec<i32> = ["a", "b", "c"].iter().map(|r| n.daemon_pid(r).unwrap()).collect();
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    for r in ["a", "b", "c"] {
        assert!(n.alive(r), "a daemon crash must leave {r} running");
    }
    let before = n.actions().len();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    std::thread::sleep(Duration::from_secs(1));
    let after: Vec<_> = n.actions().into_iter().skip(before).collect();
    assert!(after.iter().all(|(_, a, _)| a == "probe"), "only probes after the restart, no second copy: {after:?}");
    assert_eq!(after.iter().filter(|(_, _, r)| r == "running").count(), 3);
    let now: Vec<i32> = ["a", "b", "c"].iter().map(|r| n.daemon_pid(r).unwrap()).collect();
    assert_eq!(pids, now);
}

#[test]
fn leave_running_exits_without_stopping() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&["--leave-running"]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"));
    n.signal("-TERM");
    assert!(n.wait_exit(LONG).unwrap().success());
    for r in ["a", "b", "c"] {
        assert!(n.alive(r));
    }
}

#[test]
fn operator_stop_start_and_standby() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"));
    assert!(n.cli(&["group", "stop", "app"]).status.success());
    assert!(n.wait(LONG, |n| n.group_state("app") == "stopped"));
    assert!(!n.alive("a"));
    assert!(n.cli(&["group", "start", "app"]).status.success());
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"));
    assert!(n.cli(&["node", "standby", "n1"]).status.success());
    assert!(n.wait(LONG, |n| n.group_state("app") == "waiting" && !n.alive("c")), "{:?}", n.status());
    assert!(n.cli(&["node", "online", "n1"]).status.success());
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"));
    // Mistakes get a clear error and change nothing.
    let o = n.cli(&["group", "move", "nope", "--to", "n1"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim(), "error: no group named `nope`");
}

#[test]
fn unmanaged_resource_is_monitored_but_never_acted_on() {
    // `a` (unmanaged) sits on top of `b`: b is started, a never is, but a's state is reported.
    let mut n = TestNode::new(|d| {
        format!(
            "{}unmanaged = true\n{}\n[[groups]]\nname = \"app\"\nresources = [\"b\", \"a\"]\n",
            pid_resource(d, "a", "300ms"),
            pid_resource(d, "b", "300ms")
        )
    });
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.alive("b") && n.group_state("app") == "started"), "{}", n.log());
    assert!(!n.alive("a"), "unmanaged resources are never started");
    assert!(n.wait(LONG, |n| n.resource("a")["last_monitor"]["result"] == "stopped"));
    // Started by hand, it is seen running; killed, it is reported, never recovered.
    let daemon = root().join("examples/agents/demo-daemon.sh");
    std::process::Command::new(&daemon).arg(n.dir.path().join("a.pid")).status().unwrap();
    assert!(n.wait(LONG, |n| n.resource("a")["last_monitor"]["result"] == "running"));
    n.kill_service("a");
    assert!(n.wait(LONG, |n| n.resource("a")["last_monitor"]["result"] == "stopped"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(n.actions().iter().all(|(s, a, _)| s != "a" || a == "probe"), "{:?}", n.actions());
    assert!(!n.alive("a"));
}

#[test]
fn events_follow_streams_new_events() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"));
    let mut follow = std::process::Command::new(warden_bin())
        .args(["events", "--follow", "--json"])
        .env("WARDEN_SOCKET", &n.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    n.kill_service("c");
    assert!(n.wait(LONG, |n| n.resource("c")["restarts"] == 1 && n.alive("c")));
    std::thread::sleep(Duration::from_millis(500));
    let _ = follow.kill();
    let out = follow.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.contains("\"subject\":\"c\"") && l.contains("\"action\":\"recover\"")), "{text}");
}

#[test]
fn bad_config_is_refused_with_position() {
    let n = TestNode::new(|_| "[[resources]]\nname = \"x\"\nplugin = \"nope\"\n".into());
    let o = n.run_refused(&[]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cluster.toml:13:10: resource `x` uses unknown plugin `nope`"), "{err}");
}

#[test]
fn corrupt_state_file_is_set_aside_and_nothing_is_lost() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    std::fs::create_dir_all(&n.state).unwrap();
    std::fs::write(n.state.join("state.json"), "{ not json").unwrap();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let aside: Vec<_> = std::fs::read_dir(&n.state)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert!(n.events().iter().any(|e| e["message"].as_str().unwrap_or("").contains("set aside")));
}

#[test]
fn metrics_endpoint_counts_actions() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut n = TestNode::new(|d| {
        format!(
            "{}\n[[groups]]\nname = \"app\"\nresources = [\"a\"]\n\n[daemon]\nmetrics_addr = \"127.0.0.1:{port}\"\n",
            pid_resource(d, "a", "300ms")
        )
    });
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"));
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.contains("warden_agent_actions_total{plugin=\"example-rust\",action=\"start\",result=\"ok\"} 1"), "{body}");
    assert!(body.contains("warden_resource_state{resource=\"a\",state=\"running\"} 1"), "{body}");
}

#[test]
fn a_hung_monitor_delays_only_its_own_resource() {
    // `slow` (unmanaged, its own group) has a monitor that sleeps for a minute; `a` must still be
    // monitored and recovered meanwhile: each resource has its own worker.
    let mut n = TestNode::new(|d| {
        format!(
            "[[plugins]]\nname = \"test-hostile\"\npath = \"{hostile}\"\n\n[[resources]]\nname = \"slow\"\nplugin = \"test-hostile\"\nparams = {{ mode = \"sleep\", ms = \"60000\" }}\nunmanaged = true\nmonitor_interval = \"200ms\"\ntimeouts = {{ monitor = \"90s\" }}\n\n[[groups]]\nname = \"stuck\"\nresources = [\"slow\"]\n{a}\n[[groups]]\nname = \"app\"\nresources = [\"a\"]\n",
            hostile = test_programs_artifacts::HOSTILE,
            a = pid_resource(d, "a", "200ms")
        )
    });
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    n.kill_service("a");
    assert!(n.wait(LONG, |n| n.actions().iter().any(|(s, a, r)| s == "a" && a == "recover" && r == "ok")), "{}", n.log());
    // The slow monitor has not even returned once yet (its probe is still sleeping).
    assert!(n.resource("slow")["last_monitor"].is_null(), "{:?}", n.resource("slow"));
    assert!(n.alive("a"));
}

#[test]
fn a_multi_node_config_runs_only_with_single_node() {
    let mut n = TestNode::new(|d| {
        format!(
            "\n[[nodes]]\nname = \"n2\"\n\n[[nodes]]\nname = \"w\"\nrole = \"witness\"\n{}\n[[groups]]\nname = \"app\"\nresources = [\"a\"]\npriority = [\"n1\", \"n2\"]\n",
            pid_resource(d, "a", "300ms")
        )
    });
    let o = n.run_refused(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("pass --single-node"), "{o:?}");
    n.start(&["--single-node"]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let st = n.status().unwrap();
    let n2 = st["nodes"].as_array().unwrap().iter().find(|x| x["name"] == "n2").unwrap().clone();
    assert_eq!(n2["up"], false);
    assert!(n.events().iter().any(|e| e["message"].as_str().unwrap_or("").contains("--single-node")));
}

/// Processes whose command line is exactly `sleep <marker>`.
fn copies(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            cmd == format!("sleep\0{marker}\0").as_bytes() && !stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .count()
}

/// `kill -9` of the daemon while a slow start runs, then a restart: the orphaned start must not
/// finish a second copy after the new daemon's probe and start (the review's reproduction).
#[test]
fn daemon_killed_during_a_start_never_leaves_two_copies() {
    let marker = format!("77{}", std::process::id());
    let mut n = TestNode::new(|d| {
        let script = d.join("slow-start.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ntouch {began}\nsleep 2\nsetsid sleep {marker} </dev/null >/dev/null 2>&1 &\necho $! > \"$1\"\n",
                began = d.join("start-began").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let pid = d.join("svc.pid");
        format!(
            r#"
[[resources]]
name = "svc"
plugin = "example-rust"
params = {{ pidfile = "{pid}", start = "{script}", start_args = "{pid}", stop_grace_ms = "1000" }}
grants = {{ exec = [{{ program = "{script}" }}, {{ program = "/bin/kill", args = ["-*", "*"] }}], read = ["{pid}", "/proc/*/stat"] }}
monitor_interval = "300ms"

[[groups]]
name = "app"
resources = ["svc"]
"#,
            pid = pid.display(),
            script = script.display()
        )
    });
    n.start(&[]);
    let began = n.dir.path().join("start-began");
    assert!(n.wait(LONG, |_| began.exists()), "the start never began: {}", n.log());
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    // Past the orphaned script's sleep: had it survived, its copy would be up by now.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(copies(&marker), 1, "exactly one copy of the service runs\n{}", n.log());
    assert!(
        n.events().iter().any(|e| e["subject"] == "svc" && e["message"].as_str().unwrap_or("").contains("died during `start`")),
        "the interrupted start is reported: {:?}",
        n.events()
    );
    n.signal("-TERM");
    n.wait_exit(LONG).unwrap();
    assert_eq!(copies(&marker), 0, "SIGTERM stopped it");
}

/// A second daemon is refused on the same state directory (other socket) and on the same
/// socket (other state directory), even while the first is stopped (SIGSTOP) with its socket
/// unresponsive; the first keeps its socket and serves again after SIGCONT.
#[test]
fn one_daemon_per_state_directory_and_socket() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let config = n.config.clone();
    let run = |state: &std::path::Path, socket: &std::path::Path| {
        std::process::Command::new(warden_bin())
            .args(["node", "run", "--node", "n1", "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(state)
            .arg("--socket")
            .arg(socket)
            .output()
            .unwrap()
    };
    let o = run(&n.state, &n.dir.path().join("other.sock"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is locked by another `warden node run` (pid"), "{err}");
    n.signal("-STOP");
    let o = run(&n.dir.path().join("other-state"), &n.socket);
    n.signal("-CONT");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("w.sock.lock is locked by another"), "{err}");
    assert!(n.socket.exists(), "the refused daemon left the first one's socket alone");
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "the first daemon still serves");
}

fn epoch(n: &TestNode, g: &str) -> u64 {
    n.status().and_then(|s| s["groups"].as_array().unwrap().iter().find(|x| x["name"] == g).and_then(|x| x["epoch"].as_u64())).unwrap_or(0)
}

/// An operator command is acknowledged only once its decision is durable. While the state file
/// cannot be written the command gets an error, status says so, and nothing is carried out;
/// once the disk works again the decision goes ahead and survives a restart.
#[test]
fn an_operator_command_is_acknowledged_only_when_durable() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    // A directory where the writer puts its temporary file: every write fails.
    let tmp = n.state.join("state.json.tmp");
    std::fs::create_dir(&tmp).unwrap();
    let o = n.cli(&["group", "stop", "app"]);
    assert!(!o.status.success(), "a command that is not durable is not acknowledged");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not acknowledged") && err.contains("state.json.tmp"), "{err}");
    let st = n.status().unwrap();
    assert!(st["state_error"].as_str().is_some_and(|e| e.contains("state.json.tmp")), "{st}");
    let text = String::from_utf8_lossy(&n.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("STATE NOT DURABLE"), "{text}");
    std::thread::sleep(Duration::from_millis(500));
    for r in ["a", "b", "c"] {
        assert!(n.alive(r), "{r} was stopped on a decision that is not durable");
    }
    std::fs::remove_dir(&tmp).unwrap();
    assert!(n.wait(LONG, |n| n.group_state("app") == "stopped"), "the held stop goes ahead once durable: {}", n.log());
    assert!(n.status().unwrap()["state_error"].is_null());
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    n.start(&[]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(n.group_state("app"), "stopped", "the acknowledged stop survived the restart");
    assert!(!n.alive("a"));
}

/// An empty or damaged state file falls back to the previous generation; with every generation
/// gone, epochs still do not go backwards.
#[test]
fn damaged_state_uses_the_previous_generation_and_epochs_never_go_back() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let o = n.cli(&["group", "move", "app"]);
    let _ = o; // a one-node move restarts in place or is refused; either way the epoch is kept
    let e1 = epoch(&n, "app");
    assert!(e1 > 0);
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    // Empty current file: the previous generation is used.
    std::fs::write(n.state.join("state.json"), b"").unwrap();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    assert!(epoch(&n, "app") >= e1, "epoch went back from {e1} to {}", epoch(&n, "app"));
    assert!(n.events().iter().any(|e| e["message"].as_str().unwrap_or("").contains("set aside")), "{:?}", n.events());
    let e2 = epoch(&n, "app");
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    // Every generation lost: epochs continue from the clock, above what was counted.
    let other = std::fs::read_to_string(n.state.join("state.json")).unwrap().replace("\"node\": \"n1\"", "\"node\": \"other\"");
    assert!(other.contains("\"node\": \"other\""), "{other}");
    for f in ["state.json", "state.json.prev"] {
        let _ = std::fs::remove_file(n.state.join(f));
    }
    std::fs::write(n.state.join("state.json"), other).unwrap();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    assert!(epoch(&n, "app") > e2, "epoch went back from {e2} to {}", epoch(&n, "app"));
    assert!(
        n.events().iter().any(|e| e["message"].as_str().unwrap_or("").contains("state of node `other`")),
        "another node's state is refused: {:?}",
        n.events()
    );
}

/// A bad byte in the event history loses only that line; numbering continues after the highest
/// number on disk.
#[test]
fn a_damaged_history_line_is_skipped_and_numbering_continues() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    let path = n.state.join("events.jsonl");
    let mut bytes = std::fs::read(&path).unwrap();
    let max_before = n.events().iter().filter_map(|e| e["seq"].as_u64()).max().unwrap();
    let lines_before = bytes.iter().filter(|b| **b == b'\n').count();
    // Corrupt one byte in the middle of the second line, and tear the tail.
    let second = bytes.iter().position(|b| *b == b'\n').unwrap() + 5;
    bytes[second] = 0xff;
    bytes.extend_from_slice(b"{\"seq\": 99999, \"torn");
    std::fs::write(&path, &bytes).unwrap();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let events = n.events();
    assert!(events.len() >= lines_before - 1, "the rest of the history is kept");
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    let after: Vec<u64> = seqs.iter().copied().filter(|s| *s > max_before).collect();
    assert!(!after.is_empty() && after.windows(2).all(|w| w[0] < w[1]), "numbering continues after {max_before}: {seqs:?}");
    assert!(!seqs.contains(&99999), "the torn tail was cut");
    let mut uniq = seqs.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), seqs.len(), "no sequence number is reused");
}

/// Hundreds of idle connections and an oversized request cost refused connections, not the
/// daemon's file descriptors: services are still monitored and recovered, and `status`
/// answers again once the idle clients have timed out.
#[test]
fn a_connection_flood_does_not_starve_the_node() {
    use std::io::{Read, Write};
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    // One request line far over the limit gets an error, and the daemon does not hold it.
    let mut big = std::os::unix::net::UnixStream::connect(&n.socket).unwrap();
    let _ = big.write_all(&vec![b'x'; 4 << 20]);
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.contains("request too large"), "{answer}");
    let flood: Vec<_> = (0..400).filter_map(|_| std::os::unix::net::UnixStream::connect(&n.socket).ok()).collect();
    assert!(flood.len() > 64, "connections beyond the cap are accepted and refused, not left in the backlog");
    let old = n.daemon_pid("b").unwrap();
    n.kill_service("b");
    let recovered = || {
        n.events().iter().any(|e| e["subject"] == "b" && e["action"] == "recover" && e["result"] == "ok")
            && n.alive("b")
            && n.daemon_pid("b") != Some(old)
    };
    let start = std::time::Instant::now();
    while !recovered() && start.elapsed() < LONG {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(recovered(), "recovery went on during the flood: {}", n.log());
    assert!(n.wait(LONG, |n| n.status().is_some()), "status answers again once idle clients time out");
    drop(flood);
}

/// `node check` calls every resource's `validate` with its real parameters and grants, and
/// names what failed (here: a LifeKeeper restore script that does not exist on this node).
#[test]
fn node_check_runs_every_validate() {
    let n = TestNode::new(|d| {
        let generic = root().join("target/plugins/generic.wasm");
        format!(
            r#"
[[plugins]]
name = "generic"
path = "{generic}"

[[resources]]
name = "lk"
plugin = "generic"
params = {{ style = "lifekeeper", restore = "{d}/no-such-restore", remove = "/bin/true" }}
grants = {{ read = ["/**"], exec = [{{ program = "/bin/true" }}] }}

[[groups]]
name = "app"
resources = ["lk"]
"#,
            generic = generic.display(),
            d = d.display()
        )
    });
    let cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
    let o = std::process::Command::new(warden_bin())
        .arg("--cache-dir")
        .arg(&cache)
        .args(["node", "check", "--config"])
        .arg(&n.config)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("resource `lk` (plugin `generic`): validate failed") && err.contains("no-such-restore does not exist"), "{err}");
}

/// A daemon stopped (SIGSTOP) for longer than a start's timeout while the start script runs
/// does not judge the start timed out when the script succeeded: time the host was stalled
/// does not count against the action.
#[test]
fn a_stalled_daemon_does_not_turn_a_successful_start_into_a_timeout() {
    let mut n = TestNode::new(|d| {
        let script = d.join("start.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ntouch {began}\nsleep 1\nsetsid sleep 100000 </dev/null >/dev/null 2>&1 &\necho $! > \"$1\"\n",
                began = d.join("start-began").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let pid = d.join("svc.pid");
        format!(
            r#"
[[resources]]
name = "svc"
plugin = "example-rust"
params = {{ pidfile = "{pid}", start = "{script}", start_args = "{pid}", stop_grace_ms = "1000" }}
grants = {{ exec = [{{ program = "{script}" }}, {{ program = "/bin/kill", args = ["-*", "*"] }}], read = ["{pid}", "/proc/*/stat"] }}
monitor_interval = "300ms"
timeouts = {{ start = "3s" }}

[[groups]]
name = "app"
resources = ["svc"]
"#,
            pid = pid.display(),
            script = script.display()
        )
    });
    n.start(&[]);
    let began = n.dir.path().join("start-began");
    assert!(n.wait(LONG, |_| began.exists()), "{}", n.log());
    n.signal("-STOP");
    std::thread::sleep(Duration::from_secs(5));
    n.signal("-CONT");
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let starts: Vec<_> = n.actions().into_iter().filter(|(s, a, _)| s == "svc" && a == "start").collect();
    assert_eq!(starts, vec![("svc".to_string(), "start".to_string(), "ok".to_string())], "{}", n.log());
}
