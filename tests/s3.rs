//! Several receivers and compactors on one bucket, and the S3 faults they must survive: a
//! storage server that stops answering, a compactor killed while it holds the lease, and
//! one paused past its lease's expiry. Real `datx` processes against real S3-compatible
//! servers on 127.0.0.1: each test runs once on moto and once on SeaweedFS.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::s3::{S3Kind, S3Server};
use common::{Workspace, read_table, ticket_checks};
use serde_json::Value;

const VENUE: &str = r#"
[institutions.myvenue]
timezone = "Europe/Zurich"
auth = "none"
"#;

/// Every ticket check id in the table, with how many rows carry it.
fn check_counts(workspace: &Workspace) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for row in read_table(&workspace.lake(), "ticket_checks") {
        *counts
            .entry(row["ticket_check_id"].as_i64().unwrap())
            .or_default() += 1;
    }
    counts
}

/// Asserts the table holds each of `ids` exactly once, and nothing else.
fn assert_exactly(workspace: &Workspace, ids: &BTreeSet<i64>) {
    let counts = check_counts(workspace);
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(repeated.is_empty(), "repeated: {repeated:?}");
    let present: BTreeSet<i64> = counts.keys().copied().collect();
    let missing: Vec<_> = ids.difference(&present).take(5).collect();
    let extra: Vec<_> = present.difference(ids).take(5).collect();
    assert!(missing.is_empty(), "missing, e.g. {missing:?}");
    assert!(extra.is_empty(), "never acknowledged, e.g. {extra:?}");
}

