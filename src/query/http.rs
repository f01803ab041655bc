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

use super::output::{self, Format};
use super::{QueryEngine, QueryError, Visibility, one_statement};
use crate::config::{Sql, SqlToken};
use crate::secret::SecretDigest;

/// Seconds a client is asked to wait before trying again when every query slot is taken
/// or the lake's commits cannot be read.
const RETRY_AFTER_SECONDS: u32 = 5;

/// The largest statement accepted: SQL text, not data.
pub const MAX_STATEMENT_BYTES: u64 = 1024 * 1024;

struct Caller {
    name: String,
    digest: SecretDigest,
    institutions: Option<std::collections::BTreeSet<String>>,
}

pub struct SqlService {
    engine: Arc<QueryEngine>,
    callers: Vec<Caller>,
    max_rows: usize,
}

impl SqlService {
    pub fn new(engine: Arc<QueryEngine>, sql: &Sql) -> SqlService {
        let callers = sql
            .tokens
            .iter()
            .map(
                |SqlToken {
                     name,
                     token,
                     institutions,
                 }| Caller {
                    name: name.clone(),
                    digest: SecretDigest::of(token.as_bytes()),
                    institutions: institutions.clone(),
                },
            )
            .collect();
        SqlService {
            engine,
            callers,
            max_rows: sql.max_rows,
        }
    }

    pub fn routes(
        self: Arc<Self>,
    ) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
        warp::path!("sql")
            .and(warp::post())
            .and(warp::header::optional::<String>(AUTHORIZATION.as_str()))
            .and(warp::header::optional::<String>(ACCEPT.as_str()))
            .and(warp::body::content_length_limit(MAX_STATEMENT_BYTES))
            .and(warp::body::bytes())
            .then(
                move |authorization: Option<String>, accept: Option<String>, body: Bytes| {
                    let service = self.clone();
                    async move { service.handle(authorization, accept, body).await }
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
        let Some(caller) = self.caller(authorization.as_deref()) else {
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
        let visible = match &caller.institutions {
            None => Visibility::All,
            Some(codes) => Visibility::Only(codes),
        };
        let result = match one_statement(text) {
            Ok(statement) => {
                self.engine
                    .run(statement, vec![], visible, Some(self.max_rows))
                    .await
            }
            Err(e) => Err(e),
        };
        let (status, rows, response) = match result {
            Ok(answer) => {
                let mut body = Vec::new();
                match output::write(&answer, format, &mut body) {
                    Ok(()) => {
                        let mut reply = Response::new(body.into());
                        reply.headers_mut().insert(
                            CONTENT_TYPE,
                            format.content_type().parse().expect("a valid header"),
                        );
                        (StatusCode::OK, answer.num_rows(), reply)
                    }
                    Err(e) => {
                        let status = StatusCode::INTERNAL_SERVER_ERROR;
                        (
                            status,
                            0,
                            error_reply(status, format!("cannot write the answer: {e}")),
                        )
                    }
                }
            }
            Err(e) => {
                let status = status_of(&e);
                let mut reply = error_reply(status, e.to_string());
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    reply
                        .headers_mut()
                        .insert(RETRY_AFTER, RETRY_AFTER_SECONDS.into());
                }
                (status, 0, reply)
            }
        };
        tracing::info!(
            token = caller.name,
            status = status.as_u16(),
            rows,
            ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
            sql = %text.chars().take(200).collect::<String>(),
            "sql"
        );
        crate::metrics::sql_query(&caller.name, status.as_u16(), started.elapsed());
        response
    }

    /// The caller whose token is presented. Every token is compared, in constant time.
    fn caller(&self, authorization: Option<&str>) -> Option<&Caller> {
        let token = crate::secret::bearer(authorization)?.as_bytes();
        self.callers
            .iter()
            .fold(None, |found, caller| match caller.digest.matches(token) {
                true => Some(caller),
                false => found,
            })
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
        QueryError::Timeout(_) | QueryError::MemoryLimit { .. } | QueryError::TooManyRows(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        QueryError::Lake(_) | QueryError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn error_reply(status: StatusCode, error: String) -> Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": error })),
        status,
    )
    .into_response()
}
