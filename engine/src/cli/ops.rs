//! Operator commands against a running node: `status`, `events`, `group`, `resource`,
//! `node standby|online`, and `node run` itself.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::api::{Client, Request, Response, StatusReport};
use crate::node::history::EventRecord;
use crate::node::{Node, NodeOptions};
use crate::scheduler::OperatorCommand;

/// Where the CLI finds the node: --socket, else `daemon.control_socket` of --config (or
/// $WARDEN_CONFIG), else $WARDEN_SOCKET, else the default.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketArg {
    /// The node's control socket [default: $WARDEN_SOCKET, else /run/warden/warden.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The cluster config: its `daemon.control_socket` names the socket.
    #[arg(long = "config", env = "WARDEN_CONFIG", conflicts_with = "socket")]
    pub config: Option<PathBuf>,
}

impl SocketArg {
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if let Some(c) = &self.config {
            let cfg = crate::config::ClusterConfig::load(c)?;
            return Ok(cfg
                .daemon
                .control_socket
                .clone()
                .map(|p| cfg.resolve_path(&p))
                .unwrap_or_else(|| PathBuf::from(crate::node::DEFAULT_SOCKET)));
        }
        Ok(std::env::var_os("WARDEN_SOCKET").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(crate::node::DEFAULT_SOCKET)))
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Run this node: load the config and plugins, probe, then protect the groups.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// This node's name in the config (default: the host name).
        #[arg(long)]
        node: Option<String>,
        /// Persistent state (default: daemon.state_dir from the config, else /var/lib/warden/<cluster>).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Control socket (default: daemon.control_socket from the config, else /run/warden/warden.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// On SIGTERM/SIGINT, exit without stopping the resources (the next start adopts them).
        #[arg(long)]
        leave_running: bool,
        /// Run only this node of a multi-node config; the other nodes are treated as down and
        /// must not run Warden (multi-node membership is not implemented yet).
        #[arg(long)]
        single_node: bool,
    },
    /// Check a config file (and its plugins) without running anything.
    Check {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        node: Option<String>,
    },
    /// Move every group away from NODE and keep it empty (maintenance).
    Standby {
        node: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// End standby: NODE may run groups again.
    Online {
        node: String,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// Start GROUP (also clears a failed state).
    Start {
        group: String,
        #[command(flatten)]
        wait: WaitArg,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Stop GROUP, top-down, and keep it stopped.
    Stop {
        group: String,
        #[command(flatten)]
        wait: WaitArg,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Move GROUP to NODE (or the next eligible node).
    Move {
        group: String,
        /// The node to move to (default: the next eligible node by priority).
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        wait: WaitArg,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, clap::Args)]
pub struct WaitArg {
    /// Wait until the group has got there (or failed) and say what happened; exit 1 if it failed.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 120, requires = "wait")]
    pub timeout: u64,
}

#[derive(Debug, clap::Subcommand)]
pub enum ResourceCommand {
    /// Forget RESOURCE's failures (restart counts, failed state, invalid-config block) and re-probe it.
    Cleanup {
        /// The resource (or --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        resource: Option<String>,
        /// Clean up every resource that has something to forget (failures, blocks, restarts).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

pub async fn node(cmd: &NodeCommand, cli: &crate::cli::Cli) -> anyhow::Result<ExitCode> {
    // The global --cache-dir / --no-cache apply to the node's plugins too.
    let cache = if cli.no_cache { Some(None) } else { cli.cache_dir.clone().map(Some) };
    match cmd {
        NodeCommand::Run { config, node, state_dir, socket, leave_running, single_node } => {
            let opts = NodeOptions {
                config: config.clone(),
                node: node.clone(),
                state_dir: state_dir.clone(),
                socket: socket.clone(),
                leave_running: *leave_running,
                check_only: false,
                single_node: *single_node,
                cache: cache.clone(),
                trusted_keys: cli.trusted_keys()?,
            };
            let n = Node::load(&opts).await?;
            // SIGHUP must never kill the daemon silently (its default action): config reload is
            // not supported yet, so say so and go on.
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).expect("install SIGHUP handler");
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::warn!("SIGHUP ignored: reloading the config is not supported yet; restart the daemon (SIGTERM, then `warden node run`) to apply a new config");
                }
            });
            let stop = async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
                let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            };
            n.run(stop).await?;
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Check { config, node } => {
            let opts = NodeOptions {
                config: config.clone(),
                node: node.clone(),
                state_dir: Some(std::env::temp_dir().join(format!("warden-check-{}", std::process::id()))),
                check_only: true,
                cache: cache.clone(),
                trusted_keys: cli.trusted_keys()?,
                ..Default::default()
            };
            let r = Node::load(&opts).await;
            let failures = match &r {
                Ok(n) => n.validate_all().await,
                Err(_) => vec![],
            };
            let _ = std::fs::remove_dir_all(opts.state_dir.as_ref().unwrap());
            r?;
            if !failures.is_empty() {
                for f in &failures {
                    eprintln!("{}: {f}", config.display());
                }
                anyhow::bail!("{} of the config's resources and fence devices failed validation", failures.len());
            }
            println!("{}: ok (config, plugins, and every resource's and fence device's validate)", config.display());
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Standby { node, socket } => operator(&socket.path()?, OperatorCommand::Standby { node: node.clone() }).await,
        NodeCommand::Online { node, socket } => operator(&socket.path()?, OperatorCommand::Online { node: node.clone() }).await,
    }
}

pub async fn group(cmd: &GroupCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GroupCommand::Start { group, wait, socket } => {
            let code = operator(&socket.path()?, OperatorCommand::StartGroup { group: group.clone() }).await?;
            if code != ExitCode::SUCCESS || !wait.wait {
                return Ok(code);
            }
            wait_for_group(&socket.path()?, group, Goal::Started(None), wait.timeout).await
        }
        GroupCommand::Stop { group, wait, socket } => {
            let code = operator(&socket.path()?, OperatorCommand::StopGroup { group: group.clone() }).await?;
            if code != ExitCode::SUCCESS || !wait.wait {
                return Ok(code);
            }
            wait_for_group(&socket.path()?, group, Goal::Stopped, wait.timeout).await
        }
        GroupCommand::Move { group, to, wait, socket } => {
            let code = operator(&socket.path()?, OperatorCommand::MoveGroup { group: group.clone(), to: to.clone() }).await?;
            if code != ExitCode::SUCCESS || !wait.wait {
                return Ok(code);
            }
            wait_for_group(&socket.path()?, group, Goal::Started(to.clone()), wait.timeout).await
        }
    }
}

pub async fn resource(cmd: &ResourceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ResourceCommand::Cleanup { resource: Some(resource), socket, .. } => {
            operator(&socket.path()?, OperatorCommand::Cleanup { resource: resource.clone() }).await
        }
        ResourceCommand::Cleanup { resource: None, socket, .. } => {
            let report = match Client::call(&socket.path()?, Request::Status).await? {
                Response::Status { status } => status,
                Response::Error { message } => anyhow::bail!("{message}"),
                other => anyhow::bail!("unexpected answer: {other:?}"),
            };
            let dirty: Vec<String> = report
                .resources
                .iter()
                .filter(|r| r.last_failure.is_some() || r.blocked.is_some() || !r.ineligible.is_empty() || r.restarts > 0)
                .map(|r| r.name.clone())
                .collect();
            if dirty.is_empty() {
                println!("nothing to clean up");
                return Ok(ExitCode::SUCCESS);
            }
            let mut code = ExitCode::SUCCESS;
            for r in dirty {
                if operator(&socket.path()?, OperatorCommand::Cleanup { resource: r }).await? != ExitCode::SUCCESS {
                    code = ExitCode::from(1);
                }
            }
            Ok(code)
        }
    }
}

