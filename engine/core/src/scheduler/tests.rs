//! Scheduler tests: scenarios, then seeded random simulations that check the invariants after
//! every step against a simulated world (what really runs where).

use super::*;

fn model(nodes: &[&str], groups: &[(&str, &[&str])], fenceable: bool) -> Model {
    let nodes = nodes.iter().map(|n| NodeModel { name: n.to_string(), role: Role::Node, fenceable }).collect::<Vec<_>>();
    let mut gm = BTreeMap::new();
    let mut rm = BTreeMap::new();
    for (g, members) in groups {
        let members: Vec<String> = members.iter().map(|s| s.to_string()).collect();
        let deps: BTreeMap<String, Vec<String>> = members.windows(2).map(|w| (w[1].clone(), vec![w[0].clone()])).collect();
        let dependents: BTreeMap<String, Vec<String>> = members.windows(2).map(|w| (w[0].clone(), vec![w[1].clone()])).collect();
        for m in &members {
            rm.insert(m.clone(), ResourceModel { name: m.clone(), group: g.to_string(), unmanaged: false, local_recovery: true });
        }
        gm.insert(
            g.to_string(),
            std::sync::Arc::new(GroupModel {
                name: g.to_string(),
                members,
                deps,
                dependents,
                priority: nodes.iter().map(|n| n.name.clone()).collect(),
                switchback: Switchback::Intelligent,
                max_restarts: 2,
                restart_window: 60_000,
                monitor_timeouts_to_fail: 2,
                autostart: true,
            }),
        );
    }
    Model { nodes, groups: gm, resources: rm }
}

/// Feed an event; answer every probe with "stopped" and every action with success, until quiet.
fn settle(s: &mut Scheduler, now: Millis, event: Event) -> Vec<Command> {
    let mut all = Vec::new();
    let mut queue = vec![event];
    while let Some(e) = queue.pop() {
        for c in s.handle(now, e) {
            all.push(c.clone());
            match c {
                Command::Probe { resource, node } => queue.push(Event::Probe { resource, node, outcome: MonitorOutcome::Stopped }),
                Command::Start { resource, node, .. } => {
                    queue.push(Event::ActionDone { resource, node, action: ActionKind::Start, result: Ok(()) })
                }
                Command::Stop { resource, node } => {
                    queue.push(Event::ActionDone { resource, node, action: ActionKind::Stop, result: Ok(()) })
                }
                Command::Recover { resource, node, .. } => {
                    queue.push(Event::ActionDone { resource, node, action: ActionKind::Recover, result: Ok(()) })
                }
                Command::Fence { node } => queue.push(Event::Fenced(node)),
                Command::Note { .. } => {}
            }
        }
    }
    all
}

fn starts(cmds: &[Command]) -> Vec<(String, String)> {
    cmds.iter()
        .filter_map(|c| if let Command::Start { resource, node, .. } = c { Some((resource.clone(), node.clone())) } else { None })
        .collect()
}
fn stops(cmds: &[Command]) -> Vec<(String, String)> {
    cmds.iter()
        .filter_map(|c| if let Command::Stop { resource, node } = c { Some((resource.clone(), node.clone())) } else { None })
        .collect()
}
fn rn(r: &str, n: &str) -> (String, String) {
    (r.to_string(), n.to_string())
}

#[test]
fn probes_first_then_starts_bottom_up() {
    let mut s = Scheduler::new(model(&["a"], &[("g", &["ip", "fs", "app"])], false));
    let first = s.handle(0, Event::NodeUp("a".into()));
    assert!(
        first.iter().all(|c| matches!(c, Command::Probe { .. } | Command::Note { .. })),
        "nothing starts before probes answer: {first:?}"
    );
    let cmds = settle(&mut s, 0, Event::Tick);
    let _ = cmds;
    let mut s = Scheduler::new(model(&["a"], &[("g", &["ip", "fs", "app"])], false));
    let cmds = settle(&mut s, 0, Event::NodeUp("a".into()));
    assert_eq!(starts(&cmds), vec![rn("ip", "a"), rn("fs", "a"), rn("app", "a")]);
    assert_eq!(s.group_status("g"), "started");
    assert_eq!(s.state().groups["g"].epoch, 1);
}

