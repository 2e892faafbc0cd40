//! Prometheus metrics and the HTTP endpoints that serve them and the probes.
//!
//! [`Metrics`] holds the host's metrics, with few and fixed labels (topic, table, stage,
//! pipeline, guest, partition), and exports the counters guests define through
//! [`MetricsEvents`] as `weir_guest_<name>_total{guest="…", <the guest's labels>}`.
//! [`serve`] answers `GET /metrics` (OpenMetrics text), `/healthz` (the process is up;
//! it never asks another service) and `/readyz` (partitions assigned and connections up,
//! per [`Health`]).

mod http;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::runtime::{GuestCounters, GuestId, HostEvents, Level, TracingEvents};
pub use http::{CONTENT_TYPE, Health, router, serve};

/// One label: its fixed name and the value.
type Labels1 = [(&'static str, String); 1];
/// Two labels.
type Labels2 = [(&'static str, String); 2];
type HistogramFamily = Family<Labels1, Histogram, fn() -> Histogram>;

/// Buckets of `weir_batch_duration_seconds`: poll to commit, 1ms to 30s.
const BATCH_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of `weir_guest_call_duration_seconds`: 100µs to the 10s default deadline and
/// beyond.
const GUEST_CALL_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Guest counter names that would collide with the host's own `weir_guest_*` families.
const RESERVED_GUEST_COUNTERS: [&str; 5] = [
    "swaps",
    "swap_refusals",
    "errors",
    "call_duration_seconds",
    "output_dropped",
];

/// What a tripped guest breaker does: the `action` label of
/// `weir_guest_breaker_trips_total`.
const BREAKER_ACTIONS: [&str; 2] = ["paused", "rolled_back"];

/// The label values known when `weir run` starts (see [`Metrics::declare`]).
#[derive(Debug, Default, Clone)]
pub struct Known {
    /// Pipeline names.
    pub pipelines: Vec<String>,
    /// Input topics.
    pub topics: Vec<String>,
    /// Topics guests may emit to.
    pub topics_out: Vec<String>,
    /// Tables pipelines write.
    pub tables: Vec<String>,
    /// Guest names.
    pub guests: Vec<String>,
}

/// The host's metrics. Cheap to update from many threads.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    records_in: Family<Labels1, Counter>,
    records_out: Family<Labels1, Counter>,
    dead_letters: Family<Labels1, Counter>,
    duplicates: Family<Labels1, Counter>,
    batch_duration: HistogramFamily,
    guest_call: HistogramFamily,
    guest_errors: Family<Labels2, Counter>,
    consumer_lag: Family<Labels2, Gauge>,
    offsets_committed: Family<Labels1, Counter>,
    committed_offset: Family<Labels2, Gauge>,
    registry_waits: Family<Labels2, Gauge>,
    sink_paused: Family<Labels2, Gauge>,
    outbox_pending: Family<Labels2, Gauge>,
    outbox_oldest: Family<Labels2, Gauge<f64, std::sync::atomic::AtomicU64>>,
    emitted: Family<Labels1, Counter>,
    produced: Family<Labels1, Counter>,
    produce_errors: Family<Labels1, Counter>,
    shadow_compared: Family<Labels1, Counter>,
    shadow_differences: Family<Labels2, Counter>,
    shadow_skipped: Family<Labels1, Counter>,
    breaker_trips: Family<Labels2, Counter>,
    breaker_open: Family<Labels1, Gauge>,
    events: Arc<MetricsEvents>,
}

fn label(name: &'static str, value: &str) -> Labels1 {
    [(name, value.to_string())]
}

fn labels(a: (&'static str, &str), b: (&'static str, &str)) -> Labels2 {
    [(a.0, a.1.to_string()), (b.0, b.1.to_string())]
}

fn batch_histogram() -> Histogram {
    Histogram::new(BATCH_BUCKETS)
}

fn guest_call_histogram() -> Histogram {
    Histogram::new(GUEST_CALL_BUCKETS)
}

impl Metrics {
    /// Creates the metrics, all at zero.
    pub fn new() -> Arc<Self> {
        let m = Metrics {
            registry: Registry::default(),
            records_in: Family::default(),
            records_out: Family::default(),
            dead_letters: Family::default(),
            duplicates: Family::default(),
            batch_duration: Family::new_with_constructor(batch_histogram),
            guest_call: Family::new_with_constructor(guest_call_histogram),
            guest_errors: Family::default(),
            consumer_lag: Family::default(),
            offsets_committed: Family::default(),
            committed_offset: Family::default(),
            registry_waits: Family::default(),
            sink_paused: Family::default(),
            outbox_pending: Family::default(),
            outbox_oldest: Family::default(),
            emitted: Family::default(),
            produced: Family::default(),
            produce_errors: Family::default(),
            shadow_compared: Family::default(),
            shadow_differences: Family::default(),
            shadow_skipped: Family::default(),
            breaker_trips: Family::default(),
            breaker_open: Family::default(),
            events: Arc::new(MetricsEvents::default()),
        };
        let mut registry = Registry::default();
        registry.register(
            "weir_records_in",
            "Messages consumed from Kafka, by topic",
            m.records_in.clone(),
        );
        registry.register(
            "weir_records_out",
            "Rows written to Postgres, by table",
            m.records_out.clone(),
        );
        registry.register(
            "weir_dead_letters",
            "Messages sent to the dead-letter table, by the stage that refused them",
            m.dead_letters.clone(),
        );
        registry.register(
            "weir_duplicates",
            "Messages dropped before the guest as duplicates of one already processed (pipeline dedup), by pipeline",
            m.duplicates.clone(),
        );
        registry.register_with_unit(
            "weir_batch_duration",
            "Time from polling a batch to committing it, by pipeline",
            Unit::Seconds,
            m.batch_duration.clone(),
        );
        registry.register_with_unit(
            "weir_guest_call_duration",
            "Time of one guest process call, by guest",
            Unit::Seconds,
            m.guest_call.clone(),
        );
        registry.register(
            "weir_guest_errors",
            "Failed guest calls, by guest and kind (deadline, out_of_memory, trap…)",
            m.guest_errors.clone(),
        );
        registry.register(
            "weir_outbox_pending",
            "Emitted messages committed and not yet produced, by source topic and partition",
            m.outbox_pending.clone(),
        );
        registry.register_with_unit(
            "weir_outbox_oldest_age",
            "Age of the oldest emitted message not yet produced, by source topic and partition (0 when none)",
            Unit::Seconds,
            m.outbox_oldest.clone(),
        );
        registry.register(
            "weir_emitted",
            "Messages guests emitted, committed to the outbox, by destination topic",
            m.emitted.clone(),
        );
        registry.register(
            "weir_produced",
            "Outbox messages produced to Kafka and acknowledged, by destination topic",
            m.produced.clone(),
        );
        registry.register(
            "weir_produce_errors",
            "Outbox messages Kafka refused to take (the relay retries them), by destination topic",
            m.produce_errors.clone(),
        );
        registry.register(
            "weir_shadow_compared",
            "Messages run by a guest's shadow candidate and its live version and compared, by guest",
            m.shadow_compared.clone(),
        );
        registry.register(
            "weir_shadow_differences",
            "Messages whose outcome differed between a shadow candidate and the live version, by guest and what differed (rows, emits, dead_letter)",
            m.shadow_differences.clone(),
        );
        registry.register(
            "weir_shadow_skipped_batches",
            "Batches a shadow candidate did not run because it was still busy with earlier ones, by guest",
            m.shadow_skipped.clone(),
        );
        registry.register(
            "weir_guest_breaker_trips",
            "Times a pipeline's guest breaker tripped (its guest failed on most of its last messages), by pipeline and what was done (paused, rolled_back)",
            m.breaker_trips.clone(),
        );
        registry.register(
            "weir_guest_breaker_open",
            "1 while a pipeline is paused by its guest breaker, else 0",
            m.breaker_open.clone(),
        );
        registry.register(
            "weir_consumer_lag",
            "Messages between the consumer's position and the end of the partition",
            m.consumer_lag.clone(),
        );
        registry.register(
            "weir_offsets_committed",
            "Offset commits (one per batch written), by topic",
            m.offsets_committed.clone(),
        );
        registry.register(
            "weir_committed_offset",
            "The next offset committed to Postgres, by topic and partition",
            m.committed_offset.clone(),
        );
        registry.register(
            "weir_partition_waiting_for_registry",
            "1 while a partition's decoding waits for the schema registry to answer, else 0",
            m.registry_waits.clone(),
        );
        registry.register(
            "weir_partition_paused",
            "1 while a partition's batch waits for Postgres (unreachable, refusing weir a \
             right, read-only, out of disk…) and is retried, else 0",
            m.sink_paused.clone(),
        );
        registry.register(
            "weir_guest_swaps",
            "Guest versions swapped in (or rolled back to) while running, by guest",
            m.events.guest_swaps.clone(),
        );
        registry.register(
            "weir_guest_swap_refusals",
            "New guest versions refused (did not compile or fit the world), by guest",
            m.events.guest_refusals.clone(),
        );
        registry.register(
            "weir_guest_output_dropped",
            "Guest log records (kind log) and counter increments (kind metric) dropped for passing the bounds on guest output, by guest",
            m.events.output_dropped.clone(),
        );
        registry.register_collector(Box::new(GuestCollector(m.events.clone())));
        Arc::new(Metrics { registry, ..m })
    }

    /// `n` messages of `pipeline` dropped as duplicates.
    pub fn duplicates(&self, pipeline: &str, n: u64) {
        self.duplicates
            .get_or_create(&label("pipeline", pipeline))
            .inc_by(n);
    }

    /// `n` messages consumed from `topic`.
    pub fn records_in(&self, topic: &str, n: u64) {
        self.records_in
            .get_or_create(&label("topic", topic))
            .inc_by(n);
    }

    /// `n` rows written to `table`.
    pub fn records_out(&self, table: &str, n: u64) {
        self.records_out
            .get_or_create(&label("table", table))
            .inc_by(n);
    }

    /// `n` messages dead-lettered at `stage` (`decode`, `guest`, `sink`…).
    pub fn dead_letters(&self, stage: &str, n: u64) {
        self.dead_letters
            .get_or_create(&label("stage", stage))
            .inc_by(n);
    }

    /// One batch of `pipeline` took `seconds` from poll to commit.
    pub fn batch_duration(&self, pipeline: &str, seconds: f64) {
        self.batch_duration
            .get_or_create(&label("pipeline", pipeline))
            .observe(seconds);
    }

    /// One call of `guest` took `seconds`.
    pub fn guest_call(&self, guest: &str, seconds: f64) {
        self.guest_call
            .get_or_create(&label("guest", guest))
            .observe(seconds);
    }

    /// A call of `guest` failed; `kind` is [`crate::runtime::GuestErrorKind::name`].
    pub fn guest_error(&self, guest: &str, kind: &str) {
        self.guest_errors
            .get_or_create(&labels(("guest", guest), ("kind", kind)))
            .inc();
    }

    /// The outbox of source `topic`/`partition` holds `pending` messages, the oldest
    /// `oldest_seconds` old.
    pub fn outbox(&self, topic: &str, partition: i32, pending: u64, oldest_seconds: f64) {
        let key = labels(("topic", topic), ("partition", &partition.to_string()));
        self.outbox_pending.get_or_create(&key).set(pending as i64);
        self.outbox_oldest.get_or_create(&key).set(oldest_seconds);
    }

    /// `n` messages emitted to `topic` were committed to the outbox.
    pub fn emitted(&self, topic: &str, n: u64) {
        self.emitted.get_or_create(&label("topic", topic)).inc_by(n);
    }

    /// `n` outbox messages were produced to `topic`.
    pub fn produced(&self, topic: &str, n: u64) {
        self.produced
            .get_or_create(&label("topic", topic))
            .inc_by(n);
    }

    /// A shadow candidate of `guest` ran `n` messages beside the live version.
    pub fn shadow_compared(&self, guest: &str, n: u64) {
        self.shadow_compared
            .get_or_create(&label("guest", guest))
            .inc_by(n);
    }

    /// A message's outcome differed between `guest`'s candidate and live version in
    /// `kind` (rows, emits or dead_letter).
    pub fn shadow_difference(&self, guest: &str, kind: &str) {
        self.shadow_differences
            .get_or_create(&labels(("guest", guest), ("kind", kind)))
            .inc();
    }

    /// A batch of `guest` went without its shadow run.
    pub fn shadow_skipped(&self, guest: &str) {
        self.shadow_skipped
            .get_or_create(&label("guest", guest))
            .inc();
    }

    /// Kafka refused `n` messages for `topic`.
    pub fn produce_errors(&self, topic: &str, n: u64) {
        self.produce_errors
            .get_or_create(&label("topic", topic))
            .inc_by(n);
    }

    /// The consumer is `lag` messages behind the end of `topic`/`partition`.
    pub fn consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .get_or_create(&labels(
                ("topic", topic),
                ("partition", &partition.to_string()),
            ))
            .set(lag);
    }

    /// A batch of `topic`/`partition` was committed; the next offset to read is
    /// `next_offset`.
    pub fn offset_committed(&self, topic: &str, partition: i32, next_offset: i64) {
        self.offsets_committed
            .get_or_create(&label("topic", topic))
            .inc();
        self.committed_offset
            .get_or_create(&labels(
                ("topic", topic),
                ("partition", &partition.to_string()),
            ))
            .set(next_offset);
    }

    /// `pipeline`'s guest breaker tripped; `action` is `paused` or `rolled_back`.
    pub fn breaker_trip(&self, pipeline: &str, action: &str) {
        self.breaker_trips
            .get_or_create(&labels(("pipeline", pipeline), ("action", action)))
            .inc();
    }

    /// Whether `pipeline` is paused by its guest breaker.
    pub fn breaker_open(&self, pipeline: &str, open: bool) {
        self.breaker_open
            .get_or_create(&label("pipeline", pipeline))
            .set(i64::from(open));
    }

    /// Whether `topic`/`partition` waits for the schema registry.
    pub fn waiting_for_registry(&self, topic: &str, partition: i32, waiting: bool) {
        self.registry_waits
            .get_or_create(&labels(
                ("topic", topic),
                ("partition", &partition.to_string()),
            ))
            .set(i64::from(waiting));
    }

    /// Creates the series of every label value known from the start at 0 — the configured
    /// pipelines, their topics, tables and guests, every dead-letter stage and guest error
    /// kind — so that a dashboard shows 0 rather than no data until the first event.
    pub fn declare(&self, known: &Known) {
        for topic in &known.topics {
            let _ = self.records_in.get_or_create(&label("topic", topic));
        }
        for topic in &known.topics_out {
            let _ = self.emitted.get_or_create(&label("topic", topic));
            let _ = self.produced.get_or_create(&label("topic", topic));
            let _ = self.produce_errors.get_or_create(&label("topic", topic));
        }
        for table in &known.tables {
            let _ = self.records_out.get_or_create(&label("table", table));
        }
        for stage in crate::model::Stage::ALL {
            let _ = self
                .dead_letters
                .get_or_create(&label("stage", stage.as_str()));
        }
        for pipeline in &known.pipelines {
            let _ = self.duplicates.get_or_create(&label("pipeline", pipeline));
            let _ = self
                .batch_duration
                .get_or_create(&label("pipeline", pipeline));
            let _ = self
                .breaker_open
                .get_or_create(&label("pipeline", pipeline));
            for action in BREAKER_ACTIONS {
                let _ = self
                    .breaker_trips
                    .get_or_create(&labels(("pipeline", pipeline), ("action", action)));
            }
        }
        for guest in &known.guests {
            let _ = self.guest_call.get_or_create(&label("guest", guest));
            for kind in crate::runtime::GuestErrorKind::NAMES {
                let _ = self
                    .guest_errors
                    .get_or_create(&labels(("guest", guest), ("kind", kind)));
            }
            let _ = self
                .events
                .guest_swaps
                .get_or_create(&label("guest", guest));
            let _ = self
                .events
                .guest_refusals
                .get_or_create(&label("guest", guest));
        }
    }

    /// Whether `topic`/`partition` is paused, its batch waiting for Postgres.
    pub fn paused(&self, topic: &str, partition: i32, paused: bool) {
        self.sink_paused
            .get_or_create(&labels(
                ("topic", topic),
                ("partition", &partition.to_string()),
            ))
            .set(i64::from(paused));
    }

    /// Where guests' logs and counters go: hand it to
    /// [`Runtime::new`](crate::runtime::Runtime::new) so guest counters appear in
    /// [`Metrics::encode`].
    pub fn events(self: &Arc<Self>) -> Arc<MetricsEvents> {
        self.events.clone()
    }

    /// The OpenMetrics text exposition of every metric, guest counters included.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String cannot fail");
        out
    }
}

/// Receives what guests log and count: logs go to `tracing` (as with
/// [`TracingEvents`]), counters are kept (at most 1000 series per guest) and exported by
/// [`Metrics::encode`].
#[derive(Debug, Default)]
pub struct MetricsEvents {
    inner: TracingEvents,
    /// Reserved counter names already warned about, per guest.
    refused: Mutex<HashSet<(String, String)>>,
    guest_swaps: Family<Labels1, Counter>,
    guest_refusals: Family<Labels1, Counter>,
    output_dropped: Family<Labels2, Counter>,
}

impl MetricsEvents {
    /// The guests' counters.
    pub fn counters(&self) -> &GuestCounters {
        &self.inner.counters
    }
}

impl HostEvents for MetricsEvents {
    fn log(&self, guest: &GuestId, level: Level, message: &str, fields: &[(String, String)]) {
        self.inner.log(guest, level, message, fields);
    }

    fn counter_add(&self, guest: &GuestId, name: &str, delta: u64, labels: &[(String, String)]) {
        if RESERVED_GUEST_COUNTERS.contains(&family_suffix(name)) {
            let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            if refused.insert((guest.name.clone(), name.into())) {
                tracing::warn!(guest = %guest.name, counter = name, "Guest counter name is reserved for weir's own weir_guest_{name} metric; dropped");
            }
            return;
        }
        self.inner.counter_add(guest, name, delta, labels);
    }

    fn guest_swapped(&self, swapped: &crate::runtime::Swapped, _origin: &str) {
        self.guest_swaps
            .get_or_create(&label("guest", &swapped.name))
            .inc();
    }

    fn guest_refused(&self, name: &str, _origin: &str, _reason: &str) {
        self.guest_refusals
            .get_or_create(&label("guest", name))
            .inc();
    }

    fn output_dropped(&self, guest: &GuestId, kind: &'static str, n: u64) {
        self.output_dropped
            .get_or_create(&labels(("guest", &guest.name), ("kind", kind)))
            .inc_by(n);
    }
}

/// A guest counter's name without a `_total` suffix (the exposition adds it back).
fn family_suffix(name: &str) -> &str {
    match name.strip_suffix("_total") {
        Some(base) if !base.is_empty() => base,
        _ => name,
    }
}

/// Encodes guest counters at scrape time.
#[derive(Debug)]
struct GuestCollector(Arc<MetricsEvents>);

impl Collector for GuestCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // Family name → label set → total. `x` and `x_total` of one guest meet here.
        let mut families: BTreeMap<String, BTreeMap<Vec<(String, String)>, u64>> = BTreeMap::new();
        for (key, value) in self.0.counters().snapshot() {
            let family = format!("weir_guest_{}", family_suffix(&key.name));
            let mut labels = Vec::with_capacity(key.labels.len() + 1);
            labels.push(("guest".to_string(), key.guest));
            // A guest's own label may not shadow the `guest` label (nor use the
            // reserved `__` prefix): rename it the way Prometheus renames clashes.
            labels.extend(key.labels.into_iter().map(|(k, v)| {
                if k == "guest" || k.starts_with("__") {
                    (format!("exported_{k}"), v)
                } else {
                    (k, v)
                }
            }));
            let total = families
                .entry(family)
                .or_default()
                .entry(labels)
                .or_default();
            *total = total.saturating_add(value);
        }
        for (name, series) in &families {
            let mut metric = encoder.encode_descriptor(
                name,
                "A counter defined by guests",
                None,
                MetricType::Counter,
            )?;
            for (labels, value) in series {
                metric
                    .encode_family(labels)?
                    .encode_counter::<NoLabelSet, _, u64>(value, None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(name: &str) -> GuestId {
        GuestId {
            name: name.into(),
            version: "v".into(),
            short_version: "v".into(),
        }
    }

    #[test]
    fn known_label_values_are_exported_at_zero_from_the_start() {
        let m = Metrics::new();
        m.declare(&Known {
            pipelines: vec!["stocks".into()],
            topics: vec!["tickers.stocks".into()],
            topics_out: vec!["alerts".into()],
            tables: vec!["ticks".into()],
            guests: vec!["tickers".into()],
        });
        let text = m.encode();
        for series in [
            "weir_records_in_total{topic=\"tickers.stocks\"} 0",
            "weir_records_out_total{table=\"ticks\"} 0",
            "weir_dead_letters_total{stage=\"framing\"} 0",
            "weir_dead_letters_total{stage=\"sink\"} 0",
            "weir_emitted_total{topic=\"alerts\"} 0",
            "weir_duplicates_total{pipeline=\"stocks\"} 0",
            "weir_batch_duration_seconds_count{pipeline=\"stocks\"} 0",
            "weir_guest_call_duration_seconds_count{guest=\"tickers\"} 0",
            "weir_guest_errors_total{guest=\"tickers\",kind=\"panic\"} 0",
            "weir_guest_swaps_total{guest=\"tickers\"} 0",
            "weir_guest_swap_refusals_total{guest=\"tickers\"} 0",
        ] {
            assert!(text.lines().any(|l| l == series), "no {series} in:\n{text}");
        }
    }

    #[test]
    fn guest_counters_are_exported_escaped_and_merged() {
        let m = Metrics::new();
        let events = m.events();
        let l = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        events.counter_add(&guest("g"), "ticks", 2, &l("symbol", "A\"B\\C\nD"));
        events.counter_add(&guest("g"), "ticks_total", 3, &l("symbol", "A\"B\\C\nD"));
        events.counter_add(&guest("g"), "seen", 1, &l("guest", "other"));
        events.counter_add(&guest("g"), "swaps", 1, &[]);
        let text = m.encode();
        assert!(text.contains("# TYPE weir_guest_ticks counter\n"), "{text}");
        assert!(
            text.contains("weir_guest_ticks_total{guest=\"g\",symbol=\"A\\\"B\\\\C\\nD\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("weir_guest_seen_total{guest=\"g\",exported_guest=\"other\"} 1\n"),
            "{text}"
        );
        assert!(
            !text.contains("weir_guest_swaps_total{guest=\"g\"}"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
