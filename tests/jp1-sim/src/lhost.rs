//! Logical hosts: the node-local registration (under the prefix) and the per-logical-host state
//! and fault switches (under the shared directory).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which JP1 product a command or daemon belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    Base,
    Ajs,
}

impl Product {
    /// The name used for state directories and fault files (`base`, `ajs`).
    pub fn key(self) -> &'static str {
        match self {
            Product::Base => "base",
            Product::Ajs => "ajs",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "base" => Some(Product::Base),
            "ajs" => Some(Product::Ajs),
            _ => None,
        }
    }

    pub fn display(self) -> &'static str {
        match self {
            Product::Base => "JP1/Base",
            Product::Ajs => "JP1/AJS3",
        }
    }
}

/// How JP1/AJS3 is set up on a logical host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AjsRole {
    Manager,
    Agent,
    None,
}

impl AjsRole {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "manager" => Some(AjsRole::Manager),
            "agent" => Some(AjsRole::Agent),
            "none" => Some(AjsRole::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AjsRole::Manager => "manager",
            AjsRole::Agent => "agent",
            AjsRole::None => "none",
        }
    }
}

/// What a process is for, which decides which status command looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The process manager (`jbs_spmd`, `jajs_spmd`), parent of all the others.
    Spmd,
    /// Listed by `jbs_spmd_status` / `jajs_spmd_status`. For AJS3 its death stops the service.
    Listed,
    /// The event service (`jevservice`), checked by `jevstat`.
    Event,
    /// A scheduler service (`jajs_schd_<svc>`): invisible to `jajs_spmd_status`, shown by
    /// `jajs_status`.
    Scheduler,
    /// The queueless agent services (`ajsqlagtd`, `ajsqlftpd`), shown by `ajsqlstatus`.
    Queueless,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub role: Role,
}

fn spec(name: impl Into<String>, role: Role) -> Spec {
    Spec { name: name.into(), role }
}

/// The lifecycle phase recorded in the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    Stopping,
    Stopped,
    Killed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Killed => "killed",
        }
    }

    fn parse(s: &str) -> Self {
        match s.trim() {
            "starting" => Phase::Starting,
            "running" => Phase::Running,
            "stopping" => Phase::Stopping,
            "killed" => Phase::Killed,
            _ => Phase::Stopped,
        }
    }

    /// Processes are expected to be alive in this phase (so their absence is abnormal).
    pub fn expects_processes(self) -> bool {
        matches!(self, Phase::Starting | Phase::Running)
    }
}

/// A registered logical host.
#[derive(Debug, Clone)]
pub struct Lhost {
    pub name: String,
    pub prefix: PathBuf,
    pub shared: PathBuf,
    pub ajs: AjsRole,
    pub db_id: String,
    pub scheduler: String,
}

pub fn registry_dir(prefix: &Path) -> PathBuf {
    prefix.join("etc/opt/jp1sim/lhosts")
}

/// The node's list of installed JP1 products, modelled on Hitachi's PP installer list.
pub fn pp_list(prefix: &Path) -> PathBuf {
    prefix.join("etc/.hitachi/pplistd/pplistd")
}

pub const PP_BASE: &str = "JP1/Base";
pub const PP_AJS_MANAGER: &str = "JP1/Automatic Job Management System 3 - Manager";
pub const PP_AJS_AGENT: &str = "JP1/Automatic Job Management System 3 - Agent";

pub fn installed(prefix: &Path, product_line: &str) -> bool {
    std::fs::read_to_string(pp_list(prefix)).map(|t| t.lines().any(|l| l.trim() == product_line)).unwrap_or(false)
}

/// The physical host name (`/proc/sys/kernel/hostname`).
pub fn physical_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

