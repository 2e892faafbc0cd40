//! The Postgres sink: one transaction per batch holding the batch's rows, merge-upserts,
//! dead letters, state writes and the partition's next offset (compare-and-set), so a batch
//! is written exactly once or not at all. Also `weir migrate`.
//!
//! A batch is written ready-made ([`Sink::write_batch`]), or, for guests that keep state
//! or run lookups, made inside its own transaction ([`Sink::run_batch`]): the partition's
//! state is read there (unless the caller holds it as of the batch's start), the guest runs
//! with lookups reading the transaction's snapshot, and what it returns is written in the
//! same transaction. A pipeline writes only the tables it declares: a row for any other
//! dead-letters its message, naming the table and the pipeline.
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
//! - Connection loss, transient errors (serialization failure, deadlock, admin shutdown…)
//!   and a missing right (SQLSTATE 42501: a revoked GRANT) are retried with backoff until
//!   the batch commits, the partition shown as paused ([`SinkEvents`]); anything else is
//!   returned. [`crate::pg`] classifies the errors.

pub mod dead_letters;
pub mod deployments;
mod lookup;
mod migrate;
mod outbox;
mod plan;
mod state;
mod tables;
mod value;
mod write;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Action, Header, Lookups, StateStore, StateWrites, Target, Value};
use crate::pg::{Backoff, Class, PgConfig, classify, error_text};

pub use lookup::{LookupSet, MAX_ROWS as MAX_LOOKUP_ROWS};
pub use migrate::{MigrateReport, migrate};
pub use outbox::{InFlight, OutboxMessage, OutboxReader, Pending, decode_headers, encode_headers};
pub use tables::{TableExpectation, WEIR_TABLES};

use plan::{Plan, Scope};
use tables::TableInfo;
use write::{Conn, NotBegun};

/// How to reach Postgres, and whose offsets these are.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// `postgresql://…` URL.
    pub database_url: String,
    /// Consumer group the offsets belong to (`weir_offsets.group_id`).
    pub group_id: String,
}

/// Told when a partition's batch waits for Postgres and when it goes on, for `/readyz`
/// and the metrics.
pub trait SinkEvents: Send + Sync {
    /// `topic`/`partition` waits for Postgres (`Some(why)`), or no longer does.
    fn paused(&self, topic: &str, partition: i32, why: Option<&str>);
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
        /// Record headers, kept for dead-lettering.
        headers: Vec<Header>,
        /// What to write. Rows name the batch's targets by position; the sink writes
        /// `emits` for the `Emit` actions.
        actions: Vec<Action>,
        /// The messages its `Emit` actions make, encoded, stored in the outbox if its
        /// rows commit.
        emits: Vec<OutboxMessage>,
    },
    /// A message that failed before the sink (framing, schema, decode, guest).
    DeadLetter {
        /// Offset of the message.
        offset: i64,
        /// Raw key.
        key: Option<Vec<u8>>,
        /// Raw value.
        value: Option<Vec<u8>>,
        /// Record headers.
        headers: Vec<Header>,
        /// Stage name (`framing`, `schema`, `decode`, `guest`, `sink`).
        stage: String,
        /// Why.
        error: String,
    },
}

/// The pipeline a batch belongs to, and the tables it may write (as its guest names them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineScope {
    /// The pipeline's name.
    pub pipeline: String,
    /// The tables it declares.
    pub tables: BTreeSet<String>,
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
    /// The pipeline, and the tables it may write.
    pub scope: Arc<PipelineScope>,
    /// The tables and columns the items' rows are written to, by position.
    pub targets: Vec<Target>,
    /// One item per message, in offset order.
    pub items: Vec<SinkItem>,
    /// Deduplication keys of this batch's messages, remembered in its transaction.
    pub dedup: Option<DedupKeys>,
    /// What the batch's guest calls wrote to the pipeline's state of this partition.
    pub state: Option<StateWrites>,
    /// The guest's name when its versions are deployed through the group's store: the
    /// batch commits only if `guest_version` is the group's live version of it.
    pub barrier: Option<String>,
}

/// A guest version a batch runs with, checked against the group's live version of that
/// guest when the batch's transaction begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCheck {
    /// Guest name.
    pub name: String,
    /// sha256 of the version the batch runs with.
    pub version: String,
}

