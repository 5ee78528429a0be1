//! Liveness per network path: which peers this node reaches, over which of their paths.
//!
//! ```text
//!   every `interval`, for each member (Raft membership, self excluded) and each of its paths:
//!     ping over that path alone (bounded by `dead_after`) ──► transport records ok + rtt | error
//!   every exchange (Raft RPC, forwarded proposal, app message, ping) ──► LinkTable::record_*
//!   a path is up   ⇔ some exchange on it succeeded within the last `dead_after`
//!   a peer is up   ⇔ any of its paths is up
//!   the watch (`ClusterNode::links`) changes when a peer's or a path's up/down changes
//! ```
//!
//! A path that goes silent is seen down at most `dead_after + interval` after its last success
//! (the next tick after its freshness lapses). Pings are answered even while a node keeps its
//! post-restart Raft silence: that silence is about votes, not about being reachable.
//!
//! The transport is the one that knows the paths, so it records every outcome itself; the
//! monitor only asks for pings and re-evaluates freshness on its ticks. A ping still outstanding
//! on a path is not repeated (a black-holed path does not pile pings up).
//!
//! For status and metrics: [`Links`] maps a peer's name to its [`PeerLink`] (`up`, and one
//! [`PathStatus`] per configured address, in configuration order). The watch carries the full
//! figures as of the last up/down change; [`LinkTable::current`] has the latest ones (time since
//! the last success, last round-trip time, failure count) for a scrape. They map onto metrics
//! as, for example, `warden_peer_up{peer}`, `warden_path_up{peer,addr}`,
//! `warden_path_rtt_seconds{peer,addr}`, `warden_path_last_success_age_seconds{peer,addr}` and
//! `warden_path_failures_total{peer,addr}` (a counter: it only grows while the node runs).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::{Peer, Raft, RaftId};

/// How often paths are probed and when a silent one counts as down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Between two pings on one path.
    pub interval: Duration,
    /// A path is down when nothing on it succeeded for this long; also each ping's bound.
    pub dead_after: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self { interval: Duration::from_millis(200), dead_after: Duration::from_secs(1) }
    }
}

/// One path (one configured address, or the router's link) to one peer, for status and metrics.
/// Durations travel as milliseconds (`since_success_ms`, `rtt_ms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathStatus {
    /// The address dialled (`nodes.addresses`); on the test router, the peer's address label or
    /// [`crate::router::ROUTER_PATH`].
    pub addr: String,
    /// An exchange on this path succeeded within `dead_after`.
    pub up: bool,
    /// Since the last successful exchange on this path; `None`: never.
    #[serde(rename = "since_success_ms", with = "millis")]
    pub since_success: Option<Duration>,
    /// Round-trip time of the last successful exchange.
    #[serde(rename = "rtt_ms", with = "millis")]
    pub rtt: Option<Duration>,
    /// The last failure, kept after the path recovers (status shows what happened).
    pub last_error: Option<String>,
    /// Failed exchanges on this path so far.
    pub failures: u64,
}

/// One peer as this node reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerLink {
    /// Any path is up; a peer is lost only when all its paths are silent.
    pub up: bool,
    pub paths: Vec<PathStatus>,
}

/// Peers by name.
pub type Links = BTreeMap<String, PeerLink>;

/// `Option<Duration>` as fractional milliseconds, readable in `warden status` output.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_secs_f64() * 1000.0)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let ms = Option::<f64>::deserialize(d)?;
        ms.map(|ms| Duration::try_from_secs_f64(ms / 1000.0).map_err(serde::de::Error::custom)).transpose()
    }
}

#[derive(Debug, Default)]
struct PathState {
    last_ok: Option<Instant>,
    rtt: Option<Duration>,
    last_error: Option<String>,
    failures: u64,
}

/// Paths by peer name, each peer's paths in configuration order.
type Table = BTreeMap<String, Vec<(String, PathState)>>;

/// Per-path state shared by a transport (which records outcomes) and the node (which publishes).
#[derive(Debug)]
pub struct LinkTable {
    config: LivenessConfig,
    table: Mutex<Table>,
    tx: watch::Sender<Links>,
}

impl LinkTable {
    pub fn new(config: LivenessConfig) -> Arc<Self> {
        Arc::new(Self { config, table: Mutex::default(), tx: watch::Sender::new(Links::new()) })
    }

