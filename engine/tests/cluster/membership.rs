//! Membership changes on a running cluster: `warden node add|remove`, with the S1 sampler and
//! the ledger watching the group throughout.

use crate::cluster::{TestCluster, WAIT};

/// Status from `via` shows group `app` started on `owner`, its services run there and its
/// virtual IP is there.
fn started_on(c: &TestCluster, via: &str, owner: &str) -> bool {
    c.group(via, "app").is_some_and(|(state, o, _)| state == "started" && o.as_deref() == Some(owner))
        && c.service(owner, "app-1").is_some()
        && c.service(owner, "app-2").is_some()
        && c.has_vip(owner)
}

/// Each member's Raft role as `via`'s status shows it (`voter`, `learner`, `joining`), and
/// whether it is up.
fn raft_roles(c: &TestCluster, via: &str) -> Vec<(String, String, bool)> {
    let Some(st) = c.status(via) else { return Vec::new() };
    let up = |name: &str| st["nodes"].as_array().unwrap().iter().any(|n| n["name"] == name && n["up"] == true);
    st["cluster_info"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap().to_string();
            (name.clone(), m["raft"].as_str().unwrap_or_default().to_string(), up(&name))
        })
        .collect()
}

/// The new machine `c`: its certificate from the cluster's CA, and the config with it (allowed
/// to run the group) written to a file; returns (the config before, the config with `c`, its file).
fn machine_c(c: &TestCluster) -> (String, String, std::path::PathBuf) {
    let old = std::fs::read_to_string(&c.config).unwrap();
    let pki = c.dir.path().join("pki");
    let o = c.cli("a", &["cluster", "add-node", "--dir", pki.to_str().unwrap(), "--name", "t", "c"]);
    assert!(o.status.success(), "{o:?}");
    let with_c = old
        .replacen("[[plugins]]", &format!("{}[[plugins]]", c.node_entry("c")), 1)
        .replace("priority = [\"a\", \"b\"]", "priority = [\"a\", \"b\", \"c\"]");
    let file = c.dir.path().join("with-c.toml");
    std::fs::write(&file, &with_c).unwrap();
    (old, with_c, file)
}

fn expect_err(o: &std::process::Output, what: &str, c: &TestCluster) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(what), "expected an error with {what:?}: {o:?}\n{}", c.logs());
}

