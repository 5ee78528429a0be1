//! Time the host itself was not running (SIGSTOP, a frozen VM, a starved machine), so deadlines
//! are measured against time the engine could act: a daemon stalled for 5 s while a start
//! script ran must not judge that start timed out when the script succeeded in 2.
//!
//! A sampler thread beats every [`BEAT`]; a gap far beyond that is a stall. A reader also counts
//! a stall still in progress (the beat is overdue), so it does not matter whether the sampler or
//! a deadline check runs first after the process resumes.

use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// (100 ms: ten wake-ups a second, a part of an idle engine's cost; a stall is far longer.)
const BEAT: Duration = Duration::from_millis(100);
/// A gap longer than this (beyond one beat) counts as a stall.
const STALL: Duration = Duration::from_millis(250);
/// The most a stall can extend one deadline.
const MAX_EXTENSION: Duration = Duration::from_secs(60);

struct Clock {
    anchor: Instant,
    /// The sampler thread runs; without it nothing is counted as a stall (deadlines stay plain).
    alive: std::sync::atomic::AtomicBool,
    /// Milliseconds since `anchor` of the last beat, and the stalled total so far.
    state: Mutex<(u64, u64)>,
}

fn clock() -> &'static Clock {
    static CLOCK: OnceLock<&'static Clock> = OnceLock::new();
    CLOCK.get_or_init(|| {
        let c: &'static Clock = Box::leak(Box::new(Clock {
            anchor: Instant::now(),
            alive: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new((0, 0)),
        }));
        let spawned = std::thread::Builder::new().name("warden-stall".into()).spawn(move || loop {
            std::thread::sleep(BEAT);
            let now = c.anchor.elapsed().as_millis() as u64;
            let mut s = c.state.lock().unwrap_or_else(|e| e.into_inner());
            let gap = now.saturating_sub(s.0);
            if gap > (BEAT + STALL).as_millis() as u64 {
                s.1 += gap - BEAT.as_millis() as u64;
            }
            s.0 = now;
        });
        match spawned {
            Ok(_) => c.alive.store(true, std::sync::atomic::Ordering::Release),
            Err(e) => tracing::error!(error = %e, "cannot start the stall sampler; host stalls will count against action deadlines"),
        }
        c
    })
}

/// Milliseconds the host has been stalled since the process started, including a stall that is
/// still being noticed.
pub fn stalled_ms() -> u64 {
    let c = clock();
    if !c.alive.load(std::sync::atomic::Ordering::Acquire) {
        return 0;
    }
    let now = c.anchor.elapsed().as_millis() as u64;
    let s = c.state.lock().unwrap_or_else(|e| e.into_inner());
    let overdue = now.saturating_sub(s.0);
    let current = if overdue > (BEAT + STALL).as_millis() as u64 { overdue - BEAT.as_millis() as u64 } else { 0 };
    s.1 + current
}

/// A deadline that moves out by however long the host stalls after it was set.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    stalled_at_start: u64,
    cap: Duration,
}

impl Deadline {
    pub fn after(d: Duration) -> Self {
        Self { at: Instant::now() + d, stalled_at_start: stalled_ms(), cap: d.min(MAX_EXTENSION) }
    }

    /// The stall since the deadline was set, capped: at most the deadline's own length, and at
    /// most a minute, so nothing (a runaway child starving the sampler) can lift a deadline.
    fn extra(&self) -> Duration {
        Duration::from_millis(stalled_ms().saturating_sub(self.stalled_at_start)).min(self.cap)
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.at + self.extra()
    }

    pub fn remaining(&self) -> Duration {
        (self.at + self.extra()).saturating_duration_since(Instant::now())
    }
}

/// `tokio::time::timeout` that does not count time the host was stalled.
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    let deadline = Deadline::after(d);
    tokio::pin!(fut);
    loop {
        let extra = deadline.extra();
        match tokio::time::timeout_at((deadline.at + extra).into(), &mut fut).await {
            Ok(v) => return Ok(v),
            Err(e) if deadline.extra() == extra => return Err(e),
            Err(_) => continue, // the host stalled meanwhile: the deadline moved out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_deadline_has_its_whole_time() {
        let d = Deadline::after(Duration::from_secs(10));
        assert!(!d.passed());
        assert!(d.remaining() > Duration::from_secs(9));
        let _ = stalled_ms();
    }
}
