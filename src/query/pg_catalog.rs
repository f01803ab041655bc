//! What PostgreSQL clients expect to find beside the lake's tables: a `pg_catalog` schema
//! that describes them, the session functions BI tools call on connect (`version()`,
//! `current_schema()`, `has_table_privilege`...), and the Postgres spellings DataFusion
//! does not read (`'pg_class'::regclass`, `::oid`, `OPERATOR(pg_catalog.~)`, `'{a,b}'::text[]`).
//!
//! Owns the catalog's rows and the rewriting of those spellings. Every session gets them,
//! whichever door the query came in by. It must never describe anything a query could not
//! read (no institutions, no files) and never change what an ordinary query means.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{MemTable, MemorySchemaProvider, SchemaProvider, TableFunctionImpl};
use datafusion::catalog::{TableFunctionArgs, TableProvider};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{
    self, BinaryOperator, CastKind, Expr, Ident, ObjectName, ObjectNamePart, Value, VisitMut,
    VisitorMut,
};

/// The version PostgreSQL clients are told: they pick their catalog queries by it, and 16
/// is what this catalog's columns follow.
pub const SERVER_VERSION: &str = "16.6";

/// The only database, whatever name a client connects with.
pub const DATABASE: &str = "datx";

const PG_CATALOG: i64 = 11;
const PUBLIC: i64 = 2200;
const INFORMATION_SCHEMA: i64 = 13_183;
/// The role every object belongs to (PostgreSQL's bootstrap superuser oid).
const OWNER: i64 = 10;
/// The lake's tables and views are numbered from here, like user objects in PostgreSQL.
const FIRST_USER_OID: i64 = 16_384;

/// A PostgreSQL type as the catalog lists it and the wire protocol sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgType {
    pub oid: u32,
    pub name: &'static str,
    /// `typlen`: the width in bytes, or -1 for a variable-length type.
    len: i16,
    /// `typcategory`: B(oolean), N(umeric), S(tring), D(ate/time), U(ser), A(rray)...
    category: char,
    /// The element type of an array type, 0 otherwise.
    element: u32,
    /// The array type of this type, 0 if none.
    array: u32,
}

const fn pg_type(
    oid: u32,
    name: &'static str,
    len: i16,
    category: char,
    element: u32,
    array: u32,
) -> PgType {
    PgType {
        oid,
        name,
        len,
        category,
        element,
        array,
    }
}

/// The types the catalog lists: those the lake's columns and the catalog itself use, and
/// those clients look up by oid on connect. The oids are PostgreSQL's own.
pub const TYPES: [PgType; 26] = [
    pg_type(16, "bool", 1, 'B', 0, 1000),
    pg_type(17, "bytea", -1, 'U', 0, 1001),
    pg_type(18, "char", 1, 'Z', 0, 1002),
    pg_type(19, "name", 64, 'S', 0, 1003),
    pg_type(20, "int8", 8, 'N', 0, 1016),
    pg_type(21, "int2", 2, 'N', 0, 1005),
    pg_type(23, "int4", 4, 'N', 0, 1007),
    pg_type(25, "text", -1, 'S', 0, 1009),
    pg_type(26, "oid", 4, 'N', 0, 1028),
    pg_type(700, "float4", 4, 'N', 0, 1021),
    pg_type(701, "float8", 8, 'N', 0, 1022),
    pg_type(1000, "_bool", -1, 'A', 16, 0),
    pg_type(1005, "_int2", -1, 'A', 21, 0),
    pg_type(1007, "_int4", -1, 'A', 23, 0),
    pg_type(1009, "_text", -1, 'A', 25, 0),
    pg_type(1016, "_int8", -1, 'A', 20, 0),
    pg_type(1022, "_float8", -1, 'A', 701, 0),
    pg_type(1043, "varchar", -1, 'S', 0, 1015),
    pg_type(1082, "date", 4, 'D', 0, 1182),
    pg_type(1083, "time", 8, 'D', 0, 1183),
    pg_type(1114, "timestamp", 8, 'D', 0, 1115),
    pg_type(1184, "timestamptz", 8, 'D', 0, 1185),
    pg_type(1186, "interval", 16, 'T', 0, 1187),
    pg_type(1700, "numeric", -1, 'N', 0, 1231),
    pg_type(2205, "regclass", 4, 'N', 0, 2210),
    pg_type(2950, "uuid", 16, 'U', 0, 2951),
];

fn type_by_oid(oid: u32) -> Option<&'static PgType> {
    TYPES.iter().find(|t| t.oid == oid)
}

fn type_named(name: &str) -> &'static PgType {
    TYPES
        .iter()
        .find(|t| t.name == name)
        .expect("the name is one of TYPES")
}

/// The type `name` names, as `to_regtype` reads it: its internal name (`int4`) or its SQL
/// name (`integer`), with or without `pg_catalog.`; `None` for a type the lake does not
/// have (`hstore`).
fn type_called(name: &str) -> Option<&'static PgType> {
    let name = name.trim().to_ascii_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    TYPES.iter().find(|t| t.name == name || sql_name(t) == name)
}

/// A type's name as PostgreSQL displays a `regtype` (`pg_typeof`, `format_type`).
fn sql_name(t: &PgType) -> &'static str {
    match t.name {
        "bool" => "boolean",
        "int2" => "smallint",
        "int4" => "integer",
        "int8" => "bigint",
        "float4" => "real",
        "float8" => "double precision",
        "varchar" => "character varying",
        "char" => "\"char\"",
        "time" => "time without time zone",
        "timestamp" => "timestamp without time zone",
        "timestamptz" => "timestamp with time zone",
        "_bool" => "boolean[]",
        "_int2" => "smallint[]",
        "_int4" => "integer[]",
        "_int8" => "bigint[]",
        "_text" => "text[]",
        "_float8" => "double precision[]",
        name => name,
    }
}

/// The PostgreSQL type a column of `data_type` is sent as. Anything without a close
/// PostgreSQL match (decimals, intervals, nested values) is sent as its text.
pub fn pg_type_of(data_type: &DataType) -> &'static PgType {
    type_named(match data_type {
        DataType::Boolean => "bool",
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "int2",
        DataType::Int32 | DataType::UInt16 => "int4",
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "int8",
        DataType::Float16 | DataType::Float32 => "float4",
        DataType::Float64 => "float8",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Decimal32(_, _)
        | DataType::Decimal64(_, _)
        | DataType::Decimal128(_, _)
        | DataType::Decimal256(_, _) => "numeric",
        DataType::Timestamp(_, Some(_)) => "timestamptz",
        DataType::Timestamp(_, None) => "timestamp",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea",
        DataType::List(item) | DataType::LargeList(item) => match item.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "_text",
            DataType::Int64 => "_int8",
            DataType::Int32 => "_int4",
            DataType::Boolean => "_bool",
            _ => "text",
        },
        _ => "text",
    })
}

/// Adds the catalog schema, its table function and the session functions to `session`,
/// which already holds the lake's tables and views.
pub async fn install(session: &SessionContext) -> Result<()> {
    let built = match CATALOG.get() {
        Some(built) => built.clone(),
        None => {
            let built = build_catalog(session).await?;
            CATALOG.get_or_init(|| built).clone()
        }
    };
    let catalog = session
        .catalog("datafusion")
        .ok_or_else(|| DataFusionError::Plan("the default catalog is missing".into()))?;
    catalog.register_schema("pg_catalog", built.pg_catalog)?;
    catalog.register_schema(PG_INFORMATION_SCHEMA, built.information_schema)?;
    session.register_udtf("pg_get_keywords", Arc::new(Keywords));
    for function in functions() {
        session.register_udf(ScalarUDF::new_from_impl(function));
    }
    session.register_udf(ScalarUDF::new_from_impl(ToRegclass {
        signature: Signature::any(1, Volatility::Immutable),
        oids: built.oids,
    }));
    Ok(())
}

/// The catalog only describes what every session has (the same tables and views), so it
/// is built once, from the first session.
static CATALOG: OnceLock<Catalog> = OnceLock::new();

