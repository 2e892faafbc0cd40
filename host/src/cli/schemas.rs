//! `weir schemas push`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

/// `weir schemas` subcommands.
#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// Register each `TOPIC.avsc` in DIR as subject `TOPIC-value` (idempotent) and print ids.
    Push {
        /// The schema registry.
        #[command(flatten)]
        registry: super::RegistryArgs,
        /// Directory of `TOPIC.avsc` files.
        #[arg(default_value = "schemas")]
        dir: PathBuf,
    },
}

/// Runs a `weir schemas` command.
pub async fn run(cmd: SchemasCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SchemasCommand::Push { registry, dir } => push(&registry, &dir).await,
    }
}

/// The `TOPIC.avsc` files of `dir`, sorted, with their topics.
pub fn schema_files(dir: &std::path::Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("avsc")
            && let Some(topic) = path.file_stem().and_then(|s| s.to_str())
        {
            files.push((topic.to_string(), path.clone()));
        }
    }
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no .avsc files in {}", dir.display());
    Ok(files)
}

async fn push(registry: &super::RegistryArgs, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let client = registry.client()?;
    let mut failed = false;
    for (topic, path) in schema_files(dir)? {
        let subject = format!("{topic}-value");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if let Err(e) = apache_avro::Schema::parse_str(&text) {
            eprintln!("{}: not a valid Avro schema: {e}", path.display());
            failed = true;
            continue;
        }
        match client.register(&subject, &text).await {
            Ok(id) => println!("{subject}\tid {id}\t{}", path.display()),
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
