//! Query benchmark: the five saved queries of `queries/` over a generated lake of at least
//! a million records, run by datx (its query engine, in this process) and by DuckDB (in
//! Python) over the same Parquet files, in the same run.
//!
//! The records are linked as a venue's are: ticket checks point at order movements, some
//! tickets are refunded, some orders and contacts are sent twice. DuckDB reads the tables
//! with `read_parquet(..., hive_partitioning = true)` and gets the same two views, from
//! the same SQL text. Each query runs once to warm up, then `DATX_BENCH_RUNS` times
//! (default 3) per engine; the median is printed with the ratio, and both engines' row
//! counts must agree.
//!
//! Then the same queries go to a real `datx serve` (in this process) from one Python
//! client, over `POST /sql` (JSON rows, urllib) and over the PostgreSQL protocol (psycopg),
//! timed from sending the statement to holding every row decoded.
//!
//! Run: `cargo bench --bench query`. Environment: `DATX_BENCH_RECORDS` (default 1000000),
//! `DATX_BENCH_DIR`, `DATX_TEST_PYTHON` (a Python with duckdb and psycopg, as `.ci/run`
//! makes it), `DATX_BENCH_KEEP=1`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use datx::config::Sql;
use datx::eventlog::EventLog;
use datx::query::{Batches, QueryEngine, Visibility, statements, views};
use datx::store::Store;
use datx::stream::Stream;
use futures::StreamExt;
use serde_json::{Value, json};

const INSTITUTIONS: [&str; 4] = ["venue_a", "venue_b", "venue_c", "venue_d"];
const DAYS: i64 = 30;
const PERFORMANCES: i64 = 40;
const ORDERS_PER_BLOCK: i64 = 50;
const QUERIES: [&str; 5] = [
    "sales_by_day_and_product",
    "no_show_rate",
    "gate_failures",
    "contacts_by_week",
    "freshness",
];

