//! Status page benchmark: how fast `GET /` answers over a year of simulated history.
//!
//! Three venues (one per auth mode) get a year of history from the real `datx simulate`
//! (a first-time synchronisation: every day's contacts, orders and gate checks, in bodies
//! of at most 50 records), which `datx compact` turns into the tables. Then a new `serve`
//! starts on that lake, in this process, on a loopback port: it seeds its status board
//! from the commit state and the days not yet sealed. Since the whole year was received
//! today, every one of its bodies is in an unsealed day: the start lists and reads more
//! than a year of live pushes would leave (three days), which makes it the harder case.
//!
//! Prints how long the start took to answer its first page and to count the records, then
//! the median, 95th percentile and largest time of `DATX_BENCH_PAGES` (default 500)
//! sequential requests for the HTML page and for its JSON, over one kept-alive connection.
//!
//! Run: `cargo bench --bench status`. Environment: `DATX_BENCH_STATUS_DAYS` (default 365),
//! `DATX_BENCH_PAGES`, `DATX_BENCH_DIR` (where the lake goes).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use datx::config::Config;
use datx::store::Store;

/// The console tests' three venues, one per auth mode.
const VENUES: &str = include_str!("../tests/three_venues.toml");

fn config(dir: &Path) -> Config {
    let text =
        format!("listen = \"127.0.0.1:0\"\nlake = \"lake\"\ncompact_every = \"off\"\n{VENUES}");
    std::fs::write(dir.join("datx.toml"), &text).unwrap();
    Config::parse(&text, &dir.join("datx.toml"), dir, &|_| None).unwrap()
}

async fn start(dir: &Path) -> common::LocalServer {
    let config = config(dir);
    let store = Store::open(dir.join("lake").to_str().unwrap()).unwrap();
    common::LocalServer::start(config, store).await
}

/// `count` sequential GETs of `/` asking for `accept`: each one's time, sorted, and the
/// size of the last answer.
async fn time_pages(
    client: &reqwest::Client,
    url: &str,
    accept: &str,
    count: usize,
) -> (Vec<Duration>, usize) {
    let mut times = Vec::with_capacity(count);
    let mut size = 0;
    for _ in 0..count {
        let started = Instant::now();
        let answer = client
            .get(url)
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "the status page refused the bench");
        size = answer.bytes().await.unwrap().len();
        times.push(started.elapsed());
    }
    times.sort();
    (times, size)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let days = common::env_number("DATX_BENCH_STATUS_DAYS", 365) as i64;
    let pages = common::env_number("DATX_BENCH_PAGES", 500).max(1);
    let root = common::bench_root();
    let dir = root.path();

    // A year of history, sent as S-360's first-time synchronisation sends it.
    let server = start(dir).await;
    let since = (chrono::Utc::now() - chrono::Duration::days(days)).date_naive();
    let started = Instant::now();
    let sent = common::succeeded(
        Command::new(env!("CARGO_BIN_EXE_datx"))
            .args(["simulate", "--seed", "1", "--pushes", "0"])
            .args(["--to", &format!("http://{}/s360", server.address)])
            .args(["--backfill-since", &since.to_string()])
            .current_dir(dir)
            .output()
            .unwrap(),
    );
    let sent = String::from_utf8_lossy(&sent.stdout).trim().to_string();
    println!(
        "simulate: {days} days for 3 venues in {:.1} s: {sent}",
        started.elapsed().as_secs_f64()
    );
    server.stop().await;
    let (compacted, peak) = common::datx_compact(dir);
    println!(
        "compact: {} (peak {peak:.0} MiB)",
        compacted.lines().next().unwrap_or_default()
    );

    // A new serve on that lake: its first page waits for the seeding.
    let started = Instant::now();
    let server = start(dir).await;
    let url = format!("http://{}/", server.address);
    let client = reqwest::Client::new();
    let (_, _) = time_pages(&client, &url, "application/json", 1).await;
    let first_page = started.elapsed();
    loop {
        let figures: serde_json::Value = client
            .get(&url)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if figures["records_counted"] == true {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            common::fail("the records of the seeded days were not counted within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "start: first page after {:.0} ms, records counted after {:.0} ms",
        ms(first_page),
        ms(started.elapsed())
    );

    println!("| answer | requests | median | p95 | max | bytes |");
    println!("|---|---|---|---|---|---|");
    for (name, accept) in [("HTML page", "text/html"), ("JSON", "application/json")] {
        let (times, size) = time_pages(&client, &url, accept, pages).await;
        let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
        println!(
            "| {name} | {pages} | {:.2} ms | {:.2} ms | {:.2} ms | {size} |",
            ms(at(0.5)),
            ms(at(0.95)),
            ms(*times.last().unwrap())
        );
    }
    server.stop().await;
}
