//! jp1-sim: a test double for the cluster commands of Hitachi JP1/Base and JP1/AJS3, which are
//! proprietary and cannot be installed on test machines. See README.md.
//!
//! One binary, many behaviours:
//! * `jp1-sim install PREFIX [--ajs manager|agent|both|none]` creates the command tree;
//! * `jp1-sim setup-lhost PREFIX LHOST SHARED_DIR [--ajs manager|agent|none] [--db-id ID]
//!   [--scheduler SVC]` registers a logical host (like `jbs_setup_cluster`/`jajs_setup_cluster`);
//! * `jp1-sim --as COMMAND --prefix PREFIX ARGS…` (what the installed wrappers run), or the binary
//!   invoked under a command's name (a symlink at `<prefix>/<dir>/<command>`), is that command;
//! * `daemon …` and `child …` are the simulated JP1 processes (internal).

#![allow(unsafe_code)] // setsid, prctl, kill, waitpid through libc

mod cmds;
mod daemon;
mod lhost;
mod procs;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use lhost::{AjsRole, Lhost};

const USAGE: &str = "\
jp1-sim: a test double for Hitachi JP1/Base and JP1/AJS3 cluster commands (not JP1)

usage:
  jp1-sim install PREFIX [--ajs manager|agent|both|none]
  jp1-sim setup-lhost PREFIX LHOST SHARED_DIR [--ajs manager|agent|none] [--db-id ID] [--scheduler SVC]
  jp1-sim --as COMMAND --prefix PREFIX [ARGS...]
  jp1-sim commands
";

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    let base = Path::new(&argv0).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();

    if args.get(1).map(String::as_str) == Some("--as") {
        let (Some(name), Some("--prefix"), Some(prefix)) = (args.get(2), args.get(3).map(String::as_str), args.get(4)) else {
            eprint!("{USAGE}");
            return 1;
        };
        return cmds::run(name, Path::new(prefix), &args[5..]);
    }
    if let Some((name, dir, _)) = cmds::find(&base) {
        // Called through a link named after the command: the prefix is what precedes its path.
        let suffix = format!("/{dir}/{name}");
        let prefix = argv0.strip_suffix(&suffix).filter(|p| !p.is_empty()).unwrap_or("/");
        return cmds::run(name, Path::new(prefix), &args[1..]);
    }
    match args.get(1).map(String::as_str) {
        Some("install") => report(install(&args[2..])),
        Some("setup-lhost") => report(setup_lhost(&args[2..])),
        Some("commands") => {
            for (name, dir, _) in cmds::COMMANDS {
                println!("{dir}/{name}");
            }
            0
        }
        Some("daemon") => daemon::spmd(&args[2..]),
        Some("child") => daemon::child(&args[2..]),
        Some("help" | "--help" | "-h") => {
            print!("{USAGE}");
            0
        }
        _ => {
            eprint!("{USAGE}");
            1
        }
    }
}

fn report(r: Result<(), String>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("jp1-sim: {e}");
            1
        }
    }
}

/// Positional arguments and `--opt value` pairs.
type Parsed = (Vec<String>, Vec<(String, String)>);

/// Split `--opt value` pairs from positional arguments.
fn options(args: &[String], known: &[&str]) -> Result<Parsed, String> {
    let mut pos = Vec::new();
    let mut opts = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if known.contains(&a.as_str()) {
            let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
            opts.push((a.clone(), v.clone()));
        } else if a.starts_with("--") {
            return Err(format!("unknown option {a}"));
        } else {
            pos.push(a.clone());
        }
    }
    Ok((pos, opts))
}

fn opt<'a>(opts: &'a [(String, String)], name: &str) -> Option<&'a str> {
    opts.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn absolute(s: &str, what: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if !p.is_absolute() || s.contains('\'') {
        return Err(format!("{what} must be an absolute path without quotes: {s}"));
    }
    Ok(p)
}