/// One block of a venue's life: 50 orders of two tickets each, their refunds, the gate
/// checks of their tickets and 125 contacts. Returns `(stream, records, second_round)`:
/// second-round bodies are sent after every first-round one (new versions).
fn block(b: i64) -> Vec<(Stream, Vec<Value>, bool)> {
    let institution = b % INSTITUTIONS.len() as i64;
    let mut orders = Vec::new();
    let mut refunds = Vec::new();
    let mut checks = Vec::new();
    for o in b * ORDERS_PER_BLOCK..(b + 1) * ORDERS_PER_BLOCK {
        let day = o % DAYS + 1;
        let performance = o % PERFORMANCES;
        let price = 1000 + 500 * (performance % 7);
        let movement = |j: i64| 20_000_000_000 + o * 10 + j;
        let operation = |kind: &str, movements: Vec<Value>| {
            json!({"operationId": 40_000_000_000 + o * 10, "kind": "SINGLE_ENTRY", "type": kind,
                   "productCode": format!("P{}", performance % 9), "product": format!("Product {}", performance % 9),
                   "performanceId": 5_000_000_000 + institution * 1000 + performance,
                   "performance": format!("Performance {performance}"), "movementDatas": movements})
        };
        let sale_movements = (0..2)
            .map(|j| json!({"movementId": movement(j), "type": "SALE", "ticketId": movement(j) + 7, "amount": price}))
            .collect();
        orders.push(json!({"orderDetailsData": {
            "orderId": 10_000_000_000 + o, "orderType": "SALE", "orderState": "CLOSED",
            "creationDateTime": format!("2023-01-{day:02}T{:02}:{:02}:27.503+00:00", 8 + o % 12, o % 60),
            "referenceDate": "2023-01-01T00:00:00.000+00:00", "saleAmount": 2 * price,
            "contactNumber": format!("C{b}-{}", o % 125), "operationDatas": [operation("SALE", sale_movements)]}}));
        let refunded = o % 20 == 0;
        if refunded {
            let refund = json!({"movementId": movement(5), "type": "REFUND", "refundedMovementId": movement(0), "amount": -price});
            refunds.push(json!({"orderDetailsData": {
                "orderId": 11_000_000_000 + o, "orderType": "REFUND_CLIENT", "orderState": "CLOSED",
                "creationDateTime": format!("2023-01-{day:02}T21:00:00.000+00:00"), "saleAmount": -price,
                "operationDatas": [operation("REFUND", vec![refund])]}}));
        }
        for j in 0..2 {
            let mut id = (o * 10 + j) * 4;
            let mut check = |result: &str, reason: &str, minute: i64| {
                id += 1;
                checks.push(json!({"ticket_check_id": 30_000_000_000 + id, "movement_id": movement(j),
                    "ticket_id": movement(j) + 7, "barcode": format!("{:024}", movement(j)),
                    "access_time": format!("2023-01-{day:02} {:02}:{:02}:{:02}", 17 + minute / 60, minute % 60, o % 60),
                    "check_flow": "IN", "result": result, "failure_reason": reason}));
            };
            let minute = (o * 7 + j * 13) % 180;
            // Mixed so that no performance gets one outcome only.
            match (
                refunded && j == 0,
                (o * 7919 + j * 104_729 + o / PERFORMANCES) % 10,
            ) {
                (true, _) => check("FAIL", "TICKET_CANCELLED", minute),
                (_, 0..=5) => check("OK", "NO_FAIL", minute),
                (_, 6) => {
                    check("FAIL", "NO_MORE_ENTRY_ALLOWED_TODAY", minute);
                    check("OK", "NO_FAIL", minute + 2);
                }
                (_, 7) => {
                    check("OK", "NO_FAIL", minute);
                    check("OK", "NO_FAIL", minute + 1);
                }
                (_, 8) => check("FAIL", "WRONG_GATE", minute),
                _ => {}
            }
        }
    }
    let contact = |i: i64, update_days: i64| {
        let created_day = (b + i) % 28 + 1;
        json!({"contactNumber": format!("C{b}-{i}"), "contactId": 60_000_000_000 + b * 1000 + i,
               "type": "INDIVIDUAL", "role": "PUBLIC",
               "creationDate": format!("2022-12-{created_day:02}T08:00:00.000+00:00"),
               "lastUpdateDate": format!("2023-01-{:02}T09:00:00.000+00:00", (created_day + update_days) % 28 + 1),
               "individualContact": {"firstName": format!("Name {i}"), "lastName": "Doe", "email": format!("c{b}-{i}@example.org")},
               "hasWarning": false})
    };
    let contacts = (0..125).map(|i| contact(i, 0)).collect();
    let updates = (0..125)
        .filter(|i| i % 5 == 0)
        .map(|i| contact(i, 9))
        .collect();
    let mut bodies = vec![
        (Stream::Orders, orders.clone(), false),
        (Stream::Orders, refunds, false),
        (Stream::TicketChecks, checks, false),
        (Stream::Contacts, contacts, false),
        (Stream::Contacts, updates, true),
    ];
    if b % 50 == 0 {
        for order in &mut orders {
            order["orderDetailsData"]["referenceDate"] = json!("2023-01-02T00:00:00.000+00:00");
        }
        bodies.push((Stream::Orders, orders, true));
    }
    bodies
}

/// Writes blocks into the event log until it holds `records` records; new versions are
/// written after every first version. Returns the number of records written.
fn generate(lake: &Path, records: usize, runtime: &tokio::runtime::Runtime) -> usize {
    let log = EventLog::new(Store::open(lake.to_str().unwrap()).unwrap());
    let (mut first_round, mut second_round) = (Vec::new(), Vec::new());
    let mut written = 0;
    let mut b = 0;
    while written < records {
        let institution = INSTITUTIONS[b as usize % INSTITUTIONS.len()];
        for (stream, records, later) in block(b) {
            for chunk in records.chunks(50) {
                written += chunk.len();
                let body = (
                    stream,
                    institution,
                    Bytes::from(serde_json::to_vec(chunk).unwrap()),
                    chunk.len(),
                );
                if later {
                    &mut second_round
                } else {
                    &mut first_round
                }
                .push(body);
            }
        }
        b += 1;
    }
    for round in [first_round, second_round] {
        runtime.block_on(
            futures::stream::iter(round)
                .map(|(stream, institution, body, count)| {
                    let log = log.clone();
                    async move { log.append(stream, institution, body, count).await.unwrap() }
                })
                .buffer_unordered(32)
                .collect::<Vec<_>>(),
        );
    }
    written
}

fn median(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64()
}

