//! PostgreSQL clients: `psql`, drivers (psycopg, JDBC) and BI tools query the lake over the
//! PostgreSQL protocol, signed in with the `[sql]` tokens.
//!
//! Owns the listener, sign-in, the session commands clients send around their queries, and
//! the translation of answers and errors to the wire. It must never run a statement except
//! through [`QueryEngine`], so that the read-only rule, the limits and a token's
//! institutions hold here exactly as they do for `POST /sql`.

mod auth;
mod commands;
mod wire;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::sql::parser::{DFParserBuilder, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use futures::Sink;
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ConnectionManager, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Postgres, PostgresTls, Sql};
use crate::query::pg_catalog;
use crate::query::{QueryEngine, QueryError};
use commands::Command;

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("cannot listen for PostgreSQL clients on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the PostgreSQL TLS {what} {path}: {problem}")]
    Tls {
        what: &'static str,
        path: std::path::PathBuf,
        problem: String,
    },
}

/// A failed `accept` (out of file descriptors, say) is retried after this pause rather than
/// in a busy loop.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What every session shares.
struct Shared {
    engine: Arc<QueryEngine>,
    callers: auth::Callers,
    connections: Arc<ConnectionManager>,
    max_rows: usize,
}

/// The PostgreSQL listener of `datx serve`, bound and ready.
pub struct PostgresServer {
    listener: TcpListener,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    config: Postgres,
    shared: Arc<Shared>,
}

impl PostgresServer {
    /// Binds `config.listen` and reads the TLS certificate, so that a mistake stops `serve`
    /// at its start rather than at the first client.
    pub async fn bind(
        config: &Postgres,
        sql: &Sql,
        engine: Arc<QueryEngine>,
    ) -> Result<PostgresServer, PostgresError> {
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| PostgresError::Listen {
                    address: config.listen,
                    source,
                })?;
        Ok(PostgresServer {
            listener,
            tls,
            config: config.clone(),
            shared: Arc::new(Shared {
                engine,
                callers: auth::Callers::new(sql),
                connections: Arc::new(ConnectionManager::new()),
                max_rows: sql.max_rows,
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves clients until `shutdown` completes, then closes every session.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let open = Arc::new(Semaphore::new(self.config.max_connections));
        let mut sessions = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // A permit first: past the limit, new clients wait in the kernel's accept queue.
            let permit = tokio::select! {
                permit = open.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = &mut shutdown => break,
                Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            };
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept a PostgreSQL connection; retrying");
                        tokio::time::sleep(ACCEPT_RETRY).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let activity = Arc::new(Activity::new());
            let session = Arc::new(Session {
                shared: self.shared.clone(),
                activity: activity.clone(),
                settings: Arc::default(),
            });
            let handlers = Handlers {
                startup: Arc::new(auth::startup_handler(
                    self.shared.callers.clone(),
                    self.shared.connections.clone(),
                )),
                cancel: Arc::new(DefaultCancelHandler::new(self.shared.connections.clone())),
                session,
            };
            let tls = self.tls.clone();
            let idle_timeout = self.config.idle_timeout;
            sessions.spawn(async move {
                let _permit = permit;
                tokio::select! {
                    ended = pgwire::tokio::process_socket(stream, tls, handlers) => {
                        if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "PostgreSQL session ended with an error");
                        }
                    }
                    () = activity.idle_for(idle_timeout) => {
                        tracing::info!(%peer, idle = %humantime::format_duration(idle_timeout), "closed an idle PostgreSQL session (postgres.idle_timeout)");
                    }
                }
            });
        }
        sessions.abort_all();
        while sessions.join_next().await.is_some() {}
    }
}

