//! `weir run`: Kafka → decode → guest → Postgres, one partition batch at a time, each batch
//! committed in one transaction with the partition's next offset.
//!
//! Positions come from Postgres, not Kafka: on assignment each partition starts at its
//! stored next offset; a batch starting anywhere else is trimmed (already committed) or
//! dropped and re-read (a gap). Kafka's committed offsets follow Postgres, for tools only.
//! Partitions are spread over a group's processes by leases in Postgres
//! ([`membership`]), not by the broker's group coordinator.

pub mod membership;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::Consumer as _;

use crate::config::{ColumnCheck, Config, DedupConfig, PipelineConfig};
use crate::metrics::{Health, Metrics};
use crate::registry::RegistryClient;
use crate::runtime::types::{Batch, ConfigEntry, Message, Outcome};
use crate::runtime::{Guest, GuestError, GuestSet, GuestSlot, Runtime};
use crate::sink::{
    DedupKeys, Sink, SinkBatch, SinkConfig, SinkError, SinkItem, TableExpectation, ValueKind,
};
use crate::source::avro::field_kinds;
use crate::source::{
    Decoded, Decoder, KafkaSource, RawBatch, RawMessage, SourceConfig, Stage, StartFrom,
};
use membership::{Membership, Partition};

/// How often consumer lag is measured.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// How often the topics' partitions are listed again (new partitions, new topics).
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);

/// How often expired deduplication keys are deleted.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(600);

/// Session timeout of the group when `kafka.properties` sets no `session.timeout.ms`.
const DEFAULT_SESSION: Duration = Duration::from_secs(10);

/// One configured pipeline, ready to run batches.
struct Route {
    name: String,
    guest: Arc<GuestSlot>,
    guest_config: Vec<ConfigEntry>,
    version_column: Option<String>,
    dedup: Option<DedupConfig>,
}

/// A running `weir run`: everything connected and checked.
pub struct Runner {
    routes: Vec<Route>,
    by_topic: HashMap<String, usize>,
    source: KafkaSource,
    decoder: Decoder<RegistryClient>,
    sink: Sink,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    brokers: String,
    /// Next offset to process per partition, as stored in Postgres (None: nothing stored).
    positions: HashMap<(String, i32), Option<i64>>,
    last_lag: Instant,
    membership: Membership,
    session: Duration,
    last_heartbeat: Option<Instant>,
    topics: Vec<String>,
    partitions: Vec<Partition>,
    last_discovery: Option<Instant>,
    /// How far before the stored offset the next re-read of a partition starts, after the
    /// broker resumed past it (see [`Runner::process`]).
    reread: HashMap<(String, i32), i64>,
    last_expiry: Instant,
}

