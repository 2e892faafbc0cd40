//! `weir migrate`: applies a directory of SQL migrations to Postgres.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

/// Arguments of `weir migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Postgres URL (`postgresql://user:password@host:5432/db`).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Directory of `*.sql` files, applied in file-name order, each once.
    dir: PathBuf,
}

/// Runs `weir migrate`.
pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let report = crate::sink::migrate(&args.database_url, &args.dir)
        .await
        .with_context(|| format!("migrating with {}", args.dir.display()))?;
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