/// The `-h` / `JP1_HOSTNAME` / physical host name rule.
pub fn resolve_name(explicit: Option<String>) -> String {
    explicit
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("JP1_HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(physical_hostname)
}

impl Lhost {
    pub fn lookup(prefix: &Path, name: &str) -> Result<Lhost, String> {
        if name.is_empty() || name.contains('/') || name.len() > 63 {
            return Err(format!("`{name}` is not a valid logical host name"));
        }
        let path = registry_dir(prefix).join(name);
        let text = std::fs::read_to_string(&path)
            .map_err(|_| format!("the logical host `{name}` is not set up on this node ({} is missing)", path.display()))?;
        let mut l = Lhost {
            name: name.into(),
            prefix: prefix.into(),
            shared: PathBuf::new(),
            ajs: AjsRole::None,
            db_id: "JF0".into(),
            scheduler: "AJSROOT1".into(),
        };
        for line in text.lines() {
            match line.split_once('=') {
                Some(("shared_dir", v)) => l.shared = PathBuf::from(v.trim()),
                Some(("ajs", v)) => l.ajs = AjsRole::parse(v.trim()).unwrap_or(AjsRole::None),
                Some(("db_id", v)) => l.db_id = v.trim().into(),
                Some(("scheduler", v)) => l.scheduler = v.trim().into(),
                _ => {}
            }
        }
        if !l.shared.is_absolute() {
            return Err(format!("{}: no absolute shared_dir", path.display()));
        }
        if !l.shared.join("jp1base").is_dir() {
            return Err(format!(
                "the shared directory {} of logical host `{name}` is not available (is the shared disk mounted?)",
                l.shared.display()
            ));
        }
        Ok(l)
    }

    pub fn write_registration(&self) -> std::io::Result<()> {
        let dir = registry_dir(&self.prefix);
        std::fs::create_dir_all(&dir)?;
        write_atomic(
            &dir.join(&self.name),
            &format!(
                "# jp1-sim logical host registration (test double, not JP1)\nshared_dir={}\najs={}\ndb_id={}\nscheduler={}\n",
                self.shared.display(),
                self.ajs.as_str(),
                self.db_id,
                self.scheduler
            ),
        )
    }

    pub fn sim_dir(&self) -> PathBuf {
        self.shared.join("jp1sim")
    }

    pub fn state_dir(&self, p: Product) -> PathBuf {
        self.sim_dir().join(p.key())
    }

    pub fn exe_dir(&self, p: Product) -> PathBuf {
        self.state_dir(p).join("exe")
    }

    pub fn pid_dir(&self, p: Product) -> PathBuf {
        self.state_dir(p).join("pids")
    }

    pub fn faults_dir(&self) -> PathBuf {
        self.sim_dir().join("faults")
    }

    /// The processes of `p` on this logical host, the process manager first.
    pub fn specs(&self, p: Product) -> Vec<Spec> {
        match p {
            Product::Base => {
                let mut v = vec![spec("jbs_spmd", Role::Spmd)];
                for n in ["jbsroute", "jcocmd", "jbsplugin", "jbshcd", "jbshchostd", "jbssrvmgr", "jbslcact", "jbscomd"] {
                    v.push(spec(n, Role::Listed));
                }
                v.push(spec("jevservice", Role::Event));
                v
            }
            Product::Ajs => match self.ajs {
                AjsRole::Manager => vec![
                    spec("jajs_spmd", Role::Spmd),
                    spec(format!("jajs_dbmd_{}", self.db_id), Role::Listed),
                    spec("jajs_hstd", Role::Listed),
                    spec("jajs_agtd", Role::Listed),
                    spec(format!("jajs_schd_{}", self.scheduler), Role::Scheduler),
                    spec("ajsqlagtd", Role::Queueless),
                    spec("ajsqlftpd", Role::Queueless),
                ],
                AjsRole::Agent => vec![spec("jajs_spmd", Role::Spmd), spec("jajs_agtd", Role::Listed), spec("ajsqlagtd", Role::Queueless)],
                AjsRole::None => vec![],
            },
        }
    }

    pub fn phase(&self, p: Product) -> Phase {
        Phase::parse(&std::fs::read_to_string(self.state_dir(p).join("phase")).unwrap_or_default())
    }

    pub fn set_phase(&self, p: Product, phase: Phase) {
        let _ = std::fs::create_dir_all(self.state_dir(p));
        let _ = write_atomic(&self.state_dir(p).join("phase"), phase.as_str());
    }

    /// Why the service ended abnormally, as recorded by its process manager.
    pub fn abnormal(&self, p: Product) -> Option<String> {
        std::fs::read_to_string(self.state_dir(p).join("abnormal")).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    }

    pub fn set_abnormal(&self, p: Product, reason: &str) {
        let _ = write_atomic(&self.state_dir(p).join("abnormal"), reason);
    }

    pub fn clear_abnormal(&self, p: Product) {
        let _ = std::fs::remove_file(self.state_dir(p).join("abnormal"));
    }

    /// Append a line to the simulator's event log for this product.
    pub fn log(&self, p: Product, msg: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(self.state_dir(p).join("events.log")) {
            let _ = writeln!(f, "{} {msg}", std::process::id());
        }
    }

    /// The content of fault switch `name`, if it is set.
    pub fn fault(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.faults_dir().join(name)).ok().map(|s| s.trim().to_string())
    }

    /// Consume one use of a counting fault (`<cmd>.transient12`): true when it fired.
    pub fn take_count_fault(&self, name: &str) -> bool {
        let path = self.faults_dir().join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return false;
        };
        let n: u64 = text.trim().parse().unwrap_or(1);
        if n <= 1 {
            let _ = std::fs::remove_file(&path);
        } else {
            let _ = write_atomic(&path, &(n - 1).to_string());
        }
        n >= 1
    }

    /// Seconds from a fault file holding a number (`slow-start`).
    pub fn fault_secs(&self, name: &str) -> Option<Duration> {
        self.fault(name).and_then(|s| s.parse::<f64>().ok()).filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64)
    }
}

/// Write via a temporary file and rename, so readers never see half a file.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
