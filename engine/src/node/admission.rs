//! Which of the leader's commands a cluster member carries out, and its lease: the member's
//! side of the safety rules, sans-IO (the caller passes the time) and tested alone.
//!
//! - A command of an older leadership than the highest seen is refused: a deposed leader's late
//!   command must not run after the new leader has spoken. A leadership is a Raft term and the
//!   log index of the leader's first own entry ([`Lead`]): openraft keeps a restarted leader in
//!   its term, and the restarted one must be newer than its earlier self.
//! - A command already taken (same or older (leadership, operation id) for its resource) is
//!   dropped: messages travel every path and may arrive twice.
//! - A start or recover needs a live lease (renewed by a leader with authority) and a member that
//!   is not shutting down; probes and stops never do (stopping is always safe).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::scheduler::{Command, Event, ResourceId};

/// One leadership: a Raft term and the index of the first log entry the leader committed in it
/// (a barrier it proposes before deciding anything). Ordered by term, then index: a leader that
/// restarts within its term (openraft restores a leader whose vote was committed) commits a new
/// barrier at a higher index, so its operation ids and lease numbers, which start again, are
/// not mistaken for copies of its earlier self's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Lead {
    pub term: u64,
    pub index: u64,
}

impl Lead {
    /// The oldest leadership of `term`: what knowing only the term from Raft amounts to.
    pub(crate) fn of_term(term: u64) -> Lead {
        Lead { term, index: 0 }
    }
}

impl std::fmt::Display for Lead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.term, self.index)
    }
}

/// What to do with a leader's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Carry it out.
    Run,
    /// Of an older leadership than one already seen: ignored.
    Stale,
    /// Already taken (a copy over another path, or older than one taken): ignored.
    Duplicate,
    /// A start or recover without a lease, or while shutting down: answered as not carried out.
    NoLease,
}

#[derive(Debug, Default)]
pub(super) struct Admission {
    seen: Lead,
    taken: HashMap<ResourceId, (Lead, u64)>,
    lease_until: Option<Instant>,
    /// The (leadership, sequence number) of the last lease taken: a late copy of an older one
    /// must not bring back an older monitor set.
    last_lease: (Lead, u64),
    /// The lease is the start's grace, not a leader's renewal (see [`Admission::started`]).
    grace: bool,
    /// How many times a lease was taken after none was held (see [`super::worker::LeaseView`]).
    holding: u64,
}

impl Admission {
    /// The highest term seen (from Raft or from a leader's message).
    pub(super) fn term(&self) -> u64 {
        self.seen.term
    }

    /// Raft says the cluster is at `term` (terms only grow).
    pub(super) fn saw_term(&mut self, term: u64) {
        self.seen = self.seen.max(Lead::of_term(term));
    }

    /// Judges a `command` of the leadership `lead` for `resource` at `now`.
    pub(super) fn admit(&mut self, lead: Lead, resource: &ResourceId, command: &Command, now: Instant, shutting_down: bool) -> Verdict {
        if lead < self.seen {
            return Verdict::Stale;
        }
        self.seen = lead;
        let op = op_of(command);
        if self.taken.get(resource).is_some_and(|last| *last >= (lead, op)) {
            return Verdict::Duplicate;
        }
        self.taken.insert(resource.clone(), (lead, op));
        let starts = matches!(command, Command::Start { .. } | Command::Recover { .. });
        if starts && (shutting_down || !self.holds_lease(now)) {
            return Verdict::NoLease;
        }
        Verdict::Run
    }

