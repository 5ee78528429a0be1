//! `style = "ocf"`: an OCF resource agent, as Pacemaker runs it.
//!
//! The agent is called as `AGENT ACTION` with a cleared environment plus `OCF_ROOT`,
//! `OCF_RA_VERSION_MAJOR`/`MINOR`, `OCF_RESOURCE_INSTANCE` (the resource name),
//! `OCF_RESOURCE_TYPE`/`PROVIDER`, `OCF_RESKEY_CRM_meta_timeout` (ms), `OCF_RESKEY_CRM_meta_on_node`, `OCF_RESKEY_CRM_meta_warden_epoch` (Warden's placement epoch)
//! (and `..._interval` for monitor), and every parameter that is not the generic agent's own as
//! `OCF_RESKEY_<name>`. Exit codes are mapped per the OCF table (see [`Code`] and README).

use warden_sdk::*;

use crate::params::{self, LIFEKEEPER_ONLY, OWN};
use crate::{MONITOR_INTERVAL_MS, MONITOR_MS, START_MS, STOP_MS, VALIDATE_MS};

/// The OCF view of a resource's parameters.
struct Ocf<'a> {
    ctx: &'a Context,
    /// The agent's absolute path.
    agent: String,
    root: &'a str,
    /// `(OCF_RESKEY_<name>, value)` for every parameter passed on.
    reskeys: Vec<(String, String)>,
    env: Vec<(String, String)>,
}

/// Read and check the parameters (no host calls).
fn ocf(ctx: &Context) -> Result<Ocf<'_>, AgentError> {
    for (k, _) in &ctx.params {
        if LIFEKEEPER_ONLY.contains(&k.as_str()) || k.starts_with(params::APP_INFO_NODE_PREFIX) {
            return Err(AgentError::InvalidConfig(format!(
                "parameter `{k}` is for style=lifekeeper; to pass it to the OCF agent, name it \
                 `OCF_RESKEY_{k}`"
            )));
        }
    }
    let root = params::path(ctx, "ocf_root")?.unwrap_or(params::OCF_ROOT);
    let root = root.trim_end_matches('/');
    let agent = match params::value(ctx, "agent") {
        None => {
            return Err(AgentError::InvalidConfig(
                "style=ocf needs parameter `agent`: the OCF agent's absolute path or \
                 `ocf:PROVIDER:TYPE` (e.g. ocf:heartbeat:Dummy)"
                    .into(),
            ))
        }
        Some(a) if a.starts_with('/') => a.to_string(),
        Some(a) => {
            let parts: Vec<&str> = a.split(':').collect();
            let ok = |p: &str| !p.is_empty() && !p.contains('/') && p != "." && p != "..";
            match parts.as_slice() {
                ["ocf", provider, kind] if ok(provider) && ok(kind) => {
                    format!("{root}/resource.d/{provider}/{kind}")
                }
                _ => {
                    return Err(AgentError::InvalidConfig(format!(
                        "parameter `agent` must be an absolute path or `ocf:PROVIDER:TYPE`, got `{a}`"
                    )))
                }
            }
        }
    };
    let mut reskeys = Vec::new();
    for (k, v) in &ctx.params {
        if OWN.contains(&k.as_str()) {
            continue;
        }
        let name = k.strip_prefix("OCF_RESKEY_").unwrap_or(k);
        if !params::is_env_name(name) {
            return Err(AgentError::InvalidConfig(format!(
                "parameter `{k}` cannot be passed to an OCF agent: OCF_RESKEY_{name} is not an \
                 environment variable name (letters, digits and `_`)"
            )));
        }
        reskeys.push((format!("OCF_RESKEY_{name}"), v.clone()));
    }
    Ok(Ocf { ctx, agent, root, reskeys, env: params::extra_env(ctx)? })
}

/// What an OCF exit status means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    Success,
    Generic,
    Args,
    Unimplemented,
    Perm,
    Installed,
    Configured,
    NotRunning,
    RunningPromoted,
    FailedPromoted,
    /// Another exit code.
    Other(i32),
    /// Killed by a signal or at its timeout.
    Killed,
}

