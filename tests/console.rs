//! The operator's console: `datx simulate` driving a real `datx serve`, over real sockets,
//! with each institution's auth mode.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Workspace, compact, sql_rows, succeeded};
use serde_json::Value;

/// Three venues, one per auth mode, in three zones.
const VENUES: &str = r#"
[institutions.zoo]
timezone = "Europe/Zurich"
auth = "basic"
user = "s360"
password = "zoo-password"
[institutions.opera]
timezone = "America/New_York"
auth = "api_key"
header = "x-s360-key"
key = "opera-key"
[institutions.museum]
timezone = "Asia/Tokyo"
auth = "none"
"#;

/// The events `events list` shows, as JSON objects.
fn events(workspace: &Workspace) -> Vec<Value> {
    let output = succeeded(workspace.run(&["events", "list", "--format", "json"]));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn simulate(workspace: &Workspace, to: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "simulate",
        "--to",
        to,
        "--backfill-since",
        "2026-03-01",
        "--backfill-until",
        "2026-03-04T00:00:00Z",
    ];
    if !extra.contains(&"--seed") {
        args.extend_from_slice(&["--seed", "7"]);
    }
    args.extend_from_slice(extra);
    let output = succeeded(workspace.run(&args));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_traffic_is_accepted_consistent_and_repeatable() {
    let workspace = Workspace::new(VENUES);
    let server = workspace.serve();
    let to = server.url("/s360");
    let printed = simulate(&workspace, &to, &["--pushes", "2", "--every", "200ms"]);
    compact(&workspace, "compact");

    // Every body was accepted with its venue's credentials, none over 50 records, each
    // stream of each venue has some, and nothing was rejected as misshapen.
    let listed = events(&workspace);
    let bodies = listed.len();
    let records: u64 = listed.iter().map(|e| e["records"].as_u64().unwrap()).sum();
    assert_eq!(
        printed.trim(),
        format!(
            "sent {bodies} bodies ({records} records); 0 refusals, 0 bodies given up, 0 still waiting"
        )
    );
    assert!(listed.iter().all(|e| e["records"].as_u64().unwrap() <= 50));
    let sources: BTreeSet<(String, String)> = listed
        .iter()
        .map(|e| {
            (
                e["stream"].as_str().unwrap().to_string(),
                e["institution"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(sources.len(), 9, "{sources:?}");
    let rejects = sql_rows(&workspace, "SELECT count(*) AS n FROM rejects");
    assert_eq!(rejects[0]["n"], 0);

    // Self-consistent: every gate check is of a ticket sold (a SALE movement) by the same
    // venue, at most once OK; refunds name a sold movement; contacts come back changed.
    let orphans = sql_rows(
        &workspace,
        "SELECT count(*) AS n FROM ticket_checks t LEFT JOIN order_movements m
            ON t.movement_id = m.movement_id AND t.institution = m.institution AND m.movement_type = 'SALE'
         WHERE m.movement_id IS NULL",
    );
    assert_eq!(orphans[0]["n"], 0);
    let twice_ok = sql_rows(
        &workspace,
        "SELECT count(*) AS n FROM (SELECT movement_id FROM ticket_checks WHERE result = 'OK'
            GROUP BY movement_id HAVING count(*) > 1)",
    );
    assert_eq!(twice_ok[0]["n"], 0);
    let kinds: BTreeMap<String, i64> = sql_rows(
        &workspace,
        "SELECT movement_type AS kind, count(*) AS n FROM order_movements GROUP BY 1",
    )
    .into_iter()
    .map(|r| {
        (
            r["kind"].as_str().unwrap().to_string(),
            r["n"].as_i64().unwrap(),
        )
    })
    .collect();
    for kind in ["SALE", "RESERVATION", "REFUND"] {
        assert!(kinds.get(kind).is_some_and(|n| *n > 0), "{kinds:?}");
    }
    let refunds = sql_rows(
        &workspace,
        "SELECT count(*) AS n FROM order_movements r LEFT JOIN order_movements s
            ON r.refunded_movement_id = s.movement_id AND s.movement_type = 'SALE'
         WHERE r.movement_type = 'REFUND' AND s.movement_id IS NULL",
    );
    assert_eq!(refunds[0]["n"], 0);
    let changed = sql_rows(
        &workspace,
        "SELECT count(*) AS n FROM (SELECT contact_number FROM contacts
            GROUP BY institution, contact_number HAVING count(*) > 1)",
    );
    assert!(changed[0]["n"].as_i64().unwrap() > 0);
    // Performances are on the hour in the venue's zone: access times are local.
    let late = sql_rows(
        &workspace,
        "SELECT count(*) AS n FROM ticket_checks WHERE institution = 'museum'",
    );
    assert!(late[0]["n"].as_i64().unwrap() > 0);

    // Another seed over the same days, into the same lake, reuses no id: every order and
    // check stays one row (a repeated id would replace a row).
    simulate(&workspace, &to, &["--seed", "8", "--pushes", "0"]);
    compact(&workspace, "compact");
    let ids = sql_rows(
        &workspace,
        "SELECT (SELECT count(*) FROM orders) - (SELECT count(DISTINCT order_id) FROM orders) AS orders,
                (SELECT count(*) FROM ticket_checks) - (SELECT count(DISTINCT ticket_check_id) FROM ticket_checks) AS checks",
    );
    assert_eq!(
        (ids[0]["orders"].as_i64(), ids[0]["checks"].as_i64()),
        (Some(0), Some(0))
    );

    // The same seed and history give the same bodies, byte for byte.
    let history = |workspace: &Workspace| -> Vec<String> {
        let mut digests: Vec<String> = events(workspace)
            .iter()
            .map(|e| e["sha256"].as_str().unwrap().to_string())
            .collect();
        digests.sort();
        digests
    };
    let again = [Workspace::new(VENUES), Workspace::new(VENUES)].map(|workspace| {
        let server = workspace.serve();
        simulate(&workspace, &server.url("/s360"), &["--pushes", "0"]);
        history(&workspace)
    });
    assert_eq!(again[0], again[1]);
    assert!(!again[0].is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_bodies_are_sent_again_at_the_next_push_then_given_up() {
    // The target knows the zoo by another password: every zoo body is refused (401).
    let target = Workspace::new(&VENUES.replace("zoo-password", "another-password"));
    let server = target.serve();
    let sender = Workspace::new(VENUES);
    let output = sender.run(&[
        "simulate",
        "--to",
        &server.url("/s360"),
        "--institution",
        "zoo",
        "--pushes",
        "13",
        "--every",
        "100ms",
    ]);
    let printed = String::from_utf8_lossy(&output.stdout);
    let log = String::from_utf8_lossy(&output.stderr);
    // The first push's bodies are tried at each of the 13 pushes and given up after the
    // 12th refusal; the later pushes' bodies still wait at the end: a failed delivery.
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(printed.contains("sent 0 bodies (0 records)"), "{printed}");
    assert!(!printed.contains(" 0 bodies given up"), "{printed}");
    assert!(!printed.contains(" 0 still waiting"), "{printed}");
    assert!(log.contains("is given up, as S-360 gives it up"), "{log}");
    assert!(events(&target).is_empty());
    // An unknown institution or target is refused before anything is sent.
    let output = sender.run(&["simulate", "--institution", "nowhere", "--pushes", "1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nowhere"));
}

/// One push of the zoo's three streams.
fn push_zoo(workspace: &Workspace, server: &common::Server) {
    let to = server.url("/s360");
    let args = [
        "simulate",
        "--to",
        &to,
        "--institution",
        "zoo",
        "--pushes",
        "1",
    ];
    succeeded(workspace.run(&args));
}

/// The freshness gauges `/metrics` shows for `institution`, by stream: `(state, age)`.
async fn freshness(
    server: &common::Server,
    institution: &str,
) -> BTreeMap<String, (i64, Option<f64>)> {
    let metrics = common::get_text(server, "/metrics").await;
    let mut found = BTreeMap::new();
    for line in metrics.lines() {
        let label = format!("institution=\"{institution}\"");
        if !line.contains(&label) {
            continue;
        }
        let stream = line
            .split("stream=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        let (Some(stream), Some(value)) = (stream, value) else {
            continue;
        };
        let entry = found.entry(stream.to_string()).or_insert((i64::MIN, None));
        if line.starts_with("datx_stream_state") {
            entry.0 = value as i64;
        } else if line.starts_with("datx_last_body_age_seconds") {
            entry.1 = Some(value);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_goes_quiet_turns_late_then_silent_and_back() {
    // The zoo is expected every second; the opera pushes rarely and is not watched.
    let config = VENUES
        .replace(
            "auth = \"basic\"",
            "auth = \"basic\"\nexpect_every = \"1s\"",
        )
        .replace(
            "auth = \"api_key\"",
            "auth = \"api_key\"\nexpect_every = \"off\"",
        );
    let workspace = Workspace::new(&config);
    let server = workspace.serve();
    push_zoo(&workspace, &server);
    let fresh = freshness(&server, "zoo").await;
    assert_eq!(fresh.len(), 3, "{fresh:?}");
    for (stream, (state, age)) in &fresh {
        assert_eq!(*state, 0, "{stream}");
        assert!(age.is_some_and(|a| a < 60.0), "{stream}: {age:?}");
    }
    let states = |fresh: &BTreeMap<String, (i64, Option<f64>)>| {
        fresh
            .values()
            .map(|(state, _)| *state)
            .collect::<BTreeSet<i64>>()
    };
    assert_eq!(
        states(&freshness(&server, "opera").await),
        BTreeSet::from([-1])
    );
    // Quiet for 2 intervals: late; for 3: silent.
    tokio::time::sleep(std::time::Duration::from_millis(2_200)).await;
    let late = states(&freshness(&server, "zoo").await);
    assert!(
        late == BTreeSet::from([1]) || late == BTreeSet::from([2]),
        "{late:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    assert_eq!(
        states(&freshness(&server, "zoo").await),
        BTreeSet::from([2])
    );
    // A restart reads the last bodies from the log: still silent, not reset to ok.
    drop(server);
    let server = workspace.serve();
    let after_restart = freshness(&server, "zoo").await;
    assert_eq!(
        states(&after_restart),
        BTreeSet::from([2]),
        "{after_restart:?}"
    );
    assert!(
        after_restart
            .values()
            .all(|(_, age)| age.is_some_and(|a| a >= 3.0))
    );
    // datx status reads the same from the lake: the zoo silent, the opera not watched,
    // the museum (nothing in two days, expected every 15 minutes) silent; exit status 1.
    let (code, now) = status(&workspace);
    assert_eq!(code, Some(1));
    assert_eq!(now.len(), 9, "{now:?}");
    for ((institution, stream), state) in &now {
        let expected = match institution.as_str() {
            "opera" => "unwatched",
            _ => "silent",
        };
        assert_eq!(state, expected, "{institution}/{stream}");
    }
    // Pushing again makes it ok.
    push_zoo(&workspace, &server);
    assert_eq!(
        states(&freshness(&server, "zoo").await),
        BTreeSet::from([0])
    );
    let (_, now) = status(&workspace);
    let zoo: Vec<&String> = now
        .iter()
        .filter(|((institution, _), _)| institution == "zoo")
        .map(|(_, state)| state)
        .collect();
    assert_eq!(zoo, ["ok", "ok", "ok"]);
    let table = String::from_utf8(workspace.run(&["status"]).stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("zoo") && l.ends_with("ok")),
        "{table}"
    );
}

/// `datx status --format json`: its exit status and each source's state.
fn status(workspace: &Workspace) -> (Option<i32>, BTreeMap<(String, String), String>) {
    let output = workspace.run(&["status", "--format", "json"]);
    let states = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .map(|v| {
            let text = |key: &str| v[key].as_str().unwrap().to_string();
            ((text("institution"), text("stream")), text("state"))
        })
        .collect();
    (output.status.code(), states)
}
