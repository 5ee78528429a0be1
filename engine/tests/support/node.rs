//! A real `warden node run` process on a temporary config, for the node-tier tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long node-tier tests wait for an outcome before failing (they poll, never sleep to sync).
pub const LONG: Duration = Duration::from_secs(60);

/// Three pid-file resources a ← b ← c in one group `app`.
pub fn chain3(dir: &std::path::Path, max_restarts: u32) -> String {
    format!(
        "{}{}{}\n[[groups]]\nname = \"app\"\nresources = [\"a\", \"b\", \"c\"]\nmax_restarts = {max_restarts}\n",
        pid_resource(dir, "a", "300ms"),
        pid_resource(dir, "b", "300ms"),
        pid_resource(dir, "c", "300ms")
    )
}

pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    child: Option<Child>,
}

pub fn warden_bin() -> &'static str {
    env!("CARGO_BIN_EXE_warden")
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A resource of the example Rust (pid-file) agent started by `program`, as TOML, with `extra`
/// TOML lines for the resource.
pub fn pid_file_resource(dir: &Path, name: &str, program: &Path, extra: &str) -> String {
    let pid = dir.join(format!("{name}.pid"));
    format!(
        r#"
[[resources]]
name = "{name}"
plugin = "example-rust"
params = {{ pidfile = "{pid}", start = "{program}", start_args = "{pid}", stop_grace_ms = "1000" }}
grants = {{ exec = [{{ program = "{program}" }}, {{ program = "/bin/kill", args = ["-*", "*"] }}], read = ["{pid}", "/proc/*/stat"] }}
{extra}
"#,
        pid = pid.display(),
        program = program.display()
    )
}

/// The `[[plugins]]` entry of the generic agent (built by `cargo xtask plugins`), as TOML.
pub fn generic_plugin() -> String {
    format!("[[plugins]]\nname = \"generic\"\npath = \"{}\"\n", root().join("target/plugins/generic.wasm").display())
}

/// One pid-file resource for the example Rust agent (the demo daemon), as TOML.
pub fn pid_resource(dir: &Path, name: &str, interval: &str) -> String {
    pid_file_resource(dir, name, &root().join("examples/agents/demo-daemon.sh"), &format!("monitor_interval = \"{interval}\""))
}

/// A pid-file resource `name` whose start program is a shell script with `body` (it gets the pid
/// file as `$1`), plus `extra` TOML lines for the resource. The script is written under `dir`.
pub fn script_resource(dir: &Path, name: &str, body: &str, extra: &str) -> String {
    let script = dir.join(format!("{name}-start.sh"));
    std::fs::write(&script, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    pid_file_resource(dir, name, &script, extra)
}

/// A script body that marks when it began (`<dir>/start-began`), waits `secs`, then starts a
/// detached `sleep <marker>` and writes its pid: a slow start with a countable service.
pub fn slow_start(dir: &Path, secs: u32, marker: &str) -> String {
    format!(
        "touch {began}\nsleep {secs}\nsetsid sleep {marker} </dev/null >/dev/null 2>&1 &\necho $! > \"$1\"\n",
        began = dir.join("start-began").display()
    )
}

impl TestNode {
    /// Write a config: one node `n1`, the example plugin, the given resources and groups.
    pub fn new(body: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let plugin = root().join("target/plugins/example-rust.wasm");
        assert!(plugin.exists(), "{} missing: run `cargo xtask plugins`", plugin.display());
        let text = format!(
            "version = 1\n[cluster]\nname = \"t\"\n\n[[nodes]]\nname = \"n1\"\n\n[[plugins]]\nname = \"example-rust\"\npath = \"{}\"\n{}",
            plugin.display(),
            body(dir.path())
        );
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, text).unwrap();
        let socket = dir.path().join("w.sock");
        let state = dir.path().join("state");
        Self { dir, config, socket, state, child: None }
    }

    pub fn start(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("node.log")).unwrap();
        let child = self.node_run(extra).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.child = Some(child);
        assert!(self.wait(Duration::from_secs(60), |n| n.status().is_some()), "node did not come up:\n{}", self.log());
    }

    /// `warden node run` for node `n1` on this config, state directory and socket.
    fn node_run(&self, extra: &[&str]) -> Command {
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
        let mut cmd = Command::new(warden_bin());
        cmd.args(["--log", "info", "--cache-dir"])
            .arg(cache)
            .args(["node", "run", "--node", "n1", "--config"])
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .args(extra);
        cmd
    }

    /// Run the node in the foreground (for configs it must refuse).
    pub fn run_refused(&self, extra: &[&str]) -> std::process::Output {
        self.node_run(extra).output().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&mut self, sig: &str) {
        Command::new("/bin/kill").args([sig, &self.pid().to_string()]).status().unwrap();
    }

    /// Wait for the daemon to exit; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(warden_bin()).args(args).env("WARDEN_SOCKET", &self.socket).output().unwrap()
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let o = self.cli(&["status", "--json"]);
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    pub fn group_state(&self, g: &str) -> String {
        self.status()
            .and_then(|s| s["groups"].as_array().unwrap().iter().find(|x| x["name"] == g).map(|x| x["state"].as_str().unwrap().to_string()))
            .unwrap_or_default()
    }

    pub fn resource(&self, r: &str) -> serde_json::Value {
        self.status().and_then(|s| s["resources"].as_array().unwrap().iter().find(|x| x["name"] == r).cloned()).unwrap_or_default()
    }

    /// Events from the persisted history (works while the node is down too).
    pub fn events(&self) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&std::fs::read(self.state.join("events.jsonl")).unwrap_or_default())
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// (subject, action, result) of action events, in order.
    pub fn actions(&self) -> Vec<(String, String, String)> {
        self.events()
            .into_iter()
            .filter(|e| e["kind"] == "action")
            .map(|e| {
                (
                    e["subject"].as_str().unwrap().to_string(),
                    e["action"].as_str().unwrap().to_string(),
                    e["result"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    pub fn wait(&self, limit: Duration, mut f: impl FnMut(&Self) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if f(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        f(self)
    }

    /// `GET /metrics` from the address the node reports it bound (`metrics_addr`).
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let addr = self.status().unwrap()["metrics_addr"].as_str().expect("metrics_addr configured").to_string();
        let mut s = std::net::TcpStream::connect(addr.as_str()).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }

    pub fn daemon_pid(&self, resource: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join(format!("{resource}.pid"))).ok()?.trim().parse().ok()
    }

    /// The service process of `resource` is alive (a zombie is dead).
    pub fn alive(&self, resource: &str) -> bool {
        let Some(pid) = self.daemon_pid(resource) else { return false };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        matches!(stat.rsplit(')').next().and_then(|r| r.trim().chars().next()), Some(c) if c != 'Z' && c != 'X')
    }

    pub fn kill_service(&self, resource: &str) {
        let pid = self.daemon_pid(resource).expect("pid file");
        Command::new("/bin/kill").args(["-9", &pid.to_string()]).status().unwrap();
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Kill the services this test started, by their pid files.
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "pid") {
                    if let Ok(pid) = std::fs::read_to_string(e.path()) {
                        let _ = Command::new("/bin/kill").args(["-9", pid.trim()]).status();
                    }
                }
            }
        }
    }
}
