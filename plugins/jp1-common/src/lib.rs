//! What the three JP1 agents (`jp1-base`, `jp1-ajs3-manager`, `jp1-ajs3-agent`) share: their
//! parameters, the commands they run, and the start/stop/monitor/recover logic of Hitachi's own
//! cluster scripts and the LifeKeeper JP1 kit (see `../shared/reference/jp1.md`).
//!
//! Everything goes through the host imports of `warden-sdk`: the agent runs the JP1 commands with
//! absolute paths under the `prefix` parameter and reads nothing but `stat`s of the command paths,
//! the shared directory and (AJS3) the installed-products list.

use std::time::{Duration, Instant};

use warden_sdk::{fail, fs, log, sleep, AgentError, AgentMetadata, Command, Context, Health, Timeouts};

mod judge;
mod params;

pub use judge::{judge_status, queueless_active, Probe, State};
pub use params::{parse_interval, Check, Config};

/// Which product an agent manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Base,
    AjsManager,
    AjsAgent,
}

/// The exit code every JP1 status command uses for "transient: retry".
pub const TRANSIENT: i32 = 12;

/// While polling after a start, how long "all stopped" may last before the start is declared
/// failed (the real `jajs_start.cluster` may return before the process manager shows up).
const STOPPED_GRACE: Duration = Duration::from_secs(5);
/// Interval between status polls during start and stop.
const POLL: Duration = Duration::from_millis(250);
/// Bound on a `*_killall.cluster` run and on waiting for its processes to be gone.
const KILLALL_WAIT: Duration = Duration::from_secs(30);

impl Kind {
    /// The plugin name, equal to the manifest's `name`.
    pub fn plugin_name(self) -> &'static str {
        match self {
            Kind::Base => "jp1-base",
            Kind::AjsManager => "jp1-ajs3-manager",
            Kind::AjsAgent => "jp1-ajs3-agent",
        }
    }

    pub fn product(self) -> &'static str {
        match self {
            Kind::Base => "JP1/Base",
            Kind::AjsManager => "JP1/AJS3 - Manager",
            Kind::AjsAgent => "JP1/AJS3 - Agent",
        }
    }

    pub fn is_ajs(self) -> bool {
        self != Kind::Base
    }

    /// Directory of the `*.cluster` commands, relative to the prefix.
    fn cluster_dir(self) -> &'static str {
        if self.is_ajs() {
            "etc/opt/jp1ajs2"
        } else {
            "etc/opt/jp1base"
        }
    }

    fn bin_dir(self) -> &'static str {
        if self.is_ajs() {
            "opt/jp1ajs2/bin"
        } else {
            "opt/jp1base/bin"
        }
    }

    fn cmd_stem(self) -> &'static str {
        if self.is_ajs() {
            "jajs"
        } else {
            "jbs"
        }
    }

    /// The product's directory in the shared directory, which must exist before a start.
    pub fn shared_subdir(self) -> &'static str {
        if self.is_ajs() {
            "jp1ajs2"
        } else {
            "jp1base"
        }
    }

    /// Relative paths of every command this agent runs.
    pub fn commands(self) -> Vec<String> {
        let mut v: Vec<String> =
            ["start", "stop", "killall"].iter().map(|verb| format!("{}/{}_{verb}.cluster", self.cluster_dir(), self.cmd_stem())).collect();
        match self {
            Kind::Base => v.extend(["opt/jp1base/bin/jbs_spmd_status".into(), "opt/jp1base/bin/jevstat".into()]),
            Kind::AjsManager => v.extend([
                "opt/jp1ajs2/bin/jajs_spmd_status".into(),
                "opt/jp1ajs2/bin/ajsqlstatus".into(),
                "opt/jp1ajs2/bin/jajs_status".into(),
            ]),
            Kind::AjsAgent => v.extend(["opt/jp1ajs2/bin/jajs_spmd_status".into(), "opt/jp1ajs2/bin/ajsqlstatus".into()]),
        }
        v
    }
}

/// `prefix` + `rel`, with exactly one slash between them.
pub fn under(prefix: &str, rel: &str) -> String {
    format!("{}/{}", prefix.trim_end_matches('/'), rel.trim_start_matches('/'))
}

