//! `warden demo`: Warden protecting a simulated JP1 logical host, with nothing to configure.
//!
//! By default the cluster demo ([`cluster`]): two nodes and a witness in network namespaces
//! ([`lab`]), local recovery of a killed AJS3 daemon, then node jp1-a powered off and the group
//! failed over to jp1-b. `--single-node` runs the earlier demo that needs no root: one node (a
//! virtual IP on a veth pair when run as root → shared disk → JP1/Base → JP1/AJS3 Manager), an
//! AJS3 daemon killed with `kill -9` and brought back by local recovery, then SIGTERM stopping the
//! group top-down. Both remove everything they started or created at the end, also on failure.
//! The JP1 simulator (`tests/jp1-sim`) stands in for JP1, which is proprietary.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::ops::{event_line, render_status};
use super::Cli;
use crate::api::{Client, Request, Response, StatusReport};
use crate::node::history::EventRecord;

mod cluster;
pub mod lab;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory holding the built plugins (`cargo xtask plugins`).
    #[arg(long, default_value = "target/plugins")]
    pub plugins: PathBuf,
    /// The JP1 simulator binary (`cargo build -p jp1-sim`); default: next to this `warden`, else
    /// target/debug/jp1-sim.
    #[arg(long)]
    pub jp1_sim: Option<PathBuf>,
    /// Keep the scratch directory (config, state, logs) for a look afterwards.
    #[arg(long)]
    pub keep: bool,
    /// One node alone, without network namespaces (no root needed): local recovery only.
    #[arg(long)]
    pub single_node: bool,
}

const LHOST: &str = "jp1demo";

/// The JP1 commands the agents use (the first three are the `.cluster` scripts).
const BASE_CMDS: [&str; 5] = [
    "etc/opt/jp1base/jbs_start.cluster",
    "etc/opt/jp1base/jbs_stop.cluster",
    "etc/opt/jp1base/jbs_killall.cluster",
    "opt/jp1base/bin/jbs_spmd_status",
    "opt/jp1base/bin/jevstat",
];
const AJS_CMDS: [&str; 6] = [
    "etc/opt/jp1ajs2/jajs_start.cluster",
    "etc/opt/jp1ajs2/jajs_stop.cluster",
    "etc/opt/jp1ajs2/jajs_killall.cluster",
    "opt/jp1ajs2/bin/jajs_spmd_status",
    "opt/jp1ajs2/bin/ajsqlstatus",
    "opt/jp1ajs2/bin/jajs_status",
];

/// `"<prefix>/<cmd>", …` for a TOML list.
fn quoted(prefix: &str, cmds: &[&str]) -> String {
    cmds.iter().map(|c| format!("\"{prefix}/{c}\"")).collect::<Vec<_>>().join(", ")
}

/// `[[plugins]]` entries, one per name, each `<dir>/<name>.wasm` (as `cargo xtask plugins` lays
/// them out).
pub fn plugins_toml(dir: &Path, names: &[&str]) -> String {
    names.iter().map(|n| format!("[[plugins]]\nname = \"{n}\"\npath = \"{}\"\n", dir.join(format!("{n}.wasm")).display())).collect()
}

/// The plugins of the JP1 logical host: virtual IP, shared disk, JP1/Base, JP1/AJS3 Manager.
pub const JP1_PLUGINS: [&str; 4] = ["ip", "filesystem", "jp1-base", "jp1-ajs3-manager"];

/// Virtual IP `address` (`A.B.C.D/N`) on `interface` as a resource `vip` of the ip agent, with
/// exactly the grants it needs, monitored every `interval`.
pub fn vip_resource(address: &str, interface: &str, interval: &str) -> String {
    let ip = address.split('/').next().unwrap_or_default();
    format!(
        r#"
[[resources]]
name = "vip"
plugin = "ip"
params = {{ address = "{address}", interface = "{interface}", arping_count = "1" }}
grants = {{ exec = [
    {{ program = "/usr/sbin/ip", args = ["-o", "link", "show", "dev", "{interface}"] }},
    {{ program = "/usr/sbin/ip", args = ["-o", "addr", "show", "dev", "{interface}"] }},
    {{ program = "/usr/sbin/ip", args = ["addr", "add", "{address}", "dev", "{interface}"] }},
    {{ program = "/usr/sbin/ip", args = ["addr", "del", "{address}", "dev", "{interface}"] }},
    {{ program = "/usr/bin/arping", args = ["-U", "-c", "*", "-I", "{interface}", "{ip}"] }},
], read = ["/usr/bin/arping", "/usr/sbin/arping"] }}
monitor_interval = "{interval}"
"#
    )
}