#[test]
fn probe_finding_resources_running_adopts_them() {
    let mut s = Scheduler::new(model(&["a"], &[("g", &["ip", "app"])], false));
    let probes = s.handle(0, Event::NodeUp("a".into()));
    assert_eq!(probes.iter().filter(|c| matches!(c, Command::Probe { .. })).count(), 2);
    let mut cmds = s.handle(1, Event::Probe { resource: "ip".into(), node: "a".into(), outcome: MonitorOutcome::Running });
    cmds.extend(s.handle(1, Event::Probe { resource: "app".into(), node: "a".into(), outcome: MonitorOutcome::Running }));
    assert!(starts(&cmds).is_empty(), "adopted, not started again: {cmds:?}");
    assert_eq!(s.group_status("g"), "started");
}

#[test]
fn monitor_failure_recovers_locally_then_fails_the_group() {
    let mut s = Scheduler::new(model(&["a"], &[("g", &["ip", "app"])], false));
    settle(&mut s, 0, Event::NodeUp("a".into()));
    let failed = || Event::Monitor { resource: "app".into(), node: "a".into(), outcome: MonitorOutcome::Failed("process gone".into()) };
    for i in 1..=2 {
        let cmds = settle(&mut s, i * 1000, failed());
        assert!(cmds.iter().any(|c| matches!(c, Command::Recover { resource, .. } if resource == "app")), "recovery {i}: {cmds:?}");
        assert_eq!(s.group_status("g"), "started");
    }
    // Third failure within the window: restarts exhausted; single node, so the group stops.
    let cmds = settle(&mut s, 3000, failed());
    assert!(!cmds.iter().any(|c| matches!(c, Command::Recover { .. })));
    assert_eq!(stops(&cmds), vec![rn("app", "a"), rn("ip", "a")], "stopped top-down");
    assert_eq!(s.group_status("g"), "failed");
    // Cleanup forgets the failures and the group comes back.
    let cmds = settle(&mut s, 4000, Event::Operator(OperatorCommand::Cleanup { resource: "app".into() }));
    assert_eq!(starts(&cmds), vec![rn("ip", "a"), rn("app", "a")]);
    assert_eq!(s.group_status("g"), "started");
}

#[test]
fn restart_window_forgets_old_failures() {
    let mut s = Scheduler::new(model(&["a"], &[("g", &["app"])], false));
    settle(&mut s, 0, Event::NodeUp("a".into()));
    let failed = || Event::Monitor { resource: "app".into(), node: "a".into(), outcome: MonitorOutcome::Failed("x".into()) };
    settle(&mut s, 1_000, failed());
    settle(&mut s, 2_000, failed());
    // 70 s later both earlier recoveries are out of the 60 s window.
    let cmds = settle(&mut s, 72_000, failed());
    assert!(cmds.iter().any(|c| matches!(c, Command::Recover { .. })), "{cmds:?}");
}

#[test]
fn monitor_timeouts_count_only_in_a_row() {
    let mut s = Scheduler::new(model(&["a"], &[("g", &["app"])], false));
    settle(&mut s, 0, Event::NodeUp("a".into()));
    let m = |o| Event::Monitor { resource: "app".into(), node: "a".into(), outcome: o };
    assert!(settle(&mut s, 1, m(MonitorOutcome::Timeout)).iter().all(|c| !matches!(c, Command::Recover { .. })));
    settle(&mut s, 2, m(MonitorOutcome::Running));
    assert!(settle(&mut s, 3, m(MonitorOutcome::Timeout)).iter().all(|c| !matches!(c, Command::Recover { .. })));
    let cmds = settle(&mut s, 4, m(MonitorOutcome::Timeout));
    assert!(cmds.iter().any(|c| matches!(c, Command::Recover { .. })), "second timeout in a row is a failure: {cmds:?}");
}

