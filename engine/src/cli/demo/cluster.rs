//! `warden demo`: a cluster of two nodes and a witness on this one machine, each member a real
//! `warden node run` in its own network namespace ([`super::lab`]), talking mutual TLS over two
//! paths. Node `jp1-a` runs the JP1 logical host (virtual IP, shared disk, JP1/Base, JP1/AJS3
//! Manager: the simulator, JP1 being proprietary). The demo kills an AJS3 daemon (local
//! recovery), then powers `jp1-a` off; the leader fences it through the lab's power switch
//! (fence-exec, as `fence_ipmilan` would on real servers) and `jp1-b` takes the group over. The
//! last line is `failover: GROUP jp1-a -> jp1-b in X.XX s`, from the power-off to the virtual
//! IP answering from a client namespace. Everything is removed at the end, also on failure.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::lab::{Lab, NET};
use super::{
    daemon_pid, events_since, find_sim, indent, jp1_resources, plugins_toml, run, status, step, vip_resource, DemoArgs, JP1_PLUGINS,
};
use crate::api::StatusReport;
use crate::cli::ops::{event_line, render_status};
use crate::cli::Cli;

const LHOST: &str = "jp1lh1";
const GROUP: &str = "jp1lh1";
const A: &str = "jp1-a";
const B: &str = "jp1-b";
const W: &str = "witness";

