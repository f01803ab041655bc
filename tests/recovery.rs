//! Recovery: what damaged or missing state does to receiving and compaction, and that a
//! restart, a resend or `datx rebuild` always brings the lake back, with every accepted
//! record exactly once. Faults are made on the real filesystem: files truncated, removed,
//! or a file put where a directory must be.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Workspace, compact, post, read_table, ticket_checks, walk};
use serde_json::{Value, json};

const VENUE: &str = r#"
[institutions.myvenue]
timezone = "Europe/Zurich"
auth = "none"
"#;

/// Asserts that the ticket checks are exactly `ids`, each once.
fn assert_checks(workspace: &Workspace, ids: &BTreeSet<i64>) {
    let rows = read_table(&workspace.lake(), "ticket_checks");
    let seen: Vec<i64> = rows
        .iter()
        .map(|row| row["ticket_check_id"].as_i64().unwrap())
        .collect();
    assert_eq!(seen.len(), ids.len(), "a check is missing or repeated");
    assert_eq!(&seen.into_iter().collect::<BTreeSet<_>>(), ids);
}

fn contacts(names: &[&str]) -> Vec<u8> {
    let records: Vec<Value> = names
        .iter()
        .map(|name| json!({"contactNumber": name, "individualContact": {"firstName": name}}))
        .collect();
    Value::Array(records).to_string().into_bytes()
}

/// The duplicate marker of each body of a stream, found on disk.
fn markers(workspace: &Workspace, stream: &str) -> Vec<std::path::PathBuf> {
    walk(
        &workspace
            .lake()
            .join("_datx/seen")
            .join(stream)
            .join("myvenue"),
    )
}

