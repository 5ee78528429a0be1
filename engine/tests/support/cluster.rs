//! A real cluster for the cluster tier: `warden node run` processes, each in its own network
//! namespace, joined by two switched networks (two paths), talking mutual TLS over real TCP.
//!
//! ```text
//!   ns a ─eth1─┐            ┌─eth1─ ns b        path 1: 10.213.1.0/24   (bridge br1 in ns sw)
//!        ─eth2─┼── ns sw ───┼─eth2─             path 2: 10.213.2.0/24   (bridge br2 in ns sw)
//!              └─eth1, eth2─ ns w (witness)
//! ```
//!
//! Each member also runs in its own mount namespace where `<dir>/node-<name>` is bind-mounted on
//! `<dir>/run`: the shared config names one pid file (`<dir>/run/<resource>.pid`), and each
//! member sees its own, so a service running on two members at once is visible to the test
//! (`<dir>/node-<name>/<resource>.pid` from outside). [`Sampler`] checks that every few ms.
//! Cuts are iptables rules inside a member's namespace (a silent path, as a pulled cable).
//!
//! A third network is the service network: the group's virtual IP ([`VIP`], the ip agent) is
//! added there on the member that runs it, and a client namespace checks that it answers. The
//! sampler also reads each member namespace's local addresses (through a long-lived process in
//! it), so the address on two members at once is caught like a service running twice.
#![allow(dead_code, unsafe_code)] // setns(2) through libc

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::netns::{run, Namespaces};
use crate::node::{pid_file_resource, root, warden_bin};

/// How long cluster-tier waits may take before the test fails (they poll, never sleep to sync).
pub const WAIT: Duration = Duration::from_secs(60);

/// The group's virtual IP on the service network (interface `eth3` of the members).
pub const VIP: &str = "10.213.3.100";

pub struct Member {
    pub name: String,
    pub ns: String,
    pub witness: bool,
    pub socket: PathBuf,
    pub state: PathBuf,
    /// Where this member's `<dir>/run` really is (its pid files), seen from outside.
    pub run_dir: PathBuf,
    child: Option<Child>,
    /// A process that lives in the member's network namespace for the whole test: its
    /// `/proc/<pid>/net/fib_trie` shows the namespace's addresses.
    probe: Child,
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub members: Vec<Member>,
    pub sw: String,
    /// The client namespace on the service network.
    pub client: String,
    nets: Namespaces,
}

/// The JP1 logical host of [`TestCluster::jp1`].
pub const JP1_LHOST: &str = "jp1lh1";

/// Plugins, resources and group `app` of the JP1 logical host (the shape of
/// `examples/jp1-cluster.toml`), with the simulator under `<dir>/run/jp1`: the demo's resources
/// below the virtual IP ([`warden::cli::demo::jp1_resources`]) and this fixture's address.
fn jp1_group(dir: &Path, image: &Path, shared: &Path) -> String {
    let pl = root().join("target/plugins");
    let prefix = dir.join("run/jp1").display().to_string();
    let resources = warden::cli::demo::jp1_resources(JP1_LHOST, &prefix, &shared.display().to_string(), Some(image));
    // (`ip` is in every cluster's config already.)
    let plugins = warden::cli::demo::plugins_toml(&pl, &warden::cli::demo::JP1_PLUGINS[1..]);
    format!(
        r#"
{plugins}{vip}{resources}
[[groups]]
name = "app"
resources = ["vip", "shared-disk", "jp1-base", "jp1-ajs3", "ledger"]
depends_on = {{ jp1-base = ["vip", "shared-disk"], jp1-ajs3 = ["jp1-base"] }}
priority = ["a", "b"]
"#,
        vip = vip_resource(),
    )
}

/// The example agent's pid-file resource `name`, its pid file under `<dir>/run`.
fn resource(dir: &Path, name: &str, interval: &str) -> String {
    let program = root().join("examples/agents/demo-daemon.sh");
    pid_file_resource(&dir.join("run"), name, &program, &format!("monitor_interval = \"{interval}\""))
}

impl TestCluster {
    /// Members `a` and `b` (run resources) and `w` (witness); one group `app` of resources
    /// `vip` ← `app-1` ← `app-2` preferring `a`. `extra` TOML is appended to the config.
    pub fn new(extra: &str) -> Self {
        Self::build(|dir| Self::new_body(dir, extra))
    }

