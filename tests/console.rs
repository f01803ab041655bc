//! The operator's console: `datx simulate` driving a real `datx serve`, over real sockets,
//! with each institution's auth mode.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Workspace, compact, sql_rows, succeeded};
use serde_json::Value;

/// Three venues, one per auth mode, in three zones.
const VENUES: &str = include_str!("three_venues.toml");

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
    // The saved sales query nets sales against refunds; reservations sell nothing.
    let query = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/queries/sales_by_day_and_product.sql"
    );
    let output = succeeded(workspace.run(&["sql", "--format", "json", "-f", query]));
    let sales: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(!sales.is_empty());
    for row in &sales {
        let amount = |key: &str| row[key].as_i64().unwrap();
        assert_eq!(
            amount("net_amount"),
            amount("sales_amount") - amount("refunds_amount"),
            "{row:?}"
        );
    }
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
    // datx status --lake reads the same from the lake: the zoo silent, the opera not watched,
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
    let table = String::from_utf8(workspace.run(&["status", "--lake"]).stdout).unwrap();
    let zoo_rows: Vec<&str> = table.lines().filter(|l| l.starts_with("zoo ")).collect();
    assert_eq!(zoo_rows.len(), 3, "{table}");
    assert!(
        zoo_rows
            .iter()
            .all(|l| l.split_whitespace().nth(2) == Some("ok")),
        "{table}"
    );
}

/// `datx status --lake --format json`: its exit status and each source's state.
fn status(workspace: &Workspace) -> (Option<i32>, BTreeMap<(String, String), String>) {
    let output = workspace.run(&["status", "--lake", "--format", "json"]);
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

/// Headless Chromium (Debian's `chromium`, installed by `.ci/run` where missing) with a
/// profile of its own, asked for `what` of `url`.
fn chromium(profile: &std::path::Path, what: &[&str], url: &str) -> std::process::Output {
    std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(what)
        .arg(url)
        .output()
        .expect("chromium runs (Debian's chromium, installed by .ci/run)")
}

/// One row of the status page, as the browser's DOM has it.
#[derive(Debug)]
struct PageRow {
    state: String,
    /// `data-value` of each cell that has one, by the cell's first class.
    values: BTreeMap<String, String>,
    /// The refusals cell's `data-statuses`, e.g. `"401:2"`.
    refusals: String,
    /// The chart's records per hour.
    chart: Vec<u64>,
}

/// The value of `attribute="..."` in `tag`.
fn attribute(tag: &str, attribute: &str) -> Option<String> {
    let start = tag.find(&format!(" {attribute}=\""))? + attribute.len() + 3;
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].to_string())
}

/// The page's rows by (institution, stream), read from the DOM Chromium dumped.
fn page_rows(dom: &str) -> BTreeMap<(String, String), PageRow> {
    let mut rows = BTreeMap::new();
    for row in dom.split("<tr class=\"source\"").skip(1) {
        let row = &row[..row.find("</tr>").expect("rows are closed")];
        let head = &row[..row.find('>').unwrap()];
        let key = (
            attribute(head, "data-institution").unwrap(),
            attribute(head, "data-stream").unwrap(),
        );
        let mut values = BTreeMap::new();
        let mut refusals = String::new();
        for cell in row.split("<td").skip(1) {
            let tag = &cell[..cell.find('>').unwrap()];
            let class = attribute(tag, "class").unwrap_or_default();
            let class = class.split(' ').next().unwrap_or_default().to_string();
            if let Some(value) = attribute(tag, "data-value") {
                values.insert(class.clone(), value);
            }
            if class == "refusals" {
                refusals = attribute(tag, "data-statuses").unwrap_or_default();
            }
        }
        let svg = &row[row.find("<svg").expect("every row has its chart")..];
        let chart = attribute(&svg[..svg.find('>').unwrap()], "data-values")
            .unwrap()
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect();
        rows.insert(
            key,
            PageRow {
                state: attribute(head, "data-state").unwrap(),
                values,
                refusals,
                chart,
            },
        );
    }
    rows
}