#[test]
fn a_member_added_to_a_running_cluster_learns_runs_the_group_and_is_removed_and_nothing_runs_twice() {
    let mut c = TestCluster::with_spare();
    let s1 = c.sampler(&["app-1", "app-2"]);
    c.start_all();
    c.wait("group app started on a", WAIT, |c| started_on(c, "w", "a"));
    let (_, _, epoch) = c.group("w", "app").unwrap();
    let pid = c.service("a", "app-1").unwrap();
    let (old, with_c, file) = machine_c(&c);
    let file = file.to_str().unwrap();

    // `config apply` does not change members.
    expect_err(&c.cli_on("a", &["config", "apply", file, "--node", "a"]), "warden node add", &c);
    // Nor does `node add` while a voter is cut off (not the leader: the test is about health).
    let leader = c.leader("a").expect("a leader");
    let cut = if leader == "w" { "b" } else { "w" };
    c.cut(cut, 1);
    c.cut(cut, 2);
    let o = c.cli_on("a", &["node", "add", "c", file, "--check-as", "a"]);
    expect_err(&o, "every voter is healthy", &c);
    c.heal(cut);
    // (The cut member's campaigns may have replaced the leader meanwhile.)
    c.wait("every member reachable again, under a leader with a quorum", WAIT, |c| {
        c.status("a")
            .is_some_and(|st| st["cluster_info"]["quorum"] == true && st["nodes"].as_array().unwrap().iter().all(|n| n["up"] == true))
    });
    assert_eq!(std::fs::read_to_string(&c.config).unwrap(), old, "a refused change writes nothing");

    // Added: every member reloads the new config in turn; nothing that runs is touched. (The
    // healed member may still cost an election, openraft 0.9 has no pre-vote: the operator's
    // answer then says so, and trying again is safe.)
    let o = retried(&c, "b", &["node", "add", "c", file, "--check-as", "b"]);
    assert!(o.status.success(), "{o:?}\n{}", c.logs());
    assert!(String::from_utf8_lossy(&o.stdout).contains("--join"), "{o:?}");
    // Not started yet: nothing waits for it, nothing fences it; the group stays. (Read once the
    // reloads are over: a leader that restarted in place reports the group only after its
    // rejoin window and probes, a moment later.)
    c.wait("every member reloaded with c, the group still on a", WAIT, |c| {
        ["a", "b", "w"].iter().all(|m| c.log(m).contains("restarting in place"))
            && raft_roles(c, "a").iter().any(|(n, ..)| n == "c")
            && raft_roles(c, "a").iter().filter(|(n, ..)| n != "c").all(|(_, _, up)| *up)
            && started_on(c, "w", "a")
    });
    assert_eq!(std::fs::read_to_string(&c.config).unwrap(), with_c);
    assert_eq!(c.service("a", "app-1"), Some(pid), "app-1 was restarted by the reloads\n{}", c.logs());

    // `c` joins: a fourth member is a learner (3 voters stay).
    c.start_joining("c");
    c.wait("c up as a learner", WAIT, |c| {
        let roles = raft_roles(c, "w");
        roles.iter().any(|(n, r, up)| n == "c" && r == "learner" && *up)
            && roles.iter().filter(|(n, ..)| n != "c").all(|(_, r, _)| r == "voter")
    });
    let roles = raft_roles(&c, "c");
    assert!(roles.iter().any(|(n, r, _)| n == "c" && r == "learner"), "c's own status: {roles:?}\n{}", c.logs());

    // The learner runs the group when it is moved there.
    let o = c.cli("c", &["group", "move", "app", "--to", "c"]);
    assert!(o.status.success(), "{o:?}\n{}", c.logs());
    c.wait("group app started on c", WAIT, |c| started_on(c, "w", "c"));
    assert!(c.service("a", "app-1").is_none() && !c.has_vip("a"), "{}", c.logs());
    let (_, _, moved) = c.group("w", "app").unwrap();
    assert!(moved > epoch);

    // Removing it: refused while it runs the group, and while it is up and not in standby.
    let file2 = c.dir.path().join("without-c.toml");
    std::fs::write(&file2, &old).unwrap();
    let file2 = file2.to_str().unwrap();
    expect_err(&c.cli_on("a", &["node", "remove", "c", file2, "--check-as", "a"]), "may still run something", &c);
    let o = c.cli("a", &["node", "standby", "c"]);
    assert!(o.status.success(), "{o:?}");
    c.wait("group app moved away from c", WAIT, |c| started_on(c, "w", "a") || started_on(c, "w", "b"));
    let o = c.cli_on("a", &["node", "remove", "c", file2, "--check-as", "a"]);
    assert!(o.status.success(), "{o:?}\n{}", c.logs());
    // `c` stops voting (it never did), leaves and exits; the others reload the file without it.
    let status = c.wait_exit("c", WAIT).expect("c exits once removed");
    assert!(status.success(), "{status:?}\n{}", c.log("c"));
    assert!(c.log("c").contains("removed from the cluster"), "{}", c.log("c"));
    c.wait("the members are a, b and w again, all voters", WAIT, |c| {
        let roles = raft_roles(c, "a");
        roles.len() == 3 && roles.iter().all(|(_, r, up)| r == "voter" && *up)
    });
    for m in ["a", "b", "w"] {
        assert!(c.is_running(m), "{m} exited\n{}", c.log(m));
    }
    assert_eq!(std::fs::read_to_string(&c.config).unwrap(), old);
    assert!(started_on(&c, "w", "a") || started_on(&c, "w", "b"), "{}", c.logs());
    s1.check();
}

