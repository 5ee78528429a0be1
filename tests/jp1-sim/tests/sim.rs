//! The simulator against the behaviour of jp1.md: paths, the logical host rule, real daemons
//! under JP1's process names, exit codes 0/4/8/12, start returning early, stop/killall, and the
//! fault switches. Every test uses its own directory and kills its own daemons when it ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const SIM: &str = env!("CARGO_BIN_EXE_jp1-sim");

/// A node: an install prefix and shared directories in a fresh directory; dropping it kills
/// every daemon started from it (by pid) and removes the directory.
struct Node {
    dir: PathBuf,
    prefix: PathBuf,
}

impl Node {
    fn new(ajs: &str) -> Node {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!("jp1-sim-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = dir.join("prefix");
        let (code, out) = run(Path::new(SIM), &["install", prefix.to_str().unwrap(), "--ajs", ajs], &[]);
        assert_eq!(code, 0, "{out}");
        Node { dir, prefix }
    }

    fn lhost(&self, name: &str, ajs: &str) -> PathBuf {
        let shared = self.dir.join(format!("shared-{name}"));
        let (code, out) =
            run(Path::new(SIM), &["setup-lhost", self.prefix.to_str().unwrap(), name, shared.to_str().unwrap(), "--ajs", ajs], &[]);
        assert_eq!(code, 0, "{out}");
        shared
    }

    /// Run an installed command, e.g. `cmd("opt/jp1base/bin/jevstat", &["lh1"])`.
    fn cmd(&self, rel: &str, args: &[&str]) -> (i32, String) {
        run(&self.prefix.join(rel), args, &[])
    }

    fn live(&self) -> Vec<u32> {
        live_under(&self.dir)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for _ in 0..3 {
            for pid in live_under(&self.dir) {
                let _ = Command::new("/bin/kill").args(["-9", &pid.to_string()]).status();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(program: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let o = Command::new(program).args(args).env_remove("JP1_HOSTNAME").envs(env.iter().copied()).output().unwrap();
    (o.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next().and_then(|r| r.trim().chars().next())
}

/// Live (non-zombie) processes whose argv[0] lies under `dir`.
fn live_under(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv0 = String::from_utf8_lossy(cmd.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
        if Path::new(&argv0).starts_with(dir) && !matches!(state(pid), Some('Z') | Some('X') | None) {
            out.push(pid);
        }
    }
    out
}

fn pid(shared: &Path, product: &str, name: &str) -> u32 {
    std::fs::read_to_string(shared.join("jp1sim").join(product).join("pids").join(name)).unwrap().trim().parse().unwrap()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

/// kill -9, then until the process is dead (a zombie or gone): the signal is delivered when the
/// process next runs, which on a loaded machine may be after the next status command.
fn kill9(pid: u32) {
    Command::new("/bin/kill").args(["-9", &pid.to_string()]).status().unwrap();
    let dead = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |st| st.rsplit(')').next().and_then(|r| r.trim().chars().next()).is_some_and(|c| c == 'Z' || c == 'X'))
    };
    assert!(wait(Duration::from_secs(10), dead), "pid {pid} still alive 10 s after kill -9");
}

fn wait(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

const BASE_STATUS: &str = "opt/jp1base/bin/jbs_spmd_status";
const JEVSTAT: &str = "opt/jp1base/bin/jevstat";
const AJS_STATUS: &str = "opt/jp1ajs2/bin/jajs_spmd_status";

#[test]
fn install_creates_the_documented_tree() {
    let node = Node::new("manager");
    for rel in [
        "etc/opt/jp1base/jbs_start.cluster",
        "etc/opt/jp1base/jbs_stop.cluster",
        "etc/opt/jp1base/jbs_killall.cluster",
        "opt/jp1base/bin/jbs_spmd_status",
        "opt/jp1base/bin/jevstat",
        "etc/opt/jp1ajs2/jajs_start.cluster",
        "etc/opt/jp1ajs2/jajs_stop.cluster",
        "etc/opt/jp1ajs2/jajs_killall.cluster",
        "opt/jp1ajs2/bin/jajs_spmd_status",
        "opt/jp1ajs2/bin/ajsqlstatus",
        "opt/jp1ajs2/bin/jajs_status",
    ] {
        let meta = std::fs::metadata(node.prefix.join(rel)).unwrap_or_else(|_| panic!("{rel} is installed"));
        assert!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0, "{rel} is executable");
    }
    let pp = std::fs::read_to_string(node.prefix.join("etc/.hitachi/pplistd/pplistd")).unwrap();
    assert!(pp.lines().any(|l| l == "JP1/Automatic Job Management System 3 - Manager"), "{pp}");
    assert!(!pp.contains("- Agent"), "{pp}");

    let base_only = Node::new("none");
    assert!(!base_only.prefix.join("etc/opt/jp1ajs2/jajs_start.cluster").exists());
    let shared = base_only.dir.join("s");
    let (code, out) =
        run(Path::new(SIM), &["setup-lhost", base_only.prefix.to_str().unwrap(), "lhx", shared.to_str().unwrap(), "--ajs", "manager"], &[]);
    assert_eq!(code, 1, "AJS3 is not installed: {out}");
}

#[test]
fn setup_lays_out_the_shared_directory_and_refuses_bad_names() {
    let node = Node::new("manager");
    let shared = node.lhost("lhsetup", "manager");
    for d in [
        "jp1base/conf",
        "jp1base/log",
        "event",
        "jp1ajs2/conf",
        "jp1ajs2/database",
        "jp1ajs2/jobinf",
        "jp1ajs2/log",
        "jp1ajs2/sys",
        "jp1ajs2/tmp",
        "jp1ajs2/backup",
    ] {
        assert!(shared.join(d).is_dir(), "{d}");
    }
    let physical = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let p = node.prefix.to_str().unwrap();
    let s = node.dir.join("x");
    for bad in [physical.as_str(), "has space", &"x".repeat(64)] {
        let (code, out) = run(Path::new(SIM), &["setup-lhost", p, bad, s.to_str().unwrap()], &[]);
        assert_eq!(code, 1, "{bad}: {out}");
    }
}

#[test]
fn base_lifecycle_with_real_daemons_and_exit_codes() {
    let node = Node::new("none");
    let shared = node.lhost("lhb", "none");
    assert_eq!(node.cmd(BASE_STATUS, &["-h", "lhb"]).0, 8);
    assert_eq!(node.cmd(JEVSTAT, &["lhb"]).0, 8);

    let (code, out) = node.cmd("etc/opt/jp1base/jbs_start.cluster", &["lhb"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = node.cmd(BASE_STATUS, &["-h", "lhb", "-t", "5"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["jbsroute", "jcocmd", "jbsplugin", "jbshcd", "jbshchostd", "jbssrvmgr", "jbslcact", "jbscomd"]
    );
    assert_eq!(node.cmd(JEVSTAT, &["lhb", "-t", "5"]).0, 0);
    for name in ["jbs_spmd", "jbsroute", "jevservice"] {
        assert_eq!(comm(pid(&shared, "base", name)), name);
    }
    // Detached: its own session, not the start command's.
    let spmd = pid(&shared, "base", "jbs_spmd");
    let stat = std::fs::read_to_string(format!("/proc/{spmd}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    assert_eq!(fields[3], spmd.to_string(), "jbs_spmd leads its own session");

    assert_eq!(node.cmd("etc/opt/jp1base/jbs_start.cluster", &["lhb"]).0, 0, "starting a running JP1/Base is fine");
    assert_eq!(pid(&shared, "base", "jbs_spmd"), spmd);

    // One child killed: some running (4), naming it; the start command refuses.
    kill9(pid(&shared, "base", "jbsroute"));
    let (code, out) = node.cmd(BASE_STATUS, &["-h", "lhb"]);
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("not running: jbsroute"), "{out}");
    assert_eq!(node.cmd("etc/opt/jp1base/jbs_start.cluster", &["lhb"]).0, 1);

    // Stop ends everything cleanly: 8 without an abnormal note.
    let (code, out) = node.cmd("etc/opt/jp1base/jbs_stop.cluster", &["lhb"]);
    assert_eq!(code, 0, "{out}");
    assert!(node.live().is_empty());
    let (code, out) = node.cmd(BASE_STATUS, &["-h", "lhb"]);
    assert_eq!(code, 8);
    assert!(!out.contains("abnormally"), "{out}");
}

#[test]
fn logical_host_from_h_then_jp1_hostname_then_physical_name() {
    let node = Node::new("none");
    node.lhost("lhname", "none");
    let status = node.prefix.join(BASE_STATUS);
    assert_eq!(run(&status, &["-h", "lhname"], &[]).0, 8);
    assert_eq!(run(&status, &[], &[("JP1_HOSTNAME", "lhname")]).0, 8, "JP1_HOSTNAME is used without -h");
    let (code, out) = run(&status, &[], &[]);
    assert_eq!(code, 1, "the physical host is not set up here: {out}");
    assert!(out.contains("not set up"), "{out}");
    assert_eq!(run(&status, &["-h", "nosuch"], &[]).0, 1);
    assert_eq!(run(&status, &["-h", "lhname", "-t", "99999"], &[]).0, 1, "-t out of range");

    // .cluster commands take the logical host as their argument, or JP1_HOSTNAME.
    let (code, out) = run(&node.prefix.join("etc/opt/jp1base/jbs_start.cluster"), &[], &[("JP1_HOSTNAME", "lhname")]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(run(&status, &["-h", "lhname"], &[]).0, 0);
    assert_eq!(run(&node.prefix.join("etc/opt/jp1base/jbs_killall.cluster"), &["lhname"], &[]).0, 0);

    // Called through a link named after the command, the prefix comes from the link's path.
    let other = node.dir.join("linked");
    std::fs::create_dir_all(other.join("opt/jp1base/bin")).unwrap();
    std::os::unix::fs::symlink(SIM, other.join(BASE_STATUS)).unwrap();
    let (code, out) = run(&other.join(BASE_STATUS), &["-h", "lhname"], &[]);
    assert_eq!(code, 1, "not registered under the link's prefix: {out}");
    assert!(out.contains(&other.display().to_string()), "{out}");
}

#[test]
fn ajs3_start_returns_early_and_has_no_degraded_mode() {
    let node = Node::new("manager");
    let shared = node.lhost("lha", "manager");
    let (code, out) = node.cmd("etc/opt/jp1ajs2/jajs_start.cluster", &["lha"]);
    assert_eq!(code, 1, "JP1/Base must run first: {out}");
    assert!(node.live().is_empty());

    assert_eq!(node.cmd("etc/opt/jp1base/jbs_start.cluster", &["lha"]).0, 0);
    let t0 = Instant::now();
    assert_eq!(node.cmd("etc/opt/jp1ajs2/jajs_start.cluster", &["lha"]).0, 0);
    assert!(t0.elapsed() < Duration::from_millis(900), "returns while the startup continues");
    let (code, out) = node.cmd(AJS_STATUS, &["-h", "lha"]);
    assert_eq!(code, 4, "not yet up: {out}");
    assert!(out.contains("startup is in progress"), "{out}");
    assert!(wait(Duration::from_secs(5), || node.cmd(AJS_STATUS, &["-h", "lha"]).0 == 0));
    let (_, out) = node.cmd("opt/jp1ajs2/bin/ajsqlstatus", &["-h", "lha"]);
    assert!(out.contains("Queueless agent service : active"), "{out}");
    for name in ["jajs_spmd", "jajs_dbmd_JF0", "jajs_hstd", "jajs_agtd", "ajsqlagtd", "ajsqlftpd"] {
        assert_eq!(comm(pid(&shared, "ajs", name)), name);
    }
    assert_eq!(comm(pid(&shared, "ajs", "jajs_schd_AJSROOT1")), "jajs_schd_AJSRO", "comm holds 15 characters");

    // A scheduler crash: invisible to jajs_spmd_status, shown by jajs_status.
    kill9(pid(&shared, "ajs", "jajs_schd_AJSROOT1"));
    assert!(wait(Duration::from_secs(3), || node.cmd("opt/jp1ajs2/bin/jajs_status", &["-h", "lha"]).0 == 4));
    assert_eq!(node.cmd(AJS_STATUS, &["-h", "lha"]).0, 0);

    // One listed process killed: the whole AJS3 service stops; status says it ended abnormally.
    kill9(pid(&shared, "ajs", "jajs_hstd"));
    assert!(wait(Duration::from_secs(5), || live_under(&shared.join("jp1sim/ajs")).is_empty()), "all AJS3 processes stop");
    let (code, out) = node.cmd(AJS_STATUS, &["-h", "lha"]);
    assert_eq!(code, 8);
    assert!(out.contains("ended abnormally") && out.contains("jajs_hstd"), "{out}");
    assert!(!live_under(&shared.join("jp1sim/base")).is_empty(), "JP1/Base keeps running");
    // The stop command records a clean stop.
    assert_eq!(node.cmd("etc/opt/jp1ajs2/jajs_stop.cluster", &["lha"]).0, 0);
    let (code, out) = node.cmd(AJS_STATUS, &["-h", "lha"]);
    assert_eq!(code, 8);
    assert!(!out.contains("abnormally"), "{out}");
}

#[test]
fn a_zombie_counts_as_dead() {
    let node = Node::new("none");
    let shared = node.lhost("lhz", "none");
    assert_eq!(node.cmd("etc/opt/jp1base/jbs_start.cluster", &["lhz"]).0, 0);
    let children: Vec<u32> = ["jbsroute", "jcocmd", "jevservice"].iter().map(|n| pid(&shared, "base", n)).collect();
    // Killing the process manager orphans its children, which die at once (parent-death signal)
    // and stay zombies until PID 1 reaps them, slowly on these machines.
    kill9(pid(&shared, "base", "jbs_spmd"));
    assert!(wait(Duration::from_secs(2), || node.cmd(BASE_STATUS, &["-h", "lhz"]).0 == 8), "status must not wait for the reaping");
    let (_, out) = node.cmd(BASE_STATUS, &["-h", "lhz"]);
    assert!(out.contains("ended abnormally"), "{out}");
    assert_eq!(node.cmd(JEVSTAT, &["lhz"]).0, 8);
    for c in children {
        assert!(!matches!(state(c), Some(s) if s != 'Z' && s != 'X'), "child {c} is dead or a zombie");
    }
}

#[test]
fn fault_transient_12_and_hung_status() {
    let node = Node::new("none");
    let shared = node.lhost("lhf", "none");
    assert_eq!(node.cmd("etc/opt/jp1base/jbs_start.cluster", &["lhf"]).0, 0);
    let faults = shared.join("jp1sim/faults");
    std::fs::write(faults.join("jbs_spmd_status.transient12"), "2").unwrap();
    assert_eq!(node.cmd(BASE_STATUS, &["-h", "lhf"]).0, 12);
    assert_eq!(node.cmd(BASE_STATUS, &["-h", "lhf"]).0, 12);
    assert_eq!(node.cmd(BASE_STATUS, &["-h", "lhf"]).0, 0, "two 12s, then healthy");
    assert!(!faults.join("jbs_spmd_status.transient12").exists());
    std::fs::write(faults.join("jevstat.transient12"), "").unwrap();
    let (code, out) = node.cmd(JEVSTAT, &["lhf"]);
    assert_eq!(code, 12, "{out}");
    assert_eq!(node.cmd(JEVSTAT, &["lhf"]).0, 0);

    std::fs::write(faults.join("jbs_spmd_status.hang"), "").unwrap();
    let t0 = Instant::now();
    assert_eq!(node.cmd(BASE_STATUS, &["-h", "lhf", "-t", "1"]).0, 12);
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(5), "honours -t: {took:?}");
}

#[test]
fn fault_start_fail_slow_start_and_stop_fail() {
    let node = Node::new("manager");
    let shared = node.lhost("lhs", "manager");
    let faults = shared.join("jp1sim/faults");

    std::fs::write(faults.join("base.start-fail"), "").unwrap();
    let (code, out) = node.cmd("etc/opt/jp1base/jbs_start.cluster", &["lhs"]);
    assert_eq!(code, 1, "{out}");
    assert!(node.live().is_empty());
    std::fs::remove_file(faults.join("base.start-fail")).unwrap();
    assert_eq!(node.cmd("etc/opt/jp1base/jbs_start.cluster", &["lhs"]).0, 0);

    // Silent: the start command succeeds, the service dies during its startup.
    std::fs::write(faults.join("ajs.start-fail"), "silent").unwrap();
    assert_eq!(node.cmd("etc/opt/jp1ajs2/jajs_start.cluster", &["lhs"]).0, 0);
    assert!(wait(Duration::from_secs(5), || node.cmd(AJS_STATUS, &["-h", "lhs"]).0 == 8));
    assert!(node.cmd(AJS_STATUS, &["-h", "lhs"]).1.contains("startup failed"));
    std::fs::remove_file(faults.join("ajs.start-fail")).unwrap();

    // Slow start: not up for the given seconds.
    std::fs::write(faults.join("ajs.slow-start"), "2.5").unwrap();
    let t0 = Instant::now();
    assert_eq!(node.cmd("etc/opt/jp1ajs2/jajs_start.cluster", &["lhs"]).0, 0);
    assert!(wait(Duration::from_secs(10), || node.cmd(AJS_STATUS, &["-h", "lhs"]).0 == 0));
    assert!(t0.elapsed() >= Duration::from_millis(2500), "{:?}", t0.elapsed());

    // Stop fails and leaves the processes; killall ends them.
    std::fs::write(faults.join("ajs.stop-fail"), "").unwrap();
    assert_eq!(node.cmd("etc/opt/jp1ajs2/jajs_stop.cluster", &["lhs"]).0, 1);
    assert_eq!(node.cmd(AJS_STATUS, &["-h", "lhs"]).0, 0);
    assert_eq!(node.cmd("etc/opt/jp1ajs2/jajs_killall.cluster", &["lhs"]).0, 0);
    assert!(live_under(&shared.join("jp1sim/ajs")).is_empty());
    assert_eq!(node.cmd(AJS_STATUS, &["-h", "lhs"]).0, 8);
    assert_eq!(node.cmd("etc/opt/jp1base/jbs_stop.cluster", &["lhs"]).0, 0);
    assert!(node.live().is_empty());
}

#[test]
fn killall_touches_only_its_logical_host() {
    let node = Node::new("none");
    let one = node.lhost("lhk1", "none");
    let two = node.lhost("lhk2", "none");
    for lh in ["lhk1", "lhk2"] {
        assert_eq!(node.cmd("etc/opt/jp1base/jbs_start.cluster", &[lh]).0, 0);
    }
    let mut before = live_under(&two);
    before.sort();
    assert_eq!(before.len(), 10);
    assert_eq!(node.cmd("etc/opt/jp1base/jbs_killall.cluster", &["lhk1"]).0, 0);
    assert!(live_under(&one).is_empty());
    let mut after = live_under(&two);
    after.sort();
    assert_eq!(before, after);
    assert_eq!(node.cmd(BASE_STATUS, &["-h", "lhk2"]).0, 0);
    assert_eq!(node.cmd(BASE_STATUS, &["-h", "lhk1"]).0, 8);
}
