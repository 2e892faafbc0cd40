//! `weir run`: Kafka → decode → guest → Postgres, in per-partition batches, each batch
//! committed in one transaction with the partition's next offset. Partitions are spread
//! over `workers` ([`worker`]), each with its own Postgres connection, so several
//! partitions' batches are decoded, transformed and committed at once while the runner
//! reads ahead.
//!
//! Positions come from Postgres, not Kafka: on assignment each partition starts at its
//! stored next offset; a batch starting anywhere else is trimmed (already committed) or
//! dropped and re-read (a gap). Kafka's committed offsets follow Postgres, for tools only.
//! Partitions are spread over a group's processes by leases in Postgres
//! ([`membership`]), not by the broker's group coordinator.

pub mod breaker;
pub mod deploys;
pub mod membership;
mod shadow;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tokio::sync::mpsc;

use crate::config::{ColumnCheck, Config, DedupConfig, PipelineConfig};
use crate::metrics::{Health, Metrics};
use crate::model::{ConfigEntry, StateLimits, ValueKind};
use crate::registry::RegistryClient;
use crate::relay::{Destinations, REFRESH_INTERVAL, Relay, RelayConfig};
use crate::runtime::{GuestSet, GuestSlot, Runtime};
use crate::sink::{LookupSet, PipelineScope, Sink, SinkConfig, SinkEvents, TableExpectation};
use crate::source::avro::{AvroDecoder, DecodeLimits};
use crate::source::kafka::{Kafka, LastError};
use crate::source::{DecodeEvents, Decoder, KafkaSource, RawBatch, SourceConfig, StartFrom};
use deploys::GroupDeploys;
use membership::{Membership, Partition};
use tokio_util::sync::CancellationToken;
use worker::{Job, Report, Shared, Worker};

/// Batches waiting for each worker, beyond the one it is processing.
const QUEUED_BATCHES: usize = 64;

/// How often consumer lag is measured.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// How often the topics' partitions are listed again (new partitions, new topics).
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);

/// How often expired deduplication keys are deleted.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(600);

/// How long a partition positioned past its first offset may get nothing before it is
/// read again from earlier (see [`Runner::check_silent`]).
const SILENCE: Duration = Duration::from_secs(2);

/// Session timeout of the group when `kafka.properties` sets no `session.timeout.ms`.
const DEFAULT_SESSION: Duration = Duration::from_secs(10);

/// One configured pipeline, ready to run batches.
struct Route {
    name: String,
    guest: Arc<GuestSlot>,
    version_column: Option<String>,
    dedup: Option<DedupConfig>,
    /// The pipeline, and the tables its guest may write.
    scope: Arc<PipelineScope>,
    /// Bounds on its guest's state.
    state: StateLimits,
    /// Its lookups.
    lookups: Arc<LookupSet>,
    /// The topics its guest may emit to, with their subjects.
    topics_out: BTreeMap<String, String>,
    /// Emits of one partition waiting in the outbox before it pauses.
    outbox_max_pending: u64,
    /// The guest's name when the group deploys its versions: a batch commits only with
    /// the group's live version.
    barrier: Option<String>,
    /// Stops calling a guest that fails on most messages.
    breaker: Arc<breaker::Breaker>,
}

