//! Authority: may this node act as leader right now?
//!
//! openraft's own view is not enough: an openraft 0.9 leader cut off from every follower keeps
//! reporting `ServerState::Leader` (it never steps down by itself), while the others elect a new
//! leader. Acting on that view would let two nodes decide at once.
//!
//! So authority comes from a window that a quorum acknowledged. A renewal records the
//! monotonic instant `t0`, then asks openraft to confirm leadership (a heartbeat round that a
//! quorum must answer, `get_read_log_id`). Each follower that answered received the heartbeat
//! after `t0` and, from then on, refuses to vote for anyone else for its leader lease
//! (openraft: `election_timeout_max`, counted on the follower's clock from when it received the
//! heartbeat). Any new leader needs a vote from at least one of those followers (quorums
//! intersect), so no other leader exists before `t0 + E_max` measured by that follower. With
//! clock-rate error ρ and a margin ε the leader may act until
//!
//! ```text
//!   t0 + A,   A = E_max·(1−ρ)/(1+ρ) − ε
//! ```
//!
//! on its own clock. A follower that restarts must not grant a vote inside that window either.
//! openraft 0.9 treats the vote it loads at start as just renewed (its lease restarts), which
//! covers E_max on the follower's clock; on top of that a restarted node stays silent (answers
//! no peer) for `E_max·(1+ρ)/(1−ρ) + ε` ([`AuthorityConfig::restart_silence`]), the timing rule
//! with the clock-rate error and margin, and independent of that openraft detail.
//!
//! Clock: `tokio::time::Instant` (CLOCK_MONOTONIC on Linux). TODO(#11 leases): CLOCK_BOOTTIME,
//! so that a suspended VM does not stop the clock, comes with the node leases and watchdog.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Raft;

/// The timing that authority derives from the Raft config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthorityConfig {
    /// `A`: how long a quorum's acknowledgement lets the leader act, from before it asked.
    pub window: Duration,
    /// How often the leader renews; a few renewals fit in one window.
    pub renew_every: Duration,
    /// How long a restarted node answers no peer, so that it cannot grant a vote that its
    /// forgotten lease would have refused.
    pub restart_silence: Duration,
}

impl AuthorityConfig {
    /// Derives the timing from the Raft config, a clock-rate error `drift` (ρ, e.g. 0.01) and a
    /// safety `margin` (ε). `None` when the window would be empty.
    pub fn for_raft(config: &openraft::Config, drift: f64, margin: Duration) -> Option<Self> {
        if !(0.0..1.0).contains(&drift) {
            return None;
        }
        let e_max = Duration::from_millis(config.election_timeout_max);
        let window = e_max.mul_f64((1.0 - drift) / (1.0 + drift)).checked_sub(margin)?;
        let renew_every = Duration::from_millis(config.heartbeat_interval).min(window / 3);
        if renew_every.is_zero() {
            return None;
        }
        Some(Self { window, renew_every, restart_silence: e_max.mul_f64((1.0 + drift) / (1.0 - drift)) + margin })
    }
}

/// A quorum-acknowledged grant: leader in `term` until `until`.
#[derive(Debug, Clone, Copy)]
struct Grant {
    term: u64,
    until: Instant,
}

/// This node's authority as leader. Cheap to clone; one renewal loop per node.
#[derive(Clone)]
pub struct Authority {
    raft: Raft,
    config: AuthorityConfig,
    grant: Arc<Mutex<Option<Grant>>>,
}

impl Authority {
    pub fn new(raft: Raft, config: AuthorityConfig) -> Self {
        Self { raft, config, grant: Arc::new(Mutex::new(None)) }
    }

    pub fn config(&self) -> AuthorityConfig {
        self.config
    }

    /// Until when this node may act as leader, or `None` if it may not now. Never blocks.
    pub fn check(&self) -> Option<Instant> {
        let grant = (*self.grant.lock().unwrap_or_else(|e| e.into_inner()))?;
        let (leader, term) = self.leader_term();
        (leader && term == grant.term && Instant::now() < grant.until).then_some(grant.until)
    }

    /// openraft's view: leader or not, and the current term.
    fn leader_term(&self) -> (bool, u64) {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader, m.vote.leader_id().get_term())
    }

    /// One renewal: confirm leadership with a quorum, bounded by the window (an answer later
    /// than that would grant nothing). Returns whether a grant was recorded.
    pub async fn renew(&self) -> bool {
        let t0 = Instant::now();
        let (leader, term) = self.leader_term();
        if !leader {
            self.set(None);
            return false;
        }
        let confirmed = matches!(tokio::time::timeout(self.config.window, self.raft.get_read_log_id()).await, Ok(Ok(_)));
        // The term must not have moved while we asked: the confirmation is for this term only.
        if confirmed && self.leader_term() == (true, term) {
            self.set(Some(Grant { term, until: t0 + self.config.window }));
            true
        } else {
            false
        }
    }

    fn set(&self, grant: Option<Grant>) {
        *self.grant.lock().unwrap_or_else(|e| e.into_inner()) = grant;
    }

    /// Renews every `renew_every` until `stop`. A failed renewal leaves the last grant to run
    /// out by itself: it was valid when given.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let next = Instant::now() + self.config.renew_every;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.renew() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_shorter_than_the_followers_lease_and_silence_longer() {
        let c = openraft::Config { heartbeat_interval: 100, election_timeout_min: 500, election_timeout_max: 1000, ..Default::default() };
        let a = AuthorityConfig::for_raft(&c, 0.01, Duration::from_millis(50)).unwrap();
        assert!(a.window < Duration::from_millis(1000 - 50));
        assert!(a.window > Duration::from_millis(900));
        assert!(a.restart_silence > Duration::from_millis(1050));
        assert_eq!(a.renew_every, Duration::from_millis(100));
        assert_eq!(AuthorityConfig::for_raft(&c, 0.01, Duration::from_secs(2)), None, "an empty window is refused");
        assert_eq!(AuthorityConfig::for_raft(&c, 1.5, Duration::ZERO), None);
    }
}
