//! The tables the sink writes: weir's own (`weir_offsets`, `dead_letters`, `weir_dedup`,
//! `weir_state`, `weir_outbox`, `weir_relay`), created at connect, and the pipeline's, whose column types are read from the catalog once and
//! cached, and checked against what the guests will write.

use std::collections::HashMap;
use std::fmt::Write as _;

use tokio_postgres::Client;

use super::value::PgType;
use crate::model::ValueKind;

/// weir's own tables, unqualified so the connection's `search_path` decides where they
/// live. Created under an advisory lock: concurrent `CREATE TABLE IF NOT EXISTS` can
/// otherwise fail on the catalog's unique indexes.
pub(crate) const SYSTEM_TABLES: &str = r#"
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT pg_advisory_xact_lock(hashtext('weir.sink'), hashtext(coalesce(current_schema(), '')));
CREATE TABLE IF NOT EXISTS weir_offsets (
    group_id    text NOT NULL,
    topic       text NOT NULL,
    partition   int NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
-- The partition's high watermark as last measured, for lag in SQL (high_watermark -
-- next_offset); tables made before these columns existed get them here.
ALTER TABLE weir_offsets ADD COLUMN IF NOT EXISTS high_watermark bigint;
ALTER TABLE weir_offsets ADD COLUMN IF NOT EXISTS watermark_at timestamptz;
CREATE TABLE IF NOT EXISTS dead_letters (
    id            bigserial PRIMARY KEY,
    group_id      text NOT NULL,
    topic         text NOT NULL,
    partition     int NOT NULL,
    "offset"      bigint NOT NULL,
    stage         text NOT NULL,
    error         text NOT NULL,
    guest_version text,
    key           bytea,
    value         bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (group_id, topic, partition, "offset")
);
-- The pipeline a letter failed in, its record headers, and when `weir dlq replay` re-sent
-- it, to which topic (see cli::dlq); tables made before these columns existed get them.
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS pipeline text;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS headers bytea;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS replayed_at timestamptz;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS replayed_to text;
CREATE INDEX IF NOT EXISTS dead_letters_by_time ON dead_letters (group_id, created_at);
CREATE TABLE IF NOT EXISTS weir_dedup (
    group_id text NOT NULL,
    scope    text NOT NULL,
    key      text NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, scope, key)
);
-- Guests' keyed state, per pipeline and partition (see sink::state).
CREATE TABLE IF NOT EXISTS weir_state (
    group_id   text NOT NULL,
    pipeline   text NOT NULL,
    topic      text NOT NULL,
    partition  int NOT NULL,
    key        bytea NOT NULL,
    value      bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, pipeline, topic, partition, key)
);
-- Messages guests emitted, committed with their batch, until the relay has produced them
-- (see sink::outbox); and the batch the relay of each source partition is producing.
CREATE TABLE IF NOT EXISTS weir_outbox (
    id           bigserial PRIMARY KEY,
    group_id     text NOT NULL,
    pipeline     text NOT NULL,
    topic        text NOT NULL,
    partition    int NOT NULL,
    "offset"     bigint NOT NULL,
    to_topic     text NOT NULL,
    to_partition int NOT NULL,
    key          bytea,
    headers      bytea NOT NULL,
    value        bytea,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS weir_outbox_source ON weir_outbox (group_id, topic, partition, id);
CREATE TABLE IF NOT EXISTS weir_relay (
    group_id      text NOT NULL,
    topic         text NOT NULL,
    partition     int NOT NULL,
    ids           bigint[] NOT NULL,
    to_topics     text[] NOT NULL,
    to_partitions int[] NOT NULL,
    from_offsets  bigint[] NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
-- Guest versions deployed to the group, the live one of each guest, members' answers to
-- a staged version, and the offsets each version went live at (see sink::deployments).
CREATE TABLE IF NOT EXISTS weir_deployments (
    group_id    text NOT NULL,
    guest       text NOT NULL,
    version     int NOT NULL,
    sha256      text NOT NULL,
    module      bytea NOT NULL,
    kind        text NOT NULL,
    origin      text NOT NULL,
    previous    int,
    status      text NOT NULL,
    detail      text,
    deployed_at timestamptz NOT NULL DEFAULT now(),
    live_from   timestamptz,
    live_until  timestamptz,
    PRIMARY KEY (group_id, guest, version)
);
CREATE TABLE IF NOT EXISTS weir_live_guests (
    group_id text NOT NULL,
    guest    text NOT NULL,
    version  int NOT NULL,
    sha256   text NOT NULL,
    PRIMARY KEY (group_id, guest)
);
CREATE TABLE IF NOT EXISTS weir_deploy_answers (
    group_id    text NOT NULL,
    guest       text NOT NULL,
    version     int NOT NULL,
    member_id   text NOT NULL,
    refusal     text,
    answered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, guest, version, member_id)
);
CREATE TABLE IF NOT EXISTS weir_switches (
    group_id    text NOT NULL,
    guest       text NOT NULL,
    version     int NOT NULL,
    topic       text NOT NULL,
    partition   int NOT NULL,
    from_offset bigint NOT NULL,
    PRIMARY KEY (group_id, guest, version, topic, partition)
);
-- A shadow candidate per guest: run next to the live version on the same batches, its
-- outcomes compared and never written. Counters summed over the group's members.
CREATE TABLE IF NOT EXISTS weir_shadows (
    group_id    text NOT NULL,
    guest       text NOT NULL,
    sha256      text NOT NULL,
    module      bytea NOT NULL,
    origin      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    compared    bigint NOT NULL DEFAULT 0,
    differing   bigint NOT NULL DEFAULT 0,
    skipped     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (group_id, guest)
);
-- The messages on which a shadow candidate's outcome differed from the live version's.
CREATE TABLE IF NOT EXISTS weir_shadow_diffs (
    group_id    text NOT NULL,
    guest       text NOT NULL,
    sha256      text NOT NULL,
    pipeline    text NOT NULL,
    topic       text NOT NULL,
    partition   int NOT NULL,
    "offset"    bigint NOT NULL,
    kind        text NOT NULL,
    live        text NOT NULL,
    candidate   text NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS weir_shadow_diffs_by_guest
    ON weir_shadow_diffs (group_id, guest, sha256, seen_at);
COMMIT;
"#;

/// weir's own tables (the sink's, the group's, migrations' and the registry's): no
/// pipeline may write them, whatever its config lists.
pub const WEIR_TABLES: &[&str] = &[
    "weir_offsets",
    "dead_letters",
    "weir_dedup",
    "weir_state",
    "weir_outbox",
    "weir_relay",
    "weir_deployments",
    "weir_live_guests",
    "weir_deploy_answers",
    "weir_switches",
    "weir_shadows",
    "weir_shadow_diffs",
    "weir_members",
    "weir_leases",
    "weir_migrations",
    "schema_registry_schemas",
    "schema_registry_subject_versions",
];

/// The quoted names (as [`TableInfo::sql_name`]) of weir's own tables that exist here.
pub(crate) async fn weir_tables(
    client: &Client,
) -> Result<std::collections::HashSet<String>, tokio_postgres::Error> {
    const QUERY: &str = "SELECT n.nspname::text, c.relname::text
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = ANY (ARRAY(SELECT to_regclass(t) FROM unnest($1::text[]) AS t))";
    let rows = client.query(QUERY, &[&WEIR_TABLES]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            format!(
                "{}.{}",
                quote(r.get::<_, &str>(0)),
                quote(r.get::<_, &str>(1))
            )
        })
        .collect())
}

