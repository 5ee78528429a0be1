//! The generic agent (`target/plugins/generic.wasm`) through the real host: LifeKeeper Generic ARK
//! scripts managing a real detached process, Debian's real `ocf:heartbeat:Dummy`, the OCF exit-code
//! table with a small custom agent, and the real `warden` binary.

use crate::{generic, support};
use std::time::{Duration, Instant};

use generic::*;
use support::*;
use warden::plugin::{AgentFailure, CallError, Health, Limits};

const T: Option<Duration> = Some(Duration::from_secs(30));

async fn plugin() -> std::sync::Arc<warden::plugin::Plugin> {
    let p = load(&host(), &built_plugin("generic")).await;
    assert_eq!(p.name(), "generic");
    p
}

fn failure(e: &CallError) -> &AgentFailure {
    e.agent_failure().unwrap_or_else(|| panic!("expected an agent error, got {e}"))
}

// ---------------------------------------------------------------------------------------------
// style = "lifekeeper"
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn lifekeeper_restore_quickcheck_kill_recover_remove() {
    let plugin = plugin().await;
    let app = LkApp::new();
    let mut inst = plugin.instance("app1", app.grants(), Limits::default());
    let c = call_ctx(
        &plugin,
        "app1",
        &[
            ("style", "lifekeeper"),
            ("restore", &app.restore),
            ("remove", &app.remove),
            ("quickcheck", &app.quickcheck),
            ("recover", &app.recover),
            ("tag", "app-tag"),
            ("id", "app-id"),
            ("app_info", "shared info"),
            ("app_info@node-a", "info for node-a"),
        ],
    );

    inst.validate(&c, T).await.unwrap();
    // Nothing runs yet: quickCheck fails (LifeKeeper scripts know only success and failure).
    match inst.monitor(&c, T).await.unwrap() {
        Health::Failed(r) => assert!(r.contains("application not running") && r.contains("exit 1"), "{r}"),
        h => panic!("monitor before restore: {h}"),
    }

    inst.start(&c, T).await.unwrap();
    let pid = app.pid().expect("restore wrote the pid file");
    assert!(alive(pid), "the daemon {pid} runs");
    assert_eq!(app.calls().iter().find(|l| l.starts_with("restore")).unwrap(), "restore -t app-tag -i app-id|info for node-a");
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    assert!(app.calls().iter().any(|l| l == "quickCheck -t app-tag -i app-id|info for node-a"), "{:?}", app.calls());

    // restore on a running application succeeds and starts no second copy (the script's job).
    inst.start(&c, T).await.unwrap();
    assert_eq!(app.pid(), Some(pid));

    // kill -9 behind the agent's back: a zombie until PID 1 reaps it, which counts as dead.
    std::process::Command::new("/bin/kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)).await);
    match inst.monitor(&c, T).await.unwrap() {
        Health::Failed(r) => assert!(r.contains("quickCheck") && r.contains("application not running"), "{r}"),
        h => panic!("monitor after kill -9: {h}"),
    }

    inst.recover(&c, T).await.unwrap();
    assert!(app.calls().iter().any(|l| l == "recover -t app-tag -i app-id|info for node-a"), "{:?}", app.calls());
    let pid2 = app.pid().expect("recover restored the daemon");
    assert_ne!(pid2, pid);
    assert!(alive(pid2));
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);

    inst.stop(&c, T).await.unwrap();
    assert!(!alive(pid2), "remove stopped the daemon");
    assert!(app.pid().is_none(), "remove deleted the pid file");
    assert!(matches!(inst.monitor(&c, T).await.unwrap(), Health::Failed(_)));
    inst.stop(&c, T).await.expect("remove on a stopped application succeeds");
    assert!(live_processes(&app.daemon).is_empty(), "no copy of the daemon left");
}

