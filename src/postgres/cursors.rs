//! SQL cursors: `DECLARE name CURSOR FOR query`, `FETCH [FORWARD] n FROM name`, `CLOSE`.
//! psycopg's named cursors and psycopg2's, the way Python reads a large table without
//! holding it, and psql users paging through an answer.
//!
//! Owns the session's open cursors. A cursor's query runs as its rows are fetched: its
//! batches wait, within the process's answer budget, until a `FETCH` takes them, so a
//! cursor holds one of `max_concurrent` query slots until it is closed, its transaction
//! ends (a cursor `WITH HOLD` lives to the end of the session) or the session ends. It must
//! never run a query but through the engine, so that the caller's institutions and the
//! limits hold; only forward fetches are read, as PostgreSQL's `NO SCROLL` cursors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{self, CloseCursor, FetchDirection, Value};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use pgwire::api::portal::Format;
use pgwire::api::results::FieldInfo;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;

use super::{commands, query_error, user_error, wire};
use crate::query::{Answer, AnswerMemory, Held};

/// Open cursors a session may hold at once: each holds a query slot.
pub const MAX_CURSORS: usize = 4;

/// A cursor statement, as read from its text.
#[derive(Debug, Clone)]
pub enum CursorStatement {
    Declare {
        name: String,
        /// `WITH HOLD`: open past the end of its transaction.
        hold: bool,
        query: Statement,
    },
    /// `FETCH`: up to `count` rows, or all that are left (`None`).
    Fetch { name: String, count: Option<usize> },
    /// `CLOSE name`, or `CLOSE ALL` (`None`).
    Close(Option<String>),
}

/// Whether `text` is a cursor statement: `DECLARE`, `FETCH`, `MOVE` or `CLOSE`.
pub fn is_cursor_statement(text: &str) -> bool {
    commands::strip_comments(text)
        .split_whitespace()
        .next()
        .is_some_and(|word| {
            ["DECLARE", "FETCH", "MOVE", "CLOSE"]
                .iter()
                .any(|keyword| word.eq_ignore_ascii_case(keyword))
        })
}

/// Reads a cursor statement, or says why it cannot run here.
pub fn parse(text: &str) -> PgWireResult<CursorStatement> {
    let first = commands::strip_comments(text);
    if first
        .split_whitespace()
        .next()
        .is_some_and(|word| word.eq_ignore_ascii_case("MOVE"))
    {
        return Err(user_error(
            "0A000",
            "MOVE is not supported: FETCH reads a cursor forward".into(),
        ));
    }
    let statements = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| user_error("42601", e.to_string()))?;
    let [statement] = <[ast::Statement; 1]>::try_from(statements)
        .map_err(|_| user_error("42601", "one cursor statement at a time".into()))?;
    match statement {
        ast::Statement::Declare { stmts } => {
            let [declare] = <[ast::Declare; 1]>::try_from(stmts)
                .map_err(|_| user_error("42601", "DECLARE one cursor at a time".into()))?;
            let (Some(query), [name]) = (declare.for_query, declare.names.as_slice()) else {
                return Err(user_error(
                    "42601",
                    "DECLARE name CURSOR FOR query is the form read here".into(),
                ));
            };
            if declare.scroll == Some(true) {
                return Err(user_error(
                    "0A000",
                    "SCROLL cursors are not supported: FETCH reads a cursor forward".into(),
                ));
            }
            if declare.binary == Some(true) {
                return Err(user_error(
                    "0A000",
                    "BINARY cursors are not supported: ask for binary results when fetching".into(),
                ));
            }
            Ok(CursorStatement::Declare {
                name: name.value.clone(),
                hold: declare.hold == Some(true),
                query: Statement::Statement(Box::new(ast::Statement::Query(query))),
            })
        }
        ast::Statement::Fetch {
            name,
            direction,
            into: None,
            ..
        } => Ok(CursorStatement::Fetch {
            name: name.value,
            count: forward_count(&direction)?,
        }),
        ast::Statement::Close { cursor } => Ok(CursorStatement::Close(match cursor {
            CloseCursor::All => None,
            CloseCursor::Specific { name } => Some(name.value),
        })),
        _ => Err(user_error(
            "42601",
            "not a cursor statement (DECLARE, FETCH, CLOSE)".into(),
        )),
    }
}

