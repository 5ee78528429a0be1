//! Read-only file checks through the host (paths must be granted; `..` and symlink escapes are
//! refused by the host).

use crate::wit::host;
use crate::{AgentError, FileKind};

/// What is at `path`: `None` when nothing is there.
pub fn stat(path: &str) -> Result<Option<FileKind>, AgentError> {
    host::stat(path)
}

pub fn exists(path: &str) -> Result<bool, AgentError> {
    Ok(stat(path)?.is_some())
}

/// Read at most `max` bytes (the host caps this at 1 MiB).
pub fn read(path: &str, max: u32) -> Result<Vec<u8>, AgentError> {
    host::read_file(path, max)
}

/// Read a small text file (at most 64 KiB), lossily decoded.
pub fn read_to_string(path: &str) -> Result<String, AgentError> {
    Ok(String::from_utf8_lossy(&read(path, 64 * 1024)?).into_owned())
}

pub fn list_dir(path: &str) -> Result<Vec<String>, AgentError> {
    host::list_dir(path)
}
