//! `datx serve`: one HTTP server for the receive routes, `POST /sql`, `/healthz`, the
//! status page at `/` and `/metrics`, and the PostgreSQL listener when `[postgres]` is
//! configured.
//!
//! Owns the listener, the joining of routes and a graceful stop (in-flight pushes finish
//! and get their answer before the process exits). It must never answer for a route it
//! does not own: every request outside the contract gets a JSON 404 or 405.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::clock::ClockCheck;
use crate::commit::{CommitError, CommitLog};
use crate::compact::{CompactError, Compactor};
use crate::config::Config;
use crate::connections::Peer;
use crate::eventlog::EventLog;
use crate::health::LakeProbe;
use crate::lease::LeaseError;
use crate::postgres::PostgresServer;
use crate::query::QueryEngine;
use crate::query::http::SqlService;
use crate::receive::{ErrorBody, Receiver};
use crate::secret::SecretDigest;
use crate::status::StatusBoard;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Query(#[from] crate::query::QueryError),
    #[error(transparent)]
    Postgres(#[from] crate::postgres::PostgresError),
    #[error("cannot start the compaction threads: {0}")]
    Runtime(std::io::Error),
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
    // A store that overwrites what must be created once stops the start. One that does not
    // answer now is checked again every minute; if it then overwrites, serve stops.
    let (stop_now, stopped_now) = tokio::sync::oneshot::channel::<StoreError>();
    let checked = tokio::time::timeout(START_CHECK_DEADLINE, store.check_create_only()).await;
    let checking = match checked {
        Ok(Ok(())) => None,
        Ok(Err(e @ StoreError::NotCreateOnly { .. })) => return Err(e.into()),
        unanswered => {
            let why = match unanswered {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {} s", START_CHECK_DEADLINE.as_secs()),
            };
            tracing::warn!(
                error = why,
                "cannot check now that the lake keeps create-only writes: checked again every minute"
            );
            Some(tokio::spawn(check_create_only_later(
                store.clone(),
                stop_now,
            )))
        }
    };
    let overwriting = Arc::new(std::sync::Mutex::new(None));
    let overwritten = overwriting.clone();
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            Ok(e) = stopped_now => {
                tracing::error!(error = %e, "stopping: the lake does not keep create-only writes");
                *overwritten.lock().expect("never poisoned") = Some(e);
            }
        }
    };
    let metrics = crate::metrics::install();
    let clock = Arc::new(ClockCheck::new(config.clock_tolerance));
    let probe = Arc::new(LakeProbe::new(store.clone(), clock.clone()));
    // A first reading of the store's clock before anything is received (a store that does
    // not answer delays the start by START_CHECK_DEADLINE at most).
    let first_probe = tokio::time::timeout(START_CHECK_DEADLINE, probe.writable()).await;
    if let Err(e) = first_probe.unwrap_or_else(|_| Err("no answer in time".into())) {
        tracing::warn!(
            error = e,
            "the lake does not take writes now: pushes are answered 503 until it does"
        );
    }
    // Receipts are signed with the `[audit]` key (checked when the configuration loaded).
    let log = EventLog::new(store.clone()).with_signer(config.audit_signer().ok().flatten());
    let commits = CommitLog::new(store.clone());
    let started = chrono::Utc::now();
    // A stream with no body in the days read has been quiet at least that long: a restart
    // must not turn a silent stream ok.
    let horizon = started - chrono::Duration::days(crate::status::SEEDED_DAYS);
    let board = Arc::new(StatusBoard::new(&config, horizon, Some(started)));
    // From the commits and the log's listing before serving, so that the first page and
    // scrape already know; on S3 that is a few LISTs per source, and a store that does not
    // answer delays the start by SEEDING_DEADLINE at most.
    let seeded = tokio::time::timeout(SEEDING_DEADLINE, board.seed(&log, &commits, started)).await;
    match seeded {
        Ok(Ok(charted)) => {
            // The records of the charted bodies are in their envelopes: read after the
            // start, while receiving, so a large log does not delay it.
            let (board, log) = (board.clone(), log.clone());
            tokio::spawn(async move { board.count_records(&log, charted).await });
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the lake's recent days: the status page starts from now");
            board.seeding_failed(format!("the lake could not be read at start ({e})"));
        }
        Err(_) => {
            tracing::warn!(
                "the lake's recent days took too long to list: the status page starts from now"
            );
            board.seeding_failed(format!(
                "the lake's recent days took more than {} s to list at start",
                SEEDING_DEADLINE.as_secs()
            ));
        }
    }
    let (version, sealed) = board.lake_times().await;
    let written_at = tokio::time::timeout(START_CHECK_DEADLINE, commits.written_at(version)).await;
    clock.lake_state(written_at.ok().and_then(Result::ok).flatten(), &sealed);
    if let Some(why) = clock.disagreement() {
        tracing::error!("pushes are refused (503) until the clock agrees with the lake: {why}");
    }
    let receiver = Arc::new(Receiver::new(log, &config, board.clone(), clock.clone()));
    let engine = Arc::new(QueryEngine::new(store.clone(), config.sql.clone())?);
    let postgres = match &config.postgres {
        Some(postgres) => Some(PostgresServer::bind(postgres, &config.sql, engine.clone()).await?),
        None => None,
    };
    if let Some(address) = postgres.as_ref().and_then(|p| p.local_addr().ok()) {
        tracing::info!(address = %address, "PostgreSQL clients can connect on {address}");
    }
    let sql = Arc::new(SqlService::new(engine, &config.sql));
    let health = Arc::new(CompactionHealth::default());
    let operators = OperatorGate::new(config.metrics_token.as_deref());
    let routes = receiver
        .routes()
        .or(sql.routes())
        .unify()
        .or(healthz(probe.clone(), health.clone(), clock.clone()))
        .unify()
        .or(metrics_route(metrics, board.clone(), operators.clone()))
        .unify()
        .or(status_route(board.clone(), health.clone(), operators))
        .unify()
        .recover(refuse_unrouted);
    let address = listener
        .local_addr()
        .map_or_else(|e| format!("(unknown: {e})"), |a| a.to_string());
    tracing::info!(
        address = %address,
        lake = store.location(),
        institutions = ?config.institutions.keys().collect::<Vec<_>>(),
        "datx listening on http://{address} (status page: http://{address}/)"
    );
    // The PostgreSQL sessions stop with the HTTP server: one signal for both.
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let postgres = postgres.map(|server| {
        let mut stopped = stopped.clone();
        tokio::spawn(server.serve(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }))
    });
    // Whoever compacts (this process, another replica, `datx compact`), the page learns of
    // the new commits here.
    let following = tokio::spawn(follow_commits(board, commits, clock.clone()));
    let probing = tokio::spawn(probe.keep_probing());
    // Compaction runs on threads of its own: decoding, converting and encoding files must
    // not delay the answers to S-360's pushes.
    let compaction = match config.compact_every {
        None => None,
        Some(every) => {
            let threads = tokio::runtime::Builder::new_multi_thread()
                .thread_name("datx-compact")
                .enable_all()
                .build()
                .map_err(ServeError::Runtime)?;
            let compactor =
                Arc::new(Compactor::new(store.clone(), &config).with_clock(clock.clone()));
            let task = threads.spawn(compact_in_background(
                compactor.clone(),
                every,
                health.clone(),
            ));
            Some((threads, compactor, task))
        }
    };
    crate::connections::serve(
        listener,
        warp::service(routes),
        &config.connections,
        shutdown,
    )
    .await;
    let _ = stopping.send(true);
    following.abort();
    probing.abort();
    if let Some(checking) = checking {
        checking.abort();
    }
    if let Some(postgres) = postgres {
        let _ = postgres.await;
    }
    // A pass cut short is like a crash: the next one finishes or discards its work.
    if let Some((threads, compactor, task)) = compaction {
        task.abort();
        let _ = task.await;
        // A runtime cannot be dropped the ordinary way from inside another one.
        threads.shutdown_background();
        // Bounded: a stop must not wait on a bucket that does not answer.
        let release = compactor.release_abandoned_lease();
        if tokio::time::timeout(Duration::from_secs(5), release)
            .await
            .is_err()
        {
            tracing::warn!("the compaction lease was not released in time; it expires on its own");
        }
    }
    tracing::info!("datx stopped");
    match overwriting.lock().expect("never poisoned").take() {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Checks every minute, until the store answers, that it keeps create-only writes; sends
/// the error if it does not.
async fn check_create_only_later(
    store: Store,
    overwrites: tokio::sync::oneshot::Sender<StoreError>,
) {
    loop {
        tokio::time::sleep(crate::health::BACKGROUND_EVERY).await;
        match store.check_create_only().await {
            Ok(()) => {
                tracing::info!("the lake keeps create-only writes");
                return;
            }
            Err(e @ StoreError::NotCreateOnly { .. }) => {
                let _ = overwrites.send(e);
                return;
            }
            Err(_) => {}
        }
    }
}

/// How long `serve` waits, at start, for each check of the lake (create-only writes, the
/// store's clock): a store that does not answer is checked again later.
const START_CHECK_DEADLINE: Duration = Duration::from_secs(5);

/// How long `serve` waits, at start, to read when each stream last delivered.
const SEEDING_DEADLINE: Duration = Duration::from_secs(10);

/// How often the status board reads the commit log for new commits (one read, a 404 on
/// S3, when there is none).
const FOLLOW_COMMITS_EVERY: Duration = Duration::from_secs(2);

/// Keeps the status board, and the clock check's view of the sealed days, up to date with
/// the commit log.
async fn follow_commits(board: Arc<StatusBoard>, commits: CommitLog, clock: Arc<ClockCheck>) {
    let mut failing = false;
    let mut seen_version = 0;
    loop {
        tokio::time::sleep(FOLLOW_COMMITS_EVERY).await;
        let caught_up = board.catch_up(&commits).await;
        let (version, sealed) = board.lake_times().await;
        // One HEAD for each new commit, for the time the store gave it.
        let written_at = match version == seen_version {
            true => None,
            false => commits.written_at(version).await.ok().flatten(),
        };
        if written_at.is_some() {
            seen_version = version;
        }
        clock.lake_state(written_at, &sealed);
        match caught_up {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("the status page follows the commit log again");
            }
            Ok(()) => {}
            // Once per run of failures: compaction and /healthz report the store itself.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "the status page cannot read the commit log: its lag figures are as of the last read");
            }
            Err(_) => {}
        }
    }
}