/// The commits of the lake, in version order.
fn commits(workspace: &Workspace) -> Vec<Value> {
    let lake = workspace.lake();
    let mut paths = common::walk(&lake.join("_datx/commits"));
    paths.sort();
    paths
        .iter()
        .map(|path| serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
        .collect()
}

/// Asserts no commit carries a lower lease epoch than one before it, and returns the
/// distinct epochs.
fn assert_epochs_never_go_back(workspace: &Workspace) -> BTreeSet<u64> {
    let epochs: Vec<u64> = commits(workspace)
        .iter()
        .map(|c| c["epoch"].as_u64().unwrap())
        .collect();
    assert!(
        epochs.windows(2).all(|pair| pair[0] <= pair[1]),
        "a commit came from an older lease: {epochs:?}"
    );
    epochs.into_iter().collect()
}

/// Posts `body` until it is acknowledged, as S-360 does at each run (bounded: 60 tries);
/// returns the answer.
async fn post_until_stored(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Value {
    for _ in 0..60 {
        if let Ok(response) = client.post(url).body(body.clone()).send().await
            && response.status() == 200
        {
            return response.json().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never acknowledged the body");
}

async fn two_receivers_and_two_compactors_share_one_bucket_exactly(kind: S3Kind) {
    let workspace = Workspace::on_server(
        common::shared_s3_of(kind),
        &format!(
            "compact_every = \"150ms\"\nlease_ttl = \"3s\"\ncompact_chunk_bytes = 30000\n{VENUE}"
        ),
        &[],
    );
    let servers = [workspace.serve(), workspace.serve()];
    let urls: Vec<String> = servers
        .iter()
        .map(|s| s.url("/s360/ticketchecks/myvenue"))
        .collect();
    let client = reqwest::Client::new();
    let mut ids = BTreeSet::new();
    let mut senders = Vec::new();
    for body in 0..80_i64 {
        let first = 1_000_000 + body * 100;
        ids.extend(first..first + 10);
        let payload = ticket_checks(10, first);
        // Every body goes to one receiver; every fourth also to the other at the same
        // time, as a resend racing the first delivery.
        let mut targets = vec![urls[(body % 2) as usize].clone()];
        if body % 4 == 0 {
            targets.push(urls[1 - (body % 2) as usize].clone());
        }
        for url in targets {
            let (client, payload) = (client.clone(), payload.clone());
            senders.push(tokio::spawn(async move {
                post_until_stored(&client, &url, payload).await
            }));
        }
        if body % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut by_sha: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sender in senders {
        let answer = sender.await.unwrap();
        by_sha
            .entry(answer["sha256"].as_str().unwrap().to_string())
            .or_default()
            .insert(answer["event_id"].as_str().unwrap().to_string());
    }
    // A body sent to both receivers was acknowledged by both under one event.
    assert_eq!(by_sha.len(), 80);
    assert!(
        by_sha.values().all(|events| events.len() == 1),
        "{by_sha:?}"
    );
    let listed = workspace.run(&["events", "list", "--format", "json"]);
    let listed: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(listed.len(), 80, "the event log holds a resent body twice");

    // Both compactors keep running until everything is in the tables.
    let deadline = Instant::now() + Duration::from_secs(60);
    while check_counts(&workspace).len() < ids.len() {
        assert!(Instant::now() < deadline, "compaction did not catch up");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let logs: Vec<String> = servers.iter().map(|s| s.log()).collect();
    drop(servers);
    assert_exactly(&workspace, &ids);
    let epochs = assert_epochs_never_go_back(&workspace);
    assert!(
        epochs.len() >= 2,
        "the lease never changed hands: epochs {epochs:?}\n{}\n{}",
        logs[0],
        logs[1]
    );
    for log in &logs {
        assert!(!log.contains("compaction pass failed"), "{log}");
    }
}

async fn a_stopped_s3_server_gets_503s_and_nothing_acknowledged_is_lost(kind: S3Kind) {
    let s3: &'static S3Server = Box::leak(Box::new(common::start_s3_of(kind)));
    let workspace = Workspace::on_server(
        s3,
        &format!("compact_every = \"200ms\"\nlease_ttl = \"5s\"\n{VENUE}"),
        &[],
    );
    let server = workspace.serve();
    let url = server.url("/s360/ticketchecks/myvenue");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    let mut acknowledged = BTreeSet::new();
    let mut refused = 0;
    // Each body is named by its first check id; S-360 sends a refused one again as it was.
    let send_body = async |first: i64, acknowledged: &mut BTreeSet<i64>, refused: &mut usize| {
        let response = client
            .post(&url)
            .body(ticket_checks(10, first))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => {
                let answer: Value = response.json().await.unwrap();
                // Acknowledged means stored: the event is there with this body.
                let shown =
                    workspace.run(&["events", "show", answer["event_id"].as_str().unwrap()]);
                assert!(shown.status.success(), "acknowledged but not stored");
                acknowledged.extend(first..first + 10);
            }
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                *refused += 1;
            }
            other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
        }
    };
    let mut next = 5_000_000_i64;
    let mut send = async |acknowledged: &mut BTreeSet<i64>, refused: &mut usize| {
        let first = next;
        next += 100;
        send_body(first, acknowledged, refused).await;
        first
    };
    for _ in 0..20 {
        send(&mut acknowledged, &mut refused).await;
    }
    assert_eq!(refused, 0);

    s3.pause();
    let outage = Instant::now();
    // Bodies sent while the server is stopped: each waits out the retry budget, then 503.
    let (during, health, page) = tokio::join!(
        async {
            let mut acknowledged = BTreeSet::new();
            let mut refused = 0;
            let mut sent = Vec::new();
            for _ in 0..2 {
                sent.push(send(&mut acknowledged, &mut refused).await);
            }
            (acknowledged, refused, sent)
        },
        async {
            common::health_becomes(&server, 503).await;
            503
        },
        // The status page answers from memory: a stopped store does not hold it up (its
        // follower's read of the commit log waits on the bucket meanwhile).
        async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let answer = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap()
                .get(server.url("/"))
                .header("accept", "application/json")
                .send()
                .await
                .expect("the status page answers while the bucket is stopped");
            let status = answer.status().as_u16();
            let figures: Value = answer.json().await.unwrap();
            (status, figures["sources"].as_array().map(Vec::len))
        }
    );
    assert_eq!(health, 503, "/healthz did not see the stopped bucket");
    assert_eq!(page, (200, Some(3)), "the status page during the outage");
    let (acknowledged_during, refused_during, sent_during) = during;
    assert_eq!(
        (acknowledged_during, refused_during),
        (BTreeSet::new(), 2),
        "a body was acknowledged during the outage"
    );
    eprintln!("outage lasted {:?}", outage.elapsed());
    s3.resume();

    // Service resumes: the refused bodies come again, as S-360 sends them at its next run
    // (a PUT cut short by the deadline may have landed once the server came back: the
    // resend is then recognised), new bodies are stored, and compaction catches up with
    // everything acknowledged, before and after.
    for first in sent_during {
        send_body(first, &mut acknowledged, &mut refused).await;
    }
    for _ in 0..20 {
        send(&mut acknowledged, &mut refused).await;
    }
    assert_eq!(refused, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while check_counts(&workspace).len() < acknowledged.len() {
        assert!(
            Instant::now() < deadline,
            "compaction did not resume:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    common::health_becomes(&server, 200).await;
    drop(server);
    assert_exactly(&workspace, &acknowledged);
}

/// How far a compactor gets before the test intervenes.
#[derive(Debug, Clone, Copy)]
enum AtWork {
    /// Its first pending file is written.
    Pending,
    /// Its first commit has landed (its files may not have their final names yet).
    Committed,
}

/// Starts `datx compact` (its pass made of many small commits) and returns it once it is
/// `at` work, and so holds the lease.
fn compactor_at_work(workspace: &Workspace, at: AtWork) -> Child {
    let commits_before = workspace.s3_keys("_datx/commits/").len();
    let mut compactor = workspace
        .command(&["compact"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            compactor.try_wait().unwrap().is_none(),
            "the pass ended too soon"
        );
        assert!(Instant::now() < deadline, "the pass never got to work");
        let reached = match at {
            AtWork::Pending => !workspace.s3_keys("_datx/pending/").is_empty(),
            AtWork::Committed => workspace.s3_keys("_datx/commits/").len() > commits_before,
        };
        if reached {
            return compactor;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A lake with 150 bodies of ticket checks not yet compacted; returns their ids.
async fn lake_to_compact(workspace: &Workspace) -> BTreeSet<i64> {
    let server = workspace.serve();
    let mut ids = BTreeSet::new();
    for body in 0..150_i64 {
        let first = 7_000_000 + body * 100;
        common::post(&server, "ticketchecks", "myvenue", ticket_checks(20, first)).await;
        ids.extend(first..first + 20);
    }
    ids
}

const SMALL_PASSES: &str = "lease_ttl = \"3s\"\ncompact_chunk_bytes = 20000\n";

async fn a_compactor_killed_holding_the_lease_is_taken_over_after_its_expiry(kind: S3Kind) {
    let workspace = Workspace::on_server(
        common::shared_s3_of(kind),
        &format!("{SMALL_PASSES}{VENUE}"),
        &[],
    );
    let ids = lake_to_compact(&workspace).await;
    let mut killed = compactor_at_work(&workspace, AtWork::Committed);
    killed.kill().unwrap(); // SIGKILL: no release
    killed.wait().unwrap();

    // The lease is still the dead compactor's: the next one is told until when.
    let refused = workspace.run(&["compact"]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("holds the lease"), "{said}");

    std::thread::sleep(Duration::from_secs(3));
    let printed = common::compact(&workspace, "compact");
    eprintln!("after the expiry: {printed}");
    assert_exactly(&workspace, &ids);
    let epochs = assert_epochs_never_go_back(&workspace);
    assert!(epochs.len() >= 2, "no takeover: {epochs:?}");
    assert!(workspace.s3_keys("_datx/pending/").is_empty());
}

async fn a_compactor_paused_past_its_lease_cannot_commit(kind: S3Kind) {
    let workspace = Workspace::on_server(
        common::shared_s3_of(kind),
        &format!("{SMALL_PASSES}{VENUE}"),
        &[],
    );
    let ids = lake_to_compact(&workspace).await;
    let paused = compactor_at_work(&workspace, AtWork::Pending);
    let pid = paused.id() as libc::pid_t;
    // SAFETY: signals to a child this test started and has not reaped.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(3500));

    // A successor takes the lease and compacts everything while the first is stopped.
    common::compact(&workspace, "compact");
    let versions_before = commits(&workspace).len();
    assert_exactly(&workspace, &ids);

    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let output = paused.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the paused compactor finished its pass: {said}"
    );
    eprintln!("the paused compactor said: {said}");
    // It committed nothing after its successor, and the tables are still exact.
    assert_eq!(commits(&workspace).len(), versions_before, "{said}");
    assert_epochs_never_go_back(&workspace);
    assert_exactly(&workspace, &ids);
    let again = common::compact(&workspace, "compact");
    assert!(again.starts_with("0 events consumed"), "{again}");
    assert_exactly(&workspace, &ids);
}

/// A proxy to the S3 server that sees every request, and loses the answer to the first PUT
/// whose path holds each of `lose`: the PUT lands, and the client sees its connection
/// closed without an answer, as when a response is lost on the network.
struct Proxy {
    address: String,
    /// The request lines it lost the answers to.
    lost: Arc<Mutex<Vec<String>>>,
    /// Every request line it relayed.
    seen: Arc<Mutex<Vec<String>>>,
}

fn proxy(target: &str, lose: &[&str]) -> Proxy {
    proxy_with(
        target,
        Faults {
            lose: lose.iter().map(|s| s.to_string()).collect(),
            ..Faults::default()
        },
    )
}

/// What a proxy does wrong, besides relaying.
#[derive(Default)]
struct Faults {
    /// A PUT whose line contains one of these lands, and its answer is lost (once each).
    lose: Vec<String>,
    /// A PUT whose line contains one of these is not relayed and is answered 409
    /// ConditionalRequestConflict, as AWS answers a conditional write that races another
    /// one in flight (once each).
    conflict: Vec<String>,
    /// If-None-Match and If-Match are left out: the store behind overwrites, as some
    /// S3-compatible servers do.
    drop_conditions: bool,
}

fn proxy_with(target: &str, faults: Faults) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (lost, seen) = (Arc::default(), Arc::default());
    let relay_to = Relay {
        target: target.to_string(),
        to_lose: Arc::new(Mutex::new(faults.lose)),
        to_conflict: Arc::new(Mutex::new(faults.conflict)),
        drop_conditions: faults.drop_conditions,
        lost: Arc::clone(&lost),
        seen: Arc::clone(&seen),
    };
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let relay_to = relay_to.clone();
            std::thread::spawn(move || relay_to.relay(client));
        }
    });
    Proxy {
        address,
        lost,
        seen,
    }
}

#[derive(Clone)]
struct Relay {
    target: String,
    to_lose: Arc<Mutex<Vec<String>>>,
    to_conflict: Arc<Mutex<Vec<String>>>,
    drop_conditions: bool,
    lost: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    /// Relays one request and its answer back, unless the answer is to be lost; every
    /// connection carries one request.
    fn relay(&self, mut client: TcpStream) -> Option<()> {
        let (head, body) = common::http::read_request(&mut client)?;
        let request_line = head.lines().next()?.to_string();
        self.seen.lock().unwrap().push(request_line.clone());
        if take_match(&self.to_conflict, &request_line) {
            let conflict = "<Error><Code>ConditionalRequestConflict</Code></Error>";
            let answer = format!(
                "HTTP/1.1 409 Conflict\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{conflict}",
                conflict.len()
            );
            return client.write_all(answer.as_bytes()).ok();
        }
        let conditions = ["if-none-match:", "if-match:"];
        let forwarded: String = head
            .lines()
            .filter(|line| !line.to_ascii_lowercase().starts_with("connection:"))
            .filter(|line| {
                let lower = line.to_ascii_lowercase();
                !(self.drop_conditions && conditions.iter().any(|c| lower.starts_with(c)))
            })
            .filter(|line| !line.is_empty())
            .map(|line| format!("{line}\r\n"))
            .collect();
        let mut upstream = TcpStream::connect(&self.target).ok()?;
        upstream
            .write_all(format!("{forwarded}Connection: close\r\n\r\n").as_bytes())
            .ok()?;
        upstream.write_all(&body).ok()?;
        let mut answer = Vec::new();
        upstream.read_to_end(&mut answer).ok()?;
        if take_match(&self.to_lose, &request_line) {
            self.lost.lock().unwrap().push(request_line);
            return None; // the connection closes without an answer
        }
        client.write_all(&answer).ok()
    }
}

/// Whether `request_line` is a PUT that one of `parts` names; that part is used up.
fn take_match(parts: &Mutex<Vec<String>>, request_line: &str) -> bool {
    let mut parts = parts.lock().unwrap();
    let found = parts
        .iter()
        .position(|part| request_line.starts_with("PUT ") && request_line.contains(part.as_str()));
    found.map(|at| parts.remove(at)).is_some()
}

async fn a_create_answered_409_is_tried_again_not_taken_for_stored(kind: S3Kind) {
    let s3 = common::shared_s3_of(kind);
    let proxy = proxy_with(
        &s3.address,
        Faults {
            conflict: vec!["/lake/events/".into(), "/lake/_datx/seen/".into()],
            ..Faults::default()
        },
    );
    let workspace = Workspace::on_server(
        common::shared_s3_of(kind),
        VENUE,
        &[("AWS_ENDPOINT", &format!("http://{}", proxy.address))],
    );
    let server = workspace.serve();
    // The marker's and the event's first PUTs meet a conflict: neither is there yet, so
    // both are tried again, and the 200 comes once the event is stored.
    let answer = common::post(
        &server,
        "ticketchecks",
        "myvenue",
        ticket_checks(5, 9_500_000),
    )
    .await;
    assert_eq!(answer["duplicate"], false, "{answer}");
    let shown = workspace.run(&["events", "show", answer["event_id"].as_str().unwrap()]);
    assert!(shown.status.success(), "acknowledged but not stored");
    let conflicts = proxy
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|line| {
            line.starts_with("PUT ")
                && (line.contains("/lake/events/") || line.contains("/lake/_datx/seen/"))
        })
        .count();
    assert_eq!(conflicts, 4, "each PUT once refused, once stored");
    drop(server);
    let printed = common::compact(&workspace, "compact");
    assert!(printed.starts_with("1 events consumed"), "{printed}");
    assert_exactly(&workspace, &(9_500_000..9_500_005).collect());
}

async fn a_store_that_overwrites_create_only_writes_is_refused_at_start(kind: S3Kind) {
    let s3 = common::shared_s3_of(kind);
    let proxy = proxy_with(
        &s3.address,
        Faults {
            drop_conditions: true,
            ..Faults::default()
        },
    );
    let workspace = Workspace::on_server(
        common::shared_s3_of(kind),
        VENUE,
        &[("AWS_ENDPOINT", &format!("http://{}", proxy.address))],
    );
    for command in [&["serve"][..], &["compact"], &["rebuild"]] {
        let mut child = workspace
            .command(command)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{command:?} started on a store that overwrites");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{command:?}");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains("does not keep create-only writes: a second create-only write (If-None-Match: *) of the same key succeeded"),
            "{command:?}: {said}"
        );
    }
    // Nothing but the probes' removal was left behind.
    assert!(
        workspace.s3_keys("").is_empty(),
        "{:?}",
        workspace.s3_keys("")
    );
}

async fn a_put_whose_answer_was_lost_is_neither_a_duplicate_nor_a_conflict(kind: S3Kind) {
    let s3 = common::shared_s3_of(kind);
    // Commit 1 is the first compactor's `lease` commit; commit 2 holds the rows.
    let proxy = proxy(
        &s3.address,
        &[
            "/lake/events/",
            "/lake/_datx/commits/00000000000000000002.json",
        ],
    );
    let lost = &proxy.lost;
    let workspace = Workspace::on_server(
        common::shared_s3_of(kind),
        VENUE,
        &[("AWS_ENDPOINT", &format!("http://{}", proxy.address))],
    );
    let server = workspace.serve();
    let body = ticket_checks(20, 9_000_000);
    // The event's PUT landed and its answer was lost: the client's retry is refused as
    // existing, and the body is still a first-time body.
    let first = common::post(&server, "ticketchecks", "myvenue", body.clone()).await;
    assert_eq!(first["duplicate"], false, "{first}");
    let again = common::post(&server, "ticketchecks", "myvenue", body).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["event_id"], first["event_id"]);
    drop(server);

    // The commit's PUT landed and its answer was lost: the pass still counts it as its own.
    let printed = common::compact(&workspace, "compact");
    assert!(printed.starts_with("1 events consumed"), "{printed}");
    assert_eq!(lost.lock().unwrap().len(), 2, "{:?}", lost.lock().unwrap());
    assert_exactly(&workspace, &(9_000_000..9_000_020).collect());
    let again = common::compact(&workspace, "compact");
    assert!(again.starts_with("0 events consumed"), "{again}");
}