impl Code {
    fn of(out: &ExecOutput) -> Code {
        if out.timed_out {
            return Code::Killed;
        }
        match out.exit_code {
            Some(0) => Code::Success,
            Some(1) => Code::Generic,
            Some(2) => Code::Args,
            Some(3) => Code::Unimplemented,
            Some(4) => Code::Perm,
            Some(5) => Code::Installed,
            Some(6) => Code::Configured,
            Some(7) => Code::NotRunning,
            Some(8) => Code::RunningPromoted,
            Some(9) => Code::FailedPromoted,
            Some(c) => Code::Other(c),
            None => Code::Killed,
        }
    }

    /// `OCF_ERR_ARGS (2)`, for messages.
    fn name(self, out: &ExecOutput) -> String {
        let n = match self {
            Code::Success => "OCF_SUCCESS (0)",
            Code::Generic => "OCF_ERR_GENERIC (1)",
            Code::Args => "OCF_ERR_ARGS (2)",
            Code::Unimplemented => "OCF_ERR_UNIMPLEMENTED (3)",
            Code::Perm => "OCF_ERR_PERM (4)",
            Code::Installed => "OCF_ERR_INSTALLED (5)",
            Code::Configured => "OCF_ERR_CONFIGURED (6)",
            Code::NotRunning => "OCF_NOT_RUNNING (7)",
            Code::RunningPromoted => "OCF_RUNNING_PROMOTED (8)",
            Code::FailedPromoted => "OCF_FAILED_PROMOTED (9)",
            Code::Other(_) | Code::Killed => return out.status_text(),
        };
        n.to_string()
    }
}

/// The agent's reason: its `ocf-exit-reason:` lines when it wrote any, else its output.
fn reason(out: &ExecOutput) -> String {
    let reasons: Vec<&str> = out.stderr.lines().filter_map(|l| l.trim().strip_prefix("ocf-exit-reason:")).map(str::trim).collect();
    if reasons.is_empty() {
        params::brief(&out.output_text())
    } else {
        params::brief(&reasons.join("; "))
    }
}

impl Ocf<'_> {
    /// Run `AGENT ACTION` with the OCF environment. `timeout_ms` is what the agent is told in
    /// OCF_RESKEY_CRM_meta_timeout; the action's own deadline is what bounds the run.
    fn run(&self, action: &str, timeout_ms: u32) -> Result<ExecOutput, AgentError> {
        let mut cmd = Command::new(self.agent.as_str()).arg(action);
        for (k, v) in &self.env {
            cmd = cmd.env(k.as_str(), v.as_str());
        }
        let (provider, kind) = self.provider_and_type();
        cmd = cmd
            .env("OCF_ROOT", self.root)
            .env("OCF_RA_VERSION_MAJOR", "1")
            .env("OCF_RA_VERSION_MINOR", "0")
            .env("OCF_RESOURCE_INSTANCE", self.ctx.resource.as_str())
            .env("OCF_RESOURCE_TYPE", kind)
            .env("OCF_RESKEY_CRM_meta_timeout", timeout_ms.to_string())
            .env("OCF_RESKEY_CRM_meta_on_node", self.ctx.node.as_str())
            // Not Pacemaker's: the placement epoch, Warden's fencing token.
            .env("OCF_RESKEY_CRM_meta_warden_epoch", self.ctx.epoch.to_string());
        if let Some(p) = provider {
            cmd = cmd.env("OCF_RESOURCE_PROVIDER", p);
        }
        if action == "monitor" {
            cmd = cmd.env("OCF_RESKEY_CRM_meta_interval", MONITOR_INTERVAL_MS.to_string());
        }
        // The operator's parameters last: a `CRM_meta_timeout` parameter overrides ours.
        for (k, v) in &self.reskeys {
            cmd = cmd.env(k.as_str(), v.as_str());
        }
        log::debug(format!("ocf {action}: {}", cmd.display()));
        cmd.run().map_err(|e| match e {
            AgentError::NotInstalled(m) => AgentError::NotInstalled(format!(
                "OCF agent {}: {m} (install it, e.g. Debian's resource-agents package, or fix \
                 `agent`/`ocf_root`)",
                self.agent
            )),
            other => other,
        })
    }

    /// `(provider, type)` from `.../resource.d/PROVIDER/TYPE`; the type is the file name.
    fn provider_and_type(&self) -> (Option<&str>, &str) {
        let mut parts = self.agent.rsplit('/');
        let kind = parts.next().unwrap_or("");
        let provider = parts.next();
        let in_resource_d = parts.next() == Some("resource.d");
        (provider.filter(|_| in_resource_d), kind)
    }

    /// The agent-error for an exit that is not success for `action`.
    fn error(&self, action: &str, out: &ExecOutput) -> AgentError {
        let code = Code::of(out);
        let msg = format!("OCF agent {} {action}: {}: {}", self.agent, code.name(out), reason(out));
        match code {
            Code::Args | Code::Configured => AgentError::InvalidConfig(msg),
            Code::Installed => AgentError::NotInstalled(msg),
            Code::Unimplemented => AgentError::Unsupported(msg),
            Code::RunningPromoted | Code::FailedPromoted => {
                AgentError::Failed(format!("{msg} (a promotable agent: Warden does not call promote/demote)"))
            }
            _ => AgentError::Failed(msg),
        }
    }
}

