//! Fail-over benchmark (not a test: it prints a table). Two nodes and a witness, each a real
//! `warden node run` in its own network namespace (the cluster tier's fixture: two paths, mutual
//! TLS), group `app` = a virtual IP (the ip agent) ← two pid-file services, and a fence device
//! (fence-exec driving the fixture's power switch: it kills everything in the member's namespace
//! and takes its links down, then reports it off).
//!
//! Run (root): `cargo xtask plugins && cargo bench -p warden --bench failover`
//! (`WARDEN_BENCH_N` rounds of each kind, default 20). `WARDEN_BENCH_FENCING=watchdog`: no fence
//! device, `watchdog_fencing = true` instead (the group moves once the owner's lease has
//! provably run out). `WARDEN_BENCH_LOST_AFTER=700ms`: `[cluster] lost_after` set to that
//! (default 1 s), as Pacemaker's figures were measured with Corosync's token tuned.
//!
//! Each round: once the group runs on its owner and the other member is up and has probed
//! everything, wait 3 s plus a uniformly random part of 2 s, power the owner off,
//! and measure until the virtual IP answers ICMP from the client namespace (it can only be the
//! other member: the owner's links are down). Then the owner is powered on and its daemon
//! started again. Rounds alternate between an owner that is not the leader (the witness or the
//! other node leads) and an owner that is (its death also costs an election): before such a
//! round the group is moved to the leader, and if the witness leads, its daemon is restarted
//! first so that a node leads. `WARDEN_BENCH_N` rounds of each.

#[path = "../tests/support/cluster.rs"]
mod cluster;
#[path = "../tests/support/jp1.rs"]
mod jp1;
#[path = "../tests/support/netns.rs"]
mod netns;
#[path = "../tests/support/node.rs"]
mod node;
#[path = "../tests/support/plugins.rs"]
mod support;

use std::time::{Duration, Instant, SystemTime};

use cluster::{TestCluster, VIP, WAIT};

/// The group runs on `owner`, every member is up, and nothing is still being probed.
fn settled(c: &TestCluster, via: &str, owner: &str) -> bool {
    let Some(st) = c.status(via) else { return false };
    let nodes_up = st["nodes"].as_array().is_some_and(|n| n.iter().all(|n| n["up"] == true));
    let group = st["groups"].as_array().and_then(|g| g.iter().find(|g| g["name"] == "app")).cloned().unwrap_or_default();
    let probed = st["resources"].as_array().is_some_and(|rs| {
        rs.iter().all(|r| r["on"].as_array().is_some_and(|on| on.iter().all(|x| x[1] != "probing" && x[1] != "unknown")))
    });
    nodes_up && probed && group["state"] == "started" && group["owner"] == owner && c.has_vip(owner)
}

