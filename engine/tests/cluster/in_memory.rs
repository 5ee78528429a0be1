//! The in-process cluster tier: the real member daemon, three in one test process, over the
//! in-memory router. It makes the faults a real network makes only roughly (the next n messages
//! lost, one direction cut, delays, partitions) and daemon crashes, and checks S1 on the
//! recorded history: the ledger of who ran the group when (see `support/memcluster.rs`).

use std::time::Duration;

use warden::scheduler::OperatorCommand;

use crate::memcluster::{MemCluster, WAIT};

/// Group `app` started on `owner` as `via` reports it, and its ledger writer runs there only.
/// (Breaking the lease rule on purpose, a quarter of the wait in `lease::reassign_after`, makes
/// the partition scenario fail its S1 check: the group ran on a and b at once for 2.3 s.)
fn started_on(c: &MemCluster, via: &str, owner: &str) -> bool {
    c.group(via, "app").is_some_and(|(state, o, _)| state == "started" && o.as_deref() == Some(owner))
        && c.ledger_runs_on(owner)
        && ["a", "b", "c", "d", "e"].iter().filter(|n| **n != owner).all(|n| !c.ledger_runs_on(n))
}

fn id(name: &str) -> u64 {
    MemCluster::id(name)
}

#[test]
fn a_partitioned_owner_stops_its_group_before_it_starts_on_the_other_side() {
    let mut c = MemCluster::new();
    c.start_all();
    c.wait("group app started on a", WAIT, |c| started_on(c, "w", "a"));
    let (_, _, epoch) = c.group("w", "app").unwrap();
    // a alone on one side; b and the witness (a quorum) on the other.
    c.router.partition(&[id("a")], &[id("b"), id("w")]);
    c.wait("group app started on b", WAIT, |c| started_on(c, "w", "b"));
    let (_, _, after) = c.group("w", "app").unwrap();
    assert!(after > epoch, "a new epoch on b: {epoch} -> {after}");
    c.router.heal();
    c.wait("a back, running nothing", WAIT, |c| {
        ["w", "b"].iter().any(|via| c.status(via).is_some_and(|st| st.nodes.iter().all(|n| n.up)) && started_on(c, via, "b"))
    });
    c.check_ledger();
}

#[test]
fn an_owner_that_hears_but_cannot_speak_and_a_crashed_owner_never_run_the_group_twice() {
    let mut c = MemCluster::new();
    c.start_all();
    c.wait("group app started on a", WAIT, |c| started_on(c, "w", "a"));
    // a hears everyone, nobody hears a.
    for to in ["b", "w"] {
        c.router.cut(id("a"), id(to));
    }
    c.wait("group app started on b", WAIT, |c| started_on(c, "w", "b"));
    c.router.heal();
    c.wait("a back", WAIT, |c| c.status("w").is_some_and(|st| st.nodes.iter().all(|n| n.up)));
    // The owner's daemon crashes: its ledger writer runs on under its watchdog until the lease
    // ends, then the group moves back to a.
    c.crash("b");
    c.wait("group app started on a after b crashed", WAIT, |c| started_on(c, "w", "a"));
    c.start("b");
    c.wait("b back, running nothing", WAIT, |c| c.status("w").is_some_and(|st| st.nodes.iter().all(|n| n.up)) && started_on(c, "w", "a"));
    c.check_ledger();
}

