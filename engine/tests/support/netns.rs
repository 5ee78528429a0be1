//! Network namespaces for the plugin tests (you are root): unique names, a guard that removes
//! them (after killing, by pid, the processes the test left in them) even when the test fails.
#![allow(dead_code, unsafe_code)] // setns(2) through libc

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test (or test process) uses: `<tag><pid>x<counter>`.
pub fn unique(tag: &str) -> String {
    format!("{tag}{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// Run a command; panic with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command and report only whether it succeeded.
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().is_ok_and(|o| o.status.success())
}

/// Network namespaces created by a test; dropped → processes in them killed, namespaces deleted.
pub struct Namespaces {
    pub names: Vec<String>,
}

impl Namespaces {
    pub fn new() -> Self {
        Self { names: Vec::new() }
    }

    /// Create a namespace with loopback up; returns its name.
    pub fn add(&mut self, tag: &str) -> String {
        let name = unique(tag);
        run("/usr/sbin/ip", &["netns", "add", &name]);
        self.names.push(name.clone());
        run("/usr/sbin/ip", &["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Live (non-zombie) processes in namespace `name`.
    pub fn pids(name: &str) -> Vec<u32> {
        let out = Command::new("/usr/sbin/ip").args(["netns", "pids", name]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).filter(|p| is_alive(*p)).collect()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            // Only processes in our own, uniquely named namespaces: the ones this test started.
            for pid in Self::pids(name) {
                let _ = Command::new("/bin/kill").args(["-KILL", &pid.to_string()]).output();
            }
            let _ = Command::new("/usr/sbin/ip").args(["netns", "del", name]).output();
        }
    }
}

/// A process is alive when /proc/<pid>/stat exists and its state is not Z (zombie) or X.
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rsplit(')').next().and_then(|r| r.trim().chars().next()).is_some_and(|s| s != 'Z' && s != 'X')
}

/// Does `addr` answer from inside namespace `ns`? A TCP connection attempt to a closed port:
/// a reset (connection refused) or an accept means the address is up and reachable; a timeout or
/// "unreachable" means it is not. Needs no ping binary.
pub fn answers_from(ns: &str, addr: Ipv4Addr) -> bool {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns only switches this short-lived thread's network namespace.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        match TcpStream::connect_timeout(&SocketAddr::from((addr, 9)), Duration::from_secs(2)) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        }
    })
    .join()
    .unwrap()
}

/// Two namespaces `a` and `b` joined by a veth pair `va` (in a) – `vb` (in b), both up.
pub struct VethPair {
    pub a: String,
    pub b: String,
    pub guard: Namespaces,
}

impl VethPair {
    pub fn new(tag: &str) -> Self {
        let mut guard = Namespaces::new();
        let a = guard.add(&format!("{tag}a"));
        let b = guard.add(&format!("{tag}b"));
        run("/usr/sbin/ip", &["-n", &a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b]);
        run("/usr/sbin/ip", &["-n", &a, "link", "set", "va", "up"]);
        run("/usr/sbin/ip", &["-n", &b, "link", "set", "vb", "up"]);
        Self { a, b, guard }
    }

    /// `ip -o addr show dev va` in a.
    pub fn addresses_a(&self) -> String {
        run("/usr/sbin/ip", &["-n", &self.a, "-o", "addr", "show", "dev", "va"])
    }

    pub fn mac_a(&self) -> String {
        let out = run("/usr/sbin/ip", &["-n", &self.a, "-o", "link", "show", "dev", "va"]);
        out.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).expect("a MAC address").to_string()
    }
}
