//! Querying: read-only SQL over exactly the files of the latest compaction commit.
//!
//! Owns the DataFusion session (the lake's tables and the current-state views), the refusal
//! of anything that would create, change or drop, the institutions a caller may see, and
//! the time and memory limits. The command line and `POST /sql` both go through
//! [`QueryEngine::run`]. It reads commits and Parquet files; it must never write to the
//! lake, and never find files by listing directories.

pub mod access;
pub mod answer;
mod guard;
pub mod http;
pub mod output;
pub mod pg_catalog;
mod pg_functions;
mod table;
mod views;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::commit::{CommitError, CommitLog, DataFile, LakeState};
use crate::config::Sql;
use crate::store::Store;
use crate::tables::Table;
pub use answer::{Answer, AnswerBudget, AnswerMemory, Batches, Encoder, Held};
use table::CommittedTable;
pub use views::views;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The statement does not parse or plan: DataFusion's own message.
    #[error("{0}")]
    Invalid(DataFusionError),
    /// The statement failed while it ran: DataFusion's own message.
    #[error("{0}")]
    Failed(DataFusionError),
    #[error("only queries that read are allowed here: {0}")]
    Refused(String),
    #[error("send exactly one SQL statement (this text has {0})")]
    NotOneStatement(usize),
    #[error("the statement is longer than {0} bytes: SQL, not data, is sent here")]
    TooLong(u64),
    #[error("the query ran past its time limit of {} (sql.timeout) and was cancelled", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error(
        "the query needed more memory than its limit of {limit} bytes (sql.memory_limit) and was cancelled: {message}"
    )]
    MemoryLimit { limit: usize, message: String },
    #[error("the answer has more than {0} rows (sql.max_rows): add a LIMIT or aggregate")]
    TooManyRows(usize),
    #[error("cannot read the lake's commits: {0}")]
    Lake(#[from] CommitError),
    #[error(
        "{0} queries are running already (sql.max_concurrent) and none finished in time: try again shortly"
    )]
    Busy(usize),
    #[error(
        "the answers on their way to clients hold all of sql.answer_memory ({0} bytes) and none made room in time: try again shortly"
    )]
    AnswersBusy(usize),
    #[error(
        "one batch of the answer holds {bytes} bytes, more than sql.answer_memory ({budget} bytes) can ever hold: select fewer or smaller columns"
    )]
    AnswerTooLarge { bytes: usize, budget: usize },
    /// A value the client's format cannot carry; the door that encodes knows the details.
    #[error("{0}")]
    Unwritable(Box<dyn std::error::Error + Send + Sync>),
}

/// What a statement would answer, found by planning it without running it: for clients
/// that ask before they execute (the PostgreSQL extended protocol).
#[derive(Debug)]
pub struct Description {
    /// The type of each `$n` placeholder, `None` where the statement leaves it open.
    pub parameters: Vec<Option<DataType>>,
    pub schema: SchemaRef,
}

/// What one query may see: every institution, or only some.
#[derive(Debug, Clone, Copy)]
pub enum Visibility<'a> {
    All,
    Only(&'a BTreeSet<String>),
}

/// A file read by a query can vanish when a compaction retires it, and a new commit's files
/// are missing for the instant between the commit and their rename. A query that fails
/// while either happened is run again on the latest commit, this many times at most.
const RETRIES_WHEN_FILES_MOVED: u32 = 5;

/// Parameters one statement may take: what the PostgreSQL protocol can bind (a 16-bit count).
pub const MAX_PARAMETERS: usize = 65_535;

/// The live files of one commit, by table.
struct Snapshot {
    version: u64,
    /// Shared by every session on this commit that sees all institutions.
    files: BTreeMap<Table, Arc<[DataFile]>>,
    /// The files the commit added: they appear only once the compactor has renamed them.
    /// (It finishes a commit's moves before it makes the next commit, so older commits'
    /// files are all in place.)
    added: Vec<String>,
}