/// How many rows a forward fetch asks for; `None` for all of them.
fn forward_count(direction: &FetchDirection) -> PgWireResult<Option<usize>> {
    let count = |value: &ast::ValueWithSpan| match &value.value {
        Value::Number(n, _) => n
            .parse::<usize>()
            .map_err(|_| user_error("22023", format!("FETCH count {n} is not a row count"))),
        other => Err(user_error(
            "22023",
            format!("FETCH count {other} is not a row count"),
        )),
    };
    match direction {
        FetchDirection::Next => Ok(Some(1)),
        FetchDirection::Forward { limit: None } => Ok(Some(1)),
        FetchDirection::Count { limit } | FetchDirection::Forward { limit: Some(limit) } => {
            count(limit).map(Some)
        }
        FetchDirection::All | FetchDirection::ForwardAll => Ok(None),
        _ => Err(user_error(
            "55000",
            "cursor can only scan forward: FETCH [FORWARD] n, NEXT or ALL".into(),
        )),
    }
}

/// An open cursor: its answer, and the batch being fetched from.
pub struct Cursor {
    pub schema: SchemaRef,
    hold: bool,
    answer: Answer<RecordBatch>,
    /// The batch fetches are reading, how many of its rows were sent, and its share of
    /// the answer budget, given back once the batch is sent to its end.
    current: Option<(RecordBatch, usize, AnswerMemory)>,
}

impl Cursor {
    pub fn new(answer: Answer<RecordBatch>, hold: bool) -> Cursor {
        Cursor {
            schema: answer.schema.clone(),
            hold,
            answer,
            current: None,
        }
    }
}

/// The session's open cursors, by name.
#[derive(Clone, Default)]
pub struct Cursors(Arc<Mutex<BTreeMap<String, Cursor>>>);

impl Cursors {
    /// Opens `cursor` as `name`, which must not be open already.
    pub fn open(&self, name: &str, cursor: Cursor) -> PgWireResult<()> {
        let mut open = self.0.lock().expect("never poisoned");
        room_for(&open, name)?;
        open.insert(name.to_string(), cursor);
        Ok(())
    }

    /// Whether a new cursor `name` could be opened now (checked before its query runs).
    pub fn check_room(&self, name: &str) -> PgWireResult<()> {
        room_for(&self.0.lock().expect("never poisoned"), name)
    }

    /// The schema of cursor `name`, for a client describing a `FETCH` from it.
    pub fn schema(&self, name: &str) -> PgWireResult<SchemaRef> {
        let open = self.0.lock().expect("never poisoned");
        open.get(name)
            .map(|cursor| cursor.schema.clone())
            .ok_or_else(|| missing(name))
    }

    /// Closes `name` (or every cursor): its query stops and its memory is given back.
    pub fn close(&self, name: Option<&str>) -> PgWireResult<()> {
        let mut open = self.0.lock().expect("never poisoned");
        match name {
            None => open.clear(),
            Some(name) => {
                open.remove(name).ok_or_else(|| missing(name))?;
            }
        }
        Ok(())
    }

    /// At the end of a transaction: the cursors declared without `WITH HOLD` close.
    pub fn end_transaction(&self) {
        let mut open = self.0.lock().expect("never poisoned");
        open.retain(|_, cursor| cursor.hold);
    }

    /// Up to `count` rows (all that are left for `None`) of cursor `name`, encoded in
    /// `format` as they are sent: the cursor's query produces them as they are fetched,
    /// with at most a batch or two ready ahead.
    pub fn fetch(
        &self,
        name: &str,
        count: Option<usize>,
        format: &Format,
    ) -> PgWireResult<(Arc<Vec<FieldInfo>>, FetchRows)> {
        // Out of the map while it is read (a session runs one statement at a time), back
        // in when the fetch ends, even when the client went away meanwhile.
        let cursor = self
            .0
            .lock()
            .expect("never poisoned")
            .remove(name)
            .ok_or_else(|| missing(name))?;
        let fields = Arc::new(wire::fields(&cursor.schema, format));
        let rows = FetchRows {
            cursors: self.clone(),
            name: name.to_string(),
            fields: fields.clone(),
            left: count.unwrap_or(usize::MAX),
            rows: Vec::new().into_iter(),
            cursor: Some(cursor),
        };
        wire::check_formats(format, fields.len(), "result")?;
        Ok((fields, rows))
    }
}

/// The most rows encoded at once: `FETCH ALL` of a large answer is encoded and sent in
/// such pieces, never whole.
const FETCH_ROWS_AT_ONCE: usize = 8192;

