//! Process watches (warden:agent@0.2.0 `host.watch`): a death is seen at once, not at the next
//! monitor. Every resource here is monitored once an hour, so a recovery within the tests'
//! bound can only come from the watch (these tests fail with the watch turned off); speed
//! itself is measured by the benchmark, not here.

use crate::node::*;

fn kinds(n: &TestNode, resource: &str, kind: &str) -> usize {
    n.events().iter().filter(|e| e["kind"] == kind && e["subject"] == resource).count()
}

/// A legacy (warden:agent@0.1.0) pid-file resource, as TOML, with its plugin entry.
fn legacy_resource(dir: &std::path::Path, name: &str, interval: &str) -> String {
    let pid = dir.join(format!("{name}.pid"));
    let script = dir.join(format!("{name}-start.sh"));
    std::fs::write(&script, format!("#!/bin/sh\nsetsid sleep 100000 </dev/null >/dev/null 2>&1 &\necho $! > {}\n", pid.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        r#"
[[plugins]]
name = "legacy-v0-1"
path = "{plugin}"

[[resources]]
name = "{name}"
plugin = "legacy-v0-1"
params = {{ pidfile = "{pid}", start = "{script}" }}
grants = {{ exec = [{{ program = "{script}" }}, {{ program = "/bin/kill", args = ["-*", "*"] }}], read = ["{pid}", "/proc/*/stat", "{script}"] }}
monitor_interval = "{interval}"
"#,
        plugin = root().join("target/plugins/legacy-v0-1.wasm").display(),
        pid = pid.display(),
        script = script.display(),
    )
}

/// Kill `svc`'s daemon and wait until a new one runs after one local recovery; the old pid.
fn kill_and_see_it_recovered(n: &TestNode, why: &str) -> i32 {
    let old = n.daemon_pid("svc").unwrap();
    n.kill_service("svc");
    assert!(
        n.wait(LONG, |n| n.daemon_pid("svc") != Some(old) && n.alive("svc") && n.resource("svc")["restarts"] == 1),
        "{why}:\n{}",
        n.log()
    );
    old
}

fn one_group(resources: &str) -> String {
    format!("\n[[groups]]\nname = \"app\"\nresources = [{resources}]\nmax_restarts = 3\n")
}

#[test]
fn a_watched_process_that_dies_is_recovered_without_waiting_for_the_monitor() {
    let mut n = TestNode::new(|d| format!("{}{}", pid_resource(d, "svc", "1h"), one_group("\"svc\"")));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let old = kill_and_see_it_recovered(&n, "a death of a watched process must bring the monitor forward (interval 1h)");
    let watch: Vec<_> = n.events().into_iter().filter(|e| e["kind"] == "watch").collect();
    assert_eq!(watch.len(), 1, "{watch:?}");
    let msg = watch[0]["message"].as_str().unwrap();
    // The name is read when the watch begins (`sleep`, or `setsid` if that was before its exec).
    assert!(msg.starts_with(&format!("process {old} (")) && msg.ends_with("exited; monitoring now"), "{msg}");
}

#[test]
fn a_daemon_that_forks_and_exits_at_start_is_not_reported_dead() {
    // The start program returns at once; a launcher in the background writes the final daemon's
    // pid and lingers 1 s before it exits (after the start has returned and the watch began).
    let mut n = TestNode::new(|d| {
        let gone = d.join("launcher-gone");
        let body = format!(
            "sh -c 'setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $! > \"$1\"; sleep 1; touch {gone}' launcher \"$1\" </dev/null >/dev/null 2>&1 &\n",
            gone = gone.display()
        );
        format!("{}{}", script_resource(d, "svc", &body, "monitor_interval = \"1h\""), one_group("\"svc\""))
    });
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    assert!(n.wait(LONG, |n| n.dir.path().join("launcher-gone").exists()));
    // The exit of the launcher is no failure: the watch names the final process only.
    assert!(!n.wait(std::time::Duration::from_millis(500), |n| kinds(n, "svc", "watch") > 0), "{:?}", n.events());
    assert_eq!(n.resource("svc")["restarts"], 0);
    assert!(n.alive("svc"));
    // The final daemon is watched.
    let old = n.daemon_pid("svc").unwrap();
    n.kill_service("svc");
    assert!(n.wait(LONG, |n| n.daemon_pid("svc") != Some(old) && n.alive("svc") && n.resource("svc")["restarts"] == 1), "{}", n.log());
}

#[test]
fn watches_are_re_established_after_the_daemon_restarts() {
    let mut n = TestNode::new(|d| format!("{}{}", pid_resource(d, "svc", "1h"), one_group("\"svc\"")));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    assert!(n.alive("svc"));
    n.start(&[]);
    // The probe (a monitor) adopts the running service and names its process again.
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    kill_and_see_it_recovered(&n, "the watch must be back after the restart");
    assert_eq!(kinds(&n, "svc", "watch"), 1);
}

#[test]
fn a_stop_does_not_count_as_a_death() {
    let mut n = TestNode::new(|d| format!("{}{}", pid_resource(d, "svc", "1h"), one_group("\"svc\"")));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let o = n.cli(&["group", "stop", "app", "--wait"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!n.alive("svc"));
    let o = n.cli(&["group", "start", "app", "--wait"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(kinds(&n, "svc", "watch"), 0, "{:?}", n.events());
    assert_eq!(n.resource("svc")["restarts"], 0);
}

#[test]
fn a_plugin_built_for_0_1_0_runs_unchanged_in_a_node() {
    let mut n = TestNode::new(|d| format!("{}{}", legacy_resource(d, "old", "300ms"), one_group("\"old\"")));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    assert!(n.alive("old"));
    let old = n.daemon_pid("old").unwrap();
    n.kill_service("old");
    // No watch in 0.1.0: the interval monitor finds it, and recovery works as before.
    assert!(n.wait(LONG, |n| n.daemon_pid("old") != Some(old) && n.alive("old") && n.resource("old")["restarts"] == 1), "{}", n.log());
    assert_eq!(kinds(&n, "old", "watch"), 0);
    n.signal("-TERM");
    n.wait_exit(LONG).unwrap();
    assert!(!n.alive("old"), "SIGTERM stops the 0.1.0 agent's resource");
}

#[test]
fn a_daemon_that_dies_right_after_its_start_is_seen() {
    // The first start's daemon dies 50 ms after it wrote its pid file (its exit can reach the
    // node before the start's result does); the next one lives.
    let mut n = TestNode::new(|d| {
        let once = d.join("died-once");
        let body = format!(
            "if [ -e {once} ]; then setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $! > \"$1\"; \
             else touch {once}; setsid sh -c 'sleep 0.05' </dev/null >/dev/null 2>&1 & echo $! > \"$1\"; fi\n",
            once = once.display()
        );
        format!("{}{}", script_resource(d, "svc", &body, "monitor_interval = \"1h\""), one_group("\"svc\""))
    });
    n.start(&[]);
    assert!(
        n.wait(LONG, |n| n.resource("svc")["restarts"] == 1 && n.alive("svc") && n.group_state("app") == "started"),
        "a death right after the start must be seen through the watch (interval 1h):\n{}",
        n.log()
    );
}
