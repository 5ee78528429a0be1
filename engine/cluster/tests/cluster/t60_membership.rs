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

/// `reconcile` walks the membership to what the config asks for, one safe step at a time:
/// learners first, voters once every current and future voter is healthy, removals last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_adds_learners_then_promotes_and_removes_only_while_all_voters_are_healthy() {
    use warden_cluster::{Step, Wanted};
    let mut c = TestCluster::new(&[1, 2, 3]).await;
    let l = c.leader(&[1, 2, 3]).await;
    c.node(l).propose(ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("a", 1) }).await.unwrap();
    let want = |ids: &[u64], voters: &[u64]| Wanted {
        members: ids.iter().map(|&i| (i, peer(i))).collect(),
        voters: voters.iter().copied().collect(),
    };
    let voters = |c: &TestCluster| -> BTreeSet<u64> { c.node(l).metrics().membership_config.membership().voter_ids().collect() };
    poll("authority", || c.node(l).authority()).await;
    assert_eq!(c.node(l).reconcile(&want(&[1, 2, 3], &[1, 2, 3])).await.unwrap(), Step::InSync);

    tracing::info!("--- two members more: learners first, without waiting for them");
    let five = want(&[1, 2, 3, 4, 5], &[1, 2, 3, 4, 5]);
    assert_eq!(c.node(l).reconcile(&five).await.unwrap(), Step::AddedLearners(vec![4, 5]));
    assert_eq!(voters(&c), BTreeSet::from([1, 2, 3]), "a learner does not vote");
    tracing::info!("--- neither runs yet: promoting them is refused, nothing changes");
    let e = c.node(l).reconcile(&five).await.unwrap_err();
    assert!(matches!(&e, ClusterError::Membership(m) if m.contains("[4, 5]")), "{e}");
    assert_eq!(voters(&c), BTreeSet::from([1, 2, 3]));
    c.start(4).await;
    c.start(5).await;
    c.wait_state(5, "the learner has the log", |s| s.revision == 1).await;
    poll("authority", || c.node(l).authority()).await;
    assert!(matches!(c.node(l).reconcile(&five).await.unwrap(), Step::ChangedVoters { .. }));
    assert_eq!(voters(&c), BTreeSet::from([1, 2, 3, 4, 5]));
    // What each member applied: the committed voters (a removed member leaves only once it is
    // not among them).
    for id in 1..=5 {
        poll("every member applied the five voters", || (c.node(id).committed_voters() == BTreeSet::from([1, 2, 3, 4, 5])).then_some(()))
            .await;
    }
    assert_eq!(c.node(l).reconcile(&five).await.unwrap(), Step::InSync);

    tracing::info!("--- back to three: with a voter that stays down, nothing is removed");
    let l = c.leader(&[1, 2, 3, 4, 5]).await;
    let down = [1, 2, 3].into_iter().find(|&id| id != l).unwrap();
    c.stop(down).await;
    poll("authority", || c.node(l).authority()).await;
    let three = want(&[1, 2, 3], &[1, 2, 3]);
    let e = c.node(l).reconcile(&three).await.unwrap_err();
    assert!(matches!(&e, ClusterError::Membership(m) if m.contains(&format!("[{down}]"))), "{e}");
    assert_eq!(c.node(l).metrics().membership_config.membership().voter_ids().count(), 5);
    c.start(down).await;
    poll("the restarted voter to catch up", || (c.node(down).metrics().last_log_index >= c.node(l).metrics().last_log_index).then_some(()))
        .await;
    // The leader may be one of the two leaving: it hands over once they are no longer voters.
    let mut steps = Vec::new();
    let mut l = l;
    for _ in 0..20 {
        l = c.leader(&[1, 2, 3, 4, 5]).await;
        poll("authority", || c.node(l).authority()).await;
        match c.node(l).reconcile(&three).await {
            Ok(Step::InSync) => break,
            Ok(s) => steps.push(s),
            Err(e) => tracing::info!(error = %e, "retrying"),
        }
    }
    assert!(matches!(steps.as_slice(), [Step::ChangedVoters { .. }, Step::Removed(r)] if r == &vec![4, 5]), "{steps:?}");
    let m = c.node(l).metrics().membership_config.membership().clone();
    assert_eq!(m.voter_ids().collect::<BTreeSet<_>>(), BTreeSet::from([1, 2, 3]));
    assert_eq!(m.nodes().count(), 3, "the removed members are gone, not learners");
    // The two removed voters learnt the commit that made them non-voters (they stayed learners
    // until it), so they may leave; the others hold the three.
    for id in 1..=5 {
        poll("every member applied the three voters", || (c.node(id).committed_voters() == BTreeSet::from([1, 2, 3])).then_some(())).await;
    }
    c.shutdown().await;
}
