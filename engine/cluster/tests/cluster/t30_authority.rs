use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;
use warden_cluster::ClusterRequest;

use crate::fixtures::{decisions, poll, TestCluster, WAIT};

/// The case openraft alone gets wrong: an isolated leader still says "leader".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_still_says_leader_but_loses_authority() {
    let c = TestCluster::new(&[1, 2, 3]).await;
    let old = c.leader(&[1, 2, 3]).await;
    poll("the leader's authority", || c.node(old).authority()).await;
    let others: Vec<_> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();

    tracing::info!("--- cut the leader off: its authority lapses within one window, openraft's view does not");
    let cut_at = Instant::now();
    c.router.isolate(old);
    poll("the isolated leader's authority to lapse", || c.node(old).authority().is_none().then_some(())).await;
    assert!(cut_at.elapsed() <= c.authority.window + Duration::from_millis(500), "lapsed after {:?}", cut_at.elapsed());
    assert_eq!(c.node(old).metrics().state, ServerState::Leader, "openraft still calls the isolated node leader");

    tracing::info!("--- the others elect a new leader; the old one has no authority by then, though openraft still says leader");
    let new = c.leader(&others).await;
    assert_ne!(new, old);
    assert_eq!(c.node(old).authority(), None);
    assert_eq!(c.node(old).metrics().state, ServerState::Leader, "two openraft leaders at once: why authority is needed");
    assert!(c.node(new).metrics().vote.leader_id().get_term() > c.node(old).metrics().vote.leader_id().get_term());
    poll("the new leader's authority", || c.node(new).authority()).await;

    tracing::info!("--- the old leader cannot commit: its proposal fails once it rejoins, and nothing of it is applied");
    let pending = {
        let raft = c.node(old).raft().clone();
        tokio::spawn(
            async move { raft.client_write(ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("old", 9) }).await },
        )
    };
    c.node(new).propose(ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("new", 2) }).await.unwrap();
    c.router.heal();
    let r = tokio::time::timeout(WAIT, pending).await.expect("the stale proposal is answered").unwrap();
    assert!(r.is_err(), "a deposed leader's proposal must not commit: {r:?}");
    assert_eq!(c.leader(&[1, 2, 3]).await, new);
    for id in [1, 2, 3] {
        let s = c.wait_state(id, "the new leader's decisions", |s| s.revision == 1).await;
        assert_eq!(s.decisions, decisions("new", 2));
    }
    assert_eq!(c.node(old).authority(), None);
    c.shutdown().await;
}

/// A one-way cut: the followers still reach the leader, but it cannot reach them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_whose_outgoing_links_are_cut_loses_authority() {
    let c = TestCluster::new(&[1, 2, 3]).await;
    let old = c.leader(&[1, 2, 3]).await;
    poll("the leader's authority", || c.node(old).authority()).await;
    let others: Vec<_> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();

    tracing::info!("--- cut leader → followers only");
    for &f in &others {
        c.router.cut(old, f);
    }
    poll("authority to lapse", || c.node(old).authority().is_none().then_some(())).await;
    let new = c.leader(&others).await;
    assert_ne!(new, old);
    assert_eq!(c.node(old).authority(), None);
    c.router.heal();
    assert_eq!(c.leader(&[1, 2, 3]).await, new);
    c.shutdown().await;
}

/// Delays longer than the window: each answer arrives, but too late to grant anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_whose_acknowledgements_arrive_late_loses_authority() {
    let c = TestCluster::new(&[1, 2, 3]).await;
    let l = c.leader(&[1, 2, 3]).await;
    poll("the leader's authority", || c.node(l).authority()).await;

    tracing::info!("--- delay the followers' answers beyond the window");
    for f in [1, 2, 3].into_iter().filter(|&id| id != l) {
        c.router.delay(f, l, c.authority.window + Duration::from_millis(200));
    }
    poll("authority to lapse", || c.node(l).authority().is_none().then_some(())).await;

    tracing::info!("--- remove the delay: authority comes back (to whoever leads then)");
    c.router.heal();
    let l = c.leader(&[1, 2, 3]).await;
    poll("authority again", || c.node(l).authority()).await;
    c.shutdown().await;
}