fn main() {
    let records = common::env_number("DATX_BENCH_RECORDS", 1_000_000);
    let runs = common::env_number("DATX_BENCH_RUNS", 3);
    let root = common::bench_root();
    let lake = root.path().join("lake");
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let started = Instant::now();
    let written = generate(&lake, records, &runtime);
    let mut config = String::from("compact_every = \"off\"\n");
    for institution in INSTITUTIONS {
        config.push_str(&format!(
            "[institutions.{institution}]\ntimezone = \"Europe/Zurich\"\nauth = \"none\"\n"
        ));
    }
    std::fs::write(root.path().join("datx.toml"), config).unwrap();
    common::datx_compact(root.path());
    let parquet_bytes: u64 = common::walk(&lake.join("tables"))
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    println!(
        "query bench: {written} records, {:.0} MB of Parquet, generated and compacted in {:.1} s under {}",
        parquet_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        root.path().display()
    );

    let limits = Sql {
        tokens: Vec::new(),
        timeout: Duration::from_secs(600),
        memory_limit: 8 << 30,
        answer_memory: 8 << 30,
        max_rows: usize::MAX,
        max_concurrent: 1,
    };
    let engine = QueryEngine::new(Store::open(lake.to_str().unwrap()).unwrap(), limits).unwrap();
    let texts: Vec<String> = QUERIES
        .iter()
        .map(|name| {
            std::fs::read_to_string(format!("{}/queries/{name}.sql", env!("CARGO_MANIFEST_DIR")))
                .unwrap()
        })
        .collect();
    let mut datx = Vec::new();
    for text in &texts {
        let mut times = Vec::new();
        let mut rows = 0;
        for run in 0..=runs {
            let statement = statements(text).unwrap().remove(0);
            let started = Instant::now();
            let batches = runtime
                .block_on(async {
                    let answer = engine
                        .run(statement, vec![], Visibility::All, None, Batches)
                        .await?;
                    answer.collect().await
                })
                .unwrap();
            if run > 0 {
                times.push(started.elapsed());
            }
            rows = batches.iter().map(|b| b.num_rows()).sum();
        }
        datx.push((median(times), rows));
    }
    drop(engine);

    let duckdb = run_duckdb(&lake, &texts, runs);
    println!(
        "{:<26} {:>9} {:>9} {:>7} {:>6}",
        "query", "datx s", "duckdb s", "ratio", "rows"
    );
    for ((name, (datx_seconds, datx_rows)), (duckdb_seconds, duckdb_rows)) in
        QUERIES.iter().zip(&datx).zip(&duckdb)
    {
        if datx_rows != duckdb_rows {
            common::fail(&format!(
                "{name}: datx answers {datx_rows} rows, DuckDB {duckdb_rows}"
            ));
        }
        println!(
            "{name:<26} {datx_seconds:>9.3} {duckdb_seconds:>9.3} {:>7.2} {datx_rows:>6}",
            datx_seconds / duckdb_seconds
        );
    }
    println!("ratio = datx time / DuckDB time (target: at most 1.5 on each)");

    let wire = runtime.block_on(over_the_wire(root.path(), &lake, &texts, runs));
    println!(
        "{:<26} {:>9} {:>9} {:>7} {:>6}",
        "query", "/sql s", "pg s", "ratio", "rows"
    );
    for ((name, (_, rows)), (http_seconds, http_rows, pg_seconds, pg_rows)) in
        QUERIES.iter().zip(&datx).zip(&wire)
    {
        if (http_rows, pg_rows) != (rows, rows) {
            common::fail(&format!(
                "{name}: the engine answers {rows} rows, POST /sql {http_rows}, PostgreSQL {pg_rows}"
            ));
        }
        println!(
            "{name:<26} {http_seconds:>9.3} {pg_seconds:>9.3} {:>7.2} {rows:>6}",
            pg_seconds / http_seconds
        );
    }
    println!("ratio = PostgreSQL protocol time / POST /sql time, each from one client");
    if std::env::var_os("DATX_BENCH_KEEP").is_some() {
        println!("kept {}", root.keep().display());
    }
}

