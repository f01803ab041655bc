//! The views every session has, in SQL that DataFusion and DuckDB both read (the benchmark
//! defines them in DuckDB from this same text).

/// `(name, definition)`: the current state of a contact or an order is the latest body
/// received for it. S-360 sends no version number, so "latest" is the receive time, with the
/// event id (a UUIDv7, ordered by time) settling bodies received in the same microsecond.
pub const VIEWS: [(&str, &str); 2] = [
    (
        "contacts_current",
        "SELECT * EXCLUDE (_version) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY institution, contact_number
                ORDER BY _received_at DESC, _event_id DESC) AS _version
            FROM contacts)
        WHERE _version = 1",
    ),
    (
        "orders_current",
        "SELECT * EXCLUDE (_version) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY institution, order_id
                ORDER BY _received_at DESC, _event_id DESC) AS _version
            FROM orders)
        WHERE _version = 1",
    ),
];
