//! The daemon's listeners, the control socket and the metrics port, with limits: a cap on open
//! connections, bounded and timed requests, backoff when accept fails (EMFILE must not spin a
//! core), and the peer's credentials checked on the control socket. A flood of connections
//! costs a refused connection each, never the file descriptors agents need to run programs.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::task::TaskTracker;

use crate::api::users::{self, Caller};
use crate::api::{self, Request, Response};
use crate::node::history::EventRecord;

/// Open control connections at most (each `events --follow` holds one).
pub const CONTROL_CONNECTIONS: usize = 64;
/// Open metrics connections at most.
pub const METRICS_CONNECTIONS: usize = 16;
/// A client must send its whole request within this.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that does not read its answer within this is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Doubling pause after a failed accept (EMFILE, ENFILE, ENOMEM): 10 ms up to 1 s.
#[derive(Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    fn reset(&mut self) {
        self.next = None;
    }

    async fn wait(&mut self, what: &str, e: &std::io::Error) {
        let d = self.next.unwrap_or(Duration::from_millis(10));
        if d >= Duration::from_secs(1) || self.next.is_none() {
            tracing::warn!(listener = what, error = %e, pause = ?d, "accept failed; pausing");
        }
        tokio::time::sleep(d).await;
        self.next = Some((d * 2).min(Duration::from_secs(1)));
    }
}

async fn refuse(stream: tokio::net::UnixStream, message: String) {
    let (_, mut w) = stream.into_split();
    let _ = tokio::time::timeout(Duration::from_secs(1), api::write_response(&mut w, Response::Error { message })).await;
}

/// Accept control connections; each request is answered by the node loop. Only root (or the
/// daemon's own user) may talk to it, and members of `status_gid` may read status and events;
/// connections are capped, requests bounded and timed.
pub async fn serve_control(
    listener: tokio::net::UnixListener,
    owner_uid: u32,
    status_gid: Option<u32>,
    to_loop: mpsc::Sender<(Request, Caller, oneshot::Sender<Response>)>,
    feed: tokio::sync::broadcast::Sender<EventRecord>,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(CONTROL_CONNECTIONS));
    let mut backoff = Backoff::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.reset();
                stream
            }
            Err(e) => {
                backoff.wait("control socket", &e).await;
                continue;
            }
        };
        let caller = match stream.peer_cred() {
            Ok(c) if c.uid() == 0 || c.uid() == owner_uid => {
                Some(Caller { uid: c.uid(), user: users::user_name(c.uid()), read_only: false })
            }
            Ok(c) if status_gid.is_some_and(|g| users::process_in_group(c.pid(), c.gid(), g)) => {
                Some(Caller { uid: c.uid(), user: users::user_name(c.uid()), read_only: true })
            }
            _ => None,
        };
        let Some(caller) = caller else {
            let peer = stream.peer_cred().map(|c| c.uid());
            tracing::warn!(?peer, "control connection refused: not root and not in the status group");
            tasks.spawn(refuse(
                stream,
                "permission denied: only root (or the configured daemon.status_group, read-only) may use the control socket".into(),
            ));
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(limit = CONTROL_CONNECTIONS, "control connection refused: too many open connections");
            tasks.spawn(refuse(stream, format!("busy: {CONTROL_CONNECTIONS} control connections are open; try again")));
            continue;
        };
        let to_loop = to_loop.clone();
        let feed = feed.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let (r, mut w) = stream.into_split();
            let mut reader = tokio::io::BufReader::new(r);
            let req = match tokio::time::timeout(READ_TIMEOUT, api::read_request(&mut reader)).await {
                Err(_) => {
                    let message = format!("no complete request within {READ_TIMEOUT:?}");
                    let _ = api::write_response(&mut w, Response::Error { message }).await;
                    return;
                }
                Ok(r) => r,
            };
            let req = match req {
                Ok(Some(req)) => req,
                Ok(None) => return,
                Err(message) => {
                    let _ = api::write_response(&mut w, Response::Error { message }).await;
                    return;
                }
            };
            // The status group reads status and events only: operator commands change things,
            // and the config and resource details can hold secrets (fence passwords).
            if caller.read_only && !matches!(req, Request::Status | Request::Events { .. }) {
                tracing::warn!(user = %caller.user, "request refused: read-only status group");
                let message = format!(
                    "permission denied: {} may read status and events (daemon.status_group) but operator commands and config details need root",
                    caller.user
                );
                let _ = api::write_response(&mut w, Response::Error { message }).await;
                return;
            }
            let follow = matches!(req, Request::Events { follow: true, .. });
            // Subscribe before asking for the backlog, so nothing falls between the two.
            let mut sub = feed.subscribe();
            let (tx, rx) = oneshot::channel();
            if to_loop.send((req, caller, tx)).await.is_err() {
                return;
            }
            let Ok(resp) = rx.await else { return };
            let mut last_seq = match &resp {
                Response::Events { events } => events.last().map_or(0, |e| e.seq),
                _ => 0,
            };
            if !matches!(tokio::time::timeout(WRITE_TIMEOUT, api::write_response(&mut w, resp)).await, Ok(Ok(()))) || !follow {
                return;
            }
            loop {
                match sub.recv().await {
                    Ok(event) if event.seq > last_seq => {
                        last_seq = event.seq;
                        if !matches!(
                            tokio::time::timeout(WRITE_TIMEOUT, api::write_response(&mut w, Response::Event { event })).await,
                            Ok(Ok(()))
                        ) {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let message = format!("{n} events were skipped (the client was too slow)");
                        let _ = api::write_response(&mut w, Response::Error { message }).await;
                    }
                    Err(_) => return,
                }
            }
        });
    }
}

/// Serve `GET /metrics` (Prometheus text format); the body comes from the node loop.
pub async fn serve_metrics(listener: tokio::net::TcpListener, ask: mpsc::Sender<oneshot::Sender<String>>, tasks: TaskTracker) {
    let slots = Arc::new(Semaphore::new(METRICS_CONNECTIONS));
    let mut backoff = Backoff::default();
    loop {
        let mut sock = match listener.accept().await {
            Ok((sock, _)) => {
                backoff.reset();
                sock
            }
            Err(e) => {
                backoff.wait("metrics", &e).await;
                continue;
            }
        };
        // Over the cap the connection is closed at once: a scraper retries, a flood costs nothing.
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let ask = ask.clone();
        tasks.spawn(async move {
            let _permit = permit;
            // Only the request line matters; 2 KiB bounds what a client can make us hold.
            let mut buf = vec![0u8; 2048];
            let n = match tokio::time::timeout(READ_TIMEOUT, sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics") {
                let (tx, rx) = oneshot::channel();
                if ask.send(tx).await.is_err() {
                    return;
                }
                ("200 OK", rx.await.unwrap_or_default())
            } else {
                ("404 Not Found", "only /metrics is served here\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(WRITE_TIMEOUT, sock.write_all(resp.as_bytes())).await;
        });
    }
}
