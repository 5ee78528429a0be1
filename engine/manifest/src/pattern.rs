//! Patterns used by declarations and grants, and how requests are matched against them.
//!
//! * **Paths** (`read`, exec `program`) are absolute and compared component by component. In a
//!   component, `*` matches any run of characters (never a `/`); a whole component `**` matches
//!   zero or more components. A trailing `/` means "this directory and everything below it"
//!   (`/srv/app/` is `/srv/app/**`). Patterns containing `..` are refused when parsed; requests
//!   containing `..` are refused by the host before matching, and the host also matches the path
//!   with symlinks resolved, so a link cannot lead out of a granted tree.
//! * **Arguments** (exec `args`) are a list matched element by element: `*` inside an element
//!   matches any characters (including `/`), an element that is exactly `**` matches zero or more
//!   arguments. No `args` at all means any arguments.
//!   An argument that starts with `-` is matched only by a pattern element that starts with `-`
//!   (so `*` never admits an option or a negative number; `**` still means any arguments).
//! * **Connect** targets are `host:port`; the host may use `*`, the port is a number or `*`.
//!   Address patterns (`127.0.0.*`, `[::1]`) match IP literals only, name patterns names only.
//! * **Environment** names (exec `env`) are names with `*` for any run of characters.
//!
//! Every matcher runs in time linear in the pattern times the request (no backtracking over
//! `**`), and requests longer than [`MAX_REQUEST_LEN`] never match.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("path pattern `{0}` must be absolute (start with `/`)")]
    NotAbsolute(String),
    #[error("path pattern `{0}` must not contain `..`")]
    DotDot(String),
    #[error("connect pattern `{0}` must be HOST:PORT, with PORT a number or `*`")]
    BadConnect(String),
    #[error("exec pattern `{0}` must be PROGRAM or PROGRAM:ARG-PATTERNS, with an absolute PROGRAM")]
    BadExec(String),
    #[error("environment pattern `{0}` must be a variable name made of letters, digits, `_` and `*`")]
    BadEnv(String),
}

/// Requests longer than this never match (the host refuses them before asking): bounds the work
/// of one match whatever a guest sends.
pub const MAX_REQUEST_LEN: usize = 4096;

/// Glob match of one string: `*` matches any run of bytes. Iterative, remembering only the last
/// star: O(len(pattern) × len(text)) at worst, never exponential.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Match a list of items against a list of patterns where an item `**` matches zero or more
/// items and other items are matched by `one`.
///
/// Dynamic programming over "which prefixes of `items` the patterns so far can consume": each
/// pattern is applied once to each item, so the cost is O(patterns × items) calls of `one`
/// whatever the number of `**` (a backtracking matcher is exponential in them).
fn match_seq<T: AsRef<str>>(pats: &[String], items: &[T], one: &dyn Fn(&str, &str) -> bool) -> bool {
    let n = items.len();
    // reach[j]: the patterns seen so far can match exactly items[..j].
    let mut reach = vec![false; n + 1];
    reach[0] = true;
    for p in pats {
        if p == "**" {
            let mut seen = false;
            for r in reach.iter_mut() {
                seen |= *r;
                *r = seen;
            }
        } else {
            let mut next = vec![false; n + 1];
            for j in 0..n {
                if reach[j] && one(p, items[j].as_ref()) {
                    next[j + 1] = true;
                }
            }
            reach = next;
        }
        if !reach.contains(&true) {
            return false;
        }
    }
    reach[n]
}

/// One argument against one argument pattern. An argument that starts with `-` (an option, or a
/// negative number such as the `-1` of `kill -9 -1`, "every process") is matched only by a
/// pattern that itself starts with `-`: a `*` meant for a value or a pid never admits one.
fn arg_matches(pattern: &str, arg: &str) -> bool {
    if arg.starts_with('-') && !pattern.starts_with('-') {
        return false;
    }
    glob(pattern, arg)
}

