//! When each resource running here is monitored next: its interval (with jitter), brought
//! forward by its process watch. Shared by the single node and the cluster member; sans-IO apart
//! from reading the clock it is handed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::history::History;
use super::{note, Busy, WATCH_GAP};
use crate::api::metrics::Metrics;
use crate::scheduler::ResourceId;

/// How early a monitor may run to share a wake of the loop with one that is due: at most this,
/// and at most a tenth of the shortest monitor interval (within the ±10 % jitter).
const SLACK: Duration = Duration::from_millis(100);

/// The monitor timers of the resources monitored here.
pub(super) struct MonitorSchedule {
    intervals: HashMap<String, Duration>,
    /// See [`SLACK`].
    slack: Duration,
    next: Timers,
    /// Resources whose watched process exited while a call ran: monitored when it returns.
    watch_due: HashSet<String>,
    /// Resources to monitor as soon as they are monitored again (a watched process exited while
    /// a start or recover ran: its result may arrive after the exit).
    asap: HashSet<String>,
    /// When each resource's watch last brought a monitor forward: at most one a second, so a
    /// service whose processes come and go (own-processes) cannot flood monitors or history.
    last_watch: HashMap<String, Instant>,
    rng: u64,
}

impl MonitorSchedule {
    pub(super) fn new(intervals: HashMap<String, Duration>, seed: u64) -> Self {
        let slack = intervals.values().map(|i| *i / 10).min().unwrap_or(SLACK).min(SLACK);
        Self {
            intervals,
            slack,
            next: Timers::default(),
            watch_due: HashSet::new(),
            asap: HashSet::new(),
            last_watch: HashMap::new(),
            rng: seed | 1,
        }
    }

    fn jittered(&mut self, r: &str) -> Instant {
        Instant::now() + jitter(self.intervals[r], &mut self.rng)
    }

    /// The resources monitored here are now `monitored`: timers of the others go, new ones get
    /// a timer (at once if a watch asked for it while they were busy).
    pub(super) fn follow<'a>(&mut self, monitored: impl IntoIterator<Item = &'a ResourceId>, busy: &Busy) {
        let monitored: HashSet<&ResourceId> = monitored.into_iter().filter(|r| self.intervals.contains_key(r.as_str())).collect();
        self.next.retain(|r| monitored.contains(r));
        for r in monitored {
            if self.asap.remove(r.as_str()) && !busy.contains(r) {
                self.next.insert(r.clone(), Instant::now());
            } else if !self.next.contains_key(r) && !busy.contains(r) {
                let at = self.jittered(r);
                self.next.insert(r.clone(), at);
            }
        }
        self.asap.retain(|r| busy.contains(r.as_str()));
    }

    /// A call of `resource` returned. After a monitor the next one is scheduled (at once if its
    /// watch fired meanwhile, and only while it is still `monitored`); after another call a
    /// watch that fired meanwhile asks for a monitor as soon as it is monitored again.
    pub(super) fn returned(&mut self, resource: &str, was_monitor: bool, monitored: bool) {
        let due = self.watch_due.remove(resource);
        if was_monitor {
            if monitored {
                let at = if due { Instant::now() } else { self.jittered(resource) };
                self.next.insert(resource.into(), at);
            }
        } else if due {
            // The exit may have come before this result (a daemon that died right after its
            // start): monitor once the resource is monitored again.
            self.asap.insert(resource.to_string());
        }
    }

    /// A process watched for `resource` exited (`what` names it): its monitor comes forward, or
    /// runs when the running call returns. Ignored when the resource is neither monitored nor
    /// busy here (its watch is being replaced).
    pub(super) fn watch_fired(&mut self, resource: &str, what: &str, busy: &Busy, metrics: &mut Metrics, history: &mut History) {
        let now = Instant::now();
        let recent = self.last_watch.get(resource).is_some_and(|t| now.duration_since(*t) < WATCH_GAP);
        if let Some(cur) = self.next.get(resource) {
            let at = if recent { self.last_watch[resource] + WATCH_GAP } else { now };
            self.next.insert(resource.into(), cur.min(at));
            metrics.watch_fired(resource);
            if !recent {
                self.last_watch.insert(resource.to_string(), now);
                note(history, "watch", resource, format!("{what} exited; monitoring now"));
            }
        } else if busy.contains(resource) {
            // A call runs (a monitor, or the start that named these processes and whose result
            // has not arrived yet): monitor when it is done.
            self.watch_due.insert(resource.to_string());
            metrics.watch_fired(resource);
            if !recent {
                self.last_watch.insert(resource.to_string(), now);
                note(history, "watch", resource, format!("{what} exited; monitoring after the running call"));
            }
        }
    }

    /// The earliest timer.
    pub(super) fn due(&self) -> Option<Instant> {
        self.next.first()
    }

    /// Takes the timers that are due: the resources to monitor now (those not busy; a busy
    /// resource's running call decides, and monitoring resumes after it).
    /// Timers due within the slack ([`SLACK`]) are taken with it: their monitors run a little
    /// early (their interval is jittered by ±10 % anyway) on one wake of the loop instead of
    /// one each.
    pub(super) fn take_due(&mut self, busy: &Busy) -> Vec<ResourceId> {
        self.next.take_until(Instant::now() + self.slack).into_iter().filter(|r| !busy.contains(r)).collect()
    }
}

