//! Compaction: the event log becomes typed, partitioned Parquet tables with every accepted
//! record exactly once, through crashes, concurrent posts, duplicates and rebuilds.
//! Tables are read back the way DuckDB and Spark read them: by listing `*.parquet` files.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    BIN, Backend, VENUES, Workspace, compact, orders, post, post_samples, read_table, sample,
    ticket_checks, walk,
};
use serde_json::{Map, Value, json};

type Row = Map<String, Value>;

fn find<'a>(rows: &'a [Row], column: &str, value: Value) -> &'a Row {
    rows.iter()
        .find(|row| row[column] == value)
        .unwrap_or_else(|| panic!("no row with {column} = {value}"))
}

fn micros(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_micros()
}

/// How many times each value of `column` appears.
fn counts(rows: &[Row], column: &str) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for row in rows {
        *counts.entry(row[column].as_i64().unwrap()).or_default() += 1;
    }
    counts
}

async fn samples_land_in_typed_partitioned_tables(backend: Backend) {
    let workspace = Workspace::on(backend, VENUES, &[]);
    let server = workspace.serve();
    let mut event_ids = BTreeMap::new();
    for (stream, file) in [
        ("contacts", "contacts.json"),
        ("orders", "orders.json"),
        ("ticketchecks", "ticketchecks.json"),
    ] {
        let answer = post(&server, stream, "myvenue", sample(file)).await;
        event_ids.insert(stream, answer["event_id"].as_str().unwrap().to_string());
    }
    let printed = compact(&workspace, "compact");
    assert!(printed.starts_with("3 events consumed"), "{printed}");
    let lake = workspace.lake();

    let contacts = read_table(&lake, "contacts");
    assert_eq!(contacts.len(), 2);
    let bond = find(&contacts, "contact_number", json!("3346662"));
    assert_eq!(bond["contact_id"], json!(10228844000001_i64));
    assert_eq!(bond["first_name"], json!("James"));
    assert_eq!(bond["has_warning"], json!(false));
    // 1968-04-13 is 628 days before 1970-01-01.
    assert_eq!(bond["birth_date"], json!(-628));
    assert_eq!(
        bond["creation_date"],
        json!(micros("2022-11-01T05:53:22.530Z"))
    );
    assert_eq!(bond["institution"], json!("myvenue"));
    assert_eq!(bond["_event_id"], json!(event_ids["contacts"]));
    let today_in_zurich = chrono::Utc::now()
        .with_timezone(&chrono_tz::Europe::Zurich)
        .date_naive()
        .to_string();
    assert_eq!(bond["date"], json!(today_in_zurich));
    // _raw is the record's JSON exactly as it stood in the body.
    let raw = bond["_raw"].as_str().unwrap();
    let body = String::from_utf8(sample("contacts.json")).unwrap();
    assert!(body.contains(raw) && raw.starts_with("{\"contactNumber\":\"3346662\""));
    let acme = find(&contacts, "contact_number", json!("3346700"));
    assert_eq!(acme["structure_name"], json!("ACME SA"));
    assert_eq!(acme["first_name"], Value::Null);

    let order_rows = read_table(&lake, "orders");
    assert_eq!(order_rows.len(), 2);
    let sale = find(&order_rows, "order_id", json!(10000702652_i64));
    assert_eq!(sale["sale_amount"], json!(40000));
    assert_eq!(sale["order_state"], json!("CLOSED"));
    assert_eq!(sale["date"], json!("2023-02-01"));
    let refund = find(&order_rows, "order_id", json!(10000702653_i64));
    assert_eq!(refund["sale_amount"], json!(-20000));
    assert_eq!(refund["date"], json!("2023-02-03"));

    let movements = read_table(&lake, "order_movements");
    assert_eq!(movements.len(), 3);
    let movement = find(&movements, "movement_id", json!(10228844462196_i64));
    assert_eq!(movement["order_id"], json!(10000702652_i64));
    assert_eq!(movement["operation_id"], json!(10228310724422_i64));
    assert_eq!(movement["ticket_id"], json!(10228844446468_i64));
    assert_eq!(movement["product_code"], json!("ASTDN"));
    assert_eq!(movement["amount"], json!(20000));
    assert_eq!(movement["date"], json!("2023-02-01"));
    let refunded = find(&movements, "movement_id", json!(10228844462300_i64));
    assert_eq!(refunded["refunded_movement_id"], json!(10228844462195_i64));
    assert_eq!(refunded["amount"], json!(-20000));

    let checks = read_table(&lake, "ticket_checks");
    assert_eq!(checks.len(), 2);
    let check = find(&checks, "ticket_check_id", json!(10228845124401_i64));
    // "2023-02-09 18:25:10" is venue-local: Zurich is UTC+1 in February.
    assert_eq!(check["access_time"], json!(micros("2023-02-09T17:25:10Z")));
    assert_eq!(check["movement_id"], json!(10228844462196_i64));
    assert_eq!(check["date"], json!("2023-02-09"));
    assert!(read_table(&lake, "rejects").is_empty());

    // A second pass finds nothing new.
    assert!(compact(&workspace, "compact").starts_with("0 events consumed"));
    assert_eq!(read_table(&lake, "ticket_checks").len(), 2);
}

