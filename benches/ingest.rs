//! Ingest benchmark: durable batches per second over loopback HTTP, against the ceiling of
//! the same durable appends made without HTTP.
//!
//! For each concurrency (1, 16, 64) it runs three phases for a bounded time, each on a
//! fresh lake: `http` posts 50-record ticket-check bodies to the real server, `signed` the
//! same with receipts signed (an `[audit]` key), `ceiling` calls the event log's append
//! with the same bytes from the same number of tasks. Every body is distinct, so every
//! request is a new durable event (no duplicate shortcut).
//!
//! Then push latency under SQL load: one pusher alone, then beside eight clients that read
//! 190 MB answers of `POST /sql` as fast as they can (on threads of their own, as other
//! processes would).
//!
//! Run: `cargo bench --bench ingest`. Environment: `DATX_BENCH_SECONDS` (per phase, default
//! 5), `DATX_BENCH_DIR` (where the lakes go, default the system temp directory; it must be
//! on the disk you want to measure, not a tmpfs).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Bodies, RECORDS_PER_BODY, run_phase};
use datx::config::Config;
use datx::eventlog::EventLog;
use datx::store::Store;
use datx::stream::Stream;

const CONCURRENCIES: [usize; 3] = [1, 16, 64];
const INSTITUTION: &str = "benchvenue";

