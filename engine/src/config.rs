//! The cluster configuration: a strict TOML file, validated at load with file, line and a hint.
//!
//! Two stages: [`ClusterConfig::parse`] checks structure and references (no I/O beyond reading
//! the file); [`ClusterConfig::check_plugins`] checks resources against their loaded plugins
//! (required parameters from `metadata`, grants the plugin never declared). Every error carries
//! the position of the offending value, so an operator can fix it without guessing.
//!
//! ```toml
//! version = 1
//! [cluster]
//! name = "jp1"
//! [[nodes]]
//! name = "node-a"
//! addresses = ["127.0.0.1:7401"]
//! [[plugins]]
//! name = "jp1-base"
//! path = "target/plugins/jp1-base.wasm"
//! [[resources]]
//! name = "base"
//! plugin = "jp1-base"
//! params = { logical_host = "jp1lh1" }
//! grants = { exec = [{ program = "/etc/opt/jp1base/jbs_start.cluster" }] }
//! [[groups]]
//! name = "jp1"
//! resources = ["vip", "base"]          # in order: each depends on the one before
//! priority = ["node-a", "node-b"]
//! ```

pub mod duration;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use warden_manifest::Capabilities;

pub use duration::HumanDuration;
use warden_core::scheduler::{GroupModel, Millis, Model, NodeModel, ResourceId, ResourceModel};
pub use warden_core::{topo_order, Role, Switchback};

/// One problem in a config file, with its position and a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// All problems found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub version: Spanned<u32>,
    pub cluster: ClusterSection,
    pub nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    #[serde(default)]
    pub resources: Vec<ResourceConfig>,
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
    #[serde(default)]
    pub fencing: Vec<FenceDeviceConfig>,
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// Programs run on events, like Pacemaker's alert agents.
    #[serde(default)]
    pub alerts: Vec<AlertConfig>,
    /// Where this file was read from (not part of the TOML).
    #[serde(skip)]
    pub source: PathBuf,
    #[serde(skip)]
    text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub name: String,
    /// Allow a two-node cluster with neither witness nor fence device. Fail-over then needs an
    /// operator to confirm that the lost node is really down (`warden node confirm-down`).
    #[serde(default)]
    pub manual_confirm: bool,
    /// Members fence themselves: each runs a watchdog (a supervising process) that kills its
    /// resources' processes when its lease runs out, so a lost member's groups move once its
    /// lease has provably run out, without a fence device. The lease is then 4.5 s (else 10 s;
    /// shorter with a `lost_after` under 1 s: `lease::watchdog_lease`).
    #[serde(default)]
    pub watchdog_fencing: bool,
    /// A hardware watchdog (`/dev/watchdog`) the member's watchdog holds as well: petted only
    /// while the lease lasts, so a member whose lease runs out is reset even if its kernel hangs.
    /// Needs `watchdog_fencing`. Hardware only: `softdog` is not safe.
    #[serde(default)]
    pub watchdog_device: Option<Spanned<PathBuf>>,
    /// How long a member may be silent on every path before the leader counts it lost (and
    /// fences it, with a fence device): Corosync's `token`. Shorter fails over faster; too short
    /// for the machines' load fences healthy members. Default 1 s; 500 ms to 30 s.
    #[serde(default)]
    pub lost_after: Option<Spanned<HumanDuration>>,
}

impl ClusterSection {
    /// The default [`ClusterSection::lost_after`].
    pub const LOST_AFTER: Duration = Duration::from_secs(1);
    /// The shortest [`ClusterSection::lost_after`]: a few pings and hellos must fit in it.
    pub const LOST_AFTER_MIN: Duration = Duration::from_millis(500);
    /// The longest [`ClusterSection::lost_after`].
    pub const LOST_AFTER_MAX: Duration = Duration::from_secs(30);

