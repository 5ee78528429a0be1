//! A cluster in one test process: members `a` and `b` (run resources) and witness `w`, each a
//! real daemon (`Node` run as a member: Raft on redb, the decision core, the executor, its own
//! cgroup tree and watchdog supervisor, its own control socket), joined by the in-memory
//! [`Router`] instead of TLS: the router drops, delays, cuts one direction, partitions, and a
//! member's task can be aborted (a crash: what it started runs on) and started again.
//!
//! Group `app` is one resource, the ledger (see `cluster.rs`): while it runs on a member it
//! appends `NODE EPOCH PID TIME` every 5 ms, so the ledger is the recorded history that the S1
//! check reads: two members' records overlapping in time is the group active twice. Members share
//! the file system, so the ledger's pid file is per member (`run-$LK_NODE/ledger.pid`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use warden::api::{Client, Request, Response, StatusReport};
use warden::node::{InMemoryNet, Node, NodeOptions};
use warden::scheduler::OperatorCommand;
use warden_cluster::router::Router;
use warden_cluster::{raft_id, RaftId};

use crate::cluster::{check_ledger, ledger_resource_at, read_ledger};
use crate::node::warden_bin;

pub const WAIT: Duration = Duration::from_secs(60);

pub struct Member {
    pub name: String,
    pub state: PathBuf,
    pub socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), warden::node::NodeError>>>,
    /// The member's own runtime, as a process is its own: everything it spawned (Raft's tasks
    /// too) ends with it when it crashes.
    rt: Option<tokio::runtime::Runtime>,
}

pub struct MemCluster {
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
    pub router: Router,
    pub config: PathBuf,
    pub members: Vec<Member>,
}

impl MemCluster {
    /// The three members' config (the same file for all: the cluster checks they run one
    /// config), with `watchdog_fencing`: a member cut off stops its group when its lease runs
    /// out, and the leader moves the group once that lease has provably ended.
    pub fn new() -> Self {
        Self::with_members(&[("a", false), ("b", false), ("w", true)])
    }

    /// Members `names` (name, is a witness), in config order; group `app` prefers them in that
    /// order (the witness aside).
    pub fn with_members(names: &[(&str, bool)]) -> Self {
        Self::build(names)
    }