#[derive(Clone)]
struct Catalog {
    pg_catalog: Arc<dyn SchemaProvider>,
    /// `information_schema` tables with the columns PostgreSQL clients read, which
    /// DataFusion's own lack (`udt_name`, constraints): references are rewritten to them.
    information_schema: Arc<dyn SchemaProvider>,
    /// Relation names (`contacts`, `public.contacts`, `pg_catalog.pg_class`) to oids, for
    /// `'...'::regclass`.
    oids: Arc<BTreeMap<String, i64>>,
}

/// The schema that holds PostgreSQL's versions of some `information_schema` tables.
const PG_INFORMATION_SCHEMA: &str = "pg_information_schema";
const PG_INFORMATION_SCHEMA_TABLES: [&str; 3] =
    ["columns", "key_column_usage", "table_constraints"];

/// A relation the catalog lists: a lake table or view, or a catalog table.
struct Relation {
    oid: i64,
    name: String,
    namespace: i64,
    kind: &'static str,
    schema: SchemaRef,
}

/// PostgreSQL's own oids for its catalog tables: clients name them as `'pg_class'::regclass`.
const CATALOG_OIDS: [(&str, i64); 26] = [
    ("pg_am", 2601),
    ("pg_attrdef", 2604),
    ("pg_attribute", 1249),
    ("pg_class", 1259),
    ("pg_collation", 3456),
    ("pg_constraint", 2606),
    ("pg_database", 1262),
    ("pg_depend", 2608),
    ("pg_description", 2609),
    ("pg_enum", 3501),
    ("pg_extension", 3079),
    ("pg_index", 2610),
    ("pg_inherits", 2611),
    ("pg_matviews", 12_004),
    ("pg_namespace", 2615),
    ("pg_proc", 1255),
    ("pg_range", 3541),
    ("pg_roles", 12_001),
    ("pg_settings", 12_002),
    ("pg_stat_user_tables", 12_005),
    ("pg_tables", 12_006),
    ("pg_tablespace", 1213),
    ("pg_trigger", 2620),
    ("pg_type", 1247),
    ("pg_user", 12_003),
    ("pg_views", 12_007),
];

async fn build_catalog(session: &SessionContext) -> Result<Catalog> {
    let mut relations = Vec::new();
    let public = session
        .catalog("datafusion")
        .and_then(|c| c.schema("public"))
        .ok_or_else(|| DataFusionError::Plan("the public schema is missing".into()))?;
    let mut names = public.table_names();
    names.sort();
    for (n, name) in names.into_iter().enumerate() {
        let Some(table) = public.table(&name).await? else {
            continue;
        };
        let kind = match table.table_type() {
            datafusion::datasource::TableType::View => "v",
            _ => "r",
        };
        relations.push(Relation {
            oid: FIRST_USER_OID + n as i64,
            name,
            namespace: PUBLIC,
            kind,
            schema: table.schema(),
        });
    }
    let tables = catalog_tables(&relations);
    for (name, oid) in CATALOG_OIDS {
        let schema = tables
            .get(name)
            .map(|t| t.schema())
            .expect("every catalog oid names a catalog table");
        relations.push(Relation {
            oid,
            name: name.to_string(),
            namespace: PG_CATALOG,
            kind: "r",
            schema,
        });
    }
    // pg_class and pg_attribute list the catalog tables too, so build them again now that
    // the relations are complete.
    let pg_catalog = MemorySchemaProvider::new();
    for (name, table) in catalog_tables(&relations) {
        pg_catalog.register_table(name.to_string(), table)?;
    }
    let information_schema = MemorySchemaProvider::new();
    for (name, table) in information_schema_tables(&relations) {
        information_schema.register_table(name.to_string(), table)?;
    }
    let mut oids = BTreeMap::new();
    for relation in &relations {
        let schema = match relation.namespace {
            PUBLIC => "public",
            _ => "pg_catalog",
        };
        oids.insert(relation.name.clone(), relation.oid);
        oids.insert(format!("{schema}.{}", relation.name), relation.oid);
    }
    Ok(Catalog {
        pg_catalog: Arc::new(pg_catalog),
        information_schema: Arc::new(information_schema),
        oids: Arc::new(oids),
    })
}

/// `information_schema.columns`, `table_constraints` and `key_column_usage` of the lake's
/// tables and views, with DataFusion's columns and PostgreSQL's.
fn information_schema_tables(
    relations: &[Relation],
) -> BTreeMap<&'static str, Arc<dyn TableProvider>> {
    use DataType::{Int64, Utf8};
    let columns: Vec<(&Relation, usize, &Field)> = relations
        .iter()
        .filter(|r| r.namespace == PUBLIC)
        .flat_map(|r| {
            r.schema
                .fields()
                .iter()
                .enumerate()
                .map(move |(i, f)| (r, i + 1, f.as_ref()))
        })
        .collect();
    let n = columns.len();
    let mut tables = BTreeMap::new();
    tables.insert(
        "columns",
        table(vec![
            column("table_catalog", Utf8, text(same(n, "datafusion"))),
            column("table_schema", Utf8, text(same(n, "public"))),
            column(
                "table_name",
                Utf8,
                text(columns.iter().map(|(r, _, _)| &r.name)),
            ),
            column(
                "column_name",
                Utf8,
                text(columns.iter().map(|(_, _, f)| f.name())),
            ),
            column(
                "ordinal_position",
                Int64,
                int8(columns.iter().map(|(_, i, _)| *i as i64)),
            ),
            column("column_default", Utf8, null_text(n)),
            column(
                "is_nullable",
                Utf8,
                text(
                    columns
                        .iter()
                        .map(|(_, _, f)| if f.is_nullable() { "YES" } else { "NO" }),
                ),
            ),
            column(
                "data_type",
                Utf8,
                text(columns.iter().map(|(_, _, f)| f.data_type().to_string())),
            ),
            column(
                "character_maximum_length",
                Int64,
                same(n, ScalarValue::Int64(None)),
            ),
            column(
                "numeric_precision",
                Int64,
                same(n, ScalarValue::Int64(None)),
            ),
            column("numeric_scale", Int64, same(n, ScalarValue::Int64(None))),
            column(
                "datetime_precision",
                Int64,
                same(n, ScalarValue::Int64(None)),
            ),
            column("udt_catalog", Utf8, text(same(n, DATABASE))),
            column("udt_schema", Utf8, text(same(n, "pg_catalog"))),
            column(
                "udt_name",
                Utf8,
                text(
                    columns
                        .iter()
                        .map(|(_, _, f)| pg_type_of(f.data_type()).name),
                ),
            ),
            column("is_identity", Utf8, text(same(n, "NO"))),
            column("is_generated", Utf8, text(same(n, "NEVER"))),
            column("is_updatable", Utf8, text(same(n, "NO"))),
        ]),
    );
    let constraint = [
        ("constraint_catalog", Utf8),
        ("constraint_schema", Utf8),
        ("constraint_name", Utf8),
        ("table_catalog", Utf8),
        ("table_schema", Utf8),
        ("table_name", Utf8),
    ];
    let mut table_constraints = constraint.to_vec();
    table_constraints.extend([
        ("constraint_type", Utf8),
        ("is_deferrable", Utf8),
        ("initially_deferred", Utf8),
        ("enforced", Utf8),
    ]);
    tables.insert("table_constraints", empty(&table_constraints));
    let mut key_column_usage = constraint.to_vec();
    key_column_usage.extend([
        ("column_name", Utf8),
        ("ordinal_position", Int64),
        ("position_in_unique_constraint", Int64),
    ]);
    tables.insert("key_column_usage", empty(&key_column_usage));
    tables
}

/// One column of a catalog table and its value on each row.
struct Column {
    name: &'static str,
    values: Vec<ScalarValue>,
    data_type: DataType,
}

fn column(name: &'static str, data_type: DataType, values: Vec<ScalarValue>) -> Column {
    Column {
        name,
        values,
        data_type,
    }
}

fn scalars<T>(
    values: impl IntoIterator<Item = T>,
    scalar: impl Fn(Option<T>) -> ScalarValue,
) -> Vec<ScalarValue> {
    values.into_iter().map(|v| scalar(Some(v))).collect()
}

fn text<S: ToString>(values: impl IntoIterator<Item = S>) -> Vec<ScalarValue> {
    scalars(values.into_iter().map(|v| v.to_string()), ScalarValue::Utf8)
}

