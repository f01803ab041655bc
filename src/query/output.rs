//! How an answer is written: an aligned table for people, CSV and JSON for programs. CSV
//! and JSON are written batch by batch ([`TextEncoder`]), so an answer never has to be held
//! whole to be sent.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::json::writer::JsonArray;
use bytes::Bytes;

use super::{Encoder, QueryError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header.
    Table,
    /// A header line, then one line per row.
    Csv,
    /// An array of objects, one per row, every column named (nulls included).
    Json,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Table => "text/plain; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
        }
    }
}

/// CSV or JSON, one chunk of text per batch. (A table's columns are as wide as their
/// widest value, so it cannot be written before the last row.)
#[derive(Debug, Clone)]
pub struct TextEncoder {
    csv: bool,
    /// A JSON row was written: the next one follows a comma.
    json_rows: bool,
}

impl TextEncoder {
    /// `None` for the table format.
    pub fn new(format: Format) -> Option<TextEncoder> {
        match format {
            Format::Table => None,
            Format::Csv | Format::Json => Some(TextEncoder {
                csv: format == Format::Csv,
                json_rows: false,
            }),
        }
    }

    fn csv(batch: &RecordBatch, header: bool) -> Result<Vec<u8>, ArrowError> {
        let mut text = Vec::new();
        arrow::csv::WriterBuilder::new()
            .with_header(header)
            .build(&mut text)
            .write(batch)?;
        Ok(text)
    }

    /// The batch's rows as JSON objects, each after a comma but the answer's first. Arrow
    /// writes them as an array, `[{...},{...}]`: its brackets become that comma, or go.
    fn json(&mut self, batch: &RecordBatch) -> Result<Bytes, ArrowError> {
        if batch.num_rows() == 0 {
            return Ok(Bytes::new());
        }
        let mut text = Vec::new();
        let mut writer = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, JsonArray>(&mut text);
        writer.write(batch)?;
        writer.finish()?;
        drop(writer);
        text.pop();
        let text = match self.json_rows {
            true => {
                text[0] = b',';
                Bytes::from(text)
            }
            false => Bytes::from(text).slice(1..),
        };
        self.json_rows = true;
        Ok(text)
    }
}

fn failed(e: ArrowError) -> QueryError {
    QueryError::Unwritable(Box::new(e))
}

impl Encoder for TextEncoder {
    type Chunk = Bytes;

    fn start(&mut self, schema: &SchemaRef) -> Result<Option<Bytes>, QueryError> {
        Ok(Some(match self.csv {
            // The header comes first, so that an empty answer still names its columns.
            true => TextEncoder::csv(&RecordBatch::new_empty(schema.clone()), true)
                .map_err(failed)?
                .into(),
            false => Bytes::from_static(b"["),
        }))
    }

    fn batch(&mut self, batch: &RecordBatch) -> Result<Bytes, QueryError> {
        match self.csv {
            true => TextEncoder::csv(batch, false).map(Bytes::from),
            false => self.json(batch),
        }
        .map_err(failed)
    }

    fn finish(&mut self) -> Result<Option<Bytes>, QueryError> {
        Ok((!self.csv).then(|| Bytes::from_static(b"]\n")))
    }

    fn size(chunk: &Bytes) -> usize {
        chunk.len()
    }
}

/// A whole answer as an aligned table, for the command line.
pub fn table(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<String, QueryError> {
    arrow::util::pretty::pretty_format_batches_with_schema(schema.clone(), batches)
        .map(|table| table.to_string())
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(ids: &[i64], names: &[Option<&str>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(names.to_vec())),
            ],
        )
        .unwrap()
    }

    fn written(batches: &[RecordBatch], format: Format) -> String {
        let mut encoder = TextEncoder::new(format).unwrap();
        let mut out = Vec::new();
        out.extend(
            encoder
                .start(&batches[0].schema())
                .unwrap()
                .unwrap_or_default(),
        );
        for batch in batches {
            out.extend(encoder.batch(batch).unwrap());
        }
        out.extend(encoder.finish().unwrap().unwrap_or_default());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_and_csv_written_batch_by_batch_are_one_answer() {
        let batches = [
            batch(&[1, 2], &[Some("a\nb"), None]),
            batch(&[], &[]),
            batch(&[3], &[Some("c,\"d\"")]),
        ];
        let json: serde_json::Value =
            serde_json::from_str(&written(&batches, Format::Json)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"id": 1, "name": "a\nb"},
                {"id": 2, "name": null},
                {"id": 3, "name": "c,\"d\""}
            ])
        );
        assert_eq!(
            written(&batches, Format::Csv),
            "id,name\n1,\"a\nb\"\n2,\n3,\"c,\"\"d\"\"\"\n"
        );
        // No rows: an empty array, and the header alone.
        let empty = [batch(&[], &[])];
        assert_eq!(written(&empty, Format::Json), "[]\n");
        assert_eq!(written(&empty, Format::Csv), "id,name\n");
    }
}
