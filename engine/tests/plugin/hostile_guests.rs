//! Plugin tier: a hostile guest (tests/test-programs) is contained, and after each hostile call a
//! well-behaved call on the same host and the same instance succeeds.

use crate::support;
use std::time::Duration;

use support::*;
use warden::plugin::{AgentFailure, CallError, Health, Limits, PluginInstance, LOG_BURST};

const SEC: Option<Duration> = Some(Duration::from_secs(10));

async fn hostile(granted: &str) -> PluginInstance {
    let host = host();
    let plugin = load(&host, std::path::Path::new(test_programs_artifacts::HOSTILE)).await;
    // The host (engine) may be dropped: the plugin keeps what it needs alive.
    plugin.instance("r1", caps(granted), Limits { memory_bytes: 64 << 20 })
}

/// The well-behaved call every test makes after the hostile one.
async fn still_works(inst: &mut PluginInstance) {
    let h = inst.monitor(&ctx(&[("mode", "ok")]), SEC).await.expect("a well-behaved call after a hostile one");
    assert_eq!(h, Health::Running);
}

#[tokio::test]
async fn infinite_loop_in_monitor_is_stopped_at_the_deadline() {
    let mut inst = hostile("").await;
    let err = inst.monitor(&ctx(&[("mode", "loop")]), Some(Duration::from_millis(300))).await.unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("monitor timed out after 300ms"), "{err}");
    assert!(!inst.is_warm(), "a timed-out instance must be discarded");
    still_works(&mut inst).await;
    assert!(inst.last_stats().fresh_instance);
}

#[tokio::test]
async fn memory_bomb_hits_the_cap() {
    let mut inst = hostile("").await;
    let err = inst.monitor(&ctx(&[("mode", "membomb")]), SEC).await.unwrap_err();
    assert!(matches!(err, CallError::OutOfMemory { limit, .. } if limit == 64 << 20), "{err}");
    still_works(&mut inst).await;
}

#[tokio::test]
async fn stack_overflow_traps() {
    let mut inst = hostile("").await;
    // Rust guests keep big frames on a shadow stack in linear memory: overflowing it runs off the
    // bottom of memory.
    let err = inst.monitor(&ctx(&[("mode", "stack")]), SEC).await.unwrap_err();
    assert!(matches!(&err, CallError::Trap { message, .. } if message.contains("out of bounds memory access")), "{err}");
    still_works(&mut inst).await;
    // Small frames exhaust the engine's own wasm stack limit instead.
    let err = inst.monitor(&ctx(&[("mode", "deep")]), SEC).await.unwrap_err();
    assert!(matches!(&err, CallError::Trap { message, .. } if message.contains("call stack exhausted")), "{err}");
    still_works(&mut inst).await;
}

#[tokio::test]
async fn panic_traps_and_reports_the_guest_message() {
    let mut inst = hostile("").await;
    let err = inst.start(&ctx(&[("mode", "panic")]), SEC).await.unwrap_err();
    assert!(matches!(&err, CallError::Trap { message, .. } if message.contains("hostile guest panics on purpose")), "{err}");
    still_works(&mut inst).await;
}

#[tokio::test]
async fn exec_not_granted_is_denied_not_trapped() {
    let mut inst = hostile(r#"exec = [{ program = "/bin/true" }]"#).await;
    let err = inst.monitor(&ctx(&[("mode", "exec"), ("program", "/bin/sh"), ("args", "-c id")]), SEC).await.unwrap_err();
    match err.agent_failure() {
        Some(AgentFailure::AccessDenied(m)) => assert!(m.contains("exec `/bin/sh -c id` is not granted"), "{m}"),
        other => panic!("expected access denied, got {other:?} ({err})"),
    }
    assert_eq!(inst.last_stats().denials, 1);
    assert!(inst.is_warm(), "a denial is a normal result; the instance stays warm");
    still_works(&mut inst).await;
    // The granted program does run.
    let h = inst.monitor(&ctx(&[("mode", "exec"), ("program", "/bin/true")]), SEC).await.unwrap();
    assert!(matches!(&h, Health::Degraded(s) if s.starts_with("exit=Some(0)")), "{h:?}");
}

#[tokio::test]
async fn wasi_filesystem_is_empty() {
    let mut inst = hostile(r#"read = ["/**"]"#).await;
    // Even with every path granted to the host import, WASI itself has no preopened directory.
    let err = inst.monitor(&ctx(&[("mode", "wasi-read"), ("path", "/etc/shadow")]), SEC).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::AccessDenied(m)) if m.starts_with("WASI read failed")), "{err}");
    still_works(&mut inst).await;
}

