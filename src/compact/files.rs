//! Parquet files of the tables: where they go, how they are encoded and read back.
//!
//! A file is first written under a pending key outside the tables
//! (`_datx/pending/{epoch}/tables/...`), where no reader of the tables looks, and moves to
//! its final key `tables/.../part-*.parquet` only after the commit that makes it live.
//! Keeping pending files under their lease epoch lets a pass find the leftovers of an
//! interrupted one by listing that small prefix rather than every table, and never remove
//! the files of a successor that holds the lease now.

use bytes::Bytes;
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use uuid::Uuid;

use std::collections::HashSet;

use arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::error::ArrowError;

use super::unique::Version;
use crate::tables::{self, Table};

/// Where files wait for their commit.
pub const PENDING_DIR: &str = "_datx/pending";

/// The directory of one partition.
pub fn partition_dir(table: Table, institution: &str, date: NaiveDate) -> String {
    format!(
        "tables/{}/institution={institution}/date={}",
        table.name(),
        date.format("%Y-%m-%d")
    )
}

/// A new file's final key in a partition.
pub fn new_file_key(table: Table, institution: &str, date: NaiveDate) -> String {
    format!(
        "{}/part-{}.parquet",
        partition_dir(table, institution, date),
        Uuid::now_v7()
    )
}

/// The pending key under which a file is written, under the lease `epoch`, before its
/// commit.
pub fn pending_key(epoch: u64, final_key: &str) -> String {
    format!("{PENDING_DIR}/{epoch:020}/{final_key}")
}

/// Where a lake written before pending files had a directory of their own kept a pending
/// file: beside its final key, as `_pending-{id}.tmp`. A lake upgraded right after a crash
/// may still hold one that its latest commit names.
/// `None` for a key that is not `.../part-*.parquet` (a commit edited by hand).
pub fn legacy_pending_key(final_key: &str) -> Option<String> {
    let (dir, name) = final_key.rsplit_once('/')?;
    let id = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    Some(format!("{dir}/_pending-{id}.tmp"))
}

/// Whether a key under `tables/` is left over from such a lake: a pending file, or the
/// temporary file of an interrupted write.
pub fn is_legacy_leftover(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    (name.starts_with("_pending-") || name.starts_with('.')) && name.ends_with(".tmp")
}

