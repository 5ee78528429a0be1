//! The lease rules of docs/ARCHITECTURE.md §4, each a named function (sans-IO: callers pass the
//! times). D is the member lease, ρ the clock-rate error between two machines, ε a margin.
//!
//! - A member's lease is counted from the moment **it sent** the hello that the leader's grant
//!   answers ([`lease_until`]), never from the grant's receipt: a grant delayed in the network
//!   cannot stretch the lease beyond what the leader knows.
//! - The leader grants only within its authority, and only to members it counts up.
//! - Without a fence confirmation a lost member's groups move only after
//!   [`reassign_after`]`(arrival of the hello the last grant answered)`, and a new leader, which does not know the last grant of the
//!   leader before it, waits that long from its own start ([`lease_wait_from`]).
//! - A member with `watchdog_fencing` arms its watchdog to fire just before its lease ends
//!   ([`watchdog_deadline`]) and starts stopping its groups [`STOP_AHEAD`] before that
//!   ([`stop_from`]), so that a clean stop has time to finish and the watchdog is the backstop.

use std::time::{Duration, Instant};

/// The member lease D without `watchdog_fencing`: only the member's own stop depends on it
/// (and `confirm-down`), so it is long enough to ride out a leader's death and a slow election.
pub const LEASE: Duration = Duration::from_secs(10);
/// The member lease D with `watchdog_fencing`: a lost member's groups move D(1+ρ)/(1−ρ)+ε after
/// its last grant, so D is most of a watchdog-only fail-over. It must outlast a new leader's
/// election and first grant (about 2 s, see member.rs) plus [`STOP_AHEAD`] plus the hello and
/// grant intervals, or a leader's death would stop groups on healthy members.
pub const WATCHDOG_LEASE: Duration = Duration::from_millis(4500);
/// A member with a watchdog starts stopping its groups this long before its lease ends.
pub const STOP_AHEAD: Duration = Duration::from_secs(1);
/// The watchdog fires this long before the lease ends (the kill itself takes a few ms).
pub const KILL_MARGIN: Duration = Duration::from_millis(100);

/// Until when a member holds a lease granted in answer to a hello it sent at `sent` (its own
/// clock).
pub fn lease_until(sent: Instant, d: Duration) -> Instant {
    sent + d
}

/// When the watchdog of a member whose lease ends at `until` must fire: before the end, so that
/// nothing runs there once the lease is over by the member's own clock.
pub fn watchdog_deadline(until: Instant) -> Instant {
    until.checked_sub(KILL_MARGIN).unwrap_or(until)
}

/// When a member whose lease ends at `until` starts stopping its groups itself (`ahead`:
/// [`STOP_AHEAD`] with a watchdog, zero without).
pub fn stop_from(until: Instant, ahead: Duration) -> Instant {
    until.checked_sub(ahead).unwrap_or(until)
}

/// The earliest time (leader's clock) at which a member has provably lost its lease, when
/// `last_grant` (leader's clock) is when the hello that the leader's last grant answered arrived:
/// D(1+ρ)/(1−ρ) + ε later. The member counted its lease from sending that hello, before it
/// arrived, on a clock that may run slower by ρ; ours may run faster by ρ. (Counting from the
/// hello's arrival rather than the grant saves the detection time: a leader keeps granting a
/// member it has not yet counted lost, but no new hello comes from a dead one.)
pub fn reassign_after(last_grant: Instant, d: Duration, rho: f64, eps: Duration) -> Instant {
    last_grant + d.mul_f64((1.0 + rho) / (1.0 - rho)) + eps
}

/// The same wait for a leader that took over at `since` and has not granted the member a lease
/// itself: an earlier leader's grants came before `since` (authority windows never overlap).
pub fn lease_wait_from(last_grant: Option<Instant>, since: Instant, d: Duration, rho: f64, eps: Duration) -> Instant {
    reassign_after(last_grant.map_or(since, |g| g.max(since)), d, rho, eps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RHO: f64 = 0.01;
    const EPS: Duration = Duration::from_millis(50);

    #[test]
    fn a_lease_counts_from_the_hello_not_from_the_grant() {
        let sent = Instant::now();
        // However late the grant arrives, the lease ends D after the hello.
        assert_eq!(lease_until(sent, WATCHDOG_LEASE), sent + WATCHDOG_LEASE);
    }

    #[test]
    fn the_watchdog_fires_before_the_lease_ends_and_the_stop_starts_before_that() {
        let until = Instant::now() + WATCHDOG_LEASE;
        let fire = watchdog_deadline(until);
        let stop = stop_from(until, STOP_AHEAD);
        assert!(fire < until);
        assert!(stop < fire, "the clean stop must get its chance before the watchdog");
        assert_eq!(stop_from(until, Duration::ZERO), until);
    }

    #[test]
    fn the_leader_waits_out_the_lease_with_both_clocks_at_their_worst() {
        let grant = Instant::now();
        let after = reassign_after(grant, WATCHDOG_LEASE, RHO, EPS);
        // Real time from the member's hello (before the grant) to its lease's end, on a member
        // clock running ρ slow: at most D(1+ρ). The leader's clock running ρ fast measures that
        // as at most D(1+ρ)/(1−ρ)... our wait covers it, plus ε.
        let member_worst = WATCHDOG_LEASE.mul_f64(1.0 + RHO);
        let leader_measures = member_worst.mul_f64(1.0 / (1.0 - RHO));
        assert!(after - grant >= leader_measures + EPS - Duration::from_micros(1));
        // ... and it is not a wait for nothing: within 3 % of D plus ε.
        assert!(after - grant <= WATCHDOG_LEASE.mul_f64(1.03) + EPS);
    }

    #[test]
    fn a_new_leader_waits_from_its_start_when_it_never_granted() {
        let since = Instant::now();
        let d = WATCHDOG_LEASE;
        assert_eq!(lease_wait_from(None, since, d, RHO, EPS), reassign_after(since, d, RHO, EPS));
        // A grant of its own later than its start counts from the grant.
        let g = since + Duration::from_secs(2);
        assert_eq!(lease_wait_from(Some(g), since, d, RHO, EPS), reassign_after(g, d, RHO, EPS));
        // Never earlier than its start, whatever it is told.
        let before = since.checked_sub(Duration::from_secs(5)).unwrap_or(since);
        assert_eq!(lease_wait_from(Some(before), since, d, RHO, EPS), reassign_after(since, d, RHO, EPS));
    }
}