async fn a_record_that_does_not_fit_is_rejected_and_the_rest_of_its_body_lands(backend: Backend) {
    let workspace = Workspace::on(backend, VENUES, &[]);
    let server = workspace.serve();
    let body = r#"[{"ticket_check_id":1,"access_time":"2023-02-09 18:25:10","brand_new_field":42},
 {"ticket_check_id":"not-a-number","access_time":"2023-02-09 18:25:11"},
 {"ticket_check_id":3,"access_time":"2023-01-28 17:00:00.0"},
 {"ticket_check_id":4,"access_time":"the ninth"}]"#;
    let answer = post(
        &server,
        "ticketchecks",
        "othervenue",
        body.as_bytes().to_vec(),
    )
    .await;
    compact(&workspace, "compact");
    let lake = workspace.lake();
    let checks = read_table(&lake, "ticket_checks");
    assert_eq!(
        counts(&checks, "ticket_check_id")
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [1, 3]
    );
    // A field no column names is still there, in _raw.
    let first = find(&checks, "ticket_check_id", json!(1));
    assert!(
        first["_raw"]
            .as_str()
            .unwrap()
            .contains("\"brand_new_field\":42")
    );
    // New York is UTC-5 in winter.
    assert_eq!(first["access_time"], json!(micros("2023-02-09T23:25:10Z")));
    let third = find(&checks, "ticket_check_id", json!(3));
    assert_eq!(third["access_time"], json!(micros("2023-01-28T22:00:00Z")));

    let mut rejects = read_table(&lake, "rejects");
    rejects.sort_by_key(|r| r["position"].as_i64());
    assert_eq!(rejects.len(), 2);
    assert_eq!(rejects[0]["position"], json!(1));
    assert_eq!(rejects[0]["stream"], json!("ticketchecks"));
    assert_eq!(rejects[0]["institution"], json!("othervenue"));
    assert_eq!(rejects[0]["_event_id"], answer["event_id"]);
    assert_eq!(
        rejects[0]["reason"],
        json!(
            "ticket_check_id (ticket_check_id): expected a 64-bit integer, found \"not-a-number\""
        )
    );
    assert_eq!(
        rejects[0]["_raw"],
        json!(r#"{"ticket_check_id":"not-a-number","access_time":"2023-02-09 18:25:11"}"#)
    );
    assert_eq!(rejects[1]["position"], json!(3));
    assert!(
        rejects[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("access_time")
    );
}

#[tokio::test]
async fn identical_bodies_and_repeated_ticket_checks_count_once() {
    let workspace = Workspace::new(VENUES);
    let server = workspace.serve();
    let body = ticket_checks(20, 1000);
    post(&server, "ticketchecks", "myvenue", body.clone()).await;
    let again = post(&server, "ticketchecks", "myvenue", body.clone()).await;
    assert_eq!(again["duplicate"], true);
    // As after a power loss that forgot the duplicate marker: the resend becomes a second
    // event with the same SHA-256.
    let markers = workspace.lake().join("_datx/seen/ticketchecks/myvenue");
    for marker in walk(&markers) {
        std::fs::remove_file(marker).unwrap();
    }
    let second = post(&server, "ticketchecks", "myvenue", body.clone()).await;
    assert_eq!(second["duplicate"], false);
    // Another body that repeats ten of those ticket checks and adds five.
    post(&server, "ticketchecks", "myvenue", ticket_checks(15, 1010)).await;
    let printed = compact(&workspace, "compact");
    assert!(
        printed.contains("3 events consumed (1 duplicate bodies)"),
        "{printed}"
    );
    let checks = read_table(&workspace.lake(), "ticket_checks");
    let seen = counts(&checks, "ticket_check_id");
    assert_eq!(seen.len(), 25);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");

    // In a later pass too: a repeat of already compacted checks adds nothing.
    post(&server, "ticketchecks", "myvenue", ticket_checks(3, 1000)).await;
    compact(&workspace, "compact");
    assert_eq!(read_table(&workspace.lake(), "ticket_checks").len(), 25);
}

/// Asserts each id appears at most once (exactly once when `all` is given).
fn assert_once(rows: &[Row], column: &str, all: Option<&BTreeSet<i64>>) {
    let seen = counts(rows, column);
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "{column} repeated: {repeated:?}");
    if let Some(all) = all {
        let present: BTreeSet<i64> = seen.keys().copied().collect();
        let missing: Vec<_> = all.difference(&present).collect();
        assert!(
            missing.is_empty(),
            "{} {column} missing, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        assert_eq!(present.len(), all.len());
    }
}

/// Where in a pass the compactor is killed.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// As soon as it started.
    AtStart,
    /// While the first pending files of a chunk are being written, before any commit.
    WhilePending,
    /// Once this many new commits have landed, in the middle of the pass.
    AfterCommits(usize),
}

