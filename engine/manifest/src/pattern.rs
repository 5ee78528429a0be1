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
//! * **Connect** targets are `host:port`; the host may use `*`, the port is a number or `*`.

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
}

/// Glob match of one string: `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Classic iterative matcher with backtracking to the last star.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
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
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Match a list of items against a list of patterns where an item `**` matches zero or more
/// items and other items are matched by `one`.
fn match_seq<T: AsRef<str>>(pats: &[String], items: &[T], one: &dyn Fn(&str, &str) -> bool) -> bool {
    match pats.split_first() {
        None => items.is_empty(),
        Some((p, rest)) if p == "**" => (0..=items.len()).any(|skip| match_seq(rest, &items[skip..], one)),
        Some((p, rest)) => match items.split_first() {
            Some((i, irest)) => one(p, i.as_ref()) && match_seq(rest, irest, one),
            None => false,
        },
    }
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
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
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
        match_seq(&self.0, args, &|p, a| glob(p, a))
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
            (Some(d), Some(g)) => d == g || d.matches(&g.0),
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectPattern {
    host: String,
    port: Option<u16>,
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

    pub fn matches(&self, host: &str, port: u16) -> bool {
        glob(&self.host, &host.to_ascii_lowercase()) && self.port.is_none_or(|p| p == port)
    }

    pub fn covers(&self, grant: &ConnectPattern) -> bool {
        glob(&self.host, &grant.host) && (self.port.is_none() || self.port == grant.port)
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
    fn declarations_cover_narrower_grants() {
        let d = ExecRule::parse_cli("/**/opt/jp1base/bin/*:-h **").unwrap();
        assert!(d.covers(&ExecRule::parse_cli("/sim/opt/jp1base/bin/jevstat:-h lh1").unwrap()));
        assert!(!d.covers(&ExecRule::parse_cli("/sim/opt/jp1base/bin/jevstat").unwrap()));
        assert!(!d.covers(&ExecRule::parse_cli("/bin/sh:-c **").unwrap()));
        assert!(path("/srv/**").covers(&path("/srv/app/")));
        assert!(!path("/srv/app/**").covers(&path("/srv/")));
    }
}