#[tokio::test]
async fn lifekeeper_scripts_receive_tag_id_and_app_info() {
    let plugin = plugin().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    // A restore that records each argument on its own line, and its environment.
    let restore = write_script(
        &dir.path().join("restore"),
        &format!("#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > {d}/args\nenv > {d}/env\n"),
    );
    let remove = write_script(&dir.path().join("remove"), "#!/bin/sh\nexit 0\n");
    let grants = caps(&format!("exec = [{{ program = \"{d}/*\" }}]\nread = [\"{d}/\"]\nenv = [\"LK*\", \"LANG\"]"));
    let mut inst = plugin.instance("db", grants, Limits::default());
    let args = || std::fs::read_to_string(dir.path().join("args")).unwrap();

    let c = call_ctx(
        &plugin,
        "db",
        &[
            ("style", "lifekeeper"),
            ("restore", &restore),
            ("remove", &remove),
            ("tag", "db-tag"),
            ("id", "/dev/sdb1"),
            ("app_info", "port=5432 mode=primary"),
            ("app_info@node-b", "not this node"),
            ("app_info_flag", "-a"),
            ("env", "LKROOT=/opt/LifeKeeper;LANG=x y"),
        ],
    );
    inst.start(&c, T).await.unwrap();
    assert_eq!(args(), "-t\ndb-tag\n-i\n/dev/sdb1\n-a\nport=5432 mode=primary\n");
    let env = read_env(&dir.path().join("env"));
    assert_eq!(env["LK_APP_INFO"], "port=5432 mode=primary");
    assert_eq!(env["LK_TAG"], "db-tag");
    assert_eq!(env["LK_ID"], "/dev/sdb1");
    assert_eq!(env["LK_NODE"], "node-a");
    assert_eq!(env["LK_EPOCH"], "3", "the placement epoch, the fencing token");
    assert_eq!(env["LK_ACTION"], "restore");
    assert_eq!(env["LKROOT"], "/opt/LifeKeeper");
    assert_eq!(env["LANG"], "x y");

    // Without tag and id: the tag is the resource name and the id the tag; no -a without the flag.
    let c = call_ctx(&plugin, "db", &[("style", "lifekeeper"), ("restore", &restore), ("remove", &remove)]);
    inst.start(&c, T).await.unwrap();
    assert_eq!(args(), "-t\ndb\n-i\ndb\n");
    assert_eq!(read_env(&dir.path().join("env"))["LK_APP_INFO"], "");
}

#[tokio::test]
async fn lifekeeper_without_quickcheck_is_healthy_and_without_recover_is_unsupported() {
    let plugin = plugin().await;
    let app = LkApp::new();
    let mut inst = plugin.instance("app2", app.grants(), Limits::default());
    let c = call_ctx(&plugin, "app2", &[("style", "lifekeeper"), ("restore", &app.restore), ("remove", &app.remove)]);

    inst.validate(&c, T).await.unwrap();
    // No quickCheck: always healthy, even with nothing running.
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    inst.start(&c, T).await.unwrap();
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);

    // No recover script: no local recovery, the resource fails over at once.
    let err = inst.recover(&c, T).await.unwrap_err();
    match failure(&err) {
        AgentFailure::Unsupported(m) => assert!(m.contains("no `recover` script") && m.contains("fails over"), "{m}"),
        f => panic!("recover without a script: {f}"),
    }
    assert!(!app.calls().iter().any(|l| l.starts_with("recover")));
    let pid = app.pid().unwrap();
    assert!(alive(pid), "an unsupported recover changes nothing");
    inst.stop(&c, T).await.unwrap();
    assert!(!alive(pid));
}