pub struct QueryEngine {
    commits: CommitLog,
    /// `None` until the first query loads the commit log (from its latest checkpoint).
    state: Mutex<Option<(LakeState, Arc<Snapshot>)>>,
    lake_url: ObjectStoreUrl,
    /// Holds what queries share: the lake's object store and the Parquet metadata cache.
    shared: Arc<RuntimeEnv>,
    limits: Sql,
    /// Two per core rather than DataFusion's one: the current-state views and most saved
    /// queries partition work by institution, and a venue or two hashed onto each of two
    /// partitions often leaves one core idle. Measured on the query benchmark (2 cores):
    /// contacts_by_week 0.53 s with 2 partitions, 0.37 s with 4, 0.41 s with 8.
    target_partitions: usize,
    /// Queries run on their own threads, so a heavy one cannot delay the receiving side's
    /// acknowledgements, and a cancelled one stops where it is.
    runtime: QueryRuntime,
    /// One permit per query allowed to run at once.
    running: Arc<tokio::sync::Semaphore>,
    /// Memory for answers on their way to clients, shared by every query.
    answers: AnswerBudget,
}

impl QueryEngine {
    pub fn new(store: Store, limits: Sql) -> Result<QueryEngine, QueryError> {
        let lake_url = ObjectStoreUrl::parse("datx://lake").map_err(QueryError::Invalid)?;
        let shared = RuntimeEnvBuilder::new()
            .build_arc()
            .map_err(QueryError::Invalid)?;
        shared.register_object_store(lake_url.as_ref(), store.object_store());
        Ok(QueryEngine {
            commits: CommitLog::new(store),
            state: Mutex::new(None),
            lake_url,
            shared,
            target_partitions: 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            runtime: QueryRuntime::start(),
            running: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent)),
            answers: AnswerBudget::new(limits.answer_memory),
            limits,
        })
    }

    /// Runs one statement as the caller `visible` allows, with `parameters` for its `$1`,
    /// `$2`...; `max_rows` bounds the answer. Returns once the answer's first batch is
    /// produced (so that a statement that fails at once fails here, with its reason, and one
    /// that met files moving under it is run again), with the rest of it to come as
    /// `encoder`'s chunks. The query keeps its slot until its last batch is produced, and
    /// the whole of it must be produced within `sql.timeout`.
    pub async fn run<E: Encoder>(
        &self,
        statement: Statement,
        parameters: Vec<ScalarValue>,
        visible: Visibility<'_>,
        max_rows: Option<usize>,
        encoder: E,
    ) -> Result<Answer<E::Chunk>, QueryError> {
        let slot = Arc::new(self.slot().await?);
        let deadline = Instant::now() + self.limits.timeout;
        let mut attempt = 0;
        loop {
            let snapshot = self.snapshot().await?;
            let session = self.session(&snapshot, visible).await?;
            let (first_batch, first_known) = tokio::sync::oneshot::channel();
            let (chunks, received) = tokio::sync::mpsc::channel(1);
            let ended = answer::EndReason::default();
            let complete = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let production = Production {
                session,
                statement: statement.clone(),
                parameters: parameters.clone(),
                max_rows,
                memory_limit: self.limits.memory_limit,
                budget: self.answers.clone(),
                wait_for_room: self.limits.timeout / 2,
                encoder: encoder.clone(),
            };
            let ended_by_producer = ended.clone();
            let complete_by_producer = complete.clone();
            let timeout = self.limits.timeout;
            let slot_held = slot.clone();
            let mut producer = self.runtime.spawn(async move {
                let _slot = slot_held;
                let produced = production
                    .run(first_batch, &chunks, QueryTime::new(timeout))
                    .await;
                // Said before `chunks` closes, so that the door that finds it closed knows why.
                match produced {
                    Ok(()) => {
                        complete_by_producer.store(true, std::sync::atomic::Ordering::Release)
                    }
                    Err(e) => *ended_by_producer.lock().expect("never poisoned") = Some(e),
                }
                drop(chunks);
            });
            let first = tokio::time::timeout_at(deadline, first_known).await;
            let result = match first {
                Ok(Ok(result)) => result,
                // The producer ended without a word: it failed, or ran out of time.
                Ok(Err(_)) => {
                    let _ = (&mut producer).await;
                    Err(ended
                        .lock()
                        .expect("never poisoned")
                        .take()
                        .unwrap_or_else(|| {
                            QueryError::Failed(DataFusionError::Execution(
                                "the query stopped unexpectedly".into(),
                            ))
                        }))
                }
                // Dropping the producer drops its streams, which stops DataFusion's work.
                Err(_) => return Err(QueryError::Timeout(self.limits.timeout)),
            };
            match result {
                Err(QueryError::Failed(e))
                    if attempt < RETRIES_WHEN_FILES_MOVED
                        && self.files_moved(&snapshot, &e).await? =>
                {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "files moved under a query; running it again");
                    tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
                }
                Err(e) => return Err(self.explain(e)),
                Ok(schema) => {
                    return Ok(Answer::new(schema, received, ended, complete, producer));
                }
            }
        }
    }

    /// The answer budget every query of this engine shares.
    pub fn answer_budget(&self) -> &AnswerBudget {
        &self.answers
    }

    /// Plans one statement as [`QueryEngine::run`] would, within the same limits, and says
    /// what it would take and answer. A statement that would write is refused here too.
    pub async fn describe(
        &self,
        statement: Statement,
        visible: Visibility<'_>,
    ) -> Result<Description, QueryError> {
        let _slot = self.slot().await?;
        let snapshot = self.snapshot().await?;
        let session = self.session(&snapshot, visible).await?;
        let planning = self.runtime.spawn(async move {
            let plan = read_only_plan(&session, statement).await?;
            let mut found = plan.get_parameter_types().map_err(QueryError::Invalid)?;
            // Placeholders are `$1`, `$2`...: the highest number says how many there are,
            // up to what the protocol can bind (an absurd `$4294967295` would otherwise ask
            // for a slot per number).
            let count = found
                .keys()
                .filter_map(|id| id.strip_prefix('$')?.parse::<usize>().ok())
                .max()
                .unwrap_or(0);
            if count > MAX_PARAMETERS {
                return Err(QueryError::Invalid(DataFusionError::Plan(format!(
                    "${count} is past the {MAX_PARAMETERS} parameters a statement may take"
                ))));
            }
            let parameters = (1..=count)
                .map(|n| found.remove(&format!("${n}")).flatten())
                .collect();
            let schema = Arc::new(plan.schema().as_arrow().clone());
            Ok(Description { parameters, schema })
        });
        match tokio::time::timeout(self.limits.timeout, planning).await {
            Ok(Ok(described)) => described,
            Ok(Err(crashed)) => Err(QueryError::Invalid(DataFusionError::Plan(format!(
                "planning stopped unexpectedly: {crashed}"
            )))),
            Err(_) => Err(QueryError::Timeout(self.limits.timeout)),
        }
    }

    /// A query waits for a slot at most half as long as it may run, then is refused, so
    /// that a client sees "busy" well before its own timeout.
    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, QueryError> {
        Ok(tokio::time::timeout(
            self.limits.timeout / 2,
            self.running.clone().acquire_owned(),
        )
        .await
        .map_err(|_| QueryError::Busy(self.limits.max_concurrent))?
        .expect("the semaphore is never closed"))
    }

    /// The latest commit's files; costs one read of the commit log when nothing changed.
    async fn snapshot(&self) -> Result<Arc<Snapshot>, QueryError> {
        let mut guard = self.state.lock().await;
        let newest = match &mut *guard {
            None => self.commits.load().await?,
            Some((state, snapshot)) => match self.commits.catch_up(state).await? {
                None => return Ok(snapshot.clone()),
                Some(commit) => (std::mem::take(state), Some(commit)),
            },
        };
        let (state, commit) = newest;
        let mut by_table: BTreeMap<Table, Vec<DataFile>> = BTreeMap::new();
        for file in state.files.values() {
            if let Some(table) = Table::from_name(&file.table) {
                by_table.entry(table).or_default().push(file.clone());
            }
        }
        let files = by_table
            .into_iter()
            .map(|(table, files)| (table, files.into()))
            .collect();
        let snapshot = Arc::new(Snapshot {
            version: state.version,
            files,
            added: commit
                .map(|c| c.added.into_iter().map(|f| f.path).collect())
                .unwrap_or_default(),
        });
        *guard = Some((state, snapshot.clone()));
        Ok(snapshot)
    }

    /// Whether `error` may come from files moving under the query: a newer commit exists
    /// (it may have retired some of `snapshot`'s files), or the error names a file that
    /// `snapshot`'s commit added (its rename may not have happened yet). The error's text
    /// is all there is to go on: DataFusion reports a missing Parquet file as a message.
    async fn files_moved(
        &self,
        snapshot: &Snapshot,
        error: &DataFusionError,
    ) -> Result<bool, QueryError> {
        if self.snapshot().await?.version != snapshot.version {
            return Ok(true);
        }
        let message = error.to_string();
        Ok(snapshot
            .added
            .iter()
            .any(|path| message.contains(path.as_str())))
    }

    async fn session(
        &self,
        snapshot: &Snapshot,
        visible: Visibility<'_>,
    ) -> Result<SessionContext, QueryError> {
        // A memory pool per query: one heavy query cannot use up another's share.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory_limit, 1.0)
            .with_object_store_registry(self.shared.object_store_registry.clone())
            .with_cache_manager(CacheManagerConfig::default().with_file_metadata_cache(Some(
                self.shared.cache_manager.get_file_metadata_cache(),
            )))
            .build_arc()
            .map_err(QueryError::Invalid)?;
        // DataFusion's own settings can be tuned with DATAFUSION_* variables.
        let mut config = SessionConfig::from_env()
            .map_err(QueryError::Invalid)?
            .with_information_schema(true);
        if std::env::var_os("DATAFUSION_EXECUTION_TARGET_PARTITIONS").is_none() {
            config = config.with_target_partitions(self.target_partitions);
        }
        // Sessions are in UTC, as PostgreSQL clients are told: `now()` and a cast to
        // `timestamptz` are instants, not wall times without a zone.
        if config.options().execution.time_zone.is_none() {
            config.options_mut().execution.time_zone = Some("UTC".into());
        }
        let session = SessionContext::new_with_config_rt(config, runtime);
        guard::install(&session, self.limits.memory_limit).map_err(QueryError::Invalid)?;
        pg_functions::install(&session).map_err(QueryError::Invalid)?;
        for table in Table::ALL {
            let committed = snapshot.files.get(&table).cloned().unwrap_or_default();
            let files = match visible {
                Visibility::All => committed,
                Visibility::Only(codes) => committed
                    .iter()
                    .filter(|file| codes.contains(&file.institution))
                    .cloned()
                    .collect(),
            };
            let provider = CommittedTable::new(table, files, self.lake_url.clone());
            session
                .register_table(table.name(), Arc::new(provider))
                .map_err(QueryError::Invalid)?;
        }
        for (name, definition) in views() {
            session
                .sql(&format!("CREATE VIEW {name} AS {definition}"))
                .await
                .map_err(QueryError::Invalid)?;
        }
        pg_catalog::install(&session)
            .await
            .map_err(QueryError::Invalid)?;
        Ok(session)
    }

    fn explain(&self, error: QueryError) -> QueryError {
        match error {
            QueryError::Failed(e) => match e.find_root() {
                DataFusionError::ResourcesExhausted(message) => QueryError::MemoryLimit {
                    limit: self.limits.memory_limit,
                    message: message.clone(),
                },
                _ => QueryError::Failed(e),
            },
            other => other,
        }
    }
}

