//! `fence-exec`: fencing through a granted command, in one of two styles.
//!
//! * `style = "stdin"` (default): a Pacemaker/Red Hat **fence agent** (`fence_ipmilan`,
//!   `fence_virsh`, `fence_xvm`, …) speaking the FenceAgentAPI: options as `key=value` lines on
//!   standard input. fence sends `action=off` (or `reboot`, see `fence_action`) and
//!   `plug=<target>`; status sends `action=status`. Every parameter that is not one of this
//!   agent's own is passed on as one more `key=value` line (`ip=`, `username=`, `password=`,
//!   `lanplus=`, …). Exit codes, per the FenceAgentAPI: 0 = success; for `status`, 0 = on,
//!   2 = off, anything else = could not tell (an error).
//! * `style = "args"`: any other command, e.g. `ipmitool`, with argument templates `off_args`
//!   and `status_args` in which `{target}` is replaced by the target (whitespace separates
//!   arguments). Every parameter that is not one of this agent's own becomes an environment
//!   variable of the command (e.g. `IPMI_PASSWORD` for `ipmitool -E`, so no password is on a
//!   command line). Status: `status_off_text` / `status_on_text` found in the output decide,
//!   otherwise exit 0 = on, 2 = off.
//!
//! After a successful off, fence confirms the target is off with status (`verify_off`), because
//! the engine lets the target's groups start elsewhere as soon as fence returns Ok.
use std::collections::BTreeMap;
use std::time::Duration;

use warden_sdk::*;

struct FenceExec;

/// This agent's own parameters; every other one is passed to the command.
const OWN: [&str; 12] = [
    "command",
    "style",
    "fence_action",
    "target_param",
    "target_map",
    "off_args",
    "status_args",
    "status_on_text",
    "status_off_text",
    "verify_off",
    "verify_timeout_ms",
    "command_timeout_ms",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Stdin,
    Args,
}

struct Config {
    command: String,
    style: Style,
    fence_action: String,
    target_param: String,
    target_map: Option<BTreeMap<String, String>>,
    off_args: Option<String>,
    status_args: Option<String>,
    status_on_text: Option<String>,
    status_off_text: Option<String>,
    verify_off: bool,
    verify_timeout: Duration,
    command_timeout: Duration,
    /// Parameters passed on to the command (stdin lines or environment), sorted by name.
    passed: Vec<(String, String)>,
}

fn invalid(msg: String) -> AgentError {
    AgentError::InvalidConfig(msg)
}

fn non_empty<'a>(ctx: &'a Context, name: &str) -> Option<&'a str> {
    ctx.param(name).map(str::trim).filter(|s| !s.is_empty())
}

