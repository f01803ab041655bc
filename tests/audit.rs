//! Audit and replay: the digests of sealed days and what `datx events verify` finds when
//! the log is altered, the filters and formats of `events list`, and `datx replay` into a
//! second datx and into targets that count, fail or never recover. Real binaries, real
//! sockets; past days come from the test-only clock shift (`DATX_TEST_CLOCK_SHIFT`).

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{VENUES, Workspace, compact, orders, post, sample, ticket_checks, walk};
use serde_json::Value;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The two venues, for a lake received "on past days": the receivers' clocks are moved
/// back on purpose, so they are not held to the lake's.
fn venues_on_past_days() -> String {
    format!("clock_tolerance = \"off\"\n{VENUES}")
}

/// Receives bodies as if on each of `days_ago` (a server per day, its clock moved back).
async fn receive_on_past_days(workspace: &Workspace, days_ago: &[u32]) {
    for (n, days) in days_ago.iter().enumerate() {
        let shift = format!("-{days}days");
        let server = workspace.serve_with_env(&[("DATX_TEST_CLOCK_SHIFT", &shift)]);
        let base = 1_000_000 * (n as i64 + 1);
        for i in 0..3 {
            post(
                &server,
                "ticketchecks",
                "myvenue",
                ticket_checks(5, base + i * 10),
            )
            .await;
        }
        post(&server, "orders", "othervenue", orders(2, base)).await;
        // The same contacts, as other bytes: S-360 would send them again when they change.
        let mut contacts = sample("contacts.json");
        contacts.extend(vec![b' '; n + 1]);
        post(&server, "contacts", "myvenue", contacts).await;
    }
}

/// A lake with a signing key that received bodies on three past days, not compacted yet.
/// Returns the workspace and the public key.
async fn signed_lake() -> (Workspace, String) {
    let key = {
        let bare = Workspace::new("");
        stdout(&bare.run(&["audit", "new-key"])).trim().to_string()
    };
    let workspace = Workspace::with_env(
        &format!(
            "{}[audit]\nsigning_key_env = \"TEST_AUDIT_KEY\"\n",
            venues_on_past_days()
        ),
        &[("TEST_AUDIT_KEY", &key)],
    );
    receive_on_past_days(&workspace, &[12, 11, 10]).await;
    let public_key = stdout(&workspace.run(&["audit", "public-key"]))
        .trim()
        .to_string();
    assert_eq!(public_key.len(), 64, "{public_key}");
    (workspace, public_key)
}

/// A signed lake whose three days are compacted, so sealed and digested.
async fn sealed_lake() -> (Workspace, String) {
    let (workspace, public_key) = signed_lake().await;
    compact(&workspace, "compact");
    (workspace, public_key)
}

/// `events verify` with the public key: its exit code and what it printed.
fn verify(workspace: &Workspace, public_key: &str) -> (Option<i32>, String) {
    let output = workspace.run(&["events", "verify", "--public-key", public_key]);
    (output.status.code(), stdout(&output))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = walk(dir);
    files.sort();
    files
}

/// Runs `damage` on the lake, checks that verify fails naming `expected`, then puts the
/// lake back as it was.
fn assert_detected(
    workspace: &Workspace,
    public_key: &str,
    damage: impl FnOnce(&Path),
    expected: &str,
) {
    let lake = workspace.lake();
    let backup = workspace.path().join("lake-backup");
    copy_dir(&lake, &backup);
    damage(&lake);
    let (code, said) = verify(workspace, public_key);
    assert_eq!(code, Some(1), "not detected ({expected}):\n{said}");
    assert!(said.contains(expected), "expected {expected:?} in:\n{said}");
    std::fs::remove_dir_all(&lake).unwrap();
    std::fs::rename(&backup, &lake).unwrap();
    assert_eq!(verify(workspace, public_key).0, Some(0));
}