#[test]
fn failed_stop_blocks_the_group_until_fenced() {
    let mut s = Scheduler::new(model(&["a", "b"], &[("g", &["ip", "app"])], true));
    settle(&mut s, 0, Event::NodeUp("a".into()));
    settle(&mut s, 0, Event::NodeUp("b".into()));
    assert_eq!(s.state().groups["g"].owner.as_deref(), Some("a"));
    // Move to b; the stop of `app` on a fails.
    let cmds = s.handle(1, Event::Operator(OperatorCommand::MoveGroup { group: "g".into(), to: Some("b".into()) }));
    assert_eq!(stops(&cmds), vec![rn("app", "a")]);
    let cmds =
        s.handle(2, Event::ActionDone { resource: "app".into(), node: "a".into(), action: ActionKind::Stop, result: Err("busy".into()) });
    assert!(starts(&cmds).is_empty(), "nothing starts on b while app may still run on a: {cmds:?}");
    assert!(cmds.contains(&Command::Fence { node: "a".into() }), "{cmds:?}");
    // `ip` on a is not stopped either: app (which needs it) may still be running there.
    assert!(stops(&cmds).is_empty(), "{cmds:?}");
    let cmds = settle(&mut s, 3, Event::Fenced("a".into()));
    assert_eq!(starts(&cmds), vec![rn("ip", "b"), rn("app", "b")]);
}

#[test]
fn lost_node_without_fence_device_keeps_its_groups_blocked() {
    let mut s = Scheduler::new(model(&["a", "b"], &[("g", &["app"])], false));
    settle(&mut s, 0, Event::NodeUp("a".into()));
    settle(&mut s, 0, Event::NodeUp("b".into()));
    let cmds = settle(&mut s, 1, Event::NodeDown("a".into()));
    assert!(starts(&cmds).is_empty(), "no fencing possible: the group must not start on b: {cmds:?}");
    assert!(!cmds.iter().any(|c| matches!(c, Command::Fence { .. })));
    // When a returns, its resources are probed; once known stopped, b may run the group.
    let cmds = s.handle(2, Event::NodeUp("a".into()));
    assert!(cmds.iter().any(|c| matches!(c, Command::Probe { node, .. } if node == "a")));
}

#[test]
fn lost_node_with_fence_device_fails_over_after_fencing() {
    let mut s = Scheduler::new(model(&["a", "b"], &[("g", &["ip", "app"])], true));
    settle(&mut s, 0, Event::NodeUp("a".into()));
    settle(&mut s, 0, Event::NodeUp("b".into()));
    let cmds = s.handle(1, Event::NodeDown("a".into()));
    assert!(starts(&cmds).is_empty());
    assert!(cmds.contains(&Command::Fence { node: "a".into() }));
    let cmds = settle(&mut s, 2, Event::Fenced("a".into()));
    assert_eq!(starts(&cmds), vec![rn("ip", "b"), rn("app", "b")]);
    assert_eq!(s.state().groups["g"].epoch, 2);
}

#[test]
fn standby_moves_groups_away_and_intelligent_switchback_stays() {
    let mut s = Scheduler::new(model(&["a", "b"], &[("g", &["app"])], true));
    settle(&mut s, 0, Event::NodeUp("a".into()));
    settle(&mut s, 0, Event::NodeUp("b".into()));
    let cmds = settle(&mut s, 1, Event::Operator(OperatorCommand::Standby { node: "a".into() }));
    assert_eq!(stops(&cmds), vec![rn("app", "a")]);
    assert_eq!(starts(&cmds), vec![rn("app", "b")]);
    let cmds = settle(&mut s, 2, Event::Operator(OperatorCommand::Online { node: "a".into() }));
    assert!(starts(&cmds).is_empty(), "intelligent switchback: stays on b");
}

#[test]
fn automatic_switchback_returns_to_the_preferred_node() {
    let mut m = model(&["a", "b"], &[("g", &["app"])], true);
    std::sync::Arc::get_mut(m.groups.get_mut("g").unwrap()).unwrap().switchback = Switchback::Automatic;
    let mut s = Scheduler::new(m);
    settle(&mut s, 0, Event::NodeUp("a".into()));
    settle(&mut s, 0, Event::NodeUp("b".into()));
    settle(&mut s, 1, Event::Operator(OperatorCommand::Standby { node: "a".into() }));
    let cmds = settle(&mut s, 2, Event::Operator(OperatorCommand::Online { node: "a".into() }));
    assert_eq!(starts(&cmds), vec![rn("app", "a")]);
}

