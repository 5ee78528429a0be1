//! Parameters of the JP1 agents and their checks.

use std::time::Duration;

use warden_sdk::{AgentError, Context, Param};

use crate::Kind;

/// What to do when an optional AJS3 service check (queueless agent, scheduler) fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Off,
    Degraded,
    Failed,
}

impl Check {
    fn parse(name: &str, v: &str) -> Result<Self, AgentError> {
        match v.trim() {
            "" | "none" | "off" => Ok(Check::Off),
            "degraded" => Ok(Check::Degraded),
            "failed" => Ok(Check::Failed),
            other => Err(AgentError::InvalidConfig(format!("parameter `{name}` must be none, degraded or failed, got `{other}`"))),
        }
    }
}

/// The resolved parameters of one resource.
#[derive(Debug, Clone)]
pub struct Config {
    pub kind: Kind,
    pub lhost: String,
    pub prefix: String,
    pub shared_dir: String,
    /// Extra tries after a status answer of 12.
    pub retries: u32,
    pub retry_interval: Duration,
    /// The `-t` of the status commands, in seconds.
    pub status_timeout: u32,
    /// Budget for the start command plus polling until healthy.
    pub start_wait: Duration,
    /// Budget for the stop command plus waiting for the processes to end (before killall).
    pub stop_wait: Duration,
    pub queueless: Check,
    pub scheduler: Check,
    pub base_resource: Option<String>,
}

pub(crate) fn parameters(kind: Kind) -> Vec<Param> {
    let mut v = vec![
        Param::required("logical_host", "The JP1 logical host name (1-63 bytes, different from every physical host name); passed as `-h` / the argument of every JP1 command"),
        Param::optional("prefix", "/", "Install prefix of JP1: the commands are <prefix>/etc/opt/jp1base/*.cluster, <prefix>/opt/jp1base/bin/... (\"/\" on a real node)"),
        Param::required("shared_dir", "The logical host's shared directory (on the shared disk); start refuses to run while <shared_dir>/jp1base (AJS3: jp1ajs2) is missing"),
        Param::optional("status_retries", "2", "How many times a status command answering 12 (transient) is retried, as Hitachi's monitor scripts do"),
        Param::optional("status_retry_interval", "1000", "Wait between those retries, in milliseconds (or with a unit: 1s, 500ms)"),
        Param::optional("status_timeout", "5", "The -t of the status commands, in seconds (1-32767): a status command that hangs fails after it"),
        Param::optional("start_wait", "170000", "Milliseconds to wait, from the start command until the status is healthy; keep it below the start timeout"),
        Param::optional("stop_wait", "60000", "Milliseconds for the stop command and for its processes to end before the killall command is used"),
    ];
    if kind.is_ajs() {
        v.push(Param::required(
            "base_resource",
            "The JP1/Base resource of the same logical host, in the same group, that this resource depends on (JP1/AJS3 needs JP1/Base running); the node engine checks that it exists in the group and orders it first",
        ));
        v.push(Param::optional(
            "queueless_check",
            "none",
            "Also check `ajsqlstatus -h`: none, degraded (report degraded when the queueless agent service is not active) or failed",
        ));
    }
    if kind == Kind::AjsManager {
        v.push(Param::optional(
            "scheduler_check",
            "none",
            "Also check `jajs_status -h` (a scheduler service crash is invisible to jajs_spmd_status): none, degraded or failed",
        ));
    }
    v
}

/// `1000`, `1000ms`, `1s`, `1.5s` → a duration.
pub fn parse_interval(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.trim().parse().ok().map(Duration::from_millis);
    }
    if let Some(s) = v.strip_suffix('s') {
        return s.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64);
    }
    v.parse().ok().map(Duration::from_millis)
}

fn absolute(name: &str, v: &str) -> Result<String, AgentError> {
    if !v.starts_with('/') || v.split('/').any(|c| c == "..") {
        return Err(AgentError::InvalidConfig(format!("parameter `{name}` must be an absolute path without `..`, got `{v}`")));
    }
    Ok(v.to_string())
}

fn ms(ctx: &Context, name: &str, default: u64) -> Result<Duration, AgentError> {
    match ctx.param(name) {
        None | Some("") => Ok(Duration::from_millis(default)),
        Some(v) => parse_interval(v)
            .ok_or_else(|| AgentError::InvalidConfig(format!("parameter `{name}` must be milliseconds (or 1s, 500ms), got `{v}`"))),
    }
}

