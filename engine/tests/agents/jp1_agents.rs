//! Agent tier: the JP1 agents (`jp1-base`, `jp1-ajs3-manager`, `jp1-ajs3-agent`), built by
//! `cargo xtask plugins`, run through the real host against the JP1 simulator (`tests/jp1-sim`):
//! real daemons per logical host, killed with `kill -9`, and the simulator's fault switches.

use crate::{jp1, support};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jp1::{Kind, Lhost, Node};
use support::{built_plugin, host, load};
use warden::plugin::{AgentFailure, CallContext, CallError, Health, Limits, Plugin, PluginInstance};

const T: Option<Duration> = Some(Duration::from_secs(90));

/// A resource: one agent instance with the grants of its manifest for one logical host.
struct Res {
    inst: PluginInstance,
    ctx: CallContext,
}

impl Res {
    async fn new(agent: Kind, lh: &Lhost, extra: &[(&str, &str)]) -> Res {
        let plugin = plugin(agent).await;
        let ctx = lh.ctx(&plugin, agent, extra);
        Res { inst: plugin.instance(&ctx.resource, lh.grants(agent), Limits::default()), ctx }
    }
    async fn validate(&mut self) -> Result<(), CallError> {
        self.inst.validate(&self.ctx, T).await
    }
    async fn start(&mut self) -> Result<(), CallError> {
        self.inst.start(&self.ctx, T).await
    }
    async fn stop(&mut self) -> Result<(), CallError> {
        self.inst.stop(&self.ctx, T).await
    }
    async fn recover(&mut self) -> Result<(), CallError> {
        self.inst.recover(&self.ctx, T).await
    }
    async fn monitor(&mut self) -> Health {
        self.inst.monitor(&self.ctx, T).await.unwrap_or_else(|e| panic!("monitor: {e}"))
    }
}

async fn plugin(agent: Kind) -> Arc<Plugin> {
    let host = host();
    let p = load(&host, &built_plugin(agent.plugin())).await;
    assert_eq!(p.name(), agent.plugin());
    p
}

fn failed(h: &Health) -> &str {
    match h {
        Health::Failed(r) => r,
        other => panic!("expected failed, got {other:?}"),
    }
}

fn agent_error(e: &CallError) -> &AgentFailure {
    e.agent_failure().unwrap_or_else(|| panic!("expected an agent error, got {e}"))
}

const FAST: &[(&str, &str)] = &[("status_retry_interval", "100")];

/// Start JP1/Base on `lh` through the agent.
async fn base_up(lh: &Lhost) -> Res {
    let mut base = Res::new(Kind::Base, lh, FAST).await;
    base.start().await.unwrap();
    base
}

#[tokio::test]
async fn base_start_monitor_stop_with_real_daemons() {
    let node = Node::install("manager");
    let lh = node.lhost("lhbase", "manager");
    let mut base = Res::new(Kind::Base, &lh, FAST).await;
    base.validate().await.unwrap();
    assert!(matches!(base.monitor().await, Health::Stopped));

    base.start().await.unwrap();
    assert!(matches!(base.monitor().await, Health::Running));
    assert_eq!(lh.base_status(), 0);
    // Real processes under the documented names.
    let spmd = lh.pid("base", "jbs_spmd").expect("jbs_spmd runs");
    assert_eq!(Lhost::comm(spmd), "jbs_spmd");
    for name in ["jbsroute", "jcocmd", "jbsplugin", "jbshcd", "jbshchostd", "jbssrvmgr", "jbslcact", "jbscomd", "jevservice"] {
        let pid = lh.pid("base", name).unwrap_or_else(|| panic!("{name} runs"));
        assert_eq!(Lhost::comm(pid), name);
    }

    base.start().await.expect("start is idempotent");
    assert_eq!(lh.pid("base", "jbs_spmd"), Some(spmd), "a running JP1/Base is not restarted");

    base.stop().await.unwrap();
    assert!(matches!(base.monitor().await, Health::Stopped));
    assert!(lh.live("base").is_empty(), "no JP1/Base process is left");
    assert_eq!(lh.base_status(), 8);
    base.stop().await.expect("stopping a stopped resource succeeds");
}

