//! S3 benchmark: ingest and compaction against an S3-compatible server on this machine
//! (moto, from PyPI, on 127.0.0.1), beside the same on a local lake.
//!
//! Ingest: for each concurrency (1, 16, 64), 50-record ticket-check bodies posted to the
//! real server (in this process) for a bounded time, each accepted once its create-only
//! PUTs have returned. Compaction: the same number of bodies appended to a local lake and
//! to a bucket, then `datx compact` on each. Beside each S3 figure, the CPU that moto and
//! datx used per second of wall time: one core's worth for moto (a single Python
//! process) means moto, not datx, set the pace.
//!
//! Run: `cargo bench --bench s3`. Environment: `DATX_BENCH_SECONDS` (per ingest phase,
//! default 5), `DATX_BENCH_S3_BODIES` (bodies compacted, default 2000), `DATX_BENCH_DIR`
//! (where the local lakes go), `DATX_TEST_PYTHON` (a Python with moto; `.ci/run` makes one
//! at ~/.cache/datx/venv).

mod common;
#[allow(dead_code)] // the tests' HTTP helper, shared
#[path = "../tests/common/http.rs"]
mod http;
#[allow(dead_code)] // the tests' S3 server, shared
#[path = "../tests/common/s3.rs"]
mod s3;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Bodies, RECORDS_PER_BODY, run_phase};
use datx::config::Config;
use datx::eventlog::EventLog;
use datx::store::Store;
use datx::stream::Stream;
use futures::StreamExt;

const CONCURRENCIES: [usize; 3] = [1, 16, 64];
const INSTITUTION: &str = "benchvenue";

