//! Operator commands against a running node: `status`, `events`, `group`, `resource`,
//! `node standby|online`, and `node run` itself.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::api::{Client, MemberChange, Request, Response, StatusReport};
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
        /// The cluster config (TOML).
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
        /// must not run Warden. Without it, a multi-node config runs this node as a cluster member.
        #[arg(long)]
        single_node: bool,
        /// This node was added to a running cluster (`warden node add`): it waits for the
        /// cluster to reach it instead of forming a cluster of its own (like etcd's
        /// `--initial-cluster-state existing`). Only matters while its cluster store is empty.
        #[arg(long, conflicts_with = "single_node")]
        join: bool,
    },
    /// Check a config file (and its plugins) without running anything.
    Check {
        /// The cluster config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Validate as this node would (default: the host name, or the first node).
        #[arg(long)]
        node: Option<String>,
    },
    /// Add NODE to the running cluster: FILE is the cluster's config with NODE's `[[nodes]]`
    /// entry added (nothing else about the members may change). Checked here and by the leader,
    /// refused unless every voter is healthy, then committed; every member reloads FILE in turn.
    /// Then start NODE with `warden node run --config FILE --node NODE --join`: it joins as a
    /// learner, and votes if the config makes it one of the 3 or 5 voters.
    Add {
        /// The new member's name, as in FILE's `[[nodes]]`.
        node: String,
        /// The new config (TOML): the committed one plus NODE.
        file: PathBuf,
        /// Check FILE as this member would (default: the host name, or the first node).
        #[arg(long)]
        check_as: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Remove NODE from the running cluster: FILE is the cluster's config without NODE (and
    /// without any mention of it). Refused while anything may run on NODE, while NODE is up and
    /// not in standby, or while a voter is not healthy. NODE's daemon exits once it no longer
    /// votes.
    Remove {
        /// The member to remove.
        node: String,
        /// The new config (TOML): the committed one without NODE.
        file: PathBuf,
        /// Check FILE as this member would (default: the host name, or the first node).
        #[arg(long)]
        check_as: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Move every group away from NODE and keep it empty (`node maintenance` instead leaves what
    /// runs there alone).
    Standby {
        /// The node, by its name in the config.
        node: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// End standby: NODE may run groups again.
    Online {
        /// The node, by its name in the config.
        node: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Maintenance on NODE (`on`) or off: what runs there is left alone (monitored and reported,
    /// never started, stopped, recovered or moved, not even at the daemon's shutdown), and nothing
    /// new is placed there. Ending it probes everything there first.
    Maintenance {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// The node, by its name in the config.
        node: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Confirm that NODE, lost, is really off (powered off, or cut from its services' storage
    /// and network): a manual fence confirmation for a node no fence device covers, like
    /// Pacemaker's `stonith_admin --confirm`. Its groups then start elsewhere with the next
    /// epoch. Refused while NODE answers. Confirming a node that still runs a group makes it
    /// run twice: check first.
    ConfirmDown {
        /// The node, by its name in the config.
        node: String,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// Start GROUP (also clears a failed state).
    Start {
        /// The group, by its name in the config.
        group: String,
        #[command(flatten)]
        wait: WaitArg,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Stop GROUP, top-down, and keep it stopped.
    Stop {
        /// The group, by its name in the config.
        group: String,
        #[command(flatten)]
        wait: WaitArg,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Move GROUP to NODE (or the next eligible node).
    Move {
        /// The group, by its name in the config.
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
    /// Stop RESOURCE and what depends on it (top-down); the rest of its group keeps running.
    /// It stays stopped until `resource start` (like `pcs resource disable`).
    Stop {
        /// The resource, by its name in the config.
        resource: String,
        #[command(flatten)]
        wait: WaitArg,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Start RESOURCE again after `resource stop` (with what depends on it, bottom-up).
    Start {
        /// The resource, by its name in the config.
        resource: String,
        #[command(flatten)]
        wait: WaitArg,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Stop RESOURCE (and what depends on it), wait until it is stopped, then start it again.
    Restart {
        /// The resource, by its name in the config.
        resource: String,
        /// How long each half waits, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Monitor RESOURCE and report it, but never start, stop or recover it (until `manage`).
    Unmanage {
        /// The resource, by its name in the config.
        resource: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Act on RESOURCE again (after `unmanage`, or over `unmanaged = true` in the config); it is
    /// probed first.
    Manage {
        /// The resource, by its name in the config.
        resource: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Everything RESOURCE runs with: plugin, parameters (defaults applied), timeouts, interval,
    /// grants, dependencies, restart limit (like `crm_resource --query-xml` / `lkcli resource info`).
    Show {
        /// The resource, by its name in the config.
        resource: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

/// `warden config ...`
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the config the running node loaded (its path, then the file as it was read).
    Show {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Make FILE the cluster's config: it is checked here as `node check` does (config, plugins,
    /// every resource's and fence device's validate), then the leader checks it against what
    /// runs and commits it, and every member reloads it: each restarts its daemon in place, one
    /// at a time, the leader last; what runs keeps running (adopted, not restarted).
    Apply {
        /// The new config (TOML).
        file: PathBuf,
        /// Check it as this node would (default: the host name, or the first node).
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
}

/// Sends a new config to the leader (through this node) and prints its answer.
async fn apply(socket: &Path, text: String, member: Option<MemberChange>) -> anyhow::Result<ExitCode> {
    match Client::call(socket, Request::ConfigApply { text, member }).await? {
        Response::Ok { message } => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

pub async fn config(cmd: &ConfigCommand, cli: &crate::cli::Cli) -> anyhow::Result<ExitCode> {
    let (json, socket) = match cmd {
        ConfigCommand::Show { json, socket } => (*json, socket),
        ConfigCommand::Apply { file, node, socket } => {
            check_config(file, node, cli).await?;
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            return apply(&socket.path()?, text, None).await;
        }
    };
    match Client::call(&socket.path()?, Request::ConfigShow).await? {
        Response::Config { path, text } if json => println!("{}", serde_json::json!({ "path": path, "text": text })),
        Response::Config { path, text } => {
            println!("# {path} (as loaded by the running node)");
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
        }
        Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn render_resource(d: &crate::api::ResourceDetails) -> String {
    use std::fmt::Write;
    let ms = |v: u64| humantime(Duration::from_millis(v));
    let mut s = String::new();
    let _ = writeln!(s, "resource:      {}{}", d.name, if d.unmanaged { "  (unmanaged: monitored, never acted on)" } else { "" });
    let _ = writeln!(s, "group:         {}", d.group);
    let _ = writeln!(s, "plugin:        {} {} ({}, {})", d.plugin, d.plugin_version, d.wit, d.plugin_path);
    let list = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(", ") };
    let _ = writeln!(s, "depends on:    {}", list(&d.depends_on));
    let _ = writeln!(s, "needed by:     {}", list(&d.needed_by));
    let _ = writeln!(s, "monitor:       every {}", ms(d.monitor_interval_ms));
    let t: Vec<String> = d.timeouts_ms.iter().map(|(k, v)| format!("{k} {}", ms(*v))).collect();
    let _ = writeln!(s, "timeouts:      {}", t.join(", "));
    let _ = writeln!(s, "restarts:      at most {} in {}, then the group fails over", d.max_restarts, ms(d.restart_window_ms));
    let _ = writeln!(s, "memory:        {} MiB", d.memory_mib);
    let _ = writeln!(s, "parameters:");
    for (k, v) in &d.params {
        let _ = writeln!(s, "  {k} = {v:?}");
    }
    let _ = writeln!(s, "grants:        {}", serde_json::to_string(&d.grants).unwrap_or_default());
    s
}

fn humantime(d: Duration) -> String {
    crate::plugin::humantime(d)
}

/// `node check`: the config, its plugins, and every resource's and fence device's `validate`
/// with its real grants, as node `node` would load them.
async fn check_config(config: &Path, node: &Option<String>, cli: &crate::cli::Cli) -> anyhow::Result<()> {
    let cache = if cli.no_cache { Some(None) } else { cli.cache_dir.clone().map(Some) };
    let opts = NodeOptions {
        config: config.to_path_buf(),
        node: node.clone(),
        state_dir: Some(std::env::temp_dir().join(format!("warden-check-{}", std::process::id()))),
        check_only: true,
        cache,
        trusted_keys: cli.trusted_keys()?,
        ..Default::default()
    };
    let r = Node::load(&opts).await;
    let failures = match &r {
        Ok(n) => n.validate_all().await,
        Err(_) => vec![],
    };
    let _ = std::fs::remove_dir_all(opts.state_dir.as_ref().expect("set above"));
    r?;
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("{}: {f}", config.display());
        }
        anyhow::bail!("{} of the config's resources and fence devices failed validation", failures.len());
    }
    Ok(())
}

pub async fn node(cmd: &NodeCommand, cli: &crate::cli::Cli) -> anyhow::Result<ExitCode> {
    // The global --cache-dir / --no-cache apply to the node's plugins too.
    let cache = if cli.no_cache { Some(None) } else { cli.cache_dir.clone().map(Some) };
    match cmd {
        NodeCommand::Run { config, node, state_dir, socket, leave_running, single_node, join } => {
            let opts = NodeOptions {
                config: config.clone(),
                node: node.clone(),
                state_dir: state_dir.clone(),
                socket: socket.clone(),
                leave_running: *leave_running,
                check_only: false,
                single_node: *single_node,
                join: *join,
                in_memory: None,
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
            // On a worker, not on the main thread: the daemon's loop then wakes where its agents'
            // results come from (tokio runs a task woken by another on the same worker) instead
            // of the main thread being woken for every result, a context switch each.
            match tokio::spawn(n.run(stop)).await {
                Ok(r) => r?,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Check { config, node } => {
            check_config(config, node, cli).await?;
            println!("{}: ok (config, plugins, and every resource's and fence device's validate)", config.display());
            Ok(ExitCode::SUCCESS)
        }
        NodeCommand::Add { node, file, check_as, socket } | NodeCommand::Remove { node, file, check_as, socket } => {
            check_config(file, check_as, cli).await?;
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            let member = match cmd {
                NodeCommand::Add { .. } => MemberChange::Add(node.clone()),
                _ => MemberChange::Remove(node.clone()),
            };
            apply(&socket.path()?, text, Some(member)).await
        }
        NodeCommand::Standby { node, socket } => operator(&socket.path()?, OperatorCommand::Standby { node: node.into() }).await,
        NodeCommand::Online { node, socket } => operator(&socket.path()?, OperatorCommand::Online { node: node.into() }).await,
        NodeCommand::Maintenance { state, node, socket } => {
            operator(&socket.path()?, OperatorCommand::Maintenance { node: node.into(), on: state == "on" }).await
        }
        NodeCommand::ConfirmDown { node, socket } => operator(&socket.path()?, OperatorCommand::ConfirmDown { node: node.into() }).await,
    }
}

pub async fn group(cmd: &GroupCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GroupCommand::Start { group, wait, socket } => {
            let code = operator(&socket.path()?, OperatorCommand::StartGroup { group: group.into() }).await?;
            if code != ExitCode::SUCCESS || !wait.wait {
                return Ok(code);
            }
            wait_for_group(&socket.path()?, group, Goal::Started(None), wait.timeout).await
        }
        GroupCommand::Stop { group, wait, socket } => {
            let code = operator(&socket.path()?, OperatorCommand::StopGroup { group: group.into() }).await?;
            if code != ExitCode::SUCCESS || !wait.wait {
                return Ok(code);
            }
            wait_for_group(&socket.path()?, group, Goal::Stopped, wait.timeout).await
        }
        GroupCommand::Move { group, to, wait, socket } => {
            let code =
                operator(&socket.path()?, OperatorCommand::MoveGroup { group: group.into(), to: to.as_ref().map(Into::into) }).await?;
            if code != ExitCode::SUCCESS || !wait.wait {
                return Ok(code);
            }
            wait_for_group(&socket.path()?, group, Goal::Started(to.clone()), wait.timeout).await
        }
    }
}

pub async fn resource(cmd: &ResourceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ResourceCommand::Stop { resource, wait, socket } => {
            let code = operator(&socket.path()?, OperatorCommand::StopResource { resource: resource.into() }).await?;
            if code != ExitCode::SUCCESS || !wait.wait {
                return Ok(code);
            }
            wait_for_resource(&socket.path()?, resource, false, wait.timeout).await
        }
        ResourceCommand::Start { resource, wait, socket } => {
            let code = operator(&socket.path()?, OperatorCommand::StartResource { resource: resource.into() }).await?;
            if code != ExitCode::SUCCESS || !wait.wait {
                return Ok(code);
            }
            wait_for_resource(&socket.path()?, resource, true, wait.timeout).await
        }
        ResourceCommand::Restart { resource, timeout, socket } => {
            let path = socket.path()?;
            let code = operator(&path, OperatorCommand::StopResource { resource: resource.into() }).await?;
            if code != ExitCode::SUCCESS {
                return Ok(code);
            }
            let stopped = wait_for_resource(&path, resource, false, *timeout).await;
            // Start again whatever happened (a failed stop, a node that restarted meanwhile):
            // a restart must not leave the resource stopped.
            let code = operator(&path, OperatorCommand::StartResource { resource: resource.into() }).await?;
            match stopped {
                Err(e) => {
                    eprintln!("warning: could not follow the stop ({e:#}); the start was sent");
                    return Ok(ExitCode::from(1));
                }
                Ok(s) if s != ExitCode::SUCCESS || code != ExitCode::SUCCESS => return Ok(ExitCode::from(1)),
                Ok(_) => {}
            }
            wait_for_resource(&path, resource, true, *timeout).await
        }
        ResourceCommand::Unmanage { resource, socket } => {
            operator(&socket.path()?, OperatorCommand::SetManaged { resource: resource.into(), managed: false }).await
        }
        ResourceCommand::Manage { resource, socket } => {
            operator(&socket.path()?, OperatorCommand::SetManaged { resource: resource.into(), managed: true }).await
        }
        ResourceCommand::Show { resource, json, socket } => {
            match Client::call(&socket.path()?, Request::ResourceShow { resource: resource.clone() }).await? {
                Response::Resource { details } if *json => println!("{}", serde_json::to_string(&details)?),
                Response::Resource { details } => print!("{}", render_resource(&details)),
                Response::Error { message } => anyhow::bail!("{message}"),
                other => anyhow::bail!("unexpected answer: {other:?}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        ResourceCommand::Cleanup { resource: Some(resource), socket, .. } => {
            operator(&socket.path()?, OperatorCommand::Cleanup { resource: resource.into() }).await
        }
        ResourceCommand::Cleanup { resource: None, socket, .. } => {
            let report = fetch_status(&socket.path()?).await?;
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
                if operator(&socket.path()?, OperatorCommand::Cleanup { resource: r.into() }).await? != ExitCode::SUCCESS {
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

/// The node's status report (an error answer becomes the error).
async fn fetch_status(socket: &std::path::Path) -> anyhow::Result<Box<crate::api::StatusReport>> {
    match Client::call(socket, Request::Status).await? {
        Response::Status { status } => Ok(status),
        Response::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

/// Poll status until `resource` runs (`up`) or is stopped; say which, with the reason on failure.
async fn wait_for_resource(socket: &std::path::Path, resource: &str, up: bool, timeout: u64) -> anyhow::Result<ExitCode> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    loop {
        let report = fetch_status(socket).await?;
        let r = report.resources.iter().find(|r| r.name == resource).ok_or_else(|| anyhow::anyhow!("no resource named `{resource}`"))?;
        let running: Vec<&str> = r.on.iter().filter(|(_, a)| a == "running").map(|(n, _)| n.as_str()).collect();
        if up && !running.is_empty() {
            println!("resource `{resource}` running on {}", running.join(", "));
            return Ok(ExitCode::SUCCESS);
        }
        if !up && r.on.is_empty() {
            println!("resource `{resource}` stopped");
            return Ok(ExitCode::SUCCESS);
        }
        if let Some((n, a)) = r.on.iter().find(|(_, a)| a == "stop-failed" || (up && a == "failed")) {
            eprintln!(
                "resource `{resource}` is {} on {n}{}",
                a.to_uppercase(),
                r.last_failure.as_ref().map_or(String::new(), |f| format!(": {f}"))
            );
            return Ok(ExitCode::from(1));
        }
        if let Some(b) = &r.blocked {
            eprintln!("resource `{resource}` is BLOCKED: {b}");
            return Ok(ExitCode::from(1));
        }
        if std::time::Instant::now() >= deadline {
            let now: Vec<String> = r.on.iter().map(|(n, a)| format!("{a}@{n}")).collect();
            eprintln!(
                "resource `{resource}` is still {} after {timeout} s",
                if now.is_empty() { "stopped".into() } else { now.join(", ") }
            );
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
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
        let report = fetch_status(socket).await?;
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
    use std::io::Write;
    loop {
        let answer = Client::call(socket, Request::Status).await;
        let report = match answer {
            Ok(Response::Status { status }) => status,
            Ok(Response::Error { message }) => anyhow::bail!("{message}"),
            Ok(other) => anyhow::bail!("unexpected answer: {other:?}"),
            // --watch outlives a daemon restart: say so and keep trying.
            Err(e) if watch => {
                if !json {
                    print!("\x1b[2J\x1b[H");
                }
                let mut out = std::io::stdout().lock();
                let line = format!("{}: the node is not answering ({e}); retrying every second", socket.display());
                if json {
                    // Keep stdout a clean stream of JSON documents.
                    eprintln!("{line}");
                } else {
                    writeln!(out, "{}", fit(&line, terminal_width())).context("stdout")?;
                }
                out.flush().context("stdout")?;
                drop(out);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = std::io::stdout().lock();
        if json {
            writeln!(out, "{}", serde_json::to_string(&report)?).context("stdout")?;
        } else if watch {
            // Redraw in place, each line cut to the terminal's width (no wrapping mess).
            let width = terminal_width();
            let text = render_status(&report);
            write!(out, "\x1b[2J\x1b[H").context("stdout")?;
            for line in text.lines() {
                writeln!(out, "{}", fit(line, width)).context("stdout")?;
            }
        } else {
            write!(out, "{}", render_status(&report)).context("stdout")?;
        }
        out.flush().context("stdout")?;
        drop(out);
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Columns of the terminal on stdout ($COLUMNS, else the tty's size, else 120).
fn terminal_width() -> usize {
    if let Some(c) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).filter(|c: &usize| *c > 0) {
        return c;
    }
    rustix::termios::tcgetwinsize(std::io::stdout()).ok().map(|w| w.ws_col as usize).filter(|c| *c > 0).unwrap_or(120)
}

/// `line` cut to `width` characters (an ellipsis marks the cut).
fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width || width < 2 {
        return line.to_string();
    }
    let mut s: String = line.chars().take(width - 1).collect();
    s.push('…');
    s
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
        let now = crate::node::history::unix_ms(std::time::SystemTime::now());
        let (since_seq, since_ms) = match since.parse::<u64>() {
            Ok(seq) => (seq, 0),
            Err(_) => match (crate::config::duration::parse(since), parse_utc(since, now)) {
                (Ok(ago), _) => (0, now.saturating_sub(ago.as_millis() as u64)),
                (_, Some(at)) => (0, at),
                (Err(e), None) => anyhow::bail!(
                    "--since {since}: not a sequence number, a duration ({e}) or a UTC time (\"2026-11-30 15:04\", \"15:04:05\")"
                ),
            },
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
    // The highest sequence number seen: a reconnect after a daemon restart asks for what came
    // after it (numbering continues across restarts), so nothing is shown twice or lost.
    let mut seen = filter.since_seq;
    let mut first = true;
    loop {
        let session = async {
            let mut c = Client::connect(socket).await?;
            c.send(Request::Events { since: seen, follow }).await?;
            while let Some(resp) = c.recv().await? {
                match resp {
                    Response::Events { mut events } => {
                        if !first {
                            eprintln!("-- reconnected to the node --");
                        }
                        first = false;
                        // Records are written when an action ends, stamped with when it
                        // started: show them in the order things started.
                        events.sort_by_key(|e| (e.at_ms, e.seq));
                        for e in &events {
                            seen = seen.max(e.seq);
                            if filter.keep(e) {
                                print_event(e, json)?;
                            }
                        }
                        if !follow {
                            return Ok(true);
                        }
                    }
                    Response::Event { event } => {
                        seen = seen.max(event.seq);
                        if filter.keep(&event) {
                            print_event(&event, json)?;
                        }
                    }
                    Response::Error { message } => eprintln!("warning: {message}"),
                    other => anyhow::bail!("unexpected answer: {other:?}"),
                }
            }
            Ok::<bool, anyhow::Error>(false)
        };
        match session.await {
            Ok(true) => return Ok(ExitCode::SUCCESS),
            // A closed pipe on our own stdout ends us quietly (`events -f | head`).
            Err(e) if is_broken_pipe(&e) => return Ok(ExitCode::SUCCESS),
            Err(e) if !follow || first => return Err(e),
            Ok(false) | Err(_) if !follow => return Ok(ExitCode::SUCCESS),
            Ok(false) | Err(_) => {
                eprintln!("-- the node closed the connection (restarting?); reconnecting --");
                first = false;
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if Client::connect(socket).await.is_ok() {
                        break;
                    }
                }
            }
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
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

/// Unix ms of a UTC time as `clock` prints it: "2026-11-30 15:04[:05]" (or with a `T`), or
/// "15:04[:05]" today.
fn parse_utc(text: &str, now_ms: u64) -> Option<u64> {
    let text = text.trim();
    let (date, time) = match text.split_once([' ', 'T']) {
        Some((d, t)) => (Some(d), t),
        None => (None, text),
    };
    let mut hms = time.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m) = (hms.next()??, hms.next()??);
    let sec = match hms.next() {
        Some(v) => v?,
        None => 0,
    };
    if hms.next().is_some() || h > 23 || m > 59 || sec > 59 {
        return None;
    }
    let days = match date {
        None => now_ms / 86_400_000,
        Some(d) => {
            let mut f = d.split('-').map(|x| x.parse::<i64>().ok());
            let (y, mo, day) = (f.next()??, f.next()??, f.next()??);
            let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
            let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            if f.next().is_some()
                || !(1970..=9999).contains(&y)
                || !(1..=12).contains(&mo)
                || !(1..=month_days[(mo - 1) as usize]).contains(&day)
            {
                return None;
            }
            // Days since 1970-01-01 from a civil date (Howard Hinnant's algorithm).
            let y = if mo <= 2 { y - 1 } else { y };
            let era = y.div_euclid(400);
            let yoe = y - era * 400;
            let mp = if mo > 2 { mo - 3 } else { mo + 9 };
            let doy = (153 * mp + 2) / 5 + day - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            u64::try_from(era * 146_097 + doe - 719_468).ok()?
        }
    };
    Some(days * 86_400_000 + (h * 3600 + m * 60 + sec) * 1000)
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

/// "10m", "1h", "90s", "500ms": as an operator writes it in the config.
fn short_duration(ms: u64) -> String {
    match ms {
        0 => "0s".into(),
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

/// `members` drawn top-down: each resource, then (indented) what it needs.
fn dependency_tree(members: &[String], deps: &std::collections::BTreeMap<String, Vec<String>>) -> Vec<String> {
    let needed: std::collections::BTreeSet<&String> = deps.values().flatten().collect();
    let mut out = Vec::new();
    fn walk(r: &str, depth: usize, deps: &std::collections::BTreeMap<String, Vec<String>>, out: &mut Vec<String>) {
        let mark = if depth == 0 { "" } else { "└─ " };
        out.push(format!("{}{mark}{r}", "   ".repeat(depth.saturating_sub(1))));
        if depth < 16 {
            for d in deps.get(r).into_iter().flatten() {
                walk(d, depth + 1, deps, out);
            }
        }
    }
    // Roots: what nothing in the group needs (the top of the stack).
    for r in members.iter().filter(|m| !needed.contains(m)) {
        walk(r, 0, deps, &mut out);
    }
    out
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
    if let Some(c) = &r.cluster_info {
        let leader = c.leader.as_deref().unwrap_or("none");
        let quorum = if c.quorum { "quorum" } else { "NO QUORUM (nothing is decided; members stop what they run when their lease ends)" };
        let _ = writeln!(s, "Leader {leader}  term {}  {quorum}  (answered by {})", c.term, c.answered_by);
    }
    let _ = writeln!(s, "\nNodes:");
    for n in &r.nodes {
        let state = match (n.up, n.standby, n.needs_fence) {
            (_, _, true) => "NEEDS FENCING",
            (true, _, _) if n.maintenance => "MAINTENANCE (resources left alone)",
            (true, true, _) => "standby",
            (true, false, _) => "online",
            (false, _, _) if n.left => "offline (shut down cleanly: nothing runs there)",
            (false, _, _) => "offline",
        };
        // In a cluster: whether the answering member reaches it, per path.
        let paths = r.cluster_info.as_ref().and_then(|c| c.members.iter().find(|m| m.name == n.name)).map_or(String::new(), |m| {
            let per: Vec<String> = m.paths.iter().map(|p| format!("{} {}", p.addr, if p.up { "up" } else { "DOWN" })).collect();
            let reach = if m.reachable { "reachable" } else { "UNREACHABLE" };
            let raft = if m.raft.is_empty() { String::new() } else { format!(", {}", m.raft) };
            if per.is_empty() {
                format!("  {reach}{raft}")
            } else {
                format!("  {reach} [{}]{raft}", per.join(", "))
            }
        });
        let _ = writeln!(s, "  {:<16} {:<8} {state}{paths}", n.name, n.role);
    }
    let _ = writeln!(s, "\nGroups:");
    for g in &r.groups {
        let owner = g.owner.as_deref().map_or(String::new(), |o| format!("on {o} (epoch {})", g.epoch));
        let failed = if g.failed_on.is_empty() { String::new() } else { format!("  failed on: {}", g.failed_on.join(", ")) };
        let _ = writeln!(s, "  {:<16} {:<11} {owner}{failed}", g.name, g.state.to_uppercase());
        if let Some(why) = &g.waiting {
            let _ = writeln!(s, "  {:<16} waiting: {why}", "");
        }
        // The dependency tree, top-down: each resource under what it needs.
        if !g.deps.is_empty() {
            for line in dependency_tree(&g.resources, &g.deps) {
                let _ = writeln!(s, "  {:<16} {line}", "");
            }
        }
    }
    let _ = writeln!(s, "\nResources:");
    let _ = writeln!(s, "  {:<16} {:<12} {:<18} {:<22} {:<28} RESTARTS", "RESOURCE", "GROUP", "PLUGIN", "STATE", "LAST MONITOR");
    for res in &r.resources {
        let state = if res.on.is_empty() {
            "stopped".to_string()
        } else {
            res.on.iter().map(|(n, a)| format!("{a}@{n}")).collect::<Vec<_>>().join(",")
        };
        // Running but impaired is shown as what it is.
        let degraded = res.last_monitor.as_ref().is_some_and(|m| m.result == "degraded");
        let state = if degraded { state.replace("running@", "degraded@") } else { state };
        let state = if res.unmanaged { format!("{state} (unmanaged)") } else { state };
        let state = if res.held_stopped.is_some() { format!("{state} (held)") } else { state };
        let mon = res.last_monitor.as_ref().map_or("-".to_string(), |m| format!("{} {}", m.result, ago(r.now_ms, m.at_ms)));
        let restarts = if res.max_restarts > 0 {
            format!("{}/{} in {}", res.restarts, res.max_restarts, short_duration(res.restart_window_ms))
        } else {
            res.restarts.to_string()
        };
        let _ = writeln!(s, "  {:<16} {:<12} {:<18} {:<22} {:<28} {}", res.name, res.group, res.plugin, state, mon, restarts);
        if let Some(f) = &res.last_failure {
            let when = res.last_restart_at_ms.map_or(String::new(), |t| format!(" ({}, {})", clock(t), ago(r.now_ms, t)));
            let _ = writeln!(s, "  {:<16} last failure{when}: {f}", "");
        }
        if degraded {
            if let Some(why) = res.last_monitor.as_ref().and_then(|m| m.reason.as_deref()) {
                let _ = writeln!(s, "  {:<16} DEGRADED: {why}", "");
            }
        }
        if let Some(h) = &res.held_stopped {
            let _ = writeln!(s, "  {:<16} {h}", "");
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
    fn since_takes_utc_times_as_clock_prints_them() {
        let at = 1_795_000_000_000; // 2026-11-18 11:06:40
        assert_eq!(parse_utc("2026-11-18 11:06:40", 0), Some(at));
        assert_eq!(parse_utc("2026-11-18T11:06", 0), Some(at - 40_000));
        assert_eq!(parse_utc("11:06:40", at + 5_000), Some(at), "today");
        assert_eq!(clock(parse_utc("2024-02-29 00:00", 0).unwrap()), "2024-02-29 00:00:00.000");
        for bad in
            ["", "25:00", "11:60", "2026-13-01 00:00", "2026-02-29 00:00", "2026-02-31 00:00", "9999999999-01-01 00:00", "soon", "1:2:3:4"]
        {
            assert_eq!(parse_utc(bad, at), None, "{bad}");
        }
    }

    #[test]
    fn clock_formats_utc() {
        assert_eq!(clock(0), "1970-01-01 00:00:00.000");
        assert_eq!(clock(1_795_000_000_123), "2026-11-18 11:06:40.123");
    }
}