    /// The leadership `lead` renewed the lease (its `seq`-th) at `now` for `lease`. False
    /// (nothing renewed) when the leadership is older than one already seen, or the lease older
    /// than one taken.
    pub(super) fn renew(&mut self, lead: Lead, seq: u64, now: Instant, lease: Duration) -> bool {
        if lead < self.seen || (lead, seq) <= self.last_lease {
            return false;
        }
        self.seen = lead;
        self.last_lease = (lead, seq);
        // A lease that does not join the one held (none held, the start's grace, or one that
        // ended before this one begins) starts a new holding: what was admitted under the old
        // one must not begin under this one.
        if self.grace || self.lease_until.is_none_or(|t| t < now) {
            self.holding += 1;
        }
        self.grace = false;
        self.lease_until = Some(now + lease);
        true
    }

    /// A member just started holds a lease as if granted now: if no leader reaches it within
    /// `lease`, what may run here (left by a previous daemon) is stopped like after any lost
    /// lease. Starts still need a leader's renewal: this grace lets nothing start.
    pub(super) fn started(&mut self, now: Instant, lease: Duration) {
        self.lease_until = Some(now + lease);
        self.grace = true;
    }

    /// Until when this member holds a leader's lease (`None`: it holds none, or only the
    /// start's grace): what a queued start checks before it begins.
    pub(super) fn lease_until(&self) -> Option<Instant> {
        self.lease_until.filter(|_| !self.grace)
    }

    /// The lease as the workers see it.
    pub(super) fn view(&self) -> super::worker::LeaseView {
        super::worker::LeaseView { until: self.lease_until(), holding: self.holding }
    }

    pub(super) fn holds_lease(&self, now: Instant) -> bool {
        if self.grace {
            return false;
        }
        self.lease_until.is_some_and(|t| now < t)
    }

    /// Gives the lease up (the watchdog could not be armed): it counts as never granted until
    /// the next renewal.
    pub(super) fn drop_lease(&mut self) {
        self.lease_until = None;
        self.grace = false;
    }

    /// The lease ran out at `now` (it had been granted), or is within `ahead` of its end (a
    /// member with a watchdog stops that early, see [`super::lease::stop_from`]): true once,
    /// then it counts as never granted until the next renewal.
    pub(super) fn lease_ran_out(&mut self, now: Instant, ahead: Duration) -> bool {
        if self.lease_until.is_some_and(|t| super::lease::stop_from(t, ahead) <= now) {
            self.lease_until = None;
            self.grace = false;
            return true;
        }
        false
    }

    /// The leadership to report a result under: that of the command it answers (probes and
    /// actions; `None` for a call no leader asked for, such as the member's own stops), or the
    /// newest seen for a monitor.
    pub(super) fn report_lead(&self, event: &Event) -> Option<Lead> {
        match event {
            Event::Probe { resource, op, .. } | Event::ActionDone { resource, op, .. } => {
                self.taken.get(resource).filter(|(_, o)| o == op).map(|(t, _)| *t)
            }
            _ => Some(self.seen),
        }
    }
}

