//! The Postgres sink: one transaction per batch holding the batch's rows, merge-upserts,
//! dead letters and the partition's next offset (compare-and-set), so a batch is written
//! exactly once or not at all. Also `weir migrate`.
//!
//! How a batch is written (see DESIGN.md, "Delivery"):
//! - Values are converted to their columns' types first ([`value`]); a message with a value
//!   that does not fit, or naming a table or column that does not exist, is dead-lettered
//!   whole (stage `sink`) and the rest goes on.
//! - Inserts go by `COPY … (FORMAT binary)`, one per table and column set: rows naming
//!   different columns are copied separately, so a column a row does not name gets its
//!   default, as the guest contract says (a union of columns would have to write NULL).
//! - Upserts go by one `INSERT … SELECT … FROM UNNEST($1::type[], …) GROUP BY key ON
//!   CONFLICT (key) DO UPDATE` per table, column set, key and policies: rows with the same
//!   key are combined in SQL by aggregates that give what applying them one by one gives,
//!   then merged into the stored row.
//! - If Postgres rejects a row (SQLSTATE classes 21, 22, 23, 42, 44, P0001), the batch is
//!   retried with the messages bisected, each probe in a savepoint, and only the messages
//!   at fault are dead-lettered.
//! - Connection loss and an explicit list of transient errors (serialization failure,
//!   deadlock, admin shutdown…) are retried with backoff until the batch commits; anything
//!   else is returned.

mod migrate;
mod plan;
mod tables;
mod value;
mod write;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::runtime::types::{Action, Value};

pub use migrate::{MigrateReport, migrate};
pub use tables::TableExpectation;
pub use value::ValueKind;

use plan::Plan;
use tables::TableInfo;
use write::Conn;

/// How to reach Postgres, and whose offsets these are.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// `postgresql://…` URL.
    pub database_url: String,
    /// Consumer group the offsets belong to (`weir_offsets.group_id`).
    pub group_id: String,
}

/// One input message's fate within a batch, in offset order.
#[derive(Debug, Clone)]
pub enum SinkItem {
    /// The guest's actions for the message at `offset`. If Postgres rejects one of its
    /// rows, the message goes to `dead_letters` (stage `sink`) with its raw key and value.
    Actions {
        /// Offset of the message.
        offset: i64,
        /// Raw key, kept for dead-lettering.
        key: Option<Vec<u8>>,
        /// Raw value, kept for dead-lettering.
        value: Option<Vec<u8>>,
        /// What to write (`Emit` actions are ignored by the sink).
        actions: Vec<Action>,
    },
    /// A message that failed before the sink (framing, schema, decode, guest).
    DeadLetter {
        /// Offset of the message.
        offset: i64,
        /// Raw key.
        key: Option<Vec<u8>>,
        /// Raw value.
        value: Option<Vec<u8>>,
        /// Stage name (`framing`, `schema`, `decode`, `guest`, `sink`).
        stage: String,
        /// Why.
        error: String,
    },
}

/// A batch of one partition, to write in one transaction.
#[derive(Debug, Clone)]
pub struct SinkBatch {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset of the first message: the stored next offset must equal it (or no offset be
    /// stored yet) for the batch to commit.
    pub start_offset: i64,
    /// The partition's next offset once this batch is committed.
    pub next_offset: i64,
    /// sha256 of the guest that produced the actions, recorded in `dead_letters`.
    pub guest_version: Option<String>,
    /// A column to fill with `guest_version` in every row inserted or upserted (with
    /// policy replace, and over any value the guest gave it); a table without it refuses
    /// the row.
    pub version_column: Option<String>,
    /// One item per message, in offset order.
    pub items: Vec<SinkItem>,
    /// Deduplication keys of this batch's messages, remembered in its transaction.
    pub dedup: Option<DedupKeys>,
}

/// Keys that mark messages as seen, so that a later message with the same key is
/// recognised as a duplicate ([`Sink::seen`]). Recorded in the batch's transaction for the
/// messages whose rows commit (not for messages dead-lettered by the sink).
#[derive(Debug, Clone, Default)]
pub struct DedupKeys {
    /// What the keys are unique within (a pipeline name).
    pub scope: String,
    /// (offset, key), at most one per key.
    pub keys: Vec<(i64, String)>,
}

/// What a committed batch wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Rows inserted or upserted, per table.
    pub rows: BTreeMap<String, u64>,
    /// Dead letters written, as (offset, stage), including rows Postgres rejected.
    pub dead_letters: Vec<(i64, String)>,
    /// Transactions tried before one committed (1 when nothing went wrong).
    pub attempts: u32,
}

