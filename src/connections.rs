//! Accepting HTTP connections with limits: how many at once, how long a client may take to
//! send its headers, and how long its body may stay silent.
//!
//! Owns the accept loop and the per-connection HTTP/1 settings; warp's own server has no
//! timer, so a client that stalls in its headers or mid-body would hold its socket (and,
//! for a body, its buffer) forever. It must never look at a request beyond its framing:
//! routes and answers belong to `serve`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use warp::http::Request;

use crate::config::Connections;

/// The address a request came from, in its extensions (warp's own is private to warp's
/// server): routes that only this machine may read check it.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// In the extensions of a request made with HTTP/1.0, whose answers cannot be chunked:
/// one cut short would end like a complete one, so a route that streams refuses it.
#[derive(Debug, Clone, Copy)]
pub struct Http10;

/// A failed `accept` (out of file descriptors, say) is retried after this pause rather than
/// in a busy loop.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How long a graceful stop waits for requests in flight before it gives up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves `service` on `listener` until `shutdown` completes, then lets the requests in
/// flight finish (for at most `SHUTDOWN_GRACE`).
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: &Connections,
    shutdown: impl Future<Output = ()>,
) where
    S: tower_service::Service<Request<IdleBody>, Response = warp::reply::Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(connection_cap(limits.max_connections)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A permit first: past the limit, new clients wait in the kernel's accept queue.
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; retrying");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (idle, whole) = (limits.body_idle_timeout, limits.body_timeout);
        let service = service.clone();
        let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
            let mut service = service.clone();
            let mut request = request.map(|body| IdleBody::new(body, idle, whole));
            request.extensions_mut().insert(Peer(peer));
            if request.version() == warp::http::Version::HTTP_10 {
                request.extensions_mut().insert(Http10);
            }
            service.call(request)
        });
        let io = StallingWrites::new(TokioIo::new(stream), limits.body_idle_timeout);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(io, handler);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection closed");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the grace period were cut off");
    }
}

/// File descriptors kept for the lake, the compactor and the query engine, whatever the
/// clients hold.
const DESCRIPTORS_KEPT: u64 = 512;

/// `wanted` connections, or fewer if the process may not open enough files for them and
/// the lake too: a flood of clients must never leave storage without descriptors (lake
/// writes failing with "too many open files" would refuse S-360). The soft limit on open
/// files is first raised to the hard one.
fn connection_cap(wanted: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return wanted;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    let usable = limit.rlim_cur.saturating_sub(DESCRIPTORS_KEPT).max(16) as usize;
    if wanted > usable {
        tracing::warn!(
            max_connections = wanted,
            open_files = limit.rlim_cur,
            "max_connections lowered to {usable} to keep file descriptors for the lake"
        );
    }
    wanted.min(usable)
}

/// A request body that fails once it has sent nothing for `idle`, or is still arriving
/// after `whole`: a client that stalls mid-body, or trickles a byte now and then, gets its
/// request refused instead of holding the connection open.
pub struct IdleBody {
    inner: Incoming,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    whole: Duration,
    end: Pin<Box<Sleep>>,
}

impl IdleBody {
    fn new(inner: Incoming, idle: Duration, whole: Duration) -> IdleBody {
        IdleBody {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            whole,
            end: Box::pin(tokio::time::sleep(whole)),
        }
    }
}

/// Why a body was abandoned.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("the client sent nothing for {} in the middle of its body", humantime::format_duration(*.0))]
    Idle(Duration),
    #[error("the body was still arriving after {}", humantime::format_duration(*.0))]
    TooSlow(Duration),
}

impl Body for IdleBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.end.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyError::TooSlow(this.whole))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            let next = Instant::now() + this.idle;
            this.deadline.as_mut().reset(next);
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::from)));
        }
        ready!(this.deadline.as_mut().poll(cx));
        Poll::Ready(Some(Err(BodyError::Idle(this.idle))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's socket whose writes fail once they make no progress for `stall`: hyper
/// has no write timeout, and a client that stops reading its answers would otherwise hold
/// its connection (and its place under `max_connections`) forever.
struct StallingWrites<T> {
    inner: T,
    stall: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> StallingWrites<T> {
    fn new(inner: T, stall: Duration) -> StallingWrites<T> {
        StallingWrites {
            inner,
            stall,
            deadline: None,
        }
    }

    /// Called when a write could not proceed: pending until `stall` has passed without
    /// progress, then an error that closes the connection.
    fn stalled<R>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<R>> {
        let stall = self.stall;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client read nothing of its answer for too long",
        )))
    }

    fn progressed<R>(
        &mut self,
        done: Poll<std::io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<R>> {
        match done {
            Poll::Pending => self.stalled(cx),
            done => {
                self.deadline = None;
                done
            }
        }
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for StallingWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for StallingWrites<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let done = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(done, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let done = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(done, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let done = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(done, cx)
    }
}
