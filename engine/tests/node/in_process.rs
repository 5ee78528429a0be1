//! The in-process fixture: several nodes in one test process (the layout cluster tests use).

use std::time::Duration;

use crate::inproc::InProc;
use crate::node::{pid_resource, root, LONG};

fn config(cluster: &str, node: &str, dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    format!(
        "version = 1\n[cluster]\nname = \"{cluster}\"\n\n[[nodes]]\nname = \"{node}\"\n\n[[plugins]]\nname = \"example-rust\"\npath = \"{}\"\n{}{}\n[[groups]]\nname = \"app\"\nresources = [\"a\", \"b\"]\n",
        root().join("target/plugins/example-rust.wasm").display(),
        pid_resource(dir, "a", "300ms"),
        pid_resource(dir, "b", "300ms"),
    )
}

fn alive(pidfile: &std::path::Path) -> bool {
    let Some(pid) = std::fs::read_to_string(pidfile).ok().and_then(|p| p.trim().parse::<u32>().ok()) else { return false };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    matches!(stat.rsplit(')').next().and_then(|r| r.trim().chars().next()), Some(c) if c != 'Z' && c != 'X')
}

/// Two nodes in one process keep to themselves: each runs its own group in its own state, a
/// second node on a running node's state directory is refused, and stopping one leaves the
/// other's services running.
#[test]
fn nodes_in_one_process_are_isolated() {
    let mut c = InProc::new();
    let (d1, d2) = (c.path("svc1"), c.path("svc2"));
    let n1 = c.start("n1", &config("one", "n1", &d1));
    let n2 = c.start("n2", &config("two", "n2", &d2));
    assert!(c.wait(LONG, |c| c.group_state(n1, "app") == "started" && c.group_state(n2, "app") == "started"));
    // A node on n1's state directory (same config, other socket) is refused while n1 runs.
    let dup = warden::node::NodeOptions {
        config: c.nodes[n1].config.clone(),
        node: Some("n1".into()),
        state_dir: Some(c.nodes[n1].state.clone()),
        socket: Some(c.base().join("dup.sock")),
        cache: Some(None),
        ..Default::default()
    };
    let err = c.rt.block_on(async {
        let node = warden::node::Node::load(&dup).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), node.run(std::future::pending())).await.unwrap().unwrap_err()
    });
    assert!(err.to_string().contains("is locked by another `warden node run`"), "{err}");
    c.stop(n1);
    assert!(!alive(&d1.join("a.pid")) && !alive(&d1.join("b.pid")), "n1 stopped its group");
    assert!(alive(&d2.join("a.pid")) && alive(&d2.join("b.pid")), "n2's services are untouched");
    assert_eq!(c.group_state(n2, "app"), "started");
    c.stop(n2);
    assert!(!alive(&d2.join("a.pid")));
}
