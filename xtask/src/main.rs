//! Project tasks. `cargo xtask <task>`:
//!
//! * `plugins` — build every plugin and example agent into `target/plugins/<name>.wasm`
//!   (Rust crates with `cargo build --target wasm32-wasip2`, Python with componentize-py,
//!   JavaScript with componentize-js), each with its `warden.toml` embedded.
//! * `tools`   — install the pinned Python and JavaScript component tools under `target/tools`
//!   and `examples/agents/js/node_modules` (done by `plugins` when missing).
//! * `test`    — `plugins` and the JP1 simulator, then `cargo test --workspace`: the README's
//!   test command.
//! * `demo`    — `plugins`, then the demo.
//! * `setup`   — what `test` and `demo` do first: the `wasm32-wasip2` target (rustup does not add
//!   the toolchain file's targets when `RUSTUP_AUTO_INSTALL=0`) and, as root with apt, the Debian
//!   packages the tests run (otherwise it fails at once naming the one command that installs them).
//!
//! A plugin is any directory under `plugins/` or `examples/agents/` holding a `warden.toml`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use warden_manifest::{Manifest, World};

/// Pinned tool versions (see docs/wasm-host.md for why these).
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = root();
    match args.first().map(String::as_str) {
        Some("plugins") => {
            ensure_wasm_target(&root)?;
            build_plugins(&root)
        }
        Some("tools") => install_tools(&root),
        Some("setup") => setup(&root, Need::Test),
        Some("test") => {
            setup(&root, Need::Test)?;
            build_plugins(&root)?;
            // The JP1 agent tests run the simulator; build it before the tests wait on cargo's lock.
            run_cmd(Command::new(cargo()).current_dir(&root).args(["build", "--quiet", "-p", "jp1-sim"]))?;
            // Guest crates build natively too, so their own unit tests run here as well.
            let mut cmd = Command::new(cargo());
            cmd.current_dir(&root).args(["test", "--workspace"]).args(&args[1..]);
            run_cmd(&mut cmd)
        }
        Some("demo") => {
            setup(&root, Need::Demo)?;
            build_plugins(&root)?;
            run_cmd(Command::new(cargo()).current_dir(&root).args(["build", "--quiet", "-p", "jp1-sim", "-p", "warden"]))?;
            let mut cmd = Command::new(root.join("target/debug/warden"));
            cmd.current_dir(&root).args(["demo", "--jp1-sim"]).arg(root.join("target/debug/jp1-sim")).args(&args[1..]);
            run_cmd(&mut cmd)
        }
        _ => {
            eprintln!("usage: cargo xtask plugins|tools|setup|test [cargo test args]|demo");
            bail!("unknown task")
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

enum Kind {
    Rust { package: String },
    Python { module: String },
    Js { entry: PathBuf },
}

struct PluginSource {
    dir: PathBuf,
    manifest: Manifest,
    manifest_text: String,
    kind: Kind,
}

fn discover(root: &Path) -> Result<Vec<PluginSource>> {
    let mut out = Vec::new();
    // tests/agents: plugins the tests need that are not examples (a 0.1.0-built agent).
    for base in ["plugins", "examples/agents", "tests/agents"] {
        let Ok(entries) = std::fs::read_dir(root.join(base)) else { continue };
        let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        for dir in dirs {
            let toml_path = dir.join("warden.toml");
            if !toml_path.exists() {
                continue;
            }
            let manifest_text = std::fs::read_to_string(&toml_path)?;
            let manifest = Manifest::from_toml(&manifest_text).with_context(|| format!("{}", toml_path.display()))?;
            let kind = if dir.join("Cargo.toml").exists() {
                let cargo_toml: toml::Table = toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml"))?)?;
                let package = cargo_toml["package"]["name"].as_str().context("package.name")?.to_string();
                Kind::Rust { package }
            } else if dir.join("agent.py").exists() {
                Kind::Python { module: "agent".into() }
            } else if dir.join("agent.js").exists() {
                Kind::Js { entry: dir.join("agent.js") }
            } else {
                bail!("{}: has warden.toml but no Cargo.toml, agent.py or agent.js", dir.display());
            };
            out.push(PluginSource { dir, manifest, manifest_text, kind });
        }
    }
    Ok(out)
}

fn build_plugins(root: &Path) -> Result<()> {
    let plugins = discover(root)?;
    let out_dir = root.join("target/plugins");
    let work = root.join("target/plugin-build");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::create_dir_all(&work)?;

    // Rust guests, one cargo build per world so the SDK's world features never unify.
    for world in [World::ResourceAgent, World::FenceAgent] {
        let packages: Vec<&str> = plugins
            .iter()
            .filter(|p| p.manifest.world == world)
            .filter_map(|p| match &p.kind {
                Kind::Rust { package } => Some(package.as_str()),
                _ => None,
            })
            .collect();
        if packages.is_empty() {
            continue;
        }
        eprintln!("xtask: building Rust {world} plugins: {}", packages.join(", "));
        let mut cmd = Command::new(cargo());
        cmd.current_dir(root).args(["build", "--target", "wasm32-wasip2", "--profile", "guest"]);
        for p in &packages {
            cmd.args(["-p", p]);
        }
        run_cmd(&mut cmd)?;
    }

    let needs_py = plugins.iter().any(|p| matches!(p.kind, Kind::Python { .. }));
    if needs_py {
        ensure_python_tools(root)?;
    }

    for p in &plugins {
        let name = &p.manifest.name;
        let component = match &p.kind {
            Kind::Rust { package } => root.join("target/wasm32-wasip2/guest").join(format!("{}.wasm", package.replace('-', "_"))),
            Kind::Python { module } => {
                let out = work.join(format!("{name}.component.wasm"));
                if is_stale(&out, &p.dir, root)? {
                    eprintln!("xtask: componentize-py {name}");
                    run_cmd(
                        Command::new(root.join("target/tools/venv/bin/componentize-py"))
                            .current_dir(root)
                            .args(["-d", "wit", "-w", &p.manifest.world.to_string(), "componentize", "-p"])
                            .arg(&p.dir)
                            .arg(module)
                            .arg("-o")
                            .arg(&out),
                    )?;
                }
                out
            }
            Kind::Js { entry } => {
                let out = work.join(format!("{name}.component.wasm"));
                if is_stale(&out, &p.dir, root)? {
                    ensure_js_tools(&p.dir)?;
                    eprintln!("xtask: componentize-js {name}");
                    run_cmd(
                        Command::new(p.dir.join("node_modules/.bin/componentize-js"))
                            .current_dir(&p.dir)
                            .arg(entry)
                            .arg("--wit")
                            .arg(root.join("wit"))
                            .args(["-n", &p.manifest.world.to_string(), "-d", "http", "fetch-event", "-o"])
                            .arg(&out),
                    )?;
                }
                out
            }
        };
        let bytes = std::fs::read(&component).with_context(|| format!("read {}", component.display()))?;
        let packed = warden_manifest::embed_section(&bytes, &p.manifest_text)?;
        let dest = out_dir.join(format!("{name}.wasm"));
        if std::fs::read(&dest).ok().as_deref() != Some(&packed[..]) {
            std::fs::write(&dest, packed)?;
        }
        eprintln!(
            "xtask: {} -> {}",
            p.dir.strip_prefix(root).unwrap_or(&p.dir).display(),
            dest.strip_prefix(root).unwrap_or(&dest).display()
        );
    }
    Ok(())
}

/// Rebuild when the output is older than any source file of the plugin or the WIT.
fn is_stale(out: &Path, dir: &Path, root: &Path) -> Result<bool> {
    let Ok(built) = std::fs::metadata(out).and_then(|m| m.modified()) else { return Ok(true) };
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for d in [dir.to_path_buf(), root.join("wit")] {
        for e in std::fs::read_dir(&d)?.flatten() {
            let path = e.path();
            if path.is_file() {
                newest = newest.max(e.metadata()?.modified()?);
            }
        }
    }
    Ok(newest > built)
}

fn install_tools(root: &Path) -> Result<()> {
    ensure_python_tools(root)?;
    for p in discover(root)? {
        if matches!(p.kind, Kind::Js { .. }) {
            ensure_js_tools(&p.dir)?;
        }
    }
    Ok(())
}

fn ensure_python_tools(root: &Path) -> Result<()> {
    let venv = root.join("target/tools/venv");
    let bin = venv.join("bin/componentize-py");
    if bin.exists() {
        return Ok(());
    }
    eprintln!("xtask: installing {COMPONENTIZE_PY} into {}", venv.display());
    run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run_cmd(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", COMPONENTIZE_PY]))
}

fn ensure_js_tools(dir: &Path) -> Result<()> {
    if dir.join("node_modules/.bin/componentize-js").exists() {
        return Ok(());
    }
    eprintln!("xtask: installing JavaScript tools in {} (npm ci)", dir.display());
    run_cmd(Command::new("npm").current_dir(dir).args(["ci", "--no-audit", "--no-fund"]))
}

#[derive(Clone, Copy, PartialEq)]
enum Need {
    Demo,
    Test,
}

/// Debian packages the tests and the demo run, each with a file that shows it is installed.
/// The demo needs the first group (veth, mkfs, fuser); the tests need all of them.
const PACKAGES: &[(&str, &str, bool)] = &[
    ("iproute2", "/usr/sbin/ip", true),
    ("psmisc", "/usr/bin/fuser", true),
    ("e2fsprogs", "/usr/sbin/mkfs.ext4", true),
    ("util-linux", "/usr/bin/unshare", true),
    ("mount", "/usr/bin/mount", true),
    ("procps", "/usr/bin/pkill", true),
    ("iputils-arping", "/usr/bin/arping", false),
    ("iptables", "/usr/sbin/iptables", false),
    ("resource-agents", "/usr/lib/ocf/resource.d/heartbeat/Dummy", false),
];

fn setup(root: &Path, need: Need) -> Result<()> {
    ensure_wasm_target(root)?;
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file, demo)| (need == Need::Test || *demo) && !Path::new(file).exists())
        .map(|(pkg, _, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!("apt-get install -y --no-install-recommends {}", missing.join(" "));
    let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
    let has_apt = Path::new("/usr/bin/apt-get").exists();
    if !(is_root && has_apt) {
        bail!("missing Debian packages: {}. Install them (as root) with:\n    apt-get update && {install}", missing.join(", "));
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Plugins are built for `wasm32-wasip2`. `rust-toolchain.toml` names it, but rustup only adds a
/// toolchain file's targets when it installs the toolchain itself, and the `cargo` that
/// `cargo xtask` runs is the toolchain's own (no rustup proxy), so nothing adds it for us.
fn ensure_wasm_target(root: &Path) -> Result<()> {
    // The rustc beside the cargo running us is the toolchain the build will use.
    let rustc = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .and_then(|c| c.parent().map(|d| d.join("rustc")))
        .filter(|r| r.exists())
        .unwrap_or_else(|| PathBuf::from("rustc"));
    let sysroot = Command::new(rustc).args(["--print", "sysroot"]).current_dir(root).output().context("run rustc --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib/wasm32-wasip2").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: installing the wasm32-wasip2 target (rustup target add wasm32-wasip2)");
    // Name the toolchain by its sysroot's directory name so the target lands where cargo looks.
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root).args(["target", "add", "wasm32-wasip2"]);
    if let Some(name) = sysroot.file_name().and_then(|n| n.to_str()) {
        cmd.args(["--toolchain", name]);
    }
    run_cmd(&mut cmd).context("the wasm32-wasip2 target is needed to build plugins; install it with `rustup target add wasm32-wasip2`")
}
