//! PostgreSQL clients: `psql`, drivers (psycopg, JDBC) and BI tools query the lake over the
//! PostgreSQL protocol, signed in with the `[sql]` tokens.
//!
//! Owns the listener, sign-in, the session commands clients send around their queries, and
//! the translation of answers and errors to the wire. It must never run a statement except
//! through [`QueryEngine`], so that the read-only rule, the limits and a token's
//! institutions hold here exactly as they do for `POST /sql`.

mod auth;
mod commands;
mod copy;
mod cursors;
mod wire;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::sql::parser::{DFParserBuilder, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::portal::{Format, Portal, PortalExecutionState};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, ConnectionManager, PgWireConnectionState,
    PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::DataRow;
use pgwire::messages::extendedquery::{Describe, Execute};
use pgwire::messages::response::TransactionStatus;
use pgwire::messages::simplequery::Query;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Postgres, PostgresTls, Sql};
use crate::query::access::{Caller, Callers};
use crate::query::http::MAX_STATEMENT_BYTES;
use crate::query::pg_catalog;
use crate::query::{Answer, AnswerMemory, Batches, Encoder, Held, QueryEngine, QueryError};
use commands::Command;
use cursors::{Cursor, CursorStatement, Cursors};

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
    callers: Callers,
    connections: Arc<ConnectionManager>,
    max_rows: usize,
    /// Bytes of answers one session may hold in portals it has not fetched to their end.
    memory_limit: usize,
    /// Gives each session its own process id (pgwire's default starts each sign-in's own
    /// counter, so every session was 100000) and a random cancel key.
    pids: Arc<pgwire::api::RandomPidSecretKeyGenerator>,
    query_timeout: Duration,
}

