//! One cgroup (v2) per resource: every process an agent's `exec` starts for that resource, and
//! everything those processes start (daemons that `setsid` and double-fork included), lives in
//! it. That lets the node kill a resource's processes as a whole (at a start timeout, after a
//! stop) and, after its own crash, kill what an interrupted action left running before it probes.
//!
//! Layout: `<cgroup2 mount>/warden/<cluster>-<hash of the state directory>/<resource>`. The hash
//! keeps two daemons with different state directories (tests, two clusters on one host) apart,
//! and a restarted daemon (same state directory) finds its resources' cgroups again.
//!
//! Where there is no writable cgroup2 hierarchy the node says so at start and falls back to
//! process groups (a child that leaves its process group then escapes the kill).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where cgroup2 is mounted: pure v2 (`/sys/fs/cgroup`) or hybrid (`/sys/fs/cgroup/unified`).
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, path, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(path))
        })
        .collect();
    // Prefer the canonical locations when several are mounted.
    found.sort_by_key(|p| match p.to_str() {
        Some("/sys/fs/cgroup") => 0,
        Some("/sys/fs/cgroup/unified") => 1,
        _ => 2,
    });
    found.into_iter().next()
}

/// The node's cgroup tree, if the host has a usable one.
#[derive(Debug, Clone)]
pub struct Cgroups {
    base: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 hierarchy is mounted")]
    NotMounted,
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
}

impl Cgroups {
    /// Find (and create) this node's cgroup tree.
    pub fn detect(cluster: &str, state_dir: &Path) -> Result<Self, CgroupError> {
        let mount = cgroup2_mount().ok_or(CgroupError::NotMounted)?;
        let canonical = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        let hash = blake3::hash(canonical.as_os_str().as_encoded_bytes()).to_hex();
        let safe: String = cluster.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        let base = mount.join("warden").join(format!("{safe}-{}", &hash[..12]));
        std::fs::create_dir_all(&base).map_err(|source| CgroupError::Create { path: base.clone(), source })?;
        // Check that processes can actually be put there (a read-only or delegated-away tree).
        let probe = base.join("cgroup.procs");
        if !probe.exists() {
            return Err(CgroupError::Create { path: probe, source: std::io::Error::other("not a cgroup2 directory") });
        }
        Ok(Self { base })
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Check that a process can really be put into the tree (delegation or permissions can allow
    /// creating cgroups but not joining them): run `/bin/true` in a probe cgroup the way agents'
    /// programs are run.
    pub async fn check_joinable(&self) -> Result<(), String> {
        let probe = self.resource(".join-probe").map_err(|e| e.to_string())?;
        let req = crate::plugin::exec::ExecRequest {
            program: "/bin/true".into(),
            arg0: None,
            args: vec![],
            env: vec![],
            stdin: None,
            cwd: None,
            timeout: Duration::from_secs(10),
            cgroup: Some(std::sync::Arc::from(probe.path())),
        };
        let r = crate::plugin::exec::run(req).await.map_err(|e| e.to_string());
        let _ = std::fs::remove_dir(probe.path());
        match r? {
            r if r.exit_code == Some(0) => Ok(()),
            r => Err(format!("a probe process ended with {:?}", r.exit_code)),
        }
    }

    /// The resource's cgroup, created if missing.
    pub fn resource(&self, resource: &str) -> Result<ResourceCgroup, CgroupError> {
        // Resource names are validated identifiers in the config; never let one climb out.
        let name: String = resource.chars().map(|c| if c == '/' { '_' } else { c }).collect();
        let name = if name.chars().all(|c| c == '.') { format!("_{name}") } else { name };
        let path = self.base.join(name);
        std::fs::create_dir_all(&path).map_err(|source| CgroupError::Create { path: path.clone(), source })?;
        Ok(ResourceCgroup { path })
    }
}

/// One resource's cgroup.
#[derive(Debug, Clone)]
pub struct ResourceCgroup {
    path: PathBuf,
}

impl ResourceCgroup {
    /// The cgroup at `path` (the watchdog supervisor walks the node's tree).
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Kill every process in the cgroup now, without waiting for them to go. Returns how many
    /// there were.
    pub fn kill_now(&self) -> usize {
        let before = self.pids();
        if before.is_empty() {
            return 0;
        }
        if std::fs::write(self.path.join("cgroup.kill"), b"1").is_err() {
            // Kernels before 5.14 have no cgroup.kill: freeze the cgroup (frozen processes
            // cannot fork or exit, so no pid is reused between the read and the signal), signal
            // every member, thaw so the signals are delivered.
            let freeze = self.path.join("cgroup.freeze");
            let frozen = std::fs::write(&freeze, b"1").is_ok();
            for pid in self.pids() {
                kill9(pid);
            }
            if frozen {
                let _ = std::fs::write(&freeze, b"0");
            }
        }
        before.len()
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kill every process in the cgroup and wait (bounded) until it is empty. Returns how many
    /// processes were there.
    pub async fn kill_all(&self, wait: Duration) -> usize {
        let n = self.kill_now();
        if n == 0 {
            return 0;
        }
        let until = Instant::now() + wait;
        while !self.pids().is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        n
    }
}

#[allow(unsafe_code)] // kill(2) through libc
fn kill9(pid: i32) {
    if pid > 0 {
        // SAFETY: kill only sends a signal; the pid was read from the frozen cgroup, so it is
        // still that member's.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}
