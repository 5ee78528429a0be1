//! `examples/jp1-cluster.toml`, run as it is written: its addresses, interface names and paths,
//! not the lab's. Each member is a network namespace with the example's addresses (`eth0` on
//! 10.0.1.0/24, heartbeat path 2 on `eth1`, 192.168.10.0/24) and a private mount namespace in which the
//! example's paths exist: the JP1 simulator's install bound on `/etc/opt`, `/opt` and
//! `/etc/.hitachi`, the cluster's credentials on `/etc/warden/pki`, the default state directory
//! and control socket bound to the member's own directories, `/dev/disk/by-id/scsi-jp1lh1-shared`
//! a link to a loop device (the shared disk) and `/shared/jp1lh1` its mount point. The top-level
//! directories those binds need are created on the host when missing (empty; removed again).
//!
//! It survives a cut path and a member cut off on both paths without the logical host ever
//! active on two members (the sampler: the virtual IP, the JP1 daemons), and switches it over
//! on command. (The example has no fence device: a lost owner's group would wait for
//! `confirm-down`, as its comments say; fail-over itself is the rest of this tier.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{Run, Sampler, WAIT};
use crate::netns::{answers_from, run, Namespaces};
use crate::node::{root, warden_bin};

const LHOST: &str = "jp1lh1";
const VIP: &str = "10.0.1.100";

struct Machine {
    name: &'static str,
    ns: String,
    dir: PathBuf,
    holder: Child,
    daemon: Option<Child>,
}

struct Example {
    dir: tempfile::TempDir,
    machines: Vec<Machine>,
    client: String,
    loopdev: String,
    /// Host directories this test created (removed at the end, deepest first).
    created: Vec<PathBuf>,
    _nets: Namespaces,
}

