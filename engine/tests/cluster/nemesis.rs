//! A seeded random nemesis against a real cluster: one fault after another (a daemon killed,
//! stopped dead, a member powered off, cut off on both paths, on one path, unable to speak, the
//! leader killed, a switchover), each held for a random time, then everything healed and the
//! cluster left to settle (healed again every 2 s meanwhile: a fence that lands after the heal
//! powers the member off again, as a real device would, and an operator would power it on). The S1 sampler runs throughout and is read after every scenario; the
//! group's epoch must never go back; the cluster must settle after every scenario (liveness).
//!
//! `WARDEN_NEMESIS_N` scenarios per cluster (default 25: 50 in CI over the two fencing kinds),
//! `WARDEN_NEMESIS_SEED` to replay a run (printed at its start and in every failure),
//! `WARDEN_NEMESIS_ONLY=K` to draw only faults of kind K.

use std::time::{Duration, Instant};

use crate::cluster::{TestCluster, WAIT};

/// xorshift64: enough to draw faults and times reproducibly from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len() as u64) as usize]
    }
}

/// The group runs on a member with its services and address, every member is up, as the
/// leader reports it; returns (owner, epoch).
fn settled(c: &TestCluster) -> Option<(String, u64)> {
    let st = ["a", "b", "w"].iter().find_map(|m| c.status(m).filter(|st| st["cluster_info"]["quorum"] == true))?;
    let all_up = st["nodes"].as_array()?.iter().all(|n| n["up"] == true);
    let g = st["groups"].as_array()?.iter().find(|g| g["name"] == "app")?.clone();
    let owner = g["owner"].as_str()?.to_string();
    let running =
        g["state"] == "started" && c.service(&owner, "app-1").is_some() && c.service(&owner, "app-2").is_some() && c.has_vip(&owner);
    (all_up && running).then(|| (owner, g["epoch"].as_u64().unwrap_or(0)))
}

/// Undoes every fault: cuts removed, stopped daemons continued, a member whose daemon is gone
/// (killed, or powered off by its fence) powered on and started again.
fn heal(c: &mut TestCluster) {
    for m in ["a", "b", "w"] {
        c.heal(m);
        if c.is_running(m) {
            c.signal(m, "-CONT");
        } else {
            c.power_on(m);
            c.start(m);
        }
    }
}

