//! Receiving S-360 webhooks: `POST /s360/{stream}/{institution}`.
//!
//! Owns the HTTP contract of a push: which institution and stream, who may post, how large
//! a body may be, whether it is an S-360 body, and the answer. It answers 200 only after
//! the event log has made the body durable, and never parses records beyond counting them:
//! turning records into rows is the compactor's job.

mod auth;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream as FutureStream, StreamExt};
use serde::Serialize;
use warp::http::header::{CONTENT_LENGTH, RETRY_AFTER, WWW_AUTHENTICATE};
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

pub use auth::{AuthError, Gate};

use crate::batch::{self, BatchError};
use crate::clock::ClockCheck;
use crate::config::Config;
use crate::eventlog::{Appended, EventLog, EventLogError};
use crate::metrics;
use crate::status::StatusBoard;
use crate::stream::{InvalidInstitution, Stream, UnknownStream, check_institution};

/// Seconds S-360 (or any client) is asked to wait before retrying after a storage failure.
/// S-360 retries on its own 15-minute schedule; other clients get a sensible hint.
const RETRY_AFTER_SECONDS: u32 = 60;

/// How long a push waits for storage before it is answered 503: S3's retries (15 s) and a
/// little more.
const STORAGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// Why a push was not accepted. Each variant is one answer of the HTTP contract.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    UnknownStream(#[from] UnknownStream),
    #[error(transparent)]
    InvalidInstitution(#[from] InvalidInstitution),
    #[error("unknown institution {0:?}")]
    UnknownInstitution(String),
    #[error("{error}")]
    Unauthorized {
        error: AuthError,
        challenge: Option<String>,
    },
    #[error("body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("could not read the body: {0}")]
    BodyRead(String),
    #[error(transparent)]
    BadBody(#[from] BatchError),
    #[error("storage is unavailable, the body was not stored: {0}")]
    Unavailable(#[from] EventLogError),
    #[error("storage did not answer within {} s", STORAGE_DEADLINE.as_secs())]
    StorageTooSlow,
    #[error(
        "{0}: the body was not stored, so that it is not filed under a wrong day; send it again once the clock is fixed"
    )]
    ClockDisagrees(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::UnknownStream(_)
            | Refusal::InvalidInstitution(_)
            | Refusal::UnknownInstitution(_) => StatusCode::NOT_FOUND,
            Refusal::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Refusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyRead(_) | Refusal::BadBody(_) => StatusCode::BAD_REQUEST,
            Refusal::Unavailable(_) | Refusal::StorageTooSlow | Refusal::ClockDisagrees(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn into_response(self) -> Response {
        let status = self.status();
        // The storage error names paths inside the lake: it goes to the log, not to the
        // caller.
        let message = match &self {
            Refusal::Unavailable(_) | Refusal::StorageTooSlow => {
                "storage is unavailable, the body was not stored".into()
            }
            other => other.to_string(),
        };
        let mut response =
            warp::reply::with_status(warp::reply::json(&ErrorBody { error: message }), status)
                .into_response();
        let headers = response.headers_mut();
        match self {
            Refusal::Unauthorized {
                challenge: Some(challenge),
                ..
            } => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    challenge.parse().expect("a realm is a valid header value"),
                );
            }
            Refusal::Unavailable(_) | Refusal::StorageTooSlow | Refusal::ClockDisagrees(_) => {
                headers.insert(RETRY_AFTER, RETRY_AFTER_SECONDS.into());
            }
            _ => {}
        }
        response
    }
}

#[derive(Serialize)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Serialize)]
struct AcceptedBody {
    event_id: String,
    records: usize,
    sha256: String,
    duplicate: bool,
}

/// The receiving side of `serve`: the event log and each institution's gate.
pub struct Receiver {
    log: EventLog,
    gates: HashMap<String, Gate>,
    max_body_bytes: usize,
    /// Told of every body accepted or refused: the status page and freshness follow.
    board: Arc<StatusBoard>,
    /// Asked before each append: a clock that disagrees with the lake's files nothing.
    clock: Arc<ClockCheck>,
}

impl Receiver {
    pub fn new(
        log: EventLog,
        config: &Config,
        board: Arc<StatusBoard>,
        clock: Arc<ClockCheck>,
    ) -> Receiver {
        let gates = config
            .institutions
            .iter()
            .map(|(code, institution)| (code.clone(), Gate::new(code, &institution.auth)))
            .collect();
        Receiver {
            log,
            gates,
            max_body_bytes: config.max_body_bytes,
            board,
            clock,
        }
    }

