//! `warden config apply`: what a running cluster's config may change, and how each member takes
//! the new one.
//!
//! The leader validates the new text as every member will load it, refuses changes that would
//! act on something running under rules it was not started with ([`change_refusal`]), and
//! commits the text with the hash of the config it replaces (a compare-and-set: two applies
//! racing cannot both win). Every member that ran the old config then writes the committed text
//! over its own config file (the old one kept as `<file>.prev`) and restarts its daemon in place
//! (`exec` of the same command line), one member at a time ([`slot`]), the leader last: the new
//! daemon loads the new file, finds it is the committed config, and adopts what runs, as after
//! any restart (nothing is stopped or started for the reload itself). A member that was down
//! during the apply is refused at its next start (its file differs) and pointed to a copy of the
//! committed config.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::api::MemberChange;
use crate::config::ClusterConfig;
use crate::scheduler::{GroupId, NodeId, Scheduler};

/// The first member reloads this long after the commit: the answer to the `config apply` goes
/// out first (the caller may be connected to that member).
pub const FIRST: Duration = Duration::from_secs(1);
/// The pause between two members' reloads: enough for the one before to be back (its restart
/// silence, a new election if it led) before the next goes.
pub const STAGGER: Duration = Duration::from_secs(3);

/// Why `new` cannot replace `old` while the cluster runs as `sched` says (`None`: it can).
/// `member`: the one member `new` adds or removes (`warden node add|remove`); the other members
/// (names, roles, addresses, order) must stay as they are.
pub fn change_refusal(old: &ClusterConfig, new: &ClusterConfig, sched: &Scheduler, member: Option<&MemberChange>) -> Option<String> {
    if old.cluster.name != new.cluster.name {
        return Some("the cluster's name cannot change (it names the state directory and the certificates)".into());
    }
    let nodes = |c: &ClusterConfig| -> Vec<(String, String, Vec<String>)> {
        c.nodes
            .iter()
            .map(|n| {
                let addresses = n.addresses.iter().map(|a| a.get_ref().clone()).collect();
                (n.name.get_ref().clone(), format!("{:?}", n.role), addresses)
            })
            .collect()
    };
    let (old_nodes, new_nodes) = (nodes(old), nodes(new));
    let listed = |list: &[(String, String, Vec<String>)], n: &str| list.iter().any(|(name, ..)| name == n);
    let without =
        |list: &[(String, String, Vec<String>)], n: &str| -> Vec<_> { list.iter().filter(|(name, ..)| name != n).cloned().collect() };
    match member {
        None if old_nodes != new_nodes => {
            return Some(
                "the members (names, roles, addresses) cannot change with `config apply`: add or remove one with \
                 `warden node add NODE FILE` or `warden node remove NODE FILE`; addresses and roles cannot change while the \
                 cluster runs (stop every member, give each the new file, and start them again)"
                    .into(),
            );
        }
        None => {}
        Some(MemberChange::Add(n)) => {
            if listed(&old_nodes, n) {
                return Some(format!("`{n}` is already a member"));
            }
            if !listed(&new_nodes, n) {
                return Some(format!("the new config has no `[[nodes]]` entry named `{n}`"));
            }
            if without(&new_nodes, n) != old_nodes {
                return Some(format!(
                    "the new config must list the members as they are (names, roles, addresses, order) plus `{n}`: only one member \
                     changes at a time"
                ));
            }
        }
        Some(MemberChange::Remove(n)) => {
            if !listed(&old_nodes, n) {
                return Some(format!("`{n}` is not a member"));
            }
            if listed(&new_nodes, n) {
                return Some(format!("the new config still lists `{n}`: remove its `[[nodes]]` entry"));
            }
            if without(&old_nodes, n) != new_nodes {
                return Some(format!(
                    "the new config must list the members as they are (names, roles, addresses, order) without `{n}`: only one \
                     member changes at a time"
                ));
            }
            if let Some(why) = removal_refusal(n, sched) {
                return Some(why);
            }
        }
    }
    if old.cluster.watchdog_fencing != new.cluster.watchdog_fencing
        || old.cluster.watchdog_device.as_ref().map(|d| d.get_ref()) != new.cluster.watchdog_device.as_ref().map(|d| d.get_ref())
    {
        return Some(
            "watchdog_fencing and watchdog_device cannot change while the cluster runs (the lease every member holds \
             depends on them): stop every member to change them"
                .into(),
        );
    }
    if old.cluster.lost_after() != new.cluster.lost_after() {
        return Some(
            "lost_after cannot change while the cluster runs (Raft's election timing follows it, and a leader's authority \
             counts on every voter's): stop every member to change it"
                .into(),
        );
    }
    // What a running group's stop or monitor would do differently: a resource gone, moved to
    // another group, or given another plugin, parameters or grants. Its group must be stopped.
    let groups = |c: &ClusterConfig| -> BTreeMap<String, String> {
        c.groups.iter().flat_map(|g| g.resources.iter().map(move |r| (r.get_ref().clone(), g.name.get_ref().clone()))).collect()
    };
    let (old_groups, new_groups) = (groups(old), groups(new));
    let identity = |c: &ClusterConfig, r: &str| {
        c.resources
            .iter()
            .find(|x| x.name.get_ref() == r)
            .map(|x| (x.plugin.get_ref().clone(), x.params.get_ref().clone(), format!("{:?}", x.grants.get_ref()), x.unmanaged))
    };
    let mut must_stop: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (r, g) in &old_groups {
        let why = match (new_groups.get(r), identity(old, r) == identity(new, r)) {
            (None, _) if identity(new, r).is_none() => "is removed",
            (None, _) => "leaves its group",
            (Some(ng), _) if ng != g => "moves to another group",
            (Some(_), false) => "gets another plugin, other parameters or other grants",
            _ => continue,
        };
        must_stop.entry(g.clone()).or_default().push(format!("`{r}` {why}"));
    }
    let new_names: BTreeSet<&String> = new.groups.iter().map(|g| g.name.get_ref()).collect();
    for g in &old.groups {
        if !new_names.contains(g.name.get_ref()) {
            must_stop.entry(g.name.get_ref().clone()).or_default().push("the group is removed".into());
        }
    }
    let running: Vec<String> = must_stop
        .iter()
        .filter(|(g, _)| sched.group_status(&GroupId::from(g.as_str())) != "stopped")
        .map(|(g, why)| format!("group `{g}` ({}; it is {})", why.join(", "), sched.group_status(&GroupId::from(g.as_str()))))
        .collect();
    if !running.is_empty() {
        return Some(format!(
            "the new config changes what running groups would stop or monitor: {}; stop them first (`warden group stop GROUP`), \
             apply, then start them",
            running.join("; ")
        ));
    }
    None
}

