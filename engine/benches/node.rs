//! Node benchmarks (not tests: they print a table). Uses the real `warden` binary.
//!
//! Run: `cargo xtask plugins && cargo bench -p warden --bench node`
//!
//! 1. Local recovery time: a service's process is killed (`kill -9`) at a random moment of the
//!    monitor timer; measured from the kill to the end of the successful `recover` in the event
//!    history. With the process watched (the example agent names its daemon with `watch`,
//!    warden:agent@0.2.0) at 1 s and 10 s monitors, and polling only (the same agent built for
//!    0.1.0, `tests/agents/legacy-v0-1`) at 1 s and 10 s. `WARDEN_BENCH_ROWS=watched` runs only
//!    the watched rows, `WARDEN_BENCH_ROWS=cost` only the engine cost.
//! 2. Engine cost: CPU (% of one core, from /proc/<pid>/stat over a 20 s window) and resident
//!    memory of the `warden` process with 50 and 1000 resources monitored every second by the
//!    example pid-file agent (a Rust component: read the pid file and /proc/<pid>/stat).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Which agent manages the benchmark's services.
#[derive(Clone, Copy, PartialEq)]
enum Agent {
    /// `example-rust` (warden:agent@0.2.0): names its daemon with `watch`.
    Watched,
    /// `legacy-v0-1` (warden:agent@0.1.0, the same pid-file logic): monitor only.
    Polled,
}

impl Agent {
    fn plugin(self) -> &'static str {
        match self {
            Agent::Watched => "example-rust",
            Agent::Polled => "legacy-v0-1",
        }
    }
}

fn resource(dir: &Path, i: usize, interval: &str, agent: Agent) -> String {
    let pid = dir.join(format!("r{i}.pid"));
    let (daemon, params) = match agent {
        Agent::Watched => {
            let d = root().join("examples/agents/demo-daemon.sh").canonicalize().unwrap();
            let params = format!(
                "pidfile = \"{p}\", start = \"{d}\", start_args = \"{p}\", stop_grace_ms = \"1000\"",
                p = pid.display(),
                d = d.display()
            );
            (d, params)
        }
        Agent::Polled => {
            // The 0.1.0 agent runs `start` without arguments: one script per resource.
            let d = dir.join(format!("r{i}-start.sh"));
            std::fs::write(&d, format!("#!/bin/sh\nsetsid sleep 100000 </dev/null >/dev/null 2>&1 &\necho $! > {}\n", pid.display()))
                .unwrap();
            std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            let params = format!("pidfile = \"{p}\", start = \"{d}\"", p = pid.display(), d = d.display());
            (d, params)
        }
    };
    format!(
        "[[resources]]\nname = \"r{i}\"\nplugin = \"{plugin}\"\nparams = {{ {params} }}\ngrants = {{ exec = [{{ program = \"{d}\" }}, {{ program = \"/bin/kill\", args = [\"-*\", \"*\"] }}], read = [\"{p}\", \"/proc/*/stat\", \"{d}\"] }}\nmonitor_interval = \"{interval}\"\ntimeouts = {{ start = \"60s\" }}\n\n[[groups]]\nname = \"g{i}\"\nresources = [\"r{i}\"]\nmax_restarts = 1000\n\n",
        plugin = agent.plugin(),
        p = pid.display(),
        d = daemon.display()
    )
}

struct Node {
    child: Child,
    dir: tempfile::TempDir,
    n: usize,
}

