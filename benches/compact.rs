//! Compaction benchmark: a generated event log of at least a million records (three
//! streams, four institutions, 30 days) compacted by `datx compact`, against DuckDB
//! converting the same bodies to Hive-partitioned Parquet with `COPY ... PARTITION_BY`,
//! the script a data engineer would otherwise write.
//!
//! Both read the same bodies: datx from its event log, DuckDB from one JSON file per body.
//! Both keep each record's JSON beside the typed columns, convert venue-local times to
//! UTC and partition by institution and date. Prints records per second for both, the
//! ratio, and datx's peak memory (maximum resident set of the child process).
//!
//! Then two cases that measure only datx's time, files and peak memory, where memory used
//! to grow with partitions: a first-time synchronisation of 8 years of history (two
//! venues, every record on a random day of 2019-2026, 50 records a body), and one body of
//! 40,000 ticket checks each on another day.
//!
//! Run: `cargo bench --bench compact`. Environment: `DATX_BENCH_RECORDS` (default
//! 1000000), `DATX_BENCH_HISTORY_RECORDS` (default 170000), `DATX_BENCH_DIR` (on the disk
//! to measure), `DATX_TEST_PYTHON` (a Python with duckdb; `.ci/run` makes one at
//! ~/.cache/datx/venv), `DATX_BENCH_KEEP=1` (keep the generated log and lakes, e.g. to
//! profile `datx compact` on them).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

mod common;

use bytes::Bytes;
use chrono::NaiveDate;
use datx::eventlog::EventLog;
use datx::store::Store;
use datx::stream::Stream;
use futures::StreamExt;
use serde_json::{Value, json};

const INSTITUTIONS: [&str; 4] = ["venue_a", "venue_b", "venue_c", "venue_d"];
const DAYS: i64 = 30;
const RECORDS_PER_BODY: usize = 50;

