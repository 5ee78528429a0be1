//! The watchdog of a cluster member with `watchdog_fencing`: a separate supervising process that
//! kills every process in the member's resource cgroups when the member's lease runs out, whatever
//! the daemon is doing (stalled, stopped with SIGSTOP, killed). That makes a lost member's lease
//! a fence: once the leader has waited out the lease ([`super::lease::reassign_after`]), nothing of
//! the member's groups can still run there, and the groups move without a fence device.
//!
//! The daemon arms it at every lease renewal: `arm MS` = "kill in MS ms unless armed again"
//! ([`super::lease::watchdog_deadline`]: just before the lease ends). A hung daemon arms nothing
//! and the kill comes when the lease ends. After the kill the supervisor waits to be armed again.
//! It listens on `<state>/watchdog.sock`; a restarted daemon takes the running supervisor over
//! (as it would reopen `/dev/watchdog`), so a daemon's crash neither disarms it nor needs it.
//! `exit` (a daemon that stops cleanly with nothing running) ends it.
//!
//! Killing processes does not take an address off an interface nor unmount a filesystem, which a
//! machine reset would: when it fires, the supervisor also deletes the member's virtual IPs and
//! lazily unmounts its filesystems ([`Release`]: resources with `address` and `interface`
//! parameters, resources with a `mountpoint`), as their agents' stops would.
//!
//! This is the weaker guarantee of the two the architecture names: a hardware watchdog resets the
//! whole machine even when the kernel hangs; this process needs the kernel and itself alive (it is
//! a small loop with no I/O but the socket and one write to `cgroup.kill`). A hardware
//! `/dev/watchdog` is not supported yet.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The supervisor's state: when to kill, if armed.
#[derive(Default)]
struct Armed {
    deadline: Option<Instant>,
    exit: bool,
    connections: usize,
}

/// What the supervisor undoes besides killing processes when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// `ADDRESS/PREFIX` on `interface` (`ip addr del`).
    Address { address: String, interface: String },
    /// A mount point (`umount -l`).
    Mount(PathBuf),
}

impl Release {
    /// The releases a resource with these parameters needs (the ip and filesystem agents'
    /// parameter names).
    pub fn of_params(params: &std::collections::BTreeMap<String, String>) -> Vec<Release> {
        let mut out = Vec::new();
        if let (Some(address), Some(interface)) = (params.get("address"), params.get("interface")) {
            out.push(Release::Address { address: address.clone(), interface: interface.clone() });
        }
        if let Some(mp) = params.get("mountpoint") {
            out.push(Release::Mount(PathBuf::from(mp)));
        }
        out
    }

    /// As a command-line argument of `watchdog-supervise`: `address:ADDR@IFACE` or `mount:PATH`.
    pub fn to_arg(&self) -> String {
        match self {
            Release::Address { address, interface } => format!("address:{address}@{interface}"),
            Release::Mount(p) => format!("mount:{}", p.display()),
        }
    }

    pub fn from_arg(arg: &str) -> Result<Release, String> {
        if let Some(rest) = arg.strip_prefix("address:") {
            let (address, interface) = rest.rsplit_once('@').ok_or_else(|| format!("`{arg}`: expected address:ADDR@IFACE"))?;
            return Ok(Release::Address { address: address.into(), interface: interface.into() });
        }
        if let Some(p) = arg.strip_prefix("mount:") {
            return Ok(Release::Mount(PathBuf::from(p)));
        }
        Err(format!("`{arg}`: expected address:ADDR@IFACE or mount:PATH"))
    }

    fn run(&self) {
        let (program, args): (&str, Vec<String>) = match self {
            Release::Address { address, interface } => {
                ("/usr/sbin/ip", vec!["addr".into(), "del".into(), address.clone(), "dev".into(), interface.clone()])
            }
            Release::Mount(p) => ("/bin/umount", vec!["-l".into(), p.display().to_string()]),
        };
        let out = std::process::Command::new(program).args(&args).output();
        let ok = out.as_ref().is_ok_and(|o| o.status.success());
        eprintln!("watchdog: {program} {}: {}", args.join(" "), if ok { "done" } else { "nothing to undo or failed" });
    }
}

/// Runs the supervisor (the hidden `warden watchdog-supervise` command) until told to exit, or
/// until the daemon is gone and nothing is armed.
pub fn supervise(socket: &Path, cgroup: &Path, releases: &[Release]) -> std::io::Result<()> {
    ignore_stop_signals();
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    let state = Arc::new(Mutex::new(Armed::default()));
    {
        let state = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                state.lock().expect("not poisoned").connections += 1;
                let state = state.clone();
                std::thread::spawn(move || serve(conn, &state));
            }
        });
    }
    eprintln!("watchdog: supervising {} (socket {})", cgroup.display(), socket.display());
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let mut s = state.lock().expect("not poisoned");
        if s.exit {
            eprintln!("watchdog: told to exit (the daemon stopped cleanly)");
            break;
        }
        if s.deadline.is_some_and(|d| Instant::now() >= d) {
            s.deadline = None;
            drop(s);
            let killed = kill_cgroup_tree(cgroup);
            eprintln!("watchdog: FIRED: not armed again before the lease ran out; killed {killed} processes under {}", cgroup.display());
            for r in releases {
                r.run();
            }
            continue;
        }
        // The daemon is gone (no connection) and nothing is armed: nothing to guard.
        if s.connections == 0 && s.deadline.is_none() && started.elapsed() > Duration::from_secs(5) {
            eprintln!("watchdog: no daemon and not armed: exiting");
            break;
        }
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

