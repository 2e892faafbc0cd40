//! What live feeds share: their metrics and the HTTP endpoint serving them, reconnect
//! backoff, and a bounded memory of recent event ids to drop redeliveries by.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::serve::ListenerLimits;

/// A live feed's metrics, all at zero at first.
#[derive(Debug)]
pub struct FeedMetrics {
    registry: Registry,
    received: Counter,
    produced: Family<[(&'static str, String); 1], Counter>,
    reconnects: Counter,
    decode_errors: Counter,
    sequence_gaps: Counter,
    duplicates: Counter,
    since_last: Gauge<f64, std::sync::atomic::AtomicU64>,
    last_message: Mutex<Instant>,
}

impl FeedMetrics {
    /// The metrics of a feed producing to `topics` (declared at 0).
    pub fn new(topics: &[&str]) -> Arc<Self> {
        let m = FeedMetrics {
            registry: Registry::default(),
            received: Counter::default(),
            produced: Family::default(),
            reconnects: Counter::default(),
            decode_errors: Counter::default(),
            sequence_gaps: Counter::default(),
            duplicates: Counter::default(),
            since_last: Gauge::default(),
            last_message: Mutex::new(Instant::now()),
        };
        for topic in topics {
            let _ = m.produced.get_or_create(&[("topic", topic.to_string())]);
        }
        let mut registry = Registry::default();
        registry.register(
            "weir_ingest_messages_received",
            "Messages received from the feed, of every type, malformed ones included",
            m.received.clone(),
        );
        registry.register(
            "weir_ingest_produced",
            "Records queued for Kafka (all delivered before a clean exit), by topic",
            m.produced.clone(),
        );
        registry.register(
            "weir_ingest_reconnects",
            "Connections to the feed attempted again after one failed, dropped or went stale",
            m.reconnects.clone(),
        );
        registry.register(
            "weir_ingest_decode_errors",
            "Feed messages that could not be read and were skipped",
            m.decode_errors.clone(),
        );
        registry.register(
            "weir_ingest_sequence_gaps",
            "Jumps in a product's sequence numbers (messages the feed did not deliver)",
            m.sequence_gaps.clone(),
        );
        registry.register(
            "weir_ingest_duplicates",
            "Updates dropped because their event id was produced already (redeliveries)",
            m.duplicates.clone(),
        );
        registry.register(
            "weir_ingest_seconds_since_last_message",
            "Seconds since the feed last sent anything (since the start before the first)",
            m.since_last.clone(),
        );
        Arc::new(FeedMetrics { registry, ..m })
    }

    /// A message arrived.
    pub fn received(&self) {
        self.received.inc();
        *self.last_message.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// A record was queued for `topic`.
    pub fn produced(&self, topic: &str) {
        self.produced
            .get_or_create(&[("topic", topic.to_string())])
            .inc();
    }

    /// A reconnect is attempted.
    pub fn reconnect(&self) {
        self.reconnects.inc();
    }

    /// A message was skipped as unreadable.
    pub fn decode_error(&self) {
        self.decode_errors.inc();
    }

    /// A sequence gap was seen.
    pub fn sequence_gap(&self) {
        self.sequence_gaps.inc();
    }

    /// A redelivered update was dropped.
    pub fn duplicate(&self) {
        self.duplicates.inc();
    }

    /// The counters' values: received, reconnects, decode errors, gaps, duplicates.
    pub fn totals(&self) -> [u64; 5] {
        [
            self.received.get(),
            self.reconnects.get(),
            self.decode_errors.get(),
            self.sequence_gaps.get(),
            self.duplicates.get(),
        ]
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let since = self
            .last_message
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        self.since_last.set(since.as_secs_f64());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

async fn metrics_handler(State(metrics): State<Arc<FeedMetrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        metrics.encode(),
    )
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<FeedMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().ok();
    let router = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics);
    let limits = ListenerLimits {
        max_connections: 64,
        header_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(10),
    };
    crate::serve::serve("metrics", listener, router, limits, shutdown)
        .await
        .with_context(|| match addr {
            Some(a) => format!("serving metrics on {a}"),
            None => "serving metrics".into(),
        })
}

/// The last `capacity` ids seen, to recognise a redelivery within them.
#[derive(Debug)]
pub struct RecentIds<T> {
    capacity: usize,
    set: HashSet<T>,
    order: VecDeque<T>,
}

impl<T: Hash + Eq + Clone> RecentIds<T> {
    /// Remembers at most `capacity` ids (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `id`; false if it was seen already (a duplicate).
    pub fn insert(&mut self, id: T) -> bool {
        if self.set.contains(&id) {
            return false;
        }
        if self.order.len() >= self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.clone());
        self.order.push_back(id);
        true
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut r = RecentIds::new(2);
        assert!(r.insert(1));
        assert!(!r.insert(1));
        assert!(r.insert(2));
        assert!(r.insert(3));
        assert_eq!(r.len(), 2);
        assert!(r.insert(1), "1 was forgotten");
        assert!(!r.insert(3));
    }

    #[test]
    fn metrics_have_the_documented_names() {
        let m = FeedMetrics::new(&["tickers.crypto"]);
        m.received();
        m.sequence_gap();
        let text = m.encode();
        for line in [
            "weir_ingest_messages_received_total 1",
            "weir_ingest_produced_total{topic=\"tickers.crypto\"} 0",
            "weir_ingest_reconnects_total 0",
            "weir_ingest_decode_errors_total 0",
            "weir_ingest_sequence_gaps_total 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            text.contains("weir_ingest_seconds_since_last_message "),
            "{text}"
        );
    }
}
