use std::time::{Duration, Instant};

use crate::cluster::{Sampler, TestCluster, WAIT};

/// Status from `via` shows group `app` started on `owner`, its services run there and its
/// virtual IP is there.
fn started_on(c: &TestCluster, via: &str, owner: &str) -> bool {
    c.group(via, "app").is_some_and(|(state, o, _)| state == "started" && o.as_deref() == Some(owner))
        && c.service(owner, "app-1").is_some()
        && c.service(owner, "app-2").is_some()
        && c.has_vip(owner)
}

#[test]
fn forms_a_cluster_runs_the_group_once_and_switches_it_over() {
    let mut c = TestCluster::new("");
    let s1 = c.sampler(&["app-1", "app-2"]);
    c.start_all();
    c.wait("a leader with a quorum, seen from every member", WAIT, |c| {
        let l = c.leader("a");
        l.is_some() && ["b", "w"].iter().all(|m| c.status(m).is_some_and(|s| s["cluster_info"]["leader"].as_str() == l.as_deref()))
    });
    c.wait("group app started on a (first in priority)", WAIT, |c| started_on(c, "b", "a"));
    assert!(c.service("b", "app-1").is_none() && !c.has_vip("b"), "{}", c.logs());
    assert!(c.vip_answers(), "the virtual IP does not answer from the client\n{}", c.logs());
    let (_, _, epoch) = c.group("w", "app").unwrap();

    // Status from any member shows the whole cluster: every member reachable over both paths.
    let st = c.status("w").unwrap();
    for m in st["cluster_info"]["members"].as_array().unwrap() {
        assert_eq!(m["reachable"], true, "{m}");
    }

    // Switchover on command, given on the witness: stop on a confirmed, then start on b.
    let o = c.cli("w", &["group", "move", "app", "--to", "b"]);
    assert!(o.status.success(), "{o:?}\n{}", c.logs());
    c.wait("group app started on b", WAIT, |c| started_on(c, "a", "b"));
    assert!(c.service("a", "app-1").is_none() && c.service("a", "app-2").is_none() && !c.has_vip("a"), "still running on a\n{}", c.logs());
    assert!(c.vip_answers(), "the virtual IP does not answer from the client after the switchover\n{}", c.logs());
    let (_, _, after) = c.group("a", "app").unwrap();
    assert!(after > epoch, "the move must take a new epoch: {epoch} -> {after}");

    // Standby of the owner moves the group away (given on the owner itself); online again
    // leaves it where it is (intelligent switchback).
    let o = c.cli("b", &["node", "standby", "b"]);
    assert!(o.status.success(), "{o:?}\n{}", c.logs());
    c.wait("group app back on a", WAIT, |c| started_on(c, "b", "a"));
    assert!(c.service("b", "app-1").is_none(), "{}", c.logs());
    let o = c.cli("a", &["node", "online", "b"]);
    assert!(o.status.success(), "{o:?}\n{}", c.logs());
    c.wait("b online", WAIT, |c| {
        c.status("w").is_some_and(|st| st["nodes"].as_array().unwrap().iter().any(|n| n["name"] == "b" && n["standby"] == false))
    });
    assert!(started_on(&c, "w", "a"));
    s1.check();
}

#[test]
fn one_path_cut_changes_nothing_and_a_cut_owner_stops_its_group() {
    let (c, s1, _) = running_on_a(TestCluster::new(""));
    let pid = c.service("a", "app-1").unwrap();

    // One path of a cut: a stays reachable over the other, nothing moves or restarts.
    c.cut("a", 1);
    // As b sees it (its own links: status shows the leader's view, which may be a's own).
    c.wait("path 1 of a down in b's metrics, a still up", WAIT, |c| {
        let m = c.metrics("b");
        m.contains("warden_peer_up{peer=\"a\"} 1")
            && m.contains("warden_path_up{peer=\"a\",addr=\"10.213.1.1:7400\"} 0")
            && m.contains("warden_path_up{peer=\"a\",addr=\"10.213.2.1:7400\"} 1")
    });
    // Status from any member shows a path down and every member reachable (the answering
    // leader's own view: it notices within a second).
    c.wait("status showing a path down, every member reachable", WAIT, |c| {
        c.status("w").is_some_and(|st| {
            let members = st["cluster_info"]["members"].as_array().cloned().unwrap_or_default();
            members.iter().all(|m| m["reachable"] == true)
                && members.iter().any(|m| m["paths"].as_array().is_some_and(|p| p.iter().any(|p| p["up"] == false)))
        })
    });
    std::thread::sleep(Duration::from_secs(3)); // past a member's silence: still nothing may happen
    assert_eq!(c.service("a", "app-1"), Some(pid), "a path cut must not restart or move anything\n{}", c.logs());
    assert!(started_on(&c, "b", "a"));

    // Both paths of the owner cut: a cannot reach a quorum, its lease runs out and it stops
    // everything; b and w keep a quorum but do not start the group without a fence
    // confirmation (failover is not in this milestone): the group waits, and status says why.
    c.cut("a", 2);
    c.wait("a stopped its services and its virtual IP after losing its lease", WAIT, |c| {
        c.service("a", "app-1").is_none() && c.service("a", "app-2").is_none() && !c.has_vip("a")
    });
    c.wait("b and w see a lost", WAIT, |c| {
        c.status("b").is_some_and(|st| st["nodes"].as_array().unwrap().iter().any(|n| n["name"] == "a" && n["up"] == false))
    });
    assert!(c.service("b", "app-1").is_none() && !c.has_vip("b"), "started on b without a fence confirmation\n{}", c.logs());

    // Healed: a comes back, the group runs again, once.
    c.heal("a");
    c.wait("group app running again on its owner a", WAIT, |c| started_on(c, "b", "a"));
    s1.check();
}