impl Runner {
    /// Connects to every dependency, checks every table, and joins the consumer group.
    /// Anything unreachable or wrong is refused here, before a single message is
    /// consumed. `guests` holds every pipeline's guest (see [`load_guests`]).
    pub async fn start(
        config: &Config,
        guests: &GuestSet,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> anyhow::Result<Self> {
        let mut routes = Vec::new();
        let mut by_topic = HashMap::new();
        for p in &config.pipelines {
            let guest = guests
                .slot(&p.name)
                .with_context(|| format!("pipeline {} has no guest loaded", p.name))?;
            for t in &p.topics {
                by_topic.insert(t.clone(), routes.len());
            }
            routes.push(Route {
                name: p.name.clone(),
                guest,
                version_column: p.version_column.clone(),
                dedup: p.dedup.clone(),
                guest_config: p
                    .guest_config
                    .iter()
                    .map(|(k, v)| ConfigEntry {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            });
        }

        check_registry(&config.registry.url).await?;
        check_kafka(&config.kafka.brokers, &config.pipelines).await?;

        if let Some(dir) = &config.database.migrations {
            let report = crate::sink::migrate(&config.database.url, dir)
                .await
                .with_context(|| format!("applying migrations in {}", dir.display()))?;
            tracing::info!(?report, "Migrations up to date");
        }
        let sink = Sink::connect(SinkConfig {
            database_url: config.database.url.clone(),
            group_id: config.kafka.group_id.clone(),
        })
        .await?;
        let registry = Arc::new(RegistryClient::new(&config.registry.url)?);
        let mut expectations = Vec::new();
        for p in &config.pipelines {
            expectations.extend(table_expectations(p, &registry).await?);
        }
        sink.check_tables(&expectations).await?;
        health.set_connected(true);

        let mut source = KafkaSource::new(&SourceConfig {
            brokers: config.kafka.brokers.clone(),
            group_id: config.kafka.group_id.clone(),
            topics: by_topic.keys().cloned().collect(),
            batch_size: 500,
            linger: Duration::from_millis(100),
            start: StartFrom::Earliest,
            properties: config
                .kafka
                .properties
                .iter()
                .filter(|(k, _)| !GROUP_PROPERTIES.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            subscribe: false,
        })?;
        let session = config
            .kafka
            .properties
            .get("session.timeout.ms")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_SESSION);
        let membership =
            Membership::join(&config.database.url, &config.kafka.group_id, session).await?;
        let mut topics: Vec<String> = by_topic.keys().cloned().collect();
        topics.sort();
        for p in &config.pipelines {
            for t in &p.topics {
                source.set_topic_batching(t, p.batch_size, p.linger);
            }
        }
        Ok(Self {
            routes,
            by_topic,
            source,
            decoder: Decoder::new(registry),
            sink,
            metrics,
            health,
            brokers: config.kafka.brokers.clone(),
            positions: HashMap::new(),
            last_lag: Instant::now(),
            membership,
            session,
            last_heartbeat: None,
            topics,
            partitions: Vec::new(),
            last_discovery: None,
            reread: HashMap::new(),
            last_expiry: Instant::now(),
        })
    }

    /// Consumes until `shutdown` resolves; the batch in flight is finished first.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        loop {
            self.rebalance().await?;
            let next = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                next = tokio::time::timeout(self.session / 4, self.source.next_batch()) => next,
            };
            if let Ok(batch) = next {
                let batch = batch?;
                if self
                    .source
                    .assigned()
                    .contains(&(batch.topic.clone(), batch.partition))
                {
                    self.process(batch).await?;
                }
            }
            if self.last_lag.elapsed() >= LAG_INTERVAL {
                self.measure_lag().await;
            }
            if self.last_expiry.elapsed() >= EXPIRY_INTERVAL {
                self.expire_dedup_keys().await;
            }
        }
        tracing::info!("Shutting down: the batch in flight is committed; leaving the group");
        self.membership.leave().await;
        if let Err(e) = self
            .source
            .consumer()
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        {
            tracing::debug!(error = %e, "No offsets to commit to Kafka on shutdown");
        }
        Ok(())
    }

    /// Heartbeats the group (every quarter session) and follows the partitions it gives
    /// this member: new ones start at their stored offset, lost ones stop at once.
    async fn rebalance(&mut self) -> anyhow::Result<()> {
        if self
            .last_heartbeat
            .is_some_and(|t| t.elapsed() < self.session / 4)
        {
            return Ok(());
        }
        self.last_heartbeat = Some(Instant::now());
        if self
            .last_discovery
            .is_none_or(|t| t.elapsed() >= DISCOVERY_INTERVAL)
        {
            match discover(&self.brokers, &self.topics).await {
                Ok(p) => {
                    self.partitions = p;
                    self.last_discovery = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot list partitions; keeping the last known ones")
                }
            }
        }
        let owned = match self.membership.heartbeat(&self.partitions).await {
            Ok(owned) => owned,
            Err(e) => {
                // Without a heartbeat our leases may lapse; the offset compare-and-set
                // still guards every commit.
                tracing::warn!(error = %e, "Group heartbeat failed; retrying");
                return Ok(());
            }
        };
        let current: Vec<Partition> = self.source.assigned().to_vec();
        let lost: Vec<Partition> = current
            .iter()
            .filter(|p| !owned.contains(*p))
            .cloned()
            .collect();
        if !lost.is_empty() {
            tracing::info!(partitions = ?lost, "Partitions moved to another member");
            self.source.unassign(&lost)?;
            for p in &lost {
                self.positions.remove(p);
            }
        }
        let mut gained = Vec::new();
        for (topic, partition) in owned.iter().filter(|p| !current.contains(*p)) {
            let stored = self.sink.stored_offset(topic, *partition).await?;
            tracing::info!(
                topic,
                partition,
                ?stored,
                "Partition assigned; resuming from Postgres"
            );
            self.positions.insert((topic.clone(), *partition), stored);
            gained.push((topic.clone(), *partition, stored));
        }
        if !gained.is_empty() {
            self.source.assign(&gained)?;
        }
        self.health.set_assigned(!self.source.assigned().is_empty());
        Ok(())
    }

