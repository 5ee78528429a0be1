//! Helpers shared by the plugin-tier tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warden::plugin::{CallContext, HostOptions, Plugin, PluginHost};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A host with a precompiled-component cache shared by all tests of this build.
pub fn host() -> PluginHost {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
    PluginHost::new(HostOptions { cache_dir: Some(cache), trusted_keys: vec![] }).unwrap()
}

/// A component built by `cargo xtask plugins` (the README's test command runs it first).
pub fn built_plugin(name: &str) -> PathBuf {
    let path = workspace_root().join("target/plugins").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `cargo xtask plugins` (or the README's test command, `cargo xtask test`)", path.display());
    path
}

pub async fn load(host: &PluginHost, path: &std::path::Path) -> Arc<Plugin> {
    host.load(path).await.unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

pub fn ctx(params: &[(&str, &str)]) -> CallContext {
    CallContext {
        resource: "r1".into(),
        node: "node-a".into(),
        epoch: 7,
        params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
    }
}

/// Pids of live processes whose command line (NUL-separated, as in /proc) satisfies `keep`.
/// A zombie (Z) is dead: PID 1 reaps orphans slowly on these machines.
pub fn live_pids(keep: impl Fn(&[u8]) -> bool) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if !keep(&cmdline) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().and_then(|r| r.trim().chars().next());
        if !matches!(state, Some('Z') | Some('X') | None) {
            out.push(pid);
        }
    }
    out
}

/// Pids of live processes whose command line contains `needle`.
pub fn live_processes(needle: &str) -> Vec<u32> {
    live_pids(|c| String::from_utf8_lossy(c).replace('\0', " ").contains(needle))
}

/// Poll `f` until it holds or `limit` passes (a generous bound, not a speed assertion).
pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn caps(toml_text: &str) -> warden_manifest::Capabilities {
    toml::from_str(toml_text).unwrap()
}