fn int8(values: impl IntoIterator<Item = i64>) -> Vec<ScalarValue> {
    scalars(values, ScalarValue::Int64)
}

fn int4(values: impl IntoIterator<Item = i32>) -> Vec<ScalarValue> {
    scalars(values, ScalarValue::Int32)
}

fn int2(values: impl IntoIterator<Item = i16>) -> Vec<ScalarValue> {
    scalars(values, ScalarValue::Int16)
}

fn boolean(values: impl IntoIterator<Item = bool>) -> Vec<ScalarValue> {
    scalars(values, ScalarValue::Boolean)
}

/// `rows` copies of one value.
fn same<T: Clone>(rows: usize, value: T) -> Vec<T> {
    vec![value; rows]
}

fn null_text(rows: usize) -> Vec<ScalarValue> {
    same(rows, ScalarValue::Utf8(None))
}

/// A catalog table of the given columns; one with no rows needs its columns' types only.
fn table(columns: Vec<Column>) -> Arc<dyn TableProvider> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(c.name, c.data_type.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let arrays = columns
        .into_iter()
        .map(|c| match c.values.is_empty() {
            true => Ok(arrow::array::new_empty_array(&c.data_type)),
            false => ScalarValue::iter_to_array(c.values),
        })
        .collect::<Result<Vec<ArrayRef>>>()
        .expect("catalog columns are built with their declared types");
    let batch = RecordBatch::try_new(schema.clone(), arrays)
        .expect("catalog columns have one value per row");
    Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("the batch fits its schema"))
}

