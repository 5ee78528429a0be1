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
//! Alone, this is the weaker guarantee of the two the architecture names: a hardware watchdog
//! resets the whole machine even when the kernel hangs; this process needs the kernel and itself
//! alive (it is a small loop with no I/O but the socket and one write to `cgroup.kill`).
//!
//! With `watchdog_device` (a hardware `/dev/watchdog`) the supervisor also holds the device open
//! and pets it only while the armed lease has more than the device's timeout left
//! ([`should_pet`]): when the lease runs out the machine is reset by the time it ends, even if
//! the kernel hangs (SBD's rule). It pets freely while nothing is armed (no lease, nothing may
//! start). A supervisor that dies leaves the device unpetted: the machine resets. Only a clean
//! `exit` disarms the device (the magic close, `V`); a driver built with `nowayout` cannot be
//! disarmed, so stopping Warden there resets the machine. Software watchdogs (`softdog`) are
//! not safe for this (a hung kernel takes them down with it) and must not be configured.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A line to stderr that never panics: the supervisor must go on guarding even when nobody
/// reads its stderr any more (`eprintln!` panics on a write error).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

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
        say!("watchdog: {program} {}: {}", args.join(" "), if ok { "done" } else { "nothing to undo or failed" });
    }
}

/// The timeout asked of a hardware watchdog, in seconds (drivers count whole seconds).
const DEVICE_TIMEOUT_S: libc::c_int = 1;
/// The longest device timeout accepted: a lease must be able to run out on it (the member's
/// clean stop begins `STOP_AHEAD` before the lease ends; the reset must come after that).
const DEVICE_TIMEOUT_MAX: Duration = Duration::from_secs(2);
/// A pet must leave this much beyond the device's timeout before the lease's end (the loop's
/// period and the timer's own inaccuracy).
const PET_MARGIN: Duration = Duration::from_millis(100);

/// Whether to pet a hardware watchdog of `timeout` at `now` with the lease armed until
/// `deadline`: only while, if this were the last pet, the reset would still come before the
/// lease ends; always while nothing is armed (no lease: nothing may start here).
pub fn should_pet(now: Instant, deadline: Option<Instant>, timeout: Duration) -> bool {
    deadline.is_none_or(|d| now + timeout + PET_MARGIN <= d)
}

// linux/watchdog.h: _IOR('W', 5, int), _IOWR('W', 6, int).
const WDIOC_KEEPALIVE: libc::c_ulong = 0x8004_5705;
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

/// An open hardware watchdog device: it resets the machine unless petted within its timeout.
pub struct Device {
    file: std::fs::File,
    path: PathBuf,
    timeout: Duration,
}

impl Device {
    /// Opens `path` (which starts its timer) and sets its timeout to [`DEVICE_TIMEOUT_S`].
    pub fn open(path: &Path) -> Result<Device, String> {
        let file = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut dev = Device { file, path: path.to_path_buf(), timeout: Duration::ZERO };
        let mut t: libc::c_int = DEVICE_TIMEOUT_S;
        if let Err(e) = dev.ioctl(WDIOC_SETTIMEOUT, &mut t) {
            let msg = format!(
                "{} is not a watchdog device, or cannot take a {DEVICE_TIMEOUT_S} s timeout (WDIOC_SETTIMEOUT: {e})",
                path.display()
            );
            dev.disarm();
            return Err(msg);
        }
        // The driver writes back the timeout in effect (rounded to what the hardware can do).
        dev.timeout = Duration::from_secs(t.max(1) as u64);
        if dev.timeout > DEVICE_TIMEOUT_MAX {
            let msg = format!(
                "{}: the watchdog's timeout is {} s (asked for {DEVICE_TIMEOUT_S} s), longer than the {} s a lease allows",
                path.display(),
                t,
                DEVICE_TIMEOUT_MAX.as_secs()
            );
            dev.disarm();
            return Err(msg);
        }
        dev.pet().map_err(|e| format!("{}: WDIOC_KEEPALIVE: {e}", path.display()))?;
        Ok(dev)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    #[allow(unsafe_code)] // ioctl(2) on the device's descriptor, with an int we own
    fn ioctl(&self, request: libc::c_ulong, arg: &mut libc::c_int) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the life of `self`; both requests take an int*.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request as _, arg as *mut libc::c_int) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn pet(&self) -> std::io::Result<()> {
        let mut unused: libc::c_int = 0;
        self.ioctl(WDIOC_KEEPALIVE, &mut unused)
    }

    /// The magic close: `V`, then close. The timer stops (unless the driver is `nowayout`).
    pub fn disarm(mut self) {
        let _ = self.file.write_all(b"V");
        say!("watchdog: {} disarmed (magic close)", self.path.display());
    }
}