#[tokio::test]
async fn ajs3_manager_start_polls_until_up_then_recover_and_stop() {
    let node = Node::install("manager");
    let lh = node.lhost("lhajs", "manager");
    let mut base = base_up(&lh).await;
    let mut ajs = Res::new(Kind::Manager, &lh, FAST).await;
    ajs.validate().await.unwrap();
    assert!(matches!(ajs.monitor().await, Health::Stopped));

    // jajs_start.cluster returns at once while AJS3 needs ~1 s more: start must poll.
    let t0 = Instant::now();
    ajs.start().await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(900), "start returned after {:?}, before AJS3 was up", t0.elapsed());
    assert_eq!(lh.ajs_status(), 0, "AJS3 is really up when start returns");
    assert!(matches!(ajs.monitor().await, Health::Running));
    for name in ["jajs_spmd", "jajs_dbmd_JF0", "jajs_hstd", "jajs_agtd", "ajsqlagtd", "ajsqlftpd"] {
        let pid = lh.pid("ajs", name).unwrap_or_else(|| panic!("{name} runs"));
        assert_eq!(Lhost::comm(pid), name);
    }

    // recover = stop → killall → start: new processes, healthy again.
    let old = lh.pid("ajs", "jajs_spmd").unwrap();
    ajs.recover().await.unwrap();
    let new = lh.pid("ajs", "jajs_spmd").expect("jajs_spmd runs after recover");
    assert_ne!(old, new);
    assert!(matches!(ajs.monitor().await, Health::Running));

    // Stop in the reverse order of the start.
    ajs.stop().await.unwrap();
    assert!(matches!(ajs.monitor().await, Health::Stopped));
    assert!(lh.live("ajs").is_empty());
    assert!(matches!(base.monitor().await, Health::Running), "stopping AJS3 leaves JP1/Base alone");
    base.stop().await.unwrap();
    assert!(node.live().is_empty());
}

#[tokio::test]
async fn killed_daemon_is_reported_failed() {
    let node = Node::install("manager");
    let lh = node.lhost("lhkill", "manager");
    let mut base = base_up(&lh).await;
    let mut ajs = Res::new(Kind::Manager, &lh, FAST).await;
    ajs.start().await.unwrap();

    // JP1/AJS3 has no degraded mode: killing one process stops the service.
    let agtd = lh.pid("ajs", "jajs_agtd").unwrap();
    std::process::Command::new("/bin/kill").args(["-9", &agtd.to_string()]).status().unwrap();
    let h = ajs.monitor().await;
    assert!(failed(&h).contains("jajs_agtd"), "{h:?}");
    assert!(support::wait_until(Duration::from_secs(10), || lh.live("ajs").is_empty()).await, "the other AJS3 processes stop too");
    let h = ajs.monitor().await;
    assert!(failed(&h).contains("ended abnormally"), "an abnormal end is a failure, not a clean stop: {h:?}");

    // JP1/Base: one child killed → partly running → failed, naming it.
    let route = lh.pid("base", "jbsroute").unwrap();
    std::process::Command::new("/bin/kill").args(["-9", &route.to_string()]).status().unwrap();
    let h = base.monitor().await;
    let reason = failed(&h);
    assert!(reason.contains("jbsroute") && reason.contains("exit 4"), "{reason}");

    // The process manager itself killed (its children follow; zombies count as dead).
    base.recover().await.unwrap();
    assert!(matches!(base.monitor().await, Health::Running));
    let spmd = lh.pid("base", "jbs_spmd").unwrap();
    std::process::Command::new("/bin/kill").args(["-9", &spmd.to_string()]).status().unwrap();
    assert!(support::wait_until(Duration::from_secs(10), || lh.live("base").is_empty()).await);
    let h = base.monitor().await;
    assert!(failed(&h).contains("ended abnormally"), "{h:?}");

    // A stop after a crash succeeds and leaves a clean `stopped`.
    ajs.stop().await.unwrap();
    base.stop().await.unwrap();
    assert!(matches!(ajs.monitor().await, Health::Stopped));
    assert!(matches!(base.monitor().await, Health::Stopped));
}

#[tokio::test]
async fn transient_12_is_retried_and_persistent_12_fails() {
    let node = Node::install("manager");
    let lh = node.lhost("lh12", "manager");
    let mut base = base_up(&lh).await;

    // Two 12s in a row: within the default two retries.
    lh.fault("jbs_spmd_status.transient12", "2");
    lh.fault("jevstat.transient12", "1");
    assert!(matches!(base.monitor().await, Health::Running));
    assert!(!lh.has_fault("jbs_spmd_status.transient12") && !lh.has_fault("jevstat.transient12"), "every 12 was consumed by a retry");

    // Three in a row: more than the retries allow.
    lh.fault("jbs_spmd_status.transient12", "3");
    let h = base.monitor().await;
    let reason = failed(&h);
    assert!(reason.contains("12") && reason.contains("3 tries"), "{reason}");

    // status_retries is honoured.
    let mut patient = Res::new(Kind::Base, &lh, &[("status_retry_interval", "100"), ("status_retries", "4")]).await;
    lh.fault("jbs_spmd_status.transient12", "4");
    assert!(matches!(patient.monitor().await, Health::Running));
    base.stop().await.unwrap();
}

