//! The `warden` command line.
//!
//! Exit codes of `warden agent exec` (documented in the README):
//! 0 success (monitor: running) · 1 the agent reported an error (monitor: failed) · 2 bad usage or
//! the plugin could not be loaded · 3 the sandbox stopped the call (timeout, trap, memory limit) ·
//! 5 monitor: degraded · 7 monitor: stopped (as OCF_NOT_RUNNING).

mod agent_exec;
mod cluster_cmd;
pub mod demo;
pub mod ops;
mod plugin_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::plugin::{ComponentCache, HostOptions, PluginHost};

#[derive(Debug, Parser)]
#[command(name = "warden", version, about = "High-availability cluster engine with sandboxed WebAssembly resource agents")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Log level filter (tracing syntax, e.g. `info` or `warden=debug`); default `warn`, or $RUST_LOG.
    #[arg(long, global = true)]
    pub log: Option<String>,

    /// Where precompiled plugins are cached (default: $WARDEN_CACHE_DIR, ~/.cache/warden).
    #[arg(long, global = true)]
    pub cache_dir: Option<PathBuf>,

    /// Compile plugins at every load instead of using the cache.
    #[arg(long, global = true)]
    pub no_cache: bool,

    /// Only load plugins signed by this ed25519 public key (repeatable).
    #[arg(long = "trusted-key", global = true, value_name = "PUBKEY_FILE")]
    pub trusted_keys: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Two nodes and a witness in network namespaces protecting a simulated JP1 logical host:
    /// an AJS3 daemon killed (local recovery), then node A powered off (fail-over to B).
    Demo(demo::DemoArgs),
    /// The watchdog supervisor a cluster member with `watchdog_fencing` starts for itself (not
    /// run by hand).
    #[command(hide = true)]
    WatchdogSupervise {
        /// The socket the daemon arms it through (`<state_dir>/watchdog.sock`).
        #[arg(long)]
        socket: PathBuf,
        /// The member's cgroup tree: every process below it is killed when it fires.
        #[arg(long)]
        cgroup: PathBuf,
        /// `address:ADDR@IFACE` or `mount:PATH`, undone when it fires (repeatable).
        #[arg(long = "release")]
        releases: Vec<String>,
        /// A hardware watchdog to hold and pet while the lease lasts.
        #[arg(long)]
        device: Option<PathBuf>,
    },
    /// Print shell completions (e.g. `warden completions bash > /etc/bash_completion.d/warden`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `warden man > /usr/local/share/man/man8/warden.8`.
    Man,
    /// Run agents outside any cluster (like Pacemaker's ocf-tester).
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Inspect, package, sign and verify plugins.
    Plugin {
        #[command(subcommand)]
        command: plugin_cmd::PluginCommand,
    },
    /// Run a node, check a config, put a node in standby or back online.
    Node {
        #[command(subcommand)]
        command: ops::NodeCommand,
    },
    /// Nodes, groups and resources at a glance (like crm_mon / lcdstatus).
    Status {
        /// Machine-readable output (one JSON document per line).
        #[arg(long)]
        json: bool,
        /// Redraw every second.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        socket: ops::SocketArg,
    },
    /// The event history: every action with start time, duration, result and reason.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long, short)]
        follow: bool,
        /// Machine-readable output (one JSON document per line).
        #[arg(long)]
        json: bool,
        /// Only events after this sequence number (`1234`), from this long ago (`10m`, `2h`, `1d`),
        /// or since this UTC time (`"2026-11-30 15:04"`, `15:04:05` today).
        #[arg(long, default_value = "0")]
        since: String,
        /// Only events about this resource.
        #[arg(long)]
        resource: Option<String>,
        /// Only events about this group or its resources.
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        socket: ops::SocketArg,
    },
    /// Start, stop or move a group.
    Group {
        #[command(subcommand)]
        command: ops::GroupCommand,
    },
    /// Clean up a resource's failures, or show everything it runs with.
    Resource {
        #[command(subcommand)]
        command: ops::ResourceCommand,
    },
    /// Show the config the running node loaded.
    Config {
        #[command(subcommand)]
        command: ops::ConfigCommand,
    },
    /// Set up a cluster: its CA and the nodes' certificates.
    Cluster {
        #[command(subcommand)]
        command: cluster_cmd::ClusterCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run one action of a plugin and report the result.
    Exec(agent_exec::ExecArgs),
}

