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
    let cache = tempfile::tempdir().unwrap();
    println!("| agent | warm monitor call | fresh-instance monitor call | load, uncached | load, cached |");
    println!("|---|---|---|---|---|");
    for name in ["example-rust", "example-python", "example-js"] {
        let path = root.join("target/plugins").join(format!("{name}.wasm"));
        assert!(path.exists(), "{} missing: run `cargo xtask plugins` first", path.display());
        rt.block_on(bench_one(name, &path, cache.path()));
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

    let params = match name {
        "example-python" => [("port", "1"), ("start", "/bin/true"), ("stop", "/bin/true")],
        _ => [("pidfile", "/nonexistent/pid"), ("start", "/bin/true"), ("start_args", "")],
    };
    let given = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
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