/// Splits a text into its statements, for the command line's files and standard input.
pub fn statements(text: &str) -> Result<Vec<Statement>, QueryError> {
    let parsed = DFParser::parse_sql(text).map_err(QueryError::Invalid)?;
    Ok(parsed.into_iter().collect())
}

/// The one statement of a text, for `POST /sql`.
pub fn one_statement(text: &str) -> Result<Statement, QueryError> {
    let mut all = statements(text)?;
    match all.len() {
        1 => Ok(all.remove(0)),
        n => Err(QueryError::NotOneStatement(n)),
    }
}

/// Plans `statement`, refusing any plan that would create, change, drop or set something.
async fn read_only_plan(
    session: &SessionContext,
    mut statement: Statement,
) -> Result<LogicalPlan, QueryError> {
    pg_catalog::rewrite(&mut statement);
    pg_functions::rewrite(&mut statement);
    let plan = session
        .state()
        .statement_to_plan(statement)
        .await
        .map_err(QueryError::Invalid)?;
    let read_only = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    // verify_plan fails only for a plan that would create, change, drop or set something.
    match read_only.verify_plan(&plan) {
        Ok(()) => Ok(plan),
        Err(e) => Err(QueryError::Refused(e.strip_backtrace())),
    }
}

/// One attempt at an answer, run on the query threads: plans and executes the statement,
/// says whether its first batch came, then encodes each batch and sends it, each counted in
/// the answer budget.
struct Production<E: Encoder> {
    session: SessionContext,
    statement: Statement,
    parameters: Vec<ScalarValue>,
    max_rows: Option<usize>,
    /// A batch larger than this is refused: it is one query's share of memory.
    memory_limit: usize,
    budget: AnswerBudget,
    /// How long the first batch may wait for room in the budget before the query is
    /// refused as busy.
    wait_for_room: Duration,
    encoder: E,
}

