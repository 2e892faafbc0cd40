//! What live feeds share: reading a websocket feed through reconnects into Kafka
//! ([`run`], over a feed's [`Protocol`]), the feed's metrics and the HTTP endpoint serving
//! them, and a bounded memory of recent event ids to drop redeliveries by.
//!
//! A dropped, failed or stale connection (nothing received for `stale_after`) is opened
//! again after a capped, jittered exponential backoff ([`crate::pg::Backoff`], the one
//! retry policy) and subscribed again. An update whose event id was produced already (a
//! redelivery across a reconnect) is dropped. A frame that cannot be read, or whose tick
//! does not fit its topic's registered schema, is counted, logged with a sample, and
//! skipped. Only Kafka failing ends a run early.

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

use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value as Json};
use sha2::Digest as _;
use tokio_tungstenite::tungstenite::Message;

use super::{Producer, now_ms};
use crate::pg::Backoff;
use crate::serve::ListenerLimits;

/// A live feed's protocol: how to subscribe, and what its frames carry.
pub trait Protocol: Send {
    /// The message that subscribes, sent after each connect.
    fn subscribe(&self) -> String;

    /// How often the subscription is sent again on an open connection (a feed that forgets
    /// it otherwise); `None`: never.
    fn resubscribe_every(&self) -> Option<Duration> {
        None
    }

    /// Reads one text frame, arrived at `ingestion_ms`, into the ticks it carries (none
    /// for a heartbeat); `Err` says why it cannot be read.
    fn read(
        &mut self,
        text: &str,
        ingestion_ms: i64,
        metrics: &FeedMetrics,
    ) -> Result<Vec<Tick>, String>;
}

/// One tick read from a feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// The topic it goes to.
    pub topic: &'static str,
    /// Its Kafka key (the symbol).
    pub key: String,
    /// The same for every delivery of the update.
    pub event_id: uuid::Uuid,
    /// Its fields, for the topic's registered schema.
    pub record: Map<String, Json>,
}

/// An event id made from `parts` (a feed's name first, then what identifies the update):
/// the first 16 bytes of their sha256, the same for every delivery of the update.
pub fn event_id(parts: &[&[u8]]) -> uuid::Uuid {
    let mut digest = sha2::Sha256::new();
    for part in parts {
        digest.update(part);
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.finalize()[..16]);
    uuid::Builder::from_custom_bytes(id).into_uuid()
}

/// Whether the feed is to be read, and whether it is connected: shared by the reader and
/// the control endpoint ([`control_router`]).
#[derive(Debug)]
pub struct Control {
    wanted: tokio::sync::watch::Sender<bool>,
    connected: std::sync::atomic::AtomicBool,
    url: String,
}

impl Control {
    /// A feed of `url`, to be read from the start.
    pub fn new(url: &str) -> Arc<Self> {
        Arc::new(Self {
            wanted: tokio::sync::watch::channel(true).0,
            connected: std::sync::atomic::AtomicBool::new(false),
            url: url.to_string(),
        })
    }

    /// Starts (`true`) or stops reading the feed; true if that changed anything.
    pub fn set_running(&self, running: bool) -> bool {
        self.wanted.send_replace(running) != running
    }

    fn running(&self) -> bool {
        *self.wanted.borrow()
    }

    fn set_connected(&self, connected: bool) {
        self.connected
            .store(connected, std::sync::atomic::Ordering::Relaxed);
    }

    /// `GET /status`: state, connection and counters.
    fn status(&self, metrics: &FeedMetrics) -> Json {
        let [
            received,
            reconnects,
            decode_errors,
            sequence_gaps,
            duplicates,
        ] = metrics.totals();
        serde_json::json!({
            "state": if self.running() { "running" } else { "stopped" },
            "connected": self.connected.load(std::sync::atomic::Ordering::Relaxed),
            "url": self.url,
            "received": received,
            "reconnects": reconnects,
            "decode_errors": decode_errors,
            "sequence_gaps": sequence_gaps,
            "duplicates": duplicates,
            "seconds_since_last_message": metrics.since_last_message().as_secs_f64(),
        })
    }
}

