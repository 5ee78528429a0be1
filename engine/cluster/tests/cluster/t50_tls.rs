use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use warden_cluster::pki::{add_node, init_cluster, PkiError, TlsIdentity};
use warden_cluster::transport::{self, Hello, TlsNetwork, TransportError, PROTOCOL_VERSION};
use warden_cluster::{ClusterError, ClusterNode, ClusterRequest, ClusterResponse, NodeConfig, Peer, RaftId};

use crate::fixtures::{decisions, poll, timing, WAIT};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_cluster_writes_ca_and_node_certificates_with_private_keys_0600() {
    let dir = TempDir::new().unwrap();
    let pki = dir.path().join("pki");
    init_cluster(&pki, "prod", &["n1", "n2"]).unwrap();
    for f in ["ca.pem", "n1.pem", "n2.pem"] {
        assert_eq!(mode(&pki.join(f)), 0o644, "{f}");
    }
    for f in ["ca.key", "n1.key", "n2.key"] {
        assert_eq!(mode(&pki.join(f)), 0o600, "{f}");
    }
    TlsIdentity::load(&pki, "n1").unwrap();

    // A second init must not replace a running cluster's CA.
    let e = init_cluster(&pki, "prod", &["n3"]).unwrap_err();
    assert!(matches!(e, PkiError::Io { .. }), "{e}");
    assert!(!pki.join("n3.pem").exists());
    // Nor leave a partial set behind when only a node's files exist.
    let e = init_cluster(&pki, "prod-2", &["n3", "n1"]);
    assert!(e.is_err());
    assert!(!pki.join("n3.key").exists());
    assert!(matches!(init_cluster(&dir.path().join("x"), "prod", &["../n1"]), Err(PkiError::NodeName(_))));
    assert!(matches!(init_cluster(&dir.path().join("y"), "prod", &["n1", "n1"]), Err(PkiError::Duplicate(_))));

    // A key that others may read is refused.
    std::fs::set_permissions(pki.join("n2.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(TlsIdentity::load(&pki, "n2"), Err(PkiError::KeyMode { mode: 0o644, .. })));
}

/// One member on a real TCP port (127.0.0.1) with its certificate.
struct TlsMember {
    node: ClusterNode,
    /// Shares its state with the network the node's Raft uses.
    net: TlsNetwork,
    addr: String,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), TransportError>>,
}

async fn start_member(id: RaftId, pki: &Path, data: &Path, cluster: &str) -> TlsMember {
    start_member_at(id, pki, data, cluster, "127.0.0.1:0").await
}

async fn start_member_at(id: RaftId, pki: &Path, data: &Path, cluster: &str, addr: &str) -> TlsMember {
    let name = format!("n{id}");
    let identity = TlsIdentity::load(pki, &name).unwrap();
    let (raft, authority) = timing();
    let config = NodeConfig { id, dir: data.join(&name), raft, authority };
    let net = TlsNetwork::new(&identity, cluster).unwrap();
    // A stopped member's Raft tasks release its store shortly after shutdown returns.
    let deadline = tokio::time::Instant::now() + WAIT;
    let node = loop {
        match ClusterNode::start(&config, net.clone()).await {
            Ok(n) => break n,
            Err(ClusterError::Store(e)) if tokio::time::Instant::now() < deadline && e.to_string().contains("already open") => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("start {name}: {e}"),
        }
    };
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let (inbound, cluster, s) = (node.inbound(), cluster.to_owned(), stop.clone());
    let server = tokio::spawn(async move { transport::serve(listener, &identity, cluster, String::new(), inbound, s).await });
    TlsMember { node, net, addr, stop, server }
}

impl TlsMember {
    async fn shutdown(self) {
        self.stop.cancel();
        self.server.await.unwrap().unwrap();
        self.node.shutdown().await.unwrap();
    }
}

/// Members n1, n2, n3 on real TCP ports, formed into a cluster whose leader every member knows
/// and which holds authority over TLS.
async fn form_three(pki: &Path, data: &Path) -> Vec<TlsMember> {
    let mut members = Vec::new();
    for id in 1..=3 {
        members.push(start_member(id, pki, data, "prod").await);
    }
    let peers: BTreeMap<RaftId, Peer> =
        members.iter().map(|m| (m.node.id(), Peer { name: format!("n{}", m.node.id()), addresses: vec![m.addr.clone()] })).collect();
    members[0].node.initialize(peers).await.unwrap();
    let leader = poll("a leader known to all", || {
        let l = members[0].node.metrics().current_leader?;
        members.iter().all(|m| m.node.metrics().current_leader == Some(l)).then_some(l)
    })
    .await;
    let l = members.iter().find(|m| m.node.id() == leader).unwrap();
    poll("the leader's authority over TLS", || l.node.authority()).await;
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_over_mutual_tls_elect_and_replicate() {
    crate::fixtures::init_tracing();
    let dir = TempDir::new().unwrap();
    let pki = dir.path().join("pki");
    init_cluster(&pki, "prod", &["n1", "n2", "n3"]).unwrap();

    tracing::info!("--- three members on real TCP ports with mutual TLS form a cluster");
    let mut members = form_three(&pki, dir.path()).await;
    let leader = poll("a leader", || members[0].node.metrics().current_leader).await;
    let l = members.iter().find(|m| m.node.id() == leader).unwrap();

    tracing::info!("--- decisions committed through the leader reach every member");
    let r = l.node.propose(ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("n1", 1) }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 1 });
    for m in &members {
        let mut rx = m.node.state();
        tokio::time::timeout(WAIT, rx.wait_for(|s| s.revision == 1 && s.decisions == decisions("n1", 1))).await.unwrap().unwrap();
    }

    tracing::info!("--- a proposal submitted on a follower travels to the leader over TLS and is answered after commit");
    let f = members.iter().find(|m| m.node.id() != leader).unwrap();
    let via = TlsNetwork::new(&TlsIdentity::load(&pki, &format!("n{}", f.node.id())).unwrap(), "prod").unwrap();
    let r = f.node.submit(&via, ClusterRequest::SetConfigVersion { config_version: 2 }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 2 });

    tracing::info!("--- a follower restarts on its address; the leader's kept connections to it are stale and replaced");
    let i = members.iter().position(|m| m.node.id() != leader).unwrap();
    let f = members.remove(i);
    let (fid, faddr) = (f.node.id(), f.addr.clone());
    f.shutdown().await;
    let l = members.iter().find(|m| m.node.id() == leader).unwrap();
    let r = l.node.propose(ClusterRequest::SetDecisions { config_version: 2, decisions: decisions("n1", 2) }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 3 });
    // Its port was freed a moment ago; only another process taking that ephemeral port in
    // between could fail this bind.
    members.push(start_member_at(fid, &pki, dir.path(), "prod", &faddr).await);
    let mut rx = members.last().unwrap().node.state();
    tokio::time::timeout(WAIT, rx.wait_for(|s| s.revision == 3)).await.expect("restarted follower catches up").unwrap();
    for m in members {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_of_another_cluster_protocol_or_timing_is_refused() {
    crate::fixtures::init_tracing();
    let dir = TempDir::new().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    init_cluster(&ours, "prod", &["n1", "n2"]).unwrap();
    // Same cluster name, same node names, another CA: only the CA tells them apart.
    init_cluster(&theirs, "prod", &["n1", "n2"]).unwrap();
    let server = start_member(1, &ours, dir.path(), "prod").await;
    let hello = Hello { protocol: PROTOCOL_VERSION, cluster: "prod".into(), node: "n2".into(), timing: String::new() };
    let connector = |pki: &Path| TlsConnector::from(TlsIdentity::load(pki, "n2").unwrap().client_config().unwrap());

    tracing::info!("--- a member of our cluster is welcome");
    transport::connect(&connector(&ours), &server.addr, "n1", &hello).await.expect("our own member connects");

    tracing::info!("--- a node whose certificate another CA signed is refused by the server");
    let e = transport::connect(&connector(&theirs), &server.addr, "n1", &hello).await.unwrap_err();
    assert!(matches!(e, TransportError::Io(_)), "refused in the TLS handshake: {e}");

    tracing::info!("--- and a server of another cluster is refused by our client");
    let other = start_member(1, &theirs, &dir.path().join("other"), "prod").await;
    let e = transport::connect(&connector(&ours), &other.addr, "n1", &hello).await.unwrap_err();
    assert!(matches!(e, TransportError::Io(_)), "{e}");

    tracing::info!("--- a certificate for another node name than the one dialled is refused");
    let e = transport::connect(&connector(&ours), &server.addr, "n2", &hello).await.unwrap_err();
    assert!(matches!(e, TransportError::Io(_)), "{e}");

    tracing::info!("--- a member claiming to be another member is refused at the hello");
    let e = transport::connect(&connector(&ours), &server.addr, "n1", &Hello { node: "n1".into(), ..hello.clone() }).await.unwrap_err();
    assert!(matches!(e, TransportError::Refused(ref r) if r.contains("not node n1's")), "{e}");

    tracing::info!("--- another protocol version or cluster name is refused at the hello");
    let e = transport::connect(&connector(&ours), &server.addr, "n1", &Hello { protocol: PROTOCOL_VERSION + 1, ..hello.clone() })
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::Refused(ref r) if r.contains("protocol version")), "{e}");
    let e =
        transport::connect(&connector(&ours), &server.addr, "n1", &Hello { cluster: "test".into(), ..hello.clone() }).await.unwrap_err();
    assert!(matches!(e, TransportError::Refused(ref r) if r.contains("cluster")), "{e}");

    tracing::info!("--- so is other timing (another lost_after: authority counts on every voter's)");
    let e = transport::connect(&connector(&ours), &server.addr, "n1", &Hello { timing: "raft 70/280-560 ms".into(), ..hello.clone() })
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::Refused(ref r) if r.contains("timing") && r.contains("lost_after")), "{e}");

    server.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn frames_over_the_limit_are_refused_before_reading_them() {
    let (mut a, mut b) = tokio::io::duplex(64);
    use tokio::io::AsyncWriteExt;
    a.write_u32(transport::MAX_FRAME + 1).await.unwrap();
    let e = transport::read_frame::<Hello, _>(&mut b).await.unwrap_err();
    assert!(matches!(e, TransportError::TooLarge(_)), "{e}");

    let hello = Hello { protocol: 1, cluster: "c".into(), node: "n".into(), timing: String::new() };
    transport::write_frame(&mut a, &hello).await.unwrap();
    assert_eq!(transport::read_frame::<Hello, _>(&mut b).await.unwrap(), hello);
}