    fn new_body(dir: &Path, extra: &str) -> String {
        let plugin = root().join("target/plugins/example-rust.wasm");
        assert!(plugin.exists(), "{} missing: run `cargo xtask plugins`", plugin.display());
        let mut text = format!("\n[[plugins]]\nname = \"example-rust\"\npath = \"{}\"\n", plugin.display());
        text += &vip_resource();
        text += &resource(dir, "app-1", "500ms");
        text += &resource(dir, "app-2", "500ms");
        text += "\n[[groups]]\nname = \"app\"\nresources = [\"vip\", \"app-1\", \"app-2\", \"ledger\"]\npriority = [\"a\", \"b\"]\n";
        text + extra
    }

    /// The JP1 logical host of `examples/jp1-cluster.toml` as group `app`: the virtual IP, a
    /// shared disk (an ext4 image both members can mount, at `<dir>/shared`), JP1/Base and
    /// JP1/AJS3 Manager (the simulator, installed on each member under `<dir>/run/jp1`).
    pub fn jp1() -> Self {
        Self::build(|dir| {
            let sim = crate::jp1::sim();
            let image = dir.join("shared-disk.img");
            let shared = dir.join("shared");
            std::fs::create_dir_all(&shared).unwrap();
            run("/usr/bin/truncate", &["-s", "64M", image.to_str().unwrap()]);
            run("/usr/sbin/mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
            run("/usr/bin/mount", &["-o", "loop", image.to_str().unwrap(), shared.to_str().unwrap()]);
            for m in ["a", "b"] {
                // Installed on each member (its own `<dir>/run`); the logical host's data on the
                // shared disk.
                let prefix = dir.join(format!("node-{m}/jp1"));
                std::fs::create_dir_all(dir.join(format!("node-{m}"))).unwrap();
                run(sim.to_str().unwrap(), &["install", prefix.to_str().unwrap(), "--ajs", "manager"]);
                run(
                    sim.to_str().unwrap(),
                    &["setup-lhost", prefix.to_str().unwrap(), JP1_LHOST, shared.to_str().unwrap(), "--ajs", "manager"],
                );
            }
            run("/usr/bin/umount", &[shared.to_str().unwrap()]);
            jp1_group(dir, &image, &shared)
        })
    }

    /// Like [`TestCluster::new`], with a fourth machine `c` (a node: paths `10.213.{1,2}.4`,
    /// the service network) that is not in the config and has no certificate: a member to add
    /// with `warden cluster add-node` and `warden node add` ([`TestCluster::node_entry`]).
    pub fn with_spare() -> Self {
        Self::build_with(&[("a", false), ("b", false), ("w", true), ("c", false)], 3, |dir| Self::new_body(dir, ""))
    }

    /// The `[[nodes]]` entry of member `name` (for a config that adds it).
    pub fn node_entry(&self, name: &str) -> String {
        let i = self.members.iter().position(|m| m.name == name).unwrap();
        let role = if self.members[i].witness { "role = \"witness\"\n" } else { "" };
        format!("[[nodes]]\nname = \"{name}\"\naddresses = [\"10.213.1.{n}:7400\", \"10.213.2.{n}:7400\"]\n{role}\n", n = i + 1)
    }

    fn build(body: impl FnOnce(&Path) -> String) -> Self {
        Self::build_with(&[("a", false), ("b", false), ("w", true)], 3, body)
    }

    /// Machines for `names` (name, is a witness); the first `in_config` are the config's
    /// members and have certificates.
    fn build_with(names: &[(&str, bool)], in_config: usize, body: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut nets = Namespaces::new();
        let sw = nets.add("wsw");
        for br in ["br1", "br2", "br3"] {
            run("/usr/sbin/ip", &["-n", &sw, "link", "add", br, "type", "bridge"]);
            run("/usr/sbin/ip", &["-n", &sw, "link", "set", br, "up"]);
        }
        // Every member's namespace exists before any member's mount namespace is made, so that
        // each sees the others' (a fence device run by the leader reaches them by name).
        let nss: Vec<String> = names.iter().map(|(name, _)| nets.add(&format!("w{name}"))).collect();
        let mut members = Vec::new();
        for (i, (name, witness)) in names.iter().enumerate() {
            let ns = nss[i].clone();
            for path in 1..=2 {
                let inner = format!("eth{path}");
                let outer = format!("s{path}{name}");
                run("/usr/sbin/ip", &["-n", &ns, "link", "add", &inner, "type", "veth", "peer", "name", &outer, "netns", &sw]);
                run("/usr/sbin/ip", &["-n", &ns, "addr", "add", &format!("10.213.{path}.{}/24", i + 1), "dev", &inner]);
                run("/usr/sbin/ip", &["-n", &ns, "link", "set", &inner, "up"]);
                run("/usr/sbin/ip", &["-n", &sw, "link", "set", &outer, "master", &format!("br{path}")]);
                run("/usr/sbin/ip", &["-n", &sw, "link", "set", &outer, "up"]);
            }
            if !witness {
                // The service network: no address; the ip agent adds the virtual IP.
                run(
                    "/usr/sbin/ip",
                    &["-n", &ns, "link", "add", "eth3", "type", "veth", "peer", "name", &format!("s3{name}"), "netns", &sw],
                );
                run("/usr/sbin/ip", &["-n", &ns, "link", "set", "eth3", "up"]);
                run("/usr/sbin/ip", &["-n", &sw, "link", "set", &format!("s3{name}"), "master", "br3"]);
                run("/usr/sbin/ip", &["-n", &sw, "link", "set", &format!("s3{name}"), "up"]);
            }
            let run_dir = dir.path().join(format!("node-{name}"));
            std::fs::create_dir_all(&run_dir).unwrap();
            std::fs::create_dir_all(dir.path().join("run")).unwrap();
            // The member's "machine": a process that holds its network namespace and a private
            // mount namespace where `<dir>/run` is its own directory. Every daemon of this
            // member (restarts included) joins both, as a restarted daemon on a real server sees
            // the mounts its predecessor made.
            // `ip netns exec` mounts a fresh /sys without the cgroup2 hierarchy: mount it again
            // (the same hierarchy) so that the member's resources get their cgroups.
            let script = format!(
                "mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null; mount --bind '{}' '{}' && exec /bin/sleep 1000000",
                run_dir.display(),
                dir.path().join("run").display()
            );
            let probe = Command::new("/usr/sbin/ip")
                .args(["netns", "exec", &ns, "/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", &script])
                .spawn()
                .unwrap();
            wait_for_bind(probe.id(), &dir.path().join("run"));
            members.push(Member {
                name: name.to_string(),
                ns,
                witness: *witness,
                socket: dir.path().join(format!("{name}.sock")),
                state: dir.path().join(format!("state-{name}")),
                run_dir,
                child: None,
                probe,
            });
        }
        let client = nets.add("wcl");
        run("/usr/sbin/ip", &["-n", &client, "link", "add", "eth3", "type", "veth", "peer", "name", "s3cl", "netns", &sw]);
        run("/usr/sbin/ip", &["-n", &client, "addr", "add", "10.213.3.200/24", "dev", "eth3"]);
        run("/usr/sbin/ip", &["-n", &client, "link", "set", "eth3", "up"]);
        run("/usr/sbin/ip", &["-n", &sw, "link", "set", "s3cl", "master", "br3"]);
        run("/usr/sbin/ip", &["-n", &sw, "link", "set", "s3cl", "up"]);
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        let pki = dir.path().join("pki");
        let founders: Vec<&str> = names[..in_config].iter().map(|(n, _)| *n).collect();
        let out =
            Command::new(warden_bin()).args(["cluster", "init", "--dir"]).arg(&pki).args(["--name", "t"]).args(&founders).output().unwrap();
        assert!(out.status.success(), "cluster init: {out:?}");
        let mut text = format!(
            "version = 1\n[cluster]\nname = \"t\"\n\n[daemon]\npki_dir = \"{}\"\nmetrics_addr = \"127.0.0.1:9464\"\n",
            pki.display()
        );
        for (i, (name, witness)) in names[..in_config].iter().enumerate() {
            text += &format!(
                "\n[[nodes]]\nname = \"{name}\"\naddresses = [\"10.213.1.{n}:7400\", \"10.213.2.{n}:7400\"]\n{role}",
                n = i + 1,
                role = if *witness { "role = \"witness\"\n" } else { "" }
            );
        }
        text += &format!("\n[[plugins]]\nname = \"ip\"\npath = \"{}\"\n", root().join("target/plugins/ip.wasm").display());
        text += &ledger_resource(dir.path());
        text += &body(dir.path());
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, text).unwrap();
        Self { dir, config, members, sw, client, nets }
    }