/// An empty catalog table: its columns are what clients join on and filter by.
fn empty(columns: &[(&'static str, DataType)]) -> Arc<dyn TableProvider> {
    table(
        columns
            .iter()
            .map(|(name, data_type)| column(name, data_type.clone(), vec![]))
            .collect(),
    )
}

fn catalog_tables(relations: &[Relation]) -> BTreeMap<&'static str, Arc<dyn TableProvider>> {
    use DataType::{Boolean, Float32, Int16, Int32, Int64, Utf8};
    let mut tables = BTreeMap::new();
    let n = relations.len();
    tables.insert(
        "pg_namespace",
        table(vec![
            column("oid", Int64, int8([PG_CATALOG, PUBLIC, INFORMATION_SCHEMA])),
            column(
                "nspname",
                Utf8,
                text(["pg_catalog", "public", "information_schema"]),
            ),
            column("nspowner", Int64, int8(same(3, OWNER))),
            column("nspacl", Utf8, null_text(3)),
        ]),
    );
    tables.insert(
        "pg_class",
        table(vec![
            column("oid", Int64, int8(relations.iter().map(|r| r.oid))),
            column("relname", Utf8, text(relations.iter().map(|r| &r.name))),
            column(
                "relnamespace",
                Int64,
                int8(relations.iter().map(|r| r.namespace)),
            ),
            column("reltype", Int64, int8(same(n, 0))),
            column("reloftype", Int64, int8(same(n, 0))),
            column("relowner", Int64, int8(same(n, OWNER))),
            column("relam", Int64, int8(same(n, 0))),
            column("relfilenode", Int64, int8(same(n, 0))),
            column("reltablespace", Int64, int8(same(n, 0))),
            column("relpages", Int32, int4(same(n, 0))),
            column(
                "reltuples",
                Float32,
                same(n, ScalarValue::Float32(Some(-1.0))),
            ),
            column("relallvisible", Int32, int4(same(n, 0))),
            column("reltoastrelid", Int64, int8(same(n, 0))),
            column("relhasindex", Boolean, boolean(same(n, false))),
            column("relisshared", Boolean, boolean(same(n, false))),
            column("relpersistence", Utf8, text(same(n, "p"))),
            column("relkind", Utf8, text(relations.iter().map(|r| r.kind))),
            column(
                "relnatts",
                Int16,
                int2(relations.iter().map(|r| r.schema.fields().len() as i16)),
            ),
            column("relchecks", Int16, int2(same(n, 0))),
            column("relhasrules", Boolean, boolean(same(n, false))),
            column("relhastriggers", Boolean, boolean(same(n, false))),
            column("relhassubclass", Boolean, boolean(same(n, false))),
            column("relrowsecurity", Boolean, boolean(same(n, false))),
            column("relforcerowsecurity", Boolean, boolean(same(n, false))),
            column("relispopulated", Boolean, boolean(same(n, true))),
            column("relreplident", Utf8, text(same(n, "d"))),
            column("relispartition", Boolean, boolean(same(n, false))),
            column("relrewrite", Int64, int8(same(n, 0))),
            column("relfrozenxid", Int64, int8(same(n, 0))),
            column("relminmxid", Int64, int8(same(n, 0))),
            column("relacl", Utf8, null_text(n)),
            column("reloptions", Utf8, null_text(n)),
            column("relpartbound", Utf8, null_text(n)),
        ]),
    );
    let attributes: Vec<(&Relation, usize, &Field)> = relations
        .iter()
        .flat_map(|r| {
            r.schema
                .fields()
                .iter()
                .enumerate()
                .map(move |(i, f)| (r, i + 1, f.as_ref()))
        })
        .collect();
    let a = attributes.len();
    tables.insert(
        "pg_attribute",
        table(vec![
            column(
                "attrelid",
                Int64,
                int8(attributes.iter().map(|(r, _, _)| r.oid)),
            ),
            column(
                "attname",
                Utf8,
                text(attributes.iter().map(|(_, _, f)| f.name())),
            ),
            column(
                "atttypid",
                Int64,
                int8(
                    attributes
                        .iter()
                        .map(|(_, _, f)| pg_type_of(f.data_type()).oid as i64),
                ),
            ),
            column("attstattarget", Int16, int2(same(a, -1))),
            column(
                "attlen",
                Int16,
                int2(
                    attributes
                        .iter()
                        .map(|(_, _, f)| pg_type_of(f.data_type()).len),
                ),
            ),
            column(
                "attnum",
                Int16,
                int2(attributes.iter().map(|(_, i, _)| *i as i16)),
            ),
            column("attndims", Int16, int2(same(a, 0))),
            column("attcacheoff", Int32, int4(same(a, -1))),
            column("atttypmod", Int32, int4(same(a, -1))),
            column("attbyval", Boolean, boolean(same(a, false))),
            column("attalign", Utf8, text(same(a, "i"))),
            column("attstorage", Utf8, text(same(a, "p"))),
            column("attcompression", Utf8, text(same(a, ""))),
            column(
                "attnotnull",
                Boolean,
                boolean(attributes.iter().map(|(_, _, f)| !f.is_nullable())),
            ),
            column("atthasdef", Boolean, boolean(same(a, false))),
            column("atthasmissing", Boolean, boolean(same(a, false))),
            column("attidentity", Utf8, text(same(a, ""))),
            column("attgenerated", Utf8, text(same(a, ""))),
            column("attisdropped", Boolean, boolean(same(a, false))),
            column("attislocal", Boolean, boolean(same(a, true))),
            column("attinhcount", Int16, int2(same(a, 0))),
            column("attcollation", Int64, int8(same(a, 0))),
            column("attacl", Utf8, null_text(a)),
            column("attoptions", Utf8, null_text(a)),
            column("attfdwoptions", Utf8, null_text(a)),
            column("attmissingval", Utf8, null_text(a)),
        ]),
    );
    let t = TYPES.len();
    tables.insert(
        "pg_type",
        table(vec![
            column("oid", Int64, int8(TYPES.iter().map(|t| t.oid as i64))),
            column("typname", Utf8, text(TYPES.iter().map(|t| t.name))),
            column("typnamespace", Int64, int8(same(t, PG_CATALOG))),
            column("typowner", Int64, int8(same(t, OWNER))),
            column("typlen", Int16, int2(TYPES.iter().map(|t| t.len))),
            column(
                "typbyval",
                Boolean,
                boolean(TYPES.iter().map(|t| t.len > 0 && t.len <= 8)),
            ),
            column("typtype", Utf8, text(same(t, "b"))),
            column("typcategory", Utf8, text(TYPES.iter().map(|t| t.category))),
            column("typispreferred", Boolean, boolean(same(t, false))),
            column("typisdefined", Boolean, boolean(same(t, true))),
            column("typdelim", Utf8, text(same(t, ","))),
            column("typrelid", Int64, int8(same(t, 0))),
            column("typsubscript", Utf8, text(same(t, "-"))),
            column(
                "typelem",
                Int64,
                int8(TYPES.iter().map(|t| t.element as i64)),
            ),
            column(
                "typarray",
                Int64,
                int8(TYPES.iter().map(|t| t.array as i64)),
            ),
            column(
                "typinput",
                Utf8,
                text(TYPES.iter().map(|t| io_function(t, "in"))),
            ),
            column(
                "typoutput",
                Utf8,
                text(TYPES.iter().map(|t| io_function(t, "out"))),
            ),
            column(
                "typreceive",
                Utf8,
                text(TYPES.iter().map(|t| io_function(t, "recv"))),
            ),
            column(
                "typsend",
                Utf8,
                text(TYPES.iter().map(|t| io_function(t, "send"))),
            ),
            column("typmodin", Utf8, text(same(t, "-"))),
            column("typmodout", Utf8, text(same(t, "-"))),
            column("typanalyze", Utf8, text(same(t, "-"))),
            column("typalign", Utf8, text(same(t, "i"))),
            column("typstorage", Utf8, text(same(t, "p"))),
            column("typnotnull", Boolean, boolean(same(t, false))),
            column("typbasetype", Int64, int8(same(t, 0))),
            column("typtypmod", Int32, int4(same(t, -1))),
            column("typndims", Int32, int4(same(t, 0))),
            column("typcollation", Int64, int8(same(t, 0))),
            column("typdefaultbin", Utf8, null_text(t)),
            column("typdefault", Utf8, null_text(t)),
            column("typacl", Utf8, null_text(t)),
        ]),
    );
    tables.insert(
        "pg_database",
        table(vec![
            column("oid", Int64, int8([FIRST_USER_OID - 1])),
            column("datname", Utf8, text([DATABASE])),
            column("datdba", Int64, int8([OWNER])),
            column("encoding", Int32, int4([6])),
            column("datlocprovider", Utf8, text(["c"])),
            column("datistemplate", Boolean, boolean([false])),
            column("datallowconn", Boolean, boolean([true])),
            column("datconnlimit", Int32, int4([-1])),
            column("datfrozenxid", Int64, int8([0])),
            column("datminmxid", Int64, int8([0])),
            column("dattablespace", Int64, int8([1663])),
            column("datcollate", Utf8, text(["C"])),
            column("datctype", Utf8, text(["C"])),
            column("daticulocale", Utf8, null_text(1)),
            column("daticurules", Utf8, null_text(1)),
            column("datcollversion", Utf8, null_text(1)),
            // An array, as psql's `\l` joins it with array_to_string: no privileges set.
            {
                let acl = DataType::List(Arc::new(Field::new_list_field(Utf8, true)));
                let none = ScalarValue::try_from(&acl).expect("a list has a null");
                column("datacl", acl, vec![none])
            },
        ]),
    );
    let roles = || {
        vec![
            column("oid", Int64, int8([OWNER])),
            column("rolname", Utf8, text([DATABASE])),
            column("rolsuper", Boolean, boolean([false])),
            column("rolinherit", Boolean, boolean([true])),
            column("rolcreaterole", Boolean, boolean([false])),
            column("rolcreatedb", Boolean, boolean([false])),
            column("rolcanlogin", Boolean, boolean([true])),
            column("rolreplication", Boolean, boolean([false])),
            column("rolconnlimit", Int32, int4([-1])),
            column("rolpassword", Utf8, text(["********"])),
            column("rolvaliduntil", Utf8, null_text(1)),
            column("rolbypassrls", Boolean, boolean([false])),
            column("rolconfig", Utf8, null_text(1)),
        ]
    };
    tables.insert("pg_roles", table(roles()));
    tables.insert(
        "pg_user",
        table(vec![
            column("usename", Utf8, text([DATABASE])),
            column("usesysid", Int64, int8([OWNER])),
            column("usecreatedb", Boolean, boolean([false])),
            column("usesuper", Boolean, boolean([false])),
            column("userepl", Boolean, boolean([false])),
            column("usebypassrls", Boolean, boolean([false])),
            column("passwd", Utf8, text(["********"])),
            column("valuntil", Utf8, null_text(1)),
            column("useconfig", Utf8, null_text(1)),
        ]),
    );
    tables.insert(
        "pg_tablespace",
        table(vec![
            column("oid", Int64, int8([1663])),
            column("spcname", Utf8, text(["pg_default"])),
            column("spcowner", Int64, int8([OWNER])),
            column("spcacl", Utf8, null_text(1)),
            column("spcoptions", Utf8, null_text(1)),
        ]),
    );
    let settings = SETTINGS;
    let s = settings.len();
    tables.insert(
        "pg_settings",
        table(vec![
            column("name", Utf8, text(settings.iter().map(|(name, _)| name))),
            column(
                "setting",
                Utf8,
                text(settings.iter().map(|(_, value)| value)),
            ),
            column("unit", Utf8, null_text(s)),
            column(
                "category",
                Utf8,
                text(same(s, "Client Connection Defaults")),
            ),
            column("short_desc", Utf8, text(same(s, ""))),
            column("extra_desc", Utf8, null_text(s)),
            column("context", Utf8, text(same(s, "user"))),
            column("vartype", Utf8, text(same(s, "string"))),
            column("source", Utf8, text(same(s, "default"))),
            column("min_val", Utf8, null_text(s)),
            column("max_val", Utf8, null_text(s)),
            column("enumvals", Utf8, null_text(s)),
            column(
                "boot_val",
                Utf8,
                text(settings.iter().map(|(_, value)| value)),
            ),
            column(
                "reset_val",
                Utf8,
                text(settings.iter().map(|(_, value)| value)),
            ),
            column("sourcefile", Utf8, null_text(s)),
            column("sourceline", Int32, same(s, ScalarValue::Int32(None))),
            column("pending_restart", Boolean, boolean(same(s, false))),
        ]),
    );
    tables.insert(
        "pg_am",
        table(vec![
            column("oid", Int64, int8([2])),
            column("amname", Utf8, text(["heap"])),
            column("amhandler", Utf8, text(["heap_tableam_handler"])),
            column("amtype", Utf8, text(["t"])),
        ]),
    );
    let oid = || ("oid", Int64);
    let int2_list = || DataType::List(Arc::new(Field::new_list_field(Int16, true)));
    let public: Vec<&Relation> = relations.iter().filter(|r| r.namespace == PUBLIC).collect();
    let listed = |kind: &str| -> Vec<&Relation> {
        public.iter().copied().filter(|r| r.kind == kind).collect()
    };
    let (lake_tables, lake_views) = (listed("r"), listed("v"));
    let (t, v) = (lake_tables.len(), lake_views.len());
    tables.insert(
        "pg_tables",
        table(vec![
            column("schemaname", Utf8, text(same(t, "public"))),
            column("tablename", Utf8, text(lake_tables.iter().map(|r| &r.name))),
            column("tableowner", Utf8, text(same(t, DATABASE))),
            column("tablespace", Utf8, null_text(t)),
            column("hasindexes", Boolean, boolean(same(t, false))),
            column("hasrules", Boolean, boolean(same(t, false))),
            column("hastriggers", Boolean, boolean(same(t, false))),
            column("rowsecurity", Boolean, boolean(same(t, false))),
        ]),
    );
    tables.insert(
        "pg_views",
        table(vec![
            column("schemaname", Utf8, text(same(v, "public"))),
            column("viewname", Utf8, text(lake_views.iter().map(|r| &r.name))),
            column("viewowner", Utf8, text(same(v, DATABASE))),
            column("definition", Utf8, null_text(v)),
        ]),
    );
    tables.insert(
        "pg_matviews",
        empty(&[
            ("schemaname", Utf8),
            ("matviewname", Utf8),
            ("matviewowner", Utf8),
            ("tablespace", Utf8),
            ("hasindexes", Boolean),
            ("ispopulated", Boolean),
            ("definition", Utf8),
        ]),
    );
    // Row counts would mean reading the lake: "unknown", as for a table never analysed.
    tables.insert(
        "pg_stat_user_tables",
        table(vec![
            column("relid", Int64, int8(lake_tables.iter().map(|r| r.oid))),
            column("schemaname", Utf8, text(same(t, "public"))),
            column("relname", Utf8, text(lake_tables.iter().map(|r| &r.name))),
            column("seq_scan", Int64, int8(same(t, 0))),
            column("n_live_tup", Int64, same(t, ScalarValue::Int64(None))),
            column("n_dead_tup", Int64, int8(same(t, 0))),
        ]),
    );
    tables.insert(
        "pg_description",
        empty(&[
            ("objoid", Int64),
            ("classoid", Int64),
            ("objsubid", Int32),
            ("description", Utf8),
        ]),
    );
    tables.insert(
        "pg_enum",
        empty(&[
            oid(),
            ("enumtypid", Int64),
            ("enumsortorder", Float32),
            ("enumlabel", Utf8),
        ]),
    );
    tables.insert(
        "pg_constraint",
        empty(&[
            oid(),
            ("conname", Utf8),
            ("connamespace", Int64),
            ("contype", Utf8),
            ("condeferrable", Boolean),
            ("condeferred", Boolean),
            ("convalidated", Boolean),
            ("conrelid", Int64),
            ("contypid", Int64),
            ("conindid", Int64),
            ("conparentid", Int64),
            ("confrelid", Int64),
            ("confupdtype", Utf8),
            ("confdeltype", Utf8),
            ("confmatchtype", Utf8),
            ("conislocal", Boolean),
            ("coninhcount", Int16),
            ("connoinherit", Boolean),
            ("conkey", int2_list()),
            ("confkey", int2_list()),
            ("conbin", Utf8),
        ]),
    );
    tables.insert(
        "pg_index",
        empty(&[
            ("indexrelid", Int64),
            ("indrelid", Int64),
            ("indnatts", Int16),
            ("indnkeyatts", Int16),
            ("indisunique", Boolean),
            ("indnullsnotdistinct", Boolean),
            ("indisprimary", Boolean),
            ("indisexclusion", Boolean),
            ("indimmediate", Boolean),
            ("indisclustered", Boolean),
            ("indisvalid", Boolean),
            ("indcheckxmin", Boolean),
            ("indisready", Boolean),
            ("indislive", Boolean),
            ("indisreplident", Boolean),
            ("indkey", int2_list()),
            ("indcollation", int2_list()),
            ("indclass", int2_list()),
            ("indoption", int2_list()),
            ("indexprs", Utf8),
            ("indpred", Utf8),
        ]),
    );
    tables.insert(
        "pg_inherits",
        empty(&[
            ("inhrelid", Int64),
            ("inhparent", Int64),
            ("inhseqno", Int32),
            ("inhdetachpending", Boolean),
        ]),
    );
    tables.insert(
        "pg_attrdef",
        empty(&[oid(), ("adrelid", Int64), ("adnum", Int16), ("adbin", Utf8)]),
    );
    tables.insert(
        "pg_proc",
        empty(&[
            oid(),
            ("proname", Utf8),
            ("pronamespace", Int64),
            ("proowner", Int64),
            ("prolang", Int64),
            ("prokind", Utf8),
            ("proretset", Boolean),
            ("prorettype", Int64),
            ("proargtypes", Utf8),
            ("proargnames", Utf8),
            ("prosrc", Utf8),
        ]),
    );
    tables.insert(
        "pg_trigger",
        empty(&[
            oid(),
            ("tgrelid", Int64),
            ("tgname", Utf8),
            ("tgfoid", Int64),
            ("tgtype", Int16),
            ("tgenabled", Utf8),
            ("tgisinternal", Boolean),
        ]),
    );
    tables.insert(
        "pg_collation",
        empty(&[
            oid(),
            ("collname", Utf8),
            ("collnamespace", Int64),
            ("collowner", Int64),
            ("collprovider", Utf8),
            ("collisdeterministic", Boolean),
            ("collencoding", Int32),
            ("collcollate", Utf8),
            ("collctype", Utf8),
        ]),
    );
    tables.insert(
        "pg_extension",
        empty(&[
            oid(),
            ("extname", Utf8),
            ("extowner", Int64),
            ("extnamespace", Int64),
            ("extrelocatable", Boolean),
            ("extversion", Utf8),
        ]),
    );
    tables.insert(
        "pg_range",
        empty(&[
            ("rngtypid", Int64),
            ("rngsubtype", Int64),
            ("rngmultitypid", Int64),
            ("rngcollation", Int64),
        ]),
    );
    tables.insert(
        "pg_depend",
        empty(&[
            ("classid", Int64),
            ("objid", Int64),
            ("objsubid", Int32),
            ("refclassid", Int64),
            ("refobjid", Int64),
            ("refobjsubid", Int32),
            ("deptype", Utf8),
        ]),
    );
    tables
}

/// A type's input, output, receive or send function: `array_in` for every array, as
/// pgjdbc tells arrays by it.
fn io_function(t: &PgType, suffix: &str) -> String {
    match t.element {
        0 => format!("{}{suffix}", t.name),
        _ => format!("array_{suffix}"),
    }
}

/// The settings `SHOW`, `current_setting()` and `pg_settings` report. None can be changed:
/// a `SET` is remembered for the session's `SHOW` and changes nothing else.
pub const SETTINGS: [(&str, &str); 18] = [
    ("application_name", ""),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("default_transaction_isolation", "read committed"),
    ("default_transaction_read_only", "on"),
    ("extra_float_digits", "1"),
    ("integer_datetimes", "on"),
    ("IntervalStyle", "postgres"),
    ("is_superuser", "off"),
    ("max_index_keys", "32"),
    ("max_identifier_length", "63"),
    ("search_path", "public"),
    ("server_encoding", "UTF8"),
    ("server_version", SERVER_VERSION),
    ("standard_conforming_strings", "on"),
    ("TimeZone", "UTC"),
    ("transaction_isolation", "read committed"),
    ("transaction_read_only", "on"),
];

/// The value of setting `name` (case-insensitive), if it is one of [`SETTINGS`].
pub fn setting(name: &str) -> Option<&'static str> {
    SETTINGS
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map(|(_, value)| *value)
}

