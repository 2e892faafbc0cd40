//! The Kafka source: a consumer-group member that hands out per-partition batches (by count
//! or linger time), and the decode stage that turns Confluent-framed Avro into the guest
//! contract's typed messages.
//!
//! Offsets are stored (for Kafka's informational commits) only when the caller says the
//! batch is durable: `enable.auto.offset.store=false`. Decoding never drops a message: bad
//! framing, an unknown schema id or bytes that do not decode become a [`DeadLetter`] naming
//! the [`Stage`]; a registry that cannot answer is waited for, with backoff.

pub mod avro;
#[cfg(test)]
mod avro_props;
mod decode;
pub mod kafka;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::FutureExt as _;
use rdkafka::Message as _;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::time::Instant;

use crate::model::Header;

pub use decode::{DecodeEvents, Decoded, Decoder, Shape, Stopped, SubjectStrategy};

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
    /// The brokers and the properties every client gets.
    pub kafka: kafka::Kafka,
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
    /// Let Kafka's group coordinator assign partitions (`subscribe`), or leave assignment
    /// to the caller ([`KafkaSource::assign`]).
    pub subscribe: bool,
}

/// One message as read from Kafka, not yet decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct RawMessage {
    /// Offset in its partition.
    pub offset: i64,
    /// Record timestamp, milliseconds since the epoch (-1 when the broker has none).
    pub timestamp_ms: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes (`None` for a tombstone).
    pub value: Option<Vec<u8>>,
    /// Record headers, in order.
    pub headers: Vec<Header>,
}

/// Consecutive messages of one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct RawBatch {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Messages in offset order.
    pub messages: Vec<RawMessage>,
    /// Where the batch starts when that is before its first message: the offsets in
    /// between hold no message (compacted away, transaction markers, deleted by
    /// retention), and committing the batch moves past them too.
    pub from: Option<i64>,
}

impl RawBatch {
    /// The offset the batch covers from: [`RawBatch::from`], else its first message's.
    pub fn start_offset(&self) -> i64 {
        self.from
            .unwrap_or_else(|| self.messages.first().map_or(0, |m| m.offset))
    }

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

/// A partition's messages waiting for their batch to fill or linger out.
struct Pending {
    topic: String,
    partition: i32,
    since: Instant,
    /// The batch's size and linger (the topic's or the default).
    batch_size: usize,
    linger: Duration,
    messages: Vec<RawMessage>,
}

/// A change of the partitions this member owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// These partitions were assigned.
    Assigned(Vec<(String, i32)>),
    /// These partitions were taken away; their pending messages were dropped.
    Revoked(Vec<(String, i32)>),
}

/// Records rebalances for the pipeline to act on (seek to stored offsets, forget state).
#[derive(Default)]
pub struct SourceContext {
    events: Mutex<Vec<RebalanceEvent>>,
}

impl ClientContext for SourceContext {}

fn partitions(list: &TopicPartitionList) -> Vec<(String, i32)> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            tracing::info!(partitions = ?partitions(list), "Partitions revoked");
            self.events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(RebalanceEvent::Revoked(partitions(list)));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                tracing::info!(partitions = ?partitions(list), "Partitions assigned");
                self.events
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(RebalanceEvent::Assigned(partitions(list)));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "Rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// A consumer-group member yielding per-partition batches.
pub struct KafkaSource {
    consumer: StreamConsumer<SourceContext>,
    batch_size: usize,
    linger: Duration,
    per_topic: HashMap<String, (usize, Duration)>,
    /// Per partition with messages waiting; a few entries, scanned rather than hashed
    /// (this is looked up once per message).
    pending: Vec<Pending>,
    assigned: Vec<(String, i32)>,
}

impl KafkaSource {
    /// Creates the consumer and subscribes.
    pub fn new(config: &SourceConfig) -> Result<Self, SourceError> {
        let setup = |detail: String| SourceError::Setup {
            brokers: config.kafka.brokers.clone(),
            detail,
        };
        let mut client = config.kafka.client_config();
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
            .set("enable.partition.eof", "false")
            // A fetch waits at most this long for data. Brokers that hold a fetch for the
            // whole wait even once data arrives (tansu does) would otherwise add up to
            // librdkafka's 500 ms default to every record's latency.
            .set("fetch.wait.max.ms", "20");
        // The operator's properties win over weir's consumer defaults, and the caller's
        // over both.
        for (k, v) in config.kafka.properties.iter().chain(&config.properties) {
            client.set(k, v);
        }
        let consumer: StreamConsumer<SourceContext> = client
            .create_with_context(SourceContext::default())
            .map_err(|e| setup(format!("cannot create the consumer: {e}")))?;
        if config.subscribe {
            let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
            consumer
                .subscribe(&topics)
                .map_err(|e| setup(format!("cannot subscribe to {}: {e}", topics.join(", "))))?;
        }
        Ok(Self {
            consumer,
            batch_size: config.batch_size.max(1),
            linger: config.linger,
            per_topic: HashMap::new(),
            pending: Vec::new(),
            assigned: Vec::new(),
        })
    }