/// A running `weir run`: everything connected and checked.
pub struct Runner {
    by_topic: HashMap<String, usize>,
    source: KafkaSource,
    shared: Arc<Shared>,
    /// For offsets, watermarks and expiry; each worker has a connection of its own.
    sink: Sink,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    kafka: Kafka,
    /// Next offset to process per partition, as committed in Postgres (None: nothing
    /// stored).
    positions: HashMap<Partition, Option<i64>>,
    /// Next offset to hand to a worker per partition: ahead of `positions` by the
    /// batches queued or in flight.
    dispatched: HashMap<Partition, Option<i64>>,
    /// Each partition's epoch, bumped when it is lost, gained or re-positioned.
    epochs: HashMap<Partition, u64>,
    /// The worker each partition's batches go to.
    lanes: HashMap<Partition, usize>,
    next_lane: usize,
    workers: Vec<mpsc::Sender<Job>>,
    worker_tasks: Vec<tokio::task::JoinHandle<()>>,
    reports: mpsc::UnboundedReceiver<Report>,
    /// The client lag is measured with, made on first use.
    lag_client: Option<Arc<BaseConsumer>>,
    last_lag: Instant,
    membership: Membership,
    session: Duration,
    last_heartbeat: Option<Instant>,
    topics: Vec<String>,
    partitions: Vec<Partition>,
    last_discovery: Option<Instant>,
    /// How far before the expected offset the last re-read of a partition started (see
    /// [`Runner::read_earlier`]).
    reread: HashMap<(String, i32), i64>,
    /// Partitions positioned at an offset the broker has not yet been seen to serve, with
    /// when they were positioned or last received something: a fetch from the middle of a
    /// partition's last record batch gets nothing from some brokers (tansu), so silence
    /// there is checked by reading from earlier.
    unverified: HashMap<Partition, Instant>,
    /// The last offset the consumer delivered of each partition since it was last
    /// positioned: delivery is in order from there, so an expected offset between it and
    /// the next message delivered holds no message (see [`Runner::dispatch`]).
    last_seen: HashMap<Partition, i64>,
    last_expiry: Instant,
    /// Cancelled at shutdown: waits for the registry give up.
    stop: CancellationToken,
    deploys: Arc<GroupDeploys>,
}

/// What to make of a partition's next message coming after the expected offset.
#[derive(Debug, PartialEq, Eq)]
enum Resume {
    /// The offsets between hold no message (compacted away, transaction markers): the
    /// message before them was delivered, then this one.
    Gap,
    /// The log starts after the expected offset: retention deleted what was between.
    Retention,
    /// Neither is known: the broker may have skipped messages (some answer a fetch from the
    /// middle of a record batch with the next batch); read again from earlier.
    ReadEarlier,
}

/// Expecting offset `next`, the consumer delivered `got` (> `next`). `before` is the last
/// offset below `next` delivered since the partition was positioned, if any: delivery is in
/// order, so nothing lies between it and `got`. `log_start` is the broker's first offset.
fn resume(next: i64, got: i64, before: Option<i64>, log_start: Option<i64>) -> Resume {
    debug_assert!(got > next);
    if before.is_some_and(|b| b < next) {
        Resume::Gap
    } else if log_start.is_some_and(|start| start > next && start <= got) {
        Resume::Retention
    } else {
        Resume::ReadEarlier
    }
}