/// The control endpoint, behind `token`: `POST /start`, `POST /stop` (the connection is
/// closed and the feed not read until started again; the process stays up, its metrics
/// served) and `GET /status`.
pub fn control_router(
    control: Arc<Control>,
    metrics: Arc<FeedMetrics>,
    token: crate::admin::TokenSource,
) -> Router {
    let switch = |running: bool| {
        let control = control.clone();
        move || async move {
            let changed = control.set_running(running);
            let state = if running { "running" } else { "stopped" };
            if changed {
                tracing::info!(state, "The feed was switched through the control endpoint");
            }
            axum::Json(serde_json::json!({ "state": state, "changed": changed }))
        }
    };
    let status = {
        let control = control.clone();
        move || async move { axum::Json(control.status(&metrics)) }
    };
    Router::new()
        .route("/start", axum::routing::post(switch(true)))
        .route("/stop", axum::routing::post(switch(false)))
        .route("/status", get(status))
        .layer(axum::middleware::from_fn_with_state(
            token,
            crate::admin::bearer,
        ))
}

/// How a feed is read.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// The websocket URL.
    pub url: String,
    /// Reconnect when nothing arrives for this long.
    pub stale_after: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Event ids remembered to drop redeliveries.
    pub dedup_capacity: usize,
    /// CA certificates (PEM) trusted for `wss://` besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Ticks produced.
    pub produced: u64,
    /// Redelivered updates dropped.
    pub duplicates: u64,
}

/// Why a connection ended.
enum End {
    Shutdown,
    /// Stopped through the control endpoint.
    Stopped,
    Lost(String),
}

