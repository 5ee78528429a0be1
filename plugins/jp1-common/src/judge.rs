//! Reading the JP1 status commands: exit codes 0 (all running), 4 (some running), 8 (all
//! stopped), 12 (transient, retry), anything else a failure; the command's output goes into the
//! reason shown to the operator.

use warden_sdk::{ExecOutput, Health};

/// One run of a status command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The command line, for messages.
    pub cmd: String,
    pub code: Option<i32>,
    pub timed_out: bool,
    /// "exit 4", "signal 9", "timed out".
    pub status: String,
    /// Standard output and error, trimmed.
    pub text: String,
}

impl Probe {
    pub fn from_output(cmd: String, out: &ExecOutput) -> Self {
        Probe { cmd, code: out.exit_code, timed_out: out.timed_out, status: out.status_text(), text: out.output_text() }
    }

    /// Exit 12, or no answer within the command's timeout: Hitachi's scripts retry these.
    pub fn transient(&self) -> bool {
        self.timed_out || self.code == Some(crate::TRANSIENT)
    }

    /// "All stopped" after an abnormal end rather than a stop (the status command says so).
    pub fn abnormal(&self) -> bool {
        self.text.contains("ended abnormally")
    }

    /// `` `cmd` exit 4: output `` for a reason.
    pub fn describe(&self) -> String {
        let text = if self.text.is_empty() { "(no output)".to_string() } else { self.text.replace('\n', " / ") };
        format!("`{}` {}: {text}", self.cmd, self.status)
    }
}

/// What the status commands say about a product on a logical host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Everything runs.
    Up,
    /// Cleanly stopped.
    Down,
    /// All stopped, but after an abnormal end (a process died or was killed).
    Crashed(String),
    /// Some processes run, some do not (or the startup is still in progress).
    Partly(String),
    /// Runs, but an optional service (queueless agent, scheduler) is not active and the operator
    /// asked for `degraded` on that.
    Impaired(String),
    /// The status command failed, hung, or kept answering 12, or a required service is down.
    Broken(String),
}

impl State {
    pub fn health(&self) -> Health {
        match self {
            State::Up => Health::Running,
            State::Down => Health::Stopped,
            State::Impaired(r) => Health::Degraded(r.clone()),
            State::Crashed(r) | State::Partly(r) | State::Broken(r) => Health::Failed(r.clone()),
        }
    }

    pub fn reason(&self) -> String {
        match self {
            State::Up => "running".into(),
            State::Down => "all processes stopped".into(),
            State::Crashed(r) | State::Partly(r) | State::Impaired(r) | State::Broken(r) => r.clone(),
        }
    }
}

/// Judge a `*_spmd_status` (or `jevstat`) result after `attempts` tries.
pub fn judge_status(what: &str, p: &Probe, attempts: u32) -> State {
    if p.timed_out {
        return State::Broken(format!("{what}: the status command did not finish within its timeout ({attempts} tries): {}", p.describe()));
    }
    match p.code {
        Some(0) => State::Up,
        Some(8) if p.abnormal() => State::Crashed(format!("{what} ended abnormally: {}", p.describe())),
        Some(8) => State::Down,
        Some(4) => State::Partly(format!("{what} is partly running: {}", p.describe())),
        Some(crate::TRANSIENT) => {
            State::Broken(format!("{what}: the status command still answered 12 (transient) after {attempts} tries: {}", p.describe()))
        }
        _ => State::Broken(format!("{what}: the status command failed: {}", p.describe())),
    }
}

/// `ajsqlstatus` output (LANG=C): the "Queueless agent service" line says `active`.
pub fn queueless_active(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        l.starts_with("Queueless agent service") && l.rsplit(':').next().map(str::trim) == Some("active")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(code: i32, text: &str) -> Probe {
        Probe {
            cmd: "jbs_spmd_status -h lh -t 5".into(),
            code: Some(code),
            timed_out: false,
            status: format!("exit {code}"),
            text: text.into(),
        }
    }

    #[test]
    fn exit_codes_map_to_states() {
        assert_eq!(judge_status("JP1/Base", &p(0, "jbsroute"), 1), State::Up);
        assert_eq!(judge_status("JP1/Base", &p(8, "all stopped"), 1), State::Down);
        assert!(
            matches!(judge_status("JP1/Base", &p(8, "JP1/Base ended abnormally: x"), 1), State::Crashed(r) if r.contains("ended abnormally: x"))
        );
        assert!(matches!(judge_status("JP1/Base", &p(4, "not running: jbsroute"), 1), State::Partly(r) if r.contains("jbsroute")));
        assert!(
            matches!(judge_status("JP1/Base", &p(12, "KAJP1706-E"), 3), State::Broken(r) if r.contains("after 3 tries") && r.contains("KAJP1706-E"))
        );
        assert!(matches!(judge_status("JP1/Base", &p(1, "usage"), 1), State::Broken(r) if r.contains("exit 1: usage")));
        let hung = Probe { timed_out: true, code: None, status: "timed out".into(), ..p(0, "") };
        assert!(hung.transient());
        assert!(matches!(judge_status("JP1/Base", &hung, 3), State::Broken(_)));
    }

    #[test]
    fn states_map_to_health() {
        assert!(matches!(State::Up.health(), Health::Running));
        assert!(matches!(State::Down.health(), Health::Stopped));
        assert!(matches!(State::Impaired("q".into()).health(), Health::Degraded(r) if r == "q"));
        assert!(matches!(State::Crashed("x".into()).health(), Health::Failed(r) if r == "x"));
        assert!(matches!(State::Partly("x".into()).health(), Health::Failed(r) if r == "x"));
    }

    #[test]
    fn queueless_line_is_parsed() {
        assert!(queueless_active("Queueless agent service : active\nQueueless file transfer service : inactive"));
        assert!(!queueless_active("Queueless agent service : inactive"));
        assert!(!queueless_active(""));
    }
}