    pub fn config(&self) -> LivenessConfig {
        self.config
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that sees every change of a peer's or a path's up/down.
    pub fn subscribe(&self) -> watch::Receiver<Links> {
        self.tx.subscribe()
    }

    /// The latest figures (time since success, rtt, failures), for a status query or a scrape.
    pub fn current(&self) -> Links {
        self.current_at(Instant::now())
    }

    fn current_at(&self, now: Instant) -> Links {
        let dead_after = self.config.dead_after;
        self.table()
            .iter()
            .map(|(peer, paths)| {
                let paths: Vec<PathStatus> = paths
                    .iter()
                    .map(|(addr, s)| {
                        let since = s.last_ok.map(|t| now.saturating_duration_since(t));
                        PathStatus {
                            addr: addr.clone(),
                            up: since.is_some_and(|d| d < dead_after),
                            since_success: since,
                            rtt: s.rtt,
                            last_error: s.last_error.clone(),
                            failures: s.failures,
                        }
                    })
                    .collect();
                (peer.clone(), PeerLink { up: paths.iter().any(|p| p.up), paths })
            })
            .collect()
    }

    fn path<'a>(table: &'a mut Table, peer: &str, addr: &str) -> &'a mut PathState {
        let paths = table.entry(peer.to_owned()).or_default();
        let i = match paths.iter().position(|(a, _)| a == addr) {
            Some(i) => i,
            None => {
                paths.push((addr.to_owned(), PathState::default()));
                paths.len() - 1
            }
        };
        &mut paths[i].1
    }

    /// An exchange with `peer` over `addr` succeeded after `rtt`. Publishes at once if that
    /// brings the path (or the peer) up.
    pub fn record_ok(&self, peer: &str, addr: &str, rtt: Duration) {
        self.record_ok_at(peer, addr, rtt, Instant::now());
    }

    fn record_ok_at(&self, peer: &str, addr: &str, rtt: Duration, now: Instant) {
        {
            let mut t = self.table();
            let p = Self::path(&mut t, peer, addr);
            p.last_ok = Some(now);
            p.rtt = Some(rtt);
        }
        self.refresh_at(now);
    }

    /// An exchange with `peer` over `addr` failed. The path goes down only when its last
    /// success grows older than `dead_after` (a single lost exchange does not flap it).
    pub fn record_err(&self, peer: &str, addr: &str, error: &str) {
        let mut t = self.table();
        let p = Self::path(&mut t, peer, addr);
        p.last_error = Some(error.to_owned());
        p.failures += 1;
    }

    /// Makes the table list exactly these peers and paths (in this order), keeping the state of
    /// those that remain.
    pub fn set_peers(&self, peers: &[(String, Vec<String>)]) {
        {
            let mut t = self.table();
            let mut old = std::mem::take(&mut *t);
            for (peer, addrs) in peers {
                let mut kept = old.remove(peer).unwrap_or_default();
                let paths = addrs
                    .iter()
                    .map(|a| {
                        let s = kept.iter().position(|(x, _)| x == a).map(|i| kept.swap_remove(i).1).unwrap_or_default();
                        (a.clone(), s)
                    })
                    .collect();
                t.insert(peer.clone(), paths);
            }
        }
        self.refresh();
    }

    /// Re-evaluates freshness and publishes when some up/down changed (not on every rtt).
    pub fn refresh(&self) {
        self.refresh_at(Instant::now());
    }

    fn refresh_at(&self, at: Instant) {
        let now = self.current_at(at);
        self.tx.send_if_modified(|old| {
            if up_down(old) == up_down(&now) {
                return false;
            }
            *old = now;
            true
        });
    }
}

/// Each peer's and each path's up/down: what a watch subscriber is woken for.
type UpDown<'a> = Vec<(&'a str, bool, Vec<(&'a str, bool)>)>;

fn up_down(l: &Links) -> UpDown<'_> {
    l.iter().map(|(n, p)| (n.as_str(), p.up, p.paths.iter().map(|s| (s.addr.as_str(), s.up)).collect())).collect()
}

/// What the liveness monitor needs from a transport.
pub trait Prober: Clone + Send + Sync + 'static {
    /// Where this transport records every exchange's outcome per path.
    fn link_table(&self) -> Arc<LinkTable>;

    /// The paths to `peer`, in configuration order: its addresses, or the router's one link.
    fn paths(&self, peer: &Peer) -> Vec<String>;

    /// One ping to `peer` over `path` alone, answered within `ttl` or failed; the outcome is
    /// recorded in the link table by the transport. Never blocks longer than `ttl` (plus the
    /// time to notice it passed).
    fn ping(&self, to: RaftId, peer: &Peer, path: &str, ttl: Duration) -> impl Future<Output = ()> + Send;
}

