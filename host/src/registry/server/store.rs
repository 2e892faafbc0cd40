//! The registry's Postgres tables and the queries on them.
//!
//! Tables (unqualified, so the connection's `search_path` decides where they live):
//! - `schema_registry_schemas`: one row per distinct schema, keyed by its global id, with
//!   the text as first registered and the fingerprint of its normalised form (unique, so
//!   the same schema always gets the same id). Rows are never deleted: ids stay stable.
//! - `schema_registry_subject_versions`: which schema each version of a subject is, and
//!   whether that version was soft-deleted.
//! - `schema_registry_config` and `schema_registry_mode`: compatibility levels and modes,
//!   per subject, with the registry-wide value under the subject `__GLOBAL` (a name Confluent
//!   reserves too).
//!
//! Every change runs in a transaction holding one advisory lock, so concurrent registrations
//! (from one server or several) are serialised and the same new schema gets one id.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{
    Client, GenericClient, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};

use crate::pg::{Backoff, Class, PgConfig, classify};

use super::ApiError;
use super::compat::Level;

/// The subject under which registry-wide settings are stored.
pub(crate) const GLOBAL: &str = "__GLOBAL";

/// How many times `connect` tries to reach Postgres, backing off from 250 ms to 5 s
/// between attempts (about half a minute in all).
const CONNECT_ATTEMPTS: u32 = 10;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS schema_registry_schemas (
    id          integer PRIMARY KEY CHECK (id > 0),
    schema_type text NOT NULL,
    schema      text NOT NULL,
    canonical   text NOT NULL,
    fingerprint bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS schema_registry_subject_versions (
    subject    text NOT NULL,
    version    integer NOT NULL CHECK (version > 0),
    schema_id  integer NOT NULL REFERENCES schema_registry_schemas (id),
    deleted    boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, version)
);
CREATE INDEX IF NOT EXISTS schema_registry_subject_versions_schema_id
    ON schema_registry_subject_versions (schema_id);
CREATE TABLE IF NOT EXISTS schema_registry_config (
    subject       text PRIMARY KEY,
    compatibility text NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS schema_registry_mode (
    subject    text PRIMARY KEY,
    mode       text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
";

/// The registry's one lock, held until the end of the transaction. Keyed by the schema the
/// tables live in, so registries in different schemas of one database do not wait for each
/// other.
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('weir.schema_registry'), \
                    hashtext(coalesce(current_schema(), '')))";

/// A pool of Postgres connections to the registry's tables.
pub(crate) struct Store {
    pool: Pool,
}

/// One version of a subject and its schema.
#[derive(Clone)]
pub(crate) struct VersionRow {
    pub version: i32,
    pub id: i32,
    pub deleted: bool,
    pub schema_type: String,
    pub schema: String,
}

/// One use of a schema id: a subject version.
pub(crate) struct Usage {
    pub subject: String,
    pub version: i32,
    pub deleted: bool,
}

impl Store {
    /// Builds the pool and creates the tables, retrying while Postgres is not up yet.
    pub(crate) async fn connect(database_url: &str) -> anyhow::Result<Self> {
        let config = PgConfig::parse(database_url, "weir-registry")
            .map_err(|e| anyhow::anyhow!("the registry's database: {e}"))?;
        let target = config.target().to_string();
        let manager = config.pool_manager(ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        });
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .context("cannot build the Postgres connection pool")?;
        let store = Self { pool };
        let mut backoff = Backoff::between(Duration::from_millis(250), Duration::from_secs(5));
        loop {
            match store.create_tables().await {
                Ok(()) => break,
                Err(e) if backoff.attempts() + 1 < CONNECT_ATTEMPTS && retriable(&e) => {
                    let delay = backoff.delay();
                    tracing::warn!(
                        database = %target,
                        attempt = backoff.attempts(),
                        retry_in = ?delay,
                        error = %e,
                        "Postgres is not ready for the registry yet; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)).with_context(|| {
                        format!("cannot create the schema registry's tables in {target}")
                    });
                }
            }
        }
        tracing::debug!(database = %target, "Registry tables are ready");
        Ok(store)
    }

    async fn create_tables(&self) -> Result<(), PoolError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(LOCK).await?;
        tx.batch_execute(TABLES).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A connection from the pool.
    pub(crate) async fn client(&self) -> Result<Client, ApiError> {
        Ok(self.pool.get().await?)
    }
}

/// Whether a failure to reach Postgres may go away by itself.
fn retriable(e: &PoolError) -> bool {
    match e {
        PoolError::Timeout(_) => true,
        PoolError::Backend(e) => classify(e) == Class::Retry,
        _ => false,
    }
}