/// The resources of JP1 logical host `lhost` below its virtual IP, as config TOML: the shared
/// disk (an ext4 `disk_image` mounted on `shared`; none without an image), JP1/Base and
/// JP1/AJS3 Manager with the JP1 commands installed under `prefix` (the simulator's layout) and
/// exactly the grants they need. The demo and the cluster tier run the same hierarchy.
pub fn jp1_resources(lhost: &str, prefix: &str, shared: &str, disk_image: Option<&Path>) -> String {
    let p = prefix;
    let s = shared;
    let base_exec: Vec<String> = BASE_CMDS[..3]
        .iter()
        .map(|c| format!("{{ program = \"{p}/{c}\", args = [\"{lhost}\"] }}"))
        .chain([
            format!("{{ program = \"{p}/opt/jp1base/bin/jbs_spmd_status\", args = [\"-h\", \"{lhost}\", \"-t\", \"*\"] }}"),
            format!("{{ program = \"{p}/opt/jp1base/bin/jevstat\", args = [\"{lhost}\", \"-t\", \"*\"] }}"),
        ])
        .collect();
    let ajs_exec: Vec<String> = AJS_CMDS[..3]
        .iter()
        .map(|c| format!("{{ program = \"{p}/{c}\", args = [\"{lhost}\"] }}"))
        .chain([
            format!("{{ program = \"{p}/opt/jp1ajs2/bin/jajs_spmd_status\", args = [\"-h\", \"{lhost}\", \"-t\", \"*\"] }}"),
            format!("{{ program = \"{p}/opt/jp1ajs2/bin/ajsqlstatus\", args = [\"-h\", \"{lhost}\"] }}"),
            format!("{{ program = \"{p}/opt/jp1ajs2/bin/jajs_status\", args = [\"-h\", \"{lhost}\"] }}"),
        ])
        .collect();
    let disk = disk_image.map_or(String::new(), |image| {
        let img = image.display();
        format!(
            r#"
[[resources]]
name = "shared-disk"
plugin = "filesystem"
params = {{ device = "{img}", mountpoint = "{s}", fstype = "ext4", options = "noatime" }}
grants = {{ exec = [
    {{ program = "/bin/mount", args = ["-t", "ext4", "-o", "noatime", "{img}", "{s}"] }},
    {{ program = "/bin/umount", args = ["{s}"] }},
    {{ program = "/bin/fuser", args = ["-m", "-M", "{s}"] }},
], read = ["/proc/self/mounts", "/proc/*/mounts", "/proc/*/comm", "/sys/block/loop*/loop/backing_file", "/sys/devices/virtual/block/loop*/loop/backing_file"] }}
monitor_interval = "1s"
"#
        )
    });
    format!(
        r#"{disk}
[[resources]]
name = "jp1-base"
plugin = "jp1-base"
params = {{ logical_host = "{lhost}", prefix = "{p}", shared_dir = "{s}" }}
grants = {{ exec = [{base_exec}], read = [{base_read}, "{s}/jp1base"], env = ["LANG"] }}
monitor_interval = "1s"

[[resources]]
name = "jp1-ajs3"
plugin = "jp1-ajs3-manager"
params = {{ logical_host = "{lhost}", prefix = "{p}", shared_dir = "{s}", base_resource = "jp1-base" }}
grants = {{ exec = [{ajs_exec}], read = [{ajs_read}, "{p}/etc/.hitachi/pplistd/pplistd", "{s}/jp1ajs2"], env = ["LANG"] }}
monitor_interval = "1s"
"#,
        base_exec = base_exec.join(", "),
        ajs_exec = ajs_exec.join(", "),
        base_read = quoted(p, &BASE_CMDS),
        ajs_read = quoted(p, &AJS_CMDS),
    )
}

fn step(msg: &str) {
    println!("\n==> {msg}");
}