    /// Where this partition must go on from, per Postgres.
    async fn position(&mut self, topic: &str, partition: i32) -> anyhow::Result<Option<i64>> {
        let key = (topic.to_string(), partition);
        if let Some(p) = self.positions.get(&key) {
            return Ok(*p);
        }
        let stored = self.sink.stored_offset(topic, partition).await?;
        self.positions.insert(key, stored);
        Ok(stored)
    }

    async fn process(&mut self, mut batch: RawBatch) -> anyhow::Result<()> {
        let started = Instant::now();
        let (topic, partition) = (batch.topic.clone(), batch.partition);
        // Line the batch up with what Postgres has committed.
        if let Some(next) = self.position(&topic, partition).await? {
            batch.messages.retain(|m| m.offset >= next);
            match batch.messages.first() {
                None => return Ok(()),
                Some(first) if first.offset > next => {
                    // The broker resumed after the stored offset. Some brokers answer a
                    // fetch from the middle of a record batch with the next batch, so read
                    // again from further back (the part already committed is trimmed
                    // above), further each time.
                    let key = (topic.clone(), partition);
                    let back = self.reread.get(&key).map_or(512, |b| b * 4);
                    self.reread.insert(key, back);
                    let from = (next - back).max(0);
                    tracing::warn!(
                        topic,
                        partition,
                        expected = next,
                        got = first.offset,
                        from,
                        "Fetch resumed past the stored offset; reading again from earlier"
                    );
                    self.source.seek(&topic, partition, from)?;
                    return Ok(());
                }
                Some(_) => {
                    self.reread.remove(&(topic.clone(), partition));
                }
            }
        }
        let Some(&route_index) = self.by_topic.get(&topic) else {
            anyhow::bail!("received a message of topic {topic}, which no pipeline routes");
        };
        self.metrics.records_in(&topic, batch.messages.len() as u64);
        loop {
            let decoded = self.decoder.decode_batch(&batch).await;
            let route = &self.routes[route_index];
            let (duplicates, dedup) = self.deduplicate(route, &decoded).await?;
            // One version for the whole batch: a swap lands at the next batch.
            let guest = route.guest.current();
            let items = self.run_guest(route, &guest, &batch, decoded, &duplicates);
            let sink_batch = SinkBatch {
                topic: topic.clone(),
                partition,
                start_offset: batch.messages[0].offset,
                next_offset: batch.next_offset().expect("non-empty batch"),
                guest_version: Some(guest.id().version.clone()),
                version_column: route.version_column.clone(),
                items,
                dedup,
            };
            match self.sink.write_batch(&sink_batch).await {
                Ok(report) => {
                    for (table, n) in &report.rows {
                        self.metrics.records_out(table, *n);
                    }
                    let mut by_stage: BTreeMap<&str, u64> = BTreeMap::new();
                    for (_, stage) in &report.dead_letters {
                        *by_stage.entry(stage.as_str()).or_default() += 1;
                    }
                    for (stage, n) in by_stage {
                        self.metrics.dead_letters(stage, n);
                    }
                    if !duplicates.is_empty() {
                        self.metrics
                            .duplicates(&route.name, duplicates.len() as u64);
                    }
                    self.positions
                        .insert((topic.clone(), partition), Some(sink_batch.next_offset));
                    self.source
                        .store_offset(&topic, partition, sink_batch.next_offset);
                    self.metrics
                        .offset_committed(&topic, partition, sink_batch.next_offset);
                    self.metrics
                        .batch_duration(&route.name, started.elapsed().as_secs_f64());
                    return Ok(());
                }
                Err(SinkError::SeenMeanwhile { .. }) => {
                    tracing::info!(
                        topic,
                        partition,
                        "A deduplication key of this batch was committed by another batch meanwhile; redoing the batch"
                    );
                }
                Err(SinkError::Stale { stored, .. }) => {
                    tracing::warn!(
                        topic,
                        partition,
                        ?stored,
                        "Partition committed by another consumer; re-reading from the stored offset"
                    );
                    self.positions.insert((topic.clone(), partition), stored);
                    if let Some(offset) = stored {
                        // Harmless if the partition is no longer ours.
                        let _ = self.source.seek(&topic, partition, offset);
                    }
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// With `dedup:`, the offsets of messages whose key repeats one earlier in the batch or
    /// one already committed, and the keys of the others, to remember with the batch.
    async fn deduplicate(
        &self,
        route: &Route,
        decoded: &[Decoded],
    ) -> anyhow::Result<(HashSet<i64>, Option<DedupKeys>)> {
        let mut duplicates = HashSet::new();
        let Some(dedup) = &route.dedup else {
            return Ok((duplicates, None));
        };
        let mut first: HashSet<String> = HashSet::new();
        let mut keys = Vec::new();
        for d in decoded {
            let Decoded::Message(m) = d else { continue };
            // A message without the key is the guest's to judge.
            let Some(key) = dedup_key(m, &dedup.key) else {
                continue;
            };
            if first.insert(key.clone()) {
                keys.push((m.offset, key));
            } else {
                duplicates.insert(m.offset);
            }
        }
        let lookup: Vec<&str> = keys.iter().map(|(_, k)| k.as_str()).collect();
        let seen = self.sink.seen(&route.name, &lookup).await?;
        keys.retain(|(offset, key)| {
            let new = !seen.contains(key);
            if !new {
                duplicates.insert(*offset);
            }
            new
        });
        Ok((
            duplicates,
            Some(DedupKeys {
                scope: route.name.clone(),
                keys,
            }),
        ))
    }

    /// Forgets deduplication keys older than each pipeline's retention.
    async fn expire_dedup_keys(&mut self) {
        self.last_expiry = Instant::now();
        for route in &self.routes {
            let Some(dedup) = &route.dedup else { continue };
            match self.sink.forget_seen(&route.name, dedup.retention).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(pipeline = %route.name, keys = n, "Forgot expired deduplication keys")
                }
                Err(e) => {
                    tracing::warn!(pipeline = %route.name, error = %e, "Cannot expire deduplication keys; trying again later")
                }
            }
        }
    }

    /// Runs the guest over the decoded messages; messages that failed decoding, and any
    /// message the guest fails on, become dead letters. A failed call is split in halves
    /// until the message(s) at fault are isolated.
    fn run_guest(
        &self,
        route: &Route,
        guest: &Guest,
        batch: &RawBatch,
        decoded: Vec<Decoded>,
        duplicates: &HashSet<i64>,
    ) -> Vec<SinkItem> {
        let raws: HashMap<i64, &RawMessage> =
            batch.messages.iter().map(|m| (m.offset, m)).collect();
        let mut items: Vec<Option<SinkItem>> = Vec::with_capacity(decoded.len());
        let mut messages = Vec::new();
        let mut slots = Vec::new();
        for d in decoded {
            match d {
                // Dropped: written as processed, with nothing to do.
                Decoded::Message(m) if duplicates.contains(&m.offset) => {
                    let raw = raws.get(&m.offset);
                    items.push(Some(SinkItem::Actions {
                        offset: m.offset,
                        key: raw.and_then(|r| r.key.clone()),
                        value: raw.and_then(|r| r.value.clone()),
                        actions: Vec::new(),
                    }));
                }
                Decoded::Message(m) => {
                    slots.push(items.len());
                    items.push(None);
                    messages.push(m);
                }
                Decoded::DeadLetter(d) => items.push(Some(SinkItem::DeadLetter {
                    offset: d.offset,
                    key: d.key,
                    value: d.value,
                    stage: d.stage.as_str().to_string(),
                    error: d.error,
                })),
            }
        }
        let outcomes = self.call_isolating(route, guest, messages.clone());
        for ((slot, message), outcome) in slots.into_iter().zip(messages).zip(outcomes) {
            let raw = raws.get(&message.offset);
            let key = raw.and_then(|r| r.key.clone());
            let value = raw.and_then(|r| r.value.clone());
            items[slot] = Some(match outcome {
                Ok(Outcome::Actions(actions)) => SinkItem::Actions {
                    offset: message.offset,
                    key,
                    value,
                    actions,
                },
                Ok(Outcome::DeadLetter(reason)) => SinkItem::DeadLetter {
                    offset: message.offset,
                    key,
                    value,
                    stage: Stage::Guest.as_str().to_string(),
                    error: reason,
                },
                Err(e) => SinkItem::DeadLetter {
                    offset: message.offset,
                    key,
                    value,
                    stage: Stage::Guest.as_str().to_string(),
                    error: e.to_string(),
                },
            });
        }
        items
            .into_iter()
            .map(|i| i.expect("every slot filled"))
            .collect()
    }

    /// One outcome (or the guest's error) per message, bisecting failed calls.
    fn call_isolating(
        &self,
        route: &Route,
        guest: &Guest,
        messages: Vec<Message>,
    ) -> Vec<Result<Outcome, GuestError>> {
        if messages.is_empty() {
            return Vec::new();
        }
        let n = messages.len();
        let batch = Batch {
            config: route.guest_config.clone(),
            messages,
        };
        let started = Instant::now();
        // A guest call is CPU work that may run to its deadline: keep the runtime's other
        // tasks (metrics, signals) going while it runs.
        let result = tokio::task::block_in_place(|| guest.process(&batch));
        self.metrics
            .guest_call(&guest.id().name, started.elapsed().as_secs_f64());
        match result {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) => {
                self.metrics.guest_error(&guest.id().name, e.kind.name());
                if n == 1 {
                    tracing::warn!(guest = %e.guest, offset = batch.messages[0].offset, error = %e, "Guest failed on a message; dead-lettering it");
                    return vec![Err(e)];
                }
                tracing::info!(guest = %e.guest, messages = n, error = %e, "Guest call failed; splitting the batch to isolate the message at fault");
                let mut messages = batch.messages;
                let right = messages.split_off(n / 2);
                let mut out = self.call_isolating(route, guest, messages);
                out.extend(self.call_isolating(route, guest, right));
                out
            }
        }
    }

    /// Measures each assigned partition's lag: a gauge in the metrics, and the high
    /// watermark on its `weir_offsets` row for SQL.
    async fn measure_lag(&mut self) {
        self.last_lag = Instant::now();
        let parts: Vec<((String, i32), Option<i64>)> = self
            .source
            .assigned()
            .iter()
            .map(|p| (p.clone(), self.positions.get(p).copied().flatten()))
            .collect();
        let brokers = self.brokers.clone();
        let metrics = self.metrics.clone();
        // Watermarks are a network round trip: off the async threads.
        let marks = tokio::task::spawn_blocking(move || {
            let mut marks = Vec::new();
            let Ok(client) = crate::source::kafka::client_config(&brokers)
                .create::<rdkafka::consumer::BaseConsumer>()
            else {
                return marks;
            };
            for ((topic, partition), position) in parts {
                if let Ok((low, high)) = rdkafka::consumer::Consumer::fetch_watermarks(
                    &client,
                    &topic,
                    partition,
                    Duration::from_secs(2),
                ) {
                    let next = position.unwrap_or(low);
                    metrics.consumer_lag(&topic, partition, (high - next).max(0));
                    marks.push((topic, partition, high));
                }
            }
            marks
        })
        .await
        .unwrap_or_default();
        if let Err(e) = self.sink.record_watermarks(&marks).await {
            tracing::debug!(error = %e, "Could not record high watermarks in weir_offsets");
        }
    }
}

/// The text of a message's deduplication key field; `None` when absent or null.
fn dedup_key(message: &Message, field: &str) -> Option<String> {
    use crate::runtime::types::Value;
    let value = &message.fields.iter().find(|f| f.name == field)?.value;
    Some(match value {
        Value::Null => return None,
        Value::Text(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Bytes(b) => hex::encode(b),
        other => format!("{other:?}"),
    })
}

/// Compiles and checks every pipeline's guest (once per guest name). Slow, and needs no
/// network: do it first.
pub fn load_guests(config: &Config, runtime: Arc<Runtime>) -> anyhow::Result<GuestSet> {
    let mut guests = GuestSet::new(runtime);
    for p in &config.pipelines {
        let slot = guests
            .add(&p.name, &p.topics, &p.guest, p.limits)
            .with_context(|| format!("pipeline {}", p.name))?;
        let id = slot.current().id().clone();
        tracing::info!(pipeline = %p.name, guest = %id.name, version = %id.short_version, "Loaded guest");
    }
    Ok(guests)
}

/// What `weir run` expects of a pipeline's tables: that they exist and, with
/// `columns: schema`, a compatible column for every field of its topics' value schemas.
async fn table_expectations(
    pipeline: &PipelineConfig,
    registry: &RegistryClient,
) -> anyhow::Result<Vec<TableExpectation>> {
    let mut columns: Vec<(String, ValueKind)> = Vec::new();
    if pipeline.columns == ColumnCheck::Schema {
        for topic in &pipeline.topics {
            let subject = format!("{topic}-value");
            let latest = registry.latest(&subject).await.with_context(|| {
                format!(
                    "pipeline {} has `columns: schema`, so its topics' schemas must be registered",
                    pipeline.name
                )
            })?;
            for field in field_kinds(&latest.schema) {
                if !columns.iter().any(|(n, _)| *n == field.0) {
                    columns.push(field);
                }
            }
        }
    }
    if let Some(column) = &pipeline.version_column {
        columns.push((column.clone(), ValueKind::Text));
    }
    Ok(pipeline
        .tables
        .iter()
        .map(|table| TableExpectation {
            table: table.clone(),
            columns: columns.clone(),
        })
        .collect())
}

/// Kafka group settings that would make librdkafka join the broker's group; weir's group
/// is kept in Postgres, so these are not passed to the consumer.
const GROUP_PROPERTIES: &[&str] = &["session.timeout.ms", "heartbeat.interval.ms"];

/// The partitions of `topics`, per the brokers' metadata.
async fn discover(brokers: &str, topics: &[String]) -> anyhow::Result<Vec<Partition>> {
    let brokers = brokers.to_string();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let client: rdkafka::consumer::BaseConsumer =
            crate::source::kafka::client_config(&brokers).create()?;
        let mut out = Vec::new();
        for topic in &topics {
            let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(5))?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    out.push((t.name().to_string(), p.id()));
                }
            }
        }
        out.sort();
        Ok(out)
    })
    .await?
}

async fn check_registry(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let response = client
        .get(format!("{}/subjects", url.trim_end_matches('/')))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("schema registry {url} (registry.url) is unreachable: {e}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "schema registry {url} (registry.url) answered GET /subjects with {}",
        response.status()
    );
    Ok(())
}

async fn check_kafka(brokers: &str, pipelines: &[PipelineConfig]) -> anyhow::Result<()> {
    let brokers = brokers.to_string();
    let topics: Vec<String> = pipelines.iter().flat_map(|p| p.topics.clone()).collect();
    tokio::task::spawn_blocking(move || {
        let client: rdkafka::consumer::BaseConsumer = crate::source::kafka::client_config(&brokers)
            .create()
            .map_err(|e| anyhow::anyhow!("Kafka brokers {brokers} (kafka.brokers): {e}"))?;
        let metadata = client
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(|e| {
                anyhow::anyhow!("Kafka brokers {brokers} (kafka.brokers) are unreachable: {e}")
            })?;
        let known: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
        for t in &topics {
            if !known.contains(&t.as_str()) {
                tracing::warn!(topic = %t, "Topic does not exist yet; consuming it once it does");
            }
        }
        Ok(())
    })
    .await?
}