/// `pg_get_keywords()`: the words the SQL parser reserves, which DBeaver asks for to
/// highlight and quote.
#[derive(Debug)]
struct Keywords;

impl TableFunctionImpl for Keywords {
    fn call_with_args(&self, _args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let words: Vec<String> = datafusion::sql::sqlparser::keywords::ALL_KEYWORDS
            .iter()
            .map(|w| w.to_ascii_lowercase())
            .collect();
        let n = words.len();
        Ok(table(vec![
            column("word", DataType::Utf8, text(&words)),
            column("catcode", DataType::Utf8, text(same(n, "U"))),
            column("barelabel", DataType::Boolean, boolean(same(n, true))),
            column("catdesc", DataType::Utf8, text(same(n, "unreserved"))),
            column(
                "baredesc",
                DataType::Utf8,
                text(same(n, "can be bare label")),
            ),
        ]))
    }
}

/// A session function PostgreSQL has and DataFusion does not. Functions are told apart by
/// name (each name is registered once).
#[derive(Debug)]
struct SessionFunction {
    name: &'static str,
    signature: Signature,
    returns: DataType,
    eval: fn(&ScalarFunctionArgs) -> Result<ColumnarValue>,
}

impl PartialEq for SessionFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for SessionFunction {}

impl std::hash::Hash for SessionFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for SessionFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        (self.eval)(&args)
    }
}

fn constant(value: ScalarValue) -> Result<ColumnarValue> {
    Ok(ColumnarValue::Scalar(value))
}

fn utf8(value: &str) -> Result<ColumnarValue> {
    constant(ScalarValue::Utf8(Some(value.to_string())))
}

/// The last argument of each row as text (a privilege's name, a setting's name).
fn last_text(args: &ScalarFunctionArgs) -> Result<Vec<Option<String>>> {
    let Some(last) = args.args.last() else {
        return Ok(vec![None; args.number_rows]);
    };
    let array = last.to_array(args.number_rows)?;
    let array = arrow::compute::cast(&array, &DataType::Utf8)?;
    Ok(array
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect())
}