/// An absolute path pattern (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathPattern {
    text: String,
    components: Vec<String>,
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if !text.starts_with('/') {
            return Err(PatternError::NotAbsolute(text.into()));
        }
        let mut components: Vec<String> = text.split('/').filter(|c| !c.is_empty()).map(str::to_owned).collect();
        if components.iter().any(|c| c == "..") {
            return Err(PatternError::DotDot(text.into()));
        }
        components.retain(|c| c != ".");
        if text.ends_with('/') && components.last().is_none_or(|c| c != "**") {
            components.push("**".into());
        }
        Ok(Self { text: text.into(), components })
    }

    /// Does the pattern cover `path`? `path` must already be absolute and free of `..`; callers
    /// (the host) refuse anything else before asking.
    pub fn matches(&self, path: &str) -> bool {
        if path.len() > MAX_REQUEST_LEN || !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return false;
        }
        let items: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
        match_seq(&self.components, &items, &|p, i| glob(p, i))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl TryFrom<String> for PathPattern {
    type Error = PatternError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<PathPattern> for String {
    fn from(p: PathPattern) -> String {
        p.text
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Patterns for a program's arguments (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ArgsPattern(pub Vec<String>);

impl ArgsPattern {
    pub fn matches(&self, args: &[String]) -> bool {
        match_seq(&self.0, args, &arg_matches)
    }
}

/// May run `program` (a path pattern) with arguments matching `args` (any, when absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRule {
    pub program: PathPattern,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<ArgsPattern>,
}

impl ExecRule {
    /// Parse the command-line form `PROGRAM[:ARG-PATTERNS]`, where the argument patterns are
    /// separated by spaces: `/usr/sbin/ip:addr ** dev eth0`.
    pub fn parse_cli(text: &str) -> Result<Self, PatternError> {
        let (program, args) = match text.split_once(':') {
            Some((p, a)) => (p, Some(ArgsPattern(a.split_whitespace().map(str::to_owned).collect()))),
            None => (text, None),
        };
        let program = PathPattern::parse(program).map_err(|_| PatternError::BadExec(text.into()))?;
        Ok(Self { program, args })
    }

    pub fn matches(&self, program: &str, args: &[String]) -> bool {
        self.program.matches(program) && self.args.as_ref().is_none_or(|a| a.matches(args))
    }

    /// Does this (declared) rule allow everything `grant` allows? Wildcards in the grant are
    /// treated as literal text, which the declaration's own wildcards still match.
    pub fn covers(&self, grant: &ExecRule) -> bool {
        if !self.program.matches(grant.program.as_str()) && self.program.as_str() != grant.program.as_str() {
            return false;
        }
        match (&self.args, &grant.args) {
            (None, _) => true,
            (Some(d), None) => d.0 == ["**"],
            (Some(d), Some(g)) => d == g || match_seq(&d.0, &g.0, &|p, a| glob(p, a)),
        }
    }
}

impl fmt::Display for ExecRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.args {
            None => write!(f, "{} (any arguments)", self.program),
            Some(a) => write!(f, "{}:{}", self.program, a.0.join(" ")),
        }
    }
}

/// `host:port` with `*` allowed in the host and as the whole port.
///
/// A host pattern is an **address** pattern when it is made of digits, dots and `*` (IPv4) or
/// contains `:` (IPv6); it then matches only IP literals, never a name that merely starts like
/// one (`127.0.0.*` must not match `127.0.0.9.attacker.example`). Any other host pattern is a
/// **name** pattern and matches only names. A host of just `*` matches both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectPattern {
    host: String,
    port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKind {
    Any,
    Address,
    Name,
}

fn host_kind(host: &str) -> HostKind {
    if host == "*" {
        HostKind::Any
    } else if host.contains(':') || (host.contains('.') && host.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'*')) {
        HostKind::Address
    } else {
        HostKind::Name
    }
}

impl ConnectPattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let bad = || PatternError::BadConnect(text.into());
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let port = match port {
            "*" => None,
            p => Some(p.parse::<u16>().map_err(|_| bad())?),
        };
        Ok(Self { host: host.to_ascii_lowercase(), port })
    }

    /// Does the pattern allow `host` as the guest wrote it? An IP literal is matched by address
    /// patterns (in its canonical form), a name by name patterns.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if host.len() > MAX_REQUEST_LEN {
            return false;
        }
        match host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
            Ok(ip) => self.matches_addr(ip, port),
            Err(_) => {
                matches!(host_kind(&self.host), HostKind::Any | HostKind::Name)
                    && glob(&self.host, &host.to_ascii_lowercase())
                    && self.port.is_none_or(|p| p == port)
            }
        }
    }

    /// Does the pattern allow connecting to this address (a literal, or what a name resolved to)?
    pub fn matches_addr(&self, ip: std::net::IpAddr, port: u16) -> bool {
        let kind_ok = match host_kind(&self.host) {
            HostKind::Any => true,
            HostKind::Address => glob(&self.host, &ip.to_string()),
            HostKind::Name => false,
        };
        kind_ok && self.port.is_none_or(|p| p == port)
    }

    pub fn covers(&self, grant: &ConnectPattern) -> bool {
        let kinds = match (host_kind(&self.host), host_kind(&grant.host)) {
            (HostKind::Any, _) => true,
            (d, g) => d == g,
        };
        kinds && glob(&self.host, &grant.host) && (self.port.is_none() || self.port == grant.port)
    }
}

