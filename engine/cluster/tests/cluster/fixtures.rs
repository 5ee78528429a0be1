//! Shared fixtures for the cluster tier.

use std::time::Duration;

/// How long any wait in these tests may take before it counts as a failure. Generous: the
/// machine is shared with other builds, and a wait returns as soon as its condition holds.
#[allow(dead_code)]
pub const WAIT: Duration = Duration::from_secs(20);
