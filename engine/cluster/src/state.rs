//! The replicated state and its deterministic `apply`.

use serde::{Deserialize, Serialize};
use warden_core::scheduler::{Decisions, NodeDecision};
use warden_core::NodeId;

/// What the cluster replicates: the decision core's decisions and the config version they were
/// decided under. Observations (activity, counters) are per node and never replicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterState {
    /// The committed config's version; only grows.
    pub config_version: u64,
    /// Requests applied so far that changed something; lets a caller tell which state it saw.
    pub revision: u64,
    /// The hash of the config file the cluster runs, set once by the first leader: a member
    /// started with another file refuses to run.
    #[serde(default)]
    pub config_hash: Option<String>,
    /// The text of that config once one was applied with `warden config apply` (the first one
    /// is every member's own file): members reload it, and a member started with another file is
    /// pointed to it.
    #[serde(default)]
    pub config_text: Option<String>,
    pub decisions: Decisions,
}

/// A change proposed to the cluster (by the leader's scheduler or an operator command forwarded
/// to the leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClusterRequest {
    /// Replace the decisions. `config_version` is the config the proposer decided under: a
    /// proposal made under an older config than the committed one is refused, so a deposed
    /// leader's late proposal cannot undo what was decided under the new config.
    SetDecisions { config_version: u64, decisions: Decisions },
    /// Commit a new config version (validated by the proposer before it is proposed).
    SetConfigVersion { config_version: u64 },
    /// Record the config file's hash if none is recorded yet (the first leader's); a different
    /// hash later is refused and changes nothing.
    SetConfigHash { hash: String },
    /// Changes nothing: committed to learn which members acknowledge the log now (before a
    /// membership change).
    Barrier,
    /// Replace the config (`warden config apply`, validated by the leader): applied only if the
    /// cluster still runs `previous`, so two applies racing cannot both win. `added`: the member
    /// this config adds (`warden node add`), recorded as a node that left cleanly: it runs
    /// nothing until it first says hello, so no leader waits for its probes or fences it.
    ApplyConfig {
        previous: String,
        hash: String,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        added: Option<String>,
    },
}

/// The answer to a [`ClusterRequest`], given after it was committed and applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClusterResponse {
    /// Applied; the state is now at `revision`.
    Applied { revision: u64 },
    /// Refused: the request's config version is older than the committed one.
    StaleConfig { committed: u64, proposed: u64 },
    /// A Raft-internal entry (blank or membership) or a barrier: nothing to apply.
    Internal,
    /// Refused: the cluster runs a config with another hash.
    ConfigDiffers { committed: String },
}

impl ClusterState {
    /// Applies one committed request. Pure: every node applying the same log reaches the same
    /// state, whatever its clock or history.
    pub fn apply(&mut self, req: &ClusterRequest) -> ClusterResponse {
        match req {
            ClusterRequest::SetDecisions { config_version, decisions } => {
                if *config_version < self.config_version {
                    return ClusterResponse::StaleConfig { committed: self.config_version, proposed: *config_version };
                }
                self.config_version = *config_version;
                // A proposer that does not know a node (a leader still running the config before
                // `warden node add`) keeps what is recorded about it.
                let unknown: Vec<_> = self
                    .decisions
                    .nodes
                    .iter()
                    .filter(|(n, _)| !decisions.nodes.contains_key(*n))
                    .map(|(n, d)| (n.clone(), d.clone()))
                    .collect();
                self.decisions = decisions.clone();
                self.decisions.nodes.extend(unknown);
            }
            ClusterRequest::SetConfigVersion { config_version } => {
                if *config_version < self.config_version {
                    return ClusterResponse::StaleConfig { committed: self.config_version, proposed: *config_version };
                }
                self.config_version = *config_version;
            }
            ClusterRequest::SetConfigHash { hash } => match &self.config_hash {
                Some(h) if h == hash => return ClusterResponse::Internal,
                Some(h) => return ClusterResponse::ConfigDiffers { committed: h.clone() },
                None => self.config_hash = Some(hash.clone()),
            },
            ClusterRequest::Barrier => return ClusterResponse::Internal,
            ClusterRequest::ApplyConfig { previous, hash, text, added } => {
                if self.config_hash.as_ref() != Some(previous) {
                    return ClusterResponse::ConfigDiffers { committed: self.config_hash.clone().unwrap_or_default() };
                }
                self.config_hash = Some(hash.clone());
                self.config_text = Some(text.clone());
                if let Some(n) = added {
                    self.decisions.nodes.insert(NodeId::from(n.as_str()), NodeDecision { left: true, ..Default::default() });
                }
            }
        }
        self.revision += 1;
        ClusterResponse::Applied { revision: self.revision }
    }
}

#[cfg(test)]
mod tests {
    use warden_core::scheduler::{GroupState, Target};
    use warden_core::GroupId;

    use super::*;

    fn decisions(owner: &str, epoch: u64) -> Decisions {
        let mut d = Decisions::default();
        d.groups.insert(
            GroupId::from("g"),
            GroupState { target: Target::Started, owner: Some(NodeId::from(owner)), epoch, failed_on: Default::default(), move_to: None },
        );
        d
    }

