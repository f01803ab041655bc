//! The lake's tables: each table's columns, its partition date, and how an S-360 record
//! becomes rows.
//!
//! Owns the mapping from JSON to typed cells, declared as data (one `Column` list per
//! table) so that adding a field is one line. A record that does not fit becomes a reject
//! with the reason; it is never dropped and never half-converted. This module must never
//! read or write storage.

mod builder;
mod json;
mod timestamps;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::NaiveDate;
use chrono_tz::Tz;
use serde_json::value::RawValue;

use json::Object;

pub use builder::TableBuilder;
pub use timestamps::{TimeError, local_date, parse_date, parse_instant};

use crate::stream::Stream;

/// A table of the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Contacts,
    Orders,
    OrderMovements,
    TicketChecks,
    Rejects,
}

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Contacts,
        Table::Orders,
        Table::OrderMovements,
        Table::TicketChecks,
        Table::Rejects,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Contacts => "contacts",
            Table::Orders => "orders",
            Table::OrderMovements => "order_movements",
            Table::TicketChecks => "ticket_checks",
            Table::Rejects => "rejects",
        }
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn columns(self) -> &'static [Column] {
        match self {
            Table::Contacts => CONTACTS,
            Table::Orders => ORDERS,
            Table::OrderMovements => ORDER_MOVEMENTS,
            Table::TicketChecks => TICKET_CHECKS,
            Table::Rejects => REJECTS,
        }
    }

    /// The Arrow schema of the files: the declared columns, then `_event_id`, `_position`
    /// (the record's place in its body), `_received_at` and `_raw`. The partition columns `institution` and `date` live only
    /// in the path.
    pub fn schema(self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .columns()
            .iter()
            .map(|c| Field::new(c.name, c.kind.data_type(), true))
            .collect();
        fields.push(Field::new(EVENT_ID, DataType::Utf8, false));
        // Nullable: files written before it existed read it as null.
        fields.push(Field::new(POSITION, DataType::Int64, true));
        fields.push(Field::new(RECEIVED_AT, Kind::Instant.data_type(), false));
        fields.push(Field::new(RAW, DataType::Utf8, false));
        Arc::new(Schema::new(fields))
    }

    /// The column that names one row, where the table has one that must be unique.
    pub fn unique_key(self) -> Option<&'static str> {
        match self {
            Table::TicketChecks => Some("ticket_check_id"),
            _ => None,
        }
    }
}

pub const EVENT_ID: &str = "_event_id";
/// Orders the records of one body: where a body carries a key twice, the later one is the
/// current one.
pub const POSITION: &str = "_position";
pub const RECEIVED_AT: &str = "_received_at";
pub const RAW: &str = "_raw";

/// A column's type in the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Ids and amounts in minor units: JSON integers only.
    Int64,
    Text,
    Bool,
    /// An instant, stored as microseconds since the epoch, UTC.
    Instant,
    /// A calendar date such as a birth date.
    Date,
}

impl Kind {
    pub fn data_type(self) -> DataType {
        match self {
            Kind::Int64 => DataType::Int64,
            Kind::Text => DataType::Utf8,
            Kind::Bool => DataType::Boolean,
            Kind::Instant => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Date => DataType::Date32,
        }
    }
}

/// Which object of a record a column reads from: the record itself, or (for movements)
/// the operation or the movement inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Record,
    Operation,
    Movement,
}

#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    pub scope: Scope,
    /// Keys from the scope's object down to the value.
    pub path: &'static [&'static str],
    pub kind: Kind,
    /// A row without this value is rejected: natural keys and partition dates.
    pub required: bool,
}