#[test]
fn a_move_to_a_node_that_keeps_failing_does_not_loop() {
    let mut s = Scheduler::new(model(&["a", "b"], &[("g", &["app"])], true));
    settle(&mut s, 0, Event::NodeUp("a".into()));
    settle(&mut s, 0, Event::NodeUp("b".into()));
    let cmds = s.handle(1, Event::Operator(OperatorCommand::MoveGroup { group: "g".into(), to: Some("b".into()) }));
    assert_eq!(stops(&cmds), vec![rn("app", "a")]);
    let cmds = s.handle(2, Event::ActionDone { resource: "app".into(), node: "a".into(), action: ActionKind::Stop, result: Ok(()) });
    assert_eq!(starts(&cmds), vec![rn("app", "b")]);
    // The start fails on b: the group goes back to a instead of retrying b forever.
    let cmds =
        s.handle(3, Event::ActionDone { resource: "app".into(), node: "b".into(), action: ActionKind::Start, result: Err("boom".into()) });
    assert_eq!(stops(&cmds), vec![rn("app", "b")]);
    let cmds = s.handle(4, Event::ActionDone { resource: "app".into(), node: "b".into(), action: ActionKind::Stop, result: Ok(()) });
    assert_eq!(starts(&cmds), vec![rn("app", "a")]);
}

#[test]
fn a_failed_unmanaged_member_does_not_freeze_its_group() {
    let mut m = model(&["a"], &[("g", &["base", "app"])], false);
    m.resources.get_mut("base").unwrap().unmanaged = true;
    let mut s = Scheduler::new(m);
    s.handle(0, Event::NodeUp("a".into()));
    s.handle(0, Event::Probe { resource: "base".into(), node: "a".into(), outcome: MonitorOutcome::Running });
    let cmds = s.handle(0, Event::Probe { resource: "app".into(), node: "a".into(), outcome: MonitorOutcome::Stopped });
    assert_eq!(starts(&cmds), vec![rn("app", "a")]);
    s.handle(1, Event::ActionDone { resource: "app".into(), node: "a".into(), action: ActionKind::Start, result: Ok(()) });
    let cmds =
        s.handle(2, Event::Monitor { resource: "base".into(), node: "a".into(), outcome: MonitorOutcome::Error("agent trapped".into()) });
    assert!(stops(&cmds).is_empty(), "nothing is stopped because of an unmanaged member: {cmds:?}");
}

#[test]
fn operator_commands_are_checked() {
    let s = Scheduler::new(model(&["a", "b"], &[("g", &["app"])], true));
    assert_eq!(s.check_operator(&OperatorCommand::StopGroup { group: "nope".into() }), Err("no group named `nope`".into()));
    assert!(s
        .check_operator(&OperatorCommand::MoveGroup { group: "g".into(), to: Some("b".into()) })
        .unwrap_err()
        .contains("cannot run group"));
    assert_eq!(s.check_operator(&OperatorCommand::Cleanup { resource: "x".into() }), Err("no resource named `x`".into()));
}

#[test]
fn stop_and_start_group() {
    let mut s = Scheduler::new(model(&["a"], &[("g", &["ip", "app"])], false));
    settle(&mut s, 0, Event::NodeUp("a".into()));
    let cmds = settle(&mut s, 1, Event::Operator(OperatorCommand::StopGroup { group: "g".into() }));
    assert_eq!(stops(&cmds), vec![rn("app", "a"), rn("ip", "a")]);
    assert_eq!(s.group_status("g"), "stopped");
    let cmds = settle(&mut s, 2, Event::Operator(OperatorCommand::StartGroup { group: "g".into() }));
    assert_eq!(starts(&cmds), vec![rn("ip", "a"), rn("app", "a")]);
}

#[test]
fn shutdown_stops_everything_top_down_and_keeps_targets() {
    let mut s = Scheduler::new(model(&["a"], &[("g", &["ip", "fs", "app"])], false));
    settle(&mut s, 0, Event::NodeUp("a".into()));
    let first = s.stop_all(1);
    assert_eq!(stops(&first), vec![rn("app", "a")], "only the top can stop first");
    assert_eq!(s.state().groups["g"].target, Target::Started);
    // A stop that fails does not hold the shutdown forever: nothing more can be done for it.
    let cmds =
        s.handle(2, Event::ActionDone { resource: "app".into(), node: "a".into(), action: ActionKind::Stop, result: Err("busy".into()) });
    assert!(stops(&cmds).is_empty(), "fs must not stop under a possibly running app: {cmds:?}");
    assert_eq!(s.stop_failed_on("a"), vec!["app".to_string()]);
    assert_eq!(s.active_on("a"), vec!["app".to_string(), "fs".to_string(), "ip".to_string()]);
}

