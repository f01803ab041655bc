//! `COPY (SELECT ...) TO STDOUT` and `COPY table TO STDOUT`, in PostgreSQL's text and CSV
//! formats: psql's `\copy`, psycopg's `cursor.copy()`, pgjdbc's `CopyManager`, the fastest
//! way to take rows out of the lake.
//!
//! Owns the reading of the statement, the two formats, and the copy-out exchange, which
//! pgwire's own would end with a message a client does not expect when a query fails
//! midway. It must never write: `COPY FROM` and copies to a file or a program are refused as writes,
//! and the rows come from [`QueryEngine::run`](crate::query::QueryEngine::run), under the
//! caller's institutions and the answer budget, one data message per row as PostgreSQL
//! sends them.

use std::fmt::Debug;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::{BufMut, Bytes, BytesMut};
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{
    self, CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Ident,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use futures::{Sink, SinkExt};
use pgwire::api::portal::Format;
use pgwire::api::query::send_ready_for_query;
use pgwire::api::results::Tag;
use pgwire::api::{ClientInfo, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyOutResponse};
use pgwire::messages::data::DataRow;

use super::{
    ROW_OVERHEAD, RowEncoder, Session, commands, connection_of, query_error, say_who_asks,
};
use crate::query::{Encoder, Held, QueryError};

/// A `COPY ... TO STDOUT` as read from its text: the query whose rows it sends, and how.
#[derive(Debug)]
pub struct CopyOut {
    pub query: Statement,
    pub format: CopyFormat,
}

/// COPY's text or CSV format, with the options a client may set.
#[derive(Debug, Clone)]
pub struct CopyFormat {
    csv: bool,
    delimiter: u8,
    null: String,
    header: bool,
    quote: u8,
    escape: u8,
}

impl CopyFormat {
    fn text() -> CopyFormat {
        CopyFormat {
            csv: false,
            delimiter: b'\t',
            null: "\\N".into(),
            header: false,
            quote: b'"',
            escape: b'"',
        }
    }

    fn csv(self) -> CopyFormat {
        CopyFormat {
            csv: true,
            delimiter: b',',
            null: String::new(),
            ..self
        }
    }
}

/// Whether `text` is a COPY statement (which the extended protocol and a query of several
/// statements refuse: it runs alone, in the simple protocol, as psql and drivers send it).
pub fn is_copy(text: &str) -> bool {
    commands::strip_comments(text)
        .split_whitespace()
        .next()
        .is_some_and(|word| word.eq_ignore_ascii_case("COPY"))
}

/// Reads a COPY statement: what it copies and in which format, or why it cannot run here.
pub fn parse(text: &str) -> PgWireResult<CopyOut> {
    let statements = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| user_error("42601", e.to_string()))?;
    let [statement] = <[ast::Statement; 1]>::try_from(statements).map_err(|statements| {
        user_error(
            "42601",
            format!(
                "COPY must be the only statement of its query (got {})",
                statements.len()
            ),
        )
    })?;
    let ast::Statement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        ..
    } = statement
    else {
        return Err(user_error("42601", "not a COPY statement".into()));
    };
    if !to {
        return Err(user_error(
            "25006",
            "cannot execute COPY FROM in a read-only transaction: the lake is written by S-360's pushes only".into(),
        ));
    }
    if target != CopyTarget::Stdout {
        return Err(user_error(
            "25006",
            format!(
                "only queries that read the lake run here, and COPY TO {target} would write on the server: copy TO STDOUT (psql: \\copy) and write the file on the client"
            ),
        ));
    }
    let format = read_options(&options, &legacy_options)?;
    let query = match source {
        CopySource::Query(query) => query,
        CopySource::Table {
            table_name,
            columns,
        } => Box::new(select_from(table_name, columns)?),
    };
    let query = Statement::Statement(Box::new(ast::Statement::Query(query)));
    Ok(CopyOut { query, format })
}