fn tls_acceptor(tls: &PostgresTls) -> Result<pgwire::tokio::TlsAcceptor, PostgresError> {
    use pgwire::tokio::tokio_rustls::rustls;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let problem = |what, path: &std::path::Path, problem: String| PostgresError::Tls {
        what,
        path: path.to_path_buf(),
        problem,
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| problem("certificate", &tls.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(problem(
            "certificate",
            &tls.cert,
            "it holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| problem("key", &tls.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| problem("key", &tls.key, e.to_string()))?;
    // PostgreSQL 17 clients may open TLS directly, naming the protocol.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(pgwire::tokio::TlsAcceptor::from(Arc::new(config)))
}

/// When a session last did something, and whether it is doing something now.
struct Activity {
    state: Mutex<(Instant, usize)>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Marks a message being handled until the guard drops.
    fn busy(self: &Arc<Self>) -> Busy {
        let mut state = self.state.lock().expect("never poisoned");
        state.1 += 1;
        Busy(self.clone())
    }

    /// Completes once the session has been idle for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let (last, busy) = *self.state.lock().expect("never poisoned");
            if busy > 0 {
                tokio::time::sleep(limit).await;
            } else if Instant::now() >= last + limit {
                return;
            } else {
                tokio::time::sleep_until(last + limit).await;
            }
        }
    }
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().expect("never poisoned");
        state.1 -= 1;
        state.0 = Instant::now();
    }
}

struct Handlers {
    startup: Arc<auth::Startup>,
    cancel: Arc<DefaultCancelHandler>,
    session: Arc<Session>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}

/// One client's session: its settings, and the queries it sends.
#[derive(Clone)]
struct Session {
    shared: Arc<Shared>,
    activity: Arc<Activity>,
    /// What `SET` changed, for `SHOW`: lower-cased name to value.
    settings: Arc<Mutex<BTreeMap<String, String>>>,
}

/// A statement as parsed and described when a client prepares it.
#[derive(Debug, Clone)]
pub enum Prepared {
    Command(Command),
    Query {
        statement: Statement,
        parameters: Vec<Option<DataType>>,
        schema: SchemaRef,
    },
}

impl Session {
    /// The institutions the signed-in user may see. Sign-in succeeded, so the user has a
    /// token; a session without one sees nothing.
    fn caller<C: ClientInfo>(&self, client: &C) -> PgWireResult<&auth::Caller> {
        let user = client
            .metadata()
            .get(pgwire::api::METADATA_USER)
            .map(String::as_str);
        self.shared
            .callers
            .named(user.unwrap_or_default())
            .ok_or_else(|| PgWireError::UserNameRequired)
    }

    /// Parses one statement: a session command, or a query described by the engine.
    async fn prepare(&self, caller: &auth::Caller, text: &str) -> Result<Prepared, QueryError> {
        if let Some(command) = Command::parse(text) {
            return Ok(Prepared::Command(command));
        }
        let statement = one_statement(text)?;
        let described = self
            .shared
            .engine
            .describe(statement.clone(), caller.visibility())
            .await?;
        Ok(Prepared::Query {
            statement,
            parameters: described.parameters,
            schema: described.schema,
        })
    }

    /// Runs a session command.
    fn command(&self, command: &Command, format: &Format) -> PgWireResult<Response> {
        let mut settings = self.settings.lock().expect("never poisoned");
        let tag = Tag::new(command.tag());
        Ok(match command {
            Command::Begin => Response::TransactionStart(tag),
            Command::Commit | Command::Rollback => Response::TransactionEnd(tag),
            Command::Set { name, value } => {
                settings.insert(name.clone(), value.clone());
                Response::Execution(tag)
            }
            Command::Reset(None) => {
                settings.clear();
                Response::Execution(tag)
            }
            Command::Reset(Some(name)) => {
                settings.remove(name);
                Response::Execution(tag)
            }
            Command::Ignored(_) => Response::Execution(tag),
            Command::Show(name) => {
                let value = settings
                    .get(name)
                    .cloned()
                    .or_else(|| pg_catalog::setting(name).map(str::to_string))
                    .ok_or_else(|| {
                        user_error(
                            "42704",
                            format!("unrecognized configuration parameter \"{name}\""),
                        )
                    })?;
                let fields = Arc::new(show_fields(command, format));
                text_rows(fields, vec![vec![value]])?
            }
            Command::ShowAll => {
                let mut all: BTreeMap<String, String> = pg_catalog::SETTINGS
                    .iter()
                    .map(|(name, value)| (name.to_ascii_lowercase(), value.to_string()))
                    .collect();
                all.extend(settings.clone());
                let fields = Arc::new(show_fields(command, format));
                text_rows(
                    fields,
                    all.into_iter()
                        .map(|(name, value)| vec![name, value])
                        .collect(),
                )?
            }
        })
    }

    /// Runs a query with its parameters, as the signed-in user may.
    async fn query(
        &self,
        caller: &auth::Caller,
        statement: Statement,
        parameters: Vec<datafusion::common::ScalarValue>,
        format: &Format,
    ) -> PgWireResult<Response> {
        let started = std::time::Instant::now();
        let text = statement.to_string();
        let result = self
            .shared
            .engine
            .run(
                statement,
                parameters,
                caller.visibility(),
                Some(self.shared.max_rows),
            )
            .await;
        let outcome = match &result {
            Ok(answer) => format!("{} rows", answer.num_rows()),
            Err(e) => sqlstate(e).to_string(),
        };
        tracing::info!(
            token = caller.name(),
            outcome,
            ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
            sql = %text.chars().take(200).collect::<String>(),
            "postgres"
        );
        let answer = result.map_err(query_error)?;
        let fields = Arc::new(wire::fields(&answer.schema, format));
        let rows = wire::rows(&answer.batches, &fields)?;
        Ok(Response::Query(QueryResponse::new(
            fields,
            futures::stream::iter(rows.into_iter().map(Ok)),
        )))
    }
}

fn show_fields(command: &Command, format: &Format) -> Vec<FieldInfo> {
    let names = match command {
        Command::Show(name) => vec![
            pg_catalog::SETTINGS
                .iter()
                .find(|(known, _)| known.eq_ignore_ascii_case(name))
                .map_or(name.clone(), |(known, _)| known.to_string()),
        ],
        _ => vec!["name".to_string(), "setting".to_string()],
    };
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| FieldInfo::new(name, None, None, Type::TEXT, format.format_for(i)))
        .collect()
}

