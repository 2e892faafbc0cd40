//! `weir migrate`: applies a directory of SQL migrations to Postgres.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

/// Arguments of `weir migrate`: a database and directory, or a config naming them
/// (`database.url`, `database.migrations`).
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Postgres URL (`postgresql://user:password@host:5432/db`); with --config, overrides
    /// `database.url`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Take the database and the directory from this pipeline config.
    #[arg(long, short = 'c', conflicts_with = "dir")]
    config: Option<PathBuf>,
    /// Values for the config's template (YAML).
    #[arg(long, requires = "config")]
    values: Option<PathBuf>,
    /// Directory of `*.sql` files, applied in file-name order, each once.
    #[arg(required_unless_present = "config")]
    dir: Option<PathBuf>,
}

/// Runs `weir migrate`.
pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let (url, dir) = match (&args.config, args.dir) {
        (Some(path), _) => {
            let config = crate::config::load(path, args.values.as_deref())?;
            let dir = config.database.migrations.clone().with_context(|| {
                format!("{}: database.migrations names no directory", path.display())
            })?;
            (args.database_url.unwrap_or(config.database.url), dir)
        }
        (None, Some(dir)) => (
            args.database_url
                .context("the database: pass --database-url or set DATABASE_URL")?,
            dir,
        ),
        (None, None) => unreachable!("clap requires DIR without --config"),
    };
    let report = crate::sink::migrate(&url, &dir)
        .await
        .with_context(|| format!("migrating with {}", dir.display()))?;
    let mut files: Vec<(&str, &str)> = report
        .skipped
        .iter()
        .map(|n| (n.as_str(), "skipped (already applied)"))
        .chain(report.applied.iter().map(|n| (n.as_str(), "applied")))
        .collect();
    files.sort();
    for (name, what) in files {
        println!("{what} {name}");
    }
    if report.applied.is_empty() {
        println!("nothing to apply");
    }
    Ok(ExitCode::SUCCESS)
}