/// Takes the registry's write lock for the rest of the transaction.
/// Whether `text` can be stored at all: Postgres text holds no NUL character, so no
/// stored subject has one, and asking for one is answered without asking Postgres.
fn storable(text: &str) -> bool {
    !text.contains('\0')
}

pub(crate) async fn lock(c: &impl GenericClient) -> Result<(), ApiError> {
    c.execute(LOCK, &[]).await?;
    Ok(())
}

/// Every version of `subject`, soft-deleted or not, oldest first.
pub(crate) async fn versions(
    c: &impl GenericClient,
    subject: &str,
) -> Result<Vec<VersionRow>, ApiError> {
    if !storable(subject) {
        return Ok(Vec::new());
    }
    let rows = c
        .query(
            "SELECT v.version, v.schema_id, v.deleted, s.schema_type, s.schema
               FROM schema_registry_subject_versions v
               JOIN schema_registry_schemas s ON s.id = v.schema_id
              WHERE v.subject = $1
              ORDER BY v.version",
            &[&subject],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| VersionRow {
            version: r.get(0),
            id: r.get(1),
            deleted: r.get(2),
            schema_type: r.get(3),
            schema: r.get(4),
        })
        .collect())
}

/// Subjects with at least one version: live ones, all, or only those whose versions are
/// all soft-deleted.
pub(crate) async fn subjects(
    c: &impl GenericClient,
    include_deleted: bool,
    deleted_only: bool,
    prefix: &str,
) -> Result<Vec<String>, ApiError> {
    if !storable(prefix) {
        return Ok(Vec::new());
    }
    let having = if deleted_only {
        "HAVING bool_and(deleted)"
    } else if include_deleted {
        ""
    } else {
        "HAVING NOT bool_and(deleted)"
    };
    let sql = format!(
        "SELECT subject FROM schema_registry_subject_versions
          WHERE left(subject, length($1)) = $1
          GROUP BY subject {having} ORDER BY subject"
    );
    let rows = c.query(&sql, &[&prefix]).await?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Every live (or, with `include_deleted`, every) version of every subject, for
/// `GET /schemas`.
pub(crate) async fn all_versions(
    c: &impl GenericClient,
    include_deleted: bool,
    prefix: &str,
) -> Result<Vec<(String, VersionRow)>, ApiError> {
    if !storable(prefix) {
        return Ok(Vec::new());
    }
    let rows = c
        .query(
            "SELECT v.subject, v.version, v.schema_id, v.deleted, s.schema_type, s.schema
               FROM schema_registry_subject_versions v
               JOIN schema_registry_schemas s ON s.id = v.schema_id
              WHERE ($1 OR NOT v.deleted) AND left(v.subject, length($2)) = $2
              ORDER BY v.subject, v.version",
            &[&include_deleted, &prefix],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let row = VersionRow {
                version: r.get(1),
                id: r.get(2),
                deleted: r.get(3),
                schema_type: r.get(4),
                schema: r.get(5),
            };
            (r.get(0), row)
        })
        .collect())
}