/// The installed-products list (modelled on Hitachi's PP installer list), relative to the prefix.
pub const PP_LIST: &str = "etc/.hitachi/pplistd/pplistd";
pub const PP_AJS_MANAGER: &str = "JP1/Automatic Job Management System 3 - Manager";
pub const PP_AJS_AGENT: &str = "JP1/Automatic Job Management System 3 - Agent";

/// The metadata of the agent for `kind`.
pub fn metadata(kind: Kind) -> AgentMetadata {
    let description = match kind {
        Kind::Base => "JP1/Base on a logical host: jbs_start/stop/killall.cluster, monitored with jbs_spmd_status and jevstat",
        Kind::AjsManager => "JP1/AJS3 - Manager on a logical host: jajs_start/stop/killall.cluster, monitored with jajs_spmd_status (+ ajsqlstatus, jajs_status)",
        Kind::AjsAgent => "JP1/AJS3 - Agent on a logical host: jajs_start/stop/killall.cluster, monitored with jajs_spmd_status (+ ajsqlstatus)",
    };
    let mut m = AgentMetadata::new(kind.plugin_name(), env!("CARGO_PKG_VERSION"), description);
    m.timeouts = Timeouts { start_ms: 180_000, stop_ms: 180_000, monitor_ms: 60_000, recover_ms: 360_000, validate_ms: 20_000 };
    m.monitor_interval_ms = 30_000;
    for p in params::parameters(kind) {
        m = m.param(p);
    }
    m
}

/// The command line for `verb` (`start`, `stop`, `killall`) of the product.
fn cluster(cfg: &Config, verb: &str, timeout: Duration) -> Command {
    Command::new(under(&cfg.prefix, &format!("{}/{}_{verb}.cluster", cfg.kind.cluster_dir(), cfg.kind.cmd_stem())))
        .arg(&cfg.lhost)
        .env("LANG", "C")
        .timeout(timeout)
}

fn status_timeout(cfg: &Config) -> Duration {
    // The command's own -t bound plus a margin: a status command that ignores -t is still cut.
    Duration::from_secs(u64::from(cfg.status_timeout) + 5)
}

/// `jbs_spmd_status -h <lhost> -t <s>` or `jajs_spmd_status -h <lhost> -t <s>`.
fn spmd_status(cfg: &Config) -> Command {
    Command::new(under(&cfg.prefix, &format!("{}/{}_spmd_status", cfg.kind.bin_dir(), cfg.kind.cmd_stem())))
        .args(["-h", &cfg.lhost, "-t", &cfg.status_timeout.to_string()])
        .env("LANG", "C")
        .timeout(status_timeout(cfg))
}

/// `jevstat <lhost> -t <s>`.
fn jevstat(cfg: &Config) -> Command {
    Command::new(under(&cfg.prefix, "opt/jp1base/bin/jevstat"))
        .args([cfg.lhost.as_str(), "-t", &cfg.status_timeout.to_string()])
        .env("LANG", "C")
        .timeout(status_timeout(cfg))
}

/// `ajsqlstatus -h <lhost>` (LANG=C, so the service line reads `active`).
fn ajsqlstatus(cfg: &Config) -> Command {
    Command::new(under(&cfg.prefix, "opt/jp1ajs2/bin/ajsqlstatus")).args(["-h", &cfg.lhost]).env("LANG", "C").timeout(status_timeout(cfg))
}

/// `jajs_status -h <lhost>`: shows a scheduler service that `jajs_spmd_status` cannot see.
fn jajs_status(cfg: &Config) -> Command {
    Command::new(under(&cfg.prefix, "opt/jp1ajs2/bin/jajs_status")).args(["-h", &cfg.lhost]).env("LANG", "C").timeout(status_timeout(cfg))
}

fn probe(cmd: &Command) -> Result<Probe, AgentError> {
    let out = cmd.run()?;
    Ok(Probe::from_output(cmd.display(), &out))
}

/// Run a status command; exit 12 (or a command that overran its timeout) is retried
/// `retries` times, `retry_interval` apart, as Hitachi's monitor scripts do.
fn probe_retry(cfg: &Config, cmd: &Command, retries: u32) -> Result<(Probe, u32), AgentError> {
    let mut attempts = 0;
    loop {
        let p = probe(cmd)?;
        attempts += 1;
        if !p.transient() || attempts > retries {
            return Ok((p, attempts));
        }
        log::info(format!("{} (attempt {attempts}); retrying in {} ms", p.describe(), cfg.retry_interval.as_millis()));
        sleep(cfg.retry_interval);
    }
}

