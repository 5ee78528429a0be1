//! One daemon per state directory, and removal of only the paths this daemon created.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::StoreError;

/// An exclusive lock on `<dir>/lock`, held until the value is dropped.
///
/// The lock is an `flock`-style lock on the open file (`File::try_lock`): it conflicts with any
/// other open of the file, in this process or another, and the kernel drops it when the process
/// dies, so a crash never leaves a stale lock behind.
#[derive(Debug)]
pub struct StateDirLock {
    // Held only for the lock it carries; closing it releases the lock.
    _file: File,
    path: PathBuf,
}

impl StateDirLock {
    /// Take the lock without waiting, then write this process's pid into the lock file so a
    /// second daemon can say who holds it.
    pub fn acquire(dir: &Path) -> Result<StateDirLock, StoreError> {
        Self::acquire_file(&dir.join("lock"))
    }

    /// The same lock on any file (the control socket's `<socket>.lock`).
    pub fn acquire_file(path: &Path) -> Result<StateDirLock, StoreError> {
        let path = path.to_path_buf();
        // No truncation on open: the file may hold the current holder's pid, which we report.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io("cannot open the lock file", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let pid = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
                return Err(StoreError::Locked { path, pid });
            }
            Err(TryLockError::Error(e)) => return Err(StoreError::io("cannot lock", &path, e)),
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{pid}\n").as_bytes()))
            .map_err(|e| StoreError::io("cannot write the pid into the lock file", &path, e))?;
        Ok(StateDirLock { _file: file, path })
    }

    /// The lock file, `<dir>/lock`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A path this process created (its control socket, say), removed on drop only if it is still
/// the same file, identified by device and inode.
///
/// Without the check, a daemon that lost its socket to another daemon (or had it replaced by an
/// operator) would delete the other one's socket on exit.
#[derive(Debug)]
pub struct OwnedPath {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl OwnedPath {
    /// Record the identity of `path`, which must exist (call it right after creating it).
    pub fn claim(path: impl Into<PathBuf>) -> Result<OwnedPath, StoreError> {
        let path = path.into();
        // symlink_metadata: the identity of the entry itself, not of what a symlink points to.
        let m = std::fs::symlink_metadata(&path).map_err(|e| StoreError::io("cannot stat", &path, e))?;
        Ok(OwnedPath { path, dev: m.dev(), ino: m.ino() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still names the file that was claimed.
    pub fn is_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }
}

impl Drop for OwnedPath {
    fn drop(&mut self) {
        // There is a window between the check and the removal; the state-directory lock is what
        // keeps two daemons from racing here, this check catches the replaced-meanwhile case.
        if self.is_ours() {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a path this daemon created");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    #[test]
    fn a_second_acquire_fails_naming_the_pid_and_drop_releases() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDirLock::acquire(dir.path()).unwrap();
        // A second open of the same file in the same process conflicts: the lock belongs to the
        // open file description, not to the process.
        let err = StateDirLock::acquire(dir.path()).unwrap_err();
        match &err {
            StoreError::Locked { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
            other => panic!("unexpected error {other}"),
        }
        assert!(err.to_string().contains(&format!("locked by another `warden node run` (pid {})", std::process::id())), "{err}");
        drop(first);
        let again = StateDirLock::acquire(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(again.path()).unwrap(), format!("{}\n", std::process::id()));
    }

    #[test]
    fn a_stale_pid_in_an_unlocked_file_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lock"), "999999999999\n").unwrap();
        let l = StateDirLock::acquire(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(l.path()).unwrap(), format!("{}\n", std::process::id()));
    }

    const CHILD_ENV: &str = "WARDEN_STORE_TEST_HOLD_LOCK";

    /// Not a test on its own: when re-run as a child with `CHILD_ENV` set, it holds the lock
    /// until its stdin closes.
    #[test]
    fn child_holds_the_lock() {
        let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
        // The parent polls with its own acquires; wait out a collision with one of them.
        let _lock = loop {
            match StateDirLock::acquire(Path::new(&dir)) {
                Ok(l) => break l,
                Err(StoreError::Locked { .. }) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("{e}"),
            }
        };
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    }

    #[test]
    fn a_lock_held_by_another_process_is_reported_and_released_when_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "lock::tests::child_holds_the_lock", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match StateDirLock::acquire(dir.path()) {
                Err(StoreError::Locked { pid: Some(pid), .. }) if pid == child.id() => break,
                // The child has not locked yet (or is between truncating and writing its pid).
                Ok(l) => drop(l),
                Err(StoreError::Locked { .. }) => {}
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "the child never took the lock");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        StateDirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn an_owned_path_is_removed_only_while_it_is_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("warden.sock");
        std::fs::write(&p, "ours").unwrap();
        drop(OwnedPath::claim(&p).unwrap());
        assert!(!p.exists());

        std::fs::write(&p, "ours").unwrap();
        let owned = OwnedPath::claim(&p).unwrap();
        // Someone else replaces it: a new inode at the same path (created while ours still
        // exists, so the inode number cannot be reused).
        std::fs::write(dir.path().join("other"), "theirs").unwrap();
        std::fs::rename(dir.path().join("other"), &p).unwrap();
        assert!(!owned.is_ours());
        drop(owned);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "theirs");

        assert!(matches!(OwnedPath::claim(dir.path().join("missing")), Err(StoreError::Io { .. })));
    }
}
