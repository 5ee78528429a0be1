//! Node tier: the real `warden node run` on a temporary config, driven through the CLI.

use crate::node;
use std::time::Duration;

use node::*;

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
    let o = n.cli(&["resource", "cleanup", "--all"]);
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("accepted: clean up resource `b`"), "{o:?}");
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let o = n.cli(&["resource", "cleanup", "--all"]);
    assert!(n.wait(LONG, |n| n.resource("b")["restarts"] == 0));
    let _ = o;
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
    // Port 0: the daemon picks a free port and shows it in status (no port race between tests).
    let mut n = TestNode::new(|d| {
        format!(
            "{}\n[[groups]]\nname = \"app\"\nresources = [\"a\"]\n\n[daemon]\nmetrics_addr = \"127.0.0.1:0\"\n",
            pid_resource(d, "a", "300ms")
        )
    });
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"));
    let body = n.metrics();
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

/// `node check` calls every resource's `validate` with its real parameters and grants, and
/// names what failed (here: a LifeKeeper restore script that does not exist on this node).
#[test]
fn node_check_runs_every_validate() {
    let n = TestNode::new(|d| {
        let generic = generic_plugin();
        format!(
            r#"
{generic}

[[resources]]
name = "lk"
plugin = "generic"
params = {{ style = "lifekeeper", restore = "{d}/no-such-restore", remove = "/bin/true" }}
grants = {{ read = ["/**"], exec = [{{ program = "/bin/true" }}], env = ["LK*"] }}

[[groups]]
name = "app"
resources = ["lk"]
"#,
            generic = generic,
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

/// The agents' typed errors are honoured (wit/agent.wit): `invalid-config` blocks the resource
/// with a clear status and is not retried, `not-installed` makes the node ineligible; neither
/// leads to "needs fencing" when nothing could have started, and an unrelated group runs on.
#[test]
fn invalid_config_blocks_and_not_installed_makes_the_node_ineligible() {
    let mut n = TestNode::new(|d| {
        let generic = generic_plugin();
        format!(
            r#"
{generic}
{a}
[[resources]]
name = "typo"
plugin = "generic"
params = {{ style = "lifekeepr", restore = "/bin/true", remove = "/bin/true" }}
grants = {{ read = ["/**"], exec = [{{ program = "/bin/true" }}], env = ["LK*"] }}
monitor_interval = "300ms"

[[resources]]
name = "absent"
plugin = "generic"
params = {{ style = "lifekeeper", restore = "{d}/restore", remove = "{d}/remove", quickcheck = "{d}/no-such-quickcheck" }}
grants = {{ read = ["/**"], exec = [{{ program = "{d}/*" }}], env = ["LK*"] }}
monitor_interval = "300ms"

[[groups]]
name = "good"
resources = ["a"]

[[groups]]
name = "bad"
resources = ["typo"]

[[groups]]
name = "missing"
resources = ["absent"]
"#,
            generic = generic,
            a = pid_resource(d, "a", "300ms"),
            d = d.display()
        )
    });
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("good") == "started"), "{}", n.log());
    assert!(n.wait(LONG, |n| n.resource("typo")["blocked"].as_str().is_some_and(|b| b.contains("lifekeepr"))), "{:?}", n.status());
    assert_eq!(n.group_state("bad"), "blocked");
    assert!(
        n.wait(LONG, |n| n.resource("absent")["ineligible"].as_array().is_some_and(|v| !v.is_empty())),
        "not-installed makes n1 ineligible: {:?}",
        n.resource("absent")
    );
    let st = n.status().unwrap();
    let n1 = st["nodes"].as_array().unwrap().iter().find(|x| x["name"] == "n1").unwrap().clone();
    assert_eq!(n1["needs_fence"], false, "nothing could have started: no fencing\n{st}");
    let text = String::from_utf8_lossy(&n.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("BLOCKED (invalid config") && text.contains("cannot run on n1"), "{text}");
    assert!(!text.contains("NEEDS FENCING"), "{text}");
    // Not retried: no start of the blocked resource, however long we wait.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!n.actions().iter().any(|(s, a, _)| s == "typo" && a == "start"), "{:?}", n.actions());
    assert!(n.alive("a"), "the unrelated group runs on");
}

/// Restart counters are kept on the boot clock: a daemon restart in the same boot keeps them;
/// a state written in another boot has its times dropped (they mean nothing on this clock).
#[test]
fn restart_counts_survive_a_daemon_restart_and_not_a_reboot() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    n.kill_service("b");
    assert!(n.wait(LONG, |n| n.resource("b")["restarts"] == 1 && n.alive("b")), "{}", n.log());
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    assert_eq!(n.resource("b")["restarts"], 1, "same boot: the count is kept");
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    let path = n.state.join("state.json");
    let mut st: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(!st["boot_id"].as_str().unwrap().is_empty());
    st["boot_id"] = "another-boot".into();
    std::fs::write(&path, serde_json::to_vec(&st).unwrap()).unwrap();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    assert_eq!(n.resource("b")["restarts"], 0, "another boot: its times are dropped");
}

/// `--wait` says what happened and exits non-zero when the action failed; answers are words,
/// not JSON; `group start` on a FAILED group clears the failure, as its help says.
#[test]
fn group_commands_wait_and_say_what_happened() {
    let mut n = TestNode::new(|d| {
        format!(
            "{}{}\n[[groups]]\nname = \"other\"\nresources = [\"broken\"]\nautostart = false\n",
            chain3(d, 3),
            script_resource(d, "broken", "echo 'cannot bind port 8080' >&2\nexit 3\n", "")
        )
    });
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let o = n.cli(&["group", "stop", "app", "--wait"]);
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("accepted: stop group `app`") && out.contains("group `app` stopped"), "{out}");
    assert!(!out.contains('{'), "no raw JSON: {out}");
    assert!(!n.alive("a"));
    let o = n.cli(&["group", "start", "app", "--wait"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("group `app` started on n1"), "{o:?}");
    let o = n.cli(&["group", "start", "other", "--wait", "--timeout", "60"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("group `other` is FAILED") && err.contains("broken"), "{err}");
    // Starting the FAILED group again clears the failure and tries again (and fails again).
    let o = n.cli(&["group", "start", "other"]);
    assert!(o.status.success(), "{o:?}");
    assert!(n.wait(LONG, |n| n.events().iter().any(|e| e["message"].as_str().unwrap_or("").contains("failures cleared by `group start`"))));
}

/// SIGHUP never kills the daemon silently: it says it ignores it and keeps serving.
#[test]
fn sighup_is_refused_with_a_log_line() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    n.signal("-HUP");
    assert!(n.wait(LONG, |n| n.log().contains("SIGHUP ignored")), "{}", n.log());
    assert_eq!(n.group_state("app"), "started");
    assert!(n.alive("a"));
}

/// `events` filters by resource, by group and by time, shows sequence numbers, and lists
/// actions in the order they started.
#[test]
fn events_filters_and_order() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let text = |args: &[&str]| String::from_utf8_lossy(&n.cli(args).stdout).into_owned();
    let b = text(&["events", "--resource", "b"]);
    assert!(b.lines().count() >= 2 && b.lines().all(|l| l.contains(" b ")), "{b}");
    let g = text(&["events", "--group", "app"]);
    assert!(g.contains(" a ") && g.contains(" b ") && g.contains(" c ") && g.contains(" app "), "{g}");
    assert!(text(&["events", "--since", "1h"]).lines().count() >= 6);
    let all = text(&["events"]);
    let first = all.lines().next().unwrap();
    assert!(first.trim_start().starts_with('1'), "sequence numbers are shown: {first}");
    let o = n.cli(&["events", "--since", "yesterday"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--since yesterday"), "{o:?}");
}

/// The CLI finds the socket named in the config (`--config`), as the daemon does.
#[test]
fn the_cli_finds_the_socket_named_in_the_config() {
    let mut n = TestNode::new(|d| format!("{}\n[daemon]\ncontrol_socket = \"{}\"\n", chain3(d, 3), d.join("w.sock").display()));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let o = std::process::Command::new(warden_bin())
        .args(["status", "--json", "--config"])
        .arg(&n.config)
        .env_remove("WARDEN_SOCKET")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"cluster\":\"t\""));
}
