//! Several nodes in one test process: each a real `Node` (its own config, state directory,
//! control socket and cgroup tree) running on one shared tokio runtime. Cluster tests start
//! nodes, stop or drop them (a crash: the task is aborted) and ask them through the real control
//! API, without spawning processes or picking ports.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warden::api::{Client, Request, Response, StatusReport};
use warden::node::{Node, NodeOptions};

pub struct InProcNode {
    pub name: String,
    pub config: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), warden::node::NodeError>>>,
}

pub struct InProc {
    pub rt: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<InProcNode>,
}

impl InProc {
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        Self { rt, dir: tempfile::tempdir().unwrap(), nodes: Vec::new() }
    }

    /// Load and start node `name` of the config text (written under this fixture's directory).
    pub fn start(&mut self, name: &str, config_text: &str) -> usize {
        let base = self.dir.path().join(name);
        std::fs::create_dir_all(&base).unwrap();
        let config = base.join("cluster.toml");
        std::fs::write(&config, config_text).unwrap();
        let (state, socket) = (base.join("state"), base.join("w.sock"));
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
        let opts = NodeOptions {
            config: config.clone(),
            node: Some(name.to_string()),
            state_dir: Some(state.clone()),
            socket: Some(socket.clone()),
            single_node: true,
            cache: Some(Some(cache)),
            ..Default::default()
        };
        let node = self.rt.block_on(Node::load(&opts)).unwrap_or_else(|e| panic!("node {name}: {e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = self.rt.spawn(node.run(async move {
            let _ = stopped.await;
        }));
        self.nodes.push(InProcNode { name: name.into(), config, state, socket, stop: Some(stop), task: Some(task) });
        let i = self.nodes.len() - 1;
        assert!(self.wait(Duration::from_secs(60), |c| c.status(i).is_some()), "node {name} did not come up");
        i
    }

    pub fn status(&self, i: usize) -> Option<StatusReport> {
        let socket = self.nodes[i].socket.clone();
        match self.rt.block_on(Client::call(&socket, Request::Status)) {
            Ok(Response::Status { status }) => Some(*status),
            _ => None,
        }
    }

    pub fn group_state(&self, i: usize, g: &str) -> String {
        self.status(i).and_then(|s| s.groups.into_iter().find(|x| x.name == g).map(|x| x.state)).unwrap_or_default()
    }

    /// Stop node `i` as SIGTERM would, and wait for it to finish.
    pub fn stop(&mut self, i: usize) {
        if let Some(s) = self.nodes[i].stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.nodes[i].task.take() {
            self.rt.block_on(t).unwrap().unwrap();
        }
    }

    pub fn wait(&self, limit: Duration, mut f: impl FnMut(&Self) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if f(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        f(self)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn base(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(s) = self.nodes[i].stop.take() {
                let _ = s.send(());
            }
        }
        for n in &mut self.nodes {
            if let Some(t) = n.task.take() {
                let _ = self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), t).await });
            }
        }
    }
}
