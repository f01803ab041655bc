//! What datx exports to Prometheus, named in one place.
//!
//! Owns the metric names, their help texts and the recorder. Labels are bounded: a stream
//! or institution that is not configured is counted as "unknown", so a scanner hitting
//! random URLs cannot grow the series without limit. It must never decide anything, and takes
//! plain values: it imports nothing of the crate, so every module can report to it.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const REQUESTS: &str = "datx_requests_total";
const RECORDS: &str = "datx_records_total";
const DUPLICATES: &str = "datx_duplicates_total";
const BODY_BYTES: &str = "datx_body_bytes_total";
const APPEND_SECONDS: &str = "datx_append_seconds";
const COMPACTION_LAG: &str = "datx_compaction_lag_seconds";
const COMPACTED_ROWS: &str = "datx_compacted_rows_total";
const COMPACTION_FAILING_SINCE: &str = "datx_compaction_failing_since_seconds";
const COMPACTION_FAILED_PASSES: &str = "datx_compaction_failed_passes";
const SQL_QUERIES: &str = "datx_sql_queries_total";
const SQL_SECONDS: &str = "datx_sql_seconds";
const LAST_BODY_AGE: &str = "datx_last_body_age_seconds";
const STREAM_STATE: &str = "datx_stream_state";
const OLDEST_PENDING_AGE: &str = "datx_oldest_pending_event_age_seconds";
const POSTGRES_QUERIES: &str = "datx_postgres_queries_total";
const POSTGRES_SECONDS: &str = "datx_postgres_seconds";
const POSTGRES_SESSIONS: &str = "datx_postgres_sessions";
const POSTGRES_SIGN_INS_REFUSED: &str = "datx_postgres_sign_ins_refused_total";
const LAKE_PROBES: &str = "datx_lake_probes_total";
const CLOCK_REFUSALS: &str = "datx_clock_refusals_total";

/// Durable appends take from a fraction of a millisecond (local SSD) to a few hundred
/// milliseconds (a slow S3 endpoint).
const APPEND_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The label used for a stream or institution that is not configured.
pub const UNKNOWN: &str = "unknown";

/// Installs the process-wide recorder once and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(APPEND_SECONDS.into()), APPEND_BUCKETS)
                .expect("the bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe_counter!(
                REQUESTS,
                "S-360 requests by stream, institution and HTTP code"
            );
            describe_counter!(RECORDS, "Records in accepted bodies (duplicates excluded)");
            describe_counter!(DUPLICATES, "Bodies received again and recognised as stored");
            describe_counter!(BODY_BYTES, "Bytes of accepted bodies (duplicates excluded)");
            describe_histogram!(
                APPEND_SECONDS,
                "Time to make one body durable in the event log"
            );
            describe_gauge!(
                COMPACTION_LAG,
                "How long the oldest event of the last compaction pass waited to reach the tables"
            );
            describe_counter!(
                COMPACTED_ROWS,
                "Rows added to the tables by compaction, by table"
            );
            describe_gauge!(
                COMPACTION_FAILING_SINCE,
                "Unix time of the first failed compaction pass in the current run of failures; 0 while compaction succeeds"
            );
            describe_gauge!(
                COMPACTION_FAILED_PASSES,
                "Compaction passes failed in a row; 0 while compaction succeeds"
            );
            describe_counter!(SQL_QUERIES, "POST /sql requests by token and HTTP code");
            describe_histogram!(SQL_SECONDS, "Time to answer POST /sql, by token");
            describe_gauge!(
                LAST_BODY_AGE,
                "Seconds since the stream of the institution last had a body accepted (absent until one is, in the last 2 days)"
            );
            describe_gauge!(
                STREAM_STATE,
                "0 ok, 1 late (no body for 2 x expect_every), 2 silent (3 x), -1 not watched (expect_every = off)"
            );
            describe_gauge!(
                OLDEST_PENDING_AGE,
                "Seconds the oldest event of the stream not yet in a commit has waited; 0 when none waits"
            );
            describe_counter!(
                POSTGRES_QUERIES,
                "Queries from PostgreSQL clients by token and SQLSTATE (00000 when answered)"
            );
            describe_histogram!(
                POSTGRES_SECONDS,
                "Time to run a PostgreSQL client's query, by token"
            );
            describe_gauge!(POSTGRES_SESSIONS, "PostgreSQL sessions open now");
            describe_counter!(
                POSTGRES_SIGN_INS_REFUSED,
                "PostgreSQL sign-ins refused (wrong user or password)"
            );
            describe_counter!(
                LAKE_PROBES,
                "Probe objects written to the lake for /healthz and the clock check, by outcome"
            );
            describe_counter!(
                CLOCK_REFUSALS,
                "Pushes refused because this process's clock disagrees with the lake's or says a sealed day"
            );
            handle
        })
        .clone()
}