fn sample(name: &str) -> Vec<Value> {
    let path = format!("{}/../shared/samples/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(path).expect("shared samples beside the repo")).unwrap()
}

/// One body of `count` records of `stream`, with ids from `first_id` (ten apart) and the
/// date `date_of` gives each id.
fn body(
    stream: Stream,
    templates: &[Value],
    first_id: i64,
    count: usize,
    date_of: impl Fn(i64) -> NaiveDate,
) -> Vec<u8> {
    let records: Vec<Value> = (0..count as i64)
        .map(|i| {
            let id = first_id + i * 10;
            let day = date_of(id);
            let mut record = templates[(i as usize) % templates.len()].clone();
            match stream {
                Stream::TicketChecks => {
                    record["ticket_check_id"] = json!(id);
                    record["access_time"] = json!(format!("{day} 18:25:{:02}", i % 60));
                }
                Stream::Orders => {
                    let order = &mut record["orderDetailsData"];
                    order["orderId"] = json!(id);
                    order["creationDateTime"] = json!(format!("{day}T10:09:27.503+00:00"));
                    for (m, movement) in order["operationDatas"][0]["movementDatas"]
                        .as_array_mut()
                        .unwrap()
                        .iter_mut()
                        .enumerate()
                    {
                        movement["movementId"] = json!(id + 1 + m as i64);
                    }
                }
                Stream::Contacts => {
                    record["contactNumber"] = json!(id.to_string());
                    record["contactId"] = json!(id);
                }
            }
            record
        })
        .collect();
    serde_json::to_vec(&records).unwrap()
}

fn main() {
    let templates = Arc::new([
        sample("ticketchecks.json"),
        sample("orders.json"),
        sample("contacts.json"),
    ]);
    against_duckdb(&templates);
    first_time_sync(&templates);
    one_body_many_days(&templates);
}

type Templates = Arc<[Vec<Value>; 3]>;

fn template(templates: &Templates, stream: Stream) -> &[Value] {
    match stream {
        Stream::TicketChecks => &templates[0],
        Stream::Orders => &templates[1],
        Stream::Contacts => &templates[2],
    }
}

/// Body number `n` of a log that is half ticket checks, a quarter orders (two movements
/// each) and a quarter contacts, its ids from `first_id` on.
fn mixed_body(
    templates: &Templates,
    n: usize,
    first_id: i64,
    date_of: impl Fn(i64) -> NaiveDate,
) -> (Stream, Vec<u8>) {
    let stream = match n % 4 {
        0 | 1 => Stream::TicketChecks,
        2 => Stream::Orders,
        _ => Stream::Contacts,
    };
    let first_id = first_id + (n as i64) * 1000;
    let bytes = body(
        stream,
        template(templates, stream),
        first_id,
        RECORDS_PER_BODY,
        date_of,
    );
    (stream, bytes)
}

/// Writes `datx.toml` for `institutions` in `dir`.
fn configure(dir: &Path, institutions: &[&str]) {
    let mut config = String::from("compact_every = \"off\"\nmerge_after = \"1000h\"\n");
    for institution in institutions {
        config.push_str(&format!(
            "[institutions.{institution}]\ntimezone = \"Europe/Zurich\"\nauth = \"none\"\n"
        ));
    }
    std::fs::write(dir.join("datx.toml"), config).unwrap();
}

/// Runs `datx compact` in `dir`, prints a line on it for `case`, and returns its seconds.
fn measure(case: &str, dir: &Path, records: usize) -> f64 {
    let started = Instant::now();
    let (printed, peak_mib) = common::datx_compact(dir);
    let seconds = started.elapsed().as_secs_f64();
    let files = common::walk(&dir.join("lake/tables")).len();
    println!(
        "{case}: datx {seconds:.2} s, {:.0} records/s, {files} files, peak memory {peak_mib:.0} MiB",
        records as f64 / seconds
    );
    print!("{printed}");
    seconds
}

/// Appends the bodies `make` gives for `0..bodies` to the event log under `root`, 32 at a
/// time; returns their bytes.
fn append_all(
    root: &Path,
    bodies: usize,
    make: impl FnMut(usize) -> (Stream, &'static str, Vec<u8>),
) -> usize {
    let log = EventLog::new(Store::open(root.join("lake").to_str().unwrap()).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(
        futures::stream::iter((0..bodies).map(make))
            .map(|(stream, institution, bytes)| {
                let log = log.clone();
                async move {
                    let size = bytes.len();
                    let records = datx::batch::count_records(&bytes).unwrap();
                    log.append(stream, institution, Bytes::from(bytes), records)
                        .await
                        .unwrap();
                    size
                }
            })
            .buffer_unordered(32)
            .fold(0, |total, size| async move { total + size }),
    )
}

fn against_duckdb(templates: &Templates) {
    let records = common::env_number("DATX_BENCH_RECORDS", 1_000_000);
    let root = common::bench_root();
    let raw = root.path().join("raw");
    let bodies = records / RECORDS_PER_BODY;
    let generated = Instant::now();
    let january =
        |id: i64| NaiveDate::from_ymd_opt(2023, 1, ((id / 10) % DAYS + 1) as u32).unwrap();
    let raw_bytes = append_all(root.path(), bodies, |n| {
        let institution = INSTITUTIONS[n % INSTITUTIONS.len()];
        let (stream, bytes) = mixed_body(templates, n, 10_000_000_000, january);
        // DuckDB reads the same bodies, one file each.
        let dir = raw
            .join(stream.as_str())
            .join(format!("institution={institution}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{n}.json")), &bytes).unwrap();
        (stream, institution, bytes)
    });
    println!(
        "compaction bench: {} records in {bodies} bodies ({:.0} MB), {} institutions, {DAYS} days; generated in {:.1} s under {}",
        bodies * RECORDS_PER_BODY,
        raw_bytes as f64 / 1e6,
        INSTITUTIONS.len(),
        generated.elapsed().as_secs_f64(),
        root.path().display()
    );
    configure(root.path(), &INSTITUTIONS);
    let total = bodies * RECORDS_PER_BODY;
    let datx_seconds = measure("against DuckDB", root.path(), total);

    let duckdb_out = root.path().join("duckdb");
    std::fs::create_dir_all(&duckdb_out).unwrap();
    let duckdb_seconds = run_duckdb(&raw, &duckdb_out);
    println!(
        "duckdb {:>8.2} s  {:>10.0} records/s",
        duckdb_seconds,
        total as f64 / duckdb_seconds
    );
    println!(
        "datx/duckdb speed ratio {:.2}",
        duckdb_seconds / datx_seconds
    );
    if std::env::var_os("DATX_BENCH_KEEP").is_some() {
        println!("kept {}", root.keep().display());
    }
}

/// Eight years of two venues' history, as a first synchronisation sends it: 50 records a
/// body, each record on a random day of 2019-2026 (the worst spread for partitions).
fn first_time_sync(templates: &Templates) {
    let records = common::env_number("DATX_BENCH_HISTORY_RECORDS", 170_000);
    let root = common::bench_root();
    let first_day = NaiveDate::from_ymd_opt(2019, 1, 1).unwrap();
    let days = (NaiveDate::from_ymd_opt(2026, 11, 28).unwrap() - first_day).num_days();
    // A fixed scramble of the id, so that every run spreads the records the same way.
    let random_day = move |id: i64| {
        let scrambled = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
        first_day + chrono::Duration::days(scrambled as i64 % days)
    };
    let venues = ["venue_a", "venue_b"];
    append_all(root.path(), records / RECORDS_PER_BODY, |n| {
        let (stream, bytes) = mixed_body(templates, n, 20_000_000_000, random_day);
        (stream, venues[n % 2], bytes)
    });
    configure(root.path(), &venues);
    measure("first-time sync of 8 years", root.path(), records);
}

/// One body the receiver accepts whose 40,000 ticket checks each carry another day.
fn one_body_many_days(templates: &Templates) {
    const CHECKS: usize = 40_000;
    let root = common::bench_root();
    let day_after_1900 = |id: i64| {
        NaiveDate::from_ymd_opt(1900, 1, 1).unwrap() + chrono::Duration::days((id - 1) / 10)
    };
    let bytes = body(
        Stream::TicketChecks,
        &templates[0],
        1,
        CHECKS,
        day_after_1900,
    );
    println!(
        "one body of {CHECKS} ticket checks on as many days: {:.1} MB",
        bytes.len() as f64 / 1e6
    );
    let mut once = Some(bytes);
    append_all(root.path(), 1, |_| {
        (Stream::TicketChecks, "venue_a", once.take().unwrap())
    });
    configure(root.path(), &["venue_a"]);
    measure("one body, 40,000 days", root.path(), CHECKS);
}

/// DuckDB's conversion of the same bodies, timed inside Python (startup excluded).
fn run_duckdb(raw: &Path, out: &Path) -> f64 {
    let script = r#"
import duckdb, sys, time
raw, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.sql("SET TimeZone = 'UTC'")
# Its progress bar would print on stdout, where the time is read.
con.sql("SET enable_progress_bar = false")
def objects(stream):
    return f"read_json_objects('{raw}/{stream}/*/*.json', format = 'array', hive_partitioning = true)"
def local(expr):
    return f"(strptime({expr}, '%Y-%m-%d %H:%M:%S')::TIMESTAMP AT TIME ZONE 'Europe/Zurich')"
started = time.time()
con.sql(f"""COPY (SELECT (json->>'$.ticket_check_id')::BIGINT AS ticket_check_id, (json->>'$.movement_id')::BIGINT AS movement_id,
    (json->>'$.ticket_id')::BIGINT AS ticket_id, json->>'$.barcode' AS barcode,
    {local("json->>'$.access_time'")} AS access_time, json->>'$.check_flow' AS check_flow,
    json->>'$.result' AS result, json->>'$.failure_reason' AS failure_reason, json AS _raw,
    institution, CAST({local("json->>'$.access_time'")} AT TIME ZONE 'Europe/Zurich' AS DATE) AS date
    FROM {objects('ticketchecks')}) TO '{out}/ticket_checks' (FORMAT parquet, PARTITION_BY (institution, date))""")
con.sql(f"""COPY (SELECT (json->>'$.contactNumber') AS contact_number, (json->>'$.contactId')::BIGINT AS contact_id,
    json->>'$.type' AS type, json->>'$.role' AS role, (json->>'$.creationDate')::TIMESTAMPTZ AS creation_date,
    (json->>'$.lastUpdateDate')::TIMESTAMPTZ AS last_update_date, json->>'$.individualContact.firstName' AS first_name,
    json->>'$.individualContact.lastName' AS last_name, json->>'$.individualContact.email' AS email,
    json AS _raw, institution, current_date AS date
    FROM {objects('contacts')}) TO '{out}/contacts' (FORMAT parquet, PARTITION_BY (institution, date))""")
con.sql(f"""CREATE TEMP TABLE orders AS SELECT coalesce(json->'$.orderDetailsData', json) AS o, json AS _raw, institution
    FROM {objects('orders')}""")
con.sql(f"""COPY (SELECT (o->>'$.orderId')::BIGINT AS order_id, o->>'$.orderType' AS order_type,
    o->>'$.orderState' AS order_state, (o->>'$.creationDateTime')::TIMESTAMPTZ AS creation_date_time,
    (o->>'$.saleAmount')::BIGINT AS sale_amount, o->>'$.contactNumber' AS contact_number, _raw, institution,
    CAST((o->>'$.creationDateTime')::TIMESTAMPTZ AT TIME ZONE 'Europe/Zurich' AS DATE) AS date
    FROM orders) TO '{out}/orders' (FORMAT parquet, PARTITION_BY (institution, date))""")
con.sql(f"""COPY (SELECT (m->>'$.movementId')::BIGINT AS movement_id, (o->>'$.orderId')::BIGINT AS order_id,
    (op->>'$.operationId')::BIGINT AS operation_id, (op->>'$.productId')::BIGINT AS product_id,
    op->>'$.productCode' AS product_code, (m->>'$.ticketId')::BIGINT AS ticket_id, (m->>'$.amount')::BIGINT AS amount,
    m AS _raw, institution,
    CAST((o->>'$.creationDateTime')::TIMESTAMPTZ AT TIME ZONE 'Europe/Zurich' AS DATE) AS date
    FROM (SELECT o, institution, unnest(json_extract(o, '$.operationDatas[*]')) AS op FROM orders) operations,
         (SELECT unnest(json_extract(op, '$.movementDatas[*]')) AS m)
    ) TO '{out}/order_movements' (FORMAT parquet, PARTITION_BY (institution, date))""")
print(time.time() - started)
"#;
    let output = Command::new(common::python())
        .arg("-c")
        .arg(script)
        .arg(raw)
        .arg(out)
        .output()
        .expect("a Python with duckdb (set DATX_TEST_PYTHON)");
    common::last_line(&common::succeeded(output), "DuckDB's time in seconds")
}
