//! `weir run`: the pipeline.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::ingest::shutdown_signal;
use crate::metrics::{Health, Metrics};
use std::sync::Arc;

use crate::admin::{AdminState, TokenSource};
use crate::pipeline::{Runner, load_guests};
use crate::runtime::Runtime;
use crate::runtime::watch::Watcher;

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
    let health = Arc::new(Health::default());
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
    let runtime = Arc::new(Runtime::new(config.runtime_config(), metrics.events())?);
    // Before anything is loaded or connected: a bad admin setup is refused at once.
    let admin = match &config.admin {
        Some(admin) => {
            let token = TokenSource::from_config(admin);
            token.read()?;
            let listener = tokio::net::TcpListener::bind(admin.listen)
                .await
                .with_context(|| format!("cannot listen on {} (admin.listen)", admin.listen))?;
            tracing::info!(address = %admin.listen, "Serving the admin API");
            Some((listener, token, admin.max_body))
        }
        None => None,
    };
    let guests = Arc::new(load_guests(&config, runtime)?);
    let runner = Runner::start(&config, &guests, metrics.clone(), health.clone()).await?;
    let _watcher = if config.guests.watch {
        Some(Watcher::start(guests.clone(), config.guests.rescan)?)
    } else {
        None
    };
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = admin.map(|(listener, token, max_body)| {
        tokio::spawn(crate::admin::serve(
            listener,
            AdminState {
                guests: guests.clone(),
                token,
                max_body,
            },
            async {
                let _ = admin_stopped.await;
            },
        ))
    });
    tracing::info!(pipelines = config.pipelines.len(), group = %config.kafka.group_id, "Running");
    let result = runner.run(shutdown_signal()).await;
    let _ = stop_http.send(());
    let _ = stop_admin.send(());
    let _ = http.await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    result?;
    Ok(ExitCode::SUCCESS)
}
