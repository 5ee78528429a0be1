//! Shared fixtures for the cluster tier: N members in this process over the in-memory router,
//! each with its own store directory, and bounded polling instead of sleeps.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;
use warden_cluster::router::Router;
use warden_cluster::{AuthorityConfig, ClusterError, ClusterNode, ClusterState, LivenessConfig, NodeConfig, Peer, RaftId};
use warden_core::scheduler::{Decisions, GroupState, Target};
use warden_core::{GroupId, NodeId};

/// How long any wait in these tests may take before it counts as a failure. Generous: the
/// machine is shared with other builds, and a wait returns as soon as its condition holds.
pub const WAIT: Duration = Duration::from_secs(20);

/// Waits until `f` returns `Some`, checking every 10 ms, at most [`WAIT`].
pub async fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
}

/// Decisions placing group `g` on `owner` with `epoch`: enough to tell states apart.
pub fn decisions(owner: &str, epoch: u64) -> Decisions {
    let mut d = Decisions::default();
    d.groups.insert(
        GroupId::from("g"),
        GroupState { target: Target::Started, owner: Some(NodeId::from(owner)), epoch, failed_on: Default::default(), move_to: None },
    );
    d
}

/// Raft and authority timing for tests: short so that tests are quick, election timeouts spread
/// wide so that split votes are rare (openraft 0.9 draws one election timeout per process).
pub fn timing() -> (Arc<openraft::Config>, AuthorityConfig) {
    let raft = openraft::Config {
        cluster_name: "test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 400,
        election_timeout_max: 800,
        ..Default::default()
    };
    let raft = Arc::new(raft.validate().expect("raft config"));
    let authority = AuthorityConfig::for_raft(&raft, 0.01, Duration::from_millis(30)).expect("authority window");
    (raft, authority)
}

/// Liveness timing on the router: quick, so that links tests are short.
pub const LIVENESS: LivenessConfig = LivenessConfig { interval: Duration::from_millis(50), dead_after: Duration::from_millis(300) };

pub struct TestCluster {
    pub router: Router,
    dir: TempDir,
    raft: Arc<openraft::Config>,
    pub authority: AuthorityConfig,
    paths: Vec<String>,
    nodes: BTreeMap<RaftId, ClusterNode>,
}

impl TestCluster {
    /// Starts members `ids` and forms the cluster from the first.
    pub async fn new(ids: &[RaftId]) -> Self {
        Self::with_paths(ids, &[]).await
    }

    /// As [`TestCluster::new`], each member reached over the router paths named `paths` (none:
    /// one path per link).
    pub async fn with_paths(ids: &[RaftId], paths: &[&str]) -> Self {
        init_tracing();
        let (raft, authority) = timing();
        let mut c = Self {
            router: Router::with_liveness(LIVENESS),
            dir: TempDir::new().expect("temp dir"),
            raft,
            authority,
            paths: paths.iter().map(|p| p.to_string()).collect(),
            nodes: BTreeMap::new(),
        };
        for &id in ids {
            c.start(id).await;
        }
        let members = ids.iter().map(|&id| (id, c.peer(id))).collect();
        c.node(ids[0]).initialize(members).await.expect("initialize");
        c
    }

    fn config(&self, id: RaftId) -> NodeConfig {
        NodeConfig { id, dir: self.dir.path().join(format!("n{id}")), raft: self.raft.clone(), authority: self.authority }
    }

    /// Starts (or restarts) member `id` from its directory and connects it.
    pub async fn start(&mut self, id: RaftId) {
        let config = self.config(id);
        // A stopped member's Raft tasks release the store shortly after shutdown returns.
        let deadline = Instant::now() + WAIT;
        let node = loop {
            match ClusterNode::start(&config, self.router.network(id)).await {
                Ok(n) => break n,
                Err(ClusterError::Store(e)) if Instant::now() < deadline && e.to_string().contains("already open") => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("start n{id}: {e}"),
            }
        };
        self.router.register(id, node.inbound());
        self.nodes.insert(id, node);
    }

    /// Stops member `id` (as a crash would, from the network's view: it is gone at once).
    pub async fn stop(&mut self, id: RaftId) {
        self.router.remove(id);
        let node = self.nodes.remove(&id).expect("node running");
        node.shutdown().await.expect("shutdown");
    }

    pub fn node(&self, id: RaftId) -> &ClusterNode {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: RaftId) -> &mut ClusterNode {
        self.nodes.get_mut(&id).expect("node running")
    }

    /// How members name and reach each other (their `Peer`).
    pub fn peer(&self, id: RaftId) -> Peer {
        Peer { name: format!("n{id}"), addresses: self.paths.clone() }
    }

    /// Waits until every member in `among` names the same leader, itself in `among` and in
    /// openraft's Leader state, and returns it.
    pub async fn leader(&self, among: &[RaftId]) -> RaftId {
        poll(&format!("one leader among {among:?}"), || {
            let leaders: Vec<_> = among.iter().map(|&id| self.node(id).metrics().current_leader).collect();
            let l = leaders[0]?;
            let agreed = leaders.iter().all(|x| *x == Some(l)) && among.contains(&l);
            (agreed && self.node(l).metrics().state == openraft::ServerState::Leader).then_some(l)
        })
        .await
    }

    /// Waits until member `id` has applied a state for which `f` holds.
    pub async fn wait_state(&self, id: RaftId, what: &str, f: impl Fn(&ClusterState) -> bool) -> ClusterState {
        let mut rx = self.node(id).state();
        let got = tokio::time::timeout(WAIT, rx.wait_for(|s| f(s))).await.ok().and_then(|r| r.ok()).map(|s| s.clone());
        got.unwrap_or_else(|| panic!("n{id}: timed out waiting for {what}; state: {:?}", *rx.borrow()))
    }

    pub async fn shutdown(mut self) {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.stop(id).await;
        }
    }
}