/// Six members: five nodes and a witness. Five vote (the witness first, then the nodes in config
/// order); the sixth is a learner from the start: it never formed the cluster, the leader added
/// it, and it runs the group like any member. A voter's crash leaves a quorum (4 of 5).
#[test]
fn beyond_five_voters_the_next_member_is_a_learner_that_runs_groups() {
    let names = [("a", false), ("b", false), ("c", false), ("d", false), ("e", false), ("w", true)];
    let mut c = MemCluster::with_members(&names);
    c.start_all();
    c.wait("group app started on a", WAIT, |c| started_on(c, "w", "a"));
    let roles = |c: &MemCluster, via: &str| -> Vec<(String, String)> {
        c.status(via).and_then(|s| s.cluster_info).map_or_else(Vec::new, |ci| ci.members.into_iter().map(|m| (m.name, m.raft)).collect())
    };
    c.wait("five voters and e a learner", WAIT, |c| {
        let r = roles(c, "e");
        r.len() == 6 && r.iter().all(|(n, role)| role == if n == "e" { "learner" } else { "voter" })
    });
    let o = c.operator("e", OperatorCommand::MoveGroup { group: "app".into(), to: Some("e".into()) });
    assert!(o.is_ok(), "{o:?}");
    c.wait("group app started on e, the learner", WAIT, |c| started_on(c, "w", "e"));
    // A voter crashes: four of five still make a quorum, and the group stays where it is.
    let leader = c.leader("w").expect("a leader");
    let victim = ["b", "c", "d"].into_iter().find(|n| *n != leader).unwrap();
    c.crash(victim);
    c.wait("the cluster goes on without one voter", WAIT, |c| {
        c.status("w").is_some_and(|st| st.cluster_info.is_some_and(|ci| ci.quorum || ci.leader.is_some())) && started_on(c, "w", "e")
    });
    let o = c.operator("a", OperatorCommand::MoveGroup { group: "app".into(), to: Some("a".into()) });
    assert!(o.is_ok(), "{o:?}");
    c.wait("group app back on a", WAIT, |c| started_on(c, "w", "a"));
    c.check_ledger();
}

/// A small deterministic generator (xorshift64*): a failing seed replays the same schedule.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Seeded rounds of faults, each held for a random while, with switchovers asked for in between;
/// afterwards the cluster heals, and the group must end up started on one member with the
/// ledger showing it never ran on two at once. `WARDEN_NEMESIS_SEED` replays one seed.
#[test]
fn seeded_drops_delays_one_way_cuts_partitions_and_crashes_never_run_the_group_twice() {
    let seed = std::env::var("WARDEN_NEMESIS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_0001_u64);
    let mut rng = Rng(seed | 1);
    let mut c = MemCluster::new();
    c.start_all();
    c.wait("group app started on a", WAIT, |c| started_on(c, "w", "a"));
    let names = ["a", "b", "w"];
    let mut crashed: Vec<&str> = Vec::new();
    for round in 0..10 {
        let x = names[rng.below(3) as usize];
        let y = names.iter().copied().filter(|n| *n != x).nth(rng.below(2) as usize).unwrap();
        let fault = match rng.below(6) {
            0 => {
                c.router.lose_next(id(x), id(y), 1 + rng.below(50));
                format!("the next messages {x} -> {y} lost")
            }
            1 => {
                c.router.delay(id(x), id(y), Duration::from_millis(50 + rng.below(400)));
                format!("{x} -> {y} delayed")
            }
            2 => {
                c.router.cut(id(x), id(y));
                format!("{x} -> {y} cut (one way)")
            }
            3 => {
                let rest: Vec<u64> = names.iter().filter(|n| **n != x).map(|n| id(n)).collect();
                c.router.partition(&[id(x)], &rest);
                format!("{x} partitioned")
            }
            4 if crashed.is_empty() => {
                c.crash(x);
                crashed.push(x);
                format!("{x} crashed")
            }
            _ => {
                let to = ["a", "b"][rng.below(2) as usize];
                let r = c.operator(y, OperatorCommand::MoveGroup { group: "app".into(), to: Some(to.into()) });
                format!("move to {to} asked on {y}: {r:?}")
            }
        };
        tracing_note(seed, round, &fault);
        // The fault lasts a while: long enough, at times, for a lease to run out.
        std::thread::sleep(Duration::from_millis(300 + rng.below(4000)));
        c.router.heal();
        if rng.below(2) == 0 {
            for n in crashed.drain(..) {
                c.start(n);
            }
        }
    }
    c.router.heal();
    for n in crashed.drain(..) {
        c.start(n);
    }
    c.wait("every member up and group app started on one of a and b", WAIT, |c| {
        c.status("w").is_some_and(|st| st.nodes.iter().all(|n| n.up)) && (started_on(c, "w", "a") || started_on(c, "w", "b"))
    });
    c.check_ledger();
}

fn tracing_note(seed: u64, round: u32, fault: &str) {
    eprintln!("nemesis seed {seed:#x} round {round}: {fault}");
}