    /// Like [`TestCluster::new`], with a fence device: `power`, fence-exec driving a script
    /// that powers a member's machine off as [`TestCluster::power_off`] does (kill -9 of all
    /// it runs, links down, addresses gone) and reports it off. While `<dir>/power-broken`
    /// exists, the switch fails.
    pub fn with_power_fencing() -> Self {
        let c = Self::new("");
        let script = c.dir.path().join("power");
        let broken = c.dir.path().join("power-broken");
        let machines: Vec<(String, String, Option<u32>)> =
            c.members.iter().map(|m| (m.name.clone(), m.ns.clone(), Some(m.probe.id()))).collect();
        std::fs::write(&script, warden::cli::demo::lab::power_switch(&machines, Some(&broken))).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plugin = root().join("target/plugins/fence-exec.wasm");
        let s = script.display();
        let fencing = format!(
            r#"
[[plugins]]
name = "fence-exec"
path = "{plugin}"

[[fencing]]
name = "power"
plugin = "fence-exec"
params = {{ command = "{s}", style = "args", off_args = "off {{target}}", status_args = "status {{target}}", verify_timeout_ms = "5000" }}
grants = {{ exec = [{{ program = "{s}", args = ["*", "*"] }}] }}
"#,
            plugin = plugin.display()
        );
        let mut text = std::fs::read_to_string(&c.config).unwrap();
        text += &fencing;
        std::fs::write(&c.config, text).unwrap();
        c
    }