#[tokio::test]
async fn slow_start_is_polled_until_up() {
    let node = Node::install("manager");
    let lh = node.lhost("lhslow", "manager");
    let mut base = base_up(&lh).await;
    lh.fault("ajs.slow-start", "3");
    let mut ajs = Res::new(Kind::Manager, &lh, FAST).await;
    let t0 = Instant::now();
    ajs.start().await.unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(3), "start returned after {:?}", t0.elapsed());
    assert_eq!(lh.ajs_status(), 0);
    assert!(matches!(ajs.monitor().await, Health::Running));

    // A startup slower than start_wait is a failed start that leaves nothing running.
    ajs.stop().await.unwrap();
    lh.fault("ajs.slow-start", "30");
    let mut hasty = Res::new(Kind::Manager, &lh, &[("start_wait", "2000")]).await;
    let err = hasty.start().await.unwrap_err();
    assert!(matches!(agent_error(&err), AgentFailure::Failed(m) if m.contains("did not come up within 2000 ms")), "{err}");
    assert!(lh.live("ajs").is_empty(), "the half-started AJS3 was killed");
    base.stop().await.unwrap();
}

#[tokio::test]
async fn hung_status_is_bounded_by_its_timeout() {
    let node = Node::install("manager");
    let lh = node.lhost("lhhang", "manager");
    let mut base = base_up(&lh).await;
    lh.fault("jbs_spmd_status.hang", "");
    let mut r = Res::new(Kind::Base, &lh, &[("status_timeout", "1"), ("status_retry_interval", "100")]).await;
    let t0 = Instant::now();
    let h = r.monitor().await;
    let took = t0.elapsed();
    assert!(failed(&h).contains("12"), "{h:?}");
    // Three tries of `-t 1`, each bounded: seconds, not the command's default 60 s.
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(15), "{took:?}");
    lh.clear_fault("jbs_spmd_status.hang");
    assert!(matches!(r.monitor().await, Health::Running));
    base.stop().await.unwrap();
}

#[tokio::test]
async fn failed_start_is_an_error_and_leaves_nothing_running() {
    let node = Node::install("manager");
    let lh = node.lhost("lhfail", "manager");

    // The start command fails.
    lh.fault("base.start-fail", "");
    let mut base = Res::new(Kind::Base, &lh, FAST).await;
    let err = base.start().await.unwrap_err();
    assert!(matches!(agent_error(&err), AgentFailure::Failed(m) if m.contains("jbs_start.cluster") && m.contains("start-fail")), "{err}");
    assert!(lh.live("base").is_empty());
    lh.clear_fault("base.start-fail");
    base.start().await.unwrap();

    // The start command succeeds but AJS3 dies during its startup: its exit code was no proof.
    lh.fault("ajs.start-fail", "silent");
    let mut ajs = Res::new(Kind::Manager, &lh, FAST).await;
    let err = ajs.start().await.unwrap_err();
    assert!(matches!(agent_error(&err), AgentFailure::Failed(m) if m.contains("startup")), "{err}");
    assert!(lh.live("ajs").is_empty());
    assert!(matches!(base.monitor().await, Health::Running), "JP1/Base is untouched");

    // AJS3 refuses to start without JP1/Base (the simulator enforces the order).
    lh.clear_fault("ajs.start-fail");
    base.stop().await.unwrap();
    let err = ajs.start().await.unwrap_err();
    assert!(matches!(agent_error(&err), AgentFailure::Failed(m) if m.contains("JP1/Base is not running")), "{err}");
}

#[tokio::test]
async fn failed_stop_escalates_to_killall() {
    let node = Node::install("manager");
    let lh = node.lhost("lhstop", "manager");
    let mut base = base_up(&lh).await;
    let mut ajs = Res::new(Kind::Manager, &lh, FAST).await;
    ajs.start().await.unwrap();

    lh.fault("ajs.stop-fail", "");
    lh.fault("base.stop-fail", "");
    // The stop commands fail and leave every process running...
    assert_eq!(lh.cmd("etc/opt/jp1ajs2/jajs_stop.cluster", &[&lh.name]).0, 1);
    assert!(!lh.live("ajs").is_empty());
    // ...so the agents use killall, and the resources end up stopped.
    ajs.stop().await.unwrap();
    assert!(lh.live("ajs").is_empty());
    assert!(matches!(ajs.monitor().await, Health::Stopped));
    base.stop().await.unwrap();
    assert!(lh.live("base").is_empty());
    assert!(matches!(base.monitor().await, Health::Stopped));
    assert!(node.live().is_empty());
}