fn is_env_name(k: &str) -> bool {
    let mut c = k.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// `node-a:3;node-b:4` (`;` or whitespace between entries).
fn parse_map(text: &str) -> Result<BTreeMap<String, String>, AgentError> {
    let mut map = BTreeMap::new();
    for entry in text.split(|c: char| c == ';' || c.is_whitespace()).filter(|e| !e.is_empty()) {
        match entry.split_once(':') {
            Some((node, plug)) if !node.is_empty() && !plug.is_empty() => {
                map.insert(node.to_string(), plug.to_string());
            }
            _ => return Err(invalid(format!("parameter `target_map`: entry `{entry}` is not NODE:PLUG (entries are separated by `;`)"))),
        }
    }
    Ok(map)
}

impl Config {
    fn from(ctx: &Context) -> Result<Self, AgentError> {
        let command = ctx.require("command")?.trim().to_string();
        if !command.starts_with('/') || command.split('/').any(|c| c == "..") {
            return Err(invalid(format!("parameter `command` must be an absolute path without `..`, got `{command}`")));
        }
        let style = match non_empty(ctx, "style").unwrap_or("stdin") {
            "stdin" => Style::Stdin,
            "args" => Style::Args,
            s => return Err(invalid(format!("parameter `style` must be `stdin` (a fence_* agent) or `args`, got `{s}`"))),
        };
        let fence_action = non_empty(ctx, "fence_action").unwrap_or("off").to_string();
        if fence_action != "off" && fence_action != "reboot" {
            return Err(invalid(format!("parameter `fence_action` must be `off` or `reboot`, got `{fence_action}`")));
        }
        let target_param = non_empty(ctx, "target_param").unwrap_or("plug").to_string();
        if target_param.contains(['=', '\n', '\r']) {
            return Err(invalid(format!("parameter `target_param` must be a plain option name, got `{target_param}`")));
        }
        let target_map = non_empty(ctx, "target_map").map(parse_map).transpose()?;
        let mut passed = Vec::new();
        for (k, v) in &ctx.params {
            if OWN.contains(&k.as_str()) {
                continue;
            }
            match style {
                Style::Stdin => {
                    if k.is_empty() || k.contains(['=', '\n', '\r']) || v.contains(['\n', '\r']) {
                        return Err(invalid(format!(
                            "parameter `{k}` cannot be passed as a key=value line (no `=` in the name, no line breaks)"
                        )));
                    }
                    if k == "action" || *k == target_param {
                        return Err(invalid(format!("parameter `{k}` is set by the agent itself (action and target); remove it")));
                    }
                }
                Style::Args => {
                    if !is_env_name(k) || v.contains('\0') {
                        return Err(invalid(format!(
                            "parameter `{k}` cannot be passed as an environment variable (letters, digits and `_` only)"
                        )));
                    }
                }
            }
            passed.push((k.clone(), v.clone()));
        }
        let cfg = Self {
            command,
            style,
            fence_action,
            target_param,
            target_map,
            off_args: non_empty(ctx, "off_args").map(str::to_string),
            status_args: non_empty(ctx, "status_args").map(str::to_string),
            status_on_text: non_empty(ctx, "status_on_text").map(str::to_string),
            status_off_text: non_empty(ctx, "status_off_text").map(str::to_string),
            verify_off: ctx.param_bool("verify_off", true)?,
            verify_timeout: Duration::from_millis(ctx.param_u64("verify_timeout_ms", 20_000)?),
            command_timeout: Duration::from_millis(ctx.param_u64("command_timeout_ms", 60_000)?),
            passed,
        };
        if cfg.style == Style::Args {
            if cfg.off_args.is_none() {
                return Err(invalid(
                    "style `args` needs `off_args`, the arguments that power the target off (`{target}` is replaced)".into(),
                ));
            }
            if cfg.verify_off && cfg.status_args.is_none() {
                return Err(invalid("style `args` with verify_off=true needs `status_args` (or set verify_off=false)".into()));
            }
        }
        Ok(cfg)
    }

    /// The name the device knows the target by.
    fn plug(&self, target: &str) -> Result<String, AgentError> {
        if target.is_empty() || target.chars().any(char::is_control) {
            return Err(invalid(format!("target `{}` is not a valid node name", target.escape_debug())));
        }
        match &self.target_map {
            None => Ok(target.to_string()),
            Some(map) => map.get(target).cloned().ok_or_else(|| invalid(format!("`target_map` has no entry for node `{target}`"))),
        }
    }

    /// The command for a fence_* agent with `action=…`; stdin carries the options.
    fn stdin_command(&self, action: &str, plug: &str) -> Command {
        let mut input = format!("action={action}\n{}={plug}\n", self.target_param);
        for (k, v) in &self.passed {
            input.push_str(&format!("{k}={v}\n"));
        }
        Command::new(&self.command).stdin(input).timeout(self.command_timeout)
    }

    /// The command from an args template, with `{target}` replaced and the environment set.
    fn args_command(&self, template: &str, plug: &str) -> Command {
        let mut c = Command::new(&self.command)
            .args(template.split_whitespace().map(|a| a.replace("{target}", plug)))
            .timeout(self.command_timeout);
        for (k, v) in &self.passed {
            c = c.env(k, v);
        }
        c
    }

    /// What to show of a command in messages: never stdin or the environment (credentials).
    fn describe(&self, cmd: &Command, action: &str) -> String {
        match self.style {
            Style::Stdin => format!("{} (action={action})", self.command),
            Style::Args => cmd.display(),
        }
    }
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

fn status(cfg: &Config, target: &str) -> Result<PowerState, AgentError> {
    let plug = cfg.plug(target)?;
    let (cmd, what) = match cfg.style {
        Style::Stdin => {
            let c = cfg.stdin_command("status", &plug);
            let d = cfg.describe(&c, "status");
            (c, d)
        }
        Style::Args => {
            let Some(t) = &cfg.status_args else {
                return Ok(PowerState::Unknown);
            };
            let c = cfg.args_command(t, &plug);
            let d = cfg.describe(&c, "status");
            (c, d)
        }
    };
    let out = cmd.run()?;
    let text = format!("{}\n{}", out.stdout, out.stderr);
    if cfg.style == Style::Args && (cfg.status_off_text.is_some() || cfg.status_on_text.is_some()) {
        if cfg.status_off_text.as_deref().is_some_and(|t| contains_ci(&text, t)) {
            return Ok(PowerState::Off);
        }
        if cfg.status_on_text.as_deref().is_some_and(|t| contains_ci(&text, t)) {
            return Ok(PowerState::On);
        }
        if out.success() {
            log::warn(format!(
                "status of {target}: the output of `{what}` matches neither status_on_text nor status_off_text: {}",
                out.output_text()
            ));
            return Ok(PowerState::Unknown);
        }
        return Err(fail!("status of {target}: `{what}` failed ({}): {}", out.status_text(), out.output_text()));
    }
    match out.exit_code {
        Some(0) if !out.timed_out => Ok(PowerState::On),
        Some(2) if !out.timed_out => Ok(PowerState::Off),
        _ => Err(fail!("status of {target}: `{what}` failed ({}; 0 means on, 2 off): {}", out.status_text(), out.output_text())),
    }
}

impl FenceAgent for FenceExec {
    fn metadata() -> FenceMetadata {
        FenceMetadata {
            name: "fence-exec".into(),
            version: "0.1.0".into(),
            description: "Fencing through a granted command: a fence_* agent (key=value options on stdin) or any command with argument templates, e.g. ipmitool".into(),
            parameters: vec![
                Param::required("command", "Absolute path of the program: a fence agent such as /usr/sbin/fence_ipmilan, or e.g. /usr/bin/ipmitool").into(),
                Param::optional("style", "stdin", "`stdin`: a fence_* agent reading key=value lines; `args`: a command run with off_args/status_args").into(),
                Param::optional("fence_action", "off", "stdin style: the action sent to fence, `off` or `reboot`").into(),
                Param::optional("target_param", "plug", "stdin style: the option that names the target (plug, port, nodename, …)").into(),
                Param::optional_unset("target_map", "Node name to device name, like pcmk_host_map: `node-a:3;node-b:4`; unset: the node name itself").into(),
                Param::optional_unset("off_args", "args style: arguments that power the target off; `{target}` is replaced, whitespace separates arguments").into(),
                Param::optional_unset("status_args", "args style: arguments that print the target's power state").into(),
                Param::optional_unset("status_on_text", "args style: text in the status output meaning on (case-insensitive), e.g. `is on`").into(),
                Param::optional_unset("status_off_text", "args style: text in the status output meaning off (case-insensitive), e.g. `is off`").into(),
                Param::optional("verify_off", "true", "After a successful off, poll status until the target reports off").into(),
                Param::optional("verify_timeout_ms", "20000", "How long verify_off waits for the off state").into(),
                Param::optional("command_timeout_ms", "60000", "Timeout of each run of the command").into(),
                Param::optional_unset("*", "Any other parameter: stdin style, one more key=value line (ip, username, password, …); args style, an environment variable").into(),
            ],
            fence_timeout_ms: 120_000,
            status_timeout_ms: 60_000,
        }
    }

    fn validate(ctx: &Context) -> Result<(), AgentError> {
        Config::from(ctx).map(|_| ())
    }

    fn fence(ctx: &Context, target: &str) -> Result<(), AgentError> {
        let cfg = Config::from(ctx)?;
        let plug = cfg.plug(target)?;
        let cmd = match cfg.style {
            Style::Stdin => cfg.stdin_command(&cfg.fence_action, &plug),
            Style::Args => cfg.args_command(cfg.off_args.as_deref().unwrap_or_default(), &plug),
        };
        let what = cfg.describe(&cmd, &cfg.fence_action);
        log::warn(format!("fencing {target} (device name `{plug}`): {what}"));
        let out = cmd.run()?;
        if !out.success() {
            return Err(fail!("fence {target}: `{what}` failed ({}): {}", out.status_text(), out.output_text()));
        }
        if !cfg.verify_off || cfg.fence_action == "reboot" {
            log::info(format!("fenced {target}: `{what}` succeeded"));
            return Ok(());
        }
        let step = Duration::from_millis(500);
        let mut waited = Duration::ZERO;
        loop {
            let state = status(&cfg, target);
            match &state {
                Ok(PowerState::Off) => {
                    log::info(format!("fenced {target}: `{what}` succeeded and status reports off"));
                    return Ok(());
                }
                Ok(s) => log::debug(format!("fence {target}: status reports {s:?} after off; waiting")),
                Err(e) => log::debug(format!("fence {target}: status after off: {e:?}")),
            }
            if waited >= cfg.verify_timeout {
                let last = match state {
                    Ok(s) => format!("{s:?}").to_lowercase(),
                    Err(AgentError::Failed(m)) => m,
                    Err(e) => format!("{e:?}"),
                };
                return Err(fail!(
                    "fence {target}: `{what}` succeeded but the target is not confirmed off after {} ms (last status: {last})",
                    cfg.verify_timeout.as_millis()
                ));
            }
            sleep(step);
            waited += step;
        }
    }

    fn status(ctx: &Context, target: &str) -> Result<PowerState, AgentError> {
        let cfg = Config::from(ctx)?;
        status(&cfg, target)
    }
}

export_fence_agent!(FenceExec);
