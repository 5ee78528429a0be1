//! `warden plugin inspect|package|keygen|sign|verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::Cli;
use crate::plugin::{humantime, signing, Plugin, SignatureStatus};

#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Show a plugin's name, version, WIT version, parameters, timeouts, capabilities and signature.
    Inspect {
        /// The plugin component (e.g. target/plugins/jp1-base.wasm).
        plugin: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Embed a capability manifest (warden.toml) into a component, e.g. one made by
    /// componentize-py or componentize-js.
    Package {
        /// The component built by your toolchain.
        component: PathBuf,
        /// The plugin's warden.toml.
        #[arg(long)]
        manifest: PathBuf,
        /// Where to write the plugin.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Create an ed25519 key pair: STEM.key (secret, mode 0600) and STEM.pub.
    Keygen {
        /// Path prefix of the key files: writes STEM.key (secret, mode 0600) and STEM.pub.
        stem: PathBuf,
    },
    /// Sign a plugin with a secret key, writing PLUGIN.sig next to it.
    Sign {
        /// The plugin component to sign.
        plugin: PathBuf,
        /// The secret key (from `plugin keygen`).
        #[arg(long, value_name = "SECRET_KEY_FILE")]
        key: PathBuf,
    },
    /// Check a plugin's signature against one or more public keys. Exit 0 when valid, 1 otherwise.
    Verify {
        /// The plugin component (its signature is PLUGIN.sig).
        plugin: PathBuf,
        /// A trusted public key (repeatable).
        #[arg(long = "key", value_name = "PUBKEY_FILE", required = true)]
        keys: Vec<PathBuf>,
    },
}

pub async fn run(cli: &Cli, cmd: &PluginCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginCommand::Inspect { plugin, json } => {
            let host = cli.host()?;
            let p = host.load(plugin).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&inspect_json(&p))?);
            } else {
                print!("{}", inspect_text(&p));
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Package { component, manifest, out } => {
            let bytes = std::fs::read(component).with_context(|| format!("read {}", component.display()))?;
            let toml = std::fs::read_to_string(manifest).with_context(|| format!("read {}", manifest.display()))?;
            let packed = warden_manifest::embed_section(&bytes, &toml).with_context(|| format!("embed {}", manifest.display()))?;
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(out, packed).with_context(|| format!("write {}", out.display()))?;
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Keygen { stem } => {
            let (secret, public) = signing::generate_keypair(stem)?;
            println!("secret key: {} (keep it private)\npublic key: {}", secret.display(), public.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Sign { plugin, key } => {
            let sig = signing::sign_file(plugin, &signing::read_secret_key(key)?)?;
            println!("wrote {}", sig.display());
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Verify { plugin, keys } => {
            let keys = keys.iter().map(|k| signing::read_public_key(k)).collect::<Result<Vec<_>, _>>()?;
            let bytes = std::fs::read(plugin).with_context(|| format!("read {}", plugin.display()))?;
            let status = signing::check(plugin, &bytes, &keys);
            match status {
                SignatureStatus::Trusted { .. } => {
                    println!("{}: {status}", plugin.display());
                    Ok(ExitCode::SUCCESS)
                }
                _ => {
                    eprintln!("error: {}: {status}", plugin.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

/// The metadata part of `inspect`, also printed by `agent exec PLUGIN metadata`.
pub fn metadata_json(p: &Plugin) -> serde_json::Value {
    let m = &p.metadata;
    let t = &m.timeouts;
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    let timeouts = match p.world() {
        warden_manifest::World::ResourceAgent => serde_json::json!({
            "start_ms": ms(t.start), "stop_ms": ms(t.stop), "monitor_ms": ms(t.monitor),
            "recover_ms": ms(t.recover), "validate_ms": ms(t.validate),
        }),
        warden_manifest::World::FenceAgent => serde_json::json!({ "fence_ms": ms(t.fence), "status_ms": ms(t.status) }),
    };
    serde_json::json!({
        "name": m.name,
        "version": m.version,
        "description": m.description,
        "parameters": m.parameters,
        "timeouts": timeouts,
        "monitor_interval_ms": m.monitor_interval.map(ms),
        "local_recovery": m.local_recovery,
    })
}

fn inspect_json(p: &Plugin) -> serde_json::Value {
    let mut v = metadata_json(p);
    let o = v.as_object_mut().expect("object");
    o.insert("path".into(), p.path.display().to_string().into());
    o.insert("world".into(), p.world().to_string().into());
    o.insert("wit".into(), p.wit.package().into());
    o.insert("exports".into(), p.exports.clone().into());
    o.insert("capabilities".into(), serde_json::to_value(&p.manifest.capabilities).unwrap_or_default());
    o.insert("signature".into(), p.signature.to_string().into());
    o.insert("cached".into(), matches!(p.load_stats.cache, crate::plugin::CacheOutcome::Hit).into());
    v
}

fn inspect_text(p: &Plugin) -> String {
    use std::fmt::Write;
    let m = &p.metadata;
    let mut s = String::new();
    let _ = writeln!(s, "plugin:      {} {}", m.name, m.version);
    let _ = writeln!(s, "description: {}", m.description);
    let _ = writeln!(s, "file:        {}", p.path.display());
    let _ = writeln!(s, "world:       {} ({})", p.world(), p.wit.package());
    let _ = writeln!(s, "exports:     {}", p.exports.join(", "));
    let _ = writeln!(s, "signature:   {}", p.signature);
    let _ = writeln!(s, "loaded in:   {} ({:?})", humantime(p.load_stats.total), p.load_stats.cache);
    let t = &m.timeouts;
    match p.world() {
        warden_manifest::World::ResourceAgent => {
            let _ = writeln!(
                s,
                "timeouts:    start {}, stop {}, monitor {}, recover {}, validate {}",
                humantime(t.start),
                humantime(t.stop),
                humantime(t.monitor),
                humantime(t.recover),
                humantime(t.validate)
            );
            if let Some(i) = m.monitor_interval {
                let _ = writeln!(s, "monitor:     every {}; local recovery {}", humantime(i), if m.local_recovery { "yes" } else { "no" });
            }
        }
        warden_manifest::World::FenceAgent => {
            let _ = writeln!(s, "timeouts:    fence {}, status {}", humantime(t.fence), humantime(t.status));
        }
    }
    let _ = writeln!(s, "parameters:");
    if m.parameters.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for p in &m.parameters {
        let req = match (&p.default, p.required) {
            (_, true) => "required".to_string(),
            (Some(d), false) => format!("default {d:?}"),
            (None, false) => "optional".to_string(),
        };
        let _ = writeln!(s, "  {:<22} {:<18} {}", p.name, req, p.description);
    }
    let c = &p.manifest.capabilities;
    let _ = writeln!(s, "capabilities requested:");
    if c.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for e in &c.exec {
        let _ = writeln!(s, "  exec     {e}");
    }
    for r in &c.read {
        let _ = writeln!(s, "  read     {r}");
    }
    for n in &c.connect {
        let _ = writeln!(s, "  connect  {n}");
    }
    for n in &c.env {
        let _ = writeln!(s, "  env      {n}");
    }
    s
}
