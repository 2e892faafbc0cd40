//! `weir registry`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use std::time::Duration;

use crate::registry::server::{RegistryServer, ServerLimits, Users};
use crate::serve::ListenerLimits;

/// `weir registry` subcommands.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Serve the Confluent Schema Registry REST API, stored in Postgres.
    Serve(ServeArgs),
}

/// `weir registry serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (host:port).
    #[arg(long, env = "WEIR_REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,

    /// Postgres URL of the database holding the registry's tables
    /// (postgresql://user:password@host:5432/db; add `?options=-c%20search_path%3Dname` to use
    /// another schema than `public`). The tables are created if missing.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,

    /// Connections open at once; one more is closed as soon as it is accepted.
    #[arg(long, default_value_t = ServerLimits::default().listener.max_connections)]
    max_connections: usize,

    /// How long a connection may take to send a request's headers, or stay idle.
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    header_timeout: Duration,

    /// How long a whole request may take, its body included (then 408).
    #[arg(long, default_value = "60s", value_parser = crate::config::parse_duration)]
    request_timeout: Duration,

    /// Require HTTP basic auth: a file of `user:password:role` lines, role `read` (GETs,
    /// lookups, compatibility checks) or `write` (everything). Without it, anyone who
    /// reaches the server may register and delete.
    #[arg(long, env = "WEIR_REGISTRY_USERS_FILE", value_name = "FILE")]
    users_file: Option<std::path::PathBuf>,

    /// Largest request body (then 413).
    #[arg(long, default_value = "2MiB", value_parser = crate::config::parse_size)]
    max_body: usize,
}

/// Runs a `weir registry` command.
pub async fn run(cmd: RegistryCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RegistryCommand::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let defaults = ServerLimits::default();
    let limits = ServerLimits {
        listener: ListenerLimits {
            max_connections: args.max_connections.max(1),
            header_timeout: args.header_timeout,
            request_timeout: args.request_timeout,
        },
        max_body: args.max_body,
        ..defaults
    };
    let users = args.users_file.as_deref().map(Users::load).transpose()?;
    let mut server = RegistryServer::connect(&args.database_url)
        .await?
        .with_limits(limits);
    if let Some(users) = users {
        tracing::info!(?users, "Requests need basic auth");
        server = server.with_users(users);
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "Schema registry listening");
    server.serve(listener, shutdown_signal()).await?;
    tracing::info!(%address, "Schema registry stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM; the server then finishes the requests in flight.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "Cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!(signal = "SIGINT", "Shutting down the schema registry"),
        () = terminate => tracing::info!(signal = "SIGTERM", "Shutting down the schema registry"),
    }
}
