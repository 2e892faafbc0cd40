//! What guests emit, from the batch to Kafka, exactly once.
//!
//! A batch's emitted messages are encoded and given their destination partition before
//! the batch commits ([`Emitter`]): a message that cannot be, or that goes to a topic its
//! pipeline does not list under `topics_out:`, dead-letters its source message (stage
//! `encode`). The rest are stored in the outbox (`weir_outbox`) in the batch's own
//! transaction. The relay then produces each source partition's outbox in order, on the
//! member that owns the partition.
//!
//! Exactly once without Kafka transactions: every produced message carries the header
//! `weir-outbox` = `<group>:<id>`. Before producing a batch of outbox rows, the relay
//! records in `weir_relay` their ids and, for each destination partition, the offset the
//! log ends at; after every message is acknowledged it deletes the rows and that record in
//! one statement. A relay that starts on a partition (after a crash, a restart, or taking
//! it over from another member) and finds such a record reads each of those destination
//! partitions from the recorded offset to its end, deletes the rows whose ids it finds
//! there (they were produced), and produces the rest. The idempotent producer keeps a
//! session's retries from duplicating or reordering messages; messages never time out
//! (a broker outage backs the outbox up, and the pipeline pauses at `outbox.max_pending`),
//! so a batch's deliveries are all settled before the relay goes on.

pub mod encode;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::join_all;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header as KafkaHeader, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::model::{Action, EmitValue, Partition};
use crate::pg::Backoff;
use crate::registry::{RegisteredSchema, RegistryClient};
use crate::sink::{InFlight, OutboxMessage, OutboxReader, Pending};
use crate::source::kafka::Kafka;

/// The `client.id` of the relay's Kafka clients.
pub const RELAY_CLIENT_ID: &str = "weir-relay";
/// The header that identifies a produced outbox message.
pub const OUTBOX_HEADER: &str = "weir-outbox";
/// Largest emitted message (key, value and headers); Kafka's default `message.max.bytes`
/// is 1 MiB.
pub const MAX_EMIT_BYTES: usize = 1024 * 1024;
/// Outbox rows produced per round.
const RELAY_BATCH: i64 = 1000;
/// How long a recovery scan waits for more messages past a partition's reported end.
const SCAN_QUIET: Duration = Duration::from_secs(1);
const SCAN_POLL: Duration = Duration::from_millis(100);
/// How often destinations' partition counts and schemas are read again.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// What is known of a destination topic.
#[derive(Debug, Clone)]
struct Destination {
    partitions: i32,
    subject: String,
    schema: Option<Arc<RegisteredSchema>>,
}

/// The destination topics of every pipeline: their partition counts and the latest
/// schema of their subjects, read at start and every [`REFRESH_INTERVAL`].
#[derive(Debug, Default)]
pub struct Destinations {
    topics: RwLock<HashMap<String, Destination>>,
}

impl Destinations {
    /// Reads partition counts and schemas of `topics` (topic → subject). A topic that does
    /// not exist or a subject with no schema is logged and left out (its emits
    /// dead-letter, saying so) until a later refresh finds it.
    pub async fn refresh(
        &self,
        kafka: &Kafka,
        registry: &RegistryClient,
        topics: &BTreeMap<String, String>,
    ) {
        let counts = match partition_counts(kafka, topics.keys().cloned().collect()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the partitions of the topics emitted to; keeping what was known");
                return;
            }
        };
        let mut known = HashMap::new();
        for (topic, subject) in topics {
            let Some(&partitions) = counts.get(topic) else {
                tracing::warn!(
                    topic,
                    "A topic in topics_out does not exist; emits to it dead-letter until it does"
                );
                continue;
            };
            let schema = match registry.latest(subject).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::debug!(topic, subject, error = %e, "No schema for a topic emitted to; emitting fields to it dead-letters");
                    None
                }
            };
            known.insert(
                topic.clone(),
                Destination {
                    partitions,
                    subject: subject.clone(),
                    schema,
                },
            );
        }
        *self.topics.write().unwrap_or_else(|e| e.into_inner()) = known;
    }

    fn get(&self, topic: &str) -> Option<Destination> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned()
    }
}

