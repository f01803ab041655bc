//! PostgreSQL clients against the real binary: `psql` (Debian's postgresql-client) and
//! psycopg (from PyPI), over real sockets, reading what `datx sql` reads, within the same
//! limits and scopes, and the catalog queries BI tools send when they connect.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use common::{Server, Workspace, compact, post, post_samples, sql_rows};
use serde_json::{Value, json};

use common::{ALPHA_TOKEN, SQL_TOKEN};
const PSYCOPG: (&str, &str) = ("psycopg", "psycopg[binary]==3.3.9");

fn config(sql: &str, postgres: &str) -> String {
    common::scoped_sql_config(
        sql,
        &format!("[postgres]\nlisten = \"127.0.0.1:0\"\n{postgres}"),
    )
}

/// Both venues' samples plus generated orders and checks, compacted, and a server on them.
async fn lake(sql: &str, postgres: &str) -> (Workspace, Server) {
    let workspace = Workspace::new(&config(sql, postgres));
    let server = workspace.serve();
    for (n, venue) in ["alpha", "beta"].into_iter().enumerate() {
        let n = n as i64;
        post_samples(&server, venue).await;
        post(
            &server,
            "orders",
            venue,
            common::orders(30, 50_000 + n * 1_000),
        )
        .await;
        let checks = common::ticket_checks(40, 90_000 + n * 1_000);
        post(&server, "ticketchecks", venue, checks).await;
    }
    compact(&workspace, "compact");
    (workspace, server)
}

/// `psql` with `args` as `user`, in CSV, stopping at the first error.
fn psql(address: SocketAddr, user: &str, password: &str, args: &[&str]) -> Output {
    Command::new("psql")
        .args([
            "-X",
            "--csv",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &address.ip().to_string(),
            "-p",
            &address.port().to_string(),
            "-U",
            user,
            "-d",
            "datx",
        ])
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs (Debian's postgresql-client, installed by .ci/run)")
}

/// `psql` as `datx` with a connection string asking for `sslmode`, running `args`.
fn psql_ssl(address: SocketAddr, sslmode: &str, args: &[&str]) -> Output {
    Command::new("psql")
        .arg("-X")
        .args(args)
        .arg(format!(
            "host={} port={} user=datx dbname=datx sslmode={sslmode} connect_timeout=10",
            address.ip(),
            address.port()
        ))
        .env("PGPASSWORD", SQL_TOKEN)
        .output()
        .expect("psql runs")
}

/// The rows `psql --csv` printed, header first.
fn csv_rows(output: &Output) -> Vec<Vec<String>> {
    csv_reader(&common::succeeded(output.clone()).stdout)
}

/// A small CSV reader (quoted fields, doubled quotes, quoted newlines): enough for psql.
fn csv_reader(bytes: &[u8]) -> Vec<Vec<String>> {
    let text = String::from_utf8_lossy(bytes);
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (c, _) => field.push(c),
        }
    }
    rows
}

/// Runs a Python `script` with psycopg; `DSN` is set for it. Returns what it printed as
/// JSON, or fails the test with its error.
fn psycopg(address: SocketAddr, user: &str, password: &str, script: &str) -> Value {
    let output = psycopg_output(address, user, password, script);
    let output = common::succeeded(output);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&output.stdout));
    })
}

fn psycopg_output(address: SocketAddr, user: &str, password: &str, script: &str) -> Output {
    let python = common::python_with(&[PSYCOPG]);
    let dsn = format!(
        "host={} port={} dbname=datx user={user} password={password} connect_timeout=10",
        address.ip(),
        address.port()
    );
    let prelude = "import json, os, sys, datetime, decimal, psycopg\nDSN = os.environ['DSN']\n";
    Command::new(python)
        .args(["-c", &format!("{prelude}{script}")])
        .env("DSN", dsn)
        .output()
        .expect("python runs")
}

fn saved_query_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("queries/{name}.sql"))
}

fn saved_query(name: &str) -> String {
    std::fs::read_to_string(saved_query_path(name)).unwrap()
}

/// What `datx sql -f` answers for a saved query, as JSON objects.
fn saved_query_rows(workspace: &Workspace, name: &str) -> Vec<serde_json::Map<String, Value>> {
    let path = saved_query_path(name);
    let output = common::succeeded(workspace.run(&[
        "sql",
        "--format",
        "json",
        "-f",
        path.to_str().unwrap(),
    ]));
    serde_json::from_slice(&output.stdout).unwrap()
}

const SAVED_QUERIES: [&str; 5] = [
    "contacts_by_week",
    "freshness",
    "gate_failures",
    "no_show_rate",
    "sales_by_day_and_product",
];

/// An instant or date in any of the spellings the clients use: `2024-03-01 17:25:10+00`
/// (psql), `2024-03-01 17:25:10+00:00` (Python), `2024-03-01T17:25:10Z` (datx's JSON).
fn instant(text: &str) -> Option<NaiveDateTime> {
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%:z", "%+"] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Some(t.naive_utc());
        }
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t);
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_hms_opt(0, 0, 0).unwrap())
}

/// Whether a cell a PostgreSQL client read (as text) holds the value `datx sql` gave.
fn same_cell(read: &str, expected: &Value) -> bool {
    match expected {
        Value::Null => read.is_empty() || read == "None",
        Value::Bool(b) => {
            read == if *b { "t" } else { "f" }
                || read == b.to_string()
                || read == if *b { "True" } else { "False" }
        }
        Value::Number(n) => read
            .parse::<f64>()
            .is_ok_and(|r| (r - n.as_f64().unwrap()).abs() <= 1e-9 * r.abs().max(1.0)),
        Value::String(s) => read == s || instant(read).is_some_and(|r| Some(r) == instant(s)),
        other => *read == *other.to_string(),
    }
}

