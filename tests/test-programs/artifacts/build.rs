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

    std::fs::write(
        out_dir.join("artifacts.rs"),
        format!(
            "/// The hostile test guest (`tests/test-programs/guest`), with its manifest embedded.\npub const HOSTILE: &str = {:?};\n",
            hostile.display().to_string()
        ),
    )
    .unwrap();
}

fn package(component: &Path, manifest: &Path, out: &Path) -> PathBuf {
    let bytes = std::fs::read(component).unwrap_or_else(|e| panic!("read {}: {e}", component.display()));
    let toml = std::fs::read_to_string(manifest).unwrap();
    let packed = warden_manifest::embed_section(&bytes, &toml).unwrap_or_else(|e| panic!("embed {}: {e}", manifest.display()));
    std::fs::write(out, packed).unwrap();
    out.to_path_buf()
}
