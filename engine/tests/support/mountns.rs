//! Running a test inside its own private mount namespace, so that the mounts it makes (and the
//! agent's mounts, made by children of the test process) are invisible to the rest of the
//! machine and disappear with the namespace even when the test fails.
//!
//! The test re-runs itself: the outer run starts `unshare --mount --propagation private <this test
//! binary> <test name> --exact` with a marker in the environment, and asserts that the inner run
//! ran exactly that one test and passed. The inner run (the marker is set) does the work.
#![allow(dead_code)]

use std::process::Command;

const MARKER: &str = "WARDEN_TEST_IN_PRIVATE_MOUNT_NS";

/// True in the inner run: go ahead with the test body. False in the outer run, after the inner
/// run passed (it panics when the inner run failed).
pub fn in_private_mount_ns(test_name: &str) -> bool {
    if std::env::var(MARKER).is_ok_and(|v| v == test_name) {
        return true;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("/usr/bin/unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(&exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(MARKER, test_name)
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- inner run of {test_name} in a private mount namespace ---\n{stdout}\n{stderr}");
    assert!(out.status.success(), "{test_name} failed in its private mount namespace ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("test result: ok. 1 passed"), "the inner run did not run exactly {test_name}:\n{stdout}");
    false
}

/// The mount-table entries (source, target, fstype, options) on `target`, as this process sees them.
pub fn mounts_at(target: &str) -> Vec<(String, String, String, String)> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[1] == target).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string(), f[3].to_string()))
        })
        .collect()
}

/// Unmounts (lazily, everything stacked on it) when dropped; inside a private mount namespace
/// this is tidiness: the namespace's end removes the mounts anyway.
pub struct Unmount(pub String);

impl Drop for Unmount {
    fn drop(&mut self) {
        while !mounts_at(&self.0).is_empty() {
            if !Command::new("/bin/umount").args(["-l", &self.0]).status().is_ok_and(|s| s.success()) {
                break;
            }
        }
    }
}