#[test]
fn the_witness_lost_keeps_the_quorum_and_a_killed_leader_is_replaced() {
    let (mut c, s1, _) = running_on_a(TestCluster::new(""));
    let pid = c.service("a", "app-1").unwrap();

    // The witness dies: a and b are still a quorum; commands still work.
    c.signal("w", "-KILL");
    c.wait_exit("w", WAIT).expect("witness exited");
    c.wait("a leader among a and b", WAIT, |c| c.leader("a").is_some_and(|l| l != "w"));
    let o = c.cli("b", &["resource", "restart", "app-2"]);
    assert!(o.status.success(), "{o:?}\n{}", c.logs());
    assert_eq!(c.service("a", "app-1"), Some(pid), "{}", c.logs());

    // The witness comes back; then the leader's daemon is killed (-9): the other two elect a
    // new leader. The group stays where it runs (a daemon crash never starts a second copy).
    c.start("w");
    c.wait("the witness back in the cluster", WAIT, |c| {
        c.status("w").is_some_and(|st| st["cluster_info"]["members"].as_array().unwrap().iter().all(|m| m["reachable"] == true))
    });
    let leader = c.leader("b").expect("a leader");
    c.signal(&leader, "-KILL");
    c.wait_exit(&leader, WAIT).expect("leader exited");
    let survivor = if leader == "b" { "a" } else { "b" };
    c.wait("a new leader", WAIT, |c| c.leader(survivor).is_some_and(|l| l != leader));
    if leader != "a" {
        // The owner's daemon lives: its services were never touched.
        assert_eq!(c.service("a", "app-1"), Some(pid), "{}", c.logs());
    }
    c.start(&leader);
    c.wait("group app still on a", WAIT, |c| started_on(c, survivor, "a"));
    s1.check();
}