pub(super) fn op_of(c: &Command) -> u64 {
    match c {
        Command::Probe { op, .. } | Command::Start { op, .. } | Command::Stop { op, .. } | Command::Recover { op, .. } => *op,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{ActionKind, MonitorOutcome, NodeId};

    const LEASE: Duration = Duration::from_secs(10);

    /// A leadership of `term` (its first barrier at index 1).
    fn l(term: u64) -> Lead {
        Lead { term, index: 1 }
    }
    fn r() -> ResourceId {
        ResourceId::from("vip")
    }
    fn start(op: u64) -> Command {
        Command::Start { resource: r(), node: NodeId::from("a"), op, epoch: 1 }
    }
    fn probe(op: u64) -> Command {
        Command::Probe { resource: r(), node: NodeId::from("a"), op, epoch: 1 }
    }
    fn stop(op: u64) -> Command {
        Command::Stop { resource: r(), node: NodeId::from("a"), op, epoch: 1 }
    }

    #[test]
    fn a_deposed_leaders_late_command_is_refused() {
        let (mut a, t0) = (Admission::default(), Instant::now());
        assert!(a.renew(l(2), 1, t0, LEASE));
        // The new leader (term 3) probes; the old one's start (term 2) arrives after.
        assert_eq!(a.admit(l(3), &r(), &probe(1), t0, false), Verdict::Run);
        assert_eq!(a.admit(l(2), &r(), &start(7), t0, false), Verdict::Stale);
        // Also when Raft told us of the new term before any of its commands came.
        let mut b = Admission::default();
        b.renew(l(2), 1, t0, LEASE);
        b.saw_term(3);
        assert_eq!(b.admit(l(2), &r(), &start(7), t0, false), Verdict::Stale);
        assert!(!b.renew(l(2), 2, t0, LEASE), "an old leader cannot renew the lease either");
    }

    #[test]
    fn a_leader_restarted_within_its_term_is_newer_than_its_earlier_self() {
        let (mut a, t0) = (Admission::default(), Instant::now());
        let before = Lead { term: 1, index: 3 };
        assert!(a.renew(before, 40, t0, LEASE));
        assert_eq!(a.admit(before, &r(), &probe(7), t0, false), Verdict::Run);
        // Restarted, still leader of term 1: its counters start again after its new barrier.
        let after = Lead { term: 1, index: 9 };
        assert!(a.renew(after, 1, t0, LEASE), "its first lease renews");
        assert_eq!(a.admit(after, &r(), &probe(1), t0, false), Verdict::Run, "its first probe runs");
        // And its earlier self's late messages are old.
        assert_eq!(a.admit(before, &r(), &start(8), t0, false), Verdict::Stale);
        assert!(!a.renew(before, 41, t0, LEASE));
    }

    #[test]
    fn copies_and_older_operations_are_dropped() {
        let (mut a, t0) = (Admission::default(), Instant::now());
        a.renew(l(1), 1, t0, LEASE);
        assert_eq!(a.admit(l(1), &r(), &start(5), t0, false), Verdict::Run);
        assert_eq!(a.admit(l(1), &r(), &start(5), t0, false), Verdict::Duplicate, "the copy over the second path");
        assert_eq!(a.admit(l(1), &r(), &probe(4), t0, false), Verdict::Duplicate, "older than one taken");
        assert_eq!(a.admit(l(1), &r(), &stop(6), t0, false), Verdict::Run);
        // A new leader's operation ids start again: a new term is newer whatever the id.
        assert_eq!(a.admit(l(2), &r(), &probe(1), t0, false), Verdict::Run);
        // Another resource has its own sequence.
        assert_eq!(a.admit(l(2), &ResourceId::from("fs"), &probe(1), t0, false), Verdict::Run);
    }

    #[test]
    fn nothing_starts_without_a_lease_but_probes_and_stops_always_run() {
        let (mut a, t0) = (Admission::default(), Instant::now());
        assert_eq!(a.admit(l(1), &r(), &start(1), t0, false), Verdict::NoLease, "never renewed");
        assert_eq!(a.admit(l(1), &r(), &probe(2), t0, false), Verdict::Run);
        a.renew(l(1), 1, t0, LEASE);
        assert_eq!(a.admit(l(1), &r(), &start(3), t0, false), Verdict::Run);
        assert_eq!(a.admit(l(1), &r(), &start(4), t0, true), Verdict::NoLease, "shutting down");
        let later = t0 + LEASE;
        assert_eq!(a.admit(l(1), &r(), &start(5), later, false), Verdict::NoLease, "the lease ran out");
        assert_eq!(a.admit(l(1), &r(), &stop(6), later, false), Verdict::Run);
        assert!(a.lease_ran_out(later, Duration::ZERO));
        assert!(!a.lease_ran_out(later, Duration::ZERO), "reported once");
        assert!(!a.holds_lease(later));
    }

    #[test]
    fn a_member_with_a_watchdog_stops_ahead_of_its_leases_end() {
        let (mut a, t0) = (Admission::default(), Instant::now());
        let ahead = Duration::from_secs(1);
        a.renew(l(1), 1, t0, LEASE);
        assert!(!a.lease_ran_out(t0 + LEASE - ahead - Duration::from_millis(1), ahead));
        assert!(a.lease_ran_out(t0 + LEASE - ahead, ahead), "a second early, before its watchdog fires");
        assert_eq!(a.admit(l(1), &r(), &start(1), t0 + LEASE - ahead, false), Verdict::NoLease, "and nothing starts after that");
    }

    #[test]
    fn a_started_member_without_a_leader_runs_out_of_its_grace_and_starts_nothing_meanwhile() {
        let (mut a, t0) = (Admission::default(), Instant::now());
        a.started(t0, LEASE);
        assert!(!a.holds_lease(t0), "the grace is not a lease to start anything");
        assert_eq!(a.admit(l(1), &r(), &start(1), t0, false), Verdict::NoLease);
        assert!(!a.lease_ran_out(t0, Duration::ZERO));
        assert!(a.lease_ran_out(t0 + LEASE, Duration::ZERO), "no leader within the grace: stop what may run here");
        // With a leader's renewal in time, it is an ordinary lease.
        let mut b = Admission::default();
        b.started(t0, LEASE);
        b.renew(l(1), 1, t0, LEASE);
        assert!(b.holds_lease(t0));
    }

    #[test]
    fn a_lease_taken_again_after_a_gap_is_a_new_holding() {
        let (mut a, t0) = (Admission::default(), Instant::now());
        a.renew(l(1), 1, t0, LEASE);
        let first = a.view().holding;
        // Renewed before it ended: the same holding (a start admitted under it may begin).
        a.renew(l(1), 2, t0 + LEASE / 2, LEASE);
        assert_eq!(a.view().holding, first);
        // It ran out (the member stopped, its watchdog may have fired): the next is a new one.
        let end = t0 + LEASE / 2 + LEASE;
        assert!(a.lease_ran_out(end, Duration::ZERO));
        a.renew(l(1), 3, end + Duration::from_secs(1), LEASE);
        assert_ne!(a.view().holding, first, "a start admitted before the gap must not begin");
        // A gap the loop never saw (it was stalled) counts too: the new lease begins after the old ended.
        let second = a.view().holding;
        let far = end + Duration::from_secs(1) + LEASE + Duration::from_secs(5);
        a.renew(l(1), 4, far, LEASE);
        assert_ne!(a.view().holding, second);
    }

    #[test]
    fn a_late_copy_of_an_older_lease_is_ignored() {
        let (mut a, t0) = (Admission::default(), Instant::now());
        assert!(a.renew(l(3), 1, t0, LEASE));
        assert!(a.renew(l(3), 2, t0, LEASE));
        assert!(!a.renew(l(3), 1, t0, LEASE), "the copy of lease 1 over the slower path");
        assert!(!a.renew(l(3), 2, t0, LEASE), "the copy of lease 2");
        assert!(a.renew(l(4), 1, t0, LEASE), "a new leader counts again");
    }

    #[test]
    fn results_carry_the_leadership_of_the_command_they_answer() {
        let (mut a, t0) = (Admission::default(), Instant::now());
        a.renew(l(4), 1, t0, LEASE);
        a.admit(l(4), &r(), &start(9), t0, false);
        let done = |op| Event::ActionDone { resource: r(), node: NodeId::from("a"), op, action: ActionKind::Start, result: Ok(()) };
        assert_eq!(a.report_lead(&done(9)), Some(l(4)));
        a.saw_term(5);
        assert_eq!(a.report_lead(&done(9)), Some(l(4)), "answered after a new term began: still term 4's");
        assert_eq!(a.report_lead(&done(0)), None, "the member's own stop answers no command");
        let mon = Event::Monitor { resource: r(), node: NodeId::from("a"), epoch: 1, outcome: MonitorOutcome::Running };
        assert_eq!(a.report_lead(&mon), Some(Lead::of_term(5)));
    }
}
