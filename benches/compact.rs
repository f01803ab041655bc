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
//! Run: `cargo bench --bench compact`. Environment: `DATX_BENCH_RECORDS` (default
//! 1000000), `DATX_BENCH_DIR` (on the disk to measure), `DATX_TEST_PYTHON` (a Python with
//! duckdb; `.ci/run` makes one at ~/.cache/datx/venv), `DATX_BENCH_KEEP=1` (keep the
//! generated log and lakes, e.g. to profile `datx compact` on them).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

mod common;

use bytes::Bytes;
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

/// One body of `stream` whose records get ids from `first_id` and dates spread over the
/// 30 days.
fn body(stream: Stream, templates: &[Value], first_id: i64) -> Vec<u8> {
    let records: Vec<Value> = (0..RECORDS_PER_BODY as i64)
        .map(|i| {
            let id = first_id + i * 10;
            let day = (id / 10) % DAYS + 1;
            let mut record = templates[(i as usize) % templates.len()].clone();
            match stream {
                Stream::TicketChecks => {
                    record["ticket_check_id"] = json!(id);
                    record["access_time"] = json!(format!("2023-01-{day:02} 18:25:{:02}", i % 60));
                }
                Stream::Orders => {
                    let order = &mut record["orderDetailsData"];
                    order["orderId"] = json!(id);
                    order["creationDateTime"] =
                        json!(format!("2023-01-{day:02}T10:09:27.503+00:00"));
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
    let records = common::env_number("DATX_BENCH_RECORDS", 1_000_000);
    let root = common::bench_root();
    let lake = root.path().join("lake");
    let raw = root.path().join("raw");

    // Half ticket checks, a quarter orders (two movements each), a quarter contacts.
    let bodies = records / RECORDS_PER_BODY;
    let plan: Vec<(Stream, usize)> = (0..bodies)
        .map(|n| match n % 4 {
            0 | 1 => (Stream::TicketChecks, n),
            2 => (Stream::Orders, n),
            _ => (Stream::Contacts, n),
        })
        .collect();
    let generated = Instant::now();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let log = EventLog::new(Store::open(lake.to_str().unwrap()).unwrap());
    let templates = Arc::new([
        sample("ticketchecks.json"),
        sample("orders.json"),
        sample("contacts.json"),
    ]);
    let raw_bytes: usize = runtime.block_on(
        futures::stream::iter(plan)
            .map(|(stream, n)| {
                let (log, templates, raw) = (log.clone(), templates.clone(), raw.clone());
                async move {
                    let template = match stream {
                        Stream::TicketChecks => &templates[0],
                        Stream::Orders => &templates[1],
                        Stream::Contacts => &templates[2],
                    };
                    let institution = INSTITUTIONS[n % INSTITUTIONS.len()];
                    let bytes = body(stream, template, 10_000_000_000 + (n as i64) * 1000);
                    let dir = raw
                        .join(stream.as_str())
                        .join(format!("institution={institution}"));
                    tokio::fs::create_dir_all(&dir).await.unwrap();
                    tokio::fs::write(dir.join(format!("{n}.json")), &bytes)
                        .await
                        .unwrap();
                    let size = bytes.len();
                    log.append(stream, institution, Bytes::from(bytes), RECORDS_PER_BODY)
                        .await
                        .unwrap();
                    size
                }
            })
            .buffer_unordered(32)
            .fold(0, |total, size| async move { total + size }),
    );
    println!(
        "compaction bench: {} records in {bodies} bodies ({:.0} MB), {} institutions, {DAYS} days; generated in {:.1} s under {}",
        bodies * RECORDS_PER_BODY,
        raw_bytes as f64 / 1e6,
        INSTITUTIONS.len(),
        generated.elapsed().as_secs_f64(),
        root.path().display()
    );

    let mut config = String::from("compact_every = \"off\"\nmerge_after = \"1000h\"\n");
    for institution in INSTITUTIONS {
        config.push_str(&format!(
            "[institutions.{institution}]\ntimezone = \"Europe/Zurich\"\nauth = \"none\"\n"
        ));
    }
    std::fs::write(root.path().join("datx.toml"), config).unwrap();

    let started = Instant::now();
    let output = common::datx_compact(root.path());
    let datx_seconds = started.elapsed().as_secs_f64();
    let peak_mib = children_peak_rss_kib() as f64 / 1024.0;
    print!("{}", String::from_utf8_lossy(&output.stdout));

    let duckdb_out = root.path().join("duckdb");
    std::fs::create_dir_all(&duckdb_out).unwrap();
    let duckdb_seconds = run_duckdb(&raw, &duckdb_out);
    let total = (bodies * RECORDS_PER_BODY) as f64;
    println!(
        "datx   {:>8.2} s  {:>10.0} records/s  peak memory {peak_mib:.0} MiB",
        datx_seconds,
        total / datx_seconds
    );
    println!(
        "duckdb {:>8.2} s  {:>10.0} records/s",
        duckdb_seconds,
        total / duckdb_seconds
    );
    println!(
        "datx/duckdb speed ratio {:.2}",
        duckdb_seconds / datx_seconds
    );
    if std::env::var_os("DATX_BENCH_KEEP").is_some() {
        println!("kept {}", root.keep().display());
    }
}

/// The largest resident set any finished child reached, in KiB.
fn children_peak_rss_kib() -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss
}

/// DuckDB's conversion of the same bodies, timed inside Python (startup excluded).
fn run_duckdb(raw: &Path, out: &Path) -> f64 {
    let script = r#"
import duckdb, sys, time
raw, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.sql("SET TimeZone = 'UTC'")
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
    let output = common::succeeded(output);
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}