const fn col(name: &'static str, path: &'static [&'static str], kind: Kind) -> Column {
    Column {
        name,
        scope: Scope::Record,
        path,
        kind,
        required: false,
    }
}

const fn key(name: &'static str, path: &'static [&'static str], kind: Kind) -> Column {
    Column {
        required: true,
        ..col(name, path, kind)
    }
}

const fn in_scope(scope: Scope, column: Column) -> Column {
    Column { scope, ..column }
}

use Kind::{Bool, Date, Instant, Int64, Text};
use Scope::{Movement, Operation};

const CONTACTS: &[Column] = &[
    key("contact_number", &["contactNumber"], Text),
    col("contact_id", &["contactId"], Int64),
    col("type", &["type"], Text),
    col("role", &["role"], Text),
    col("creation_date", &["creationDate"], Instant),
    col("last_update_date", &["lastUpdateDate"], Instant),
    col("title", &["individualContact", "title"], Text),
    col("first_name", &["individualContact", "firstName"], Text),
    col("last_name", &["individualContact", "lastName"], Text),
    col("birth_date", &["individualContact", "birthDate"], Date),
    col(
        "language_code",
        &["individualContact", "languageCode"],
        Text,
    ),
    col("email", &["individualContact", "email"], Text),
    col(
        "cell_phone_number",
        &["individualContact", "cellPhoneNumber"],
        Text,
    ),
    col("structure_name", &["structureContact", "name"], Text),
    col(
        "structure_vat_number",
        &["structureContact", "vatNumber"],
        Text,
    ),
    col("structure_email", &["structureContact", "email"], Text),
    col("has_warning", &["hasWarning"], Bool),
];

const ORDERS: &[Column] = &[
    key("order_id", &["orderId"], Int64),
    col("order_type", &["orderType"], Text),
    col("order_state", &["orderState"], Text),
    key("creation_date_time", &["creationDateTime"], Instant),
    col("reference_date", &["referenceDate"], Instant),
    col("expiration_date", &["expirationDate"], Instant),
    col("sale_amount", &["saleAmount"], Int64),
    col("pre_sale_amount", &["preSaleAmount"], Int64),
    col("reservation_amount", &["reservationAmount"], Int64),
    col("option_amount", &["optionAmount"], Int64),
    col(
        "waiting_account_balance_amount",
        &["waitingAccountBalanceAmount"],
        Int64,
    ),
    col("contact_number", &["contactNumber"], Text),
];

const ORDER_MOVEMENTS: &[Column] = &[
    in_scope(Movement, key("movement_id", &["movementId"], Int64)),
    key("order_id", &["orderId"], Int64),
    key("order_creation_date_time", &["creationDateTime"], Instant),
    col("order_type", &["orderType"], Text),
    col("contact_number", &["contactNumber"], Text),
    in_scope(Operation, col("operation_id", &["operationId"], Int64)),
    in_scope(Operation, col("operation_kind", &["kind"], Text)),
    in_scope(Operation, col("operation_type", &["type"], Text)),
    in_scope(Operation, col("quantity", &["quantity"], Int64)),
    in_scope(Operation, col("base_price", &["basePrice"], Int64)),
    in_scope(Operation, col("unit_price", &["unitPrice"], Int64)),
    in_scope(
        Operation,
        col("operation_total_amount", &["totalAmount"], Int64),
    ),
    in_scope(Operation, col("product_id", &["productId"], Int64)),
    in_scope(Operation, col("product_code", &["productCode"], Text)),
    in_scope(Operation, col("product", &["product"], Text)),
    in_scope(Operation, col("performance_id", &["performanceId"], Int64)),
    in_scope(Operation, col("performance", &["performance"], Text)),
    in_scope(Operation, col("event_id", &["eventId"], Int64)),
    in_scope(
        Operation,
        col("audience_sub_category", &["audienceSubCategory"], Text),
    ),
    in_scope(Operation, col("vat_rate", &["vatRate"], Int64)),
    in_scope(Movement, col("movement_type", &["type"], Text)),
    in_scope(Movement, col("ticket_id", &["ticketId"], Int64)),
    in_scope(Movement, col("barcode", &["barcode"], Text)),
    in_scope(Movement, col("amount", &["amount"], Int64)),
    in_scope(
        Movement,
        col("refunded_movement_id", &["refundedMovementId"], Int64),
    ),
];

const TICKET_CHECKS: &[Column] = &[
    key("ticket_check_id", &["ticket_check_id"], Int64),
    col("movement_id", &["movement_id"], Int64),
    col("ticket_id", &["ticket_id"], Int64),
    col("barcode", &["barcode"], Text),
    key("access_time", &["access_time"], Instant),
    col("check_flow", &["check_flow"], Text),
    col("result", &["result"], Text),
    col("failure_reason", &["failure_reason"], Text),
];

/// Rejects are written by the compactor itself, not read from a record: their columns
/// are filled from `Reject`.
const REJECTS: &[Column] = &[
    col("stream", &[], Text),
    col("position", &[], Int64),
    col("reason", &[], Text),
];

/// One typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int64(i64),
    Text(String),
    Bool(bool),
    /// Microseconds since the epoch, UTC.
    Instant(i64),
    /// Days since the epoch.
    Date(i32),
}

/// The rows one record gives to one table, and where they go.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub table: Table,
    /// The partition date, in the venue's zone.
    pub date: NaiveDate,
    /// One cell per declared column, in order.
    pub cells: Vec<Cell>,
    /// The record's place in its body, from 0.
    pub position: usize,
    /// The JSON that produced the row, as received for whole records.
    pub raw: String,
}