/// The partition count of each of `topics` that exists.
pub async fn partition_counts(
    kafka: &Kafka,
    topics: Vec<String>,
) -> anyhow::Result<HashMap<String, i32>> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = kafka.client_config().create()?;
        let metadata = client.fetch_metadata(None, Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| topics.iter().any(|n| n == t.name()) && !t.partitions().is_empty())
            .map(|t| (t.name().to_string(), t.partitions().len() as i32))
            .collect())
    })
    .await?
}

/// Turns a message's `Emit` actions into outbox messages for one pipeline.
pub struct Emitter<'a> {
    /// The pipeline, for messages.
    pub pipeline: &'a str,
    /// The topics it may emit to.
    pub topics_out: &'a BTreeMap<String, String>,
    /// What is known of them.
    pub destinations: &'a Destinations,
}

impl Emitter<'_> {
    /// The outbox messages of one message's actions (`offset`: the source message's, to
    /// spread null keys), or why the message cannot go on.
    pub fn emits(
        &self,
        offset: i64,
        actions: &[Action],
        layouts: &[Vec<String>],
    ) -> Result<Vec<OutboxMessage>, String> {
        let mut out = Vec::new();
        for (i, action) in actions.iter().enumerate() {
            let Action::Emit(emit) = action else { continue };
            let topic = &emit.topic;
            if !self.topics_out.contains_key(topic) {
                let listed: Vec<&str> = self.topics_out.keys().map(String::as_str).collect();
                return Err(format!(
                    "pipeline {} may not emit to topic {topic}: it is not among the pipeline's topics_out ({})",
                    self.pipeline,
                    if listed.is_empty() {
                        "none".to_string()
                    } else {
                        listed.join(", ")
                    }
                ));
            }
            let Some(dest) = self.destinations.get(topic) else {
                return Err(format!("topic {topic} does not exist (yet)"));
            };
            let value = match &emit.value {
                EmitValue::Raw(bytes) => Some(bytes.clone()),
                EmitValue::Tombstone => None,
                EmitValue::Fields(fields) => {
                    let Some(names) = layouts.get(fields.layout as usize) else {
                        return Err(format!(
                            "an emit to {topic} names layout {}, but the guest declared {}",
                            fields.layout,
                            layouts.len()
                        ));
                    };
                    let Some(schema) = &dest.schema else {
                        return Err(format!(
                            "topic {topic}: subject {} has no schema to encode fields with",
                            dest.subject
                        ));
                    };
                    Some(
                        encode::encode_fields(schema, names, &fields.values)
                            .map_err(|e| format!("emit to {topic} ({}): {e}", dest.subject))?,
                    )
                }
            };
            let partition = match emit.partition {
                Some(p) if (0..dest.partitions).contains(&p) => p,
                Some(p) => {
                    return Err(format!(
                        "an emit to {topic} names partition {p}, but the topic has {}",
                        dest.partitions
                    ));
                }
                None => match &emit.key {
                    Some(key) => partition_of(key, dest.partitions),
                    None => {
                        (offset.wrapping_add(i as i64)).rem_euclid(dest.partitions as i64) as i32
                    }
                },
            };
            let size = emit.key.as_ref().map_or(0, Vec::len)
                + value.as_ref().map_or(0, Vec::len)
                + emit
                    .headers
                    .iter()
                    .map(|h| h.key.len() + h.value.as_ref().map_or(0, Vec::len))
                    .sum::<usize>();
            if size > MAX_EMIT_BYTES {
                return Err(format!(
                    "an emit to {topic} is {size} bytes, more than the {MAX_EMIT_BYTES} a message may have"
                ));
            }
            if emit.headers.iter().any(|h| h.key == OUTBOX_HEADER) {
                return Err(format!(
                    "an emit to {topic} sets header {OUTBOX_HEADER}, which weir sets"
                ));
            }
            out.push(OutboxMessage {
                topic: topic.clone(),
                partition,
                key: emit.key.clone(),
                headers: emit.headers.clone(),
                value,
            });
        }
        Ok(out)
    }
}