type ChunkSender<E> = tokio::sync::mpsc::Sender<Held<<E as Encoder>::Chunk>>;

/// What is left of a query's `sql.timeout`: only the time it spends planning and computing
/// counts, not the time its answer waits for a client reading slowly, or for room in the
/// answer budget (a client that stops reading is cut off by the write timeouts).
struct QueryTime {
    limit: Duration,
    left: Duration,
}

impl QueryTime {
    fn new(limit: Duration) -> QueryTime {
        QueryTime { limit, left: limit }
    }

    async fn limit<T>(
        &mut self,
        work: impl std::future::Future<Output = Result<T, QueryError>>,
    ) -> Result<T, QueryError> {
        let started = Instant::now();
        let done = tokio::time::timeout(self.left, work)
            .await
            .map_err(|_| QueryError::Timeout(self.limit))?;
        self.left = self.left.saturating_sub(started.elapsed());
        done
    }
}

impl<E: Encoder> Production<E> {
    /// Errors before the first batch go to `first_batch`; errors after it are returned.
    async fn run(
        mut self,
        first_batch: tokio::sync::oneshot::Sender<Result<SchemaRef, QueryError>>,
        chunks: &ChunkSender<E>,
        mut time: QueryTime,
    ) -> Result<(), QueryError> {
        let mut rows = 0;
        // Room for the first batch is found before the answer is said to have started, so
        // that a door can still refuse it (503) rather than cut it short.
        let started = async {
            let (schema, stream, first) = time.limit(self.start()).await?;
            let first = match first {
                Some(batch) => {
                    let bytes = self.check(&batch, &mut rows)?;
                    let room =
                        tokio::time::timeout(self.wait_for_room, self.budget.take(2 * bytes));
                    let memory = room
                        .await
                        .map_err(|_| QueryError::AnswersBusy(self.budget.bytes()))??;
                    Some((batch, memory))
                }
                None => None,
            };
            Ok::<_, QueryError>((schema, stream, first))
        };
        let (schema, mut stream, mut next) = match started.await {
            Ok(started) => started,
            Err(e) => {
                let _ = first_batch.send(Err(e));
                return Ok(());
            }
        };
        if first_batch.send(Ok(schema.clone())).is_err() {
            return Ok(());
        }
        if let Some(header) = self.encoder.start(&schema)? {
            self.send(chunks, header, None).await?;
        }
        // Each batch is counted twice over while it is encoded (the batch, and its text or
        // rows, about as large), then as its encoded size until the door has sent it. Room
        // for the next batch, as large as the last, is taken before it is produced: the
        // budget counts memory when it is taken, not after.
        while let Some((batch, memory)) = next {
            let produced = batch_bytes(&batch);
            let chunk = self.encoder.batch(&batch)?;
            drop(batch);
            self.send(chunks, chunk, Some(memory)).await?;
            let mut ahead = self.budget.take(2 * produced).await?;
            let produced =
                time.limit(async { stream.next().await.transpose().map_err(QueryError::Failed) });
            next = match produced.await? {
                Some(batch) => {
                    let bytes = self.check(&batch, &mut rows)?;
                    ahead.resize(2 * bytes, &self.budget).await?;
                    Some((batch, ahead))
                }
                None => None,
            };
        }
        if let Some(footer) = self.encoder.finish()? {
            self.send(chunks, footer, None).await?;
        }
        Ok(())
    }