impl Node {
    fn start(n: usize, interval: &str, agent: Agent) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let plugin =
            root().join(format!("target/plugins/{}.wasm", agent.plugin())).canonicalize().expect("run `cargo xtask plugins` first");
        let mut cfg = format!(
            "version = 1\n[cluster]\nname = \"bench\"\n[[nodes]]\nname = \"n1\"\n[[plugins]]\nname = \"{}\"\npath = \"{}\"\n\n",
            agent.plugin(),
            plugin.display()
        );
        for i in 0..n {
            cfg.push_str(&resource(dir.path(), i, interval, agent));
        }
        std::fs::write(dir.path().join("c.toml"), cfg).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["node", "run", "--node", "n1", "--config"])
            .arg(dir.path().join("c.toml"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let node = Node { child, dir, n };
        let t = Instant::now();
        while node.started() < n {
            assert!(t.elapsed() < Duration::from_secs(600), "not started");
            std::thread::sleep(Duration::from_millis(200));
        }
        node
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("state/events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn started(&self) -> usize {
        self.events().iter().filter(|e| e["action"] == "start" && e["result"] == "ok").count()
    }

    fn pid_of(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("r{i}.pid"))).unwrap().trim().to_string()
    }

    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let f: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
        kb / 1024.0
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for i in 0..self.n {
            if let Ok(p) = std::fs::read_to_string(self.dir.path().join(format!("r{i}.pid"))) {
                let _ = Command::new("/bin/kill").args(["-9", p.trim()]).status();
            }
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn interval_ms(interval: &str) -> u64 {
    match interval.strip_suffix("ms") {
        Some(ms) => ms.parse().unwrap(),
        None => interval.trim_end_matches('s').parse::<u64>().unwrap() * 1000,
    }
}

/// Kill at a random moment of the monitor timer, as an operator's failure would come (and as
/// the Pacemaker anchor was measured): after the previous recovery, wait one interval for the
/// monitor cycle to settle, then a uniformly random part of another.
fn recovery(interval: &str, agent: Agent, runs: usize) -> (f64, f64, f64) {
    let node = Node::start(1, interval, agent);
    let every = interval_ms(interval);
    let mut rng = unix_ms() | 1;
    let mut times = Vec::new();
    for _ in 0..runs {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(every + rng % every));
        let before = node.events().len();
        let killed = unix_ms();
        Command::new("/bin/kill").args(["-9", &node.pid_of(0)]).status().unwrap();
        let t = Instant::now();
        loop {
            let ev = node.events();
            if let Some(e) = ev[before..].iter().find(|e| e["action"] == "recover" && e["result"] == "ok") {
                let end = e["at_ms"].as_u64().unwrap() + e["duration_ms"].as_u64().unwrap();
                times.push((end.saturating_sub(killed)) as f64 / 1000.0);
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "no recovery");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times[times.len() / 2], times[0], times[times.len() - 1])
}

fn cost(n: usize) -> (f64, f64) {
    let node = Node::start(n, "1s", Agent::Watched);
    std::thread::sleep(Duration::from_secs(3));
    let hz = 100.0; // USER_HZ on Linux
    let (t0, c0) = (Instant::now(), node.cpu_ticks());
    std::thread::sleep(Duration::from_secs(20));
    let (t1, c1) = (Instant::now(), node.cpu_ticks());
    let cpu = (c1 - c0) as f64 / hz / (t1 - t0).as_secs_f64() * 100.0;
    (cpu, node.rss_mib())
}

fn main() {
    let runs: usize = std::env::var("WARDEN_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    // WARDEN_BENCH_ROWS: `watched` (recovery with watches only), `cost` (engine cost only);
    // default everything.
    let rows = std::env::var("WARDEN_BENCH_ROWS").unwrap_or_default();
    if rows != "cost" {
        println!("| local recovery after kill -9 (n={runs}) | median | min | max |");
        println!("|---|---|---|---|");
        for (agent, interval) in [(Agent::Watched, "1s"), (Agent::Watched, "10s"), (Agent::Polled, "1s"), (Agent::Polled, "10s")] {
            if rows == "watched" && agent == Agent::Polled {
                continue;
            }
            let (med, min, max) = recovery(interval, agent, runs);
            let how = if agent == Agent::Watched { "watched (`watch`)" } else { "polling only (0.1.0 agent)" };
            println!("| {how}, monitor every {interval} | {med:.2} s | {min:.2} s | {max:.2} s |");
        }
    }
    println!();
    println!("| resources monitored every 1 s | engine CPU (% of one core) | engine RSS |");
    println!("|---|---|---|");
    // WARDEN_BENCH_SIZES: the resource counts of the cost rows (default `50,1000`; empty: none).
    let sizes: Vec<usize> = std::env::var("WARDEN_BENCH_SIZES")
        .unwrap_or_else(|_| "50,1000".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().expect("WARDEN_BENCH_SIZES: numbers separated by commas"))
        .collect();
    for n in sizes {
        let (cpu, rss) = cost(n);
        println!("| {n} | {cpu:.1} % | {rss:.0} MiB |");
    }
}