#[tokio::test]
async fn partly_running_at_start_is_killed_then_started() {
    let node = Node::install("manager");
    let lh = node.lhost("lhpart", "manager");
    let mut base = base_up(&lh).await;
    let spmd = lh.pid("base", "jbs_spmd").unwrap();
    let comd = lh.pid("base", "jbscomd").unwrap();
    std::process::Command::new("/bin/kill").args(["-9", &lh.pid("base", "jbsroute").unwrap().to_string()]).status().unwrap();
    assert_eq!(lh.base_status(), 4, "partly running");
    // The start command alone would refuse (processes remain); the agent kills them first.
    assert_eq!(lh.cmd("etc/opt/jp1base/jbs_start.cluster", &[&lh.name]).0, 1);

    base.start().await.unwrap();
    assert!(matches!(base.monitor().await, Health::Running));
    let spmd2 = lh.pid("base", "jbs_spmd").unwrap();
    assert_ne!(spmd, spmd2, "a fresh JP1/Base");
    assert!(lh.pid("base", "jbscomd").is_some_and(|p| p != comd), "the survivors of the old one were killed");
    base.stop().await.unwrap();
}

#[tokio::test]
async fn killall_touches_only_its_own_logical_host() {
    let node = Node::install("manager");
    let one = node.lhost("lhone", "manager");
    let two = node.lhost("lhtwo", "manager");
    let mut b1 = base_up(&one).await;
    let mut b2 = base_up(&two).await;
    let before: Vec<u32> = {
        let mut v = two.live("base");
        v.sort();
        v
    };
    assert_eq!(before.len(), 10);

    one.fault("base.stop-fail", "");
    b1.stop().await.unwrap();
    assert!(one.live("base").is_empty(), "killall ended lhone's JP1/Base");
    let mut after = two.live("base");
    after.sort();
    assert_eq!(after, before, "lhtwo's processes are untouched");
    assert!(matches!(b2.monitor().await, Health::Running));

    // recover of one logical host does not touch the other either.
    one.clear_fault("base.stop-fail");
    b1.start().await.unwrap();
    b1.recover().await.unwrap();
    let mut after = two.live("base");
    after.sort();
    assert_eq!(after, before);
    b1.stop().await.unwrap();
    b2.stop().await.unwrap();
}

#[tokio::test]
async fn validate_checks_installation_dependency_and_exclusion() {
    // Base: fine on a node with JP1 installed.
    let node = Node::install("manager");
    let lh = node.lhost("lhval", "manager");
    Res::new(Kind::Base, &lh, &[]).await.validate().await.unwrap();
    Res::new(Kind::Manager, &lh, &[]).await.validate().await.unwrap();

    // AJS3 without its JP1/Base dependency: `base_resource` is required...
    let mgr = plugin(Kind::Manager).await;
    let given = lh.params(Kind::Base, &[]).into_iter().collect();
    let err = mgr.metadata.resolve_params(&given).unwrap_err();
    assert!(err.contains("base_resource"), "{err}");
    // ...and must name another resource.
    let mut own = Res::new(Kind::Manager, &lh, &[]).await;
    own.ctx.params.insert("base_resource".into(), own.ctx.resource.clone());
    let err = own.validate().await.unwrap_err();
    assert!(matches!(agent_error(&err), AgentFailure::InvalidConfig(m) if m.contains("base_resource")), "{err}");

    // The Agent agent on a Manager node: wrong product.
    let err = Res::new(Kind::AjsAgent, &lh, &[]).await.validate().await.unwrap_err();
    assert!(matches!(agent_error(&err), AgentFailure::InvalidConfig(m) if m.contains("jp1-ajs3-manager")), "{err}");

    // Manager and Agent both installed on one node.
    let both = Node::install("both");
    let lhb = both.lhost("lhboth", "manager");
    let err = Res::new(Kind::Manager, &lhb, &[]).await.validate().await.unwrap_err();
    assert!(matches!(agent_error(&err), AgentFailure::InvalidConfig(m) if m.contains("never on the same server")), "{err}");

    // No JP1/AJS3 installed under the prefix.
    let bare = Node::install("none");
    let lhn = bare.lhost("lhbare", "none");
    let err = Res::new(Kind::Manager, &lhn, &[]).await.validate().await.unwrap_err();
    assert!(matches!(agent_error(&err), AgentFailure::NotInstalled(m) if m.contains("jajs_start.cluster")), "{err}");

    // The shared disk missing: validate does not care (standby nodes), start refuses.
    let gone = Lhost { shared: node.dir.path().join("not-mounted"), ..lh.clone() };
    let mut r = Res::new(Kind::Base, &gone, &[]).await;
    r.validate().await.unwrap();
    let err = r.start().await.unwrap_err();
    assert!(matches!(agent_error(&err), AgentFailure::Failed(m) if m.contains("mount the shared disk")), "{err}");
    // ... and a probe or stop on a node without the shared disk says stopped (JP1 of that logical
    // host cannot run there), so a node's startup never tries to stop JP1 under a missing disk.
    assert!(matches!(r.inst.monitor(&r.ctx, None).await.unwrap(), Health::Stopped));
    r.inst.stop(&r.ctx, None).await.unwrap();

    // Bad parameters.
    let err = Res::new(Kind::Base, &lh, &[("status_timeout", "0")]).await.validate().await.unwrap_err();
    assert!(matches!(agent_error(&err), AgentFailure::InvalidConfig(m) if m.contains("status_timeout")), "{err}");
}