impl Cli {
    /// `node run`: the long-running daemon (everything else is a short command).
    pub fn is_daemon(&self) -> bool {
        matches!(&self.command, Command::Node { command: ops::NodeCommand::Run { .. } }) || matches!(&self.command, Command::Demo(_))
    }

    fn host_options(&self) -> anyhow::Result<HostOptions> {
        let cache_dir = if self.no_cache { None } else { Some(self.cache_dir.clone().unwrap_or_else(ComponentCache::default_dir)) };
        Ok(HostOptions { cache_dir, trusted_keys: self.trusted_keys()? })
    }

    /// The keys of `--trusted-key`, read (every command that loads plugins honours them).
    pub fn trusted_keys(&self) -> anyhow::Result<Vec<ed25519_dalek::VerifyingKey>> {
        Ok(self.trusted_keys.iter().map(|p| crate::plugin::signing::read_public_key(p)).collect::<Result<Vec<_>, _>>()?)
    }

    pub fn host(&self) -> anyhow::Result<PluginHost> {
        Ok(PluginHost::new(self.host_options()?)?)
    }
}

pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let filter = match &cli.log {
        Some(f) => EnvFilter::new(quiet_raft(f)),
        None => match std::env::var("RUST_LOG") {
            Ok(f) => EnvFilter::try_new(quiet_raft(&f)).unwrap_or_else(|_| EnvFilter::new("warn")),
            Err(_) => EnvFilter::new("warn"),
        },
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Human => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// openraft logs every vote and heartbeat at info, and every failed call to a lost peer as an
/// error (ten a second): an operator's `--log info` means Warden's own events (a lost member, a
/// path down and quorum are reported by Warden itself), so openraft is silent unless the filter
/// names it (`--log info,openraft=warn`).
fn quiet_raft(filter: &str) -> String {
    if filter.contains("openraft") {
        filter.to_string()
    } else {
        format!("{filter},openraft=off")
    }
}

/// Run the parsed command; errors are reported by `main` with their full chain.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Agent { command: AgentCommand::Exec(args) } => agent_exec::run(&cli, args).await,
        Command::Plugin { command } => plugin_cmd::run(&cli, command).await,
        Command::Demo(args) => demo::run_demo(&cli, args).await,
        Command::WatchdogSupervise { socket, cgroup, releases, device } => {
            use crate::node::watchdog::{supervise, Release};
            let releases = releases.iter().map(|r| Release::from_arg(r)).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
            supervise(socket, cgroup, &releases, device.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "warden", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Node { command } => ops::node(command, &cli).await,
        Command::Status { json, watch, socket } => ops::status(&socket.path()?, *json, *watch).await,
        Command::Events { follow, json, since, resource, group, socket } => {
            let filter = ops::EventFilter::new(since, resource.clone(), group.clone())?;
            ops::events(&socket.path()?, *follow, *json, filter).await
        }
        Command::Group { command } => ops::group(command).await,
        Command::Resource { command } => ops::resource(command).await,
        Command::Config { command } => ops::config(command, &cli).await,
        Command::Cluster { command } => cluster_cmd::run(command),
    }
}

/// This machine's host name, the default node name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command, subcommand, argument and option says what it is for (`--help`, the man
    /// page and the shell completions are generated from these).
    #[test]
    fn every_command_and_option_has_help() {
        use clap::CommandFactory;
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", c.get_name());
            if c.get_about().is_none() && c.get_name() != "help" {
                missing.push(format!("{path}: no about"));
            }
            for a in c.get_arguments() {
                if a.is_hide_set() || ["help", "version"].contains(&a.get_id().as_str()) {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path}: argument `{}` has no help", a.get_id()));
                }
            }
            for s in c.get_subcommands() {
                walk(s, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