/// Pings every member's every path each `interval` until `stop`, and keeps the table's
/// membership and freshness current.
pub(crate) async fn monitor<P: Prober>(prober: P, raft: Raft, me: RaftId, stop: CancellationToken) {
    let table = prober.link_table();
    let config = table.config();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut pings: JoinSet<(String, String)> = JoinSet::new();
    let mut in_flight: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        while let Some(done) = pings.try_join_next() {
            if let Ok(key) = done {
                in_flight.remove(&key);
            }
        }
        let members: Vec<(RaftId, Peer)> = {
            let m = raft.metrics();
            let m = m.borrow();
            m.membership_config.membership().nodes().filter(|(id, _)| **id != me).map(|(id, p)| (*id, p.clone())).collect()
        };
        let listed: Vec<(String, Vec<String>)> = members.iter().map(|(_, p)| (p.name.clone(), prober.paths(p))).collect();
        table.set_peers(&listed);
        for ((id, peer), (_, paths)) in members.iter().zip(&listed) {
            for path in paths {
                let key = (peer.name.clone(), path.clone());
                if !in_flight.insert(key.clone()) {
                    continue;
                }
                let (prober, peer, path, id) = (prober.clone(), peer.clone(), path.clone(), *id);
                pings.spawn(async move {
                    // The prober bounds the ping; this only guards against one that does not.
                    let _ = tokio::time::timeout(config.dead_after * 2, prober.ping(id, &peer, &path, config.dead_after)).await;
                    key
                });
            }
        }
        table.refresh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_up_while_fresh_and_a_peer_while_any_path_is() {
        let t = LinkTable::new(LivenessConfig { interval: Duration::from_millis(100), dead_after: Duration::from_secs(1) });
        let mut rx = t.subscribe();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        t.set_peers(&[("n2".into(), vec!["a".into(), "b".into()])]);
        assert!(!t.current_at(at(0))["n2"].up, "never heard from");

        t.record_ok_at("n2", "a", Duration::from_millis(3), at(0));
        assert!(rx.has_changed().unwrap(), "path a came up");
        rx.mark_unchanged();
        t.record_ok_at("n2", "b", Duration::from_millis(4), at(0));
        assert!(rx.has_changed().unwrap(), "path b came up");
        rx.mark_unchanged();
        t.record_ok_at("n2", "a", Duration::from_millis(5), at(10));
        assert!(!rx.has_changed().unwrap(), "a new rtt alone is no news");

        t.record_ok_at("n2", "a", Duration::from_millis(5), at(600));
        t.record_err("n2", "b", "timed out");
        t.refresh_at(at(1200));
        let l = rx.borrow_and_update().clone();
        assert!(l["n2"].up, "path a is fresh: {l:?}");
        assert_eq!(l["n2"].paths.iter().map(|p| (p.addr.as_str(), p.up)).collect::<Vec<_>>(), [("a", true), ("b", false)]);
        let b = &t.current_at(at(1200))["n2"].paths[1];
        assert_eq!((b.failures, b.last_error.as_deref(), b.rtt), (1, Some("timed out"), Some(Duration::from_millis(4))));
        assert_eq!(b.since_success, Some(Duration::from_millis(1200)));

        t.refresh_at(at(1700));
        assert!(!rx.borrow_and_update()["n2"].up, "every path silent for dead_after");

        t.set_peers(&[("n3".into(), vec!["c".into()])]);
        assert_eq!(t.current().keys().collect::<Vec<_>>(), ["n3"], "members that left are dropped");
    }

    #[test]
    fn path_status_travels_with_durations_in_milliseconds() {
        let p = PathStatus {
            addr: "10.0.0.2:7000".into(),
            up: true,
            since_success: Some(Duration::from_millis(150)),
            rtt: Some(Duration::from_micros(1500)),
            last_error: None,
            failures: 2,
        };
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["rtt_ms"], 1.5);
        assert_eq!(json["since_success_ms"], 150.0);
        assert_eq!(serde_json::from_value::<PathStatus>(json).unwrap(), p);
    }
}