/// Whether the logical host's shared directory is there (the shared disk is mounted here).
fn shared_available(cfg: &Config) -> Result<bool, AgentError> {
    Ok(fs::stat(&under(&cfg.shared_dir, cfg.kind.shared_subdir()))?.is_some())
}

/// The state of the product on the logical host, from its status commands.
///
/// Without its shared directory the product cannot run for this logical host on this node (its
/// configuration and database live there), and its status commands cannot tell: report it
/// stopped. This is what a node that does not own the shared disk sees at startup; without it a
/// probe would say "failed" and the engine would try to stop JP1 while its disk is unmounted,
/// racing the disk's own start.
fn state(cfg: &Config, retries: u32) -> Result<State, AgentError> {
    let product = cfg.kind.product();
    if !shared_available(cfg)? {
        log::info(format!(
            "the shared directory of logical host {} is not available here: {product} is not running on this node",
            cfg.lhost
        ));
        return Ok(State::Down);
    }
    let (p, n) = probe_retry(cfg, &spmd_status(cfg), retries)?;
    let main = judge_status(product, &p, n);
    if main != State::Up {
        return Ok(main);
    }
    let mut issues: Vec<(Check, String)> = Vec::new();
    match cfg.kind {
        Kind::Base => {
            let (e, n) = probe_retry(cfg, &jevstat(cfg), retries)?;
            match judge_status("the JP1/Base event service", &e, n) {
                State::Up => {}
                State::Down => {
                    issues.push((Check::Failed, format!("the JP1/Base event service is stopped while JP1/Base runs: {}", e.describe())))
                }
                s => issues.push((Check::Failed, s.reason())),
            }
        }
        Kind::AjsManager | Kind::AjsAgent => {
            if cfg.kind == Kind::AjsManager && cfg.scheduler != Check::Off {
                let (j, _) = probe_retry(cfg, &jajs_status(cfg), retries)?;
                if j.code != Some(0) {
                    issues.push((cfg.scheduler, format!("a JP1/AJS3 scheduler service is not running: {}", j.describe())));
                }
            }
            if cfg.queueless != Check::Off {
                let (q, _) = probe_retry(cfg, &ajsqlstatus(cfg), retries)?;
                if !(q.code == Some(0) && queueless_active(&q.text)) {
                    issues.push((cfg.queueless, format!("the JP1/AJS3 queueless agent service is not active: {}", q.describe())));
                }
            }
        }
    }
    let failed: Vec<&str> = issues.iter().filter(|(c, _)| *c == Check::Failed).map(|(_, m)| m.as_str()).collect();
    if !failed.is_empty() {
        return Ok(State::Broken(failed.join("; ")));
    }
    let degraded: Vec<&str> = issues.iter().map(|(_, m)| m.as_str()).collect();
    if !degraded.is_empty() {
        return Ok(State::Impaired(degraded.join("; ")));
    }
    Ok(State::Up)
}

/// `validate`: parameters, installation, and (AJS3) the JP1/Base dependency and the
/// Manager/Agent exclusion. Changes nothing; does not need the shared disk.
pub fn validate(kind: Kind, ctx: &Context) -> Result<(), AgentError> {
    let cfg = Config::from_ctx(kind, ctx)?;
    for rel in kind.commands() {
        let path = under(&cfg.prefix, &rel);
        if !fs::exists(&path)? {
            return Err(AgentError::NotInstalled(format!(
                "{path} is missing: {} is not installed under prefix {}",
                kind.product(),
                cfg.prefix
            )));
        }
    }
    if kind.is_ajs() {
        let base = cfg.base_resource.as_deref().unwrap_or_default();
        if base == ctx.resource {
            return Err(AgentError::InvalidConfig(format!(
                "`base_resource` must name the JP1/Base resource of logical host {} that this resource depends on, not itself",
                cfg.lhost
            )));
        }
        let list = under(&cfg.prefix, PP_LIST);
        if fs::exists(&list)? {
            let text = fs::read_to_string(&list)?;
            let has = |pp: &str| text.lines().any(|l| l.trim() == pp);
            let (mine, other, other_plugin) = match kind {
                Kind::AjsManager => (PP_AJS_MANAGER, PP_AJS_AGENT, "jp1-ajs3-agent"),
                _ => (PP_AJS_AGENT, PP_AJS_MANAGER, "jp1-ajs3-manager"),
            };
            if has(other) {
                let both = if has(mine) { format!("both {mine} and {other} are") } else { format!("{other} is") };
                return Err(AgentError::InvalidConfig(format!(
                    "{both} installed on node {} ({list}); JP1/AJS3 Manager and Agent are never on the same server{}",
                    ctx.node,
                    if has(mine) { String::new() } else { format!(": use the {other_plugin} agent") }
                )));
            }
        } else {
            log::warn(format!("{list} not found: cannot check that JP1/AJS3 Manager and Agent are not both installed"));
        }
    }
    Ok(())
}

