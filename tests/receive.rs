//! Receiving S-360 pushes: the HTTP contract of DESIGN.md, over real sockets, against the
//! real `datx` binary, with the shared samples.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Backend, Workspace, raw_request, sample, ticket_checks, walk};
use serde_json::Value;
use sha2::{Digest, Sha256};

const SECURED: &str = r#"
max_body_bytes = 2097152
[institutions.myvenue]
timezone = "Europe/Zurich"
auth = "none"
[institutions.othervenue]
auth = "basic"
user = "s360"
password_env = "TEST_OTHERVENUE_PASSWORD"
[institutions.thirdvenue]
auth = "api_key"
header = "x-venue-key"
key_env = "TEST_THIRDVENUE_KEY"
"#;

const SECRETS: [(&str, &str); 2] = [
    ("TEST_OTHERVENUE_PASSWORD", "other-pass"),
    ("TEST_THIRDVENUE_KEY", "third-key"),
];

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(url: &str, body: Vec<u8>) -> (u16, Value) {
    post_with(client().post(url), body).await
}

async fn post_with(request: reqwest::RequestBuilder, body: Vec<u8>) -> (u16, Value) {
    let response = request
        .body(body)
        .send()
        .await
        .expect("the request is answered");
    let status = response.status().as_u16();
    let json = response.json().await.expect("every answer is JSON");
    (status, json)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The event an answer names holds exactly `body`.
fn assert_stored(workspace: &Workspace, answer: &Value, body: &[u8]) {
    let event_id = answer["event_id"].as_str().unwrap();
    let shown = workspace.run(&["events", "show", event_id, "--body"]);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(
        shown.stdout == body,
        "event {event_id} differs from the posted body"
    );
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn each_stream_is_accepted_and_stored_byte_for_byte(backend: Backend) {
    let workspace = Workspace::on(backend, SECURED, &SECRETS);
    let server = workspace.serve();
    for (stream, file, records) in [
        ("contacts", "contacts.json", 2),
        ("orders", "orders.json", 2),
        ("ticketchecks", "ticketchecks.json", 2),
    ] {
        let body = sample(file);
        let (status, answer) = post(
            &server.url(&format!("/s360/{stream}/myvenue")),
            body.clone(),
        )
        .await;
        assert_eq!(status, 200, "{stream}: {answer}");
        assert_eq!(answer["records"], records, "{stream}");
        assert_eq!(answer["duplicate"], false);
        assert_eq!(answer["sha256"], sha256_hex(&body));
        assert_stored(&workspace, &answer, &body);
        let event_id = answer["event_id"].as_str().unwrap();
        let envelope = workspace.run(&["events", "show", event_id]);
        let envelope_text = stdout(&envelope);
        let envelope: Value =
            serde_json::from_str(envelope_text.split("\n\n").next().unwrap()).unwrap();
        assert_eq!(envelope["stream"], stream);
        assert_eq!(envelope["institution"], "myvenue");
        assert_eq!(envelope["records"], records);
        assert_eq!(envelope["body_bytes"], body.len());
    }
    let listed = workspace.run(&["events", "list", "--format", "json"]);
    assert_eq!(stdout(&listed).lines().count(), 3);
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("push accepted")
            && l.contains("stream=\"orders\"")
            && l.contains("institution=\"myvenue\"")
            && l.contains("status=200")
            && l.contains("records=2")
            && l.contains("duration_ms=")),
        "no request line in the log:\n{log}"
    );
}

async fn each_auth_mode_takes_only_its_own_credentials(backend: Backend) {
    let workspace = Workspace::on(backend, SECURED, &SECRETS);
    let server = workspace.serve();
    let body = sample("ticketchecks.json");
    let other = server.url("/s360/ticketchecks/othervenue");
    let third = server.url("/s360/ticketchecks/thirdvenue");

    // Basic: right, wrong password, wrong user, missing; and the challenge on 401.
    let basic = |user: &str, password: &str| client().post(&other).basic_auth(user, Some(password));
    assert_eq!(
        post_with(basic("s360", "other-pass"), body.clone()).await.0,
        200
    );
    assert_eq!(post_with(basic("s360", "wrong"), body.clone()).await.0, 401);
    assert_eq!(
        post_with(basic("admin", "other-pass"), body.clone())
            .await
            .0,
        401
    );
    let missing = client()
        .post(&other)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 401);
    let challenge = missing.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");

    // API key in the operator's header: right, wrong, missing, right key in another header.
    let keyed = |header: &str, key: &str| client().post(&third).header(header, key);
    assert_eq!(
        post_with(keyed("x-venue-key", "third-key"), body.clone())
            .await
            .0,
        200
    );
    assert_eq!(
        post_with(keyed("x-venue-key", "third-keyX"), body.clone())
            .await
            .0,
        401
    );
    assert_eq!(
        post_with(keyed("x-api-key", "third-key"), body.clone())
            .await
            .0,
        401
    );
    assert_eq!(post(&third, body.clone()).await.0, 401);

    // One venue's valid credentials never open another venue.
    let basic_on_third = client().post(&third).basic_auth("s360", Some("other-pass"));
    assert_eq!(post_with(basic_on_third, body.clone()).await.0, 401);
    let cross = client().post(&other).header("x-venue-key", "third-key");
    assert_eq!(post_with(cross, body.clone()).await.0, 401);

    // None: accepted with or without credentials.
    let open = server.url("/s360/ticketchecks/myvenue");
    assert_eq!(post(&open, body.clone()).await.0, 200);
    assert_eq!(
        post_with(
            client().post(&open).basic_auth("x", Some("y")),
            ticket_checks(1, 1)
        )
        .await
        .0,
        200
    );

    // Refused pushes stored nothing: two accepted for the secured venues, two for myvenue.
    let listed = workspace.run(&["events", "list", "--format", "json"]);
    assert_eq!(stdout(&listed).lines().count(), 4);
}

