//! Every message over every path, and liveness per path, over real TCP on loopback with mutual
//! TLS. Each member is reached over two paths, each a small proxy (one on 127.0.0.1, one on
//! 127.0.0.2) in front of its listener; a test pauses a proxy so that bytes stop flowing both
//! ways: a silent path, not a refused one (as a pulled cable, not a closed port).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use warden_cluster::pki::{init_cluster, TlsIdentity};
use warden_cluster::transport::{self, TlsNetwork, TransportError};
use warden_cluster::{
    ClusterNode, ClusterRequest, ClusterResponse, Envelope, Links, LivenessConfig, Messenger, NodeConfig, Peer, RaftId, Rejected, SendError,
};

use crate::fixtures::{decisions, poll, timing, WAIT};

/// Quicker than the defaults, so that the tests are short.
const LIVENESS: LivenessConfig = LivenessConfig { interval: Duration::from_millis(100), dead_after: Duration::from_millis(500) };

/// A TCP forwarder that can be paused: while paused it holds every byte, both ways, and new
/// connections get nowhere (accepted, then silent).
struct Proxy {
    addr: String,
    paused: watch::Sender<bool>,
    stop: CancellationToken,
}

impl Proxy {
    async fn start(ip: &str, upstream: String) -> Self {
        let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (paused, _) = watch::channel(false);
        let stop = CancellationToken::new();
        let (p, s) = (paused.clone(), stop.clone());
        tokio::spawn(async move {
            // Dropped on stop: every pump with it.
            let mut pumps = JoinSet::new();
            loop {
                let (client, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => r.unwrap(),
                };
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                let ((cr, cw), (sr, sw)) = (client.into_split(), server.into_split());
                pumps.spawn(pump(cr, sw, p.subscribe()));
                pumps.spawn(pump(sr, cw, p.subscribe()));
            }
        });
        Self { addr, paused, stop }
    }

    fn pause(&self) {
        self.paused.send_replace(true);
    }

    fn resume(&self) {
        self.paused.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut paused: watch::Receiver<bool>) {
    let mut buf = vec![0; 16 << 10];
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just before a pause are held, not delivered.
        if paused.wait_for(|p| !*p).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// One member on a real TCP port with its certificate, reached over two proxied paths.
struct Member {
    node: ClusterNode,
    net: TlsNetwork,
    /// Path a on 127.0.0.1, path b on 127.0.0.2.
    paths: [Proxy; 2],
    stop: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), TransportError>>,
}

impl Member {
    async fn start(id: RaftId, pki: &Path, data: &Path) -> Self {
        let name = format!("n{id}");
        let identity = TlsIdentity::load(pki, &name).unwrap();
        let (raft, authority) = timing();
        let config = NodeConfig { id, dir: data.join(&name), raft, authority };
        let net = TlsNetwork::with_liveness(&identity, "prod", LIVENESS).unwrap();
        let node = ClusterNode::start(&config, net.clone()).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let (inbound, s) = (node.inbound(), stop.clone());
        let server = tokio::spawn(async move { transport::serve(listener, &identity, "prod".into(), String::new(), inbound, s).await });
        let paths = [Proxy::start("127.0.0.1", addr.clone()).await, Proxy::start("127.0.0.2", addr).await];
        Self { node, net, paths, stop, server }
    }

    fn peer(&self) -> Peer {
        Peer { name: format!("n{}", self.node.id()), addresses: self.paths.iter().map(|p| p.addr.clone()).collect() }
    }