#[test]
fn failed_probe_restarts_the_resource_and_its_dependents() {
    let mut s = Scheduler::new(model(&["a"], &[("g", &["ip", "app"])], false));
    s.handle(0, Event::NodeUp("a".into()));
    s.handle(0, Event::Probe { resource: "ip".into(), node: "a".into(), outcome: MonitorOutcome::Failed("half up".into()) });
    let cmds = s.handle(0, Event::Probe { resource: "app".into(), node: "a".into(), outcome: MonitorOutcome::Running });
    assert_eq!(stops(&cmds), vec![rn("app", "a")], "dependents first");
}

// ---------------------------------------------------------------------------------------------
// Seeded simulation.

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct World {
    /// (resource, node) really running.
    running: BTreeSet<(String, String)>,
    /// Node reachable by the coordinator.
    connected: BTreeMap<String, bool>,
    /// Bumped when a node is fenced or reconnects: commands issued before are void.
    generation: BTreeMap<String, u64>,
    pending: Vec<(u64, Command)>,
}

fn check_s1(model: &Model, w: &World, seed: u64, step: usize, log: &[String]) {
    for g in model.groups.values() {
        let nodes: BTreeSet<&String> = w.running.iter().filter(|(r, _)| g.members.contains(r)).map(|(_, n)| n).collect();
        assert!(nodes.len() <= 1, "seed {seed} step {step}: group {} really runs on {:?}\n{}", g.name, nodes, log.join("\n"));
    }
}

#[derive(Default)]
struct Tally {
    starts: usize,
    recovers: usize,
    fences: usize,
    stop_failures: usize,
}