    /// Counts a batch against the answer's limits; returns its size.
    fn check(&self, batch: &RecordBatch, rows: &mut usize) -> Result<usize, QueryError> {
        *rows += batch.num_rows();
        if let Some(max) = self.max_rows.filter(|&max| *rows > max) {
            return Err(QueryError::TooManyRows(max));
        }
        let bytes = batch_bytes(batch);
        if bytes > self.memory_limit {
            return Err(QueryError::MemoryLimit {
                limit: self.memory_limit,
                message: format!("one batch of the answer holds {bytes} bytes"),
            });
        }
        Ok(bytes)
    }

    /// Plans and executes the statement, and waits for its first batch (`None` for an
    /// answer without rows).
    async fn start(
        &mut self,
    ) -> Result<
        (
            SchemaRef,
            datafusion::physical_plan::SendableRecordBatchStream,
            Option<RecordBatch>,
        ),
        QueryError,
    > {
        let mut plan = read_only_plan(&self.session, self.statement.clone()).await?;
        if !self.parameters.is_empty() {
            plan = plan
                .with_param_values(std::mem::take(&mut self.parameters))
                .map_err(QueryError::Invalid)?;
        }
        let frame = self
            .session
            .execute_logical_plan(plan)
            .await
            .map_err(QueryError::Invalid)?;
        // From here on, a failure happened while reading and computing.
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let mut stream = frame.execute_stream().await.map_err(QueryError::Failed)?;
        let first = stream
            .next()
            .await
            .transpose()
            .map_err(QueryError::Failed)?;
        Ok((schema, stream, first))
    }

