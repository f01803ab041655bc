//! Replay benchmark: `datx replay` of a stored log into a second datx on this machine.
//!
//! Stores `DATX_BENCH_REPLAY_BODIES` distinct 50-record ticket-check bodies (default 5000)
//! of 16 venues in a source lake, starts a target `datx serve` (in this process, on a
//! loopback port, its own lake on the same disk), then runs the real `datx replay` against
//! it at concurrency 1, 4 and 16, each into a fresh target lake. Replay sends each stream
//! and venue one body at a time, in order, so concurrency counts venues at once. Prints
//! bodies and records per second. The target's durable appends (two fsyncs a body) bound
//! it, as in the ingest bench.
//!
//! Run: `cargo bench --bench replay`. Environment: `DATX_BENCH_REPLAY_BODIES`,
//! `DATX_BENCH_DIR` (where the lakes go, on the disk to measure).

mod common;

use std::path::Path;
use std::time::Instant;

use common::{Bodies, RECORDS_PER_BODY};
use datx::config::Config;
use datx::eventlog::EventLog;
use datx::store::Store;
use datx::stream::Stream;
use futures::StreamExt;

const VENUES: usize = 16;

fn config(lake: &Path) -> String {
    let mut config = format!("lake = \"{}\"\ncompact_every = \"off\"\n", lake.display());
    for venue in 0..VENUES {
        config.push_str(&format!("[institutions.venue{venue}]\nauth = \"none\"\n"));
    }
    config
}

#[tokio::main]
async fn main() {
    let count = common::env_number("DATX_BENCH_REPLAY_BODIES", 5000);
    let root = common::bench_root();
    let source = root.path().join("source");
    let log = EventLog::new(Store::open(source.to_str().unwrap()).unwrap());
    let bodies = Bodies::new();
    futures::stream::iter(0..count)
        .map(|n| {
            let (log, body) = (&log, bodies.next());
            let venue = format!("venue{}", n % VENUES);
            async move {
                log.append(Stream::TicketChecks, &venue, body, RECORDS_PER_BODY)
                    .await
                    .expect("a bench body is stored")
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    std::fs::write(root.path().join("datx.toml"), config(&source)).unwrap();
    println!(
        "replay bench: {count} bodies of {RECORDS_PER_BODY} records from {VENUES} venues, into a datx on 127.0.0.1"
    );
    println!(
        "{:>11}  {:>9}  {:>9}  {:>11}",
        "concurrency", "seconds", "bodies/s", "records/s"
    );
    for concurrency in [1, 4, 16] {
        let target_lake = root.path().join(format!("target-{concurrency}"));
        let target = Config::parse(
            &config(&target_lake),
            Path::new("bench.toml"),
            root.path(),
            &|_| None,
        )
        .unwrap();
        let store = Store::open(target_lake.to_str().unwrap()).unwrap();
        let server = common::LocalServer::start(target, store).await;
        let url = format!("http://{}/s360", server.address);
        let started = Instant::now();
        let dir = root.path().to_path_buf();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_datx"))
                .args([
                    "replay",
                    "--to",
                    &url,
                    "--concurrency",
                    &concurrency.to_string(),
                ])
                .args(["--state", &format!("replay-{concurrency}.cursor")])
                .current_dir(dir)
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let output = common::succeeded(output);
        let said = String::from_utf8_lossy(&output.stdout);
        if !said.starts_with(&format!("{count} bodies")) {
            common::fail(&format!("the replay did not send every body: {said}"));
        }
        server.stop().await;
        println!(
            "{concurrency:>11}  {seconds:>9.2}  {:>9.0}  {:>11.0}",
            count as f64 / seconds,
            (count * RECORDS_PER_BODY) as f64 / seconds
        );
    }
}