/// The partition Kafka's default partitioner gives `key`: murmur2 of the key, made
/// positive, modulo the partition count (the Java client's `Utils.murmur2`, which
/// librdkafka's `murmur2_random` also follows). Written out here because it is a dozen
/// lines with a fixed specification, and the relay must know the partition before it
/// produces.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions as u32) as i32
}

fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("four bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// One source partition's outbox as this member relays it.
#[derive(Debug)]
pub struct Lane {
    pending: AtomicU64,
    max_pending: u64,
    wake: Notify,
    drained: Notify,
    cancel: CancellationToken,
}

impl Lane {
    /// A batch with `n` emits committed.
    pub fn committed(&self, n: u64) {
        if n > 0 {
            self.pending.fetch_add(n, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// Whether the outbox is at its bound: the partition waits ([`Lane::room`]).
    pub fn full(&self) -> bool {
        self.pending.load(Ordering::Relaxed) >= self.max_pending
    }

    /// Waits until the outbox is below its bound, or the lane stops.
    pub async fn room(&self) {
        while self.full() && !self.cancel.is_cancelled() {
            tokio::select! {
                _ = self.drained.notified() => {}
                _ = self.cancel.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// How the relay reaches Kafka and Postgres.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The brokers and the properties every client gets.
    pub kafka: Kafka,
    /// The consumer group whose outbox this is.
    pub group: String,
    /// Postgres.
    pub database_url: String,
}

/// The relay of this member: one task per source partition it owns that has emits.
pub struct Relay {
    inner: Arc<Inner>,
    lanes: Mutex<HashMap<Partition, Arc<Lane>>>,
    /// The last task of each partition relayed here, kept after it is revoked: a lane that
    /// starts on the partition again waits for it, so that two tasks never produce one
    /// partition's outbox at once.
    tasks: Mutex<HashMap<Partition, tokio::task::JoinHandle<()>>>,
}

struct Inner {
    config: RelayConfig,
    producer: FutureProducer,
    metrics: Arc<Metrics>,
    client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl Relay {
    /// A relay producing with an idempotent producer.
    pub fn new(config: RelayConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let producer: FutureProducer = config
            .kafka
            .client_config()
            .set("client.id", RELAY_CLIENT_ID)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Never give up on a message: a broker outage backs the outbox up instead.
            .set("message.timeout.ms", "0")
            .create()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the relay's Kafka producer for {}: {e}",
                    config.kafka
                )
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                producer,
                metrics,
                client: tokio::sync::Mutex::new(None),
            }),
            lanes: Mutex::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
        })
    }

    /// Starts relaying a source partition this member now owns.
    pub fn assign(&self, partition: Partition, max_pending: u64) -> Arc<Lane> {
        let lane = Arc::new(Lane {
            pending: AtomicU64::new(0),
            max_pending,
            wake: Notify::new(),
            drained: Notify::new(),
            cancel: CancellationToken::new(),
        });
        if let Some(old) = self
            .lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition.clone(), lane.clone())
        {
            old.cancel.cancel();
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let before = tasks.remove(&partition);
        let (inner, p, l) = (self.inner.clone(), partition.clone(), lane.clone());
        let task = tokio::spawn(async move {
            if let Some(before) = before {
                // It stops after the round it is in.
                let _ = before.await;
            }
            inner.run(p, l).await;
        });
        tasks.insert(partition, task);
        lane
    }

    /// Stops relaying a partition this member no longer owns (after the round in flight).
    pub fn revoke(&self, partition: &Partition) {
        if let Some(lane) = self
            .lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(partition)
        {
            lane.cancel.cancel();
        }
    }

    /// The lane of a partition, when relayed here.
    pub fn lane(&self, partition: &Partition) -> Option<Arc<Lane>> {
        self.lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(partition)
            .cloned()
    }

    /// Stops every lane, waiting at most `grace` for the producer to flush.
    pub fn close(&self, grace: Duration) {
        for lane in self
            .lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            lane.cancel.cancel();
        }
        let _ = self.inner.producer.flush(grace);
    }
}

impl Inner {
    async fn client(&self) -> anyhow::Result<Arc<tokio_postgres::Client>> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let client = crate::pg::PgConfig::parse(&self.config.database_url, "weir relay")
            .map_err(|e| anyhow::anyhow!(e))?
            .connect_spawned("the relay")
            .await?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Relays one partition until its lane is cancelled.
    async fn run(self: Arc<Self>, partition: Partition, lane: Arc<Lane>) {
        let (topic, p) = (partition.0.as_str(), partition.1);
        let mut recovered = false;
        let mut backoff = Backoff::between(Duration::from_millis(100), Duration::from_secs(10));
        while !lane.cancel.is_cancelled() {
            match self.round(topic, p, &lane, &mut recovered).await {
                Ok(true) => backoff.reset(),
                Ok(false) => {
                    tokio::select! {
                        _ = lane.wake.notified() => {}
                        _ = lane.cancel.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(e) => {
                    let delay = backoff.delay();
                    tracing::warn!(topic, partition = p, error = %e, retry_in = ?delay, "Relaying the outbox failed; retrying");
                    recovered = false;
                    tokio::select! {
                        _ = lane.cancel.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// One round: recovery if needed, then one batch of outbox rows. True if it produced
    /// something.
    async fn round(
        &self,
        topic: &str,
        partition: i32,
        lane: &Lane,
        recovered: &mut bool,
    ) -> anyhow::Result<bool> {
        let client = self.client().await?;
        let reader = OutboxReader {
            client: &client,
            group: &self.config.group,
        };
        if !*recovered {
            self.recover(&reader, topic, partition).await?;
            *recovered = true;
        }
        let (depth, oldest) = reader.depth(topic, partition).await?;
        lane.pending.store(depth, Ordering::Relaxed);
        self.metrics
            .outbox(topic, partition, depth, oldest.unwrap_or(0.0));
        if !lane.full() {
            lane.drained.notify_waiters();
        }
        if depth == 0 {
            return Ok(false);
        }
        let rows = reader.read(topic, partition, RELAY_BATCH).await?;
        if rows.is_empty() {
            return Ok(false);
        }
        let destinations: BTreeSet<(String, i32)> = rows
            .iter()
            .map(|r| (r.message.topic.clone(), r.message.partition))
            .collect();
        let flight = InFlight {
            ids: rows.iter().map(|r| r.id).collect(),
            marks: self.ends(destinations).await?,
        };
        reader.begin_flight(topic, partition, &flight).await?;
        self.produce(&rows).await?;
        reader.sent(topic, partition, &flight.ids).await?;
        let mut by_topic: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &rows {
            *by_topic.entry(r.message.topic.as_str()).or_default() += 1;
        }
        for (t, n) in by_topic {
            self.metrics.produced(t, n);
        }
        let left = lane.pending.fetch_sub(
            (rows.len() as u64).min(lane.pending.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        if left < lane.max_pending {
            lane.drained.notify_waiters();
        }
        Ok(true)
    }

    /// The end offset of each destination partition.
    async fn ends(
        &self,
        destinations: BTreeSet<(String, i32)>,
    ) -> anyhow::Result<Vec<(String, i32, i64)>> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            destinations
                .into_iter()
                .map(|(t, p)| {
                    let (_, high) = producer
                        .client()
                        .fetch_watermarks(&t, p, Duration::from_secs(10))
                        .map_err(|e| {
                            anyhow::anyhow!("cannot read the end offset of {t}[{p}]: {e}")
                        })?;
                    Ok((t, p, high))
                })
                .collect()
        })
        .await?
    }

    /// Produces `rows` in order and waits for every acknowledgement.
    async fn produce(&self, rows: &[Pending]) -> anyhow::Result<()> {
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in rows {
            let m = &row.message;
            let id = format!("{}:{}", self.config.group, row.id);
            let mut headers = OwnedHeaders::new_with_capacity(m.headers.len() + 1);
            for h in &m.headers {
                headers = headers.insert(KafkaHeader {
                    key: &h.key,
                    value: h.value.as_deref(),
                });
            }
            headers = headers.insert(KafkaHeader {
                key: OUTBOX_HEADER,
                value: Some(id.as_bytes()),
            });
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&m.topic)
                .partition(m.partition)
                .headers(headers);
            if let Some(k) = &m.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &m.value {
                record = record.payload(v.as_slice());
            }
            let mut record = record;
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push((m.topic.as_str(), delivery));
                        break;
                    }
                    Err((e, back))
                        if e.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                    {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        self.metrics.produce_errors(&m.topic, 1);
                        anyhow::bail!("cannot queue a message for {}: {e}", m.topic);
                    }
                }
            }
        }
        let mut failed: Option<String> = None;
        let (topics, futures): (Vec<&str>, Vec<_>) = deliveries.into_iter().unzip();
        for (topic, result) in topics.into_iter().zip(join_all(futures).await) {
            let error = match result {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => e.to_string(),
                Err(_) => "the producer went away".to_string(),
            };
            self.metrics.produce_errors(topic, 1);
            failed.get_or_insert_with(|| format!("Kafka refused a message for {topic}: {error}"));
        }
        match failed {
            Some(e) => anyhow::bail!(e),
            None => Ok(()),
        }
    }

    /// Settles the batch a relay was producing when it stopped: rows found in their
    /// destination partitions were produced, and are removed; the rest will be produced.
    async fn recover(
        &self,
        reader: &OutboxReader<'_>,
        topic: &str,
        partition: i32,
    ) -> anyhow::Result<()> {
        let Some(flight) = reader.in_flight(topic, partition).await? else {
            return Ok(());
        };
        let kafka = self.config.kafka.clone();
        let prefix = format!("{}:", self.config.group);
        let wanted: HashSet<i64> = flight.ids.iter().copied().collect();
        let marks = flight.marks.clone();
        let found =
            tokio::task::spawn_blocking(move || scan(&kafka, &marks, &prefix, &wanted)).await??;
        tracing::info!(
            topic,
            partition,
            in_flight = flight.ids.len(),
            already_produced = found.len(),
            "Relay resumed a partition's outbox: messages found in their topics are not produced again"
        );
        reader.sent(topic, partition, &found).await?;
        Ok(())
    }
}

/// The outbox ids (among `wanted`, headers starting with `prefix`) in each destination
/// partition from its recorded offset to its end now.
fn scan(
    kafka: &Kafka,
    marks: &[(String, i32, i64)],
    prefix: &str,
    wanted: &HashSet<i64>,
) -> anyhow::Result<Vec<i64>> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("client.id", RELAY_CLIENT_ID)
        .set("group.id", "weir-relay-recovery")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut found = Vec::new();
    for (topic, partition, from) in marks {
        let (_, end) = consumer.fetch_watermarks(topic, *partition, Duration::from_secs(10))?;
        if end <= *from {
            continue;
        }
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(*from))?;
        consumer.assign(&list)?;
        // Read past the reported end until the log is quiet: some brokers report an end
        // that lags the last batch written (tansu), and a message missed here would be
        // produced again.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut next = *from;
        let mut quiet = Duration::ZERO;
        while next < end || quiet < SCAN_QUIET {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "reading {topic}[{partition}] from {from} to {end} took over a minute (at {next})"
            );
            let Some(message) = consumer.poll(SCAN_POLL) else {
                quiet += SCAN_POLL;
                continue;
            };
            quiet = Duration::ZERO;
            let message = message?;
            next = message.offset() + 1;
            let Some(headers) = message.headers() else {
                continue;
            };
            for h in headers.iter() {
                if h.key != OUTBOX_HEADER {
                    continue;
                }
                let id = h
                    .value
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.strip_prefix(prefix))
                    .and_then(|v| v.parse::<i64>().ok());
                if let Some(id) = id.filter(|id| wanted.contains(id)) {
                    found.push(id);
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_partition_as_kafkas_default_partitioner_does() {
        // Values from the Java client's Utils.murmur2 (its tests and the well-known
        // positive hashes of these strings).
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
        assert_eq!(partition_of(b"abc", 3), 479470107 % 3);
    }
}