/// Whether background compaction is failing, and since when: for `/healthz` and the logs.
#[derive(Debug, Default)]
pub struct CompactionHealth {
    failing: std::sync::Mutex<Option<Failing>>,
}

#[derive(Debug, Clone)]
struct Failing {
    since: chrono::DateTime<chrono::Utc>,
    passes: u32,
    error: String,
}

impl CompactionHealth {
    fn failed(&self, error: String) -> Failing {
        let mut failing = self.failing.lock().expect("the lock is never poisoned");
        let now = failing.take().map_or(
            Failing {
                since: chrono::Utc::now(),
                passes: 1,
                error: error.clone(),
            },
            |before| Failing {
                passes: before.passes + 1,
                error: error.clone(),
                ..before
            },
        );
        crate::metrics::compaction_failing(Some(now.since), now.passes);
        *failing = Some(now.clone());
        now
    }

    fn succeeded(&self) {
        let mut failing = self.failing.lock().expect("the lock is never poisoned");
        if let Some(was) = failing.take() {
            tracing::info!(since = %was.since, passes = was.passes, "compaction recovered");
        }
        crate::metrics::compaction_failing(None, 0);
    }

    fn current(&self) -> Option<Failing> {
        self.failing
            .lock()
            .expect("the lock is never poisoned")
            .clone()
    }
}