    /// [`ClusterSection::lost_after`], or its default.
    pub fn lost_after(&self) -> Duration {
        self.lost_after.as_ref().map_or(Self::LOST_AFTER, |d| d.get_ref().get())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: Spanned<String>,
    #[serde(default)]
    pub role: Role,
    /// One `host:port` per network path; heartbeats travel over all of them.
    #[serde(default)]
    pub addresses: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub name: Spanned<String>,
    /// Component path, relative to the config file's directory unless absolute.
    pub path: Spanned<PathBuf>,
    /// Public key file; when set, the plugin must be signed by it.
    #[serde(default)]
    pub signer: Option<Spanned<PathBuf>>,
}

/// Per-action timeouts; unset ones come from the agent's metadata.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    pub start: Option<HumanDuration>,
    pub stop: Option<HumanDuration>,
    pub monitor: Option<HumanDuration>,
    pub recover: Option<HumanDuration>,
    pub validate: Option<HumanDuration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    pub name: Spanned<String>,
    pub plugin: Spanned<String>,
    #[serde(default = "spanned_default")]
    pub params: Spanned<BTreeMap<String, String>>,
    #[serde(default = "spanned_default")]
    pub grants: Spanned<Capabilities>,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Default: the agent's own monitor interval.
    pub monitor_interval: Option<HumanDuration>,
    /// Monitored and reported, never started, stopped or recovered.
    #[serde(default)]
    pub unmanaged: bool,
    /// Linear-memory cap for the agent instance, in MiB (default 256).
    pub memory_mib: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: Spanned<String>,
    /// Members. Without `depends_on`, each depends on the one before it (started in this order,
    /// stopped in reverse).
    pub resources: Vec<Spanned<String>>,
    /// Explicit dependency edges: resource → the resources it needs running first.
    pub depends_on: Option<Spanned<BTreeMap<String, Vec<String>>>>,
    /// Nodes in order of preference (lower index wins). Default: all nodes in file order.
    #[serde(default)]
    pub priority: Vec<Spanned<String>>,
    #[serde(default)]
    pub switchback: Switchback,
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    #[serde(default = "default_restart_window")]
    pub restart_window: HumanDuration,
    /// After this long a failure no longer keeps the group off a node (Pacemaker's
    /// `failure-timeout`); default: until `warden resource cleanup` or `group start`.
    #[serde(default)]
    pub failure_timeout: Option<HumanDuration>,
    #[serde(default = "default_monitor_timeouts_to_fail")]
    pub monitor_timeouts_to_fail: u32,
    /// Start the group when the cluster starts (default true).
    #[serde(default = "default_true")]
    pub autostart: bool,
}

/// A missing optional table: empty, positioned nowhere (errors then point at the owner's name).
fn spanned_default<T: Default>() -> Spanned<T> {
    Spanned::new(0..0, T::default())
}

fn default_max_restarts() -> u32 {
    3
}
fn default_restart_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_monitor_timeouts_to_fail() -> u32 {
    3
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceDeviceConfig {
    pub name: Spanned<String>,
    pub plugin: Spanned<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub grants: Capabilities,
    /// Nodes this device can fence (default: all).
    #[serde(default)]
    pub nodes: Vec<Spanned<String>>,
}

/// Event kinds an alert can select (the `kind` of the event history).
pub const ALERT_KINDS: &[&str] = &["action", "monitor", "decision", "operator", "node", "watch"];

/// `[[alerts]]`: a program the node runs for each event of the history it selects (like a
/// Pacemaker alert agent), with the event's fields in its environment. The operator names the
/// program here, which is its grant: it runs outside any sandbox, as the daemon's user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// A label for logs and metrics (default: the program's file name).
    pub name: Option<String>,
    /// Absolute path of the program.
    pub program: Spanned<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Which kinds of event (`action`, `monitor`, `decision`, `operator`, `node`, `watch`);
    /// default all.
    #[serde(default)]
    pub kinds: Vec<Spanned<String>>,
    /// Only events about these resources, groups or nodes (default all).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Kill the program (and its process group) after this long (default 30 s).
    pub timeout: Option<HumanDuration>,
}

