use std::time::Duration;

use crate::wit::host::{self, ExecOptions};
use crate::{AgentError, ExecOutput};

/// A program to run through the host's `exec` import (which checks the grants).
///
/// ```ignore
/// let out = Command::new("/opt/jp1base/bin/jevstat").arg(lhost).args(["-t", "5"]).timeout(Duration::from_secs(10)).run()?;
/// ```
#[derive(Debug, Clone)]
pub struct Command {
    program: String,
    args: Vec<String>,
    opts: ExecOptions,
}

impl Command {
    /// `program` must be an absolute path.
    pub fn new(program: impl Into<String>) -> Self {
        Self { program: program.into(), args: Vec::new(), opts: ExecOptions { env: Vec::new(), stdin: None, timeout_ms: None, cwd: None } }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.opts.env.push((k.into(), v.into()));
        self
    }

    pub fn stdin(mut self, input: impl Into<String>) -> Self {
        self.opts.stdin = Some(input.into());
        self
    }

    /// Kill the program's process group after `d` (the action's deadline applies too).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.opts.timeout_ms = Some(d.as_millis().min(u32::MAX as u128) as u32);
        self
    }

    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.opts.cwd = Some(dir.into());
        self
    }

    /// Run it and wait. A non-zero exit is not an error; see [`ExecOutput::success`].
    pub fn run(&self) -> Result<ExecOutput, AgentError> {
        host::exec(&self.program, &self.args, &self.opts)
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str()).chain(self.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
    }
}

impl ExecOutput {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// "exit 4", "signal 9" or "timed out", for messages.
    pub fn status_text(&self) -> String {
        match (self.timed_out, self.exit_code, self.signal) {
            (true, _, _) => "timed out".into(),
            (_, Some(c), _) => format!("exit {c}"),
            (_, None, Some(s)) => format!("signal {s}"),
            _ => "unknown status".into(),
        }
    }

    /// Standard output and error joined and trimmed, for a failure reason.
    pub fn output_text(&self) -> String {
        let mut s = self.stdout.trim().to_string();
        let e = self.stderr.trim();
        if !e.is_empty() {
            if !s.is_empty() {
                s.push_str(" | ");
            }
            s.push_str(e);
        }
        s
    }
}
