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
    let open = Arc::new(Semaphore::new(limits.max_connections));
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
        let body_idle = limits.body_idle_timeout;
        let service = service.clone();
        let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
            let mut service = service.clone();
            service.call(request.map(|body| IdleBody::new(body, body_idle)))
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), handler);
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

/// A request body that fails once it has sent nothing for `idle`: a client that stalls
/// mid-body gets its request refused instead of holding the connection open.
pub struct IdleBody {
    inner: Incoming,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl IdleBody {
    fn new(inner: Incoming, idle: Duration) -> IdleBody {
        IdleBody {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
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
}

impl Body for IdleBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
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