fn copy_dir(from: &Path, to: &Path) {
    for file in walk(from) {
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
}

/// Rewrites an event file: its envelope through `envelope`, its body through `body`.
fn rewrite_event(
    path: &Path,
    envelope: impl FnOnce(&mut Value),
    body: impl FnOnce(Vec<u8>) -> Vec<u8>,
) {
    let stored = std::fs::read(path).unwrap();
    let newline = stored.iter().position(|&b| b == b'\n').unwrap();
    let mut head: Value = serde_json::from_slice(&stored[..newline]).unwrap();
    let new_body = body(stored[newline + 1..].to_vec());
    envelope(&mut head);
    let mut out = serde_json::to_vec(&head).unwrap();
    out.push(b'\n');
    out.extend(new_body);
    std::fs::write(path, out).unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_every_alteration_of_the_sealed_log() {
    let (workspace, public_key) = sealed_lake().await;
    let (code, said) = verify(&workspace, &public_key);
    assert_eq!(code, Some(0), "{said}");
    // Three sealed days of three streams and institutions: nine digests, all signed.
    assert!(
        said.contains("9 sealed days checked against their digests and chain; 9 signatures verified; 15 receipts verified, required since"),
        "{said}"
    );
    assert!(
        said.contains("; 3 chain heads checked (no --heads file); 0 mismatched"),
        "{said}"
    );

    let lake = workspace.lake();
    let digests = |lake: &Path, source: &str| files_under(&lake.join("_datx/digests").join(source));
    let events_of = |lake: &Path, source: &str| files_under(&lake.join("events").join(source));
    assert_eq!(digests(&lake, "ticketchecks/myvenue").len(), 3);

    // A body altered on disk.
    assert_detected(
        &workspace,
        &public_key,
        |lake| {
            let event = &events_of(lake, "ticketchecks/myvenue")[0];
            rewrite_event(
                event,
                |_| {},
                |body| {
                    String::from_utf8(body)
                        .unwrap()
                        .replacen("OK", "KO", 1)
                        .into_bytes()
                },
            );
        },
        "body SHA-256 is",
    );
    // A body altered and its envelope re-hashed to match: only the digest remembers.
    assert_detected(
        &workspace,
        &public_key,
        |lake| {
            let event = &events_of(lake, "ticketchecks/myvenue")[1];
            let mut new_body = Vec::new();
            rewrite_event(
                event,
                |_| {},
                |body| {
                    new_body = String::from_utf8(body)
                        .unwrap()
                        .replacen("OK", "KO", 1)
                        .into_bytes();
                    new_body.clone()
                },
            );
            let (sha, size) = (sha256_hex(&new_body), new_body.len());
            rewrite_event(
                event,
                |head| {
                    head["sha256"] = sha.into();
                    head["body_bytes"] = size.into();
                },
                |body| body,
            );
        },
        "was altered: the digest recorded SHA-256",
    );
    // An event deleted.
    assert_detected(
        &workspace,
        &public_key,
        |lake| {
            std::fs::remove_file(&events_of(lake, "orders/othervenue")[0]).unwrap();
        },
        "in the digest is missing from the log",
    );
    // An event inserted into a sealed day, consistent in itself (its envelope names it).
    assert_detected(
        &workspace,
        &public_key,
        |lake| {
            let original = &events_of(lake, "ticketchecks/myvenue")[2];
            let name = original.file_name().unwrap().to_str().unwrap();
            let id = name.trim_end_matches(".event");
            // Same millisecond (same day), another random part.
            let forged_id = format!("{}{}", &id[..24], "000000000000");
            let forged = original.with_file_name(format!("{forged_id}.event"));
            std::fs::copy(original, &forged).unwrap();
            rewrite_event(
                &forged,
                |head| head["event_id"] = forged_id.clone().into(),
                |body| body,
            );
        },
        "is not in the digest: it was added after the day was sealed",
    );
    // An envelope whose received-at was moved (its body and SHA-256 untouched).
    assert_detected(
        &workspace,
        &public_key,
        |lake| {
            let event = &events_of(lake, "orders/othervenue")[1];
            rewrite_event(
                event,
                |head| head["received_at"] = "2020-01-01T00:00:00Z".into(),
                |body| body,
            );
        },
        "envelope says received at 2020-01-01",
    );
    // The last sealed day cut off: its events and its digest removed.
    assert_detected(
        &workspace,
        &public_key,
        |lake| {
            let last = digests(lake, "ticketchecks/myvenue").pop().unwrap();
            let day = last.file_stem().unwrap().to_str().unwrap().to_string();
            std::fs::remove_file(&last).unwrap();
            std::fs::remove_dir_all(lake.join("events/ticketchecks/myvenue").join(day)).unwrap();
        },
        "the end of the chain was removed",
    );
    // A digest removed in the middle of the chain, and the last one.
    assert_detected(
        &workspace,
        &public_key,
        |lake| {
            std::fs::remove_file(&digests(lake, "contacts/myvenue")[1]).unwrap();
        },
        "it follows is missing",
    );
    assert_detected(
        &workspace,
        &public_key,
        |lake| {
            std::fs::remove_file(&digests(lake, "contacts/myvenue")[2]).unwrap();
        },
        "the day is sealed but its digest is missing",
    );
    // A digest rewritten to agree with an altered event (its Merkle root recomputed): the
    // next digest's link and the signature give it away.
    assert_detected(
        &workspace,
        &public_key,
        |lake| {
            let path = &digests(lake, "orders/othervenue")[0];
            let mut stored: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            stored["digest"]["events"][0]["records"] = 99.into();
            std::fs::write(path, serde_json::to_vec(&stored).unwrap()).unwrap();
        },
        "was altered or replaced",
    );
    assert_detected(
        &workspace,
        &public_key,
        |lake| {
            let path = &digests(lake, "orders/othervenue")[2];
            let mut stored: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            let value = stored["signature"]["value"].as_str().unwrap().to_string();
            let flipped = if value.starts_with('0') { "1" } else { "0" };
            stored["signature"]["value"] = format!("{flipped}{}", &value[1..]).into();
            std::fs::write(path, serde_json::to_vec(&stored).unwrap()).unwrap();
        },
        "signature fails",
    );

    // Another key is not the auditor's.
    let other = stdout(&workspace.run(&["audit", "new-key"]));
    let other_key = {
        let other_ws =
            Workspace::with_env("[audit]\nsigning_key_env = \"K\"\n", &[("K", other.trim())]);
        stdout(&other_ws.run(&["audit", "public-key"]))
            .trim()
            .to_string()
    };
    let (code, said) = verify(&workspace, &other_key);
    assert_eq!(code, Some(1));
    assert!(
        said.contains("its signature does not match the public key"),
        "{said}"
    );
    // After a key rotation, the auditor holds both keys: either signature is accepted.
    let both = format!("{other_key},{public_key}");
    let (code, said) = verify(&workspace, &both);
    assert_eq!(code, Some(0), "{said}");
}

/// An event as a receiver would have stored it `when`, but written straight into the
/// lake: consistent in itself (ids, hash, size, records), with whatever `receipt` it is
/// given.
fn forge_event(
    lake: &Path,
    when: chrono::DateTime<chrono::Utc>,
    (stream, institution): (&str, &str),
    body: &[u8],
    receipt: Option<Value>,
) -> PathBuf {
    let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        when.timestamp() as u64,
        when.timestamp_subsec_nanos(),
    ));
    let millis = u64::from_str_radix(&id.simple().to_string()[..12], 16).unwrap();
    let at = chrono::DateTime::from_timestamp_millis(millis as i64).unwrap();
    let mut envelope = serde_json::json!({
        "event_id": id.to_string(),
        "stream": stream,
        "institution": institution,
        "received_at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "sha256": sha256_hex(body),
        "records": serde_json::from_slice::<Value>(body).unwrap().as_array().unwrap().len(),
        "body_bytes": body.len(),
    });
    if let Some(receipt) = receipt {
        envelope["receipt"] = receipt;
    }
    let path = lake
        .join("events")
        .join(stream)
        .join(institution)
        .join(at.format("%Y-%m-%d").to_string())
        .join(format!("{id}.event"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut stored = serde_json::to_vec(&envelope).unwrap();
    stored.push(b'\n');
    stored.extend_from_slice(body);
    std::fs::write(&path, stored).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_event_has_no_receipt_that_verifies_even_once_its_day_is_sealed() {
    let (workspace, public_key) = sealed_lake().await;
    let lake = workspace.lake();
    // Five days ago is a day not sealed yet (the lake is sealed through ten days ago):
    // one event written there without a receipt, and one wearing the receipt of a real
    // event.
    let five_days_ago = chrono::Utc::now() - chrono::Duration::days(5);
    let bare = forge_event(
        &lake,
        five_days_ago,
        ("orders", "othervenue"),
        &orders(2, 7_000_000),
        None,
    );
    let real = &files_under(&lake.join("events/orders/othervenue"))[0];
    let stored = std::fs::read(real).unwrap();
    let newline = stored.iter().position(|&b| b == b'\n').unwrap();
    let real_envelope: Value = serde_json::from_slice(&stored[..newline]).unwrap();
    let borrowed = forge_event(
        &lake,
        five_days_ago,
        ("orders", "othervenue"),
        &orders(2, 7_100_000),
        Some(real_envelope["receipt"].clone()),
    );
    // The next pass takes them in, seals their day and signs its digest over both.
    compact(&workspace, "compact");
    let day = (chrono::Utc::now() - chrono::Duration::days(5))
        .format("%Y-%m-%d")
        .to_string();
    let digest = lake.join(format!("_datx/digests/orders/othervenue/{day}.json"));
    let digest_text = std::fs::read_to_string(&digest).unwrap();
    assert!(digest_text.contains("signature"), "{digest_text}");
    let (code, said) = verify(&workspace, &public_key);
    assert_eq!(code, Some(1), "{said}");
    let named = |path: &Path| path.strip_prefix(&lake).unwrap().display().to_string();
    assert!(
        said.contains(&format!(
            "MISMATCH {}: it has no receipt, though every event received since",
            named(&bare)
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "MISMATCH {}: its receipt fails: its signature does not match",
            named(&borrowed)
        )),
        "{said}"
    );
    // Without a key verify cannot check a receipt, but sees that one is missing.
    let unsigned = workspace.run(&["events", "verify", "--unsigned"]);
    let said = stdout(&unsigned);
    assert_eq!(unsigned.status.code(), Some(1), "{said}");
    assert!(said.contains("it has no receipt"), "{said}");
    assert!(!said.contains("its receipt fails"), "{said}");
    assert!(said.contains("UNSIGNED: "), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_without_a_key_refuses_unless_told_and_then_says_what_it_could_not_check() {
    let (workspace, public_key) = sealed_lake().await;
    let refused = workspace.run(&["events", "verify"]);
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("no --public-key") && said.contains("--unsigned"),
        "{said}"
    );
    let unsigned = workspace.run(&["events", "verify", "--unsigned"]);
    let said = stdout(&unsigned);
    assert_eq!(unsigned.status.code(), Some(0), "{said}");
    assert!(
        said.contains("signatures not checked (--unsigned)"),
        "{said}"
    );
    assert!(said.contains("present, not verified"), "{said}");
    assert!(
        said.contains("UNSIGNED: this shows the lake agrees with itself"),
        "{said}"
    );
    // A key's period: the days it signed.
    let days_ago = |n: i64| {
        (chrono::Utc::now() - chrono::Duration::days(n))
            .format("%Y-%m-%d")
            .to_string()
    };
    let (code, said) = verify(&workspace, &format!("{public_key}@{}..", days_ago(12)));
    assert_eq!(code, Some(0), "{said}");
    // A key whose period ended eleven days ago: the receipts it made then still count,
    // the later ones do not, nor do the digests it signed today, whatever day they digest.
    let (code, said) = verify(&workspace, &format!("{public_key}@..{}", days_ago(11)));
    assert_eq!(code, Some(1), "{said}");
    let receipt_fails = |day: &str| {
        said.lines().any(|line| {
            line.starts_with(&format!("MISMATCH events/orders/othervenue/{day}/"))
                && line.contains("its receipt fails")
        })
    };
    assert!(receipt_fails(&days_ago(10)), "{said}");
    assert!(
        !receipt_fails(&days_ago(11)) && !receipt_fails(&days_ago(12)),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "digests/orders/othervenue/{}.json: the digest's signature fails: it is signed by {public_key}@..{}, whose period does not cover {}, the day it was signed",
            days_ago(12),
            days_ago(11),
            days_ago(0)
        )),
        "{said}"
    );
    let bad = workspace.run(&[
        "events",
        "verify",
        "--public-key",
        &format!("{public_key}@2026-13-01.."),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a date"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_names_in_a_sealed_day_are_named_by_verify_and_stop_nothing() {
    let (workspace, public_key) = sealed_lake().await;
    let lake = workspace.lake();
    let event = files_under(&lake.join("events/ticketchecks/myvenue"))[0].clone();
    let id = event.file_stem().unwrap().to_str().unwrap().to_string();
    let upper = event.with_file_name(format!("{}.event", id.to_uppercase()));
    let foreign = event.with_file_name("foo.event");
    std::fs::copy(&event, &upper).unwrap();
    std::fs::copy(&event, &foreign).unwrap();
    let (code, said) = verify(&workspace, &public_key);
    assert_eq!(code, Some(1), "{said}");
    for stray in [&upper, &foreign] {
        let name = stray.strip_prefix(&lake).unwrap().display().to_string();
        assert!(
            said.contains(&format!("MISMATCH {name}: not an event of the layout")),
            "{said}"
        );
    }
    for command in [&["events", "list"][..], &["compact"][..]] {
        let output = workspace.run(command);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let listed = stdout(&workspace.run(&["events", "list", "--format", "json"]));
    assert_eq!(listed.lines().count(), 15, "{listed}");
}

/// Sets, in every commit and checkpoint, how far `source` is sealed and digested.
fn rewrite_commit_log(lake: &Path, source: &str, day: &str) {
    for dir in ["_datx/commits", "_datx/checkpoints"] {
        if !lake.join(dir).exists() {
            continue;
        }
        for path in files_under(&lake.join(dir)) {
            let mut commit: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for field in ["sealed", "digested"] {
                if let Some(map) = commit.get_mut(field).and_then(Value::as_object_mut)
                    && map.contains_key(source)
                {
                    map.insert(source.to_string(), day.into());
                }
            }
            std::fs::write(&path, serde_json::to_vec(&commit).unwrap()).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_cut_at_its_end_is_caught_by_its_signed_head_and_by_the_auditors_record() {
    let (workspace, public_key) = signed_lake().await;
    let lake = workspace.lake();
    let heads_file = workspace.path().join("auditor-heads.json");
    let verify_heads = |extra: &[&str]| {
        let mut args = vec![
            "events".to_string(),
            "verify".into(),
            "--public-key".into(),
            public_key.clone(),
        ];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = workspace.run(&args);
        (output.status.code(), stdout(&output))
    };
    let day = |n: i64| {
        (chrono::Utc::now() - chrono::Duration::days(n))
            .format("%Y-%m-%d")
            .to_string()
    };
    // A first pass, nine days ago, seals the first day; the auditor records the heads.
    let first = workspace
        .command(&["compact"])
        .env("DATX_TEST_CLOCK_SHIFT", "-9days")
        .output()
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let head_path = lake.join("_datx/heads/ticketchecks/myvenue.json");
    let old_head = std::fs::read(&head_path).unwrap();
    let heads_arg = heads_file.to_str().unwrap();
    let (code, said) = verify_heads(&["--heads", heads_arg]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("HEAD ticketchecks/myvenue {}", day(12))),
        "{said}"
    );
    // Today's pass seals the other two; the record follows the chains.
    compact(&workspace, "compact");
    let (code, said) = verify_heads(&["--heads", heads_arg]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("3 of 3 recorded heads still in their chains"),
        "{said}"
    );
    let recorded = std::fs::read_to_string(&heads_file).unwrap();
    assert!(recorded.contains(&day(10)), "{recorded}");

    // The last day cut off, events and digest, and the commit log edited to match.
    let backup = workspace.path().join("lake-backup");
    copy_dir(&lake, &backup);
    std::fs::remove_file(lake.join(format!(
        "_datx/digests/ticketchecks/myvenue/{}.json",
        day(10)
    )))
    .unwrap();
    std::fs::remove_dir_all(lake.join(format!("events/ticketchecks/myvenue/{}", day(10)))).unwrap();
    rewrite_commit_log(&lake, "ticketchecks/myvenue", &day(11));
    let (code, said) = verify_heads(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!("_datx/heads/ticketchecks/myvenue.json: the head names the digest of {}, which is missing: the chain was cut at its end", day(10))),
        "{said}"
    );
    // With the head removed too, the chain has none.
    std::fs::remove_file(&head_path).unwrap();
    let (code, said) = verify_heads(&[]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("the chain has no head"), "{said}");
    // With an older head put back (validly signed, from the first pass), only the
    // auditor's record still knows where the chain ended.
    std::fs::write(&head_path, &old_head).unwrap();
    let (code, said) = verify_heads(&[]);
    assert_eq!(
        code,
        Some(0),
        "an older head passes without a record of heads: {said}"
    );
    let (code, said) = verify_heads(&["--heads", heads_arg]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!("the head recorded by an earlier run, the digest of {}, is no longer in the chain: the chain was cut", day(10))),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(&heads_file).unwrap(),
        recorded,
        "a failed run moves no recorded head"
    );
    std::fs::remove_dir_all(&lake).unwrap();
    std::fs::rename(&backup, &lake).unwrap();
    assert_eq!(verify_heads(&["--heads", heads_arg]).0, Some(0));
}

/// The checker in `tests/audit_check.py`, written from `docs/audit-format.md` alone, on
/// `lake`: its exit code and what it printed.
fn independent_check(
    lake: &Path,
    public_key: &str,
    expected: Option<&Path>,
) -> (Option<i32>, String) {
    let python = common::python_with(&[("cryptography", "cryptography==50.0.2")]);
    let mut command = std::process::Command::new(python);
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/audit_check.py"))
        .arg(lake)
        .args(["--public-key", public_key]);
    if let Some(expected) = expected {
        command.arg("--expected").arg(expected);
    }
    let output = command.output().expect("python runs");
    let said = format!(
        "{}{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_written_from_the_specification_agrees_with_verify_on_the_test_vectors() {
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/audit_vectors");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(vectors.join("expected.json")).unwrap()).unwrap();
    let public_key = expected["public_key"].as_str().unwrap().to_string();
    let workspace = Workspace::new("");
    let lake = workspace.lake();
    copy_dir(&vectors.join("lake"), &lake);
    let (code, said) = verify(&workspace, &public_key);
    assert_eq!(code, Some(0), "{said}");
    let (code, checked) =
        independent_check(&lake, &public_key, Some(&vectors.join("expected.json")));
    assert_eq!(code, Some(0), "{checked}");
    // Both see every digest: days sealed before receipts existed, and after.
    let roots = expected["roots"].as_object().unwrap();
    assert!(roots.len() >= 4, "{roots:?}");
    for (path, root) in roots {
        assert!(
            checked.contains(&format!("ROOT {path} {}", root.as_str().unwrap())),
            "{checked}"
        );
    }
    assert!(
        said.contains(&format!("{} sealed days checked", roots.len())),
        "{said}"
    );
    for line in said.lines().filter(|line| line.starts_with("HEAD ")) {
        let (source, date) = {
            let mut parts = line.split_whitespace().skip(1);
            (parts.next().unwrap(), parts.next().unwrap())
        };
        assert!(
            roots.contains_key(&format!("_datx/digests/{source}/{date}.json")),
            "{line}"
        );
    }
    // Both catch an event forged into an old day that had none (before receipts began),
    // and a whole stream removed with its digests, its head left.
    let lake_before = workspace.path().join("lake-before");
    copy_dir(&lake, &lake_before);
    // 2026-11-20: between the vectors' sealed days of 2026-11-15 and 2026-11-28.
    let between = "2026-11-20T10:00:00Z".parse().unwrap();
    let old_day = forge_event(
        &lake,
        between,
        ("orders", "othervenue"),
        &orders(1, 8_000_000),
        None,
    );
    let day_dir = old_day
        .parent()
        .unwrap()
        .strip_prefix(&lake)
        .unwrap()
        .display()
        .to_string();
    let (code, said) = verify(&workspace, &public_key);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "MISMATCH {day_dir}: the day has events but no digest"
        )),
        "{said}"
    );
    let (code, checked) = independent_check(&lake, &public_key, None);
    assert_eq!(code, Some(1), "{checked}");
    assert!(
        checked.contains(&format!(
            "PROBLEM {day_dir}: events in a day without a digest"
        )),
        "{checked}"
    );
    std::fs::remove_dir_all(old_day.parent().unwrap()).unwrap();
    std::fs::remove_dir_all(lake.join("events/contacts")).unwrap();
    std::fs::remove_dir_all(lake.join("_datx/digests/contacts")).unwrap();
    let (code, said) = verify(&workspace, &public_key);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("MISMATCH _datx/heads/contacts/myvenue.json: the head names the digest of"),
        "{said}"
    );
    let (code, checked) = independent_check(&lake, &public_key, None);
    assert_eq!(code, Some(1), "{checked}");
    assert!(
        checked.contains("PROBLEM _datx/heads/contacts/myvenue.json: names the digest of"),
        "{checked}"
    );
    std::fs::remove_dir_all(&lake).unwrap();
    std::fs::rename(&lake_before, &lake).unwrap();
    // And both catch one byte changed in a body with a receipt, and in an old day's.
    for (name, receipted) in [
        ("with a receipt", true),
        ("of a day before receipts", false),
    ] {
        let event = files_under(&lake.join("events"))
            .into_iter()
            .find(|path| {
                std::fs::read_to_string(path)
                    .unwrap()
                    .contains("\"receipt\"")
                    == receipted
            })
            .unwrap();
        let original = std::fs::read(&event).unwrap();
        let mut altered = original.clone();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'1' { b'2' } else { b'1' };
        std::fs::write(&event, &altered).unwrap();
        assert_eq!(
            verify(&workspace, &public_key).0,
            Some(1),
            "datx, an event {name}"
        );
        let (code, checked) = independent_check(&lake, &public_key, None);
        assert_eq!(code, Some(1), "the checker, an event {name}: {checked}");
        std::fs::write(&event, &original).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_agrees_on_a_lake_written_now_and_loads_the_key_datx_makes() {
    let (workspace, public_key) = sealed_lake().await;
    let lake = workspace.lake();
    let (code, checked) = independent_check(&lake, &public_key, None);
    assert_eq!(code, Some(0), "{checked}");
    assert!(
        checked.contains(
            "checked 15 events, 9 digests, 13 signatures, 15 receipts, 3 heads; 0 problems"
        ),
        "{checked}"
    );
    forge_event(
        &lake,
        chrono::Utc::now(),
        ("contacts", "myvenue"),
        &sample("contacts.json"),
        None,
    );
    let (code, checked) = independent_check(&lake, &public_key, None);
    assert_eq!(code, Some(1), "{checked}");
    assert!(
        checked.contains("no receipt, though receipts are required since"),
        "{checked}"
    );
    // A key `audit new-key` prints, loaded by Python's `cryptography`, is the key datx signs with.
    let key = stdout(&workspace.run(&["audit", "new-key"]))
        .trim()
        .to_string();
    let signer = Workspace::with_env("[audit]\nsigning_key_env = \"K\"\n", &[("K", &key)]);
    let datx_public = stdout(&signer.run(&["audit", "public-key"]))
        .trim()
        .to_string();
    let python = common::python_with(&[("cryptography", "cryptography==50.0.2")]);
    let loaded = std::process::Command::new(python)
        .args([
            "-c",
            "import base64, sys\n\
from cryptography.hazmat.primitives import serialization as s\n\
key = s.load_der_private_key(base64.b64decode(sys.argv[1]), None)\n\
print(key.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw).hex())",
            &key,
        ])
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert_eq!(stdout(&loaded).trim(), datx_public);
}

/// The event ids `events list` prints with `args`, as JSON lines.
fn listed(workspace: &Workspace, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["events", "list", "--format", "json"];
    all.extend(args);
    stdout(&workspace.run(&all))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_time_stream_and_institution_in_three_formats() {
    let workspace = Workspace::new(&venues_on_past_days());
    receive_on_past_days(&workspace, &[5, 3]).await;
    let all = listed(&workspace, &[]);
    assert_eq!(all.len(), 10);
    let day = |ago: i64| {
        (chrono::Utc::now() - chrono::Duration::days(ago))
            .format("%Y-%m-%d")
            .to_string()
    };
    let older = listed(&workspace, &["--until", &day(4)]);
    let newer = listed(&workspace, &["--since", &day(4)]);
    assert_eq!((older.len(), newer.len()), (5, 5));
    assert!(
        older
            .iter()
            .all(|e| e["received_at"].as_str().unwrap() < day(4).as_str())
    );
    let orders = listed(&workspace, &["--stream", "orders", "--since", &day(4)]);
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0]["institution"], "othervenue");
    assert_eq!(
        listed(&workspace, &["--institution", "othervenue"]).len(),
        2
    );

    let csv = stdout(&workspace.run(&["events", "list", "--format", "csv", "--until", &day(4)]));
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("event_id,received_at,stream,institution,records,body_bytes,sha256")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 5);
    for (row, json) in rows.iter().zip(&older) {
        assert_eq!(row[0], json["event_id"]);
        assert_eq!(row[6], json["sha256"]);
    }
    let table = stdout(&workspace.run(&["events", "list", "--institution", "othervenue"]));
    assert!(table.starts_with("EVENT ID"), "{table}");
    assert_eq!(table.lines().count(), 3);
}

/// Every table of a lake as sorted JSON rows, without what a new receipt changes: the
/// event id, the received-at instant, and the partition date of contacts, which is the day
/// they were received (a contact has no date of its own).
fn tables_of(workspace: &Workspace) -> BTreeMap<String, Vec<String>> {
    let mut tables = BTreeMap::new();
    let views = ["contacts_current", "orders_current"];
    for table in common::TABLES.into_iter().chain(views) {
        let receipt = match table {
            "contacts" | "contacts_current" => "_event_id, _received_at, date",
            _ => "_event_id, _received_at",
        };
        let statement = format!("SELECT * EXCLUDE ({receipt}) FROM {table}");
        let rows = common::sql_rows(workspace, &statement);
        let mut rows: Vec<String> = rows
            .into_iter()
            .map(|r| Value::Object(r).to_string())
            .collect();
        rows.sort();
        tables.insert(table.to_string(), rows);
    }
    tables
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_into_a_second_datx_gives_the_same_tables() {
    let source = Workspace::new(&venues_on_past_days());
    receive_on_past_days(&source, &[4, 1]).await;
    {
        let server = source.serve();
        common::post_samples(&server, "othervenue").await;
        post(
            &server,
            "orders",
            "myvenue",
            br#"[{"not": "an order"}]"#.to_vec(),
        )
        .await;
        // An order, then its correction: the target must receive them in this order for
        // the correction to be the current version there too.
        let order = orders(3, 7_000_000);
        let corrected = String::from_utf8(order.clone())
            .unwrap()
            .replace("40000", "40001");
        post(&server, "orders", "othervenue", order).await;
        post(&server, "orders", "othervenue", corrected.into_bytes()).await;
    }
    compact(&source, "compact");

    // The target asks for an API key at one venue: the replay carries it.
    let target = Workspace::with_env(
        r#"
[institutions.myvenue]
timezone = "Europe/Zurich"
auth = "api_key"
header = "x-venue-key"
key_env = "TEST_KEY"
[institutions.othervenue]
timezone = "America/New_York"
auth = "none"
"#,
        &[("TEST_KEY", "secret-key")],
    );
    let server = target.serve();
    let output = replay(
        &source,
        &[
            "--to",
            &server.url("/s360"),
            "--api-key",
            "x-venue-key:secret-key",
            "--concurrency",
            "3",
        ],
    );
    assert!(
        stdout(&output).starts_with("16 bodies"),
        "{}",
        stdout(&output)
    );
    drop(server);
    compact(&target, "compact");
    let (expected, replayed) = (tables_of(&source), tables_of(&target));
    assert!(expected["ticket_checks"].len() >= 30);
    assert!(!expected["rejects"].is_empty());
    for (table, rows) in &expected {
        assert!(
            rows == &replayed[table],
            "{table} differs after the replay:\n{:?}\nagainst\n{:?}",
            rows.iter()
                .filter(|r| !replayed[table].contains(r))
                .take(2)
                .collect::<Vec<_>>(),
            replayed[table]
                .iter()
                .filter(|r| !rows.contains(r))
                .take(2)
                .collect::<Vec<_>>()
        );
    }
}

/// `datx replay` with `args`, which must succeed.
fn replay(workspace: &Workspace, args: &[&str]) -> Output {
    let command = [&["replay"], args].concat();
    common::succeeded(workspace.command(&command).output().unwrap())
}

/// A target that counts the bodies it gets (by SHA-256), answering `status_of(n)` to the
/// n-th request.
struct Target {
    url: String,
    received: Arc<Mutex<BTreeMap<String, usize>>>,
    /// The bodies accepted, in the order they arrived.
    arrived: Arc<Mutex<Vec<String>>>,
    requests: Arc<AtomicUsize>,
}

fn counting_target(status_of: impl Fn(usize) -> u16 + Send + Sync + 'static) -> Target {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/s360", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(BTreeMap::new()));
    let arrived = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(AtomicUsize::new(0));
    let status_of = Arc::new(status_of);
    let (counts, order, count) = (received.clone(), arrived.clone(), requests.clone());
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let (counts, order, count, status_of) = (
                counts.clone(),
                order.clone(),
                count.clone(),
                status_of.clone(),
            );
            std::thread::spawn(move || {
                use std::io::Write;
                let Some((_, body)) = common::http::read_request(&mut client) else {
                    return;
                };
                let status = status_of(count.fetch_add(1, Ordering::SeqCst));
                if status == 200 {
                    let sha = sha256_hex(&body);
                    *counts.lock().unwrap().entry(sha.clone()).or_insert(0) += 1;
                    order.lock().unwrap().push(sha);
                }
                let _ = write!(
                    client,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            });
        }
    });
    Target {
        url,
        received,
        arrived,
        requests,
    }
}

/// The ids of every stored event, in the order received (UUIDv7s sort by time).
fn in_received_order_ids(workspace: &Workspace) -> Vec<String> {
    let mut ids: Vec<String> = listed(workspace, &[])
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// The SHA-256 of every stored body, from `events list`.
fn stored_bodies(workspace: &Workspace) -> Vec<String> {
    listed(workspace, &[])
        .iter()
        .map(|e| e["sha256"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_half_way_delivers_every_body_when_run_again() {
    let workspace = Workspace::new(VENUES);
    {
        let server = workspace.serve();
        for i in 0..60 {
            post(
                &server,
                "ticketchecks",
                "myvenue",
                ticket_checks(2, 5_000_000 + i * 10),
            )
            .await;
        }
    }
    let target = counting_target(|_| 200);
    let args = [
        "replay",
        "--to",
        &target.url,
        "--concurrency",
        "4",
        "--rate",
        "40",
    ];
    let mut first = workspace
        .command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while target.requests.load(Ordering::SeqCst) < 25 {
        assert!(Instant::now() < deadline, "the replay did not get going");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let before_restart = target.received.lock().unwrap().values().sum::<usize>();
    assert!(
        before_restart < 60,
        "the kill came too late: {before_restart}"
    );

    let again = workspace.command(&args).output().unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let received = target.received.lock().unwrap().clone();
    let stored = stored_bodies(&workspace);
    assert_eq!(stored.len(), 60);
    for sha in &stored {
        assert!(
            received.get(sha).is_some_and(|&n| n >= 1),
            "body {sha} never arrived"
        );
    }
    let twice = received.values().filter(|&&n| n > 1).count();
    assert!(received.values().all(|&n| n <= 2), "{received:?}");
    assert!(
        twice <= 4,
        "{twice} bodies sent twice, more than the 4 in flight"
    );
    // Run again once complete: nothing more is sent.
    let requests = target.requests.load(Ordering::SeqCst);
    let third = workspace.command(&args).output().unwrap();
    assert!(stdout(&third).starts_with("0 bodies"), "{}", stdout(&third));
    assert_eq!(target.requests.load(Ordering::SeqCst), requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_gets_everything_once_it_recovers_and_one_that_never_does_stops_the_replay()
 {
    let workspace = Workspace::new(VENUES);
    {
        let server = workspace.serve();
        // Two streams and institutions, interleaved.
        for i in 0..5 {
            post(
                &server,
                "ticketchecks",
                "myvenue",
                ticket_checks(2, 6_000_000 + i * 10),
            )
            .await;
            post(
                &server,
                "orders",
                "othervenue",
                orders(1, 6_100_000 + i * 10),
            )
            .await;
        }
    }
    // 500 to the first four requests, then 200.
    let recovering = counting_target(|n| if n < 4 { 500 } else { 200 });
    replay(
        &workspace,
        &[
            "--to",
            &recovering.url,
            "--concurrency",
            "1",
            "--tries",
            "6",
        ],
    );
    let received = recovering.received.lock().unwrap().clone();
    let stored = stored_bodies(&workspace);
    // One at a time, the target got them in the order they were received.
    let by_id: BTreeMap<String, String> = listed(&workspace, &[])
        .iter()
        .map(|e| {
            (
                e["event_id"].as_str().unwrap().into(),
                e["sha256"].as_str().unwrap().into(),
            )
        })
        .collect();
    let in_received_order: Vec<String> = in_received_order_ids(&workspace)
        .iter()
        .map(|id| by_id[id].clone())
        .collect();
    assert_eq!(*recovering.arrived.lock().unwrap(), in_received_order);
    assert!(
        stored.iter().all(|sha| received.get(sha) == Some(&1)),
        "{received:?}"
    );

    let broken = counting_target(|_| 500);
    let output = workspace
        .command(&[
            "replay",
            "--to",
            &broken.url,
            "--tries",
            "2",
            "--concurrency",
            "1",
            "--state",
            "broken.cursor",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let said = String::from_utf8_lossy(&output.stderr);
    // The first received, where a replay starts.
    let first = in_received_order_ids(&workspace)[0].clone();
    assert!(said.contains(&format!("event {first}")), "{said}");
    assert!(
        said.contains("refused 2 times") && said.contains("HTTP 500"),
        "{said}"
    );
    // Its cursor is its own: another replay cannot take it up by mistake.
    let output = workspace
        .command(&[
            "replay",
            "--to",
            &recovering.url,
            "--state",
            "broken.cursor",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("is the cursor of another replay"), "{said}");
}
