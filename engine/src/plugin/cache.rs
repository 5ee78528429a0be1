//! Compiled components, cached on disk.
//!
//! Compiling a Python or JavaScript component takes seconds; loading its precompiled artifact
//! takes milliseconds. The key is the hash of the component bytes plus the engine's
//! compatibility hash (wasmtime version, configuration, features), so a changed plugin or a
//! different Warden build never loads a stale artifact. A corrupt or incompatible file is
//! recompiled and replaced; an unwritable cache directory only costs speed.
//!
//! Artifacts are read into memory rather than mapped: a mapped file that someone truncates or
//! rewrites in place kills the whole process with SIGBUS, and an HA engine must survive a
//! damaged cache. (wasmtime still makes copy-on-write memory images, so instantiation stays
//! cheap; loading costs a read of the file, ~10 ms for a 35 MB Python artifact.)

#![allow(unsafe_code)] // Component::deserialize

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

/// Where the component came from, for `plugin inspect` and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded a precompiled artifact.
    Hit,
    /// Compiled now (and stored, if the cache is writable).
    Compiled,
}

#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: Option<PathBuf>,
}

impl ComponentCache {
    /// `None` disables caching.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// The default directory: `$WARDEN_CACHE_DIR`, else `$XDG_CACHE_HOME/warden`, else
    /// `$HOME/.cache/warden`, else `/var/cache/warden`.
    pub fn default_dir() -> PathBuf {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        env("WARDEN_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("warden")))
            .or_else(|| env("HOME").map(|p| p.join(".cache/warden")))
            .unwrap_or_else(|| PathBuf::from("/var/cache/warden"))
    }

    pub fn key(engine: &Engine, bytes: &[u8]) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        format!("{}-{:016x}", blake3::hash(bytes).to_hex(), h.finish())
    }

    pub fn load(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(dir) = &self.dir else {
            return Ok((Component::new(engine, bytes)?, CacheOutcome::Compiled));
        };
        let path = dir.join(format!("{}.cwasm", Self::key(engine, bytes)));
        if path.exists() {
            // SAFETY: the file is one we wrote with `Component::serialize` under a key that
            // includes the engine's compatibility hash; wasmtime still validates its header and
            // refuses an incompatible artifact with an error, which we treat as a miss. The cache
            // directory must be writable only by the engine's user, like any code it runs.
            let loaded = std::fs::read(&path).map_err(wasmtime::Error::from).and_then(|b| unsafe { Component::deserialize(engine, b) });
            match loaded {
                Ok(c) => return Ok((c, CacheOutcome::Hit)),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached component"),
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = store(dir, &path, &component) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the component cache; plugins will be compiled at every start");
        }
        Ok((component, CacheOutcome::Compiled))
    }
}

fn store(dir: &Path, path: &Path, component: &Component) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let bytes = component.serialize()?;
    // Write then rename, so a crash or a concurrent loader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
