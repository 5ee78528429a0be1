//! `warden agent exec PLUGIN ACTION`: one action, no cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use warden_manifest::{Capabilities, ConnectPattern, EnvPattern, ExecRule, PathPattern};

use super::Cli;
use crate::plugin::{humantime, Action, AgentFailure, CallContext, CallError, Health, Limits};

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The plugin component (e.g. target/plugins/example-rust.wasm).
    pub plugin: PathBuf,
    /// metadata, validate, start, stop, monitor, recover; fence agents: fence, status.
    pub action: Action,
    /// A resource parameter (repeatable).
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Grant running PROGRAM (absolute path), optionally only with arguments matching the
    /// space-separated patterns after `:` (`*` any characters, `**` any arguments).
    #[arg(long = "allow-exec", value_name = "PROGRAM[:ARGPATTERN]", value_parser = |s: &str| ExecRule::parse_cli(s))]
    pub allow_exec: Vec<ExecRule>,
    /// Grant reading PATH (`*` one level, `**` any depth, trailing `/` = whole directory).
    #[arg(long = "allow-read", value_name = "PATH", value_parser = |s: &str| PathPattern::parse(s))]
    pub allow_read: Vec<PathPattern>,
    /// Grant TCP probes of HOST:PORT (`*` allowed).
    #[arg(long = "allow-connect", value_name = "HOST:PORT", value_parser = |s: &str| ConnectPattern::parse(s))]
    pub allow_connect: Vec<ConnectPattern>,
    /// Grant setting environment variable NAME for the programs the agent runs (`*` allowed,
    /// e.g. `OCF_*`); nothing else reaches them.
    #[arg(long = "allow-env", value_name = "NAME", value_parser = |s: &str| EnvPattern::parse(s))]
    pub allow_env: Vec<EnvPattern>,
    /// Deadline for the action (default: the agent's own timeout for it), e.g. 30s, 500ms.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Memory cap for the instance, in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_mib: usize,
    /// Resource name passed to the agent.
    #[arg(long, default_value = "cli")]
    pub resource: String,
    /// Node name passed to the agent (default: this host's name).
    #[arg(long)]
    pub node: Option<String>,
    /// Placement epoch passed to the agent.
    #[arg(long, default_value_t = 0)]
    pub epoch: u64,
    /// Node to act on, for a fence agent's `fence` and `status`.
    #[arg(long)]
    pub target: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}

pub use crate::config::duration::parse as parse_duration;

const EXIT_AGENT_ERROR: u8 = 1;
const EXIT_LOAD: u8 = 2;
const EXIT_SANDBOX: u8 = 3;
const EXIT_DEGRADED: u8 = 5;
const EXIT_STOPPED: u8 = 7;

