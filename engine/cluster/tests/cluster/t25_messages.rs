//! App messages and liveness over the in-memory router: they take the same links as Raft and
//! obey the same faults, but a node silent after a restart still answers them.

use std::time::Duration;

use tokio::time::Instant;
use warden_cluster::router::ROUTER_PATH;
use warden_cluster::{ClusterRequest, ClusterResponse, Envelope, Messenger, SendError};

use crate::fixtures::{poll, TestCluster, LIVENESS, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_messages_obey_a_one_way_cut_and_name_the_sender_by_its_link() {
    let mut c = TestCluster::new(&[1, 2, 3]).await;
    c.leader(&[1, 2, 3]).await;
    let mut inbox2 = c.node_mut(2).take_messages().unwrap();
    let mut inbox1 = c.node_mut(1).take_messages().unwrap();
    let (net1, net2) = (c.router.network(1), c.router.network(2));

    tracing::info!("--- delivered, with the sender named by the link it came over");
    net1.send(2, &c.peer(2), serde_json::json!({"seq": 1})).await.unwrap();
    let m = tokio::time::timeout(WAIT, inbox2.recv()).await.unwrap().unwrap();
    assert_eq!(m, Envelope { from: "n1".into(), body: serde_json::json!({"seq": 1}) });

    tracing::info!("--- cut n1 → n2: n1's message is lost and n1 is told so");
    c.router.cut(1, 2);
    let e = net1.send(2, &c.peer(2), serde_json::json!({"seq": 2})).await.unwrap_err();
    assert!(matches!(e, SendError::Undelivered { ref peer, .. } if peer == "n2"), "{e}");
    assert!(inbox2.try_recv().is_err(), "nothing crossed the cut");

    tracing::info!("--- n2's message to n1 arrives, but its acknowledgement crosses the cut: n2 sees an error");
    let e = net2.send(1, &c.peer(1), serde_json::json!({"seq": 3})).await.unwrap_err();
    assert!(matches!(e, SendError::Undelivered { ref peer, .. } if peer == "n1"), "{e}");
    let m = tokio::time::timeout(WAIT, inbox1.recv()).await.unwrap().unwrap();
    assert_eq!(m, Envelope { from: "n2".into(), body: serde_json::json!({"seq": 3}) }, "delivered although unacknowledged");

    tracing::info!("--- healed: both ways again");
    c.router.heal();
    net2.send(1, &c.peer(1), serde_json::json!({"seq": 4})).await.unwrap();
    net1.send(2, &c.peer(2), serde_json::json!({"seq": 5})).await.unwrap();
    assert_eq!(tokio::time::timeout(WAIT, inbox1.recv()).await.unwrap().unwrap().body, serde_json::json!({"seq": 4}));
    assert_eq!(tokio::time::timeout(WAIT, inbox2.recv()).await.unwrap().unwrap().body, serde_json::json!({"seq": 5}));
    c.router.heal();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_show_an_isolated_peer_down_and_a_restarted_one_answers_pings_while_silent() {
    let mut c = TestCluster::new(&[1, 2, 3]).await;
    c.leader(&[1, 2, 3]).await;
    let links = c.node(1).links();
    poll("n1 reaches n2 and n3", || {
        let l = links.borrow();
        (l.len() == 2 && l.values().all(|p| p.up && p.paths.len() == 1 && p.paths[0].addr == ROUTER_PATH)).then_some(())
    })
    .await;

    tracing::info!("--- n3 isolated: n1 sees it down within dead_after + interval, n2 still up");
    let cut = Instant::now();
    c.router.isolate(3);
    poll("n3 down", || (!links.borrow()["n3"].up).then_some(())).await;
    assert!(cut.elapsed() <= LIVENESS.dead_after + LIVENESS.interval + Duration::from_millis(400), "{:?}", cut.elapsed());
    assert!(links.borrow()["n2"].up);
    let n3 = &c.node(1).link_figures()["n3"].paths[0];
    assert!(n3.failures > 0 && n3.last_error.is_some(), "{n3:?}");

    tracing::info!("--- healed: up again");
    c.router.heal();
    poll("n3 up", || links.borrow()["n3"].up.then_some(())).await;

    tracing::info!("--- n3 restarts: silent to Raft, yet it answers pings (up) and takes messages");
    c.stop(3).await;
    poll("n3 down while stopped", || (!links.borrow()["n3"].up).then_some(())).await;
    c.start(3).await;
    assert!(c.node(3).inbound().is_silent(), "a restarted node keeps its Raft silence");
    let mut inbox3 = c.node_mut(3).take_messages().unwrap();
    poll("n3 up while silent", || links.borrow()["n3"].up.then_some(())).await;
    c.router.network(1).send(3, &c.peer(3), serde_json::json!("hello")).await.expect("accepted while silent");
    let m = tokio::time::timeout(WAIT, inbox3.recv()).await.unwrap().unwrap();
    assert_eq!(m, Envelope { from: "n1".into(), body: serde_json::json!("hello") });
    assert!(c.node(3).inbound().is_silent(), "the test ran within the silence");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_two_router_paths_one_silent_path_keeps_the_peer_and_raft_going() {
    let mut c = TestCluster::with_paths(&[1, 2, 3], &["a", "b"]).await;
    let leader = c.leader(&[1, 2, 3]).await;
    let f = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let fname = format!("n{f}");
    let mut inbox = c.node_mut(f).take_messages().unwrap();
    let links = c.node(leader).links();
    let paths_up = |l: &warden_cluster::Links| -> Vec<(String, bool)> {
        l.get(&fname).map(|p| p.paths.iter().map(|s| (s.addr.clone(), s.up)).collect()).unwrap_or_default()
    };
    poll("both paths to the follower up", || (paths_up(&links.borrow()) == [("a".into(), true), ("b".into(), true)]).then_some(())).await;

    tracing::info!("--- a proposal forwarded over both paths is committed once");
    let via = c.router.network(f);
    let r = c.node(f).submit(&via, ClusterRequest::SetConfigVersion { config_version: 1 }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 1 });
    let r = c.node(leader).propose(ClusterRequest::SetConfigVersion { config_version: 1 }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 2 }, "no second commit of the forwarded proposal");

    tracing::info!("--- path b between the leader and {fname} silent both ways: the peer stays up over path a");
    c.router.cut_path(leader, f, "b");
    c.router.cut_path(f, leader, "b");
    poll("path b down", || (paths_up(&links.borrow()) == [("a".into(), true), ("b".into(), false)]).then_some(())).await;
    assert!(links.borrow()[&fname].up);

    tracing::info!("--- Raft commits over path a; messages arrive over path a");
    let r = c.node(leader).propose(ClusterRequest::SetConfigVersion { config_version: 2 }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 3 });
    c.wait_state(f, "the commit over path a", |s| s.revision == 3).await;
    c.router.network(leader).send(f, &c.peer(f), serde_json::json!({"seq": 1})).await.unwrap();
    assert_eq!(tokio::time::timeout(WAIT, inbox.recv()).await.unwrap().unwrap().body, serde_json::json!({"seq": 1}));

    tracing::info!("--- path a silent too: {fname} is lost and messages to it fail");
    let cut = Instant::now();
    c.router.cut_path(leader, f, "a");
    c.router.cut_path(f, leader, "a");
    poll("the follower down", || links.borrow().get(&fname).is_some_and(|p| !p.up).then_some(())).await;
    assert!(cut.elapsed() <= LIVENESS.dead_after + LIVENESS.interval + Duration::from_millis(400), "{:?}", cut.elapsed());
    let e = c.router.network(leader).send(f, &c.peer(f), serde_json::json!({"seq": 2})).await.unwrap_err();
    assert!(matches!(e, SendError::Undelivered { .. }), "{e}");

    tracing::info!("--- healed: both paths up again");
    c.router.heal();
    poll("both paths back", || (paths_up(&links.borrow()) == [("a".into(), true), ("b".into(), true)]).then_some(())).await;
    c.shutdown().await;
}
