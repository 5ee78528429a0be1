//! Real processes: which of a logical host's daemons are alive (a zombie is dead), signalling
//! them, and starting them detached under their JP1 process names.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::lhost::{write_atomic, Lhost, Phase, Product, Role, Spec};

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `Z`, …), `None` when there is no such pid.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next().and_then(|r| r.trim().chars().next())
}

/// The first argument of a process's command line.
pub fn argv0(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first = cmdline.split(|b| *b == 0).next()?;
    Some(String::from_utf8_lossy(first).into_owned())
}

/// `pid` is alive (not a zombie) and runs `exe` (the per-logical-host link named after the
/// process), so a reused pid or another logical host's daemon never counts.
pub fn alive_as(pid: u32, exe: &Path) -> bool {
    let live = matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X');
    live && argv0(pid).is_some_and(|a| Path::new(&a) == exe)
}

/// Every live process whose `argv[0]` lies under `dir`.
pub fn scan_under(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Some(a) = argv0(pid) {
            if Path::new(&a).starts_with(dir) && matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X') {
                out.push(pid);
            }
        }
    }
    out
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) only sends a signal; callers pass pids checked to be our daemons.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// One process of a snapshot.
#[derive(Debug, Clone)]
pub struct Seen {
    pub spec: Spec,
    pub pid: Option<u32>,
}

/// The processes of one product on one logical host, as they are now.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub procs: Vec<Seen>,
    pub phase: Phase,
}

impl Snapshot {
    pub fn take(l: &Lhost, p: Product) -> Self {
        let procs = l
            .specs(p)
            .into_iter()
            .map(|spec| {
                let exe = l.exe_dir(p).join(&spec.name);
                let pid = std::fs::read_to_string(l.pid_dir(p).join(&spec.name))
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .filter(|pid| alive_as(*pid, &exe));
                Seen { spec, pid }
            })
            .collect();
        Snapshot { procs, phase: l.phase(p) }
    }

    pub fn with_roles<'a>(&'a self, roles: &'a [Role]) -> impl Iterator<Item = &'a Seen> + 'a {
        self.procs.iter().filter(move |s| roles.contains(&s.spec.role))
    }

    pub fn spmd(&self) -> Option<&Seen> {
        self.procs.iter().find(|s| s.spec.role == Role::Spmd)
    }

    pub fn any_alive(&self) -> bool {
        self.procs.iter().any(|s| s.pid.is_some())
    }

    pub fn all_alive(&self) -> bool {
        !self.procs.is_empty() && self.procs.iter().all(|s| s.pid.is_some())
    }
}

/// Make `<state>/exe/<name>` a link to this binary, so a daemon started through it shows `name`
/// in `/proc/<pid>/comm` (cut to 15 characters by the kernel) and `ps`.
pub fn ensure_exe(l: &Lhost, p: Product, name: &str) -> std::io::Result<PathBuf> {
    let dir = l.exe_dir(p);
    std::fs::create_dir_all(&dir)?;
    let link = dir.join(name);
    let me = std::fs::read_link("/proc/self/exe")?;
    if std::fs::read_link(&link).ok().as_deref() == Some(me.as_path()) {
        return Ok(link);
    }
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&me, &tmp)?;
    std::fs::rename(&tmp, &link)?;
    Ok(link)
}

/// Start the process manager of `p` detached: a new session, stdio on /dev/null, not waited for.
pub fn spawn_spmd(l: &Lhost, p: Product, name: &str) -> std::io::Result<u32> {
    let exe = ensure_exe(l, p, name)?;
    let mut cmd = Command::new(&exe);
    cmd.arg("daemon").arg(p.key()).arg(&l.prefix).arg(&l.name).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from the caller's session and
    // process group, so the start command can return and a group kill of it spares the daemon.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    Ok(cmd.spawn()?.id())
}

/// Start one child daemon of the process manager; it dies with its parent (PR_SET_PDEATHSIG).
pub fn spawn_child(l: &Lhost, p: Product, name: &str) -> std::io::Result<u32> {
    let exe = ensure_exe(l, p, name)?;
    let parent = std::process::id();
    let mut cmd = Command::new(&exe);
    cmd.arg("child").arg(parent.to_string()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe; the death signal survives exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            Ok(())
        });
    }
    Ok(cmd.spawn()?.id())
}

pub fn write_pid(l: &Lhost, p: Product, name: &str, pid: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(l.pid_dir(p))?;
    write_atomic(&l.pid_dir(p).join(name), &pid.to_string())
}

/// Poll `f` every 50 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