pub async fn run(cli: &Cli, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let host = cli.host()?;
    let plugin = match host.load(&args.plugin).await {
        Ok(p) => p,
        Err(e) => {
            report(args, None, &format!("{e}"), "load", Duration::ZERO);
            return Ok(ExitCode::from(EXIT_LOAD));
        }
    };
    let name = plugin.name().to_string();
    let given: BTreeMap<String, String> = args.params.iter().cloned().collect();
    let resolved = if args.action == Action::Metadata { Ok(given) } else { plugin.metadata.resolve_params(&given) };
    let params = match resolved {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("plugin `{name}`: {}: invalid parameters: {e}", args.action);
            report(args, Some(&name), &msg, "invalid-parameter", Duration::ZERO);
            return Ok(ExitCode::from(EXIT_LOAD));
        }
    };
    let grants = Capabilities {
        exec: args.allow_exec.clone(),
        read: args.allow_read.clone(),
        connect: args.allow_connect.clone(),
        env: args.allow_env.clone(),
    };
    let undeclared = grants.not_covered_by(&plugin.manifest.capabilities);
    if !undeclared.is_empty() {
        tracing::warn!(plugin = %name, grants = ?undeclared, "granted capabilities the plugin does not declare have no effect");
    }
    let mut instance = plugin.instance(&args.resource, grants, Limits { memory_bytes: args.memory_mib << 20 });
    let ctx =
        CallContext { resource: args.resource.clone(), node: args.node.clone().unwrap_or_else(super::hostname), epoch: args.epoch, params };
    let target = || args.target.clone().ok_or_else(|| anyhow::anyhow!("`{}` needs --target NODE", args.action));

    let started = Instant::now();
    let result: Result<Outcome, CallError> = match args.action {
        Action::Metadata => Ok(Outcome::Metadata),
        Action::Validate => instance.validate(&ctx, args.timeout).await.map(|_| Outcome::Done),
        Action::Start => instance.start(&ctx, args.timeout).await.map(|_| Outcome::Done),
        Action::Stop => instance.stop(&ctx, args.timeout).await.map(|_| Outcome::Done),
        Action::Recover => instance.recover(&ctx, args.timeout).await.map(|_| Outcome::Done),
        Action::Monitor => instance.monitor(&ctx, args.timeout).await.map(Outcome::Health),
        Action::Fence => instance.fence(&ctx, &target()?, args.timeout).await.map(|_| Outcome::Done),
        Action::Status => instance.status(&ctx, &target()?, args.timeout).await.map(|p| Outcome::Text(format!("{p:?}").to_lowercase())),
    };
    let took = started.elapsed();

    match result {
        Ok(outcome) => {
            let (text, code) = match &outcome {
                Outcome::Done => ("ok".to_string(), 0),
                Outcome::Text(t) => (t.clone(), 0),
                Outcome::Metadata => (serde_json::to_string_pretty(&super::plugin_cmd::metadata_json(&plugin)).unwrap_or_default(), 0),
                Outcome::Health(h) => (
                    h.to_string(),
                    match h {
                        Health::Running => 0,
                        Health::Stopped => EXIT_STOPPED,
                        Health::Degraded(_) => EXIT_DEGRADED,
                        Health::Failed(_) => EXIT_AGENT_ERROR,
                    },
                ),
            };
            if args.json {
                let health = match &outcome {
                    Outcome::Health(h) => serde_json::to_value(h).unwrap_or_default(),
                    _ => serde_json::Value::Null,
                };
                let v = serde_json::json!({
                    "plugin": name, "action": args.action, "ok": true, "result": text,
                    "health": health, "duration_ms": took.as_secs_f64() * 1000.0,
                });
                println!("{v}");
            } else {
                println!("{name} {}: {text} ({})", args.action, humantime(took));
            }
            Ok(ExitCode::from(code))
        }
        Err(e) => {
            let (kind, code) = match &e {
                CallError::Agent { error, .. } => (
                    match error {
                        AgentFailure::InvalidConfig(_) => "invalid-config",
                        AgentFailure::NotInstalled(_) => "not-installed",
                        AgentFailure::Failed(_) => "failed",
                        AgentFailure::AccessDenied(_) => "access-denied",
                        AgentFailure::Unsupported(_) => "unsupported",
                    },
                    EXIT_AGENT_ERROR,
                ),
                CallError::Timeout { .. } => ("timeout", EXIT_SANDBOX),
                CallError::OutOfMemory { .. } => ("out-of-memory", EXIT_SANDBOX),
                CallError::Trap { .. } => ("trap", EXIT_SANDBOX),
                CallError::Instantiate { .. } => ("instantiate", EXIT_SANDBOX),
                CallError::NoSuchAction { .. } | CallError::Params { .. } => ("usage", EXIT_LOAD),
            };
            report(args, Some(&name), &e.to_string(), kind, took);
            Ok(ExitCode::from(code))
        }
    }
}

enum Outcome {
    Done,
    Metadata,
    Text(String),
    Health(Health),
}

/// One line on stderr (or a JSON object on stdout with --json) naming the plugin and action.
fn report(args: &ExecArgs, plugin: Option<&str>, message: &str, kind: &str, took: Duration) {
    let message = message.replace('\n', " ");
    if args.json {
        let v = serde_json::json!({
            "plugin": plugin, "action": args.action, "ok": false,
            "error": { "kind": kind, "message": message }, "duration_ms": took.as_secs_f64() * 1000.0,
        });
        println!("{v}");
    } else {
        eprintln!("error: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_name_value() {
        assert_eq!(parse_param("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_param("=x").is_err());
        assert!(parse_param("novalue").is_err());
    }
}