    /// Sends a chunk, holding `memory` (resized to the chunk's size) until the door drops
    /// it; waits while the door has not taken the one before.
    async fn send(
        &self,
        chunks: &ChunkSender<E>,
        chunk: E::Chunk,
        memory: Option<AnswerMemory>,
    ) -> Result<(), QueryError> {
        let memory = match memory {
            Some(mut memory) => {
                memory.resize(E::size(&chunk), &self.budget).await?;
                memory
            }
            // A header or footer (a CSV header, a JSON bracket) is not counted: the
            // producer holds its batch's share when it sends one, and waiting for more
            // while holding a share is how two answers wait for each other.
            None => AnswerMemory::none(),
        };
        // A door that stopped reading (its client went away) stops the query.
        chunks.send(Held { chunk, memory }).await.map_err(|_| {
            QueryError::Failed(DataFusionError::Execution("the client went away".into()))
        })
    }
}

/// The bytes a batch of an answer takes once written out.
fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|column| answer_bytes(column.as_ref()))
        .sum()
}

/// The bytes a column takes once written out: its memory, or for a dictionary (which holds
/// each value once however many rows repeat it) every row's value.
fn answer_bytes(column: &dyn arrow::array::Array) -> usize {
    use arrow::array::AsArray;
    use arrow::datatypes::DataType;
    let DataType::Dictionary(_, _) = column.data_type() else {
        return column.get_array_memory_size();
    };
    let Some(dictionary) = column.as_any_dictionary_opt() else {
        return column.get_array_memory_size();
    };
    let values = dictionary.values();
    let per_value: Vec<usize> = match arrow::compute::cast(values, &DataType::LargeBinary) {
        // Text and bytes: each value's own length.
        Ok(bytes) => bytes
            .as_binary::<i64>()
            .iter()
            .map(|v| v.map_or(0, <[u8]>::len) + 8)
            .collect(),
        // Fixed-width and nested values: their average size.
        Err(_) => {
            let average = values.get_array_memory_size() / values.len().max(1);
            vec![average; values.len()]
        }
    };
    dictionary
        .normalized_keys()
        .iter()
        .map(|&key| per_value.get(key).copied().unwrap_or(0))
        .sum()
}

/// A multi-threaded Tokio runtime of its own, shut down without waiting when dropped (a
/// runtime cannot be dropped the ordinary way from inside another one).
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl QueryRuntime {
    fn start() -> QueryRuntime {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("datx-sql")
            .enable_all()
            .build()
            .expect("the SQL runtime starts");
        QueryRuntime(Some(runtime))
    }

    fn spawn<F>(&self, work: F) -> AbortOnDrop<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        AbortOnDrop(self.0.as_ref().expect("running").spawn(work))
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A task that is cancelled when its handle is dropped: a query whose caller timed out or
/// went away stops using the machine.
pub(crate) struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}