#[tokio::test]
async fn lifekeeper_quickcheck_that_overruns_its_timeout_is_not_a_failure() {
    let plugin = plugin().await;
    let app = LkApp::new();
    let d = app.dir.path().display().to_string();
    let slow = write_script(&app.dir.path().join("slowCheck"), &format!("#!/bin/sh\necho $$ > {d}/check.pid\nsleep 60\n"));
    let mut inst = plugin.instance("app3", app.grants(), Limits::default());
    let c = call_ctx(
        &plugin,
        "app3",
        &[
            ("style", "lifekeeper"),
            ("restore", &app.restore),
            ("remove", &app.remove),
            ("quickcheck", &slow),
            ("quickcheck_timeout_ms", "500"),
        ],
    );

    let started = Instant::now();
    match inst.monitor(&c, T).await.unwrap() {
        Health::Degraded(r) => assert!(r.contains("check timed out") && r.contains("not counted as a failure"), "{r}"),
        h => panic!("an overrunning quickCheck must be degraded, not {h}"),
    }
    assert!(started.elapsed() < Duration::from_secs(20), "killed at its own timeout, not after 60 s");
    let check_pid = read_pid(&app.dir.path().join("check.pid")).unwrap();
    assert!(wait_until(Duration::from_secs(5), || !alive(check_pid)).await, "the quickCheck was killed");
    // The instance is still usable: the next monitor runs normally.
    assert!(matches!(inst.monitor(&c, T).await.unwrap(), Health::Degraded(_)));
}

#[tokio::test]
async fn lifekeeper_failures_and_bad_configs_are_reported() {
    let plugin = plugin().await;
    let app = LkApp::new();
    let mut inst = plugin.instance("app4", app.grants(), Limits::default());
    let base = [("style", "lifekeeper"), ("restore", app.restore.as_str()), ("remove", app.remove.as_str())];

    // restore fails: an error with the exit status and the script's output.
    std::fs::write(app.dir.path().join("fail-restore"), "").unwrap();
    let err = inst.start(&call_ctx(&plugin, "app4", &base), T).await.unwrap_err();
    match failure(&err) {
        AgentFailure::Failed(m) => {
            assert!(m.contains("restore script") && m.contains("exit 3") && m.contains("the fail switch is set"), "{m}")
        }
        f => panic!("{f}"),
    }
    assert!(app.pid().is_none());

    let invalid = |e: CallError| match e.agent_failure() {
        Some(AgentFailure::InvalidConfig(m)) => m.clone(),
        _ => panic!("expected invalid-config, got {e}"),
    };
    // remove not given.
    let c = call_ctx(&plugin, "app4", &[("style", "lifekeeper"), ("restore", &app.restore)]);
    let m = invalid(inst.validate(&c, T).await.unwrap_err());
    assert!(m.contains("needs parameter `remove`"), "{m}");
    assert!(invalid(inst.stop(&c, T).await.unwrap_err()).contains("`remove`"));
    // A script that does not exist.
    let missing = app.path("no-such-script");
    let c =
        call_ctx(&plugin, "app4", &[("style", "lifekeeper"), ("restore", &app.restore), ("remove", &app.remove), ("quickcheck", &missing)]);
    let m = invalid(inst.validate(&c, T).await.unwrap_err());
    assert!(m.contains("`quickcheck`") && m.contains(&missing) && m.contains("does not exist"), "{m}");
    // A relative path.
    let c = call_ctx(&plugin, "app4", &[("style", "lifekeeper"), ("restore", "restore.sh"), ("remove", &app.remove)]);
    assert!(invalid(inst.validate(&c, T).await.unwrap_err()).contains("absolute path"));
    // A bad style, a typo, an OCF parameter.
    let c = call_ctx(&plugin, "app4", &[("style", "pacemaker")]);
    assert!(invalid(inst.validate(&c, T).await.unwrap_err()).contains("`lifekeeper` or `ocf`"));
    let c = call_ctx(
        &plugin,
        "app4",
        &[("style", "lifekeeper"), ("restore", &app.restore), ("remove", &app.remove), ("quickchek", &app.quickcheck)],
    );
    assert!(invalid(inst.monitor(&c, T).await.unwrap_err()).contains("unknown parameter `quickchek`"));
    let c = call_ctx(&plugin, "app4", &[("style", "lifekeeper"), ("restore", &app.restore), ("remove", &app.remove), ("agent", DUMMY)]);
    assert!(invalid(inst.validate(&c, T).await.unwrap_err()).contains("style=ocf"));

    // A script the operator did not grant is refused by the host.
    let mut denied = plugin.instance("app4", caps(""), Limits::default());
    let err = denied.start(&call_ctx(&plugin, "app4", &base), T).await.unwrap_err();
    assert!(matches!(failure(&err), AgentFailure::AccessDenied(_)), "{err}");
}