/// A peer's addresses are its paths: when the first is broken the other one carries the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_reached_over_its_second_path_when_the_first_is_broken() {
    crate::fixtures::init_tracing();
    let dir = TempDir::new().unwrap();
    let pki = dir.path().join("pki");
    init_cluster(&pki, "prod", &["n1", "n2", "n3"]).unwrap();

    // A broken path: it accepts TCP and drops it at once (a listener kept open, so no other
    // process can take its port meanwhile).
    let broken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broken_addr = broken.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let breaker = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = s.cancelled() => return,
                r = broken.accept() => drop(r),
            }
        }
    });

    let mut members = Vec::new();
    for id in 1..=3 {
        members.push(start_member(id, &pki, dir.path(), "prod").await);
    }
    let peers: BTreeMap<RaftId, Peer> = members
        .iter()
        .map(|m| (m.node.id(), Peer { name: format!("n{}", m.node.id()), addresses: vec![broken_addr.clone(), m.addr.clone()] }))
        .collect();
    members[0].node.initialize(peers).await.unwrap();

    tracing::info!("--- every first path is broken: election and replication go over the second");
    let leader = poll("a leader known to all", || {
        let l = members[0].node.metrics().current_leader?;
        members.iter().all(|m| m.node.metrics().current_leader == Some(l)).then_some(l)
    })
    .await;
    let l = members.iter().find(|m| m.node.id() == leader).unwrap();
    let r = l.node.propose(ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("n2", 1) }).await.unwrap();
    assert_eq!(r, ClusterResponse::Applied { revision: 1 });
    for m in &members {
        let mut rx = m.node.state();
        tokio::time::timeout(WAIT, rx.wait_for(|s| s.revision == 1)).await.unwrap().unwrap();
    }

    tracing::info!("--- the leader's path status: first paths down with their error, second paths up");
    let links = l.net.links();
    for f in members.iter().filter(|m| m.node.id() != leader) {
        let name = format!("n{}", f.node.id());
        let link = &links[&name];
        assert!(link.up, "{name}: {link:?}");
        let first = link.paths.iter().find(|p| p.addr == broken_addr).expect("first path tried");
        assert!(!first.up && first.last_error.is_some() && first.failures > 0, "{first:?}");
        let second = link.paths.iter().find(|p| p.addr == f.addr).expect("second path used");
        assert!(second.up && second.rtt.is_some(), "{second:?}");
    }
    stop.cancel();
    breaker.await.unwrap();
    for m in members {
        m.shutdown().await;
    }
}