/// One `<parameter>` of an agent's meta-data.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MetaParam {
    name: String,
    required: bool,
    default: Option<String>,
}

/// The value of attribute `key` in the inside of a tag (`parameter name="x" required="1"`).
fn attr(tag: &str, key: &str) -> Option<String> {
    let mut rest = tag;
    while let Some(i) = rest.find(key) {
        let before_ok = i == 0 || rest[..i].ends_with(|c: char| c.is_whitespace());
        let after = rest[i + key.len()..].trim_start();
        if before_ok {
            if let Some(after) = after.strip_prefix('=') {
                let after = after.trim_start();
                let quote = after.chars().next()?;
                if quote == '"' || quote == '\'' {
                    let value = &after[1..];
                    return value.find(quote).map(|end| value[..end].to_string());
                }
            }
        }
        rest = &rest[i + key.len()..];
    }
    None
}

/// The parameters an agent's meta-data declares; None when it is not OCF meta-data at all.
fn parse_meta_data(xml: &str) -> Option<Vec<MetaParam>> {
    if !xml.contains("<resource-agent") {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<parameter") {
        rest = &rest[i + "<parameter".len()..];
        if !rest.starts_with(|c: char| c.is_whitespace()) {
            continue; // <parameters>
        }
        let Some(end) = rest.find('>') else { break };
        let tag = &rest[..end];
        let body_end = rest.find("</parameter>").unwrap_or(rest.len());
        let body = &rest[end.min(body_end)..body_end];
        let Some(name) = attr(tag, "name") else {
            continue;
        };
        let required = matches!(attr(tag, "required").as_deref(), Some("1" | "true"));
        let default = body
            .find("<content")
            .and_then(|c| body[c..].find('>').map(|e| &body[c + "<content".len()..c + e]))
            .and_then(|content| attr(content, "default"));
        out.push(MetaParam { name, required, default });
    }
    Some(out)
}