/// The longest wait between two attempts while compaction keeps failing.
const MAX_COMPACTION_BACKOFF: Duration = Duration::from_secs(300);

/// Runs a compaction pass every `every`, for as long as the server runs. A pass that fails
/// or panics is retried, after a wait that doubles with each failure in a row (up to
/// `MAX_COMPACTION_BACKOFF`), and `health` says so until one succeeds: the loop never
/// stops by itself, and never silently.
async fn compact_in_background(
    compactor: Arc<Compactor>,
    every: Duration,
    health: Arc<CompactionHealth>,
) {
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        wait = every;
        // In this task, not a task of its own, so that stopping the loop stops the pass
        // before `serve` releases its lease; a panic is caught and retried like an error.
        let pass = std::panic::AssertUnwindSafe(compactor.pass()).catch_unwind();
        let error = match pass.await {
            Ok(Ok(summary)) => {
                health.succeeded();
                crate::metrics::compaction(
                    summary.lag_seconds,
                    summary.rows.iter().map(|(table, rows)| (*table, *rows)),
                );
                if summary.events > 0 || summary.files_merged > 0 {
                    tracing::info!(
                        events = summary.events,
                        rows = summary.rows.values().sum::<u64>(),
                        replaced = summary.replaced_rows,
                        files = summary.files_written,
                        merged = summary.files_merged,
                        version = summary.version,
                        seconds = format_args!("{:.2}", summary.seconds),
                        "compaction pass"
                    );
                }
                continue;
            }
            Ok(Err(CompactError::Lease(LeaseError::Busy { owner, .. }))) => {
                tracing::debug!(
                    owner,
                    "compaction skipped: another compactor holds the lease"
                );
                continue;
            }
            // Another compactor took over (this one was slow or cut off): its work goes
            // on there, which is not a failure of compaction.
            Ok(Err(
                e @ (CompactError::Lease(LeaseError::Lost)
                | CompactError::Commit(CommitError::Fenced { .. })),
            )) => {
                tracing::warn!(error = %e, "compaction pass abandoned to another compactor");
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!("the pass stopped unexpectedly: {}", panic_message(&*panic)),
        };
        let failing = health.failed(error);
        wait = every
            .max(Duration::from_secs(1))
            .saturating_mul(1 << failing.passes.min(16))
            .min(MAX_COMPACTION_BACKOFF);
        tracing::error!(
            error = failing.error,
            failing_since = %failing.since,
            passes = failing.passes,
            retry_in = %humantime::format_duration(wait),
            "compaction pass failed"
        );
    }
}