/// Runs the supervisor (the hidden `warden watchdog-supervise` command) until told to exit, or
/// until the daemon is gone and nothing is armed. With `device`, it holds that hardware watchdog
/// (opened before anything else: a device that cannot be used is an error at once).
pub fn supervise(socket: &Path, cgroup: &Path, releases: &[Release], device: Option<&Path>) -> std::io::Result<()> {
    let device = match device.map(Device::open).transpose() {
        Ok(d) => d,
        Err(e) => {
            say!("watchdog: {e}");
            return Err(std::io::Error::other(e));
        }
    };
    if let Some(d) = &device {
        say!("watchdog: holding {} (timeout {} s)", d.path.display(), d.timeout.as_secs());
    }
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
    say!("watchdog: supervising {} (socket {})", cgroup.display(), socket.display());
    let started = Instant::now();
    let mut petting = true;
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let mut s = state.lock().expect("not poisoned");
        if let Some(d) = &device {
            let pet = should_pet(Instant::now(), s.deadline, d.timeout);
            if pet {
                if let Err(e) = d.pet() {
                    say!("watchdog: {}: WDIOC_KEEPALIVE: {e}", d.path.display());
                }
            } else if petting {
                say!("watchdog: the lease has less than the device's timeout left: no more pets, the machine resets unless it is renewed");
            }
            petting = pet;
        }
        if s.exit {
            say!("watchdog: told to exit (the daemon stopped cleanly)");
            break;
        }
        if s.deadline.is_some_and(|d| Instant::now() >= d) {
            s.deadline = None;
            drop(s);
            let killed = kill_cgroup_tree(cgroup);
            say!("watchdog: FIRED: not armed again before the lease ran out; killed {killed} processes under {}", cgroup.display());
            for r in releases {
                r.run();
            }
            continue;
        }
        // The daemon is gone (no connection) and nothing is armed: nothing to guard.
        if s.connections == 0 && s.deadline.is_none() && started.elapsed() > Duration::from_secs(5) {
            say!("watchdog: no daemon and not armed: exiting");
            break;
        }
    }
    let _ = std::fs::remove_file(socket);
    if let Some(d) = device {
        d.disarm();
    }
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
    device: Option<PathBuf>,
    conn: Option<UnixStream>,
}

impl Watchdog {
    /// Connects to the supervisor of this state directory, starting one if none runs. With a
    /// new one, whatever an earlier daemon left running is killed at once (`Ok(true)`): no
    /// watchdog guarded it since that daemon died, so its lease cannot be vouched for (the
    /// leader may already count this member fenced). A supervisor that survived the earlier
    /// daemon keeps its deadline and what runs is adopted as usual (`Ok(false)`).
    pub fn attach(state_dir: &Path, cgroup: &Path, releases: Vec<Release>, device: Option<&Path>) -> Result<(Self, bool), String> {
        let device = device.map(Path::to_path_buf);
        let mut w = Self { socket: state_dir.join("watchdog.sock"), cgroup: cgroup.to_path_buf(), releases, device, conn: None };
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
        // `WARDEN_EXE`: where the `warden` binary is when the daemon runs inside another program
        // (the in-process cluster tests); else this program is `warden`.
        let exe = match std::env::var_os("WARDEN_EXE") {
            Some(exe) => PathBuf::from(exe),
            None => std::env::current_exe().map_err(|e| format!("cannot find the warden binary: {e}"))?,
        };
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("watchdog-supervise").arg("--socket").arg(&self.socket).arg("--cgroup").arg(&self.cgroup);
        cmd.args(self.releases.iter().flat_map(|r| ["--release".to_string(), r.to_arg()]));
        if let Some(d) = &self.device {
            cmd.arg("--device").arg(d);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            // stderr is the daemon's (its log), inherited, never a pipe to this process: the
            // supervisor outlives the daemon, and a write to a pipe nobody reads any more would
            // fail (and `eprintln!` panic) just when it must go on guarding.
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
            // A supervisor that cannot start (its device unusable) says why and exits.
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(50)); // its last words reach the log
                let device = self.device.as_ref().map_or(String::new(), |d| format!(" (watchdog_device {})", d.display()));
                return Err(format!("the watchdog supervisor exited at start ({status}){device}: see the log line before this one"));
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
    fn a_hardware_watchdog_is_petted_only_while_the_lease_outlasts_its_timeout() {
        let now = Instant::now();
        let t = Duration::from_secs(1);
        assert!(should_pet(now, None, t), "nothing armed: nothing may start, keep the machine up");
        assert!(should_pet(now, Some(now + Duration::from_secs(4)), t));
        // The last pet leaves the reset before the lease's end.
        assert!(!should_pet(now, Some(now + t), t));
        assert!(!should_pet(now, Some(now + t + PET_MARGIN - Duration::from_millis(1)), t));
        assert!(should_pet(now, Some(now + t + PET_MARGIN), t));
        // A lease already over is never petted.
        assert!(!should_pet(now + Duration::from_secs(5), Some(now), t));
    }

    #[test]
    fn a_device_that_is_not_a_watchdog_is_refused_with_its_reason() {
        let e = Device::open(Path::new("/dev/null")).err().expect("/dev/null is no watchdog");
        assert!(e.contains("/dev/null is not a watchdog device"), "{e}");
        let e = Device::open(Path::new("/nonexistent/watchdog")).err().unwrap();
        assert!(e.contains("cannot open /nonexistent/watchdog"), "{e}");
    }

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