/// A table's columns, as the catalog has them.
#[derive(Debug)]
pub(crate) struct TableInfo {
    /// `"schema"."table"`, quoted for SQL.
    pub sql_name: String,
    pub columns: Vec<Column>,
    by_name: HashMap<String, u16>,
}

/// One column.
#[derive(Debug)]
pub(crate) struct Column {
    pub name: String,
    /// The name quoted for SQL.
    pub ident: String,
    /// Its type with modifiers, as `\d` shows it (`numeric(18,8)`).
    pub declared: String,
    /// Its base type (domains resolved), for conversion.
    pub ty: PgType,
    /// The base type's SQL name, for array casts (`$1::numeric[]`).
    pub base: String,
    /// Whether `min`/`max` aggregates exist for the base type (numbers, strings, times,
    /// enums); other orderable types are aggregated by sorting.
    pub has_min_max: bool,
}

impl TableInfo {
    /// The column called `name`: its exact name, else the name folded to lower case as
    /// Postgres folds unquoted identifiers.
    pub fn column(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied().or_else(|| {
            name.bytes()
                .any(|b| b.is_ascii_uppercase())
                .then(|| self.by_name.get(&name.to_ascii_lowercase()).copied())
                .flatten()
        })
    }
}

/// Quotes an identifier for SQL.
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The table named `name` (as SQL names it: `ticks`, `market.ticks`, resolved through the
/// `search_path`), or `None` if there is none.
pub(crate) async fn load(
    client: &Client,
    name: &str,
) -> Result<Option<TableInfo>, tokio_postgres::Error> {
    // The base type of each column: domains (over domains) resolved.
    const QUERY: &str = "
        WITH RECURSIVE rel AS (
            SELECT c.oid, n.nspname::text AS nspname, c.relname::text AS relname
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = to_regclass($1)
        ), chain(attnum, typ, depth) AS (
            SELECT a.attnum, a.atttypid, 0
              FROM pg_attribute a JOIN rel ON a.attrelid = rel.oid
             WHERE a.attnum > 0 AND NOT a.attisdropped
            UNION ALL
            SELECT chain.attnum, t.typbasetype, chain.depth + 1
              FROM chain JOIN pg_type t ON t.oid = chain.typ
             WHERE t.typtype = 'd'
        )
        SELECT rel.nspname, rel.relname, a.attname::text,
               format_type(a.atttypid, a.atttypmod), bt.oid, bt.typcategory::text,
               bt.typtype::text, format_type(bt.oid, NULL)
          FROM rel
          LEFT JOIN pg_attribute a
                 ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
          LEFT JOIN LATERAL (
                SELECT typ FROM chain WHERE chain.attnum = a.attnum
                 ORDER BY depth DESC LIMIT 1) b ON true
          LEFT JOIN pg_type bt ON bt.oid = b.typ
         ORDER BY a.attnum";
    let rows = match client.query(QUERY, &[&name]).await {
        Ok(rows) => rows,
        // A name that is not a valid relation name (`a.b.c.d`) names no table.
        Err(e) if e.code().is_some_and(|c| c.code().starts_with("42")) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let sql_name = format!(
        "{}.{}",
        quote(first.get::<_, &str>(0)),
        quote(first.get::<_, &str>(1))
    );
    let mut columns = Vec::with_capacity(rows.len());
    let mut by_name = HashMap::with_capacity(rows.len());
    for row in &rows {
        let Some(name) = row.get::<_, Option<String>>(2) else {
            continue;
        };
        let oid: u32 = row.get(4);
        let category: String = row.get(5);
        let typtype: String = row.get(6);
        by_name.insert(name.clone(), columns.len() as u16);
        columns.push(Column {
            ident: quote(&name),
            name,
            declared: row.get(3),
            ty: PgType::classify(oid, &category, &typtype),
            base: row.get(7),
            has_min_max: matches!(category.as_str(), "N" | "S" | "D" | "T" | "E"),
        });
    }
    Ok(Some(TableInfo {
        sql_name,
        columns,
        by_name,
    }))
}

/// What a pipeline expects of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableExpectation {
    /// The table, as the guest names it (`ticks`, `market.ticks`).
    pub table: String,
    /// Columns it must have, each able to take values of the given kind. Empty: the table
    /// only has to exist.
    pub columns: Vec<(String, ValueKind)>,
}

/// Adds what is wrong with `table` (loaded as `info`) to `problems`.
pub(crate) fn check(
    expected: &TableExpectation,
    info: Option<&TableInfo>,
    problems: &mut Vec<String>,
) {
    let table = &expected.table;
    let Some(info) = info else {
        problems.push(format!("table {table} does not exist"));
        return;
    };
    for (column, kind) in &expected.columns {
        match info.column(column) {
            None => problems.push(format!("{table}.{column} does not exist")),
            Some(i) => {
                let col = &info.columns[i as usize];
                if !col.ty.accepts(*kind) {
                    let mut p = String::new();
                    let _ = write!(
                        p,
                        "{table}.{column}: expected {kind}, found {}",
                        col.declared
                    );
                    problems.push(p);
                }
            }
        }
    }
}
