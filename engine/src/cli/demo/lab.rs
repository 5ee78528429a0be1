//! A cluster of "machines" on one host, for the cluster demo: each member is a network namespace
//! joined to the others by two switched networks (two heartbeat paths), plus a service network
//! that carries the group's virtual IP to a client namespace.
//!
//! ```text
//!   ns A ─eth1─┐            ┌─eth1─ ns B        path 1:  10.214.1.0/24  (bridge br1 in the switch ns)
//!        ─eth2─┼─ switch ns ┼─eth2─             path 2:  10.214.2.0/24  (bridge br2)
//!        ─eth3─┤            ├─eth3─             service: 10.214.3.0/24  (bridge br3; no fixed address:
//!              └─eth1, eth2─ ns W (witness)               the virtual IP), client ns at .200
//! ```
//!
//! Each member also has a private mount namespace in which `<dir>/node-<name>` is bind-mounted
//! on `<dir>/run`: one config names `<dir>/run/...` and each member sees its own installation
//! there, as each server has its own `/opt`. A long-lived holder process (`sleep`) keeps both
//! namespaces; daemons join them with `nsenter`. [`Lab::power_script`] writes the power switch a
//! fence device drives: `off` takes the member's links down and kills every process in it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The first two octets of every lab network.
pub const NET: &str = "10.214";

/// One simulated machine.
pub struct LabMember {
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    pub witness: bool,
    /// `<dir>/node-<name>`: what the member sees at `<dir>/run`.
    pub run_dir: PathBuf,
    /// `IP:7400` on path 1 and path 2.
    pub addresses: [String; 2],
    /// The process holding the member's mount namespace (`sleep`), while the machine is "on".
    pub holder: Option<Child>,
}

/// The namespaces, links and holder processes of a lab; dropping it kills everything still
/// running in its namespaces and deletes them.
pub struct Lab {
    pub dir: PathBuf,
    pub switch: String,
    /// The client namespace on the service network (`10.214.3.200`).
    pub client: String,
    pub members: Vec<LabMember>,
    namespaces: Vec<String>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("/usr/sbin/ip").args(args).output().context("run /usr/sbin/ip")?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Live (not zombie) processes in network namespace `ns`.
pub fn pids(ns: &str) -> Vec<u32> {
    let out = Command::new("/usr/sbin/ip").args(["netns", "pids", ns]).output();
    let out = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    out.split_whitespace().filter_map(|p| p.parse().ok()).filter(|p| is_alive(*p)).collect()
}

fn is_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')').next().and_then(|r| r.trim().chars().next()).is_some_and(|s| s != 'Z' && s != 'X')
}

impl Lab {
    /// Builds the lab under `dir` for `members` (name, is witness); namespaces are named
    /// `<tag><member>`, `<tag>sw` and `<tag>cl` (`tag` unique per run).
    pub fn new(dir: &Path, tag: &str, members: &[(&str, bool)]) -> anyhow::Result<Self> {
        let mut lab =
            Self { dir: dir.to_path_buf(), switch: String::new(), client: String::new(), members: Vec::new(), namespaces: Vec::new() };
        lab.switch = lab.namespace(&format!("{tag}sw"))?;
        for br in ["br1", "br2", "br3"] {
            ip(&["-n", &lab.switch, "link", "add", br, "type", "bridge"])?;
            ip(&["-n", &lab.switch, "link", "set", br, "up"])?;
        }
        // Every member's namespace exists before any member's mount namespace is made, so each
        // sees the others' under /run/netns (the power switch, run by the leader, reaches them).
        let nss: Vec<String> = members.iter().map(|(name, _)| lab.namespace(&format!("{tag}{name}"))).collect::<Result<_, _>>()?;
        std::fs::create_dir_all(dir.join("run"))?;
        for (i, ((name, witness), ns)) in members.iter().zip(nss).enumerate() {
            let host = i + 1;
            let sw = lab.switch.clone();
            let links: &[u32] = if *witness { &[1, 2] } else { &[1, 2, 3] };
            for path in links {
                let (inner, outer) = (format!("eth{path}"), format!("s{path}m{host}"));
                ip(&["-n", &ns, "link", "add", &inner, "type", "veth", "peer", "name", &outer, "netns", &sw])?;
                if *path != 3 {
                    ip(&["-n", &ns, "addr", "add", &format!("{NET}.{path}.{host}/24"), "dev", &inner])?;
                }
                ip(&["-n", &ns, "link", "set", &inner, "up"])?;
                ip(&["-n", &sw, "link", "set", &outer, "master", &format!("br{path}")])?;
                ip(&["-n", &sw, "link", "set", &outer, "up"])?;
            }
            let run_dir = dir.join(format!("node-{name}"));
            std::fs::create_dir_all(&run_dir)?;
            let mut member = LabMember {
                name: name.to_string(),
                ns,
                witness: *witness,
                run_dir,
                addresses: [format!("{NET}.1.{host}:7400"), format!("{NET}.2.{host}:7400")],
                holder: None,
            };
            member.holder = Some(lab.holder(&member)?);
            lab.members.push(member);
        }
        lab.client = lab.namespace(&format!("{tag}cl"))?;
        let (cl, sw) = (lab.client.clone(), lab.switch.clone());
        ip(&["-n", &cl, "link", "add", "eth3", "type", "veth", "peer", "name", "s3cl", "netns", &sw])?;
        ip(&["-n", &cl, "addr", "add", &format!("{NET}.3.200/24"), "dev", "eth3"])?;
        ip(&["-n", &cl, "link", "set", "eth3", "up"])?;
        ip(&["-n", &sw, "link", "set", "s3cl", "master", "br3"])?;
        ip(&["-n", &sw, "link", "set", "s3cl", "up"])?;
        Ok(lab)
    }

