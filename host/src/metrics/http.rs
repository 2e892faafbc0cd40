//! `GET /metrics`, `/healthz` and `/readyz`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::Metrics;
use crate::serve::ListenerLimits;

/// The content type of `/metrics`: OpenMetrics text, which Prometheus asks for first.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the process is ready for work, for `/readyz`: ready once it is connected and
/// has partitions assigned.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    connected: bool,
    assigned: bool,
    reason: Option<String>,
    /// Partitions waiting for a dependency: by topic, partition and what they wait for
    /// ("the schema registry", "Postgres"), why.
    waiting: BTreeMap<(String, i32, &'static str), String>,
}

impl Health {
    /// Whether the connections the pipelines need (Kafka, Postgres, the registry) are up.
    pub fn set_connected(&self, connected: bool) {
        self.lock().connected = connected;
    }

    /// Whether the consumer group has assigned this process partitions.
    pub fn set_assigned(&self, assigned: bool) {
        self.lock().assigned = assigned;
    }

    /// Why the process is not ready (`"Postgres unreachable: …; retrying"`), shown by
    /// `/readyz` instead of the generic reason while it is not ready. Clear it with `None`
    /// on recovery.
    pub fn set_reason(&self, reason: Option<String>) {
        self.lock().reason = reason;
    }

    /// Whether `topic`/`partition` waits for the schema registry (`Some(why)`) or not.
    pub fn set_waiting(&self, topic: &str, partition: i32, why: Option<&str>) {
        self.set_waiting_for("the schema registry", topic, partition, why);
    }

    /// Whether `topic`/`partition` is paused, its batch waiting for Postgres (`Some(why)`),
    /// or not.
    pub fn set_paused(&self, topic: &str, partition: i32, why: Option<&str>) {
        self.set_waiting_for("Postgres", topic, partition, why);
    }

    /// Whether `topic`/`partition` waits for its pipeline's guest breaker to close
    /// (`Some(why)`), or not.
    pub fn set_breaker_open(&self, topic: &str, partition: i32, why: Option<&str>) {
        self.set_waiting_for("its guest breaker to close", topic, partition, why);
    }

    fn set_waiting_for(&self, what: &'static str, topic: &str, partition: i32, why: Option<&str>) {
        let mut s = self.lock();
        let key = (topic.to_string(), partition, what);
        match why {
            Some(why) => {
                s.waiting.insert(key, why.to_string());
            }
            None => {
                s.waiting.remove(&key);
            }
        }
    }

    /// `Ok` when connected, assigned and no partition waits for the registry or Postgres,
    /// else why not.
    pub fn ready(&self) -> Result<(), String> {
        let s = self.lock();
        if let Some(((topic, partition, what), why)) = s.waiting.iter().next() {
            let others = match s.waiting.len() - 1 {
                0 => String::new(),
                n => format!(" (and {n} more partitions)"),
            };
            return Err(format!(
                "partition {topic}[{partition}] is waiting for {what}{others}: {why}"
            ));
        }
        if s.connected && s.assigned {
            return Ok(());
        }
        if let Some(reason) = &s.reason {
            return Err(reason.clone());
        }
        Err(match (s.connected, s.assigned) {
            (false, false) => "not connected yet, and no partitions assigned",
            (false, true) => "not connected",
            _ => "no partitions assigned",
        }
        .into())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The routes `/metrics`, `/healthz` and `/readyz`, to serve alone ([`serve`]) or merged
/// with others.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.health.ready() {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        ),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener`, under `limits`, until
/// `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().ok();
    crate::serve::serve(
        "metrics",
        listener,
        router(metrics, health),
        limits,
        shutdown,
    )
    .await
    .with_context(|| match addr {
        Some(a) => format!("serving metrics and probes on {a}"),
        None => "serving metrics and probes".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_both_and_explains() {
        let h = Health::default();
        assert_eq!(
            h.ready(),
            Err("not connected yet, and no partitions assigned".into())
        );
        h.set_connected(true);
        assert_eq!(h.ready(), Err("no partitions assigned".into()));
        h.set_reason(Some("rebalancing".into()));
        assert_eq!(h.ready(), Err("rebalancing".into()));
        h.set_assigned(true);
        assert_eq!(h.ready(), Ok(()));
        h.set_waiting("t", 2, Some("registry down"));
        h.set_waiting("t", 3, Some("registry down"));
        assert_eq!(
            h.ready(),
            Err(
                "partition t[2] is waiting for the schema registry (and 1 more partitions): registry down"
                    .into()
            )
        );
        h.set_waiting("t", 2, None);
        h.set_waiting("t", 3, None);
        assert_eq!(h.ready(), Ok(()));
    }
}