    /// Like [`TestCluster::new`], with `watchdog_fencing = true` and no fence device: a lost
    /// member's groups move once its lease has run out (its watchdog kills what it ran).
    pub fn with_watchdog() -> Self {
        Self::new("").with_cluster_option("watchdog_fencing = true")
    }

    /// Adds `line` (say `lost_after = "2s"`) to the config's `[cluster]` section (before the
    /// members start).
    pub fn with_cluster_option(self, line: &str) -> Self {
        let text = std::fs::read_to_string(&self.config).unwrap().replacen("name = \"t\"\n", &format!("name = \"t\"\n{line}\n"), 1);
        assert!(text.contains(line));
        std::fs::write(&self.config, text).unwrap();
        self
    }

    pub fn member(&self, name: &str) -> &Member {
        self.members.iter().find(|m| m.name == name).unwrap()
    }

    fn member_mut(&mut self, name: &str) -> &mut Member {
        self.members.iter_mut().find(|m| m.name == name).unwrap()
    }

    /// Starts member `name`: in its network namespace, in a private mount namespace with its own
    /// `<dir>/run`.
    pub fn start(&mut self, name: &str) {
        let config = self.config.clone();
        self.start_with(name, &config);
    }

    /// Starts member `name`, added with `warden node add`, with `--join`.
    pub fn start_joining(&mut self, name: &str) {
        let config = self.config.clone();
        self.start_args(name, &config, &["--join"]);
    }

    /// Starts member `name` with another config file.
    pub fn start_with(&mut self, name: &str, config: &Path) {
        self.start_args(name, config, &[]);
    }