fn simulate(seed: u64, steps: usize, fenceable: bool, tally: &mut Tally) {
    let m = model(&["a", "b", "c"], &[("g1", &["ip", "fs", "app"]), ("g2", &["db"])], fenceable);
    let mut s = Scheduler::new(m.clone());
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut w = World { running: BTreeSet::new(), connected: BTreeMap::new(), generation: BTreeMap::new(), pending: Vec::new() };
    let nodes = ["a", "b", "c"];
    let resources: Vec<String> = m.resources.keys().cloned().collect();
    let mut log: Vec<String> = Vec::new();
    let mut now: Millis = 0;

    let feed = |s: &mut Scheduler, w: &mut World, now: Millis, e: Event, log: &mut Vec<String>| {
        log.push(format!("{now}: {e:?}"));
        for c in s.handle(now, e) {
            if let Command::Start { resource, node, .. } = &c {
                // Ordering: every dependency is believed running on that node.
                let g = &s.model().groups[&s.model().resources[resource].group];
                for d in g.deps.get(resource).into_iter().flatten() {
                    assert_eq!(
                        s.state().resources[d].on.get(node),
                        Some(&Activity::Running),
                        "seed {seed}: {resource} started on {node} before {d}\n{}",
                        log.join("\n")
                    );
                }
            }
            log.push(format!("   -> {c:?}"));
            let node = match &c {
                Command::Probe { node, .. } | Command::Start { node, .. } | Command::Stop { node, .. } | Command::Recover { node, .. } => {
                    Some(node.clone())
                }
                _ => None,
            };
            let gen = node.map(|n| w.generation.get(&n).copied().unwrap_or(0)).unwrap_or(0);
            w.pending.push((gen, c));
        }
    };

    for n in nodes {
        w.connected.insert(n.into(), true);
        feed(&mut s, &mut w, now, Event::NodeUp(n.into()), &mut log);
    }
    for step in 0..steps {
        now += 1 + rng.below(3000);
        let choice = rng.below(100);
        if choice < 55 && !w.pending.is_empty() {
            // Complete a pending command.
            let (gen, c) = w.pending.remove(rng.below(w.pending.len() as u64) as usize);
            let valid = |w: &World, n: &str| w.connected[n] && w.generation.get(n).copied().unwrap_or(0) == gen;
            match c {
                Command::Probe { resource, node } if valid(&w, &node) => {
                    let outcome = if w.running.contains(&(resource.clone(), node.clone())) {
                        MonitorOutcome::Running
                    } else {
                        MonitorOutcome::Stopped
                    };
                    feed(&mut s, &mut w, now, Event::Probe { resource, node, outcome }, &mut log);
                }
                Command::Start { resource, node, .. } | Command::Recover { resource, node, .. } if valid(&w, &node) => {
                    let action = if s.state().resources[&resource].on.get(&node) == Some(&Activity::Recovering) {
                        ActionKind::Recover
                    } else {
                        ActionKind::Start
                    };
                    let ok = !rng.chance(10);
                    if action == ActionKind::Recover {
                        tally.recovers += 1;
                    } else {
                        tally.starts += 1;
                    }
                    if ok || rng.chance(50) {
                        w.running.insert((resource.clone(), node.clone()));
                    }
                    let result = if ok { Ok(()) } else { Err("simulated start failure".into()) };
                    feed(&mut s, &mut w, now, Event::ActionDone { resource, node, action, result }, &mut log);
                }
                Command::Stop { resource, node } if valid(&w, &node) => {
                    let ok = !rng.chance(8);
                    tally.stop_failures += usize::from(!ok);
                    if ok {
                        w.running.remove(&(resource.clone(), node.clone()));
                    }
                    let result = if ok { Ok(()) } else { Err("simulated stop failure".into()) };
                    feed(&mut s, &mut w, now, Event::ActionDone { resource, node, action: ActionKind::Stop, result }, &mut log);
                }
                Command::Fence { node } => {
                    tally.fences += 1;
                    // Power off: everything there dies; membership sees the node go; it later boots
                    // back empty.
                    w.running.retain(|(_, n)| n != &node);
                    *w.generation.entry(node.clone()).or_default() += 1;
                    if w.connected.insert(node.clone(), false) == Some(true) {
                        feed(&mut s, &mut w, now, Event::NodeDown(node.clone()), &mut log);
                    }
                    feed(&mut s, &mut w, now, Event::Fenced(node), &mut log);
                }
                _ => {} // void: the node was lost or fenced since
            }
        } else if choice < 70 {
            // A monitor round on a connected node, reporting the truth (sometimes a timeout).
            let n = nodes[rng.below(3) as usize];
            if w.connected[n] {
                for r in s.monitored_on(n) {
                    let outcome = if rng.chance(5) {
                        MonitorOutcome::Timeout
                    } else if w.running.contains(&(r.clone(), n.to_string())) {
                        MonitorOutcome::Running
                    } else {
                        MonitorOutcome::Stopped
                    };
                    feed(&mut s, &mut w, now, Event::Monitor { resource: r, node: n.into(), outcome }, &mut log);
                }
            }
        } else if choice < 78 {
            // A process dies.
            if let Some(k) = w.running.iter().nth(rng.below(w.running.len().max(1) as u64) as usize).cloned() {
                w.running.remove(&k);
                log.push(format!("{now}: world: {k:?} died"));
            }
        } else if choice < 84 {
            // A node is cut off (its processes keep running!) or comes back.
            let n = nodes[rng.below(3) as usize];
            if w.connected[n] {
                w.connected.insert(n.into(), false);
                *w.generation.entry(n.into()).or_default() += 1;
                feed(&mut s, &mut w, now, Event::NodeDown(n.into()), &mut log);
            } else {
                w.connected.insert(n.into(), true);
                *w.generation.entry(n.into()).or_default() += 1;
                feed(&mut s, &mut w, now, Event::NodeUp(n.into()), &mut log);
            }
        } else {
            let cmd = match rng.below(6) {
                0 => OperatorCommand::MoveGroup { group: "g1".into(), to: Some(nodes[rng.below(3) as usize].into()) },
                1 => OperatorCommand::StopGroup { group: ["g1", "g2"][rng.below(2) as usize].into() },
                2 => OperatorCommand::StartGroup { group: ["g1", "g2"][rng.below(2) as usize].into() },
                3 => OperatorCommand::Cleanup { resource: resources[rng.below(resources.len() as u64) as usize].clone() },
                4 => OperatorCommand::Standby { node: nodes[rng.below(3) as usize].into() },
                _ => OperatorCommand::Online { node: nodes[rng.below(3) as usize].into() },
            };
            if s.check_operator(&cmd).is_ok() {
                feed(&mut s, &mut w, now, Event::Operator(cmd), &mut log);
            }
        }
        check_s1(&m, &w, seed, step, &log);
    }

    // Liveness: heal everything, then every group must end up started on exactly one node.
    for n in nodes {
        if !w.connected[n] {
            w.connected.insert(n.into(), true);
            *w.generation.entry(n.into()).or_default() += 1;
            feed(&mut s, &mut w, now, Event::NodeUp(n.into()), &mut log);
        }
        feed(&mut s, &mut w, now, Event::Operator(OperatorCommand::Online { node: n.into() }), &mut log);
    }
    for r in &resources {
        feed(&mut s, &mut w, now, Event::Operator(OperatorCommand::Cleanup { resource: r.clone() }), &mut log);
    }
    for g in ["g1", "g2"] {
        feed(&mut s, &mut w, now, Event::Operator(OperatorCommand::StartGroup { group: g.into() }), &mut log);
    }
    for _ in 0..2000 {
        if w.pending.is_empty() {
            break;
        }
        now += 100;
        let (gen, c) = w.pending.remove(0);
        let valid = w_valid(&w, &c, gen);
        let e = match c {
            _ if !valid => continue,
            Command::Probe { resource, node } => {
                let outcome =
                    if w.running.contains(&(resource.clone(), node.clone())) { MonitorOutcome::Running } else { MonitorOutcome::Stopped };
                Event::Probe { resource, node, outcome }
            }
            Command::Start { resource, node, .. } | Command::Recover { resource, node, .. } => {
                let action = if s.state().resources[&resource].on.get(&node) == Some(&Activity::Recovering) {
                    ActionKind::Recover
                } else {
                    ActionKind::Start
                };
                w.running.insert((resource.clone(), node.clone()));
                Event::ActionDone { resource, node, action, result: Ok(()) }
            }
            Command::Stop { resource, node } => {
                w.running.remove(&(resource.clone(), node.clone()));
                Event::ActionDone { resource, node, action: ActionKind::Stop, result: Ok(()) }
            }
            Command::Fence { node } => {
                w.running.retain(|(_, n)| n != &node);
                Event::Fenced(node)
            }
            Command::Note { .. } => continue,
        };
        feed(&mut s, &mut w, now, e, &mut log);
        // Monitors keep telling the truth, so processes that died earlier are noticed.
        for n in nodes {
            for r in s.monitored_on(n) {
                if !w.running.contains(&(r.clone(), n.to_string())) {
                    feed(&mut s, &mut w, now, Event::Monitor { resource: r, node: n.into(), outcome: MonitorOutcome::Stopped }, &mut log);
                }
            }
        }
        check_s1(&m, &w, seed, 0, &log);
    }
    for g in ["g1", "g2"] {
        assert_eq!(
            s.group_status(g),
            "started",
            "seed {seed}: {g} did not recover after healing\n{}\nSTATE {:#?}\nPENDING {:?}",
            log[log.len().saturating_sub(30)..].join("\n"),
            s.state(),
            w.pending
        );
        let owner = s.state().groups[g].owner.clone().unwrap();
        for r in &m.groups[g].members {
            assert!(w.running.contains(&(r.clone(), owner.clone())), "seed {seed}: {r} not really running on {owner}");
        }
    }
}

fn w_valid(w: &World, c: &Command, gen: u64) -> bool {
    match c {
        Command::Probe { node, .. } | Command::Start { node, .. } | Command::Stop { node, .. } | Command::Recover { node, .. } => {
            w.connected[node] && w.generation.get(node).copied().unwrap_or(0) == gen
        }
        _ => true,
    }
}

#[test]
fn random_schedules_never_run_a_group_on_two_nodes_with_fencing() {
    let mut t = Tally::default();
    for seed in 0..300 {
        simulate(seed, 400, true, &mut t);
    }
    // The schedules really exercise the dangerous paths.
    assert!(
        t.starts > 2_000 && t.recovers > 300 && t.fences > 300 && t.stop_failures > 100,
        "starts {} recovers {} fences {} stop failures {}",
        t.starts,
        t.recovers,
        t.fences,
        t.stop_failures
    );
}

#[test]
fn random_schedules_never_run_a_group_on_two_nodes_without_fencing() {
    let mut t = Tally::default();
    for seed in 1000..1300 {
        simulate(seed, 400, false, &mut t);
    }
    assert_eq!(t.fences, 0);
    assert!(t.starts > 2_000 && t.stop_failures > 100, "starts {} stop failures {}", t.starts, t.stop_failures);
}
