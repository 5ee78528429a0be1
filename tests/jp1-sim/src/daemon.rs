//! The daemons: a process manager per product and logical host (`jbs_spmd`, `jajs_spmd`) and
//! its children, which do nothing but exist under their JP1 names.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::lhost::{Lhost, Phase, Product, Role};
use crate::procs;

/// Default time from the start of the process manager until the service is up.
pub fn default_startup(p: Product) -> Duration {
    match p {
        Product::Base => Duration::from_millis(300),
        Product::Ajs => Duration::from_millis(1000),
    }
}

/// `<exe>/jbs_spmd daemon <base|ajs> <prefix> <lhost>`
pub fn spmd(args: &[String]) -> i32 {
    let (Some(p), Some(prefix), Some(name)) = (args.first().and_then(|s| Product::parse(s)), args.get(1), args.get(2)) else {
        eprintln!("usage: daemon base|ajs PREFIX LHOST");
        return 1;
    };
    let l = match Lhost::lookup(Path::new(prefix), name) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let specs = l.specs(p);
    let Some(me) = specs.first().cloned() else {
        return 1;
    };
    if procs::write_pid(&l, p, &me.name, std::process::id()).is_err() {
        return 1;
    }
    l.log(p, &format!("{} started", me.name));

    // Startup takes a while; a stop or killall during it ends it.
    let delay = l.fault_secs(&format!("{}.slow-start", p.key())).unwrap_or_else(|| default_startup(p));
    let started = Instant::now();
    while started.elapsed() < delay {
        if l.phase(p) != Phase::Starting {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(50).min(delay - started.elapsed()));
    }
    if l.fault(&format!("{}.start-fail", p.key())).as_deref() == Some("silent") {
        l.set_abnormal(p, &format!("{} startup failed (jp1-sim fault {}.start-fail=silent)", p.display(), p.key()));
        l.log(p, "startup failed (fault)");
        return 1;
    }

    let mut children: HashMap<u32, (String, Role)> = HashMap::new();
    for s in specs.iter().skip(1) {
        match procs::spawn_child(&l, p, &s.name) {
            Ok(pid) => {
                let _ = procs::write_pid(&l, p, &s.name, pid);
                children.insert(pid, (s.name.clone(), s.role));
            }
            Err(e) => {
                l.set_abnormal(p, &format!("{}: cannot start {}: {e}", p.display(), s.name));
                for pid in children.keys() {
                    procs::signal(*pid, libc::SIGTERM);
                }
                return 1;
            }
        }
    }
    if l.phase(p) == Phase::Starting {
        l.set_phase(p, Phase::Running);
    }
    l.log(p, "running");

    loop {
        std::thread::sleep(Duration::from_millis(100));
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid with WNOHANG on our own children; `status` is a valid out pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            let Some((child, role)) = children.remove(&(pid as u32)) else {
                continue;
            };
            let how = if libc::WIFSIGNALED(status) {
                format!("signal {}", libc::WTERMSIG(status))
            } else {
                format!("exit {}", libc::WEXITSTATUS(status))
            };
            let phase = l.phase(p);
            if !phase.expects_processes() {
                continue;
            }
            l.log(p, &format!("{child} (pid {pid}) ended abnormally ({how})"));
            if p == Product::Ajs && role == Role::Listed {
                // JP1/AJS3 on a logical host has no degraded mode: the whole service stops.
                l.set_abnormal(p, &format!("{child} (pid {pid}) ended abnormally ({how}); JP1/AJS3 stopped all its processes"));
                for other in children.keys() {
                    procs::signal(*other, libc::SIGTERM);
                }
                let _ = procs::wait_for(Duration::from_secs(5), || {
                    // SAFETY: as above.
                    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
                    children.keys().all(|c| procs::proc_state(*c).is_none_or(|s| s == 'Z' || s == 'X'))
                });
                return 1;
            }
            if p == Product::Base {
                l.set_abnormal(p, &format!("{child} (pid {pid}) ended abnormally ({how})"));
            }
        }
        if children.is_empty() && !l.phase(p).expects_processes() {
            return 0;
        }
    }
}

/// `<exe>/<name> child <parent-pid>`: exist until killed or the parent is gone.
pub fn child(args: &[String]) -> i32 {
    let parent: u32 = args.first().and_then(|s| s.parse().ok()).unwrap_or(0);
    loop {
        // The death signal covers a parent that dies later; this covers one already gone.
        if std::os::unix::process::parent_id() != parent {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