impl Example {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut created = Vec::new();
        for p in ["/etc/warden", "/var/lib/warden", "/run/warden", "/etc/.hitachi", "/shared", "/dev/disk"] {
            if !Path::new(p).exists() {
                std::fs::create_dir(p).unwrap();
                created.push(PathBuf::from(p));
            }
        }
        // The networks: path 1 (and the service network: the VIP is on eth0 too) and path 2.
        let mut nets = Namespaces::new();
        let sw = nets.add("exsw");
        for br in ["br0", "br1"] {
            run("/usr/sbin/ip", &["-n", &sw, "link", "add", br, "type", "bridge"]);
            run("/usr/sbin/ip", &["-n", &sw, "link", "set", br, "up"]);
        }
        let link = |ns: &str, inner: &str, outer: &str, br: &str, addr: &str| {
            run("/usr/sbin/ip", &["-n", ns, "link", "add", inner, "type", "veth", "peer", "name", outer, "netns", &sw]);
            run("/usr/sbin/ip", &["-n", ns, "addr", "add", addr, "dev", inner]);
            run("/usr/sbin/ip", &["-n", ns, "link", "set", inner, "up"]);
            run("/usr/sbin/ip", &["-n", &sw, "link", "set", outer, "master", br]);
            run("/usr/sbin/ip", &["-n", &sw, "link", "set", outer, "up"]);
        };
        // The shared disk, a loop device both members see.
        let image = d.join("shared.img");
        run("/usr/bin/truncate", &["-s", "64M", image.to_str().unwrap()]);
        run("/usr/sbin/mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        let loopdev = run("/usr/sbin/losetup", &["--find", "--show", image.to_str().unwrap()]).trim().to_string();
        // Credentials, as the example's comment says, in the default pki_dir of every member.
        let etc_warden = d.join("etc-warden");
        let out = Command::new(warden_bin())
            .args(["cluster", "init", "--dir"])
            .arg(etc_warden.join("pki"))
            .args(["--name", "jp1", "jp1-a", "jp1-b", "witness"])
            .output()
            .unwrap();
        assert!(out.status.success(), "cluster init: {out:?}");
        let sim = crate::jp1::sim();
        let names = [("jp1-a", "11", true), ("jp1-b", "12", true), ("witness", "13", false)];
        let nss: Vec<String> = names.iter().map(|(n, ..)| nets.add(&format!("ex{}", &n[n.len() - 1..]))).collect();
        let mut machines = Vec::new();
        for ((name, host, runs), ns) in names.into_iter().zip(nss) {
            link(&ns, "eth0", &format!("s0m{host}"), "br0", &format!("10.0.1.{host}/24"));
            link(&ns, "eth1", &format!("s1m{host}"), "br1", &format!("192.168.10.{host}/24"));
            let mdir = d.join(name);
            for sub in ["state", "run"] {
                std::fs::create_dir_all(mdir.join(sub)).unwrap();
            }
            let mut binds = format!(
                "mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null\nmount --bind '{ew}' /etc/warden\nmount --bind '{m}/state' /var/lib/warden\nmount --bind '{m}/run' /run/warden\n",
                ew = etc_warden.display(),
                m = mdir.display()
            );
            if runs {
                let prefix = mdir.join("jp1");
                run(sim.to_str().unwrap(), &["install", prefix.to_str().unwrap(), "--ajs", "manager"]);
                binds += &format!(
                    "mount --bind '{p}/etc/opt' /etc/opt\nmount --bind '{p}/opt' /opt\nmount --bind '{p}/etc/.hitachi' /etc/.hitachi\n\
                     mount -t tmpfs none /shared && mkdir /shared/{LHOST}\n\
                     mount -t tmpfs none /dev/disk && mkdir /dev/disk/by-id && ln -s '{loopdev}' /dev/disk/by-id/scsi-{LHOST}-shared\n\
                     mount '{loopdev}' /shared/{LHOST} && '{sim}' setup-lhost '{p}' {LHOST} /shared/{LHOST} --ajs manager && umount /shared/{LHOST}\n",
                    p = prefix.display(),
                    sim = sim.display()
                );
            }
            let ready = mdir.join("ready");
            let script = format!("set -e\n{binds}touch '{}'\nexec /bin/sleep 1000000\n", ready.display());
            let holder = Command::new("/usr/sbin/ip")
                .args(["netns", "exec", &ns, "/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", &script])
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            let start = Instant::now();
            while !ready.exists() {
                assert!(start.elapsed() < WAIT, "{name}'s machine never came up");
                std::thread::sleep(Duration::from_millis(20));
            }
            machines.push(Machine { name, ns, dir: mdir, holder, daemon: None });
        }
        let client = nets.add("excl");
        link(&client, "eth0", "s0cl", "br0", "10.0.1.200/24");
        Self { dir, machines, client, loopdev, created, _nets: nets }
    }

    fn machine(&self, name: &str) -> &Machine {
        self.machines.iter().find(|m| m.name == name).unwrap()
    }

    /// `warden node run --config examples/jp1-cluster.toml --node NAME`, nothing else given.
    fn start(&mut self, name: &str) {
        let config = root().join("examples/jp1-cluster.toml");
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
        let m = self.machines.iter_mut().find(|m| m.name == name).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(m.dir.join("log")).unwrap();
        let child = Command::new("/usr/bin/nsenter")
            .args(["--target", &m.holder.id().to_string(), "--mount", "--net", "--"])
            .arg(warden_bin())
            .args(["--log", "info", "--cache-dir"])
            .arg(&cache)
            .args(["node", "run", "--config"])
            .arg(&config)
            .args(["--node", name])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        m.daemon = Some(child);
    }

    /// The CLI against member `via`'s default control socket (its `/run/warden`).
    fn cli(&self, via: &str, args: &[&str]) -> std::process::Output {
        let socket = self.machine(via).dir.join("run/warden.sock");
        Command::new(warden_bin()).args(args).env("WARDEN_SOCKET", socket).output().unwrap()
    }

    fn owner(&self, via: &str) -> Option<String> {
        let o = self.cli(via, &["status", "--json"]);
        let st: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        let g = st["groups"].as_array()?.iter().find(|g| g["name"] == LHOST)?.clone();
        (g["state"] == "started").then(|| g["owner"].as_str().map(String::from)).flatten()
    }

    fn logs(&self) -> String {
        self.machines
            .iter()
            .map(|m| format!("===== {} =====\n{}", m.name, std::fs::read_to_string(m.dir.join("log")).unwrap_or_default()))
            .collect()
    }

