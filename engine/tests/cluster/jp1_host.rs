//! The JP1 logical host (virtual IP, shared disk, JP1/Base, JP1/AJS3 Manager: the shape of
//! `examples/jp1-cluster.toml`) on two members and a witness.

use crate::cluster::{TestCluster, WAIT};

/// Group `app` started on `owner` as `via` reports it, with everything really there: the
/// virtual IP, the shared disk mounted, JP1's daemons running.
fn jp1_on(c: &TestCluster, via: &str, owner: &str) -> bool {
    c.group(via, "app").is_some_and(|(state, o, _)| state == "started" && o.as_deref() == Some(owner))
        && c.has_vip(owner)
        && c.has_disk(owner)
        && c.jp1_daemons(owner) > 0
}

fn nothing_on(c: &TestCluster, m: &str) -> bool {
    !c.has_vip(m) && !c.has_disk(m) && c.jp1_daemons(m) == 0
}

#[test]
fn the_jp1_logical_host_runs_on_one_member_and_switches_over_on_command() {
    let mut c = TestCluster::jp1();
    let s1 = c.jp1_sampler();
    c.start_all();
    c.wait("the logical host on a", WAIT, |c| jp1_on(c, "w", "a"));
    assert!(nothing_on(&c, "b"), "{}", c.logs());
    assert!(c.vip_answers(), "{}", c.logs());

    let o = c.cli("b", &["group", "move", "app", "--to", "b"]);
    assert!(o.status.success(), "{o:?}\n{}", c.logs());
    c.wait("the logical host on b", WAIT, |c| jp1_on(c, "a", "b"));
    assert!(nothing_on(&c, "a"), "{}", c.logs());
    assert!(c.vip_answers(), "{}", c.logs());

    // The owner's daemon killed (-9): JP1 keeps running there (a crash of Warden stops
    // nothing and starts nothing elsewhere); the restarted daemon adopts it.
    let daemons = c.jp1_daemons("b");
    c.signal("b", "-KILL");
    c.wait_exit("b", WAIT).expect("b's daemon exited");
    c.wait("b seen lost", WAIT, |c| {
        c.status("a").is_some_and(|st| st["nodes"].as_array().unwrap().iter().any(|n| n["name"] == "b" && n["up"] == false))
    });
    assert_eq!(c.jp1_daemons("b"), daemons, "JP1 on b must be left alone\n{}", c.logs());
    assert!(nothing_on(&c, "a"), "started on a while b may run it\n{}", c.logs());
    c.start("b");
    c.wait("the logical host adopted on b", WAIT, |c| jp1_on(c, "a", "b"));

    // Both paths of the owner cut: it stops the logical host top down when its lease runs out,
    // and a does not start it without a fence confirmation; healed, it runs once.
    c.cut("b", 1);
    c.cut("b", 2);
    c.wait("b stopped the logical host", WAIT, |c| nothing_on(c, "b"));
    assert!(nothing_on(&c, "a"), "{}", c.logs());
    c.heal("b");
    c.wait("the logical host running again on its owner b", WAIT, |c| jp1_on(c, "w", "b"));
    s1.check();
}
