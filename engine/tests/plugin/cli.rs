//! The real `warden` binary: `agent exec` exit codes and one-line reasons, `plugin inspect`,
//! `plugin package`, signing and trusted-key loading, and the component cache.

use crate::support;
use std::path::Path;
use std::process::{Command, Output};

use support::*;

fn warden(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden")).env("WARDEN_CACHE_DIR", cache).env_remove("RUST_LOG").args(args).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn cache() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

const HOSTILE: &str = test_programs_artifacts::HOSTILE;

#[test]
fn monitor_prints_health_and_exits_by_state() {
    let o = warden(&cache(), &["agent", "exec", HOSTILE, "monitor", "--param", "mode=ok"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert!(text(&o).0.starts_with("test-hostile monitor: running"), "{:?}", text(&o));
    let o = warden(&cache(), &["agent", "exec", HOSTILE, "monitor", "--param", "mode=env", "--json"]);
    assert_eq!(o.status.code(), Some(5), "degraded");
    let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(v["health"]["state"], "degraded");
    assert_eq!(v["plugin"], "test-hostile");
}

#[test]
fn timeout_is_one_line_naming_plugin_and_action() {
    let o = warden(&cache(), &["agent", "exec", HOSTILE, "monitor", "--param", "mode=loop", "--timeout", "300ms"]);
    assert_eq!(o.status.code(), Some(3));
    let (_, err) = text(&o);
    assert_eq!(err.trim().lines().last().unwrap(), "error: plugin `test-hostile`: monitor timed out after 300ms");
}

#[test]
fn access_denied_names_what_was_refused() {
    let o = warden(
        &cache(),
        &["agent", "exec", HOSTILE, "start", "--param", "mode=exec", "--param", "program=/bin/sh", "--allow-exec", "/bin/true"],
    );
    assert_eq!(o.status.code(), Some(1));
    let (_, err) = text(&o);
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("error: plugin `test-hostile`: start: access denied: exec `/bin/sh` is not granted"), "{err}");
    // The refusal is also logged with the resource and plugin.
    assert!(err.contains("access denied") && err.contains("resource") && err.contains("plugin"), "{err}");
}

#[test]
fn trap_and_memory_errors_exit_3() {
    let o = warden(&cache(), &["agent", "exec", HOSTILE, "start", "--param", "mode=panic"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(text(&o).1.contains("start trapped: wasm trap"), "{:?}", text(&o));
    let o = warden(&cache(), &["agent", "exec", HOSTILE, "monitor", "--param", "mode=membomb", "--memory-mib", "32"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(text(&o).1.contains("monitor ran out of memory (limit 32 MiB)"), "{:?}", text(&o));
}

#[test]
fn missing_and_unknown_parameters_are_usage_errors() {
    let plugin = built_plugin("example-rust");
    let p = plugin.to_str().unwrap();
    let o = warden(&cache(), &["agent", "exec", p, "monitor"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        text(&o).1.trim(),
        "error: plugin `example-rust`: monitor: invalid parameters: missing required parameter `pidfile`, `start`"
    );
    let o = warden(&cache(), &["agent", "exec", p, "monitor", "--param", "pidfle=/x", "--param", "pidfile=/x", "--param", "start=/y"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("unknown parameter `pidfle`"), "{:?}", text(&o));
}

#[test]
fn bad_plugins_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm at all").unwrap();
    let o = warden(&cache(), &["plugin", "inspect", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("not a WebAssembly component"), "{:?}", text(&o));

    let missing = warden(&cache(), &["agent", "exec", "/nonexistent.wasm", "monitor"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing).1.contains("cannot read plugin /nonexistent.wasm"), "{:?}", text(&missing));

    // A component without its manifest: strip it by re-packing without one is impossible, so
    // use the raw guest build output.
    let raw = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-build/example-python.component.wasm");
    if raw.exists() {
        let o = warden(&cache(), &["plugin", "inspect", raw.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2));
        assert!(text(&o).1.contains("no `warden-manifest` section"), "{:?}", text(&o));
    }
}

#[test]
fn inspect_reports_everything_an_operator_needs() {
    let plugin = built_plugin("example-rust");
    let o = warden(&cache(), &["plugin", "inspect", plugin.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(v["name"], "example-rust");
    assert_eq!(v["version"], "0.2.0");
    assert_eq!(v["wit"], "warden:agent@0.2.0");
    assert_eq!(v["world"], "resource-agent");
    assert_eq!(v["signature"], "unsigned");
    assert_eq!(v["parameters"][0]["name"], "pidfile");
    assert_eq!(v["parameters"][0]["required"], true);
    assert_eq!(v["parameters"][3]["default"], "5000");
    assert_eq!(v["timeouts"]["start_ms"], 60000);
    assert_eq!(v["capabilities"]["exec"][0]["program"], "/**");
    let o = warden(&cache(), &["plugin", "inspect", plugin.to_str().unwrap()]);
    let out = text(&o).0;
    assert!(out.contains("capabilities requested:") && out.contains("pidfile") && out.contains("warden:agent@0.2.0"), "{out}");
    // A plugin built for the frozen 0.1.0 says so.
    let legacy = built_plugin("legacy-v0-1");
    let o = warden(&cache(), &["plugin", "inspect", legacy.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(v["wit"], "warden:agent@0.1.0");
}

#[test]
fn sign_verify_and_trusted_key_loading() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("p.wasm");
    std::fs::copy(built_plugin("example-rust"), &plugin).unwrap();
    let p = plugin.to_str().unwrap();
    let stem = dir.path().join("vendor");
    assert!(warden(&cache(), &["plugin", "keygen", stem.to_str().unwrap()]).status.success());
    let (key, public) = (dir.path().join("vendor.key"), dir.path().join("vendor.pub"));
    let (key, public) = (key.to_str().unwrap(), public.to_str().unwrap());

    // Unsigned: refused when a trusted key is required.
    let o = warden(&cache(), &["--trusted-key", public, "agent", "exec", p, "metadata"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("is refused: unsigned"), "{:?}", text(&o));

    assert!(warden(&cache(), &["plugin", "sign", p, "--key", key]).status.success());
    let o = warden(&cache(), &["plugin", "verify", p, "--key", public]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = warden(&cache(), &["--trusted-key", public, "agent", "exec", p, "metadata"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = warden(&cache(), &["--trusted-key", public, "plugin", "inspect", p, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert!(v["signature"].as_str().unwrap().starts_with("signed by trusted key"), "{v}");

    // Tampered bytes: the signature no longer matches.
    let mut bytes = std::fs::read(&plugin).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x20;
    std::fs::write(&plugin, &bytes).unwrap();
    let o = warden(&cache(), &["plugin", "verify", p, "--key", public]);
    assert_eq!(o.status.code(), Some(1));
    let o = warden(&cache(), &["--trusted-key", public, "plugin", "inspect", p]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("INVALID signature"), "{:?}", text(&o));
}

#[test]
fn package_embeds_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("again.wasm");
    let manifest = dir.path().join("warden.toml");
    std::fs::write(&manifest, "version = 1\nname = \"example-rust\"\n[capabilities]\nread = [\"/run/**\"]\n").unwrap();
    let o = warden(
        &cache(),
        &[
            "plugin",
            "package",
            built_plugin("example-rust").to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let o = warden(&cache(), &["plugin", "inspect", out.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(v["capabilities"]["read"][0], "/run/**");
    assert!(v["capabilities"].get("exec").is_none());
}

#[tokio::test]
async fn cache_is_used_and_survives_corruption() {
    use warden::plugin::{CacheOutcome, HostOptions, PluginHost};
    let dir = tempfile::tempdir().unwrap();
    let host = PluginHost::new(HostOptions { cache_dir: Some(dir.path().to_path_buf()), trusted_keys: vec![] }).unwrap();
    let first = host.load(Path::new(HOSTILE)).await.unwrap();
    assert_eq!(first.load_stats.cache, CacheOutcome::Compiled);
    let second = host.load(Path::new(HOSTILE)).await.unwrap();
    assert_eq!(second.load_stats.cache, CacheOutcome::Hit);
    // Corrupt every cached artifact: the next load recompiles instead of failing.
    for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
        std::fs::write(e.path(), b"garbage").unwrap();
    }
    let third = host.load(Path::new(HOSTILE)).await.unwrap();
    assert_eq!(third.load_stats.cache, CacheOutcome::Compiled);
    let mut inst = third.instance("r", Default::default(), Default::default());
    assert_eq!(inst.monitor(&ctx(&[]), None).await.unwrap(), warden::plugin::Health::Running);
}

/// A reader that goes away (`warden plugin inspect --json | head -1`) ends the command quietly:
/// no panic message.
#[test]
fn a_closed_output_pipe_is_not_a_panic() {
    let plugin = built_plugin("example-rust");
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["--no-cache", "plugin", "inspect", "--json"])
        .arg(&plugin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before anything is written
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

/// Shell completions and the man page come from the command definitions.
#[test]
fn completions_and_man_page_are_generated() {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_warden")).args(args).output().unwrap();
    let bash = run(&["completions", "bash"]);
    assert!(bash.status.success() && String::from_utf8_lossy(&bash.stdout).contains("_warden()"), "{bash:?}");
    let man = run(&["man"]);
    assert!(man.status.success(), "{man:?}");
    let text = String::from_utf8_lossy(&man.stdout);
    assert!(text.contains(".TH warden") && text.contains("node"), "{text}");
}

#[test]
fn cluster_init_writes_the_ca_and_node_certificates_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    let o = warden(&cache(), &["cluster", "init", "--dir", out.to_str().unwrap(), "--name", "jp1", "node-a", "node-b", "witness"]);
    assert!(o.status.success(), "{:?}", text(&o));
    for f in ["ca.pem", "ca.key", "node-a.pem", "node-a.key", "node-b.pem", "node-b.key", "witness.pem", "witness.key"] {
        let m = std::fs::metadata(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        if f.ends_with(".key") {
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f} is private");
        }
    }
    let before = std::fs::read(out.join("ca.key")).unwrap();
    let o = warden(&cache(), &["cluster", "init", "--dir", out.to_str().unwrap(), "--name", "jp1", "node-a"]);
    assert!(!o.status.success(), "an existing CA is never overwritten");
    assert_eq!(std::fs::read(out.join("ca.key")).unwrap(), before);
}
