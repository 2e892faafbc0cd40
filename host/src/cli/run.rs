//! `weir run`: the pipeline.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::ingest::shutdown_signal;
use crate::metrics::{Health, Metrics};
use std::sync::Arc;

use crate::admin::{AdminState, TokenSource};
use crate::pipeline::{Runner, load_guests};
use crate::runtime::watch::Watcher;
use crate::runtime::{Runtime, RuntimeConfig};

/// Arguments of `weir run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: super::config::ConfigArgs,
}

/// Runs `weir run`.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    crate::serve::raise_open_files_limit();
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
        config.http.limits(),
        async {
            let _ = http_stopped.await;
        },
    ));
    // Guests compile in child processes of this binary, under the compile budget.
    let exe =
        std::env::current_exe().context("cannot find the weir binary to compile guests with")?;
    let runtime_config = RuntimeConfig {
        compiler: config.isolated_compiler(exe),
        ..config.runtime_config()
    };
    let runtime = Arc::new(Runtime::new(runtime_config, metrics.events())?);
    // Before anything is loaded or connected: a bad admin setup is refused at once.
    let admin = match &config.admin {
        Some(admin) => {
            let token = TokenSource::from_config(admin);
            token.read()?;
            let listener = tokio::net::TcpListener::bind(admin.listen)
                .await
                .with_context(|| format!("cannot listen on {} (admin.listen)", admin.listen))?;
            tracing::info!(address = %admin.listen, "Serving the admin API");
            Some((listener, token, admin.max_body, admin.limits()))
        }
        None => None,
    };
    let guests = Arc::new(load_guests(&config, runtime)?);
    metrics.declare(&crate::metrics::Known {
        pipelines: config.pipelines.iter().map(|p| p.name.clone()).collect(),
        topics: config
            .pipelines
            .iter()
            .flat_map(|p| p.topics.clone())
            .collect(),
        topics_out: config
            .pipelines
            .iter()
            .flat_map(|p| p.topics_out.keys().cloned())
            .collect(),
        tables: config
            .pipelines
            .iter()
            .flat_map(|p| p.tables.clone())
            .collect(),
        guests: config
            .pipelines
            .iter()
            .filter_map(|p| guests.slot(&p.name))
            .map(|slot| slot.current().id().name.clone())
            .collect(),
    });
    let runner = Runner::start(&config, &guests, metrics.clone(), health.clone()).await?;
    let deploys = runner.deploys();
    let _watcher = if config.guests.watch {
        Some(Watcher::start(
            guests.clone(),
            deploys.clone(),
            config.guests.rescan,
        )?)
    } else {
        None
    };
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = admin.map(|(listener, token, max_body, limits)| {
        tokio::spawn(crate::admin::serve(
            listener,
            AdminState {
                guests: guests.clone(),
                deployer: deploys.clone(),
                token,
                max_body,
            },
            limits,
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