/// The operator's command, tried again while the answer is a leader change or a voter not yet
/// healthy (openraft 0.9 has no pre-vote: a member restarting in place can cost an election),
/// as an operator would.
fn retried(c: &TestCluster, via: &str, args: &[&str]) -> std::process::Output {
    let start = std::time::Instant::now();
    loop {
        let o = c.cli_on(via, args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        let retry = err.contains("every voter is healthy") || err.contains("leader");
        if o.status.success() || !retry || start.elapsed() > WAIT {
            return o;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The member removed is the one leading: it commits the membership without itself, hands over
/// (a learner becomes the third voter), leaves and exits; the group, moved off it by its standby,
/// keeps running once, and the others run on the config without it.
#[test]
fn the_leading_member_removed_hands_over_and_exits_and_nothing_runs_twice() {
    let mut c = TestCluster::with_spare();
    let s1 = c.sampler(&["app-1", "app-2"]);
    c.start_all();
    c.wait("group app started on a", WAIT, |c| started_on(c, "w", "a"));
    let (_, with_c, file) = machine_c(&c);
    let o = retried(&c, "a", &["node", "add", "c", file.to_str().unwrap(), "--check-as", "a"]);
    assert!(o.status.success(), "{o:?}\n{}", c.logs());
    c.wait("every member reloaded with c", WAIT, |c| {
        ["a", "b", "w"].iter().all(|m| c.log(m).contains("restarting in place"))
            && raft_roles(c, "a").iter().filter(|(n, ..)| n != "c").all(|(_, _, up)| *up)
    });
    c.start_joining("c");
    c.wait("c up as a learner", WAIT, |c| raft_roles(c, "a").iter().any(|(n, r, up)| n == "c" && r == "learner" && *up));

    // A node must lead (the witness cannot be put in standby): while the witness leads, it is
    // restarted until another member leads. The leader then goes to standby (the group leaves
    // it); if leadership moved meanwhile, the new leader is taken instead.
    let mut leader = String::new();
    for _ in 0..5 {
        c.wait("a leader with a quorum", WAIT, |c| c.leader("a").is_some());
        leader = c.leader("a").unwrap();
        if leader == "w" {
            c.signal("w", "-KILL");
            let _ = c.wait_exit("w", WAIT);
            c.wait("a node leads", WAIT, |c| c.leader("a").is_some_and(|l| l != "w"));
            c.start("w");
            c.wait("w back", WAIT, |c| raft_roles(c, "a").iter().all(|(_, _, up)| *up));
            continue;
        }
        let o = c.cli("a", &["node", "standby", &leader]);
        assert!(o.status.success(), "{o:?}");
        c.wait("group app moved off the leader", WAIT, |c| ["a", "b", "c"].iter().any(|n| *n != leader && started_on(c, "w", n)));
        if c.leader("a").as_deref() == Some(leader.as_str()) {
            break;
        }
        let o = c.cli("a", &["node", "online", &leader]);
        assert!(o.status.success(), "{o:?}");
    }
    assert!(leader == "a" || leader == "b", "no node led: {leader}\n{}", c.logs());
    let others: Vec<&str> = ["a", "b", "w", "c"].into_iter().filter(|n| *n != leader).collect();
    let n = if leader == "a" { 1 } else { 2 };
    let entry = format!("[[nodes]]\nname = \"{leader}\"\naddresses = [\"10.213.1.{n}:7400\", \"10.213.2.{n}:7400\"]\n");
    assert!(with_c.contains(&entry), "{entry}");
    let without = with_c.replacen(&entry, "", 1).replace(&format!("\"{leader}\", "), "");
    let file2 = c.dir.path().join("without-leader.toml");
    std::fs::write(&file2, &without).unwrap();
    let o = retried(&c, others[0], &["node", "remove", &leader, file2.to_str().unwrap(), "--check-as", others[0]]);
    assert!(o.status.success(), "{o:?}\n{}", c.logs());

    let status = c.wait_exit(&leader, WAIT).expect("the removed leader exits");
    assert!(status.success(), "{status:?}\n{}", c.log(&leader));
    assert!(c.log(&leader).contains("removed from the cluster"), "{}", c.log(&leader));
    let via = others[0];
    c.wait("the other three all voters, up, under a new leader", WAIT, |c| {
        let roles = raft_roles(c, via);
        roles.len() == 3 && roles.iter().all(|(n, r, up)| n != &leader && r == "voter" && *up) && c.leader(via).is_some_and(|l| l != leader)
    });
    c.wait("group app running on one of them", WAIT, |c| others.iter().any(|n| *n != "w" && started_on(c, "w", n)));
    for m in &others {
        assert!(c.is_running(m), "{m} exited\n{}", c.log(m));
    }
    assert_eq!(std::fs::read_to_string(&c.config).unwrap(), without);
    s1.check();
}