/// The first argument of each row as an oid.
fn first_oid(args: &ScalarFunctionArgs) -> Result<Vec<Option<i64>>> {
    let Some(first) = args.args.first() else {
        return Ok(vec![None; args.number_rows]);
    };
    let array = arrow::compute::cast(&first.to_array(args.number_rows)?, &DataType::Int64)?;
    Ok(array.as_primitive::<Int64Type>().iter().collect())
}

fn strings(values: Vec<Option<String>>) -> Result<ColumnarValue> {
    Ok(ColumnarValue::Array(Arc::new(
        arrow::array::StringArray::from(values),
    )))
}

/// What `has_*_privilege` answers: reading is allowed, nothing else.
fn may(privilege: Option<&str>) -> Option<bool> {
    let privilege = privilege?.to_ascii_uppercase();
    Some(
        privilege
            .split(',')
            .map(|p| p.trim().trim_end_matches(" WITH GRANT OPTION"))
            .any(|p| matches!(p, "SELECT" | "USAGE" | "CONNECT" | "TEMP" | "TEMPORARY")),
    )
}

fn functions() -> Vec<SessionFunction> {
    // Immutable: each answers the same for the same arguments, so DataFusion may fold a
    // call into a constant (a table function's arguments must be constants).
    let nullary = || Signature::nullary(Volatility::Immutable);
    let any = || Signature::variadic_any(Volatility::Immutable);
    let function = |name, signature, returns, eval| SessionFunction {
        name,
        signature,
        returns,
        eval,
    };
    let names = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
    let mut all = vec![
        function("version", nullary(), DataType::Utf8, |_| {
            utf8(&format!(
                "PostgreSQL {SERVER_VERSION} (datx {}, Apache DataFusion {})",
                env!("CARGO_PKG_VERSION"),
                datafusion::DATAFUSION_VERSION
            ))
        }),
        function("current_schema", nullary(), DataType::Utf8, |_| {
            utf8("public")
        }),
        function("current_database", nullary(), DataType::Utf8, |_| {
            utf8(DATABASE)
        }),
        function("current_schemas", any(), names, |_| {
            constant(ScalarValue::List(ScalarValue::new_list_nullable(
                &[
                    ScalarValue::Utf8(Some("pg_catalog".into())),
                    ScalarValue::Utf8(Some("public".into())),
                ],
                &DataType::Utf8,
            )))
        }),
        function("current_setting", any(), DataType::Utf8, |args| {
            strings(
                last_text(args)?
                    .into_iter()
                    .map(|name| name.and_then(|n| setting(&n)).map(str::to_string))
                    .collect(),
            )
        }),
        function("pg_get_userbyid", any(), DataType::Utf8, |_| utf8(DATABASE)),
        function("pg_encoding_to_char", any(), DataType::Utf8, |_| {
            utf8("UTF8")
        }),
        function("pg_backend_pid", nullary(), DataType::Int32, |_| {
            constant(ScalarValue::Int32(Some(std::process::id() as i32)))
        }),
        function("pg_is_in_recovery", nullary(), DataType::Boolean, |_| {
            constant(ScalarValue::Boolean(Some(false)))
        }),
        function("format_type", any(), DataType::Utf8, |args| {
            strings(
                first_oid(args)?
                    .into_iter()
                    .map(|oid| {
                        let oid = u32::try_from(oid?).ok()?;
                        Some(type_by_oid(oid).map_or("???", sql_name).to_string())
                    })
                    .collect(),
            )
        }),
        function("format", any(), DataType::Utf8, format),
        function("array_upper", any(), DataType::Int64, array_upper),
        function("array_lower", any(), DataType::Int64, array_lower),
        function("quote_ident", any(), DataType::Utf8, |args| {
            let names = last_text(args)?;
            strings(
                names
                    .iter()
                    .map(|name| name.as_deref().map(quote_identifier))
                    .collect(),
            )
        }),
        function("to_regtype", any(), DataType::Int64, |args| {
            let oids: Vec<Option<i64>> = last_text(args)?
                .iter()
                .map(|name| type_called(name.as_deref()?).map(|t| i64::from(t.oid)))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(
                arrow::array::Int64Array::from(oids),
            )))
        }),
        // The type of the argument as PostgreSQL names it (its `regtype` as text).
        function("pg_typeof", any(), DataType::Utf8, |args| {
            let name = match args.arg_fields.first().map(|f| f.data_type()) {
                None | Some(DataType::Null) => "unknown",
                Some(data_type) => sql_name(pg_type_of(data_type)),
            };
            utf8(name)
        }),
        // Pools call it when a connection goes back (asyncpg): no session holds a lock.
        function("pg_advisory_unlock_all", nullary(), DataType::Utf8, |_| {
            constant(ScalarValue::Utf8(None))
        }),
        function("pg_postmaster_start_time", nullary(), timestamp(), |_| {
            constant(ScalarValue::TimestampMicrosecond(
                Some(started_at()),
                Some("UTC".into()),
            ))
        }),
    ];
    for name in [
        "has_table_privilege",
        "has_schema_privilege",
        "has_database_privilege",
        "has_column_privilege",
        "has_any_column_privilege",
        "has_function_privilege",
        "has_sequence_privilege",
    ] {
        all.push(function(name, any(), DataType::Boolean, |args| {
            let answers: Vec<Option<bool>> =
                last_text(args)?.iter().map(|p| may(p.as_deref())).collect();
            Ok(ColumnarValue::Array(Arc::new(
                arrow::array::BooleanArray::from(answers),
            )))
        }));
    }
    // Sizes and statistics would mean reading the lake's files: 0, as for an empty table.
    for name in [
        "pg_total_relation_size",
        "pg_relation_size",
        "pg_database_size",
        "pg_stat_get_numscans",
    ] {
        all.push(function(name, any(), DataType::Int64, |_| {
            constant(ScalarValue::Int64(Some(0)))
        }));
    }
    for name in [
        "pg_table_is_visible",
        "pg_type_is_visible",
        "pg_function_is_visible",
    ] {
        all.push(function(name, any(), DataType::Boolean, |_| {
            constant(ScalarValue::Boolean(Some(true)))
        }));
    }
    // Descriptions and definitions: the lake has no comments, indexes or constraints.
    for name in [
        "obj_description",
        "col_description",
        "shobj_description",
        "pg_get_expr",
        "pg_get_constraintdef",
        "pg_get_indexdef",
        "pg_get_viewdef",
        "pg_get_triggerdef",
        "pg_get_function_identity_arguments",
        "pg_get_function_arguments",
        "pg_get_function_result",
        "pg_get_partkeydef",
        "pg_tablespace_location",
    ] {
        all.push(function(name, any(), DataType::Utf8, |_| {
            constant(ScalarValue::Utf8(None))
        }));
    }
    for name in ["current_user", "session_user", "user", "current_role"] {
        all.push(function(name, nullary(), DataType::Utf8, |_| {
            utf8(DATABASE)
        }));
    }
    all
}

/// PostgreSQL's `format(text, ...)`: `%s` as text, `%I` as an identifier (quoted when it
/// must be), `%L` as a literal, `%%` as `%`.
fn format(args: &ScalarFunctionArgs) -> Result<ColumnarValue> {
    let rows = args.number_rows;
    let texts = args
        .args
        .iter()
        .map(|arg| {
            let array = arrow::compute::cast(&arg.to_array(rows)?, &DataType::Utf8)?;
            Ok(array.as_string::<i32>().clone())
        })
        .collect::<Result<Vec<_>>>()?;
    let Some((template, values)) = texts.split_first() else {
        return strings(vec![None; rows]);
    };
    let formatted = (0..rows)
        .map(|row| {
            let template = template.is_valid(row).then(|| template.value(row))?;
            let mut out = String::new();
            let (mut next, mut chars) = (0, template.chars());
            while let Some(c) = chars.next() {
                if c != '%' {
                    out.push(c);
                    continue;
                }
                let spec = chars.next();
                if spec == Some('%') {
                    out.push('%');
                    continue;
                }
                let value = values
                    .get(next)
                    .and_then(|v| v.is_valid(row).then(|| v.value(row)));
                next += 1;
                match (spec, value) {
                    (Some('I'), Some(v)) => out.push_str(&quote_identifier(v)),
                    (Some('L'), Some(v)) => out.push_str(&format!("'{}'", v.replace('\'', "''"))),
                    (Some('L'), None) => out.push_str("NULL"),
                    (_, v) => out.push_str(v.unwrap_or_default()),
                }
            }
            Some(out)
        })
        .collect();
    strings(formatted)
}