#[tokio::test]
async fn ajs3_agent_lifecycle_and_queueless_check() {
    let node = Node::install("agent");
    let lh = node.lhost("lhagt", "agent");
    let mut base = base_up(&lh).await;
    let mut agt = Res::new(Kind::AjsAgent, &lh, &[("status_retry_interval", "100"), ("queueless_check", "degraded")]).await;
    agt.validate().await.unwrap();
    agt.start().await.unwrap();
    assert!(matches!(agt.monitor().await, Health::Running));
    for name in ["jajs_spmd", "jajs_agtd", "ajsqlagtd"] {
        assert!(lh.pid("ajs", name).is_some(), "{name} runs");
    }
    // The queueless agent is not one of the processes whose loss stops AJS3: degraded.
    std::process::Command::new("/bin/kill").args(["-9", &lh.pid("ajs", "ajsqlagtd").unwrap().to_string()]).status().unwrap();
    let h = agt.monitor().await;
    assert!(matches!(&h, Health::Degraded(r) if r.contains("Queueless agent service : inactive")), "{h:?}");
    agt.stop().await.unwrap();
    assert!(matches!(agt.monitor().await, Health::Stopped));
    base.stop().await.unwrap();
}

#[tokio::test]
async fn scheduler_crash_needs_jajs_status() {
    let node = Node::install("manager");
    let lh = node.lhost("lhschd", "manager");
    let mut base = base_up(&lh).await;
    let mut plain = Res::new(Kind::Manager, &lh, FAST).await;
    let mut checked = Res::new(Kind::Manager, &lh, &[("status_retry_interval", "100"), ("scheduler_check", "failed")]).await;
    plain.start().await.unwrap();
    assert!(matches!(checked.monitor().await, Health::Running));
    std::process::Command::new("/bin/kill").args(["-9", &lh.pid("ajs", "jajs_schd_AJSROOT1").unwrap().to_string()]).status().unwrap();
    assert!(support::wait_until(Duration::from_secs(5), || lh.pid("ajs", "jajs_schd_AJSROOT1").is_none()).await);
    // Invisible to jajs_spmd_status, as on a real node...
    assert!(matches!(plain.monitor().await, Health::Running));
    // ...but seen with scheduler_check.
    let h = checked.monitor().await;
    assert!(failed(&h).contains("jajs_schd_AJSROOT1"), "{h:?}");
    plain.stop().await.unwrap();
    base.stop().await.unwrap();
}

#[tokio::test]
async fn nothing_runs_without_grants() {
    let node = Node::install("manager");
    let lh = node.lhost("lhdeny", "manager");
    let plugin = plugin(Kind::Base).await;
    let ctx = lh.ctx(&plugin, Kind::Base, &[]);
    let mut inst = plugin.instance("denied", support::caps(""), Limits::default());
    // The first thing monitor touches is the shared directory; without grants that is refused.
    let err = inst.monitor(&ctx, T).await.unwrap_err();
    assert!(matches!(agent_error(&err), AgentFailure::AccessDenied(m) if m.contains("jp1base") && m.contains("not granted")), "{err}");
    let err = inst.start(&ctx, T).await.unwrap_err();
    assert!(matches!(agent_error(&err), AgentFailure::AccessDenied(_)), "{err}");
    assert!(node.live().is_empty());
}

