//! Builds the guests in `tests/test-programs/guest` for wasm32-wasip2, embeds their capability
//! manifests, and generates one constant per component with its path. The nested cargo uses its
//! own target directory because the outer build holds the lock on the workspace's.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../../..").canonicalize().unwrap();
    let guest_dir = root.join("tests/test-programs/guest");
    for p in [
        "tests/test-programs/guest/src",
        "tests/test-programs/guest/warden.toml",
        "tests/test-programs/guest/warden-globs.toml",
        "tests/test-programs/guest/Cargo.toml",
        "plugins/sdk/src",
        "plugins/sdk/Cargo.toml",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }

    let target_dir = root.join("target/test-programs");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--quiet", "--target", "wasm32-wasip2", "--profile", "guest", "--package", "test-programs"])
        .arg("--target-dir")
        .arg(&target_dir);
    // Flags meant for the host build must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the test guests");
    assert!(
        status.success(),
        "building tests/test-programs for wasm32-wasip2 failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`)"
    );

    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let built = target_dir.join("wasm32-wasip2/guest/test_programs.wasm");
    let hostile = package(&built, &guest_dir.join("warden.toml"), &out_dir.join("test-hostile.wasm"));
    // The same guest declaring a read pattern with ten `**`: matching it must stay linear.
    let globs = package(&built, &guest_dir.join("warden-globs.toml"), &out_dir.join("test-hostile-globs.wasm"));
    // The same guest with four extra core instances, each with a 60 MiB memory of its own: the
    // memory cap must count all of an instance's memories together. (Four, not the corpus's six,
    // so that loading it stays under the default cap of 256 MiB.)
    let many = out_dir.join("test-hostile-memories.raw.wasm");
    std::fs::write(&many, add_memories(&std::fs::read(&built).unwrap(), 4, 960)).unwrap();
    let memories = package(&many, &guest_dir.join("warden.toml"), &out_dir.join("test-hostile-memories.wasm"));

    std::fs::write(
        out_dir.join("artifacts.rs"),
        format!(
            "/// The hostile test guest (`tests/test-programs/guest`), with its manifest embedded.\npub const HOSTILE: &str = {:?};\n\
             /// The hostile guest whose manifest declares a read pattern with ten `**`.\npub const HOSTILE_GLOBS: &str = {:?};\n\
             /// The hostile guest plus four core instances with a 60 MiB memory each.\npub const HOSTILE_MEMORIES: &str = {:?};\n",
            hostile.display().to_string(),
            globs.display().to_string(),
            memories.display().to_string(),
        ),
    )
    .unwrap();
}

/// Append `count` core modules, each defining one memory of `pages` 64 KiB pages, and an
/// instance of each, to a component. Instances are created when the component is instantiated,
/// so their memories are allocated (and pass through the host's resource limiter) then.
fn add_memories(component: &[u8], count: u32, pages: u64) -> Vec<u8> {
    use wasm_encoder::ComponentSection;
    // Core modules already defined at the top level: the new ones get the next indices.
    let mut depth = 0u32;
    let mut modules = 0u32;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload.expect("a valid component") {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth -= 1,
            wasmparser::Payload::ModuleSection { .. } if depth == 1 => modules += 1,
            _ => {}
        }
    }
    let mut module = wasm_encoder::Module::new();
    let mut mems = wasm_encoder::MemorySection::new();
    mems.memory(wasm_encoder::MemoryType { minimum: pages, maximum: None, memory64: false, shared: false, page_size_log2: None });
    module.section(&mems);
    let mut out = component.to_vec();
    let mut instances = wasm_encoder::InstanceSection::new();
    for i in 0..count {
        wasm_encoder::ModuleSection(&module).append_to_component(&mut out);
        instances.instantiate(modules + i, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
    }
    instances.append_to_component(&mut out);
    out
}

fn package(component: &Path, manifest: &Path, out: &Path) -> PathBuf {
    let bytes = std::fs::read(component).unwrap_or_else(|e| panic!("read {}: {e}", component.display()));
    let toml = std::fs::read_to_string(manifest).unwrap();
    let packed = warden_manifest::embed_section(&bytes, &toml).unwrap_or_else(|e| panic!("embed {}: {e}", manifest.display()));
    std::fs::write(out, packed).unwrap();
    out.to_path_buf()
}