/// Removes what the demo created, whatever happens.
struct Cleanup {
    dir: PathBuf,
    node: Option<std::process::Child>,
    link: Option<String>,
    /// A mount point to unmount (the shared disk image).
    mount: Option<PathBuf>,
    prefix: PathBuf,
    keep: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut n) = self.node.take() {
            let _ = Command::new("/bin/kill").args(["-TERM", &n.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && matches!(n.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = n.kill();
            let _ = n.wait();
        }
        // Whatever the node left (it should be nothing): the simulator's own killall.
        for cmd in ["etc/opt/jp1ajs2/jajs_killall.cluster", "etc/opt/jp1base/jbs_killall.cluster"] {
            let _ = Command::new(self.prefix.join(cmd)).arg(LHOST).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        if let Some(link) = &self.link {
            let _ = Command::new("/usr/sbin/ip").args(["link", "del", link]).status();
        }
        if let Some(mp) = &self.mount {
            let _ = Command::new("/bin/umount").arg(mp).stderr(Stdio::null()).status();
        }
        if self.keep {
            println!("(kept {})", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Keep the scratch directory and say why the demo stopped, with the end of the node's log.
fn give_up(cleanup: &mut Cleanup, dir: &Path, why: String) -> anyhow::Error {
    cleanup.keep = true;
    let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
    anyhow::anyhow!(
        "{why}\n--- last lines of {} ---\n{}\n(scratch directory kept: {})",
        dir.join("node.log").display(),
        tail.join("\n"),
        dir.display()
    )
}

fn find_sim(args: &DemoArgs) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = match &args.jp1_sim {
        Some(p) => vec![p.clone()],
        None => {
            let mut v = Vec::new();
            if let Ok(exe) = std::env::current_exe() {
                if let Some(dir) = exe.parent() {
                    v.push(dir.join("jp1-sim"));
                }
            }
            v.push(PathBuf::from("target/debug/jp1-sim"));
            v.push(PathBuf::from("target/release/jp1-sim"));
            v
        }
    };
    candidates
        .into_iter()
        .find(|p| p.exists())
        .map(|p| p.canonicalize().unwrap_or(p))
        .context("the JP1 simulator is not built: run `cargo xtask demo` (or `cargo build -p jp1-sim`)")
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

async fn status(socket: &Path) -> anyhow::Result<StatusReport> {
    match Client::call(socket, Request::Status).await? {
        Response::Status { status } => Ok(*status),
        other => bail!("unexpected answer: {other:?}"),
    }
}

async fn events_since(socket: &Path, seq: u64) -> anyhow::Result<Vec<EventRecord>> {
    match Client::call(socket, Request::Events { since: seq, follow: false }).await? {
        Response::Events { events } => Ok(events),
        other => bail!("unexpected answer: {other:?}"),
    }
}

fn group_state(s: &StatusReport) -> String {
    s.groups.first().map(|g| g.state.clone()).unwrap_or_default()
}

/// Pid of the simulated daemon `name` for our logical host.
fn daemon_pid(shared: &Path, name: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv0 = String::from_utf8_lossy(cmd.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat.rsplit(')').next().and_then(|r| r.trim().chars().next()) == Some('Z');
        if !zombie && argv0.starts_with(&shared.display().to_string()) && argv0.ends_with(&format!("/{name}")) {
            return Some(pid);
        }
    }
    None
}

pub async fn run_demo(cli: &Cli, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    if args.single_node {
        run_single_node_demo(cli, args).await
    } else {
        cluster::run_cluster_demo(cli, args).await
    }
}

async fn run_single_node_demo(cli: &Cli, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let sim = find_sim(args)?;
    let plugins = args
        .plugins
        .canonicalize()
        .with_context(|| format!("{} is missing: build the plugins with `cargo xtask plugins`", args.plugins.display()))?;
    for p in ["jp1-base", "jp1-ajs3-manager", "ip", "filesystem"] {
        anyhow::ensure!(plugins.join(format!("{p}.wasm")).exists(), "{}/{p}.wasm is missing: run `cargo xtask plugins`", plugins.display());
    }
    let dir = std::env::temp_dir().join(format!("warden-demo-{}", std::process::id()));
    let prefix = dir.join("node");
    let shared = dir.join("shared");
    let mut cleanup = Cleanup { dir: dir.clone(), node: None, link: None, mount: None, prefix: prefix.clone(), keep: args.keep };
    std::fs::create_dir_all(&dir)?;

    step("Setting up a simulated JP1 node (tests/jp1-sim: a test double, JP1 is proprietary)");
    run(Command::new(&sim).arg("install").arg(&prefix).args(["--ajs", "manager"]))?;
    // The shared disk: an ext4 image holding the logical host's shared directory, mounted by
    // the filesystem agent (when we may: root, mkfs.ext4, loop devices). Otherwise a plain
    // directory stands in for it.
    std::fs::create_dir_all(&shared)?;
    let image = dir.join("shared-disk.img");
    let with_disk = make_shared_disk(&image, &shared, &mut cleanup).is_ok();
    run(Command::new(&sim).arg("setup-lhost").arg(&prefix).arg(LHOST).arg(&shared).args(["--ajs", "manager"]))?;
    if with_disk {
        // Leave it unmounted: bringing the shared disk up is the cluster's job.
        run(Command::new("/bin/umount").arg(&shared))?;
        cleanup.mount = Some(shared.clone());
        println!("    shared disk: ext4 image {} (mounted on {} by the filesystem agent)", image.display(), shared.display());
    } else {
        println!("    (cannot loop-mount an ext4 image here: the shared directory is a plain directory)");
    }
    println!("    JP1/Base + JP1/AJS3 Manager under {}, logical host `{LHOST}`, shared directory {}", prefix.display(), shared.display());

    // A virtual IP on a dummy interface, when we may create one (root).
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let link = format!("wdemo{}", std::process::id() % 100_000);
    let octet = std::process::id() % 200 + 20;
    let vip = format!("10.254.{octet}.10/24");
    // A veth pair stands in for the service network (a dummy link needs a kernel module that
    // containers often lack).
    let peer = format!("{link}p");
    let with_vip = is_root
        && Path::new("/usr/sbin/ip").exists()
        && Command::new("/usr/sbin/ip")
            .args(["link", "add", &link, "type", "veth", "peer", "name", &peer])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if with_vip {
        cleanup.link = Some(link.clone());
        run(Command::new("/usr/sbin/ip").args(["link", "set", &link, "up"]))?;
        run(Command::new("/usr/sbin/ip").args(["link", "set", &peer, "up"]))?;
        println!("    virtual IP {vip} on interface {link} (a veth pair made for the demo)");
    } else {
        println!("    (cannot create a network interface here, e.g. not root: the demo runs without the virtual IP resource)");
    }

    let p = prefix.display().to_string();
    let s = shared.display().to_string();
    let vip_resource = if with_vip { vip_resource(&vip, &link, "1s") } else { String::new() };
    let jp1_resources = jp1_resources(LHOST, &p, &s, with_disk.then_some(image.as_path()));
    let below_base: Vec<&str> = [with_vip.then_some("vip"), with_disk.then_some("shared-disk")].into_iter().flatten().collect();
    let members: Vec<String> =
        below_base.iter().map(|r| format!("\"{r}\"")).chain(["\"jp1-base\"".into(), "\"jp1-ajs3\"".into()]).collect();
    let members = format!(
        "[{}]\ndepends_on = {{ jp1-base = [{}], jp1-ajs3 = [\"jp1-base\"] }}",
        members.join(", "),
        below_base.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ")
    );
    let config = format!(
        r#"# Written by `warden demo`.
version = 1
[cluster]
name = "demo"

[[nodes]]
name = "demo-node"

{plugins}{vip_resource}{jp1_resources}
[[groups]]
name = "{LHOST}"
resources = {members}
max_restarts = 3
restart_window = "10m"
"#,
        plugins = plugins_toml(&plugins, &JP1_PLUGINS),
    );
    let config_path = dir.join("cluster.toml");
    std::fs::write(&config_path, &config)?;
    let socket = dir.join("warden.sock");

    step("Starting the node: `warden node run` (a separate process, real agents in their sandboxes)");
    let exe = std::env::current_exe()?;
    let log = std::fs::File::create(dir.join("node.log"))?;
    let mut cmd = Command::new(exe);
    if let Some(c) = &cli.cache_dir {
        cmd.arg("--cache-dir").arg(c);
    }
    cmd.args(["--log", "info", "node", "run", "--node", "demo-node", "--config"])
        .arg(&config_path)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(log);
    let started = Instant::now();
    cleanup.node = Some(cmd.spawn().context("start `warden node run`")?);
    println!("    config: {} (node log: {})", config_path.display(), dir.join("node.log").display());

    // Stop waiting as soon as the outcome is known; on any failure keep the scratch directory
    // and show the end of the node's log (the demo must explain itself).
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        if let Some(n) = cleanup.node.as_mut() {
            if let Ok(Some(code)) = n.try_wait() {
                return Err(give_up(&mut cleanup, &dir, format!("the node exited ({code})")));
            }
        }
        if let Ok(st) = status(&socket).await {
            match group_state(&st).as_str() {
                "started" => break st,
                g @ ("failed" | "stop-failed" | "failing") => {
                    let why =
                        st.resources.iter().filter_map(|r| r.last_failure.as_ref().map(|f| format!("{}: {f}", r.name))).collect::<Vec<_>>();
                    return Err(give_up(&mut cleanup, &dir, format!("the group is {g} ({})", why.join("; "))));
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(give_up(&mut cleanup, &dir, "the group did not start within 60 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "    group `{LHOST}` started {:.1} s after launch (probe, then start bottom-up; AJS3 start is polled until healthy)\n",
        started.elapsed().as_secs_f64()
    );
    print!("{}", indent(&render_status(&st)));

    step("Killing an AJS3 daemon behind Warden's back: kill -9 jajs_hstd");
    let pid = daemon_pid(&shared, "jajs_hstd").context("no jajs_hstd process found")?;
    let last_seq = events_since(&socket, 0).await?.last().map_or(0, |e| e.seq);
    Command::new("/bin/kill").args(["-9", &pid.to_string()]).status()?;
    let killed = Instant::now();
    println!("    killed pid {pid}; JP1/AJS3 has no degraded mode, so its other processes stop too");
    let mut seq = last_seq;
    let mut detected = None;
    let mut recover_ok = false;
    let recovered = loop {
        for e in events_since(&socket, seq).await? {
            seq = e.seq;
            println!("    {}", event_line(&e));
            if detected.is_none() && e.kind == "monitor" {
                detected = Some(killed.elapsed());
            }
            if e.action.as_deref() == Some("recover") {
                anyhow::ensure!(e.result == "ok", "recovery failed: {}", e.message);
                recover_ok = true;
            }
        }
        if recover_ok && group_state(&status(&socket).await?) == "started" {
            break killed.elapsed();
        }
        if killed.elapsed() >= Duration::from_secs(60) {
            return Err(give_up(&mut cleanup, &dir, "no recovery within 60 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let new_pid = daemon_pid(&shared, "jajs_hstd");
    println!(
        "\n    failure detected {:.2} s after the kill (the agent watches the JP1 processes; monitor every 1 s otherwise); service healthy again {:.2} s after the kill (new jajs_hstd pid {})",
        detected.unwrap_or_default().as_secs_f64(),
        recovered.as_secs_f64(),
        new_pid.map_or("?".into(), |p| p.to_string())
    );
    println!();
    print!("{}", indent(&render_status(&status(&socket).await?)));

    step("Stopping the node (SIGTERM): the group stops top-down");
    let seq_before = events_since(&socket, 0).await?.last().map_or(0, |e| e.seq);
    if let Some(mut n) = cleanup.node.take() {
        Command::new("/bin/kill").args(["-TERM", &n.id().to_string()]).status()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while n.try_wait()?.is_none() {
            anyhow::ensure!(Instant::now() < deadline, "the node did not stop");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let history = std::fs::read_to_string(dir.join("state/events.jsonl")).unwrap_or_default();
    for e in history.lines().filter_map(|l| serde_json::from_str::<EventRecord>(l).ok()).filter(|e| e.seq > seq_before) {
        println!("    {}", event_line(&e));
    }
    println!("\nDemo finished: node stopped; simulator processes, the demo's network interface, disk image and scratch files removed.");
    Ok(ExitCode::SUCCESS)
}

/// Make an ext4 image and mount it on `mp` (to lay out the shared directory). Errors mean "not
/// possible here" (not root, no mkfs.ext4, no loop devices).
fn make_shared_disk(image: &Path, mp: &Path, cleanup: &mut Cleanup) -> anyhow::Result<()> {
    let quiet = |c: &mut Command| c.stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
    anyhow::ensure!(Path::new("/sbin/mkfs.ext4").exists() || Path::new("/usr/sbin/mkfs.ext4").exists(), "no mkfs.ext4");
    anyhow::ensure!(quiet(Command::new("/usr/bin/truncate").args(["-s", "64M"]).arg(image)), "truncate");
    anyhow::ensure!(quiet(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image)), "mkfs.ext4");
    anyhow::ensure!(quiet(Command::new("/bin/mount").args(["-t", "ext4", "-o", "noatime"]).arg(image).arg(mp)), "mount");
    cleanup.mount = Some(mp.to_path_buf());
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}