/// An identifier as PostgreSQL writes it: bare when it is lower-case letters, digits and
/// underscores, otherwise in double quotes.
fn quote_identifier(name: &str) -> String {
    let bare = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_');
    match bare {
        true => name.to_string(),
        false => format!("\"{}\"", name.replace('"', "\"\"")),
    }
}

/// `array_lower(array, 1)`: 1 for a list with elements, NULL for an empty one or another
/// dimension.
fn array_lower(args: &ScalarFunctionArgs) -> Result<ColumnarValue> {
    let ColumnarValue::Array(upper) = array_upper(args)? else {
        return constant(ScalarValue::Int64(None));
    };
    let lower: arrow::array::Int64Array = upper
        .as_primitive::<Int64Type>()
        .iter()
        .map(|upper| upper.map(|_| 1))
        .collect();
    Ok(ColumnarValue::Array(Arc::new(lower)))
}

/// `array_upper(array, 1)`: the length of a one-based list, NULL for another dimension.
fn array_upper(args: &ScalarFunctionArgs) -> Result<ColumnarValue> {
    let rows = args.number_rows;
    let Some(list) = args.args.first() else {
        return constant(ScalarValue::Int64(None));
    };
    let list = list.to_array(rows)?;
    let dimensions = match args.args.get(1) {
        Some(d) => arrow::compute::cast(&d.to_array(rows)?, &DataType::Int64)?,
        None => Arc::new(arrow::array::Int64Array::from(vec![1; rows])),
    };
    let dimensions = dimensions.as_primitive::<Int64Type>();
    let lengths: Vec<Option<i64>> = match list.data_type() {
        DataType::List(_) => {
            let list = list.as_list::<i32>();
            (0..rows)
                .map(|i| {
                    let first = dimensions.is_valid(i) && dimensions.value(i) == 1;
                    (first && list.is_valid(i) && !list.value(i).is_empty())
                        .then(|| list.value(i).len() as i64)
                })
                .collect()
        }
        _ => vec![None; rows],
    };
    Ok(ColumnarValue::Array(Arc::new(
        arrow::array::Int64Array::from(lengths),
    )))
}

/// `to_regclass(name)`, and what `::regclass` becomes: the oid of a relation named
/// `name` or `schema.name`, NULL when there is none; an oid is itself.
#[derive(Debug)]
struct ToRegclass {
    signature: Signature,
    oids: Arc<BTreeMap<String, i64>>,
}

impl PartialEq for ToRegclass {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for ToRegclass {}

impl std::hash::Hash for ToRegclass {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "to_regclass".hash(state);
    }
}

impl ScalarUDFImpl for ToRegclass {
    fn name(&self) -> &str {
        "to_regclass"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(arg) = args.args.first() else {
            return constant(ScalarValue::Int64(None));
        };
        let array = arg.to_array(args.number_rows)?;
        if array.data_type().is_integer() {
            let oids = arrow::compute::cast(&array, &DataType::Int64)?;
            return Ok(ColumnarValue::Array(oids));
        }
        let names = arrow::compute::cast(&array, &DataType::Utf8)?;
        let oids: Vec<Option<i64>> = names
            .as_string::<i32>()
            .iter()
            .map(|name| {
                // Quoted parts keep their case, as in PostgreSQL.
                let name: String = name?
                    .split('.')
                    .map(
                        |part| match part.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
                            Some(quoted) => quoted.to_string(),
                            None => part.to_ascii_lowercase(),
                        },
                    )
                    .collect::<Vec<_>>()
                    .join(".");
                self.oids.get(&name).copied()
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(
            arrow::array::Int64Array::from(oids),
        )))
    }
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// When this process started, in microseconds since the epoch.
fn started_at() -> i64 {
    static STARTED: OnceLock<i64> = OnceLock::new();
    *STARTED.get_or_init(|| chrono::Utc::now().timestamp_micros())
}

/// Rewrites the PostgreSQL spellings of `statement` that DataFusion does not read into ones
/// it does, leaving everything else as it was.
pub fn rewrite(statement: &mut Statement) {
    if let Statement::Statement(inner) = statement {
        let _ = inner.visit(&mut PostgresSpellings::default());
    }
}

#[derive(Default)]
struct PostgresSpellings {
    /// The names of the statement's common table expressions, which a bare name means.
    ctes: Vec<String>,
}