/// Check the agent exists, its meta-data parses and names no required parameter that is missing,
/// then run `validate-all`.
pub(crate) fn validate(ctx: &Context) -> Result<(), AgentError> {
    let o = ocf(ctx)?;
    match fs::stat(&o.agent)? {
        None => {
            return Err(AgentError::NotInstalled(format!(
                "OCF agent {} does not exist on this node (install it, e.g. Debian's \
                 resource-agents package, or fix `agent`/`ocf_root`)",
                o.agent
            )))
        }
        Some(FileKind::Directory | FileKind::Other) => {
            return Err(AgentError::InvalidConfig(format!("parameter `agent`: {} is not a program", o.agent)))
        }
        Some(FileKind::File | FileKind::Symlink) => {}
    }

    let out = o.run("meta-data", 5_000)?;
    if !out.success() {
        return Err(o.error("meta-data", &out));
    }
    let Some(declared) = parse_meta_data(&out.stdout) else {
        return Err(AgentError::InvalidConfig(format!(
            "parameter `agent`: `{} meta-data` printed no <resource-agent> XML: is it an OCF \
             resource agent?",
            o.agent
        )));
    };
    let given: Vec<&str> = o.reskeys.iter().map(|(k, _)| k.trim_start_matches("OCF_RESKEY_")).collect();
    let missing: Vec<&str> = declared.iter().filter(|p| p.required && !given.contains(&p.name.as_str())).map(|p| p.name.as_str()).collect();
    if !missing.is_empty() {
        return Err(AgentError::InvalidConfig(format!(
            "the OCF agent {} requires parameter `{}` (its meta-data says required=\"1\")",
            o.agent,
            missing.join("`, `")
        )));
    }
    for g in &given {
        if !g.starts_with("CRM_meta_") && !declared.iter().any(|p| p.name == *g) {
            log::warn(format!("parameter `{g}` is not in the meta-data of {}; passed on anyway as OCF_RESKEY_{g}", o.agent));
        }
    }
    let summary: Vec<String> = declared
        .iter()
        .map(|p| match (&p.default, p.required) {
            (_, true) => format!("{} (required)", p.name),
            (Some(d), false) => format!("{}={d}", p.name),
            (None, false) => p.name.clone(),
        })
        .collect();
    log::info(format!("OCF agent {} meta-data parameters: {}", o.agent, summary.join(", ")));

    let out = o.run("validate-all", VALIDATE_MS)?;
    match Code::of(&out) {
        Code::Success => Ok(()),
        Code::Unimplemented => {
            log::warn(format!("OCF agent {} does not implement validate-all; only its meta-data was checked", o.agent));
            Ok(())
        }
        _ => Err(o.error("validate-all", &out)),
    }
}

fn start_with(o: &Ocf<'_>) -> Result<(), AgentError> {
    let out = o.run("start", START_MS)?;
    match Code::of(&out) {
        Code::Success => Ok(()),
        _ => Err(o.error("start", &out)),
    }
}

fn stop_with(o: &Ocf<'_>) -> Result<(), AgentError> {
    let out = o.run("stop", STOP_MS)?;
    match Code::of(&out) {
        // Stopping a stopped resource succeeds.
        Code::Success | Code::NotRunning => Ok(()),
        _ => Err(o.error("stop", &out)),
    }
}

pub(crate) fn start(ctx: &Context) -> Result<(), AgentError> {
    start_with(&ocf(ctx)?)
}

pub(crate) fn stop(ctx: &Context) -> Result<(), AgentError> {
    stop_with(&ocf(ctx)?)
}

/// OCF has no recover action: Pacemaker's local recovery is stop then start, and so is this.
pub(crate) fn recover(ctx: &Context) -> Result<(), AgentError> {
    let o = ocf(ctx)?;
    stop_with(&o)?;
    start_with(&o)
}

/// 0 running, 7 stopped, 1/4/killed failed, 8 degraded (promoted), 9 failed (promoted);
/// 2/6 invalid-config, 5 not-installed, 3 unsupported as agent errors.
pub(crate) fn monitor(ctx: &Context) -> Result<Health, AgentError> {
    let o = ocf(ctx)?;
    let out = o.run("monitor", MONITOR_MS)?;
    let code = Code::of(&out);
    let what = || format!("OCF agent {} monitor: {}: {}", o.agent, code.name(&out), reason(&out));
    Ok(match code {
        Code::Success => Health::Running,
        Code::NotRunning => Health::Stopped,
        Code::RunningPromoted => Health::Degraded(format!(
            "{}: running in the promoted role; Warden has no promotable resources (no \
             promote/demote), so this is reported, not acted on",
            what()
        )),
        Code::FailedPromoted => Health::Failed(format!("{}: failed in the promoted role", what())),
        Code::Generic | Code::Perm | Code::Other(_) | Code::Killed => Health::Failed(what()),
        Code::Args | Code::Configured | Code::Installed | Code::Unimplemented => return Err(o.error("monitor", &out)),
    })
}
