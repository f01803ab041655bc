//! `POST /sql`: one statement per request, answered as JSON rows or CSV.
//!
//! Owns the bearer-token check and the mapping of query outcomes to HTTP codes. A token's
//! institutions decide what its session holds, so no SQL form can reach other rows.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use warp::http::StatusCode;
use warp::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::access::Callers;
use super::output::{Format, TextEncoder};
use super::{Answer, AnswerMemory, Held, QueryEngine, QueryError, one_statement};
use crate::config::Sql;
use crate::connections::Http10;

/// Seconds a client is asked to wait before trying again when every query slot is taken
/// or the lake's commits cannot be read.
const RETRY_AFTER_SECONDS: u32 = 5;

/// The largest statement accepted: SQL text, not data.
pub const MAX_STATEMENT_BYTES: u64 = 1024 * 1024;

pub struct SqlService {
    engine: Arc<QueryEngine>,
    callers: Callers,
    max_rows: usize,
}

impl SqlService {
    pub fn new(engine: Arc<QueryEngine>, sql: &Sql) -> SqlService {
        SqlService {
            engine,
            callers: Callers::new(sql),
            max_rows: sql.max_rows,
        }
    }

    pub fn routes(
        self: Arc<Self>,
    ) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
        warp::path!("sql")
            .and(warp::post())
            .and(warp::ext::optional::<Http10>())
            .and(warp::header::optional::<String>(AUTHORIZATION.as_str()))
            .and(warp::header::optional::<String>(ACCEPT.as_str()))
            .and(warp::body::content_length_limit(MAX_STATEMENT_BYTES))
            .and(warp::body::bytes())
            .then(
                move |http10: Option<Http10>,
                      authorization: Option<String>,
                      accept: Option<String>,
                      body: Bytes| {
                    let service = self.clone();
                    async move {
                        match http10 {
                            // Streamed answers are chunked: without chunks, one cut short
                            // would end like a complete one.
                            Some(Http10) => error_reply(
                                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                                "answers are streamed: send POST /sql with HTTP/1.1".into(),
                            ),
                            None => service.handle(authorization, accept, body).await,
                        }
                    }
                },
            )
    }

    async fn handle(
        &self,
        authorization: Option<String>,
        accept: Option<String>,
        body: Bytes,
    ) -> Response {
        let started = Instant::now();
        if self.callers.is_empty() {
            return error_reply(
                StatusCode::NOT_FOUND,
                "SQL over HTTP is off: give [sql] a token_env in datx.toml".into(),
            );
        }
        let token = crate::secret::bearer(authorization.as_deref());
        let Some(caller) = token.and_then(|token| self.callers.by_secret(token.as_bytes())) else {
            return unauthorized("datx sql");
        };
        let Ok(text) = std::str::from_utf8(&body) else {
            return error_reply(
                StatusCode::BAD_REQUEST,
                "the statement is not UTF-8 text".into(),
            );
        };
        let format = match accept {
            Some(accept) if accept.contains("text/csv") => Format::Csv,
            _ => Format::Json,
        };
        let visible = caller.visibility();
        let encoder = TextEncoder::new(format).expect("the HTTP formats are text");
        let result = match one_statement(text) {
            Ok(statement) => {
                self.engine
                    .run(statement, vec![], visible, Some(self.max_rows), encoder)
                    .await
            }
            Err(e) => Err(e),
        };
        let sql: String = text.chars().take(200).collect();
        let status = result.as_ref().map_or_else(status_of, |_| StatusCode::OK);
        crate::metrics::sql_query(caller.name(), status.as_u16(), started.elapsed());
        let answer = match result {
            Ok(answer) => answer,
            Err(e) => {
                tracing::info!(
                    token = caller.name(),
                    status = status.as_u16(),
                    ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
                    error = %e,
                    sql,
                    "sql"
                );
                let mut reply = error_reply(status, e.to_string());
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    reply
                        .headers_mut()
                        .insert(RETRY_AFTER, RETRY_AFTER_SECONDS.into());
                }
                return reply;
            }
        };
        let body = AnswerBody {
            answer,
            sent: 0,
            ended: None,
            token: caller.name().to_string(),
            sql,
            started,
        };
        let mut reply = warp::reply::stream(body).into_response();
        reply.headers_mut().insert(
            CONTENT_TYPE,
            format.content_type().parse().expect("a valid header"),
        );
        reply
    }
}

