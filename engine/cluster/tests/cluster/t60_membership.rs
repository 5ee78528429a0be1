use std::collections::BTreeSet;

use warden_cluster::{ClusterError, ClusterRequest, Peer};

use crate::fixtures::{decisions, poll, TestCluster};

fn peer(id: u64) -> Peer {
    Peer { name: format!("n{id}"), addresses: vec![] }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_replicates_and_voters_change_only_while_all_are_healthy() {
    let mut c = TestCluster::new(&[1, 2, 3]).await;
    let l = c.leader(&[1, 2, 3]).await;
    c.node(l).propose(ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("a", 1) }).await.unwrap();

    tracing::info!("--- a fourth node joins as a learner: it gets the log, it does not vote");
    c.start(4).await;
    poll("authority", || c.node(l).authority()).await;
    c.node(l).add_learner(4, peer(4)).await.unwrap();
    c.wait_state(4, "revision 1 on the learner", |s| s.revision == 1).await;
    let voters: BTreeSet<_> = c.node(l).metrics().membership_config.membership().voter_ids().collect();
    assert_eq!(voters, BTreeSet::from([1, 2, 3]));

    tracing::info!("--- with a voter down, replacing it is refused");
    let down = [1, 2, 3].into_iter().find(|&id| id != l).unwrap();
    let keep = [1, 2, 3].into_iter().find(|&id| id != l && id != down).unwrap();
    c.stop(down).await;
    let new_voters = BTreeSet::from([l, keep, 4]);
    let e = c.node(l).change_voters(new_voters.clone()).await.unwrap_err();
    assert!(matches!(&e, ClusterError::Membership(m) if m.contains(&format!("[{down}]"))), "{e}");

    tracing::info!("--- once it is back and caught up, the operator's change goes through");
    c.start(down).await;
    // It is silent for a while after its restart (its revision 1 comes from its own disk):
    // wait until it has the leader's whole log.
    poll("the restarted voter to catch up", || (c.node(down).metrics().last_log_index >= c.node(l).metrics().last_log_index).then_some(()))
        .await;
    poll("authority", || c.node(l).authority()).await;
    c.node(l).change_voters(new_voters.clone()).await.unwrap();
    let voters: BTreeSet<_> = c.node(l).metrics().membership_config.membership().voter_ids().collect();
    assert_eq!(voters, new_voters);
    let s = c.wait_state(4, "state unchanged by the barriers", |s| s.revision == 1).await;
    assert_eq!(s.decisions, decisions("a", 1));

    tracing::info!("--- a follower cannot change membership");
    let e = c.node(4).change_voters(BTreeSet::from([1, 2, 3])).await.unwrap_err();
    assert!(matches!(e, ClusterError::NotLeader { .. }), "{e}");
    c.shutdown().await;
}
