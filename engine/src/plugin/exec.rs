//! Running a granted program for a guest: its own process group, a cleared environment, capped
//! output, and a deadline after which the whole group is killed.
//!
//! The group is also killed when the future is dropped (the action's deadline passed while the
//! guest waited here), so no child of a timed-out action outlives it.

#![allow(unsafe_code)] // killpg(2) through libc

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Cap on each of stdout and stderr kept for the guest.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// After the child exits, how long to keep reading output that a grandchild may still hold open
/// (a daemon started without closing its stdio): long enough for buffered output, short enough
/// that a start script's daemon never blocks the action.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// The program to run: the resolved path the grants were checked on.
    pub program: String,
    /// What the program sees as `argv[0]` (the path as the agent wrote it; multi-call binaries
    /// such as busybox choose their behaviour by it).
    pub arg0: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Option<String>,
    pub cwd: Option<String>,
    pub timeout: Duration,
    /// The resource's cgroup (v2) directory: the child joins it before it runs anything, so it
    /// and everything it starts can be killed as a whole (see `node::cgroup`).
    pub cgroup: Option<std::sync::Arc<std::path::Path>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: Captured,
    pub stderr: Captured,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    pub text: String,
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("`{0}` does not exist")]
    NotFound(String),
    #[error("cannot start `{program}`: {source}")]
    Spawn { program: String, source: std::io::Error },
}

/// Kills a process group when dropped, unless disarmed.
struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: killpg only sends a signal; the pgid is the group we created for our child,
            // and it cannot have been reused while our child (its leader) is not yet reaped.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Output read so far; shared so that what arrived is kept even if we stop waiting for EOF.
#[derive(Default)]
struct Sink {
    kept: Vec<u8>,
    truncated: bool,
}

type SharedSink = std::sync::Arc<std::sync::Mutex<Sink>>;

async fn read_capped(mut r: impl AsyncRead + Unpin, sink: SharedSink) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // Keep draining past the cap (discarding), so the child never blocks on a full pipe.
                let mut s = sink.lock().unwrap();
                let room = OUTPUT_CAP - s.kept.len();
                if n > room {
                    s.truncated = true;
                }
                s.kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Run the program. Its path (and `cwd`) must already have been resolved and checked on a pool
