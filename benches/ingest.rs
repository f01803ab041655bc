//! Ingest benchmark: durable batches per second over loopback HTTP, against the ceiling of
//! the same durable appends made without HTTP.
//!
//! For each concurrency (1, 16, 64) it runs two phases for a bounded time, each on a fresh
//! lake: `http` posts 50-record ticket-check bodies to the real server, `ceiling` calls the
//! event log's append with the same bytes from the same number of tasks. Every body is
//! distinct, so every request is a new durable event (no duplicate shortcut).
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
        "{:>11}  {:>13}  {:>8}  {:>8}  {:>16}  {:>8}  {:>8}  {:>13}",
        "concurrency",
        "http batch/s",
        "p50 ms",
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
    for concurrency in CONCURRENCIES {
        // HTTP: the real server, in this process, on an ephemeral loopback port.
        let store = fresh_lake(root.path(), &format!("http-{concurrency}"));
        let config = Config::parse(
            &format!("compact_every = \"off\"\n[institutions.{INSTITUTION}]\nauth = \"none\"\n"),
            std::path::Path::new("bench.toml"),
            root.path(),
            &|_| None,
        )
        .unwrap();
        let server = common::LocalServer::start(config, store).await;
        let url = format!("http://{}/s360/ticketchecks/{INSTITUTION}", server.address);
        let post = common::poster(&client, &bodies, &url);
        let mut http = run_phase(concurrency, duration, post).await;
        server.stop().await;

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
            "{concurrency:>11}  {:>13.0}  {:>8.2}  {:>8.2}  {:>16.0}  {:>8.2}  {:>8.2}  {:>13.2}",
            http.per_second(),
            http.percentile_ms(0.5),
            http.percentile_ms(0.99),
            ceiling.per_second(),
            ceiling.percentile_ms(0.5),
            ceiling.percentile_ms(0.99),
            http.per_second() / ceiling.per_second()
        );
    }
}
