//! Faults of the daemon itself and of its state directory.

use std::time::Duration;

use crate::node::*;

/// Processes whose command line is exactly `sleep <marker>`.
fn copies(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            cmd == format!("sleep\0{marker}\0").as_bytes() && !stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .count()
}

/// `kill -9` of the daemon while a slow start runs, then a restart: the orphaned start must not
/// finish a second copy after the new daemon's probe and start (the review's reproduction).
#[test]
fn daemon_killed_during_a_start_never_leaves_two_copies() {
    let marker = format!("77{}", std::process::id());
    let mut n = TestNode::new(|d| {
        format!(
            "{}\n[[groups]]\nname = \"app\"\nresources = [\"svc\"]\n",
            script_resource(d, "svc", &slow_start(d, 2, &marker), "monitor_interval = \"300ms\"")
        )
    });
    n.start(&[]);
    let began = n.dir.path().join("start-began");
    assert!(n.wait(LONG, |_| began.exists()), "the start never began: {}", n.log());
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    // Past the orphaned script's sleep: had it survived, its copy would be up by now.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(copies(&marker), 1, "exactly one copy of the service runs\n{}", n.log());
    assert!(
        n.events().iter().any(|e| e["subject"] == "svc" && e["message"].as_str().unwrap_or("").contains("died during `start`")),
        "the interrupted start is reported: {:?}",
        n.events()
    );
    n.signal("-TERM");
    n.wait_exit(LONG).unwrap();
    assert_eq!(copies(&marker), 0, "SIGTERM stopped it");
}

/// A second daemon is refused on the same state directory (other socket) and on the same
/// socket (other state directory), even while the first is stopped (SIGSTOP) with its socket
/// unresponsive; the first keeps its socket and serves again after SIGCONT.
#[test]
fn one_daemon_per_state_directory_and_socket() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let config = n.config.clone();
    let run = |state: &std::path::Path, socket: &std::path::Path| {
        std::process::Command::new(warden_bin())
            .args(["node", "run", "--node", "n1", "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(state)
            .arg("--socket")
            .arg(socket)
            .output()
            .unwrap()
    };
    let o = run(&n.state, &n.dir.path().join("other.sock"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is locked by another `warden node run` (pid"), "{err}");
    n.signal("-STOP");
    let o = run(&n.dir.path().join("other-state"), &n.socket);
    n.signal("-CONT");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("w.sock.lock is locked by another"), "{err}");
    assert!(n.socket.exists(), "the refused daemon left the first one's socket alone");
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "the first daemon still serves");
}

fn epoch(n: &TestNode, g: &str) -> u64 {
    n.status().and_then(|s| s["groups"].as_array().unwrap().iter().find(|x| x["name"] == g).and_then(|x| x["epoch"].as_u64())).unwrap_or(0)
}

/// An operator command is acknowledged only once its decision is durable. While the state file
/// cannot be written the command gets an error, status says so, and nothing is carried out;
/// once the disk works again the decision goes ahead and survives a restart.
#[test]
fn an_operator_command_is_acknowledged_only_when_durable() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    // A directory where the writer puts its temporary file: every write fails.
    let tmp = n.state.join("state.json.tmp");
    std::fs::create_dir(&tmp).unwrap();
    let o = n.cli(&["group", "stop", "app"]);
    assert!(!o.status.success(), "a command that is not durable is not acknowledged");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not acknowledged") && err.contains("state.json.tmp"), "{err}");
    let st = n.status().unwrap();
    assert!(st["state_error"].as_str().is_some_and(|e| e.contains("state.json.tmp")), "{st}");
    let text = String::from_utf8_lossy(&n.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("STATE NOT DURABLE"), "{text}");
    std::thread::sleep(Duration::from_millis(500));
    for r in ["a", "b", "c"] {
        assert!(n.alive(r), "{r} was stopped on a decision that is not durable");
    }
    std::fs::remove_dir(&tmp).unwrap();
    assert!(n.wait(LONG, |n| n.group_state("app") == "stopped"), "the held stop goes ahead once durable: {}", n.log());
    assert!(n.status().unwrap()["state_error"].is_null());
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    n.start(&[]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(n.group_state("app"), "stopped", "the acknowledged stop survived the restart");
    assert!(!n.alive("a"));
}

/// An empty or damaged state file falls back to the previous generation; with every generation
/// gone, epochs still do not go backwards.
#[test]
fn damaged_state_uses_the_previous_generation_and_epochs_never_go_back() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let o = n.cli(&["group", "move", "app"]);
    let _ = o; // a one-node move restarts in place or is refused; either way the epoch is kept
    let e1 = epoch(&n, "app");
    assert!(e1 > 0);
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    // Empty current file: the previous generation is used.
    std::fs::write(n.state.join("state.json"), b"").unwrap();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    assert!(epoch(&n, "app") >= e1, "epoch went back from {e1} to {}", epoch(&n, "app"));
    assert!(n.events().iter().any(|e| e["message"].as_str().unwrap_or("").contains("set aside")), "{:?}", n.events());
    let e2 = epoch(&n, "app");
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    // Every generation lost: epochs continue from the clock, above what was counted.
    let other = std::fs::read_to_string(n.state.join("state.json")).unwrap().replace("\"node\": \"n1\"", "\"node\": \"other\"");
    assert!(other.contains("\"node\": \"other\""), "{other}");
    for f in ["state.json", "state.json.prev"] {
        let _ = std::fs::remove_file(n.state.join(f));
    }
    std::fs::write(n.state.join("state.json"), other).unwrap();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    assert!(epoch(&n, "app") > e2, "epoch went back from {e2} to {}", epoch(&n, "app"));
    assert!(
        n.events().iter().any(|e| e["message"].as_str().unwrap_or("").contains("state of node `other`")),
        "another node's state is refused: {:?}",
        n.events()
    );
}

/// A bad byte in the event history loses only that line; numbering continues after the highest
/// number on disk.
#[test]
fn a_damaged_history_line_is_skipped_and_numbering_continues() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    n.signal("-KILL");
    n.wait_exit(LONG).unwrap();
    let path = n.state.join("events.jsonl");
    let mut bytes = std::fs::read(&path).unwrap();
    let max_before = n.events().iter().filter_map(|e| e["seq"].as_u64()).max().unwrap();
    let lines_before = bytes.iter().filter(|b| **b == b'\n').count();
    // Corrupt one byte in the middle of the second line, and tear the tail.
    let second = bytes.iter().position(|b| *b == b'\n').unwrap() + 5;
    bytes[second] = 0xff;
    bytes.extend_from_slice(b"{\"seq\": 99999, \"torn");
    std::fs::write(&path, &bytes).unwrap();
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let events = n.events();
    assert!(events.len() >= lines_before - 1, "the rest of the history is kept");
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    let after: Vec<u64> = seqs.iter().copied().filter(|s| *s > max_before).collect();
    assert!(!after.is_empty() && after.windows(2).all(|w| w[0] < w[1]), "numbering continues after {max_before}: {seqs:?}");
    assert!(!seqs.contains(&99999), "the torn tail was cut");
    let mut uniq = seqs.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), seqs.len(), "no sequence number is reused");
}

