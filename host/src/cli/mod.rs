//! The `weir` command line.

mod admin;
mod config;
mod guest;
mod ingest;
pub mod jsonl;
mod migrate;
mod registry;
mod run;
mod schemas;
mod tail;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Run WebAssembly stream processors between Kafka and Postgres.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WEIR_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Render and check the configuration file.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Inspect and try guest components.
    #[command(subcommand)]
    Guest(guest::GuestCommand),
    /// Run the Confluent-compatible schema registry.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Register Avro schemas with a registry.
    #[command(subcommand)]
    Schemas(schemas::SchemasCommand),
    /// Produce ticks to Kafka: simulated, or replayed from a file.
    #[command(subcommand)]
    Ingest(ingest::IngestCommand),
    /// Print a topic's messages, decoded through the registry, as JSON lines.
    Tail(tail::TailArgs),
    /// Run the pipelines of a config: Kafka → guests → Postgres, exactly once.
    Run(run::RunArgs),
    /// Apply a directory of SQL migrations to Postgres, each file once, in name order.
    Migrate(migrate::MigrateArgs),
}

/// Parses the arguments, runs the command and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Config(cmd) => config::run(cmd),
        Command::Guest(cmd) => guest::run(cmd),
        Command::Registry(cmd) => block_on(registry::run(cmd)),
        Command::Schemas(cmd) => block_on(schemas::run(cmd)),
        Command::Ingest(cmd) => block_on(ingest::run(cmd)),
        Command::Tail(args) => block_on(tail::run(args)),
        Command::Run(args) => block_on(run::run(args)),
        Command::Migrate(args) => block_on(migrate::run(args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an async command on a multi-threaded tokio runtime.
fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    command: F,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(command)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("WEIR_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Where Kafka and the schema registry are.
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoints {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    /// Schema registry URL.
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://localhost:8081"
    )]
    pub registry: String,
}

// The parsers of sizes and durations live with the configuration, which reads them too.
pub use crate::config::{parse_duration, parse_size};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
