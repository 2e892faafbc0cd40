//! `weir run`: the pipeline.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::ingest::shutdown_signal;
use crate::metrics::{Health, Metrics};
use crate::pipeline::Runner;
use crate::runtime::Runtime;

/// Arguments of `weir run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: super::config::ConfigArgs,
}

/// Runs `weir run`.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let metrics = Metrics::new();
    let health = std::sync::Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?;
    tracing::info!(address = %config.http.listen, "Serving /metrics, /healthz and /readyz");
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(crate::metrics::serve(
        listener,
        metrics.clone(),
        health.clone(),
        async {
            let _ = http_stopped.await;
        },
    ));
    let runtime = Runtime::new(config.runtime_config(), metrics.events())?;
    let runner = Runner::start(&config, &runtime, metrics.clone(), health.clone()).await?;
    tracing::info!(pipelines = config.pipelines.len(), group = %config.kafka.group_id, "Running");
    let result = runner.run(shutdown_signal()).await;
    let _ = stop_http.send(());
    let _ = http.await;
    result?;
    Ok(ExitCode::SUCCESS)
}
