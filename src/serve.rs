//! `datx serve`: one HTTP server for the receive routes, `POST /sql`, `/healthz` and
//! `/metrics`.
//!
//! Owns the listener, the joining of routes and a graceful stop (in-flight pushes finish
//! and get their answer before the process exits). It must never answer for a route it
//! does not own: every request outside the contract gets a JSON 404 or 405.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::commit::CommitError;
use crate::compact::{CompactError, Compactor};
use crate::config::Config;
use crate::eventlog::EventLog;
use crate::query::QueryEngine;
use crate::query::http::SqlService;
use crate::receive::{ErrorBody, Receiver};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Query(#[from] crate::query::QueryError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Opens the lake, binds the configured address and serves until Ctrl-C or SIGTERM.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let store = Store::open(&config.lake)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            address: config.listen,
            source,
        })?;
    run(config, store, listener, shutdown_signal()).await
}

/// Serves on an already bound listener until `shutdown` completes; the benches and tests
/// use it to run the real server in-process on an ephemeral port.
pub async fn run(
    config: Config,
    store: Store,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics = crate::metrics::install();
    let receiver = Arc::new(Receiver::new(EventLog::new(store.clone()), &config));
    let engine = Arc::new(QueryEngine::new(store.clone(), config.sql.clone())?);
    let sql = Arc::new(SqlService::new(engine, &config.sql));
    let routes = receiver
        .routes()
        .or(sql.routes())
        .unify()
        .or(healthz(store.clone()))
        .unify()
        .or(metrics_route(metrics))
        .unify()
        .recover(refuse_unrouted);
    let address = listener
        .local_addr()
        .map_or_else(|e| format!("(unknown: {e})"), |a| a.to_string());
    tracing::info!(
        address = %address,
        lake = store.location(),
        institutions = ?config.institutions.keys().collect::<Vec<_>>(),
        "datx listening on http://{address}"
    );
    let compaction = config.compact_every.map(|every| {
        tokio::spawn(compact_in_background(
            Compactor::new(store.clone(), &config),
            every,
        ))
    });
    warp::serve(routes)
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
    // A pass cut short is like a crash: the next one finishes or discards its work.
    if let Some(compaction) = compaction {
        compaction.abort();
    }
    tracing::info!("datx stopped");
    Ok(())
}

/// Runs a compaction pass every `every`, for as long as the server runs.
async fn compact_in_background(compactor: Compactor, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match compactor.pass().await {
            Ok(summary) => {
                crate::metrics::compaction(&summary);
                if summary.events > 0 || summary.files_merged > 0 {
                    tracing::info!(
                        events = summary.events,
                        rows = summary.rows.values().sum::<u64>(),
                        files = summary.files_written,
                        merged = summary.files_merged,
                        version = summary.version,
                        seconds = format_args!("{:.2}", summary.seconds),
                        "compaction pass"
                    );
                }
            }
            Err(CompactError::Commit(CommitError::Busy)) => {
                tracing::debug!("compaction skipped: another compactor holds the lease");
            }
            Err(e) => tracing::error!(error = %e, "compaction pass failed; the next one retries"),
        }
    }
}

/// `GET /healthz`: 200 only when a durable write to the lake succeeds right now.
fn healthz(store: Store) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("healthz").and(warp::get()).then(move || {
        let store = store.clone();
        async move {
            match store.check_writable().await {
                Ok(()) => warp::reply::json(&serde_json::json!({"status": "ok"})).into_response(),
                Err(e) => {
                    tracing::error!(error = %e, "health check: the lake is not writable");
                    error_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the lake is not writable".into(),
                    )
                }
            }
        }
    })
}

/// `GET /metrics`: Prometheus text format.
fn metrics_route(
    handle: PrometheusHandle,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("metrics").and(warp::get()).map(move || {
        warp::reply::with_header(
            handle.render(),
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .into_response()
    })
}

fn error_reply(status: StatusCode, error: String) -> Response {
    warp::reply::with_status(warp::reply::json(&ErrorBody { error }), status).into_response()
}

async fn refuse_unrouted(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(
        if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
            error_reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
        } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
            let limit = crate::query::http::MAX_STATEMENT_BYTES;
            error_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a statement may have at most {limit} bytes"),
            )
        } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
            error_reply(StatusCode::LENGTH_REQUIRED, "send a Content-Length".into())
        } else {
            error_reply(StatusCode::NOT_FOUND, "no such route".into())
        },
    )
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = interrupt => {},
        _ = terminate.recv() => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