/// One timer per resource, also ordered by time: the loop asks for the earliest after every
/// event, and with a thousand resources a scan of them all each time was a visible part of the
/// engine's CPU.
#[derive(Default)]
struct Timers {
    at: HashMap<ResourceId, Instant>,
    order: BTreeSet<(Instant, ResourceId)>,
}

impl Timers {
    fn get(&self, r: &str) -> Option<Instant> {
        self.at.get(r).copied()
    }

    fn contains_key(&self, r: &ResourceId) -> bool {
        self.at.contains_key(r)
    }

    fn insert(&mut self, r: ResourceId, t: Instant) {
        if let Some(old) = self.at.insert(r.clone(), t) {
            self.order.remove(&(old, r.clone()));
        }
        self.order.insert((t, r));
    }

    fn retain(&mut self, mut keep: impl FnMut(&ResourceId) -> bool) {
        let order = &mut self.order;
        self.at.retain(|r, t| {
            let k = keep(r);
            if !k {
                order.remove(&(*t, r.clone()));
            }
            k
        });
    }

    fn first(&self) -> Option<Instant> {
        self.order.first().map(|(t, _)| *t)
    }

    /// Removes and returns the resources whose timer is at or before `now`.
    fn take_until(&mut self, now: Instant) -> Vec<ResourceId> {
        let mut out = Vec::new();
        while self.order.first().is_some_and(|(t, _)| *t <= now) {
            let (_, r) = self.order.pop_first().expect("checked");
            self.at.remove(&r);
            out.push(r);
        }
        out
    }
}

fn jitter(d: Duration, rng: &mut u64) -> Duration {
    // ±10%, so a thousand resources with the same interval do not all fire at once.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let f = 0.9 + (*rng % 2001) as f64 / 10_000.0;
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_keep_one_per_resource_in_time_order() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut t = Timers::default();
        t.insert("a".into(), ms(30));
        t.insert("b".into(), ms(10));
        t.insert("c".into(), ms(20));
        assert_eq!(t.first(), Some(ms(10)));
        // Moved: the old time is gone from the order.
        t.insert("b".into(), ms(40));
        assert_eq!(t.first(), Some(ms(20)));
        assert_eq!(t.get("b"), Some(ms(40)));
        t.retain(|r| r.as_str() != "c");
        assert_eq!(t.first(), Some(ms(30)));
        assert!(!t.contains_key(&"c".into()));
        assert_eq!(t.take_until(ms(35)), vec![ResourceId::from("a")]);
        assert_eq!(t.take_until(ms(35)), Vec::<ResourceId>::new());
        assert_eq!(t.take_until(ms(40)), vec![ResourceId::from("b")]);
        assert_eq!(t.first(), None);
        assert!(t.at.is_empty() && t.order.is_empty());
    }

    #[test]
    fn a_wake_takes_the_monitors_due_within_the_slack_too() {
        let now = Instant::now();
        let intervals = ["a", "b", "c"].iter().map(|r| (r.to_string(), Duration::from_secs(1))).collect();
        let mut s = MonitorSchedule::new(intervals, 1);
        s.next.insert("a".into(), now);
        s.next.insert("b".into(), now + SLACK / 2);
        s.next.insert("c".into(), now + SLACK * 2);
        let mut due = s.take_due(&Busy::default());
        due.sort();
        assert_eq!(due, vec![ResourceId::from("a"), ResourceId::from("b")], "b shares a's wake; c does not");
        assert_eq!(s.due(), Some(now + SLACK * 2));
        // A short interval keeps the slack within a tenth of it.
        let short = MonitorSchedule::new([("x".to_string(), Duration::from_millis(300))].into_iter().collect(), 1);
        assert_eq!(short.slack, Duration::from_millis(30));
    }
}
