//! Alerts, like Pacemaker's alert agents: for each event of the history that an `[[alerts]]`
//! entry selects, the node runs the entry's program with the event's fields in its environment.
//!
//! Each entry has its own task reading the history's broadcast feed, so a slow or hanging alert
//! program delays only its own alerts (never the node loop), and events reach it in order. The
//! feed is bounded: an alert program slower than the events skips the oldest and the log says
//! how many. Programs run like agents' programs (cleared environment, own process group, killed
//! at the timeout). Alert failures are logged, never recorded as events (no alert storms).

use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::AlertConfig;
use crate::node::history::EventRecord;
use crate::plugin::exec::{self, ExecRequest};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// At shutdown, events already queued are still delivered for at most this long.
const DRAIN: Duration = Duration::from_secs(5);

/// One `[[alerts]]` entry, resolved.
#[derive(Debug, Clone)]
pub struct Alert {
    pub label: String,
    pub program: String,
    pub args: Vec<String>,
    pub kinds: Vec<String>,
    pub subjects: Vec<String>,
    pub timeout: Duration,
}

impl Alert {
    pub fn from_config(a: &AlertConfig) -> Self {
        Self {
            label: a.label(),
            program: a.program.get_ref().clone(),
            args: a.args.clone(),
            kinds: a.kinds.iter().map(|k| k.get_ref().clone()).collect(),
            subjects: a.subjects.clone(),
            timeout: a.timeout.map_or(DEFAULT_TIMEOUT, |t| t.get()),
        }
    }

    fn selects(&self, e: &EventRecord) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&e.kind)) && (self.subjects.is_empty() || self.subjects.contains(&e.subject))
    }
}

/// The environment an alert program gets for one event: `WARDEN_ALERT_*`, plus the
/// `CRM_alert_*` names a Pacemaker alert agent reads (kind, node, rsc, task, desc, rc,
/// timestamp), so an existing one (e.g. `alert_smtp.sh`) can be pointed at Warden.
pub fn environment(cluster: &str, node: &str, e: &EventRecord) -> Vec<(String, String)> {
    // Environment values cannot hold NUL; guest-provided messages could.
    let clean = |s: &str| s.replace('\0', " ");
    let timestamp = format!("{} UTC", crate::cli::ops::clock(e.at_ms));
    let crm_kind = match e.kind.as_str() {
        "action" | "monitor" | "watch" => "resource",
        "node" => "node",
        _ => "attribute",
    };
    let rc = match e.result.as_str() {
        "ok" | "running" | "stopped" => "0",
        "" => "",
        _ => "1",
    };
    let mut env = vec![
        ("WARDEN_ALERT_KIND", e.kind.clone()),
        ("WARDEN_ALERT_SEQ", e.seq.to_string()),
        ("WARDEN_ALERT_CLUSTER", cluster.to_string()),
        ("WARDEN_ALERT_NODE", node.to_string()),
        ("WARDEN_ALERT_SUBJECT", clean(&e.subject)),
        ("WARDEN_ALERT_ACTION", e.action.clone().unwrap_or_default()),
        ("WARDEN_ALERT_RESULT", e.result.clone()),
        ("WARDEN_ALERT_MESSAGE", clean(&e.message)),
        ("WARDEN_ALERT_AT_MS", e.at_ms.to_string()),
        ("WARDEN_ALERT_TIMESTAMP", timestamp.clone()),
        ("WARDEN_ALERT_DURATION_MS", e.duration_ms.map(|d| d.to_string()).unwrap_or_default()),
        ("CRM_alert_version", format!("warden {}", env!("CARGO_PKG_VERSION"))),
        ("CRM_alert_kind", crm_kind.to_string()),
        ("CRM_alert_node", node.to_string()),
        ("CRM_alert_rsc", if crm_kind == "resource" { clean(&e.subject) } else { String::new() }),
        ("CRM_alert_task", e.action.clone().unwrap_or_else(|| e.kind.clone())),
        ("CRM_alert_desc", clean(if e.message.is_empty() { &e.result } else { &e.message })),
        ("CRM_alert_rc", rc.to_string()),
        ("CRM_alert_timestamp", timestamp),
    ];
    env.retain(|(_, v)| !v.is_empty());
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Deliver the selected events of `feed` to `alert` until the feed closes or `cancel` fires
/// (then what is already queued is delivered for at most [`DRAIN`]).
pub async fn run(alert: Alert, cluster: String, node: String, mut feed: broadcast::Receiver<EventRecord>, cancel: CancellationToken) {
    loop {
        let next = tokio::select! {
            r = feed.recv() => r,
            _ = cancel.cancelled() => break,
        };
        match next {
            Ok(e) if alert.selects(&e) => deliver(&alert, &cluster, &node, &e, None).await,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(alert = %alert.label, skipped = n, "alert program slower than events arrive; the oldest were skipped");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
    let until = tokio::time::Instant::now() + DRAIN;
    while let Ok(e) = feed.try_recv() {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            tracing::warn!(alert = %alert.label, "shutting down: alerts still queued were not delivered");
            return;
        }
        if alert.selects(&e) {
            deliver(&alert, &cluster, &node, &e, Some(left)).await;
        }
    }
}

async fn deliver(alert: &Alert, cluster: &str, node: &str, e: &EventRecord, cap: Option<Duration>) {
    let timeout = cap.map_or(alert.timeout, |c| c.min(alert.timeout));
    let req = ExecRequest {
        program: alert.program.clone(),
        arg0: None,
        args: alert.args.clone(),
        env: environment(cluster, node, e),
        stdin: None,
        cwd: None,
        timeout,
        cgroup: None,
    };
    match exec::run(req).await {
        Ok(r) if r.exit_code == Some(0) => tracing::debug!(alert = %alert.label, seq = e.seq, "alert delivered"),
        Ok(r) => tracing::warn!(
            alert = %alert.label,
            seq = e.seq,
            exit = ?r.exit_code,
            signal = ?r.signal,
            timed_out = r.timed_out,
            stderr = %r.stderr.text.lines().next().unwrap_or(""),
            "alert program failed"
        ),
        Err(err) => tracing::warn!(alert = %alert.label, seq = e.seq, error = %err, "alert program could not run"),
    }
}