impl VisitorMut for PostgresSpellings {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut ast::Query) -> ControlFlow<()> {
        alias_repeated_columns(&mut query.body);
        if let Some(with) = &query.with {
            self.ctes.extend(
                with.cte_tables
                    .iter()
                    .map(|cte| cte.alias.name.value.to_ascii_lowercase()),
            );
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, name: &mut ObjectName) -> ControlFlow<()> {
        let parts = idents(name);
        match parts.as_slice() {
            [schema, table]
                if schema == "information_schema"
                    && PG_INFORMATION_SCHEMA_TABLES.contains(&table.as_str()) =>
            {
                name.0[0] = ObjectNamePart::Identifier(Ident::new(PG_INFORMATION_SCHEMA));
            }
            // A bare `pg_class` is found through the search path, as in PostgreSQL, unless
            // the query names a table of its own so.
            [table]
                if CATALOG_OIDS.iter().any(|(n, _)| n == table) && !self.ctes.contains(table) =>
            {
                name.0
                    .insert(0, ObjectNamePart::Identifier(Ident::new("pg_catalog")));
            }
            // Table functions live in no schema here.
            [schema, function] if schema == "pg_catalog" && function == "pg_get_keywords" => {
                name.0.remove(0);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        match expr {
            Expr::Function(function)
                if function.name.0.len() == 2
                    && idents(&function.name)
                        .first()
                        .is_some_and(|s| s == "pg_catalog") =>
            {
                function.name.0.remove(0);
            }
            Expr::BinaryOp { op, .. } => {
                if let BinaryOperator::PGCustomBinaryOperator(parts) = op
                    && let Some(plain) = plain_operator(parts)
                {
                    *op = plain;
                }
            }
            Expr::Cast {
                expr: inner,
                data_type,
                kind,
                ..
            } => {
                if let Some(replacement) = recast(inner, data_type, kind) {
                    *expr = replacement;
                }
            }
            // psql's `\d name` compares names `COLLATE pg_catalog.default`: the default and
            // "C" compare bytes, as every comparison here does. Another collation is left
            // for DataFusion to refuse.
            Expr::Collate {
                expr: inner,
                collation,
            } if matches!(
                idents(collation).last().map(String::as_str),
                Some("default" | "c" | "posix")
            ) =>
            {
                *expr = std::mem::replace(inner.as_mut(), Expr::value(Value::Null));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// `SELECT n.oid, n.* ...` names `n.oid` twice, which PostgreSQL allows and DataFusion
/// does not (not even under an alias `oid`, which it finds ambiguous): a column listed
/// beside its table's `*` is renamed `oid_1`. Every column stays in its place, so
/// `ORDER BY 1` still means it, and a client reading `oid` by name gets the `*`'s.
fn alias_repeated_columns(body: &mut ast::SetExpr) {
    match body {
        ast::SetExpr::Select(select) => {
            let starred: Vec<String> = select
                .projection
                .iter()
                .filter_map(|item| match item {
                    ast::SelectItem::QualifiedWildcard(
                        ast::SelectItemQualifiedWildcardKind::ObjectName(name),
                        _,
                    ) => Some(idents(name).join(".")),
                    _ => None,
                })
                .collect();
            if starred.is_empty() {
                return;
            }
            for item in &mut select.projection {
                if let ast::SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) = item
                    && let Some((column, table)) = parts.split_last()
                    && starred.contains(
                        &table
                            .iter()
                            .map(|p| p.value.to_ascii_lowercase())
                            .collect::<Vec<_>>()
                            .join("."),
                    )
                {
                    let alias = Ident::new(format!("{}_1", column.value));
                    *item = ast::SelectItem::ExprWithAlias {
                        expr: Expr::CompoundIdentifier(parts.clone()),
                        alias,
                    };
                }
            }
        }
        ast::SetExpr::SetOperation { left, right, .. } => {
            alias_repeated_columns(left);
            alias_repeated_columns(right);
        }
        ast::SetExpr::Query(query) => alias_repeated_columns(&mut query.body),
        _ => {}
    }
}

/// The lower-cased identifiers of a name.
fn idents(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => ident.value.to_ascii_lowercase(),
            other => other.to_string(),
        })
        .collect()
}

/// `OPERATOR(pg_catalog.~)` and friends, as plain operators.
fn plain_operator(parts: &[String]) -> Option<BinaryOperator> {
    let op = match parts {
        [schema, op] if schema == "pg_catalog" => op.as_str(),
        [op] => op.as_str(),
        _ => return None,
    };
    Some(match op {
        "~" => BinaryOperator::PGRegexMatch,
        "~*" => BinaryOperator::PGRegexIMatch,
        "!~" => BinaryOperator::PGRegexNotMatch,
        "!~*" => BinaryOperator::PGRegexNotIMatch,
        "=" => BinaryOperator::Eq,
        "<>" => BinaryOperator::NotEq,
        "<" => BinaryOperator::Lt,
        "<=" => BinaryOperator::LtEq,
        ">" => BinaryOperator::Gt,
        ">=" => BinaryOperator::GtEq,
        "||" => BinaryOperator::StringConcat,
        _ => return None,
    })
}

/// A cast to a PostgreSQL type DataFusion lacks, as an expression it reads: oids and
/// `reg*` types are numbers (a relation's name becomes its oid), `name` and `"char"` are
/// text, and an array literal `'{a,b}'` becomes an array.
fn recast(inner: &Expr, data_type: &ast::DataType, kind: &CastKind) -> Option<Expr> {
    let type_name = match data_type {
        ast::DataType::Regclass => "regclass".to_string(),
        ast::DataType::Custom(name, _) => idents(name).join("."),
        // The elements as text, cast to the array's own type.
        ast::DataType::Array(_) => {
            let Expr::Value(value) = inner else {
                return None;
            };
            let Value::SingleQuotedString(literal) = &value.value else {
                return None;
            };
            return Some(Expr::Cast {
                kind: kind.clone(),
                expr: Box::new(array_literal(literal)),
                data_type: data_type.clone(),
                array: false,
                format: None,
            });
        }
        _ => return None,
    };
    let type_name = type_name.trim_start_matches("pg_catalog.");
    let to = match type_name {
        "regclass" => {
            return Some(Expr::Function(ast::Function {
                name: ObjectName::from(vec![Ident::new("to_regclass")]),
                uses_odbc_syntax: false,
                parameters: ast::FunctionArguments::None,
                args: ast::FunctionArguments::List(ast::FunctionArgumentList {
                    duplicate_treatment: None,
                    args: vec![ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(
                        inner.clone(),
                    ))],
                    clauses: vec![],
                }),
                filter: None,
                null_treatment: None,
                over: None,
                within_group: vec![],
            }));
        }
        // A function's name, compared with `typinput` and the like, which hold names.
        "regproc" | "regprocedure" => {
            if let Expr::Value(value) = inner
                && let Value::SingleQuotedString(function) = &value.value
            {
                let function = function.trim_start_matches("pg_catalog.").to_string();
                return Some(Expr::value(Value::SingleQuotedString(function)));
            }
            ast::DataType::Text
        }
        "oid" | "regtype" | "regnamespace" | "regrole" | "xid" | "cid" | "tid" => {
            ast::DataType::BigInt(None)
        }
        // psql casts to `pg_catalog.text` (`\d name`), which DataFusion does not read
        // qualified.
        "name" | "char" | "bpchar" | "int2vector" | "oidvector" | "aclitem" | "pg_node_tree"
        | "text" | "varchar" => ast::DataType::Text,
        "int2" => ast::DataType::SmallInt(None),
        "int4" => ast::DataType::Int(None),
        "int8" => ast::DataType::BigInt(None),
        "bool" => ast::DataType::Boolean,
        _ => return None,
    };
    Some(Expr::Cast {
        kind: kind.clone(),
        expr: Box::new(inner.clone()),
        data_type: to,
        array: false,
        format: None,
    })
}

/// `'{a,"b c",NULL}'` as `['a', 'b c', NULL]`: the elements of a PostgreSQL array literal.
fn array_literal(literal: &str) -> Expr {
    let body = literal.trim().trim_start_matches('{').trim_end_matches('}');
    let mut elements = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut was_quoted, mut escaped) = (false, false, false);
    let mut finish = |current: &mut String, was_quoted: &mut bool| {
        let element = std::mem::take(current);
        let trimmed = element.trim();
        elements.push(match (*was_quoted, trimmed.eq_ignore_ascii_case("null")) {
            (false, true) => Expr::value(Value::Null),
            (false, false) => Expr::value(Value::SingleQuotedString(trimmed.to_string())),
            (true, _) => Expr::value(Value::SingleQuotedString(element)),
        });
        *was_quoted = false;
    };
    if !body.trim().is_empty() {
        for c in body.chars() {
            match c {
                _ if escaped => {
                    current.push(c);
                    escaped = false;
                }
                '\\' => escaped = true,
                '"' => {
                    quoted = !quoted;
                    was_quoted = true;
                }
                ',' if !quoted => finish(&mut current, &mut was_quoted),
                _ => current.push(c),
            }
        }
        finish(&mut current, &mut was_quoted);
    }
    Expr::Array(ast::Array {
        elem: elements,
        named: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        let mut statement = crate::query::statements(sql).unwrap().remove(0);
        rewrite(&mut statement);
        statement.to_string()
    }

    #[test]
    fn postgres_spellings_become_datafusion_ones() {
        assert_eq!(
            rewritten("SELECT 'pg_class'::regclass, x::oid FROM pg_class c"),
            "SELECT to_regclass('pg_class'), x::BIGINT FROM pg_catalog.pg_class c"
        );
        assert_eq!(
            rewritten("SELECT n.oid, n.*, d.description FROM pg_namespace n, d"),
            "SELECT n.oid AS oid_1, n.*, d.description FROM pg_catalog.pg_namespace n, d"
        );
        assert_eq!(
            rewritten(
                "SELECT typinput = 'pg_catalog.array_in'::regproc FROM information_schema.columns"
            ),
            "SELECT typinput = 'array_in' FROM pg_information_schema.columns"
        );
        assert_eq!(
            rewritten("SELECT pg_catalog.version() WHERE a OPERATOR(pg_catalog.~) '^x'"),
            "SELECT version() WHERE a ~ '^x'"
        );
        assert_eq!(
            rewritten(r#"SELECT 1 WHERE w <> ALL ('{a,"b c",NULL}'::text[])"#),
            "SELECT 1 WHERE w <> ALL(ARRAY['a', 'b c', NULL]::TEXT[])"
        );
        assert_eq!(
            rewritten("SELECT * FROM pg_catalog.pg_get_keywords()"),
            "SELECT * FROM pg_get_keywords()"
        );
        assert_eq!(
            rewritten("WITH pg_tables AS (SELECT 1 AS x) SELECT * FROM pg_tables"),
            "WITH pg_tables AS (SELECT 1 AS x) SELECT * FROM pg_tables"
        );
        // Ordinary queries are left alone.
        let plain = "SELECT institution, count(*) FROM orders GROUP BY institution";
        assert_eq!(rewritten(plain), plain);
    }

    #[test]
    fn privileges_allow_reading_only() {
        assert_eq!(may(Some("SELECT")), Some(true));
        assert_eq!(may(Some("usage")), Some(true));
        assert_eq!(may(Some("INSERT")), Some(false));
        assert_eq!(may(Some("UPDATE, DELETE")), Some(false));
        assert_eq!(may(None), None);
    }
}