/// Why a record did not fit its table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Misfit(pub String);

/// The `rejects` row for a record of `stream` at `position` in its body that did not fit,
/// dated by when it was received.
pub fn reject_row(
    stream: Stream,
    position: usize,
    reason: String,
    raw: &str,
    tz: Tz,
    received_at_micros: i64,
) -> Row {
    Row {
        table: Table::Rejects,
        date: timestamps::local_date(received_at_micros, tz),
        cells: vec![
            Cell::Text(stream.to_string()),
            Cell::Int64(position as i64),
            Cell::Text(reason),
        ],
        position,
        raw: raw.to_string(),
    }
}

/// Converts the record at `position` of a body (its JSON exactly as received) into its
/// rows: one row for contacts, orders and ticket checks; for orders also one
/// `order_movements` row per movement of each operation.
pub fn rows_of(
    stream: Stream,
    record: &RawValue,
    position: usize,
    tz: Tz,
    received_at_micros: i64,
) -> Result<Vec<Row>, Misfit> {
    let object =
        Object::parse(record).ok_or_else(|| Misfit("the record is not an object".into()))?;
    let raw = record.get();
    match stream {
        Stream::Contacts => {
            // A contact has no date of its own: it is dated by when it was received.
            let cells = cells(Table::Contacts, &[&object], tz)?;
            Ok(vec![Row {
                table: Table::Contacts,
                date: timestamps::local_date(received_at_micros, tz),
                cells,
                position,
                raw: raw.to_string(),
            }])
        }
        Stream::TicketChecks => {
            let cells = cells(Table::TicketChecks, &[&object], tz)?;
            let date = date_of(&cells, Table::TicketChecks, "access_time", tz)?;
            Ok(vec![Row {
                table: Table::TicketChecks,
                date,
                cells,
                position,
                raw: raw.to_string(),
            }])
        }
        Stream::Orders => order_rows(&object, raw, position, tz),
    }
}

/// Bytes of rows one record may give. An order's own fields are copied into every one of
/// its movements' rows, so a record with a long field and many movements could otherwise
/// ask for terabytes from a body of a few megabytes; past this it is a reject.
pub const MAX_RECORD_ROW_BYTES: usize = 32 << 20;

impl Row {
    /// About the memory the row holds: its text, its JSON, a word per cell.
    pub fn approx_bytes(&self) -> usize {
        let text: usize = self
            .cells
            .iter()
            .map(|cell| match cell {
                Cell::Text(text) => text.len(),
                _ => 0,
            })
            .sum();
        self.raw.len() + text + 16 * self.cells.len()
    }
}

