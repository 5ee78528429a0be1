//! Plugin tier: the escapes an independent corpus of hostile plugins found (issue 8), one or more
//! tests per class. Each of these failed (or hung) before its fix; the commit that added it says
//! how.

use crate::support;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;
use warden::plugin::{AgentFailure, CallError, Health, Limits, PluginInstance};

const SEC: Option<Duration> = Some(Duration::from_secs(10));
const HOSTILE: &str = test_programs_artifacts::HOSTILE;

async fn guest(component: &str, granted: &str, memory_mib: usize) -> PluginInstance {
    let host = host();
    let plugin = load(&host, Path::new(component)).await;
    plugin.instance("r1", caps(granted), Limits { memory_bytes: memory_mib << 20 })
}

async fn hostile(granted: &str) -> PluginInstance {
    guest(HOSTILE, granted, 64).await
}

fn denied(r: &Result<Health, CallError>) -> Option<String> {
    match r.as_ref().err().and_then(|e| e.agent_failure()) {
        Some(AgentFailure::AccessDenied(m)) => Some(m.clone()),
        _ => None,
    }
}

fn warden(args: &[&str]) -> Output {
    let cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
    Command::new(env!("CARGO_BIN_EXE_warden")).env("WARDEN_CACHE_DIR", cache).env_remove("RUST_LOG").args(args).output().unwrap()
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
}

// ---- 1. The environment is a capability ----------------------------------------------------