/// Why `node` cannot leave the cluster now: something may run there, or it could still be given
/// something (up and not in standby). A member that left cleanly, one in standby with
/// everything stopped, and one fenced or confirmed down may go.
fn removal_refusal(node: &str, sched: &Scheduler) -> Option<String> {
    let id = NodeId::from(node);
    let state = sched.state();
    let busy: Vec<String> = state
        .observations
        .resources
        .iter()
        .filter(|(_, r)| r.on.contains_key(&id) || r.in_flight.contains_key(&id))
        .map(|(name, _)| name.to_string())
        .collect();
    let owns: Vec<String> =
        state.decisions.groups.iter().filter(|(_, g)| g.owner.as_ref() == Some(&id)).map(|(name, _)| name.to_string()).collect();
    if !busy.is_empty() || !owns.is_empty() {
        let mut what = owns.iter().map(|g| format!("group `{g}`")).collect::<Vec<_>>();
        what.extend(busy.iter().map(|r| format!("`{r}`")));
        return Some(format!(
            "`{node}` may still run something ({}): move its groups away (`warden node standby {node}`) and wait until they \
             stopped there; a member that is lost must be fenced or confirmed down first (`warden node confirm-down {node}`)",
            what.join(", ")
        ));
    }
    let up = state.observations.nodes.get(&id).is_some_and(|n| n.up);
    let standby = state.decisions.nodes.get(&id).is_some_and(|d| d.standby);
    if up && !standby {
        return Some(format!(
            "`{node}` is up and may be given groups: put it in standby first (`warden node standby {node}`), or stop its daemon"
        ));
    }
    None
}