// ---------------------------------------------------------------------------------------------
// style = "ocf"
// ---------------------------------------------------------------------------------------------

fn ocf_grants(agent: &str) -> warden_manifest::Capabilities {
    caps(&format!("exec = [{{ program = \"{agent}\" }}]\nread = [\"{agent}\"]\nenv = [\"OCF_*\", \"TZ\"]"))
}

#[tokio::test]
async fn ocf_dummy_start_monitor_stop() {
    let plugin = plugin().await;
    let agent = dummy();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("dummy.state");
    let state_s = state.display().to_string();
    let mut inst = plugin.instance("dummy1", ocf_grants(agent), Limits::default());
    let c = call_ctx(&plugin, "dummy1", &[("style", "ocf"), ("agent", agent), ("state", &state_s)]);

    inst.validate(&c, T).await.expect("meta-data parses and validate-all passes");
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Stopped, "exit 7 is stopped, not failed");
    inst.start(&c, T).await.unwrap();
    assert!(state.exists(), "OCF_RESKEY_state reached the agent: it created {}", state.display());
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    inst.start(&c, T).await.expect("start is idempotent");
    inst.recover(&c, T).await.expect("recover = stop + start");
    assert!(state.exists());
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    inst.stop(&c, T).await.unwrap();
    assert!(!state.exists());
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Stopped);
    inst.stop(&c, T).await.expect("stopping a stopped resource succeeds");

    // The short form ocf:PROVIDER:TYPE names the same agent under ocf_root.
    let short = call_ctx(&plugin, "dummy1", &[("style", "ocf"), ("agent", "ocf:heartbeat:Dummy"), ("state", &state_s)]);
    inst.start(&short, T).await.unwrap();
    assert!(state.exists());
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    inst.stop(&short, T).await.unwrap();
    assert!(!state.exists());
}

#[tokio::test]
async fn ocf_dummy_validate_all_failure_is_invalid_config() {
    let plugin = plugin().await;
    let agent = dummy();
    let mut inst = plugin.instance("dummy2", ocf_grants(agent), Limits::default());
    // Dummy's validate-all checks the state directory is writable: OCF_ERR_ARGS otherwise.
    let c = call_ctx(&plugin, "dummy2", &[("style", "ocf"), ("agent", agent), ("state", "/nonexistent-warden-dir/dummy.state")]);
    let err = inst.validate(&c, T).await.unwrap_err();
    match failure(&err) {
        AgentFailure::InvalidConfig(m) => {
            assert!(m.contains("validate-all") && m.contains("OCF_ERR_ARGS (2)") && m.contains("is not writable"), "{m}")
        }
        f => panic!("{f}"),
    }
}

