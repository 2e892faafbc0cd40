//! `weir migrate`: applies a directory of `*.sql` files to Postgres in file-name order,
//! each once, each in its own transaction, recorded in `weir_migrations` with its sha256.
//!
//! A file already recorded is skipped; one whose content changed since is refused, so an
//! edited migration is noticed rather than silently ignored. A session advisory lock makes
//! concurrent runs (several pods starting at once) wait for each other. weir's own tables
//! (`weir_offsets`, `dead_letters`…) are created first, so migrations may refer to them.
//!
//! A file runs inside the transaction weir opens, so it must not hold its own
//! `BEGIN`/`COMMIT`, nor statements that cannot run in a transaction
//! (`CREATE INDEX CONCURRENTLY`).

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::SinkError;
use crate::pg::error_text;

/// What a migration run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Files applied by this run, in order.
    pub applied: Vec<String>,
    /// Files applied by an earlier run (with the same content), in order.
    pub skipped: Vec<String>,
}

const TABLE: &str = "CREATE TABLE IF NOT EXISTS weir_migrations (
    name       text PRIMARY KEY,
    sha256     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";
/// Keyed by the schema the table lives in, like the table itself.
const LOCK: &str =
    "SELECT pg_advisory_lock(hashtext('weir.migrate'), hashtext(coalesce(current_schema(), '')))";
const UNLOCK: &str =
    "SELECT pg_advisory_unlock(hashtext('weir.migrate'), hashtext(coalesce(current_schema(), '')))";
const CONNECT_ATTEMPTS: u32 = 5;

/// One migration file.
struct File {
    name: String,
    sql: String,
    sha256: String,
}

/// Applies the `*.sql` files of `dir` that are not applied yet, in name order.
pub async fn migrate(database_url: &str, dir: &Path) -> Result<MigrateReport, SinkError> {
    let files = read_dir(dir)?;
    let client = connect(database_url).await?;
    let failed = |what: &str, e: tokio_postgres::Error| {
        SinkError::Migration(format!("{what}: {}", error_text(&e)))
    };
    client
        .batch_execute(LOCK)
        .await
        .map_err(|e| failed("cannot take the migration lock", e))?;
    let result = run(&client, &files).await;
    // Dropping the connection would release the lock too; this is just tidier.
    let _ = client.batch_execute(UNLOCK).await;
    result
}

async fn run(client: &Client, files: &[File]) -> Result<MigrateReport, SinkError> {
    let failed = |what: &str, e: tokio_postgres::Error| {
        SinkError::Migration(format!("{what}: {}", error_text(&e)))
    };
    client
        .batch_execute(TABLE)
        .await
        .map_err(|e| failed("cannot create weir_migrations", e))?;
    // weir's own tables first, so that migrations may refer to them (a view over
    // dead_letters or weir_offsets, say).
    super::create_system_tables(client)
        .await
        .map_err(|e| failed("cannot create weir's tables", e))?;
    let recorded: HashMap<String, String> = client
        .query("SELECT name, sha256 FROM weir_migrations", &[])
        .await
        .map_err(|e| failed("cannot read weir_migrations", e))?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();

    // Refuse before applying anything.
    let changed: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let sha = recorded.get(&f.name)?;
            (*sha != f.sha256)
                .then(|| format!("{} (applied with sha256 {sha}, now {})", f.name, f.sha256))
        })
        .collect();
    if !changed.is_empty() {
        return Err(SinkError::Migration(format!(
            "migrations changed after they were applied: {}; an applied migration is never \
             edited: restore it and add a new file for the change",
            changed.join(", ")
        )));
    }

    let mut report = MigrateReport::default();
    for file in files {
        if recorded.contains_key(&file.name) {
            tracing::info!(migration = %file.name, "Migration already applied; skipping");
            report.skipped.push(file.name.clone());
            continue;
        }
        if let Err(e) = apply(client, file).await {
            let _ = client.batch_execute("ROLLBACK").await;
            let before = if report.applied.is_empty() {
                String::new()
            } else {
                format!(" (applied before it: {})", report.applied.join(", "))
            };
            return Err(SinkError::Migration(format!(
                "migration {} failed and was rolled back: {}{before}",
                file.name,
                error_text(&e)
            )));
        }
        tracing::info!(migration = %file.name, sha256 = %file.sha256, "Migration applied");
        report.applied.push(file.name.clone());
    }
    Ok(report)
}

async fn apply(client: &Client, file: &File) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    client.batch_execute(&file.sql).await?;
    client
        .execute(
            "INSERT INTO weir_migrations (name, sha256) VALUES ($1, $2)",
            &[&file.name, &file.sha256],
        )
        .await?;
    client.batch_execute("COMMIT").await
}

/// The `*.sql` files of `dir`, by name.
fn read_dir(dir: &Path) -> Result<Vec<File>, SinkError> {
    let cannot = |e: std::io::Error| {
        SinkError::Migration(format!("cannot read migrations in {}: {e}", dir.display()))
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(cannot)? {
        let path = entry.map_err(cannot)?.path();
        if path.extension().is_none_or(|e| e != "sql") || !path.is_file() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                SinkError::Migration(format!("{}: file name is not UTF-8", path.display()))
            })?
            .to_string();
        let sql = std::fs::read_to_string(&path)
            .map_err(|e| SinkError::Migration(format!("cannot read {}: {e}", path.display())))?;
        let sha256 = hex::encode(Sha256::digest(sql.as_bytes()));
        files.push(File { name, sql, sha256 });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// One connection, retried for a few seconds while Postgres is not reachable.
async fn connect(database_url: &str) -> Result<Client, SinkError> {
    crate::pg::PgConfig::parse(database_url, "weir-migrate")
        .map_err(SinkError::Database)?
        .connect_retrying("migrations", CONNECT_ATTEMPTS)
        .await
        .map_err(SinkError::Database)
}