    async fn shutdown(self) {
        self.stop.cancel();
        self.server.await.unwrap().unwrap();
        self.net.close();
        self.node.shutdown().await.unwrap();
    }
}

/// Three members, each reachable over two paths, with a leader whose links show all paths up.
async fn three_members(dir: &TempDir) -> (Vec<Member>, RaftId) {
    crate::fixtures::init_tracing();
    let pki = dir.path().join("pki");
    init_cluster(&pki, "prod", &["n1", "n2", "n3"]).unwrap();
    let mut members = Vec::new();
    for id in 1..=3 {
        members.push(Member::start(id, &pki, dir.path()).await);
    }
    let peers: BTreeMap<RaftId, Peer> = members.iter().map(|m| (m.node.id(), m.peer())).collect();
    members[0].node.initialize(peers).await.unwrap();
    let leader = poll("a leader known to all", || {
        let l = members[0].node.metrics().current_leader?;
        members.iter().all(|m| m.node.metrics().current_leader == Some(l)).then_some(l)
    })
    .await;
    for m in &members {
        let links = m.node.links();
        let n = m.node.id();
        poll(&format!("n{n}: both peers up over both paths"), || {
            let l = links.borrow();
            (l.len() == 2 && l.values().all(|p| p.up && p.paths.len() == 2 && p.paths.iter().all(|s| s.up))).then_some(())
        })
        .await;
    }
    (members, leader)
}

fn path_up(links: &Links, peer: &str, addr: &str) -> Option<bool> {
    links.get(peer)?.paths.iter().find(|p| p.addr == addr).map(|p| p.up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_stays_up_while_one_of_its_paths_is_silent_and_is_lost_when_all_are() {
    let dir = TempDir::new().unwrap();
    let (members, leader) = three_members(&dir).await;
    let l = members.iter().find(|m| m.node.id() == leader).unwrap();
    let f = members.iter().find(|m| m.node.id() != leader).unwrap();
    let (fname, [fa, fb]) = (format!("n{}", f.node.id()), &f.paths);
    let links = l.node.links();

    tracing::info!("--- a proposal forwarded over both paths is committed once (the leader drops the second copy)");
    let r = f.node.submit(&f.net, ClusterRequest::SetConfigVersion { config_version: 1 }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 1 });
    let r = l.node.propose(ClusterRequest::SetConfigVersion { config_version: 1 }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 2 }, "no second commit of the forwarded copy in between");

    tracing::info!("--- path b to {fname} goes silent: that path shows down, the peer stays up");
    fb.pause();
    poll("path b down in the leader's links", || (path_up(&links.borrow(), &fname, &fb.addr) == Some(false)).then_some(())).await;
    let now = l.node.link_figures();
    let peer = &now[&fname];
    assert!(peer.up, "one path left: {peer:?}");
    assert_eq!(path_up(&now, &fname, &fa.addr), Some(true), "{peer:?}");
    let b = peer.paths.iter().find(|p| p.addr == fb.addr).unwrap();
    assert!(b.failures > 0 && b.last_error.is_some() && b.since_success.unwrap() >= LIVENESS.dead_after, "{b:?}");

    tracing::info!("--- path b of every member is silent: Raft keeps its leader and commits over path a");
    for m in &members {
        m.paths[1].pause();
    }
    let r = l.node.propose(ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("n1", 1) }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 3 });
    for m in &members {
        let mut rx = m.node.state();
        tokio::time::timeout(WAIT, rx.wait_for(|s| s.decisions == decisions("n1", 1))).await.expect("committed over path a").unwrap();
        assert_eq!(m.node.metrics().current_leader, Some(leader));
    }
    tracing::info!("--- a proposal forwarded from a follower reaches the leader over path a");
    let r = f.node.submit(&f.net, ClusterRequest::SetConfigVersion { config_version: 2 }).await.unwrap();
    assert!(matches!(r, ClusterResponse::Applied { .. }), "{r:?}");
    assert_eq!(l.node.metrics().current_leader, Some(leader));

    tracing::info!("--- both paths to {fname} silent: it is lost within dead_after + interval");
    let silenced = Instant::now();
    fa.pause();
    poll(&format!("{fname} down in the leader's links"), || links.borrow().get(&fname).is_some_and(|p| !p.up).then_some(())).await;
    let took = silenced.elapsed();
    // Slack for a machine shared with other builds; the bound itself is dead_after + interval.
    assert!(took <= LIVENESS.dead_after + LIVENESS.interval + Duration::from_millis(400), "lost after {took:?}");
    let other = members.iter().find(|m| m.node.id() != leader && m.node.id() != f.node.id()).unwrap();
    assert!(links.borrow()[&format!("n{}", other.node.id())].up, "the other follower is still reached");

    tracing::info!("--- path a back: the peer is up again (path b still down), then path b too");
    fa.resume();
    poll(&format!("{fname} up over path a"), || {
        let l = links.borrow();
        (l[&fname].up && path_up(&l, &fname, &fa.addr) == Some(true) && path_up(&l, &fname, &fb.addr) == Some(false)).then_some(())
    })
    .await;
    for m in &members {
        m.paths[1].resume();
    }
    poll("path b back up", || (path_up(&links.borrow(), &fname, &fb.addr) == Some(true)).then_some(())).await;
    for m in members {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_messages_go_over_the_surviving_path_and_fail_when_none_is_left() {
    let dir = TempDir::new().unwrap();
    let (mut members, leader) = three_members(&dir).await;
    let fi = members.iter().position(|m| m.node.id() != leader).unwrap();
    let mut inbox = members[fi].node.take_messages().expect("taken once");
    assert!(members[fi].node.take_messages().is_none());
    let l = members.iter().find(|m| m.node.id() == leader).unwrap();
    let f = &members[fi];
    let (fid, fpeer) = (f.node.id(), f.peer());
    let lname = format!("n{leader}");

    tracing::info!("--- over both paths: the message arrives (once per path), from the leader as TLS authenticated it");
    l.net.send(fid, &fpeer, serde_json::json!({"cmd": "start", "seq": 1})).await.unwrap();
    let got = tokio::time::timeout(WAIT, inbox.recv()).await.unwrap().unwrap();
    assert_eq!(got, Envelope { from: lname.clone(), body: serde_json::json!({"cmd": "start", "seq": 1}) });

    tracing::info!("--- path a to the follower silent: messages go over path b");
    f.paths[0].pause();
    l.net.send(fid, &fpeer, serde_json::json!({"seq": 2})).await.expect("delivered over path b");
    poll_message(&mut inbox, &lname, 2).await;

    tracing::info!("--- both paths silent: the sender gets an error within the message timeout");
    f.paths[1].pause();
    let started = Instant::now();
    let e = l.net.send(fid, &fpeer, serde_json::json!({"seq": 3})).await.unwrap_err();
    assert!(matches!(e, SendError::Undelivered { .. }), "{e}");
    assert!(started.elapsed() <= warden_cluster::MESSAGE_TIMEOUT + Duration::from_millis(500), "{:?}", started.elapsed());

    tracing::info!("--- path b back: delivered again");
    f.paths[1].resume();
    let deadline = Instant::now() + WAIT;
    while l.net.send(fid, &fpeer, serde_json::json!({"seq": 4})).await.is_err() {
        assert!(Instant::now() < deadline, "path b did not come back");
    }
    poll_message(&mut inbox, &lname, 4).await;
    f.paths[0].resume();
    for m in members.drain(..) {
        m.shutdown().await;
    }
}

/// Takes messages until the one with `seq` (earlier ones and duplicates may come first).
async fn poll_message(inbox: &mut mpsc::Receiver<Envelope>, from: &str, seq: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline, inbox.recv()).await.expect("message in time").expect("queue open");
        assert_eq!(m.from, from);
        if m.body["seq"] == seq {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbound_queue_refuses_the_sender_and_the_receiver_keeps_working() {
    crate::fixtures::init_tracing();
    let dir = TempDir::new().unwrap();
    let pki = dir.path().join("pki");
    init_cluster(&pki, "prod", &["n1", "n2"]).unwrap();
    let mut receiver = Member::start(2, &pki, dir.path()).await;
    // Not initialised: app messages need no Raft.
    let mut inbox = receiver.node.take_messages().unwrap();
    let sender = TlsNetwork::new(&TlsIdentity::load(&pki, "n1").unwrap(), "prod").unwrap();
    let to = receiver.peer();

    tracing::info!("--- nobody drains the queue: the sender floods it until it is refused");
    let mut sent = 0u64;
    let e = loop {
        match sender.send(2, &to, serde_json::json!({"seq": sent})).await {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent <= warden_cluster::messenger::INBOX_CAPACITY as u64, "the queue never filled");
    };
    assert_eq!(e, SendError::Rejected { peer: "n2".into(), reason: Rejected::Full });
    assert!(sent >= warden_cluster::messenger::INBOX_CAPACITY as u64 / 2, "each message took at most two places: {sent}");

    tracing::info!("--- the receiver still works: it drains, and new messages are accepted again");
    let first = inbox.recv().await.unwrap();
    assert_eq!(first.from, "n1");
    while inbox.try_recv().is_ok() {}
    sender.send(2, &to, serde_json::json!({"seq": "after"})).await.expect("room again");
    let m = tokio::time::timeout(WAIT, inbox.recv()).await.unwrap().unwrap();
    assert_eq!(m, Envelope { from: "n1".into(), body: serde_json::json!({"seq": "after"}) });
    sender.close();
    receiver.shutdown().await;
}