fn fresh_lake(root: &std::path::Path, name: &str) -> Store {
    let dir = root.join(name);
    Store::open(dir.to_str().unwrap()).expect("the bench lake opens")
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("DATX_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let duration = Duration::from_secs(seconds);
    let root = match std::env::var_os("DATX_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("a bench directory");
    let bodies = Arc::new(Bodies::new());
    let sample_size = bodies.next().len();
    println!(
        "ingest bench: {RECORDS_PER_BODY}-record bodies of {sample_size} bytes, {seconds} s per phase, lakes under {}",
        root.path().display()
    );
    println!(
        "{:>11}  {:>13}  {:>8}  {:>8}  {:>15}  {:>8}  {:>16}  {:>8}  {:>8}  {:>13}",
        "concurrency",
        "http batch/s",
        "p50 ms",
        "p99 ms",
        "signed batch/s",
        "p99 ms",
        "ceiling batch/s",
        "p50 ms",
        "p99 ms",
        "http/ceiling"
    );

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .unwrap();
    let audit_key = datx::eventlog::Signer::new_key();
    for concurrency in CONCURRENCIES {
        // HTTP: the real server, in this process, on an ephemeral loopback port; then the
        // same with every receipt signed.
        let mut http = http_phase(
            root.path(),
            &format!("http-{concurrency}"),
            &client,
            &bodies,
            concurrency,
            duration,
            None,
        )
        .await;
        let mut signed = http_phase(
            root.path(),
            &format!("signed-{concurrency}"),
            &client,
            &bodies,
            concurrency,
            duration,
            Some(&audit_key),
        )
        .await;

        // Ceiling: the same appends, same bytes, same tasks, no HTTP.
        let log = EventLog::new(fresh_lake(root.path(), &format!("ceiling-{concurrency}")));
        let append = {
            let (log, bodies) = (log.clone(), bodies.clone());
            move || {
                let (log, body) = (log.clone(), bodies.next());
                async move {
                    log.append(Stream::TicketChecks, INSTITUTION, body, RECORDS_PER_BODY)
                        .await
                        .expect("the ceiling append succeeds");
                }
            }
        };
        let mut ceiling = run_phase(concurrency, duration, append).await;

        println!(
            "{concurrency:>11}  {:>13.0}  {:>8.2}  {:>8.2}  {:>15.0}  {:>8.2}  {:>16.0}  {:>8.2}  {:>8.2}  {:>13.2}",
            http.per_second(),
            http.percentile_ms(0.5),
            http.percentile_ms(0.99),
            signed.per_second(),
            signed.percentile_ms(0.99),
            ceiling.per_second(),
            ceiling.percentile_ms(0.5),
            ceiling.percentile_ms(0.99),
            http.per_second() / ceiling.per_second()
        );
    }

    under_sql_load(root.path(), &client, &bodies, duration).await;
}

/// Pushes to the real server on a fresh lake, receipts signed with `audit_key` if given.
async fn http_phase(
    root: &std::path::Path,
    name: &str,
    client: &reqwest::Client,
    bodies: &Arc<Bodies>,
    concurrency: usize,
    duration: Duration,
    audit_key: Option<&str>,
) -> common::PhaseResult {
    let audit = match audit_key {
        Some(_) => "[audit]\nsigning_key_env = \"BENCH_AUDIT_KEY\"\n",
        None => "",
    };
    let config = Config::parse(
        &format!("compact_every = \"off\"\n[institutions.{INSTITUTION}]\nauth = \"none\"\n{audit}"),
        std::path::Path::new("bench.toml"),
        root,
        &|variable| {
            (variable == "BENCH_AUDIT_KEY").then(|| audit_key.unwrap_or_default().to_string())
        },
    )
    .unwrap();
    let server = common::LocalServer::start(config, fresh_lake(root, name)).await;
    let url = format!("http://{}/s360/ticketchecks/{INSTITUTION}", server.address);
    let post = common::poster(client, bodies, &url);
    let phase = run_phase(concurrency, duration, post).await;
    server.stop().await;
    phase
}

/// Clients reading large answers at once, beside the pusher.
const SQL_READERS: usize = 8;
const LARGE_ANSWER: &str = "SELECT repeat('x', 1900) AS x FROM generate_series(1, 100000)";

async fn under_sql_load(
    root: &std::path::Path,
    client: &reqwest::Client,
    bodies: &Arc<Bodies>,
    duration: Duration,
) {
    let config = Config::parse(
        &format!(
            "compact_every = \"off\"\n[sql]\ntoken = \"bench-token\"\n[institutions.{INSTITUTION}]\nauth = \"none\"\n"
        ),
        std::path::Path::new("bench.toml"),
        root,
        &|_| None,
    )
    .unwrap();
    let server = common::LocalServer::start(config, fresh_lake(root, "under-sql")).await;
    let url = format!("http://{}/s360/ticketchecks/{INSTITUTION}", server.address);
    let post = common::poster(client, bodies, &url);
    let mut quiet = run_phase(1, duration, post.clone()).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sql_url = format!("http://{}/sql", server.address);
    let readers = {
        let (stop, read) = (stop.clone(), read.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let client = reqwest::Client::new();
                let tasks: Vec<_> = (0..SQL_READERS)
                    .map(|_| {
                        let (client, url, stop, read) =
                            (client.clone(), sql_url.clone(), stop.clone(), read.clone());
                        tokio::spawn(async move {
                            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                let mut answer = client
                                    .post(&url)
                                    .bearer_auth("bench-token")
                                    .body(LARGE_ANSWER)
                                    .send()
                                    .await
                                    .expect("an answer");
                                while let Ok(Some(chunk)) = answer.chunk().await {
                                    read.fetch_add(
                                        chunk.len() as u64,
                                        std::sync::atomic::Ordering::Relaxed,
                                    );
                                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                                        break;
                                    }
                                }
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    let _ = task.await;
                }
            })
        })
    };
    let started = std::time::Instant::now();
    let mut loaded = run_phase(1, duration, post).await;
    let answer_rate = read.load(std::sync::atomic::Ordering::Relaxed) as f64
        / started.elapsed().as_secs_f64()
        / 1e6;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    readers.join().unwrap();
    server.stop().await;
    println!(
        "\npushes under SQL load ({SQL_READERS} clients reading 190 MB answers of POST /sql, {answer_rate:.0} MB/s of answers)"
    );
    println!(
        "{:>24}  {:>8}  {:>8}  {:>8}",
        "", "push/s", "p50 ms", "p99 ms"
    );
    for (name, phase) in [("alone", &mut quiet), ("beside the readers", &mut loaded)] {
        println!(
            "{name:>24}  {:>8.0}  {:>8.2}  {:>8.2}",
            phase.per_second(),
            phase.percentile_ms(0.5),
            phase.percentile_ms(0.99)
        );
    }
}