impl AlertConfig {
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            Path::new(self.program.get_ref())
                .file_name()
                .map_or_else(|| self.program.get_ref().clone(), |f| f.to_string_lossy().into_owned())
        })
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Persistent state (default /var/lib/warden/<cluster>).
    pub state_dir: Option<PathBuf>,
    /// Control socket for the CLI (default /run/warden/warden.sock).
    pub control_socket: Option<PathBuf>,
    /// Prometheus metrics on this loopback address, e.g. "127.0.0.1:9464" (default: off).
    pub metrics_addr: Option<Spanned<String>>,
    /// Precompiled-plugin cache (default <state_dir>/cache).
    pub cache_dir: Option<PathBuf>,
    /// A Unix group whose members may read `status` and `events` (read-only) through the
    /// control socket; operator commands stay root-only. Default: root only.
    pub status_group: Option<String>,
    /// A cluster member's credentials: the cluster CA and this node's certificate and key, as
    /// `warden cluster init` writes them (default /etc/warden/pki). Relative to the config file.
    pub pki_dir: Option<PathBuf>,
}

/// Line and column (1-based) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, col)
}

impl ClusterConfig {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.into(),
                line: 0,
                column: 0,
                message: format!("cannot read the config file: {e}"),
                hint: None,
            }])
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigErrors> {
        let mut cfg: ClusterConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| position(text, s.start));
            let message = e.message().trim().to_string();
            let hint = if message.contains("unknown field") {
                Some("check the spelling against the documented keys (docs/configuration.md)".into())
            } else {
                None
            };
            ConfigErrors(vec![ConfigError { file: path.into(), line, column, message, hint }])
        })?;
        cfg.source = path.to_path_buf();
        cfg.text = text.to_string();
        let errors = cfg.validate();
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// An error at the position of a spanned value.
    pub fn error_at(&self, span: std::ops::Range<usize>, message: impl Into<String>, hint: Option<String>) -> ConfigError {
        let (line, column) = position(&self.text, span.start);
        ConfigError { file: self.source.clone(), line, column, message: message.into(), hint }
    }

    fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let mut err =
            |span: std::ops::Range<usize>, msg: String, hint: Option<&str>| errs.push(self.error_at(span, msg, hint.map(Into::into)));

        if *self.version.get_ref() != 1 {
            err(
                self.version.span(),
                format!("config version {} is not supported", self.version.get_ref()),
                Some("this Warden reads `version = 1`"),
            );
        }

        // Nodes.
        let mut node_names = BTreeSet::new();
        for n in &self.nodes {
            if !node_names.insert(n.name.get_ref().as_str()) {
                err(n.name.span(), format!("node `{}` is defined twice", n.name.get_ref()), Some("node names must be unique"));
            }
            for a in &n.addresses {
                let ok = a.get_ref().rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    err(a.span(), format!("address `{}` is not HOST:PORT", a.get_ref()), Some("for example \"10.0.0.1:7400\""));
                }
            }
        }
        let runnable: Vec<&NodeConfig> = self.nodes.iter().filter(|n| n.role == Role::Node).collect();
        if runnable.is_empty() {
            err(
                0..0,
                "the cluster has no node that can run resources".into(),
                Some("add a [[nodes]] entry with role = \"node\" (the default)"),
            );
        }
        let witnesses = self.nodes.iter().filter(|n| n.role == Role::Witness).count();
        if runnable.len() == 2 && witnesses == 0 && self.fencing.is_empty() && !self.cluster.manual_confirm {
            err(
                runnable[1].name.span(),
                "a two-node cluster with neither a witness nor a fence device cannot tell a dead peer from a lost network (split brain)".into(),
                Some("add a third [[nodes]] entry with role = \"witness\", or a [[fencing]] device, or set manual_confirm = true under [cluster] to confirm fail-overs by hand"),
            );
        }

        if let Some(d) = &self.cluster.lost_after {
            if !(ClusterSection::LOST_AFTER_MIN..=ClusterSection::LOST_AFTER_MAX).contains(&d.get_ref().get()) {
                err(
                    d.span(),
                    format!("lost_after = {:?} is out of range", d.get_ref().get()),
                    Some("between \"500ms\" and \"30s\" (default \"1s\"); several heartbeats must fit in it"),
                );
            }
        }
        if let Some(d) = &self.cluster.watchdog_device {
            if !self.cluster.watchdog_fencing {
                err(
                    d.span(),
                    "watchdog_device needs watchdog_fencing = true".into(),
                    Some("the device is petted while the member's lease lasts; without watchdog fencing there is no such lease"),
                );
            } else if !d.get_ref().is_absolute() {
                err(
                    d.span(),
                    format!("watchdog_device `{}` is not an absolute path", d.get_ref().display()),
                    Some("for example \"/dev/watchdog\""),
                );
            }
        }

        // Plugins.
        let mut plugin_names = BTreeSet::new();
        for p in &self.plugins {
            if !plugin_names.insert(p.name.get_ref().as_str()) {
                err(p.name.span(), format!("plugin `{}` is defined twice", p.name.get_ref()), None);
            }
        }
        let known_plugins = || plugin_names.iter().copied().collect::<Vec<_>>().join(", ");

        // Resources.
        let mut resource_names = BTreeSet::new();
        for r in &self.resources {
            if !resource_names.insert(r.name.get_ref().as_str()) {
                err(r.name.span(), format!("resource `{}` is defined twice", r.name.get_ref()), Some("resource names must be unique"));
            }
            if !plugin_names.contains(r.plugin.get_ref().as_str()) {
                err(
                    r.plugin.span(),
                    format!("resource `{}` uses unknown plugin `{}`", r.name.get_ref(), r.plugin.get_ref()),
                    Some(&format!(
                        "declare it in a [[plugins]] entry (known plugins: {})",
                        if plugin_names.is_empty() { "none".into() } else { known_plugins() }
                    )),
                );
            }
        }
        for f in &self.fencing {
            if !plugin_names.contains(f.plugin.get_ref().as_str()) {
                err(
                    f.plugin.span(),
                    format!("fence device `{}` uses unknown plugin `{}`", f.name.get_ref(), f.plugin.get_ref()),
                    Some("declare it in a [[plugins]] entry"),
                );
            }
            for n in &f.nodes {
                if !node_names.contains(n.get_ref().as_str()) {
                    err(n.span(), format!("fence device `{}` names unknown node `{}`", f.name.get_ref(), n.get_ref()), None);
                }
            }
        }

        // Groups.
        let mut owner_group: BTreeMap<&str, &str> = BTreeMap::new();
        let mut group_names = BTreeSet::new();
        for g in &self.groups {
            let gname = g.name.get_ref().as_str();
            if !group_names.insert(gname) {
                err(g.name.span(), format!("group `{gname}` is defined twice"), None);
            }
            if g.resources.is_empty() {
                err(g.name.span(), format!("group `{gname}` has no resources"), Some("list its resources in `resources = [...]`"));
            }
            let members: BTreeSet<&str> = g.resources.iter().map(|r| r.get_ref().as_str()).collect();
            for r in &g.resources {
                let rname = r.get_ref().as_str();
                if !resource_names.contains(rname) {
                    err(r.span(), format!("group `{gname}` lists unknown resource `{rname}`"), Some("define it in a [[resources]] entry"));
                } else if let Some(other) = owner_group.insert(rname, gname) {
                    err(
                        r.span(),
                        format!("resource `{rname}` is in two groups (`{other}` and `{gname}`)"),
                        Some("a resource belongs to exactly one group; define a second resource if you need two"),
                    );
                }
            }
            for n in &g.priority {
                match self.nodes.iter().find(|x| x.name.get_ref() == n.get_ref()) {
                    None => err(n.span(), format!("group `{gname}` lists unknown node `{}` in its priority", n.get_ref()), None),
                    Some(x) if x.role == Role::Witness => {
                        err(n.span(), format!("group `{gname}` lists witness `{}`: a witness never runs resources", n.get_ref()), None)
                    }
                    _ => {}
                }
            }
            if let Some(deps) = &g.depends_on {
                for (r, needs) in deps.get_ref() {
                    for d in std::iter::once(r).chain(needs) {
                        if !members.contains(d.as_str()) {
                            err(
                                deps.span(),
                                format!("group `{gname}`: depends_on names `{d}`, which is not in the group"),
                                Some("dependencies must be between members of the same group"),
                            );
                        }
                    }
                }
                if let Err(cycle) = topo_order(&g.resources.iter().map(|r| r.get_ref().clone()).collect::<Vec<_>>(), deps.get_ref()) {
                    err(
                        deps.span(),
                        format!("group `{gname}` has a dependency cycle: {}", cycle.join(" -> ")),
                        Some("remove one of the edges so the resources can be started in some order"),
                    );
                }
            }
        }
        for r in &self.resources {
            let t = &r.timeouts;
            for (what, d) in
                [("start", t.start), ("stop", t.stop), ("monitor", t.monitor), ("recover", t.recover), ("validate", t.validate)]
            {
                if d.is_some_and(|d| d.get() < Duration::from_millis(100)) {
                    err(r.name.span(), format!("resource `{}`: the {what} timeout must be at least 100ms", r.name.get_ref()), None);
                }
            }
            if r.monitor_interval.is_some_and(|d| d.get() < Duration::from_millis(100)) {
                err(r.name.span(), format!("resource `{}`: monitor_interval must be at least 100ms", r.name.get_ref()), None);
            }
            if r.memory_mib.is_some_and(|m| !(16..=65_536).contains(&m)) {
                err(r.name.span(), format!("resource `{}`: memory_mib must be between 16 and 65536", r.name.get_ref()), None);
            }
            if !owner_group.contains_key(r.name.get_ref().as_str()) {
                err(
                    r.name.span(),
                    format!("resource `{}` is not in any group", r.name.get_ref()),
                    Some("add it to a [[groups]] entry's `resources`"),
                );
            }
        }
        if let Some(m) = &self.daemon.metrics_addr {
            match m.get_ref().parse::<std::net::SocketAddr>() {
                Ok(a) if a.ip().is_loopback() => {}
                Ok(_) => err(
                    m.span(),
                    format!("metrics_addr `{}` is not a loopback address", m.get_ref()),
                    Some("metrics are served on loopback only, e.g. \"127.0.0.1:9464\""),
                ),
                Err(_) => err(m.span(), format!("metrics_addr `{}` is not IP:PORT", m.get_ref()), None),
            }
        }
        for a in &self.alerts {
            if !a.program.get_ref().starts_with('/') {
                err(a.program.span(), format!("alert program `{}` is not an absolute path", a.program.get_ref()), None);
            }
            for k in &a.kinds {
                if !ALERT_KINDS.contains(&k.get_ref().as_str()) {
                    err(k.span(), format!("unknown event kind `{}`", k.get_ref()), Some(&format!("one of {}", ALERT_KINDS.join(", "))));
                }
            }
        }
        errs
    }

    /// The config file's text as it was loaded.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Resolve a path from the config relative to the config file's directory.
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.source.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name.get_ref() == name)
    }

    pub fn resource(&self, name: &str) -> Option<&ResourceConfig> {
        self.resources.iter().find(|r| r.name.get_ref() == name)
    }

    /// The dependency edges of a group: resource → what it needs first.
    pub fn group_edges(g: &GroupConfig) -> BTreeMap<String, Vec<String>> {
        match &g.depends_on {
            Some(d) => d.get_ref().clone(),
            None => g.resources.windows(2).map(|w| (w[1].get_ref().clone(), vec![w[0].get_ref().clone()])).collect(),
        }
    }

    /// Stage two: check resources against their loaded plugins.
    pub fn check_plugins(&self, plugins: &BTreeMap<String, std::sync::Arc<crate::plugin::Plugin>>) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        for r in &self.resources {
            let Some(p) = plugins.get(r.plugin.get_ref()) else { continue };
            if p.world() != warden_manifest::World::ResourceAgent {
                errs.push(self.error_at(
                    r.plugin.span(),
                    format!("resource `{}`: plugin `{}` is a fence agent, not a resource agent", r.name.get_ref(), r.plugin.get_ref()),
                    None,
                ));
                continue;
            }
            let params_span = if r.params.span().is_empty() { r.name.span() } else { r.params.span() };
            if let Err(e) = p.metadata.resolve_params(r.params.get_ref()) {
                let hint = p
                    .metadata
                    .parameters
                    .iter()
                    .filter(|x| x.required)
                    .map(|x| format!("{} ({})", x.name, x.description))
                    .collect::<Vec<_>>();
                errs.push(self.error_at(
                    params_span,
                    format!("resource `{}` ({}): {e}", r.name.get_ref(), r.plugin.get_ref()),
                    Some(format!(
                        "`warden plugin inspect` lists the parameters; required: {}",
                        if hint.is_empty() { "none".into() } else { hint.join(", ") }
                    )),
                ));
            }
            let undeclared = r.grants.get_ref().not_covered_by(&p.manifest.capabilities);
            if !undeclared.is_empty() {
                errs.push(self.error_at(
                    r.grants.span(),
                    format!("resource `{}` grants what plugin `{}` never requested: {}", r.name.get_ref(), r.plugin.get_ref(), undeclared.join("; ")),
                    Some("remove the grant, or check that the resource uses the right plugin (`warden plugin inspect` lists what it requests)".into()),
                ));
            }
        }
        // A parameter named `*_resource` names another resource this one needs (the AJS3 agents'
        // `base_resource`): it must be in the same group and come before it in the dependencies.
        for g in &self.groups {
            let edges = Self::group_edges(g);
            let needs = |from: &str, to: &str| {
                let mut todo = vec![from.to_string()];
                let mut seen = BTreeSet::new();
                while let Some(x) = todo.pop() {
                    for d in edges.get(&x).into_iter().flatten() {
                        if d == to {
                            return true;
                        }
                        if seen.insert(d.clone()) {
                            todo.push(d.clone());
                        }
                    }
                }
                false
            };
            for member in &g.resources {
                let Some(r) = self.resource(member.get_ref()) else { continue };
                for (k, v) in r.params.get_ref().iter().filter(|(k, _)| k.ends_with("_resource")) {
                    let span = if r.params.span().is_empty() { r.name.span() } else { r.params.span() };
                    if !g.resources.iter().any(|m| m.get_ref() == v) {
                        errs.push(self.error_at(
                            span,
                            format!("resource `{}`: {k} = `{v}` is not a resource of group `{}`", r.name.get_ref(), g.name.get_ref()),
                            Some(format!("put `{v}` in the same group, before `{}`", r.name.get_ref())),
                        ));
                    } else if !needs(r.name.get_ref(), v) {
                        errs.push(self.error_at(
                            span,
                            format!(
                                "resource `{}` needs `{v}` ({k}) but does not depend on it in group `{}`",
                                r.name.get_ref(),
                                g.name.get_ref()
                            ),
                            Some(format!("list `{v}` before `{}` in `resources`, or add it to depends_on", r.name.get_ref())),
                        ));
                    }
                }
            }
        }
        for f in &self.fencing {
            let Some(p) = plugins.get(f.plugin.get_ref()) else { continue };
            let (name, plugin) = (f.name.get_ref(), f.plugin.get_ref());
            if p.world() != warden_manifest::World::FenceAgent {
                errs.push(self.error_at(f.plugin.span(), format!("fence device `{name}`: plugin `{plugin}` is not a fence agent"), None));
                continue;
            }
            if let Err(e) = p.metadata.resolve_params(&f.params) {
                errs.push(self.error_at(
                    f.name.span(),
                    format!("fence device `{name}` ({plugin}): {e}"),
                    Some("`warden plugin inspect` lists the parameters".into()),
                ));
            }
            let undeclared = f.grants.not_covered_by(&p.manifest.capabilities);
            if !undeclared.is_empty() {
                errs.push(self.error_at(
                    f.name.span(),
                    format!("fence device `{name}` grants what plugin `{plugin}` never requested: {}", undeclared.join("; ")),
                    Some("remove the grant, or check that the device uses the right plugin".into()),
                ));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

impl ClusterConfig {
    /// The static model the decision core works on.
    pub fn model(&self) -> Model {
        let cfg = self;
        let fence_all = cfg.fencing.iter().any(|f| f.nodes.is_empty());
        let fenceable: BTreeSet<&str> = cfg.fencing.iter().flat_map(|f| f.nodes.iter().map(|n| n.get_ref().as_str())).collect();
        let nodes = cfg
            .nodes
            .iter()
            .map(|n| NodeModel {
                name: n.name.get_ref().into(),
                role: n.role,
                fenceable: fence_all || fenceable.contains(n.name.get_ref().as_str()),
            })
            .collect();
        let mut groups = BTreeMap::new();
        let mut resources = BTreeMap::new();
        for g in &cfg.groups {
            let names: Vec<ResourceId> = g.resources.iter().map(|r| r.get_ref().into()).collect();
            let deps: BTreeMap<ResourceId, Vec<ResourceId>> = ClusterConfig::group_edges(g)
                .into_iter()
                .map(|(r, ds)| (r.into(), ds.into_iter().map(ResourceId::from).collect()))
                .collect();
            let members = topo_order(&names, &deps).expect("validated: no cycles");
            let mut dependents: BTreeMap<ResourceId, Vec<ResourceId>> = BTreeMap::new();
            for (r, ds) in &deps {
                for d in ds {
                    dependents.entry(d.clone()).or_default().push(r.clone());
                }
            }
            let priority = if g.priority.is_empty() {
                cfg.nodes.iter().filter(|n| n.role == Role::Node).map(|n| n.name.get_ref().into()).collect()
            } else {
                g.priority.iter().map(|p| p.get_ref().into()).collect()
            };
            for r in &names {
                let unmanaged = cfg.resource(r).is_some_and(|rc| rc.unmanaged);
                resources
                    .insert(r.clone(), ResourceModel { name: r.clone(), group: g.name.get_ref().into(), unmanaged, local_recovery: true });
            }
            groups.insert(
                g.name.get_ref().into(),
                std::sync::Arc::new(GroupModel {
                    name: g.name.get_ref().into(),
                    members,
                    deps,
                    dependents,
                    priority,
                    switchback: g.switchback,
                    max_restarts: g.max_restarts,
                    restart_window: g.restart_window.get().as_millis() as Millis,
                    failure_timeout: g.failure_timeout.map(|d| d.get().as_millis() as Millis),
                    monitor_timeouts_to_fail: g.monitor_timeouts_to_fail.max(1),
                    autostart: g.autostart,
                }),
            );
        }
        Model { nodes, groups, resources }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_is_one_based() {
        assert_eq!(position("a\nbc\nd", 3), (2, 2));
        assert_eq!(position("abc", 0), (1, 1));
    }
}
