//! The two-key capability check: a host call is allowed only when the plugin declared it in its
//! manifest **and** the operator granted it to this resource. Checked right before acting; a
//! refusal is an `access-denied` result for the guest, never a trap.

use std::path::{Component, Path};

use warden_manifest::{Capabilities, MAX_REQUEST_LEN};

/// Why a request was refused; the text is shown to the guest and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{what} is not declared in the plugin's manifest")]
    NotDeclared { what: String },
    #[error("{what} is not granted to this resource (grant it in the resource's config, or with --allow-* on the command line)")]
    NotGranted { what: String },
    #[error("{what}: {reason}")]
    BadRequest { what: String, reason: String },
}

/// Declared and granted capabilities for one resource running one plugin.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub declared: Capabilities,
    pub granted: Capabilities,
}

/// Most arguments one `exec` may pass, and most bytes in all of them together.
pub const MAX_ARGS: usize = 1024;
pub const MAX_ARGS_BYTES: usize = 256 * 1024;
/// Most environment variables one `exec` may set.
pub const MAX_ENV: usize = 256;

impl Grants {
    pub fn new(declared: Capabilities, granted: Capabilities) -> Self {
        Self { declared, granted }
    }

    fn both(&self, what: impl FnOnce() -> String, check: impl Fn(&Capabilities) -> bool) -> Result<(), Denied> {
        if !check(&self.declared) {
            return Err(Denied::NotDeclared { what: what() });
        }
        if !check(&self.granted) {
            return Err(Denied::NotGranted { what: what() });
        }
        Ok(())
    }

    /// The program and its arguments as the guest wrote them. Cheap and bounded (linear-time
    /// matching of at most [`MAX_ARGS_BYTES`]), so it runs first, before any filesystem work.
    pub fn check_exec(&self, program: &str, args: &[String]) -> Result<(), Denied> {
        let what = || describe_exec(program, args);
        if program.len() > MAX_REQUEST_LEN {
            return Err(Denied::BadRequest { what: what(), reason: format!("the program path is longer than {MAX_REQUEST_LEN} bytes") });
        }
        if args.len() > MAX_ARGS || args.iter().map(String::len).sum::<usize>() > MAX_ARGS_BYTES {
            return Err(Denied::BadRequest {
                what: what(),
                reason: format!("more than {MAX_ARGS} arguments or {MAX_ARGS_BYTES} bytes of them"),
            });
        }
        if !program.starts_with('/') {
            return Err(Denied::BadRequest { what: what(), reason: "the program must be an absolute path".into() });
        }
        if has_dot_dot(program) {
            return Err(Denied::BadRequest { what: what(), reason: "the program path must not contain `..`".into() });
        }
        self.both(what, |c| c.allows_exec(program, args))
    }

    /// The program with its symlinks resolved must be granted too (with the same arguments), so a
    /// link inside a granted directory cannot run a program outside it. The operator's own
    /// literal paths are resolved as well, so a grant of `/bin/sh` still covers what `/bin/sh`
    /// really is (`/usr/bin/dash` on a merged-/usr system). Touches the filesystem.
    pub fn check_exec_resolved(&self, program: &str, resolved: &Path, args: &[String]) -> Result<(), Denied> {
        let real = resolved.to_string_lossy();
        if real == program {
            return Ok(());
        }
        let what = || format!("{} (`{program}` resolves to `{real}`)", describe_exec(program, args));
        self.both(what, |c| c.exec.iter().any(|r| r.args.as_ref().is_none_or(|a| a.matches(args)) && pattern_allows(&r.program, &real)))
    }

    /// The path as written: no filesystem access, so a refusal never costs a trip to the pool.
    pub fn check_read_as_written(&self, path: &str) -> Result<(), Denied> {
        let what = || format!("read `{}`", shorten(path));
        if path.len() > MAX_REQUEST_LEN {
            return Err(Denied::BadRequest { what: what(), reason: format!("the path is longer than {MAX_REQUEST_LEN} bytes") });
        }
        if !path.starts_with('/') {
            return Err(Denied::BadRequest { what: what(), reason: "the path must be absolute".into() });
        }
        if has_dot_dot(path) {
            return Err(Denied::BadRequest { what: what(), reason: "the path must not contain `..`".into() });
        }
        self.both(what, |c| c.allows_read(path))
    }

