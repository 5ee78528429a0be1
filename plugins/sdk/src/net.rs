//! Network checks through the host (host:port pairs must be granted).

use std::time::Duration;

use crate::wit::host;
use crate::AgentError;

/// True when a TCP connection to `host:port` succeeds within `timeout`.
pub fn tcp_probe(host: &str, port: u16, timeout: Duration) -> Result<bool, AgentError> {
    host::tcp_probe(host, port, timeout.as_millis().min(u32::MAX as u128) as u32)
}
