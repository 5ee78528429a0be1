//! Frames: a big-endian `u32` length, then that many bytes of JSON.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::TransportError;

/// The largest frame accepted or sent (a snapshot of decisions is far smaller).
pub const MAX_FRAME: u32 = 16 << 20;

/// Reads one frame and decodes it.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(r: &mut R) -> Result<T, TransportError> {
    let len = r.read_u32().await?;
    if len > MAX_FRAME {
        return Err(TransportError::TooLarge(len.into()));
    }
    let mut buf = vec![0; len as usize];
    r.read_exact(&mut buf).await?;
    Ok(serde_json::from_slice(&buf)?)
}

/// Encodes `msg` and writes it as one frame.
pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(w: &mut W, msg: &T) -> Result<(), TransportError> {
    let buf = serde_json::to_vec(msg)?;
    let len = u32::try_from(buf.len()).ok().filter(|l| *l <= MAX_FRAME).ok_or(TransportError::TooLarge(buf.len() as u64))?;
    w.write_u32(len).await?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}