/// Create the command tree under `prefix` as small shell wrappers that run this binary. Wrappers
/// rather than symlinks: an agent's read grant for `<prefix>/opt/jp1base/bin/...` then covers the
/// file itself (the host resolves symlinks before checking a read).
fn install(args: &[String]) -> Result<(), String> {
    let (pos, opts) = options(args, &["--ajs"])?;
    let [prefix] = pos.as_slice() else {
        return Err(format!("install needs PREFIX\n{USAGE}"));
    };
    let prefix = absolute(prefix, "PREFIX")?;
    let ajs = opt(&opts, "--ajs").unwrap_or("manager");
    let (manager, agent) = match ajs {
        "manager" => (true, false),
        "agent" => (false, true),
        "both" => (true, true),
        "none" => (false, false),
        other => return Err(format!("--ajs {other}: expected manager, agent, both or none")),
    };
    let me = std::fs::read_link("/proc/self/exe").map_err(|e| format!("cannot find this binary: {e}"))?;
    let me = me.to_str().filter(|s| !s.contains('\'')).ok_or("the binary's path must be UTF-8 without quotes")?.to_string();
    let io = |e: std::io::Error| e.to_string();
    for (name, dir, product) in cmds::COMMANDS {
        if *product == lhost::Product::Ajs && !(manager || agent) {
            continue;
        }
        let d = prefix.join(dir);
        std::fs::create_dir_all(&d).map_err(io)?;
        let path = d.join(name);
        let script = format!(
            "#!/bin/sh\n# {name}: jp1-sim test double for a Hitachi JP1 command (not JP1)\nexec '{me}' --as {name} --prefix '{}' \"$@\"\n",
            prefix.display()
        );
        std::fs::write(&path, script).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    let mut pp = String::from("# jp1-sim: installed JP1 products (test double for Hitachi's PP list)\n");
    pp.push_str(lhost::PP_BASE);
    pp.push('\n');
    if manager {
        pp.push_str(lhost::PP_AJS_MANAGER);
        pp.push('\n');
    }
    if agent {
        pp.push_str(lhost::PP_AJS_AGENT);
        pp.push('\n');
    }
    let list = lhost::pp_list(&prefix);
    std::fs::create_dir_all(list.parent().expect("has a parent")).map_err(io)?;
    std::fs::write(&list, pp).map_err(io)?;
    std::fs::create_dir_all(lhost::registry_dir(&prefix)).map_err(io)?;
    Ok(())
}

/// Register a logical host and lay out its shared directory as JP1's setup commands do.
fn setup_lhost(args: &[String]) -> Result<(), String> {
    let (pos, opts) = options(args, &["--ajs", "--db-id", "--scheduler"])?;
    let [prefix, name, shared] = pos.as_slice() else {
        return Err(format!("setup-lhost needs PREFIX LHOST SHARED_DIR\n{USAGE}"));
    };
    let prefix = absolute(prefix, "PREFIX")?;
    let shared = absolute(shared, "SHARED_DIR")?;
    if name.is_empty() || name.len() > 63 || name.contains(['/', ' ', '\t']) {
        return Err(format!("`{name}` is not a valid logical host name (1-63 bytes, no spaces or slashes)"));
    }
    if *name == lhost::physical_hostname() {
        return Err(format!("the logical host name `{name}` must differ from the physical host name"));
    }
    let ajs = match opt(&opts, "--ajs") {
        None => AjsRole::None,
        Some(s) => AjsRole::parse(s).ok_or_else(|| format!("--ajs {s}: expected manager, agent or none"))?,
    };
    let need = match ajs {
        AjsRole::Manager => Some(lhost::PP_AJS_MANAGER),
        AjsRole::Agent => Some(lhost::PP_AJS_AGENT),
        AjsRole::None => None,
    };
    if !lhost::installed(&prefix, lhost::PP_BASE) {
        return Err(format!("JP1/Base is not installed under {} (run `jp1-sim install` first)", prefix.display()));
    }
    if let Some(pp) = need.filter(|pp| !lhost::installed(&prefix, pp)) {
        return Err(format!("{pp} is not installed under {}", prefix.display()));
    }
    let mut dirs = vec!["jp1base/conf", "jp1base/log", "event", "jp1sim/faults", "jp1sim/base"];
    if ajs != AjsRole::None {
        dirs.extend([
            "jp1ajs2/conf",
            "jp1ajs2/database",
            "jp1ajs2/jobinf",
            "jp1ajs2/log",
            "jp1ajs2/sys",
            "jp1ajs2/tmp",
            "jp1ajs2/backup",
            "jp1sim/ajs",
        ]);
    }
    for d in dirs {
        std::fs::create_dir_all(shared.join(d)).map_err(|e| format!("{}: {e}", shared.join(d).display()))?;
    }
    let l = Lhost {
        name: name.clone(),
        prefix,
        shared,
        ajs,
        db_id: opt(&opts, "--db-id").unwrap_or("JF0").into(),
        scheduler: opt(&opts, "--scheduler").unwrap_or("AJSROOT1").into(),
    };
    l.write_registration().map_err(|e| e.to_string())
}