/// Reads the feed at `config.url` with `protocol` into `producer` until `shutdown`
/// completes, then delivers everything queued. While `control` says stopped, the feed is
/// not connected.
pub async fn run<P: Protocol>(
    protocol: P,
    config: FeedConfig,
    mut producer: Producer,
    metrics: Arc<FeedMetrics>,
    control: Arc<Control>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let tls = Arc::new(tls_config(config.ca_file.as_deref())?);
    let mut backoff = Backoff::between(config.backoff_min, config.backoff_max);
    let mut reader = Reader {
        seen: RecentIds::new(config.dedup_capacity),
        summary: Summary::default(),
        protocol,
        metrics,
        config,
    };
    tokio::pin!(shutdown);
    let mut wanted = control.wanted.subscribe();
    let mut first = true;
    loop {
        if !control.running() {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = wanted.wait_for(|running| *running) => {}
            }
            first = true;
            backoff.reset();
        }
        if !first {
            reader.metrics.reconnect();
        }
        first = false;
        let end = tokio::select! {
            _ = &mut shutdown => End::Shutdown,
            _ = wanted.wait_for(|running| !*running) => End::Stopped,
            end = reader.connection(&mut producer, &tls, &mut backoff, &control) => end?,
        };
        control.set_connected(false);
        match end {
            End::Shutdown => break,
            End::Stopped => {
                tracing::info!(url = %reader.config.url, "Stopped through the control endpoint; disconnected");
            }
            End::Lost(why) => {
                let delay = backoff.delay();
                tracing::warn!(url = %reader.config.url, reason = %why, delay = ?delay, "Feed connection lost; reconnecting");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = wanted.wait_for(|running| !*running) => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    let summary = reader.summary;
    tracing::info!(
        produced = summary.produced,
        duplicates = summary.duplicates,
        "Stopping; delivering what was received"
    );
    producer.finish().await?;
    Ok(summary)
}

/// TLS for `wss://`: rustls with the system's CA certificates and those of `ca_file`.
fn tls_config(ca_file: Option<&std::path::Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        for cert in crate::pg::tls::certificates(path, "--ca-file").map_err(anyhow::Error::msg)? {
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", path.display()))?;
        }
    }
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "Skipping a system CA certificate");
    }
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!(
            "No system CA certificates found: wss:// connections will fail (install ca-certificates)"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The reader's state across connections.
struct Reader<P> {
    protocol: P,
    config: FeedConfig,
    metrics: Arc<FeedMetrics>,
    seen: RecentIds<uuid::Uuid>,
    summary: Summary,
}

impl<P: Protocol> Reader<P> {
    /// One connection: connect, subscribe, read until it is lost. Only Kafka failing is
    /// an error.
    async fn connection(
        &mut self,
        producer: &mut Producer,
        tls: &Arc<rustls::ClientConfig>,
        backoff: &mut Backoff,
        control: &Control,
    ) -> anyhow::Result<End> {
        let url = self.config.url.clone();
        let stale = self.config.stale_after;
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            None,
            true,
            Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
        );
        let mut ws = match tokio::time::timeout(stale, connect).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return Ok(End::Lost(format!("cannot connect: {e}"))),
            Err(_) => return Ok(End::Lost(format!("no connection within {stale:?}"))),
        };
        if let Err(e) = ws.send(Message::text(self.protocol.subscribe())).await {
            return Ok(End::Lost(format!("cannot subscribe: {e}")));
        }
        tracing::info!(url = %url, "Connected and subscribed");
        control.set_connected(true);
        let resubscribe = self.protocol.resubscribe_every();
        let mut next_subscribe = resubscribe.map(|every| tokio::time::Instant::now() + every);
        let mut working = false;
        loop {
            // Nothing for `stale` ends the connection; the subscription is renewed on time
            // meanwhile.
            let deadline = tokio::time::Instant::now() + stale;
            let next = loop {
                let at = next_subscribe.map_or(deadline, |s| s.min(deadline));
                match tokio::time::timeout_at(at, ws.next()).await {
                    Ok(next) => break next,
                    Err(_) if at == deadline => {
                        return Ok(End::Lost(format!(
                            "the feed sent nothing for {stale:?} (--stale-after)"
                        )));
                    }
                    Err(_) => {
                        if let Err(e) = ws.send(Message::text(self.protocol.subscribe())).await {
                            return Ok(End::Lost(format!("cannot subscribe again: {e}")));
                        }
                        next_subscribe =
                            resubscribe.map(|every| tokio::time::Instant::now() + every);
                    }
                }
            };
            let next = match next {
                None => return Ok(End::Lost("the feed closed the connection".into())),
                Some(Err(e)) => return Ok(End::Lost(format!("read error: {e}"))),
                Some(Ok(m)) => m,
            };
            self.metrics.received();
            if !working {
                // The connection works: the next failure starts the backoff afresh.
                working = true;
                backoff.reset();
            }
            let text = match &next {
                Message::Text(t) => t.as_str().to_string(),
                Message::Binary(b) => match std::str::from_utf8(b) {
                    Ok(t) => t.to_string(),
                    Err(_) => {
                        self.malformed("binary frame is not UTF-8", &format!("{b:?}"));
                        continue;
                    }
                },
                Message::Close(frame) => {
                    return Ok(End::Lost(format!(
                        "the feed closed the connection: {frame:?}"
                    )));
                }
                // Pings are answered by the websocket layer; they still show it is alive.
                _ => continue,
            };
            self.frame(producer, &text).await?;
            producer.report();
        }
    }

    fn malformed(&self, why: &str, sample: &str) {
        self.metrics.decode_error();
        let sample: String = sample.chars().take(200).collect();
        tracing::warn!(error = why, sample = %sample, "Skipping a malformed feed message");
    }

    async fn frame(&mut self, producer: &mut Producer, text: &str) -> anyhow::Result<()> {
        let ticks = match self.protocol.read(text, now_ms(), &self.metrics) {
            Ok(ticks) => ticks,
            Err(e) => {
                self.malformed(&e, text);
                return Ok(());
            }
        };
        for tick in ticks {
            if !self.seen.insert(tick.event_id) {
                self.summary.duplicates += 1;
                self.metrics.duplicate();
                tracing::debug!(key = %tick.key, id = %tick.event_id, "Dropping a redelivered update");
                continue;
            }
            match producer.send(tick.topic, &tick.key, &tick.record).await? {
                Ok(()) => {
                    self.summary.produced += 1;
                    self.metrics.produced(tick.topic);
                }
                Err(e) => self.malformed(
                    &format!("does not fit the registered schema of {}: {e}", tick.topic),
                    text,
                ),
            }
        }
        Ok(())
    }
}

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
    unrouted: Counter,
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
            unrouted: Counter::default(),
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
            "weir_ingest_unrouted",
            "Updates of a kind weir has no topic for (a quote type), skipped",
            m.unrouted.clone(),
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

    /// A sequence gap was seen; returns how many so far.
    pub fn sequence_gap(&self) -> u64 {
        self.sequence_gaps.inc() + 1
    }

    /// An update weir has no topic for was skipped.
    pub fn unrouted(&self) {
        self.unrouted.inc();
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

    /// How long since the feed last sent anything (since the start before the first).
    pub fn since_last_message(&self) -> Duration {
        self.last_message
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        self.since_last.set(self.since_last_message().as_secs_f64());
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