async fn operator(socket: &std::path::Path, command: OperatorCommand) -> anyhow::Result<ExitCode> {
    match Client::call(socket, Request::Operator { command }).await? {
        Response::Ok { message } => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => {
            eprintln!("error: {message}");
            Ok(ExitCode::from(1))
        }
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

/// Where `--wait` waits for a group to get.
enum Goal {
    /// Started (on this node, if named).
    Started(Option<String>),
    Stopped,
}

/// Poll status until the group reaches the goal or fails; say which, like `pcs resource ... --wait`.
async fn wait_for_group(socket: &std::path::Path, group: &str, goal: Goal, timeout: u64) -> anyhow::Result<ExitCode> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    loop {
        let report = match Client::call(socket, Request::Status).await? {
            Response::Status { status } => status,
            Response::Error { message } => anyhow::bail!("{message}"),
            other => anyhow::bail!("unexpected answer: {other:?}"),
        };
        let g = report.groups.iter().find(|g| g.name == group).ok_or_else(|| anyhow::anyhow!("no group named `{group}`"))?;
        let reasons = || {
            report
                .resources
                .iter()
                .filter(|r| r.group == group)
                .filter_map(|r| r.blocked.as_ref().or(r.last_failure.as_ref()).map(|why| format!("\n  {}: {why}", r.name)))
                .collect::<String>()
        };
        match (&goal, g.state.as_str()) {
            (Goal::Started(to), "started") if to.as_ref().is_none_or(|t| g.owner.as_ref() == Some(t)) => {
                println!("group `{group}` started on {} (epoch {})", g.owner.as_deref().unwrap_or("?"), g.epoch);
                return Ok(ExitCode::SUCCESS);
            }
            (Goal::Stopped, "stopped") => {
                println!("group `{group}` stopped");
                return Ok(ExitCode::SUCCESS);
            }
            (_, state @ ("failed" | "stop-failed" | "blocked")) => {
                eprintln!("group `{group}` is {}:{}", state.to_uppercase(), reasons());
                return Ok(ExitCode::from(1));
            }
            (_, state) if std::time::Instant::now() >= deadline => {
                eprintln!("group `{group}` is still {state} after {timeout} s{}", reasons());
                return Ok(ExitCode::from(1));
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

pub async fn status(socket: &std::path::Path, json: bool, watch: bool) -> anyhow::Result<ExitCode> {
    loop {
        let report = match Client::call(socket, Request::Status).await? {
            Response::Status { status } => status,
            Response::Error { message } => anyhow::bail!("{message}"),
            other => anyhow::bail!("unexpected answer: {other:?}"),
        };
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render_status(&report));
        }
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Which events `warden events` shows.
pub struct EventFilter {
    since_seq: u64,
    since_ms: u64,
    resource: Option<String>,
    group: Option<String>,
    /// The group's resources (filled from the node's status).
    members: Vec<String>,
}

impl EventFilter {
    pub fn new(since: &str, resource: Option<String>, group: Option<String>) -> anyhow::Result<Self> {
        let (since_seq, since_ms) = match since.parse::<u64>() {
            Ok(seq) => (seq, 0),
            Err(_) => {
                let ago = crate::config::duration::parse(since)
                    .map_err(|e| anyhow::anyhow!("--since {since}: {e} (a sequence number, or a duration like 10m, 2h, 1d)"))?;
                let now = crate::node::history::unix_ms(std::time::SystemTime::now());
                (0, now.saturating_sub(ago.as_millis() as u64))
            }
        };
        Ok(Self { since_seq, since_ms, resource, group, members: Vec::new() })
    }

    fn keep(&self, e: &EventRecord) -> bool {
        e.seq > self.since_seq
            && e.at_ms >= self.since_ms
            && self.resource.as_ref().is_none_or(|r| &e.subject == r)
            && self.group.as_ref().is_none_or(|g| &e.subject == g || self.members.contains(&e.subject))
    }
}

pub async fn events(socket: &std::path::Path, follow: bool, json: bool, mut filter: EventFilter) -> anyhow::Result<ExitCode> {
    if let Some(g) = &filter.group {
        if let Response::Status { status } = Client::call(socket, Request::Status).await? {
            let group = status.groups.iter().find(|x| &x.name == g).ok_or_else(|| anyhow::anyhow!("no group named `{g}`"))?;
            filter.members = group.resources.clone();
        }
    }
    let mut c = Client::connect(socket).await?;
    c.send(Request::Events { since: filter.since_seq, follow }).await?;
    while let Some(resp) = c.recv().await? {
        match resp {
            Response::Events { mut events } => {
                // Records are written when an action ends, stamped with when it started: show
                // them in the order things started.
                events.sort_by_key(|e| (e.at_ms, e.seq));
                for e in events.iter().filter(|e| filter.keep(e)) {
                    print_event(e, json)?;
                }
                if !follow {
                    break;
                }
            }
            Response::Event { event } if filter.keep(&event) => print_event(&event, json)?,
            Response::Event { .. } => {}
            Response::Error { message } => eprintln!("warning: {message}"),
            other => anyhow::bail!("unexpected answer: {other:?}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_event(e: &EventRecord, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(e)?).context("stdout")?;
    } else {
        writeln!(out, "{}", event_line(e)).context("stdout")?;
    }
    out.flush().context("stdout")?;
    Ok(())
}

pub fn event_line(e: &EventRecord) -> String {
    let mut s = format!("{:>6}  {}  {:<8} {:<14}", e.seq, clock(e.at_ms), e.kind, e.subject);
    if let Some(a) = &e.action {
        s.push_str(&format!(" {a:<8}"));
    }
    if !e.result.is_empty() {
        s.push_str(&format!(" {}", e.result));
    }
    if let Some(d) = e.duration_ms {
        s.push_str(&format!(" ({d} ms)"));
    }
    if !e.message.is_empty() {
        s.push_str(&format!("  {}", e.message));
    }
    s
}

/// "2026-11-25 00:55:01.123" (UTC) from unix milliseconds.
pub fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

fn ago(now: u64, at: u64) -> String {
    let d = now.saturating_sub(at);
    if d < 1000 {
        format!("{d}ms ago")
    } else if d < 120_000 {
        format!("{}s ago", d / 1000)
    } else {
        format!("{}m ago", d / 60_000)
    }
}

pub fn render_status(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Cluster {}  (node {}, {} UTC){}",
        r.cluster,
        r.node,
        clock(r.now_ms),
        if r.shutting_down { "  SHUTTING DOWN" } else { "" }
    );
    if let Some(e) = &r.state_error {
        let _ = writeln!(s, "STATE NOT DURABLE: {e}\n  new decisions are held until the state file can be written");
    }
    let _ = writeln!(s, "\nNodes:");
    for n in &r.nodes {
        let state = match (n.up, n.standby, n.needs_fence) {
            (_, _, true) => "NEEDS FENCING",
            (true, true, _) => "standby",
            (true, false, _) => "online",
            (false, _, _) => "offline",
        };
        let _ = writeln!(s, "  {:<16} {:<8} {state}", n.name, n.role);
    }
    let _ = writeln!(s, "\nGroups:");
    for g in &r.groups {
        let owner = g.owner.as_deref().map_or(String::new(), |o| format!("on {o} (epoch {})", g.epoch));
        let failed = if g.failed_on.is_empty() { String::new() } else { format!("  failed on: {}", g.failed_on.join(", ")) };
        let _ = writeln!(s, "  {:<16} {:<11} {owner}{failed}", g.name, g.state.to_uppercase());
    }
    let _ = writeln!(s, "\nResources:");
    let _ = writeln!(s, "  {:<16} {:<12} {:<18} {:<22} {:<28} RESTARTS", "RESOURCE", "GROUP", "PLUGIN", "STATE", "LAST MONITOR");
    for res in &r.resources {
        let state = if res.on.is_empty() {
            "stopped".to_string()
        } else {
            res.on.iter().map(|(n, a)| format!("{a}@{n}")).collect::<Vec<_>>().join(",")
        };
        let state = if res.unmanaged { format!("{state} (unmanaged)") } else { state };
        let mon = res.last_monitor.as_ref().map_or("-".to_string(), |m| format!("{} {}", m.result, ago(r.now_ms, m.at_ms)));
        let _ = writeln!(s, "  {:<16} {:<12} {:<18} {:<22} {:<28} {}", res.name, res.group, res.plugin, state, mon, res.restarts);
        if let Some(f) = &res.last_failure {
            let _ = writeln!(s, "  {:<16} last failure: {f}", "");
        }
        if let Some(b) = &res.blocked {
            let _ =
                writeln!(s, "  {:<16} BLOCKED (invalid config, not retried; fix it, then `warden resource cleanup {}`): {b}", "", res.name);
        }
        for (node, why) in &res.ineligible {
            let _ = writeln!(s, "  {:<16} cannot run on {node}: {why}", "");
        }
    }
    if !r.recent.is_empty() {
        let _ = writeln!(s, "\nRecent events:");
        for e in &r.recent {
            let _ = writeln!(s, "  {}", event_line(e));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_formats_utc() {
        assert_eq!(clock(0), "1970-01-01 00:00:00.000");
        assert_eq!(clock(1_795_000_000_123), "2026-11-18 11:06:40.123");
    }
}