/// A node added later gets its certificate from the cluster's CA (`warden cluster add-node`)
/// and is accepted by the members made at `init` as a learner that replicates over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certified_later_joins_over_mutual_tls() {
    crate::fixtures::init_tracing();
    let dir = TempDir::new().unwrap();
    let pki = dir.path().join("pki");
    init_cluster(&pki, "prod", &["n1", "n2", "n3"]).unwrap();
    tracing::info!("--- the wrong cluster name, or a node that has files, is refused and writes nothing");
    let e = add_node(&pki, "other", "n4").unwrap_err();
    assert!(e.to_string().contains("not the CA of cluster \"other\""), "{e}");
    assert!(!pki.join("n4.pem").exists() && !pki.join("n4.key").exists());
    assert!(add_node(&pki, "prod", "n2").is_err());
    add_node(&pki, "prod", "n4").unwrap();
    assert_eq!(mode(&pki.join("n4.key")), 0o600);

    let members = form_three(&pki, dir.path()).await;
    let leader = poll("a leader", || members[0].node.metrics().current_leader).await;
    let l = members.iter().find(|m| m.node.id() == leader).unwrap();
    l.node.propose(ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("n1", 1) }).await.unwrap();

    tracing::info!("--- n4, certified after init, joins as a learner and gets the log");
    let n4 = start_member(4, &pki, dir.path(), "prod").await;
    l.node.add_learner(4, Peer { name: "n4".into(), addresses: vec![n4.addr.clone()] }).await.unwrap();
    let mut rx = n4.node.state();
    tokio::time::timeout(WAIT, rx.wait_for(|s| s.revision == 1)).await.expect("the new node has the log").unwrap();
    n4.shutdown().await;
    for m in members {
        m.shutdown().await;
    }
}
