//! Warden's durable storage: everything the daemon keeps on disk in its state directory.
//!
//! The daemon works as *propose, persist, act*: the deciding loop proposes a new state, the
//! state is persisted, and only what is durable is acted on or acknowledged to others. This
//! crate makes the "persist" step trustworthy and keeps it off the deciding loop, so a hung disk
//! (an `fsfreeze`, a dead NFS server, a failing controller) stalls only a writer thread, never
//! the decisions, the monitors or the control socket.
//!
//! # [`lock`]: one daemon per state directory
//!
//! [`StateDirLock::acquire`] takes an exclusive, non-blocking lock on `<dir>/lock` and holds it
//! for the value's lifetime. A second daemon on the same directory fails at once with
//! [`StoreError::Locked`], naming the holder's pid. The lock belongs to the open file, so it
//! goes away with the process however it ends (no stale lock files to clean up), and it is not
//! inherited by spawned programs (Rust opens files close-on-exec).
//!
//! [`OwnedPath::claim`] records the identity (device, inode) of a path the lock holder created,
//! such as its control socket, and removes it on drop only if it is still that same file: a
//! daemon never deletes a socket another daemon created at the same path.
//!
//! # [`state`]: generations that survive crashes and damage
//!
//! [`DurableFile::write`] returns only once the new generation is durable: it writes a temporary
//! file, fsyncs it, moves the current file to `<name>.prev`, renames the temporary file into
//! place and fsyncs the directory (without that last step a crash can undo the rename). Every
//! failure is returned as a typed error naming the path. A crash at any point leaves a loadable
//! generation: either the new one, or the previous one under `<name>.prev`.
//!
//! [`DurableFile::load`] tries the current generation, then the previous one, and says which it
//! used and why ([`Load`]). A file that is unreadable, empty, not JSON or rejected by the
//! caller's validation is damage, not "no state": it is renamed to `<name>.corrupt-<unix_ms>`,
//! kept for a post-mortem but never read again, and named in [`Load::problems`].
//!
//! [`StateWriter`] runs a [`DurableFile`] on its own thread. [`StateWriter::submit`] never
//! blocks; the latest submission wins (older pending ones are replaced, never written after a
//! newer one). Each attempt is acknowledged with a [`WriteAck`] on a tokio channel, so the
//! deciding loop learns which generation is durable without waiting for it; failures are
//! retried with backoff (100 ms doubling to 5 s) and acknowledged each time. Shutdown finishes
//! the pending write but gives up after a bounded wait, so a hung disk cannot hang the exit.
//!
//! # [`history`]: an append-only event log that degrades instead of breaking
//!
//! [`history::History`] keeps the last [`history::KEEP`] records in memory and a broadcast feed,
//! and appends them to `events.jsonl` from a dedicated writer thread fed by a bounded queue:
//! recording never touches the disk. A record is appended whole or not at all (one write of the
//! whole line; on error the file is cut back to its length before the write), so a full disk
//! never glues two records together. Records that could not be written (disk error, or queue
//! full because the disk hangs) are counted and a marker record says so once writing works
//! again. On open, a torn last line is cut, a damaged line (bad UTF-8, bad JSON) is skipped
//! without losing the rest, and numbering continues after the highest sequence number found in
//! the file and its rotated predecessor, so numbers are never reused. Records are bounded in
//! size and the file is rotated at [`history::ROTATE_BYTES`], keeping one previous generation.
//!
//! # What is not guaranteed
//!
//! - Falling back to `<name>.prev` means resuming from the generation *before* the last
//!   acknowledged one; [`Load::problems`] says so, and the caller should re-learn (probe) rather
//!   than trust it blindly.
//! - The history is fsynced when its writer goes idle, not per record: a crash can lose the last
//!   records (never glue or renumber them). The history is for operators, not for decisions.
//! - [`StateWriter`] acknowledges durability; it is the caller that must hold back acting on (or
//!   telling peers about) a generation until its [`WriteAck`] with `Ok` arrives.
//! - [`OwnedPath`] checks then removes, so a path replaced in between could still be removed;
//!   the state-directory lock is what keeps two daemons apart.

pub mod history;
pub mod lock;
pub mod state;

use std::path::PathBuf;
use std::time::Duration;

pub use lock::{OwnedPath, StateDirLock};
pub use state::{DurableFile, Generation, Load, StateWriter, WriteAck};

/// Everything that can go wrong in this crate, with the path involved where there is one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the state directory's lock.
    #[error("{} is locked by another `warden node run` ({}): one daemon per state directory and control socket", path.display(), holder(*pid))]
    Locked { path: PathBuf, pid: Option<u32> },
    /// A filesystem operation failed; `what` says which step ("cannot fsync", ...).
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The value could not be serialised to JSON.
    #[error("cannot encode the value for {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The writer thread did not finish within the shutdown wait (the disk is probably hung);
    /// it was left running detached.
    #[error("the state writer did not finish within {waited:?}; the disk may be hung")]
    ShutdownTimedOut { waited: Duration },
    /// The writer stopped while the latest generation could not be written.
    #[error("the state writer stopped with generation {generation} not written: {error}")]
    Unwritten { generation: u64, error: String },
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        // The holder truncates the file before writing its pid, so a reader can catch it empty.
        None => "another process (pid not known)".into(),
    }
}

impl StoreError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io { what, path: path.into(), source }
    }
}

/// Unix time in milliseconds (0 for a clock before 1970).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