    /// Uses its own batch size and linger for `topic`.
    pub fn set_topic_batching(&mut self, topic: &str, batch_size: usize, linger: Duration) {
        self.per_topic
            .insert(topic.to_string(), (batch_size.max(1), linger));
    }

    /// Rebalances since the last call, oldest first. Pending messages of revoked
    /// partitions are already dropped.
    pub fn take_rebalances(&mut self) -> Vec<RebalanceEvent> {
        let events = std::mem::take(
            &mut *self
                .consumer
                .context()
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for event in &events {
            match event {
                RebalanceEvent::Assigned(parts) => {
                    for p in parts {
                        if !self.assigned.contains(p) {
                            self.assigned.push(p.clone());
                        }
                    }
                }
                RebalanceEvent::Revoked(parts) => {
                    self.assigned.retain(|p| !parts.contains(p));
                    self.pending.retain(|p| {
                        !parts
                            .iter()
                            .any(|(t, n)| p.partition == *n && p.topic == *t)
                    });
                }
            }
        }
        events
    }

    /// Starts consuming these partitions, each from its offset (`None`: where
    /// `auto.offset.reset` says).
    pub fn assign(&mut self, partitions: &[(String, i32, Option<i64>)]) -> Result<(), SourceError> {
        let mut list = TopicPartitionList::new();
        for (topic, partition, offset) in partitions {
            let offset = match offset {
                Some(o) => rdkafka::Offset::Offset(*o),
                None => rdkafka::Offset::Invalid,
            };
            list.add_partition_offset(topic, *partition, offset)
                .map_err(|e| SourceError::Fatal(format!("assign {topic}[{partition}]: {e}")))?;
            let p = (topic.clone(), *partition);
            if !self.assigned.contains(&p) {
                self.assigned.push(p);
            }
        }
        self.consumer
            .incremental_assign(&list)
            .map_err(|e| SourceError::Fatal(format!("assign partitions: {e}")))
    }

    /// Stops consuming these partitions and drops what was pending for them.
    pub fn unassign(&mut self, partitions: &[(String, i32)]) -> Result<(), SourceError> {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in partitions {
            list.add_partition(topic, *partition);
            self.drop_pending(topic, *partition);
        }
        self.assigned.retain(|p| !partitions.contains(p));
        self.consumer
            .incremental_unassign(&list)
            .map_err(|e| SourceError::Fatal(format!("unassign partitions: {e}")))
    }

    /// Partitions this member owns now (as of the last [`KafkaSource::take_rebalances`]).
    pub fn assigned(&self) -> &[(String, i32)] {
        &self.assigned
    }

    /// Moves a partition's position to `offset`, dropping what was pending for it.
    pub fn seek(&mut self, topic: &str, partition: i32, offset: i64) -> Result<(), SourceError> {
        self.drop_pending(topic, partition);
        self.consumer
            .seek(
                topic,
                partition,
                rdkafka::Offset::Offset(offset),
                Duration::from_secs(10),
            )
            .map_err(|e| SourceError::Fatal(format!("seek {topic}[{partition}] to {offset}: {e}")))
    }

    /// Whether messages of this partition are waiting for their batch to fill or linger out.
    pub fn holds(&self, topic: &str, partition: i32) -> bool {
        self.pending
            .iter()
            .any(|p| p.partition == partition && p.topic == topic)
    }

    fn drop_pending(&mut self, topic: &str, partition: i32) {
        self.pending
            .retain(|p| !(p.partition == partition && p.topic == topic));
    }

    /// Waits for the next batch: a partition whose pending messages reached the batch size,
    /// or whose oldest pending message has waited `linger`.
    pub async fn next_batch(&mut self) -> Result<RawBatch, SourceError> {
        loop {
            let now = Instant::now();
            if let Some(i) = self
                .pending
                .iter()
                .enumerate()
                .filter(|(_, p)| now.duration_since(p.since) >= p.linger)
                .min_by_key(|(_, p)| p.since)
                .map(|(i, _)| i)
            {
                return Ok(self.take(i));
            }
            let wait = self
                .pending
                .iter()
                .map(|p| (p.since + p.linger).saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_millis(200));
            let first = match tokio::time::timeout(wait, self.consumer.recv()).await {
                Err(_) => continue,
                Ok(first) => first,
            };
            // Then whatever librdkafka already holds, without a timer per message.
            let mut next = Some(first);
            while let Some(received) = next.take() {
                match received {
                    Err(e) => {
                        if is_fatal(&e) {
                            return Err(SourceError::Fatal(e.to_string()));
                        }
                        tracing::warn!(error = %e, "Kafka consumer error; continuing");
                    }
                    Ok(m) => {
                        let batching = |topic: &str| {
                            self.per_topic
                                .get(topic)
                                .copied()
                                .unwrap_or((self.batch_size, self.linger))
                        };
                        if let Some(full) = add(&mut self.pending, &m, now, batching) {
                            drop(m);
                            return Ok(self.take(full));
                        }
                    }
                }
                next = self.consumer.recv().now_or_never();
            }
        }
    }

    fn take(&mut self, i: usize) -> RawBatch {
        let pending = self.pending.swap_remove(i);
        RawBatch {
            topic: pending.topic,
            partition: pending.partition,
            messages: pending.messages,
            from: None,
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
    pub fn consumer(&self) -> &StreamConsumer<SourceContext> {
        &self.consumer
    }

    /// Commits the stored offsets to Kafka and closes the consumer, waiting at most
    /// `timeout`. librdkafka's commit and close wait for the brokers, which can take for
    /// ever (a broker gone, a fetch that never ends); a process that is stopping does not
    /// wait that long: past the timeout they are left to finish on a thread of their own.
    pub fn close(self, timeout: Duration) {
        let closing = std::thread::Builder::new()
            .name("weir-kafka-close".into())
            .spawn(move || {
                if let Err(e) = self
                    .consumer
                    .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
                {
                    tracing::debug!(error = %e, "No offsets to commit to Kafka on close");
                }
                drop(self)
            });
        let Ok(closing) = closing else { return };
        let deadline = std::time::Instant::now() + timeout;
        while !closing.is_finished() {
            if std::time::Instant::now() >= deadline {
                tracing::warn!(
                    ?timeout,
                    "The Kafka consumer did not close in time; going on without waiting for it"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Adds a message to its partition's pending batch; the index of that batch when it
/// is full.
fn add(
    pending: &mut Vec<Pending>,
    m: &rdkafka::message::BorrowedMessage<'_>,
    now: Instant,
    batching: impl Fn(&str) -> (usize, Duration),
) -> Option<usize> {
    let (topic, partition) = (m.topic(), m.partition());
    let i = match pending
        .iter()
        .position(|p| p.partition == partition && p.topic == topic)
    {
        Some(i) => i,
        None => {
            let (batch_size, linger) = batching(topic);
            pending.push(Pending {
                topic: topic.to_string(),
                partition,
                since: now,
                batch_size,
                linger,
                messages: Vec::with_capacity(batch_size),
            });
            pending.len() - 1
        }
    };
    let offset = m.offset();
    let batch = &mut pending[i];
    // A batch holds each offset once, in increasing order. After a seek the client can
    // still deliver messages fetched before it, and the re-read repeats them; a repeat
    // within one batch would be written twice.
    if batch
        .messages
        .last()
        .is_some_and(|last| offset <= last.offset)
    {
        tracing::debug!(
            topic,
            partition,
            offset,
            "Dropped an out-of-order or repeated message from a batch"
        );
        return None;
    }
    batch.messages.push(RawMessage {
        offset,
        timestamp_ms: m.timestamp().to_millis().unwrap_or(-1),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers: headers_of(m),
    });
    (batch.messages.len() >= batch.batch_size).then_some(i)
}

/// A message's headers. Read through librdkafka's own calls: the client library's reader
/// panics on a header name that is not UTF-8, which any producer can send. Such a name is
/// kept with its invalid bytes replaced (U+FFFD).
fn headers_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Vec<Header> {
    use rdkafka::bindings as rd;
    let mut headers: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `m.ptr()` is the live message this borrow holds; the headers it hands out
    // belong to it and are only read while it is borrowed.
    unsafe {
        if rd::rd_kafka_message_headers(m.ptr(), &mut headers)
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            || headers.is_null()
        {
            return Vec::new();
        }
        let count = rd::rd_kafka_header_cnt(headers);
        let mut out = Vec::with_capacity(count);
        for idx in 0..count {
            let mut name: *const std::ffi::c_char = std::ptr::null();
            let mut value: *const std::ffi::c_void = std::ptr::null();
            let mut size = 0usize;
            if rd::rd_kafka_header_get_all(headers, idx, &mut name, &mut value, &mut size)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                || name.is_null()
            {
                continue;
            }
            let key = std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned();
            let value = (!value.is_null())
                .then(|| std::slice::from_raw_parts(value.cast::<u8>(), size).to_vec());
            out.push(Header { key, value });
        }
        out
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
