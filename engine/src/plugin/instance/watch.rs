//! `host.watch` (warden:agent@0.2.0): an agent names the processes that make up its running
//! resource; the host opens a pidfd for each now (so a pid reused later can never be mistaken
//! for the watched process) and hands them to the engine after the call succeeds.

use std::os::fd::OwnedFd;

use super::{host, types, HostState};

/// Most targets one `watch` call may name.
pub const MAX_TARGETS: usize = 64;
/// Most processes `own-processes` expands to (a resource with more names them otherwise).
const MAX_OWN_PROCESSES: usize = 256;
/// Bytes of a pid file read.
const PID_FILE_CAP: u64 = 4096;

/// Processes to watch, each with its pidfd (readable once the process has exited).
#[derive(Debug, Default)]
pub struct WatchSet {
    pub processes: Vec<(u32, OwnedFd)>,
}

impl WatchSet {
    /// The pids, sorted: two sets with the same pids watch the same processes (the pidfds of
    /// the older set were opened first, so they cannot refer to a later reuse of a pid).
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|(p, _)| *p).collect()
    }
}

fn pidfd(pid: u32) -> std::io::Result<OwnedFd> {
    let raw = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw);
    let Some(pid) = raw else { return Err(std::io::Error::from_raw_os_error(libc::ESRCH)) };
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK).map_err(std::io::Error::from)
}

/// The first decimal number in a pid file (`1234\n`, ` 1234 `, `1234 other`).
pub(crate) fn parse_pid(text: &str) -> Option<u32> {
    let t = text.trim_start();
    let digits: &str = &t[..t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len())];
    digits.parse::<u32>().ok().filter(|p| *p > 0)
}

impl HostState {
    pub(super) async fn watch_call(&mut self, targets: Vec<host::WatchTarget>) -> Result<(), types::AgentError> {
        self.stats.host_calls += 1;
        if targets.len() > MAX_TARGETS {
            return Err(types::AgentError::InvalidConfig(format!(
                "watch: {} targets named; at most {MAX_TARGETS} (name the resource's own processes instead)",
                targets.len()
            )));
        }
        let mut named: Vec<u32> = Vec::new();
        let mut own = false;
        for t in targets {
            match t {
                host::WatchTarget::Pid(p) => named.push(p),
                host::WatchTarget::PidFile(path) => {
                    let shown = path.clone();
                    // Read like `read-file`: beneath the granted root, a regular file only, on
                    // the resource's bounded pool under the call's deadline.
                    let text = self
                        .fs_call("watch", path, |found, path| match found {
                            None => Err(format!("watch: pid file {path}: No such file or directory (os error 2)")),
                            Some((dir, name)) => super::super::fs::read_regular(dir, name, PID_FILE_CAP)
                                .map(|b| String::from_utf8_lossy(&b).into_owned())
                                .map_err(|e| format!("watch: read pid file {path}: {e}")),
                        })
                        .await?;
                    let pid = parse_pid(&text).ok_or_else(|| types::AgentError::Failed(format!("watch: {shown} holds no pid")))?;
                    named.push(pid);
                }
                host::WatchTarget::OwnProcesses => own = true,
            }
        }
        let mut set = WatchSet::default();
        named.sort_unstable();
        named.dedup();
        // Where the resource has its own cgroup, an agent may only name its own processes: a
        // watch writes the process's name into the event history, and an agent must not learn
        // (or record) what else runs on the node.
        if let (Some(cg), false) = (self.cgroup.clone(), named.is_empty()) {
            let own: Vec<u32> = std::fs::read_to_string(cg.join("cgroup.procs"))
                .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
                .unwrap_or_default();
            if let Some(stranger) = named.iter().find(|p| !own.contains(p)) {
                self.stats.denials += 1;
                return Err(types::AgentError::AccessDenied(format!(
                    "watch: pid {stranger} is not one of this resource's processes (not in its cgroup)"
                )));
            }
        }
        for pid in named {
            match pidfd(pid) {
                Ok(fd) => set.processes.push((pid, fd)),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    return Err(types::AgentError::Failed(format!("watch: no process with pid {pid}")))
                }
                Err(e) => {
                    self.stats.host_faults += 1;
                    return Err(types::AgentError::Failed(format!("watch: cannot watch pid {pid}: {e}")));
                }
            }
        }
        if own {
            let Some(cg) = self.cgroup.clone() else {
                return Err(types::AgentError::Failed(
                    "watch: own-processes needs the resource's cgroup, and it runs without one here (name a pid or a pid file instead)"
                        .into(),
                ));
            };
            // cgroup.procs is generated by the kernel from memory: read inline, it cannot hang.
            let procs = std::fs::read_to_string(cg.join("cgroup.procs")).map_err(|e| {
                self.stats.host_faults += 1;
                types::AgentError::Failed(format!("watch: cannot list the resource's processes: {e}"))
            })?;
            let mut pids: Vec<u32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
            pids.sort_unstable();
            pids.dedup();
            for pid in pids.into_iter().take(MAX_OWN_PROCESSES) {
                if set.processes.iter().any(|(p, _)| *p == pid) {
                    continue;
                }
                // A process that exited between the listing and now is simply not watched.
                if let Ok(fd) = pidfd(pid) {
                    set.processes.push((pid, fd));
                }
            }
            set.processes.sort_by_key(|(p, _)| *p);
        }
        self.watch = Some(set);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_pid;

    #[test]
    fn pid_files_hold_the_first_decimal_number() {
        assert_eq!(parse_pid("1234\n"), Some(1234));
        assert_eq!(parse_pid("  42 extra"), Some(42));
        assert_eq!(parse_pid(""), None);
        assert_eq!(parse_pid("0\n"), None);
        assert_eq!(parse_pid("abc 12"), None);
        assert_eq!(parse_pid("99999999999999"), None);
    }
}