    /// The route `POST /s360/{stream}/{institution}`.
    pub fn routes(
        self: Arc<Self>,
    ) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
        // Path before method: a POST to an unknown path is a 404, not a 405.
        warp::path!("s360" / String / String)
            .and(warp::post())
            .and(warp::header::headers_cloned())
            .and(warp::body::stream())
            .then(move |stream: String, institution: String, headers, body| {
                let receiver = self.clone();
                async move { receiver.handle(&stream, &institution, &headers, body).await }
            })
    }

    async fn handle<B: Buf>(
        &self,
        stream_name: &str,
        institution: &str,
        headers: &HeaderMap,
        body: impl FutureStream<Item = Result<B, warp::Error>>,
    ) -> Response {
        let started = Instant::now();
        let result = self.receive(stream_name, institution, headers, body).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        // Label values are bounded to what the configuration declares.
        let known_stream = stream_name.parse::<Stream>().ok();
        let stream_label = known_stream.map_or(metrics::UNKNOWN, Stream::as_str);
        let institution_label = if self.gates.contains_key(institution) {
            institution
        } else {
            metrics::UNKNOWN
        };
        match result {
            Ok((appended, bytes)) => {
                metrics::request(stream_label, institution_label, 200);
                tracing::info!(
                    stream = stream_label,
                    institution = institution_label,
                    status = 200,
                    records = appended.records,
                    bytes,
                    duplicate = appended.duplicate,
                    event_id = %appended.event_id,
                    duration_ms = format_args!("{elapsed_ms:.2}"),
                    "push accepted"
                );
                warp::reply::json(&AcceptedBody {
                    event_id: appended.event_id.to_string(),
                    records: appended.records,
                    sha256: appended.sha256,
                    duplicate: appended.duplicate,
                })
                .into_response()
            }
            Err(refusal) => {
                let status = refusal.status().as_u16();
                metrics::request(stream_label, institution_label, status);
                if let Some(stream) = known_stream {
                    self.board
                        .refused(stream, institution, status, chrono::Utc::now());
                }
                // One line per refusal: an error when storage failed, a warning otherwise.
                macro_rules! log_refusal {
                    ($level:ident) => {
                        tracing::$level!(
                            stream = stream_label,
                            institution = institution_label,
                            status,
                            records = 0,
                            duration_ms = format_args!("{elapsed_ms:.2}"),
                            reason = %refusal,
                            "push refused"
                        )
                    };
                }
                if status >= 500 {
                    log_refusal!(error);
                } else {
                    log_refusal!(warn);
                }
                refusal.into_response()
            }
        }
    }

    /// The checks in the order of the contract: where to (404), who (401), how much (413),
    /// what (400), then the durable append (503 when it fails).
    async fn receive<B: Buf>(
        &self,
        stream_name: &str,
        institution: &str,
        headers: &HeaderMap,
        body: impl FutureStream<Item = Result<B, warp::Error>>,
    ) -> Result<(Appended, usize), Refusal> {
        let stream = stream_name.parse::<Stream>()?;
        check_institution(institution)?;
        let gate = self
            .gates
            .get(institution)
            .ok_or_else(|| Refusal::UnknownInstitution(institution.to_string()))?;
        gate.check(headers).map_err(|error| Refusal::Unauthorized {
            error,
            challenge: gate.challenge(),
        })?;
        let body = read_limited(headers, body, self.max_body_bytes).await?;
        let records = batch::count_records(&body)?;
        let bytes = body.len();
        if let Some(why) = self.clock.disagreement() {
            metrics::clock_refusal();
            return Err(Refusal::ClockDisagrees(why));
        }
        // The append, and what is counted once the body is stored, run as a task of their
        // own: a client that disconnects must not cancel the count of a body that is
        // stored, or its resend, answered as a duplicate, would never be counted.
        let (log, board, institution) = (
            self.log.clone(),
            self.board.clone(),
            institution.to_string(),
        );
        let mut append = tokio::spawn(async move {
            let started = Instant::now();
            let appended = log.append(stream, &institution, body, records).await?;
            metrics::append_latency(started.elapsed());
            board.accepted(
                stream,
                &institution,
                chrono::Utc::now(),
                appended.event_id,
                appended.records,
                appended.duplicate,
            );
            metrics::accepted(
                stream.as_str(),
                &institution,
                appended.records,
                bytes,
                appended.duplicate,
            );
            Ok::<_, EventLogError>(appended)
        });
        // A stalled store (S3 that accepts connections and never answers, a hung disk)
        // gets a 503 rather than a push that waits for minutes, and its write is stopped:
        // a write cut short is a crash of this request, which the resend completes or
        // recognises. (Only the deadline stops it; a client that hangs up does not.)
        let appended = match tokio::time::timeout(STORAGE_DEADLINE, &mut append).await {
            Err(_) => {
                append.abort();
                return Err(Refusal::StorageTooSlow);
            }
            Ok(Err(crashed)) => std::panic::resume_unwind(crashed.into_panic()),
            Ok(Ok(appended)) => appended?,
        };
        Ok((appended, bytes))
    }
}

/// Bytes of an oversized body read and discarded before answering 413. A client that is
/// still sending when the server answers and closes gets a broken pipe instead of the 413;
/// reading the rest lets it see the answer. Past this, the connection is simply closed.
const OVERSIZE_DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// Reads the body, refusing it once it passes `limit`: from `Content-Length` before
/// keeping anything, and while streaming for a body sent without one.
async fn read_limited<B: Buf>(
    headers: &HeaderMap,
    body: impl FutureStream<Item = Result<B, warp::Error>>,
    limit: usize,
) -> Result<Bytes, Refusal> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = std::pin::pin!(body);
    if declared.is_some_and(|length| length > limit as u64) {
        if declared.is_some_and(|length| length <= OVERSIZE_DRAIN_BYTES) {
            drain(body, 0).await;
        }
        return Err(Refusal::TooLarge { limit });
    }
    let capacity = declared.map_or(0, |length| length as usize);
    let mut buffer = BytesMut::with_capacity(capacity);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| Refusal::BodyRead(e.to_string()))?;
        if buffer.len() + chunk.remaining() > limit {
            drain(body, (buffer.len() + chunk.remaining()) as u64).await;
            return Err(Refusal::TooLarge { limit });
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            buffer.extend_from_slice(piece);
            let taken = piece.len();
            chunk.advance(taken);
        }
    }
    Ok(buffer.freeze())
}

/// Reads and discards the rest of a refused body, up to `OVERSIZE_DRAIN_BYTES` in all.
async fn drain<B: Buf>(
    mut body: std::pin::Pin<&mut impl FutureStream<Item = Result<B, warp::Error>>>,
    mut seen: u64,
) {
    while seen <= OVERSIZE_DRAIN_BYTES {
        match body.next().await {
            Some(Ok(chunk)) => seen += chunk.remaining() as u64,
            _ => return,
        }
    }
}