impl Config {
    pub fn from_ctx(kind: Kind, ctx: &Context) -> Result<Config, AgentError> {
        let lhost = ctx.require("logical_host")?.to_string();
        if lhost.len() > 63 || lhost.chars().any(|c| c.is_whitespace() || c == '/') || lhost.starts_with('-') {
            return Err(AgentError::InvalidConfig(format!(
                "parameter `logical_host` must be 1-63 bytes without spaces or slashes and must not start with `-`, got `{lhost}`"
            )));
        }
        if lhost == ctx.node {
            return Err(AgentError::InvalidConfig(format!(
                "the logical host name `{lhost}` must differ from the physical host name (node {})",
                ctx.node
            )));
        }
        let status_timeout = ctx.param_u64("status_timeout", 5)?;
        if !(1..=32767).contains(&status_timeout) {
            return Err(AgentError::InvalidConfig(format!("parameter `status_timeout` must be 1-32767 seconds, got {status_timeout}")));
        }
        let retries = ctx.param_u64("status_retries", 2)?;
        if retries > 100 {
            return Err(AgentError::InvalidConfig(format!("parameter `status_retries` must be at most 100, got {retries}")));
        }
        let base_resource = if kind.is_ajs() {
            let b = ctx.require("base_resource")?.trim().to_string();
            if b.is_empty() {
                return Err(AgentError::InvalidConfig("parameter `base_resource` is required".into()));
            }
            Some(b)
        } else {
            None
        };
        Ok(Config {
            kind,
            lhost,
            prefix: absolute("prefix", ctx.param("prefix").filter(|p| !p.is_empty()).unwrap_or("/"))?,
            shared_dir: absolute("shared_dir", ctx.require("shared_dir")?)?,
            retries: retries as u32,
            retry_interval: ms(ctx, "status_retry_interval", 1000)?,
            status_timeout: status_timeout as u32,
            start_wait: ms(ctx, "start_wait", 170_000)?,
            stop_wait: ms(ctx, "stop_wait", 60_000)?,
            queueless: if kind.is_ajs() {
                Check::parse("queueless_check", ctx.param("queueless_check").unwrap_or(""))?
            } else {
                Check::Off
            },
            scheduler: if kind == Kind::AjsManager {
                Check::parse("scheduler_check", ctx.param("scheduler_check").unwrap_or(""))?
            } else {
                Check::Off
            },
            base_resource,
        })
    }

    /// The same configuration with another retry count (0 while polling during a start).
    pub fn retries(&self, n: u32) -> Config {
        Config { retries: n, ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(params: &[(&str, &str)]) -> Context {
        Context {
            resource: "ajs".into(),
            node: "node-a".into(),
            epoch: 1,
            params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn defaults_and_parsing() {
        let c = Config::from_ctx(Kind::Base, &ctx(&[("logical_host", "lh1"), ("shared_dir", "/shared/lh1")])).unwrap();
        assert_eq!((c.prefix.as_str(), c.retries, c.retry_interval, c.status_timeout), ("/", 2, Duration::from_secs(1), 5));
        let c = Config::from_ctx(Kind::Base, &ctx(&[("logical_host", "lh1"), ("shared_dir", "/s"), ("status_retry_interval", "250ms")]))
            .unwrap();
        assert_eq!(c.retry_interval, Duration::from_millis(250));
        assert_eq!(parse_interval("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_interval("x"), None);
    }

    #[test]
    fn bad_parameters_are_invalid_config() {
        let bad = [
            vec![("logical_host", "lh 1"), ("shared_dir", "/s")],
            vec![("logical_host", "node-a"), ("shared_dir", "/s")],
            vec![("logical_host", "lh1"), ("shared_dir", "relative")],
            vec![("logical_host", "lh1"), ("shared_dir", "/s"), ("prefix", "/a/../b")],
            vec![("logical_host", "lh1"), ("shared_dir", "/s"), ("status_timeout", "0")],
            vec![("logical_host", "lh1"), ("shared_dir", "/s"), ("status_retry_interval", "soon")],
        ];
        for b in bad {
            assert!(matches!(Config::from_ctx(Kind::Base, &ctx(&b)), Err(AgentError::InvalidConfig(_))), "{b:?}");
        }
        let no_base = ctx(&[("logical_host", "lh1"), ("shared_dir", "/s")]);
        assert!(matches!(Config::from_ctx(Kind::AjsManager, &no_base), Err(AgentError::InvalidConfig(m)) if m.contains("base_resource")));
        let q = ctx(&[("logical_host", "lh1"), ("shared_dir", "/s"), ("base_resource", "b"), ("queueless_check", "maybe")]);
        assert!(matches!(Config::from_ctx(Kind::AjsAgent, &q), Err(AgentError::InvalidConfig(m)) if m.contains("queueless_check")));
    }
}