/// A client must have signed in this long after it connected (or within `idle_timeout`,
/// if shorter): a silent socket holds a place of `max_connections` until then.
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings a session may `SET`, and the length of each value: `SET` only feeds `SHOW`, and
/// must not be a way to store data in the server.
const MAX_SETTINGS: usize = 64;
const MAX_SETTING_BYTES: usize = 4096;

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
                callers: Callers::new(sql),
                connections: Arc::new(ConnectionManager::new()),
                max_rows: sql.max_rows,
                memory_limit: sql.memory_limit,
                pids: Arc::default(),
                query_timeout: sql.timeout,
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
            let signed_in = auth::SignedIn::default();
            let session = Arc::new(Session {
                shared: self.shared.clone(),
                activity: activity.clone(),
                signed_in: signed_in.clone(),
                settings: Arc::default(),
                held: Arc::default(),
                cursors: Cursors::default(),
            });
            let handlers = Handlers {
                startup: Arc::new(auth::SignIn::new(
                    self.shared.callers.clone(),
                    signed_in,
                    self.shared.pids.clone(),
                    self.shared.connections.clone(),
                    self.config.tls_required,
                    activity.clone(),
                )),
                cancel: Arc::new(DefaultCancelHandler::new(self.shared.connections.clone())),
                session,
            };
            let tls = self.tls.clone();
            let limits = Watchdog {
                sign_in: SIGN_IN_TIMEOUT.min(self.config.idle_timeout),
                idle: self.config.idle_timeout,
                // Past its query's timeout, a busy session is writing an answer its client
                // does not read.
                stuck: self.shared.query_timeout + self.config.idle_timeout,
            };
            sessions.spawn(async move {
                let _permit = permit;
                let _open = OpenSession::count();
                tokio::select! {
                    ended = pgwire::tokio::process_socket(stream, tls, handlers) => {
                        if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "PostgreSQL session ended with an error");
                        }
                    }
                    why = activity.cut_off(limits) => {
                        tracing::info!(%peer, "closed a PostgreSQL session: {why}");
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

/// When a session's watchdog closes it.
#[derive(Debug, Clone, Copy)]
struct Watchdog {
    /// From connecting to signing in.
    sign_in: Duration,
    /// Between two messages of a signed-in client.
    idle: Duration,
    /// Handling one message (running a query, writing its answer).
    stuck: Duration,
}

/// What a session's watchdog watches: whether the client signed in, when it last did
/// something, and since when it has been busy.
pub struct Activity {
    state: Mutex<ActivityState>,
}

struct ActivityState {
    connected: Instant,
    signed_in: bool,
    last: Instant,
    busy: usize,
    busy_since: Instant,
}

impl Activity {
    fn new() -> Activity {
        let now = Instant::now();
        Activity {
            state: Mutex::new(ActivityState {
                connected: now,
                signed_in: false,
                last: now,
                busy: 0,
                busy_since: now,
            }),
        }
    }

    pub fn signed_in(&self) {
        let mut state = self.state.lock().expect("never poisoned");
        state.signed_in = true;
        state.last = Instant::now();
    }

    /// Marks a message being handled until the guard drops.
    fn busy(self: &Arc<Self>) -> Busy {
        let mut state = self.state.lock().expect("never poisoned");
        if state.busy == 0 {
            state.busy_since = Instant::now();
        }
        state.busy += 1;
        Busy(self.clone())
    }

    /// Completes, saying why, once the session must be closed: not signed in in time, idle
    /// for too long, or stuck on one message.
    async fn cut_off(&self, limits: Watchdog) -> String {
        loop {
            let (deadline, why) = {
                let state = self.state.lock().expect("never poisoned");
                match (state.signed_in, state.busy) {
                    (false, _) => (
                        state.connected + limits.sign_in,
                        "it did not sign in in time",
                    ),
                    (true, 0) => (state.last + limits.idle, "idle for postgres.idle_timeout"),
                    (true, _) => (
                        state.busy_since + limits.stuck,
                        "its answer was not read for postgres.idle_timeout past sql.timeout",
                    ),
                }
            };
            if Instant::now() >= deadline {
                return why.to_string();
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().expect("never poisoned");
        state.busy -= 1;
        state.last = Instant::now();
    }
}

/// Counts a session in `datx_postgres_sessions` for as long as it lives.
struct OpenSession;

impl OpenSession {
    fn count() -> OpenSession {
        crate::metrics::postgres_sessions(1.0);
        OpenSession
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        crate::metrics::postgres_sessions(-1.0);
    }
}

struct Handlers {
    startup: Arc<auth::SignIn>,
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
    /// Who signed in on this connection.
    signed_in: auth::SignedIn,
    /// What `SET` changed, for `SHOW`: lower-cased name to value.
    settings: Arc<Mutex<BTreeMap<String, String>>>,
    /// Bytes of answers held in this session's portals until fetched to their end.
    held: Arc<AtomicUsize>,
    /// The cursors `DECLARE` opened.
    cursors: Cursors,
}

/// Rows of an answer as they are produced: each chunk's share of the answer budget is
/// given back once its last row is handed to the connection (whose buffer writes out
/// before it takes more). A cancel request stops them, and the query with them.
struct AnswerRows {
    answer: Answer<Vec<DataRow>>,
    rows: std::vec::IntoIter<DataRow>,
    memory: Option<AnswerMemory>,
    cancel: CancelWatch,
}

/// The client's cancel request, watched while rows are sent: pgwire watches for it only
/// until its handler returns, which for a streamed answer is when the first batch is ready.
enum CancelWatch {
    Off,
    Arming(std::pin::Pin<Box<dyn Future<Output = futures::channel::oneshot::Receiver<()>> + Send>>),
    Armed(futures::channel::oneshot::Receiver<()>),
}

impl CancelWatch {
    /// Armed at the first poll of the rows, once pgwire's own watch has ended (arming
    /// replaces it).
    // Arming yields the receiver, itself a future: it is awaited by `cancelled`.
    #[allow(clippy::async_yields_async)]
    fn of(connection: Option<Arc<ConnectionHandle>>) -> CancelWatch {
        match connection {
            None => CancelWatch::Off,
            Some(handle) => {
                CancelWatch::Arming(Box::pin(async move { handle.start_query().await }))
            }
        }
    }

    /// Whether the client asked to cancel.
    fn cancelled(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        use std::task::Poll;
        if let CancelWatch::Arming(arming) = self {
            match arming.as_mut().poll(cx) {
                Poll::Ready(receiver) => *self = CancelWatch::Armed(receiver),
                Poll::Pending => return false,
            }
        }
        let CancelWatch::Armed(receiver) = self else {
            return false;
        };
        match std::pin::Pin::new(receiver).poll(cx) {
            Poll::Ready(Ok(())) => true,
            // Another query of the session took the watch over.
            Poll::Ready(Err(_)) => {
                *self = CancelWatch::Off;
                false
            }
            Poll::Pending => false,
        }
    }
}

impl AnswerRows {
    fn new(answer: Answer<Vec<DataRow>>, connection: Option<Arc<ConnectionHandle>>) -> AnswerRows {
        AnswerRows {
            answer,
            rows: Vec::new().into_iter(),
            memory: None,
            cancel: CancelWatch::of(connection),
        }
    }
}

impl futures::Stream for AnswerRows {
    type Item = PgWireResult<DataRow>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.cancel.cancelled(cx) {
            // The answer is dropped with the stream, which stops the query.
            self.cancel = CancelWatch::Off;
            self.rows = Vec::new().into_iter();
            return std::task::Poll::Ready(Some(Err(PgWireError::QueryCanceled)));
        }
        loop {
            if let Some(row) = self.rows.next() {
                return std::task::Poll::Ready(Some(Ok(row)));
            }
            self.memory = None;
            match std::task::ready!(self.answer.poll_next(cx)) {
                Some(Ok(Held { chunk, memory })) => {
                    self.rows = chunk.into_iter();
                    self.memory = Some(memory);
                }
                Some(Err(e)) => return std::task::Poll::Ready(Some(Err(query_error(e)))),
                None => return std::task::Poll::Ready(None),
            }
        }
    }
}

/// An answer kept whole for a portal that a client fetches a few rows at a time (a JDBC
/// fetch size): counted in its session's held bytes, and in the answer budget, until it is
/// all sent or the portal is closed. Produced to its end at once, so that a forgotten
/// portal holds memory, never a query slot.
struct HeldRows {
    rows: std::vec::IntoIter<DataRow>,
    held: Arc<AtomicUsize>,
    bytes: usize,
    _memory: AnswerMemory,
}

impl futures::Stream for HeldRows {
    type Item = PgWireResult<DataRow>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.rows.next().map(Ok))
    }
}

impl Drop for HeldRows {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// An answer's batches as PostgreSQL data rows, encoded on the query's threads in the
/// format the client asked for.
#[derive(Clone)]
struct RowEncoder {
    format: Format,
    /// The row description, once the answer's schema is known.
    fields: Arc<Vec<FieldInfo>>,
}

impl RowEncoder {
    fn new(format: Format) -> RowEncoder {
        RowEncoder {
            format,
            fields: Arc::default(),
        }
    }
}

impl Encoder for RowEncoder {
    type Chunk = Vec<DataRow>;

    fn start(&mut self, schema: &SchemaRef) -> Result<Option<Vec<DataRow>>, QueryError> {
        self.fields = Arc::new(wire::fields(schema, &self.format));
        Ok(None)
    }

    fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<DataRow>, QueryError> {
        wire::rows(std::slice::from_ref(batch), &self.fields)
            .map_err(|e| QueryError::Unwritable(Box::new(e)))
    }

    fn finish(&mut self) -> Result<Option<Vec<DataRow>>, QueryError> {
        Ok(None)
    }

    fn size(rows: &Vec<DataRow>) -> usize {
        rows.iter().map(|row| row.data.len() + ROW_OVERHEAD).sum()
    }
}

/// What a data row costs besides its values: its buffer and its place in a vector.
const ROW_OVERHEAD: usize = 48;

/// A statement as parsed and described when a client prepares it.
#[derive(Debug, Clone)]
pub enum Prepared {
    Command(Command),
    /// A cursor statement; for a `DECLARE`, the types of its query's parameters.
    Cursor {
        statement: CursorStatement,
        parameters: Vec<Option<DataType>>,
    },
    Query {
        statement: Statement,
        parameters: Vec<Option<DataType>>,
        schema: SchemaRef,
    },
}

impl Session {
    /// The caller who signed in on this connection: a session that did not sign in has
    /// none, and sees nothing.
    fn caller(&self) -> PgWireResult<&Caller> {
        self.signed_in
            .get()
            .map(|caller| caller.as_ref())
            .ok_or(PgWireError::UserNameRequired)
    }

    /// Parses one statement: a session command, or a query described by the engine. Each
    /// parameter the client declared a type for is read as that type (`$1` becomes
    /// `CAST($1 AS DOUBLE)` for a float8), so that the statement computes with the value
    /// sent, never with one cast to what the statement alone would suggest (`$1 * 2` with
    /// 1.5 is 3, not 2).
    async fn prepare(
        &self,
        caller: &Caller,
        pid: i32,
        text: &str,
        declared: &[Option<Type>],
    ) -> PgWireResult<Prepared> {
        check_length(text).map_err(query_error)?;
        if copy::is_copy(text) {
            return Err(copy_alone());
        }
        if cursors::is_cursor_statement(text) {
            let mut statement = cursors::parse(text)?;
            let CursorStatement::Declare { query, .. } = &mut statement else {
                return Ok(Prepared::Cursor {
                    statement,
                    parameters: vec![],
                });
            };
            say_who_asks(query, caller.user(), pid);
            wire::read_parameters_as_declared(query, declared);
            let parameters = self.parameter_types(query, caller, declared).await?.0;
            return Ok(Prepared::Cursor {
                statement,
                parameters,
            });
        }
        if let Some(command) = Command::parse(text) {
            return Ok(Prepared::Command(command));
        }
        let mut statement = one_statement(text).map_err(query_error)?;
        say_who_asks(&mut statement, caller.user(), pid);
        wire::read_parameters_as_declared(&mut statement, declared);
        let (parameters, schema) = self.parameter_types(&statement, caller, declared).await?;
        Ok(Prepared::Query {
            statement,
            parameters,
            schema,
        })
    }

    /// The types of `statement`'s parameters, as the client declared them or else as the
    /// engine infers them, and the schema of its answer.
    async fn parameter_types(
        &self,
        statement: &Statement,
        caller: &Caller,
        declared: &[Option<Type>],
    ) -> PgWireResult<(Vec<Option<DataType>>, SchemaRef)> {
        let described = self
            .shared
            .engine
            .describe(statement.clone(), caller.visibility())
            .await
            .map_err(query_error)?;
        let cast = wire::types_from_casts(statement);
        let count = described.parameters.len().max(declared.len());
        let parameters = (0..count)
            .map(|i| {
                let declared = declared.get(i).cloned().flatten();
                declared
                    .as_ref()
                    .and_then(wire::arrow_type)
                    .or_else(|| described.parameters.get(i).cloned().flatten())
                    .or_else(|| cast.get(&i).cloned())
            })
            .collect();
        Ok((parameters, described.schema))
    }

    /// Runs a cursor statement. `in_block`: whether the session is in a transaction
    /// block, where a cursor without `WITH HOLD` must be declared. A declared cursor's
    /// schema is returned beside the answer, for the portal a client may describe.
    async fn cursor_statement(
        &self,
        statement: &CursorStatement,
        values: Vec<datafusion::common::ScalarValue>,
        format: &Format,
        in_block: bool,
    ) -> PgWireResult<(Response, Option<SchemaRef>)> {
        match statement {
            CursorStatement::Declare { name, hold, query } => {
                if !hold && !in_block {
                    return Err(user_error(
                        "25P01",
                        "DECLARE CURSOR can only be used in transaction blocks (or WITH HOLD)"
                            .into(),
                    ));
                }
                self.cursors.check_room(name)?;
                let caller = self.caller()?;
                let started = std::time::Instant::now();
                // Read as fetched, in bounded memory: not held to `max_rows`, which
                // bounds an answer received as one result.
                let result = self
                    .shared
                    .engine
                    .run(query.clone(), values, caller.visibility(), None, Batches)
                    .await;
                record_query(caller, &result, started, &query.to_string());
                let cursor = Cursor::new(result.map_err(query_error)?, *hold);
                let schema = cursor.schema.clone();
                self.cursors.open(name, cursor)?;
                Ok((
                    Response::Execution(Tag::new("DECLARE CURSOR")),
                    Some(schema),
                ))
            }
            CursorStatement::Fetch { name, count } => {
                let (fields, rows) = self.cursors.fetch(name, *count, format)?;
                let mut response = QueryResponse::new(fields, rows);
                response.set_command_tag("FETCH");
                Ok((Response::Query(response), None))
            }
            CursorStatement::Close(name) => {
                self.cursors.close(name.as_deref())?;
                Ok((Response::Execution(Tag::new("CLOSE CURSOR")), None))
            }
        }
    }

    /// Runs a session command.
    fn command(&self, command: &Command, format: &Format) -> PgWireResult<Response> {
        let mut settings = self.settings.lock().expect("never poisoned");
        let tag = Tag::new(command.tag());
        Ok(match command {
            Command::Begin => Response::TransactionStart(tag),
            Command::Commit | Command::Rollback => {
                self.cursors.end_transaction();
                Response::TransactionEnd(tag)
            }
            Command::Set { name, value } => {
                let new = !settings.contains_key(name);
                if value.len() > MAX_SETTING_BYTES || (new && settings.len() >= MAX_SETTINGS) {
                    return Err(user_error(
                        "54000",
                        format!(
                            "a session keeps at most {MAX_SETTINGS} settings of {MAX_SETTING_BYTES} bytes each"
                        ),
                    ));
                }
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

    /// Executes a query's portal to its end, sending rows as they are produced. A cancel
    /// request stops it wherever it is, answering included, and the query with it.
    async fn execute_streaming<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        client.set_state(PgWireConnectionState::QueryInProgress);
        let cancelled = match connection_of(client) {
            Some(handle) => Some(handle.start_query().await),
            None => None,
        };
        let run = async {
            let response = ExtendedQueryHandler::do_query(self, client, portal, 0).await?;
            let Response::Query(mut results) = response else {
                return Err(PgWireError::ApiError("a query gave no rows".into()));
            };
            let mut rows = 0;
            while let Some(row) = results.data_rows().next().await {
                client.feed(PgWireBackendMessage::DataRow(row?)).await?;
                rows += 1;
            }
            let tag = Tag::new(results.command_tag()).with_rows(rows);
            client
                .feed(PgWireBackendMessage::CommandComplete(tag.into()))
                .await?;
            Ok(())
        };
        let result = match cancelled {
            None => run.await,
            Some(mut cancelled) => {
                tokio::pin!(run);
                tokio::select! {
                    result = &mut run => result,
                    Ok(()) = &mut cancelled => Err(PgWireError::QueryCanceled),
                }
            }
        };
        *portal.state().lock().await = PortalExecutionState::Finished;
        if result.is_ok() {
            client.set_state(PgWireConnectionState::ReadyForQuery);
        }
        result
    }

    /// Runs a query with its parameters, as the signed-in user may. Its rows are sent as
    /// they are produced, or, for a portal fetched a few rows at a time (`held`), kept whole
    /// in the session.
    async fn query(
        &self,
        caller: &Caller,
        statement: Statement,
        parameters: Vec<datafusion::common::ScalarValue>,
        format: &Format,
        held: bool,
        connection: Option<Arc<ConnectionHandle>>,
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
                RowEncoder::new(format.clone()),
            )
            .await;
        record_query(caller, &result, started, &text);
        let answer = result.map_err(query_error)?;
        let fields = Arc::new(wire::fields(&answer.schema, format));
        if !held {
            return Ok(Response::Query(QueryResponse::new(
                fields,
                AnswerRows::new(answer, connection),
            )));
        }
        // Each chunk's share is given back as its rows are kept here: the producer must
        // never wait for room that this session holds. What is kept is counted in the
        // session as it arrives, then taken from the budget at once, without waiting.
        let too_much = |held: usize, bytes: usize| {
            user_error(
                "53200",
                format!(
                    "this answer ({bytes} bytes so far) and those waiting in this session's open portals ({held} bytes) are more than sql.memory_limit ({} bytes): fetch those to their end or close them",
                    self.shared.memory_limit
                ),
            )
        };
        let already = self.held.load(Ordering::Relaxed);
        let (mut rows, mut bytes) = (Vec::new(), 0);
        let mut answer = answer;
        while let Some(chunk) = answer.next().await {
            let Held { chunk, memory } = chunk.map_err(query_error)?;
            drop(memory);
            bytes += RowEncoder::size(&chunk);
            if already + bytes > self.shared.memory_limit {
                return Err(too_much(already, bytes));
            }
            rows.extend(chunk);
        }
        let budget = self.shared.engine.answer_budget();
        let memory = budget
            .try_take(bytes)
            .map_err(query_error)?
            .ok_or_else(|| query_error(QueryError::AnswersBusy(budget.bytes())))?;
        let held = self.held.fetch_add(bytes, Ordering::Relaxed);
        let rows = HeldRows {
            rows: rows.into_iter(),
            held: self.held.clone(),
            bytes,
            _memory: memory,
        };
        if held + bytes > self.shared.memory_limit {
            return Err(too_much(held, bytes));
        }
        Ok(Response::Query(QueryResponse::new(fields, rows)))
    }
}

/// Logs a statement's outcome and counts it in the metrics, by token and SQLSTATE.
fn record_query<T>(
    caller: &Caller,
    result: &Result<T, QueryError>,
    started: std::time::Instant,
    text: &str,
) {
    let code = result.as_ref().map_or_else(sqlstate, |_| "00000");
    record_outcome(caller, code, started, text);
}

/// Logs and counts a statement's outcome by its SQLSTATE.
fn record_outcome(caller: &Caller, code: &str, started: std::time::Instant, text: &str) {
    tracing::info!(
        token = caller.name(),
        sqlstate = code,
        ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
        sql = %text.chars().take(200).collect::<String>(),
        "postgres"
    );
    crate::metrics::postgres_query(caller.name(), code, started.elapsed());
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
        .map(|(i, name)| FieldInfo::new(name, None, None, Type::TEXT, wire::format_of(format, i)))
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

/// The handle a cancel request for `client`'s connection fires.
fn connection_of<C: ClientInfo>(client: &C) -> Option<Arc<ConnectionHandle>> {
    client
        .session_extensions()
        .get::<Arc<ConnectionHandle>>()
        .map(|handle| handle.as_ref().clone())
}

/// The portal an `Execute` names, when it is a query that has not run yet.
async fn fresh_query_portal<C>(client: &mut C, message: &Execute) -> Option<Arc<Portal<Prepared>>>
where
    C: ClientInfo + ClientPortalStore,
    C::PortalStore: PortalStore<Statement = Prepared>,
{
    if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
        return None;
    }
    let name = message.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME);
    let Some(Entry::Value(portal)) = client.portal_store().get_portal(name) else {
        return None;
    };
    let fresh = matches!(*portal.state().lock().await, PortalExecutionState::Initial);
    let streams = matches!(
        portal.statement.statement,
        Prepared::Query { .. }
            | Prepared::Cursor {
                statement: CursorStatement::Fetch { .. },
                ..
            }
    );
    (fresh && streams).then_some(portal)
}

/// Refuses statement text longer than `POST /sql` takes: SQL, not data. (The protocol has
/// already carried it, up to its own 1 GiB limit, but it is neither parsed nor kept.)
fn check_length(text: &str) -> Result<(), QueryError> {
    match text.len() as u64 > MAX_STATEMENT_BYTES {
        true => Err(QueryError::TooLong(MAX_STATEMENT_BYTES)),
        false => Ok(()),
    }
}

/// What only the session knows, which the engine's sessions do not: `current_user`,
/// `session_user`, `user` and `current_role` name the signed-in user, and
/// `pg_backend_pid()` is this session's own process id (the one its cancel key carries).
/// Each becomes a literal.
fn say_who_asks(statement: &mut Statement, user: &str, pid: i32) {
    use datafusion::sql::sqlparser::ast::{Expr, FunctionArguments, Value, visit_expressions_mut};
    if let Statement::Statement(inner) = statement {
        let _ = visit_expressions_mut(inner.as_mut(), |expr| {
            if let Expr::Function(function) = expr {
                let name = function.name.to_string().to_ascii_lowercase();
                let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
                let no_arguments = match &function.args {
                    FunctionArguments::None => true,
                    FunctionArguments::List(list) => list.args.is_empty(),
                    FunctionArguments::Subquery(_) => false,
                };
                if matches!(function.args, FunctionArguments::None)
                    && ["current_user", "session_user", "user", "current_role"].contains(&name)
                {
                    *expr = Expr::value(Value::SingleQuotedString(user.to_string()));
                } else if no_arguments && name == "pg_backend_pid" {
                    // An int4, as PostgreSQL's.
                    *expr = Expr::Cast {
                        kind: datafusion::sql::sqlparser::ast::CastKind::Cast,
                        expr: Box::new(Expr::value(Value::Number(pid.to_string(), false))),
                        data_type: datafusion::sql::sqlparser::ast::DataType::Int(None),
                        array: false,
                        format: None,
                    };
                }
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
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
        // DataFusion folds `1 / 0` while planning, so either kind may divide by zero.
        QueryError::Invalid(e) | QueryError::Failed(e)
            if e.to_string().contains("Divide by zero") =>
        {
            "22012"
        }
        QueryError::Invalid(_) => "42000",
        QueryError::Failed(_) => "22000",
        QueryError::Refused(_) => "25006",
        QueryError::NotOneStatement(_) => "42601",
        QueryError::TooLong(_) => "54000",
        QueryError::Timeout(_) => "57014",
        QueryError::MemoryLimit { .. } => "53200",
        QueryError::TooManyRows(_) => "54000",
        QueryError::Lake(_) => "58030",
        QueryError::Busy(_) => "53300",
        QueryError::AnswersBusy(_) | QueryError::AnswerTooLarge { .. } => "53200",
        QueryError::Unwritable(_) => "22000",
    }
}

/// COPY runs as a query of its own in the simple protocol, as psql and drivers send it.
fn copy_alone() -> PgWireError {
    user_error(
        "0A000",
        "COPY ... TO STDOUT must be sent alone, as a simple query (with no parameters)".into(),
    )
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

fn error_info(error: &QueryError) -> ErrorInfo {
    ErrorInfo::new("ERROR".into(), sqlstate(error).into(), error.to_string())
}

fn query_error(error: QueryError) -> PgWireError {
    match error {
        // A value the wire cannot carry: the encoder said which, with its SQLSTATE.
        QueryError::Unwritable(inner) => match inner.downcast::<PgWireError>() {
            Ok(wire) => *wire,
            Err(other) => {
                PgWireError::UserError(Box::new(error_info(&QueryError::Unwritable(other))))
            }
        },
        error => PgWireError::UserError(Box::new(error_info(&error))),
    }
}

#[async_trait]
impl SimpleQueryHandler for Session {
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Busy until the answer is written, so a client that stops reading is seen as stuck.
        let _busy = self.activity.busy();
        if copy::is_copy(&query.query) && commands::split(&query.query).len() == 1 {
            return self.copy_out(client, &query.query).await;
        }
        self._on_query(client, query).await
    }

    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let caller = self.caller()?;
        if let Err(e) = check_length(query) {
            return Ok(vec![Response::Error(Box::new(error_info(&e)))]);
        }
        let mut responses = Vec::new();
        let pieces = commands::split(query);
        let mut in_block = client.transaction_status() != TransactionStatus::Idle;
        // As in PostgreSQL, the statements of one simple query run until the first error.
        for (i, piece) in pieces.iter().enumerate() {
            // pgwire sends the answers once all have run: only the last one streams, the
            // others are kept whole, each after its query has given back its slot.
            let held = i + 1 < pieces.len();
            let command = match cursors::is_cursor_statement(piece) {
                true => None,
                false => Command::parse(piece),
            };
            let answered = match command {
                Some(command) => {
                    in_block = match command {
                        Command::Begin => true,
                        Command::Commit | Command::Rollback => false,
                        _ => in_block,
                    };
                    self.command(&command, &Format::UnifiedText)
                }
                None if copy::is_copy(piece) => Err(copy_alone()),
                None if cursors::is_cursor_statement(piece) => {
                    self.simple_cursor_statement(caller, client, piece, held, in_block)
                        .await
                }
                None => match one_statement(piece) {
                    Ok(mut statement) => {
                        say_who_asks(&mut statement, caller.user(), client.pid_and_secret_key().0);
                        self.query(
                            caller,
                            statement,
                            vec![],
                            &Format::UnifiedText,
                            held,
                            connection_of(client),
                        )
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

impl Session {
    /// A cursor statement of a simple query. A fetch that is not the query's last
    /// statement is read whole now: the statements after it may use the same cursor.
    async fn simple_cursor_statement<C: ClientInfo>(
        &self,
        caller: &Caller,
        client: &C,
        piece: &str,
        held: bool,
        in_block: bool,
    ) -> PgWireResult<Response> {
        let mut statement = cursors::parse(piece)?;
        if let CursorStatement::Declare { query, .. } = &mut statement {
            say_who_asks(query, caller.user(), client.pid_and_secret_key().0);
        }
        let (response, _) = self
            .cursor_statement(&statement, vec![], &Format::UnifiedText, in_block)
            .await?;
        let Response::Query(mut fetched) = response else {
            return Ok(response);
        };
        if !held {
            return Ok(Response::Query(fetched));
        }
        let (mut rows, mut bytes) = (Vec::new(), 0);
        while let Some(row) = fetched.data_rows().next().await {
            let row = row?;
            bytes += row.data.len() + ROW_OVERHEAD;
            if bytes > self.shared.memory_limit {
                return Err(user_error(
                    "53200",
                    format!(
                        "a FETCH followed by other statements in one query is kept whole, and this one passed sql.memory_limit ({} bytes): send it alone",
                        self.shared.memory_limit
                    ),
                ));
            }
            rows.push(Ok(row));
        }
        let mut whole = QueryResponse::new(fetched.row_schema(), futures::stream::iter(rows));
        whole.set_command_tag("FETCH");
        Ok(Response::Query(whole))
    }
}

#[async_trait]
impl QueryParser for Session {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let _busy = self.activity.busy();
        let caller = self.caller()?;
        let pid = client.pid_and_secret_key().0;
        self.prepare(caller, pid, sql, types).await.map(Some)
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(match statement {
            Prepared::Command(_) => vec![],
            Prepared::Query { parameters, .. } | Prepared::Cursor { parameters, .. } => parameters
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
            Prepared::Cursor {
                statement: CursorStatement::Fetch { name, .. },
                ..
            } => wire::fields(&*self.cursors.schema(name)?, &format),
            Prepared::Cursor { .. } => vec![],
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

    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Each fetch from a portal counts as activity, and its rows are written while busy.
        let _busy = self.activity.busy();
        // A query's portal run to its end (no row limit) streams its rows; pgwire's own
        // execution would gather them all first.
        if message.max_rows == 0
            && let Some(portal) = fresh_query_portal(client, &message).await
        {
            return self.execute_streaming(client, &portal).await;
        }
        self._on_execute(client, message).await
    }

    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let _busy = self.activity.busy();
        self._on_describe(client, message).await
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let caller = self.caller()?;
        let StoredStatement {
            statement,
            parameter_types,
            ..
        } = portal.statement.as_ref();
        match statement {
            Prepared::Command(command) => self.command(command, &portal.result_column_format),
            Prepared::Cursor {
                statement,
                parameters,
            } => {
                let values = wire::parameters(portal, parameter_types, parameters)?;
                let in_block = client.transaction_status() != TransactionStatus::Idle;
                let (response, declared) = self
                    .cursor_statement(statement, values, &portal.result_column_format, in_block)
                    .await?;
                // The cursor is also a portal of its name, which psycopg describes.
                if let (CursorStatement::Declare { name, query, .. }, Some(schema)) =
                    (statement, declared)
                {
                    let described = Prepared::Query {
                        statement: query.clone(),
                        parameters: vec![],
                        schema,
                    };
                    let stored = StoredStatement::new(name.clone(), described, vec![]);
                    client
                        .portal_store()
                        .put_portal(Arc::new(Portal::new_cursor(name.clone(), Arc::new(stored))));
                }
                if let CursorStatement::Close(Some(name)) = statement {
                    client.portal_store().rm_portal(name);
                }
                Ok(response)
            }
            Prepared::Query {
                statement,
                parameters,
                schema,
            } => {
                wire::check_formats(
                    &portal.result_column_format,
                    schema.fields().len(),
                    "result",
                )?;
                let values = wire::parameters(portal, parameter_types, parameters)?;
                // Fetched a few rows at a time, the answer waits in the portal: kept whole.
                self.query(
                    caller,
                    statement.clone(),
                    values,
                    &portal.result_column_format,
                    max_rows > 0,
                    connection_of(client),
                )
                .await
            }
        }
    }
}