    fn start_args(&mut self, name: &str, config: &Path, extra: &[&str]) {
        let dir = self.dir.path().to_path_buf();
        let config = config.to_path_buf();
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
        let m = self.member_mut(name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log"))).unwrap();
        let target = m.probe.id().to_string();
        // WARDEN_TEST_LOG=info,openraft=debug for a post-mortem of Raft itself.
        let level = std::env::var("WARDEN_TEST_LOG").unwrap_or_else(|_| "info".into());
        let child = Command::new("/usr/bin/nsenter")
            .args(["--target", &target, "--mount", "--net", "--"])
            .arg(warden_bin())
            .args(["--log", &level, "--cache-dir"])
            .arg(cache)
            .args(["node", "run", "--node", name, "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(&m.state)
            .arg("--socket")
            .arg(&m.socket)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        m.child = Some(child);
    }

    pub fn start_all(&mut self) {
        for n in ["a", "b", "w"] {
            self.start(n);
        }
    }

    /// `kill -SIG` of member `name`'s daemon (the `warden` process: `ip netns exec` and the
    /// shell exec into it, so the child's pid is the daemon's).
    pub fn signal(&mut self, name: &str, sig: &str) {
        let pid = self.member(name).child.as_ref().expect("running").id();
        Command::new("/bin/kill").args([sig, &pid.to_string()]).status().unwrap();
    }

    /// Member `name`'s machine loses power: its daemon and every process of its services die at
    /// once (kill -9 of everything in its network namespace but the process that holds it), its
    /// links go down and the service address goes with it (an off machine answers nothing).
    /// [`TestCluster::power_on`] brings the links back; its daemon is then started again.
    pub fn power_off(&mut self, name: &str) {
        let m = self.member_mut(name);
        let keep = m.probe.id();
        for pid in crate::netns::Namespaces::pids(&m.ns).into_iter().filter(|p| *p != keep) {
            let _ = Command::new("/bin/kill").args(["-KILL", &pid.to_string()]).status();
        }
        if let Some(mut child) = m.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let ns = m.ns.clone();
        let links: &[&str] = if m.witness { &["eth1", "eth2"] } else { &["eth1", "eth2", "eth3"] };
        for dev in links {
            run("/usr/sbin/ip", &["-n", &ns, "link", "set", dev, "down"]);
        }
        if !m.witness {
            run("/usr/sbin/ip", &["-n", &ns, "addr", "flush", "dev", "eth3"]);
        }
    }

    /// Member `name`'s machine powered on again: its links up (its daemon is not started).
    pub fn power_on(&mut self, name: &str) {
        let m = self.member(name);
        let links: &[&str] = if m.witness { &["eth1", "eth2"] } else { &["eth1", "eth2", "eth3"] };
        for dev in links {
            run("/usr/sbin/ip", &["-n", &m.ns, "link", "set", dev, "up"]);
        }
    }

    /// Member `name`'s daemon was started and has not exited.
    pub fn is_running(&mut self, name: &str) -> bool {
        let m = self.member_mut(name);
        match m.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                m.child = None;
                false
            }
            None => false,
        }
    }

    /// Waits for member `name`'s daemon to exit.
    pub fn wait_exit(&mut self, name: &str, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        let m = self.member_mut(name);
        while start.elapsed() < limit {
            if let Some(s) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members.iter().map(|m| format!("===== {} =====\n{}", m.name, self.log(&m.name))).collect::<Vec<_>>().join("\n")
    }

    pub fn cli(&self, via: &str, args: &[&str]) -> std::process::Output {
        Command::new(warden_bin()).args(args).env("WARDEN_SOCKET", &self.member(via).socket).output().unwrap()
    }

    /// The CLI run on member `name`'s machine (its network and mount namespaces), as an operator
    /// logged in there would: what it checks locally (interfaces, files) is that machine's.
    pub fn cli_on(&self, name: &str, args: &[&str]) -> std::process::Output {
        let m = self.member(name);
        Command::new("/usr/bin/nsenter")
            .args(["--target", &m.probe.id().to_string(), "--mount", "--net", "--"])
            .arg(warden_bin())
            .args(args)
            .env("WARDEN_SOCKET", &m.socket)
            .output()
            .unwrap()
    }

    pub fn status(&self, via: &str) -> Option<serde_json::Value> {
        let o = self.cli(via, &["status", "--json"]);
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    /// The leader as member `via` reports it, when it reports a quorum.
    pub fn leader(&self, via: &str) -> Option<String> {
        let st = self.status(via)?;
        let c = &st["cluster_info"];
        (c["quorum"] == true).then(|| c["leader"].as_str().map(String::from)).flatten()
    }

    /// (state, owner, epoch) of group `g` as member `via` reports it.
    pub fn group(&self, via: &str, g: &str) -> Option<(String, Option<String>, u64)> {
        let st = self.status(via)?;
        let x = st["groups"].as_array()?.iter().find(|x| x["name"] == g)?.clone();
        Some((x["state"].as_str()?.to_string(), x["owner"].as_str().map(String::from), x["epoch"].as_u64()?))
    }

    pub fn wait(&self, what: &str, limit: Duration, mut f: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(f(self), "timed out after {limit:?} waiting for {what}\n{}", self.logs());
    }

    /// The virtual IP is an address of member `name`'s namespace.
    pub fn has_vip(&self, name: &str) -> bool {
        has_address(self.member(name).probe.id(), VIP)
    }

    /// The shared disk is mounted in member `name`'s daemon's mount namespace.
    pub fn has_disk(&self, name: &str) -> bool {
        let pid = self.member(name).probe.id();
        let shared = self.dir.path().join("shared").display().to_string();
        std::fs::read_to_string(format!("/proc/{pid}/mounts"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(shared.as_str()))
    }

    /// Simulated JP1 daemons of the logical host running in member `name`'s network namespace.
    pub fn jp1_daemons(&self, name: &str) -> usize {
        jp1_daemons_in(&self.member(name).ns)
    }

    /// The virtual IP answers from the client namespace.
    pub fn vip_answers(&self) -> bool {
        crate::netns::answers_from(&self.client, VIP.parse().unwrap())
    }

    /// Pid of `resource`'s service on member `name`, if it is alive.
    pub fn service(&self, name: &str, resource: &str) -> Option<u32> {
        service_pid(&self.member(name).run_dir, resource)
    }

    /// Cuts path `path` (1 or 2) of member `name` both ways: packets on that interface are
    /// dropped inside its namespace.
    pub fn cut(&self, name: &str, path: u32) {
        let ns = &self.member(name).ns;
        let dev = format!("eth{path}");
        run("/usr/sbin/ip", &["netns", "exec", ns, "iptables", "-A", "INPUT", "-i", &dev, "-j", "DROP"]);
        run("/usr/sbin/ip", &["netns", "exec", ns, "iptables", "-A", "OUTPUT", "-o", &dev, "-j", "DROP"]);
    }

    /// Cuts what member `name` sends over path `path` only: it still hears the others.
    pub fn cut_outgoing(&self, name: &str, path: u32) {
        let ns = &self.member(name).ns;
        run("/usr/sbin/ip", &["netns", "exec", ns, "iptables", "-A", "OUTPUT", "-o", &format!("eth{path}"), "-j", "DROP"]);
    }

    /// `GET /metrics` of member `name` (served on its own namespace's loopback).
    pub fn metrics(&self, name: &str) -> String {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let addr = self.status(name).and_then(|s| s["metrics_addr"].as_str().map(String::from)).expect("metrics_addr configured");
        let path = format!("/run/netns/{}", self.member(name).ns);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns only switches this short-lived thread's network namespace.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            let mut s = std::net::TcpStream::connect(addr.as_str()).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            body
        })
        .join()
        .unwrap()
    }

    /// Removes every cut of member `name`.
    pub fn heal(&self, name: &str) {
        let ns = &self.member(name).ns;
        run("/usr/sbin/ip", &["netns", "exec", ns, "iptables", "-F"]);
    }

    /// Starts sampling, every 5 ms, every runner's services of `resources` and the virtual IP.
    pub fn sampler(&self, resources: &[&str]) -> Sampler {
        Sampler::start(self.runs(), resources.iter().map(|r| r.to_string()).collect(), false, VIP, Some(self.ledger_path()))
    }

    /// The ledger that the group's `ledger` resource appends to on whichever member runs it.
    pub fn ledger_path(&self) -> PathBuf {
        self.dir.path().join("ledger")
    }

    /// A sampler of the JP1 logical host: the virtual IP and the simulated JP1 daemons (whose
    /// processes carry the shared disk's state) on two members at once.
    pub fn jp1_sampler(&self) -> Sampler {
        Sampler::start(self.runs(), Vec::new(), true, VIP, Some(self.ledger_path()))
    }

    fn runs(&self) -> Vec<Run> {
        self.members
            .iter()
            .filter(|m| !m.witness)
            .map(|m| Run { name: m.name.clone(), run_dir: m.run_dir.clone(), probe: m.probe.id(), ns: m.ns.clone() })
            .collect()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(c) = &mut m.child {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = m.probe.kill();
            let _ = m.probe.wait();
            // The services the members started (detached `sleep`s).
            for entry in std::fs::read_dir(&m.run_dir).into_iter().flatten().flatten() {
                if let Some(pid) = std::fs::read_to_string(entry.path()).ok().and_then(|s| s.trim().parse::<u32>().ok()) {
                    if is_service(pid) {
                        let _ = Command::new("/bin/kill").args(["-9", &pid.to_string()]).status();
                    }
                }
            }
        }
        // For a post-mortem: WARDEN_TEST_KEEP=DIR copies every member's log and history there.
        if let Some(keep) = std::env::var_os("WARDEN_TEST_KEEP") {
            let keep = PathBuf::from(keep);
            let _ = std::fs::create_dir_all(&keep);
            for m in &self.members {
                let _ = std::fs::copy(self.dir.path().join(format!("{}.log", m.name)), keep.join(format!("{}.log", m.name)));
                let _ = std::fs::copy(m.state.join("events.jsonl"), keep.join(format!("{}.events.jsonl", m.name)));
            }
        }
        let _ = &self.nets;
        // Every scenario ends with the ledger's check (unless the test already failed).
        if !std::thread::panicking() {
            if let Err(e) = read_ledger(&self.ledger_path()).and_then(|h| check_ledger(&h)) {
                panic!("ledger: {e}");
            }
        }
    }
}

/// Waits until the member process `pid` sees its bind mount on `run` (its shell mounts it, then
/// becomes `sleep`).
fn wait_for_bind(pid: u32, run: &Path) {
    let run = run.display().to_string();
    let start = Instant::now();
    while start.elapsed() < WAIT {
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap_or_default();
        if mounts.lines().any(|l| l.split(' ').nth(1) == Some(run.as_str())) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("member namespace of pid {pid} never mounted {run}");
}

/// A runner member as the sampler watches it.
pub struct Run {
    pub name: String,
    /// Where its pid files are, seen from outside.
    pub run_dir: PathBuf,
    /// A process in its network namespace.
    pub probe: u32,
    pub ns: String,
}

/// Simulated JP1 daemons (`jp1-sim daemon …`) in network namespace `ns`.
fn jp1_daemons_in(ns: &str) -> usize {
    Namespaces::pids(ns)
        .into_iter()
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default().split(|b| *b == 0).any(|a| a == b"daemon"))
        .count()
}

/// `addr` is a local address of the network namespace process `pid` is in.
pub fn has_address(pid: u32, addr: &str) -> bool {
    // fib_trie lists each local address as the line `|-- ADDR` followed by `/32 host LOCAL`.
    let trie = std::fs::read_to_string(format!("/proc/{pid}/net/fib_trie")).unwrap_or_default();
    let mut lines = trie.lines();
    while let Some(l) = lines.next() {
        if l.trim_start().strip_prefix("|-- ") == Some(addr) && lines.next().is_some_and(|n| n.contains("host LOCAL")) {
            return true;
        }
    }
    false
}

/// The virtual IP resource: the ip agent on `eth3` (the demo's resource).
fn vip_resource() -> String {
    warden::cli::demo::vip_resource(&format!("{VIP}/24"), "eth3", "500ms")
}

/// The demo daemon's process (`sleep 100000`) with this pid is alive.
fn is_service(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    crate::netns::is_alive(pid) && cmdline.starts_with(b"sleep\x00100000")
}

fn service_pid(run_dir: &Path, resource: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(run_dir.join(format!("{resource}.pid"))).ok()?.trim().parse().ok()?;
    is_service(pid).then_some(pid)
}

/// Watches for a resource's service alive on two members at once (safety property S1), in a
/// thread, every 5 ms, until dropped or [`Sampler::stop`].
pub struct Sampler {
    /// The ledger to check too (`None`: the config has no ledger resource).
    ledger: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    samples: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    /// Samples `runs` every 5 ms: the services of `resources` (pid files), the address `vip`,
    /// and with `jp1` the simulated JP1 daemons, each on two members at once.
    pub fn start(runs: Vec<Run>, resources: Vec<String>, jp1: bool, vip: &str, ledger: Option<PathBuf>) -> Self {
        let vip = vip.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(0));
        let thread = {
            let (stop, seen, samples) = (stop.clone(), seen.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for r in &resources {
                        let on: Vec<&str> = runs.iter().filter(|x| service_pid(&x.run_dir, r).is_some()).map(|x| x.name.as_str()).collect();
                        if on.len() > 1 {
                            seen.lock().unwrap().push(format!("{r} alive on {} at once", on.join(" and ")));
                        }
                    }
                    let on: Vec<&str> = runs.iter().filter(|x| has_address(x.probe, &vip)).map(|x| x.name.as_str()).collect();
                    if on.len() > 1 {
                        seen.lock().unwrap().push(format!("the virtual IP on {} at once", on.join(" and ")));
                    }
                    if jp1 {
                        let on: Vec<&str> = runs.iter().filter(|x| jp1_daemons_in(&x.ns) > 0).map(|x| x.name.as_str()).collect();
                        if on.len() > 1 {
                            seen.lock().unwrap().push(format!("JP1 daemons of the logical host on {} at once", on.join(" and ")));
                        }
                    }
                    *samples.lock().unwrap() += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Self { ledger, stop, seen, samples, thread: Some(thread) }
    }

    /// What was seen running twice so far, and how many samples were taken.
    pub fn so_far(&self) -> (Vec<String>, u64) {
        (self.seen.lock().unwrap().clone(), *self.samples.lock().unwrap())
    }

    /// Stops sampling; panics if a resource ever ran on two members at once.
    pub fn check(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let seen = self.seen.lock().unwrap();
        assert!(*self.samples.lock().unwrap() > 10, "the sampler hardly ran");
        assert!(seen.is_empty(), "S1 violated: {:?}", &seen[..seen.len().min(5)]);
        // The services' own account: what the group's ledger resource wrote wherever it ran.
        let Some(ledger) = &self.ledger else { return };
        let holdings = read_ledger(ledger).unwrap_or_else(|e| panic!("ledger: {e}"));
        assert!(!holdings.is_empty(), "the group's ledger resource never ran: {}", ledger.display());
        let story: Vec<String> = holdings.iter().map(|h| format!("{}@{} ({} records)", h.node, h.epoch, h.records)).collect();
        eprintln!("ledger: {}", story.join(" -> "));
        if let Err(e) = check_ledger(&holdings) {
            panic!("ledger: {e}");
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The group's `ledger` resource: the generic agent (LifeKeeper style) whose restore script starts
/// the `ledger` program (`tests/jp1-sim/src/bin/ledger.rs`) with the member's name and the
/// placement epoch it got (`LK_EPOCH`), appending to `<dir>/ledger` every 5 ms until killed; its
/// remove script returns only once the writer is gone.
fn ledger_resource(dir: &Path) -> String {
    ledger_resource_at(dir, &dir.join("run/ledger.pid").display().to_string())
}

/// The ledger resource with its pid file at `pid` (a shell word: `$LK_NODE` in it names the
/// member the script runs for, for members that share one file system).
pub fn ledger_resource_at(dir: &Path, pid: &str) -> String {
    let bin = crate::jp1::sim().with_file_name("ledger");
    let scripts = dir.join("ledger-scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let alive = format!(
        "alive() {{ pid=$(cat \"{pid}\" 2>/dev/null) || return 1; st=$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null | cut -c1); [ -n \"$st\" ] && [ \"$st\" != Z ] && [ \"$st\" != X ]; }}\n",
    );
    let bodies = [
        (
            "restore",
            format!(
                "alive && exit 0\nsetsid '{bin}' '{ledger}' \"$LK_NODE\" \"$LK_EPOCH\" </dev/null >/dev/null 2>&1 &\necho $! > \"{pid}\"\nsleep 0.05\nalive || {{ echo 'the ledger writer died'; exit 1; }}\n",
                bin = bin.display(),
                ledger = dir.join("ledger").display(),
            ),
        ),
        (
            "remove",
            format!(
                "if alive; then kill -TERM $pid; i=0; while alive && [ $i -lt 200 ]; do sleep 0.02; i=$((i+1)); done; alive && kill -KILL $pid; fi\nalive && exit 1\nrm -f \"{pid}\"\nexit 0\n",
            ),
        ),
        ("check", "alive\n".to_string()),
    ];
    for (name, body) in &bodies {
        let path = scripts.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{alive}{body}")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let s = scripts.display();
    format!(
        r#"
[[plugins]]
name = "generic"
path = "{plugin}"

[[resources]]
name = "ledger"
plugin = "generic"
params = {{ style = "lifekeeper", restore = "{s}/restore", remove = "{s}/remove", quickcheck = "{s}/check", watch = "none" }}
grants = {{ read = ["/**"], exec = [{{ program = "{s}/restore" }}, {{ program = "{s}/remove" }}, {{ program = "{s}/check" }}], env = ["LK*"] }}
monitor_interval = "1s"
"#,
        plugin = root().join("target/plugins/generic.wasm").display()
    )
}

/// One writer's records in the ledger: the group's ledger resource running on `node` under
/// placement `epoch`, alive at least from `first` to `last` (monotonic ns).
#[derive(Debug, Clone, PartialEq)]
pub struct Holding {
    pub node: String,
    pub epoch: u64,
    pub pid: u32,
    pub first: u128,
    pub last: u128,
    pub records: usize,
}

/// Reads the ledger (none yet: empty). A malformed line fails: records are written whole.
pub fn read_ledger(path: &Path) -> Result<Vec<Holding>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    parse_ledger(&text)
}

pub fn parse_ledger(text: &str) -> Result<Vec<Holding>, String> {
    let mut by_writer: std::collections::BTreeMap<(String, u32), Holding> = std::collections::BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split(' ').collect();
        let bad = || format!("line {}: `{line}` is not `NODE EPOCH PID NS`", i + 1);
        let [node, epoch, pid, ns] = f[..] else { return Err(bad()) };
        let (epoch, pid, ns) = (epoch.parse().map_err(|_| bad())?, pid.parse().map_err(|_| bad())?, ns.parse().map_err(|_| bad())?);
        let h =
            by_writer.entry((node.to_string(), pid)).or_insert(Holding { node: node.into(), epoch, pid, first: ns, last: ns, records: 0 });
        if h.epoch != epoch {
            return Err(format!("line {}: writer {pid} on {node} changed its epoch", i + 1));
        }
        h.first = h.first.min(ns);
        h.last = h.last.max(ns);
        h.records += 1;
    }
    let mut all: Vec<Holding> = by_writer.into_values().collect();
    all.sort_by_key(|h| h.first);
    Ok(all)
}

/// S1 over the ledger: no two writers alive at once (on two members, or twice on one), and the
/// placement epoch never going back, higher after every move to another member.
pub fn check_ledger(holdings: &[Holding]) -> Result<(), String> {
    for (i, a) in holdings.iter().enumerate() {
        for b in &holdings[i + 1..] {
            if b.first <= a.last {
                return Err(format!(
                    "S1 violated: the group ran on {} (epoch {}, pid {}) and on {} (epoch {}, pid {}) at once, for {:.1} ms",
                    a.node,
                    a.epoch,
                    a.pid,
                    b.node,
                    b.epoch,
                    b.pid,
                    (a.last.min(b.last) - b.first) as f64 / 1e6
                ));
            }
        }
    }
    for w in holdings.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.epoch < a.epoch || (b.node != a.node && b.epoch == a.epoch) {
            return Err(format!(
                "epoch order: {} ran under epoch {} after {} under epoch {} (a move must raise the epoch, nothing may lower it)",
                b.node, b.epoch, a.node, a.epoch
            ));
        }
    }
    Ok(())
}