/// A service manager stopping the daemon (SIGTERM to its whole unit, say) must not take the
/// watchdog down while the daemon may still run resources: it exits when the daemon releases it,
/// or when the daemon is gone and nothing is armed.
#[allow(unsafe_code)] // signal(2) through libc
fn ignore_stop_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code; it only changes this process's disposition.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
}

fn serve(conn: UnixStream, state: &Mutex<Armed>) {
    let reader = BufReader::new(&conn);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let mut s = state.lock().expect("not poisoned");
        let mut words = line.split_whitespace();
        match (words.next(), words.next().and_then(|w| w.parse::<u64>().ok())) {
            (Some("arm"), Some(ms)) => s.deadline = Some(Instant::now() + Duration::from_millis(ms)),
            (Some("exit"), None) => s.exit = true,
            _ => {}
        }
        drop(s);
        let _ = (&conn).write_all(b"ok\n");
    }
    state.lock().expect("not poisoned").connections -= 1;
}

/// Kills every process in every cgroup below `base` (`cgroup.kill` of each child; the freezer
/// and SIGKILL where the kernel has no `cgroup.kill`). Returns how many there were.
fn kill_cgroup_tree(base: &Path) -> usize {
    let mut killed = 0;
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        if !entry.path().is_dir() {
            continue;
        }
        let cg = super::cgroup::ResourceCgroup::at(entry.path());
        killed += cg.kill_now();
    }
    killed
}

/// The daemon's handle on its supervisor.
pub struct Watchdog {
    socket: PathBuf,
    cgroup: PathBuf,
    releases: Vec<Release>,
    conn: Option<UnixStream>,
}

impl Watchdog {
    /// Connects to the supervisor of this state directory, starting one if none runs. With a
    /// new one, whatever an earlier daemon left running is killed at once (`Ok(true)`): no
    /// watchdog guarded it since that daemon died, so its lease cannot be vouched for (the
    /// leader may already count this member fenced). A supervisor that survived the earlier
    /// daemon keeps its deadline and what runs is adopted as usual (`Ok(false)`).
    pub fn attach(state_dir: &Path, cgroup: &Path, releases: Vec<Release>) -> Result<(Self, bool), String> {
        let mut w = Self { socket: state_dir.join("watchdog.sock"), cgroup: cgroup.to_path_buf(), releases, conn: None };
        let new = w.connect()?;
        if new {
            w.arm(Duration::ZERO)?;
        }
        Ok((w, new))
    }

    /// True when it had to start a supervisor.
    fn connect(&mut self) -> Result<bool, String> {
        if let Ok(c) = UnixStream::connect(&self.socket) {
            self.conn = Some(c);
            return Ok(false);
        }
        let exe = std::env::current_exe().map_err(|e| format!("cannot find the warden binary: {e}"))?;
        use std::os::unix::process::CommandExt;
        std::process::Command::new(exe)
            .arg("watchdog-supervise")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .args(self.releases.iter().flat_map(|r| ["--release".to_string(), r.to_arg()]))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            // Its own process group: a signal to the daemon's group does not reach it.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start the watchdog supervisor: {e}"))?;
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(c) = UnixStream::connect(&self.socket) {
                self.conn = Some(c);
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("the watchdog supervisor did not answer on {} within 5 s", self.socket.display()))
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        if self.conn.is_none() {
            // A supervisor started now begins unarmed: the arm being sent arms it.
            self.connect()?;
        }
        let conn = self.conn.as_mut().expect("connected");
        let _ = conn.set_write_timeout(Some(Duration::from_millis(200)));
        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
        let mut ok = [0u8; 3];
        let r = conn.write_all(format!("{line}\n").as_bytes()).and_then(|_| std::io::Read::read_exact(conn, &mut ok));
        if let Err(e) = r {
            self.conn = None;
            return Err(format!("the watchdog supervisor did not take `{line}`: {e}"));
        }
        Ok(())
    }

    /// Kill everything in the cgroups `within` from now unless armed again.
    pub fn arm(&mut self, within: Duration) -> Result<(), String> {
        self.send(&format!("arm {}", within.as_millis()))
    }

    /// The daemon stops cleanly with nothing running: the supervisor exits.
    pub fn release(mut self) {
        let _ = self.send("exit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_come_from_the_ip_and_filesystem_parameters_and_survive_the_command_line() {
        let params = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let vip = Release::of_params(&params(&[("address", "10.0.0.5/24"), ("interface", "eth0"), ("arping_count", "1")]));
        assert_eq!(vip, vec![Release::Address { address: "10.0.0.5/24".into(), interface: "eth0".into() }]);
        let fs = Release::of_params(&params(&[("device", "/dev/sdb1"), ("mountpoint", "/shared")]));
        assert_eq!(fs, vec![Release::Mount("/shared".into())]);
        assert!(Release::of_params(&params(&[("logical_host", "jp1")])).is_empty());
        for r in vip.iter().chain(&fs) {
            assert_eq!(&Release::from_arg(&r.to_arg()).unwrap(), r);
        }
        assert!(Release::from_arg("reboot").is_err());
    }
}