    fn build(names: &[(&str, bool)]) -> Self {
        // The members' watchdog supervisors are `warden watchdog-supervise` processes: the
        // daemon runs inside this test binary, so it is told where `warden` is.
        std::env::set_var("WARDEN_EXE", warden_bin());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut text = "version = 1\n[cluster]\nname = \"m\"\nwatchdog_fencing = true\n".to_string();
        for (i, (name, witness)) in names.iter().enumerate() {
            // Two paths each; the addresses only name the router's paths.
            text += &format!(
                "\n[[nodes]]\nname = \"{name}\"\naddresses = [\"10.250.1.{n}:7400\", \"10.250.2.{n}:7400\"]\n{role}",
                n = i + 1,
                role = if *witness { "role = \"witness\"\n" } else { "" }
            );
            std::fs::create_dir_all(dir.path().join(format!("run-{name}"))).unwrap();
        }
        let pid = format!("{}/run-$LK_NODE/ledger.pid", dir.path().display());
        text += &ledger_resource_at(dir.path(), &pid);
        let resources = "\"ledger\"";
        let runners: Vec<String> = names.iter().filter(|(_, w)| !w).map(|(n, _)| format!("\"{n}\"")).collect();
        text += &format!("\n[[groups]]\nname = \"app\"\nresources = [{resources}]\npriority = [{}]\n", runners.join(", "));
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, text).unwrap();
        let members = names
            .iter()
            .map(|(n, _)| Member {
                name: n.to_string(),
                state: dir.path().join(format!("state-{n}")),
                socket: dir.path().join(format!("{n}.sock")),
                stop: None,
                task: None,
                rt: None,
            })
            .collect();
        Self { rt, dir, router: Router::new(), config, members }
    }

    pub fn id(name: &str) -> RaftId {
        raft_id(name)
    }

    fn member(&self, name: &str) -> &Member {
        self.members.iter().find(|m| m.name == name).unwrap()
    }

    fn member_mut(&mut self, name: &str) -> &mut Member {
        self.members.iter_mut().find(|m| m.name == name).unwrap()
    }

    /// Loads and starts member `name` (again, after a crash or a stop: same state directory).
    pub fn start(&mut self, name: &str) {
        let m = self.member(name);
        assert!(m.task.is_none(), "{name} runs already");
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
        let opts = NodeOptions {
            config: self.config.clone(),
            node: Some(name.to_string()),
            state_dir: Some(m.state.clone()),
            socket: Some(m.socket.clone()),
            cache: Some(Some(cache)),
            in_memory: Some(InMemoryNet(self.router.clone())),
            ..Default::default()
        };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let node = rt.block_on(Node::load(&opts)).unwrap_or_else(|e| panic!("member {name}: {e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(node.run(async move {
            let _ = stopped.await;
        }));
        let m = self.member_mut(name);
        m.stop = Some(stop);
        m.task = Some(task);
        m.rt = Some(rt);
    }

    pub fn start_all(&mut self) {
        let names: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
        for n in names {
            self.start(&n);
        }
    }

    /// The daemon dies at once (its runtime is shut down: every task of it, Raft's included):
    /// what it started runs on, its watchdog supervisor goes on guarding, its peers stop hearing
    /// it.
    pub fn crash(&mut self, name: &str) {
        self.router.remove(Self::id(name));
        let m = self.member_mut(name);
        m.stop = None;
        m.task = None;
        // (Its store is closed once the blocking writes it had under way return: waited for.)
        if let Some(rt) = m.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }

    pub fn running(&self, name: &str) -> bool {
        self.member(name).task.as_ref().is_some_and(|t| !t.is_finished())
    }

    pub fn status(&self, via: &str) -> Option<StatusReport> {
        let socket = self.member(via).socket.clone();
        let call = async { tokio::time::timeout(Duration::from_secs(5), Client::call(&socket, Request::Status)).await };
        match self.rt.block_on(call) {
            Ok(Ok(Response::Status { status })) => Some(*status),
            _ => None,
        }
    }

    /// Group `g` as `via` reports it: state, owner, epoch.
    pub fn group(&self, via: &str, g: &str) -> Option<(String, Option<String>, u64)> {
        let st = self.status(via)?;
        st.groups.into_iter().find(|x| x.name == g).map(|x| (x.state, x.owner, x.epoch))
    }

    pub fn leader(&self, via: &str) -> Option<String> {
        self.status(via)?.cluster_info?.leader
    }

    /// An operator command given on `via` (forwarded to the leader).
    pub fn operator(&self, via: &str, command: OperatorCommand) -> Result<String, String> {
        let socket = self.member(via).socket.clone();
        let call = async { tokio::time::timeout(Duration::from_secs(20), Client::call(&socket, Request::Operator { command })).await };
        match self.rt.block_on(call) {
            Ok(Ok(Response::Ok { message })) => Ok(message),
            Ok(Ok(Response::Error { message })) => Err(message),
            Ok(Ok(other)) => Err(format!("unexpected answer: {other:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 20 s".into()),
        }
    }

    /// Polls `f` every 50 ms until it holds; fails the test after `limit`.
    pub fn wait(&self, what: &str, limit: Duration, mut f: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let views: Vec<String> = self
            .members
            .iter()
            .map(|m| {
                let st = self.status(&m.name);
                let nodes = st.as_ref().map(|s| s.nodes.iter().map(|n| format!("{}:up={}", n.name, n.up)).collect::<Vec<_>>());
                let groups =
                    st.as_ref().map(|s| s.groups.iter().map(|g| format!("{} {} on {:?}", g.name, g.state, g.owner)).collect::<Vec<_>>());
                let leader = st.as_ref().and_then(|s| s.cluster_info.as_ref().map(|c| (c.leader.clone(), c.term)));
                format!("{} sees {nodes:?} {groups:?} leader and term {leader:?}", m.name)
            })
            .collect();
        let ledgers: Vec<String> = self.members.iter().map(|m| format!("{}:{}", m.name, self.ledger_runs_on(&m.name))).collect();
        panic!("timed out after {limit:?} waiting for {what}\n{}\nledger writers: {ledgers:?}\n{}", views.join("\n"), self.logs());
    }

    /// Whether the ledger writer of `node` is alive (its pid file names a live process).
    pub fn ledger_runs_on(&self, node: &str) -> bool {
        alive(&self.dir.path().join(format!("run-{node}/ledger.pid")))
    }

    /// The recorded history's S1 check: no two members' ledger records overlap in time, and
    /// epochs never go back.
    pub fn check_ledger(&self) {
        let holdings = read_ledger(&self.dir.path().join("ledger")).unwrap();
        if let Err(e) = check_ledger(&holdings) {
            panic!("S1 broken: {e}\n{}", self.logs());
        }
    }

    /// Every member's event history, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let events = std::fs::read_to_string(m.state.join("events.jsonl")).unwrap_or_default();
                let tail: Vec<&str> = events.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
                format!("===== {} =====\n{}", m.name, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for MemCluster {
    fn drop(&mut self) {
        self.router.heal();
        for m in &mut self.members {
            if let Some(s) = m.stop.take() {
                let _ = s.send(());
            }
        }
        for m in &mut self.members {
            if let (Some(t), Some(rt)) = (m.task.take(), m.rt.take()) {
                let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), t).await });
                rt.shutdown_timeout(Duration::from_secs(5));
            }
        }
        // What crashed members left: their ledger writers and watchdog supervisors.
        let dir = self.dir.path().display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains(&dir) && (cmdline.contains("watchdog-supervise") || cmdline.contains("/ledger")) {
                let _ = std::process::Command::new("/bin/kill").args(["-9", &pid.to_string()]).status();
            }
        }
        if !std::thread::panicking() {
            if let Err(e) = read_ledger(&self.dir.path().join("ledger")).and_then(|h| check_ledger(&h)) {
                panic!("ledger: {e}");
            }
        }
    }
}

/// Whether the pid file names a live (not zombie) process.
fn alive(pidfile: &std::path::Path) -> bool {
    std::fs::read_to_string(pidfile).ok().and_then(|p| p.trim().parse::<u32>().ok()).is_some_and(|p| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|t| !t.trim_start().starts_with('Z')))
    })
}