fn commits_in(lake: &std::path::Path) -> usize {
    std::fs::read_dir(lake.join("_datx/commits")).map_or(0, |dir| dir.count())
}

fn has_pending(lake: &std::path::Path) -> bool {
    let pending = lake.join("_datx/pending");
    pending.exists() && !walk(&pending).is_empty()
}

/// Runs `datx compact` and SIGKILLs it at `point`; returns whether it was killed while
/// still running (rather than having finished first).
fn compact_and_kill(workspace: &Workspace, point: KillPoint) -> bool {
    let lake = workspace.lake();
    let commits_before = commits_in(&lake);
    let mut compactor = Command::new(BIN)
        .arg("compact")
        .current_dir(workspace.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Polls for at most 30 s; the pass normally reaches the point in milliseconds.
    for _ in 0..30_000 {
        if compactor.try_wait().unwrap().is_some() {
            break;
        }
        let reached = match point {
            KillPoint::AtStart => true,
            KillPoint::WhilePending => has_pending(&lake),
            KillPoint::AfterCommits(n) => commits_in(&lake) >= commits_before + n,
        };
        if reached {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = compactor.kill(); // SIGKILL
    let status = compactor.wait().unwrap();
    eprintln!("killed at {point:?}: {status}");
    status.code().is_none()
}

#[tokio::test]
async fn a_compactor_killed_at_any_point_loses_and_duplicates_nothing() {
    // Small chunks: a pass makes many commits, so kills land before, between and after
    // them; merge_after = 0s makes every pass merge too, so kills also land in merges.
    let workspace = Workspace::new(&format!(
        "compact_chunk_bytes = 40000\nmerge_after = \"0s\"\n{VENUES}"
    ));
    let server = workspace.serve();
    let lake = workspace.lake();
    let (mut check_ids, mut order_ids) = (BTreeSet::new(), BTreeSet::new());
    let mut next_id = 1_000_000_i64;
    let points = [
        KillPoint::AtStart,
        KillPoint::WhilePending,
        KillPoint::AfterCommits(1),
        KillPoint::AfterCommits(4),
        KillPoint::WhilePending,
        KillPoint::AfterCommits(9),
    ];
    let mut interrupted = 0;
    for point in points {
        for _ in 0..60 {
            post(
                &server,
                "ticketchecks",
                "myvenue",
                ticket_checks(50, next_id),
            )
            .await;
            check_ids.extend(next_id..next_id + 50);
            post(&server, "orders", "othervenue", orders(5, next_id)).await;
            order_ids.extend((0..5).map(|i| next_id + i * 10));
            next_id += 1000;
        }
        if compact_and_kill(&workspace, point) {
            interrupted += 1;
        }
        // Whatever was interrupted, a directory reader never sees a record twice.
        assert_once(&read_table(&lake, "ticket_checks"), "ticket_check_id", None);
        assert_once(&read_table(&lake, "orders"), "order_id", None);
    }
    // The test is only worth something if most kills caught a pass in flight.
    assert!(
        interrupted >= 4,
        "only {interrupted} of {} kills interrupted a pass",
        points.len()
    );
    let printed = compact(&workspace, "compact");
    assert!(
        !printed.starts_with("0 events"),
        "the kills left nothing to finish: {printed}"
    );
    assert_once(
        &read_table(&lake, "ticket_checks"),
        "ticket_check_id",
        Some(&check_ids),
    );
    assert_once(&read_table(&lake, "orders"), "order_id", Some(&order_ids));
    assert_eq!(
        read_table(&lake, "order_movements").len(),
        order_ids.len() * 2
    );
    // No pending or temporary file is left behind, and merging ran: every partition of
    // the settled tables is one file.
    let files = walk(&lake.join("tables"));
    let leftovers: Vec<_> = files
        .iter()
        .filter(|p| p.extension().is_none_or(|e| e != "parquet"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let mut per_partition: BTreeMap<&std::path::Path, usize> = BTreeMap::new();
    for file in &files {
        *per_partition.entry(file.parent().unwrap()).or_default() += 1;
    }
    assert!(per_partition.values().all(|&n| n == 1), "{per_partition:?}");
}

async fn bodies_posted_while_passes_run_are_all_compacted_once(backend: Backend) {
    let workspace = Workspace::on(
        backend,
        &format!("compact_every = \"30ms\"\ncompact_chunk_bytes = 100000\n{VENUES}"),
        &[],
    );
    let server = workspace.serve();
    let mut ids = BTreeSet::new();
    for i in 0..150_i64 {
        let first = 5_000_000 + i * 100;
        post(&server, "ticketchecks", "myvenue", ticket_checks(20, first)).await;
        ids.extend(first..first + 20);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = server.log();
    assert!(
        log.contains("compaction pass"),
        "no background pass ran:\n{log}"
    );
    drop(server);
    compact(&workspace, "compact");
    assert_once(
        &read_table(&workspace.lake(), "ticket_checks"),
        "ticket_check_id",
        Some(&ids),
    );
}

/// Every row of every table, as sorted JSON lines, for comparing two lakes.
fn all_rows(workspace: &Workspace) -> Vec<String> {
    let mut lines = Vec::new();
    for table in common::TABLES {
        for row in read_table(&workspace.lake(), table) {
            lines.push(format!("{table} {}", Value::Object(row)));
        }
    }
    lines.sort();
    lines
}

async fn rebuild_gives_the_rows_of_the_incremental_passes_and_small_files_merge(backend: Backend) {
    let workspace = Workspace::on(backend, &format!("merge_after = \"0s\"\n{VENUES}"), &[]);
    let server = workspace.serve();
    for (stream, file) in [("contacts", "contacts.json"), ("orders", "orders.json")] {
        post(&server, stream, "myvenue", sample(file)).await;
    }
    compact(&workspace, "compact");
    for round in 0..3 {
        post(
            &server,
            "ticketchecks",
            "myvenue",
            ticket_checks(30, round * 100),
        )
        .await;
        post(
            &server,
            "orders",
            "othervenue",
            orders(4, 10_000 + round * 100),
        )
        .await;
        post(
            &server,
            "ticketchecks",
            "othervenue",
            b"[{\"ticket_check_id\":\"x\"}]".to_vec(),
        )
        .await;
        compact(&workspace, "compact");
    }
    drop(server);
    // Settled partitions (merge_after = 0s) hold one file each after the passes.
    let checks_dir = workspace
        .lake()
        .join("tables/ticket_checks/institution=myvenue/date=2023-02-09");
    assert_eq!(walk(&checks_dir).len(), 1);
    let incremental = all_rows(&workspace);
    assert_eq!(
        incremental
            .iter()
            .filter(|l| l.starts_with("ticket_checks "))
            .count(),
        90
    );

    let printed = compact(&workspace, "rebuild");
    assert!(printed.contains("1 commits"), "{printed}");
    let rebuilt = all_rows(&workspace);
    assert_eq!(rebuilt.len(), incremental.len());
    assert!(
        rebuilt == incremental,
        "rebuild differs from the incremental passes"
    );
    // The rebuild consumed everything: the next pass has nothing to do.
    assert!(compact(&workspace, "compact").starts_with("0 events consumed"));
    assert_eq!(all_rows(&workspace), incremental);
}

#[tokio::test]
async fn duckdb_reads_the_tables_with_their_types_and_values() {
    let workspace = Workspace::new(VENUES);
    let server = workspace.serve();
    post_samples(&server, "myvenue").await;
    post(&server, "ticketchecks", "othervenue", ticket_checks(40, 77)).await;
    drop(server);
    compact(&workspace, "compact");

    let script = r#"
import duckdb, json, sys
con = duckdb.connect()
out = {}
for table in ["contacts", "orders", "order_movements", "ticket_checks"]:
    rel = con.sql(f"SELECT * FROM read_parquet('{sys.argv[1]}/tables/{table}/**/*.parquet', hive_partitioning = true)")
    out[table] = {"count": len(rel.fetchall()), "types": {c: str(t) for c, t in zip(rel.columns, rel.types)}}
out["check"] = con.sql(f"""
    SELECT ticket_check_id, strftime(access_time AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S'), CAST(date AS VARCHAR), institution
    FROM read_parquet('{sys.argv[1]}/tables/ticket_checks/**/*.parquet', hive_partitioning = true)
    WHERE ticket_check_id = 10228845124401""").fetchall()
out["per_institution"] = con.sql(f"""
    SELECT institution, count(*) FROM read_parquet('{sys.argv[1]}/tables/ticket_checks/**/*.parquet', hive_partitioning = true)
    GROUP BY 1 ORDER BY 1""").fetchall()
out["sale"] = con.sql(f"""
    SELECT sale_amount, CAST(date AS VARCHAR) FROM read_parquet('{sys.argv[1]}/tables/orders/**/*.parquet', hive_partitioning = true)
    WHERE order_id = 10000702652""").fetchall()
print(json.dumps(out, default=str))
"#;
    let seen = python_reader(("duckdb", "duckdb==2.0.1"), script, &workspace.lake(), &[]);
    let lake = workspace.lake();
    for table in ["contacts", "orders", "order_movements", "ticket_checks"] {
        assert_eq!(
            seen[table]["count"],
            json!(read_table(&lake, table).len()),
            "{table}"
        );
        let types = &seen[table]["types"];
        assert_eq!(types["date"], "DATE", "{table}");
        assert_eq!(types["institution"], "VARCHAR", "{table}");
        assert_eq!(types["_received_at"], "TIMESTAMP WITH TIME ZONE", "{table}");
    }
    assert_eq!(seen["ticket_checks"]["types"]["ticket_check_id"], "BIGINT");
    assert_eq!(
        seen["ticket_checks"]["types"]["access_time"],
        "TIMESTAMP WITH TIME ZONE"
    );
    assert_eq!(seen["orders"]["types"]["sale_amount"], "BIGINT");
    assert_eq!(seen["contacts"]["types"]["birth_date"], "DATE");
    assert_eq!(
        seen["check"],
        json!([[
            10228845124401_i64,
            "2023-02-09T17:25:10",
            "2023-02-09",
            "myvenue"
        ]])
    );
    assert_eq!(
        seen["per_institution"],
        json!([["myvenue", 2], ["othervenue", 40]])
    );
    assert_eq!(seen["sale"], json!([[40000, "2023-02-01"]]));
}

/// The date partitions under `tables/`, as their directory names give them.
fn partition_dates(lake: &std::path::Path) -> BTreeSet<String> {
    walk(&lake.join("tables"))
        .iter()
        .filter_map(|file| {
            let dir = file.parent()?.file_name()?.to_str()?;
            dir.strip_prefix("date=").map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn venue_local_times_in_a_daylight_saving_gap_move_forward_as_in_java() {
    let workspace = Workspace::new(VENUES);
    let server = workspace.serve();
    // 02:21:13 on 2024-03-10 does not exist in New York: clocks jump from 02:00 EST to
    // 03:00 EDT. java.time (S-360's platform) reads it as 03:21:13 EDT, 07:21:13 UTC.
    let checks = json!([
        {"ticket_check_id": 1, "access_time": "2024-03-10 02:21:13", "result": "OK"},
        {"ticket_check_id": 2, "access_time": "2024-11-03 01:30:00", "result": "OK"},
    ]);
    post(
        &server,
        "ticketchecks",
        "othervenue",
        checks.to_string().into_bytes(),
    )
    .await;
    let contact = json!([{"contactNumber": "C1", "creationDate": "2024-03-10 02:59:59"}]);
    post(
        &server,
        "contacts",
        "othervenue",
        contact.to_string().into_bytes(),
    )
    .await;
    compact(&workspace, "compact");
    let lake = workspace.lake();
    assert_eq!(read_table(&lake, "rejects"), Vec::<Row>::new());
    let checks = read_table(&lake, "ticket_checks");
    let gap = find(&checks, "ticket_check_id", json!(1));
    assert_eq!(gap["access_time"], json!(micros("2024-03-10T07:21:13Z")));
    assert_eq!(gap["date"], json!("2024-03-10"));
    // 01:30 on 2024-11-03 happens twice in New York: the earlier offset (EDT, -04:00).
    let overlap = find(&checks, "ticket_check_id", json!(2));
    assert_eq!(
        overlap["access_time"],
        json!(micros("2024-11-03T05:30:00Z"))
    );
    let contacts = read_table(&lake, "contacts");
    assert_eq!(
        contacts[0]["creation_date"],
        json!(micros("2024-03-10T07:59:59Z"))
    );
}

#[tokio::test]
async fn years_outside_four_digits_are_rejected_with_the_reason_never_a_partition() {
    let workspace = Workspace::new(VENUES);
    let server = workspace.serve();
    let checks = json!([
        {"ticket_check_id": 1, "access_time": "10000-01-01 00:00:00"},
        {"ticket_check_id": 2, "access_time": "+12345-06-01T00:00:00Z"},
        {"ticket_check_id": 3, "access_time": "9999-12-31T23:00:00-05:00"},
        {"ticket_check_id": 4, "access_time": "0000-06-01 12:00:00"},
        {"ticket_check_id": 5, "access_time": "2023-02-09 18:25:10"},
    ]);
    post(
        &server,
        "ticketchecks",
        "myvenue",
        checks.to_string().into_bytes(),
    )
    .await;
    let mut order: Value = serde_json::from_slice(&sample("orders.json")).unwrap();
    order[0]["orderDetailsData"]["creationDateTime"] = json!("9999-12-31T23:30:00+00:00");
    post(
        &server,
        "orders",
        "myvenue",
        order[0].to_string().into_bytes(),
    )
    .await;
    compact(&workspace, "compact");
    let lake = workspace.lake();
    let kept = read_table(&lake, "ticket_checks");
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["ticket_check_id"], json!(5));
    assert_eq!(read_table(&lake, "orders"), Vec::<Row>::new());
    let rejects = read_table(&lake, "rejects");
    assert_eq!(rejects.len(), 5);
    for reject in &rejects {
        let reason = reject["reason"].as_str().unwrap();
        assert!(
            reason.contains("is outside the years 0001 to 9999"),
            "{reason}"
        );
    }
    for date in partition_dates(&lake) {
        assert!(
            chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d").is_ok() && date.len() == 10,
            "partition date={date}"
        );
    }
}

async fn a_later_ticket_check_replaces_the_earlier_one_whatever_its_date(backend: Backend) {
    let workspace = Workspace::on(backend, &format!("compact_chunk_bytes = 1\n{VENUES}"), &[]);
    let server = workspace.serve();
    let check = |id: i64, at: &str, result: &str| json!({"ticket_check_id": id, "access_time": at, "result": result});
    let body = |records: Vec<Value>| Value::Array(records).to_string().into_bytes();
    // Check 1 is compacted, then corrected to another day by a later body.
    post(
        &server,
        "ticketchecks",
        "myvenue",
        body(vec![
            check(1, "2023-02-09 18:25:10", "FAIL"),
            check(10, "2023-02-09 18:26:00", "OK"),
        ]),
    )
    .await;
    compact(&workspace, "compact");
    post(
        &server,
        "ticketchecks",
        "myvenue",
        body(vec![check(1, "2023-02-10 09:00:00", "OK")]),
    )
    .await;
    // Check 2 is sent, then corrected, between two passes (one chunk per body here: the
    // correction replaces a file of the same pass); check 3 twice in one body.
    post(
        &server,
        "ticketchecks",
        "myvenue",
        body(vec![check(2, "2023-03-01 10:00:00", "FAIL")]),
    )
    .await;
    post(
        &server,
        "ticketchecks",
        "myvenue",
        body(vec![
            check(2, "2023-03-02 10:00:00", "OK"),
            check(3, "2023-04-01 10:00:00", "FAIL"),
            check(3, "2023-04-02 10:00:00", "OK"),
        ]),
    )
    .await;
    // The same check id at another venue is another check.
    post(
        &server,
        "ticketchecks",
        "othervenue",
        body(vec![check(1, "2023-02-09 12:00:00", "FAIL")]),
    )
    .await;
    let printed = compact(&workspace, "compact");
    assert!(
        printed.contains("3 rows replaced an earlier row"),
        "{printed}"
    );
    let lake = workspace.lake();
    let expect = |rows: &[Row]| {
        let mine: Vec<&Row> = rows
            .iter()
            .filter(|r| r["institution"] == "myvenue")
            .collect();
        let seen: BTreeMap<i64, (String, String)> = mine
            .iter()
            .map(|r| {
                let date = r["date"].as_str().unwrap().to_string();
                let result = r["result"].as_str().unwrap().to_string();
                (r["ticket_check_id"].as_i64().unwrap(), (date, result))
            })
            .collect();
        assert_eq!(mine.len(), seen.len(), "a check id is repeated: {mine:?}");
        let want = |date: &str, result: &str| (date.to_string(), result.to_string());
        assert_eq!(
            seen,
            BTreeMap::from([
                (1, want("2023-02-10", "OK")),
                (2, want("2023-03-02", "OK")),
                (3, want("2023-04-02", "OK")),
                (10, want("2023-02-09", "OK")),
            ])
        );
        assert_eq!(
            rows.iter()
                .filter(|r| r["institution"] == "othervenue")
                .count(),
            1
        );
    };
    let incremental = read_table(&lake, "ticket_checks");
    expect(&incremental);
    // A partition whose only check moved to another day holds no file any more.
    let emptied = lake.join("tables/ticket_checks/institution=myvenue/date=2023-03-01");
    assert!(!emptied.exists() || walk(&emptied).is_empty());
    drop(server);
    let before = all_rows(&workspace);
    compact(&workspace, "rebuild");
    expect(&read_table(&lake, "ticket_checks"));
    assert_eq!(
        all_rows(&workspace),
        before,
        "rebuild differs from the passes"
    );
}

/// Rewrites every Parquet file of `table` as an older datx wrote it: without `_position`.
fn drop_position_column(lake: &std::path::Path, table: &str) {
    for file in walk(&lake.join("tables").join(table)) {
        if file.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let bytes = bytes::Bytes::from(std::fs::read(&file).unwrap());
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<_> = reader
            .map(|batch| {
                let batch = batch.unwrap();
                let at = batch.schema().index_of("_position").unwrap();
                let mut batch = batch;
                batch.remove_column(at);
                batch
            })
            .collect();
        let mut out = Vec::new();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(&mut out, batches[0].schema(), None).unwrap();
        for batch in &batches {
            writer.write(batch).unwrap();
        }
        writer.close().unwrap();
        std::fs::write(&file, out).unwrap();
    }
}

/// Removes the key ranges from every commit, as an older datx wrote them, and gives each
/// file its size on disk now.
fn drop_key_ranges(lake: &std::path::Path) {
    for file in walk(&lake.join("_datx/commits")) {
        let mut commit: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        for added in commit["added"].as_array_mut().unwrap() {
            let added = added.as_object_mut().unwrap();
            added.remove("key_range");
            let path = lake.join(added["path"].as_str().unwrap());
            if let Ok(metadata) = std::fs::metadata(path) {
                added.insert("bytes".into(), json!(metadata.len()));
            }
        }
        std::fs::write(&file, serde_json::to_vec(&commit).unwrap()).unwrap();
    }
}

#[tokio::test]
async fn a_lake_written_before_positions_and_key_ranges_reads_merges_and_corrects() {
    let workspace = Workspace::new(VENUES);
    let server = workspace.serve();
    let lake = workspace.lake();
    post(&server, "ticketchecks", "myvenue", ticket_checks(5, 1)).await;
    compact(&workspace, "compact");
    drop_position_column(&lake, "ticket_checks");
    drop_key_ranges(&lake);
    let rows = common::sql_rows(
        &workspace,
        "SELECT ticket_check_id, _position FROM ticket_checks ORDER BY 1",
    );
    assert_eq!(rows.len(), 5);
    assert!(
        rows.iter()
            .all(|row| row.get("_position").is_none_or(Value::is_null)),
        "{rows:?}"
    );

    // A correction of an old check rewrites the old file; then the partition merges.
    let corrected = json!([{"ticket_check_id": 3, "access_time": "2023-02-09 18:25:10", "result": "CORRECTED"}]);
    post(
        &server,
        "ticketchecks",
        "myvenue",
        corrected.to_string().into_bytes(),
    )
    .await;
    post(&server, "ticketchecks", "myvenue", ticket_checks(3, 100)).await;
    std::fs::write(
        workspace.path().join("datx.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\ncompact_every = \"off\"\nmerge_after = \"0s\"\n{VENUES}"
        ),
    )
    .unwrap();
    let printed = compact(&workspace, "compact");
    assert!(printed.contains("1 rows replaced"), "{printed}");
    let checks = read_table(&lake, "ticket_checks");
    assert_eq!(counts(&checks, "ticket_check_id").len(), 8);
    assert_eq!(checks.len(), 8);
    assert_eq!(
        find(&checks, "ticket_check_id", json!(3))["result"],
        json!("CORRECTED")
    );
    let partition = lake.join("tables/ticket_checks/institution=myvenue/date=2023-02-09");
    assert_eq!(walk(&partition).len(), 1, "the partition was not merged");
}

on_both_backends!(
    samples_land_in_typed_partitioned_tables,
    a_record_that_does_not_fit_is_rejected_and_the_rest_of_its_body_lands,
    bodies_posted_while_passes_run_are_all_compacted_once,
    rebuild_gives_the_rows_of_the_incremental_passes_and_small_files_merge,
    a_later_ticket_check_replaces_the_earlier_one_whatever_its_date,
);

/// The types datx and Spark give a column, as Spark names them.
fn spark_type_of(arrow_type: &str) -> &'static str {
    match arrow_type {
        "Int64" => "bigint",
        "Utf8" | "Utf8View" => "string",
        "Boolean" => "boolean",
        "Date32" => "date",
        t if t.starts_with("Timestamp(") => "timestamp",
        other => panic!("no Spark type known for {other}"),
    }
}

#[tokio::test]
async fn spark_reads_every_table_as_datx_sql_does() {
    let workspace = Workspace::new(VENUES);
    let server = workspace.serve();
    post_samples(&server, "myvenue").await;
    post(&server, "ticketchecks", "othervenue", ticket_checks(40, 77)).await;
    // 25,000 checks in one partition: a file of two pages per column, with page indexes
    // (arrow-rs issue 10316: parquet-java once read 0 rows from such files).
    for part in 0..5 {
        let first = 100_000 + part * 5_000;
        post(
            &server,
            "ticketchecks",
            "othervenue",
            ticket_checks(5_000, first),
        )
        .await;
    }
    // A record of another shape, kept in `rejects`.
    post(
        &server,
        "orders",
        "othervenue",
        br#"[{"order": "unknown"}]"#.to_vec(),
    )
    .await;
    drop(server);
    compact(&workspace, "compact");

    // One local JVM, every socket on loopback, the session in UTC; each table read as a
    // Spark user would, with Hive partition discovery.
    let script = r#"
import json, os, sys
os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
from pyspark.sql import SparkSession, functions as F
spark = (SparkSession.builder.master("local[1]")
    .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
    .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    .config("spark.sql.session.timeZone", "UTC").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
out = {}
for table in sys.argv[2:]:
    df = spark.read.parquet(f"{sys.argv[1]}/tables/{table}")
    out[table] = {"count": df.count(), "types": {f.name: f.dataType.simpleString() for f in df.schema.fields}}
check = (spark.read.parquet(f"{sys.argv[1]}/tables/ticket_checks")
    .where(F.col("ticket_check_id") == 10228845124401)
    .select(F.date_format("access_time", "yyyy-MM-dd'T'HH:mm:ss").alias("utc"),
            F.date_format(F.from_utc_timestamp("access_time", "Europe/Zurich"), "yyyy-MM-dd HH:mm:ss").alias("local"),
            F.col("date").cast("string").alias("date"))
    .collect())
out["check"] = [row.asDict() for row in check]
checks = spark.read.parquet(f"{sys.argv[1]}/tables/ticket_checks")
out["in_last_page"] = checks.where(F.col("ticket_check_id") == 124999).count()
spark.stop()
print(json.dumps(out))
"#;
    let tables = common::TABLES;
    let spark = python_reader(
        ("pyspark", "pyspark==4.0.5"),
        script,
        &workspace.lake(),
        &tables,
    );
    for table in tables {
        let count =
            &common::sql_rows(&workspace, &format!("SELECT count(*) AS n FROM {table}"))[0]["n"];
        assert_eq!(&spark[table]["count"], count, "{table}");
        let spark_types = spark[table]["types"].as_object().unwrap();
        let columns: Vec<&String> = spark_types.keys().collect();
        let typeof_all = columns
            .iter()
            .map(|c| format!("arrow_typeof(\"{c}\") AS \"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let datx_types = &common::sql_rows(
            &workspace,
            &format!("SELECT {typeof_all} FROM {table} LIMIT 1"),
        )[0];
        for column in columns {
            let datx_type = datx_types[column.as_str()].as_str().unwrap();
            assert_eq!(
                spark_types[column],
                spark_type_of(datx_type),
                "{table}.{column}: datx has {datx_type}"
            );
        }
        assert_eq!(spark_types["date"], "date", "{table}");
        assert_eq!(spark_types["_received_at"], "timestamp", "{table}");
    }
    assert_eq!(spark["ticket_checks"]["types"]["ticket_check_id"], "bigint");
    assert_eq!(spark["ticket_checks"]["types"]["access_time"], "timestamp");
    // The sample's check at 18:25:10 in Zurich: the same instant in Spark and in datx, and
    // Spark gives back the venue's wall time from it.
    let datx_check = &common::sql_rows(
        &workspace,
        "SELECT to_char(access_time, '%Y-%m-%dT%H:%M:%S') AS utc, CAST(date AS VARCHAR) AS date \
         FROM ticket_checks WHERE ticket_check_id = 10228845124401",
    )[0];
    assert_eq!(
        spark["check"],
        json!([{"utc": datx_check["utc"], "local": "2023-02-09 18:25:10", "date": datx_check["date"]}])
    );
    assert_eq!(datx_check["utc"], "2023-02-09T17:25:10");
    // A filter that the page index answers finds its row in the last page.
    assert_eq!(spark["in_last_page"], 1);
}

/// Runs a Python `script` that reads the lake with `reader` (module, requirement) and
/// prints JSON: the lake's path, then `args`, are its arguments.
fn python_reader(
    reader: (&str, &str),
    script: &str,
    lake: &std::path::Path,
    args: &[&str],
) -> Value {
    let output = Command::new(common::python_with(&[reader]))
        .arg("-c")
        .arg(script)
        .arg(lake)
        .args(args)
        .output()
        .unwrap();
    serde_json::from_slice(&common::succeeded(output).stdout).unwrap()
}

#[tokio::test]
async fn three_hundred_commits_leave_the_last_three_checkpoints() {
    let workspace = Workspace::in_memory(VENUES);
    let server = workspace.serve();
    for i in 0..300 {
        post(
            &server,
            "ticketchecks",
            "myvenue",
            ticket_checks(1, 10_000 + i),
        )
        .await;
        let printed = compact(&workspace, "compact");
        assert!(printed.starts_with("1 events consumed"), "{printed}");
    }
    drop(server);
    let mut checkpoints: Vec<String> =
        std::fs::read_dir(workspace.lake().join("_datx/checkpoints"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    checkpoints.sort();
    let expected: Vec<String> = [200, 250, 300]
        .iter()
        .map(|version| format!("{version:020}.json"))
        .collect();
    assert_eq!(checkpoints, expected);
    let rows = common::sql_rows(
        &workspace,
        "SELECT count(DISTINCT ticket_check_id) AS n FROM ticket_checks",
    );
    assert_eq!(rows[0]["n"], 300);
}