/// CPU seconds this process (and, with `RUSAGE_CHILDREN`, its reaped children) has used.
fn cpu_seconds(who: libc::c_int) -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only the struct given.
    unsafe { libc::getrusage(who, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Where a phase's lake goes.
enum Lake<'a> {
    Local(&'a Path),
    S3 { server: &'a s3::S3Server },
}

impl Lake<'_> {
    fn name(&self) -> &'static str {
        match self {
            Lake::Local(_) => "local",
            Lake::S3 { .. } => "s3",
        }
    }

    /// A fresh lake's location.
    fn fresh(&self, name: &str) -> String {
        match self {
            Lake::Local(root) => root.join(name).to_str().unwrap().to_string(),
            Lake::S3 { server } => format!("s3://{}/{name}", server.new_bucket()),
        }
    }

    fn moto_cpu(&self) -> f64 {
        match self {
            Lake::Local(_) => 0.0,
            Lake::S3 { server } => server.cpu_seconds(),
        }
    }
}

fn config(lake: &str) -> Config {
    Config::parse(
        &format!(
            "lake = \"{lake}\"\ncompact_every = \"off\"\n[institutions.{INSTITUTION}]\nauth = \"none\"\n"
        ),
        Path::new("bench.toml"),
        Path::new("/"),
        &|_| None,
    )
    .unwrap()
}

async fn ingest(lake: &Lake<'_>, bodies: &Arc<Bodies>, duration: Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .unwrap();
    for concurrency in CONCURRENCIES {
        let location = lake.fresh(&format!("ingest-{concurrency}"));
        let store = Store::open(&location).expect("the bench lake opens");
        let server = common::LocalServer::start(config(&location), store).await;
        let url = format!("http://{}/s360/ticketchecks/{INSTITUTION}", server.address);
        let post = common::poster(&client, bodies, &url);
        let (moto_before, datx_before) = (lake.moto_cpu(), cpu_seconds(libc::RUSAGE_SELF));
        let mut phase = run_phase(concurrency, duration, post).await;
        let wall = phase.elapsed.as_secs_f64();
        let moto = (lake.moto_cpu() - moto_before) / wall;
        let datx = (cpu_seconds(libc::RUSAGE_SELF) - datx_before) / wall;
        server.stop().await;
        println!(
            "{:>6}  {concurrency:>11}  {:>9.0}  {:>8.2}  {:>8.2}  {:>10.2}  {:>10.2}",
            lake.name(),
            phase.per_second(),
            phase.percentile_ms(0.5),
            phase.percentile_ms(0.99),
            moto,
            datx
        );
    }
}

async fn compaction(lake: &Lake<'_>, bodies: &Bodies, count: usize, work: &Path) {
    let location = lake.fresh("compact");
    let log = EventLog::new(Store::open(&location).expect("the bench lake opens"));
    // As 16 senders would: thousands of PUTs at once only time out on one moto process.
    futures::stream::iter(0..count)
        .map(|_| {
            let (log, body) = (&log, bodies.next());
            async move {
                log.append(Stream::TicketChecks, INSTITUTION, body, RECORDS_PER_BODY)
                    .await
                    .expect("a bench body is stored")
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let dir = work.join(format!("compact-{}", lake.name()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("datx.toml"),
        format!("lake = \"{location}\"\n[institutions.{INSTITUTION}]\nauth = \"none\"\n"),
    )
    .unwrap();
    let (moto_before, datx_before) = (lake.moto_cpu(), cpu_seconds(libc::RUSAGE_CHILDREN));
    let started = Instant::now();
    let (printed, peak_mib) = tokio::task::block_in_place(|| common::datx_compact(&dir));
    let wall = started.elapsed().as_secs_f64();
    let records = (count * RECORDS_PER_BODY) as f64;
    println!(
        "{:>6}  {count:>7}  {:>8.2}  {:>10.0}  {:>10.2}  {:>10.2}  {:>8.0}  {}",
        lake.name(),
        wall,
        records / wall,
        (lake.moto_cpu() - moto_before) / wall,
        (cpu_seconds(libc::RUSAGE_CHILDREN) - datx_before) / wall,
        peak_mib,
        printed.lines().next().unwrap_or("")
    );
}

fn main() {
    let seconds = common::env_number("DATX_BENCH_SECONDS", 5) as u64;
    let count = common::env_number("DATX_BENCH_S3_BODIES", 2000);
    let python = common::python();
    let ready = std::process::Command::new(&python)
        .args(["-c", "import moto.server"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        common::fail(&format!(
            "{} has no moto: run .ci/run once, or `pip install '{}'` there",
            python.display(),
            s3::MOTO
        ));
    }
    let server = s3::S3Server::start_moto(&python);
    // Before any thread of the runtime exists: the store reads them when it opens.
    for (key, value) in server.env() {
        // SAFETY: no other thread reads the environment yet (moto's watcher only waits).
        unsafe { std::env::set_var(key, value) };
    }
    let root = common::bench_root();
    let bodies = Arc::new(Bodies::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "ingest: {RECORDS_PER_BODY}-record bodies, {seconds} s per phase; CPU in cores (CPU seconds per wall second; datx's includes the load generator)"
        );
        println!(
            "{:>6}  {:>11}  {:>9}  {:>8}  {:>8}  {:>10}  {:>10}",
            "lake", "concurrency", "bodies/s", "p50 ms", "p99 ms", "moto CPU", "datx CPU"
        );
        let local = Lake::Local(root.path());
        let on_s3 = Lake::S3 { server: &server };
        for lake in [&local, &on_s3] {
            ingest(lake, &bodies, Duration::from_secs(seconds)).await;
        }
        println!("compaction: {count} bodies of {RECORDS_PER_BODY} ticket checks");
        println!(
            "{:>6}  {:>7}  {:>8}  {:>10}  {:>10}  {:>10}  {:>8}  datx said",
            "lake", "bodies", "seconds", "records/s", "moto CPU", "datx CPU", "peak MiB"
        );
        for lake in [&local, &on_s3] {
            compaction(lake, &bodies, count, root.path()).await;
        }
    });
}