/// Asserts that `read` (header, then rows, as text) is `expected` (as `datx sql` gave it).
fn assert_same_rows(what: &str, read: &[Vec<String>], expected: &[serde_json::Map<String, Value>]) {
    assert!(!expected.is_empty(), "{what}: datx sql gave no rows");
    let (header, rows) = read.split_first().expect("a header");
    let columns: Vec<&String> = expected[0].keys().collect();
    let mut header_sorted = header.clone();
    header_sorted.sort();
    let mut columns_sorted: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    columns_sorted.sort();
    assert_eq!(header_sorted, columns_sorted, "{what}: columns");
    assert_eq!(rows.len(), expected.len(), "{what}: row count");
    for (row, want) in rows.iter().zip(expected) {
        for (name, cell) in header.iter().zip(row) {
            assert!(
                same_cell(cell, &want[name]),
                "{what}: column {name} read {cell:?}, datx sql says {}",
                want[name]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_psycopg_read_what_datx_sql_reads() {
    let (workspace, server) = lake("", "").await;
    let address = server.postgres_address();

    for name in SAVED_QUERIES {
        let text = saved_query(name);
        let expected = saved_query_rows(&workspace, name);
        let by_psql = csv_rows(&psql(address, "datx", SQL_TOKEN, &["-c", &text]));
        assert_same_rows(&format!("psql {name}"), &by_psql, &expected);
        // psycopg: the extended protocol, values decoded to Python types.
        let by_psycopg = psycopg(
            address,
            "datx",
            SQL_TOKEN,
            &format!(
                "with psycopg.connect(DSN) as c:\n    cur = c.execute({text:?})\n    rows = [[d.name for d in cur.description]] + [[str(v) for v in r] for r in cur.fetchall()]\nprint(json.dumps(rows))"
            ),
        );
        let by_psycopg: Vec<Vec<String>> = serde_json::from_value(by_psycopg).unwrap();
        assert_same_rows(&format!("psycopg {name}"), &by_psycopg, &expected);
    }

    // The lake's columns arrive as PostgreSQL types a driver decodes natively.
    let types = psycopg(
        address,
        "datx",
        SQL_TOKEN,
        "with psycopg.connect(DSN) as c:\n    cur = c.execute('SELECT ticket_check_id, institution, access_time, date, _position, CAST(1.5 AS DOUBLE) AS ratio, true AS yes FROM ticket_checks LIMIT 1')\n    row = cur.fetchone()\n    print(json.dumps({d.name: [d.type_code, type(v).__name__] for d, v in zip(cur.description, row)}))",
    );
    assert_eq!(
        types,
        json!({
            "ticket_check_id": [20, "int"],
            "institution": [25, "str"],
            "access_time": [1184, "datetime"],
            "date": [1082, "date"],
            "_position": [20, "int"],
            "ratio": [701, "float"],
            "yes": [16, "bool"],
        })
    );

    // A prepared statement with parameters: a text, an instant and a number, run twice
    // with other values on the server-side statement.
    let count = |venue: &str, since: &str, above: i64| {
        sql_rows(
            &workspace,
            &format!(
                "SELECT count(*) AS n FROM ticket_checks WHERE institution = '{venue}' AND access_time >= '{since}' AND ticket_check_id > {above}"
            ),
        )[0]["n"]
            .as_i64()
            .unwrap()
    };
    let counts = psycopg(
        address,
        "datx",
        SQL_TOKEN,
        "q = 'SELECT count(*) FROM ticket_checks WHERE institution = %s AND access_time >= %s AND ticket_check_id > %s'\nwith psycopg.connect(DSN) as c:\n    since = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)\n    a = c.execute(q, ('alpha', since, 90010), prepare=True).fetchone()[0]\n    b = c.execute(q, ('beta', since, 0), prepare=True).fetchone()[0]\n    never = c.execute(q, ('beta', datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc), 0), prepare=True).fetchone()[0]\n    print(json.dumps([a, b, never]))",
    );
    assert_eq!(
        counts,
        json!([
            count("alpha", "2020-01-01T00:00:00Z", 90_010),
            count("beta", "2020-01-01T00:00:00Z", 0),
            0
        ])
    );
    assert!(
        counts[0].as_i64().unwrap() > 0
            && counts[1].as_i64().unwrap() > counts[0].as_i64().unwrap()
    );

    // Session commands a client sends around its queries, and several statements in one
    // simple query.
    let output = psql(
        address,
        "datx",
        SQL_TOKEN,
        &[
            "-c",
            "BEGIN; SET application_name = 'report'; SHOW application_name; SHOW TRANSACTION ISOLATION LEVEL; SELECT count(*) AS n FROM contacts; COMMIT",
        ],
    );
    let printed = String::from_utf8_lossy(&common::succeeded(output).stdout).into_owned();
    // DataFusion's own SHOW TABLES still works; infinities are spelled as PostgreSQL does.
    let shown = csv_rows(&psql(address, "datx", SQL_TOKEN, &["-c", "SHOW TABLES"]));
    assert!(
        shown
            .iter()
            .any(|row| row.contains(&"ticket_checks".to_string())),
        "{shown:?}"
    );
    let infinite = csv_rows(&psql(
        address,
        "datx",
        SQL_TOKEN,
        &[
            "-c",
            "SELECT CAST('inf' AS DOUBLE) AS up, CAST('-inf' AS DOUBLE) AS down, 1 AS one",
        ],
    ));
    assert_eq!(
        infinite,
        [
            vec!["up", "down", "one"],
            vec!["Infinity", "-Infinity", "1"]
        ]
    );
    let contacts = sql_rows(&workspace, "SELECT count(*) AS n FROM contacts")[0]["n"].clone();
    assert_eq!(
        printed,
        format!(
            "BEGIN\nSET\napplication_name\nreport\ntransaction_isolation\nread committed\nn\n{contacts}\nCOMMIT\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_user_sees_only_its_institutions_and_strangers_are_refused() {
    let (workspace, server) = lake("", "").await;
    let address = server.postgres_address();

    for probe in common::SCOPE_PROBES {
        let rows = csv_rows(&psql(address, "alpha_analyst", ALPHA_TOKEN, &["-c", probe]));
        let column = rows[0].iter().position(|c| c == "institution").unwrap();
        for row in &rows[1..] {
            assert_eq!(row[column], "alpha", "{probe} showed {row:?}");
        }
    }
    // Counts and saved queries are exactly the alpha part of the full answer.
    let count = "SELECT count(*) AS n FROM ticket_checks";
    let alpha = sql_rows(
        &workspace,
        "SELECT count(*) AS n FROM ticket_checks WHERE institution = 'alpha'",
    );
    let scoped = csv_rows(&psql(address, "alpha_analyst", ALPHA_TOKEN, &["-c", count]));
    assert_eq!(scoped[1][0], alpha[0]["n"].to_string());
    for name in [
        "sales_by_day_and_product",
        "no_show_rate",
        "gate_failures",
        "contacts_by_week",
    ] {
        let text = saved_query(name);
        let full = csv_rows(&psql(address, "datx", SQL_TOKEN, &["-c", &text]));
        let scoped = csv_rows(&psql(address, "alpha_analyst", ALPHA_TOKEN, &["-c", &text]));
        let column = full[0].iter().position(|c| c == "institution").unwrap();
        assert!(full.iter().any(|r| r[column] == "beta"), "{name}");
        let alpha_part: Vec<&Vec<String>> = full.iter().filter(|r| r[column] != "beta").collect();
        assert_eq!(scoped.iter().collect::<Vec<_>>(), alpha_part, "{name}");
    }
    // A prepared statement asking for beta by parameter finds nothing; nor does a file
    // named by its path; the plan names alpha's files only.
    let user = csv_rows(&psql(
        address,
        "alpha_analyst",
        ALPHA_TOKEN,
        &["-c", "SELECT current_user AS u, session_user AS s"],
    ));
    assert_eq!(user[1], ["alpha_analyst", "alpha_analyst"]);
    let by_parameter = psycopg(
        address,
        "alpha_analyst",
        ALPHA_TOKEN,
        "with psycopg.connect(DSN) as c:\n    print(json.dumps(c.execute('SELECT count(*) FROM ticket_checks WHERE institution = %s', ('beta',), prepare=True).fetchone()[0]))",
    );
    assert_eq!(by_parameter, json!(0));
    let by_path = common::beta_file_query(&workspace);
    let output = psql(address, "alpha_analyst", ALPHA_TOKEN, &["-c", &by_path]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let plan = String::from_utf8_lossy(
        &common::succeeded(psql(
            address,
            "alpha_analyst",
            ALPHA_TOKEN,
            &["-c", "EXPLAIN SELECT * FROM ticket_checks"],
        ))
        .stdout,
    )
    .into_owned();
    assert!(
        plan.contains("institution=alpha") && !plan.contains("institution=beta"),
        "{plan}"
    );

    // A wrong password, a token under another user's name, an unknown user: refused, as
    // PostgreSQL refuses (FATAL 28P01), and the connection is closed.
    for (user, password) in [
        ("alpha_analyst", "wrong"),
        ("alpha_analyst", SQL_TOKEN),
        ("datx", ALPHA_TOKEN),
        ("nobody", SQL_TOKEN),
    ] {
        let output = psql(address, user, password, &["-c", "SELECT 1"]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{user}/{password}: {output:?}"
        );
        let said = String::from_utf8_lossy(&output.stderr).to_lowercase();
        assert!(
            said.contains("password authentication failed"),
            "{user}: {said}"
        );
    }
    let refused = psycopg(
        address,
        "alpha_analyst",
        "wrong",
        "try:\n    psycopg.connect(DSN)\n    print(json.dumps('connected'))\nexcept psycopg.OperationalError as e:\n    print(json.dumps(getattr(e, 'sqlstate', None) or str(e)))",
    );
    let refused = refused.as_str().unwrap().to_lowercase();
    assert!(
        refused.contains("password authentication failed"),
        "{refused}"
    );
    assert!(server.log().contains("PostgreSQL sign-in refused"));
    let metrics = common::get_text(&server, "/metrics").await;
    assert!(
        metrics.contains("datx_postgres_sign_ins_refused_total 5"),
        "{metrics}"
    );
    assert!(!server.log().contains(ALPHA_TOKEN), "a token was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_and_limits_hold_with_the_session_still_usable() {
    let (workspace, server) = lake(
        "timeout = \"400ms\"\nmemory_limit = \"8MiB\"\nmax_rows = 1000",
        "",
    )
    .await;
    let address = server.postgres_address();
    // Each attempt on one connection: the error, its SQLSTATE, then a query that works.
    let outcomes = psycopg(
        address,
        "datx",
        SQL_TOKEN,
        r#"
statements = [
    "CREATE TABLE copy AS SELECT * FROM ticket_checks",
    "INSERT INTO ticket_checks SELECT * FROM ticket_checks",
    "DELETE FROM ticket_checks",
    "DROP VIEW contacts_current",
    "COPY (SELECT 1) TO '/tmp/datx-pg-should-not-exist.csv'",
    "CREATE EXTERNAL TABLE secrets STORED AS CSV LOCATION '/etc/passwd'",
    "SELECT sum(value) FROM range(1000000000000)",
    "SELECT count(*) FROM range(3000000) a JOIN range(3000000) b ON a.value = b.value",
    "SELECT * FROM range(5000)",
    "SELECT nope FROM ticket_checks",
    "SELECT arrow_cast(repeat('x', 1000000), 'Dictionary(Int32, Utf8)') FROM range(400)",
    "SELECT arrow_cast(-100000000, 'Date32')",
    ("prepare", "SELECT $4294967295"),
    "SET application_name = '" + "x" * 5000 + "'",
    "SELECT '" + "y" * 2000000 + "'",
    "SELECT 1 / 0",
]
outcomes = []
with psycopg.connect(DSN, autocommit=True) as c:
    for s in statements:
        try:
            if isinstance(s, tuple):
                # Parse only, as a driver preparing a statement does.
                res = c.pgconn.prepare(b"", s[1].encode())
                if res.status == psycopg.pq.ExecStatus.FATAL_ERROR:
                    code = res.error_field(psycopg.pq.DiagnosticField.SQLSTATE).decode()
                    outcomes.append([s[1], code, res.error_message.decode()])
                else:
                    outcomes.append([s[1], "ran"])
            else:
                c.execute(s).fetchall()
                outcomes.append([s, "ran"])
        except psycopg.Error as e:
            outcomes.append([s, e.sqlstate, str(e)])
        outcomes.append(["after", c.execute("SELECT count(*) FROM ticket_checks").fetchone()[0]])
print(json.dumps(outcomes))
"#,
    );
    let checks = sql_rows(&workspace, "SELECT count(*) AS n FROM ticket_checks")[0]["n"].clone();
    let expected_codes = [
        ("25006", "only queries that read"),
        ("25006", "only queries that read"),
        ("25006", "only queries that read"),
        ("25006", "only queries that read"),
        ("25006", "only queries that read"),
        ("25006", "only queries that read"),
        ("57014", "time limit"),
        ("53200", "memory"),
        ("54000", "max_rows"),
        ("42000", "nope"),
        // A dictionary's few values expand to 400 MB once written out.
        ("53200", "memory"),
        ("22008", "out of the range"),
        ("42000", "65535 parameters"),
        ("54000", "settings"),
        ("54000", "longer than"),
        ("22012", "Divide by zero"),
    ];
    let outcomes = outcomes.as_array().unwrap();
    assert_eq!(outcomes.len(), 2 * expected_codes.len(), "{outcomes:?}");
    for (pair, (code, says)) in outcomes.chunks(2).zip(expected_codes) {
        assert_eq!(pair[0][1], code, "{pair:?}");
        assert!(pair[0][2].as_str().unwrap().contains(says), "{pair:?}");
        assert_eq!(
            pair[1],
            json!(["after", checks]),
            "the session stays usable: {pair:?}"
        );
    }
    assert!(!std::path::Path::new("/tmp/datx-pg-should-not-exist.csv").exists());
    let metrics = common::get_text(&server, "/metrics").await;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("datx_postgres_queries_total") && l.contains("sqlstate=\"25006\""));
    assert!(refused.is_some_and(|l| l.ends_with(" 6")), "{metrics}");
    // Portals fetched one row at a time keep their answers in the session: past
    // memory_limit (8 MiB here) a new one is refused until one is closed. The protocol is
    // spoken by hand, as no driver leaves several named portals open.
    let portals = psycopg(
        address,
        "datx",
        SQL_TOKEN,
        &format!(
            r#"
import socket, struct
host, port = "{}", {}
s = socket.create_connection((host, port), timeout=30)
def send(kind, body):
    s.sendall(kind + struct.pack('!i', len(body) + 4) + body)
def exactly(n):
    data = b''
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, 'closed'
        data += chunk
    return data
def until_ready():
    errors = []
    while True:
        head = exactly(5)
        body = exactly(struct.unpack('!i', head[1:])[0] - 4)
        if head[:1] == b'E':
            fields = dict((f[:1], f[1:]) for f in body.split(b'\0') if f)
            errors.append(fields[b'C'].decode())
        if head[:1] == b'Z':
            return errors
startup = b'user\0datx\0database\0datx\0\0'
s.sendall(struct.pack('!ii', len(startup) + 8, 196608) + startup)
assert exactly(1) == b'R'
exactly(8)
send(b'p', b'{SQL_TOKEN}\0')
until_ready()
send(b'P', b's\0' + b"SELECT repeat('x', 1000000) || CAST(value AS VARCHAR) AS big FROM range(3)\0" + struct.pack('!h', 0))
send(b'S', b'')
until_ready()
def open_portal(name):
    send(b'B', name + b'\0s\0' + struct.pack('!hhh', 0, 0, 0))
    send(b'E', name + b'\0' + struct.pack('!i', 1))
    send(b'S', b'')
    return until_ready()
outcomes = [open_portal(b'p0'), open_portal(b'p1'), open_portal(b'p2')]
send(b'C', b'Pp0\0')
send(b'S', b'')
until_ready()
outcomes.append(open_portal(b'p3'))
print(json.dumps(outcomes))
"#,
            address.ip(),
            address.port()
        ),
    );
    assert_eq!(portals, json!([[], [], ["53200"], []]));

    // psql shows the same refusal, and the statement's SQLSTATE with VERBOSITY verbose.
    let output = psql(
        address,
        "datx",
        SQL_TOKEN,
        &["-v", "VERBOSITY=verbose", "-c", "DELETE FROM orders"],
    );
    assert_eq!(output.status.code(), Some(1));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("25006") && said.contains("only queries that read"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_a_long_query() {
    // One query at a time: if the cancelled query went on running, the next one would
    // wait for its slot and be refused as busy after 30 s, long after it stopped.
    let (_workspace, server) = lake("timeout = \"60s\"\nmax_concurrent = 1", "").await;
    let address = server.postgres_address();
    let outcome = psycopg(
        address,
        "datx",
        SQL_TOKEN,
        r#"
import threading, time
with psycopg.connect(DSN, autocommit=True) as c:
    started = threading.Event()
    def cancel_soon():
        started.wait()
        time.sleep(0.5)
        c.cancel_safe()
    threading.Thread(target=cancel_soon).start()
    started.set()
    try:
        c.execute("SELECT sum(value) FROM range(1000000000000)").fetchall()
        first = "finished"
    except psycopg.errors.QueryCanceled as e:
        first = e.sqlstate
    after = c.execute("SELECT 41 + 1").fetchone()[0]
with psycopg.connect(DSN) as other:
    again = other.execute("SELECT count(*) FROM orders").fetchone()[0] > 0
print(json.dumps([first, after, again]))
"#,
    );
    assert_eq!(outcome, json!(["57014", 42, true]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_only_when_a_certificate_is_configured() {
    // Without a certificate: a client that prefers TLS falls back to plain text, one that
    // requires it is told no.
    let (_workspace, server) = lake("", "").await;
    let address = server.postgres_address();
    let plain = psql(address, "datx", SQL_TOKEN, &["-c", "SELECT 1 AS one"]);
    assert_eq!(csv_rows(&plain)[1], ["1"]);
    let required = psql_ssl(address, "require", &["-c", "SELECT 1"]);
    assert_eq!(required.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&required.stderr).contains("SSL"),
        "{required:?}"
    );

    // With one: the session is encrypted, as pg_stat_ssl would say; psql checks it here by
    // its own connection info.
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display()
    );
    let workspace = Workspace::new(&config("", &tls));
    let server = workspace.serve();
    let address = server.postgres_address();
    let output = psql_ssl(
        address,
        "require",
        &["-c", "\\conninfo", "-c", "SELECT 2 AS two"],
    );
    let printed = String::from_utf8_lossy(&common::succeeded(output).stdout).into_owned();
    assert!(
        printed.contains("SSL connection (protocol: TLSv1.3"),
        "{printed}"
    );
    assert!(printed.contains(" 2\n"), "{printed}");
    // With a certificate, a client that does not use TLS is refused before it sends its
    // password.
    let plain = psql_ssl(address, "disable", &["-c", "SELECT 1"]);
    assert_eq!(plain.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("TLS connections only"),
        "{plain:?}"
    );

    // A certificate that cannot be read stops serve at its start, naming it.
    let workspace = Workspace::new(&config(
        "",
        "tls_cert = \"missing.pem\"\ntls_key = \"missing.key\"",
    ));
    let output = workspace.run(&["serve"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.pem"));
}

/// Runs every statement of `tests/postgres_clients/{tool}.sql` on one connection, as the
/// tool's driver sends it: the simple or extended protocol, parameters typed and encoded as
/// pgjdbc binds them. Each extended statement runs twice, asking for text then binary
/// results. Returns the statements that failed, with the server's message.
fn run_recorded(address: SocketAddr, tool: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/postgres_clients/{tool}.sql"));
    let script = r#"
import struct
text = open(STATEMENTS).read()
blocks = text.split('-- statement: ')[1:]
OIDS = {'int4': 23, 'int8': 20, 'varchar': 1043, 'bool': 16}
failures, ran = [], 0
with psycopg.connect(DSN, autocommit=True) as c:
    pg = c.pgconn
    for block in blocks:
        lines = block.split('\n')
        name, params, simple, sql = lines[0], [], False, []
        for line in lines[1:]:
            if line.startswith('-- params: '):
                params = [p.split(' ', 1) for p in line[len('-- params: '):].split(', ')]
            elif line.startswith('-- protocol: simple'):
                simple = True
            else:
                sql.append(line)
        sql = '\n'.join(sql).strip('\n').encode()
        values, types, formats = [], [], []
        for kind, value in params:
            types.append(OIDS[kind])
            if kind == 'int4':
                values.append(struct.pack('>i', int(value))); formats.append(1)
            elif kind == 'int8':
                values.append(struct.pack('>q', int(value))); formats.append(1)
            else:
                values.append(value.encode()); formats.append(0)
        for result_format in ([None] if simple else [0, 1]):
            if simple:
                res = pg.exec_(sql)
            else:
                res = pg.exec_params(sql, values, types, formats, result_format)
            ran += 1
            if res.status not in (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.COMMAND_OK, psycopg.pq.ExecStatus.EMPTY_QUERY):
                failures.append([name, result_format, res.error_message.decode(errors='replace').strip()])
print(json.dumps({'ran': ran, 'failures': failures}))
"#;
    let script = format!("STATEMENTS = {:?}\n{script}", path.display().to_string());
    psycopg(address, "datx", SQL_TOKEN, &script)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_metabase_and_dbeaver_send_on_connect_is_answered() {
    let (workspace, server) = lake("", "").await;
    let address = server.postgres_address();
    for tool in ["pgjdbc", "metabase", "dbeaver"] {
        let outcome = run_recorded(address, tool);
        assert_eq!(outcome["failures"], json!([]), "{tool}");
        assert!(outcome["ran"].as_u64().unwrap() >= 10, "{tool}: {outcome}");
    }
    // psql's meta-commands a newcomer types first, each with what it must list.
    for (command, expected) in [
        ("\\l", "datx"),
        ("\\dt", "ticket_checks"),
        ("\\dv", "orders_current"),
        ("\\dn", "public"),
    ] {
        let rows = csv_rows(&psql(address, "datx", SQL_TOKEN, &["-c", command]));
        assert!(
            rows.iter().flatten().any(|cell| cell == expected),
            "{command}: {rows:?}"
        );
    }
    let functions = csv_rows(&psql(address, "datx", SQL_TOKEN, &["-c", "\\df"]));
    assert_eq!(
        functions.len(),
        1,
        "\\df lists no function of the lake: {functions:?}"
    );
    // What the answers say is the lake: the tables and views a BI tool lists, and the
    // columns it shows for contacts, with the types the rows arrive as.
    let tables = csv_rows(&psql(
        address,
        "datx",
        SQL_TOKEN,
        &[
            "-c",
            "SELECT c.relname, c.relkind FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON c.relnamespace = n.oid WHERE n.nspname = 'public' ORDER BY 1",
        ],
    ));
    let mut expected: Vec<Vec<String>> = common::TABLES
        .iter()
        .map(|t| vec![t.to_string(), "r".to_string()])
        .chain(["contacts_current", "orders_current"].map(|v| vec![v.to_string(), "v".to_string()]))
        .collect();
    expected.sort();
    assert_eq!(tables[1..], expected[..]);
    let columns = csv_rows(&psql(
        address,
        "datx",
        SQL_TOKEN,
        &[
            "-c",
            "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON a.attrelid = c.oid WHERE c.relname = 'ticket_checks' ORDER BY a.attnum",
        ],
    ));
    let described = sql_rows(
        &workspace,
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'ticket_checks' ORDER BY ordinal_position",
    );
    assert_eq!(columns.len() - 1, described.len());
    for (row, column) in columns[1..].iter().zip(&described) {
        assert_eq!(row[0], column["column_name"].as_str().unwrap());
        // As PostgreSQL's format_type names them.
        let wire = match column["data_type"].as_str().unwrap() {
            "Int64" => "bigint",
            "Utf8" | "Utf8View" => "text",
            "Boolean" => "boolean",
            "Date32" => "date",
            t if t.starts_with("Timestamp") => "timestamp with time zone",
            other => panic!("a column of type {other}"),
        };
        assert_eq!(row[1], wire, "{row:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_idle_sessions_are_cut_off_and_serve_keeps_receiving() {
    let (_workspace, server) = lake("", "max_connections = 2\nidle_timeout = \"1s\"").await;
    let address = server.postgres_address();
    // Two clients take both sessions: one connects and says nothing, one sends half of a
    // startup message.
    let silent = std::net::TcpStream::connect(address).unwrap();
    let mut halfway = std::net::TcpStream::connect(address).unwrap();
    std::io::Write::write_all(&mut halfway, &[0, 0, 0, 40, 0, 3]).unwrap();
    // S-360 is still answered meanwhile.
    post(
        &server,
        "ticketchecks",
        "alpha",
        common::ticket_checks(2, 70_000),
    )
    .await;
    // Both are cut off after a second of silence, which frees their places: a real client
    // that queued behind them gets in. An authenticated session left idle is closed too,
    // and its next query fails as on a dropped connection.
    let outcome = psycopg(
        address,
        "datx",
        SQL_TOKEN,
        r#"
import time
with psycopg.connect(DSN, autocommit=True) as c:
    first = c.execute("SELECT 1").fetchone()[0]
    time.sleep(2.5)
    try:
        c.execute("SELECT 2").fetchone()
        after_idle = "answered"
    except psycopg.OperationalError:
        after_idle = "closed"
print(json.dumps([first, after_idle]))
"#,
    );
    assert_eq!(outcome, json!([1, "closed"]));
    for mut stalled in [silent, halfway] {
        // Closed by the server: reading ends (rather than timing out).
        stalled
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let read = std::io::Read::read_to_end(&mut stalled, &mut Vec::new());
        assert!(
            read.is_ok(),
            "a stalled client is still connected: {read:?}"
        );
    }
    let log = server.log();
    assert!(
        log.contains("closed a PostgreSQL session: it did not sign in in time"),
        "{log}"
    );
    assert!(
        log.contains("closed a PostgreSQL session: idle for postgres.idle_timeout"),
        "{log}"
    );
}

/// A PostgreSQL client spoken by hand in Python, signed in as `datx`: `send(kind, body)`,
/// `message()` (the next message's kind and body), `until_ready()` (the SQLSTATEs of the
/// errors before the next ReadyForQuery), `cancel()` (a cancel request on a connection of
/// its own, with this session's key), then `script`.
fn raw_postgres(address: SocketAddr, script: &str) -> Value {
    psycopg(
        address,
        "datx",
        SQL_TOKEN,
        &format!(
            r#"
import socket, struct
host, port = "{}", {}
s = socket.create_connection((host, port), timeout=60)
buf = bytearray()
def send(kind, body):
    s.sendall(kind + struct.pack('!i', len(body) + 4) + body)
def fill(n):
    global buf
    while len(buf) < n:
        data = s.recv(65536)
        assert data, 'closed'
        buf += data
def message():
    global buf
    fill(5)
    length = struct.unpack('!i', buf[1:5])[0]
    fill(1 + length)
    kind, body = bytes(buf[:1]), bytes(buf[5:1 + length])
    del buf[:1 + length]
    return kind, body
def sqlstate(body):
    return dict((f[:1], f[1:]) for f in body.split(b'\0') if f)[b'C'].decode()
def until_ready():
    errors = []
    while True:
        kind, body = message()
        if kind == b'E':
            errors.append(sqlstate(body))
        if kind == b'Z':
            return errors
startup = b'user\0datx\0database\0datx\0\0'
s.sendall(struct.pack('!ii', len(startup) + 8, 196608) + startup)
key = None
while True:
    kind, body = message()
    if kind == b'R' and struct.unpack('!i', body[:4])[0] == 3:
        send(b'p', b'{SQL_TOKEN}\0')
    if kind == b'K':
        key = body
    if kind == b'Z':
        break
def cancel():
    c = socket.create_connection((host, port), timeout=10)
    c.sendall(struct.pack('!ii', 16, 80877102) + key)
    c.close()
{script}
"#,
            address.ip(),
            address.port()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_an_answer_while_its_rows_stream() {
    // Ten million rows, sent as they are produced: the cancel comes once the first rows are
    // there, and stops the rest (pgwire watches for it only until the first batch).
    let (_workspace, server) = lake("max_rows = 100000000\nmax_concurrent = 1", "").await;
    let outcome = raw_postgres(
        server.postgres_address(),
        r#"
send(b'Q', b"SELECT value FROM range(10000000)\0")
rows, errors, cancelled = 0, [], False
while True:
    kind, body = message()
    if kind == b'D':
        rows += 1
        if rows == 1000 and not cancelled:
            cancel()
            cancelled = True
    if kind == b'E':
        errors.append(sqlstate(body))
    if kind == b'Z':
        break
send(b'Q', b"SELECT 41 + 1\0")
after = until_ready()
print(json.dumps([errors, rows < 10000000, after]))
"#,
    );
    assert_eq!(outcome, json!([["57014"], true, []]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_with_the_wrong_number_of_formats_is_refused_not_a_dead_session() {
    let (_workspace, server) = lake("", "").await;
    let outcome = raw_postgres(
        server.postgres_address(),
        r#"
send(b'P', b's\0SELECT 1 AS a, 2 AS b, 3 AS c\0' + struct.pack('!h', 0))
send(b'S', b'')
parsed = until_ready()
# Two result formats for three columns, then one parameter format for none.
send(b'B', b'\0s\0' + struct.pack('!hh', 0, 0) + struct.pack('!hhh', 2, 0, 1))
send(b'D', b'P\0')
send(b'E', b'\0' + struct.pack('!i', 0))
send(b'S', b'')
wrong_results = until_ready()
send(b'Q', b"SELECT 41 + 1\0")
after = until_ready()
print(json.dumps([parsed, wrong_results, after]))
"#,
    );
    assert_eq!(outcome, json!([[], ["08P01"], []]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_kept_whole_past_the_answer_budget_is_refused_at_once() {
    // 30,000 rows fetched a hundred at a time are kept in the session; they need more than
    // the 1 MiB of answers the process has. The query must be refused, not wait for room
    // its own session holds.
    let (_workspace, server) = lake("answer_memory = \"1MiB\"\ntimeout = \"60s\"", "").await;
    let outcome = raw_postgres(
        server.postgres_address(),
        r#"
send(b'P', b"s\0SELECT repeat('x', 20) AS x FROM generate_series(1, 30000)\0" + struct.pack('!h', 0))
send(b'B', b'\0s\0' + struct.pack('!hhh', 0, 0, 0))
send(b'E', b'\0' + struct.pack('!i', 100))
send(b'S', b'')
limited = until_ready()
send(b'Q', b"SELECT 41 + 1\0")
after = until_ready()
print(json.dumps([limited, after]))
"#,
    );
    assert_eq!(outcome, json!([["53200"], []]));
}

/// Compiles `tests/postgres_clients/Probe.java` against Debian's pgjdbc and runs it on
/// `address`: each case's name and what pgjdbc read.
fn pgjdbc_probe(address: SocketAddr) -> std::collections::BTreeMap<String, String> {
    const JAR: &str = "/usr/share/java/postgresql.jar";
    assert!(
        std::path::Path::new(JAR).exists(),
        "pgjdbc is Debian's libpostgresql-jdbc-java (.ci/run installs it)"
    );
    let classes = tempfile::tempdir().unwrap();
    let source =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/postgres_clients/Probe.java");
    let compiled = Command::new("javac")
        .args(["-cp", JAR, "-d"])
        .arg(classes.path())
        .arg(&source)
        .output()
        .expect("javac runs");
    assert!(
        compiled.status.success(),
        "{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let classpath = format!("{JAR}:{}", classes.path().display());
    let url = format!("jdbc:postgresql://{address}/datx");
    let ran = Command::new("java")
        .args(["-cp", &classpath, "Probe", &url, "datx", SQL_TOKEN])
        .output()
        .expect("java runs");
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    String::from_utf8_lossy(&ran.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_reads_typed_parameters_postgresql_functions_and_types_as_postgresql_answers() {
    let (_workspace, server) = lake("timeout = \"120s\"", "").await;
    let read = pgjdbc_probe(server.postgres_address());
    let of = |name: &str| read.get(name).map(String::as_str).unwrap_or("(missing)");
    // A double is a double, not truncated to the integer the statement suggests.
    assert_eq!(of("double_times_two"), "3.0");
    assert_eq!(of("below_a_float"), of("below_a_float_literal"));
    // A date pgjdbc sends as untyped text with its zone.
    assert_eq!(of("set_date"), of("set_date_literal"));
    assert_eq!(of("set_int_plus_one"), "42");
    assert_eq!(of("set_boolean"), "true");
    // PostgreSQL's patterns, zones and types.
    assert_eq!(of("to_char"), "Thursday, 5 Mar 2026 14:07");
    // The wall time in Zurich, a timestamp without a zone (pgwire writes the microseconds
    // even when they are 0, where PostgreSQL leaves them out: the same value).
    assert_eq!(of("at_time_zone"), "timestamp,2026-12-01 00:30:00.000000");
    assert_eq!(of("now_type"), "timestamptz,timestamptz");
    assert_eq!(of("decimal"), "numeric,-1234.5678");
    // One pid per session, the one pg_backend_pid() names.
    assert_eq!(of("backend_pids"), "true,true");
    // A cancel stops the query: the session answers at once, and serve's cores are idle.
    assert_eq!(of("cancel"), "57014");
    assert_eq!(of("after_cancel"), "42");
    let before = server.cpu_seconds();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let used = server.cpu_seconds() - before;
    assert!(
        used < 0.5,
        "serve used {used:.2} s of CPU in the 2 s after the cancel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_parameters_and_postgresql_functions_answer_as_postgresql_does() {
    let (_workspace, server) = lake("", "").await;
    let outcome = psycopg(
        server.postgres_address(),
        "datx",
        SQL_TOKEN,
        r#"
import decimal
with psycopg.connect(DSN, autocommit=True) as c:
    def one(sql, *args):
        return c.execute(sql, args or None).fetchone()[0]
    float_parameter = one("SELECT count(*) FROM orders WHERE sale_amount < %s", 40000.5)
    float_literal = one("SELECT count(*) FROM orders WHERE sale_amount < 40000.5")
    out = {
        "float": float_parameter == float_literal,
        "product": one("SELECT %s * 2", 1.5),
        "bool": one("SELECT %s", True),
        "numeric": str(one("SELECT %s + 1", decimal.Decimal("1.25"))),
        # Metabase's month buckets in the venue's zone: 23:30 UTC on 30 November is
        # already December in Zurich.
        "bucket": str(one("SELECT date_trunc('month', TIMESTAMPTZ '2026-11-30 23:30:00+00' AT TIME ZONE 'Europe/Zurich')")),
        "to_char": one("SELECT to_char(TIMESTAMPTZ '2026-03-05 14:07:09+00', 'YYYY-MM-DD HH24:MI')"),
    }
    try:
        one("SELECT to_char(now(), 'J')")
        out["refused"] = None
    except psycopg.errors.Error as e:
        out["refused"] = "is not evaluated here" in str(e)
print(json.dumps(out))
"#,
    );
    assert_eq!(
        outcome,
        json!({
            "float": true,
            "product": 3.0,
            "bool": true,
            "numeric": "2.2500000000",
            "bucket": "2026-12-01 00:00:00",
            "to_char": "2026-03-05 14:07",
            "refused": true,
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_stdout_sends_what_a_query_reads_in_text_and_csv_within_the_tokens_scope() {
    let (workspace, server) = lake("", "").await;
    let address = server.postgres_address();
    // `_raw` holds quotes, commas and backslashes: the formats' escaping is exercised.
    let query = "SELECT ticket_check_id, institution, access_time, _raw, NULL AS nothing FROM ticket_checks ORDER BY institution, ticket_check_id";
    let selected = csv_rows(&psql(address, "datx", SQL_TOKEN, &["-c", query]));
    assert!(selected.len() > 80, "{selected:?}");

    // psql's \copy, in CSV with a header: the rows psql prints for the query itself.
    let copied = common::succeeded(psql(
        address,
        "datx",
        SQL_TOKEN,
        &[
            "-c",
            &format!("\\copy ({query}) TO STDOUT WITH (FORMAT csv, HEADER)"),
        ],
    ));
    assert_eq!(csv_reader(&copied.stdout), selected);

    // psycopg's copy, in text and CSV, row by row as PostgreSQL sends them; a table by
    // name; a scoped token copies only its institution; COPY FROM and a file are refused.
    let outcome = psycopg(
        address,
        "datx",
        SQL_TOKEN,
        &format!(
            r#"
out = {{}}
with psycopg.connect(DSN, autocommit=True) as c:
    cur = c.cursor()
    with cur.copy("COPY ({query}) TO STDOUT") as copy:
        out["text"] = [list(row) for row in copy.rows()]
    out["text_rowcount"] = cur.rowcount
    with cur.copy("COPY ticket_checks (ticket_check_id, institution) TO STDOUT (FORMAT csv)") as copy:
        # psycopg parses rows of the text format only: CSV comes as data blocks, a row a line.
        out["table"] = sum(bytes(block).count(b"\n") for block in copy)
    for refused in ["COPY ticket_checks FROM STDIN", "COPY ticket_checks TO '/tmp/x'", "COPY (SELECT 1) TO STDOUT (FORMAT binary)"]:
        try:
            with cur.copy(refused) as copy:
                list(copy)
            out[refused] = None
        except psycopg.errors.Error as e:
            out[refused] = e.sqlstate
    out["after"] = c.execute("SELECT 1").fetchone()[0]
print(json.dumps(out))
"#
        ),
    );
    let text = outcome["text"].as_array().unwrap();
    assert_eq!(text.len() + 1, selected.len());
    for (copied, read) in text.iter().zip(&selected[1..]) {
        let copied: Vec<String> = copied
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(&copied, read);
        assert!(copied[3].starts_with('{'), "{copied:?}");
    }
    assert!(text.iter().all(|row| row[4].is_null()));
    assert_eq!(outcome["text_rowcount"], json!(text.len()));
    let checks = sql_rows(&workspace, "SELECT count(*) AS n FROM ticket_checks");
    assert_eq!(outcome["table"], checks[0]["n"]);
    assert_eq!(outcome["COPY ticket_checks FROM STDIN"], json!("25006"));
    assert_eq!(outcome["COPY ticket_checks TO '/tmp/x'"], json!("25006"));
    assert_eq!(
        outcome["COPY (SELECT 1) TO STDOUT (FORMAT binary)"],
        json!("0A000")
    );
    assert_eq!(outcome["after"], json!(1));

    let scoped = common::succeeded(psql(
        address,
        "alpha_analyst",
        ALPHA_TOKEN,
        &["-c", "\\copy ticket_checks (institution) TO STDOUT"],
    ));
    let institutions = String::from_utf8_lossy(&scoped.stdout).into_owned();
    let alpha = sql_rows(
        &workspace,
        "SELECT count(*) AS n FROM ticket_checks WHERE institution = 'alpha'",
    );
    assert_eq!(
        institutions.lines().count().to_string(),
        alpha[0]["n"].to_string()
    );
    assert!(
        institutions.lines().all(|line| line == "alpha"),
        "{institutions}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_are_read_as_fetched_by_psycopg_and_psql_within_the_tokens_scope() {
    let (workspace, server) = lake("", "").await;
    let address = server.postgres_address();
    let expected: Vec<Value> = sql_rows(
        &workspace,
        "SELECT ticket_check_id AS id, institution FROM ticket_checks ORDER BY ticket_check_id, institution",
    )
    .into_iter()
    .map(|row| json!([row["id"], row["institution"]]))
    .collect();
    assert!(expected.len() > 80);
    let script = r#"
out = {}
query = "SELECT ticket_check_id, institution FROM ticket_checks WHERE ticket_check_id > %s ORDER BY ticket_check_id, institution"
with psycopg.connect(DSN) as c:
    # A named cursor: DECLARE in a transaction, then FETCH FORWARD itersize at a time.
    with c.cursor(name="checks") as cur:
        cur.itersize = 7
        cur.execute(query, (0,))
        out["columns"] = [d.name for d in cur.description]
        first = cur.fetchmany(5)
        out["rows"] = [list(r) for r in first + cur.fetchall()]
    with c.cursor(name="typed", binary=True) as cur:
        cur.execute("SELECT count(*), 1.5::float8, true FROM ticket_checks")
        out["binary"] = list(cur.fetchone())
    c.rollback()
    try:
        c.execute("FETCH 1 FROM typed")
        out["after_rollback"] = None
    except psycopg.errors.Error as e:
        out["after_rollback"] = e.sqlstate
with psycopg.connect(DSN, autocommit=True) as c:
    try:
        with c.cursor(name="outside") as cur:
            cur.execute("SELECT 1")
            cur.fetchall()
        out["outside"] = None
    except psycopg.errors.Error as e:
        out["outside"] = e.sqlstate
    with c.cursor(name="held", withhold=True) as cur:
        cur.execute(query, (0,))
        out["held"] = sum(1 for _ in cur)
    out["after"] = c.execute("SELECT 1").fetchone()[0]
print(json.dumps(out))
"#;
    let outcome = psycopg(address, "datx", SQL_TOKEN, script);
    assert_eq!(
        outcome["columns"],
        json!(["ticket_check_id", "institution"])
    );
    assert_eq!(outcome["rows"], Value::Array(expected.clone()));
    let checks = expected.len();
    assert_eq!(outcome["binary"], json!([checks, 1.5, true]));
    assert_eq!(outcome["after_rollback"], json!("34000"));
    assert_eq!(outcome["outside"], json!("25P01"));
    assert_eq!(outcome["held"], json!(checks));
    assert_eq!(outcome["after"], json!(1));

    // psql, a statement at a time and several in one query (a fetch followed by others
    // is read whole); a scoped token's cursor sees only its institution.
    let paged = csv_rows(&psql(
        address,
        "alpha_analyst",
        ALPHA_TOKEN,
        &[
            "-c",
            "BEGIN",
            "-c",
            "DECLARE c CURSOR FOR SELECT ticket_check_id, institution FROM ticket_checks ORDER BY ticket_check_id, institution",
            "-c",
            "FETCH 3 FROM c",
            "-c",
            "FETCH 2 FROM c; FETCH FORWARD 1 FROM c; CLOSE c",
            "-c",
            "COMMIT",
        ],
    ));
    let alpha: Vec<&Value> = expected.iter().filter(|row| row[1] == "alpha").collect();
    let fetched: Vec<Vec<String>> = paged
        .into_iter()
        .filter(|row| row.len() == 2 && row[0] != "ticket_check_id")
        .collect();
    assert_eq!(fetched.len(), 6, "{fetched:?}");
    for (row, expected) in fetched.iter().zip(&alpha) {
        assert_eq!(row[0], expected[0].to_string());
        assert_eq!(row[1], "alpha");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_sends_binary_parameters_of_the_described_types_pools_and_cancels() {
    // One query at a time: a cancelled query that went on would hold the only slot.
    let (_workspace, server) = lake("timeout = \"60s\"\nmax_concurrent = 1", "").await;
    let address = server.postgres_address();
    let python = common::python_with(&[PSYCOPG, ("asyncpg", "asyncpg==0.32.0")]);
    let dsn = format!(
        "postgresql://datx:{SQL_TOKEN}@{}:{}/datx",
        address.ip(),
        address.port()
    );
    let script = r#"
import asyncio, datetime, decimal, json, os, asyncpg
async def main():
    dsn = os.environ["DSN"]
    out = {}
    c = await asyncpg.connect(dsn)
    # asyncpg asks for each parameter's type, then sends it in binary as exactly that.
    out["int"] = await c.fetchval("SELECT $1::int + 1", 41)
    out["float"] = await c.fetchval("SELECT $1::float8 * 2", 1.5)
    out["bool"] = await c.fetchval("SELECT NOT $1::bool", False)
    out["bigint"] = await c.fetchval("SELECT count(*) FROM ticket_checks WHERE ticket_check_id > $1::bigint", 0) > 0
    out["date"] = str(await c.fetchval("SELECT $1::date", datetime.date(2026, 11, 30)))
    # Equal to PostgreSQL's 2.50, at DataFusion's scale of 10.
    out["numeric"] = await c.fetchval("SELECT $1::numeric * 2", decimal.Decimal("1.25")) == decimal.Decimal("2.5")
    out["text"] = await c.fetchval("SELECT upper($1)", "alpha")
    out["typeof"] = await c.fetchval("SELECT pg_typeof(1.5::float8)")
    pids = {await c.fetchval("SELECT pg_backend_pid()")}
    # A pool resets each connection it takes back (pg_advisory_unlock_all, CLOSE ALL...).
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    for n in range(3):
        async with pool.acquire() as p:
            out[f"pooled{n}"] = await p.fetchval("SELECT $1::int", n)
            pids.add(await p.fetchval("SELECT pg_backend_pid()"))
    await pool.close()
    out["own_pids"] = len(pids) == 2
    # A timeout cancels the query; the session answers its next statement.
    try:
        await c.fetchval("SELECT sum(value) FROM range(1000000000000)", timeout=1)
        out["cancelled"] = False
    except asyncio.TimeoutError:
        out["cancelled"] = True
    out["after"] = await c.fetchval("SELECT $1::int * 2", 21)
    await c.close()
    print(json.dumps(out))
asyncio.run(main())
"#;
    let output = Command::new(python)
        .args(["-c", script])
        .env("DSN", dsn)
        .output()
        .expect("python runs");
    let output = common::succeeded(output);
    let outcome: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        outcome,
        json!({
            "int": 42,
            "float": 3.0,
            "bool": true,
            "bigint": true,
            "date": "2026-11-30",
            "numeric": true,
            "text": "ALPHA",
            "typeof": "double precision",
            "pooled0": 0,
            "pooled1": 1,
            "pooled2": 2,
            "own_pids": true,
            "cancelled": true,
            "after": 42,
        })
    );
}