/// The sink failed in a way the caller must act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Another consumer committed this partition past where the batch starts: this
    /// process lost the partition; drop the batch and seek to the stored offset.
    #[error(
        "{topic}[{partition}]: stored next offset is {stored:?}, not {expected}: another consumer owns this partition now"
    )]
    Stale {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The batch's start offset.
        expected: i64,
        /// What is stored.
        stored: Option<i64>,
    },
    /// Tables missing or incompatible, found at start.
    #[error("{0}")]
    Tables(String),
    /// Postgres cannot be reached (at start) or failed in a way retrying does not fix.
    #[error("Postgres: {0}")]
    Database(String),
    /// A migration was refused or failed.
    #[error("{0}")]
    Migration(String),
    /// Another batch remembered one of this batch's deduplication keys after this batch
    /// looked them up: nothing was written; look them up again and redo the batch.
    #[error(
        "{topic}[{partition}] at offset {start_offset}: a deduplication key was recorded meanwhile by another batch"
    )]
    SeenMeanwhile {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The batch's start offset.
        start_offset: i64,
    },
}

/// How many times [`Sink::connect`] tries to reach Postgres before it gives up.
const CONNECT_ATTEMPTS: u32 = 5;
/// Backoff between tries: doubling from the first to the last.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// Writes batches into Postgres for one consumer group, exactly once.
///
/// It holds one connection, shared by the partitions it writes: a batch holds it for its
/// transaction. A lost connection is replaced on next use.
pub struct Sink {
    group_id: String,
    pg: tokio_postgres::Config,
    /// Where Postgres is, without the password, for messages.
    target: String,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    conn: Option<Conn>,
    /// Column types of the tables written, by the name the guests use.
    tables: HashMap<String, Arc<TableInfo>>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("database", &self.target)
            .field("group_id", &self.group_id)
            .finish_non_exhaustive()
    }
}

/// Why one try at a batch failed.
enum Failure {
    Stale(Option<i64>),
    SeenMeanwhile,
    Retry(tokio_postgres::Error),
    Fatal(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        match classify(&e) {
            Class::Retry => Failure::Retry(e),
            Class::Data | Class::Fatal => Failure::Fatal(e),
        }
    }
}

impl Sink {
    /// Connects (retrying for a few seconds while Postgres is not reachable) and creates
    /// weir's own tables, `weir_offsets` and `dead_letters`, if they are missing.
    pub async fn connect(config: SinkConfig) -> Result<Self, SinkError> {
        let pg = pg_config(&config.database_url, "weir").map_err(SinkError::Database)?;
        let target = describe_config(&pg);
        let sink = Self {
            group_id: config.group_id,
            pg,
            target,
            state: tokio::sync::Mutex::new(State::default()),
        };
        let mut delay = FIRST_RETRY;
        let mut attempt = 1;
        let conn = loop {
            let opened = match sink.open().await {
                Ok(conn) => conn
                    .client
                    .batch_execute(tables::SYSTEM_TABLES)
                    .await
                    .map(|()| conn),
                Err(e) => Err(e),
            };
            match opened {
                Ok(conn) => break conn,
                Err(e) if attempt < CONNECT_ATTEMPTS && classify(&e) == Class::Retry => {
                    tracing::warn!(
                        database = %sink.target,
                        attempt,
                        retry_in = ?delay,
                        error = %error_text(&e),
                        "Postgres is not reachable yet; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                    attempt += 1;
                }
                Err(e) => {
                    return Err(SinkError::Database(format!(
                        "cannot connect to {} and create weir's tables there: {}",
                        sink.target,
                        error_text(&e)
                    )));
                }
            }
        };
        sink.state.lock().await.conn = Some(conn);
        Ok(sink)
    }

    /// Checks that each table exists and has the expected columns, each of a type that
    /// takes values of the expected kind; refuses with one message listing every problem.
    /// Caches the column types of every table it finds.
    pub async fn check_tables(&self, tables: &[TableExpectation]) -> Result<(), SinkError> {
        let mut state = self.state.lock().await;
        let State {
            conn,
            tables: cache,
        } = &mut *state;
        let conn = self.ready(conn).await.map_err(|e| self.database(&e))?;
        let mut problems = Vec::new();
        for expected in tables {
            let info = tables::load(&conn.client, &expected.table)
                .await
                .map_err(|e| self.database(&e))?;
            tables::check(expected, info.as_ref(), &mut problems);
            match info {
                Some(info) => cache.insert(expected.table.clone(), Arc::new(info)),
                None => cache.remove(&expected.table),
            };
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Tables(format!(
                "tables in {} do not fit the pipeline: {}",
                self.target,
                problems.join("; ")
            )))
        }
    }