/// DuckDB over the same files: `(median seconds, rows)` per query, timed inside Python.
fn run_duckdb(lake: &Path, texts: &[String], runs: usize) -> Vec<(f64, usize)> {
    let views: Vec<Value> = views()
        .iter()
        .map(|(name, sql)| json!([name, sql]))
        .collect();
    let script = r#"
import duckdb, json, os, statistics, sys, time
lake, runs = sys.argv[1], int(sys.argv[2])
spec = json.load(sys.stdin)
con = duckdb.connect()
con.sql("SET TimeZone = 'UTC'")
con.sql("SET enable_progress_bar = false")
for table in ["contacts", "orders", "order_movements", "ticket_checks", "rejects"]:
    if not os.path.isdir(f"{lake}/tables/{table}"):
        continue  # no record misfit: DuckDB cannot read an empty glob
    con.sql(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{lake}/tables/{table}/**/*.parquet', hive_partitioning = true, union_by_name = true)")
for name, definition in spec["views"]:
    con.sql(f"CREATE VIEW {name} AS {definition}")
results = []
for text in spec["queries"]:
    times = []
    for run in range(runs + 1):
        started = time.perf_counter()
        rows = con.sql(text).fetchall()
        if run > 0:
            times.append(time.perf_counter() - started)
    results.append([statistics.median(times), len(rows)])
print(json.dumps(results))
"#;
    let mut child = Command::new(common::python())
        .arg("-c")
        .arg(script)
        .arg(lake)
        .arg(runs.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("a Python with duckdb (set DATX_TEST_PYTHON)");
    let spec = json!({"views": views, "queries": texts});
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(&serde_json::to_vec(&spec).unwrap())
            .unwrap();
    }
    let output = common::succeeded(child.wait_with_output().unwrap());
    let results: String = common::last_line(&output, "DuckDB's timings as JSON");
    serde_json::from_str(&results)
        .unwrap_or_else(|e| common::fail(&format!("DuckDB's timings are not JSON: {e}")))
}

/// The saved queries from one Python client against a real server on `lake`: `(median
/// seconds, rows)` over `POST /sql`, then over the PostgreSQL protocol, per query.
async fn over_the_wire(
    dir: &Path,
    lake: &Path,
    texts: &[String],
    runs: usize,
) -> Vec<(f64, usize, f64, usize)> {
    const TOKEN: &str = "bench-token";
    // A free port for the PostgreSQL listener, which serve binds from its configuration.
    let postgres = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let text = format!(
        "lake = \"{}\"\ncompact_every = \"off\"\n[sql]\ntoken = \"{TOKEN}\"\ntimeout = \"600s\"\nmemory_limit = \"8GiB\"\nmax_rows = 10000000\n[postgres]\nlisten = \"{postgres}\"\n",
        lake.display()
    );
    let config =
        datx::config::Config::parse(&text, &dir.join("wire.toml"), dir, &|_| None).unwrap();
    let store = Store::open(lake.to_str().unwrap()).unwrap();
    let server = common::LocalServer::start(config, store).await;
    let script = r#"
import json, statistics, sys, time, urllib.request, psycopg
url, token, dsn, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
texts = json.load(sys.stdin)
results = []
with psycopg.connect(dsn, autocommit=True) as conn:
    for text in texts:
        http, pg = [], []
        for run in range(runs + 1):
            started = time.perf_counter()
            request = urllib.request.Request(url, data=text.encode(), headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request) as answer:
                http_rows = json.load(answer)
            http_time = time.perf_counter() - started
            started = time.perf_counter()
            pg_rows = conn.execute(text).fetchall()
            pg_time = time.perf_counter() - started
            if run > 0:
                http.append(http_time)
                pg.append(pg_time)
        results.append([statistics.median(http), len(http_rows), statistics.median(pg), len(pg_rows)])
print(json.dumps(results))
"#;
    let dsn = format!(
        "host={} port={} dbname=datx user=datx password={TOKEN}",
        postgres.ip(),
        postgres.port()
    );
    let url = format!("http://{}/sql", server.address);
    let texts = serde_json::to_vec(texts).unwrap();
    // The server answers on this runtime while the client runs on a thread of its own.
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(common::python())
            .arg("-c")
            .arg(script)
            .arg(url)
            .arg(TOKEN)
            .arg(dsn)
            .arg(runs.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("a Python with psycopg (set DATX_TEST_PYTHON)");
        {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&texts).unwrap();
        }
        common::succeeded(child.wait_with_output().unwrap())
    })
    .await
    .unwrap();
    server.stop().await;
    let results: String = common::last_line(&output, "the clients' timings as JSON");
    serde_json::from_str(&results)
        .unwrap_or_else(|e| common::fail(&format!("the clients' timings are not JSON: {e}")))
}
