use openraft::ServerState;
use warden_cluster::{ClusterError, ClusterRequest, ClusterResponse, ProposeError};

use crate::fixtures::{decisions, poll, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_elect_one_leader_and_replicate_decisions() {
    let c = TestCluster::new(&[1, 2, 3]).await;

    tracing::info!("--- the three agree on one leader, and only it holds authority");
    let l = c.leader(&[1, 2, 3]).await;
    let leaders: Vec<_> = [1, 2, 3].into_iter().filter(|&id| c.node(id).metrics().state == ServerState::Leader).collect();
    assert_eq!(leaders, vec![l]);
    poll("the leader's authority", || c.node(l).authority()).await;
    for f in [1, 2, 3].into_iter().filter(|&id| id != l) {
        assert_eq!(c.node(f).authority(), None, "a follower never has authority");
    }

    tracing::info!("--- decisions proposed on the leader are answered after commit and reach every member");
    let r = c.node(l).propose(ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("a", 1) }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 1 });
    let r = c.node(l).propose(ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("b", 2) }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 2 });
    for id in [1, 2, 3] {
        let s = c.wait_state(id, "revision 2", |s| s.revision == 2).await;
        assert_eq!(s.decisions, decisions("b", 2));
        assert_eq!(s.config_version, 1);
    }

    tracing::info!("--- a follower refuses a proposal and names the leader");
    let f = [1, 2, 3].into_iter().find(|&id| id != l).unwrap();
    let e = c.node(f).propose(ClusterRequest::SetConfigVersion { config_version: 2 }).await.unwrap_err();
    assert!(matches!(e, ClusterError::NotLeader { leader: Some(x) } if x == l), "{e}");

    tracing::info!("--- a proposal under an older config is committed but refused by the state machine, everywhere");
    c.node(l).propose(ClusterRequest::SetConfigVersion { config_version: 5 }).await.unwrap();
    let r = c.node(l).propose(ClusterRequest::SetDecisions { config_version: 4, decisions: decisions("c", 3) }).await.unwrap();
    assert_eq!(r, ClusterResponse::StaleConfig { committed: 5, proposed: 4 });
    for id in [1, 2, 3] {
        let s = c.wait_state(id, "config 5", |s| s.config_version == 5).await;
        assert_eq!(s.decisions, decisions("b", 2));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_survives_lost_and_late_messages() {
    let c = TestCluster::new(&[1, 2, 3]).await;
    let l = c.leader(&[1, 2, 3]).await;
    let f: Vec<_> = [1, 2, 3].into_iter().filter(|&id| id != l).collect();

    tracing::info!("--- lose messages to one follower and answers from it, delay the other's answers");
    c.router.lose_next(l, f[0], 5);
    c.router.lose_next(f[0], l, 3);
    c.router.delay(f[1], l, std::time::Duration::from_millis(30));
    let lost_before = c.router.lost();
    for epoch in 1..=3 {
        c.node(l).propose(ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("a", epoch) }).await.unwrap();
    }
    for id in [1, 2, 3] {
        let s = c.wait_state(id, "revision 3", |s| s.revision == 3).await;
        assert_eq!(s.decisions, decisions("a", 3));
    }
    assert!(c.router.lost() >= lost_before + 8, "the losses happened: {}", c.router.lost() - lost_before);
    c.shutdown().await;
}

/// Operator commands may be given on any member: they go to the leader and are answered after
/// commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposal_on_a_follower_goes_to_the_leader_and_is_answered_after_commit() {
    let c = TestCluster::new(&[1, 2, 3]).await;
    let l = c.leader(&[1, 2, 3]).await;
    let f = [1, 2, 3].into_iter().find(|&id| id != l).unwrap();

    tracing::info!("--- submitted on a follower: applied, and every member has it");
    let via = c.router.network(f);
    let r = c.node(f).submit(&via, ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("a", 1) }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 1 });
    for id in [1, 2, 3] {
        c.wait_state(id, "revision 1", |s| s.revision == 1).await;
    }

    tracing::info!("--- on the leader itself: proposed there");
    let r = c.node(l).submit(&c.router.network(l), ClusterRequest::SetConfigVersion { config_version: 2 }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 2 });

    tracing::info!("--- a follower cut off from the leader cannot forward: an error, not a silent success");
    c.router.partition(&[f], &[l]);
    let e = c.node(f).submit(&via, ClusterRequest::SetConfigVersion { config_version: 3 }).await.unwrap_err();
    assert!(matches!(e, ProposeError::Failed(_)), "{e}");
    c.router.heal();
    c.shutdown().await;
}
