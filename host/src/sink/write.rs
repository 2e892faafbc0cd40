//! The statements of one batch's transaction: the offset compare-and-set, the rows
//! (`COPY` for inserts, one `INSERT … SELECT … FROM UNNEST … GROUP BY … ON CONFLICT` per
//! upsert shape), the dead letters, the new offset; and the bisection that finds the
//! messages whose rows Postgres rejects.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::pin::pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::SinkExt;
use postgres_types::ToSql;
use tokio_postgres::{Client, Statement};

use super::plan::{MessagePlan, Plan, Policy, UpsertShape};
use super::value::{CellArray, copy_header, copy_trailer};
use super::{Head, SinkBatch, SinkItem};
use crate::model::Header;

/// How many prepared statements a connection keeps before it starts over.
const MAX_STATEMENTS: usize = 512;
/// How much COPY data to buffer before sending it.
const COPY_CHUNK: usize = 256 * 1024;

/// Why a batch's transaction did not begin.
#[derive(Debug)]
pub(crate) enum NotBegun {
    /// Another commit moved the partition to this stored offset; rolled back.
    Stale(Option<i64>),
    /// The batch ran with a guest version the group has replaced by this one (sha256);
    /// rolled back.
    Superseded(String),
}

/// One connection to Postgres with its prepared statements and a reusable buffer.
pub(crate) struct Conn {
    /// Shared with the lookups of the batch in its transaction.
    pub client: Arc<Client>,
    statements: HashMap<String, Statement>,
    buf: BytesMut,
    /// A write was under way (and may have been abandoned mid-transaction): the connection
    /// is in an unknown state and is replaced before its next use.
    pub dirty: bool,
}

/// A statement failed; `table` is what it was writing.
#[derive(Debug)]
pub(crate) struct StatementError {
    pub table: String,
    pub error: tokio_postgres::Error,
}

impl StatementError {
    fn on(table: &str) -> impl FnOnce(tokio_postgres::Error) -> Self + '_ {
        move |error| Self {
            table: table.to_string(),
            error,
        }
    }
}

const CAS: &str = "INSERT INTO weir_offsets AS w (group_id, topic, partition, next_offset)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (group_id, topic, partition)
    DO UPDATE SET updated_at = now() WHERE w.next_offset = $4
    RETURNING w.next_offset";
pub(crate) const STORED: &str =
    "SELECT next_offset FROM weir_offsets WHERE group_id = $1 AND topic = $2 AND partition = $3";
const ADVANCE: &str = "UPDATE weir_offsets SET next_offset = $4, updated_at = now()
    WHERE group_id = $1 AND topic = $2 AND partition = $3";