#[tokio::test]
async fn host_read_of_shadow_is_denied() {
    let mut inst = hostile(r#"read = ["/tmp/**"]"#).await;
    let err = inst.monitor(&ctx(&[("mode", "host-read"), ("path", "/etc/shadow")]), SEC).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::AccessDenied(m)) if m.contains("read `/etc/shadow` is not granted")), "{err}");
    let err = inst.monitor(&ctx(&[("mode", "host-read"), ("path", "/tmp/../etc/shadow")]), SEC).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::AccessDenied(m)) if m.contains("`..`")), "{err}");
    still_works(&mut inst).await;
}

#[tokio::test]
async fn host_read_through_a_symlink_escape_is_denied() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    std::os::unix::fs::symlink("/etc/shadow", base.join("innocent")).unwrap();
    std::fs::write(base.join("fine.txt"), "hello").unwrap();
    let mut inst = hostile(&format!(r#"read = ["{}/**"]"#, base.display())).await;
    let err = inst.monitor(&ctx(&[("mode", "host-read"), ("path", &format!("{}/innocent", base.display()))]), SEC).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::AccessDenied(m)) if m.contains("resolves to `/etc/shadow`")), "{err}");
    let h = inst.monitor(&ctx(&[("mode", "host-read"), ("path", &format!("{}/fine.txt", base.display()))]), SEC).await.unwrap();
    assert_eq!(h, Health::Degraded("hello".into()));
    let h = inst.monitor(&ctx(&[("mode", "list"), ("path", &base.display().to_string())]), SEC).await.unwrap();
    assert_eq!(h, Health::Degraded("fine.txt,innocent".into()));
}

