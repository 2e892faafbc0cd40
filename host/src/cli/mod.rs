//! The `weir` command line.

mod admin;
mod config;
mod dlq;
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
    /// List, show and replay dead letters.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
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
        Command::Dlq(cmd) => block_on(dlq::run(cmd)),
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
    /// A librdkafka property for every Kafka client (`security.protocol=SASL_SSL`);
    /// repeatable, applied after `--kafka-config`.
    #[arg(short = 'X', long = "kafka-property", value_name = "KEY=VALUE")]
    pub kafka_properties: Vec<String>,
    /// A file of librdkafka properties, one `key=value` a line (`#` comments), as Kafka's
    /// own tools take with `--command-config`: where TLS and SASL settings and secrets go.
    #[arg(long, env = "KAFKA_CONFIG", value_name = "FILE")]
    pub kafka_config: Option<std::path::PathBuf>,
    /// The schema registry.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Where the schema registry is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Schema registry URL (`https://user:password@host` works too).
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://localhost:8081"
    )]
    pub registry: String,
    /// A PEM file of CA certificates the registry's `https://` certificate is checked
    /// against, besides the system's.
    #[arg(long, env = "SCHEMA_REGISTRY_CA", value_name = "FILE")]
    pub registry_ca: Option<std::path::PathBuf>,
    /// Basic auth `user:password` (Confluent's `basic.auth.user.info`).
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
        hide_env_values = true,
        value_name = "USER:PASSWORD"
    )]
    pub registry_basic_auth: Option<String>,
    /// A bearer token (Confluent's `bearer.auth.token`).
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_BEARER_AUTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub registry_bearer_token: Option<String>,
}

impl RegistryArgs {
    /// A client of the registry these name.
    pub fn client(&self) -> anyhow::Result<crate::registry::RegistryClient> {
        Ok(crate::registry::RegistryClient::with_auth(
            &self.registry,
            &crate::registry::RegistryAuth {
                ca: self.registry_ca.clone(),
                basic_user_info: self.registry_basic_auth.clone(),
                bearer_token: self.registry_bearer_token.clone(),
            },
        )?)
    }
}

impl Endpoints {
    /// The brokers with the properties of `--kafka-config` and then of `-X`.
    pub fn kafka(&self) -> anyhow::Result<crate::source::kafka::Kafka> {
        let mut properties = Vec::new();
        if let Some(path) = &self.kafka_config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--kafka-config {}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                    continue;
                }
                properties.push(property(line).map_err(|e| {
                    anyhow::anyhow!("--kafka-config {}, line {}: {e}", path.display(), n + 1)
                })?);
            }
        }
        for p in &self.kafka_properties {
            properties.push(property(p).map_err(|e| anyhow::anyhow!("-X {p:?}: {e}"))?);
        }
        Ok(crate::source::kafka::Kafka::with_properties(
            &self.brokers,
            properties,
        ))
    }
}

/// `key=value` (or `key: value`), trimmed.
fn property(text: &str) -> Result<(String, String), String> {
    let at = text
        .find(['=', ':'])
        .ok_or_else(|| "expected key=value".to_string())?;
    let (key, value) = (text[..at].trim(), text[at + 1..].trim());
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    Ok((key.to_string(), value.to_string()))
}

// The parsers of sizes and durations live with the configuration, which reads them too.
pub use crate::config::{parse_duration, parse_size};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_properties_come_from_the_file_then_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.properties");
        std::fs::write(
            &file,
            "# TLS\nsecurity.protocol=SSL\nssl.ca.location = /etc/ca.pem\n\nsasl.password: s3cret\n",
        )
        .unwrap();
        let endpoints = Endpoints {
            brokers: "b:9093".into(),
            kafka_properties: vec!["security.protocol=SASL_SSL".into()],
            kafka_config: Some(file.clone()),
            registry: RegistryArgs {
                registry: String::new(),
                registry_ca: None,
                registry_basic_auth: None,
                registry_bearer_token: None,
            },
        };
        let kafka = endpoints.kafka().unwrap();
        let c = kafka.client_config();
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"), "-X wins");
        assert_eq!(c.get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        std::fs::write(&file, "security.protocol\n").unwrap();
        let e = endpoints.kafka().unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("key=value"), "{e}");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
