//! SQL over the lake: the saved queries, the current-state views, scoped tokens, read-only
//! enforcement and limits, through `datx sql` and `POST /sql` of the real binary.
//!
//! Expected answers are computed here from the generated records themselves (or, for the
//! shared samples, worked out by hand in comments), never by datx.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{
    DateTime, Datelike, Duration as Span, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use common::{Backend, Server, Workspace, compact, post, post_samples};
use serde_json::{Map, Value, json};

type Row = Map<String, Value>;

use common::{ALPHA_TOKEN, SQL_TOKEN};

fn config(extra: &str) -> String {
    common::scoped_sql_config(extra, "")
}

fn saved_query(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("queries/{name}.sql"))
}

/// Runs `datx sql` with `args` and returns its JSON rows; fails the test on a non-zero exit.
fn cli_rows(workspace: &Workspace, args: &[&str]) -> Vec<Row> {
    let mut all = vec!["sql", "--format", "json"];
    all.extend_from_slice(args);
    let output = workspace.run(&all);
    assert!(
        output.status.success(),
        "datx {all:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    json_rows(&output.stdout)
}

fn json_rows(bytes: &[u8]) -> Vec<Row> {
    let rows: Vec<Value> = serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON rows ({e}): {}", String::from_utf8_lossy(bytes)));
    rows.into_iter()
        .map(|row| row.as_object().expect("a row is an object").clone())
        .collect()
}

/// `POST /sql` with a bearer token; returns the status and the body.
async fn http_sql(server: &Server, token: &str, statement: &str, accept: &str) -> (u16, String) {
    // A bounded wait: a query that is never cancelled fails the test instead of hanging it.
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
        .post(server.url("/sql"))
        .bearer_auth(token)
        .header("accept", accept)
        .body(statement.to_string())
        .send()
        .await
        .expect("datx answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn http_rows(server: &Server, token: &str, statement: &str) -> Vec<Row> {
    let (status, body) = http_sql(server, token, statement, "application/json").await;
    assert_eq!(status, 200, "{statement}: {body}");
    json_rows(body.as_bytes())
}

fn instant(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

fn monday_of(day: NaiveDate) -> NaiveDate {
    day - Span::days(day.weekday().num_days_from_monday() as i64)
}

/// A small deterministic generator, so a failing run can be replayed exactly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

struct Movement {
    id: i64,
    kind: &'static str,
    amount: i64,
    refunded: Option<i64>,
}

struct Order {
    institution: &'static str,
    id: i64,
    created: DateTime<Utc>,
    refund: bool,
    performance_id: i64,
    product_code: String,
    movements: Vec<Movement>,
    /// Bodies sent for this order; each later one is its new current state.
    versions: usize,
}

struct Check {
    institution: &'static str,
    id: i64,
    movement_id: i64,
    local_time: NaiveDateTime,
    result: &'static str,
    reason: &'static str,
}

struct Contact {
    institution: &'static str,
    number: String,
    created: DateTime<Utc>,
    /// `(last update, first name)` of each body sent, in sending order.
    versions: Vec<(DateTime<Utc>, String)>,
}

/// Two venues' worth of orders (sales, refunds, orders re-sent), ticket checks (passes,
/// failures, retries, no-shows) and contacts (one sent three times).
struct Venues {
    orders: Vec<Order>,
    checks: Vec<Check>,
    contacts: Vec<Contact>,
}

const VENUES: [(&str, Tz); 2] = [
    ("alpha", chrono_tz::Europe::Zurich),
    ("beta", chrono_tz::America::New_York),
];

fn zone(institution: &str) -> Tz {
    VENUES
        .iter()
        .find(|(code, _)| *code == institution)
        .unwrap()
        .1
}

fn product_name(k: i64) -> String {
    format!("Show {k}")
}

impl Venues {
    fn generate() -> Venues {
        let mut rng = Rng(7);
        let (mut orders, mut checks, mut contacts) = (Vec::new(), Vec::new(), Vec::new());
        let start = Utc.with_ymd_and_hms(2023, 3, 1, 0, 0, 0).unwrap();
        for (v, (institution, _)) in VENUES.iter().enumerate() {
            let v = v as i64;
            let mut check_id = 30_000_000_000 + v * 1_000_000;
            for i in 0..40i64 {
                let k = i % 3;
                let created = start + Span::hours(i * 7) + Span::minutes(rng.below(60) as i64);
                let price = 1000 * (k + 1) + 500 * v;
                let movements: Vec<Movement> = (0..1 + i % 3)
                    .map(|j| Movement {
                        id: 20_000_000_000 + v * 1_000_000 + i * 10 + j,
                        kind: "SALE",
                        amount: price,
                        refunded: None,
                    })
                    .collect();
                let refunded = (i % 5 == 0).then(|| movements[0].id);
                let order_id = 10_000_000_000 + v * 1_000_000 + i;
                for movement in &movements {
                    let is_refunded = Some(movement.id) == refunded;
                    let day = NaiveDate::from_ymd_opt(2023, 3, 20).unwrap() + Span::days(k);
                    let local = day.and_hms_opt(18, rng.below(60) as u32, 0).unwrap()
                        + Span::minutes(rng.below(150) as i64);
                    let mut check = |result, reason, at: NaiveDateTime| {
                        check_id += 1;
                        checks.push(Check {
                            institution,
                            id: check_id,
                            movement_id: movement.id,
                            local_time: at,
                            result,
                            reason,
                        });
                    };
                    if is_refunded {
                        check("FAIL", "TICKET_CANCELLED", local);
                        continue;
                    }
                    match rng.below(10) {
                        0..=5 => check("OK", "NO_FAIL", local),
                        6 => {
                            check("FAIL", "NO_MORE_ENTRY_ALLOWED_TODAY", local);
                            check("OK", "NO_FAIL", local + Span::minutes(3));
                        }
                        7 => {
                            // Scanned twice at the gate: still one ticket checked in.
                            check("OK", "NO_FAIL", local);
                            check("OK", "NO_FAIL", local + Span::minutes(1));
                        }
                        8 => check("FAIL", "WRONG_GATE", local),
                        _ => {} // a no-show
                    }
                }
                orders.push(Order {
                    institution,
                    id: order_id,
                    created,
                    refund: false,
                    performance_id: 5_000_000_000 + v * 100 + k,
                    product_code: format!("P{k}"),
                    movements,
                    versions: if i % 7 == 0 { 2 } else { 1 },
                });
                if let Some(refunded) = refunded {
                    orders.push(Order {
                        institution,
                        id: order_id + 500_000,
                        created: created + Span::hours(30),
                        refund: true,
                        performance_id: 5_000_000_000 + v * 100 + k,
                        product_code: format!("P{k}"),
                        movements: vec![Movement {
                            id: refunded + 5,
                            kind: "REFUND",
                            amount: -price,
                            refunded: Some(refunded),
                        }],
                        versions: 1,
                    });
                }
            }
            for i in 0..12i64 {
                let created =
                    Utc.with_ymd_and_hms(2023, 1, 2, 8, 0, 0).unwrap() + Span::days(i * 3);
                let versions = match i {
                    0 => vec![
                        (created, "First".to_string()),
                        (created + Span::days(10), "Second".to_string()),
                        (created + Span::days(20), "Third".to_string()),
                    ],
                    i if i % 4 == 1 => vec![
                        (created, "Early".to_string()),
                        (created + Span::days(9), "Late".to_string()),
                    ],
                    _ => vec![(created + Span::hours(1), "Only".to_string())],
                };
                contacts.push(Contact {
                    institution,
                    number: format!("C{v}{i:04}"),
                    created,
                    versions,
                });
            }
        }
        Venues {
            orders,
            checks,
            contacts,
        }
    }

    fn order_json(order: &Order, version: usize) -> Value {
        let k = order.product_code[1..].parse::<i64>().unwrap();
        let movements: Vec<Value> = order
            .movements
            .iter()
            .map(|m| {
                let mut movement = json!({"movementId": m.id, "type": m.kind, "amount": m.amount});
                if let Some(refunded) = m.refunded {
                    movement["refundedMovementId"] = json!(refunded);
                }
                movement
            })
            .collect();
        let mut operation = json!({
            "operationId": order.id * 10,
            "kind": "SINGLE_ENTRY",
            "type": if order.refund { "REFUND" } else { "SALE" },
            "productCode": order.product_code,
            "performanceId": order.performance_id,
            "movementDatas": movements,
        });
        if !order.refund {
            // Like S-360's refunds (see the shared sample), a refund carries no names.
            operation["product"] = json!(product_name(k));
            operation["performance"] = json!(product_name(k));
        }
        json!({"orderDetailsData": {
            "orderId": order.id,
            "orderType": if order.refund { "REFUND_CLIENT" } else { "SALE" },
            "orderState": "CLOSED",
            "creationDateTime": order.created.to_rfc3339(),
            "referenceDate": format!("2023-01-0{}T00:00:00+00:00", version + 1),
            "saleAmount": order.movements.iter().map(|m| m.amount).sum::<i64>(),
            "operationDatas": [operation],
        }})
    }

    /// Every body, in the order S-360 would send them: each version after the previous.
    fn bodies(&self) -> Vec<(&'static str, &'static str, Vec<u8>)> {
        let mut bodies = Vec::new();
        for (institution, _) in VENUES {
            let mut push = |stream, records: Vec<Value>| {
                for chunk in records.chunks(50) {
                    bodies.push((stream, institution, serde_json::to_vec(chunk).unwrap()));
                }
            };
            for version in 0..3 {
                let contacts: Vec<Value> = self
                    .contacts
                    .iter()
                    .filter(|c| c.institution == institution && c.versions.len() > version)
                    .map(|c| {
                        let (updated, name) = &c.versions[version];
                        json!({
                            "contactNumber": c.number,
                            "type": "INDIVIDUAL",
                            "creationDate": c.created.to_rfc3339(),
                            "lastUpdateDate": updated.to_rfc3339(),
                            "individualContact": {"firstName": name, "lastName": "Doe"},
                        })
                    })
                    .collect();
                push("contacts", contacts);
                let orders: Vec<Value> = self
                    .orders
                    .iter()
                    .filter(|o| o.institution == institution && o.versions > version)
                    .map(|o| Venues::order_json(o, version))
                    .collect();
                push("orders", orders);
            }
            let checks: Vec<Value> = self
                .checks
                .iter()
                .filter(|c| c.institution == institution)
                .map(|c| {
                    json!({
                        "ticket_check_id": c.id,
                        "movement_id": c.movement_id,
                        "access_time": c.local_time.format("%Y-%m-%d %H:%M:%S").to_string(),
                        "check_flow": "IN",
                        "result": c.result,
                        "failure_reason": c.reason,
                    })
                })
                .collect();
            push("ticketchecks", checks);
        }
        bodies
    }

    fn local_date(institution: &str, at: DateTime<Utc>) -> String {
        at.with_timezone(&zone(institution))
            .date_naive()
            .to_string()
    }

    fn check_utc(check: &Check) -> DateTime<Utc> {
        zone(check.institution)
            .from_local_datetime(&check.local_time)
            .single()
            .expect("no check falls in a DST gap")
            .with_timezone(&Utc)
    }

    fn expected_sales(&self) -> Vec<Value> {
        let mut groups: BTreeMap<(String, String, String), [i64; 5]> = BTreeMap::new();
        let mut names: BTreeMap<(String, String, String), Option<String>> = BTreeMap::new();
        for order in &self.orders {
            let key = (
                order.institution.to_string(),
                Venues::local_date(order.institution, order.created),
                order.product_code.clone(),
            );
            let group = groups.entry(key.clone()).or_default();
            for m in &order.movements {
                match m.kind {
                    "SALE" => {
                        group[0] += 1;
                        group[2] += m.amount;
                    }
                    _ => {
                        group[1] += 1;
                        group[3] -= m.amount;
                    }
                }
                group[4] += m.amount;
            }
            let name =
                (!order.refund).then(|| product_name(order.product_code[1..].parse().unwrap()));
            let known = names.entry(key).or_default();
            *known = known.clone().max(name);
        }
        groups
            .into_iter()
            .map(|((institution, date, code), g)| {
                json!({
                    "institution": institution, "date": date, "product_code": code,
                    "product": names[&(institution.clone(), date.clone(), code.clone())],
                    "tickets_sold": g[0], "tickets_refunded": g[1],
                    "sales_amount": g[2], "refunds_amount": g[3], "net_amount": g[4],
                })
            })
            .collect()
    }

    fn expected_no_shows(&self) -> Vec<Value> {
        let refunded: BTreeSet<i64> = self
            .orders
            .iter()
            .flat_map(|o| o.movements.iter().filter_map(|m| m.refunded))
            .collect();
        let passed: BTreeSet<(&str, i64)> = self
            .checks
            .iter()
            .filter(|c| c.result == "OK")
            .map(|c| (c.institution, c.movement_id))
            .collect();
        let mut per_performance: BTreeMap<(&str, i64), (i64, i64)> = BTreeMap::new();
        for order in self.orders.iter().filter(|o| !o.refund) {
            for m in order.movements.iter().filter(|m| !refunded.contains(&m.id)) {
                let counts = per_performance
                    .entry((order.institution, order.performance_id))
                    .or_default();
                counts.0 += 1;
                counts.1 += passed.contains(&(order.institution, m.id)) as i64;
            }
        }
        per_performance
            .into_iter()
            .map(|((institution, performance_id), (sold, checked))| {
                let k = performance_id % 100;
                let rate = ((1.0 - checked as f64 / sold as f64) * 10_000.0).round() / 10_000.0;
                json!({
                    "institution": institution, "performance_id": performance_id,
                    "performance": product_name(k), "tickets_sold": sold,
                    "tickets_checked_in": checked, "no_show_rate": rate,
                })
            })
            .collect()
    }

    fn expected_gate_failures(&self) -> Vec<Value> {
        let mut groups: BTreeMap<(&str, String, u32, &str), i64> = BTreeMap::new();
        for check in self.checks.iter().filter(|c| c.result != "OK") {
            let date = check.local_time.date().to_string();
            let hour = Venues::check_utc(check).hour();
            *groups
                .entry((check.institution, date, hour, check.reason))
                .or_default() += 1;
        }
        groups
            .into_iter()
            .map(|((institution, date, hour, reason), failures)| {
                json!({
                    "institution": institution, "date": date, "hour_utc": hour,
                    "failure_reason": reason, "failures": failures,
                })
            })
            .collect()
    }

    fn expected_contact_weeks(&self) -> Vec<Value> {
        let mut weeks: BTreeMap<(&str, NaiveDate), (i64, i64)> = BTreeMap::new();
        for contact in &self.contacts {
            let (updated, _) = contact.versions.last().unwrap();
            let created_week = monday_of(contact.created.date_naive());
            weeks
                .entry((contact.institution, created_week))
                .or_default()
                .0 += 1;
            let updated_week = monday_of(updated.date_naive());
            if updated_week > created_week {
                weeks
                    .entry((contact.institution, updated_week))
                    .or_default()
                    .1 += 1;
            }
        }
        weeks
            .into_iter()
            .map(|((institution, week), (created, updated))| {
                json!({
                    "institution": institution, "week": week.to_string(),
                    "new_contacts": created, "updated_contacts": updated,
                })
            })
            .collect()
    }

    /// `(stream, institution) -> (rows, newest record time)`.
    fn expected_freshness(&self) -> BTreeMap<(String, String), (i64, DateTime<Utc>)> {
        let mut fresh: BTreeMap<(String, String), (i64, DateTime<Utc>)> = BTreeMap::new();
        let mut add = |stream: &str, institution: &str, rows: i64, at: DateTime<Utc>| {
            let entry = fresh
                .entry((stream.to_string(), institution.to_string()))
                .or_insert((0, at));
            entry.0 += rows;
            entry.1 = entry.1.max(at);
        };
        for c in &self.contacts {
            for (updated, _) in &c.versions {
                add("contacts", c.institution, 1, *updated);
            }
        }
        for o in &self.orders {
            add("orders", o.institution, o.versions as i64, o.created);
        }
        for c in &self.checks {
            add("ticketchecks", c.institution, 1, Venues::check_utc(c));
        }
        fresh
    }
}

/// A lake with both venues' data, compacted, and a server over it.
async fn venues_lake(backend: Backend, extra: &str) -> (Workspace, Server, Venues) {
    let workspace = Workspace::on(backend, &config(extra), &[]);
    let server = workspace.serve();
    let venues = Venues::generate();
    for (stream, institution, body) in venues.bodies() {
        post(&server, stream, institution, body).await;
    }
    compact(&workspace, "compact");
    (workspace, server, venues)
}

fn keep_only(rows: Vec<Value>, institution: &str) -> Vec<Value> {
    rows.into_iter()
        .filter(|row| row["institution"] == institution)
        .collect()
}

fn as_values(rows: Vec<Row>) -> Vec<Value> {
    rows.into_iter().map(Value::Object).collect()
}

async fn saved_queries_give_what_the_records_say(backend: Backend) {
    let (workspace, server, venues) = venues_lake(backend, "").await;
    let run = |name: &str| -> Vec<Value> {
        as_values(cli_rows(
            &workspace,
            &["-f", saved_query(name).to_str().unwrap()],
        ))
    };

    assert_eq!(run("sales_by_day_and_product"), venues.expected_sales());
    let no_shows = run("no_show_rate");
    assert_eq!(no_shows, venues.expected_no_shows());
    // The join really matched: some, but not all, sold tickets were checked in.
    let checked: i64 = no_shows
        .iter()
        .map(|r| r["tickets_checked_in"].as_i64().unwrap())
        .sum();
    let sold: i64 = no_shows
        .iter()
        .map(|r| r["tickets_sold"].as_i64().unwrap())
        .sum();
    assert!(
        checked > 0 && checked < sold,
        "{checked} of {sold} checked in"
    );
    assert_eq!(run("gate_failures"), venues.expected_gate_failures());
    assert_eq!(run("contacts_by_week"), venues.expected_contact_weeks());

    let freshness = run("freshness");
    let expected = venues.expected_freshness();
    assert_eq!(freshness.len(), expected.len());
    for row in &freshness {
        let key = (
            row["stream"].as_str().unwrap().to_string(),
            row["institution"].as_str().unwrap().to_string(),
        );
        let (rows, newest) = expected[&key];
        assert_eq!(row["row_count"], json!(rows), "{key:?}");
        assert_eq!(
            instant(row["newest_record_time"].as_str().unwrap()),
            newest,
            "{key:?}"
        );
        let received = instant(row["newest_received_at"].as_str().unwrap());
        assert!(
            (Utc::now() - received).num_minutes() < 10,
            "{key:?} received {received}"
        );
    }

    // A filter on a partition column leaves the other partitions' files out of the plan.
    let plan = cli_rows(
        &workspace,
        &[
            "EXPLAIN SELECT count(*) FROM ticket_checks WHERE date = DATE '2023-03-21' AND institution = 'beta'",
        ],
    );
    let plan = serde_json::to_string(&plan).unwrap();
    assert!(plan.contains("institution=beta/date=2023-03-21/"), "{plan}");
    assert!(
        !plan.contains("date=2023-03-20") && !plan.contains("institution=alpha"),
        "{plan}"
    );

    // The same text over HTTP gives the same rows as the command line.
    let text = std::fs::read_to_string(saved_query("no_show_rate")).unwrap();
    assert_eq!(
        as_values(http_rows(&server, SQL_TOKEN, &text).await),
        no_shows
    );

    // The contact sent three times is there three times, and once in its current state.
    let versions = cli_rows(
        &workspace,
        &["SELECT first_name FROM contacts WHERE contact_number = 'C00000' ORDER BY _received_at"],
    );
    let names: Vec<&Value> = versions.iter().map(|r| &r["first_name"]).collect();
    assert_eq!(names, [&json!("First"), &json!("Second"), &json!("Third")]);
    let current = cli_rows(
        &workspace,
        &[
            "SELECT first_name, last_update_date FROM contacts_current WHERE contact_number = 'C00000'",
        ],
    );
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["first_name"], "Third");
    let twice = cli_rows(
        &workspace,
        &["SELECT count(*) AS n, count(DISTINCT contact_number) AS d FROM contacts_current"],
    );
    assert_eq!(twice[0]["n"], json!(venues.contacts.len()));
    assert_eq!(twice[0]["d"], json!(venues.contacts.len()));
    // An order sent twice: two rows in orders, one in orders_current, the second version.
    let order = venues.orders.iter().find(|o| o.versions == 2).unwrap();
    let versions = cli_rows(
        &workspace,
        &[&format!(
            "SELECT count(*) AS n FROM orders WHERE order_id = {}",
            order.id
        )],
    );
    assert_eq!(versions[0]["n"], 2);
    let current = cli_rows(
        &workspace,
        &[&format!(
            "SELECT reference_date FROM orders_current WHERE order_id = {}",
            order.id
        )],
    );
    assert_eq!(current.len(), 1);
    assert_eq!(
        instant(current[0]["reference_date"].as_str().unwrap()),
        instant("2023-01-02T00:00:00+00:00")
    );
}

async fn the_shared_samples_answer_the_saved_queries(backend: Backend) {
    let workspace = Workspace::on(
        backend,
        "[institutions.myvenue]\ntimezone = \"Europe/Zurich\"\nauth = \"none\"\n",
        &[],
    );
    let server = workspace.serve();
    post_samples(&server, "myvenue").await;
    compact(&workspace, "compact");
    let run = |name: &str| {
        as_values(cli_rows(
            &workspace,
            &["-f", saved_query(name).to_str().unwrap()],
        ))
    };

    // Order 10000702652 (2023-02-01, 11:09 in Zurich) sells two ASTDN tickets at 20000;
    // order 10000702653 (2023-02-03) refunds one of them.
    assert_eq!(
        run("sales_by_day_and_product"),
        vec![
            json!({"institution": "myvenue", "date": "2023-02-01", "product_code": "ASTDN",
                   "product": "Arena Suite Dining", "tickets_sold": 2, "tickets_refunded": 0,
                   "sales_amount": 40000, "refunds_amount": 0, "net_amount": 40000}),
            json!({"institution": "myvenue", "date": "2023-02-03", "product_code": "ASTDN",
                   "product": null, "tickets_sold": 0, "tickets_refunded": 1,
                   "sales_amount": 0, "refunds_amount": 20000, "net_amount": -20000}),
        ]
    );
    // Movement ...195 is refunded, so one ticket (...196) is sold; it passed the gate.
    assert_eq!(
        run("no_show_rate"),
        vec![
            json!({"institution": "myvenue", "performance_id": 10228231109243_i64,
                    "performance": "Arena Suite Dining", "tickets_sold": 1,
                    "tickets_checked_in": 1, "no_show_rate": 0.0})
        ]
    );
    // The failed check was at 18:25:02 in Zurich on 2023-02-09: 17:25 UTC.
    assert_eq!(
        run("gate_failures"),
        vec![
            json!({"institution": "myvenue", "date": "2023-02-09", "hour_utc": 17,
                    "failure_reason": "NO_MORE_ENTRY_ALLOWED_TODAY", "failures": 1})
        ]
    );
    // 3346662: created Tue 2022-11-01, updated Wed 2023-02-08; 3346700: created and last
    // updated Tue 2023-01-10.
    assert_eq!(
        run("contacts_by_week"),
        vec![
            json!({"institution": "myvenue", "week": "2022-10-31", "new_contacts": 1, "updated_contacts": 0}),
            json!({"institution": "myvenue", "week": "2023-01-09", "new_contacts": 1, "updated_contacts": 0}),
            json!({"institution": "myvenue", "week": "2023-02-06", "new_contacts": 0, "updated_contacts": 1}),
        ]
    );
    let freshness = run("freshness");
    let newest: Vec<(&str, i64, DateTime<Utc>)> = freshness
        .iter()
        .map(|r| {
            (
                r["stream"].as_str().unwrap(),
                r["row_count"].as_i64().unwrap(),
                instant(r["newest_record_time"].as_str().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        newest,
        [
            ("contacts", 2, instant("2023-02-08T09:14:00Z")),
            ("orders", 2, instant("2023-02-03T14:00:00Z")),
            ("ticketchecks", 2, instant("2023-02-09T17:25:10Z")),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_carrying_a_key_twice_counts_its_later_record_once() {
    let workspace = Workspace::new(&config(""));
    let server = workspace.serve();
    let contacts = json!([
        {"contactNumber": "C1", "individualContact": {"firstName": "First"}},
        {"contactNumber": "C1", "individualContact": {"firstName": "Second"}},
    ]);
    post(
        &server,
        "contacts",
        "alpha",
        contacts.to_string().into_bytes(),
    )
    .await;
    // The same order twice in one body, its amount corrected in the second record.
    let orders: Value = serde_json::from_slice(&common::sample("orders.json")).unwrap();
    let mut corrected = orders[0].clone();
    corrected["orderDetailsData"]["saleAmount"] = json!(39000);
    let body = Value::Array(vec![orders[0].clone(), corrected]);
    post(&server, "orders", "alpha", body.to_string().into_bytes()).await;
    compact(&workspace, "compact");
    let column = |sql: &str| -> Vec<Value> {
        cli_rows(&workspace, &[sql])
            .into_iter()
            .map(|row| row.into_iter().next().unwrap().1)
            .collect()
    };
    assert_eq!(column("SELECT count(*) FROM contacts"), [json!(2)]);
    assert_eq!(
        column("SELECT first_name FROM contacts_current"),
        [json!("Second")]
    );
    assert_eq!(
        column("SELECT sale_amount FROM orders_current"),
        [json!(39000)]
    );
    // Its two SALE movements of 20000 count once, not once per copy.
    let sales = as_values(cli_rows(
        &workspace,
        &[
            "-f",
            saved_query("sales_by_day_and_product").to_str().unwrap(),
        ],
    ));
    assert_eq!(sales.len(), 1);
    assert_eq!(sales[0]["tickets_sold"], json!(2));
    assert_eq!(sales[0]["sales_amount"], json!(40000));
}

async fn a_scoped_token_sees_only_its_institutions_whatever_the_sql(backend: Backend) {
    let (workspace, server, venues) = venues_lake(backend, "").await;
    let alpha_checks = venues
        .checks
        .iter()
        .filter(|c| c.institution == "alpha")
        .count();

    for probe in common::SCOPE_PROBES {
        for row in http_rows(&server, ALPHA_TOKEN, probe).await {
            assert_eq!(row["institution"], "alpha", "{probe} showed {row:?}");
        }
    }
    // Nor can a file be named directly: the session knows no table but the lake's.
    let by_path = common::beta_file_query(&workspace);
    let (status, body) = http_sql(&server, ALPHA_TOKEN, &by_path, "application/json").await;
    assert_eq!(status, 400, "{body}");
    let count = "SELECT count(*) AS n FROM ticket_checks";
    assert_eq!(
        http_rows(&server, ALPHA_TOKEN, count).await[0]["n"],
        json!(alpha_checks)
    );
    assert_eq!(
        http_rows(&server, SQL_TOKEN, count).await[0]["n"],
        json!(venues.checks.len())
    );
    // The plan names only the files the token may read.
    let (status, plan) = http_sql(
        &server,
        ALPHA_TOKEN,
        "EXPLAIN SELECT * FROM ticket_checks",
        "application/json",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        plan.contains("institution=alpha") && !plan.contains("institution=beta"),
        "{plan}"
    );
    // Saved queries with the scoped token give exactly the alpha part of the full answer.
    for name in [
        "sales_by_day_and_product",
        "no_show_rate",
        "gate_failures",
        "contacts_by_week",
    ] {
        let text = std::fs::read_to_string(saved_query(name)).unwrap();
        let scoped = as_values(http_rows(&server, ALPHA_TOKEN, &text).await);
        let full = as_values(http_rows(&server, SQL_TOKEN, &text).await);
        assert!(full.iter().any(|r| r["institution"] == "beta"), "{name}");
        assert_eq!(scoped, keep_only(full, "alpha"), "{name}");
    }

    // No token, a wrong one, another scheme: 401 with a challenge.
    for authorization in [
        None,
        Some("Bearer nope"),
        Some(&format!("Basic {ALPHA_TOKEN}") as &str),
    ] {
        let mut request = reqwest::Client::new()
            .post(server.url("/sql"))
            .body("SELECT 1");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{authorization:?}");
        assert!(response.headers().contains_key("www-authenticate"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_reads_run_and_bad_queries_are_explained() {
    let (workspace, server, venues) = venues_lake(Backend::Local, "").await;
    let writes = [
        "CREATE TABLE copy AS SELECT * FROM ticket_checks",
        "CREATE VIEW mine AS SELECT 1",
        "CREATE EXTERNAL TABLE secrets STORED AS CSV LOCATION '/etc/passwd'",
        "INSERT INTO ticket_checks SELECT * FROM ticket_checks",
        "DELETE FROM ticket_checks",
        "DROP VIEW contacts_current",
        "COPY (SELECT 1) TO '/tmp/datx-should-not-exist.csv'",
        "SET datafusion.execution.batch_size = 1",
    ];
    for write in writes {
        let (status, body) = http_sql(&server, SQL_TOKEN, write, "application/json").await;
        assert_eq!(status, 403, "{write}: {body}");
        assert!(body.contains("only queries that read"), "{write}: {body}");
        let output = workspace.run(&["sql", write]);
        assert_eq!(output.status.code(), Some(1), "{write}");
    }
    assert!(!std::path::Path::new("/tmp/datx-should-not-exist.csv").exists());
    // The view is still there for the next query.
    let rows = http_rows(
        &server,
        SQL_TOKEN,
        "SELECT count(*) AS n FROM contacts_current",
    )
    .await;
    assert_eq!(rows[0]["n"], json!(venues.contacts.len()));

    // A bad query: 400 (HTTP) or exit 1 (command line), with DataFusion's message.
    let (status, body) = http_sql(
        &server,
        SQL_TOKEN,
        "SELECT nope FROM ticket_checks",
        "application/json",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("nope"), "{body}");
    let output = workspace.run(&["sql", "SELEKT 1"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("SELEKT"));
    let (status, body) =
        http_sql(&server, SQL_TOKEN, "SELECT 1; SELECT 2", "application/json").await;
    assert_eq!(
        (status, body.contains("exactly one")),
        (400, true),
        "{body}"
    );

    // CSV on request, with its header.
    let query = "SELECT institution, count(*) AS n FROM ticket_checks GROUP BY institution ORDER BY institution";
    let (status, csv) = http_sql(&server, SQL_TOKEN, query, "text/csv").await;
    assert_eq!(status, 200);
    let per_venue = |code| {
        venues
            .checks
            .iter()
            .filter(|c| c.institution == code)
            .count()
    };
    assert_eq!(
        csv,
        format!(
            "institution,n\nalpha,{}\nbeta,{}\n",
            per_venue("alpha"),
            per_venue("beta")
        )
    );
    let output = workspace.run(&["sql", "--format", "csv", query]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), csv);
    // The table format aligns its columns; standard input may hold several statements.
    let table = String::from_utf8(workspace.run(&["sql", query]).stdout).unwrap();
    let widths: BTreeSet<usize> = table.lines().map(|l| l.chars().count()).collect();
    assert_eq!(widths.len(), 1, "{table}");
    let cells: Vec<Vec<&str>> = table
        .lines()
        .filter(|line| line.starts_with('|'))
        .map(|line| {
            line.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    let alpha = per_venue("alpha").to_string();
    let beta = per_venue("beta").to_string();
    assert_eq!(
        cells,
        [
            vec!["institution", "n"],
            vec!["alpha", &alpha],
            vec!["beta", &beta]
        ]
    );
    let output = std::process::Command::new(common::BIN)
        .args(["sql", "--format", "csv"])
        .current_dir(workspace.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"SELECT 1 AS one;\nSELECT 'two' AS two;\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "one\n1\ntwo\ntwo\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_past_their_limits_are_cancelled_and_the_server_carries_on() {
    let workspace = Workspace::new(&config(
        "timeout = \"300ms\"\nmemory_limit = \"8MiB\"\nmax_rows = 1000",
    ));
    let server = workspace.serve();

    // Summing 10^12 rows would take hours; a hash table of 3 million rows does not fit in
    // 8 MiB; 5,000 rows are more than max_rows.
    let past_limits = [
        ("SELECT sum(value) FROM range(1000000000000)", "time limit"),
        (
            "SELECT count(*) FROM range(3000000) a JOIN range(3000000) b ON a.value = b.value",
            "memory",
        ),
        ("SELECT * FROM range(5000)", "max_rows"),
    ];
    for (statement, limit) in past_limits {
        let (status, body) = http_sql(&server, SQL_TOKEN, statement, "application/json").await;
        assert_eq!(status, 422, "{statement}: {body}");
        assert!(body.contains(limit), "{statement}: {body}");
    }
    let output = workspace.run(&["sql", past_limits[0].0]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("time limit"));

    // The server still answers, queries and receives.
    let rows = http_rows(
        &server,
        SQL_TOKEN,
        "SELECT sum(value) AS s FROM range(1001)",
    )
    .await;
    assert_eq!(rows[0]["s"], 500500);
    post(
        &server,
        "ticketchecks",
        "alpha",
        common::ticket_checks(3, 1),
    )
    .await;
}

/// Counts of ticket checks as a query sees them: rows, and distinct ids.
async fn check_counts(server: &Server) -> (i64, i64) {
    let statement = "SELECT count(*) AS n, count(DISTINCT ticket_check_id) AS d FROM ticket_checks";
    let row = &http_rows(server, SQL_TOKEN, statement).await[0];
    (row["n"].as_i64().unwrap(), row["d"].as_i64().unwrap())
}

async fn check_counts_or_log(server: &Server) -> (i64, i64) {
    let statement = "SELECT count(*) AS n, count(DISTINCT ticket_check_id) AS d FROM ticket_checks";
    let (status, body) = http_sql(server, SQL_TOKEN, statement, "application/json").await;
    assert_eq!(status, 200, "{body}\n{}", server.log());
    let row = &json_rows(body.as_bytes())[0];
    (row["n"].as_i64().unwrap(), row["d"].as_i64().unwrap())
}

async fn queries_see_each_commit_and_stay_exact_while_files_merge(backend: Backend) {
    // Compaction in the server every 20 ms, merging a partition's files as soon as it is
    // quiet: files are retired under running queries all the time.
    let quick_passes = format!(
        "compact_every = \"20ms\"\nmerge_after = \"0s\"\n{}",
        config("")
    );
    let workspace = Workspace::on(backend, &quick_passes, &[]);
    let server = workspace.serve();

    const BODIES: i64 = 60;
    const PER_BODY: i64 = 20;
    let poster = {
        let address = server.address.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for body in 0..BODIES {
                let response = client
                    .post(format!("http://{address}/s360/ticketchecks/alpha"))
                    .body(common::ticket_checks(
                        PER_BODY as usize,
                        1 + body * PER_BODY,
                    ))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                // Spread over several passes, which are slower on S3, so that files are
                // merged under the queries many times.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let mut seen = 0;
    let mut queries = 0;
    for _ in 0..2_000 {
        let (rows, distinct) = check_counts_or_log(&server).await;
        queries += 1;
        assert_eq!(rows, distinct, "a query saw a ticket check twice");
        assert_eq!(rows % PER_BODY, 0, "a query saw part of a body");
        assert!(
            rows >= seen,
            "a query saw fewer rows ({rows}) than an earlier one ({seen})"
        );
        seen = rows;
        if rows == BODIES * PER_BODY {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    poster.await.unwrap();
    assert_eq!(seen, BODIES * PER_BODY, "after {queries} queries");
    // Commits are `*.json` once complete (a pass may be writing the next one right now).
    let merges = common::walk(&workspace.lake().join("_datx/commits"))
        .iter()
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .filter(|path| {
            let commit: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            commit["removed"].as_array().is_some_and(|r| !r.is_empty())
        })
        .count();
    assert!(
        merges > 3,
        "only {merges} merging commits during {queries} queries"
    );
    drop(server);

    // A query right after `datx compact` sees the rows it added.
    let workspace = Workspace::on(backend, &config(""), &[]);
    let server = workspace.serve();
    for round in 0..3 {
        post(
            &server,
            "ticketchecks",
            "alpha",
            common::ticket_checks(10, 1 + round * 10),
        )
        .await;
        compact(&workspace, "compact");
        assert_eq!(
            check_counts(&server).await,
            (10 * (round + 1), 10 * (round + 1))
        );
    }
}

async fn a_key_twice_in_one_body_is_still_one_current_row(backend: Backend) {
    let workspace = Workspace::on(backend, &config(""), &[]);
    let server = workspace.serve();
    let contact = |name: &str| json!({"contactNumber": "TWICE", "firstName": name, "individualContact": {"firstName": name}});
    let body = serde_json::to_vec(&[contact("One"), contact("Two")]).unwrap();
    post(&server, "contacts", "alpha", body).await;
    post(
        &server,
        "contacts",
        "beta",
        serde_json::to_vec(&[contact("Beta")]).unwrap(),
    )
    .await;
    compact(&workspace, "compact");
    let rows = cli_rows(
        &workspace,
        &["SELECT institution, first_name FROM contacts_current ORDER BY institution"],
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["institution"], "alpha");
    assert!(rows[0]["first_name"] == "One" || rows[0]["first_name"] == "Two");
    assert_eq!(
        (&rows[1]["institution"], &rows[1]["first_name"]),
        (&json!("beta"), &json!("Beta"))
    );
    let all = cli_rows(&workspace, &["SELECT count(*) AS n FROM contacts"]);
    assert_eq!(all[0]["n"], 3);
}

on_both_backends!(
    saved_queries_give_what_the_records_say,
    the_shared_samples_answer_the_saved_queries,
    a_scoped_token_sees_only_its_institutions_whatever_the_sql,
    queries_see_each_commit_and_stay_exact_while_files_merge,
    a_key_twice_in_one_body_is_still_one_current_row,
);
