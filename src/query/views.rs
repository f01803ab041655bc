//! The views every session has, in SQL that DataFusion and DuckDB both read (the benchmark
//! defines them in DuckDB from this same text).

/// `(name, definition)` of each view: the current state of a contact or an order.
pub fn views() -> [(&'static str, String); 2] {
    [
        (
            "contacts_current",
            latest_body_per("contacts", "contact_number"),
        ),
        ("orders_current", latest_body_per("orders", "order_id")),
    ]
}

/// The rows of `table` from the latest body received per `key` and institution. S-360
/// sends no version number, so "latest" is the receive time, with the event id (a UUIDv7,
/// ordered by time) settling bodies received in the same microsecond.
fn latest_body_per(table: &str, key: &str) -> String {
    format!(
        "SELECT * EXCLUDE (_version) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY institution, {key}
                ORDER BY _received_at DESC, _event_id DESC) AS _version
            FROM {table})
        WHERE _version = 1"
    )
}