    fn wait(&self, what: &str, mut f: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !f(self) {
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn sampler(&self) -> Sampler {
        let runs = self
            .machines
            .iter()
            .filter(|m| m.name != "witness")
            .map(|m| Run { name: m.name.into(), run_dir: m.dir.join("run"), probe: m.holder.id(), ns: m.ns.clone() })
            .collect();
        Sampler::start(runs, Vec::new(), true, VIP, None)
    }

    /// iptables in member `name`: drop the cluster's traffic (port 7400) on `dev`, both ways.
    fn cut(&self, name: &str, dev: &str) {
        let ns = &self.machine(name).ns;
        for chain in [["INPUT", "-i"], ["OUTPUT", "-o"]] {
            for port in ["--dport", "--sport"] {
                run(
                    "/usr/sbin/ip",
                    &["netns", "exec", ns, "iptables", "-A", chain[0], chain[1], dev, "-p", "tcp", port, "7400", "-j", "DROP"],
                );
            }
        }
    }

    fn heal(&self, name: &str) {
        run("/usr/sbin/ip", &["netns", "exec", &self.machine(name).ns, "iptables", "-F"]);
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        for m in &mut self.machines {
            if let Some(d) = &mut m.daemon {
                let _ = d.kill();
                let _ = d.wait();
            }
            // Everything the member ran (the JP1 daemons among them) dies with its namespace.
            for pid in Namespaces::pids(&m.ns) {
                let _ = Command::new("/bin/kill").args(["-KILL", &pid.to_string()]).status();
            }
            let _ = m.holder.kill();
            let _ = m.holder.wait();
        }
        let _ = Command::new("/usr/sbin/losetup").args(["-d", &self.loopdev]).status();
        for p in self.created.iter().rev() {
            let _ = std::fs::remove_dir(p);
        }
        let _ = &self.dir;
    }
}

#[test]
fn the_jp1_example_config_runs_as_written_survives_cuts_and_switches_over() {
    let mut c = Example::new();
    let s1 = c.sampler();
    // The two nodes first, until one of them leads, so that cutting jp1-b off below is, often,
    // a cut of the leader (a new leader's status must still show the group started on jp1-a).
    for m in ["jp1-b", "jp1-a"] {
        c.start(m);
    }
    c.wait("a leader among the two nodes", |c| {
        let o = c.cli("jp1-b", &["status", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok_and(|st| st["cluster_info"]["leader"].is_string())
    });
    c.start("witness");
    c.wait("the logical host started on jp1-a, its VIP answering", |c| {
        c.owner("witness").as_deref() == Some("jp1-a") && answers_from(&c.client, VIP.parse().unwrap())
    });
    // Path 1 of the owner cut (heartbeats only: the VIP shares that network): path 2 carries on.
    c.cut("jp1-a", "eth0");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(c.owner("witness").as_deref(), Some("jp1-a"), "{}", c.logs());
    c.heal("jp1-a");
    // The other node cut off on both paths: the group stays where it is.
    c.cut("jp1-b", "eth0");
    c.cut("jp1-b", "eth1");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(c.owner("jp1-a").as_deref(), Some("jp1-a"), "{}", c.logs());
    c.heal("jp1-b");
    c.wait("jp1-b back", |c| {
        let o = c.cli("witness", &["status", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .is_ok_and(|st| st["nodes"].as_array().is_some_and(|n| n.iter().all(|n| n["up"] == true)))
    });
    // Switchover on command (LifeKeeper's "in service" on the other server). jp1-b, back from
    // its cut, may have forced an election (its term grew while it was cut off): a command given
    // meanwhile is refused with "try again", and the operator tries again.
    c.wait("the switchover command accepted", |c| {
        let o = c.cli("jp1-a", &["group", "move", LHOST, "--to", "jp1-b"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() || err.contains("try again") || err.contains("no leader"), "{o:?}\n{}", c.logs());
        o.status.success()
    });
    c.wait("the logical host started on jp1-b, its VIP answering", |c| {
        c.owner("witness").as_deref() == Some("jp1-b") && answers_from(&c.client, VIP.parse().unwrap())
    });
    s1.check();
}