/// An answer's body: each chunk holds its share of the answer budget until hyper has
/// written it out and drops it. Logs the answer once it ends, however it ends.
struct AnswerBody {
    answer: Answer<Bytes>,
    sent: usize,
    /// How the answer ended, once it has: `Ok` complete, `Err` why it was cut short.
    ended: Option<Result<(), String>>,
    token: String,
    sql: String,
    started: Instant,
}

/// A chunk's bytes with their share of the budget, freed with the bytes.
struct OnTheWire {
    chunk: Bytes,
    _memory: AnswerMemory,
}

impl AsRef<[u8]> for OnTheWire {
    fn as_ref(&self) -> &[u8] {
        &self.chunk
    }
}

impl futures::Stream for AnswerBody {
    type Item = Result<Bytes, QueryError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let polled = match self.ended {
            Some(_) => return Poll::Ready(None),
            None => std::task::ready!(self.answer.poll_next(cx)),
        };
        Poll::Ready(match polled {
            Some(Ok(Held { chunk, memory })) => {
                self.sent += chunk.len();
                Some(Ok(Bytes::from_owner(OnTheWire {
                    chunk,
                    _memory: memory,
                })))
            }
            // The client sees the connection close before the end of a chunked body, never
            // an answer that looks complete.
            Some(Err(e)) => {
                self.ended = Some(Err(e.to_string()));
                Some(Err(e))
            }
            None => {
                self.ended = Some(Ok(()));
                None
            }
        })
    }
}

impl Drop for AnswerBody {
    fn drop(&mut self) {
        let ms = format_args!("{:.1}", self.started.elapsed().as_secs_f64() * 1000.0);
        match &self.ended {
            Some(Ok(())) => {
                tracing::info!(token = self.token, status = 200, bytes = self.sent, ms = %ms, sql = self.sql, "sql")
            }
            Some(Err(e)) => {
                tracing::warn!(token = self.token, status = 200, bytes = self.sent, ms = %ms, error = e, sql = self.sql, "sql answer cut short")
            }
            None => {
                tracing::info!(token = self.token, status = 200, bytes = self.sent, ms = %ms, sql = self.sql, "sql answer not read to its end: the client went away")
            }
        }
    }
}

/// 401 with the challenge of a bearer-token `realm`.
fn unauthorized(realm: &str) -> Response {
    let mut reply = error_reply(
        StatusCode::UNAUTHORIZED,
        "a valid bearer token is required".into(),
    );
    let challenge = format!("Bearer realm=\"{realm}\"");
    reply.headers_mut().insert(
        WWW_AUTHENTICATE,
        challenge.parse().expect("a realm is a valid header value"),
    );
    reply
}

fn status_of(error: &QueryError) -> StatusCode {
    match error {
        QueryError::Invalid(_) | QueryError::Failed(_) | QueryError::NotOneStatement(_) => {
            StatusCode::BAD_REQUEST
        }
        QueryError::TooLong(_) => StatusCode::PAYLOAD_TOO_LARGE,
        QueryError::Refused(_) => StatusCode::FORBIDDEN,
        QueryError::Timeout(_)
        | QueryError::MemoryLimit { .. }
        | QueryError::TooManyRows(_)
        | QueryError::AnswerTooLarge { .. }
        | QueryError::Unwritable(_) => StatusCode::UNPROCESSABLE_ENTITY,
        QueryError::Lake(_) | QueryError::Busy(_) | QueryError::AnswersBusy(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

fn error_reply(status: StatusCode, error: String) -> Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": error })),
        status,
    )
    .into_response()
}