impl TryFrom<String> for ConnectPattern {
    type Error = PatternError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ConnectPattern> for String {
    fn from(p: ConnectPattern) -> String {
        p.to_string()
    }
}

impl fmt::Display for ConnectPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match self.port {
            Some(p) => write!(f, "{host}:{p}"),
            None => write!(f, "{host}:*"),
        }
    }
}

/// An environment variable name a plugin may set for a program it runs: letters, digits, `_`,
/// and `*` for any run of those (`OCF_*`, `LK_*`, `LANG`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnvPattern(String);

impl EnvPattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'*') {
            return Err(PatternError::BadEnv(text.into()));
        }
        Ok(Self(text.into()))
    }

    pub fn matches(&self, name: &str) -> bool {
        name.len() <= MAX_REQUEST_LEN && glob(&self.0, name)
    }

    pub fn covers(&self, grant: &EnvPattern) -> bool {
        glob(&self.0, &grant.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EnvPattern {
    type Error = PatternError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<EnvPattern> for String {
    fn from(p: EnvPattern) -> String {
        p.0
    }
}

impl fmt::Display for EnvPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PathPattern {
    /// Does this (declared) pattern cover the (granted) pattern `grant`?
    pub fn covers(&self, grant: &PathPattern) -> bool {
        self.text == grant.text || match_seq(&self.components, &grant.components, &|p, i| glob(p, i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> PathPattern {
        PathPattern::parse(p).unwrap()
    }
    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exact_path_matches_only_itself() {
        let p = path("/etc/opt/jp1base/jbs_start.cluster");
        assert!(p.matches("/etc/opt/jp1base/jbs_start.cluster"));
        assert!(!p.matches("/etc/opt/jp1base/jbs_start.clusterX"));
        assert!(!p.matches("/etc/opt/jp1base"));
    }

    #[test]
    fn star_stays_within_one_component() {
        let p = path("/proc/*/stat");
        assert!(p.matches("/proc/123/stat"));
        assert!(!p.matches("/proc/1/task/1/stat"));
        assert!(path("/var/run/*.pid").matches("/var/run/app.pid"));
        assert!(!path("/var/run/*.pid").matches("/var/run/sub/app.pid"));
    }

    #[test]
    fn double_star_spans_any_depth_including_none() {
        let p = path("/srv/app/**");
        assert!(p.matches("/srv/app"));
        assert!(p.matches("/srv/app/a/b/c"));
        assert!(!p.matches("/srv/application"));
        let q = path("/**/opt/jp1base/bin/jevstat");
        assert!(q.matches("/opt/jp1base/bin/jevstat"));
        assert!(q.matches("/tmp/sim/opt/jp1base/bin/jevstat"));
        assert!(!q.matches("/tmp/sim/opt/jp1base/bin/other"));
    }

    #[test]
    fn trailing_slash_is_a_directory_prefix() {
        let p = path("/srv/app/");
        assert!(p.matches("/srv/app/data/file"));
        assert!(p.matches("/srv/app"));
        assert!(!p.matches("/srv/apps/x"));
    }

    #[test]
    fn dot_dot_is_refused_in_patterns_and_requests() {
        assert_eq!(PathPattern::parse("/srv/../etc"), Err(PatternError::DotDot("/srv/../etc".into())));
        assert!(matches!(PathPattern::parse("srv/app"), Err(PatternError::NotAbsolute(_))));
        let p = path("/srv/app/**");
        assert!(!p.matches("/srv/app/../../etc/shadow"));
        assert!(!p.matches("srv/app/x"));
    }

    #[test]
    fn args_match_element_by_element() {
        let rule = ExecRule::parse_cli("/opt/jp1base/bin/jbs_spmd_status:-h * **").unwrap();
        assert!(rule.matches("/opt/jp1base/bin/jbs_spmd_status", &args(&["-h", "lh1"])));
        assert!(rule.matches("/opt/jp1base/bin/jbs_spmd_status", &args(&["-h", "lh1", "-t", "5"])));
        assert!(!rule.matches("/opt/jp1base/bin/jbs_spmd_status", &args(&["-x", "lh1"])));
        assert!(!rule.matches("/opt/jp1base/bin/jbs_spmd_status", &args(&["-h"])));
        assert!(!rule.matches("/opt/jp1base/bin/other", &args(&["-h", "lh1"])));
    }

    #[test]
    fn star_inside_an_argument_matches_slashes() {
        let rule = ExecRule::parse_cli("/bin/cat:/run/app/*.pid").unwrap();
        assert!(rule.matches("/bin/cat", &args(&["/run/app/x.pid"])));
        assert!(!rule.matches("/bin/cat", &args(&["/run/app/x.pid", "/etc/shadow"])));
    }

    #[test]
    fn empty_arg_pattern_means_no_arguments_and_absent_means_any() {
        let none = ExecRule::parse_cli("/usr/bin/true:").unwrap();
        assert!(none.matches("/usr/bin/true", &[]));
        assert!(!none.matches("/usr/bin/true", &args(&["x"])));
        let any = ExecRule::parse_cli("/usr/bin/true").unwrap();
        assert!(any.matches("/usr/bin/true", &args(&["x", "y"])));
    }

    #[test]
    fn exec_program_must_be_absolute() {
        assert!(matches!(ExecRule::parse_cli("sh:-c"), Err(PatternError::BadExec(_))));
    }

    #[test]
    fn connect_patterns() {
        let p = ConnectPattern::parse("127.0.0.1:*").unwrap();
        assert!(p.matches("127.0.0.1", 80));
        assert!(!p.matches("127.0.0.2", 80));
        let q = ConnectPattern::parse("*.example.com:443").unwrap();
        assert!(q.matches("db.EXAMPLE.com", 443));
        assert!(!q.matches("db.example.com", 80));
        let v6 = ConnectPattern::parse("[::1]:22").unwrap();
        assert!(v6.matches("::1", 22));
        assert_eq!(v6.to_string(), "[::1]:22");
        assert!(ConnectPattern::parse("localhost").is_err());
        assert!(ConnectPattern::parse("localhost:http").is_err());
    }

    #[test]
    fn a_star_argument_never_matches_an_option_or_a_negative_number() {
        let rule = ExecRule::parse_cli("/bin/kill:-* *").unwrap();
        assert!(rule.matches("/bin/kill", &args(&["-TERM", "1234"])));
        assert!(!rule.matches("/bin/kill", &args(&["-9", "-1"])), "kill -9 -1 signals every process");
        assert!(!ExecRule::parse_cli("/bin/cat:*").unwrap().matches("/bin/cat", &args(&["--version"])));
        // `**` still means any arguments.
        assert!(ExecRule::parse_cli("/bin/x:-h * **").unwrap().matches("/bin/x", &args(&["-h", "a", "-t", "5"])));
    }

    #[test]
    fn many_double_stars_match_in_linear_time() {
        // Ten `**` around the same literal: a backtracking matcher tries C(n, 10) splits.
        let p = path("/**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/a/status");
        let long = format!("/{}/x", ["a"; 400].join("/"));
        let t = std::time::Instant::now();
        assert!(!p.matches(&long));
        assert!(p.matches(&format!("/{}/status", ["a"; 12].join("/"))));
        let many = ArgsPattern(vec!["**".into(); 12].into_iter().chain(["x".into()]).collect());
        assert!(!many.matches(&vec!["y".to_string(); 1000]));
        assert!(t.elapsed() < std::time::Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[test]
    fn address_patterns_match_addresses_and_name_patterns_names() {
        let ip = ConnectPattern::parse("127.0.0.*:80").unwrap();
        assert!(ip.matches("127.0.0.9", 80));
        assert!(!ip.matches("127.0.0.9.hostile-name", 80));
        assert!(ip.matches_addr("127.0.0.1".parse().unwrap(), 80));
        let name = ConnectPattern::parse("*.example.com:80").unwrap();
        assert!(!name.matches_addr("127.0.0.1".parse().unwrap(), 80));
        assert!(ConnectPattern::parse("*:*").unwrap().matches_addr("::1".parse().unwrap(), 1));
        assert!(!ConnectPattern::parse("*:*").unwrap().covers(&ip) || ConnectPattern::parse("*:*").unwrap().covers(&name));
        assert!(!name.covers(&ip));
    }

    #[test]
    fn env_patterns() {
        let p = EnvPattern::parse("OCF_*").unwrap();
        assert!(p.matches("OCF_RESKEY_ip"));
        assert!(!p.matches("LD_PRELOAD"));
        assert!(EnvPattern::parse("A=B").is_err());
        assert!(p.covers(&EnvPattern::parse("OCF_ROOT").unwrap()));
    }

    #[test]
    fn declarations_cover_narrower_grants() {
        let d = ExecRule::parse_cli("/**/opt/jp1base/bin/*:-h **").unwrap();
        assert!(d.covers(&ExecRule::parse_cli("/sim/opt/jp1base/bin/jevstat:-h lh1").unwrap()));
        assert!(!d.covers(&ExecRule::parse_cli("/sim/opt/jp1base/bin/jevstat").unwrap()));
        assert!(!d.covers(&ExecRule::parse_cli("/bin/sh:-c **").unwrap()));
        assert!(path("/srv/**").covers(&path("/srv/app/")));
        assert!(!path("/srv/app/**").covers(&path("/srv/")));
    }
}
