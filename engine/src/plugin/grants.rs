//! The two-key capability check: a host call is allowed only when the plugin declared it in its
//! manifest **and** the operator granted it to this resource. Checked right before acting; a
//! refusal is an `access-denied` result for the guest, never a trap.

use std::path::{Component, Path, PathBuf};

use warden_manifest::Capabilities;

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

impl Grants {
    pub fn new(declared: Capabilities, granted: Capabilities) -> Self {
        Self { declared, granted }
    }

    fn both(&self, what: String, check: impl Fn(&Capabilities) -> bool) -> Result<(), Denied> {
        if !check(&self.declared) {
            return Err(Denied::NotDeclared { what });
        }
        if !check(&self.granted) {
            return Err(Denied::NotGranted { what });
        }
        Ok(())
    }

    pub fn check_exec(&self, program: &str, args: &[String]) -> Result<(), Denied> {
        let what = format!("exec `{}`", std::iter::once(program).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" "));
        if !program.starts_with('/') {
            return Err(Denied::BadRequest { what, reason: "the program must be an absolute path".into() });
        }
        if has_dot_dot(program) {
            return Err(Denied::BadRequest { what, reason: "the program path must not contain `..`".into() });
        }
        self.both(what, |c| c.allows_exec(program, args))
    }

    /// Check a read of `path` and return the path with symlinks resolved, which is what the
    /// caller must then open. Both the path as given and the resolved path must be covered, so a
    /// symlink inside a granted tree cannot lead outside it.
    pub fn check_read(&self, path: &str) -> Result<PathBuf, Denied> {
        self.check_read_as_written(path)?;
        let resolved = resolve(Path::new(path));
        let resolved_text = resolved.to_string_lossy();
        if resolved_text != path.trim_end_matches('/') {
            self.both(format!("read `{path}` (resolves to `{resolved_text}`)"), |c| c.allows_read(&resolved_text))?;
        }
        Ok(resolved)
    }

    /// The part of [`Self::check_read`] that needs no filesystem access (the path as written):
    /// cheap, so a refusal never costs a trip to the blocking pool.
    pub fn check_read_as_written(&self, path: &str) -> Result<(), Denied> {
        let what = format!("read `{path}`");
        if !path.starts_with('/') {
            return Err(Denied::BadRequest { what, reason: "the path must be absolute".into() });
        }
        if has_dot_dot(path) {
            return Err(Denied::BadRequest { what, reason: "the path must not contain `..`".into() });
        }
        self.both(what, |c| c.allows_read(path))
    }

    pub fn check_connect(&self, host: &str, port: u16) -> Result<(), Denied> {
        self.both(format!("connect to `{host}:{port}`"), |c| c.allows_connect(host, port))
    }
}

/// Environment variables a guest may not set for a child: they make a granted program run other
/// code (the dynamic loader's `LD_*`, bash's exported functions and start-up hooks, interpreter
/// options), which would turn "run this program" into "run anything".
pub fn check_env(program: &str, env: &[(String, String)]) -> Result<(), Denied> {
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
        "NODE_OPTIONS",
        "RUBYOPT",
        "RUBYLIB",
        "GCONV_PATH",
        "LOCPATH",
        "HOSTALIASES",
    ];
    for (k, _) in env {
        let bad = k.is_empty()
            || k.contains('=')
            || k.contains('%')
            || k.starts_with("LD_")
            || k.starts_with("BASH_FUNC_")
            || k.starts_with("DYLD_")
            || FORBIDDEN.contains(&k.as_str());
        if bad {
            return Err(Denied::BadRequest {
                what: format!("exec `{program}` with environment variable `{k}`"),
                reason: "it could make the program run other code; it is never passed".into(),
            });
        }
    }
    Ok(())
}

fn has_dot_dot(path: &str) -> bool {
    Path::new(path).components().any(|c| c == Component::ParentDir)
}

/// `path` with every symlink resolved: the longest existing prefix is canonicalised and the
/// missing rest appended (so a missing file below a symlinked directory is still judged by where
/// the directory really is).
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(real) => {
                let mut out = real;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return out;
            }
            // Only a missing tail is walked back over; anything else (a link to a pipe, a
            // deleted file, a permission error) resolves to a path no grant can match.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return PathBuf::from("/\0unresolvable"),
            Err(_) => {}
        }
        match (existing.file_name().map(|n| n.to_owned()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
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
        assert!(matches!(g.check_read("/tmp/../etc/shadow"), Err(Denied::BadRequest { .. })));
        assert!(matches!(g.check_read("/etc/shadow"), Err(Denied::NotGranted { .. })));
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
        assert!(g.check_read(&format!("{}/ok.txt", base.display())).is_ok());
        let err = g.check_read(&format!("{}/etc-link/shadow", base.display())).unwrap_err();
        assert!(err.to_string().contains("resolves to `/etc/shadow`"), "{err}");
        // A missing file under the link is judged by where the link really points.
        assert!(g.check_read(&format!("{}/etc-link/nonexistent", base.display())).is_err());
    }

    #[test]
    fn dangerous_environment_is_refused() {
        let env = |k: &str| vec![(k.to_string(), "x".to_string())];
        for k in ["LD_PRELOAD", "BASH_FUNC_grep%%", "SHELLOPTS", "PS4", "BASH_ENV", "NODE_OPTIONS"] {
            assert!(check_env("/bin/sh", &env(k)).is_err(), "{k}");
        }
        for k in ["JP1_HOSTNAME", "LANG", "OCF_RESKEY_state", "PATH"] {
            assert!(check_env("/bin/sh", &env(k)).is_ok(), "{k}");
        }
    }

    #[test]
    fn connect_needs_both_keys() {
        let g = Grants::new(caps(r#"connect = ["127.0.0.1:*"]"#), caps(r#"connect = ["127.0.0.1:8080"]"#));
        assert!(g.check_connect("127.0.0.1", 8080).is_ok());
        assert!(matches!(g.check_connect("127.0.0.1", 22), Err(Denied::NotGranted { .. })));
        assert!(matches!(g.check_connect("10.0.0.1", 8080), Err(Denied::NotDeclared { .. })));
    }
}