    #[test]
    fn set_decisions_replaces_and_counts_revisions() {
        let mut s = ClusterState::default();
        let r = s.apply(&ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("a", 1) });
        assert_eq!(r, ClusterResponse::Applied { revision: 1 });
        s.apply(&ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("b", 2) });
        assert_eq!(s.revision, 2);
        assert_eq!(s.decisions, decisions("b", 2));
        let before = s.clone();
        assert_eq!(s.apply(&ClusterRequest::Barrier), ClusterResponse::Internal);
        assert_eq!(s, before, "a barrier changes nothing");
        assert_eq!(s.config_version, 1);
    }

    #[test]
    fn refuses_decisions_made_under_an_older_config() {
        let mut s = ClusterState::default();
        s.apply(&ClusterRequest::SetConfigVersion { config_version: 3 });
        let before = s.clone();
        let r = s.apply(&ClusterRequest::SetDecisions { config_version: 2, decisions: decisions("a", 9) });
        assert_eq!(r, ClusterResponse::StaleConfig { committed: 3, proposed: 2 });
        assert_eq!(s, before, "a refused request changes nothing");
        let r = s.apply(&ClusterRequest::SetConfigVersion { config_version: 1 });
        assert!(matches!(r, ClusterResponse::StaleConfig { .. }), "config versions never go back");
    }

    #[test]
    fn the_first_config_hash_stays() {
        let mut s = ClusterState::default();
        let r = s.apply(&ClusterRequest::SetConfigHash { hash: "h1".into() });
        assert_eq!(r, ClusterResponse::Applied { revision: 1 });
        assert_eq!(s.apply(&ClusterRequest::SetConfigHash { hash: "h1".into() }), ClusterResponse::Internal);
        let before = s.clone();
        let r = s.apply(&ClusterRequest::SetConfigHash { hash: "h2".into() });
        assert_eq!(r, ClusterResponse::ConfigDiffers { committed: "h1".into() });
        assert_eq!(s, before, "a refused hash changes nothing");
    }

    #[test]
    fn an_applied_config_replaces_the_one_it_was_based_on_only() {
        let mut s = ClusterState::default();
        s.apply(&ClusterRequest::SetConfigHash { hash: "h1".into() });
        let r = s.apply(&ClusterRequest::ApplyConfig { previous: "h1".into(), hash: "h2".into(), text: "two".into(), added: None });
        assert_eq!(r, ClusterResponse::Applied { revision: 2 });
        assert_eq!((s.config_hash.as_deref(), s.config_text.as_deref()), (Some("h2"), Some("two")));
        // A second apply based on the first config lost the race: refused, nothing changes.
        let before = s.clone();
        let r = s.apply(&ClusterRequest::ApplyConfig { previous: "h1".into(), hash: "h3".into(), text: "three".into(), added: None });
        assert_eq!(r, ClusterResponse::ConfigDiffers { committed: "h2".into() });
        assert_eq!(s, before);
        // The first leader's hash does not overwrite an applied config.
        assert_eq!(
            s.apply(&ClusterRequest::SetConfigHash { hash: "h1".into() }),
            ClusterResponse::ConfigDiffers { committed: "h2".into() }
        );
    }

    #[test]
    fn an_added_member_is_recorded_as_left_and_a_proposer_that_does_not_know_it_keeps_that() {
        let mut s = ClusterState::default();
        s.apply(&ClusterRequest::SetConfigHash { hash: "h1".into() });
        let mut d = decisions("a", 1);
        d.nodes.insert(NodeId::from("a"), NodeDecision::default());
        s.apply(&ClusterRequest::SetDecisions { config_version: 0, decisions: d.clone() });
        s.apply(&ClusterRequest::ApplyConfig { previous: "h1".into(), hash: "h2".into(), text: "t".into(), added: Some("c".into()) });
        assert!(s.decisions.nodes[&NodeId::from("c")].left, "an added member runs nothing until it says hello");
        // The leader still on the old config proposes decisions without `c`: its record stays.
        d.nodes.get_mut(&NodeId::from("a")).unwrap().standby = true;
        s.apply(&ClusterRequest::SetDecisions { config_version: 0, decisions: d.clone() });
        assert!(s.decisions.nodes[&NodeId::from("c")].left);
        assert!(s.decisions.nodes[&NodeId::from("a")].standby, "what the proposer knows is replaced");
        // A leader on the new config decides about `c` (it said hello): that replaces the record.
        d.nodes.insert(NodeId::from("c"), NodeDecision::default());
        s.apply(&ClusterRequest::SetDecisions { config_version: 0, decisions: d.clone() });
        assert!(!s.decisions.nodes[&NodeId::from("c")].left);
        // An older request without `added` still reads.
        let old = r#"{"apply-config":{"previous":"h2","hash":"h3","text":"x"}}"#;
        assert!(matches!(serde_json::from_str::<ClusterRequest>(old).unwrap(), ClusterRequest::ApplyConfig { added: None, .. }));
    }

    #[test]
    fn state_round_trips_through_json_and_rejects_unknown_fields() {
        let mut s = ClusterState::default();
        s.apply(&ClusterRequest::SetDecisions { config_version: 1, decisions: decisions("a", 1) });
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ClusterState>(&json).unwrap(), s);
        let bad = json.replacen("\"revision\"", "\"revison\"", 1);
        assert!(serde_json::from_str::<ClusterState>(&bad).is_err());
    }
}