/// This member's place in the reload order (0 first): the others in name order, the leader last
/// (its restart costs an election; by then the others run the new config and one of them leads
/// with it).
pub fn slot<'a>(me: &str, leader: Option<&str>, members: impl IntoIterator<Item = &'a String>) -> u32 {
    let mut others: Vec<&String> = members.into_iter().filter(|m| Some(m.as_str()) != leader).collect();
    others.sort();
    match others.iter().position(|m| m.as_str() == me) {
        Some(i) => i as u32,
        None => others.len() as u32, // the leader
    }
}

/// Writes the committed config over `path`, durably, the old file kept as `<path>.prev`.
pub fn write_config(path: &Path, text: &str) -> Result<(), String> {
    let mut prev = path.as_os_str().to_owned();
    prev.push(".prev");
    if let Err(e) = std::fs::copy(path, &prev) {
        return Err(format!("cannot keep the old config as {}: {e}", Path::new(&prev).display()));
    }
    warden_store::state::replace_durably(path, text.as_bytes()).map_err(|e| e.to_string())
}

/// Restarts this daemon in place: the same program and arguments, the same process (its pid,
/// namespaces and service unit stay). Returns only if that failed.
pub fn reexec() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return e,
    };
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    std::process::Command::new(exe).args(args).exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_reloads_last_and_the_others_in_name_order() {
        let members: Vec<String> = ["w", "a", "b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(slot("a", Some("b"), &members), 0);
        assert_eq!(slot("w", Some("b"), &members), 1);
        assert_eq!(slot("b", Some("b"), &members), 2, "the leader goes last");
        // No leader known: everyone in name order.
        assert_eq!(slot("w", None, &members), 2);
    }

    const BASE: &str = r#"
version = 1
[cluster]
name = "t"

[[nodes]]
name = "a"
addresses = ["10.0.0.1:7400"]

[[nodes]]
name = "b"
addresses = ["10.0.0.2:7400"]

[[nodes]]
name = "w"
role = "witness"
addresses = ["10.0.0.3:7400"]

[[plugins]]
name = "ip"
path = "/nonexistent/ip.wasm"

[[resources]]
name = "vip"
plugin = "ip"
params = { address = "10.0.1.5/24", interface = "eth0" }
monitor_interval = "5s"

[[groups]]
name = "app"
resources = ["vip"]
"#;

    fn cfg(text: &str) -> ClusterConfig {
        ClusterConfig::parse(Path::new("/etc/warden/cluster.toml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn change_refusal_(old: &ClusterConfig, new: &ClusterConfig, sched: &Scheduler) -> Option<String> {
        change_refusal(old, new, sched, None)
    }

    #[test]
    fn a_running_group_refuses_changes_to_what_it_would_stop_and_the_cluster_refuses_new_members() {
        let old = cfg(BASE);
        let sched = Scheduler::new(old.model());
        // Fresh scheduler: the group's target is started (autostart), so it is not "stopped".
        assert_ne!(sched.group_status(&GroupId::from("app")), "stopped");
        // A monitor interval and a new group are fine.
        let more = BASE.replace("monitor_interval = \"5s\"", "monitor_interval = \"2s\"")
            + "\n[[resources]]\nname = \"vip2\"\nplugin = \"ip\"\nparams = { address = \"10.0.1.6/24\", interface = \"eth0\" }\n\n[[groups]]\nname = \"other\"\nresources = [\"vip2\"]\n";
        assert_eq!(change_refusal_(&old, &cfg(&more), &sched), None);
        // Another address for the running VIP: its stop would delete the wrong one.
        let moved = BASE.replace("10.0.1.5/24", "10.0.1.9/24");
        let why = change_refusal_(&old, &cfg(&moved), &sched).expect("refused");
        assert!(why.contains("group `app`") && why.contains("other parameters") && why.contains("warden group stop"), "{why}");
        // The running group removed, with its resource.
        let gone = BASE.split("[[resources]]").next().unwrap().to_string();
        let why = change_refusal_(&old, &cfg(&gone), &sched).expect("refused");
        assert!(why.contains("the group is removed"), "{why}");
        // Members and addresses, the name, the lease's kind.
        assert!(change_refusal_(&old, &cfg(&BASE.replace("10.0.0.2:7400", "10.0.0.9:7400")), &sched).unwrap().contains("warden node add"));
        assert!(change_refusal_(&old, &cfg(&BASE.replace("name = \"t\"", "name = \"u\"")), &sched).unwrap().contains("name"));
        let wd = BASE.replace("name = \"t\"\n", "name = \"t\"\nwatchdog_fencing = true\n");
        assert!(change_refusal_(&old, &cfg(&wd), &sched).unwrap().contains("watchdog_fencing"));
        // Detection, and with it Raft's election timing.
        let fast = BASE.replace("name = \"t\"\n", "name = \"t\"\nlost_after = \"700ms\"\n");
        assert!(change_refusal_(&old, &cfg(&fast), &sched).unwrap().contains("lost_after"));
    }

    const C: &str = "\n[[nodes]]\nname = \"c\"\naddresses = [\"10.0.0.4:7400\"]\n";

    /// BASE with node `c` added after `w`.
    fn with_c() -> String {
        BASE.replace("[[plugins]]", &format!("{}\n[[plugins]]", C.trim_start()))
    }

    #[test]
    fn a_member_is_added_or_removed_alone_and_only_when_nothing_may_run_there() {
        use crate::scheduler::{Event, Millis};
        let old = cfg(BASE);
        let sched = Scheduler::new(old.model());
        let add = |n: &str| MemberChange::Add(n.into());
        let new = cfg(&with_c());
        // `config apply` does not change members; `node add` does, one at a time.
        assert!(change_refusal(&old, &new, &sched, None).unwrap().contains("warden node add"));
        assert_eq!(change_refusal(&old, &new, &sched, Some(&add("c"))), None);
        assert!(change_refusal(&old, &new, &sched, Some(&add("d"))).unwrap().contains("no `[[nodes]]` entry named `d`"));
        assert!(change_refusal(&old, &old, &sched, Some(&add("a"))).unwrap().contains("already a member"));
        let moved_too = with_c().replace("10.0.0.2:7400", "10.0.0.9:7400");
        assert!(change_refusal(&old, &cfg(&moved_too), &sched, Some(&add("c"))).unwrap().contains("only one member"));

        // Removing `c` again: fine while it is not up (it never ran anything)...
        let mut sched = Scheduler::new(new.model());
        let remove = MemberChange::Remove("c".into());
        assert_eq!(change_refusal(&new, &old, &sched, Some(&remove)), None);
        assert!(change_refusal(&new, &new, &sched, Some(&remove)).unwrap().contains("still lists `c`"));
        // ...refused once it is up and may be given groups, or runs something.
        let now: Millis = 1;
        sched.handle(now, Event::NodesUp(vec![NodeId::from("a"), NodeId::from("b"), NodeId::from("c")]));
        let why = change_refusal(&new, &old, &sched, Some(&remove)).unwrap();
        assert!(why.contains("warden node standby c"), "{why}");
        // The group goes to `c` when it is the only node left that may run it.
        sched.handle(now, Event::NodeDown(NodeId::from("a")));
        sched.handle(now, Event::NodeDown(NodeId::from("b")));
        let why = change_refusal(&new, &old, &sched, Some(&remove)).unwrap();
        assert!(why.contains("may still run something") || why.contains("standby"), "{why}");
        // A lost member may have run anything: it must be fenced or confirmed down first.
        let mut sched = Scheduler::new(new.model());
        sched.restore(&Default::default(), 0);
        let why = change_refusal(&new, &old, &sched, Some(&remove)).unwrap();
        assert!(why.contains("may still run something") && why.contains("`vip`"), "{why}");
    }
}
