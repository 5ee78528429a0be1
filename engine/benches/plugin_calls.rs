//! Plugin-call overhead and load times for the example agents (not a test: prints a table).
//!
//! Run: `cargo xtask plugins && cargo bench -p warden --bench plugin_calls`
//!
//! * warm call: `monitor` on an instance kept between calls
//! * fresh call: `monitor` on a new instance each time (instantiate from the pre-instance + call)
//! * load uncached: read + compile + link + metadata; load cached: the same with the on-disk cache
//!
//! The monitor is the example agents' real one with a grant that denies the pid-file check early,
//! so what is measured is the host/guest boundary, not a file system.
//!
//! Count mode, for instruction counts (valgrind's callgrind; wall clock is noisy on a shared
//! machine): `WARDEN_BENCH_CALLS=warm:N` (or `fresh:N`) loads one agent (`WARDEN_BENCH_AGENT`,
//! default `example-rust`; `WARDEN_BENCH_PLUGIN` overrides its `.wasm` path) with the on-disk
//! cache in `WARDEN_BENCH_CACHE` (default: a temporary directory), makes one warm-up call, then N
//! monitor calls on the kept instance (`warm`) or each on a new instance (`fresh`), and prints
//! nothing else. Instructions per call = (count at N2 - count at N1) / (N2 - N1): the difference
//! removes loading and setup.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warden::plugin::{CallContext, HostOptions, Limits, PluginHost};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if let Ok(spec) = std::env::var("WARDEN_BENCH_CALLS") {
        let (kind, n) = spec.split_once(':').expect("WARDEN_BENCH_CALLS=warm:N or fresh:N");
        let fresh = match kind {
            "warm" => false,
            "fresh" => true,
            _ => panic!("WARDEN_BENCH_CALLS: warm or fresh, not {kind}"),
        };
        let n: usize = n.parse().expect("WARDEN_BENCH_CALLS: a number of calls");
        let name = std::env::var("WARDEN_BENCH_AGENT").unwrap_or_else(|_| "example-rust".into());
        let path = std::env::var_os("WARDEN_BENCH_PLUGIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/plugins").join(format!("{name}.wasm")));
        let tmp = tempfile::tempdir().unwrap();
        let cache = std::env::var_os("WARDEN_BENCH_CACHE").map(PathBuf::from).unwrap_or_else(|| tmp.path().to_path_buf());
        rt.block_on(count_calls(&name, &path, &cache, fresh, n));
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    println!("| agent | warm monitor call | fresh-instance monitor call | load, uncached | load, cached |");
    println!("|---|---|---|---|---|");
    for name in ["example-rust", "example-python", "example-js"] {
        let path = root.join("target/plugins").join(format!("{name}.wasm"));
        assert!(path.exists(), "{} missing: run `cargo xtask plugins` first", path.display());
        rt.block_on(bench_one(name, &path, cache.path()));
    }
}

fn monitor_params(name: &str) -> [(&'static str, &'static str); 3] {
    match name {
        "example-python" => [("port", "1"), ("start", "/bin/true"), ("stop", "/bin/true")],
        _ => [("pidfile", "/nonexistent/pid"), ("start", "/bin/true"), ("start_args", "")],
    }
}

/// Count mode: one warm-up call, then `n` monitor calls, warm or each on a fresh instance.
async fn count_calls(name: &str, path: &Path, cache: &Path, fresh: bool, n: usize) {
    let host = PluginHost::new(HostOptions { cache_dir: Some(cache.to_path_buf()), trusted_keys: vec![] }).unwrap();
    let plugin = host.load(path).await.unwrap();
    let given = monitor_params(name).iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let ctx = CallContext { resource: "bench".into(), node: "n".into(), epoch: 1, params: plugin.metadata.resolve_params(&given).unwrap() };
    let mut inst = plugin.instance("bench", Default::default(), Limits::default());
    let timeout = Some(Duration::from_secs(10));
    assert!(inst.monitor(&ctx, timeout).await.is_err(), "the monitor is refused at its first host call");
    for _ in 0..n {
        if fresh {
            inst.reset();
        }
        let _ = inst.monitor(&ctx, timeout).await;
    }
}

async fn bench_one(name: &str, path: &Path, cache: &Path) {
    let uncached = PluginHost::new(HostOptions { cache_dir: None, trusted_keys: vec![] }).unwrap();
    let t = Instant::now();
    uncached.load(path).await.unwrap();
    let load_uncached = t.elapsed();

    let host = PluginHost::new(HostOptions { cache_dir: Some(cache.to_path_buf()), trusted_keys: vec![] }).unwrap();
    host.load(path).await.unwrap(); // fills the cache
    let mut loads = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        host.load(path).await.unwrap();
        loads.push(t.elapsed());
    }
    let plugin = host.load(path).await.unwrap();

    let given = monitor_params(name).iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let ctx = CallContext { resource: "bench".into(), node: "n".into(), epoch: 1, params: plugin.metadata.resolve_params(&given).unwrap() };
    let mut inst = plugin.instance("bench", Default::default(), Limits::default());
    let timeout = Some(Duration::from_secs(10));
    // Denied at the first host call (no grants): measures entering the guest, one host import,
    // and the error path back.
    let _ = inst.monitor(&ctx, timeout).await;
    let mut warm = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        let _ = inst.monitor(&ctx, timeout).await;
        warm.push(t.elapsed());
    }
    let mut fresh = Vec::new();
    for _ in 0..200 {
        inst.reset();
        let t = Instant::now();
        let _ = inst.monitor(&ctx, timeout).await;
        fresh.push(t.elapsed());
    }
    println!("| {name} | {} | {} | {} | {} |", fmt(median(warm)), fmt(median(fresh)), fmt(load_uncached), fmt(median(loads)));
}