/// How long shutdown waits for workers to finish their batches, and to leave the group.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Shows partitions waiting for the schema registry or for Postgres in `/readyz` and the
/// metrics.
struct Waits {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl DecodeEvents for Waits {
    fn waiting(&self, topic: &str, partition: i32, why: Option<&str>) {
        self.health.set_waiting(topic, partition, why);
        self.metrics
            .waiting_for_registry(topic, partition, why.is_some());
    }
}

impl SinkEvents for Waits {
    fn paused(&self, topic: &str, partition: i32, why: Option<&str>) {
        self.health.set_paused(topic, partition, why);
        self.metrics.paused(topic, partition, why.is_some());
    }
}

impl Runner {
    /// Connects to every dependency, checks every table, and joins the consumer group.
    /// Anything unreachable or wrong is refused here, before a single message is
    /// consumed. `guests` holds every pipeline's guest (see [`load_guests`]).
    pub async fn start(
        config: &Config,
        guests: &Arc<GuestSet>,
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
                scope: Arc::new(PipelineScope {
                    pipeline: p.name.clone(),
                    tables: p.tables.iter().cloned().collect(),
                }),
                state: p.state,
                lookups: Arc::new(LookupSet {
                    pipeline: p.name.clone(),
                    queries: p.lookups.clone(),
                }),
                topics_out: p.topics_out.clone(),
                outbox_max_pending: p.outbox_max_pending,
                barrier: None,
                breaker: Arc::new(breaker::Breaker::new(p.breaker.clone())),
            });
        }

        check_registry(&config.registry.url).await?;
        let kafka = config.kafka.clients();
        check_kafka(&kafka, &config.pipelines).await?;

        if let Some(dir) = &config.database.migrations {
            let report = crate::sink::migrate(&config.database.url, dir)
                .await
                .with_context(|| format!("applying migrations in {}", dir.display()))?;
            tracing::info!(?report, "Migrations up to date");
        }
        let sink_config = SinkConfig {
            database_url: config.database.url.clone(),
            group_id: config.kafka.group_id.clone(),
        };
        let sink = Sink::connect(sink_config.clone()).await?;
        let registry = Arc::new(RegistryClient::with_auth(
            &config.registry.url,
            &config.registry.auth(),
        )?);
        let registry_client = registry.clone();
        let mut expectations = Vec::new();
        for p in &config.pipelines {
            expectations.extend(table_expectations(p, &registry, config.decode.limits()).await?);
        }
        sink.check_tables(&expectations).await?;
        for route in &routes {
            if !route.lookups.is_empty() {
                sink.check_lookups(&route.lookups).await?;
            }
        }
        health.set_connected(true);

        let mut source = KafkaSource::new(&SourceConfig {
            kafka: kafka.clone(),
            group_id: config.kafka.group_id.clone(),
            topics: by_topic.keys().cloned().collect(),
            batch_size: 500,
            linger: Duration::from_millis(100),
            start: StartFrom::Earliest,
            properties: Vec::new(),
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
        // Every guest at the group's live version before a batch is served.
        let deploys = GroupDeploys::start(
            &config.database.url,
            &config.kafka.group_id,
            membership.id(),
            session,
            guests.clone(),
        )
        .await?;
        for route in &mut routes {
            let name = route.guest.current().id().name.clone();
            if deploys.manages(&name) {
                route.barrier = Some(name);
            }
        }
        let mut topics: Vec<String> = by_topic.keys().cloned().collect();
        topics.sort();
        for p in &config.pipelines {
            for t in &p.topics {
                source.set_topic_batching(t, p.batch_size, p.linger);
            }
        }
        let stop = CancellationToken::new();
        deploys.follow(stop.clone());
        let waits = Arc::new(Waits {
            health: health.clone(),
            metrics: metrics.clone(),
        });
        let mut decoder = Decoder::new(registry)
            .with_limits(config.decode.limits(), config.decode.max_batch_bytes)
            .with_stop(stop.clone())
            .with_events(waits.clone());
        for p in &config.pipelines {
            for t in &p.topics {
                decoder = decoder.with_strategy(t, p.subjects.clone());
            }
        }
        // What guests emit: their destinations' partitions and schemas, and the relay.
        let emitted: BTreeMap<String, String> = config
            .pipelines
            .iter()
            .flat_map(|p| p.topics_out.clone())
            .collect();
        let destinations = Arc::new(Destinations::default());
        let relay = if emitted.is_empty() {
            None
        } else {
            create_topics_out(&kafka, &config.pipelines).await?;
            destinations
                .refresh(&kafka, &registry_client, &emitted)
                .await;
            tokio::spawn(refresh_destinations(
                destinations.clone(),
                kafka.clone(),
                registry_client.clone(),
                emitted,
                stop.clone(),
            ));
            Some(Arc::new(Relay::new(
                RelayConfig {
                    kafka: kafka.clone(),
                    group: config.kafka.group_id.clone(),
                    database_url: config.database.url.clone(),
                },
                metrics.clone(),
            )?))
        };
        let shared = Arc::new(Shared {
            routes,
            decoder,
            metrics: metrics.clone(),
            epochs: Mutex::new(HashMap::new()),
            destinations,
            relay,
            deploys: deploys.clone(),
            health: health.clone(),
            stop: stop.clone(),
        });
        let shadows =
            shadow::Shadows::start(shared.clone(), &config.database.url, &config.kafka.group_id)?;
        let (report_tx, reports) = mpsc::unbounded_channel();
        let mut workers = Vec::new();
        let mut worker_tasks = Vec::new();
        for _ in 0..config.workers.max(1) {
            // Batches queued behind the one in flight. Fetches come a partition at a time,
            // so a worker's queue must hold a burst of its partitions while the reader
            // moves on to the next partition's (and the next worker's) messages.
            let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
            let worker = Worker {
                shared: shared.clone(),
                shadows: shadows.clone(),
                sink: Arc::new(
                    Sink::connect(sink_config.clone())
                        .await?
                        .with_events(waits.clone()),
                ),
                lookup: Sink::connect(sink_config.clone())
                    .await?
                    .with_events(waits.clone()),
                reports: report_tx.clone(),
                states: HashMap::new(),
            };
            workers.push(tx);
            worker_tasks.push(tokio::spawn(worker.run(rx)));
        }
        tracing::info!(workers = workers.len(), "Partition workers started");
        Ok(Self {
            by_topic,
            source,
            shared,
            sink,
            metrics,
            health,
            kafka,
            positions: HashMap::new(),
            dispatched: HashMap::new(),
            epochs: HashMap::new(),
            lanes: HashMap::new(),
            next_lane: 0,
            workers,
            worker_tasks,
            reports,
            lag_client: None,
            last_lag: Instant::now(),
            membership,
            session,
            last_heartbeat: None,
            topics,
            partitions: Vec::new(),
            last_discovery: None,
            reread: HashMap::new(),
            unverified: HashMap::new(),
            last_seen: HashMap::new(),
            last_expiry: Instant::now(),
            stop,
            deploys,
        })
    }

    /// How guest versions reach this process and the rest of its group.
    pub fn deploys(&self) -> Arc<GroupDeploys> {
        self.deploys.clone()
    }

    /// Consumes until `shutdown` resolves; the batches handed out are finished first, except
    /// those still waiting for a dependency after [`SHUTDOWN_GRACE`]: they are left
    /// uncommitted, to be read again.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let stop = self.stop.clone();
        // Shutdown is watched on its own, so that it is seen however the loop is waiting
        // (for a busy worker's queue, say).
        let result = tokio::select! {
            biased;
            _ = async {
                shutdown.await;
                stop.cancel();
            } => Ok(()),
            result = self.consume() => result,
        };
        self.stop.cancel();
        tracing::info!("Shutting down: the batches handed out are committed; leaving the group");
        self.workers.clear();
        let workers = futures::future::join_all(std::mem::take(&mut self.worker_tasks));
        if tokio::time::timeout(SHUTDOWN_GRACE, workers).await.is_err() {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "Workers still busy (waiting for Postgres?) after the shutdown grace; their batches are left uncommitted, to be read again");
        }
        while let Ok(report) = self.reports.try_recv() {
            if let Err(e) = self.on_report(report) {
                tracing::warn!(error = %e, "A worker failed while shutting down");
            }
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, self.membership.leave())
            .await
            .is_err()
        {
            tracing::warn!("Could not leave the group in time; its leases lapse by themselves");
        }
        if let Some(relay) = &self.shared.relay {
            tokio::task::block_in_place(|| relay.close(SHUTDOWN_GRACE));
        }
        tokio::task::block_in_place(|| self.source.close(SHUTDOWN_GRACE));
        result
    }

    /// The consuming loop: runs until an error, or for ever.
    async fn consume(&mut self) -> anyhow::Result<()> {
        loop {
            self.rebalance().await?;
            tokio::select! {
                biased;
                Some(report) = self.reports.recv() => self.on_report(report)?,
                next = tokio::time::timeout(self.session / 4, self.source.next_batch()) => {
                    if let Ok(batch) = next {
                        let batch = batch?;
                        if self
                            .source
                            .assigned()
                            .contains(&(batch.topic.clone(), batch.partition))
                        {
                            self.dispatch(batch).await?;
                        }
                    }
                }
            }
            self.check_silent()?;
            if self.last_lag.elapsed() >= LAG_INTERVAL {
                self.measure_lag().await;
            }
            if self.last_expiry.elapsed() >= EXPIRY_INTERVAL {
                self.expire_dedup_keys().await;
            }
        }
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
            match discover(&self.kafka, &self.topics).await {
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
                self.dispatched.remove(p);
                self.unverified.remove(p);
                self.reread.remove(p);
                self.last_seen.remove(p);
                self.new_epoch(p);
                if let Some(relay) = &self.shared.relay {
                    relay.revoke(p);
                }
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
            let p = (topic.clone(), *partition);
            self.positions.insert(p.clone(), stored);
            self.dispatched.insert(p.clone(), stored);
            self.positioned(&p, stored);
            self.new_epoch(&p);
            if let (Some(relay), Some(route)) = (&self.shared.relay, self.by_topic.get(topic)) {
                let route = &self.shared.routes[*route];
                if !route.topics_out.is_empty() {
                    relay.assign(p.clone(), route.outbox_max_pending);
                }
            }
            gained.push((topic.clone(), *partition, stored));
        }
        if !gained.is_empty() {
            self.source.assign(&gained)?;
        }
        self.health.set_assigned(!self.source.assigned().is_empty());
        Ok(())
    }

    /// Starts a new epoch for `partition`: jobs handed out before are skipped.
    fn new_epoch(&mut self, partition: &Partition) -> u64 {
        let epoch = self.epochs.entry(partition.clone()).or_default();
        *epoch += 1;
        let epoch = *epoch;
        self.shared
            .epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition.clone(), epoch);
        epoch
    }

    /// Lines the batch up with what was committed or handed out before it, and hands it
    /// to the partition's worker (waiting while that worker is busy with two).
    async fn dispatch(&mut self, mut batch: RawBatch) -> anyhow::Result<()> {
        let key = (batch.topic.clone(), batch.partition);
        let next = match self.dispatched.get(&key) {
            Some(next) => *next,
            None => {
                let stored = self.sink.stored_offset(&key.0, key.1).await?;
                self.positions.insert(key.clone(), stored);
                self.dispatched.insert(key.clone(), stored);
                stored
            }
        };
        if let Some(next) = next {
            let last = batch.messages.last().map(|m| m.offset);
            // Messages come in offset order: those before the expected one are a prefix.
            let earlier = batch.messages.partition_point(|m| m.offset < next);
            // The last message delivered before the expected one, this batch or earlier.
            let before = earlier
                .checked_sub(1)
                .map(|i| batch.messages[i].offset)
                .or_else(|| self.last_seen.get(&key).copied().filter(|&o| o < next));
            if let Some(last) = last {
                self.last_seen.insert(key.clone(), last);
            }
            batch.messages.drain(..earlier);
            match batch.messages.first() {
                None => {
                    if last == Some(next - 1) {
                        // The message before the expected one, and nothing after it: the
                        // partition ends there.
                        self.unverified.remove(&key);
                    } else if let Some(since) = self.unverified.get_mut(&key) {
                        // Still reading up to it.
                        *since = Instant::now();
                    }
                    return Ok(());
                }
                Some(first) if first.offset > next => {
                    let got = first.offset;
                    let log_start = if before.is_some() {
                        None
                    } else {
                        Some(self.log_start(&key).await)
                    };
                    match resume(next, got, before, log_start) {
                        Resume::Gap => {
                            tracing::debug!(topic = %key.0, partition = key.1, expected = next,
                                got, "No messages at the offsets before this one; going on");
                            batch.from = Some(next);
                        }
                        Resume::Retention => {
                            tracing::warn!(
                                topic = %key.0,
                                partition = key.1,
                                expected = next,
                                got,
                                "The partition's log now starts past the stored offset: \
                                 retention deleted messages before weir read them; going on \
                                 from the log's start"
                            );
                            batch.from = Some(next);
                        }
                        Resume::ReadEarlier => {
                            // Some brokers answer a fetch from the middle of a record batch
                            // with the next batch, so read again from further back (the
                            // part already handed out is trimmed above), further each time.
                            let from = self.read_earlier(&key, next)?;
                            tracing::warn!(
                                topic = %key.0,
                                partition = key.1,
                                expected = next,
                                got,
                                from,
                                "Fetch resumed past the expected offset; reading again from earlier"
                            );
                            return Ok(());
                        }
                    }
                }
                Some(_) => {}
            }
            self.reread.remove(&key);
            self.unverified.remove(&key);
        }
        let Some(&route) = self.by_topic.get(&key.0) else {
            anyhow::bail!(
                "received a message of topic {}, which no pipeline routes",
                key.0
            );
        };
        if !self.epochs.contains_key(&key) {
            self.new_epoch(&key);
        }
        let epoch = self.epochs[&key];
        let lane = match self.lanes.get(&key) {
            Some(lane) => *lane,
            None => {
                let lane = self.next_lane % self.workers.len();
                self.next_lane += 1;
                self.lanes.insert(key.clone(), lane);
                lane
            }
        };
        self.dispatched
            .insert(key, Some(batch.next_offset().expect("non-empty batch")));
        let job = Job {
            batch,
            route,
            epoch,
        };
        let sent = match self.workers[lane].try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => {
                let sent = self.workers[lane].send(job).await.map_err(|_| ());
                // Nothing was read while waiting: that is no silence of the partitions.
                let now = Instant::now();
                self.unverified.values_mut().for_each(|t| *t = now);
                sent
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        };
        if sent.is_err() {
            // The worker stopped: its report says why.
            while let Some(report) = self.reports.recv().await {
                self.on_report(report)?;
            }
            anyhow::bail!("partition worker {lane} stopped");
        }
        Ok(())
    }

    /// Follows up a worker's report.
    fn on_report(&mut self, report: Report) -> anyhow::Result<()> {
        match report {
            Report::Committed {
                partition,
                next_offset,
            } => {
                if self.positions.contains_key(&partition) {
                    self.positions.insert(partition.clone(), Some(next_offset));
                }
                self.source
                    .store_offset(&partition.0, partition.1, next_offset);
            }
            Report::Stale {
                partition,
                stored,
                epoch,
            } => {
                if self.epochs.get(&partition) != Some(&epoch) {
                    return Ok(());
                }
                tracing::warn!(
                    topic = %partition.0,
                    partition = partition.1,
                    ?stored,
                    "Partition committed by another consumer; re-reading from the stored offset"
                );
                self.reread(partition, stored);
            }
            Report::Superseded {
                partition,
                from,
                epoch,
            } => {
                if self.epochs.get(&partition) != Some(&epoch) {
                    return Ok(());
                }
                tracing::info!(
                    topic = %partition.0,
                    partition = partition.1,
                    from,
                    "The group switched the partition's guest version; re-reading with the new version"
                );
                self.reread(partition, Some(from));
            }
            Report::Failed(e) => return Err(e),
        }
        Ok(())
    }

    /// Drops what is queued or in flight for `partition` and reads it again from `stored`.
    fn reread(&mut self, partition: Partition, stored: Option<i64>) {
        self.new_epoch(&partition);
        self.positions.insert(partition.clone(), stored);
        self.dispatched.insert(partition.clone(), stored);
        self.reread.remove(&partition);
        self.positioned(&partition, stored);
        if let Some(offset) = stored {
            // Harmless if the partition is no longer ours.
            let _ = self.source.seek(&partition.0, partition.1, offset);
        }
    }

    /// Notes where a partition was positioned: past its first offset, the broker has yet
    /// to be seen serving it.
    fn positioned(&mut self, partition: &Partition, at: Option<i64>) {
        self.last_seen.remove(partition);
        if at.is_some_and(|o| o > 0) {
            self.unverified.insert(partition.clone(), Instant::now());
        } else {
            self.unverified.remove(partition);
        }
    }

    /// The client watermarks are read with (lag, log starts), made on first use.
    fn lag_client(&mut self) -> Option<Arc<BaseConsumer>> {
        if self.lag_client.is_none() {
            match self.kafka.client_config().create() {
                Ok(c) => self.lag_client = Some(Arc::new(c)),
                Err(e) => {
                    tracing::debug!(error = %e, "Cannot create the client reading watermarks");
                    return None;
                }
            }
        }
        self.lag_client.clone()
    }

    /// The first offset the broker still holds of `key` (its low watermark), or 0 when it
    /// cannot say.
    async fn log_start(&mut self, key: &Partition) -> i64 {
        let Some(client) = self.lag_client() else {
            return 0;
        };
        let (topic, partition) = key.clone();
        tokio::task::spawn_blocking(move || {
            rdkafka::consumer::Consumer::fetch_watermarks(
                &*client,
                &topic,
                partition,
                Duration::from_secs(5),
            )
            .map_or(0, |(low, _)| low)
        })
        .await
        .unwrap_or(0)
    }

    /// Moves a partition's reading to further before `next` than its last re-read (512
    /// offsets, then four times as far each time, down to the beginning); the part before
    /// `next` is trimmed when it arrives. Where it reads from.
    fn read_earlier(&mut self, key: &Partition, next: i64) -> anyhow::Result<i64> {
        let back = self.reread.get(key).map_or(512, |b| b.saturating_mul(4));
        self.reread.insert(key.clone(), back);
        let from = (next - back).max(0);
        self.source.seek(&key.0, key.1, from)?;
        if let Some(since) = self.unverified.get_mut(key) {
            *since = Instant::now();
        }
        self.last_seen.remove(key);
        Ok(from)
    }

    /// Reads again from earlier each partition that got nothing for [`SILENCE`] after it
    /// was positioned. A broker that answers a fetch from the middle of a partition's last
    /// record batch with nothing (tansu) would otherwise hold the partition there until
    /// more is produced to it; at the true end, the re-read ends just before the expected
    /// offset, and the partition waits for new messages as before.
    fn check_silent(&mut self) -> anyhow::Result<()> {
        let silent: Vec<Partition> = self
            .unverified
            .iter()
            .filter(|(p, since)| since.elapsed() >= SILENCE && !self.source.holds(&p.0, p.1))
            .map(|(p, _)| p.clone())
            .collect();
        for key in silent {
            let Some(Some(next)) = self.dispatched.get(&key).copied() else {
                self.unverified.remove(&key);
                continue;
            };
            if self.reread.get(&key).is_some_and(|b| next - b <= 0) {
                // Already read from the beginning: nothing before was held back.
                self.unverified.remove(&key);
                continue;
            }
            let from = self.read_earlier(&key, next)?;
            tracing::debug!(
                topic = %key.0,
                partition = key.1,
                expected = next,
                from,
                "Nothing arrived from the expected offset; reading again from earlier"
            );
        }
        Ok(())
    }

    /// Forgets deduplication keys older than each pipeline's retention.
    async fn expire_dedup_keys(&mut self) {
        self.last_expiry = Instant::now();
        for route in &self.shared.routes {
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
        let Some(client) = self.lag_client() else {
            return;
        };
        let metrics = self.metrics.clone();
        // Watermarks are a network round trip: off the async threads.
        let marks = tokio::task::spawn_blocking(move || {
            let mut marks = Vec::new();
            for ((topic, partition), position) in parts {
                if let Ok((low, high)) = rdkafka::consumer::Consumer::fetch_watermarks(
                    &*client,
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

/// Compiles and checks every pipeline's guest (once per guest name). Slow, and needs no
/// network: do it first.
pub fn load_guests(config: &Config, runtime: Arc<Runtime>) -> anyhow::Result<GuestSet> {
    let mut guests = GuestSet::new(runtime);
    for p in &config.pipelines {
        let slot = guests
            .add(&p.name, &p.topics, &p.guest, p.limits, guest_config(p))
            .with_context(|| format!("pipeline {}", p.name))?;
        let id = slot.current().id().clone();
        tracing::info!(pipeline = %p.name, guest = %id.name, version = %id.short_version, "Loaded guest");
    }
    Ok(guests)
}

/// A pipeline's `config:` as the guest takes it.
pub fn guest_config(pipeline: &PipelineConfig) -> Vec<ConfigEntry> {
    pipeline
        .guest_config
        .iter()
        .map(|(k, v)| ConfigEntry {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

/// What `weir run` expects of a pipeline's tables: that they exist and, with
/// `columns: schema`, a compatible column for every field of its topics' value schemas.
async fn table_expectations(
    pipeline: &PipelineConfig,
    registry: &RegistryClient,
    limits: DecodeLimits,
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
            let kinds = AvroDecoder::new(&latest.schema, limits)
                .and_then(|d| d.field_kinds())
                .map_err(|e| {
                    anyhow::anyhow!(
                        "pipeline {} has `columns: schema`, but the latest schema of {subject} (id {}) cannot be checked against its tables: {e}; use `columns: exist`",
                        pipeline.name,
                        latest.id
                    )
                })?;
            for field in kinds {
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

/// Creates the `topics_out:` topics that do not exist yet, as Kafka's topic auto-creation
/// and Quix Streams do, each with as many partitions as its pipeline's first input topic.
async fn create_topics_out(kafka: &Kafka, pipelines: &[PipelineConfig]) -> anyhow::Result<()> {
    let inputs: Vec<String> = pipelines
        .iter()
        .filter_map(|p| p.topics.first().cloned())
        .collect();
    let existing = discover(kafka, &inputs).await?;
    for p in pipelines.iter().filter(|p| !p.topics_out.is_empty()) {
        let partitions = existing
            .iter()
            .filter(|(t, _)| Some(t) == p.topics.first())
            .count()
            .max(1) as i32;
        let topics: Vec<String> = p.topics_out.keys().cloned().collect();
        crate::source::kafka::ensure_topics(kafka, &topics, partitions)
            .await
            .with_context(|| format!("creating the topics_out of pipeline {}", p.name))?;
    }
    Ok(())
}

/// Reads the destinations of emits again every [`REFRESH_INTERVAL`], until `stop`.
async fn refresh_destinations(
    destinations: Arc<Destinations>,
    kafka: Kafka,
    registry: Arc<RegistryClient>,
    topics: BTreeMap<String, String>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REFRESH_INTERVAL) => {}
        }
        destinations.refresh(&kafka, &registry, &topics).await;
    }
}

/// The partitions of `topics`, per the brokers' metadata.
async fn discover(kafka: &Kafka, topics: &[String]) -> anyhow::Result<Vec<Partition>> {
    let kafka = kafka.clone();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let client: rdkafka::consumer::BaseConsumer = kafka.client_config().create()?;
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

async fn check_kafka(kafka: &Kafka, pipelines: &[PipelineConfig]) -> anyhow::Result<()> {
    let kafka = kafka.clone();
    let brokers = kafka.brokers.clone();
    let topics: Vec<String> = pipelines.iter().flat_map(|p| p.topics.clone()).collect();
    tokio::task::spawn_blocking(move || {
        let client: rdkafka::consumer::BaseConsumer<LastError> = kafka
            .client_config()
            .create_with_context(LastError::default())
            .map_err(|e| anyhow::anyhow!("Kafka brokers {brokers} (kafka.brokers): {e}"))?;
        let metadata = client
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(|e| {
                // The failure's cause arrives as an error event: serve it.
                let _ = client.poll(Duration::from_millis(100));
                let why = client
                    .context()
                    .last()
                    .map(|why| format!(" ({why})"))
                    .unwrap_or_default();
                anyhow::anyhow!("Kafka brokers {brokers} (kafka.brokers) are unreachable: {e}{why}")
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

#[cfg(test)]
mod tests {
    use super::{Resume, resume};

    #[test]
    fn a_message_past_the_expected_offset_is_a_gap_retention_or_a_reason_to_read_again() {
        // The message before the expected offset came, then one past it: a gap.
        assert_eq!(resume(10, 12, Some(9), None), Resume::Gap);
        assert_eq!(resume(10, 40, Some(7), Some(0)), Resume::Gap);
        // Nothing before it, and the log starts past the expected offset: retention.
        assert_eq!(resume(10, 25, None, Some(25)), Resume::Retention);
        assert_eq!(resume(10, 30, None, Some(25)), Resume::Retention);
        // Nothing before it and the log holds the expected offset: the broker skipped.
        assert_eq!(resume(10, 25, None, Some(0)), Resume::ReadEarlier);
        assert_eq!(resume(10, 25, None, Some(10)), Resume::ReadEarlier);
        assert_eq!(resume(10, 25, None, None), Resume::ReadEarlier);
    }
}
