//! Helpers for the JP1 agent tests: the JP1 simulator (`tests/jp1-sim`), a simulated node (an
//! install prefix in a temporary directory) with logical hosts, their grants, and a guard that
//! kills every simulated JP1 process of the node when the test ends, even on failure.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use warden::plugin::CallContext;

/// The simulator binary, `<workspace>/target/debug/jp1-sim`, built by `cargo build -p jp1-sim`
/// when it is missing or older than its sources (engine tests cannot use another package's
/// `CARGO_BIN_EXE_*`).
pub fn sim() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.as_ref() {
        return p.clone();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug/jp1-sim");
    if stale(&bin, &root.join("tests/jp1-sim")) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo).current_dir(&root).args(["build", "-p", "jp1-sim"]).status().expect("run cargo build -p jp1-sim");
        assert!(status.success(), "cargo build -p jp1-sim failed");
    }
    assert!(bin.exists(), "{} is missing after `cargo build -p jp1-sim`", bin.display());
    *built = Some(bin.clone());
    bin
}

/// The binary is missing or older than a file of the simulator's crate.
fn stale(bin: &Path, src: &Path) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return true;
    };
    fn newest(dir: &Path) -> Option<std::time::SystemTime> {
        let mut best = None;
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            let t = if p.is_dir() { newest(&p) } else { e.metadata().ok().and_then(|m| m.modified().ok()) };
            best = best.max(t);
        }
        best
    }
    newest(&src.join("src")).into_iter().chain(std::fs::metadata(src.join("Cargo.toml")).and_then(|m| m.modified()).ok()).any(|t| t > built)
}

/// Run the simulator (or one of its installed commands); panics when it cannot be started.
pub fn run(program: &Path, args: &[&str]) -> (i32, String) {
    let o =
        Command::new(program).args(args).env_remove("JP1_HOSTNAME").output().unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.code().unwrap_or(-1), text)
}

/// A simulated node: JP1 installed under `<tmp>/prefix`, logical hosts with their shared
/// directories under `<tmp>/shared-<lhost>`. Dropping it kills every process started from it.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub prefix: PathBuf,
}

impl Node {
    /// `ajs`: `manager`, `agent`, `both` or `none` (what `jp1-sim install --ajs` takes).
    pub fn install(ajs: &str) -> Node {
        let dir = tempfile::Builder::new().prefix("jp1-t20-").tempdir().unwrap();
        let prefix = dir.path().join("prefix");
        let (code, out) = run(&sim(), &["install", prefix.to_str().unwrap(), "--ajs", ajs]);
        assert_eq!(code, 0, "jp1-sim install: {out}");
        Node { dir, prefix }
    }

    /// Register logical host `name` (`ajs`: `manager`, `agent` or `none`).
    pub fn lhost(&self, name: &str, ajs: &str) -> Lhost {
        let shared = self.dir.path().join(format!("shared-{name}"));
        let (code, out) = run(&sim(), &["setup-lhost", self.prefix.to_str().unwrap(), name, shared.to_str().unwrap(), "--ajs", ajs]);
        assert_eq!(code, 0, "jp1-sim setup-lhost: {out}");
        Lhost { name: name.into(), prefix: self.prefix.clone(), shared }
    }

    /// Live (non-zombie) simulated JP1 processes started from this node.
    pub fn live(&self) -> Vec<u32> {
        processes_under(self.dir.path())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Kill by pid only the daemons of this node (their argv[0] lies under our directory).
        for _ in 0..3 {
            let pids = processes_under(self.dir.path());
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = Command::new("/bin/kill").args(["-9", &pid.to_string()]).status();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Pids of live processes whose `argv[0]` lies under `dir`; a zombie (Z) counts as dead.
pub fn processes_under(dir: &Path) -> Vec<u32> {
    crate::support::live_pids(|c| Path::new(&*String::from_utf8_lossy(c.split(|b| *b == 0).next().unwrap_or_default())).starts_with(dir))
}

/// A logical host of a [`Node`].
#[derive(Debug, Clone)]
pub struct Lhost {
    pub name: String,
    pub prefix: PathBuf,
    pub shared: PathBuf,
}

/// Which agent a resource uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Base,
    Manager,
    AjsAgent,
}

impl Kind {
    pub fn plugin(self) -> &'static str {
        match self {
            Kind::Base => "jp1-base",
            Kind::Manager => "jp1-ajs3-manager",
            Kind::AjsAgent => "jp1-ajs3-agent",
        }
    }
}

impl Lhost {
    pub fn p(&self, rel: &str) -> String {
        self.prefix.join(rel).display().to_string()
    }

    /// Run an installed JP1 command of the simulator, e.g. `("opt/jp1base/bin/jbs_spmd_status", ["-h", lh])`.
    pub fn cmd(&self, rel: &str, args: &[&str]) -> (i32, String) {
        run(&self.prefix.join(rel), args)
    }

    pub fn base_status(&self) -> i32 {
        self.cmd("opt/jp1base/bin/jbs_spmd_status", &["-h", &self.name]).0
    }

    pub fn ajs_status(&self) -> i32 {
        self.cmd("opt/jp1ajs2/bin/jajs_spmd_status", &["-h", &self.name]).0
    }

