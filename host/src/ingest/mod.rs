//! Producing ticks to Kafka as Confluent-framed Avro: the simulator and file replay share
//! one idempotent producer, schemas looked up by subject `<topic>-value`, and progress
//! reporting on stderr. The live feeds ([`coinbase`], [`yahoo`]) are read by [`feed`]:
//! reconnects, the stale-feed watchdog, the redelivery filter and their metrics.

pub mod coinbase;
pub mod encode;
pub mod feed;
pub mod options;
pub mod replay;
pub mod simulate;
pub mod yahoo;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde_json::{Map, Value as Json};

use crate::registry::RegistryClient;
use crate::source::kafka::Kafka;
use encode::Encoder;

/// Deliveries awaited at most at once; beyond this `send` waits for the oldest.
const MAX_IN_FLIGHT: usize = 20_000;

/// Sends records to Kafka, encoding each with its topic's latest registered value schema.
pub struct Producer {
    producer: FutureProducer,
    encoders: HashMap<String, Encoder>,
    in_flight: FuturesUnordered<DeliveryFuture>,
    progress: Progress,
}

impl Producer {
    /// Connects to `kafka` (brokers, or [`Kafka`] with properties) and fetches the latest
    /// schema of each topic's value subject.
    pub async fn connect(
        kafka: impl Into<Kafka>,
        registry: &RegistryClient,
        topics: &[String],
    ) -> anyhow::Result<Self> {
        let mut encoders = HashMap::new();
        for topic in topics {
            let subject = format!("{topic}-value");
            let registered = registry.latest(&subject).await.map_err(|e| {
                anyhow::anyhow!(
                    "{e} (push the schemas first: weir schemas push --registry {})",
                    registry.url()
                )
            })?;
            let encoder =
                Encoder::new(&registered).map_err(|e| anyhow::anyhow!("subject {subject}: {e}"))?;
            tracing::info!(topic, subject, schema_id = %encoder.id(), "Producing with the latest schema");
            encoders.insert(topic.clone(), encoder);
        }
        let kafka = kafka.into();
        let producer: FutureProducer = kafka
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set("message.timeout.ms", "60000")
            .create()
            .map_err(|e| anyhow::anyhow!("cannot create a Kafka producer for {kafka}: {e}"))?;
        Ok(Self {
            producer,
            encoders,
            in_flight: FuturesUnordered::new(),
            progress: Progress::new(),
        })
    }

    /// Encodes `record` for `topic`: Confluent-framed Avro, or an error naming the field.
    pub fn encode(&mut self, topic: &str, record: &Map<String, Json>) -> Result<Vec<u8>, String> {
        match self.encoders.get_mut(topic) {
            Some(encoder) => encoder.encode(record),
            None => Err(format!(
                "topic {topic:?} has no schema here (known: {})",
                self.encoders.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
    }

    /// Encodes and queues `record`; an encoding error is returned as the inner `Err` and
    /// nothing is sent, a delivery failure as the outer one.
    pub async fn send(
        &mut self,
        topic: &str,
        key: &str,
        record: &Map<String, Json>,
    ) -> anyhow::Result<Result<(), String>> {
        match self.encode(topic, record) {
            Ok(payload) => self.send_bytes(topic, key, &payload).await.map(Ok),
            Err(e) => Ok(Err(e)),
        }
    }

    /// Queues an already encoded value with key `key`.
    pub async fn send_bytes(
        &mut self,
        topic: &str,
        key: &str,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            self.reap_one().await?;
        }
        loop {
            let record = FutureRecord::to(topic).key(key).payload(payload);
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.in_flight.push(delivery);
                    break;
                }
                Err((e, _)) if is_queue_full(&e) => {
                    // librdkafka's queue is full: wait for a delivery, then retry.
                    if self.in_flight.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        self.reap_one().await?;
                    }
                }
                Err((e, _)) => anyhow::bail!("cannot queue a message for {topic}: {e}"),
            }
        }
        self.progress.sent(topic);
        Ok(())
    }

    async fn reap_one(&mut self) -> anyhow::Result<()> {
        if let Some(result) = self.in_flight.next().await {
            match result {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => anyhow::bail!("Kafka did not accept a message: {e}"),
                Err(_) => anyhow::bail!("the producer went away before delivering"),
            }
        }
        Ok(())
    }

    /// Waits until every queued message is delivered; returns the totals per topic.
    pub async fn finish(mut self) -> anyhow::Result<BTreeMap<String, u64>> {
        while !self.in_flight.is_empty() {
            self.reap_one().await?;
        }
        self.progress.report(true);
        Ok(self.progress.by_topic)
    }

    /// Prints progress to stderr if a second has passed since the last report.
    pub fn report(&mut self) {
        self.progress.report(false);
    }
}

fn is_queue_full(e: &rdkafka::error::KafkaError) -> bool {
    e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
}

/// Counts and rates, printed to stderr about once a second.
struct Progress {
    started: Instant,
    last: Instant,
    last_total: u64,
    total: u64,
    by_topic: BTreeMap<String, u64>,
}

impl Progress {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            last_total: 0,
            total: 0,
            by_topic: BTreeMap::new(),
        }
    }

    fn sent(&mut self, topic: &str) {
        self.total += 1;
        match self.by_topic.get_mut(topic) {
            Some(n) => *n += 1,
            None => {
                self.by_topic.insert(topic.to_string(), 1);
            }
        }
    }

    fn report(&mut self, last: bool) {
        let now = Instant::now();
        let since = now.duration_since(self.last);
        if !last && since < Duration::from_secs(1) {
            return;
        }
        let (rate, label) = if last {
            let secs = now.duration_since(self.started).as_secs_f64().max(1e-9);
            (self.total as f64 / secs, "average")
        } else {
            let secs = since.as_secs_f64().max(1e-9);
            ((self.total - self.last_total) as f64 / secs, "now")
        };
        let topics = self
            .by_topic
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        eprintln!(
            "ingest: {} messages ({topics}), {rate:.0}/s {label}{}",
            self.total,
            if last { ", all delivered" } else { "" }
        );
        self.last = now;
        self.last_total = self.total;
    }
}

/// Paces sends at a target rate (open loop): the n-th message is due at `n / rate`.
pub struct Pacer {
    started: Instant,
    rate: Option<f64>,
    sent: u64,
}

impl Pacer {
    /// A pacer for `rate` messages a second, or as fast as possible with `None`.
    pub fn new(rate: Option<f64>) -> Self {
        Self {
            started: Instant::now(),
            rate: rate.filter(|r| *r > 0.0),
            sent: 0,
        }
    }

    /// Waits until the next message is due.
    pub async fn tick(&mut self) {
        if let Some(rate) = self.rate {
            let due = self.started + Duration::from_secs_f64(self.sent as f64 / rate);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                tokio::time::sleep(due - now).await;
            }
        }
        self.sent += 1;
    }

    /// Interval between messages at the target rate (1 ms when unpaced).
    pub fn interval(&self) -> Duration {
        self.rate
            .map(|r| Duration::from_secs_f64(1.0 / r))
            .unwrap_or(Duration::from_millis(1))
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