#[test]
fn a_member_that_can_hear_but_not_speak_never_runs_a_group_twice() {
    let (c, s1, _) = running_on_a(TestCluster::new(""));
    // a's outgoing traffic is lost on both paths; it still receives everything. Whether a led
    // (it loses its authority and then its own lease) or not (the leader hears no hello and
    // counts it lost), the group must not start on b: a may still run it.
    c.cut_outgoing("a", 1);
    c.cut_outgoing("a", 2);
    c.wait("b and w see a lost", WAIT, |c| {
        c.status("b").is_some_and(|st| st["nodes"].as_array().unwrap().iter().any(|n| n["name"] == "a" && n["up"] == false))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(c.service("b", "app-1").is_none(), "started on b while a may run it\n{}", c.logs());
    let st = c.status("b").unwrap();
    let g = st["groups"].as_array().unwrap().iter().find(|g| g["name"] == "app").unwrap().clone();
    assert!(g["waiting"].is_string() || g["state"] != "started", "status must say why the group waits: {g}");
    c.heal("a");
    c.wait("group app running again on its owner a", WAIT, |c| started_on(c, "b", "a"));
    s1.check();
}

#[test]
fn a_watchdog_device_that_is_not_a_watchdog_is_refused_at_start_with_its_reason() {
    let mut c = TestCluster::with_watchdog();
    // `/dev/null` opens and takes writes, but no watchdog ioctl: a member must not run believing
    // a hardware reset backs its lease.
    let text = std::fs::read_to_string(&c.config).unwrap().replacen(
        "watchdog_fencing = true\n",
        "watchdog_fencing = true\nwatchdog_device = \"/dev/null\"\n",
        1,
    );
    std::fs::write(&c.config, text).unwrap();
    c.start("a");
    let status = c.wait_exit("a", WAIT).expect("a refuses to run and exits");
    assert!(!status.success());
    let log = c.log("a");
    assert!(log.contains("/dev/null is not a watchdog device"), "{log}");
    assert!(log.contains("the watchdog supervisor exited at start"), "{log}");
    assert!(c.service("a", "app-1").is_none() && !c.has_vip("a"), "{log}");
}

#[test]
fn a_member_with_another_config_file_refuses_to_run() {
    let mut c = TestCluster::new("");
    c.start("a");
    c.start("b");
    c.wait("group app started on a with a and b", WAIT, |c| started_on(c, "b", "a"));
    // The witness is given a file that differs (one comment more): it says so and exits.
    let other = c.dir.path().join("other.toml");
    std::fs::write(&other, std::fs::read_to_string(&c.config).unwrap() + "\n# edited on w only\n").unwrap();
    c.start_with("w", &other);
    let status = c.wait_exit("w", WAIT).expect("w refuses and exits");
    assert!(!status.success());
    assert!(c.log("w").contains("differs from the config the cluster runs"), "{}", c.log("w"));
    // The others go on (the refused member may have caused an election meanwhile); with the
    // same file it joins.
    c.wait("group app still on a", WAIT, |c| started_on(c, "a", "a"));
    c.start("w");
    c.wait("the witness in the cluster", WAIT, |c| {
        c.status("w").is_some_and(|st| st["cluster_info"]["members"].as_array().unwrap().iter().all(|m| m["reachable"] == true))
    });
}

#[test]
fn a_member_shut_down_moves_its_groups_away_and_comes_back_online() {
    // With a fence device: a member that shut down cleanly runs nothing and is never fenced.
    let (mut c, s1, _) = fenced_cluster_running_on_a();
    a_shut_down_moves_the_group_to_b(&mut c);
    // Back: online again (not left in standby), and the group stays on b.
    c.start("a");
    c.wait("a online again", WAIT, |c| {
        c.status("w")
            .is_some_and(|st| st["nodes"].as_array().unwrap().iter().any(|n| n["name"] == "a" && n["up"] == true && n["standby"] == false))
    });
    assert!(started_on(&c, "w", "b"), "{}", c.logs());

    // The leader itself shut down and started again (the member that put it in standby is gone
    // by then): it comes back online too, and the group runs once throughout.
    let leader = c.leader("w").expect("a leader");
    c.signal(&leader, "-TERM");
    c.wait_exit(&leader, WAIT).expect("the leader exits");
    c.start(&leader);
    c.wait("every member up and online", WAIT, |c| {
        c.status("a").is_some_and(|st| st["nodes"].as_array().unwrap().iter().all(|n| n["up"] == true && n["standby"] == false))
    });
    c.wait("group app running", WAIT, |c| started_on(c, "w", "a") || started_on(c, "w", "b"));
    assert!(!c.logs().contains("fencing it"), "a member that shut down was fenced\n{}", c.logs());
    s1.check();
}

#[test]
fn a_lost_owner_confirmed_off_by_the_operator_fails_over_and_runs_once() {
    let (mut c, s1, _) = running_on_a(TestCluster::new(""));
    // Not while a answers.
    let o = c.cli("b", &["node", "confirm-down", "a"]);
    assert!(!o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("answers") || err.contains("is up"), "{o:?}");

    // a loses power. No fence device: its group waits (the cluster cannot know a is off).
    c.power_off("a");
    let lost = |c: &TestCluster| {
        c.status("b").is_some_and(|st| st["nodes"].as_array().unwrap().iter().any(|n| n["name"] == "a" && n["up"] == false))
    };
    c.wait("a seen lost", WAIT, lost);
    // What must not happen has no event to wait for: give it time to.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(c.service("b", "app-1").is_none() && !c.has_vip("b"), "started on b without a confirmation\n{}", c.logs());
    let (_, owner, epoch) = c.group("w", "app").unwrap();
    assert_eq!(owner.as_deref(), Some("a"));

    // Too early: if a were only cut off, its lease would let it run the group for up to 10 s.
    let o = c.cli("w", &["node", "confirm-down", "a"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("lease"), "{o:?}");
    // Then the operator's confirmation is taken: the group starts on b with the next epoch.
    c.wait("confirm-down accepted", WAIT, |c| c.cli("w", &["node", "confirm-down", "a"]).status.success());
    c.wait("group app started on b", WAIT, |c| started_on(c, "w", "b"));
    failed_over_then_a_back_runs_nothing(&mut c, epoch);
    s1.check();
}

#[test]
fn a_lost_owner_is_fenced_then_its_group_starts_on_the_other_member() {
    let (mut c, s1, epoch) = fenced_cluster_running_on_a();

    // Only a's daemon dies: its services and the address keep running there. While the power
    // switch is broken, fencing fails and the group waits (it may still run on a).
    let broken = c.dir.path().join("power-broken");
    std::fs::write(&broken, "").unwrap();
    c.signal("a", "-KILL");
    c.wait("fencing failed", WAIT, |c| c.logs().contains("fencing FAILED"));
    assert!(c.service("a", "app-1").is_some() && c.has_vip("a"), "a was not off yet\n{}", c.logs());
    assert!(c.service("b", "app-1").is_none() && !c.has_vip("b"), "started on b without a fence\n{}", c.logs());

    // Repaired: the next attempt powers a off, then the group starts on b with the next epoch.
    std::fs::remove_file(&broken).unwrap();
    c.wait("group app started on b", WAIT, |c| started_on(c, "w", "b"));
    assert!(c.logs().contains("fenced by `power`"), "{}", c.logs());
    assert!(c.service("a", "app-1").is_none() && !c.has_vip("a"), "{}", c.logs());
    failed_over_then_a_back_runs_nothing(&mut c, epoch);
    s1.check();
}

#[test]
fn an_owner_whose_daemon_hangs_is_fenced_and_its_group_runs_once() {
    // With a longer `lost_after` than the default 1 s (Corosync's token, longer).
    let (mut c, s1, epoch) = running_on_a(TestCluster::with_power_fencing().with_cluster_option("lost_after = \"2500ms\""));
    // a's daemon stops dead (SIGSTOP: no hello, no ping answered, no self-stop either) while
    // its services run. Only a fence makes moving them safe: the switch powers a off.
    let stopped = Instant::now();
    c.signal("a", "-STOP");
    // Counted lost by the leader that had it up ("member lost"), or, when `a` itself led, by
    // the next leader, which never heard from it and fences it once its rejoin window ends.
    c.wait("a counted lost", WAIT, |c| {
        let logs = c.logs();
        logs.contains("member lost") || logs.contains("lost while it may run resources: fencing it")
    });
    // Not before `lost_after` of silence: its last hello went at most 250 ms before the stop.
    let lost = stopped.elapsed();
    assert!(lost >= Duration::from_millis(2250), "counted lost {lost:?} after the stop, lost_after is 2.5 s\n{}", c.logs());
    c.wait("group app started on b", WAIT, |c| started_on(c, "w", "b"));
    assert!(c.logs().contains("fenced by `power`"), "{}", c.logs());
    assert!(c.service("a", "app-1").is_none() && !c.has_vip("a"), "{}", c.logs());
    failed_over_then_a_back_runs_nothing(&mut c, epoch);
    s1.check();
}

/// After a fail-over from `a` to `b` (epoch `epoch` before it): the address answers, the epoch
/// grew; `a` powered on again joins, is probed, runs nothing, and the group stays on `b`.
fn failed_over_then_a_back_runs_nothing(c: &mut TestCluster, epoch: u64) {
    assert!(c.vip_answers(), "the virtual IP does not answer from the client\n{}", c.logs());
    let (_, _, after) = c.group("b", "app").unwrap();
    assert!(after > epoch, "{epoch} -> {after}");
    c.power_on("a");
    c.start("a");
    c.wait("a up again", WAIT, |c| {
        c.status("w").is_some_and(|st| st["nodes"].as_array().unwrap().iter().any(|n| n["name"] == "a" && n["up"] == true))
    });
    // (It is probed first: the group shows as starting until a answers.)
    c.wait("group app started on b, a probed", WAIT, |c| started_on(c, "w", "b"));
    assert!(c.service("a", "app-1").is_none() && !c.has_vip("a"), "{}", c.logs());
}

#[test]
fn a_member_that_left_cleanly_is_not_fenced_when_the_others_restart() {
    let (mut c, s1, _) = fenced_cluster_running_on_a();
    a_shut_down_moves_the_group_to_b(&mut c);
    // Both other daemons die and start again while a is away: the new leader restores the
    // committed decisions, in which a left cleanly. It must neither fence a nor wait for it.
    for m in ["b", "w"] {
        c.signal(m, "-KILL");
        c.wait_exit(m, WAIT).expect("killed");
    }
    c.start("b");
    c.start("w");
    c.wait("group app running on b again (adopted)", WAIT, |c| started_on(c, "w", "b"));
    // What must not happen has no event to wait for: give it time to.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(!c.logs().contains("fencing it"), "a member that left cleanly was fenced\n{}", c.logs());
    let st = c.status("w").unwrap();
    let a = st["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "a").unwrap().clone();
    assert!(a["up"] == false && a["left"] == true && a["needs_fence"] == false, "{a}");
    assert!(started_on(&c, "w", "b"), "{}", c.logs());
    s1.check();
}

/// [`running_on_a`] with the power-switch fence device.
fn fenced_cluster_running_on_a() -> (TestCluster, Sampler, u64) {
    running_on_a(TestCluster::with_power_fencing())
}

/// Cluster `c` started, the S1 sampler on, group `app` started on `a`, and its epoch.
fn running_on_a(mut c: TestCluster) -> (TestCluster, Sampler, u64) {
    let s1 = c.sampler(&["app-1", "app-2"]);
    c.start_all();
    c.wait("group app started on a", WAIT, |c| started_on(c, "w", "a"));
    let (_, _, epoch) = c.group("w", "app").unwrap();
    (c, s1, epoch)
}

/// SIGTERM on the owner `a`: its groups move to `b` (stopped on `a` first), then `a` exits
/// cleanly with nothing running there.
fn a_shut_down_moves_the_group_to_b(c: &mut TestCluster) {
    c.signal("a", "-TERM");
    c.wait("group app on b", WAIT, |c| started_on(c, "w", "b"));
    let status = c.wait_exit("a", WAIT).expect("a exits once nothing runs there");
    assert!(status.success(), "{status:?}\n{}", c.log("a"));
    assert!(c.service("a", "app-1").is_none() && !c.has_vip("a"), "{}", c.logs());
}

#[test]
fn a_hung_owner_is_stopped_by_its_watchdog_and_its_group_runs_once_on_b() {
    let (mut c, s1, epoch) = running_on_a(TestCluster::with_watchdog());
    // a's daemon stops dead (SIGSTOP) with its services running, and there is no fence device:
    // only its watchdog (a separate process) can stop them, when its lease runs out; the
    // leader moves the group once that lease has provably run out.
    c.signal("a", "-STOP");
    c.wait("group app started on b", WAIT, |c| started_on(c, "w", "b"));
    assert!(c.logs().contains("self-fenced"), "{}", c.logs());
    assert!(c.log("a").contains("watchdog: FIRED"), "{}", c.log("a"));
    assert!(c.service("a", "app-1").is_none() && c.service("a", "app-2").is_none() && !c.has_vip("a"), "{}", c.logs());
    let (_, _, after) = c.group("w", "app").unwrap();
    assert!(after > epoch, "{epoch} -> {after}");
    // a's daemon resumes: it finds its lease gone, runs nothing, the group stays on b.
    c.signal("a", "-CONT");
    c.wait("a up again", WAIT, |c| {
        c.status("w").is_some_and(|st| st["nodes"].as_array().unwrap().iter().any(|n| n["name"] == "a" && n["up"] == true))
    });
    c.wait("group app started on b, a probed", WAIT, |c| started_on(c, "w", "b"));
    assert!(c.service("a", "app-1").is_none() && !c.has_vip("a"), "{}", c.logs());
    s1.check();
}

#[test]
fn an_owner_that_leads_and_is_cut_off_stops_its_group_before_it_starts_elsewhere() {
    // With a shorter detection (`lost_after` under 1 s): Raft's timing and the lease (3.45 s
    // instead of 4.5 s) shrink with it, and this, the case that needs the new leader's wait,
    // runs on the shorter lease (the other watchdog tests and the nemesis on the default).
    let (mut c, s1, _) = running_on_a(TestCluster::with_watchdog().with_cluster_option("lost_after = \"700ms\""));
    // The owner leads: cut off, it loses its authority, so nobody grants it a lease; the new
    // leader never granted it one and does not know when the old leader last did, so it waits
    // a whole lease from its own start before it moves the group (without that wait the
    // group would start on the other member while the owner still runs it).
    let owner = group_on_the_leader(&mut c);
    let other = if owner == "a" { "b" } else { "a" };
    c.cut(&owner, 1);
    c.cut(&owner, 2);
    // Status from the other member right away: it still knows the cut leader as its leader and
    // asks it, which never answers; it answers itself (it used to fail after 10 s), unless a
    // new leader was elected first and answered.
    let o = c.cli(other, &["status", "--json"]);
    assert!(o.status.success(), "status while the leader is cut off: {o:?}\n{}", c.logs());
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let answered_by = st["cluster_info"]["answered_by"].as_str().unwrap_or_default().to_string();
    let fallback = st["groups"][0]["waiting"].as_str().is_some_and(|w| w.contains("did not answer"));
    assert!(fallback || (answered_by != owner && st["cluster_info"]["leader"] != owner), "{st}");
    c.wait("group app started on the other member", WAIT, |c| started_on(c, "w", other));
    assert!(c.service(&owner, "app-1").is_none() && !c.has_vip(&owner), "{}", c.logs());
    assert!(c.log(&owner).contains("lease lost"), "the owner did not stop its group itself\n{}", c.log(&owner));
    assert!(c.log(&owner).contains("for 3.45s"), "the lease follows lost_after\n{}", c.log(&owner));
    assert!(c.logs().contains("self-fenced"), "{}", c.logs());
    c.heal(&owner);
    c.wait("the owner back", WAIT, |c| c.status("w").is_some_and(|st| st["nodes"].as_array().unwrap().iter().all(|n| n["up"] == true)));
    c.wait("group app still on the other member", WAIT, |c| started_on(c, "w", other));
    assert!(c.service(&owner, "app-1").is_none(), "{}", c.logs());
    s1.check();
}

/// Moves group `app` to the Raft leader (while the witness leads, it is stopped until a node
/// leads, then started again); returns the leader, which then runs the group.
fn group_on_the_leader(c: &mut TestCluster) -> String {
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT {
        let Some(leader) = c.leader("a") else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        if leader == "w" {
            c.signal("w", "-KILL");
            c.wait_exit("w", WAIT).expect("killed");
            c.wait("a node leads", WAIT, |c| c.leader("a").is_some_and(|l| l != "w"));
            c.start("w");
            c.wait("the witness back", WAIT, |c| {
                c.status("a").is_some_and(|st| {
                    st["cluster_info"]["quorum"] == true
                        && st["cluster_info"]["members"].as_array().unwrap().iter().all(|m| m["reachable"] == true)
                })
            });
            continue;
        }
        if !started_on(c, "a", &leader) {
            let o = c.cli("a", &["group", "move", "app", "--to", &leader]);
            assert!(o.status.success(), "{o:?}\n{}", c.logs());
            c.wait("group app on the leader", WAIT, |c| started_on(c, "a", &leader));
        }
        if c.leader("a").as_deref() == Some(leader.as_str()) {
            return leader;
        }
    }
    panic!("no node stayed the leader\n{}", c.logs());
}

/// Adds group `lk` (preferring `a`) of one LifeKeeper-style resource `lk-1` (the generic agent:
/// restore, remove and quickCheck scripts) whose service is a `sleep` with its pid in
/// `<dir>/run/lk-1.pid` (so the sampler sees it), and whose remove script fails, leaving the
/// service running, while `<dir>/remove-fails` exists.
fn with_lifekeeper_group(c: TestCluster) -> TestCluster {
    let dir = c.dir.path();
    let run = dir.join("run");
    let fails = dir.join("remove-fails");
    let scripts = [
        // The run directory is shared by the test's machines: the service's node is written
        // beside its pid, so that quickCheck on another machine does not see it as its own.
        (
            "lk-restore",
            format!("setsid sleep 100000 </dev/null >/dev/null 2>&1 &\necho $! > '{r}/lk-1.pid'\necho \"$LK_NODE\" > '{r}/lk-1.node'\n", r = run.display()),
        ),
        (
            "lk-remove",
            format!(
                "[ -e '{f}' ] && {{ echo 'remove failed (test)'; exit 1; }}\n[ -f '{r}/lk-1.pid' ] && kill -9 $(cat '{r}/lk-1.pid') 2>/dev/null\nrm -f '{r}/lk-1.pid'\nexit 0\n",
                f = fails.display(),
                r = run.display()
            ),
        ),
        (
            "lk-check",
            format!(
                "[ \"$(cat '{r}/lk-1.node' 2>/dev/null)\" = \"$LK_NODE\" ] && [ -f '{r}/lk-1.pid' ] && kill -0 $(cat '{r}/lk-1.pid') 2>/dev/null\n",
                r = run.display()
            ),
        ),
    ];
    for (name, body) in &scripts {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let d = dir.display();
    // (The generic plugin is in every test cluster's config: the ledger uses it.)
    let extra = format!(
        r#"
[[resources]]
name = "lk-1"
plugin = "generic"
params = {{ style = "lifekeeper", restore = "{d}/lk-restore", remove = "{d}/lk-remove", quickcheck = "{d}/lk-check", watch = "none" }}
grants = {{ read = ["/**"], exec = [{{ program = "{d}/lk-restore" }}, {{ program = "{d}/lk-remove" }}, {{ program = "{d}/lk-check" }}], env = ["LK*"] }}
monitor_interval = "500ms"

[[groups]]
name = "lk"
resources = ["lk-1"]
priority = ["a", "b"]
"#
    );
    let mut text = std::fs::read_to_string(&c.config).unwrap();
    text += &extra;
    std::fs::write(&c.config, text).unwrap();
    c
}

/// Group `lk` started on `owner` (its service alive there) as `via` reports it.
fn lk_on(c: &TestCluster, via: &str, owner: &str) -> bool {
    c.group(via, "lk").is_some_and(|(state, o, _)| state == "started" && o.as_deref() == Some(owner)) && c.service(owner, "lk-1").is_some()
}

#[test]
fn a_failed_stop_fences_the_node_before_the_group_starts_elsewhere() {
    let mut c = with_lifekeeper_group(TestCluster::with_power_fencing());
    let s1 = c.sampler(&["app-1", "app-2", "lk-1"]);
    c.start_all();
    c.wait("group lk started on a", WAIT, |c| lk_on(c, "w", "a"));
    // Switchover with a remove script that fails: lk-1 may still run on a (it does), so b must
    // not start it until a is fenced.
    std::fs::write(c.dir.path().join("remove-fails"), b"").unwrap();
    let o = c.cli("w", &["group", "move", "lk", "--to", "b"]);
    assert!(o.status.success(), "{o:?}\n{}", c.logs());
    c.wait("group lk started on b", WAIT, |c| lk_on(c, "w", "b"));
    assert!(c.logs().contains("fenced by `power`"), "{}", c.logs());
    assert!(c.service("a", "lk-1").is_none(), "{}", c.logs());
    std::fs::remove_file(c.dir.path().join("remove-fails")).unwrap();
    c.power_on("a");
    c.start("a");
    c.wait("a up again, both groups running once", WAIT, |c| {
        c.status("w").is_some_and(|st| st["nodes"].as_array().unwrap().iter().all(|n| n["up"] == true))
            && lk_on(c, "w", "b")
            && started_on(c, "w", "b")
    });
    s1.check();
}

#[test]
fn a_restart_storm_ends_with_the_group_on_the_other_node_and_never_on_two() {
    let (c, s1, _) = fenced_cluster_running_on_a();
    // app-1's service on a dies again and again (faster than local recovery can keep up):
    // local restarts up to the group's limit, then the group fails over to b, once.
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT && !started_on(&c, "w", "b") {
        if let Some(pid) = c.service("a", "app-1") {
            let _ = std::process::Command::new("/bin/kill").args(["-9", &pid.to_string()]).status();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    c.wait("group app started on b", WAIT, |c| started_on(c, "w", "b"));
    let st = c.status("w").unwrap();
    let g = st["groups"].as_array().unwrap().iter().find(|g| g["name"] == "app").unwrap().clone();
    assert!(g["failed_on"].as_array().unwrap().iter().any(|n| n == "a"), "{g}");
    assert!(c.service("a", "app-1").is_none() && !c.has_vip("a"), "{}", c.logs());
    s1.check();
}

#[test]
fn a_restarted_daemon_adopts_under_its_surviving_watchdog_and_stops_what_no_watchdog_guarded() {
    let (mut c, s1, _) = running_on_a(TestCluster::with_watchdog());
    let pid = c.service("a", "app-1").expect("running");
    // The daemon alone dies: its watchdog lives on, the restarted daemon takes it over and
    // adopts the services (a crash of Warden itself neither stops nor duplicates them).
    c.signal("a", "-KILL");
    c.wait_exit("a", WAIT).expect("killed");
    c.start("a");
    c.wait("a back with the group", WAIT, |c| {
        c.status("w").is_some_and(|st| st["nodes"].as_array().unwrap().iter().all(|n| n["up"] == true)) && started_on(c, "w", "a")
    });
    assert_eq!(c.service("a", "app-1"), Some(pid), "not adopted\n{}", c.logs());
    // The daemon and its watchdog both die: nothing vouches for the lease of what runs, so the
    // restarted daemon stops it at once (a new watchdog fires immediately) and the group starts
    // again from scratch, once.
    let socket = c.member("a").state.join("watchdog.sock");
    let supervisor =
        std::process::Command::new("pgrep").args(["-f", &format!("watchdog-supervise --socket {}", socket.display())]).output().unwrap();
    let supervisor = String::from_utf8_lossy(&supervisor.stdout).trim().to_string();
    assert!(!supervisor.is_empty(), "no watchdog supervisor for a");
    c.signal("a", "-KILL");
    c.wait_exit("a", WAIT).expect("killed");
    std::process::Command::new("/bin/kill").args(["-KILL", &supervisor]).status().unwrap();
    c.start("a");
    c.wait("the old service gone", WAIT, |_| !crate::netns::is_alive(pid));
    c.wait("group app started again", WAIT, |c| {
        let st = c.status("w");
        st.is_some_and(|st| st["nodes"].as_array().unwrap().iter().all(|n| n["up"] == true))
            && (started_on(c, "w", "a") || started_on(c, "w", "b"))
    });
    assert!(c.log("a").contains("FIRED"), "{}", c.log("a"));
    s1.check();
}

#[test]
fn config_apply_reloads_every_member_in_turn_keeps_what_runs_and_refuses_what_would_break_it() {
    let (mut c, s1, epoch) = running_on_a(TestCluster::new(""));
    let old = std::fs::read_to_string(&c.config).unwrap();
    let pid = c.service("a", "app-1").expect("app-1 runs on a");
    let apply = |c: &TestCluster, text: &str| {
        let file = c.dir.path().join("new.toml");
        std::fs::write(&file, text).unwrap();
        c.cli_on("a", &["config", "apply", file.to_str().unwrap(), "--node", "a"])
    };
    // Refused, the cluster unchanged: the running VIP's address (its stop would delete the wrong
    // one), a member's address, a file that does not parse.
    let o = apply(&c, &old.replace("10.213.3.100/24", "10.213.3.101/24"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("group `app`") && err.contains("warden group stop"), "{err}");
    let o = apply(&c, &old.replace("10.213.1.2:7400", "10.213.1.9:7400"));
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("warden node add"), "{o:?}");
    let o = apply(&c, &(old.clone() + "\n[[groups]\n"));
    assert!(!o.status.success(), "{o:?}");
    // Accepted: a new group with a new resource, and a new monitor interval for a running one.
    let extra = c.dir.path().join("run");
    let program = crate::node::root().join("examples/agents/demo-daemon.sh");
    let new = old.replacen("monitor_interval = \"500ms\"", "monitor_interval = \"700ms\"", 1)
        + &crate::node::pid_file_resource(&extra, "extra-1", &program, "monitor_interval = \"500ms\"")
        + "\n[[groups]]\nname = \"extra\"\nresources = [\"extra-1\"]\npriority = [\"b\", \"a\"]\n";
    let o = apply(&c, &new);
    assert!(o.status.success(), "{o:?}\n{}", c.logs());
    assert!(String::from_utf8_lossy(&o.stdout).contains("committed"), "{o:?}");
    // Every member restarts in place (the leader last), the new group starts, the old one never
    // stopped: same service process, same epoch.
    c.wait("every member reloaded and group extra started on b", WAIT, |c| {
        c.members.iter().all(|m| c.log(&m.name).contains("restarting in place"))
            && c.group("w", "extra").is_some_and(|(state, o, _)| state == "started" && o.as_deref() == Some("b"))
            && c.status("w").is_some_and(|st| st["nodes"].as_array().unwrap().iter().all(|n| n["up"] == true))
    });
    assert_eq!(std::fs::read_to_string(&c.config).unwrap(), new);
    for m in ["a", "b", "w"] {
        assert!(c.is_running(m), "{m} exited\n{}", c.log(m));
    }
    assert_eq!(c.service("a", "app-1"), Some(pid), "app-1 was restarted by the reload\n{}", c.logs());
    let (state, owner, after) = c.group("w", "app").unwrap();
    assert_eq!((state.as_str(), owner.as_deref(), after), ("started", Some("a"), epoch), "{}", c.logs());
    // A member started with the old file is refused and told where the cluster's config is.
    c.signal("w", "-KILL");
    c.wait_exit("w", WAIT);
    let stale = c.dir.path().join("stale.toml");
    std::fs::write(&stale, &old).unwrap();
    c.start_with("w", &stale);
    let status = c.wait_exit("w", WAIT).expect("w refuses and exits");
    assert!(!status.success());
    let log = c.log("w");
    assert!(log.contains("committed-config.toml"), "{log}");
    let copy = c.member("w").state.join("committed-config.toml");
    assert_eq!(std::fs::read_to_string(copy).unwrap(), new);
    c.start("w");
    c.wait("w back with the new file", WAIT, |c| {
        c.status("w").is_some_and(|st| st["nodes"].as_array().unwrap().iter().all(|n| n["up"] == true))
    });
    s1.check();
}