/// Until the virtual IP answers ICMP echo from the client namespace (an echo every 10 ms, from
/// a raw socket in a thread that entered the namespace).
#[allow(unsafe_code)] // setns(2) and a raw ICMP socket through libc
fn until_vip_answers(client: &str, since: Instant) -> Duration {
    let path = format!("/run/netns/{client}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(&path).unwrap();
        // SAFETY: setns only switches this thread's network namespace; the raw socket calls get
        // buffers that outlive them and lengths that match.
        unsafe {
            assert_eq!(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET), 0, "setns {path}");
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
            assert!(fd >= 0, "raw ICMP socket: {}", std::io::Error::last_os_error());
            let tv = libc::timeval { tv_sec: 0, tv_usec: 10_000 };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of_val(&tv) as u32,
            );
            let vip: std::net::Ipv4Addr = VIP.parse().unwrap();
            let mut to: libc::sockaddr_in = std::mem::zeroed();
            to.sin_family = libc::AF_INET as u16;
            to.sin_addr.s_addr = u32::from_ne_bytes(vip.octets());
            let id = (std::process::id() & 0xffff) as u16;
            let mut seq: u16 = 0;
            while since.elapsed() < Duration::from_secs(60) {
                seq = seq.wrapping_add(1);
                let mut pkt = [8u8, 0, 0, 0, (id >> 8) as u8, id as u8, (seq >> 8) as u8, seq as u8];
                let sum = checksum(&pkt);
                pkt[2..4].copy_from_slice(&sum.to_be_bytes());
                libc::sendto(
                    fd,
                    pkt.as_ptr() as *const libc::c_void,
                    pkt.len(),
                    0,
                    &to as *const _ as *const libc::sockaddr,
                    std::mem::size_of_val(&to) as u32,
                );
                let sent = Instant::now();
                while sent.elapsed() < Duration::from_millis(10) {
                    let mut buf = [0u8; 1500];
                    let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
                    if n < 20 {
                        break; // timed out (or an error): send again
                    }
                    let ihl = ((buf[0] & 0x0f) as usize) * 4;
                    let from = std::net::Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                    if (n as usize) >= ihl + 8 && from == vip && buf[ihl] == 0 && u16::from_be_bytes([buf[ihl + 4], buf[ihl + 5]]) == id {
                        let took = since.elapsed();
                        libc::close(fd);
                        return took;
                    }
                }
            }
            panic!("the virtual IP never answered within 60 s");
        }
    })
    .join()
    .unwrap()
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("WARDEN_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let watchdog = std::env::var("WARDEN_BENCH_FENCING").is_ok_and(|v| v == "watchdog");
    let mut c = if watchdog { TestCluster::with_watchdog() } else { TestCluster::with_power_fencing() };
    // `[cluster] lost_after` other than its default 1 s (Corosync's token, tuned).
    let lost_after = std::env::var("WARDEN_BENCH_LOST_AFTER").ok();
    if let Some(d) = &lost_after {
        c = c.with_cluster_option(&format!("lost_after = \"{d}\""));
    }
    c.start_all();
    c.wait("group app settled on a", WAIT, |c| settled(c, "w", "a"));
    let mut owner = "a".to_string();
    let mut rounds: Vec<(f64, bool)> = Vec::new();
    for i in 0..2 * n {
        // Alternate: the owner is not the leader (the witness or the other node leads), then
        // the owner is the leader (its death also costs an election).
        let owner_leads = i % 2 == 1;
        let via = if owner == "a" { "b" } else { "a" };
        let mut leader = c.leader(via).expect("a leader");
        if owner_leads && leader == "w" {
            // Leadership off the witness: its daemon killed and started again.
            c.signal("w", "-KILL");
            c.wait_exit("w", WAIT);
            c.wait("a node leads", WAIT, |c| c.leader(via).is_some_and(|l| l != "w"));
            c.start("w");
            leader = c.leader(via).expect("a leader");
            // The witness back in the cluster, following that leader.
            c.wait("the witness follows", WAIT, |c| {
                c.status("w").is_some_and(|st| st["cluster_info"]["leader"].as_str() == Some(leader.as_str()))
            });
        }
        let want = if owner_leads {
            leader.clone()
        } else if leader == owner {
            via.to_string()
        } else {
            owner.clone()
        };
        if want != owner {
            let o = c.cli(via, &["group", "move", "app", "--to", &want]);
            assert!(o.status.success(), "{o:?}");
            owner = want;
        }
        let other = if owner == "a" { "b" } else { "a" }.to_string();
        c.wait("settled before the round", WAIT, |c| settled(c, &other, &owner));
        let led = c.leader(&other).as_deref() == Some(owner.as_str());
        // Not right after the previous disruption: 3 s, plus a uniformly random part of 2 s.
        std::thread::sleep(Duration::from_millis(3000 + random() % 2000));
        let t0 = Instant::now();
        c.power_off(&owner);
        let took = until_vip_answers(&c.client, t0);
        println!("round {:>2}: {owner} -> {other} in {:.2} s{}", i + 1, took.as_secs_f64(), if led { " (it was the leader)" } else { "" });
        rounds.push((took.as_secs_f64(), led));
        // Back: the old owner powered on and started again; the group stays where it is.
        c.power_on(&owner);
        c.start(&owner);
        c.wait("settled after the fail-over", WAIT, |c| settled(c, &other, &other));
        owner = other;
    }
    let pct = |v: &[f64], p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    println!();
    let how = if watchdog { "watchdog only" } else { "fence device" };
    let how = match &lost_after {
        Some(d) => format!("{how}, lost_after = {d}"),
        None => how.to_string(),
    };
    println!("| node powered off → VIP answers on the other ({how}) | n | median | p99 | min | max |");
    println!("|---|---|---|---|---|---|");
    for (label, pick) in [("all rounds", None), ("the owner was not the leader", Some(false)), ("the owner was the leader", Some(true))] {
        let mut v: Vec<f64> = rounds.iter().filter(|r| pick.is_none_or(|l| r.1 == l)).map(|r| r.0).collect();
        if v.is_empty() {
            continue;
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("| {label} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s |", v.len(), pct(&v, 0.5), pct(&v, 0.99), v[0], v[v.len() - 1]);
    }
}