/// A batch made inside its own transaction by [`Sink::run_batch`].
#[derive(Debug)]
pub struct RunBatch<'r> {
    /// Topic.
    pub topic: &'r str,
    /// Partition.
    pub partition: i32,
    /// Offset of the first message (as [`SinkBatch::start_offset`]).
    pub start_offset: i64,
    /// The partition's next offset once committed.
    pub next_offset: i64,
    /// The pipeline's state of the partition, for a guest that keeps state.
    pub state: Option<&'r mut StateSlot>,
    /// The pipeline's lookups, for a guest that runs them.
    pub lookups: Option<&'r Arc<LookupSet>>,
    /// The guest version `make` runs, when checked against the group's live version.
    pub guest: Option<GuestCheck>,
}

/// A pipeline's state of one partition, held between its batches.
#[derive(Debug)]
pub struct StateSlot {
    /// The pipeline.
    pub pipeline: String,
    /// The state as committed up to an offset (exclusive), when held. A batch starting
    /// anywhere else reads it again, inside its transaction.
    pub held: Option<(i64, Arc<StateStore>)>,
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
    /// Messages stored in the outbox, per destination topic.
    pub emitted: BTreeMap<String, u64>,
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
    /// The group switched the batch's guest to another version after the batch ran:
    /// nothing was written; run the batch again with the live version.
    #[error(
        "{topic}[{partition}] at offset {start_offset}: guest {guest} is now at version {live} in the group"
    )]
    Superseded {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The batch's start offset.
        start_offset: i64,
        /// Guest name.
        guest: String,
        /// sha256 of the group's live version.
        live: String,
    },
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
    /// [`Sink::run_batch`]'s maker gave the batch up (its guest's breaker tripped), with
    /// why: nothing was written.
    #[error("{0}")]
    Aborted(String),
}

/// How many times [`Sink::connect`] tries to reach Postgres before it gives up.
const CONNECT_ATTEMPTS: u32 = 5;

/// Writes batches into Postgres for one consumer group, exactly once.
///
/// It holds one connection, shared by the partitions it writes: a batch holds it for its
/// transaction. A lost connection is replaced on next use.
pub struct Sink {
    group_id: String,
    pg: PgConfig,
    /// Where Postgres is, without the password, for messages.
    target: String,
    state: tokio::sync::Mutex<State>,
    events: Option<Arc<dyn SinkEvents>>,
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
#[derive(Debug)]
enum Failure {
    Stale(Option<i64>),
    SeenMeanwhile,
    /// The group's live version of the batch's guest is this one (sha256), not the one
    /// the batch ran with.
    Superseded(String),
    Retry(tokio_postgres::Error),
    /// Something outside the batch is not right yet (a lookup that no longer prepares):
    /// wait and try again, as for a transient error.
    Pause(String),
    Fatal(tokio_postgres::Error),
    /// The batch's maker gave it up: nothing is written.
    Aborted(String),
}

/// Which batch a try is of.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub topic: String,
    pub partition: i32,
    pub start_offset: i64,
    pub next_offset: i64,
    /// The guest version the batch runs with, when the group deploys its guest.
    pub guest: Option<GuestCheck>,
}

