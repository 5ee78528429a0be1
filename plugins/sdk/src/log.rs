//! The engine's log, tagged with the resource and plugin (rate-limited by the host).

use crate::wit::host::{self, Level};

pub fn trace(msg: impl AsRef<str>) {
    host::log(Level::Trace, msg.as_ref())
}
pub fn debug(msg: impl AsRef<str>) {
    host::log(Level::Debug, msg.as_ref())
}
pub fn info(msg: impl AsRef<str>) {
    host::log(Level::Info, msg.as_ref())
}
pub fn warn(msg: impl AsRef<str>) {
    host::log(Level::Warn, msg.as_ref())
}
pub fn error(msg: impl AsRef<str>) {
    host::log(Level::Error, msg.as_ref())
}
