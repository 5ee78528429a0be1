//! Config validation: every file in `configs/invalid/` must be refused with exactly the error text
//! in its `.err` file (the error text is part of the interface), and every file in
//! `configs/valid/` (plus the shipped examples) must load. `WARDEN_BLESS=1` rewrites the `.err`
//! files; review the diff before committing.

use std::path::{Path, PathBuf};

use warden::node::{Node, NodeOptions};

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs").join(sub)
}

async fn check(path: &Path) -> Result<(), String> {
    let state = tempfile::tempdir().unwrap();
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("config-check-cache");
    let _ = cache;
    let opts =
        NodeOptions { config: path.to_path_buf(), state_dir: Some(state.path().to_path_buf()), check_only: true, ..Default::default() };
    Node::load(&opts).await.map(|_| ()).map_err(|e| e.to_string())
}

fn files(sub: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir(sub)).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    v.sort();
    v
}

#[tokio::test]
async fn invalid_configs_fail_with_their_exact_error() {
    let bless = std::env::var_os("WARDEN_BLESS").is_some();
    let mut failures = Vec::new();
    let all = files("invalid");
    assert!(all.len() >= 10, "the snapshot set went missing");
    for f in all {
        let err = match check(&f).await {
            Ok(()) => {
                failures.push(format!("{}: was accepted", f.display()));
                continue;
            }
            Err(e) => e.replace(&format!("{}/", dir("invalid").display()), ""),
        };
        let expected_path = f.with_extension("err");
        if bless {
            std::fs::write(&expected_path, format!("{err}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} is missing (run with WARDEN_BLESS=1)", expected_path.display()));
        if expected.trim_end() != err.trim_end() {
            failures.push(format!("{}:\n--- expected\n{}\n--- got\n{}", f.display(), expected.trim_end(), err));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn valid_configs_load() {
    let mut all = files("valid");
    all.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/single-node.toml"));
    all.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/jp1-cluster.toml"));
    for f in all {
        if let Err(e) = check(&f).await {
            panic!("{} was refused:\n{e}", f.display());
        }
    }
}
