//! Rows of one table collected into Arrow columns.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};

use super::{Cell, Kind, Row, Table};

enum ColumnBuilder {
    Int64(Int64Builder),
    Text(StringBuilder),
    Bool(BooleanBuilder),
    Instant(TimestampMicrosecondBuilder),
    Date(Date32Builder),
}

impl ColumnBuilder {
    fn new(kind: Kind) -> ColumnBuilder {
        match kind {
            Kind::Int64 => ColumnBuilder::Int64(Int64Builder::with_capacity(FIRST_ROWS)),
            Kind::Text => ColumnBuilder::Text(text_builder()),
            Kind::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(FIRST_ROWS)),
            Kind::Instant => ColumnBuilder::Instant(utc_timestamps()),
            Kind::Date => ColumnBuilder::Date(Date32Builder::with_capacity(FIRST_ROWS)),
        }
    }

    fn push(&mut self, cell: Cell) {
        match (self, cell) {
            (ColumnBuilder::Int64(b), Cell::Int64(v)) => b.append_value(v),
            (ColumnBuilder::Text(b), Cell::Text(v)) => b.append_value(v),
            (ColumnBuilder::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (ColumnBuilder::Instant(b), Cell::Instant(v)) => b.append_value(v),
            (ColumnBuilder::Date(b), Cell::Date(v)) => b.append_value(v),
            (ColumnBuilder::Int64(b), Cell::Null) => b.append_null(),
            (ColumnBuilder::Text(b), Cell::Null) => b.append_null(),
            (ColumnBuilder::Bool(b), Cell::Null) => b.append_null(),
            (ColumnBuilder::Instant(b), Cell::Null) => b.append_null(),
            (ColumnBuilder::Date(b), Cell::Null) => b.append_null(),
            (_, cell) => unreachable!("a cell of the wrong kind: {cell:?}"),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Text(b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Instant(b) => Arc::new(b.finish()),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
        }
    }
}

/// Rows a new builder has room for. Arrow's default (1,024) costs about 80 KiB per
/// partition before its first row, and one body whose records each carry another day
/// opens a partition per record: 40,000 of them took 2.4 GB. Builders grow by doubling.
const FIRST_ROWS: usize = 8;

fn utc_timestamps() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::with_capacity(FIRST_ROWS).with_timezone("UTC")
}

fn text_builder() -> StringBuilder {
    StringBuilder::with_capacity(FIRST_ROWS, FIRST_ROWS * 32)
}

/// Rows per batch: builders are cut into batches of this size, so their buffers stay small
/// and are reused, instead of doubling (and copying) toward the size of a whole chunk.
const BATCH_ROWS: usize = 4096;

/// Collects rows of one table (one partition, in practice) until they are written out.
pub struct TableBuilder {
    finished: Vec<RecordBatch>,
    table: Table,
    columns: Vec<ColumnBuilder>,
    event_ids: StringBuilder,
    positions: Int64Builder,
    received_at: TimestampMicrosecondBuilder,
    raw: StringBuilder,
    rows: usize,
}

impl TableBuilder {
    pub fn new(table: Table) -> TableBuilder {
        TableBuilder {
            finished: Vec::new(),
            table,
            columns: table
                .columns()
                .iter()
                .map(|c| ColumnBuilder::new(c.kind))
                .collect(),
            event_ids: text_builder(),
            positions: Int64Builder::with_capacity(FIRST_ROWS),
            received_at: utc_timestamps(),
            raw: text_builder(),
            rows: 0,
        }
    }

    pub fn push(&mut self, row: Row, event_id: &str, received_at_micros: i64) {
        debug_assert_eq!(row.cells.len(), self.columns.len());
        for (column, cell) in self.columns.iter_mut().zip(row.cells) {
            column.push(cell);
        }
        self.event_ids.append_value(event_id);
        self.positions.append_value(row.position as i64);
        self.received_at.append_value(received_at_micros);
        self.raw.append_value(&row.raw);
        self.rows += 1;
        if self.rows.is_multiple_of(BATCH_ROWS) {
            let batch = self.finish_batch();
            self.finished.push(batch);
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Takes the rows collected so far, as batches, leaving the builder empty.
    pub fn finish(&mut self) -> Vec<RecordBatch> {
        if !self.rows.is_multiple_of(BATCH_ROWS) {
            let batch = self.finish_batch();
            self.finished.push(batch);
        }
        self.rows = 0;
        std::mem::take(&mut self.finished)
    }

    fn finish_batch(&mut self) -> RecordBatch {
        let mut arrays: Vec<ArrayRef> = self.columns.iter_mut().map(|c| c.finish()).collect();
        arrays.push(Arc::new(self.event_ids.finish()));
        arrays.push(Arc::new(self.positions.finish()));
        arrays.push(Arc::new(self.received_at.finish()));
        arrays.push(Arc::new(self.raw.finish()));
        RecordBatch::try_new(self.table.schema(), arrays).expect("columns follow the schema")
    }
}