/// The page's JSON figures, as `datx status` reads them.
async fn overview(server: &common::Server) -> Value {
    reqwest::Client::new()
        .get(server.url("/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits (at most 60 s) until every stream of `institution` is in `state` by the page's
/// JSON figures.
async fn wait_for_state(server: &common::Server, institution: &str, state: &str) {
    for _ in 0..600 {
        let figures = overview(server).await;
        let states: Vec<&str> = figures["sources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["institution"] == institution)
            .map(|s| s["state"].as_str().unwrap())
            .collect();
        if states.len() == 3 && states.iter().all(|s| *s == state) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{institution} never turned {state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_a_browser_shows_what_the_lake_holds() {
    // The zoo is expected every 10 s: stopped on purpose, it is late after 20 s and silent
    // after 30 s (and ok meanwhile, however slowly a loaded machine gets the page).
    let config = VENUES.replace(
        "auth = \"basic\"",
        "auth = \"basic\"\nexpect_every = \"10s\"",
    );
    let workspace = Workspace::new(&config);
    let server = workspace.serve();
    let page = server.url("/");
    let profile = tempfile::tempdir().unwrap();
    let dom = || {
        let output = chromium(profile.path(), &["--dump-dom"], &page);
        assert!(output.status.success(), "{output:?}");
        page_rows(&String::from_utf8(output.stdout).unwrap())
    };

    // Three days of history as a first-time synchronisation sends it, then a live push;
    // and what a venue can get wrong: a wrong password twice, a body that is not JSON,
    // and a record that is JSON but no S-360 order.
    simulate(
        &workspace,
        &server.url("/s360"),
        &["--pushes", "1", "--every", "100ms"],
    );
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let refused = client
            .post(server.url("/s360/orders/zoo"))
            .basic_auth("s360", Some("wrong"))
            .body("[]")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
    }
    let not_json = client
        .post(server.url("/s360/contacts/museum"))
        .body("[{")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    common::post(
        &server,
        "orders",
        "museum",
        br#"[{"no": "order"}]"#.to_vec(),
    )
    .await;

    // Before compaction: every figure of every row is what the event log holds, and every
    // event is still to reach the tables.
    let mut expected: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for event in events(&workspace) {
        let key = (
            event["institution"].as_str().unwrap().to_string(),
            event["stream"].as_str().unwrap().to_string(),
        );
        let entry = expected.entry(key).or_default();
        entry.0 += 1;
        entry.1 += event["records"].as_u64().unwrap();
    }
    assert_eq!(expected.len(), 9);
    let rows = dom();
    assert_eq!(rows.len(), 9, "{rows:?}");
    for (key, (bodies, records)) in &expected {
        let row = &rows[key];
        let value = |name: &str| row.values[name].clone();
        assert_eq!(row.state, "ok", "{key:?}");
        assert_eq!(value("bodies"), bodies.to_string(), "{key:?}");
        assert_eq!(value("records"), records.to_string(), "{key:?}");
        assert_eq!(value("pending"), bodies.to_string(), "{key:?}");
        assert_eq!(value("rejects"), "0", "{key:?}");
        assert_eq!(value("last-commit"), "", "{key:?}");
        // Every body arrived within the hour: the chart's hours add up to the 24 h figure.
        assert_eq!(row.chart.len(), 48);
        assert_eq!(row.chart.iter().sum::<u64>(), *records, "{key:?}");
        let refusals = match (key.0.as_str(), key.1.as_str()) {
            ("zoo", "orders") => "401:2",
            ("museum", "contacts") => "400:1",
            _ => "",
        };
        assert_eq!(row.refusals, refusals, "{key:?}");
    }

    // After a compaction (by another process: the page follows the commit log), nothing
    // waits, and the rejects are the lake's.
    compact(&workspace, "compact");
    for _ in 0..100 {
        if overview(&server).await["lake_version"].as_u64() > Some(0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let rejects: BTreeMap<(String, String), String> = sql_rows(
        &workspace,
        "SELECT institution, stream, count(*) AS n FROM rejects GROUP BY 1, 2",
    )
    .into_iter()
    .map(|r| {
        let text = |k: &str| r[k].as_str().unwrap().to_string();
        ((text("institution"), text("stream")), r["n"].to_string())
    })
    .collect();
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    let rows = dom();
    for (key, row) in &rows {
        assert_eq!(row.values["pending"], "0", "{key:?}");
        assert!(
            row.values["last-commit"].parse::<u64>().unwrap() > 0,
            "{key:?}"
        );
        let lake_rejects = rejects.get(key).map_or("0", String::as_str);
        assert_eq!(row.values["rejects"], lake_rejects, "{key:?}");
    }
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for (name, size) in [
        ("status-page", "1400,1000"),
        ("status-page-phone", "390,1800"),
    ] {
        let file = artifacts.join(format!("{name}.png"));
        let screenshot = format!("--screenshot={}", file.display());
        let window = format!("--window-size={size}");
        let output = chromium(profile.path(), &[&screenshot, &window], &page);
        assert!(output.status.success(), "{output:?}");
        assert!(std::fs::metadata(&file).unwrap().len() > 10_000);
        eprintln!("status page screenshot: {}", file.display());
    }

    // The zoo stopped on purpose: late, then silent; sending again makes it ok.
    for state in ["late", "silent"] {
        wait_for_state(&server, "zoo", state).await;
        let rows = dom();
        for stream in ["contacts", "orders", "ticketchecks"] {
            assert_eq!(rows[&("zoo".to_string(), stream.to_string())].state, state);
        }
    }
    push_zoo(&workspace, &server);
    let rows = dom();
    for stream in ["contacts", "orders", "ticketchecks"] {
        assert_eq!(rows[&("zoo".to_string(), stream.to_string())].state, "ok");
    }

    // datx status gives the running serve's figures, refusals included.
    let output = succeeded(workspace.run(&["status", "--from", &page, "--format", "json"]));
    let zoo_orders = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|s| s["institution"] == "zoo" && s["stream"] == "orders")
        .unwrap();
    assert_eq!(zoo_orders["refusals_24h"]["401"], 2);
    assert_eq!(zoo_orders["state"], "ok");
}

/// Sends a push over a raw connection and resets it as soon as the body is out, without
/// waiting for the answer: a client that hangs up while its body is being stored.
fn post_and_hang_up(server: &common::Server, path: &str, body: &[u8], wait: std::time::Duration) {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let address = server.url("").trim_start_matches("http://").to_string();
    let mut socket = std::net::TcpStream::connect(&address).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).unwrap();
    socket.write_all(body).unwrap();
    std::thread::sleep(wait);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: sets SO_LINGER on a socket this function owns, from a value that outlives the
    // call; with a zero linger, closing it sends a reset.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_body_counts_once_whatever_its_client_does() {
    let workspace = Workspace::new(VENUES);
    let server = workspace.serve();
    // Clients that hang up while their body is stored, at different moments.
    for i in 0..60u64 {
        let body = common::ticket_checks(2, 1_000 + i as i64 * 10);
        let wait = std::time::Duration::from_micros(i % 6 * 200);
        post_and_hang_up(&server, "/s360/ticketchecks/museum", &body, wait);
    }
    // The same body sent four times at once, as racing resends: one event each.
    let client = reqwest::Client::new();
    for round in 0..20 {
        let body = common::ticket_checks(3, 50_000 + round * 10);
        let posts = (0..4).map(|_| {
            client
                .post(server.url("/s360/ticketchecks/opera"))
                .header("x-s360-key", "opera-key")
                .body(body.clone())
                .send()
        });
        for answer in futures::future::join_all(posts).await {
            assert_eq!(answer.unwrap().status(), 200);
        }
    }
    // Every stored event is counted once on the page (the last hang-ups may still be
    // storing: the figures must come to agree with the log).
    let mut last = (BTreeMap::new(), BTreeMap::new());
    for _ in 0..100 {
        let mut stored: BTreeMap<String, u64> = BTreeMap::new();
        for event in events(&workspace) {
            *stored
                .entry(event["institution"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        let figures = overview(&server).await;
        let counted: BTreeMap<String, u64> = figures["sources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["stream"] == "ticketchecks" && s["bodies_24h"] != 0)
            .map(|s| {
                let institution = s["institution"].as_str().unwrap().to_string();
                (institution, s["bodies_24h"].as_u64().unwrap())
            })
            .collect();
        if counted == stored {
            assert_eq!(stored.get("opera"), Some(&20));
            return;
        }
        last = (stored, counted);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("stored {:?}, counted {:?}", last.0, last.1);
}