    /// The path with symlinks resolved (by [`super::fs::resolve`], which then opens exactly that)
    /// must be covered as well, so a symlink inside a granted tree cannot lead outside it.
    pub fn check_read_resolved(&self, path: &str, resolved: &Path) -> Result<(), Denied> {
        let real = resolved.to_string_lossy();
        if real == path.trim_end_matches('/') {
            return Ok(());
        }
        self.both(|| format!("read `{path}` (resolves to `{real}`)"), |c| c.read.iter().any(|p| pattern_allows(p, &real)))
    }

    /// Variables the guest sets for a child: each must be declared and granted (an `env`
    /// capability), and a few that make any program run other code are refused even then.
    pub fn check_env(&self, program: &str, env: &[(String, String)]) -> Result<(), Denied> {
        if env.len() > MAX_ENV {
            return Err(Denied::BadRequest {
                what: format!("exec `{program}`"),
                reason: format!("more than {MAX_ENV} environment variables"),
            });
        }
        for (k, _) in env {
            check_env_name(program, k)?;
            self.both(|| format!("exec `{program}` with environment variable `{}`", shorten(k)), |c| c.allows_env(k))?;
        }
        Ok(())
    }

    /// The host as written: an IP literal against address patterns, a name against name patterns.
    pub fn check_connect(&self, host: &str, port: u16) -> Result<(), Denied> {
        if host.len() > 255 {
            return Err(Denied::BadRequest { what: "connect".into(), reason: "the host name is longer than 255 bytes".into() });
        }
        self.both(|| format!("connect to `{host}:{port}`"), |c| c.allows_connect(host, port))
    }

    /// An address a name resolved to: connected to only when an address grant covers it.
    pub fn check_connect_addr(&self, host: &str, addr: std::net::SocketAddr) -> Result<(), Denied> {
        self.both(|| format!("connect to `{host}:{}` (resolves to {addr})", addr.port()), |c| c.allows_connect_addr(addr.ip(), addr.port()))
    }
}

