//! Bounded capture of a guest's stdout/stderr. Language runtimes print there (Python
//! tracebacks, Rust panics); we keep the first bytes of each call for the log and for error
//! messages, and silently drop the rest so a chatty guest can neither flood the log nor fail
//! (Rust's `eprintln!` panics when a write fails, so writes always "succeed").

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

#[derive(Clone)]
pub struct CapturedOutput {
    inner: Arc<Mutex<Buffer>>,
}

struct Buffer {
    data: Vec<u8>,
    cap: usize,
    dropped: usize,
}

impl CapturedOutput {
    pub fn new(cap: usize) -> Self {
        Self { inner: Arc::new(Mutex::new(Buffer { data: Vec::new(), cap, dropped: 0 })) }
    }

    /// Take what was written since the last call, and how many bytes were dropped.
    pub fn take(&self) -> (String, usize) {
        let mut b = self.inner.lock().unwrap();
        let text = String::from_utf8_lossy(&b.data).into_owned();
        b.data.clear();
        let dropped = std::mem::take(&mut b.dropped);
        (text, dropped)
    }

    fn write(&self, buf: &[u8]) {
        let mut b = self.inner.lock().unwrap();
        let room = b.cap.saturating_sub(b.data.len());
        let keep = room.min(buf.len());
        b.data.extend_from_slice(&buf[..keep]);
        b.dropped += buf.len() - keep;
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for CapturedOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