fn hang_script(dir: &std::path::Path, marker: &str) -> String {
    let path = dir.join("hang.sh");
    std::fs::write(&path, format!("#!/bin/sh\nsleep {marker} &\nsleep {marker}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn granted_program_that_never_exits_loses_its_whole_group_at_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let marker = "987.101";
    let script = hang_script(dir.path(), marker);
    let mut inst = hostile(&format!(r#"exec = [{{ program = "{script}" }}]"#)).await;
    let h = inst.monitor(&ctx(&[("mode", "exec"), ("program", &script), ("exec_timeout_ms", "300")]), SEC).await.unwrap();
    assert!(matches!(&h, Health::Degraded(s) if s.contains("signal=Some(9) timed_out=true")), "{h:?}");
    assert!(
        wait_until(Duration::from_secs(10), || live_processes(marker).is_empty()).await,
        "children survived: {:?}",
        live_processes(marker)
    );
    still_works(&mut inst).await;
}

#[tokio::test]
async fn granted_program_that_never_exits_loses_its_whole_group_at_the_action_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let marker = "987.202";
    let script = hang_script(dir.path(), marker);
    let mut inst = hostile(&format!(r#"exec = [{{ program = "{script}" }}]"#)).await;
    assert!(wait_until(Duration::from_secs(1), || live_processes(marker).is_empty()).await);
    let err = inst.monitor(&ctx(&[("mode", "exec"), ("program", &script)]), Some(Duration::from_millis(700))).await.unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    assert!(
        wait_until(Duration::from_secs(10), || live_processes(marker).is_empty()).await,
        "children survived: {:?}",
        live_processes(marker)
    );
    still_works(&mut inst).await;
}

#[tokio::test]
async fn megabytes_of_output_are_capped_and_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("loud.sh");
    std::fs::write(&script, "#!/bin/sh\nhead -c 5000000 /dev/zero | tr '\\0' x\nhead -c 3000000 /dev/zero | tr '\\0' y >&2\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = script.display().to_string();
    let mut inst = hostile(&format!(r#"exec = [{{ program = "{script}" }}]"#)).await;
    let h = inst.monitor(&ctx(&[("mode", "exec"), ("program", &script)]), SEC).await.unwrap();
    assert_eq!(
        h,
        Health::Degraded(
            "exit=Some(0) signal=None timed_out=false stdout_len=65536 stdout_truncated=true stderr_len=65536 stderr_truncated=true".into()
        )
    );
    still_works(&mut inst).await;
}

#[tokio::test]
async fn ten_thousand_log_calls_are_rate_limited() {
    let mut inst = hostile("").await;
    assert_eq!(inst.monitor(&ctx(&[("mode", "log-flood")]), SEC).await.unwrap(), Health::Running);
    let stats = inst.last_stats();
    assert_eq!(stats.logs_emitted, LOG_BURST);
    assert_eq!(stats.logs_suppressed, 10_000 - LOG_BURST);
    still_works(&mut inst).await;
    assert_eq!(inst.last_stats().logs_emitted, 0, "the budget is per call");
}

#[tokio::test]
async fn ten_megabytes_on_stderr_do_not_break_the_guest() {
    let mut inst = hostile("").await;
    assert_eq!(inst.monitor(&ctx(&[("mode", "print-flood")]), SEC).await.unwrap(), Health::Running);
    still_works(&mut inst).await;
}

#[tokio::test]
async fn guest_sees_no_environment() {
    let mut inst = hostile("").await;
    assert_eq!(inst.monitor(&ctx(&[("mode", "env")]), SEC).await.unwrap(), Health::Degraded(String::new()));
}

#[tokio::test]
async fn tcp_probe_needs_a_grant_and_reports_reachability() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let closed = free_port().to_string();
    let mut inst = hostile(&format!(r#"connect = ["127.0.0.1:{port}", "127.0.0.1:{closed}"]"#)).await;
    let probe = |p: &str| ctx(&[("mode", "connect"), ("host", "127.0.0.1"), ("port", p)]).clone();
    assert_eq!(inst.monitor(&probe(&port), SEC).await.unwrap(), Health::Degraded("true".into()));
    assert_eq!(inst.monitor(&probe(&closed), SEC).await.unwrap(), Health::Degraded("false".into()));
    let err = inst.monitor(&probe("22"), SEC).await.unwrap_err();
    assert!(matches!(err.agent_failure(), Some(AgentFailure::AccessDenied(m)) if m.contains("127.0.0.1:22")), "{err}");
}

#[tokio::test]
async fn sleeping_past_the_deadline_times_out() {
    let mut inst = hostile("").await;
    let err = inst.monitor(&ctx(&[("mode", "sleep"), ("ms", "60000")]), Some(Duration::from_millis(300))).await.unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    assert_eq!(inst.monitor(&ctx(&[("mode", "sleep"), ("ms", "10")]), SEC).await.unwrap(), Health::Running);
}

#[tokio::test]
async fn warm_instance_is_reused_between_calls() {
    let mut inst = hostile("").await;
    still_works(&mut inst).await;
    assert!(inst.last_stats().fresh_instance);
    still_works(&mut inst).await;
    assert!(!inst.last_stats().fresh_instance);
}

#[tokio::test]
async fn fence_actions_on_a_resource_agent_are_refused() {
    let mut inst = hostile("").await;
    let err = inst.fence(&ctx(&[]), "node-b", SEC).await.unwrap_err();
    assert!(matches!(err, CallError::NoSuchAction { .. }), "{err}");
    assert!(err.to_string().contains("has no `fence` action"), "{err}");
    still_works(&mut inst).await;
}

#[tokio::test] // a current-thread runtime: a guest that never yields would starve every other task
async fn a_spinning_guest_does_not_hold_the_runtime() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let mut inst = hostile("").await;
    still_works(&mut inst).await; // instantiated before the clock starts
    let ticks = std::sync::Arc::new(AtomicU32::new(0));
    let t = ticks.clone();
    let timer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            t.fetch_add(1, Ordering::Relaxed);
        }
    });
    let err = inst.monitor(&ctx(&[("mode", "loop")]), Some(Duration::from_secs(1))).await.unwrap_err();
    let seen = ticks.load(Ordering::Relaxed);
    timer.abort();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    assert!(seen >= 5, "the other task ran only {seen} times while the guest spun");
    still_works(&mut inst).await;
}