const DEAD_LETTERS: &str = "INSERT INTO dead_letters
        (group_id, pipeline, topic, partition, \"offset\", stage, error, guest_version, key, value, headers)
    SELECT $1, $2, $3, $4, d.o, d.s, d.e, $5, d.k, d.v, d.h
      FROM UNNEST($6::int8[], $7::text[], $8::text[], $9::bytea[], $10::bytea[], $11::bytea[])
           AS d(o, s, e, k, v, h)
    ON CONFLICT (group_id, topic, partition, \"offset\") DO NOTHING";

const WATERMARKS: &str = "UPDATE weir_offsets AS w SET high_watermark = d.h, watermark_at = now()
      FROM UNNEST($2::text[], $3::int4[], $4::int8[]) AS d(t, p, h)
     WHERE w.group_id = $1 AND w.topic = d.t AND w.partition = d.p";

const REMEMBER: &str = "INSERT INTO weir_dedup (group_id, scope, key)
    SELECT $1, $2, k FROM UNNEST($3::text[]) AS k
    ON CONFLICT (group_id, scope, key) DO NOTHING";
const SEEN: &str = "SELECT key FROM weir_dedup
    WHERE group_id = $1 AND scope = $2 AND key = ANY($3::text[])";
const FORGET: &str = "DELETE FROM weir_dedup
    WHERE group_id = $1 AND scope = $2 AND seen_at < now() - make_interval(secs => $3)";

impl Conn {
    /// Records deduplication keys (in the open transaction); returns how many were new.
    pub async fn remember(
        &mut self,
        group: &str,
        scope: &str,
        keys: &[&str],
    ) -> Result<usize, tokio_postgres::Error> {
        if keys.is_empty() {
            return Ok(0);
        }
        let statement = self.prepare(REMEMBER).await?;
        let n = self
            .client
            .execute(&statement, &[&group, &scope, &keys])
            .await?;
        Ok(n as usize)
    }

    /// The keys among `keys` already recorded.
    pub async fn seen(
        &mut self,
        group: &str,
        scope: &str,
        keys: &[&str],
    ) -> Result<HashSet<String>, tokio_postgres::Error> {
        let statement = self.prepare(SEEN).await?;
        Ok(self
            .client
            .query(&statement, &[&group, &scope, &keys])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Deletes keys recorded more than `retention` ago.
    pub async fn forget(
        &mut self,
        group: &str,
        scope: &str,
        retention: std::time::Duration,
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare(FORGET).await?;
        self.client
            .execute(&statement, &[&group, &scope, &retention.as_secs_f64()])
            .await
    }

    /// Records measured high watermarks, `(topic, partition, high)`, on the partitions'
    /// offset rows (rows not committed yet are left alone).
    pub async fn watermarks(
        &mut self,
        group: &str,
        marks: &[(String, i32, i64)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare(WATERMARKS).await?;
        let topics: Vec<&str> = marks.iter().map(|m| m.0.as_str()).collect();
        let partitions: Vec<i32> = marks.iter().map(|m| m.1).collect();
        let highs: Vec<i64> = marks.iter().map(|m| m.2).collect();
        self.client
            .execute(&statement, &[&group, &topics, &partitions, &highs])
            .await
    }

    pub fn new(client: Client) -> Self {
        Self {
            client: Arc::new(client),
            statements: HashMap::new(),
            buf: BytesMut::with_capacity(COPY_CHUNK + 64 * 1024),
            dirty: false,
        }
    }

    /// The prepared statement for `sql`, prepared on first use.
    pub(crate) async fn prepare(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        if self.statements.len() >= MAX_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Begins the transaction (`repeatable`: one snapshot for all of it) and takes the
    /// partition's offset row: `Ok` when the stored next offset is absent or equals the
    /// batch's start (else the transaction is rolled back and the stored offset
    /// returned). With a guest in the head, also takes a share lock on that guest's
    /// live version in the group (see [`super::deployments`]) and checks the batch ran
    /// with it: a deploy's switch waits for every batch holding the lock, and every batch
    /// after it sees the new version, so no batch commits with a superseded one.
    pub async fn begin(
        &mut self,
        group: &str,
        head: &Head,
        repeatable: bool,
    ) -> Result<Result<(), NotBegun>, tokio_postgres::Error> {
        let cas = self.prepare(CAS).await?;
        let live = match &head.guest {
            Some(_) => Some(self.prepare(super::deployments::LIVE_FOR_SHARE).await?),
            None => None,
        };
        // Sent together: one round trip. The statements are prepared, so they go out right
        // behind BEGIN.
        let params: [&(dyn ToSql + Sync); 4] =
            [&group, &head.topic, &head.partition, &head.start_offset];
        // Deferred constraints are checked per statement, where a rejected row can be
        // told from the others, not at COMMIT.
        let begin = if repeatable {
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET CONSTRAINTS ALL IMMEDIATE"
        } else {
            "BEGIN; SET CONSTRAINTS ALL IMMEDIATE"
        };
        let barrier = async {
            match (&live, &head.guest) {
                (Some(statement), Some(guest)) => self
                    .client
                    .query_opt(statement, &[&group, &guest.name])
                    .await
                    .map(|row| row.map(|r| r.get::<_, String>(0))),
                _ => Ok(None),
            }
        };
        let (_, row, live) = futures::try_join!(
            self.client.batch_execute(begin),
            self.client.query_opt(&cas, &params),
            barrier
        )?;
        if row.is_some() {
            return match (live, &head.guest) {
                (Some(live), Some(guest)) if live != guest.version => {
                    self.client.batch_execute("ROLLBACK").await?;
                    Ok(Err(NotBegun::Superseded(live)))
                }
                _ => Ok(Ok(())),
            };
        }
        let stored = self
            .client
            .query_opt(STORED, &[&group, &head.topic, &head.partition])
            .await?
            .map(|r| r.get::<_, i64>(0));
        self.client.batch_execute("ROLLBACK").await?;
        Ok(Err(NotBegun::Stale(stored)))
    }

    /// Stores the batch's next offset and commits.
    pub async fn commit(&mut self, group: &str, head: &Head) -> Result<(), tokio_postgres::Error> {
        let advance = self.prepare(ADVANCE).await?;
        let params: [&(dyn ToSql + Sync); 4] =
            [&group, &head.topic, &head.partition, &head.next_offset];
        futures::try_join!(
            self.client.execute(&advance, &params),
            self.client.batch_execute("COMMIT")
        )?;
        Ok(())
    }

    /// Writes the rows of `messages`. Returns rows written per table (the guest's names).
    pub async fn apply(
        &mut self,
        plan: &Plan<'_>,
        messages: &[MessagePlan],
    ) -> Result<BTreeMap<String, u64>, StatementError> {
        let mut rows = BTreeMap::new();
        let mut count = |table: &str, n: usize| {
            *rows.entry(table.to_string()).or_insert(0) += n as u64;
        };

        // Inserts: one COPY per shape, rows in message order.
        let mut inserts: Vec<Vec<u32>> = vec![Vec::new(); plan.insert_shapes.len()];
        for m in messages {
            for row in &plan.inserts[m.inserts.clone()] {
                inserts[row.shape as usize].push(row.start);
            }
        }
        for (shape, starts) in inserts.iter().enumerate() {
            if starts.is_empty() {
                continue;
            }
            let table = plan.table_name(plan.insert_shapes[shape].table);
            self.copy(plan, shape, starts)
                .await
                .map_err(StatementError::on(table))?;
            count(table, starts.len());
        }

        // Upserts: one statement per (level, shape). Rows of a key come in runs; each run
        // has a level one higher than the key's previous run, so statements in level order
        // apply every key's runs in message order, and no statement touches a key twice.
        let mut families = vec![Family::Unused; plan.upsert_shapes.len()];
        for m in messages {
            for row in &plan.upserts[m.upserts.clone()] {
                let family = &mut families[plan.upsert_shapes[row.shape as usize].family];
                *family = match *family {
                    Family::Unused => Family::One(row.shape),
                    Family::One(s) if s == row.shape => Family::One(s),
                    _ => Family::Mixed,
                };
            }
        }
        let simple = |shape: &UpsertShape| {
            shape.associative && matches!(families[shape.family], Family::One(_))
        };
        let mut keys: HashMap<(usize, Vec<u8>), (u32, u32)> = HashMap::new();
        let mut key = BytesMut::new();
        let mut groups: BTreeMap<(u32, u32), Vec<u32>> = BTreeMap::new();
        for m in messages {
            for row in &plan.upserts[m.upserts.clone()] {
                let shape = &plan.upsert_shapes[row.shape as usize];
                let level = if simple(shape) {
                    0
                } else {
                    key.clear();
                    for pos in shape.key_positions() {
                        plan.cells[row.start as usize + pos].write_field(&mut key);
                    }
                    let slot = keys
                        .entry((shape.family, key.to_vec()))
                        .or_insert((row.shape, u32::MAX));
                    let level = match *slot {
                        (_, u32::MAX) => 0,
                        (s, l) if s == row.shape && shape.associative => l,
                        (_, l) => l + 1,
                    };
                    *slot = (row.shape, level);
                    level
                };
                groups
                    .entry((level, row.shape))
                    .or_default()
                    .push(row.start);
            }
        }
        let mut seen = HashSet::new();
        for ((_, shape), starts) in &groups {
            let upsert = &plan.upsert_shapes[*shape as usize];
            let table = plan.table_name(upsert.table);
            // Rows with distinct keys need no combining: the plain statement is cheaper.
            seen.clear();
            let distinct = starts.iter().all(|start| {
                key.clear();
                for pos in upsert.key_positions() {
                    plan.cells[*start as usize + pos].write_field(&mut key);
                }
                let mut hasher = std::hash::DefaultHasher::new();
                key.hash(&mut hasher);
                seen.insert(hasher.finish())
            });
            self.upsert(plan, *shape as usize, starts, !distinct)
                .await
                .map_err(StatementError::on(table))?;
            count(table, starts.len());
        }
        Ok(rows)
    }

    async fn copy(
        &mut self,
        plan: &Plan<'_>,
        shape: usize,
        starts: &[u32],
    ) -> Result<(), tokio_postgres::Error> {
        let shape = &plan.insert_shapes[shape];
        let info = &plan.tables[shape.table].1;
        if shape.columns.is_empty() {
            // Rows of defaults only; COPY needs at least one column.
            let sql = format!(
                "INSERT INTO {} SELECT FROM generate_series(1, $1::int8)",
                info.sql_name
            );
            let statement = self.prepare(&sql).await?;
            self.client
                .execute(&statement, &[&(starts.len() as i64)])
                .await?;
            return Ok(());
        }
        let mut sql = format!("COPY {} (", info.sql_name);
        for (i, c) in shape.columns.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&info.columns[*c as usize].ident);
        }
        sql.push_str(") FROM STDIN (FORMAT binary)");
        let statement = self.prepare(&sql).await?;
        let Conn { client, buf, .. } = self;
        let mut sink = pin!(client.copy_in::<_, Bytes>(&statement).await?);
        let width = shape.columns.len();
        buf.clear();
        copy_header(buf);
        for start in starts {
            buf.put_i16(width as i16);
            for cell in &plan.cells[*start as usize..*start as usize + width] {
                cell.write_field(buf);
            }
            if buf.len() >= COPY_CHUNK {
                sink.send(buf.split().freeze()).await?;
            }
        }
        copy_trailer(buf);
        sink.send(buf.split().freeze()).await?;
        sink.as_mut().finish().await?;
        Ok(())
    }

    async fn upsert(
        &mut self,
        plan: &Plan<'_>,
        shape: usize,
        starts: &[u32],
        combine: bool,
    ) -> Result<(), tokio_postgres::Error> {
        let sql = upsert_sql(plan, &plan.upsert_shapes[shape], combine);
        let statement = self.prepare(&sql).await?;
        let width = plan.upsert_shapes[shape].columns.len();
        let arrays: Vec<CellArray<'_, '_>> = (0..width)
            .map(|column| CellArray {
                cells: &plan.cells,
                rows: starts,
                column,
            })
            .collect();
        let order: Vec<i32> = (0..starts.len() as i32).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(width + 1);
        params.extend(arrays.iter().map(|a| a as &(dyn ToSql + Sync)));
        params.push(&order);
        self.client.execute(&statement, &params).await?;
        Ok(())
    }

    /// Applies `messages` one probe at a time, each in a savepoint; a probe Postgres
    /// rejects is split in halves until the single messages at fault are found. Returns
    /// rows written and the rejected messages (batch item index, error).
    pub async fn isolate(
        &mut self,
        plan: &Plan<'_>,
    ) -> Result<(BTreeMap<String, u64>, Vec<(usize, String)>), tokio_postgres::Error> {
        let mut rows = BTreeMap::new();
        let mut rejected = Vec::new();
        // Ranges of plan.messages, the next to probe last; left halves go first, so rows
        // are still applied in message order.
        let mut probes = Vec::new();
        probes.push(0..plan.messages.len());
        while let Some(range) = probes.pop() {
            if range.is_empty() {
                continue;
            }
            self.client.batch_execute("SAVEPOINT weir_probe").await?;
            match self.apply(plan, &plan.messages[range.clone()]).await {
                Ok(written) => {
                    self.client
                        .batch_execute("RELEASE SAVEPOINT weir_probe")
                        .await?;
                    for (table, n) in written {
                        *rows.entry(table).or_insert(0) += n;
                    }
                }
                Err(e) if crate::pg::classify(&e.error) == crate::pg::Class::Data => {
                    self.client
                        .batch_execute(
                            "ROLLBACK TO SAVEPOINT weir_probe; RELEASE SAVEPOINT weir_probe",
                        )
                        .await?;
                    if range.len() == 1 {
                        rejected.push((plan.messages[range.start].item, describe(&e)));
                    } else {
                        let mid = range.start + range.len() / 2;
                        probes.push(mid..range.end);
                        probes.push(range.start..mid);
                    }
                }
                Err(e) => return Err(e.error),
            }
        }
        Ok((rows, rejected))
    }

    /// Writes the batch's dead letters: its pre-sink ones and `rejected` (item index,
    /// error), stage `sink`. Returns (offset, stage) of each, in offset order.
    pub async fn dead_letters(
        &mut self,
        group: &str,
        batch: &SinkBatch,
        rejected: &[(usize, String)],
    ) -> Result<Vec<(i64, String)>, tokio_postgres::Error> {
        // (offset, stage, error, key, value, headers)
        type Letter<'b> = (
            i64,
            &'b str,
            &'b str,
            Option<&'b [u8]>,
            Option<&'b [u8]>,
            &'b [Header],
        );
        let mut letters: Vec<Letter<'_>> = Vec::new();
        for item in &batch.items {
            if let SinkItem::DeadLetter {
                offset,
                key,
                value,
                headers,
                stage,
                error,
            } = item
            {
                letters.push((
                    *offset,
                    stage,
                    error,
                    key.as_deref(),
                    value.as_deref(),
                    headers,
                ));
            }
        }
        for (index, error) in rejected {
            if let SinkItem::Actions {
                offset,
                key,
                value,
                headers,
                ..
            } = &batch.items[*index]
            {
                letters.push((
                    *offset,
                    "sink",
                    error,
                    key.as_deref(),
                    value.as_deref(),
                    headers,
                ));
            }
        }
        if letters.is_empty() {
            return Ok(Vec::new());
        }
        let offsets: Vec<i64> = letters.iter().map(|l| l.0).collect();
        let stages: Vec<_> = letters.iter().map(|l| text(l.1)).collect();
        let errors: Vec<_> = letters.iter().map(|l| text(l.2)).collect();
        let keys: Vec<_> = letters.iter().map(|l| l.3).collect();
        let values: Vec<_> = letters.iter().map(|l| l.4).collect();
        let headers: Vec<Option<Vec<u8>>> = letters
            .iter()
            .map(|l| (!l.5.is_empty()).then(|| super::outbox::encode_headers(l.5)))
            .collect();
        let statement = self.prepare(DEAD_LETTERS).await?;
        self.client
            .execute(
                &statement,
                &[
                    &group,
                    &batch.scope.pipeline,
                    &batch.topic,
                    &batch.partition,
                    &batch.guest_version,
                    &offsets,
                    &stages,
                    &errors,
                    &keys,
                    &values,
                    &headers,
                ],
            )
            .await?;
        let mut written: Vec<(i64, String)> = offsets
            .into_iter()
            .zip(stages)
            .map(|(o, s)| (o, s.into_owned()))
            .collect();
        written.sort();
        Ok(written)
    }
}

#[derive(Debug, Clone, Copy)]
enum Family {
    Unused,
    One(u32),
    Mixed,
}

/// Text Postgres can store: NUL characters replaced.
fn text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}").into()
    } else {
        s.into()
    }
}