/// The lease epoch a key under `PENDING_DIR` was written under; `None` for anything else.
pub fn pending_epoch(key: &str) -> Option<u64> {
    key.strip_prefix(PENDING_DIR)?
        .strip_prefix('/')?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// Encodes batches as one Parquet file: Snappy, which every reader has, and statistics so
/// that readers can skip row groups.
pub fn encode(batches: &[RecordBatch]) -> Result<Bytes, parquet::errors::ParquetError> {
    let schema = batches
        .first()
        .expect("a file has at least one batch")
        .schema();
    // `_raw` holds long, unique strings: a dictionary or min/max statistics over it cost
    // time and bytes and help no reader.
    let raw = ColumnPath::from(tables::RAW);
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_column_dictionary_enabled(raw.clone(), false)
        .set_column_statistics_enabled(raw, EnabledStatistics::None)
        // The form parquet-java (Spark) parses: for a writer it cannot name, it ignores
        // string statistics kept in the old min/max fields (PARQUET-251) and reads
        // DELTA_BYTE_ARRAY pages sequentially.
        .set_created_by(format!("datx version {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(properties))?;
    for batch in batches {
        writer.write(batch)?;
    }
    Ok(Bytes::from(writer.into_inner()?))
}

/// Every batch of a file of `table`, in the table's current schema: a column the file was
/// written without (by an older datx) is null, so old and new files merge into one.
pub fn decode(bytes: Bytes, table: Table) -> Result<Vec<RecordBatch>, ParquetError> {
    let schema = table.schema();
    ParquetRecordBatchReaderBuilder::try_new(bytes)?
        .build()?
        .map(|batch| {
            let batch = batch?;
            let columns = schema
                .fields()
                .iter()
                .map(|field| match batch.column_by_name(field.name()) {
                    Some(column) => column.clone(),
                    None => arrow::array::new_null_array(field.data_type(), batch.num_rows()),
                })
                .collect();
            Ok(RecordBatch::try_new(schema.clone(), columns)?)
        })
        .collect()
}

/// Each unique key of a file with the version of its row: its event id (as a number, which
/// orders UUIDv7 ids by time) and its place in the body (0 in files written before
/// `_position` existed).
pub fn key_versions(bytes: Bytes, column: &str) -> Result<Vec<(i64, Version)>, ParquetError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let wanted = [column, tables::EVENT_ID, tables::POSITION];
    let indices = wanted
        .iter()
        .filter_map(|name| builder.schema().index_of(name).ok());
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let mut versions = Vec::new();
    for batch in builder.with_projection(mask).build()? {
        let batch = batch?;
        let keys = int64s(&batch, column)?;
        let events = batch
            .column_by_name(tables::EVENT_ID)
            .and_then(|a| a.as_any().downcast_ref::<arrow::array::StringArray>())
            .ok_or_else(|| ParquetError::General(format!("{} is not text", tables::EVENT_ID)))?;
        let positions = batch.column_by_name(tables::POSITION);
        let positions = positions.and_then(|a| a.as_any().downcast_ref::<Int64Array>());
        for row in 0..batch.num_rows() {
            if keys.is_null(row) {
                continue;
            }
            let event = Uuid::parse_str(events.value(row))
                .map_err(|e| ParquetError::General(format!("an _event_id is not a UUID: {e}")))?;
            let position = positions.map_or(0, |p| p.value(row).max(0) as u32);
            versions.push((keys.value(row), (event.as_u128(), position)));
        }
    }
    Ok(versions)
}

/// The lowest and highest values of an Int64 column over `batches`; `None` when it holds
/// none. Commits record it for unique keys, so that a pass reads only the files that may
/// hold a key it meets again.
pub fn int64_range(batches: &[RecordBatch], column: &str) -> Result<Option<[i64; 2]>, ArrowError> {
    let mut range: Option<[i64; 2]> = None;
    for batch in batches {
        let values = int64s(batch, column)?;
        if let (Some(low), Some(high)) = (arrow::compute::min(values), arrow::compute::max(values))
        {
            range = Some(range.map_or([low, high], |[l, h]| [l.min(low), h.max(high)]));
        }
    }
    Ok(range)
}

/// `batches` without the rows at the given indexes, counted across the batches in order.
pub fn without_rows(
    batches: Vec<RecordBatch>,
    rows: &HashSet<u32>,
) -> Result<Vec<RecordBatch>, ArrowError> {
    if rows.is_empty() {
        return Ok(batches);
    }
    let mut first = 0usize;
    let mut kept = Vec::with_capacity(batches.len());
    for batch in batches {
        let keep: BooleanArray = (first..first + batch.num_rows())
            .map(|row| Some(!rows.contains(&(row as u32))))
            .collect();
        first += batch.num_rows();
        kept.push(filter_record_batch(&batch, &keep)?);
    }
    Ok(kept)
}

/// `batches` without the rows whose Int64 `column` holds one of `keys`.
pub fn without_keys(
    batches: Vec<RecordBatch>,
    column: &str,
    keys: &HashSet<i64>,
) -> Result<Vec<RecordBatch>, ArrowError> {
    batches
        .into_iter()
        .map(|batch| {
            let keep: BooleanArray = int64s(&batch, column)?
                .iter()
                .map(|key| Some(key.is_none_or(|key| !keys.contains(&key))))
                .collect();
            filter_record_batch(&batch, &keep)
        })
        .collect()
}

fn int64s<'a>(batch: &'a RecordBatch, column: &str) -> Result<&'a Int64Array, ArrowError> {
    batch
        .column_by_name(column)
        .and_then(|array| array.as_any().downcast_ref::<Int64Array>())
        .ok_or_else(|| ArrowError::SchemaError(format!("{column} is not an Int64 column")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    #[test]
    fn files_name_their_writer_as_parquet_java_parses_it() {
        let schema =
            std::sync::Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![std::sync::Arc::new(Int64Array::from(vec![1, 2]))],
        )
        .unwrap();
        let file = SerializedFileReader::new(encode(&[batch]).unwrap()).unwrap();
        let created_by = file.metadata().file_metadata().created_by().unwrap();
        // parquet-java's VersionParser: `(.*?)\s+version\s*([^(]*?)...`, whole string.
        let (application, version) = created_by.split_once(" version ").unwrap();
        assert_eq!(application, "datx");
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn pending_keys_carry_their_lease_epoch() {
        let key = pending_key(
            7,
            "tables/orders/institution=v/date=2023-02-01/part-x.parquet",
        );
        assert_eq!(pending_epoch(&key), Some(7));
        assert_eq!(pending_epoch("tables/orders/part-x.parquet"), None);
        assert_eq!(pending_epoch("_datx/pending/junk"), None);
    }
}