/// The schema with this id, if some subject version (live or soft-deleted) still uses it:
/// its type and text.
pub(crate) async fn schema_by_id(
    c: &impl GenericClient,
    id: i32,
) -> Result<Option<(String, String)>, ApiError> {
    let row = c
        .query_opt(
            "SELECT s.schema_type, s.schema FROM schema_registry_schemas s
              WHERE s.id = $1 AND EXISTS (
                    SELECT 1 FROM schema_registry_subject_versions v WHERE v.schema_id = s.id)",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// The subject versions that use a schema id, in subject and version order.
pub(crate) async fn usages(c: &impl GenericClient, id: i32) -> Result<Vec<Usage>, ApiError> {
    let rows = c
        .query(
            "SELECT subject, version, deleted FROM schema_registry_subject_versions
              WHERE schema_id = $1 ORDER BY subject, version",
            &[&id],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Usage {
            subject: r.get(0),
            version: r.get(1),
            deleted: r.get(2),
        })
        .collect())
}

/// The id of a schema with this fingerprint, if one was ever registered.
pub(crate) async fn id_by_fingerprint(
    c: &impl GenericClient,
    fingerprint: &[u8],
) -> Result<Option<i32>, ApiError> {
    let row = c
        .query_opt(
            "SELECT id FROM schema_registry_schemas WHERE fingerprint = $1",
            &[&fingerprint],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Stores a new schema under the next id and returns it. Call with the lock held.
pub(crate) async fn insert_schema(
    c: &impl GenericClient,
    schema_type: &str,
    schema: &str,
    canonical: &str,
    fingerprint: &[u8],
) -> Result<i32, ApiError> {
    let row = c
        .query_one(
            "INSERT INTO schema_registry_schemas (id, schema_type, schema, canonical, fingerprint)
             SELECT coalesce(max(id), 0) + 1, $1, $2, $3, $4 FROM schema_registry_schemas
             RETURNING id",
            &[&schema_type, &schema, &canonical, &fingerprint],
        )
        .await?;
    Ok(row.get(0))
}

/// Adds a version of a subject. Call with the lock held.
pub(crate) async fn insert_version(
    c: &impl GenericClient,
    subject: &str,
    version: i32,
    id: i32,
) -> Result<(), ApiError> {
    c.execute(
        "INSERT INTO schema_registry_subject_versions (subject, version, schema_id)
         VALUES ($1, $2, $3)",
        &[&subject, &version, &id],
    )
    .await?;
    Ok(())
}

/// Soft-deletes versions of a subject.
pub(crate) async fn soft_delete(
    c: &impl GenericClient,
    subject: &str,
    versions: &[i32],
) -> Result<(), ApiError> {
    c.execute(
        "UPDATE schema_registry_subject_versions SET deleted = true
          WHERE subject = $1 AND version = ANY($2)",
        &[&subject, &versions],
    )
    .await?;
    Ok(())
}

/// Deletes versions of a subject for good (their schemas keep their ids).
pub(crate) async fn hard_delete(
    c: &impl GenericClient,
    subject: &str,
    versions: &[i32],
) -> Result<(), ApiError> {
    c.execute(
        "DELETE FROM schema_registry_subject_versions WHERE subject = $1 AND version = ANY($2)",
        &[&subject, &versions],
    )
    .await?;
    Ok(())
}

/// The compatibility level set for a subject (or [`GLOBAL`]), if any.
pub(crate) async fn config(
    c: &impl GenericClient,
    subject: &str,
) -> Result<Option<Level>, ApiError> {
    if !storable(subject) {
        return Ok(None);
    }
    let row = c
        .query_opt(
            "SELECT compatibility FROM schema_registry_config WHERE subject = $1",
            &[&subject],
        )
        .await?;
    Ok(row.and_then(|r| Level::parse(r.get(0))))
}

/// The level that applies to a subject: its own, else the registry's, else the default.
pub(crate) async fn effective_config(
    c: &impl GenericClient,
    subject: &str,
) -> Result<Level, ApiError> {
    Ok(match config(c, subject).await? {
        Some(level) => level,
        None => config(c, GLOBAL).await?.unwrap_or(Level::DEFAULT),
    })
}

/// Sets the compatibility level of a subject (or [`GLOBAL`]).
pub(crate) async fn set_config(
    c: &impl GenericClient,
    subject: &str,
    level: Level,
) -> Result<(), ApiError> {
    c.execute(
        "INSERT INTO schema_registry_config (subject, compatibility) VALUES ($1, $2)
         ON CONFLICT (subject) DO UPDATE SET compatibility = $2, updated_at = now()",
        &[&subject, &level.as_str()],
    )
    .await?;
    Ok(())
}

/// Removes the compatibility level of a subject (or [`GLOBAL`]) and returns it.
pub(crate) async fn delete_config(
    c: &impl GenericClient,
    subject: &str,
) -> Result<Option<Level>, ApiError> {
    if !storable(subject) {
        return Ok(None);
    }
    let row = c
        .query_opt(
            "DELETE FROM schema_registry_config WHERE subject = $1 RETURNING compatibility",
            &[&subject],
        )
        .await?;
    Ok(row.and_then(|r| Level::parse(r.get(0))))
}

/// The mode set for a subject (or [`GLOBAL`]), if any.
pub(crate) async fn mode(
    c: &impl GenericClient,
    subject: &str,
) -> Result<Option<String>, ApiError> {
    if !storable(subject) {
        return Ok(None);
    }
    let row = c
        .query_opt(
            "SELECT mode FROM schema_registry_mode WHERE subject = $1",
            &[&subject],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Sets the mode of a subject (or [`GLOBAL`]).
pub(crate) async fn set_mode(
    c: &impl GenericClient,
    subject: &str,
    mode: &str,
) -> Result<(), ApiError> {
    c.execute(
        "INSERT INTO schema_registry_mode (subject, mode) VALUES ($1, $2)
         ON CONFLICT (subject) DO UPDATE SET mode = $2, updated_at = now()",
        &[&subject, &mode],
    )
    .await?;
    Ok(())
}

/// Removes the mode of a subject and returns it.
pub(crate) async fn delete_mode(
    c: &impl GenericClient,
    subject: &str,
) -> Result<Option<String>, ApiError> {
    if !storable(subject) {
        return Ok(None);
    }
    let row = c
        .query_opt(
            "DELETE FROM schema_registry_mode WHERE subject = $1 RETURNING mode",
            &[&subject],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}