fn failed(output: &std::process::Output) -> String {
    format!(
        "exit {:?}: {}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn checkpoints_that_cannot_be_written_do_not_stop_compaction() {
    // One commit per body, and a file where the checkpoint directory must be: the 50th
    // commit's checkpoint fails, as it would on a disk with room for a commit but not for
    // the larger checkpoint.
    let workspace = Workspace::new(&format!("compact_chunk_bytes = 1\n{VENUE}"));
    std::fs::create_dir_all(workspace.lake().join("_datx")).unwrap();
    std::fs::write(workspace.lake().join("_datx/checkpoints"), b"").unwrap();
    let server = workspace.serve();
    let mut ids = BTreeSet::new();
    for body in 0..60_i64 {
        post(
            &server,
            "ticketchecks",
            "myvenue",
            ticket_checks(3, body * 10),
        )
        .await;
        ids.extend(body * 10..body * 10 + 3);
    }
    let printed = compact(&workspace, "compact");
    assert!(printed.contains("60 commits"), "{printed}");
    assert_checks(&workspace, &ids);
    post(&server, "ticketchecks", "myvenue", ticket_checks(3, 5000)).await;
    ids.extend(5000..5003);
    compact(&workspace, "compact");
    assert_checks(&workspace, &ids);
    compact(&workspace, "rebuild");
    assert_checks(&workspace, &ids);
}

#[tokio::test]
async fn rebuild_repairs_a_lake_whose_committed_files_are_gone() {
    let workspace = Workspace::new(VENUE);
    let server = workspace.serve();
    let mut ids = BTreeSet::new();
    for body in 0..3_i64 {
        post(
            &server,
            "ticketchecks",
            "myvenue",
            ticket_checks(5, body * 100),
        )
        .await;
        ids.extend(body * 100..body * 100 + 5);
    }
    compact(&workspace, "compact");
    // Every Parquet file lost (a restore that missed them, an operator's rm).
    for file in walk(&workspace.lake().join("tables")) {
        std::fs::remove_file(file).unwrap();
    }
    let output = workspace.run(&["compact"]);
    assert_eq!(output.status.code(), Some(2), "{}", failed(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("datx rebuild"),
        "{}",
        failed(&output)
    );
    compact(&workspace, "rebuild");
    assert_checks(&workspace, &ids);
    post(&server, "ticketchecks", "myvenue", ticket_checks(5, 900)).await;
    ids.extend(900..905);
    compact(&workspace, "compact");
    assert_checks(&workspace, &ids);
}

#[tokio::test]
async fn a_damaged_duplicate_marker_neither_refuses_a_body_nor_stops_compaction() {
    let workspace = Workspace::new(VENUE);
    let server = workspace.serve();

    // A marker emptied (as a power loss can leave an unsynced one), then a pass: the pass
    // repairs it, and the resend is recognised.
    let first = contacts(&["A1", "A2"]);
    let stored = post(&server, "contacts", "myvenue", first.clone()).await;
    let [marker] = &markers(&workspace, "contacts")[..] else {
        panic!("one marker expected");
    };
    std::fs::write(marker, b"").unwrap();
    compact(&workspace, "compact");
    let again = post(&server, "contacts", "myvenue", first.clone()).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["event_id"], stored["event_id"]);

    // A marker garbled, then the resend: the body is stored again, and compaction counts
    // it once.
    let second = contacts(&["B1", "B2", "B3"]);
    post(&server, "contacts", "myvenue", second.clone()).await;
    for marker in markers(&workspace, "contacts") {
        let text = std::fs::read_to_string(&marker).unwrap();
        if !text.contains(stored["event_id"].as_str().unwrap()) {
            std::fs::write(&marker, b"#1/\x00garbage").unwrap();
        }
    }
    let resent = post(&server, "contacts", "myvenue", second.clone()).await;
    assert_eq!(resent["duplicate"], false);
    compact(&workspace, "compact");
    let names: Vec<String> = read_table(&workspace.lake(), "contacts")
        .iter()
        .map(|row| row["contact_number"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["A1", "A2", "B1", "B2", "B3"], "{names:?}");
    let verify = workspace.run(&["events", "verify", "--unsigned"]);
    assert!(verify.status.success(), "{}", failed(&verify));
}

#[tokio::test]
async fn an_event_lost_under_its_marker_is_written_by_the_resend() {
    let workspace = Workspace::new(VENUE);
    let server = workspace.serve();
    let body = ticket_checks(4, 700);
    let first = post(&server, "ticketchecks", "myvenue", body.clone()).await;
    // As if the process died after claiming the marker and before the event was stored.
    let events = walk(&workspace.lake().join("events"));
    assert_eq!(events.len(), 1);
    std::fs::remove_file(&events[0]).unwrap();
    let resent = post(&server, "ticketchecks", "myvenue", body.clone()).await;
    assert_eq!(resent["duplicate"], false);
    assert_eq!(resent["event_id"], first["event_id"]);
    assert!(std::fs::read(&events[0]).unwrap().ends_with(&body));
    compact(&workspace, "compact");
    assert_checks(&workspace, &(700..704).collect());
}

#[tokio::test]
async fn failing_background_compaction_is_retried_and_reported_until_it_recovers() {
    let workspace = Workspace::new(VENUE);
    std::fs::write(
        workspace.path().join("datx.toml"),
        format!("listen = \"127.0.0.1:0\"\ncompact_every = \"50ms\"\n{VENUE}"),
    )
    .unwrap();
    // A file where the tables directory must be: every pass that has rows to write fails.
    std::fs::create_dir_all(workspace.lake()).unwrap();
    let blocker = workspace.lake().join("tables");
    std::fs::write(&blocker, b"").unwrap();
    let server = workspace.serve();
    post(&server, "ticketchecks", "myvenue", ticket_checks(5, 1)).await;
    let client = reqwest::Client::new();
    let health = || async {
        let response = client.get(server.url("/healthz")).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let mut failing = None;
    for _ in 0..200 {
        let (status, body) = health().await;
        if status == 503 {
            failing = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failing = failing.expect("/healthz never reported the failing compaction");
    assert_eq!(failing["status"], "compaction failing");
    assert!(failing["failing_since"].is_string(), "{failing}");
    assert!(failing["failed_passes"].as_u64().unwrap() >= 1, "{failing}");
    let metrics = common::get_text(&server, "/metrics").await;
    let since = metrics
        .lines()
        .find_map(|line| line.strip_prefix("datx_compaction_failing_since_seconds "))
        .expect("the failing-since gauge is exported");
    assert!(since.parse::<f64>().unwrap() > 0.0, "{since}");
    assert!(server.log().contains("compaction pass failed"));

    // Receiving goes on meanwhile; once the fault is gone, a retry compacts everything.
    post(&server, "ticketchecks", "myvenue", ticket_checks(5, 100)).await;
    std::fs::remove_file(&blocker).unwrap();
    let mut recovered = false;
    for _ in 0..400 {
        if health().await.0 == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "compaction did not recover:\n{}", server.log());
    assert!(server.log().contains("compaction recovered"));
    drop(server);
    assert_checks(&workspace, &(1..6).chain(100..105).collect());
}

#[tokio::test]
async fn a_body_stored_late_does_not_undo_a_later_correction() {
    let workspace = Workspace::new(VENUE);
    let server = workspace.serve();
    let check = |result: &str| {
        json!([{"ticket_check_id": 42, "access_time": "2023-02-09 18:25:10", "result": result}])
            .to_string()
            .into_bytes()
    };
    // The first version's event is lost after its marker was claimed (a crash); the
    // correction is received and compacted; then S-360 resends the first version, which
    // is stored under the id claimed first, before the correction's.
    post(&server, "ticketchecks", "myvenue", check("FAIL")).await;
    for event in walk(&workspace.lake().join("events")) {
        std::fs::remove_file(event).unwrap();
    }
    post(&server, "ticketchecks", "myvenue", check("OK")).await;
    compact(&workspace, "compact");
    post(&server, "ticketchecks", "myvenue", check("FAIL")).await;
    compact(&workspace, "compact");
    let rows = read_table(&workspace.lake(), "ticket_checks");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["result"], "OK");
    drop(server);
    compact(&workspace, "rebuild");
    let rows = read_table(&workspace.lake(), "ticket_checks");
    assert_eq!((rows.len(), &rows[0]["result"]), (1, &json!("OK")));
}

#[tokio::test]
async fn a_lake_upgraded_right_after_a_crash_finishes_its_old_pending_files() {
    let workspace = Workspace::new(VENUE);
    let server = workspace.serve();
    let mut ids = BTreeSet::new();
    for body in 0..2_i64 {
        post(
            &server,
            "ticketchecks",
            "myvenue",
            ticket_checks(5, 5_000 + body * 100),
        )
        .await;
        ids.extend(5_000 + body * 100..5_000 + body * 100 + 5);
    }
    compact(&workspace, "compact");
    // As the previous version left a commit whose files were not moved yet: beside their
    // final name, as `_pending-{id}.tmp`, and with an abandoned one of an earlier pass.
    let lake = workspace.lake();
    let committed: Vec<_> = walk(&lake.join("tables"));
    assert!(!committed.is_empty());
    for file in &committed {
        let id = file
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_start_matches("part-")
            .trim_end_matches(".parquet")
            .to_string();
        std::fs::rename(file, file.with_file_name(format!("_pending-{id}.tmp"))).unwrap();
    }
    let abandoned = committed[0].with_file_name("_pending-abandoned.tmp");
    std::fs::write(&abandoned, b"half a file").unwrap();

    let printed = compact(&workspace, "compact");
    assert!(printed.starts_with("0 events consumed"), "{printed}");
    assert!(committed.iter().all(|file| file.exists()));
    assert!(!abandoned.exists());
    assert_checks(&workspace, &ids);
}

#[tokio::test]
async fn stray_files_in_the_event_log_are_skipped_and_named_by_verify() {
    let workspace = Workspace::new(VENUE);
    let server = workspace.serve();
    post(&server, "ticketchecks", "myvenue", ticket_checks(3, 100)).await;
    drop(server);
    let lake = workspace.lake();
    let event = walk(&lake.join("events"))[0].clone();
    let day = event.parent().unwrap().to_path_buf();
    let id = event.file_stem().unwrap().to_str().unwrap().to_string();
    // Copies under names datx never writes: a UUID that is not version 7 (no time in it),
    // the id in upper case, a name that is no UUID, and a file in a directory of the day.
    let strays = [
        day.join("3f2504e0-4f89-41d3-9a0c-0305e82c3301.event"),
        day.join(format!("{}.event", id.to_uppercase())),
        day.join("foo.event"),
        day.join("copies").join(format!("{id}.event")),
    ];
    for stray in &strays {
        std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
        std::fs::copy(&event, stray).unwrap();
    }
    // And an event datx could have written, whose envelope line was damaged.
    let damaged = day.join(format!("{}.event", uuid::Uuid::now_v7()));
    std::fs::write(&damaged, b"{\"event_id\": \n[{\"ticket_check_id\": 900}]").unwrap();

    // serve starts, receives, and says what it skipped.
    let server = workspace.serve();
    post(&server, "ticketchecks", "myvenue", ticket_checks(2, 200)).await;
    let log = server.log();
    drop(server);
    let key = |path: &std::path::Path| path.strip_prefix(&lake).unwrap().display().to_string();
    for stray in &strays {
        assert!(
            log.contains(&key(stray)),
            "{} not warned of:\n{log}",
            key(stray)
        );
    }
    // compact takes in the two bodies, and the damaged event as one reject.
    let printed = compact(&workspace, "compact");
    assert!(printed.starts_with("3 events consumed"), "{printed}");
    assert_checks(&workspace, &[100, 101, 102, 200, 201].into());
    let rejects = read_table(&workspace.lake(), "rejects");
    assert_eq!(rejects.len(), 1);
    assert!(
        rejects[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("the stored event is damaged"),
        "{:?}",
        rejects[0]
    );
    let listed = workspace.run(&["events", "list", "--format", "csv"]);
    assert!(listed.status.success(), "{}", failed(&listed));
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 3);
    // verify names every stray and the damaged event, and fails.
    let verified = workspace.run(&["events", "verify", "--unsigned"]);
    let said = String::from_utf8_lossy(&verified.stdout);
    assert_eq!(verified.status.code(), Some(1), "{}", failed(&verified));
    for path in strays.iter().chain([&damaged]) {
        assert!(
            said.contains(&key(path)),
            "{} not named:\n{said}",
            key(path)
        );
    }
    assert_eq!(said.matches("MISMATCH").count(), 5, "{said}");
}

/// A body of ticket checks as an older receiver under a wrong clock could have stored it:
/// an event of the layout, received `days_ago`, written straight into the event log.
fn event_stored_days_ago(workspace: &Workspace, days_ago: i64, body: &[u8]) -> std::path::PathBuf {
    use sha2::Digest;
    let at = chrono::Utc::now() - chrono::Duration::days(days_ago);
    let timestamp = uuid::Timestamp::from_unix(
        uuid::NoContext,
        at.timestamp() as u64,
        at.timestamp_subsec_nanos(),
    );
    let id = uuid::Uuid::new_v7(timestamp);
    let envelope = json!({
        "event_id": id,
        "stream": "ticketchecks",
        "institution": "myvenue",
        "received_at": chrono::DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap(),
        "sha256": hex::encode(sha2::Sha256::digest(body)),
        "records": serde_json::from_slice::<Vec<Value>>(body).unwrap().len(),
        "body_bytes": body.len(),
    });
    let path = workspace.lake().join(format!(
        "events/ticketchecks/myvenue/{}/{id}.event",
        at.format("%Y-%m-%d")
    ));
    let mut stored = serde_json::to_vec(&envelope).unwrap();
    stored.push(b'\n');
    stored.extend_from_slice(body);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, stored).unwrap();
    path
}

#[tokio::test]
async fn a_receiver_whose_clock_is_behind_is_refused_and_a_late_event_is_taken_in() {
    // Days received "on past days" (the test clock moved back, and held to nothing), then
    // sealed by a compaction on the true clock.
    let workspace = Workspace::new(&format!("clock_tolerance = \"off\"\n{VENUE}"));
    let mut ids = BTreeSet::new();
    for (days_ago, first) in [(5, 1000), (4, 2000)] {
        let shift = format!("-{days_ago}days");
        let server = workspace.serve_with_env(&[("DATX_TEST_CLOCK_SHIFT", &shift)]);
        post(&server, "ticketchecks", "myvenue", ticket_checks(3, first)).await;
        ids.extend(first..first + 3);
    }
    compact(&workspace, "compact");
    std::fs::write(
        workspace.path().join("datx.toml"),
        format!("listen = \"127.0.0.1:0\"\ncompact_every = \"off\"\n{VENUE}"),
    )
    .unwrap();

    // A receiver six days behind, as a VM restored from a snapshot would be: Debian's
    // libfaketime moves the clock of the real binary.
    const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    if !std::path::Path::new(FAKETIME).exists() {
        assert!(std::env::var("CI").is_err(), "CI installs faketime");
        eprintln!("SKIPPED: no {FAKETIME} (Debian's faketime)");
        return;
    }
    let behind = workspace.serve_with_env(&[
        ("LD_PRELOAD", FAKETIME),
        ("FAKETIME", "-6d"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    let refused = reqwest::Client::new()
        .post(behind.url("/s360/ticketchecks/myvenue"))
        .body(ticket_checks(3, 3000))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "60");
    let why: Value = refused.json().await.unwrap();
    let why = why["error"].as_str().unwrap();
    assert!(
        why.contains("behind") && why.contains("the body was not stored"),
        "{why}"
    );
    let health = common::health_becomes(&behind, 503).await;
    assert_eq!(health["status"], "clock disagrees", "{health}");
    let metrics = common::get_text(&behind, "/metrics").await;
    assert!(metrics.contains("datx_clock_refusals_total 1"), "{metrics}");
    drop(behind);
    let stored = walk(&workspace.lake().join("events")).len();
    assert_eq!(stored, 2, "the refused body was stored");

    // An event that an older receiver stored in the last sealed day: the next pass takes it
    // in once, and records it beside the day's digest, so that verify accepts it.
    let late = event_stored_days_ago(&workspace, 4, &ticket_checks(2, 4000));
    ids.extend([4000, 4001]);
    let printed = compact(&workspace, "compact");
    assert!(printed.starts_with("1 events consumed"), "{printed}");
    assert_checks(&workspace, &ids);
    let day = late
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let id = late.file_stem().unwrap().to_str().unwrap();
    let record = workspace.lake().join(format!(
        "_datx/digests/ticketchecks/myvenue/late/{day}/{id}.json"
    ));
    assert!(record.exists(), "no record of the late arrival");
    let verified = workspace.run(&["events", "verify", "--unsigned"]);
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{said}");
    assert!(
        said.contains("1 late arrivals recorded in sealed days"),
        "{said}"
    );
    let status = workspace.run(&["status", "--lake", "--format", "json"]);
    let status = String::from_utf8_lossy(&status.stdout);
    let checks = status
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|source| source["stream"] == "ticketchecks")
        .unwrap_or_else(|| panic!("no ticketchecks line in {status}"));
    assert_eq!(checks["late_arrivals"], 1, "{checks}");
    // Taken once: the next pass finds nothing.
    let again = compact(&workspace, "compact");
    assert!(again.starts_with("0 events consumed"), "{again}");
    assert_checks(&workspace, &ids);

    // A rebuild keeps the ids of the last sealed days, so a later late arrival in the same
    // day is still found, and only it.
    let rebuilt = compact(&workspace, "rebuild");
    assert!(rebuilt.contains("events consumed"), "{rebuilt}");
    assert_checks(&workspace, &ids);
    event_stored_days_ago(&workspace, 4, &ticket_checks(2, 5000));
    ids.extend([5000, 5001]);
    let printed = compact(&workspace, "compact");
    assert!(printed.starts_with("1 events consumed"), "{printed}");
    assert_checks(&workspace, &ids);
    let verified = workspace.run(&["events", "verify", "--unsigned"]);
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{said}");
    assert!(said.contains("2 late arrivals recorded"), "{said}");

    // A compactor two days ahead (its own clock; the file system's is right) neither seals
    // today nor makes the lake look two days ahead to a receiver with the right clock.
    let server = workspace.serve();
    post(&server, "ticketchecks", "myvenue", ticket_checks(1, 6000)).await;
    ids.insert(6000);
    drop(server);
    let ahead = workspace
        .command(&["compact"])
        .env("LD_PRELOAD", FAKETIME)
        .env("FAKETIME", "+2d")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&ahead.stdout);
    assert!(said.starts_with("1 events consumed"), "{}", failed(&ahead));
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let digests = walk(&workspace.lake().join("_datx/digests"));
    assert!(
        !digests
            .iter()
            .any(|d| d.display().to_string().contains(&today)),
        "a compactor ahead sealed today: {digests:?}"
    );
    let server = workspace.serve();
    post(&server, "ticketchecks", "myvenue", ticket_checks(1, 7000)).await;
    ids.insert(7000);
    common::health_becomes(&server, 200).await;
    drop(server);
    compact(&workspace, "compact");
    assert_checks(&workspace, &ids);
}