/// thread: nothing here may touch a filesystem that can hang, since this runs on an async worker
/// (the fork and exec themselves happen in the child).
pub async fn run(req: ExecRequest) -> Result<ExecResult, ExecError> {
    let mut cmd = tokio::process::Command::new(&req.program);
    if let Some(arg0) = &req.arg0 {
        cmd.arg0(arg0);
    }
    cmd.args(&req.args)
        .env_clear()
        .current_dir(req.cwd.as_deref().unwrap_or("/"))
        .stdin(if req.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if !req.env.iter().any(|(k, _)| k == "PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.envs(req.env.iter().map(|(k, v)| (k, v)));
    if let Some(cg) = &req.cgroup {
        use std::os::unix::ffi::OsStrExt;
        let procs = std::ffi::CString::new(cg.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(|e| ExecError::Spawn { program: req.program.clone(), source: std::io::Error::other(e) })?;
        // SAFETY: the closure runs in the forked child before exec and makes only
        // async-signal-safe calls (open, write, close) on memory prepared before the fork.
        // Writing "0" to cgroup.procs moves the writing process itself; a failure aborts the
        // spawn, so no child ever runs outside its resource's cgroup.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ExecError::NotFound(req.program.clone()),
        _ => ExecError::Spawn { program: req.program.clone(), source },
    })?;
    let mut guard = GroupGuard { pgid: child.id().map(|p| p as i32) };

    if let (Some(input), Some(mut stdin)) = (req.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
        });
    }
    let (out_sink, err_sink) = (SharedSink::default(), SharedSink::default());
    let stdout = tokio::spawn(read_capped(child.stdout.take().expect("piped"), out_sink.clone()));
    let stderr = tokio::spawn(read_capped(child.stderr.take().expect("piped"), err_sink.clone()));

    let (status, timed_out) = match super::stall::timeout(req.timeout, child.wait()).await {
        Ok(status) => (status.ok(), false),
        Err(_) => {
            guard.kill();
            (child.wait().await.ok(), true)
        }
    };
    // A normal exit leaves the group alone: a start script may leave daemons in it on purpose.
    if !timed_out {
        guard.pgid = None;
    }
    // A daemon that kept our stdout open would hold the pipe forever: wait briefly, then take
    // what arrived and stop reading.
    let _ = tokio::time::timeout(DRAIN_GRACE, async {
        let _ = stdout.await;
        let _ = stderr.await;
    })
    .await;
    let grab = |sink: &SharedSink| {
        let s = sink.lock().unwrap();
        Captured { text: String::from_utf8_lossy(&s.kept).into_owned(), truncated: s.truncated }
    };
    let (stdout, stderr) = (grab(&out_sink), grab(&err_sink));

    use std::os::unix::process::ExitStatusExt;
    Ok(ExecResult { exit_code: status.and_then(|s| s.code()), signal: status.and_then(|s| s.signal()), timed_out, stdout, stderr })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(program: &str, args: &[&str], timeout_ms: u64) -> ExecRequest {
        ExecRequest {
            program: program.into(),
            arg0: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            stdin: None,
            cwd: None,
            timeout: Duration::from_millis(timeout_ms),
            cgroup: None,
        }
    }

    /// A daemon that leaves its process group (`setsid`) and double-forks still lands in the
    /// resource's cgroup, and killing the cgroup kills it: the escape process groups leave open.
    #[tokio::test]
    async fn setsid_daemons_stay_in_the_resource_cgroup_and_die_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let cgroups = match crate::node::cgroup::Cgroups::detect("exec-test", dir.path()) {
            Ok(c) => c,
            // Only hosts without cgroup2 (the node then says so at start) skip this.
            Err(e) => return eprintln!("no cgroup2 here ({e}); the node falls back to process groups"),
        };
        let cg = cgroups.resource("escapee").unwrap();
        let pidfile = dir.path().join("pid");
        let mut q = req(
            "/bin/sh",
            &["-c", &format!("setsid sh -c 'echo $$ > {}; exec sleep 300' </dev/null >/dev/null 2>&1 &", pidfile.display())],
            10_000,
        );
        q.cgroup = Some(std::sync::Arc::from(cg.path()));
        let r = run(q).await.unwrap();
        assert_eq!(r.exit_code, Some(0));
        let mut pid = 0;
        for _ in 0..200 {
            if let Some(p) = std::fs::read_to_string(&pidfile).ok().and_then(|t| t.trim().parse::<i32>().ok()) {
                pid = p;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(pid > 0, "the daemon wrote its pid");
        assert!(cg.pids().contains(&pid), "the setsid daemon is in the resource's cgroup: {:?}", cg.pids());
        assert_eq!(cg.kill_all(Duration::from_secs(5)).await, 1);
        assert!(cg.pids().is_empty());
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z "), "the daemon is dead (or a zombie awaiting reaping): {stat}");
        let _ = std::fs::remove_dir(cg.path());
        let _ = std::fs::remove_dir(cgroups.base());
    }

    #[tokio::test]
    async fn captures_exit_code_and_output() {
        let r = run(req("/bin/sh", &["-c", "echo out; echo err >&2; exit 4"], 10_000)).await.unwrap();
        assert_eq!(r.exit_code, Some(4));
        assert_eq!(r.stdout.text, "out\n");
        assert_eq!(r.stderr.text, "err\n");
        assert!(!r.timed_out);
    }

    #[tokio::test]
    async fn environment_is_cleared_except_path_and_given_vars() {
        let mut q = req("/usr/bin/env", &[], 10_000);
        q.env = vec![("JP1_HOSTNAME".into(), "lh1".into())];
        let r = run(q).await.unwrap();
        let mut lines: Vec<&str> = r.stdout.text.lines().collect();
        lines.sort();
        assert_eq!(lines, vec!["JP1_HOSTNAME=lh1", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    }

    #[tokio::test]
    async fn stdin_is_delivered() {
        let mut q = req("/bin/cat", &[], 10_000);
        q.stdin = Some("action=off\nport=node2\n".into());
        assert_eq!(run(q).await.unwrap().stdout.text, "action=off\nport=node2\n");
    }

    #[tokio::test]
    async fn missing_program_is_not_found() {
        assert!(matches!(run(req("/nonexistent/prog", &[], 1000)).await, Err(ExecError::NotFound(_))));
    }

    #[tokio::test]
    async fn output_is_capped_and_flagged() {
        let r = run(req("/bin/sh", &["-c", "head -c 3000000 /dev/zero"], 30_000)).await.unwrap();
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.stdout.text.len(), OUTPUT_CAP);
        assert!(r.stdout.truncated);
    }

    #[tokio::test]
    async fn daemon_holding_stdout_does_not_block() {
        // The background sleep inherits stdout; we must return once the shell exits.
        let r = run(req("/bin/sh", &["-c", "sleep 3 & echo started"], 10_000)).await.unwrap();
        assert_eq!(r.exit_code, Some(0));
        assert!(!r.timed_out);
        assert_eq!(r.stdout.text, "started\n");
    }
}
