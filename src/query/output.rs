//! How an answer is written: an aligned table for people, CSV and JSON for programs.

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use arrow::json::writer::JsonArray;

use super::Answer;

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

pub fn write(answer: &Answer, format: Format, out: &mut impl Write) -> Result<(), ArrowError> {
    match format {
        Format::Table => {
            let table = arrow::util::pretty::pretty_format_batches_with_schema(
                answer.schema.clone(),
                &answer.batches,
            )?;
            writeln!(out, "{table}")?;
        }
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            // An empty batch still writes the header, so an empty answer names its columns.
            writer.write(&RecordBatch::new_empty(answer.schema.clone()))?;
            for batch in &answer.batches {
                writer.write(batch)?;
            }
        }
        Format::Json => {
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, JsonArray>(&mut *out);
            for batch in &answer.batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}