    /// Set fault switch `name` (see tests/jp1-sim/README.md) to `content`.
    pub fn fault(&self, name: &str, content: &str) {
        std::fs::write(self.shared.join("jp1sim/faults").join(name), content).unwrap();
    }

    pub fn clear_fault(&self, name: &str) {
        let _ = std::fs::remove_file(self.shared.join("jp1sim/faults").join(name));
    }

    pub fn has_fault(&self, name: &str) -> bool {
        self.shared.join("jp1sim/faults").join(name).exists()
    }

    /// The pid of daemon `proc` of `product` (`base` or `ajs`) when it is alive.
    pub fn pid(&self, product: &str, proc: &str) -> Option<u32> {
        let pid: u32 =
            std::fs::read_to_string(self.shared.join("jp1sim").join(product).join("pids").join(proc)).ok()?.trim().parse().ok()?;
        let exe = self.shared.join("jp1sim").join(product).join("exe").join(proc);
        processes_under(&exe).contains(&pid).then_some(pid)
    }

    /// Live processes of `product` (`base` or `ajs`) on this logical host.
    pub fn live(&self, product: &str) -> Vec<u32> {
        processes_under(&self.shared.join("jp1sim").join(product).join("exe"))
    }

    /// The `comm` of a process (what `ps` shows).
    pub fn comm(pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
    }

    /// Parameters for `agent`, plus `extra`.
    pub fn params(&self, agent: Kind, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v = vec![
            ("logical_host".to_string(), self.name.clone()),
            ("prefix".to_string(), self.prefix.display().to_string()),
            ("shared_dir".to_string(), self.shared.display().to_string()),
        ];
        if agent != Kind::Base {
            v.push(("base_resource".into(), format!("{}-base", self.name)));
        }
        for (k, val) in extra {
            v.retain(|(x, _)| x != k);
            v.push((k.to_string(), val.to_string()));
        }
        v
    }

    /// A call context for resource `<lhost>-<agent>` on node `node-a`, with the agent's defaults
    /// applied by the plugin's metadata.
    pub fn ctx(&self, plugin: &warden::plugin::Plugin, agent: Kind, extra: &[(&str, &str)]) -> CallContext {
        let given = self.params(agent, extra).into_iter().collect();
        let params = plugin.metadata.resolve_params(&given).unwrap_or_else(|e| panic!("{e}"));
        CallContext { resource: format!("{}-{}", self.name, agent.plugin()), node: "node-a".into(), epoch: 1, params }
    }

    /// Exactly what the agent's manifest declares, for this prefix and shared directory.
    pub fn grants_toml(&self, agent: Kind) -> String {
        let (cluster, bin, stem, shared_sub) = match agent {
            Kind::Base => ("etc/opt/jp1base", "opt/jp1base/bin", "jbs", "jp1base"),
            _ => ("etc/opt/jp1ajs2", "opt/jp1ajs2/bin", "jajs", "jp1ajs2"),
        };
        let mut exec = Vec::new();
        let mut read = Vec::new();
        for verb in ["start", "stop", "killall"] {
            let p = self.p(&format!("{cluster}/{stem}_{verb}.cluster"));
            exec.push(format!(r#"{{ program = "{p}", args = ["*"] }}"#));
            read.push(p);
        }
        let status = self.p(&format!("{bin}/{stem}_spmd_status"));
        exec.push(format!(r#"{{ program = "{status}", args = ["-h", "*", "-t", "*"] }}"#));
        read.push(status);
        match agent {
            Kind::Base => {
                let jevstat = self.p("opt/jp1base/bin/jevstat");
                exec.push(format!(r#"{{ program = "{jevstat}", args = ["*", "-t", "*"] }}"#));
                read.push(jevstat);
            }
            _ => {
                let mut extra = vec!["ajsqlstatus"];
                if agent == Kind::Manager {
                    extra.push("jajs_status");
                }
                for c in extra {
                    let p = self.p(&format!("{bin}/{c}"));
                    exec.push(format!(r#"{{ program = "{p}", args = ["-h", "*"] }}"#));
                    read.push(p);
                }
                read.push(self.p("etc/.hitachi/pplistd/pplistd"));
            }
        }
        read.push(self.shared.join(shared_sub).display().to_string());
        let read: Vec<String> = read.iter().map(|r| format!("{r:?}")).collect();
        format!("exec = [{}]\nread = [{}]\nenv = [\"LANG\"]\n", exec.join(", "), read.join(", "))
    }

    pub fn grants(&self, agent: Kind) -> warden_manifest::Capabilities {
        toml::from_str(&self.grants_toml(agent)).unwrap()
    }

    /// The same grants as `warden agent exec` flags.
    pub fn cli_grants(&self, agent: Kind) -> Vec<String> {
        let caps = self.grants(agent);
        let mut v = Vec::new();
        for e in &caps.exec {
            let args = e.args.as_ref().map(|a| format!(":{}", a.0.join(" "))).unwrap_or_default();
            v.push(format!("--allow-exec={}{args}", e.program.as_str()));
        }
        for r in &caps.read {
            v.push(format!("--allow-read={}", r.as_str()));
        }
        for e in &caps.env {
            v.push(format!("--allow-env={}", e.as_str()));
        }
        v
    }
}