#[tokio::test]
async fn metadata_names_parameters_and_timeouts() {
    for agent in [Kind::Base, Kind::Manager, Kind::AjsAgent] {
        let p = plugin(agent).await;
        assert_eq!(p.metadata.name, agent.plugin());
        assert_eq!(p.manifest.name, agent.plugin());
        let names: Vec<&str> = p.metadata.parameters.iter().map(|p| p.name.as_str()).collect();
        for n in ["logical_host", "prefix", "shared_dir", "status_retries", "status_retry_interval"] {
            assert!(names.contains(&n), "{}: {names:?}", agent.plugin());
        }
        let default = |n: &str| p.metadata.parameters.iter().find(|x| x.name == n).and_then(|x| x.default.clone());
        assert_eq!(default("prefix").as_deref(), Some("/"));
        assert_eq!(default("status_retries").as_deref(), Some("2"));
        assert_eq!(default("status_retry_interval").as_deref(), Some("1000"));
        assert_eq!(names.contains(&"base_resource"), agent != Kind::Base);
    }
}

/// `warden agent exec` on the real binary: start, monitor, stop of JP1/Base.
#[test]
fn cli_agent_exec_starts_monitors_and_stops_base() {
    let node = Node::install("manager");
    let lh = node.lhost("lhcli", "manager");
    let plugin = built_plugin("jp1-base");
    let cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
    let exec = |action: &str| {
        let mut args: Vec<String> = vec!["agent".into(), "exec".into(), plugin.display().to_string(), action.into(), "--json".into()];
        for (k, v) in lh.params(Kind::Base, FAST) {
            args.push(format!("--param={k}={v}"));
        }
        args.extend(lh.cli_grants(Kind::Base));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .env("WARDEN_CACHE_DIR", &cache)
            .env_remove("RUST_LOG")
            .args(&args)
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (code, out, err) = exec("monitor");
    assert_eq!(code, Some(7), "stopped: {out} {err}");
    let (code, out, err) = exec("start");
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(!err.contains("have no effect"), "the grants match the manifest: {err}");
    let (code, out, err) = exec("monitor");
    assert_eq!(code, Some(0), "{out} {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["health"]["state"], "running");
    assert!(lh.pid("base", "jbs_spmd").is_some());
    let (code, out, err) = exec("stop");
    assert_eq!(code, Some(0), "{out} {err}");
    let (code, out, err) = exec("monitor");
    assert_eq!(code, Some(7), "{out} {err}");
    assert!(node.live().is_empty());
}

/// The JP1 agents name every process of the logical host they started (`own-processes`: the
/// resource's cgroup) with `watch`, so a killed daemon is seen at once in a node; without a
/// cgroup the watch is refused and the action still succeeds.
#[tokio::test]
async fn the_jp1_agents_watch_the_processes_they_started() {
    let node = Node::install("manager");
    let lh = node.lhost("lhwatch", "manager");
    // Without a cgroup: started, nothing watched.
    let mut base = Res::new(Kind::Base, &lh, FAST).await;
    base.start().await.unwrap();
    assert!(base.inst.take_watch().is_none());
    base.stop().await.unwrap();

    let state = tempfile::tempdir().unwrap();
    let cgroups = warden::node::cgroup::Cgroups::detect("jp1watch", state.path()).expect("a cgroup2 hierarchy (tests run as root)");
    let cg = cgroups.resource("base").unwrap();
    base.inst.set_cgroup(Some(cg.path()));
    base.start().await.unwrap();
    let mut live = lh.live("base");
    live.sort();
    let watched = base.inst.take_watch().expect("start names the logical host's processes").pids();
    assert!(!live.is_empty() && live.iter().all(|p| watched.contains(p)), "watched {watched:?}, live {live:?}");
    assert!(matches!(base.monitor().await, Health::Running));
    assert!(base.inst.take_watch().is_some_and(|w| !w.pids().is_empty()), "the monitor names them again");
    base.stop().await.unwrap();
    assert!(base.inst.take_watch().is_none() || lh.live("base").is_empty());
    let _ = cg.kill_all(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir(cg.path());
    let _ = std::fs::remove_dir(cgroups.base());
}