fn describe_exec(program: &str, args: &[String]) -> String {
    shorten(&format!("exec `{}`", std::iter::once(program).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")))
        .into_owned()
}

/// Text from a guest, cut to a length fit for a log line and an error message.
fn shorten(s: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 512;
    if s.len() <= MAX {
        return s.into();
    }
    let mut cut = MAX;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &s[..cut], s.len()).into()
}

/// Does `pattern` cover the resolved path `real`, either as written or with its literal leading
/// directories resolved (the operator's `/bin/kill` is really `/usr/bin/kill`)?
fn pattern_allows(pattern: &warden_manifest::PathPattern, real: &str) -> bool {
    pattern.matches(real) || canonical_pattern(pattern).is_some_and(|p| p.matches(real))
}

/// `pattern` with its wildcard-free leading part replaced by where that really is, if different.
fn canonical_pattern(pattern: &warden_manifest::PathPattern) -> Option<warden_manifest::PathPattern> {
    let text = pattern.as_str();
    let parts: Vec<&str> = text.split('/').filter(|c| !c.is_empty()).collect();
    let literal = parts.iter().take_while(|c| !c.contains('*')).count();
    if literal == 0 {
        return None;
    }
    let prefix = format!("/{}", parts[..literal].join("/"));
    let real = super::fs::canonical(Path::new(&prefix))?;
    let real = real.to_str()?;
    if real == prefix {
        return None;
    }
    let mut out = real.to_string();
    for p in &parts[literal..] {
        out.push('/');
        out.push_str(p);
    }
    if text.ends_with('/') {
        out.push('/');
    }
    warden_manifest::PathPattern::parse(&out).ok()
}

/// Environment variables a guest may never set for a child, even when granted: they make any
/// program run other code (the dynamic loader's `LD_*`, bash's exported functions and start-up
/// hooks, interpreter options). The grant is the real gate; this list only catches a grant of
/// `*` written without thinking.
fn check_env_name(program: &str, k: &str) -> Result<(), Denied> {
    const FORBIDDEN: &[&str] = &[
        "ENV",
        "BASH_ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "IFS",
        "CDPATH",
        "GLOBIGNORE",
        "PROMPT_COMMAND",
        "PERL5OPT",
        "PERL5LIB",
        "PERLLIB",
        "PYTHONSTARTUP",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONWARNINGS",
        "PYTHONINSPECT",
        "BROWSER",
        "NODE_OPTIONS",
        "RUBYOPT",
        "RUBYLIB",
        "GCONV_PATH",
        "LOCPATH",
        "HOSTALIASES",
    ];
    let bad = k.is_empty()
        || k.len() > 256
        || k.contains('=')
        || k.contains('%')
        || k.starts_with("LD_")
        || k.starts_with("BASH_FUNC_")
        || k.starts_with("DYLD_")
        || FORBIDDEN.contains(&k);
    if bad {
        return Err(Denied::BadRequest {
            what: format!("exec `{program}` with environment variable `{}`", shorten(k)),
            reason: "it could make the program run other code; it is never passed".into(),
        });
    }
    Ok(())
}

fn has_dot_dot(path: &str) -> bool {
    Path::new(path).components().any(|c| c == Component::ParentDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(toml_text: &str) -> Capabilities {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn denies_exec_not_declared_even_when_granted() {
        let g = Grants::new(caps(r#"exec = [{ program = "/bin/true" }]"#), caps(r#"exec = [{ program = "/bin/sh" }]"#));
        assert!(matches!(g.check_exec("/bin/sh", &[]), Err(Denied::NotDeclared { .. })));
    }

    #[test]
    fn denies_exec_not_granted_even_when_declared() {
        let g = Grants::new(caps(r#"exec = [{ program = "/**" }]"#), caps(r#"exec = [{ program = "/bin/true" }]"#));
        assert!(g.check_exec("/bin/true", &[]).is_ok());
        let err = g.check_exec("/bin/sh", &["-c".into(), "id".into()]).unwrap_err();
        assert!(matches!(err, Denied::NotGranted { .. }));
        assert!(err.to_string().contains("exec `/bin/sh -c id` is not granted"), "{err}");
    }

    #[test]
    fn denies_relative_and_dot_dot_programs() {
        let g = Grants::new(caps(r#"exec = [{ program = "/**" }]"#), caps(r#"exec = [{ program = "/**" }]"#));
        assert!(matches!(g.check_exec("sh", &[]), Err(Denied::BadRequest { .. })));
        assert!(matches!(g.check_exec("/usr/bin/../../bin/sh", &[]), Err(Denied::BadRequest { .. })));
    }

    #[test]
    fn read_refuses_dot_dot_escape() {
        let g = Grants::new(caps(r#"read = ["/**"]"#), caps(r#"read = ["/tmp/**"]"#));
        assert!(matches!(g.check_read_as_written("/tmp/../etc/shadow"), Err(Denied::BadRequest { .. })));
        assert!(matches!(g.check_read_as_written("/etc/shadow"), Err(Denied::NotGranted { .. })));
    }

    #[test]
    fn read_refuses_symlink_escape() {
        let dir = tempfile::tempdir().unwrap();
        let granted = dir.path().join("granted");
        std::fs::create_dir(&granted).unwrap();
        std::os::unix::fs::symlink("/etc", granted.join("etc-link")).unwrap();
        std::fs::write(granted.join("ok.txt"), "fine").unwrap();
        let pattern = format!("{}/**", granted.canonicalize().unwrap().display());
        let g = Grants::new(
            caps(r#"read = ["/**"]"#),
            Capabilities { read: vec![warden_manifest::PathPattern::parse(&pattern).unwrap()], ..Default::default() },
        );
        let base = granted.canonicalize().unwrap();
        let check = |p: &str| {
            g.check_read_as_written(p)?;
            g.check_read_resolved(p, &super::super::fs::resolve(p).unwrap().path)
        };
        assert!(check(&format!("{}/ok.txt", base.display())).is_ok());
        let err = check(&format!("{}/etc-link/shadow", base.display())).unwrap_err();
        assert!(err.to_string().contains("resolves to `/etc/shadow`"), "{err}");
        // A missing file under the link is judged by where the link really points.
        assert!(check(&format!("{}/etc-link/nonexistent", base.display())).is_err());
    }

    #[test]
    fn environment_needs_both_keys_and_some_names_never_pass() {
        let env = |k: &str| vec![(k.to_string(), "x".to_string())];
        let g = Grants::new(caps(r#"env = ["*"]"#), caps(r#"env = ["OCF_*", "LANG"]"#));
        for k in ["LD_PRELOAD", "BASH_FUNC_grep%%", "SHELLOPTS", "PS4", "BASH_ENV", "NODE_OPTIONS", "PYTHONWARNINGS", "BROWSER"] {
            assert!(matches!(g.check_env("/bin/sh", &env(k)), Err(Denied::BadRequest { .. })), "{k}");
        }
        for k in ["LANG", "OCF_RESKEY_state"] {
            assert!(g.check_env("/bin/sh", &env(k)).is_ok(), "{k}");
        }
        assert!(matches!(g.check_env("/bin/sh", &env("JP1_HOSTNAME")), Err(Denied::NotGranted { .. })));
        let none = Grants::new(caps(""), caps(r#"env = ["*"]"#));
        assert!(matches!(none.check_env("/bin/sh", &env("LANG")), Err(Denied::NotDeclared { .. })));
    }

    #[test]
    fn exec_is_checked_on_the_resolved_program_with_the_operators_paths_resolved_too() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir(base.join("real")).unwrap();
        std::fs::write(base.join("real/prog"), "").unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        let declared = caps(r#"exec = [{ program = "/**" }]"#);
        let granted = caps(&format!(r#"exec = [{{ program = "{}/link/prog" }}]"#, base.display()));
        let g = Grants::new(declared, granted);
        let asked = format!("{}/link/prog", base.display());
        assert!(g.check_exec(&asked, &[]).is_ok());
        assert!(g.check_exec_resolved(&asked, &base.join("real/prog"), &[]).is_ok(), "the grant's own link is resolved too");
        let err = g.check_exec_resolved(&asked, Path::new("/usr/bin/dash"), &[]).unwrap_err();
        assert!(err.to_string().contains("resolves to `/usr/bin/dash`"), "{err}");
    }

    #[test]
    fn overlong_requests_are_refused_before_matching() {
        let g = Grants::new(caps(r#"read = ["/**"]"#), caps(r#"read = ["/**"]"#));
        let long = format!("/{}", "a/".repeat(3000));
        assert!(matches!(g.check_read_as_written(&long), Err(Denied::BadRequest { .. })));
        let many: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
        assert!(matches!(g.check_exec("/bin/true", &many), Err(Denied::BadRequest { .. })));
    }

    #[test]
    fn connect_needs_both_keys() {
        let g = Grants::new(caps(r#"connect = ["127.0.0.1:*"]"#), caps(r#"connect = ["127.0.0.1:8080"]"#));
        assert!(g.check_connect("127.0.0.1", 8080).is_ok());
        assert!(matches!(g.check_connect("127.0.0.1", 22), Err(Denied::NotGranted { .. })));
        assert!(matches!(g.check_connect("10.0.0.1", 8080), Err(Denied::NotDeclared { .. })));
        // An address pattern never matches a name that merely starts like an address.
        assert!(matches!(g.check_connect("127.0.0.1.attacker.example", 8080), Err(Denied::NotDeclared { .. })));
    }
}