#[tokio::test]
async fn environment_variables_need_a_declaration_and_a_grant() {
    let mut inst = hostile(r#"exec = [{ program = "/usr/bin/env" }]"#).await;
    let run = |env: &str| ctx(&[("mode", "exec"), ("program", "/usr/bin/env"), ("env", env), ("show", "stdout")]);
    // The corpus's escapes: a granted script, no arguments, and variables that make Python run
    // other code. Refused without an env grant.
    for env in ["PYTHONWARNINGS=ignore::antigravity.X", "BROWSER=/bin/sh -c 'id' %s", "OCF_ROOT=/x"] {
        let r = inst.monitor(&run(env), SEC).await;
        let m = denied(&r).unwrap_or_else(|| panic!("{env}: {r:?}"));
        assert!(m.contains("environment variable"), "{m}");
    }
    // Granted by pattern: passed, and nothing else is.
    let mut inst = hostile(
        r#"exec = [{ program = "/usr/bin/env" }]
env = ["OCF_*", "*WARNINGS"]"#,
    )
    .await;
    let h = inst.monitor(&run("OCF_ROOT=/x;OCF_RESKEY_ip=10.0.0.1"), SEC).await.unwrap();
    let Health::Degraded(out) = h else { panic!("{h:?}") };
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["OCF_RESKEY_ip=10.0.0.1", "OCF_ROOT=/x", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    assert!(denied(&inst.monitor(&run("LK_TAG=x"), SEC).await).is_some());
    // A few variables are never passed, even when a grant's pattern covers them.
    let m = denied(&inst.monitor(&run("PYTHONWARNINGS=ignore::antigravity.X"), SEC).await).unwrap();
    assert!(m.contains("could make the program run other code"), "{m}");
}

// ---- 2. Memory: the whole instance, and what crosses the boundary ---------------------------

#[tokio::test]
async fn the_memory_cap_counts_every_memory_of_the_instance() {
    // Four extra memories of 60 MiB each: every one is under 64 MiB, together they are not.
    let mut inst = guest(test_programs_artifacts::HOSTILE_MEMORIES, "", 64).await;
    let err = inst.monitor(&ctx(&[("mode", "ok")]), SEC).await.unwrap_err();
    assert!(matches!(err, CallError::OutOfMemory { limit, .. } if limit == 64 << 20), "{err}");
    // With room for all of them the same component runs.
    let mut inst = guest(test_programs_artifacts::HOSTILE_MEMORIES, "", 512).await;
    assert_eq!(inst.monitor(&ctx(&[("mode", "ok")]), SEC).await.unwrap(), Health::Running);
}

#[tokio::test]
async fn a_sixteen_mib_failure_reason_is_cut_at_the_boundary() {
    let mut inst = guest(HOSTILE, "", 128).await;
    let h = inst.monitor(&ctx(&[("mode", "fail-big"), ("size", &(16 << 20).to_string())]), SEC).await.unwrap();
    let Health::Failed(reason) = h else { panic!("{h:?}") };
    assert!(reason.len() <= 4096 + 64, "{} bytes kept", reason.len());
    assert!(reason.ends_with("[truncated from 16777216 bytes]"), "{}", &reason[reason.len() - 60..]);
}

// ---- 3. Grant matching is linear and bounded ------------------------------------------------

#[tokio::test]
async fn ten_double_stars_and_long_paths_are_matched_in_linear_time() {
    // The manifest declares one read pattern with ten `**`; nothing is granted at all.
    let mut inst = guest(test_programs_artifacts::HOSTILE_GLOBS, "", 64).await;
    // Forty components that almost match, many ways over: a backtracking matcher tries them all.
    let forty = format!("/{}/x", ["a"; 39].join("/"));
    let started = Instant::now();
    let m = denied(&inst.monitor(&ctx(&[("mode", "stat"), ("path", &forty)]), SEC).await).unwrap();
    assert!(m.contains("is not declared"), "{m}");
    // A 40 KB path is refused for its length, before any matching.
    let long = format!("/a{}/status", "/x".repeat(20_000));
    let m = denied(&inst.monitor(&ctx(&[("mode", "stat"), ("path", &long)]), SEC).await).unwrap();
    assert!(m.contains("longer than 4096 bytes"), "{m}");
    assert!(started.elapsed() < Duration::from_secs(2), "matching took {:?}", started.elapsed());
}

// ---- 4. Blocking host calls -----------------------------------------------------------------

#[tokio::test]
async fn reading_a_fifo_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let fifo = base.join("fifo");
    mkfifo(&fifo);
    let mut inst = hostile(&format!(r#"read = ["{}/**"]"#, base.display())).await;
    let started = Instant::now();
    let h = inst.monitor(&ctx(&[("mode", "read-each"), ("path", fifo.to_str().unwrap()), ("count", "10")]), SEC).await.unwrap();
    let Health::Degraded(each) = h else { panic!("{h:?}") };
    assert_eq!(each.split('|').count(), 10);
    assert!(each.split('|').all(|r| r.starts_with("err:") && r.contains("a FIFO")), "{each}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    // A stat still says what it is.
    let h = inst.monitor(&ctx(&[("mode", "stat"), ("path", fifo.to_str().unwrap())]), SEC).await.unwrap();
    assert_eq!(h, Health::Degraded("Some(FileKind::Other)".into()));
}

#[tokio::test]
async fn stuck_filesystem_calls_are_bounded_per_resource_and_fail_fast_beyond() {
    use warden::plugin::fs::{FsPool, PoolError, POOL_SIZE};
    let pool = FsPool::default();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let wait = std::sync::Arc::new(std::sync::Mutex::new(wait));
    // POOL_SIZE calls that never return in time (a hung mount): each is abandoned at its deadline.
    for _ in 0..POOL_SIZE {
        let w = wait.clone();
        let r = pool.run(Duration::from_millis(50), move || w.lock().unwrap().recv().ok()).await;
        assert_eq!(r.unwrap_err(), PoolError::Timeout);
    }
    // Their threads still hold the pool: the next call fails at once, starting no thread.
    let started = Instant::now();
    assert_eq!(pool.run(Duration::from_secs(10), || ()).await.unwrap_err(), PoolError::Busy);
    assert!(started.elapsed() < Duration::from_millis(100));
    // When the filesystem answers again, the pool is whole again.
    for _ in 0..POOL_SIZE {
        release.send(()).unwrap();
    }
    assert!(wait_until(Duration::from_secs(5), || pool.available() == POOL_SIZE).await);
    assert_eq!(pool.run(Duration::from_secs(10), || 7).await, Ok(7));
}

#[test]
fn agent_exec_exits_promptly_on_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let fifo = base.join("fifo");
    mkfifo(&fifo);
    let grant = format!("{}/**", base.display());
    let started = Instant::now();
    let o = warden(&[
        "agent",
        "exec",
        HOSTILE,
        "monitor",
        "-p",
        "mode=host-read",
        "-p",
        &format!("path={}", fifo.display()),
        "--allow-read",
        &grant,
        "--timeout",
        "2s",
    ]);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a regular file (a FIFO)"), "{}", String::from_utf8_lossy(&o.stderr));
}

// ---- 5. Check and open are one step ---------------------------------------------------------

#[tokio::test]
async fn swapping_a_directory_for_a_symlink_never_escapes_a_read_grant() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let granted = base.join("granted");
    std::fs::create_dir_all(granted.join("d")).unwrap();
    std::fs::write(granted.join("d/f"), "fine").unwrap();
    std::fs::create_dir(base.join("secret")).unwrap();
    std::fs::write(base.join("secret/f"), "SECRET").unwrap();
    std::os::unix::fs::symlink(base.join("secret"), granted.join("swap")).unwrap();
    // A racer swaps `d` (a directory) and `swap` (a symlink out of the grant) atomically, as
    // fast as it can, for the whole test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let (stop, a, b) = (stop.clone(), granted.join("d"), granted.join("swap"));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rustix::fs::renameat_with(rustix::fs::CWD, &a, rustix::fs::CWD, &b, rustix::fs::RenameFlags::EXCHANGE).unwrap();
            }
        })
    };
    let mut inst = hostile(&format!(r#"read = ["{}/**"]"#, granted.display())).await;
    let path = granted.join("d/f");
    let mut leaked_total = 0;
    let mut ok_total = 0;
    for _ in 0..5 {
        let h = inst.monitor(&ctx(&[("mode", "read-many"), ("path", path.to_str().unwrap()), ("count", "400")]), SEC).await.unwrap();
        let Health::Degraded(s) = h else { panic!("{h:?}") };
        let n = |k: &str| s.split(' ').find_map(|kv| kv.strip_prefix(k)).and_then(|v| v.parse::<u32>().ok()).unwrap();
        leaked_total += n("leaked=");
        ok_total += n("ok=");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    racer.join().unwrap();
    assert_eq!(leaked_total, 0, "a read returned the secret");
    assert!(ok_total > 0, "no read succeeded at all");
}

// ---- 6. Plugin bytes are read once ----------------------------------------------------------

#[tokio::test]
async fn a_plugin_that_is_a_fifo_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("p.wasm");
    mkfifo(&fifo);
    let host = host();
    let r = tokio::time::timeout(Duration::from_secs(10), host.load(&fifo)).await.expect("the load returns");
    let err = r.unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

fn node_config(dir: &Path, plugin: &Path) -> std::path::PathBuf {
    let cfg = dir.join("cluster.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"version = 1
[cluster]
name = "trust"

[[nodes]]
name = "n1"

[[plugins]]
name = "test-hostile"
path = "{}"

[[resources]]
name = "r1"
plugin = "test-hostile"

[[groups]]
name = "g"
resources = ["r1"]
"#,
            plugin.display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn node_check_and_run_honour_trusted_key() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("hostile.wasm");
    std::fs::copy(HOSTILE, &plugin).unwrap();
    assert!(warden(&["plugin", "keygen", dir.path().join("vendor").to_str().unwrap()]).status.success());
    let public = dir.path().join("vendor.pub");
    let cfg = node_config(dir.path(), &plugin);
    let (cfg, public) = (cfg.to_str().unwrap(), public.to_str().unwrap());
    let o = warden(&["node", "check", "--config", cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // An unsigned plugin under --trusted-key: refused by check and by run.
    let o = warden(&["--trusted-key", public, "node", "check", "--config", cfg]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is refused: unsigned"), "{}", String::from_utf8_lossy(&o.stderr));
    let state = dir.path().join("state");
    let socket = dir.path().join("w.sock");
    let o = warden(&[
        "--trusted-key",
        public,
        "node",
        "run",
        "--config",
        cfg,
        "--node",
        "n1",
        "--state-dir",
        state.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is refused: unsigned"), "{}", String::from_utf8_lossy(&o.stderr));
    // Signed by the trusted key: accepted.
    assert!(warden(&["plugin", "sign", plugin.to_str().unwrap(), "--key", dir.path().join("vendor.key").to_str().unwrap()])
        .status
        .success());
    let o = warden(&["--trusted-key", public, "node", "check", "--config", cfg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

// ---- 7. Logs --------------------------------------------------------------------------------

#[test]
fn refusals_are_rate_limited_in_the_log() {
    let o = warden(&[
        "--log",
        "warn",
        "agent",
        "exec",
        HOSTILE,
        "monitor",
        "-p",
        "mode=stat-flood",
        "-p",
        "path=/etc/shadow",
        "-p",
        "count=20000",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("test-hostile monitor: degraded: denied=20000"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let refusals = err.lines().filter(|l| l.contains("access denied")).count();
    assert!(refusals <= 20, "{refusals} refusal lines");
    assert!(err.contains("refused=20000"), "the rest are counted: {err}");
    assert!(err.len() < 16 * 1024, "{} bytes of log", err.len());
}

#[test]
fn a_newline_in_a_guest_message_cannot_forge_a_log_line() {
    let o = warden(&["--log", "info", "agent", "exec", HOSTILE, "monitor", "-p", "mode=log-forge"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err.lines().find(|l| l.contains("confirmed off")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("innocent\\n2026-01-01"), "one line, newline escaped: {line}");
    assert!(line.contains("\\r") && line.contains("\\u{1b}"), "{line}");
    assert!(!err.lines().any(|l| l.starts_with("2026-01-01")), "{err}");
}

// ---- 8. Connect grants ----------------------------------------------------------------------

#[tokio::test]
async fn address_patterns_match_ip_literals_only() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut inst = hostile(&format!(r#"connect = ["127.0.0.*:{port}"]"#)).await;
    let probe = |host: &str| ctx(&[("mode", "connect"), ("host", host), ("port", &port)]);
    assert_eq!(inst.monitor(&probe("127.0.0.1"), SEC).await.unwrap(), Health::Degraded("true".into()));
    let m = denied(&inst.monitor(&probe("127.0.0.9.hostile-name"), SEC).await).unwrap();
    assert!(m.contains("is not granted"), "{m}");
}

#[tokio::test]
async fn a_name_is_resolved_once_and_each_address_checked() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let probe = ctx(&[("mode", "connect"), ("host", "localhost"), ("port", &port)]);
    // The name alone is granted: where it leads is not.
    let mut inst = hostile(&format!(r#"connect = ["localhost:{port}"]"#)).await;
    let m = denied(&inst.monitor(&probe, SEC).await).unwrap();
    assert!(m.contains("resolves to"), "{m}");
    // The name and its address: connected (to the address that was checked).
    let mut inst = hostile(&format!(r#"connect = ["localhost:{port}", "127.0.0.1:{port}"]"#)).await;
    assert_eq!(inst.monitor(&probe, SEC).await.unwrap(), Health::Degraded("true".into()));
}

// ---- 9. The README's known limits -----------------------------------------------------------

#[tokio::test]
async fn exec_grants_are_matched_on_the_resolved_program() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    std::os::unix::fs::symlink("/bin/sh", base.join("helper")).unwrap();
    std::fs::write(base.join("ok.sh"), "#!/bin/sh\necho fine\n").unwrap();
    std::fs::set_permissions(base.join("ok.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut inst = hostile(&format!(r#"exec = [{{ program = "{}/**" }}]"#, base.display())).await;
    let helper = base.join("helper");
    let r = inst.monitor(&ctx(&[("mode", "exec"), ("program", helper.to_str().unwrap()), ("args", "-c id")]), SEC).await;
    let m = denied(&r).unwrap_or_else(|| panic!("{r:?}"));
    assert!(m.contains("resolves to"), "{m}");
    let ok = base.join("ok.sh");
    let h = inst.monitor(&ctx(&[("mode", "exec"), ("program", ok.to_str().unwrap()), ("show", "stdout")]), SEC).await.unwrap();
    assert_eq!(h, Health::Degraded("fine\n".into()));
    // A grant of a path that is itself a link (`/bin/sh` on a merged-/usr system) still works.
    let mut inst = hostile(r#"exec = [{ program = "/bin/sh", args = ["-c", "echo *"] }]"#).await;
    let h = inst.monitor(&ctx(&[("mode", "exec"), ("program", "/bin/sh"), ("args", "-c echo"), ("show", "stdout")]), SEC).await;
    assert!(h.is_ok() || denied(&h).is_some_and(|m| !m.contains("resolves to")), "{h:?}");
}

#[tokio::test]
async fn a_star_argument_never_matches_a_negative_pid() {
    // `kill -0 -1` would signal every process (signal 0 only checks, so the test is harmless
    // even where the grant is wrong).
    let mut inst = hostile(r#"exec = [{ program = "/bin/kill", args = ["-*", "*"] }]"#).await;
    let m = denied(&inst.monitor(&ctx(&[("mode", "exec"), ("program", "/bin/kill"), ("args", "-0 -1")]), SEC).await).unwrap();
    assert!(m.contains("is not granted"), "{m}");
    let me = std::process::id().to_string();
    let h = inst.monitor(&ctx(&[("mode", "exec"), ("program", "/bin/kill"), ("args", &format!("-0 {me}"))]), SEC).await.unwrap();
    assert!(matches!(&h, Health::Degraded(s) if s.starts_with("exit=Some(0)")), "{h:?}");
}

// ---- A trap's error carries the guest's last stderr lines -----------------------------------

#[tokio::test]
async fn a_trap_error_carries_the_last_lines_of_stderr() {
    let mut inst = hostile("").await;
    let err = inst.monitor(&ctx(&[("mode", "traceback")]), SEC).await.unwrap_err();
    let CallError::Trap { message, .. } = &err else { panic!("{err}") };
    for want in ["Traceback (most recent call last):", "frame_0", "frame_5", "TypeError: cannot read properties of undefined"] {
        assert!(message.contains(want), "{want} missing from: {message}");
    }
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(message.len() < 2048 + 200, "bounded: {} bytes", message.len());
}