#[tokio::test]
async fn ocf_missing_agent_is_not_installed() {
    let plugin = plugin().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("resource.d/acme/NoSuchAgent").display().to_string();
    let d = dir.path().display();
    let grants = caps(&format!("exec = [{{ program = \"{d}/**\" }}]\nread = [\"{d}/\"]\nenv = [\"OCF_*\"]"));
    let mut inst = plugin.instance("gone", grants, Limits::default());
    let c = call_ctx(&plugin, "gone", &[("style", "ocf"), ("agent", &agent)]);
    for (action, err) in [
        ("validate", inst.validate(&c, T).await.unwrap_err()),
        ("start", inst.start(&c, T).await.unwrap_err()),
        ("monitor", inst.monitor(&c, T).await.unwrap_err()),
    ] {
        match failure(&err) {
            AgentFailure::NotInstalled(m) => assert!(m.contains(&agent), "{action}: {m}"),
            f => panic!("{action}: {f}"),
        }
    }
    // The same through ocf:PROVIDER:TYPE under a custom ocf_root.
    let c = call_ctx(&plugin, "gone", &[("style", "ocf"), ("agent", "ocf:acme:NoSuchAgent"), ("ocf_root", &d.to_string())]);
    assert!(matches!(failure(&inst.start(&c, T).await.unwrap_err()), AgentFailure::NotInstalled(m) if m.contains(&agent)));
    // No agent at all.
    let c = call_ctx(&plugin, "gone", &[("style", "ocf")]);
    assert!(
        matches!(failure(&inst.monitor(&c, T).await.unwrap_err()), AgentFailure::InvalidConfig(m) if m.contains("needs parameter `agent`"))
    );
}

#[tokio::test]
async fn ocf_parameters_and_environment_reach_the_agent() {
    let plugin = plugin().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = env_agent(dir.path());
    let mut inst = plugin.instance("web-1", ocf_grants(&agent), Limits::default());
    let c = call_ctx(
        &plugin,
        "web-1",
        &[
            ("style", "ocf"),
            ("agent", &agent),
            ("needed", "yes"),
            ("config", "/etc/app.conf"),
            ("with_space", "a b"),
            ("OCF_RESKEY_style", "passed as is"),
            ("env", "TZ=1"),
        ],
    );
    inst.validate(&c, T).await.unwrap();
    assert_eq!(inst.monitor(&c, T).await.unwrap(), Health::Running);
    let env = read_env(&dir.path().join("monitor.env"));
    assert_eq!(env["OCF_RESKEY_needed"], "yes");
    assert_eq!(env["OCF_RESKEY_config"], "/etc/app.conf");
    assert_eq!(env["OCF_RESKEY_with_space"], "a b");
    assert_eq!(env["OCF_RESKEY_style"], "passed as is", "OCF_RESKEY_<name> escapes the generic agent's own names");
    assert_eq!(env["OCF_ROOT"], "/usr/lib/ocf");
    assert_eq!(env["OCF_RESOURCE_INSTANCE"], "web-1");
    assert_eq!(env["OCF_RA_VERSION_MAJOR"], "1");
    assert_eq!(env["OCF_RA_VERSION_MINOR"], "0");
    assert_eq!(env["OCF_RESKEY_CRM_meta_timeout"], "30000", "the monitor's default timeout in ms");
    assert_eq!(env["OCF_RESKEY_CRM_meta_on_node"], "node-a");
    assert_eq!(env["OCF_RESKEY_CRM_meta_warden_epoch"], "3");
    assert_eq!(env["TZ"], "1");
    for own in ["OCF_RESKEY_agent", "OCF_RESKEY_ocf_root", "OCF_RESKEY_env", "OCF_RESKEY_quickcheck_timeout_ms"] {
        assert!(!env.contains_key(own), "{own} is the generic agent's own parameter: {env:?}");
    }
    // validate ran meta-data, then validate-all, with the same environment.
    assert!(dir.path().join("meta-data.env").exists() && dir.path().join("validate-all.env").exists());
    assert_eq!(read_env(&dir.path().join("validate-all.env"))["OCF_RESKEY_CRM_meta_timeout"], "30000");

    // A CRM_meta_timeout parameter overrides the default; start gets its own default.
    let mut with_timeout = c.clone();
    with_timeout.params.insert("CRM_meta_timeout".into(), "5000".into());
    inst.start(&with_timeout, T).await.unwrap();
    assert_eq!(read_env(&dir.path().join("start.env"))["OCF_RESKEY_CRM_meta_timeout"], "5000");
    inst.stop(&c, T).await.unwrap();
    assert_eq!(read_env(&dir.path().join("stop.env"))["OCF_RESKEY_CRM_meta_timeout"], "60000");

    // The meta-data says `needed` is required: validate refuses its absence.
    let mut without = c.clone();
    without.params.remove("needed");
    match failure(&inst.validate(&without, T).await.unwrap_err()) {
        AgentFailure::InvalidConfig(m) => assert!(m.contains("requires parameter `needed`"), "{m}"),
        f => panic!("{f}"),
    }
    // An agent whose meta-data is not OCF XML.
    let mut garbage = c.clone();
    garbage.params.insert("meta".into(), "garbage".into());
    match failure(&inst.validate(&garbage, T).await.unwrap_err()) {
        AgentFailure::InvalidConfig(m) => assert!(m.contains("no <resource-agent> XML"), "{m}"),
        f => panic!("{f}"),
    }
    // LifeKeeper parameters are refused in the OCF style; names that are no env names too.
    let mut lk = c.clone();
    lk.params.insert("restore".into(), "/bin/true".into());
    assert!(
        matches!(failure(&inst.monitor(&lk, T).await.unwrap_err()), AgentFailure::InvalidConfig(m) if m.contains("OCF_RESKEY_restore"))
    );
    let mut bad = c.clone();
    bad.params.insert("bad-name".into(), "x".into());
    assert!(matches!(failure(&inst.monitor(&bad, T).await.unwrap_err()), AgentFailure::InvalidConfig(m) if m.contains("bad-name")));
    // Without the exec grant the host refuses.
    let mut denied = plugin.instance("web-1", caps(""), Limits::default());
    assert!(matches!(failure(&denied.monitor(&c, T).await.unwrap_err()), AgentFailure::AccessDenied(_)));
}