/// What a caught panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}

/// `GET /healthz`: 200 only when the lake took a durable write in the last few seconds,
/// this process's clock agrees with the lake's, and background compaction is not failing.
fn healthz(
    probe: Arc<LakeProbe>,
    compaction: Arc<CompactionHealth>,
    clock: Arc<ClockCheck>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("healthz").and(warp::get()).then(move || {
        let (probe, compaction, clock) = (probe.clone(), compaction.clone(), clock.clone());
        async move {
            if let Err(e) = probe.writable().await {
                tracing::error!(error = %e, "health check: the lake is not writable");
                return error_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the lake is not writable".into(),
                );
            }
            if let Some(why) = clock.disagreement() {
                return warp::reply::with_status(
                    warp::reply::json(&serde_json::json!({
                        "status": "clock disagrees",
                        "error": format!("{why}: pushes are refused until it agrees"),
                    })),
                    StatusCode::SERVICE_UNAVAILABLE,
                )
                .into_response();
            }
            match compaction.current() {
                None => warp::reply::json(&serde_json::json!({"status": "ok"})).into_response(),
                Some(failing) => warp::reply::with_status(
                    warp::reply::json(&serde_json::json!({
                        "status": "compaction failing",
                        "failing_since": failing.since,
                        "failed_passes": failing.passes,
                        "error": failing.error,
                    })),
                    StatusCode::SERVICE_UNAVAILABLE,
                )
                .into_response(),
            }
        }
    })
}

/// Who may read `/` and `/metrics`, which name every institution and its traffic: with
/// `[metrics] token`, whoever presents it (as a bearer token, or as the password of
/// Basic credentials so that a browser can ask for it); without, only this machine.
#[derive(Clone)]
struct OperatorGate {
    token: Option<Arc<SecretDigest>>,
}

impl OperatorGate {
    fn new(token: Option<&str>) -> OperatorGate {
        OperatorGate {
            token: token.map(|token| Arc::new(SecretDigest::of(token.as_bytes()))),
        }
    }

