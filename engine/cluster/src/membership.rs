//! Who is a member, who votes, and the Raft id of each: pure rules, the same on every node.
//!
//! * A member's Raft id comes from its name ([`raft_id`]), not its place in the config: removing
//!   a member must not renumber the others (a Raft id that named one member in the log and
//!   another one after an edit would hand a member's votes and log to someone else).
//! * Voters ([`voters`]): 3 or 5, or every member when there are fewer than 3. An even number of
//!   voters tolerates no more failures than one fewer and makes the quorum wait for one more, so
//!   a fourth member is a learner until a fifth comes; beyond 5, further members are learners
//!   (they receive the log, run resources, never vote). Witnesses vote first (voting is all
//!   they are for), then nodes in config order, so the members added last are the learners.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Peer, RaftId};

/// At most this many voters.
pub const MAX_VOTERS: usize = 5;

/// A member's Raft id: FNV-1a (64 bit) of its name, stable across config edits and Warden
/// versions (the algorithm is written out here, not taken from a hasher that may change).
pub fn raft_id(name: &str) -> RaftId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"warden-member\0".iter().chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The Raft id of each member, or the two names that share one (vanishingly unlikely; a config
/// that hits it needs another name).
pub fn raft_ids<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<BTreeMap<String, RaftId>, (String, String)> {
    let mut by_id: BTreeMap<RaftId, &str> = BTreeMap::new();
    let mut ids = BTreeMap::new();
    for n in names {
        let id = raft_id(n);
        if let Some(other) = by_id.insert(id, n) {
            if other != n {
                return Err((other.to_owned(), n.to_owned()));
            }
        }
        ids.insert(n.to_owned(), id);
    }
    Ok(ids)
}

/// Which of `members` (name, is a witness; in config order) vote.
pub fn voters<'a>(members: impl IntoIterator<Item = (&'a str, bool)>) -> BTreeSet<String> {
    let members: Vec<(&str, bool)> = members.into_iter().collect();
    let n = members.len();
    let count = match n {
        0..=3 => n,
        4 => 3,
        _ => MAX_VOTERS,
    };
    let witnesses = members.iter().filter(|(_, w)| *w);
    let nodes = members.iter().filter(|(_, w)| !*w);
    witnesses.chain(nodes).take(count).map(|(name, _)| (*name).to_owned()).collect()
}

/// The Raft membership the config asks for: every member (id and peer) and the voters' ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub members: BTreeMap<RaftId, Peer>,
    pub voters: BTreeSet<RaftId>,
}

impl Wanted {
    /// From the config's members: (peer, is a witness), in config order.
    pub fn new(members: &[(Peer, bool)]) -> Result<Self, (String, String)> {
        let ids = raft_ids(members.iter().map(|(p, _)| p.name.as_str()))?;
        let voter_names = voters(members.iter().map(|(p, w)| (p.name.as_str(), *w)));
        Ok(Wanted {
            members: members.iter().map(|(p, _)| (ids[&p.name], p.clone())).collect(),
            voters: voter_names.iter().map(|n| ids[n]).collect(),
        })
    }
}

/// What one reconciling step did (see [`crate::ClusterNode::reconcile`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The membership is what the config asks for.
    InSync,
    /// Added these as learners (they catch up before any of them may vote).
    AddedLearners(Vec<RaftId>),
    /// Replaced the voters (former voters still in the config stay as learners).
    ChangedVoters { from: BTreeSet<RaftId>, to: BTreeSet<RaftId> },
    /// Removed these members (no longer in the config, no longer voters).
    Removed(Vec<RaftId>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn three_or_five_voters_witnesses_first_then_config_order() {
        assert_eq!(voters([("a", false), ("b", false)]), names(&["a", "b"]));
        assert_eq!(voters([("a", false), ("b", false), ("w", true)]), names(&["a", "b", "w"]));
        // A fourth member waits as a learner: the one added last.
        assert_eq!(voters([("a", false), ("b", false), ("w", true), ("c", false)]), names(&["a", "b", "w"]));
        // A witness listed last still votes.
        assert_eq!(voters([("a", false), ("b", false), ("c", false), ("w", true)]), names(&["a", "b", "w"]));
        assert_eq!(voters([("a", false), ("b", false), ("w", true), ("c", false), ("d", false)]), names(&["a", "b", "c", "d", "w"]));
        let seven = [("a", false), ("b", false), ("w", true), ("c", false), ("d", false), ("e", false), ("f", false)];
        assert_eq!(voters(seven), names(&["a", "b", "c", "d", "w"]));
        assert_eq!(voters([("solo", false)]), names(&["solo"]));
    }

    #[test]
    fn ids_come_from_names_not_places() {
        let before = raft_ids(["a", "b", "c", "w"]).unwrap();
        let after = raft_ids(["a", "c", "w"]).unwrap();
        for n in ["a", "c", "w"] {
            assert_eq!(before[n], after[n], "removing b renumbers nobody");
        }
        assert_ne!(raft_id("a"), raft_id("b"));
        // Fixed values: a change of the function would hand one member's log to another.
        assert_eq!(raft_id("jp1-a"), 0x3a94_adfb_a7b8_108a);
        assert_eq!(raft_id("witness"), 0x068c_955a_209f_b10e);
    }

    #[test]
    fn wanted_lists_every_member_and_the_voters() {
        let p = |n: &str| Peer { name: n.into(), addresses: vec![] };
        let w = Wanted::new(&[(p("a"), false), (p("b"), false), (p("w"), true), (p("c"), false)]).unwrap();
        assert_eq!(w.members.len(), 4);
        assert_eq!(w.voters, BTreeSet::from([raft_id("a"), raft_id("b"), raft_id("w")]));
    }
}
