//! Helpers shared by the benchmarks: bodies, timed phases, and running `datx compact` or
//! a Python reader as child processes.

#![allow(dead_code)] // each bench uses its own part

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Records in each body the load benches send, as S-360 does at most.
pub const RECORDS_PER_BODY: usize = 50;

/// The Python that has duckdb: `DATX_TEST_PYTHON`, else the venv `.ci/run` makes.
pub fn python() -> PathBuf {
    std::env::var_os("DATX_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = PathBuf::from(std::env::var_os("HOME").expect("HOME is set"));
            home.join(".cache/datx/venv/bin/python")
        })
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// A number from the environment, or `default` when the variable is unset or not a number.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A fresh directory for a bench's files: under `DATX_BENCH_DIR` (the disk to measure)
/// when set, else under the system's temporary directory.
pub fn bench_root() -> tempfile::TempDir {
    match std::env::var_os("DATX_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .unwrap()
}

/// Runs `datx compact` in `dir` (which holds the bench's `datx.toml`) and returns what it
/// printed and the largest resident set it reached, in MiB; a failed pass stops the bench
/// with its message.
// The child is reaped by wait4, which also reports its own peak memory.
#[allow(clippy::zombie_processes)]
pub fn datx_compact(dir: &Path) -> (String, f64) {
    let child = Command::new(env!("CARGO_BIN_EXE_datx"))
        .arg("compact")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start datx compact: {e}")));
    let pid = child.id() as libc::pid_t;
    let (mut stdout, mut stderr) = (child.stdout.unwrap(), child.stderr.unwrap());
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut printed = String::new();
    let _ = stdout.read_to_string(&mut printed);
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 reaps the child started above and writes only the two values given.
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        fail(&format!(
            "datx compact failed: {}",
            errors.join().unwrap_or_default()
        ));
    }
    (printed, usage.ru_maxrss as f64 / 1024.0)
}

/// `output` itself when its process exited with 0; otherwise stops the bench with its
/// standard error.
pub fn succeeded(output: Output) -> Output {
    if !output.status.success() {
        fail(&format!(
            "{} failed: {}",
            "a child process",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    output
}

/// The last line a reader printed, parsed: a progress bar or a warning before it does not
/// matter, and output that is not what the bench expects stops it with a message.
pub fn last_line<T: std::str::FromStr>(output: &Output, what: &str) -> T {
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().rev().find(|line| !line.trim().is_empty());
    last.and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| fail(&format!("expected {what} on the last line, got: {text:?}")))
}

/// Stops the bench with `message`, without a panic's backtrace.
pub fn fail(message: &str) -> ! {
    eprintln!("bench failed: {message}");
    std::process::exit(1)
}

/// Builds distinct 50-record bodies from the shared ticket-check sample: only the ids
/// change, so every body has the size and shape S-360 sends.
pub struct Bodies {
    record_prefix: String,
    record_suffix: String,
    next: AtomicU64,
}

impl Bodies {
    pub fn new() -> Bodies {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/samples/ticketchecks.json"
        );
        let sample: Vec<serde_json::Value> = serde_json::from_slice(
            &std::fs::read(path).expect("the shared samples are beside the repo"),
        )
        .expect("the sample parses");
        let mut record = sample[0].clone();
        record["ticket_check_id"] = serde_json::json!(0);
        let text = serde_json::to_string(&record).unwrap();
        let (prefix, suffix) = text.split_once("\"ticket_check_id\":0").unwrap();
        Bodies {
            record_prefix: format!("{prefix}\"ticket_check_id\":"),
            record_suffix: suffix.to_string(),
            next: AtomicU64::new(10_228_845_000_000),
        }
    }

    pub fn next(&self) -> Bytes {
        let first = self
            .next
            .fetch_add(RECORDS_PER_BODY as u64, Ordering::Relaxed);
        let mut body = String::with_capacity(RECORDS_PER_BODY * 260);
        body.push('[');
        for i in 0..RECORDS_PER_BODY as u64 {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&self.record_prefix);
            body.push_str(&(first + i).to_string());
            body.push_str(&self.record_suffix);
        }
        body.push(']');
        Bytes::from(body)
    }
}

pub struct PhaseResult {
    pub batches: usize,
    pub elapsed: Duration,
    latencies: Vec<Duration>,
}

impl PhaseResult {
    pub fn per_second(&self) -> f64 {
        self.batches as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        self.latencies.sort_unstable();
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index].as_secs_f64() * 1000.0
    }
}

/// Runs `tasks` loops of `one` until `duration` has passed, recording each call's latency.
pub async fn run_phase<F, Fut>(tasks: usize, duration: Duration, one: F) -> PhaseResult
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let one = one.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let call = Instant::now();
                    one().await;
                    latencies.push(call.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.expect("a bench task panicked"));
    }
    PhaseResult {
        batches: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    }
}

/// The real server, in this process, on an ephemeral loopback port.
pub struct LocalServer {
    pub address: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), datx::serve::ServeError>>,
}

impl LocalServer {
    pub async fn start(config: datx::config::Config, store: datx::store::Store) -> LocalServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(datx::serve::run(config, store, listener, async {
            let _ = stopped.await;
        }));
        LocalServer {
            address,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().expect("the server ran");
    }
}

/// A call for `run_phase` that posts the next distinct body to `url` and expects a 200.
pub fn poster(
    client: &reqwest::Client,
    bodies: &std::sync::Arc<Bodies>,
    url: &str,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Clone + Send + 'static
{
    let (client, bodies, url) = (client.clone(), bodies.clone(), url.to_string());
    move || {
        let (client, body, url) = (client.clone(), bodies.next(), url.clone());
        Box::pin(async move {
            let response = client.post(&url).body(body).send().await.expect("posted");
            assert_eq!(response.status(), 200, "the server refused a bench body");
        })
    }
}