/// `COPY table (columns) TO STDOUT` as the query it means.
fn select_from(table: ast::ObjectName, columns: Vec<Ident>) -> PgWireResult<ast::Query> {
    let items = match columns.is_empty() {
        true => "*".to_string(),
        false => columns
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    };
    let text = format!("SELECT {items} FROM {table}");
    let mut statements = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&text)
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| user_error("42601", e.to_string()))?;
    match statements.pop() {
        Some(ast::Statement::Query(query)) => Ok(*query),
        _ => Err(user_error("42601", format!("cannot copy {table}"))),
    }
}

fn read_options(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> PgWireResult<CopyFormat> {
    let mut format = CopyFormat::text();
    let unsupported =
        |what: String| user_error("0A000", format!("COPY option {what} is not supported"));
    // The format first: it sets the defaults the other options change.
    for option in options {
        if let CopyOption::Format(name) = option {
            match name.value.to_ascii_lowercase().as_str() {
                "text" => {}
                "csv" => format = format.csv(),
                other => return Err(unsupported(format!("FORMAT {other} (text and csv are)"))),
            }
        }
    }
    for option in legacy {
        if let CopyLegacyOption::Csv(_) = option {
            format = format.csv();
        }
    }
    for option in options {
        match option {
            CopyOption::Format(_) | CopyOption::Encoding(_) => {}
            CopyOption::Delimiter(c) => format.delimiter = one_byte(*c, "DELIMITER")?,
            CopyOption::Null(null) => format.null = null.clone(),
            CopyOption::Header(header) => format.header = *header,
            CopyOption::Quote(c) => format.quote = one_byte(*c, "QUOTE")?,
            CopyOption::Escape(c) => format.escape = one_byte(*c, "ESCAPE")?,
            other => return Err(unsupported(other.to_string())),
        }
    }
    for option in legacy {
        match option {
            CopyLegacyOption::Delimiter(c) => format.delimiter = one_byte(*c, "DELIMITER")?,
            CopyLegacyOption::Null(null) => format.null = null.clone(),
            CopyLegacyOption::Csv(csv) => {
                for option in csv {
                    match option {
                        CopyLegacyCsvOption::Header => format.header = true,
                        CopyLegacyCsvOption::Quote(c) => format.quote = one_byte(*c, "QUOTE")?,
                        CopyLegacyCsvOption::Escape(c) => format.escape = one_byte(*c, "ESCAPE")?,
                        other => return Err(unsupported(other.to_string())),
                    }
                }
            }
            other => return Err(unsupported(other.to_string())),
        }
    }
    Ok(format)
}

fn one_byte(c: char, what: &str) -> PgWireResult<u8> {
    match u8::try_from(c) {
        Ok(byte) if byte.is_ascii() && byte != b'\n' && byte != b'\r' => Ok(byte),
        _ => Err(user_error(
            "22023",
            format!("COPY {what} must be a single one-byte character"),
        )),
    }
}

/// An answer's batches as COPY lines, one per row: the rows the wire's text format
/// encodes, each rewritten as a line (so a copied value reads as a queried one).
#[derive(Clone)]
struct CopyEncoder {
    format: CopyFormat,
    rows: RowEncoder,
}

impl Encoder for CopyEncoder {
    type Chunk = Vec<Bytes>;

    fn start(&mut self, schema: &SchemaRef) -> Result<Option<Vec<Bytes>>, QueryError> {
        self.rows.start(schema)?;
        if !self.format.header {
            return Ok(None);
        }
        let mut line = BytesMut::new();
        for (i, field) in schema.fields().iter().enumerate() {
            if i > 0 {
                line.put_u8(self.format.delimiter);
            }
            self.format.value(&mut line, field.name().as_bytes());
        }
        line.put_u8(b'\n');
        Ok(Some(vec![line.freeze()]))
    }

    fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<Bytes>, QueryError> {
        let rows = self.rows.batch(batch)?;
        Ok(rows.iter().map(|row| self.format.line(row)).collect())
    }

    fn finish(&mut self) -> Result<Option<Vec<Bytes>>, QueryError> {
        Ok(None)
    }

    fn size(lines: &Vec<Bytes>) -> usize {
        // A line costs what a data row does besides its bytes.
        lines.iter().map(|line| line.len() + ROW_OVERHEAD).sum()
    }
}

impl CopyFormat {
    /// One data row (as the wire's text format encodes it) as a COPY line.
    fn line(&self, row: &DataRow) -> Bytes {
        let mut line = BytesMut::with_capacity(row.data.len() + 8);
        let mut data = &row.data[..];
        for i in 0..row.field_count {
            if i > 0 {
                line.put_u8(self.delimiter);
            }
            let (length, rest) = data.split_at(4);
            let length = i32::from_be_bytes(length.try_into().expect("four bytes"));
            // A negative length is NULL; a data row is what the encoder just wrote.
            let Ok(length) = usize::try_from(length) else {
                line.put_slice(self.null.as_bytes());
                data = rest;
                continue;
            };
            let (value, rest) = rest.split_at(length);
            self.value(&mut line, value);
            data = rest;
        }
        line.put_u8(b'\n');
        line.freeze()
    }

    /// One value, escaped or quoted as the format wants.
    fn value(&self, line: &mut BytesMut, value: &[u8]) {
        if self.csv {
            let special =
                |b: &u8| *b == self.delimiter || *b == self.quote || *b == b'\n' || *b == b'\r';
            // Quoted when it holds a special character, when it would read as NULL, or
            // when it is the end-of-data marker.
            if value == self.null.as_bytes() || value == b"\\." || value.iter().any(special) {
                line.put_u8(self.quote);
                for &b in value {
                    if b == self.quote || b == self.escape {
                        line.put_u8(self.escape);
                    }
                    line.put_u8(b);
                }
                line.put_u8(self.quote);
            } else {
                line.put_slice(value);
            }
            return;
        }
        for &b in value {
            match b {
                b'\\' => line.put_slice(b"\\\\"),
                b'\n' => line.put_slice(b"\\n"),
                b'\r' => line.put_slice(b"\\r"),
                b'\t' => line.put_slice(b"\\t"),
                0x08 => line.put_slice(b"\\b"),
                0x0c => line.put_slice(b"\\f"),
                0x0b => line.put_slice(b"\\v"),
                b if b == self.delimiter => {
                    line.put_u8(b'\\');
                    line.put_u8(b);
                }
                b => line.put_u8(b),
            }
        }
    }
}

impl Session {
    /// Runs a COPY to its end: the copy-out header once the query's first batch is good,
    /// then a data message per row as produced, then the row count. An error, or a cancel
    /// request, midway ends the copy with an error, which clients take as the copy failing.
    pub(super) async fn copy_out<C>(&self, client: &mut C, text: &str) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let cancelled = match connection_of(client) {
            Some(handle) => Some(handle.start_query().await),
            None => None,
        };
        let run = self.send_copy(client, text);
        let result = match cancelled {
            None => run.await,
            Some(mut cancelled) => {
                tokio::pin!(run);
                tokio::select! {
                    result = &mut run => result,
                    Ok(()) = &mut cancelled => Err(PgWireError::QueryCanceled),
                }
            }
        };
        let mut status = client.transaction_status();
        if let Err(e) = result {
            let info = match e {
                PgWireError::UserError(info) => *info,
                PgWireError::QueryCanceled => ErrorInfo::new(
                    "ERROR".into(),
                    "57014".into(),
                    "canceling statement due to user request".into(),
                ),
                // The connection itself failed: nothing more can be said on it.
                other => return Err(other),
            };
            client
                .feed(PgWireBackendMessage::ErrorResponse(info.into()))
                .await?;
            status = status.to_error_state();
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(status);
        send_ready_for_query(client, status).await
    }

    async fn send_copy<C>(&self, client: &mut C, text: &str) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let caller = self.caller()?;
        let started = std::time::Instant::now();
        let CopyOut { mut query, format } = parse(text).inspect_err(|e| {
            // Refused copies are counted with the other refusals.
            if let PgWireError::UserError(info) = e {
                super::record_outcome(caller, &info.code, started, text);
            }
        })?;
        let header = usize::from(format.header);
        say_who_asks(&mut query, caller.user(), client.pid_and_secret_key().0);
        // An export in bounded memory: not held to `max_rows`, which bounds an answer a
        // client receives as one result.
        let result = self
            .shared
            .engine
            .run(
                query,
                vec![],
                caller.visibility(),
                None,
                CopyEncoder {
                    format,
                    rows: RowEncoder::new(Format::UnifiedText),
                },
            )
            .await;
        super::record_query(caller, &result, started, text);
        let mut answer = result.map_err(query_error)?;
        let columns = answer.schema.fields().len();
        client
            .send(PgWireBackendMessage::CopyOutResponse(CopyOutResponse::new(
                0,
                columns as i16,
                vec![0; columns],
            )))
            .await?;
        let mut rows = 0usize;
        while let Some(chunk) = answer.next().await {
            let Held { chunk, memory } = chunk.map_err(query_error)?;
            for line in chunk {
                client
                    .feed(PgWireBackendMessage::CopyData(CopyData::new(line)))
                    .await?;
                rows += 1;
            }
            // The chunk's share of the budget is given back once it is written out.
            client.flush().await?;
            drop(memory);
        }
        // The header line is not a row.
        let rows = rows.saturating_sub(header);
        client
            .feed(PgWireBackendMessage::CopyDone(CopyDone::new()))
            .await?;
        let tag = Tag::new("COPY").with_rows(rows);
        client
            .feed(PgWireBackendMessage::CommandComplete(tag.into()))
            .await?;
        Ok(())
    }
}