/// The rows of one `FETCH`, taken from its cursor as they are sent.
pub struct FetchRows {
    cursors: Cursors,
    name: String,
    fields: Arc<Vec<FieldInfo>>,
    left: usize,
    rows: std::vec::IntoIter<DataRow>,
    /// `None` once the cursor failed: an error closes it, as in PostgreSQL.
    cursor: Option<Cursor>,
}

impl futures::Stream for FetchRows {
    type Item = PgWireResult<DataRow>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if let Some(row) = this.rows.next() {
                return Poll::Ready(Some(Ok(row)));
            }
            let Some(cursor) = this.cursor.as_mut() else {
                return Poll::Ready(None);
            };
            if this.left == 0 {
                return Poll::Ready(None);
            }
            if let Some((batch, sent, _)) = &mut cursor.current
                && *sent < batch.num_rows()
            {
                let length = this
                    .left
                    .min(FETCH_ROWS_AT_ONCE)
                    .min(batch.num_rows() - *sent);
                let slice = batch.slice(*sent, length);
                *sent += length;
                this.left -= length;
                match wire::rows(std::slice::from_ref(&slice), &this.fields) {
                    Ok(rows) => this.rows = rows.into_iter(),
                    Err(e) => {
                        this.cursor = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                continue;
            }
            // The batch is sent: its share of the budget goes back before the next one.
            cursor.current = None;
            match std::task::ready!(cursor.answer.poll_next(cx)) {
                Some(Ok(Held { chunk, memory })) => cursor.current = Some((chunk, 0, memory)),
                Some(Err(e)) => {
                    this.cursor = None;
                    return Poll::Ready(Some(Err(query_error(e))));
                }
                None => this.left = 0,
            }
        }
    }
}

impl Drop for FetchRows {
    fn drop(&mut self) {
        if let Some(cursor) = self.cursor.take() {
            let mut open = self.cursors.0.lock().expect("never poisoned");
            open.insert(std::mem::take(&mut self.name), cursor);
        }
    }
}

fn room_for(open: &BTreeMap<String, Cursor>, name: &str) -> PgWireResult<()> {
    if open.contains_key(name) {
        return Err(user_error(
            "42P03",
            format!("cursor \"{name}\" already exists"),
        ));
    }
    if open.len() >= MAX_CURSORS {
        return Err(user_error(
            "53400",
            format!("a session keeps at most {MAX_CURSORS} cursors open: CLOSE one first"),
        ));
    }
    Ok(())
}

fn missing(name: &str) -> PgWireError {
    user_error("34000", format!("cursor \"{name}\" does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_statements_are_read_as_psycopg_and_psql_send_them() {
        match parse("DECLARE \"c1\" NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1 AS a").unwrap() {
            CursorStatement::Declare { name, hold, query } => {
                assert_eq!(name, "c1");
                assert!(!hold);
                assert_eq!(query.to_string(), "SELECT 1 AS a");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("declare big cursor with hold for select * from orders").unwrap(),
            CursorStatement::Declare { hold: true, .. }
        ));
        let fetch = |text: &str| match parse(text).unwrap() {
            CursorStatement::Fetch { name, count } => (name, count),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            fetch("FETCH FORWARD 100 FROM \"c1\""),
            ("c1".into(), Some(100))
        );
        assert_eq!(fetch("fetch 5 in c1"), ("c1".into(), Some(5)));
        assert_eq!(fetch("FETCH NEXT FROM c1"), ("c1".into(), Some(1)));
        assert_eq!(fetch("FETCH ALL FROM c1"), ("c1".into(), None));
        assert_eq!(fetch("FETCH FORWARD ALL FROM c1"), ("c1".into(), None));
        assert!(matches!(
            parse("CLOSE ALL").unwrap(),
            CursorStatement::Close(None)
        ));
        assert!(matches!(
            parse("close c1").unwrap(),
            CursorStatement::Close(Some(name)) if name == "c1"
        ));
        let code = |text: &str| match parse(text) {
            Err(PgWireError::UserError(info)) => info.code.clone(),
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(code("FETCH BACKWARD 1 FROM c1"), "55000");
        assert_eq!(code("FETCH PRIOR FROM c1"), "55000");
        assert_eq!(code("DECLARE c SCROLL CURSOR FOR SELECT 1"), "0A000");
        assert_eq!(code("MOVE 5 IN c1"), "0A000");
        assert!(is_cursor_statement("-- next page\nFETCH 10 FROM c"));
        assert!(!is_cursor_statement("SELECT 'FETCH'"));
    }
}