    /// The stored next offset of `topic[partition]` for this group, or `None` if no batch
    /// of it was ever committed. Retries while Postgres is unreachable.
    pub async fn stored_offset(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, SinkError> {
        let mut delay = FIRST_RETRY;
        loop {
            let result = {
                let mut state = self.state.lock().await;
                match self.ready(&mut state.conn).await {
                    Ok(conn) => conn
                        .client
                        .query_opt(write::STORED, &[&self.group_id, &topic, &partition])
                        .await
                        .map(|row| row.map(|r| r.get::<_, i64>(0))),
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(offset) => return Ok(offset),
                Err(e) if classify(&e) == Class::Retry => {
                    tracing::warn!(
                        database = %self.target,
                        topic,
                        partition,
                        retry_in = ?delay,
                        error = %error_text(&e),
                        "Cannot read the stored offset; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
                Err(e) => return Err(self.database(&e)),
            }
        }
    }

    /// Writes one batch in one transaction with the partition's next offset.
    ///
    /// Returns [`SinkError::Stale`], having written nothing, when the stored next offset
    /// is neither absent nor the batch's start. Rows Postgres rejects send their messages
    /// to `dead_letters` (stage `sink`) and the rest commits. Connection loss and transient
    /// errors are retried with backoff (200 ms doubling to 10 s) until the batch commits.
    pub async fn write_batch(&self, batch: &SinkBatch) -> Result<WriteReport, SinkError> {
        let mut delay = FIRST_RETRY;
        let mut attempts = 0;
        // A report whose COMMIT got no answer: it may have committed.
        let mut in_doubt = None;
        loop {
            attempts += 1;
            let outcome = {
                let mut state = self.state.lock().await;
                let outcome = self.attempt(&mut state, batch, &mut in_doubt).await;
                if outcome.is_err() {
                    settle(&mut state.conn).await;
                }
                outcome
            };
            match outcome {
                Ok(mut report) => {
                    report.attempts = attempts;
                    return Ok(report);
                }
                Err(Failure::Stale(stored)) => {
                    return Err(SinkError::Stale {
                        topic: batch.topic.clone(),
                        partition: batch.partition,
                        expected: batch.start_offset,
                        stored,
                    });
                }
                Err(Failure::SeenMeanwhile) => {
                    return Err(SinkError::SeenMeanwhile {
                        topic: batch.topic.clone(),
                        partition: batch.partition,
                        start_offset: batch.start_offset,
                    });
                }
                Err(Failure::Retry(e)) => {
                    tracing::warn!(
                        database = %self.target,
                        topic = %batch.topic,
                        partition = batch.partition,
                        start_offset = batch.start_offset,
                        attempt = attempts,
                        retry_in = ?delay,
                        error = %error_text(&e),
                        "Writing the batch failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
                Err(Failure::Fatal(e)) => {
                    return Err(SinkError::Database(format!(
                        "{}[{}] at offset {}: {} (in {})",
                        batch.topic,
                        batch.partition,
                        batch.start_offset,
                        error_text(&e),
                        self.target
                    )));
                }
            }
        }
    }

    /// One try at a batch.
    async fn attempt(
        &self,
        state: &mut State,
        batch: &SinkBatch,
        in_doubt: &mut Option<WriteReport>,
    ) -> Result<WriteReport, Failure> {
        let State { conn, tables } = state;
        let conn = self.ready(conn).await?;
        let mut fresh = HashSet::new();
        for name in table_names(batch) {
            if !tables.contains_key(name) {
                load_table(conn, tables, name).await?;
                fresh.insert(name);
            }
        }
        let version = batch.guest_version.clone().map_or(Value::Null, Value::Text);
        let stamp = batch.version_column.as_deref().map(|c| (c, &version));
        let mut plan = Plan::build(&batch.items, stamp, tables);
        // A row named a column a cached table lacks: maybe it was added since.
        let suspects: Vec<String> = plan
            .suspects
            .iter()
            .filter(|name| !fresh.contains(name.as_str()))
            .cloned()
            .collect();
        if !suspects.is_empty() {
            for name in &suspects {
                load_table(conn, tables, name).await?;
            }
            plan = Plan::build(&batch.items, stamp, tables);
        }

        conn.dirty = true;
        if let Err(stored) = conn.begin(&self.group_id, batch).await? {
            conn.dirty = false;
            return stale_or_done(stored, batch, in_doubt);
        }
        let (rows, rejected) = match conn.apply(&plan, &plan.messages).await {
            Ok(rows) => (rows, Vec::new()),
            Err(e) if classify(&e.error) == Class::Data => {
                tracing::debug!(
                    topic = %batch.topic,
                    partition = batch.partition,
                    error = %write::describe(&e),
                    "Postgres rejected a row; isolating the messages at fault"
                );
                conn.client.batch_execute("ROLLBACK").await?;
                // The rejection may come from a table changed since its columns were read.
                let names: Vec<String> = plan
                    .tables
                    .iter()
                    .map(|(name, _)| name.to_string())
                    .collect();
                for name in &names {
                    load_table(conn, tables, name).await?;
                }
                plan = Plan::build(&batch.items, stamp, tables);
                if let Err(stored) = conn.begin(&self.group_id, batch).await? {
                    conn.dirty = false;
                    return stale_or_done(stored, batch, in_doubt);
                }
                conn.isolate(&plan).await?
            }
            Err(e) => return Err(e.error.into()),
        };
        let mut all_rejected = plan.rejected.clone();
        all_rejected.extend(rejected);
        let dead_letters = conn
            .dead_letters(&self.group_id, batch, &all_rejected)
            .await?;
        if let Some(dedup) = &batch.dedup {
            let rejected: HashSet<i64> = all_rejected
                .iter()
                .filter_map(|(i, _)| match &batch.items[*i] {
                    SinkItem::Actions { offset, .. } => Some(*offset),
                    SinkItem::DeadLetter { .. } => None,
                })
                .collect();
            let keys: Vec<&str> = dedup
                .keys
                .iter()
                .filter(|(offset, _)| !rejected.contains(offset))
                .map(|(_, key)| key.as_str())
                .collect();
            if conn.remember(&self.group_id, &dedup.scope, &keys).await? < keys.len() {
                conn.client.batch_execute("ROLLBACK").await?;
                conn.dirty = false;
                return Err(Failure::SeenMeanwhile);
            }
        }
        let report = WriteReport {
            rows,
            dead_letters,
            attempts: 0,
        };
        match conn.commit(&self.group_id, batch).await {
            Ok(()) => {
                conn.dirty = false;
                Ok(report)
            }
            Err(e) => {
                if e.as_db_error().is_none() {
                    *in_doubt = Some(report);
                }
                Err(e.into())
            }
        }
    }

    /// The keys among `keys` already remembered in `scope` (see [`DedupKeys`]). Connection
    /// loss and transient errors are retried with backoff, like writes.
    pub async fn seen(&self, scope: &str, keys: &[&str]) -> Result<HashSet<String>, SinkError> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        let mut delay = FIRST_RETRY;
        loop {
            let result = {
                let mut state = self.state.lock().await;
                match self.ready(&mut state.conn).await {
                    Ok(conn) => conn.seen(&self.group_id, scope, keys).await,
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(seen) => return Ok(seen),
                Err(e) if classify(&e) == Class::Retry => {
                    tracing::warn!(database = %self.target, retry_in = ?delay, error = %error_text(&e), "Looking up deduplication keys failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
                Err(e) => return Err(self.database(&e)),
            }
        }
    }

    /// Forgets the deduplication keys of `scope` remembered longer than `retention` ago;
    /// returns how many.
    pub async fn forget_seen(&self, scope: &str, retention: Duration) -> Result<u64, SinkError> {
        let mut state = self.state.lock().await;
        let conn = self
            .ready(&mut state.conn)
            .await
            .map_err(|e| self.database(&e))?;
        conn.forget(&self.group_id, scope, retention)
            .await
            .map_err(|e| self.database(&e))
    }

    /// Records the partitions' high watermarks, `(topic, partition, high)`, in
    /// `weir_offsets` (`high_watermark`, `watermark_at`), so SQL can tell the lag. Not
    /// retried: the next measurement replaces it.
    pub async fn record_watermarks(&self, marks: &[(String, i32, i64)]) -> Result<(), SinkError> {
        if marks.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock().await;
        let conn = self
            .ready(&mut state.conn)
            .await
            .map_err(|e| self.database(&e))?;
        conn.watermarks(&self.group_id, marks)
            .await
            .map(drop)
            .map_err(|e| self.database(&e))
    }

    /// The connection, opened (again) if there is none or it is not usable.
    async fn ready<'c>(
        &self,
        slot: &'c mut Option<Conn>,
    ) -> Result<&'c mut Conn, tokio_postgres::Error> {
        let conn = match slot.take() {
            Some(conn) if !conn.dirty && !conn.client.is_closed() => conn,
            old => {
                if old.is_some() {
                    tracing::info!(database = %self.target, "Reconnecting to Postgres");
                }
                self.open().await?
            }
        };
        Ok(slot.insert(conn))
    }

    async fn open(&self) -> Result<Conn, tokio_postgres::Error> {
        let (client, connection) = self.pg.connect(tokio_postgres::NoTls).await?;
        let target = self.target.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(database = %target, error = %e, "Postgres connection ended");
            }
        });
        Ok(Conn::new(client))
    }

    fn database(&self, e: &tokio_postgres::Error) -> SinkError {
        SinkError::Database(format!("{} (in {})", error_text(e), self.target))
    }
}

/// The batch is stale, unless a commit of this very batch got no answer and did happen.
fn stale_or_done(
    stored: Option<i64>,
    batch: &SinkBatch,
    in_doubt: &mut Option<WriteReport>,
) -> Result<WriteReport, Failure> {
    match in_doubt.take() {
        Some(report) if stored == Some(batch.next_offset) => Ok(report),
        _ => Err(Failure::Stale(stored)),
    }
}

/// After a failed try: roll back, or drop the connection if that fails.
async fn settle(slot: &mut Option<Conn>) {
    if let Some(conn) = slot
        && conn.dirty
    {
        if !conn.client.is_closed() && conn.client.batch_execute("ROLLBACK").await.is_ok() {
            conn.dirty = false;
        } else {
            *slot = None;
        }
    }
}

async fn load_table(
    conn: &Conn,
    cache: &mut HashMap<String, Arc<TableInfo>>,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    match tables::load(&conn.client, name).await? {
        Some(info) => {
            cache.insert(name.to_string(), Arc::new(info));
        }
        None => {
            cache.remove(name);
        }
    }
    Ok(())
}

/// The tables a batch writes.
fn table_names(batch: &SinkBatch) -> HashSet<&str> {
    let mut names = HashSet::new();
    for item in &batch.items {
        if let SinkItem::Actions { actions, .. } = item {
            for action in actions {
                match action {
                    Action::Insert(row) => names.insert(row.table.as_str()),
                    Action::Upsert(row) => names.insert(row.table.as_str()),
                    Action::Emit(_) => false,
                };
            }
        }
    }
    names
}

/// What to do about a Postgres error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Transient: try again (on a new connection if this one is gone).
    Retry,
    /// The data's fault: the row goes to `dead_letters`.
    Data,
    /// Neither: report it.
    Fatal,
}

/// SQLSTATEs that go away by themselves, besides class 08 (connection exceptions) and
/// errors without a SQLSTATE (the connection broke).
pub(crate) const RETRIABLE: &[SqlState] = &[
    SqlState::T_R_SERIALIZATION_FAILURE,
    SqlState::T_R_DEADLOCK_DETECTED,
    SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN,
    SqlState::LOCK_NOT_AVAILABLE,
    SqlState::QUERY_CANCELED,
    SqlState::ADMIN_SHUTDOWN,
    SqlState::CRASH_SHUTDOWN,
    SqlState::CANNOT_CONNECT_NOW,
    SqlState::INSUFFICIENT_RESOURCES,
    SqlState::DISK_FULL,
    SqlState::OUT_OF_MEMORY,
    SqlState::TOO_MANY_CONNECTIONS,
    SqlState::READ_ONLY_SQL_TRANSACTION,
    SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
    SqlState::SYSTEM_ERROR,
    SqlState::IO_ERROR,
];

/// Classes of SQLSTATE that blame the data: cardinality, data exception, integrity
/// constraint, syntax or access rule (a missing column), check option.
const DATA_CLASSES: &[&str] = &["21", "22", "23", "42", "44"];

pub(crate) fn classify(e: &tokio_postgres::Error) -> Class {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection failed, unless a value could not be encoded.
        let text = e.to_string();
        return if text.starts_with("error serializing") || text.starts_with("error deserializing") {
            Class::Fatal
        } else {
            Class::Retry
        };
    };
    if RETRIABLE.contains(code) || code.code().starts_with("08") {
        Class::Retry
    } else if DATA_CLASSES.contains(&&code.code()[..2]) || *code == SqlState::RAISE_EXCEPTION {
        Class::Data
    } else {
        Class::Fatal
    }
}

/// A Postgres error as one line: its message and SQLSTATE, or the connection failure.
pub(crate) fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(": ");
                text.push_str(detail);
            }
            text
        }
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// A Postgres connection config from a URL (`postgresql://user:password@host:port/db`, or
/// libpq's `key=value` form), for a connection named `application`: a 5 s connect
/// timeout and the application name unless the URL sets them, and the password from the
/// standard `PGPASSWORD` environment variable when the URL has none, so a password can come
/// from a Kubernetes Secret without being written into a URL.
pub fn pg_config(url: &str, application: &str) -> Result<tokio_postgres::Config, String> {
    pg_config_with(url, application, std::env::var_os("PGPASSWORD"))
}

