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