fn order_rows(record: &Object, raw: &str, position: usize, tz: Tz) -> Result<Vec<Row>, Misfit> {
    // S-360 sends orders either wrapped in `orderDetailsData` or bare.
    let wrapped = match record.get("orderDetailsData") {
        Some(inner) => Some(
            Object::parse(inner)
                .ok_or_else(|| Misfit("orderDetailsData is not an object".into()))?,
        ),
        None => None,
    };
    let order = wrapped.as_ref().unwrap_or(record);
    let order_cells = cells(Table::Orders, &[order], tz)?;
    let date = date_of(&order_cells, Table::Orders, "creation_date_time", tz)?;
    let mut rows = vec![Row {
        table: Table::Orders,
        date,
        cells: order_cells,
        position,
        raw: raw.to_string(),
    }];
    let mut bytes = rows[0].approx_bytes();
    for (operation_index, operation) in array_at(order, "operationDatas")?.into_iter().enumerate() {
        let at = |inner: String| format!("operationDatas[{operation_index}]{inner}");
        let operation =
            Object::parse(operation).ok_or_else(|| Misfit(at(" is not an object".into())))?;
        let movements = array_at(&operation, "movementDatas")
            .map_err(|Misfit(m)| Misfit(at(format!(".{m}"))))?;
        for (movement_index, movement_raw) in movements.into_iter().enumerate() {
            let at = |reason: &str| Misfit(at(format!(".movementDatas[{movement_index}]{reason}")));
            let movement = Object::parse(movement_raw).ok_or_else(|| at(" is not an object"))?;
            let cells = cells(Table::OrderMovements, &[order, &operation, &movement], tz)
                .map_err(|Misfit(reason)| at(&format!(": {reason}")))?;
            let row = Row {
                table: Table::OrderMovements,
                date,
                cells,
                position,
                raw: movement_raw.get().to_string(),
            };
            bytes += row.approx_bytes();
            if bytes > MAX_RECORD_ROW_BYTES {
                return Err(Misfit(format!(
                    "its movements would take more than {} MiB as rows (each copies its order's fields)",
                    MAX_RECORD_ROW_BYTES >> 20
                )));
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The array under `key`, empty when absent or null.
fn array_at<'a>(object: &Object<'a>, key: &str) -> Result<Vec<&'a RawValue>, Misfit> {
    match object.get(key) {
        None => Ok(Vec::new()),
        Some(value) if json::is_null(value) => Ok(Vec::new()),
        Some(value) => json::array(value).ok_or_else(|| Misfit(format!("{key} is not an array"))),
    }
}

/// The partition date of a row: the venue-local date of a required instant column, which
/// must have a 4-digit year to name a partition.
fn date_of(cells: &[Cell], table: Table, column: &str, tz: Tz) -> Result<NaiveDate, Misfit> {
    let index = table
        .columns()
        .iter()
        .position(|c| c.name == column)
        .expect("the partition column is declared");
    let date = match cells[index] {
        Cell::Instant(micros) => timestamps::local_date(micros, tz),
        _ => unreachable!("{column} is a required instant"),
    };
    if !timestamps::is_partition_date(date) {
        return Err(Misfit(format!(
            "{column}: its date in the venue's zone, {date}, is {}",
            TimeError::OutsideYears
        )));
    }
    Ok(date)
}

/// Reads every column of `table` from `scopes` (record, operation, movement).
fn cells(table: Table, scopes: &[&Object], tz: Tz) -> Result<Vec<Cell>, Misfit> {
    let columns = table.columns();
    // Sized up front: collecting from an iterator of results grows the vector step by step.
    let mut cells = Vec::with_capacity(columns.len());
    for column in columns {
        let scope = match column.scope {
            Scope::Record => scopes[0],
            Scope::Operation => scopes[1],
            Scope::Movement => scopes[2],
        };
        let cell = match scope.path(column.path) {
            None => Cell::Null,
            Some(value) => convert(value, column.kind, tz).map_err(|problem| {
                Misfit(format!(
                    "{} ({}): {problem}",
                    column.name,
                    column.path.join(".")
                ))
            })?,
        };
        if column.required && cell == Cell::Null {
            return Err(Misfit(format!(
                "{} ({}) is missing",
                column.name,
                column.path.join(".")
            )));
        }
        cells.push(cell);
    }
    Ok(cells)
}

fn time_misfit(error: TimeError, expected: &str, text: &str) -> String {
    match error {
        TimeError::Unreadable => format!("expected {expected}, found {text}"),
        TimeError::OutsideYears => format!("{text} is {error}"),
    }
}

/// Converts one JSON value, from its text, to a cell of `kind`.
fn convert(value: &RawValue, kind: Kind, tz: Tz) -> Result<Cell, String> {
    let text = value.get();
    if json::is_null(value) {
        return Ok(Cell::Null);
    }
    let wrong = |expected: &str| format!("expected {expected}, found {text}");
    Ok(match kind {
        Kind::Int64 => Cell::Int64(text.parse().map_err(|_| wrong("a 64-bit integer"))?),
        Kind::Text => Cell::Text(match json::string(value) {
            Some(string) => string.into_owned(),
            // Codes that S-360 may send as numbers stay readable as text.
            None if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => text.to_string(),
            None => return Err(wrong("a string")),
        }),
        Kind::Bool => Cell::Bool(match text {
            "true" => true,
            "false" => false,
            _ => return Err(wrong("true or false")),
        }),
        Kind::Instant => {
            let string = json::string(value).ok_or_else(|| wrong("a timestamp string"))?;
            Cell::Instant(
                parse_instant(&string, tz)
                    .map_err(|e| time_misfit(e, "a readable timestamp", text))?,
            )
        }
        Kind::Date => {
            let string = json::string(value).ok_or_else(|| wrong("a date string"))?;
            Cell::Date(parse_date(&string).map_err(|e| time_misfit(e, "a YYYY-MM-DD date", text))?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// `rows_of` on a value's JSON text.
    fn rows_from(stream: Stream, record: &Value, tz: Tz) -> Result<Vec<Row>, Misfit> {
        rows_of(
            stream,
            &serde_json::value::to_raw_value(record).unwrap(),
            0,
            tz,
            0,
        )
    }

    fn sample(name: &str) -> Vec<Value> {
        let path = format!("{}/../shared/samples/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn cell(row: &Row, name: &str) -> Cell {
        let index = row
            .table
            .columns()
            .iter()
            .position(|c| c.name == name)
            .unwrap();
        row.cells[index].clone()
    }

    #[test]
    fn an_order_gives_its_row_and_one_row_per_movement() {
        let orders = sample("orders.json");
        let rows = rows_from(Stream::Orders, &orders[0], chrono_tz::Europe::Zurich).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].table, Table::Orders);
        assert_eq!(cell(&rows[0], "order_id"), Cell::Int64(10000702652));
        assert_eq!(cell(&rows[0], "sale_amount"), Cell::Int64(40000));
        // 2023-02-01T10:09:27.503+00:00
        assert_eq!(
            cell(&rows[0], "creation_date_time"),
            Cell::Instant(1_675_246_167_503_000)
        );
        assert_eq!(rows[0].date, NaiveDate::from_ymd_opt(2023, 2, 1).unwrap());
        let movement = &rows[2];
        assert_eq!(movement.table, Table::OrderMovements);
        assert_eq!(cell(movement, "movement_id"), Cell::Int64(10228844462196));
        assert_eq!(cell(movement, "order_id"), Cell::Int64(10000702652));
        assert_eq!(cell(movement, "operation_id"), Cell::Int64(10228310724422));
        assert_eq!(cell(movement, "product_code"), Cell::Text("ASTDN".into()));
        assert_eq!(cell(movement, "amount"), Cell::Int64(20000));
        assert_eq!(movement.date, rows[0].date);
        // The bare form gives the same rows.
        let bare = &orders[0]["orderDetailsData"];
        let bare_rows = rows_from(Stream::Orders, bare, chrono_tz::Europe::Zurich).unwrap();
        assert_eq!(bare_rows[1].cells, rows[1].cells);
    }

    #[test]
    fn venue_local_times_become_utc() {
        let checks = sample("ticketchecks.json");
        let rows = rows_from(Stream::TicketChecks, &checks[0], chrono_tz::Europe::Zurich).unwrap();
        // 2023-02-09 18:25:10 in Zurich (UTC+1 in winter) is 17:25:10 UTC.
        assert_eq!(
            cell(&rows[0], "access_time"),
            Cell::Instant(1_675_963_510_000_000)
        );
        assert_eq!(rows[0].date, NaiveDate::from_ymd_opt(2023, 2, 9).unwrap());
    }

    #[test]
    fn misfits_name_the_column_and_the_value() {
        let record: Value =
            serde_json::json!({"ticket_check_id": "abc", "access_time": "2023-02-09 18:25:10"});
        let misfit = rows_from(Stream::TicketChecks, &record, Tz::UTC).unwrap_err();
        assert_eq!(
            misfit.0,
            "ticket_check_id (ticket_check_id): expected a 64-bit integer, found \"abc\""
        );
        let record: Value = serde_json::json!({"ticket_check_id": 1, "access_time": "yesterday"});
        assert!(
            rows_from(Stream::TicketChecks, &record, Tz::UTC)
                .unwrap_err()
                .0
                .starts_with("access_time")
        );
        let record: Value = serde_json::json!({"contactId": 5});
        assert_eq!(
            rows_from(Stream::Contacts, &record, Tz::UTC).unwrap_err().0,
            "contact_number (contactNumber) is missing"
        );
        let mut order = sample("orders.json")[0].clone();
        order["orderDetailsData"]["operationDatas"][0]["movementDatas"][1]["movementId"] =
            serde_json::json!(1.5);
        let misfit = rows_from(Stream::Orders, &order, Tz::UTC).unwrap_err();
        assert!(
            misfit
                .0
                .starts_with("operationDatas[0].movementDatas[1]: movement_id"),
            "{misfit}"
        );
    }
}