async fn a_pass_lists_no_sealed_day_and_seals_with_digests(kind: S3Kind) {
    let s3 = common::shared_s3_of(kind);
    let proxy = proxy(&s3.address, &[]);
    // The receivers' clocks are moved back on purpose.
    let workspace = Workspace::on_server(
        common::shared_s3_of(kind),
        &format!("clock_tolerance = \"off\"\n{VENUE}"),
        &[("AWS_ENDPOINT", &format!("http://{}", proxy.address))],
    );
    let mut ids = BTreeSet::new();
    let mut sealed_days = Vec::new();
    for (n, days_ago) in [10, 9, 8].into_iter().enumerate() {
        let shift = format!("-{days_ago}days");
        let server = workspace.serve_with_env(&[("DATX_TEST_CLOCK_SHIFT", &shift)]);
        let first = 8_000_000 + n as i64 * 100;
        common::post(&server, "ticketchecks", "myvenue", ticket_checks(10, first)).await;
        ids.extend(first..first + 10);
        let day = chrono::Utc::now() - chrono::Duration::days(days_ago);
        sealed_days.push(day.format("%Y-%m-%d").to_string());
    }
    common::compact(&workspace, "compact");
    assert_eq!(workspace.s3_keys("_datx/digests/").len(), 3);
    let verified = workspace.run(&["events", "verify", "--unsigned"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );

    // Today's bodies: the next pass reads them without listing the sealed days.
    let server = workspace.serve();
    common::post(
        &server,
        "ticketchecks",
        "myvenue",
        ticket_checks(10, 8_100_000),
    )
    .await;
    ids.extend(8_100_000..8_100_010);
    drop(server);
    proxy.seen.lock().unwrap().clear();
    let printed = common::compact(&workspace, "compact");
    assert!(printed.starts_with("1 events consumed"), "{printed}");
    let seen = proxy.seen.lock().unwrap().clone();
    let lists: Vec<&String> = seen
        .iter()
        .filter(|line| line.contains("list-type=2"))
        .collect();
    assert!(!lists.is_empty());
    for line in &seen {
        for day in &sealed_days {
            assert!(
                !line.contains(day.as_str()) || line.contains("start-after"),
                "a sealed day was read: {line}"
            );
        }
    }
    assert_exactly(&workspace, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_while_the_store_does_not_answer() {
    // Nothing listens there: serve starts, refuses pushes with 503, and shows its page.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let workspace = Workspace::on_server(
        common::shared_s3_of(S3Kind::Moto),
        VENUE,
        &[("AWS_ENDPOINT", &endpoint)],
    );
    let server = workspace.serve();
    let refused = reqwest::Client::new()
        .post(server.url("/s360/ticketchecks/myvenue"))
        .body(ticket_checks(1, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let page = reqwest::Client::new()
        .get(server.url("/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        server.log().contains("checked again every minute"),
        "{}",
        server.log()
    );
}

on_both_servers!(
    two_receivers_and_two_compactors_share_one_bucket_exactly,
    a_stopped_s3_server_gets_503s_and_nothing_acknowledged_is_lost,
    a_compactor_killed_holding_the_lease_is_taken_over_after_its_expiry,
    a_compactor_paused_past_its_lease_cannot_commit,
    a_create_answered_409_is_tried_again_not_taken_for_stored,
    a_store_that_overwrites_create_only_writes_is_refused_at_start,
    a_put_whose_answer_was_lost_is_neither_a_duplicate_nor_a_conflict,
    a_pass_lists_no_sealed_day_and_seals_with_digests,
);