fn run(mut c: TestCluster, kind: &str) {
    let n: usize = std::env::var("WARDEN_NEMESIS_N").ok().and_then(|v| v.parse().ok()).unwrap_or(25);
    let seed: u64 = std::env::var("WARDEN_NEMESIS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64)
        | 1;
    // WARDEN_NEMESIS_ONLY=K draws every fault of kind K (0 to 7, in the order below): a
    // debugging aid to hammer one kind (the draws of times stay those of the seed).
    let only: Option<u64> = std::env::var("WARDEN_NEMESIS_ONLY").ok().and_then(|v| v.parse().ok()).filter(|k| *k < 8);
    eprintln!("nemesis ({kind}): {n} scenarios, WARDEN_NEMESIS_SEED={seed}");
    let mut rng = Rng(seed);
    let s1 = c.sampler(&["app-1", "app-2"]);
    c.start_all();
    // What `settled` saw is kept: asked again, a leader change in between could answer
    // otherwise (this once made a settled cluster look stuck).
    let mut first = None;
    c.wait("the group started", WAIT, |c| {
        first = settled(c);
        first.is_some()
    });
    let (mut owner, mut epoch) = first.unwrap();
    let started = Instant::now();
    for i in 1..=n {
        // Not right after the previous scenario: a random quiet time first.
        std::thread::sleep(rng.millis(200, 2000));
        let other = if owner == "a" { "b" } else { "a" };
        // The owner is the likeliest victim: that is where a second copy would come from.
        let victim = if rng.below(3) < 2 { owner.clone() } else { rng.pick(&["a", "b", "w"]).to_string() };
        let hold = rng.millis(300, 7000);
        let draw = rng.below(8);
        let fault = match only.unwrap_or(draw) {
            0 => {
                c.signal(&victim, "-KILL");
                let _ = c.wait_exit(&victim, WAIT);
                std::thread::sleep(hold.min(Duration::from_secs(3)));
                format!("kill -9 of {victim}'s daemon, restarted after {hold:?} (at most 3 s)")
            }
            1 => {
                c.signal(&victim, "-STOP");
                std::thread::sleep(hold);
                format!("{victim}'s daemon stopped (SIGSTOP) for {hold:?}")
            }
            2 => {
                c.power_off(&victim);
                std::thread::sleep(hold.min(Duration::from_secs(3)));
                format!("{victim} powered off for {hold:?} (at most 3 s)")
            }
            3 => {
                c.cut(&victim, 1);
                c.cut(&victim, 2);
                std::thread::sleep(hold);
                format!("{victim} cut off on both paths for {hold:?}")
            }
            4 => {
                let path = 1 + rng.below(2) as u32;
                c.cut(&victim, path);
                std::thread::sleep(hold);
                format!("{victim}'s path {path} cut for {hold:?}")
            }
            5 => {
                c.cut_outgoing(&victim, 1);
                c.cut_outgoing(&victim, 2);
                std::thread::sleep(hold);
                format!("{victim} hears but cannot speak for {hold:?}")
            }
            6 => match c.leader(other).or_else(|| c.leader("w")) {
                Some(leader) => {
                    c.signal(&leader, "-KILL");
                    let _ = c.wait_exit(&leader, WAIT);
                    format!("the leader ({leader}) killed")
                }
                None => "no leader to kill".into(),
            },
            _ => {
                let o = c.cli(other, &["group", "move", "app", "--to", other]);
                format!("switchover to {other} ({})", if o.status.success() { "accepted" } else { "refused" })
            }
        };
        heal(&mut c);
        let t = Instant::now();
        let mut healed = Instant::now();
        let mut now = settled(&c);
        while now.is_none() && t.elapsed() < Duration::from_secs(90) {
            std::thread::sleep(Duration::from_millis(100));
            // A fence that lands after the heal (the leader had not yet counted the member lost
            // when it came back) powers it off again, as a real fence device would: like an
            // operator, power it on again.
            if healed.elapsed() > Duration::from_secs(2) {
                heal(&mut c);
                healed = Instant::now();
            }
            now = settled(&c);
        }
        let (seen, _) = s1.so_far();
        assert!(
            seen.is_empty(),
            "S1 violated in scenario {i} ({fault}), replay with WARDEN_NEMESIS_SEED={seed}: {:?}\n{}",
            &seen[..seen.len().min(5)],
            c.logs()
        );
        let Some((now_owner, now_epoch)) = now else {
            // What each member believes (Raft's view included) says more than the logs of a
            // cluster that went quiet.
            let views: Vec<String> = ["a", "b", "w"]
                .iter()
                .map(|m| {
                    format!("===== {m}'s status =====\n{}", c.status(m).map(|s| s.to_string()).unwrap_or_else(|| "(no answer)".into()))
                })
                .collect();
            panic!(
                "scenario {i} ({fault}): the cluster did not settle within 90 s; replay with WARDEN_NEMESIS_SEED={seed}\n{}\n{}",
                views.join("\n"),
                c.logs()
            );
        };
        assert!(now_epoch >= epoch, "scenario {i} ({fault}): epoch went back {epoch} -> {now_epoch}; WARDEN_NEMESIS_SEED={seed}");
        eprintln!("  {i:>3}. {fault}: settled in {:.1} s on {now_owner} (epoch {now_epoch})", t.elapsed().as_secs_f64());
        (owner, epoch) = (now_owner, now_epoch);
    }
    eprintln!("nemesis ({kind}): {n} scenarios in {:.0} s, S1 held", started.elapsed().as_secs_f64());
    s1.check();
}

#[test]
fn a_seeded_nemesis_never_runs_the_group_twice_with_a_fence_device() {
    run(TestCluster::with_power_fencing(), "fence device");
}

#[test]
fn a_seeded_nemesis_never_runs_the_group_twice_with_watchdog_fencing() {
    run(TestCluster::with_watchdog(), "watchdog fencing");
}