/// The demo's processes and files; dropping it stops the daemons that are still up (SIGTERM,
/// so they stop their groups), then the lab kills whatever is left and deletes its namespaces.
struct Demo {
    /// Always `Some` until dropped: taken in `drop` so the namespaces go before the directory.
    lab: Option<Lab>,
    dir: PathBuf,
    daemons: Vec<(String, Child)>,
    keep: bool,
    failed: bool,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for (_, d) in &self.daemons {
            let _ = Command::new("/bin/kill").args(["-TERM", &d.id().to_string()]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for (_, d) in &mut self.daemons {
            while Instant::now() < deadline && matches!(d.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        // The namespaces (and the mounts in them) go first, then the scratch directory.
        drop(self.lab.take());
        if self.keep || self.failed {
            println!("(kept {})", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Demo {
    fn lab(&mut self) -> &mut Lab {
        self.lab.as_mut().expect("the lab lives as long as the demo")
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    fn start(&mut self, cli: &Cli, name: &str, config: &Path) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut cmd = self.lab().command_in(name, &exe)?;
        if let Some(c) = &cli.cache_dir {
            cmd.arg("--cache-dir").arg(c);
        }
        cmd.args(["--log", "info", "node", "run", "--node", name, "--config"])
            .arg(config)
            .arg("--state-dir")
            .arg(self.dir.join(format!("state-{name}")))
            .arg("--socket")
            .arg(self.socket(name))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.daemons.push((name.to_string(), cmd.spawn().with_context(|| format!("start `warden node run` for {name}"))?));
        Ok(())
    }

    /// Fails the demo: keeps the scratch directory and shows the end of every member's log.
    fn give_up(&mut self, why: String) -> anyhow::Error {
        self.failed = true;
        let mut text = why;
        for name in [A, B, W] {
            let path = self.dir.join(format!("{name}.log"));
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            text += &format!("\n--- last lines of {} ---\n{}", path.display(), tail.join("\n"));
        }
        anyhow::anyhow!("{text}\n(scratch directory kept: {})", self.dir.display())
    }

    /// Polls `status` through member `via` until `done` holds, for at most `limit`.
    async fn wait_for(
        &mut self,
        via: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&StatusReport) -> bool,
    ) -> anyhow::Result<StatusReport> {
        let deadline = Instant::now() + limit;
        loop {
            for (name, d) in &mut self.daemons {
                if let Ok(Some(code)) = d.try_wait() {
                    let why = format!("the daemon of {name} exited ({code})");
                    return Err(self.give_up(why));
                }
            }
            if let Ok(st) = status(&self.socket(via)).await {
                if done(&st) {
                    return Ok(st);
                }
                let group = st.groups.iter().find(|g| g.name == GROUP);
                if let Some(g) = group.filter(|g| matches!(g.state.as_str(), "failed" | "stop-failed")) {
                    let why: Vec<String> =
                        st.resources.iter().filter_map(|r| r.last_failure.as_ref().map(|f| format!("{}: {f}", r.name))).collect();
                    let why = format!("waiting for {what}: the group is {} ({})", g.state, why.join("; "));
                    return Err(self.give_up(why));
                }
            }
            if Instant::now() >= deadline {
                return Err(self.give_up(format!("{what} did not happen within {} s", limit.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// New events in several members' histories, in time order: the leader records decisions, each
/// member the actions it ran.
struct Follow {
    from: Vec<(String, PathBuf, u64)>,
}

impl Follow {
    async fn new(demo: &Demo, members: &[&str]) -> anyhow::Result<Self> {
        let mut from = Vec::new();
        for m in members {
            let socket = demo.socket(m);
            let seq = events_since(&socket, 0).await?.last().map_or(0, |e| e.seq);
            from.push((m.to_string(), socket, seq));
        }
        Ok(Self { from })
    }

    /// Prints what happened since the last call; returns the events' (member, record) pairs.
    async fn print_new(&mut self) -> Vec<(String, crate::node::history::EventRecord)> {
        let mut new = Vec::new();
        for (m, socket, seq) in &mut self.from {
            // A member that does not answer (it was powered off) has nothing more to say.
            for e in events_since(socket, *seq).await.unwrap_or_default() {
                *seq = e.seq;
                new.push((m.clone(), e));
            }
        }
        new.sort_by_key(|(_, e)| e.at_ms);
        for (m, e) in &new {
            println!("    {m:<8} {}", event_line(e));
        }
        new
    }
}

/// The group runs on `owner`, every node is up and every resource was probed on every node.
fn settled(st: &StatusReport, owner: &str) -> bool {
    let group = st.groups.iter().find(|g| g.name == GROUP);
    st.cluster_info.as_ref().is_some_and(|c| c.quorum)
        && st.nodes.iter().all(|n| n.up)
        && group.is_some_and(|g| g.state == "started" && g.owner.as_deref() == Some(owner))
        && st.resources.iter().all(|r| r.on.iter().all(|(_, s)| s != "probing" && s != "unknown"))
}

/// Connects to the virtual IP's port 9 from the client namespace every 10 ms, in a thread;
/// sends the time of each answer (a refused connection is an answer: the address is up).
#[allow(unsafe_code)] // setns(2) through libc
fn vip_prober(client: &str, vip: Ipv4Addr, stop: Arc<AtomicBool>) -> anyhow::Result<mpsc::Receiver<Instant>> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(format!("/run/netns/{client}"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: setns only switches this thread's network namespace; the descriptor is open.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return;
        }
        while !stop.load(Ordering::Relaxed) {
            let answered = match TcpStream::connect_timeout(&SocketAddr::from((vip, 9)), Duration::from_millis(100)) {
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
            };
            if answered && tx.send(Instant::now()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    Ok(rx)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

pub async fn run_cluster_demo(cli: &Cli, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    if !is_root() {
        bail!("the cluster demo needs root (network and mount namespaces, loop devices); `warden demo --single-node` runs one node without them");
    }
    for tool in ["/usr/sbin/ip", "/usr/bin/nsenter", "/usr/bin/unshare", "/usr/sbin/mkfs.ext4", "/usr/bin/fuser"] {
        anyhow::ensure!(Path::new(tool).exists(), "{tool} is missing: `cargo xtask setup` installs what the demo needs");
    }
    let sim = find_sim(args)?;
    let plugins = args
        .plugins
        .canonicalize()
        .with_context(|| format!("{} is missing: build the plugins with `cargo xtask plugins`", args.plugins.display()))?;
    for p in ["jp1-base", "jp1-ajs3-manager", "ip", "filesystem", "fence-exec"] {
        anyhow::ensure!(plugins.join(format!("{p}.wasm")).exists(), "{}/{p}.wasm is missing: run `cargo xtask plugins`", plugins.display());
    }
    let dir = std::env::temp_dir().join(format!("warden-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tag = format!("wd{}", std::process::id() % 100_000);

    step("Building three machines on this one: network namespaces jp1-a, jp1-b and witness");
    let lab = Lab::new(&dir, &tag, &[(A, false), (B, false), (W, true)])?;
    let mut demo = Demo { lab: Some(lab), dir: dir.clone(), daemons: Vec::new(), keep: args.keep, failed: false };
    println!("    two heartbeat paths ({NET}.1.0/24 and {NET}.2.0/24, each a bridge), a service network ({NET}.3.0/24) with a client");
    println!("    each member also has its own mount namespace: its own JP1 installation, its own mounts");

    step("Installing the JP1 simulator on jp1-a and jp1-b (tests/jp1-sim: a test double, JP1 is proprietary)");
    let shared = dir.join("shared");
    let image = dir.join("shared-disk.img");
    std::fs::create_dir_all(&shared)?;
    run(Command::new("/usr/bin/truncate").args(["-s", "64M"]).arg(&image))?;
    run(Command::new("/usr/sbin/mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
    run(Command::new("/usr/bin/mount").args(["-o", "loop"]).arg(&image).arg(&shared))?;
    let installed = (|| -> anyhow::Result<()> {
        for m in [A, B] {
            // Installed on each member (what it sees at <dir>/run/jp1); the logical host's data
            // on the shared disk.
            let prefix = dir.join(format!("node-{m}/jp1"));
            run(Command::new(&sim).arg("install").arg(&prefix).args(["--ajs", "manager"]))?;
            run(Command::new(&sim).arg("setup-lhost").arg(&prefix).arg(LHOST).arg(&shared).args(["--ajs", "manager"]))?;
        }
        Ok(())
    })();
    // Unmounted either way: bringing the shared disk up is the cluster's job.
    run(Command::new("/usr/bin/umount").arg(&shared))?;
    installed?;
    println!("    logical host `{LHOST}`: JP1/Base + JP1/AJS3 Manager, shared disk {} (ext4 image)", image.display());

    let pki = dir.join("pki");
    run(Command::new(std::env::current_exe()?).args(["cluster", "init", "--dir"]).arg(&pki).args(["--name", "demo", A, B, W]))?;
    let power = dir.join("power");
    demo.lab().power_script(&power)?;
    let vip: Ipv4Addr = format!("{NET}.3.100").parse()?;
    let prefix = dir.join("run/jp1").display().to_string();
    let nodes: String = demo
        .lab()
        .members
        .iter()
        .map(|m| {
            let role = if m.witness { "role = \"witness\"\n" } else { "" };
            format!("\n[[nodes]]\nname = \"{}\"\naddresses = [\"{}\", \"{}\"]\n{role}", m.name, m.addresses[0], m.addresses[1])
        })
        .collect();
    let config = format!(
        r#"# Written by `warden demo`: the shape of examples/jp1-cluster.toml in network namespaces.
version = 1
[cluster]
name = "demo"

[daemon]
pki_dir = "{pki}"
{nodes}
{plugins}{vip}{jp1}
[[groups]]
name = "{GROUP}"
resources = ["vip", "shared-disk", "jp1-base", "jp1-ajs3"]
depends_on = {{ jp1-base = ["vip", "shared-disk"], jp1-ajs3 = ["jp1-base"] }}
priority = ["{A}", "{B}"]
max_restarts = 3
restart_window = "10m"

# The lab's power switch stands in for each server's BMC (fence_ipmilan on real servers).
[[fencing]]
name = "power"
plugin = "fence-exec"
params = {{ command = "{power}", style = "args", off_args = "off {{target}}", status_args = "status {{target}}", verify_timeout_ms = "5000" }}
grants = {{ exec = [{{ program = "{power}", args = ["*", "*"] }}] }}
nodes = ["{A}", "{B}"]
"#,
        pki = pki.display(),
        plugins = plugins_toml(&plugins, &[&JP1_PLUGINS[..], &["fence-exec"]].concat()),
        vip = vip_resource(&format!("{vip}/24"), "eth3", "1s"),
        jp1 = jp1_resources(LHOST, &prefix, &shared.display().to_string(), Some(&image)),
        power = power.display(),
    );
    let config_path = dir.join("cluster.toml");
    std::fs::write(&config_path, &config)?;

    step("Starting the three members: `warden node run` in each namespace (mutual TLS over both paths)");
    let launched = Instant::now();
    for m in [A, B, W] {
        demo.start(cli, m, &config_path)?;
    }
    println!("    config: {} (logs: {}/<member>.log)", config_path.display(), dir.display());
    let st = demo.wait_for(B, "the group starting on jp1-a", Duration::from_secs(60), |st| settled(st, A)).await?;
    let leader = st.cluster_info.as_ref().and_then(|c| c.leader.clone()).unwrap_or_default();
    println!(
        "    cluster formed (leader {leader}) and group `{GROUP}` started on {A} {:.1} s after launch; `warden status` on {B}:\n",
        launched.elapsed().as_secs_f64()
    );
    print!("{}", indent(&render_status(&st)));

    step("Killing an AJS3 daemon on jp1-a behind Warden's back: kill -9 jajs_hstd (local recovery)");
    let pid = daemon_pid(&shared, "jajs_hstd").context("no jajs_hstd process found")?;
    let mut follow = Follow::new(&demo, &[A, B, W]).await?;
    Command::new("/bin/kill").args(["-9", &pid.to_string()]).status()?;
    let killed = Instant::now();
    let mut recovered = false;
    while !recovered {
        let new = follow.print_new().await;
        recovered = new.iter().any(|(_, e)| e.action.as_deref() == Some("recover") && e.result == "ok");
        if killed.elapsed() > Duration::from_secs(30) {
            return Err(demo.give_up("no local recovery within 30 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    demo.wait_for(B, "the group started again", Duration::from_secs(30), |st| settled(st, A)).await?;
    println!("    recovered on {A} {:.2} s after the kill, without moving the group", killed.elapsed().as_secs_f64());

    step("Powering jp1-a off: its links go down and every process on it dies (kill -9, the daemon included)");
    let stop = Arc::new(AtomicBool::new(false));
    let answers = vip_prober(&demo.lab().client.clone(), vip, stop.clone())?;
    let mut follow = Follow::new(&demo, &[B, W]).await?;
    let off = Instant::now();
    demo.lab().power_off(A);
    // Answers before the links were down may still have come from jp1-a.
    let down = Instant::now();
    if let Some(i) = demo.daemons.iter().position(|(n, _)| n == A) {
        let (_, mut d) = demo.daemons.remove(i);
        let _ = d.wait();
    }
    println!("    (jp1-a's links down {:.0} ms after the power-off began)", (down - off).as_secs_f64() * 1000.0);
    let mut answered = None;
    while answered.is_none() {
        follow.print_new().await;
        answered = answers.try_iter().find(|t| *t > down);
        if off.elapsed() > Duration::from_secs(45) {
            stop.store(true, Ordering::Relaxed);
            return Err(demo.give_up("the virtual IP did not answer from jp1-b within 45 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let took = answered.unwrap_or(down) - off;
    let st = demo
        .wait_for(B, "jp1-b running the group", Duration::from_secs(30), |st| {
            st.groups.iter().any(|g| g.name == GROUP && g.state == "started" && g.owner.as_deref() == Some(B))
        })
        .await?;
    follow.print_new().await;
    println!("\n    `warden status` on {B}:\n");
    print!("{}", indent(&render_status(&st)));

    step("Stopping jp1-b and the witness (SIGTERM): the group stops top-down; cleaning up");
    drop(demo);
    println!("\nfailover: {GROUP} {A} -> {B} in {:.2} s", took.as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