async fn errors_of_the_contract_have_their_codes_and_reasons(backend: Backend) {
    let workspace = Workspace::on(backend, SECURED, &SECRETS);
    let server = workspace.serve();
    let body = sample("contacts.json");

    let (status, answer) = post(&server.url("/s360/contacts/nowhere"), body.clone()).await;
    assert_eq!(
        (status, answer["error"].as_str().unwrap()),
        (404, "unknown institution \"nowhere\"")
    );
    let (status, answer) = post(&server.url("/s360/tickets/myvenue"), body.clone()).await;
    assert_eq!(status, 404);
    assert!(answer["error"].as_str().unwrap().contains("unknown stream"));

    let contacts = server.url("/s360/contacts/myvenue");
    let refused = |body: &[u8]| post(&contacts, body.to_vec());
    let (status, answer) = refused(b"[{\"a\":1},").await;
    assert_eq!(status, 400);
    let reason = answer["error"].as_str().unwrap();
    assert!(
        reason.starts_with("body is not valid JSON: EOF"),
        "{answer}"
    );
    let (status, answer) = refused(b"[{\"a\":1}, \"x\"]").await;
    assert_eq!(status, 400);
    let reason = answer["error"].as_str().unwrap();
    assert!(reason.contains("a string at array position 1"), "{answer}");
    assert_eq!(refused(b"42").await.0, 400);

    // Too large, declared by Content-Length, and streamed in chunks without one.
    let big = vec![b' '; 2 * 1024 * 1024 + 1];
    let (status, answer) = post(&server.url("/s360/contacts/myvenue"), big.clone()).await;
    assert_eq!(status, 413);
    assert_eq!(
        answer["error"],
        "body is larger than the limit of 2097152 bytes"
    );
    let mut chunked = Vec::new();
    for _ in 0..3 {
        chunked.extend_from_slice(format!("{:x}\r\n", 1024 * 1024).as_bytes());
        chunked.extend_from_slice(&big[..1024 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = "POST /s360/contacts/myvenue HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_request(&server.address, head, &chunked).0, 413);

    // Path tricks never reach storage: each is a 404.
    let too_long = "a".repeat(65);
    for path in [
        "/s360/contacts/..".to_string(),
        "/s360/contacts/../myvenue".to_string(),
        "/s360/contacts/my%2Fvenue".to_string(),
        "/s360/contacts/%2e%2e".to_string(),
        "/s360/contacts/".to_string(),
        "/s360/contacts/.hidden".to_string(),
        format!("/s360/contacts/{too_long}"),
        "/s360/../s360/contacts/myvenue".to_string(),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
        let (status, answer) = raw_request(&server.address, &head, b"{}");
        assert_eq!(status, 404, "{path}: {answer}");
    }

    // Other routes and methods.
    let get = client()
        .get(server.url("/s360/contacts/myvenue"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    let unknown = client().get(server.url("/nothing")).send().await.unwrap();
    assert_eq!(unknown.status().as_u16(), 404);

    // Nothing refused was stored.
    let listed = workspace.run(&["events", "list", "--format", "json"]);
    assert_eq!(stdout(&listed), "");
    assert!(!workspace.lake().join("events/contacts/a").exists());
}

async fn a_resent_body_is_one_event_and_single_objects_and_large_bodies_are_accepted(
    backend: Backend,
) {
    let workspace = Workspace::on(backend, SECURED, &SECRETS);
    let server = workspace.serve();
    let url = server.url("/s360/orders/myvenue");
    let body = sample("orders.json");
    let (_, first) = post(&url, body.clone()).await;
    let (status, again) = post(&url, body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["event_id"], first["event_id"]);
    // The same body for another stream is another event.
    let (_, contacts) = post(&server.url("/s360/contacts/myvenue"), body.clone()).await;
    assert_eq!(contacts["duplicate"], false);
    assert_ne!(contacts["event_id"], first["event_id"]);

    // One order, bare object instead of an array.
    let orders: Value = serde_json::from_slice(&body).unwrap();
    let single = serde_json::to_vec(&orders[0]).unwrap();
    let (status, answer) = post(&url, single).await;
    assert_eq!((status, answer["records"].as_u64()), (200, Some(1)));

    let large = ticket_checks(5_000, 10_228_845_000_000);
    assert!(large.len() > 1_000_000);
    let (status, answer) = post(&server.url("/s360/ticketchecks/myvenue"), large.clone()).await;
    assert_eq!((status, answer["records"].as_u64()), (200, Some(5_000)));
    assert_stored(&workspace, &answer, &large);

    let listed = workspace.run(&["events", "list", "--stream", "orders", "--format", "json"]);
    assert_eq!(stdout(&listed).lines().count(), 2);

    let metrics = common::get_text(&server, "/metrics").await;
    for expected in [
        "datx_requests_total{stream=\"orders\",institution=\"myvenue\",code=\"200\"} 3",
        "datx_duplicates_total{stream=\"orders\",institution=\"myvenue\"} 1",
        "datx_records_total{stream=\"ticketchecks\",institution=\"myvenue\"} 5000",
        "datx_append_seconds_count 5",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
}

async fn events_survive_a_restart_and_are_still_recognised(backend: Backend) {
    let workspace = Workspace::on(backend, SECURED, &SECRETS);
    let server = workspace.serve();
    let mut accepted = Vec::new();
    for i in 0..20 {
        let (status, answer) = post(
            &server.url("/s360/ticketchecks/myvenue"),
            ticket_checks(3, i * 10),
        )
        .await;
        assert_eq!(status, 200);
        accepted.push(answer["event_id"].as_str().unwrap().to_string());
    }
    assert!(server.stop().success());

    let listed = stdout(&workspace.run(&["events", "list", "--format", "json"]));
    let mut listed_ids: Vec<String> = listed
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    listed_ids.sort();
    accepted.sort();
    assert_eq!(listed_ids, accepted);
    let verified = workspace.run(&["events", "verify", "--unsigned"]);
    assert!(verified.status.success(), "{}", stdout(&verified));
    let said = stdout(&verified);
    let summary = said.lines().last().unwrap_or_default();
    assert!(summary.starts_with("20 events ("), "{said}");
    assert!(summary.trim_end().ends_with("; 0 mismatched"), "{summary}");

    let server = workspace.serve();
    let (status, answer) = post(
        &server.url("/s360/ticketchecks/myvenue"),
        ticket_checks(3, 0),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["duplicate"], true);
    assert!(accepted.contains(&answer["event_id"].as_str().unwrap().to_string()));
}

#[tokio::test]
async fn a_file_where_a_directory_must_be_gives_503_then_the_retry_is_stored() {
    let workspace = Workspace::with_env(SECURED, &SECRETS);
    let server = workspace.serve();
    let url = server.url("/s360/contacts/myvenue");
    let blocker = workspace.lake().join("events/contacts/myvenue");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"not a directory").unwrap();

    let body = sample("contacts.json");
    let response = client().post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    // The service keeps serving other venues' streams meanwhile.
    assert_eq!(
        post(&server.url("/s360/orders/myvenue"), sample("orders.json"))
            .await
            .0,
        200
    );

    std::fs::remove_file(&blocker).unwrap();
    let (status, answer) = post(&url, body.clone()).await;
    assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(false)));
    assert_stored(&workspace, &answer, &body);
    assert!(
        workspace
            .run(&["events", "verify", "--unsigned"])
            .status
            .success()
    );
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills a filesystem until a write fails, and returns the file that holds the space.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    while file.write_all(&chunk[..512]).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test]
async fn a_full_disk_gives_503_and_service_resumes_when_space_returns() {
    let workspace = Workspace::with_env(SECURED, &SECRETS);
    let Some(tmpfs) = Tmpfs::mount(&workspace.lake(), "4m") else {
        // Mounting needs root. CI runs as root and must not skip this.
        assert!(
            std::env::var("CI").is_err(),
            "CI must be able to mount a tmpfs"
        );
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let server = workspace.serve();
    let url = server.url("/s360/ticketchecks/myvenue");
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let (status, answer) = post(&url, ticket_checks(10, i * 100)).await;
        assert_eq!(status, 200);
        acknowledged.push(answer["event_id"].as_str().unwrap().to_string());
    }

    let filler = fill(&tmpfs.0);
    common::health_becomes(&server, 503).await;
    let mut refused = Vec::new();
    for i in 5..10 {
        let body = ticket_checks(10, i * 100);
        let response = client().post(&url).body(body.clone()).send().await.unwrap();
        assert_eq!(
            response.status().as_u16(),
            503,
            "a write on a full disk was acknowledged"
        );
        assert_eq!(response.headers()["retry-after"], "60");
        refused.push(body);
    }

    std::fs::remove_file(filler).unwrap();
    common::health_becomes(&server, 200).await;
    // S-360 resends what was refused; every resend is stored once.
    for body in refused {
        let (status, answer) = post(&url, body).await;
        assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(false)));
        acknowledged.push(answer["event_id"].as_str().unwrap().to_string());
    }
    drop(server);

    let listed = stdout(&workspace.run(&["events", "list", "--format", "json"]));
    assert_eq!(listed.lines().count(), 10);
    for id in &acknowledged {
        assert!(
            listed.contains(id.as_str()),
            "acknowledged event {id} is missing"
        );
    }
    let verified = workspace.run(&["events", "verify", "--unsigned"]);
    assert!(verified.status.success(), "{}", stdout(&verified));
    // No half-written file was left where a reader looks.
    let leftovers = walk(&workspace.lake())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
        .count();
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn verify_reports_a_body_altered_on_disk() {
    let workspace = Workspace::with_env(SECURED, &SECRETS);
    let server = workspace.serve();
    for stream in ["contacts", "orders"] {
        let file = format!("{stream}.json");
        assert_eq!(
            post(
                &server.url(&format!("/s360/{stream}/myvenue")),
                sample(&file)
            )
            .await
            .0,
            200
        );
    }
    drop(server);
    assert!(
        workspace
            .run(&["events", "verify", "--unsigned"])
            .status
            .success()
    );

    let orders = walk(&workspace.lake().join("events/orders"));
    assert_eq!(orders.len(), 1);
    let stored = std::fs::read(&orders[0]).unwrap();
    let altered = String::from_utf8(stored)
        .unwrap()
        .replacen("40000", "40001", 1);
    std::fs::write(&orders[0], altered).unwrap();

    let verified = workspace.run(&["events", "verify", "--unsigned"]);
    assert_eq!(verified.status.code(), Some(1));
    let report = stdout(&verified);
    assert!(
        report.contains("MISMATCH events/orders/myvenue/"),
        "{report}"
    );
    assert!(report.contains("body SHA-256 is"), "{report}");
    assert!(
        report.contains("2 events (") && report.trim_end().ends_with("; 1 mismatched"),
        "{report}"
    );
    // Filters narrow the check to the untouched stream.
    assert!(
        workspace
            .run(&["events", "verify", "--unsigned", "--stream", "contacts"])
            .status
            .success()
    );
}

#[test]
fn invalid_configuration_stops_the_start_naming_the_key() {
    let workspace = Workspace::new(
        "[institutions.v]\nauth = \"basic\"\nuser = \"u\"\npassword_env = \"TEST_UNSET_SECRET\"\n",
    );
    let output = workspace.run(&["serve"]);
    assert_eq!(output.status.code(), Some(2));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains(
            "`institutions.v.password_env`: environment variable TEST_UNSET_SECRET is not set"
        ),
        "{message}"
    );
    let missing = workspace.run(&["--config", "nope.toml", "events", "list"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read nope.toml"));

    // A signing key that is not one, a key the compactor needs but cannot find, and a
    // lease that would never last.
    let audit = "[audit]\nsigning_key_env = \"TEST_AUDIT_KEY\"\n";
    let garbled = Workspace::with_env(audit, &[("TEST_AUDIT_KEY", "not a key")]);
    let output = garbled.run(&["events", "list"]);
    assert_eq!(output.status.code(), Some(2));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("`audit.signing_key_env`: TEST_AUDIT_KEY is not base64"),
        "{message}"
    );
    let unset = Workspace::new(audit);
    let output = unset.run(&["compact"]);
    assert_eq!(output.status.code(), Some(2));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("TEST_AUDIT_KEY is not set"), "{message}");
    // An auditor verifies with the same file, without the key.
    std::fs::create_dir(unset.lake()).unwrap();
    let verified = unset.run(&["events", "verify", "--unsigned"]);
    assert_eq!(verified.status.code(), Some(0), "{}", stdout(&verified));
    let output = Workspace::new("lease_ttl = \"0s\"\n").run(&["serve"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("`lease_ttl`"));
}

on_both_backends!(
    each_stream_is_accepted_and_stored_byte_for_byte,
    each_auth_mode_takes_only_its_own_credentials,
    errors_of_the_contract_have_their_codes_and_reasons,
    a_resent_body_is_one_event_and_single_objects_and_large_bodies_are_accepted,
    events_survive_a_restart_and_are_still_recognised,
);