fn user_error(code: &str, message: String) -> PgWireError {
    super::user_error(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&str>]) -> DataRow {
        let mut data = BytesMut::new();
        for value in values {
            match value {
                None => data.put_i32(-1),
                Some(v) => {
                    data.put_i32(v.len() as i32);
                    data.put_slice(v.as_bytes());
                }
            }
        }
        DataRow::new(data, values.len() as i16)
    }

    #[test]
    fn text_lines_escape_as_postgresql_does() {
        let line = CopyFormat::text().line(&row(&[
            Some("a\tb"),
            None,
            Some("back\\slash\nnew"),
            Some(""),
        ]));
        assert_eq!(&line[..], b"a\\tb\t\\N\tback\\\\slash\\nnew\t\n");
    }

    #[test]
    fn csv_lines_quote_what_must_be_quoted() {
        let line = CopyFormat::text().csv().line(&row(&[
            Some("plain"),
            Some("with,comma"),
            Some("say \"hi\""),
            None,
            Some(""),
            Some("two\nlines"),
        ]));
        assert_eq!(
            &line[..],
            b"plain,\"with,comma\",\"say \"\"hi\"\"\",,\"\",\"two\nlines\"\n"
        );
    }

    #[test]
    fn statements_are_read_or_refused_with_the_reason() {
        let copy = parse("COPY (SELECT 1 AS a) TO STDOUT WITH (FORMAT csv, HEADER)").unwrap();
        assert!(copy.format.csv && copy.format.header);
        let copy = parse("copy ticket_checks (barcode, institution) to stdout").unwrap();
        assert_eq!(
            copy.query.to_string(),
            "SELECT barcode, institution FROM ticket_checks"
        );
        assert!(!copy.format.csv);
        let legacy = parse("COPY (SELECT 1) TO STDOUT CSV HEADER").unwrap();
        assert!(legacy.format.csv && legacy.format.header);
        let code = |text: &str| match parse(text) {
            Err(PgWireError::UserError(info)) => info.code.clone(),
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(code("COPY orders FROM STDIN"), "25006");
        assert_eq!(code("COPY orders TO '/etc/passwd'"), "25006");
        assert_eq!(code("COPY orders TO STDOUT (FORMAT binary)"), "0A000");
        assert_eq!(code("COPY (SELECT 1) TO STDOUT; SELECT 2"), "42601");
        assert!(is_copy("/* export */ copy orders to stdout"));
        assert!(!is_copy("SELECT 'COPY'"));
    }
}
