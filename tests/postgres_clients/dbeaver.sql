-- The statements DBeaver 25.1 sends: connect and open the navigator on public.
-- Recorded from the projects' sources: pgjdbc/pgjdbc (ConnectionFactoryImpl, PgConnection,
-- TypeInfoCache, PgDatabaseMetaData), metabase/metabase (src/metabase/driver/postgres.clj and
-- sql_jdbc/sync) and dbeaver/dbeaver (plugins/org.jkiss.dbeaver.ext.postgresql), in the order
-- captures of Metabase 0.55.1 and DBeaver 25.1.5 show.
--
-- Each statement follows a `-- statement:` line. `-- params:` gives its parameters as pgjdbc
-- binds them (int4 and int8 in binary, varchar and bool as text); `-- protocol: simple` marks
-- those sent as a simple query. Everything else goes through the extended protocol.

-- statement:` line; `-- params:` gives its parameters
-- as pgjdbc binds them (int4/int8 binary, varchar/bool text); `-- protocol: simple` marks the
-- two sent as a simple query. Everything else goes through the extended protocol.

-- statement: openConnection: application name
SET application_name = 'DBeaver 25.1.5 - Main <analytics>'

-- statement: refreshDefaults
SELECT current_schema(),session_user

-- statement: refreshDefaults: search path
SHOW search_path

-- statement: setDefaultSchema
SET search_path = public,public,"$user"

-- statement: readDatabaseInfo
-- params: varchar datx
SELECT db.oid,db.* FROM pg_catalog.pg_database db WHERE datname=$1

-- statement: initialize: server version
SELECT version()

-- statement: SettingCache
-- params: varchar standard_conforming_strings
select * from pg_catalog.pg_settings where name=$1

-- statement: supportsEnumTable probe
SELECT * FROM pg_catalog.pg_enum WHERE 1<>1 LIMIT 1

-- statement: supportsReltypeColumn probe
SELECT reltype FROM pg_catalog.pg_class WHERE 1<>1 LIMIT 1

-- statement: cacheDataTypes
SELECT t.oid,t.*,c.relkind,format_type(nullif(t.typbasetype, 0), t.typtypmod) as base_type_name, d.description
FROM pg_catalog.pg_type t
LEFT OUTER JOIN pg_catalog.pg_type et ON et.oid=t.typelem 
LEFT OUTER JOIN pg_catalog.pg_class c ON c.oid=t.typrelid
LEFT OUTER JOIN pg_catalog.pg_description d ON t.oid=d.objoid
WHERE t.typname IS NOT NULL
AND (c.relkind IS NULL OR c.relkind = 'c') AND (et.typcategory IS NULL OR et.typcategory <> 'C')

-- statement: EnumValueCache
SELECT * FROM pg_catalog.pg_enum

-- statement: SchemaCache
SELECT n.oid,n.*,d.description FROM pg_catalog.pg_namespace n
LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=n.oid AND d.objsubid=0 AND d.classoid='pg_namespace'::regclass
 ORDER BY nspname

-- statement: TableCache of public
-- params: int8 2200
SELECT c.oid,c.*,d.description,pg_catalog.pg_get_expr(c.relpartbound, c.oid) as partition_expr,  pg_catalog.pg_get_partkeydef(c.oid) as partition_key 
FROM pg_catalog.pg_class c
LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=c.oid AND d.objsubid=0 AND d.classoid='pg_class'::regclass
WHERE c.relnamespace=$1 AND c.relkind not in ('i','I','c')

-- statement: columns of contacts
-- params: int8 16384
SELECT c.relname,a.*,pg_catalog.pg_get_expr(ad.adbin, ad.adrelid, true) as def_value,dsc.description,dep.objid
FROM pg_catalog.pg_attribute a
INNER JOIN pg_catalog.pg_class c ON (a.attrelid=c.oid)
LEFT OUTER JOIN pg_catalog.pg_attrdef ad ON (a.attrelid=ad.adrelid AND a.attnum = ad.adnum)
LEFT OUTER JOIN pg_catalog.pg_description dsc ON (c.oid=dsc.objoid AND a.attnum = dsc.objsubid)
LEFT OUTER JOIN pg_depend dep on dep.refobjid = a.attrelid AND dep.deptype = 'i' and dep.refobjsubid = a.attnum and dep.classid = dep.refclassid
WHERE NOT a.attisdropped AND c.relkind not in ('i','I','c') AND c.oid=$1
ORDER BY a.attnum

-- statement: ConstraintCache of contacts
-- params: int8 16384
SELECT c.oid,c.*,t.relname as tabrelname,rt.relnamespace as refnamespace,d.description, case when c.contype='c' then "substring"(pg_get_constraintdef(c.oid), 7) else null end consrc_copy
FROM pg_catalog.pg_constraint c
INNER JOIN pg_catalog.pg_class t ON t.oid=c.conrelid
LEFT OUTER JOIN pg_catalog.pg_class rt ON rt.oid=c.confrelid
LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=c.oid AND d.objsubid=0 AND d.classoid='pg_constraint'::regclass
WHERE c.conrelid=$1
ORDER BY c.oid

-- statement: IndexCache of contacts
-- params: int8 16384
SELECT i.*,i.indkey as keys,c.relname,c.relnamespace,c.relam,c.reltablespace,tc.relname as tabrelname,dsc.description,pg_catalog.pg_get_expr(i.indpred, i.indrelid) as pred_expr,pg_catalog.pg_get_expr(i.indexprs, i.indrelid, true) as expr,pg_catalog.pg_relation_size(i.indexrelid) as index_rel_size,pg_catalog.pg_stat_get_numscans(i.indexrelid) as index_num_scans
FROM pg_catalog.pg_index i
INNER JOIN pg_catalog.pg_class c ON c.oid=i.indexrelid
INNER JOIN pg_catalog.pg_class tc ON tc.oid=i.indrelid
LEFT OUTER JOIN pg_catalog.pg_description dsc ON i.indexrelid=dsc.objoid
WHERE  i.indrelid=$1 ORDER BY tabrelname, c.relname

-- statement: table sizes of public
-- params: int8 2200
select c.oid,pg_catalog.pg_total_relation_size(c.oid) as total_rel_size,pg_catalog.pg_relation_size(c.oid) as rel_size
FROM pg_class c
WHERE c.relnamespace=$1