fn pg_config_with(
    url: &str,
    application: &str,
    pgpassword: Option<std::ffi::OsString>,
) -> Result<tokio_postgres::Config, String> {
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|e| format!("the database URL is not a Postgres URL: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_application_name().is_none() {
        config.application_name(application);
    }
    if config.get_password().is_none()
        && let Some(password) = pgpassword
    {
        config.password(password.as_encoded_bytes());
    }
    Ok(config)
}

/// Where a Postgres config points, without the password.
pub(crate) fn describe_config(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "postgresql://{}@{}:{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        ports.join(","),
        config.get_dbname().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::pg_config_with;

    #[test]
    fn pgpassword_fills_a_url_without_a_password() {
        let c = pg_config_with(
            "postgresql://weir@db:5432/weir",
            "weir",
            Some("s3:cr/t@".into()),
        )
        .unwrap();
        assert_eq!(c.get_password(), Some(&b"s3:cr/t@"[..]));
        assert_eq!(c.get_application_name(), Some("weir"));
        assert!(c.get_connect_timeout().is_some());

        // A password in the URL wins; no PGPASSWORD leaves none.
        let c = pg_config_with(
            "postgresql://weir:inurl@db/weir",
            "weir",
            Some("env".into()),
        )
        .unwrap();
        assert_eq!(c.get_password(), Some(&b"inurl"[..]));
        let c =
            pg_config_with("postgresql://weir@db/weir?application_name=x", "weir", None).unwrap();
        assert_eq!(c.get_password(), None);
        assert_eq!(c.get_application_name(), Some("x"));

        let e = pg_config_with("http://nope", "weir", None).unwrap_err();
        assert!(e.contains("not a Postgres URL"), "{e}");
    }
}