    /// The refusal to send instead of the page, if any.
    fn refusal(&self, peer: Option<Peer>, authorization: Option<&str>) -> Option<Response> {
        let Some(token) = &self.token else {
            // Canonical: an IPv4 client of a dual-stack socket comes as ::ffff:127.0.0.1.
            let local = peer.is_some_and(|Peer(address)| address.ip().to_canonical().is_loopback());
            return match local {
                true => None,
                false => Some(error_reply(
                    StatusCode::FORBIDDEN,
                    "this page is open to this machine only: set [metrics] token to open it to others".into(),
                )),
            };
        };
        let given = crate::secret::bearer(authorization).map(|t| t.as_bytes().to_vec());
        // Basic credentials: whatever the user, the password is the token.
        let given = given.or_else(|| {
            let credentials = crate::secret::basic(authorization)?;
            let colon = credentials.iter().position(|&b| b == b':')?;
            Some(credentials[colon + 1..].to_vec())
        });
        if given.is_some_and(|given| token.matches(&given)) {
            return None;
        }
        let mut refused = error_reply(
            StatusCode::UNAUTHORIZED,
            "the [metrics] token is required, as a bearer token or a Basic password".into(),
        );
        refused.headers_mut().insert(
            warp::http::header::WWW_AUTHENTICATE,
            warp::http::HeaderValue::from_static("Basic realm=\"datx status\", charset=\"UTF-8\""),
        );
        Some(refused)
    }

    /// The caller's peer address and headers, for `refusal`. A header that is not text
    /// reads as absent (warp's own header filters would answer such a request 404).
    fn caller() -> impl Filter<Extract = (Option<Peer>, HeaderMap), Error = Infallible> + Clone {
        warp::ext::optional::<Peer>().and(warp::header::headers_cloned())
    }
}

/// A header's value, when it is text.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// `GET /metrics`: Prometheus text format, for the callers `OperatorGate` lets in.
fn metrics_route(
    handle: PrometheusHandle,
    board: Arc<StatusBoard>,
    operators: OperatorGate,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(OperatorGate::caller())
        .map(move |peer: Option<Peer>, headers: HeaderMap| {
            if let Some(refusal) = operators.refusal(peer, header(&headers, "authorization")) {
                return refusal;
            }
            board.publish(chrono::Utc::now());
            warp::reply::with_header(
                handle.render(),
                "content-type",
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .into_response()
        })
}

/// `GET /`: the status page, or its figures as JSON for a client that accepts
/// `application/json` (`datx status`); for the callers `OperatorGate` lets in.
fn status_route(
    board: Arc<StatusBoard>,
    health: Arc<CompactionHealth>,
    operators: OperatorGate,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::end()
        .and(warp::get())
        .and(OperatorGate::caller())
        .map(move |peer: Option<Peer>, headers: HeaderMap| {
            if let Some(refusal) = operators.refusal(peer, header(&headers, "authorization")) {
                return refusal;
            }
            let mut overview = board.overview(chrono::Utc::now());
            overview.compaction_failing = health.current().map(|failing| failing.error);
            let wants_json = header(&headers, "accept").is_some_and(|accept| {
                accept.contains("application/json") && !accept.contains("text/html")
            });
            let mut reply = match wants_json {
                true => warp::reply::json(&overview).into_response(),
                false => warp::reply::html(crate::status::page::render(&overview)).into_response(),
            };
            reply.headers_mut().insert(
                warp::http::header::CACHE_CONTROL,
                warp::http::HeaderValue::from_static("no-store"),
            );
            reply
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_token_only_this_machine_may_read_the_operator_pages() {
        let open = OperatorGate::new(None);
        let peer = |address: &str| Some(Peer(address.parse().unwrap()));
        assert!(open.refusal(peer("127.0.0.1:50000"), None).is_none());
        assert!(open.refusal(peer("[::1]:50000"), None).is_none());
        // An IPv4 client of a dual-stack socket.
        assert!(
            open.refusal(peer("[::ffff:127.0.0.1]:50000"), None)
                .is_none()
        );
        for outside in ["10.1.2.3:50000", "[2001:db8::1]:50000"] {
            let refused = open.refusal(peer(outside), None).expect(outside);
            assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        }
        // No peer known is no proof of being local.
        assert!(open.refusal(None, None).is_some());
        // With a token, where the caller is no longer matters; the token does.
        let closed = OperatorGate::new(Some("t0ken"));
        assert!(closed.refusal(peer("127.0.0.1:1"), None).is_some());
        assert!(
            closed
                .refusal(peer("10.1.2.3:1"), Some("Bearer t0ken"))
                .is_none()
        );
        assert!(
            closed
                .refusal(peer("10.1.2.3:1"), Some("Basic b3A6dDBrZW4="))
                .is_none()
        );
        assert!(
            closed
                .refusal(peer("10.1.2.3:1"), Some("Basic b3A6d3Jvbmc="))
                .is_some()
        );
    }
}