fn text_rows(fields: Arc<Vec<FieldInfo>>, values: Vec<Vec<String>>) -> PgWireResult<Response> {
    let mut encoder = pgwire::api::results::DataRowEncoder::new(fields.clone());
    let mut rows = Vec::with_capacity(values.len());
    for row in values {
        for value in row {
            encoder.encode_field(&value)?;
        }
        rows.push(Ok(encoder.take_row()));
    }
    Ok(Response::Query(QueryResponse::new(
        fields,
        futures::stream::iter(rows),
    )))
}

/// The one statement of `text`, parsed as PostgreSQL.
fn one_statement(text: &str) -> Result<Statement, QueryError> {
    let mut statements = DFParserBuilder::new(text)
        .with_dialect(&PostgreSqlDialect {})
        .build()
        .and_then(|mut parser| parser.parse_statements())
        .map_err(QueryError::Invalid)?;
    match statements.len() {
        1 => Ok(statements.pop_front().expect("one statement")),
        n => Err(QueryError::NotOneStatement(n)),
    }
}

/// The SQLSTATE PostgreSQL clients are told for each way a query can fail.
fn sqlstate(error: &QueryError) -> &'static str {
    match error {
        QueryError::Invalid(_) => "42000",
        QueryError::Failed(_) => "22000",
        QueryError::Refused(_) => "25006",
        QueryError::NotOneStatement(_) => "42601",
        QueryError::Timeout(_) => "57014",
        QueryError::MemoryLimit { .. } => "53200",
        QueryError::TooManyRows(_) => "54000",
        QueryError::Lake(_) => "58030",
        QueryError::Busy(_) => "53300",
    }
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

fn query_error(error: QueryError) -> PgWireError {
    user_error(sqlstate(&error), error.to_string())
}

#[async_trait]
impl SimpleQueryHandler for Session {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let _busy = self.activity.busy();
        let caller = self.caller(client)?;
        let mut responses = Vec::new();
        // As in PostgreSQL, the statements of one simple query run until the first error.
        for piece in commands::split(query) {
            let answered = match Command::parse(piece) {
                Some(command) => self.command(&command, &Format::UnifiedText),
                None => match one_statement(piece) {
                    Ok(statement) => {
                        self.query(caller, statement, vec![], &Format::UnifiedText)
                            .await
                    }
                    Err(e) => Err(query_error(e)),
                },
            };
            match answered {
                Ok(response) => responses.push(response),
                Err(PgWireError::UserError(info)) => {
                    responses.push(Response::Error(info));
                    break;
                }
                Err(other) => return Err(other),
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl QueryParser for Session {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let _busy = self.activity.busy();
        let caller = self.caller(client)?;
        self.prepare(caller, sql)
            .await
            .map(Some)
            .map_err(query_error)
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(match statement {
            Prepared::Command(_) => vec![],
            Prepared::Query { parameters, .. } => parameters
                .iter()
                .map(|p| p.as_ref().map_or(Type::TEXT, wire::wire_type))
                .collect(),
        })
    }

    fn get_result_schema(
        &self,
        statement: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let format = format.cloned().unwrap_or_default();
        Ok(match statement {
            Prepared::Command(command @ (Command::Show(_) | Command::ShowAll)) => {
                show_fields(command, &format)
            }
            Prepared::Command(_) => vec![],
            Prepared::Query { schema, .. } => wire::fields(schema, &format),
        })
    }
}

#[async_trait]
impl ExtendedQueryHandler for Session {
    type Statement = Prepared;
    type QueryParser = Session;

    fn query_parser(&self) -> Arc<Session> {
        Arc::new(self.clone())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let _busy = self.activity.busy();
        let caller = self.caller(client)?;
        let StoredStatement {
            statement,
            parameter_types,
            ..
        } = portal.statement.as_ref();
        match statement {
            Prepared::Command(command) => self.command(command, &portal.result_column_format),
            Prepared::Query {
                statement,
                parameters,
                ..
            } => {
                let values = wire::parameters(portal, parameter_types, parameters)?;
                self.query(
                    caller,
                    statement.clone(),
                    values,
                    &portal.result_column_format,
                )
                .await
            }
        }
    }
}