/// The shared disk must be there before JP1 starts (the cluster brings it up first).
fn check_shared(cfg: &Config) -> Result<(), AgentError> {
    let dir = under(&cfg.shared_dir, cfg.kind.shared_subdir());
    if fs::stat(&dir)?.is_none() {
        return Err(fail!(
            "{dir} does not exist: the shared directory of logical host {} is not available (mount the shared disk before {})",
            cfg.lhost,
            cfg.kind.product()
        ));
    }
    Ok(())
}

/// `*_killall.cluster <lhost>`, then wait until the status command says all stopped.
fn killall_and_verify(cfg: &Config) -> Result<(), AgentError> {
    let cmd = cluster(cfg, "killall", KILLALL_WAIT);
    let out = cmd.run()?;
    if !out.success() {
        log::warn(format!("`{}` {}: {}", cmd.display(), out.status_text(), out.output_text()));
    }
    match wait_stopped(cfg, KILLALL_WAIT)? {
        None => Ok(()),
        Some(last) => Err(fail!("{} processes of logical host {} remain after `{}`: {last}", cfg.kind.product(), cfg.lhost, cmd.display())),
    }
}

/// Poll the status command until it reports all stopped (exit 8). `Some(last status)` when the
/// processes are still there after `limit`.
fn wait_stopped(cfg: &Config, limit: Duration) -> Result<Option<String>, AgentError> {
    let start = Instant::now();
    loop {
        let p = probe(&spmd_status(cfg))?;
        if p.code == Some(8) {
            return Ok(None);
        }
        if start.elapsed() >= limit {
            return Ok(Some(p.describe()));
        }
        sleep(POLL);
    }
}

/// `start`: status first; running → done; partly running → killall (this logical host only),
/// verify; start; then poll status until healthy (the start command's exit code is no proof).
/// Once up, the logical host's processes are watched (see [`watch_processes`]).
pub fn start(kind: Kind, ctx: &Context) -> Result<(), AgentError> {
    start_unwatched(kind, ctx)?;
    watch_processes();
    Ok(())
}

/// Name the JP1 processes the start left running (the process manager and its children, all
/// in this resource's cgroup) with `watch` (warden:agent@0.2.0): the engine runs a monitor the
/// moment any of them exits (a killed `jajs_hstd` is seen at once, not at the next monitor),
/// and the monitor, JP1's own status commands, stays the judge. Where the node has no cgroup
/// for the resource the watch is refused and monitoring stays on its interval.
pub fn watch_processes() {
    warden_sdk::watch::try_watch(warden_sdk::watch::own_processes());
}

fn start_unwatched(kind: Kind, ctx: &Context) -> Result<(), AgentError> {
    let cfg = Config::from_ctx(kind, ctx)?;
    check_shared(&cfg)?;
    let began = Instant::now();
    match state(&cfg, cfg.retries)? {
        State::Up => {
            log::info(format!("{} is already running on logical host {}", kind.product(), cfg.lhost));
            return Ok(());
        }
        State::Down => {}
        partly => {
            log::warn(format!(
                "{} is partly running on logical host {} ({}): killing its processes before the start",
                kind.product(),
                cfg.lhost,
                partly.reason()
            ));
            killall_and_verify(&cfg)?;
        }
    }
    let remaining = |cfg: &Config| cfg.start_wait.saturating_sub(began.elapsed()).max(Duration::from_secs(1));
    let cmd = cluster(&cfg, "start", remaining(&cfg));
    log::info(format!("running `{}`", cmd.display()));
    let out = cmd.run()?;
    if !out.success() {
        let why = format!("`{}` failed ({}): {}", cmd.display(), out.status_text(), out.output_text());
        return Err(give_up(&cfg, why));
    }
    let mut down_since: Option<Instant> = None;
    let quick = cfg.retries(0);
    loop {
        let s = state(&quick, 0)?;
        match &s {
            State::Up => {
                log::info(format!("{} is running on logical host {} after {} ms", kind.product(), cfg.lhost, began.elapsed().as_millis()));
                return Ok(());
            }
            State::Impaired(r) => {
                log::warn(format!("{} started on logical host {} but is degraded: {r}", kind.product(), cfg.lhost));
                return Ok(());
            }
            State::Crashed(r) => return Err(give_up(&cfg, format!("{} ended during its startup: {r}", kind.product()))),
            State::Down => {
                let since = *down_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= STOPPED_GRACE {
                    return Err(give_up(
                        &cfg,
                        format!("`{}` returned but {} is not running: {}", cmd.display(), kind.product(), s.reason()),
                    ));
                }
            }
            State::Partly(_) | State::Broken(_) => down_since = None,
        }
        if began.elapsed() >= cfg.start_wait {
            return Err(give_up(
                &cfg,
                format!(
                    "{} did not come up within {} ms (start_wait); last status: {}",
                    kind.product(),
                    cfg.start_wait.as_millis(),
                    s.reason()
                ),
            ));
        }
        sleep(POLL);
    }
}

