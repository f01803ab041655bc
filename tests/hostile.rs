//! Hostile load: what a stalled client, a flood of connections, an absurd body or a
//! malicious query can cost, and the safe defaults. Each case runs against the real binary
//! over real sockets, and checks that `serve` goes on receiving meanwhile.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Server, Workspace, compact, post, sample, ticket_checks, walk};
use serde_json::{Value, json};

const VENUE: &str = r#"
[institutions.myvenue]
timezone = "Europe/Zurich"
auth = "none"
"#;

/// Short limits, so that the test sees them act.
const QUICK_LIMITS: &str = "header_timeout = \"1s\"\nbody_idle_timeout = \"2s\"\n";

/// Opens a connection and sends `head` (and nothing more).
fn stall(server: &Server, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(&server.address).expect("connect to datx");
    stream.write_all(head.as_bytes()).expect("send the start");
    stream
}

/// Whether the server closed `stream` (or answered and closed) within `wait`: a stalled
/// connection that is still open after it was not cut off.
fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn events_stored(workspace: &Workspace) -> usize {
    let events = workspace.lake().join("events");
    if events.exists() {
        walk(&events).len()
    } else {
        0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_cut_off_and_others_are_answered_meanwhile() {
    let workspace = Workspace::new(&format!("{QUICK_LIMITS}{VENUE}"));
    let server = workspace.serve();
    let path = "/s360/ticketchecks/myvenue";
    let mut stalled = Vec::new();
    for _ in 0..20 {
        // Headers never finished.
        stalled.push(stall(
            &server,
            &format!("POST {path} HTTP/1.1\r\nHost: x\r\n"),
        ));
        // Headers sent, then half a body.
        stalled.push(stall(
            &server,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n[{{\"ticket_check_id\": 1"
            ),
        ));
        // An oversized body (413) whose drain stalls.
        stalled.push(stall(
            &server,
            &format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n\r\n[{{"),
        ));
    }
    // A normal push is answered while they hang.
    let answer = post(&server, "ticketchecks", "myvenue", ticket_checks(3, 1)).await;
    assert_eq!(answer["records"], 3);
    let still_open = stalled
        .iter_mut()
        .map(|stream| closed_by_server(stream, Duration::from_secs(20)))
        .filter(|closed| !closed)
        .count();
    assert_eq!(
        still_open, 0,
        "{still_open} of 60 stalled connections are still open"
    );
    // Nothing of a stalled body was stored.
    assert_eq!(events_stored(&workspace), 1);
    post(&server, "ticketchecks", "myvenue", ticket_checks(3, 10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limit_clients_wait_and_are_then_served() {
    let workspace = Workspace::new(&format!("{QUICK_LIMITS}max_connections = 4\n{VENUE}"));
    let server = workspace.serve();
    let mut stalled: Vec<TcpStream> = (0..4)
        .map(|_| stall(&server, "POST /s360/contacts/myvenue HTTP/1.1\r\n"))
        .collect();
    // The fifth connection waits for a stalled one to be cut off, then gets its answer.
    let answer = post(&server, "contacts", "myvenue", sample("contacts.json")).await;
    assert_eq!(answer["duplicate"], false);
    for stream in &mut stalled {
        assert!(closed_by_server(stream, Duration::from_secs(20)));
    }
}

#[test]
fn an_institution_without_auth_is_refused_naming_the_key() {
    let workspace = Workspace::new("[institutions.myvenue]\ntimezone = \"UTC\"\n");
    let output = workspace.run(&["compact"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`institutions.myvenue.auth`") && stderr.contains("auth = \"none\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn lake_files_and_directories_are_private_to_the_service() {
    let workspace = Workspace::new(VENUE);
    let server = workspace.serve();
    post(&server, "contacts", "myvenue", sample("contacts.json")).await;
    drop(server);
    compact(&workspace, "compact");
    let mut seen = 0;
    let mut check = |path: &std::path::Path| {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let wanted = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, wanted, "{} is {mode:o}", path.display());
        seen += 1;
    };
    fn dirs(root: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(root).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                found.push(path.clone());
                dirs(&path, found);
            }
        }
    }
    let mut all = Vec::new();
    dirs(&workspace.lake(), &mut all);
    all.extend(walk(&workspace.lake()));
    for path in &all {
        check(path);
    }
    check(&workspace.lake());
    // Events, markers, commits, the lease and Parquet files are all among them.
    assert!(seen > 10, "{seen}");
}

#[test]
fn read_only_commands_on_a_missing_lake_fail_and_create_nothing() {
    let workspace = Workspace::new(&format!("lake = \"no-such-lake\"\n{VENUE}"));
    for args in [
        &["sql", "SELECT count(*) FROM contacts"][..],
        &["events", "list"][..],
        &["events", "verify", "--unsigned"][..],
    ] {
        let output = workspace.run(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("no-such-lake"), "{args:?}: {stderr}");
        assert!(!workspace.path().join("no-such-lake").exists(), "{args:?}");
    }
}

#[tokio::test]
async fn metrics_and_the_status_page_take_a_token_when_one_is_configured() {
    let workspace = Workspace::new(&format!("[metrics]\ntoken = \"metrics-secret\"\n{VENUE}"));
    let server = workspace.serve();
    post(&server, "contacts", "myvenue", sample("contacts.json")).await;
    let client = reqwest::Client::new();
    for (path, shows) in [("/metrics", "datx_requests_total"), ("/", "myvenue")] {
        let get = |token: Option<&str>| {
            let mut request = client.get(server.url(path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send()
        };
        for token in [None, Some("wrong")] {
            let refused = get(token).await.unwrap();
            assert_eq!(refused.status(), 401, "{path}");
            // A browser asks for the token as a password.
            assert_eq!(
                refused.headers()["www-authenticate"],
                "Basic realm=\"datx status\", charset=\"UTF-8\""
            );
            let body: Value = refused.json().await.unwrap();
            assert_eq!(
                body,
                json!({"error": "the [metrics] token is required, as a bearer token or a Basic password"})
            );
        }
        let allowed = get(Some("metrics-secret")).await.unwrap();
        assert_eq!(allowed.status(), 200, "{path}");
        assert!(allowed.text().await.unwrap().contains(shows), "{path}");
        // As a browser sends it: Basic credentials whose password is the token.
        for (password, status) in [("metrics-secret", 200), ("wrong", 401)] {
            let basic = client
                .get(server.url(path))
                .basic_auth("operator", Some(password))
                .send()
                .await
                .unwrap();
            assert_eq!(basic.status(), status, "{path} with {password}");
        }
    }
}

const SQL_TOKEN: &str = "hostile-sql-token";

/// `POST /sql` with the token: the status, the `Retry-After` header and the body.
async fn http_sql(server: &Server, statement: &str) -> (u16, Option<String>, String) {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
        .post(server.url("/sql"))
        .bearer_auth(SQL_TOKEN)
        .body(statement.to_string())
        .send()
        .await
        .expect("datx answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, response.text().await.unwrap())
}

/// Queries whose answer is a few bytes, but that ask a function for 100 GB to a petabyte.
const AMPLIFIERS: &[&str] = &[
    "SELECT length(repeat(arrow_cast('x', 'LargeUtf8'), 100000000000))",
    "SELECT length(repeat('x', 100000000000))",
    "SELECT length(repeat(contact_number, 100000000000)) FROM contacts",
    "SELECT length(lpad('x', 100000000000))",
    "SELECT length(rpad(arrow_cast('x', 'LargeUtf8'), 100000000000, 'yz'))",
    "SELECT length(replace(repeat('a', 1000000), 'a', repeat('b', 1000000)))",
    "SELECT length(regexp_replace(repeat('a', 100000), '', repeat('b', 1000000), 'g'))",
    "SELECT cardinality(array_repeat(1, 100000000000))",
    "SELECT cardinality(range(0, 100000000000000))",
    "SELECT cardinality(generate_series(1, 100000000000000, 1))",
    "SELECT cardinality(range(TIMESTAMP '1700-01-01', TIMESTAMP '2200-01-01', INTERVAL '1 microsecond'))",
    "SELECT cardinality(array_resize([1], 100000000000, 0))",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_that_would_build_huge_values_is_refused_and_serve_keeps_receiving() {
    let workspace = Workspace::new(&format!("[sql]\ntoken = \"{SQL_TOKEN}\"\n{VENUE}"));
    let server = workspace.serve();
    post(&server, "contacts", "myvenue", sample("contacts.json")).await;
    compact(&workspace, "compact");
    for statement in AMPLIFIERS {
        let (status, _, body) = http_sql(&server, statement).await;
        assert_eq!(status, 422, "{statement}: {body}");
        assert!(
            body.contains("more than the query may hold"),
            "{statement}: {body}"
        );
        let output = workspace.run(&["sql", statement]);
        assert_eq!(output.status.code(), Some(1), "{statement}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("more than the query may hold"),
            "{statement}: {stderr}"
        );
    }
    // The same functions within reason still answer.
    let (status, _, body) = http_sql(
        &server,
        "SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS p, cardinality(range(0, 10)) AS n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!([{"r": "ababab", "p": "007", "n": 10}])
    );
    // And receiving never stopped.
    let answer = post(&server, "ticketchecks", "myvenue", ticket_checks(2, 1)).await;
    assert_eq!(answer["records"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_past_the_concurrency_limit_wait_then_get_503() {
    let workspace = Workspace::new(&format!(
        "[sql]\ntoken = \"{SQL_TOKEN}\"\ntimeout = \"4s\"\nmax_concurrent = 1\n{VENUE}"
    ));
    let server = workspace.serve();
    let slow = "SELECT count(*) FROM generate_series(1, 1000000000000)";
    let running = {
        let url = server.url("/sql");
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(SQL_TOKEN)
                .body(slow)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // Until the slow query holds the only slot, a quick one may still get it.
    let mut busy = None;
    for _ in 0..50 {
        let (status, retry_after, body) = http_sql(&server, "SELECT 1 AS one").await;
        if status == 503 {
            busy = Some((retry_after, body));
            break;
        }
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (retry_after, body) = busy.expect("a second query was never refused while one ran");
    assert!(retry_after.is_some(), "503 without Retry-After");
    assert!(body.contains("max_concurrent"), "{body}");
    assert_eq!(running.await.unwrap(), 422);
    let (status, _, body) = http_sql(&server, "SELECT 1 AS one").await;
    assert_eq!(status, 200, "{body}");
    post(&server, "contacts", "myvenue", sample("contacts.json")).await;
}

/// Runs a `datx` command in `workspace` to its end; returns whether it succeeded and the
/// largest resident set it reached, in MiB.
// The child is reaped by wait4, which also reports its own peak memory.
#[allow(clippy::zombie_processes)]
fn run_measured(workspace: &Workspace, args: &[&str]) -> (bool, f64) {
    let child = std::process::Command::new(common::BIN)
        .args(args)
        .current_dir(workspace.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("datx runs");
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 reaps the child started above and writes only the two values given.
    let reaped = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert!(reaped > 0, "wait4 failed");
    let succeeded = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (succeeded, usage.ru_maxrss as f64 / 1024.0)
}

/// Runs `datx compact`, asserting that it succeeds and stays under 1 GiB.
fn compact_within_a_gib(workspace: &Workspace) {
    let (succeeded, peak_mib) = run_measured(workspace, &["compact"]);
    assert!(succeeded);
    assert!(
        peak_mib < 1024.0,
        "datx compact peaked at {peak_mib:.0} MiB"
    );
}

#[tokio::test]
async fn one_body_spread_over_40000_days_compacts_in_bounded_memory() {
    // The partitions' builders used to cost about 60 KiB each before their first row:
    // this body took `datx compact` to 2.4 GB.
    let workspace = Workspace::in_memory(VENUE);
    let server = workspace.serve();
    let first = chrono::NaiveDate::from_ymd_opt(1900, 1, 1).unwrap();
    let checks: Vec<Value> = (0..40_000_i64)
        .map(|i| {
            let day = first + chrono::Duration::days(i);
            json!({"ticket_check_id": i, "access_time": format!("{day} 18:25:10"),
                   "barcode": format!("QX{i:012}"), "result": "OK", "check_flow": "IN"})
        })
        .collect();
    let body = serde_json::to_vec(&checks).unwrap();
    assert!(body.len() < 10 * 1024 * 1024, "the receiver accepts it");
    post(&server, "ticketchecks", "myvenue", body).await;
    drop(server);
    compact_within_a_gib(&workspace);
    let files = walk(&workspace.lake().join("tables/ticket_checks"));
    assert_eq!(files.len(), 40_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_cut_off() {
    let workspace = Workspace::new(&format!("{QUICK_LIMITS}{VENUE}"));
    let server = workspace.serve();
    let mut stream = TcpStream::connect(&server.address).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    // Pipelined requests whose answers (404s) fill the socket's buffers: the server blocks
    // writing them, since this client reads nothing.
    let requests = "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
    let mut closed = false;
    let started = std::time::Instant::now();
    // Bounded by time, not by count: how much the socket buffers take varies by machine.
    while started.elapsed() < Duration::from_secs(30) {
        match stream.write_all(requests.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(
        closed,
        "the server kept a connection whose client reads nothing"
    );
    post(&server, "contacts", "myvenue", sample("contacts.json")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_a_byte_at_a_time_is_abandoned() {
    let workspace = Workspace::new(&format!(
        "header_timeout = \"1s\"\nbody_idle_timeout = \"2s\"\nbody_timeout = \"3s\"\n{VENUE}"
    ));
    let server = workspace.serve();
    let mut stream = stall(
        &server,
        "POST /s360/contacts/myvenue HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
    );
    let mut writer = stream.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..20 {
            if writer.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    assert!(
        closed_by_server(&mut stream, Duration::from_secs(15)),
        "a trickling body held its connection"
    );
    trickle.join().unwrap();
    assert_eq!(events_stored(&workspace), 0);
}

#[tokio::test]
async fn an_order_whose_fields_every_movement_copies_is_rejected_not_exploded() {
    let workspace = Workspace::in_memory(VENUE);
    let server = workspace.serve();
    // 1 MB of contact number, copied into each of 2,000 movement rows: 2 GB of rows.
    let movements: Vec<Value> = (0..2000).map(|i| json!({"movementId": i})).collect();
    let order = json!({"orderDetailsData": {
        "orderId": 1, "creationDateTime": "2023-02-01T10:00:00+00:00",
        "contactNumber": "C".repeat(1_000_000),
        "operationDatas": [{"operationId": 2, "movementDatas": movements}]}});
    post(&server, "orders", "myvenue", order.to_string().into_bytes()).await;
    post(&server, "orders", "myvenue", sample("orders.json")).await;
    drop(server);
    compact_within_a_gib(&workspace);
    let rejects = common::read_table(&workspace.lake(), "rejects");
    assert_eq!(rejects.len(), 1);
    let reason = rejects[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("movements would take more than"),
        "{reason}"
    );
    // The ordinary body beside it landed.
    assert_eq!(common::read_table(&workspace.lake(), "orders").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_on_many_rows_are_refused_before_they_fill_memory() {
    let workspace = Workspace::new(&format!(
        "[sql]\ntoken = \"{SQL_TOKEN}\"\nmemory_limit = \"256MiB\"\n{VENUE}"
    ));
    let server = workspace.serve();
    for statement in [
        // A value of 40 kB on each row of a batch: 330 MB in one batch, which answers
        // streamed batch by batch cannot split.
        "SELECT repeat('x', 40000) AS x FROM range(100000)",
        // A 100 MB value repeated on half of 8,192 rows: 400 GB, if it were built.
        "SELECT length(repeat(repeat(arrow_cast('x', 'LargeUtf8'), 100000000), value % 2)) FROM range(8192)",
    ] {
        let (status, _, body) = http_sql(&server, statement).await;
        assert_eq!(status, 422, "{statement}: {}", &body[..body.len().min(300)]);
    }
    post(&server, "contacts", "myvenue", sample("contacts.json")).await;
}

/// A client that reads its answer slowly, `chunk` bytes at a time with a pause between:
/// over HTTP (`POST /sql`) or over the PostgreSQL protocol (a simple query), on a socket
/// with a small receive buffer. Prints what it got: the HTTP status or `ok`/`error`, the
/// bytes or rows, and whether the answer came to its end.
const SLOW_READER: &str = r#"
import socket, struct, sys, time
mode, host, port, token, sql = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
chunk, pause = int(sys.argv[6]), float(sys.argv[7])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.connect((host, port))
def slow_read():
    data = s.recv(chunk)
    time.sleep(pause)
    return data
buf = bytearray()
def fill(n):
    global buf
    while len(buf) < n:
        data = slow_read()
        if not data:
            raise SystemExit('closed')
        buf += data
def line():
    global buf
    while b'\r\n' not in buf:
        fill(len(buf) + 1)
    end = buf.index(b'\r\n')
    text = bytes(buf[:end])
    del buf[:end + 2]
    return text
if mode == 'http':
    body = sql.encode()
    s.sendall(b'POST /sql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ' + token.encode()
              + b'\r\nContent-Length: ' + str(len(body)).encode() + b'\r\nConnection: close\r\n\r\n' + body)
    status = line().split(b' ')[1].decode()
    headers = []
    while True:
        header = line()
        if not header:
            break
        headers.append(header.lower())
    total, complete, end = 0, False, b''
    if b'transfer-encoding: chunked' in headers:
        while True:
            size = int(line(), 16)
            if size == 0:
                complete = end == b']\n'
                break
            fill(size + 2)
            total += size
            end = (end + bytes(buf[:size]))[-2:]
            del buf[:size + 2]
    print(status, total, complete)
    sys.exit(0)
def message():
    global buf
    fill(5)
    length = struct.unpack('!i', buf[1:5])[0]
    fill(1 + length)
    kind, body = bytes(buf[0:1]), bytes(buf[5:1 + length])
    del buf[:1 + length]
    return kind, body
params = b'user\0datx\0database\0lake\0\0'
s.sendall(struct.pack('!ii', len(params) + 8, 196608) + params)
while True:
    kind, body = message()
    if kind == b'R' and struct.unpack('!i', body[:4])[0] == 3:
        password = token.encode() + b'\0'
        s.sendall(b'p' + struct.pack('!i', len(password) + 4) + password)
    elif kind == b'Z':
        break
    elif kind == b'E':
        print('error', 0, False, body)
        sys.exit(0)
query = sql.encode() + b'\0'
s.sendall(b'Q' + struct.pack('!i', len(query) + 4) + query)
rows, complete, failed = 0, False, None
while True:
    kind, body = message()
    if kind == b'D':
        rows += 1
    elif kind == b'C':
        complete = True
    elif kind == b'E':
        failed = body
    elif kind == b'Z':
        break
print('ok' if failed is None else 'error', rows, complete, failed or '')
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_slow_readers_of_large_answers_stay_within_the_answer_budget() {
    // 190 MB answers, four queries at a time, 96 MiB for every answer on its way.
    const ANSWER_MEMORY_MIB: f64 = 96.0;
    let workspace = Workspace::new(&format!(
        "[sql]\ntoken = \"{SQL_TOKEN}\"\nmemory_limit = \"200MiB\"\nmax_concurrent = 4\nanswer_memory = \"{ANSWER_MEMORY_MIB}MiB\"\ntimeout = \"300s\"\n[postgres]\nlisten = \"127.0.0.1:0\"\n{VENUE}"
    ));
    let server = workspace.serve();
    let sql = "SELECT repeat('x', 1900) AS x FROM generate_series(1, 100000)";
    // The process at rest, once both doors have answered a query.
    let (status, _, _) = http_sql(&server, "SELECT 1").await;
    assert_eq!(status, 200);
    post(&server, "contacts", "myvenue", sample("contacts.json")).await;
    let idle_mib = server.memory_mib("VmRSS");

    let python = common::python_with(&[]);
    let postgres = server.postgres_address();
    let http = server.address.clone();
    let readers: Vec<std::thread::JoinHandle<String>> = (0..12)
        .map(|i| {
            let (python, http) = (python.clone(), http.clone());
            std::thread::spawn(move || {
                let (mode, address) = match i % 2 {
                    0 => ("http", http),
                    _ => ("pg", postgres.to_string()),
                };
                let (host, port) = address.rsplit_once(':').unwrap();
                let output = std::process::Command::new(python)
                    .args([
                        "-c",
                        SLOW_READER,
                        mode,
                        host,
                        port,
                        SQL_TOKEN,
                        sql,
                        "65536",
                        "0.002",
                    ])
                    .output()
                    .expect("python runs");
                assert!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                format!("{mode} {}", String::from_utf8_lossy(&output.stdout).trim())
            })
        })
        .collect();
    // S-360 keeps pushing meanwhile, and is answered.
    let mut pushes = 0;
    while readers.iter().any(|reader| !reader.is_finished()) {
        post(
            &server,
            "ticketchecks",
            "myvenue",
            ticket_checks(2, 1000 + pushes * 10),
        )
        .await;
        pushes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answers: Vec<String> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let peak_mib = server.memory_mib("VmHWM");
    eprintln!(
        "idle {idle_mib:.0} MiB, peak {peak_mib:.0} MiB, {pushes} pushes meanwhile; {answers:#?}"
    );
    // Every answer whole, or refused as busy: none cut short, none wrong.
    for answer in &answers {
        // 100,000 rows of {"x":"x…"} (1,908 bytes), commas between, brackets and a newline.
        let complete =
            answer == "http 200 190900002 True" || answer.starts_with("pg ok 100000 True");
        let busy =
            answer.starts_with("http 503") || answer.contains("53200") || answer.contains("53300");
        assert!(complete || busy, "{answer}");
    }
    assert!(
        answers.iter().filter(|a| a.contains("True")).count() >= 4,
        "{answers:#?}"
    );
    // What the readers hold back stays in the budget; besides it, the first batch of each
    // running query (16 MB) and DataFusion's own buffers, stated here as 128 MiB.
    assert!(
        peak_mib < idle_mib + ANSWER_MEMORY_MIB + 128.0,
        "serve reached {peak_mib:.0} MiB from {idle_mib:.0} MiB at rest"
    );
    assert!(pushes > 0);
}

#[test]
fn a_token_may_not_take_the_name_of_the_sql_tables_own() {
    // A scoped token named `sql` was taken for the [sql] token over PostgreSQL (user
    // `datx`) and saw every institution.
    for name in ["sql", "datx"] {
        let workspace = Workspace::new(&format!(
            "{VENUE}[sql]\ntoken = \"{SQL_TOKEN}\"\n[sql.tokens.{name}]\ntoken = \"scoped-token\"\ninstitutions = [\"myvenue\"]\n"
        ));
        let output = workspace.run(&["sql", "SELECT 1"]);
        assert_eq!(output.status.code(), Some(2));
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(
            said.contains(&format!("`sql.tokens.{name}`")) && said.contains("another name"),
            "{said}"
        );
    }
}

/// The `datx_lake_probes_total` of both outcomes, from `/metrics`.
async fn lake_probes(server: &Server) -> u64 {
    common::get_text(server, "/metrics")
        .await
        .lines()
        .filter(|line| line.starts_with("datx_lake_probes_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_health_checks_probes_the_lake_at_most_every_few_seconds() {
    let workspace = Workspace::new(VENUE);
    let server = workspace.serve();
    let before = lake_probes(&server).await;
    assert!(before >= 1, "serve probes the lake once before it receives");
    let started = std::time::Instant::now();
    let client = reqwest::Client::new();
    for _ in 0..10 {
        let answers = futures::future::join_all((0..100).map(|_| {
            let request = client.get(server.url("/healthz")).send();
            async move { request.await.map(|answer| answer.status().as_u16()) }
        }))
        .await;
        assert!(
            answers.iter().all(|answer| matches!(answer, Ok(200))),
            "{answers:?}"
        );
    }
    let elapsed = started.elapsed().as_secs();
    let probes = lake_probes(&server).await - before;
    // One probe per 5 s of flood at most, and the background one each minute.
    let allowed = 1 + elapsed / 5 + elapsed / 60 + 1;
    assert!(
        probes <= allowed,
        "{probes} probes for 1,000 requests over {elapsed} s"
    );
    // Nothing is left behind once the last probe's removal is done.
    let health = workspace.lake().join("_datx/health");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&health).map_or(0, |dir| dir.count()) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a probe was left behind"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    post(&server, "contacts", "myvenue", sample("contacts.json")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stream_past_the_time_limit_to_a_slow_reader_and_never_over_http_1_0() {
    // A 2 s limit on computing; a client that takes longer than that to read 19 MB still
    // gets all of it: time waiting for the client is not the query's.
    let workspace = Workspace::new(&format!(
        "[sql]\ntoken = \"{SQL_TOKEN}\"\ntimeout = \"2s\"\n{VENUE}"
    ));
    let server = workspace.serve();
    let python = common::python_with(&[]);
    let (host, port) = server.address.rsplit_once(':').unwrap();
    let sql = "SELECT repeat('x', 1900) AS x FROM generate_series(1, 10000)";
    let output = std::process::Command::new(python)
        .args([
            "-c",
            SLOW_READER,
            "http",
            host,
            port,
            SQL_TOKEN,
            sql,
            "65536",
            "0.02",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        said.trim(),
        "200 19090002 True",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // HTTP/1.0 has no chunks: an answer cut short would end as a whole one does.
    let head = format!(
        "POST /sql HTTP/1.0\r\nAuthorization: Bearer {SQL_TOKEN}\r\nContent-Length: {}\r\n\r\n",
        "SELECT 1".len()
    );
    let (status, body) = common::raw_request(&server.address, &head, b"SELECT 1");
    assert_eq!(status, 505, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_need_more_of_the_budget_at_once_never_wait_for_each_other() {
    // Each batch after the first is larger than the first: a query that held its share
    // while waiting for a larger one could wait for another doing the same.
    let workspace = Workspace::new(&format!(
        "[sql]\ntoken = \"{SQL_TOKEN}\"\nanswer_memory = \"1MiB\"\ntimeout = \"60s\"\n{VENUE}"
    ));
    let server = workspace.serve();
    let growing = |width: usize| {
        format!(
            "SELECT CASE WHEN value <= 8192 THEN 'a' ELSE repeat('x', {width}) END AS x FROM generate_series(1, 16384)"
        )
    };
    for width in [55, 59] {
        let statement = growing(width);
        let (first, second) =
            tokio::join!(http_sql(&server, &statement), http_sql(&server, &statement));
        for (status, _, body) in [first, second] {
            assert_eq!(status, 200, "{}", &body[..body.len().min(300)]);
            assert!(body.ends_with("]\n"), "cut short");
        }
    }
    // One whose later batch, counted twice while it is encoded, is more than the whole
    // budget is stopped there, not left waiting: its answer, begun, ends short of its last
    // chunk, and the log names the setting.
    let cut = reqwest::Client::new()
        .post(server.url("/sql"))
        .bearer_auth(SQL_TOKEN)
        .body(growing(70))
        .send()
        .await
        .unwrap();
    assert_eq!(cut.status(), 200);
    assert!(
        cut.text().await.is_err(),
        "an answer cut short read as whole"
    );
    // Logged once the answer's body is dropped, just after the client saw its end.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.log().contains("sql.answer_memory") {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, _) = http_sql(&server, "SELECT 1").await;
    assert_eq!(status, 200);
}
