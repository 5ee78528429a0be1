//! `warden demo`: the plugin platform at work on this machine, with nothing to configure.
//!
//! Loads the example agents built by `cargo xtask plugins`, starts a real daemon through the Rust
//! agent, kills it behind the agent's back, shows the monitor catching it and local recovery
//! bringing it back, with timings; then runs the same check through the Python and JavaScript
//! agents, and shows the sandbox refusing a hostile request. Cleans up everything it started.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use warden_manifest::Capabilities;

use super::Cli;
use crate::plugin::{humantime, CallContext, Health, Limits, Plugin};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory holding the built plugins.
    #[arg(long, default_value = "target/plugins")]
    pub plugins: PathBuf,
}

fn step(msg: &str) {
    println!("\n==> {msg}");
}

struct Cleanup {
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Kill the demo daemon if it is still there, then remove the scratch directory.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("svc.pid")) {
            let _ = std::process::Command::new("/bin/kill").args(["-9", pid.trim()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn load(cli: &Cli, dir: &Path, name: &str) -> anyhow::Result<std::sync::Arc<Plugin>> {
    let path = dir.join(format!("{name}.wasm"));
    anyhow::ensure!(path.exists(), "{} is missing: build the plugins first with `cargo xtask plugins` (or run `cargo xtask demo`)", path.display());
    let host = cli.host()?;
    let t = Instant::now();
    let p = host.load(&path).await?;
    println!("    loaded {name} {} in {} ({:?})", p.metadata.version, humantime(t.elapsed()), p.load_stats.cache);
    Ok(p)
}

fn context(plugin: &Plugin, params: &[(&str, &str)]) -> anyhow::Result<CallContext> {
    let given = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let params = plugin.metadata.resolve_params(&given).map_err(anyhow::Error::msg)?;
    Ok(CallContext { resource: "demo-svc".into(), node: super::hostname(), epoch: 1, params })
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let t = Instant::now();
    let r = f.await;
    println!("    {what} ({})", humantime(t.elapsed()));
    r
}

pub async fn run(cli: &Cli, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let scratch = std::env::temp_dir().join(format!("warden-demo-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let _cleanup = Cleanup { dir: scratch.clone() };
    let daemon = scratch.join("daemon.sh");
    std::fs::write(&daemon, "#!/bin/sh\nsetsid sleep 100000 </dev/null >/dev/null 2>&1 &\necho $! > \"$1\"\n")?;
    std::fs::set_permissions(&daemon, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let pidfile = scratch.join("svc.pid");
    let (daemon_s, pidfile_s) = (daemon.display().to_string(), pidfile.display().to_string());

    step("Loading the example agents (WebAssembly components; compiled once, then cached)");
    let rust = load(cli, &args.plugins, "example-rust").await?;
    let python = load(cli, &args.plugins, "example-python").await?;
    let js = load(cli, &args.plugins, "example-js").await?;

    let grants: Capabilities = toml::from_str(&format!(
        "exec = [{{ program = \"{daemon_s}\" }}, {{ program = \"/bin/kill\", args = [\"-*\", \"*\"] }}]\nread = [\"{pidfile_s}\", \"/proc/*/stat\"]\n"
    ))?;
    println!("    granted: run {daemon_s} and /bin/kill; read {pidfile_s} and /proc/*/stat; nothing else");
    let mut svc = rust.instance("demo-svc", grants.clone(), Limits::default());
    let ctx = context(&rust, &[("pidfile", &pidfile_s), ("start", &daemon_s), ("start_args", &pidfile_s), ("stop_grace_ms", "2000")])?;

    step("Starting the service through the Rust agent");
    timed("start: ok", svc.start(&ctx, None)).await?;
    let pid = std::fs::read_to_string(&pidfile).context("read the pid file")?.trim().to_string();
    let h = timed("monitor", svc.monitor(&ctx, None)).await?;
    println!("    health: {h}  (pid {pid})");

    step(&format!("Killing the service behind Warden's back: kill -9 {pid}"));
    std::process::Command::new("/bin/kill").args(["-9", &pid]).status()?;
    let killed = Instant::now();
    let interval = Duration::from_millis(250);
    let detected = loop {
        tokio::time::sleep(interval).await;
        let h = svc.monitor(&ctx, None).await?;
        if h != Health::Running {
            println!("    monitor (every {}): {h}", humantime(interval));
            break killed.elapsed();
        }
    };
    println!("    failure detected {} after the kill", humantime(detected));

    step("Local recovery (recover = stop + start, as LifeKeeper and Pacemaker do)");
    timed("recover: ok", svc.recover(&ctx, None)).await?;
    let h = svc.monitor(&ctx, None).await?;
    let new_pid = std::fs::read_to_string(&pidfile)?.trim().to_string();
    println!("    health: {h}  (new pid {new_pid}); service back {} after the kill", humantime(killed.elapsed()));

    step("The same pid-file check through the JavaScript agent, and a TCP check through the Python agent");
    let mut js_svc = js.instance("demo-svc", grants.clone(), Limits::default());
    let js_ctx = context(&js, &[("pidfile", &pidfile_s), ("start", &daemon_s), ("start_args", &pidfile_s)])?;
    let h = timed("example-js monitor", js_svc.monitor(&js_ctx, None)).await?;
    println!("    health: {h}");
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port().to_string();
    let py_grants: Capabilities = toml::from_str(&format!("connect = [\"127.0.0.1:{port}\"]\nread = [\"/bin/true\"]\nexec = [{{ program = \"/bin/true\" }}]\n"))?;
    let mut py = python.instance("demo-web", py_grants, Limits::default());
    let py_ctx = context(&python, &[("port", &port), ("start", "/bin/true"), ("stop", "/bin/true")])?;
    let h = timed(&format!("example-python monitor of 127.0.0.1:{port}"), py.monitor(&py_ctx, None)).await?;
    println!("    health: {h}");
    drop(listener);
    let h = timed("example-python monitor after the listener closed", py.monitor(&py_ctx, None)).await?;
    println!("    health: {h}");

    step("The sandbox: the same agent asked to run a program it was not granted");
    let read_only: Capabilities = toml::from_str(&format!("read = [\"{}/**\", \"/proc/*/stat\"]\n", scratch.display()))?;
    let mut sneaky = rust.instance("demo-other", read_only, Limits::default());
    let other_pid = scratch.join("other.pid").display().to_string();
    let sneaky_ctx = context(&rust, &[("pidfile", &other_pid), ("start", &daemon_s), ("start_args", &other_pid)])?;
    match sneaky.start(&sneaky_ctx, None).await {
        Err(e) => println!("    refused: {e}"),
        Ok(()) => anyhow::bail!("the sandbox let an ungranted call through"),
    }

    step("Stopping the service");
    timed("stop: ok", svc.stop(&ctx, None)).await?;
    println!("    health: {}", svc.monitor(&ctx, None).await?);
    println!("\nDemo finished; everything it started is gone.");
    Ok(ExitCode::SUCCESS)
}