/// A failed start leaves nothing half-running: kill this logical host's processes of the product.
fn give_up(cfg: &Config, why: String) -> AgentError {
    log::error(format!("start of {} on logical host {} failed: {why}", cfg.kind.product(), cfg.lhost));
    match killall_and_verify(cfg) {
        Ok(()) => fail!("{why} (its processes were killed)"),
        Err(e) => fail!("{why}; cleaning up also failed: {}", error_text(&e)),
    }
}

fn error_text(e: &AgentError) -> String {
    match e {
        AgentError::InvalidConfig(m)
        | AgentError::NotInstalled(m)
        | AgentError::Failed(m)
        | AgentError::AccessDenied(m)
        | AgentError::Unsupported(m) => m.clone(),
    }
}

/// `stop`: `*_stop.cluster`; if it fails or the processes remain, `*_killall.cluster`; verify.
pub fn stop(kind: Kind, ctx: &Context) -> Result<(), AgentError> {
    let cfg = Config::from_ctx(kind, ctx)?;
    if !shared_available(&cfg)? {
        log::info(format!(
            "the shared directory of logical host {} is not available here: nothing of {} can run; stopped",
            cfg.lhost,
            kind.product()
        ));
        return Ok(());
    }
    let (p, _) = probe_retry(&cfg, &spmd_status(&cfg), cfg.retries)?;
    if p.code == Some(8) && !p.abnormal() {
        log::info(format!("{} is not running on logical host {}", kind.product(), cfg.lhost));
        return Ok(());
    }
    // Running, partly running, or ended abnormally: the stop command also clears JP1's record of
    // an abnormal end, so the next monitor reports a clean `stopped`.
    let cmd = cluster(&cfg, "stop", cfg.stop_wait);
    let out = cmd.run()?;
    if !out.success() {
        log::warn(format!("`{}` failed ({}): {}; using killall", cmd.display(), out.status_text(), out.output_text()));
        return killall_and_verify(&cfg);
    }
    if let Some(last) = wait_stopped(&cfg, cfg.stop_wait)? {
        log::warn(format!("processes remain after `{}` ({last}); using killall", cmd.display()));
        return killall_and_verify(&cfg);
    }
    Ok(())
}

/// `monitor`: changes nothing.
pub fn monitor(kind: Kind, ctx: &Context) -> Result<Health, AgentError> {
    let cfg = Config::from_ctx(kind, ctx)?;
    let health = state(&cfg, cfg.retries)?.health();
    // Also after an engine restart: its first monitor is the probe.
    if matches!(health, Health::Running | Health::Degraded(_)) {
        watch_processes();
    }
    Ok(health)
}

/// `recover`: stop → killall → start, as Hitachi prescribes for a restart driven by the cluster.
pub fn recover(kind: Kind, ctx: &Context) -> Result<(), AgentError> {
    let cfg = Config::from_ctx(kind, ctx)?;
    let cmd = cluster(&cfg, "stop", cfg.stop_wait);
    let out = cmd.run()?;
    if !out.success() {
        log::warn(format!("recover: `{}` failed ({}): {}", cmd.display(), out.status_text(), out.output_text()));
    }
    killall_and_verify(&cfg)?;
    start(kind, ctx)
}
