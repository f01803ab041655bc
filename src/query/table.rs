//! One lake table as DataFusion sees it: exactly the Parquet files a commit names.
//!
//! The files come from the commit state, never from listing `tables/`: a directory can
//! hold, for an instant, a file that no commit names yet (or one that a commit has just
//! retired). Filters on `institution` and `date` choose files before anything is read.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Date32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use chrono::NaiveDate;
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::{DFSchema, ScalarValue, Statistics, project_schema};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;

use crate::commit::DataFile;
use crate::tables::Table;

pub const INSTITUTION: &str = "institution";
pub const DATE: &str = "date";
const PARTITION_COLUMNS: [&str; 2] = [INSTITUTION, DATE];

/// The files of one table in one commit (already limited to what the caller may see).
#[derive(Debug)]
pub struct CommittedTable {
    /// The columns stored in the files, with strings as `Utf8View` (what DataFusion's
    /// Parquet reader gives, and faster to process).
    file_schema: SchemaRef,
    /// The file columns, then `institution` and `date`.
    schema: SchemaRef,
    files: Arc<[DataFile]>,
    lake_url: ObjectStoreUrl,
}

impl CommittedTable {
    pub fn new(table: Table, files: Arc<[DataFile]>, lake_url: ObjectStoreUrl) -> CommittedTable {
        let file_schema = Arc::new(Schema::new(
            table
                .schema()
                .fields()
                .iter()
                .map(|field| match field.data_type() {
                    DataType::Utf8 => field.as_ref().clone().with_data_type(DataType::Utf8View),
                    _ => field.as_ref().clone(),
                })
                .collect::<Vec<_>>(),
        ));
        let mut fields: Vec<FieldRef> = file_schema.fields().iter().cloned().collect();
        fields.extend(partition_fields());
        CommittedTable {
            file_schema,
            schema: Arc::new(Schema::new(fields)),
            files,
            lake_url,
        }
    }

    /// The files whose partition values pass every filter.
    fn prune(&self, state: &dyn Session, filters: &[Expr]) -> Result<Vec<&DataFile>> {
        if filters.is_empty() {
            return Ok(self.files.iter().collect());
        }
        let partition_schema = Arc::new(Schema::new(partition_fields().to_vec()));
        let institutions: ArrayRef = Arc::new(StringArray::from_iter_values(
            self.files.iter().map(|f| f.institution.as_str()),
        ));
        let dates: ArrayRef = Arc::new(Date32Array::from_iter_values(
            self.files.iter().map(|f| days_since_epoch(f.date)),
        ));
        let values = RecordBatch::try_new(partition_schema.clone(), vec![institutions, dates])?;
        let df_schema = DFSchema::try_from(partition_schema)?;
        let mut keep = vec![true; self.files.len()];
        for filter in filters {
            let predicate = state.create_physical_expr(filter.clone(), &df_schema)?;
            let verdicts = predicate.evaluate(&values)?.into_array(values.num_rows())?;
            let verdicts = verdicts
                .as_any()
                .downcast_ref::<BooleanArray>()
                .expect("a filter evaluates to booleans");
            for (keep, verdict) in keep.iter_mut().zip(verdicts.iter()) {
                // A null verdict (a comparison with NULL) keeps no row, so no file.
                *keep &= verdict == Some(true);
            }
        }
        Ok(self
            .files
            .iter()
            .zip(keep)
            .filter_map(|(file, keep)| keep.then_some(file))
            .collect())
    }

    fn partitioned_file(&self, file: &DataFile) -> PartitionedFile {
        let mut statistics = Statistics::new_unknown(&self.file_schema);
        statistics.num_rows = Precision::Exact(file.rows as usize);
        statistics.total_byte_size = Precision::Inexact(file.bytes as usize);
        PartitionedFile::new(file.path.clone(), file.bytes)
            .with_partition_values(vec![
                ScalarValue::Utf8(Some(file.institution.clone())),
                ScalarValue::Date32(Some(days_since_epoch(file.date))),
            ])
            .with_statistics(Arc::new(statistics))
    }
}

fn partition_fields() -> [FieldRef; 2] {
    [
        Arc::new(Field::new(INSTITUTION, DataType::Utf8, false)),
        Arc::new(Field::new(DATE, DataType::Date32, false)),
    ]
}

fn days_since_epoch(date: NaiveDate) -> i32 {
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date")).num_days() as i32
}

fn is_partition_filter(filter: &Expr) -> bool {
    expr_applicable_for_cols(&PARTITION_COLUMNS, filter)
}

#[async_trait]
impl TableProvider for CommittedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Partition filters are applied whole by choosing files; the others are also pushed
    /// into the Parquet reader (to skip row groups) but checked again above the scan.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| match is_partition_filter(filter) {
                true => TableProviderFilterPushDown::Exact,
                false => TableProviderFilterPushDown::Inexact,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partition_filters: Vec<Expr> = filters
            .iter()
            .filter(|filter| is_partition_filter(filter))
            .cloned()
            .collect();
        let files = self.prune(state, &partition_filters)?;
        if files.is_empty() {
            let schema = project_schema(&self.schema, projection)?;
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let files = files
            .into_iter()
            .map(|f| self.partitioned_file(f))
            .collect();
        let groups = FileGroup::new(files).split_files(state.config().target_partitions());

        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let table_schema = TableSchema::builder(self.file_schema.clone())
            .with_table_partition_cols(partition_fields().to_vec())
            .build();
        let config =
            FileScanConfigBuilder::new(self.lake_url.clone(), format.file_source(table_schema))
                .with_file_groups(groups)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
        format.create_physical_plan(state, config).await
    }
}
