use warden_cluster::{ClusterRequest, ClusterResponse};

use crate::fixtures::{decisions, TestCluster, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_recovers_its_log_from_redb() {
    let mut c = TestCluster::new(&[1, 2, 3]).await;
    let l = c.leader(&[1, 2, 3]).await;
    let f = [1, 2, 3].into_iter().find(|&id| id != l).unwrap();

    tracing::info!("--- three revisions reach the follower");
    for epoch in 1..=3 {
        let r = c.node(l).propose(ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("a", epoch) }).await.unwrap();
        assert_eq!(r, ClusterResponse::Applied { revision: epoch });
    }
    c.wait_state(f, "revision 3", |s| s.revision == 3).await;
    // Applied means committed, and openraft stores the committed log id before applying.
    let log_index = c.node(f).metrics().last_log_index;

    tracing::info!("--- stop the follower; the other two commit a fourth revision without it");
    c.stop(f).await;
    c.node(l).propose(ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("b", 4) }).await.unwrap();

    tracing::info!("--- restart it cut off from everyone: its log and state come from its own store");
    c.router.isolate(f);
    c.start(f).await;
    assert!(c.node(f).inbound().is_silent(), "a restarted node answers no peer at first");
    // Metrics appear once Raft has loaded its store; it cannot learn anything from peers.
    let want = log_index.expect("the follower had a log");
    c.node(f).raft().wait(Some(WAIT)).log_index_at_least(Some(want), "log recovered from redb").await.unwrap();
    let s = c.wait_state(f, "revision 3 re-applied from disk", |s| s.revision == 3).await;
    assert_eq!(s.decisions, decisions("a", 3));

    tracing::info!("--- reconnect: it catches up with what was committed while it was down");
    c.router.heal();
    let s = c.wait_state(f, "revision 4", |s| s.revision == 4).await;
    assert_eq!(s.decisions, decisions("b", 4));
    assert_eq!(c.leader(&[1, 2, 3]).await, l);
    c.shutdown().await;
}

/// A follower that was down while the leader compacted its log gets a snapshot, stores it, and
/// restarts from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_behind_a_purged_log_catches_up_from_a_snapshot() {
    let mut c = TestCluster::new(&[1, 2, 3]).await;
    let l = c.leader(&[1, 2, 3]).await;
    let f = [1, 2, 3].into_iter().find(|&id| id != l).unwrap();

    tracing::info!("--- the follower is down while the leader commits, snapshots and purges its log");
    c.stop(f).await;
    for epoch in 1..=3 {
        c.node(l).propose(ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("a", epoch) }).await.unwrap();
    }
    // Metrics may lag the proposals' answers, so wait for the snapshot itself to cover them
    // (index 0: the initial membership, 1: the leader's blank entry, 2-4: the three revisions).
    c.node(l).raft().trigger().snapshot().await.unwrap();
    let m = c.node(l).raft().wait(Some(WAIT)).metrics(|m| m.snapshot.is_some_and(|s| s.index >= 4), "leader snapshot").await.unwrap();
    let snap = m.snapshot.unwrap();
    c.node(l).raft().trigger().purge_log(snap.index).await.unwrap();
    c.node(l).raft().wait(Some(WAIT)).purged(Some(snap), "leader purged its log").await.unwrap();

    tracing::info!("--- restarted, it cannot be sent the purged entries: it installs the snapshot");
    c.start(f).await;
    let s = c.wait_state(f, "revision 3 from the snapshot", |s| s.revision == 3).await;
    assert_eq!(s.decisions, decisions("a", 3));
    c.node(f).raft().wait(Some(WAIT)).metrics(|m| m.snapshot >= Some(snap), "follower installed the snapshot").await.unwrap();

    tracing::info!("--- restarted again, cut off: the snapshot came from its own store");
    c.stop(f).await;
    c.router.isolate(f);
    c.start(f).await;
    let s = c.wait_state(f, "revision 3 from the stored snapshot", |s| s.revision == 3).await;
    assert_eq!(s.decisions, decisions("a", 3));
    c.router.heal();
    c.shutdown().await;
}

/// Every member stops; the cluster comes back from disk alone, with its state and a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restarts_from_disk() {
    let mut c = TestCluster::new(&[1, 2, 3]).await;
    let l = c.leader(&[1, 2, 3]).await;
    c.node(l).propose(ClusterRequest::SetDecisions { config_version: 2, decisions: decisions("a", 7) }).await.unwrap();
    for id in [1, 2, 3] {
        c.wait_state(id, "revision 1", |s| s.revision == 1).await;
    }

    tracing::info!("--- stop all, start all: each is silent for a while, then they elect and go on");
    for id in [1, 2, 3] {
        c.stop(id).await;
    }
    for id in [1, 2, 3] {
        c.start(id).await;
    }
    let l = c.leader(&[1, 2, 3]).await;
    let r = c.node(l).propose(ClusterRequest::SetDecisions { config_version: 2, decisions: decisions("b", 8) }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 2 }, "the revision count survived the restart");
    for id in [1, 2, 3] {
        let s = c.wait_state(id, "revision 2", |s| s.revision == 2).await;
        assert_eq!((s.config_version, s.decisions), (2, decisions("b", 8)));
    }
    c.shutdown().await;
}
