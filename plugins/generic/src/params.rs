//! The generic agent's own parameters, and helpers shared by both styles.

use warden_sdk::*;

/// Parameters that belong to the generic agent itself: never passed on as `OCF_RESKEY_*`.
pub(crate) const OWN: &[&str] = &[
    "style",
    "agent",
    "ocf_root",
    "restore",
    "remove",
    "quickcheck",
    "recover",
    "tag",
    "id",
    "app_info",
    "app_info_flag",
    "quickcheck_timeout_ms",
    "env",
    "watch",
    "watch_pidfile",
];

/// Parameters only a `lifekeeper` resource may set (none has a default, so "given" is visible).
pub(crate) const LIFEKEEPER_ONLY: &[&str] = &["restore", "remove", "quickcheck", "recover", "tag", "id", "app_info", "app_info_flag"];

/// Per-node application info: `app_info@<node>` overrides `app_info` on that node.
pub(crate) const APP_INFO_NODE_PREFIX: &str = "app_info@";

/// Default for `quickcheck_timeout_ms`: below the default monitor timeout, so an overrunning
/// quickCheck is killed by the agent (and reported as "check timed out") before the action's own
/// deadline stops the whole call.
pub(crate) const QUICKCHECK_TIMEOUT_MS: u64 = 20_000;

pub(crate) const OCF_ROOT: &str = "/usr/lib/ocf";

/// The parameter list shown by `warden plugin inspect`.
pub(crate) fn describe(m: AgentMetadata) -> AgentMetadata {
    m.param(Param::required(
        "style",
        "`lifekeeper`: run LifeKeeper Generic ARK scripts (restore, remove, quickcheck, recover); \
         `ocf`: run the OCF resource agent named by `agent`",
    ))
    .param(Param::optional_unset(
        "agent",
        "style=ocf: the OCF resource agent, an absolute path \
         (/usr/lib/ocf/resource.d/heartbeat/Dummy) or `ocf:PROVIDER:TYPE` (looked up as \
         OCF_ROOT/resource.d/PROVIDER/TYPE)",
    ))
    .param(Param::optional("ocf_root", OCF_ROOT, "style=ocf: OCF_ROOT for the agent (where its shell functions live)"))
    .param(Param::optional_unset(
        "restore",
        "style=lifekeeper, required: absolute path of the restore (start) script; must succeed \
         when the application already runs",
    ))
    .param(Param::optional_unset("remove", "style=lifekeeper, required: absolute path of the remove (stop) script"))
    .param(Param::optional_unset(
        "quickcheck",
        "style=lifekeeper: absolute path of the quickCheck (monitor) script; unset = always healthy",
    ))
    .param(Param::optional_unset(
        "recover",
        "style=lifekeeper: absolute path of the recover (local recovery) script; unset = no local \
         recovery (recover answers `unsupported`: fail over at once)",
    ))
    .param(Param::optional_unset("tag", "style=lifekeeper: the LifeKeeper tag passed as `-t TAG` (default: the resource name)"))
    .param(Param::optional_unset("id", "style=lifekeeper: the LifeKeeper ID passed as `-i ID` (default: the tag)"))
    .param(Param::optional_unset(
        "app_info",
        "style=lifekeeper: application info string, given to the scripts in the environment \
         variable LK_APP_INFO; `app_info@NODE` overrides it on node NODE",
    ))
    .param(Param::optional_unset(
        "app_info_flag",
        "style=lifekeeper: when set (e.g. `-a`), the application info is also passed as an \
         argument: `SCRIPT -t TAG -i ID -a INFO`",
    ))
    .param(Param::optional(
        "quickcheck_timeout_ms",
        &QUICKCHECK_TIMEOUT_MS.to_string(),
        "style=lifekeeper: the quickCheck is killed after this long and the monitor reports \
         degraded (\"check timed out\"), not failed; keep it below the monitor timeout",
    ))
    .param(Param::optional_unset(
        "env",
        "extra environment for the scripts or agent: `NAME=VALUE;NAME=VALUE` (e.g. \
         `LKROOT=/opt/LifeKeeper`)",
    ))
    .param(Param::optional(
        "watch",
        "auto",
        "which processes the engine watches so a death is seen at once instead of at the next \
         monitor: `auto` (the process in `watch_pidfile` when it is set, else the processes the \
         scripts left running in the resource's cgroup) or `none` (interval monitoring only)",
    ))
    .param(Param::optional_unset(
        "watch_pidfile",
        "the application's pid file (needs a read grant): its process is watched after a \
         successful start, recover or monitor",
    ))
    .param(Param::optional_unset(
        "*",
        "style=ocf: any other parameter NAME is passed to the agent as OCF_RESKEY_NAME; a \
         parameter named OCF_RESKEY_NAME is passed as is (for names taken above); \
         CRM_meta_timeout overrides the default OCF_RESKEY_CRM_meta_timeout",
    ))
}

/// A non-empty, trimmed parameter value.
pub(crate) fn value<'a>(ctx: &'a Context, name: &str) -> Option<&'a str> {
    ctx.param(name).map(str::trim).filter(|v| !v.is_empty())
}

/// An absolute path parameter (None when unset).
pub(crate) fn path<'a>(ctx: &'a Context, name: &str) -> Result<Option<&'a str>, AgentError> {
    match value(ctx, name) {
        None => Ok(None),
        Some(p) if p.starts_with('/') => Ok(Some(p)),
        Some(p) => Err(AgentError::InvalidConfig(format!("parameter `{name}` must be an absolute path, got `{p}`"))),
    }
}

/// Is `s` usable as an environment variable name?
pub(crate) fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The operator's extra environment (`env = "A=1;B=2"`).
pub(crate) fn extra_env(ctx: &Context) -> Result<Vec<(String, String)>, AgentError> {
    let Some(spec) = value(ctx, "env") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in spec.split(';').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('=') {
            Some((k, v)) if is_env_name(k.trim()) => out.push((k.trim().to_string(), v.to_string())),
            _ => {
                return Err(AgentError::InvalidConfig(format!(
                    "parameter `env`: `{item}` is not NAME=VALUE (entries are separated by `;`)"
                )))
            }
        }
    }
    Ok(out)
}

/// Check that a script or agent exists and is a file (needs a read grant on it).
pub(crate) fn check_program(param: &str, path: &str) -> Result<(), AgentError> {
    match fs::stat(path)? {
        None => Err(AgentError::InvalidConfig(format!("parameter `{param}`: {path} does not exist on this node"))),
        Some(FileKind::Directory) => Err(AgentError::InvalidConfig(format!("parameter `{param}`: {path} is a directory, not a program"))),
        Some(FileKind::Other) => Err(AgentError::InvalidConfig(format!("parameter `{param}`: {path} is not a regular file"))),
        Some(FileKind::File | FileKind::Symlink) => Ok(()),
    }
}

/// A program's output for a message shown to the operator: trimmed, at most the last ~1000
/// characters (the end of a script's output usually says what went wrong).
pub(crate) fn brief(text: &str) -> String {
    const MAX: usize = 1000;
    let t = text.trim();
    if t.is_empty() {
        return "no output".into();
    }
    if t.len() <= MAX {
        return t.to_string();
    }
    let mut cut = t.len() - MAX;
    while !t.is_char_boundary(cut) {
        cut += 1;
    }
    format!("…{}", &t[cut..])
}
