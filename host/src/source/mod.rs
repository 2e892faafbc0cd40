//! The Kafka source: a consumer-group member that hands out per-partition batches (by count
//! or linger time), and the decode stage that turns Confluent-framed Avro into the guest
//! contract's typed messages.
//!
//! Offsets are stored (for Kafka's informational commits) only when the caller says the
//! batch is durable: `enable.auto.offset.store=false`. Decoding never drops a message: bad
//! framing, an unknown schema id or bytes that do not decode become a [`DeadLetter`] naming
//! the [`Stage`]; a registry that cannot answer is waited for, with backoff.

pub mod avro;
mod decode;
pub mod kafka;

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::time::Instant;

pub use decode::{DeadLetter, Decoded, Decoder, Stage};

/// Where a consumer starts when its group has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest message still in the topic.
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

/// How to consume.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group id.
    pub group_id: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Most messages in one batch.
    pub batch_size: usize,
    /// Longest a partition's first pending message waits for its batch to fill.
    pub linger: Duration,
    /// Where to start without a committed offset.
    pub start: StartFrom,
    /// Extra librdkafka properties, applied last.
    pub properties: Vec<(String, String)>,
}

/// One message as read from Kafka, not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Offset in its partition.
    pub offset: i64,
    /// Record timestamp, milliseconds since the epoch (-1 when the broker has none).
    pub timestamp_ms: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes (`None` for a tombstone).
    pub value: Option<Vec<u8>>,
}

/// Consecutive messages of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBatch {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Messages in offset order.
    pub messages: Vec<RawMessage>,
}

impl RawBatch {
    /// The offset to resume from once this batch is done.
    pub fn next_offset(&self) -> Option<i64> {
        self.messages.last().map(|m| m.offset + 1)
    }
}

/// Consuming failed in a way the caller must handle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The consumer could not be created or subscribed.
    #[error("Kafka consumer for {brokers}: {detail}")]
    Setup {
        /// Brokers.
        brokers: String,
        /// What failed.
        detail: String,
    },
    /// Kafka reported an error that ends consumption.
    #[error("Kafka consumer: {0}")]
    Fatal(String),
}

struct Pending {
    since: Instant,
    messages: Vec<RawMessage>,
}

/// A consumer-group member yielding per-partition batches.
pub struct KafkaSource {
    consumer: StreamConsumer,
    batch_size: usize,
    linger: Duration,
    pending: HashMap<(String, i32), Pending>,
}

impl KafkaSource {
    /// Creates the consumer and subscribes.
    pub fn new(config: &SourceConfig) -> Result<Self, SourceError> {
        let setup = |detail: String| SourceError::Setup {
            brokers: config.brokers.clone(),
            detail,
        };
        let mut client = kafka::client_config(&config.brokers);
        client
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match config.start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            .set("enable.partition.eof", "false");
        for (k, v) in &config.properties {
            client.set(k, v);
        }
        let consumer: StreamConsumer = client
            .create()
            .map_err(|e| setup(format!("cannot create the consumer: {e}")))?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| setup(format!("cannot subscribe to {}: {e}", topics.join(", "))))?;
        Ok(Self {
            consumer,
            batch_size: config.batch_size.max(1),
            linger: config.linger,
            pending: HashMap::new(),
        })
    }

    /// Waits for the next batch: a partition whose pending messages reached the batch size,
    /// or whose oldest pending message has waited `linger`.
    pub async fn next_batch(&mut self) -> Result<RawBatch, SourceError> {
        loop {
            let now = Instant::now();
            if let Some(key) = self
                .pending
                .iter()
                .filter(|(_, p)| now.duration_since(p.since) >= self.linger)
                .min_by_key(|(_, p)| p.since)
                .map(|(k, _)| k.clone())
            {
                return Ok(self.take(key));
            }
            let wait = self
                .pending
                .values()
                .map(|p| (p.since + self.linger).saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_secs(1));
            match tokio::time::timeout(wait, self.consumer.recv()).await {
                Err(_) => continue,
                Ok(Err(e)) => {
                    if is_fatal(&e) {
                        return Err(SourceError::Fatal(e.to_string()));
                    }
                    tracing::warn!(error = %e, "Kafka consumer error; continuing");
                }
                Ok(Ok(m)) => {
                    let key = (m.topic().to_string(), m.partition());
                    let raw = RawMessage {
                        offset: m.offset(),
                        timestamp_ms: m.timestamp().to_millis().unwrap_or(-1),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                    };
                    let pending = self.pending.entry(key.clone()).or_insert_with(|| Pending {
                        since: Instant::now(),
                        messages: Vec::with_capacity(self.batch_size),
                    });
                    pending.messages.push(raw);
                    if pending.messages.len() >= self.batch_size {
                        return Ok(self.take(key));
                    }
                }
            }
        }
    }

    fn take(&mut self, key: (String, i32)) -> RawBatch {
        let pending = self.pending.remove(&key).expect("pending partition");
        RawBatch {
            topic: key.0,
            partition: key.1,
            messages: pending.messages,
        }
    }

    /// Records that everything before `next_offset` of this partition is durable, for
    /// Kafka's (informational) committed offsets.
    pub fn store_offset(&self, topic: &str, partition: i32, next_offset: i64) {
        // librdkafka stores "the offset of the last processed message"; it commits +1.
        if let Err(e) = self
            .consumer
            .store_offset(topic, partition, next_offset - 1)
        {
            tracing::debug!(topic, partition, error = %e, "Could not store offset");
        }
    }

    /// The underlying consumer.
    pub fn consumer(&self) -> &StreamConsumer {
        &self.consumer
    }
}

fn is_fatal(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::Fatal
                | C::InvalidGroupId
                | C::GroupAuthorizationFailed
                | C::TopicAuthorizationFailed
        )
    )
}