    fn namespace(&mut self, name: &str) -> anyhow::Result<String> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(name.to_string())
    }

    /// The member's "machine": a process in its network namespace and in a private mount
    /// namespace where `<dir>/run` is the member's own directory.
    fn holder(&self, m: &LabMember) -> anyhow::Result<Child> {
        let run = self.dir.join("run");
        // `ip netns exec` mounts a fresh /sys without the cgroup2 hierarchy: mount it again (the
        // same hierarchy) so that the member's resources get their cgroups.
        let script = format!(
            "mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null; mount --bind '{}' '{}' && exec /bin/sleep 1000000",
            m.run_dir.display(),
            run.display()
        );
        let child = Command::new("/usr/sbin/ip")
            .args(["netns", "exec", &m.ns, "/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .context("start the member's holder process (ip netns exec … unshare)")?;
        // `ip netns exec`, `unshare` and `sh -c 'exec …'` all exec: the pid is the holder's.
        let (pid, run) = (child.id(), run.display().to_string());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap_or_default();
            if mounts.lines().any(|l| l.split(' ').nth(1) == Some(run.as_str())) {
                return Ok(child);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("member {}'s mount namespace never showed its bind mount on {run}", m.name)
    }

    pub fn member(&self, name: &str) -> &LabMember {
        self.members.iter().find(|m| m.name == name).expect("a lab member")
    }

    /// A command that runs `program` inside member `name`'s namespaces (network and mount).
    pub fn command_in(&self, name: &str, program: &Path) -> anyhow::Result<Command> {
        let holder = self.member(name).holder.as_ref().with_context(|| format!("member {name} is powered off"))?;
        let mut cmd = Command::new("/usr/bin/nsenter");
        cmd.args(["--target", &holder.id().to_string(), "--mount", "--net", "--"]).arg(program);
        Ok(cmd)
    }

    /// Writes the lab's power switch to `path` ([`power_switch`]; every process of a member
    /// dies, its holder included: a machine without power has no mounts either).
    pub fn power_script(&self, path: &Path) -> anyhow::Result<()> {
        let machines: Vec<(String, String, Option<u32>)> = self.members.iter().map(|m| (m.name.clone(), m.ns.clone(), None)).collect();
        std::fs::write(path, power_switch(&machines, None))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// Member `name`'s machine loses power: its links go down first (it answers nothing from
    /// that instant), then every process in it is killed with SIGKILL, the daemon included.
    pub fn power_off(&mut self, name: &str) {
        let m = self.members.iter_mut().find(|m| m.name == name).expect("a lab member");
        for dev in ["eth1", "eth2", "eth3"] {
            let _ = Command::new("/usr/sbin/ip").args(["-n", &m.ns, "link", "set", dev, "down"]).stderr(Stdio::null()).status();
        }
        for pid in pids(&m.ns) {
            let _ = Command::new("/bin/kill").args(["-KILL", &pid.to_string()]).status();
        }
        if let Some(mut h) = m.holder.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

/// A power switch for machines that are network namespaces, as a shell script: `SCRIPT off|status
/// MACHINE` (the fence-exec `args` style). `machines`: (name, namespace, a pid to spare: the
/// process holding the machine's mount namespace, or none). `off` takes the machine's links down,
/// flushes its service address and kills every process in it but the spared one; `status` exits
/// 0 while anything else runs there, 2 when nothing does. While the file `broken` exists, every
/// call fails (a switch that does not answer).
pub fn power_switch(machines: &[(String, String, Option<u32>)], broken: Option<&Path>) -> String {
    let cases: String = machines.iter().map(|(name, ns, keep)| format!("  {name}) ns={ns}; keep={} ;;\n", keep.unwrap_or(0))).collect();
    let broken =
        broken.map_or(String::new(), |b| format!("if [ -e '{}' ]; then echo \"power switch broken\" >&2; exit 1; fi\n", b.display()));
    format!(
        r#"#!/bin/sh
# A power switch for machines that are network namespaces: `power off|status MACHINE`.
case "$2" in
{cases}  *) echo "no such machine: $2" >&2; exit 1 ;;
esac
{broken}alive() {{
  for p in $(/usr/sbin/ip netns pids "$ns"); do
    [ "$p" = "$keep" ] && continue
    s=$(cut -d' ' -f3 "/proc/$p/stat" 2>/dev/null) || continue
    [ -n "$s" ] && [ "$s" != Z ] && return 0
  done
  return 1
}}
case "$1" in
  off)
    for d in eth1 eth2 eth3; do /usr/sbin/ip -n "$ns" link set "$d" down 2>/dev/null; done
    /usr/sbin/ip -n "$ns" addr flush dev eth3 2>/dev/null
    for p in $(/usr/sbin/ip netns pids "$ns"); do [ "$p" = "$keep" ] || kill -KILL "$p" 2>/dev/null; done
    exit 0 ;;
  status) if alive; then exit 0; else exit 2; fi ;;
esac
exit 1
"#
    )
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in &self.namespaces {
            // Only our own, uniquely named namespaces: what runs there the demo started.
            for pid in pids(name) {
                let _ = Command::new("/bin/kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
        for m in &mut self.members {
            if let Some(mut h) = m.holder.take() {
                let _ = h.kill();
                let _ = h.wait();
            }
        }
        for name in &self.namespaces {
            let _ = Command::new("/usr/sbin/ip").args(["netns", "del", name]).status();
        }
    }
}