/// Expected outcome of one action for one exit code.
#[derive(Debug, PartialEq)]
enum Want {
    Done,
    State(&'static str),
    Error(&'static str),
}

fn kind(f: &AgentFailure) -> &'static str {
    match f {
        AgentFailure::InvalidConfig(_) => "invalid-config",
        AgentFailure::NotInstalled(_) => "not-installed",
        AgentFailure::Failed(_) => "failed",
        AgentFailure::AccessDenied(_) => "access-denied",
        AgentFailure::Unsupported(_) => "unsupported",
    }
}

fn health_kind(h: &Health) -> &'static str {
    match h {
        Health::Running => "running",
        Health::Stopped => "stopped",
        Health::Degraded(_) => "degraded",
        Health::Failed(_) => "failed",
    }
}

#[tokio::test]
async fn ocf_exit_codes_map_per_the_ocf_table() {
    use Want::*;
    let plugin = plugin().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = exit_code_agent(dir.path());
    let mut inst = plugin.instance("rc", ocf_grants(&agent), Limits::default());
    // code: (monitor, start, stop, validate)
    let table: &[(&str, [Want; 4])] = &[
        ("0", [State("running"), Done, Done, Done]),
        ("1", [State("failed"), Error("failed"), Error("failed"), Error("failed")]),
        ("2", [Error("invalid-config"), Error("invalid-config"), Error("invalid-config"), Error("invalid-config")]),
        ("3", [Error("unsupported"), Error("unsupported"), Error("unsupported"), Done]),
        ("4", [State("failed"), Error("failed"), Error("failed"), Error("failed")]),
        ("5", [Error("not-installed"), Error("not-installed"), Error("not-installed"), Error("not-installed")]),
        ("6", [Error("invalid-config"), Error("invalid-config"), Error("invalid-config"), Error("invalid-config")]),
        ("7", [State("stopped"), Error("failed"), Done, Error("failed")]),
        ("8", [State("degraded"), Error("failed"), Error("failed"), Error("failed")]),
        ("9", [State("failed"), Error("failed"), Error("failed"), Error("failed")]),
        ("42", [State("failed"), Error("failed"), Error("failed"), Error("failed")]),
        ("signal", [State("failed"), Error("failed"), Error("failed"), Error("failed")]),
    ];
    for (code, [monitor, start, stop, validate]) in table {
        let c = call_ctx(&plugin, "rc", &[("style", "ocf"), ("agent", &agent), ("rc", code)]);
        let reason = if *code == "signal" { "signal 9".to_string() } else { format!("code {code}") };
        let got = match inst.monitor(&c, T).await {
            Result::Ok(h) => {
                if let Health::Failed(r) | Health::Degraded(r) = &h {
                    assert!(r.contains(&reason), "monitor {code}: the reason carries the agent's exit reason: {r}");
                }
                State(health_kind(&h))
            }
            Result::Err(e) => Error(kind(failure(&e))),
        };
        assert_eq!(&got, monitor, "monitor exit {code}");
        for (action, want) in [("start", start), ("stop", stop), ("validate", validate)] {
            let r = match action {
                "start" => inst.start(&c, T).await,
                "stop" => inst.stop(&c, T).await,
                _ => inst.validate(&c, T).await,
            };
            let got = match &r {
                Result::Ok(()) => Done,
                Result::Err(e) => {
                    let m = failure(e).to_string();
                    assert!(m.contains(&reason), "{action} {code}: {m}");
                    Error(kind(failure(e)))
                }
            };
            assert_eq!(&got, want, "{action} exit {code}: {r:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The real `warden` binary
// ---------------------------------------------------------------------------------------------

fn warden(args: &[&str]) -> (Option<i32>, String, String) {
    let cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .env("WARDEN_CACHE_DIR", cache)
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn cli_agent_exec_runs_the_ocf_dummy() {
    let agent = dummy();
    let plugin = built_plugin("generic");
    let plugin = plugin.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cli.state");
    let state_param = format!("state={}", state.display());
    let run = |action: &str, extra: &[&str]| {
        let mut args =
            vec!["agent", "exec", plugin, action, "--param", "style=ocf", "--param", "agent=ocf:heartbeat:Dummy", "--param", &state_param];
        args.extend_from_slice(&["--allow-exec", agent, "--allow-env", "OCF_*", "--resource", "cli-dummy"]);
        args.extend_from_slice(extra);
        warden(&args)
    };

    let (code, out, err) = run("monitor", &[]);
    assert_eq!(code, Some(7), "stopped exits 7 like OCF_NOT_RUNNING: {out} {err}");
    assert!(out.starts_with("generic monitor: stopped"), "{out}");
    let (code, out, err) = run("validate", &["--allow-read", agent]);
    assert_eq!(code, Some(0), "{out} {err}");
    let (code, _, err) = run("start", &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(state.exists());
    let (code, out, err) = run("monitor", &["--json"]);
    assert_eq!(code, Some(0), "{out} {err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["plugin"], "generic");
    assert_eq!(v["health"]["state"], "running");
    let (code, _, err) = run("stop", &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!state.exists());
    let (code, _, _) = run("monitor", &[]);
    assert_eq!(code, Some(7));

    // validate-all's OCF_ERR_ARGS: exit 1 and one line naming the plugin, the action and why.
    let (code, _, err) = warden(&[
        "agent",
        "exec",
        plugin,
        "validate",
        "--param",
        "style=ocf",
        "--param",
        &format!("agent={agent}"),
        "--param",
        "state=/nonexistent-warden-dir/x",
        "--allow-exec",
        agent,
        "--allow-read",
        agent,
        "--allow-env",
        "OCF_*",
    ]);
    assert_eq!(code, Some(1));
    let last = err.trim().lines().last().unwrap();
    assert!(last.starts_with("error: plugin `generic`: validate: invalid configuration:") && last.contains("is not writable"), "{err}");

    // `plugin inspect` lists the generic agent's own parameters, and `*`.
    let (code, out, _) = warden(&["plugin", "inspect", plugin, "--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for n in ["style", "agent", "restore", "remove", "quickcheck", "recover", "tag", "id", "app_info", "ocf_root", "*"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
}