/// `table.column: message (detail) [constraint c] [where]`, from Postgres's report.
pub(crate) fn describe(e: &StatementError) -> String {
    let Some(db) = e.error.as_db_error() else {
        return format!("{}: {}", e.table, crate::pg::error_text(&e.error));
    };
    let mut s = e.table.clone();
    if let Some(column) = db.column() {
        let _ = write!(s, ".{column}");
    }
    let _ = write!(s, ": {}", db.message());
    if let Some(detail) = db.detail() {
        let _ = write!(s, " ({detail})");
    }
    if let Some(constraint) = db.constraint()
        && !db.message().contains(constraint)
    {
        let _ = write!(s, " [constraint {constraint}]");
    }
    if let Some(context) = db.where_() {
        let _ = write!(s, " [{context}]");
    }
    s
}

/// The statement for one upsert shape. Rows arrive as one array per column plus their
/// order; with `combine`, rows with the same key are combined by their policies (`GROUP
/// BY`, each aggregate giving what applying the rows one by one would), then merged into
/// the stored row by the same policies. Without, the keys must be distinct.
///
/// (Keys that Rust sees as distinct but Postgres as equal — citext, `1.0` and `1.00` —
/// make Postgres refuse the statement; bisection then applies them apart, so the result is
/// still right, only slower.)
pub(crate) fn upsert_sql(plan: &Plan<'_>, shape: &UpsertShape, combine: bool) -> String {
    let info = &plan.tables[shape.table].1;
    let columns: Vec<_> = shape
        .columns
        .iter()
        .map(|c| &info.columns[*c as usize])
        .collect();
    let mut sql = format!("INSERT INTO {} AS stored (", info.sql_name);
    sql.push_str(&join(columns.iter().map(|c| c.ident.clone())));
    sql.push_str(") SELECT ");
    let select = shape.policies.iter().enumerate().map(|(j, policy)| {
        let has_min_max = columns[j].has_min_max;
        match *policy {
            _ if !combine => format!("x.v{j}"),
            Policy::Key => format!("x.v{j}"),
            Policy::Replace => format!("(array_agg(x.v{j} ORDER BY x.o DESC))[1]"),
            Policy::Min if has_min_max => format!("min(x.v{j})"),
            Policy::Max if has_min_max => format!("max(x.v{j})"),
            Policy::Min => {
                format!("(array_agg(x.v{j} ORDER BY x.v{j}) FILTER (WHERE x.v{j} IS NOT NULL))[1]")
            }
            Policy::Max => format!(
                "(array_agg(x.v{j} ORDER BY x.v{j} DESC) FILTER (WHERE x.v{j} IS NOT NULL))[1]"
            ),
            Policy::Sum => format!("sum(x.v{j})"),
            Policy::FirstBy(t) => {
                format!("(array_agg(x.v{j} ORDER BY x.v{t} ASC NULLS LAST, x.o ASC))[1]")
            }
            Policy::LastBy(t) => {
                format!("(array_agg(x.v{j} ORDER BY x.v{t} DESC NULLS LAST, x.o DESC))[1]")
            }
        }
    });
    sql.push_str(&join(select));
    sql.push_str(" FROM UNNEST(");
    let params = columns
        .iter()
        .enumerate()
        .map(|(j, c)| format!("${}::{}[]", j + 1, c.base))
        .chain(std::iter::once(format!("${}::int4[]", columns.len() + 1)));
    sql.push_str(&join(params));
    sql.push_str(") AS x(");
    sql.push_str(&join(
        (0..columns.len())
            .map(|j| format!("v{j}"))
            .chain(std::iter::once("o".to_string())),
    ));
    sql.push(')');
    if combine {
        sql.push_str(" GROUP BY ");
        sql.push_str(&join(shape.key_positions().map(|j| format!("x.v{j}"))));
    }
    sql.push_str(" ON CONFLICT (");
    sql.push_str(&join(
        shape.key_positions().map(|j| columns[j].ident.clone()),
    ));
    sql.push(')');
    let sets: Vec<String> = shape
        .policies
        .iter()
        .enumerate()
        .filter_map(|(j, policy)| {
            let c = &columns[j].ident;
            let value = match *policy {
                Policy::Key => return None,
                Policy::Replace => format!("EXCLUDED.{c}"),
                Policy::Min => format!("LEAST(stored.{c}, EXCLUDED.{c})"),
                Policy::Max => format!("GREATEST(stored.{c}, EXCLUDED.{c})"),
                // Null never wins over a number: null + 5 is 5, null + null stays null.
                Policy::Sum => {
                    format!("COALESCE(stored.{c} + EXCLUDED.{c}, stored.{c}, EXCLUDED.{c})")
                }
                // A known time beats an unknown one; on equal times the stored value stays.
                Policy::FirstBy(t) => {
                    let t = &columns[t as usize].ident;
                    format!(
                        "CASE WHEN EXCLUDED.{t} IS NOT NULL AND (stored.{t} IS NULL OR \
                         EXCLUDED.{t} < stored.{t}) THEN EXCLUDED.{c} ELSE stored.{c} END"
                    )
                }
                // On equal times the incoming value wins.
                Policy::LastBy(t) => {
                    let t = &columns[t as usize].ident;
                    format!(
                        "CASE WHEN stored.{t} IS NULL OR EXCLUDED.{t} >= stored.{t} \
                         THEN EXCLUDED.{c} ELSE stored.{c} END"
                    )
                }
            };
            Some(format!("{c} = {value}"))
        })
        .collect();
    if sets.is_empty() {
        sql.push_str(" DO NOTHING");
    } else {
        sql.push_str(" DO UPDATE SET ");
        sql.push_str(&sets.join(", "));
    }
    sql
}

fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join(", ")
}