/// Hundreds of idle connections and an oversized request cost refused connections, not the
/// daemon's file descriptors: services are still monitored and recovered, and `status`
/// answers again once the idle clients have timed out.
#[test]
fn a_connection_flood_does_not_starve_the_node() {
    use std::io::{Read, Write};
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    // One request line far over the limit gets an error, and the daemon does not hold it.
    let mut big = std::os::unix::net::UnixStream::connect(&n.socket).unwrap();
    let _ = big.write_all(&vec![b'x'; 4 << 20]);
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(answer.contains("request too large"), "{answer}");
    let flood: Vec<_> = (0..400).filter_map(|_| std::os::unix::net::UnixStream::connect(&n.socket).ok()).collect();
    assert!(flood.len() > 64, "connections beyond the cap are accepted and refused, not left in the backlog");
    let old = n.daemon_pid("b").unwrap();
    n.kill_service("b");
    let recovered = || {
        n.events().iter().any(|e| e["subject"] == "b" && e["action"] == "recover" && e["result"] == "ok")
            && n.alive("b")
            && n.daemon_pid("b") != Some(old)
    };
    let start = std::time::Instant::now();
    while !recovered() && start.elapsed() < LONG {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(recovered(), "recovery went on during the flood: {}", n.log());
    assert!(n.wait(LONG, |n| n.status().is_some()), "status answers again once idle clients time out");
    drop(flood);
}

/// A daemon stopped (SIGSTOP) for longer than a start's timeout while the start script runs
/// does not judge the start timed out when the script succeeded: time the host was stalled
/// does not count against the action.
#[test]
fn a_stalled_daemon_does_not_turn_a_successful_start_into_a_timeout() {
    let mut n = TestNode::new(|d| {
        format!(
            "{}\n[[groups]]\nname = \"app\"\nresources = [\"svc\"]\n",
            script_resource(d, "svc", &slow_start(d, 1, "100000"), "monitor_interval = \"300ms\"\ntimeouts = { start = \"3s\" }")
        )
    });
    n.start(&[]);
    let began = n.dir.path().join("start-began");
    assert!(n.wait(LONG, |_| began.exists()), "{}", n.log());
    n.signal("-STOP");
    std::thread::sleep(Duration::from_secs(5));
    n.signal("-CONT");
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    let starts: Vec<_> = n.actions().into_iter().filter(|(s, a, _)| s == "svc" && a == "start").collect();
    assert_eq!(starts, vec![("svc".to_string(), "start".to_string(), "ok".to_string())], "{}", n.log());
}

/// A state disk that cannot be written never keeps the daemon from stopping: a held operator
/// command and SIGTERM still end with everything stopped and the daemon gone.
#[test]
fn shutdown_finishes_while_the_state_cannot_be_written() {
    let mut n = TestNode::new(|d| chain3(d, 3));
    n.start(&[]);
    assert!(n.wait(LONG, |n| n.group_state("app") == "started"), "{}", n.log());
    std::fs::create_dir(n.state.join("state.json.tmp")).unwrap();
    let o = n.cli(&["group", "stop", "app"]);
    assert!(!o.status.success(), "{o:?}");
    n.signal("-TERM");
    assert!(n.wait_exit(LONG).is_some(), "the daemon exits: {}", n.log());
    for r in ["a", "b", "c"] {
        assert!(!n.alive(r), "{r} was stopped at shutdown");
    }
}