impl Head {
    fn of(batch: &SinkBatch) -> Self {
        Self {
            topic: batch.topic.clone(),
            partition: batch.partition,
            start_offset: batch.start_offset,
            next_offset: batch.next_offset,
            guest: batch
                .barrier
                .clone()
                .zip(batch.guest_version.clone())
                .map(|(name, version)| GuestCheck { name, version }),
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        match classify(&e) {
            Class::Retry => Failure::Retry(e),
            // Not the data's fault, and it will not pass by itself: wait for an operator.
            Class::Permission => {
                Failure::Pause(format!("Postgres refuses weir: {}", error_text(&e)))
            }
            Class::Data | Class::Fatal => Failure::Fatal(e),
        }
    }
}

/// Creates weir's own tables where they are missing (and adds the columns newer versions
/// of weir use).
pub async fn create_system_tables(
    client: &tokio_postgres::Client,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(tables::SYSTEM_TABLES).await
}

impl Sink {
    /// Connects (retrying for a few seconds while Postgres is not reachable) and creates
    /// weir's own tables, `weir_offsets` and `dead_letters`, if they are missing.
    pub async fn connect(config: SinkConfig) -> Result<Self, SinkError> {
        let pg = PgConfig::parse(&config.database_url, "weir").map_err(SinkError::Database)?;
        let target = pg.target().to_string();
        let sink = Self {
            group_id: config.group_id,
            pg,
            target,
            state: tokio::sync::Mutex::new(State::default()),
            events: None,
        };
        let mut backoff = Backoff::new();
        let conn = loop {
            let opened = match sink.open().await {
                Ok(conn) => create_system_tables(&conn.client).await.map(|()| conn),
                Err(e) => Err(e),
            };
            match opened {
                Ok(conn) => break conn,
                Err(e)
                    if backoff.attempts() + 1 < CONNECT_ATTEMPTS
                        && classify(&e) == Class::Retry =>
                {
                    let delay = backoff.delay();
                    tracing::warn!(
                        database = %sink.target,
                        attempt = backoff.attempts(),
                        retry_in = ?delay,
                        error = %error_text(&e),
                        "Postgres is not reachable yet; retrying"
                    );
                    tokio::time::sleep(delay).await;
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

    /// Tells `events` whenever a batch waits for Postgres, and when it goes on.
    pub fn with_events(mut self, events: Arc<dyn SinkEvents>) -> Self {
        self.events = Some(events);
        self
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
        let own = tables::weir_tables(&conn.client)
            .await
            .map_err(|e| self.database(&e))?;
        for expected in tables {
            let info = tables::load(&conn.client, &expected.table)
                .await
                .map_err(|e| self.database(&e))?;
            if let Some(info) = &info
                && own.contains(&info.sql_name)
            {
                problems.push(format!(
                    "table {} is weir's own ({}): no pipeline may write it",
                    expected.table, info.sql_name
                ));
                continue;
            }
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
        let mut backoff = Backoff::new();
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
                Err(e) if matches!(classify(&e), Class::Retry | Class::Permission) => {
                    let delay = backoff.delay();
                    tracing::warn!(
                        database = %self.target,
                        topic,
                        partition,
                        retry_in = ?delay,
                        error = %error_text(&e),
                        "Cannot read the stored offset; retrying"
                    );
                    tokio::time::sleep(delay).await;
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
        let mut backoff = Backoff::new();
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
            let head = Head::of(batch);
            match outcome {
                Ok(mut report) => {
                    report.attempts = attempts;
                    self.resumed(&head, &backoff);
                    return Ok(report);
                }
                Err(failure) => self.after(failure, &head, &mut backoff).await?,
            }
        }
    }

    /// Makes a batch inside its own transaction and writes it there: reads the
    /// partition's state (unless `run.state` holds it as of the batch's start), calls
    /// `make` with it and with the pipeline's lookups (which read the transaction's
    /// snapshot, read-only), and writes the batch `make` returns with the partition's next
    /// offset. `make` runs again on every retry, from the committed state. On commit,
    /// `run.state` holds the state as of the batch's end.
    ///
    /// Returns what [`Sink::write_batch`] returns, and the batch that was written.
    pub async fn run_batch<F>(
        &self,
        run: &mut RunBatch<'_>,
        mut make: F,
    ) -> Result<(WriteReport, SinkBatch), SinkError>
    where
        F: FnMut(Option<Arc<StateStore>>, Option<Arc<dyn Lookups>>) -> Result<SinkBatch, String>,
    {
        let mut backoff = Backoff::new();
        let mut attempts = 0;
        let mut in_doubt = None;
        let head = Head {
            topic: run.topic.to_string(),
            partition: run.partition,
            start_offset: run.start_offset,
            next_offset: run.next_offset,
            guest: run.guest.clone(),
        };
        loop {
            attempts += 1;
            let outcome = {
                let mut state = self.state.lock().await;
                let outcome = self
                    .attempt_run(&mut state, &head, run, &mut make, &mut in_doubt)
                    .await;
                if outcome.is_err() {
                    settle(&mut state.conn).await;
                }
                outcome
            };
            match outcome {
                Ok((mut report, batch)) => {
                    report.attempts = attempts;
                    self.resumed(&head, &backoff);
                    if let Some(slot) = run.state.as_deref_mut() {
                        let mut store = match slot.held.take() {
                            Some((at, store)) if at == head.start_offset => store,
                            _ => Arc::new(StateStore::default()),
                        };
                        if let Some(writes) = &batch.state {
                            Arc::make_mut(&mut store).apply(writes);
                        }
                        slot.held = Some((head.next_offset, store));
                    }
                    return Ok((report, batch));
                }
                Err(failure) => self.after(failure, &head, &mut backoff).await?,
            }
        }
    }

    /// After a failed try: waits before the next (a transient failure), or says why there
    /// is none.
    async fn after(
        &self,
        failure: Failure,
        head: &Head,
        backoff: &mut Backoff,
    ) -> Result<(), SinkError> {
        match failure {
            Failure::Stale(stored) => Err(SinkError::Stale {
                topic: head.topic.clone(),
                partition: head.partition,
                expected: head.start_offset,
                stored,
            }),
            Failure::SeenMeanwhile => Err(SinkError::SeenMeanwhile {
                topic: head.topic.clone(),
                partition: head.partition,
                start_offset: head.start_offset,
            }),
            Failure::Superseded(live) => Err(SinkError::Superseded {
                topic: head.topic.clone(),
                partition: head.partition,
                start_offset: head.start_offset,
                guest: head
                    .guest
                    .as_ref()
                    .map(|g| g.name.clone())
                    .unwrap_or_default(),
                live,
            }),
            Failure::Retry(e) => {
                self.wait(head, backoff, &error_text(&e)).await;
                Ok(())
            }
            Failure::Pause(why) => {
                self.wait(head, backoff, &why).await;
                Ok(())
            }
            Failure::Aborted(why) => Err(SinkError::Aborted(why)),
            Failure::Fatal(e) => Err(SinkError::Database(format!(
                "{}[{}] at offset {}: {} (in {})",
                head.topic,
                head.partition,
                head.start_offset,
                error_text(&e),
                self.target
            ))),
        }
    }

    /// After a batch committed: if it had waited, its partition goes on.
    fn resumed(&self, head: &Head, backoff: &Backoff) {
        if backoff.attempts() > 0 {
            tracing::info!(database = %self.target, topic = %head.topic, partition = head.partition,
                start_offset = head.start_offset, attempts = backoff.attempts() + 1,
                "The batch committed after waiting for Postgres; the partition goes on");
            if let Some(events) = &self.events {
                events.paused(&head.topic, head.partition, None);
            }
        }
    }

    async fn wait(&self, head: &Head, backoff: &mut Backoff, error: &str) {
        if let Some(events) = &self.events {
            events.paused(&head.topic, head.partition, Some(error));
        }
        let delay = backoff.delay();
        tracing::warn!(
            database = %self.target,
            topic = %head.topic,
            partition = head.partition,
            start_offset = head.start_offset,
            attempt = backoff.attempts(),
            retry_in = ?delay,
            error,
            "Writing the batch failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }

    /// One try at a ready-made batch.
    async fn attempt(
        &self,
        state: &mut State,
        batch: &SinkBatch,
        in_doubt: &mut Option<WriteReport>,
    ) -> Result<WriteReport, Failure> {
        let State { conn, tables } = state;
        let conn = self.ready(conn).await?;
        let head = Head::of(batch);
        let scope = Scope {
            pipeline: &batch.scope.pipeline,
            tables: &batch.scope.tables,
        };
        let version = batch.guest_version.clone().map_or(Value::Null, Value::Text);
        let mut plan = plan_batch(conn, tables, batch, &scope, &version).await?;

        conn.dirty = true;
        if let Err(why) = conn.begin(&self.group_id, &head, false).await? {
            conn.dirty = false;
            return not_begun(why, &head, in_doubt);
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
                reload_tables(conn, tables, &plan).await?;
                plan = build_plan(batch, tables, &scope, &version);
                if let Err(why) = conn.begin(&self.group_id, &head, false).await? {
                    conn.dirty = false;
                    return not_begun(why, &head, in_doubt);
                }
                conn.isolate(&plan).await?
            }
            Err(e) => return Err(e.error.into()),
        };
        self.finish_batch(conn, batch, &plan, rows, rejected, in_doubt)
            .await
    }

    /// One try at a batch made in its transaction (see [`Sink::run_batch`]).
    async fn attempt_run<F>(
        &self,
        state: &mut State,
        head: &Head,
        run: &mut RunBatch<'_>,
        make: &mut F,
        in_doubt: &mut Option<(WriteReport, SinkBatch)>,
    ) -> Result<(WriteReport, SinkBatch), Failure>
    where
        F: FnMut(Option<Arc<StateStore>>, Option<Arc<dyn Lookups>>) -> Result<SinkBatch, String>,
    {
        let State { conn, tables } = state;
        let conn = self.ready(conn).await?;
        conn.dirty = true;
        // Lookups read one snapshot: the transaction's.
        if let Err(why) = conn
            .begin(&self.group_id, head, run.lookups.is_some())
            .await?
        {
            conn.dirty = false;
            return match why {
                NotBegun::Stale(stored) => match in_doubt.take() {
                    Some(done) if stored == Some(head.next_offset) => Ok(done),
                    _ => Err(Failure::Stale(stored)),
                },
                NotBegun::Superseded(live) => Err(Failure::Superseded(live)),
            };
        }
        let store = match run.state.as_deref() {
            None => None,
            Some(StateSlot {
                held: Some((at, store)),
                ..
            }) if *at == head.start_offset => Some(store.clone()),
            Some(slot) => {
                let owner = state::Owner {
                    group: &self.group_id,
                    pipeline: &slot.pipeline,
                    topic: &head.topic,
                    partition: head.partition,
                };
                Some(Arc::new(conn.load_state(owner).await?))
            }
        };
        let lookups = match run.lookups {
            None => None,
            Some(set) => {
                let mut prepared = HashMap::new();
                for (name, sql) in &set.queries {
                    let statement = conn.prepare(sql).await?;
                    match lookup::describe(set, name, sql, statement) {
                        Ok(p) => prepared.insert(name.clone(), p),
                        Err(why) => return Err(Failure::Pause(why)),
                    };
                }
                conn.client
                    .batch_execute("SAVEPOINT weir_guest; SET LOCAL transaction_read_only = on")
                    .await?;
                Some(Arc::new(lookup::PgLookups::new(
                    conn.client.clone(),
                    set.clone(),
                    prepared,
                )))
            }
        };
        let batch = make(store, lookups.clone().map(|l| l as Arc<dyn Lookups>))
            .map_err(Failure::Aborted)?;
        let mut rows_savepoint = "SAVEPOINT weir_rows";
        if let Some(lookups) = lookups {
            if let Some(e) = lookups.broken() {
                return Err(e.into());
            }
            rows_savepoint = "ROLLBACK TO SAVEPOINT weir_guest; RELEASE SAVEPOINT weir_guest; SAVEPOINT weir_rows";
        }
        conn.client.batch_execute(rows_savepoint).await?;
        let scope = Scope {
            pipeline: &batch.scope.pipeline,
            tables: &batch.scope.tables,
        };
        let version = batch.guest_version.clone().map_or(Value::Null, Value::Text);
        let mut plan = plan_batch(conn, tables, &batch, &scope, &version).await?;
        let (rows, rejected) = match conn.apply(&plan, &plan.messages).await {
            Ok(rows) => (rows, Vec::new()),
            Err(e) if classify(&e.error) == Class::Data => {
                tracing::debug!(
                    topic = %batch.topic,
                    partition = batch.partition,
                    error = %write::describe(&e),
                    "Postgres rejected a row; isolating the messages at fault"
                );
                // Back to before the rows, in the same transaction: the guest's lookups
                // and state stay those of this transaction.
                conn.client
                    .batch_execute("ROLLBACK TO SAVEPOINT weir_rows")
                    .await?;
                reload_tables(conn, tables, &plan).await?;
                plan = build_plan(&batch, tables, &scope, &version);
                conn.isolate(&plan).await?
            }
            Err(e) => return Err(e.error.into()),
        };
        let mut doubt = None;
        let result = self
            .finish_batch(conn, &batch, &plan, rows, rejected, &mut doubt)
            .await;
        drop(plan);
        match result {
            Ok(report) => Ok((report, batch)),
            Err(failure) => {
                if let Some(report) = doubt {
                    *in_doubt = Some((report, batch));
                }
                Err(failure)
            }
        }
    }

    /// The end of a batch's transaction: its dead letters (those before the sink and
    /// `rejected`), deduplication keys, state writes, the partition's next offset, and
    /// the commit. A commit that got no answer leaves its report in `in_doubt`.
    async fn finish_batch(
        &self,
        conn: &mut Conn,
        batch: &SinkBatch,
        plan: &Plan<'_>,
        rows: BTreeMap<String, u64>,
        rejected: Vec<(usize, String)>,
        in_doubt: &mut Option<WriteReport>,
    ) -> Result<WriteReport, Failure> {
        let mut all_rejected = plan.rejected.clone();
        all_rejected.extend(rejected);
        let dead_letters = conn
            .dead_letters(&self.group_id, batch, &all_rejected)
            .await?;
        if let Some(dedup) = &batch.dedup {
            // Only messages that commit are remembered: a dead letter replayed later is
            // not a duplicate.
            let rejected: HashSet<i64> = all_rejected
                .iter()
                .filter_map(|(i, _)| match &batch.items[*i] {
                    SinkItem::Actions { offset, .. } => Some(*offset),
                    SinkItem::DeadLetter { .. } => None,
                })
                .chain(batch.items.iter().filter_map(|item| match item {
                    SinkItem::DeadLetter { offset, .. } => Some(*offset),
                    SinkItem::Actions { .. } => None,
                }))
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
        let rejected: HashSet<usize> = all_rejected.iter().map(|(i, _)| *i).collect();
        let emits: Vec<(i64, &OutboxMessage)> = batch
            .items
            .iter()
            .enumerate()
            .filter(|(i, _)| !rejected.contains(i))
            .flat_map(|(_, item)| match item {
                SinkItem::Actions { offset, emits, .. } => {
                    emits.iter().map(|m| (*offset, m)).collect::<Vec<_>>()
                }
                SinkItem::DeadLetter { .. } => Vec::new(),
            })
            .collect();
        let mut emitted: BTreeMap<String, u64> = BTreeMap::new();
        for (_, m) in &emits {
            *emitted.entry(m.topic.clone()).or_default() += 1;
        }
        conn.write_outbox(
            &self.group_id,
            &batch.scope.pipeline,
            &batch.topic,
            batch.partition,
            &emits,
        )
        .await?;
        if let Some(writes) = &batch.state {
            let owner = state::Owner {
                group: &self.group_id,
                pipeline: &batch.scope.pipeline,
                topic: &batch.topic,
                partition: batch.partition,
            };
            conn.write_state(owner, writes).await?;
        }
        let report = WriteReport {
            rows,
            dead_letters,
            attempts: 0,
            emitted,
        };
        match conn.commit(&self.group_id, &Head::of(batch)).await {
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

    /// Checks a pipeline's lookups: each must be one query Postgres accepts, whose
    /// parameters and columns weir can convert. One message lists every problem.
    pub async fn check_lookups(&self, set: &LookupSet) -> Result<(), SinkError> {
        let mut state = self.state.lock().await;
        let conn = self
            .ready(&mut state.conn)
            .await
            .map_err(|e| self.database(&e))?;
        let mut problems = Vec::new();
        for (name, sql) in &set.queries {
            if let Some(why) = lookup::refuse_sql(sql) {
                problems.push(format!("pipeline {}, lookup {name}: {why}", set.pipeline));
                continue;
            }
            match conn.prepare(sql).await {
                Ok(statement) => {
                    if let Err(why) = lookup::describe(set, name, sql, statement) {
                        problems.push(why);
                    }
                }
                Err(e) if classify(&e) == Class::Retry => return Err(self.database(&e)),
                Err(e) => problems.push(format!(
                    "pipeline {}, lookup {name}: Postgres refuses it: {}",
                    set.pipeline,
                    error_text(&e)
                )),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Tables(format!(
                "lookups in {} do not work: {}",
                self.target,
                problems.join("; ")
            )))
        }
    }

    /// The keys among `keys` already remembered in `scope` (see [`DedupKeys`]). Connection
    /// loss and transient errors are retried with backoff, like writes.
    pub async fn seen(&self, scope: &str, keys: &[&str]) -> Result<HashSet<String>, SinkError> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        let mut backoff = Backoff::new();
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
                Err(e) if matches!(classify(&e), Class::Retry | Class::Permission) => {
                    let delay = backoff.delay();
                    tracing::warn!(database = %self.target, retry_in = ?delay, error = %error_text(&e), "Looking up deduplication keys failed; retrying");
                    tokio::time::sleep(delay).await;
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
        Ok(Conn::new(self.pg.connect_spawned("the sink").await?))
    }

    fn database(&self, e: &tokio_postgres::Error) -> SinkError {
        SinkError::Database(format!("{} (in {})", error_text(e), self.target))
    }
}

/// The batch is stale, unless a commit of this very batch got no answer and did happen.
/// A batch whose transaction did not begin: done already (a commit that got no answer
/// did commit), stale, or run with a superseded guest version.
fn not_begun(
    why: NotBegun,
    head: &Head,
    in_doubt: &mut Option<WriteReport>,
) -> Result<WriteReport, Failure> {
    match why {
        NotBegun::Stale(stored) => match in_doubt.take() {
            Some(report) if stored == Some(head.next_offset) => Ok(report),
            _ => Err(Failure::Stale(stored)),
        },
        NotBegun::Superseded(live) => Err(Failure::Superseded(live)),
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

/// Loads the columns of the tables the batch's targets name that its pipeline may write
/// and that are not cached yet; returns those names.
/// The plan of `batch` over its tables (loaded first if not cached), rows stamped with
/// `version` in the batch's version column. A row naming a column that a cached table
/// lacks has its table loaded again (the column may have been added since) and the plan
/// made again.
async fn plan_batch<'b>(
    conn: &Conn,
    tables: &mut HashMap<String, Arc<TableInfo>>,
    batch: &'b SinkBatch,
    scope: &Scope<'_>,
    version: &'b Value,
) -> Result<Plan<'b>, tokio_postgres::Error> {
    let fresh = load_tables(conn, tables, batch, scope).await?;
    let plan = build_plan(batch, tables, scope, version);
    let suspects: Vec<&String> = plan
        .suspects
        .iter()
        .filter(|name| !fresh.contains(name.as_str()))
        .collect();
    if suspects.is_empty() {
        return Ok(plan);
    }
    for name in suspects {
        load_table(conn, tables, name).await?;
    }
    Ok(build_plan(batch, tables, scope, version))
}

/// The plan of `batch` over the tables as cached, rows stamped with `version`.
fn build_plan<'b>(
    batch: &'b SinkBatch,
    tables: &HashMap<String, Arc<TableInfo>>,
    scope: &Scope<'_>,
    version: &'b Value,
) -> Plan<'b> {
    let stamp = batch.version_column.as_deref().map(|c| (c, version));
    Plan::build(&batch.items, &batch.targets, stamp, tables, scope)
}

async fn load_tables<'b>(
    conn: &Conn,
    tables: &mut HashMap<String, Arc<TableInfo>>,
    batch: &'b SinkBatch,
    scope: &Scope<'_>,
) -> Result<HashSet<&'b str>, tokio_postgres::Error> {
    let mut fresh = HashSet::new();
    for target in &batch.targets {
        let name = target.table.as_str();
        if scope.refuses(name).is_none() && !tables.contains_key(name) && fresh.insert(name) {
            load_table(conn, tables, name).await?;
        }
    }
    Ok(fresh)
}

/// Reads the columns of every table of `plan` again.
async fn reload_tables(
    conn: &Conn,
    tables: &mut HashMap<String, Arc<TableInfo>>,
    plan: &Plan<'_>,
) -> Result<(), tokio_postgres::Error> {
    let names: Vec<String> = plan
        .tables
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    for name in &names {
        load_table(conn, tables, name).await?;
    }
    Ok(())
}
