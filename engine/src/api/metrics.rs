//! Prometheus metrics: action counts and durations per plugin, monitor failures, resource
//! states. Served as text on `GET /metrics` at a loopback address from the config.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Metrics {
    /// (plugin, action, result) → count
    actions: BTreeMap<(String, String, String), u64>,
    /// (plugin, action) → (sum seconds, count)
    durations: BTreeMap<(String, String), (f64, u64)>,
    /// resource → monitor failures (failed, stopped unexpectedly, errors, timeouts)
    monitor_failures: BTreeMap<String, u64>,
    /// Failed attempts to write the state file.
    state_write_failures: u64,
    /// resource → exits of watched processes that brought a monitor forward
    watch_fired: BTreeMap<String, u64>,
}

impl Metrics {
    pub fn state_write_failure(&mut self) {
        self.state_write_failures += 1;
    }

    pub fn action(&mut self, plugin: &str, action: &str, result: &str, took: Duration) {
        *self.actions.entry((plugin.into(), action.into(), result.into())).or_default() += 1;
        let d = self.durations.entry((plugin.into(), action.into())).or_default();
        d.0 += took.as_secs_f64();
        d.1 += 1;
    }

    pub fn watch_fired(&mut self, resource: &str) {
        *self.watch_fired.entry(resource.into()).or_default() += 1;
    }

    pub fn monitor_failure(&mut self, resource: &str) {
        *self.monitor_failures.entry(resource.into()).or_default() += 1;
    }

    /// The exposition text; `states` is (resource, state) for the gauge.
    pub fn render(&self, states: &[(String, String)]) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP warden_state_write_failures_total Failed attempts to make the node state durable (decisions wait for it).\n# TYPE warden_state_write_failures_total counter\nwarden_state_write_failures_total {}",
            self.state_write_failures
        );
        let _ = writeln!(
            s,
            "# HELP warden_agent_actions_total Agent calls by plugin, action and result.\n# TYPE warden_agent_actions_total counter"
        );
        for ((p, a, r), n) in &self.actions {
            let _ = writeln!(s, "warden_agent_actions_total{{plugin=\"{p}\",action=\"{a}\",result=\"{r}\"}} {n}");
        }
        let _ = writeln!(s, "# HELP warden_agent_action_seconds Time spent in agent calls.\n# TYPE warden_agent_action_seconds summary");
        for ((p, a), (sum, n)) in &self.durations {
            let _ = writeln!(s, "warden_agent_action_seconds_sum{{plugin=\"{p}\",action=\"{a}\"}} {sum}");
            let _ = writeln!(s, "warden_agent_action_seconds_count{{plugin=\"{p}\",action=\"{a}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP warden_monitor_failures_total Monitor results that were not healthy.\n# TYPE warden_monitor_failures_total counter"
        );
        for (r, n) in &self.monitor_failures {
            let _ = writeln!(s, "warden_monitor_failures_total{{resource=\"{r}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP warden_watch_exits_total Exits of watched processes (agent `watch`) that brought a monitor forward.\n# TYPE warden_watch_exits_total counter"
        );
        for (r, n) in &self.watch_fired {
            let _ = writeln!(s, "warden_watch_exits_total{{resource=\"{r}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP warden_resource_state 1 for the state each resource is in on this node.\n# TYPE warden_resource_state gauge"
        );
        for (r, st) in states {
            let _ = writeln!(s, "warden_resource_state{{resource=\"{r}\",state=\"{st}\"}} 1");
        }
        s
    }
}

/// A cluster member's view for `/metrics`: whether it leads with a quorum, the term, and each
/// peer's and path's state (a peer is up while any of its paths is).
pub struct ClusterMetrics<'a> {
    pub leader: bool,
    pub quorum: bool,
    pub term: u64,
    pub links: &'a warden_cluster::Links,
}

impl ClusterMetrics<'_> {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP warden_cluster_leader 1 while this member leads with a quorum's acknowledgement.\n# TYPE warden_cluster_leader gauge"
        );
        let _ = writeln!(s, "warden_cluster_leader {}", u8::from(self.leader && self.quorum));
        let _ = writeln!(
            s,
            "# HELP warden_cluster_term The Raft term this member is in.\n# TYPE warden_cluster_term gauge\nwarden_cluster_term {}",
            self.term
        );
        let _ = writeln!(s, "# HELP warden_peer_up 1 while at least one path to the peer works.\n# TYPE warden_peer_up gauge");
        for (peer, l) in self.links {
            let _ = writeln!(s, "warden_peer_up{{peer=\"{peer}\"}} {}", u8::from(l.up));
        }
        let _ = writeln!(s, "# HELP warden_path_up 1 while the path (one address of the peer) works.\n# TYPE warden_path_up gauge");
        for (peer, l) in self.links {
            for p in &l.paths {
                let _ = writeln!(s, "warden_path_up{{peer=\"{peer}\",addr=\"{}\"}} {}", p.addr, u8::from(p.up));
            }
        }
        let _ = writeln!(s, "# HELP warden_path_rtt_seconds The last round trip over the path.\n# TYPE warden_path_rtt_seconds gauge");
        for (peer, l) in self.links {
            for p in l.paths.iter().filter(|p| p.rtt.is_some()) {
                let _ = writeln!(
                    s,
                    "warden_path_rtt_seconds{{peer=\"{peer}\",addr=\"{}\"}} {}",
                    p.addr,
                    p.rtt.unwrap_or_default().as_secs_f64()
                );
            }
        }
        let _ = writeln!(s, "# HELP warden_path_failures_total Failed exchanges over the path.\n# TYPE warden_path_failures_total counter");
        for (peer, l) in self.links {
            for p in &l.paths {
                let _ = writeln!(s, "warden_path_failures_total{{peer=\"{peer}\",addr=\"{}\"}} {}", p.addr, p.failures);
            }
        }
        s
    }
}