pub fn request(stream: &str, institution: &str, code: u16) {
    counter!(
        REQUESTS,
        "stream" => stream.to_string(),
        "institution" => institution.to_string(),
        "code" => code.to_string()
    )
    .increment(1);
}

pub fn accepted(stream: &str, institution: &str, records: usize, bytes: usize, duplicate: bool) {
    let labels = [
        ("stream", stream.to_string()),
        ("institution", institution.to_string()),
    ];
    if duplicate {
        counter!(DUPLICATES, &labels).increment(1);
    } else {
        counter!(RECORDS, &labels).increment(records as u64);
        counter!(BODY_BYTES, &labels).increment(bytes as u64);
    }
}

/// A pass's lag and the rows it wrote, by table.
pub fn compaction(lag_seconds: Option<f64>, rows: impl IntoIterator<Item = (&'static str, u64)>) {
    gauge!(COMPACTION_LAG).set(lag_seconds.unwrap_or(0.0));
    for (table, rows) in rows {
        counter!(COMPACTED_ROWS, "table" => table).increment(rows);
    }
}

/// `since` is when compaction started failing, `None` once a pass succeeds.
pub fn compaction_failing(since: Option<chrono::DateTime<chrono::Utc>>, passes: u32) {
    gauge!(COMPACTION_FAILING_SINCE).set(since.map_or(0.0, |at| at.timestamp() as f64));
    gauge!(COMPACTION_FAILED_PASSES).set(f64::from(passes));
}

pub fn append_latency(elapsed: Duration) {
    histogram!(APPEND_SECONDS).record(elapsed.as_secs_f64());
}

/// `token` is a name from the configuration, so the label set stays bounded.
pub fn sql_query(token: &str, code: u16, elapsed: Duration) {
    counter!(SQL_QUERIES, "token" => token.to_string(), "code" => code.to_string()).increment(1);
    histogram!(SQL_SECONDS, "token" => token.to_string()).record(elapsed.as_secs_f64());
}

pub fn postgres_query(token: &str, sqlstate: &str, elapsed: Duration) {
    counter!(POSTGRES_QUERIES, "token" => token.to_string(), "sqlstate" => sqlstate.to_string())
        .increment(1);
    histogram!(POSTGRES_SECONDS, "token" => token.to_string()).record(elapsed.as_secs_f64());
}

/// A PostgreSQL session opened (`1.0`) or closed (`-1.0`).
pub fn postgres_sessions(change: f64) {
    gauge!(POSTGRES_SESSIONS).increment(change);
}

pub fn postgres_sign_in_refused() {
    counter!(POSTGRES_SIGN_INS_REFUSED).increment(1);
}

/// One stream's freshness and lag, as of the scrape: its state as a gauge value, the age
/// of its last body and of its oldest event not yet in the tables, in seconds.
pub fn source_status(
    stream: &str,
    institution: &str,
    state: f64,
    last_body_age: Option<f64>,
    oldest_pending_age: Option<f64>,
) {
    let labels = [
        ("stream", stream.to_string()),
        ("institution", institution.to_string()),
    ];
    gauge!(STREAM_STATE, &labels).set(state);
    if let Some(age) = last_body_age {
        gauge!(LAST_BODY_AGE, &labels).set(age);
    }
    gauge!(OLDEST_PENDING_AGE, &labels).set(oldest_pending_age.unwrap_or(0.0));
}

pub fn lake_probe(succeeded: bool) {
    let outcome = if succeeded { "ok" } else { "failed" };
    counter!(LAKE_PROBES, "outcome" => outcome).increment(1);
}

pub fn clock_refusal() {
    counter!(CLOCK_REFUSALS).increment(1);
}
