//! A partition worker: decode, deduplicate, guest, and one Postgres transaction per batch
//! (rows, state writes and the partition's next offset together), on its own connection.
//!
//! The runner gives each partition to one worker, so a partition's batches commit in
//! order; partitions on different workers run at once. A stateless guest's next batch is
//! decoded and run while the one before it commits. A guest that keeps state or runs
//! lookups runs inside its batch's transaction instead ([`Sink::run_batch`]), after the
//! batch before it committed: it reads the state that batch left, and its lookups read the
//! transaction's snapshot.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Route;
use super::breaker::{Breaker, Trip};
use super::deploys::GroupDeploys;
use super::shadow::{ShadowJob, Shadows};
use crate::metrics::{Health, Metrics};
use crate::model::{
    Batch, Lookups, Outcome, Output, Partition, Record, Stage, StateTxn, Value, batch_of,
};
use crate::registry::RegistryClient;
use crate::relay::{Destinations, Emitter, Lane, Relay};
use crate::runtime::{CallContext, Contract, Guest};
use crate::sink::{
    DedupKeys, GuestCheck, RunBatch, Sink, SinkBatch, SinkError, SinkItem, StateSlot, WriteReport,
};
use crate::source::{Decoded, Decoder, RawBatch, RawMessage, Shape};

/// What the workers share.
pub(super) struct Shared {
    pub routes: Vec<Route>,
    pub decoder: Decoder<RegistryClient>,
    pub metrics: Arc<Metrics>,
    /// Each partition's current epoch: a job of an earlier one (queued before the
    /// partition was lost, or re-positioned) is skipped.
    pub epochs: Mutex<HashMap<Partition, u64>>,
    /// The topics guests emit to.
    pub destinations: Arc<Destinations>,
    /// Produces what guests emit, when any pipeline may.
    pub relay: Option<Arc<Relay>>,
    /// The group's guest deploys.
    pub deploys: Arc<GroupDeploys>,
    /// Where partitions paused by their guest's breaker show.
    pub health: Arc<Health>,
    /// Cancelled at shutdown: a wait for a breaker ends.
    pub stop: CancellationToken,
}

impl Shared {
    fn current(&self, partition: &Partition, epoch: u64) -> bool {
        self.epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(partition)
            .is_some_and(|e| *e == epoch)
    }
}

/// One batch for a worker.
pub(super) struct Job {
    pub batch: RawBatch,
    pub route: usize,
    pub epoch: u64,
}

/// What a worker tells the runner.
pub(super) enum Report {
    /// The batch committed; the partition goes on from `next_offset`.
    Committed {
        partition: Partition,
        next_offset: i64,
    },
    /// Postgres holds another offset for the partition (another member committed it):
    /// re-read from `stored`.
    Stale {
        partition: Partition,
        stored: Option<i64>,
        epoch: u64,
    },
    /// The batch from `from` ran with a guest version the group has since replaced, and
    /// the live one now runs here: re-read from `from`.
    Superseded {
        partition: Partition,
        from: i64,
        epoch: u64,
    },
    /// Something the worker cannot go on from; `weir run` stops.
    Failed(anyhow::Error),
}

/// A worker and its own sink connections.
pub(super) struct Worker {
    pub shared: Arc<Shared>,
    /// Runs shadow candidates on copies of the batches.
    pub shadows: Arc<Shadows>,
    /// Writes batches, one at a time, in a task of their own.
    pub sink: Arc<Sink>,
    /// Looks up deduplication keys while a write is in flight on `sink`.
    pub lookup: Sink,
    pub reports: mpsc::UnboundedSender<Report>,
    /// Each pipeline's state of the partitions this worker ran, with the epoch it is of.
    pub states: HashMap<(usize, Partition), (u64, StateSlot)>,
}

/// A batch decoded and through its guest, ready to write.
struct Prepared {
    job: Job,
    started: Instant,
    sink_batch: Arc<SinkBatch>,
    duplicates: usize,
}

/// What [`Worker::prepare`] made of a job.
enum Prepare {
    /// Ready to write, with the part of the job past the decode budget, if any.
    Ready(Prepared, Option<Job>),
    /// The guest's breaker tripped: the whole job is to be read again.
    Again(Job),
    /// Shutting down stopped decoding.
    Stopped,
}

impl Job {
    /// This job with `rest`, the part split off it, joined back.
    fn rejoin(mut self, rest: Option<Job>) -> Job {
        if let Some(rest) = rest {
            self.batch.messages.extend(rest.batch.messages);
        }
        self
    }
}

/// A batch decoded, before its guest.
struct Decoding {
    records: Vec<Decoded>,
    /// The rest of the job, past the decode budget.
    rest: Option<Job>,
}

type Write = tokio::task::JoinHandle<Result<WriteReport, SinkError>>;

/// How decoded values are shaped for `guest`.
fn shape(guest: &Guest) -> Shape {
    match guest.contract() {
        Contract::V1 => Shape::Fields,
        Contract::V2 => Shape::Values,
    }
}

impl Worker {
    /// Processes jobs until the runner drops the sender. A batch whose decoded messages
    /// pass the decode budget is written in parts, the rest going next; a batch whose
    /// guest breaker tripped is read again, first.
    pub async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut writing: Option<(Write, Prepared)> = None;
        // Jobs before the next one received, in order.
        let mut pending: VecDeque<Job> = VecDeque::new();
        loop {
            let job = match (pending.pop_front(), writing.as_mut()) {
                (Some(job), _) => Some(job),
                (None, Some((write, _))) => tokio::select! {
                    result = write => {
                        let (_, prepared) = writing.take().expect("a write in flight");
                        match self.finish(result, prepared).await {
                            Ok(again) => pending.extend(again),
                            Err(()) => return,
                        }
                        continue;
                    }
                    job = jobs.recv() => job,
                },
                (None, None) => jobs.recv().await,
            };
            let Some(job) = job else { break };
            // While the pipeline's guest breaker is open, its partitions wait.
            if !self.breaker_closed(&job).await {
                break;
            }
            let partition = (job.batch.topic.clone(), job.batch.partition);
            if !self.shared.current(&partition, job.epoch) {
                continue;
            }
            // A full outbox pauses the partition until the relay catches up.
            if let Some(lane) = self.lane(job.route, &partition)
                && lane.full()
            {
                tracing::info!(topic = %partition.0, partition = partition.1, "The outbox is full; pausing the partition until the relay catches up");
                lane.room().await;
            }
            // One version for the whole batch: a swap lands at the next batch.
            let guest = self.shared.routes[job.route].guest.current();
            if guest.uses_state() || guest.uses_lookups() {
                // The batch before must commit first: this one reads what it left.
                if let Some((write, previous)) = writing.take() {
                    match self.finish(write.await, previous).await {
                        Err(()) => return,
                        Ok(Some(again)) => {
                            pending.push_front(job);
                            pending.push_front(again);
                            continue;
                        }
                        Ok(None) => {}
                    }
                }
                match self.transact(job, &guest).await {
                    Ok(Some(next)) => {
                        if let Some(next) = next {
                            pending.push_front(next);
                        }
                    }
                    Ok(None) => break,
                    Err(()) => return,
                }
                continue;
            }
            let in_flight = writing
                .as_ref()
                .and_then(|(_, p)| p.sink_batch.dedup.as_ref());
            let (prepared, more) = match self.prepare(job, &guest, in_flight).await {
                Ok(Prepare::Ready(p, more)) => (p, more),
                // Read again, after the batch in flight.
                Ok(Prepare::Again(job)) => {
                    pending.push_front(job);
                    if let Some((write, previous)) = writing.take() {
                        match self.finish(write.await, previous).await {
                            Err(()) => return,
                            Ok(again) => {
                                if let Some(again) = again {
                                    pending.push_front(again);
                                }
                            }
                        }
                    }
                    continue;
                }
                // Shutting down while the registry is awaited: the batch is left
                // uncommitted, to be read again.
                Ok(Prepare::Stopped) => break,
                Err(e) => {
                    let _ = self.reports.send(Report::Failed(e));
                    return;
                }
            };
            if let Some(more) = more {
                pending.push_front(more);
            }
            if let Some((write, previous)) = writing.take() {
                match self.finish(write.await, previous).await {
                    Err(()) => return,
                    // The batch before is read again, and this one after it.
                    Ok(Some(again)) => {
                        pending.push_front(prepared.job);
                        pending.push_front(again);
                        continue;
                    }
                    Ok(None) => {}
                }
            }
            writing = Some((self.write(&prepared), prepared));
        }
        if let Some((write, previous)) = writing.take() {
            let _ = self.finish(write.await, previous).await;
        }
    }

    /// Waits while the guest breaker of `job`'s pipeline is open, the partition shown
    /// paused. False when shutting down.
    async fn breaker_closed(&self, job: &Job) -> bool {
        let route = &self.shared.routes[job.route];
        let (topic, partition) = (&job.batch.topic, job.batch.partition);
        let mut paused = false;
        while let Some((left, why)) = route.breaker.wait() {
            if !paused {
                let why = format!("pipeline {}: {why}", route.name);
                self.shared
                    .health
                    .set_breaker_open(topic, partition, Some(&why));
                paused = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(left) => {}
                _ = self.shared.stop.cancelled() => return false,
            }
        }
        if paused {
            self.shared.metrics.breaker_open(&route.name, false);
            self.shared.health.set_breaker_open(topic, partition, None);
        }
        true
    }

    /// After `guest`'s breaker in pipeline `route` tripped: a version swapped in that never
    /// ran a healthy window is rolled back for the group; otherwise the pipeline pauses.
    async fn tripped(&self, route: usize, guest: &Guest, trip: Trip) {
        let route = &self.shared.routes[route];
        let name = guest.id().name.clone();
        let metrics = &self.shared.metrics;
        // Replaced meanwhile (rolled back by another worker): the batch runs again with
        // the version now in use.
        if route.guest.current().id().version != trip.version {
            return;
        }
        if !trip.established && route.guest.previous_version().is_some() {
            if route.breaker.rolling_back(&trip.version) {
                return;
            }
            if route.breaker.start_rollback(&trip) {
                let origin = format!("the guest breaker of pipeline {}: {trip}", route.name);
                let deploys = self.shared.deploys.clone();
                let guest = name.clone();
                let rolled = tokio::task::spawn_blocking(move || {
                    crate::runtime::Deployer::rollback(&*deploys, &guest, &origin)
                })
                .await;
                let rolled = rolled
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                match rolled {
                    Ok(swapped) => {
                        route.breaker.rolled_back(Some(&swapped.new_version));
                        metrics.breaker_trip(&route.name, "rolled_back");
                        tracing::error!(pipeline = %route.name, guest = %name, version = %trip.version,
                            back_to = %swapped.new_version, failures = trip.failures, messages = trip.messages,
                            error = %trip.last_error,
                            "The guest breaker tripped: the version swapped in fails on most messages; rolled the group back to the version before it");
                        return;
                    }
                    Err(e) => {
                        route.breaker.rolled_back(None);
                        tracing::warn!(pipeline = %route.name, guest = %name, error = %e, "The guest breaker tripped and the rollback failed; pausing instead");
                    }
                }
            }
        }
        let pause = route.breaker.open(&trip);
        metrics.breaker_trip(&route.name, "paused");
        metrics.breaker_open(&route.name, true);
        tracing::error!(pipeline = %route.name, guest = %name, version = %trip.version,
            failures = trip.failures, messages = trip.messages, error = %trip.last_error, pause = ?pause,
            "The guest breaker tripped: the guest fails on most messages; pausing the pipeline instead of dead-lettering them");
    }

    /// The relay lane of a partition whose pipeline emits.
    fn lane(&self, route: usize, partition: &Partition) -> Option<Arc<Lane>> {
        if self.shared.routes[route].topics_out.is_empty() {
            return None;
        }
        self.shared.relay.as_ref()?.lane(partition)
    }

    fn write(&self, prepared: &Prepared) -> Write {
        let (sink, batch) = (self.sink.clone(), prepared.sink_batch.clone());
        tokio::spawn(async move { sink.write_batch(&batch).await })
    }

    /// Decodes as much of `job` as the decode budget takes, shaped for `guest`; the rest
    /// comes back as a job of its own. `None` when shutting down stopped decoding.
    async fn decode(&self, job: &mut Job, guest: &Guest) -> Option<Decoding> {
        let records = self
            .shared
            .decoder
            .decode_messages(
                &job.batch.topic,
                job.batch.partition,
                &job.batch.messages,
                shape(guest),
            )
            .await
            .ok()?;
        let rest = (records.len() < job.batch.messages.len()).then(|| Job {
            batch: RawBatch {
                topic: job.batch.topic.clone(),
                partition: job.batch.partition,
                // It starts where the part before ends, whatever offsets are missing.
                from: records
                    .len()
                    .checked_sub(1)
                    .map(|i| job.batch.messages[i].offset + 1),
                messages: job.batch.messages.split_off(records.len()),
            },
            route: job.route,
            epoch: job.epoch,
        });
        Some(Decoding { records, rest })
    }

    /// Decodes, deduplicates (keys of the batch still being written count as seen) and
    /// runs the guest. When the decoded messages pass the decode budget, only the first
    /// part of the batch is prepared and the rest comes back as a job of its own.
    async fn prepare(
        &self,
        mut job: Job,
        guest: &Guest,
        in_flight: Option<&DedupKeys>,
    ) -> anyhow::Result<Prepare> {
        let started = Instant::now();
        let route = &self.shared.routes[job.route];
        let Some(Decoding { records, rest }) = self.decode(&mut job, guest).await else {
            return Ok(Prepare::Stopped);
        };
        let (duplicates, dedup) = self.deduplicate(route, &records, in_flight).await?;
        // A shadow candidate gets a copy, when it has room for one.
        let shadow = route.guest.shadow().and_then(|candidate| {
            if self.shadows.has_room() {
                Some((candidate, records.clone()))
            } else {
                self.shadows.skip(&candidate);
                None
            }
        });
        let ran = run_guest(
            &self.shared,
            job.route,
            guest,
            &job.batch,
            records,
            &duplicates,
            CallContext::default(),
            Run::Live,
        );
        let (items, output, _) = match ran {
            Ok(ran) => ran,
            Err(trip) => {
                self.tripped(job.route, guest, trip).await;
                return Ok(Prepare::Again(job.rejoin(rest)));
            }
        };
        if let Some((candidate, decoded)) = shadow {
            self.shadows.submit(ShadowJob {
                route: job.route,
                candidate,
                batch: job.batch.clone(),
                decoded,
                duplicates: duplicates.clone(),
                live: items.clone(),
                live_targets: output.tables.clone(),
            });
        }
        let sink_batch = self.sink_batch(route, guest, &job.batch, items, output, dedup, None);
        Ok(Prepare::Ready(
            Prepared {
                job,
                started,
                sink_batch: Arc::new(sink_batch),
                duplicates: duplicates.len(),
            },
            rest,
        ))
    }

    /// The batch to write: the guest's output over the batch's items.
    #[allow(clippy::too_many_arguments)]
    fn sink_batch(
        &self,
        route: &Route,
        guest: &Guest,
        batch: &RawBatch,
        items: Vec<SinkItem>,
        output: Output,
        dedup: Option<DedupKeys>,
        state: Option<StateTxn>,
    ) -> SinkBatch {
        SinkBatch {
            topic: batch.topic.clone(),
            partition: batch.partition,
            start_offset: batch.start_offset(),
            next_offset: batch.next_offset().expect("non-empty batch"),
            guest_version: Some(guest.id().version.clone()),
            version_column: route.version_column.clone(),
            scope: route.scope.clone(),
            targets: output.tables,
            items,
            dedup,
            state: state.map(|s| s.writes()),
            barrier: route.barrier.clone(),
        }
    }

    /// Runs a batch whose guest keeps state or runs lookups, inside its transaction, and
    /// reports how it went. `Ok(Some(next))`: what to do next, if anything — the part of
    /// the job past the decode budget, or the whole job again when its guest's breaker
    /// tripped; `Ok(None)` when shutting down stopped decoding; `Err` when the worker must
    /// stop.
    async fn transact(&mut self, mut job: Job, guest: &Guest) -> Result<Option<Option<Job>>, ()> {
        let started = Instant::now();
        let shared = self.shared.clone();
        let route = &shared.routes[job.route];
        let Some(Decoding { records, rest }) = self.decode(&mut job, guest).await else {
            return Ok(None);
        };
        let partition = (job.batch.topic.clone(), job.batch.partition);
        // State held for partitions this worker no longer runs, or from an earlier epoch,
        // is stale: it is read again from Postgres.
        self.states
            .retain(|(_, p), (epoch, _)| shared.current(p, *epoch));
        let mut slot =
            guest.uses_state().then(
                || match self.states.remove(&(job.route, partition.clone())) {
                    Some((epoch, slot)) if epoch == job.epoch => slot,
                    _ => StateSlot {
                        pipeline: route.name.clone(),
                        held: None,
                    },
                },
            );
        let lookups = guest.uses_lookups().then_some(&route.lookups);
        loop {
            let (duplicates, dedup) = match self.deduplicate(route, &records, None).await {
                Ok(d) => d,
                Err(e) => {
                    let _ = self.reports.send(Report::Failed(e));
                    return Err(());
                }
            };
            let mut run = RunBatch {
                topic: &job.batch.topic,
                partition: job.batch.partition,
                start_offset: job.batch.start_offset(),
                next_offset: job.batch.next_offset().expect("non-empty batch"),
                state: slot.as_mut(),
                lookups,
                guest: route.barrier.clone().map(|name| GuestCheck {
                    name,
                    version: guest.id().version.clone(),
                }),
            };
            let mut trip = None;
            let made = self
                .sink
                .run_batch(&mut run, |store, lookups: Option<Arc<dyn Lookups>>| {
                    let context = CallContext {
                        state: store.map(|s| StateTxn::new(s, route.state)),
                        lookups,
                    };
                    let ran = run_guest(
                        &self.shared,
                        job.route,
                        guest,
                        &job.batch,
                        records.clone(),
                        &duplicates,
                        context,
                        Run::Live,
                    );
                    let (items, output, state) = ran.map_err(|t| {
                        let why = t.to_string();
                        trip = Some(t);
                        why
                    })?;
                    Ok(self.sink_batch(
                        route,
                        guest,
                        &job.batch,
                        items,
                        output,
                        dedup.clone(),
                        state,
                    ))
                })
                .await;
            let report = match made {
                Ok((report, batch)) => {
                    self.record(route, &batch, &report, duplicates.len(), started);
                    if let Some(slot) = slot.take() {
                        self.states
                            .insert((job.route, partition.clone()), (job.epoch, slot));
                    }
                    Report::Committed {
                        partition: partition.clone(),
                        next_offset: batch.next_offset,
                    }
                }
                Err(SinkError::SeenMeanwhile { .. }) => {
                    tracing::info!(
                        topic = %partition.0,
                        partition = partition.1,
                        "A deduplication key of this batch was committed by another batch meanwhile; redoing the batch"
                    );
                    continue;
                }
                Err(SinkError::Stale { stored, .. }) => Report::Stale {
                    partition: partition.clone(),
                    stored,
                    epoch: job.epoch,
                },
                Err(SinkError::Superseded {
                    guest,
                    start_offset,
                    ..
                }) => {
                    self.superseded(&guest, partition.clone(), start_offset, job.epoch)
                        .await
                }
                Err(SinkError::Aborted(why)) => {
                    let trip = trip.take().ok_or_else(|| {
                        let _ = self.reports.send(Report::Failed(anyhow::anyhow!(why)));
                    })?;
                    self.tripped(job.route, guest, trip).await;
                    return Ok(Some(Some(job.rejoin(rest))));
                }
                Err(e) => Report::Failed(e.into()),
            };
            let failed = matches!(report, Report::Failed(_));
            if self.reports.send(report).is_err() || failed {
                return Err(());
            }
            return Ok(Some(rest));
        }
    }

    /// Reports a write's result; a batch whose deduplication keys another batch committed
    /// meanwhile is prepared and written again. `Ok(Some(job))`: the batch is to be read
    /// again (its guest's breaker tripped when it was prepared again); `Err` when the
    /// worker must stop.
    async fn finish(
        &self,
        result: Result<Result<WriteReport, SinkError>, tokio::task::JoinError>,
        mut prepared: Prepared,
    ) -> Result<Option<Job>, ()> {
        let mut result = result
            .unwrap_or_else(|e| Err(SinkError::Database(format!("the write task failed: {e}"))));
        loop {
            let report = match result {
                Ok(report) => {
                    let route = &self.shared.routes[prepared.job.route];
                    let batch = &prepared.sink_batch;
                    self.record(route, batch, &report, prepared.duplicates, prepared.started);
                    Report::Committed {
                        partition: (batch.topic.clone(), batch.partition),
                        next_offset: batch.next_offset,
                    }
                }
                Err(SinkError::SeenMeanwhile { .. }) => {
                    let batch = &prepared.sink_batch;
                    tracing::info!(
                        topic = %batch.topic,
                        partition = batch.partition,
                        "A deduplication key of this batch was committed by another batch meanwhile; redoing the batch"
                    );
                    // The same messages again (they decoded within the budget before), with
                    // the guest version that made them.
                    let guest = self.shared.routes[prepared.job.route].guest.current();
                    prepared = match self.prepare(prepared.job, &guest, None).await {
                        Ok(Prepare::Ready(p, _)) => p,
                        Ok(Prepare::Again(job)) => return Ok(Some(job)),
                        Ok(Prepare::Stopped) => return Err(()),
                        Err(e) => {
                            let _ = self.reports.send(Report::Failed(e));
                            return Err(());
                        }
                    };
                    result = self.sink.write_batch(&prepared.sink_batch).await;
                    continue;
                }
                Err(SinkError::Stale { stored, .. }) => Report::Stale {
                    partition: (
                        prepared.job.batch.topic.clone(),
                        prepared.job.batch.partition,
                    ),
                    stored,
                    epoch: prepared.job.epoch,
                },
                Err(SinkError::Superseded {
                    guest,
                    start_offset,
                    ..
                }) => {
                    let partition = (
                        prepared.job.batch.topic.clone(),
                        prepared.job.batch.partition,
                    );
                    self.superseded(&guest, partition, start_offset, prepared.job.epoch)
                        .await
                }
                Err(e) => Report::Failed(e.into()),
            };
            let failed = matches!(report, Report::Failed(_));
            return if self.reports.send(report).is_ok() && !failed {
                Ok(None)
            } else {
                Err(())
            };
        }
    }

    /// A batch ran with a guest version the group replaced: the live version is brought in
    /// here, and the partition read again from the batch's start. A member that cannot
    /// run the live version stops rather than run an old one.
    async fn superseded(&self, guest: &str, partition: Partition, from: i64, epoch: u64) -> Report {
        match self.shared.deploys.catch_up(guest).await {
            Ok(()) => Report::Superseded {
                partition,
                from,
                epoch,
            },
            Err(e) => Report::Failed(e.context(format!(
                "guest {guest}: cannot run the group's live version; stopping rather than run another"
            ))),
        }
    }

    /// Counts a committed batch in the metrics.
    fn record(
        &self,
        route: &Route,
        batch: &SinkBatch,
        report: &WriteReport,
        duplicates: usize,
        started: Instant,
    ) {
        let metrics = &self.shared.metrics;
        metrics.records_in(&batch.topic, batch.items.len() as u64);
        for (table, n) in &report.rows {
            metrics.records_out(table, *n);
        }
        let mut by_stage: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, stage) in &report.dead_letters {
            *by_stage.entry(stage.as_str()).or_default() += 1;
        }
        for (stage, n) in by_stage {
            metrics.dead_letters(stage, n);
        }
        if duplicates > 0 {
            metrics.duplicates(&route.name, duplicates as u64);
        }
        let emitted: u64 = report.emitted.values().sum();
        for (topic, n) in &report.emitted {
            metrics.emitted(topic, *n);
        }
        if emitted > 0
            && let Some(relay) = &self.shared.relay
            && let Some(lane) = relay.lane(&(batch.topic.clone(), batch.partition))
        {
            lane.committed(emitted);
        }
        metrics.offset_committed(&batch.topic, batch.partition, batch.next_offset);
        metrics.batch_duration(&route.name, started.elapsed().as_secs_f64());
    }

    /// With `dedup:`, the offsets of messages whose key repeats one earlier in the batch or
    /// one already committed, and the keys of the others, to remember with the batch.
    async fn deduplicate(
        &self,
        route: &Route,
        decoded: &[Decoded],
        in_flight: Option<&DedupKeys>,
    ) -> anyhow::Result<(HashSet<i64>, Option<DedupKeys>)> {
        let mut duplicates = HashSet::new();
        let Some(dedup) = &route.dedup else {
            return Ok((duplicates, None));
        };
        // Keys of the batch being written count as seen: it commits first.
        let mut first: HashSet<String> = in_flight
            .filter(|k| k.scope == route.name)
            .map(|k| k.keys.iter().map(|(_, key)| key.clone()).collect())
            .unwrap_or_default();
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
        let seen = self.lookup.seen(&route.name, &lookup).await?;
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
}

/// Whose run a guest call is: the live version's (metered and logged as such) or a shadow
/// candidate's (its failures are differences, not dead letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Run {
    Live,
    Shadow,
}

/// Runs the guest over the decoded messages; messages that failed decoding, and any
/// message the guest fails on, become dead letters. A failed call is split in halves
/// until the message(s) at fault are isolated. Returns the items, the guest's output
/// (its targets; its outcomes are in the items) and the state handed in, with the
/// writes of the calls that succeeded — or, when the live version fails on so many
/// messages that the pipeline's breaker trips, why (nothing of the batch is to be
/// written).
#[allow(clippy::too_many_arguments)]
pub(super) fn run_guest(
    shared: &Shared,
    route: usize,
    guest: &Guest,
    batch: &RawBatch,
    decoded: Vec<Decoded>,
    duplicates: &HashSet<i64>,
    context: CallContext,
    run: Run,
) -> Result<(Vec<SinkItem>, Output, Option<StateTxn>), Trip> {
    let raws: HashMap<i64, &RawMessage> = batch.messages.iter().map(|m| (m.offset, m)).collect();
    let raw = |offset: i64| {
        let raw = raws.get(&offset);
        (
            raw.and_then(|r| r.key.clone()),
            raw.and_then(|r| r.value.clone()),
            raw.map(|r| r.headers.clone()).unwrap_or_default(),
        )
    };
    let mut items: Vec<Option<SinkItem>> = Vec::with_capacity(decoded.len());
    let mut records: Vec<Record> = Vec::new();
    let mut slots = Vec::new();
    for d in decoded {
        match d {
            // Dropped: written as processed, with nothing to do.
            Decoded::Message(m) if duplicates.contains(&m.offset) => {
                let (key, value, headers) = raw(m.offset);
                items.push(Some(SinkItem::Actions {
                    offset: m.offset,
                    key,
                    value,
                    headers,
                    actions: Vec::new(),
                    emits: Vec::new(),
                }));
            }
            Decoded::Message(m) => {
                slots.push(items.len());
                items.push(None);
                records.push(m);
            }
            Decoded::DeadLetter(d) => items.push(Some(SinkItem::DeadLetter {
                offset: d.offset,
                key: d.key,
                value: d.value,
                headers: d.headers,
                stage: d.stage.as_str().to_string(),
                error: d.error,
            })),
        }
    }
    let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
    let CallContext { mut state, lookups } = context;
    let mut output = Output::empty();
    let route = &shared.routes[route];
    if !records.is_empty() {
        let batch = batch_of(&batch.topic, batch.partition, records);
        let mut call = Isolating {
            shared,
            guest,
            lookups: &lookups,
            run,
            breaker: (run == Run::Live).then_some(&*route.breaker),
            trip: None,
        };
        call.call(batch, &mut state, &mut output);
        if let Some(trip) = call.trip {
            return Err(trip);
        }
    }
    let outcomes = std::mem::take(&mut output.outcomes);
    let emitter = Emitter {
        pipeline: &route.name,
        topics_out: &route.topics_out,
        destinations: &shared.destinations,
    };
    for ((slot, offset), outcome) in slots.into_iter().zip(offsets).zip(outcomes) {
        let (key, value, headers) = raw(offset);
        items[slot] = Some(match outcome {
            Outcome::Actions(actions) => match emitter.emits(offset, &actions, &output.layouts) {
                Ok(emits) => SinkItem::Actions {
                    offset,
                    key,
                    value,
                    headers,
                    actions,
                    emits,
                },
                Err(error) => SinkItem::DeadLetter {
                    offset,
                    key,
                    value,
                    headers,
                    stage: Stage::Encode.as_str().to_string(),
                    error,
                },
            },
            Outcome::DeadLetter(reason) => SinkItem::DeadLetter {
                offset,
                key,
                value,
                headers,
                stage: Stage::Guest.as_str().to_string(),
                error: reason,
            },
        });
    }
    let items = items
        .into_iter()
        .map(|i| i.expect("every slot filled"))
        .collect();
    Ok((items, output, state))
}

/// One batch's guest calls, failed ones split until the messages at fault are isolated.
struct Isolating<'a> {
    shared: &'a Shared,
    guest: &'a Guest,
    lookups: &'a Option<Arc<dyn Lookups>>,
    run: Run,
    /// The pipeline's breaker, for the live version's calls.
    breaker: Option<&'a Breaker>,
    /// Set when the breaker tripped: no more calls.
    trip: Option<Trip>,
}

impl Isolating<'_> {
    /// Appends one outcome per message of `batch` to `output` (a failed message's is its
    /// dead letter, the guest's error), bisecting failed calls; stops when the breaker
    /// trips.
    fn call(&mut self, batch: Batch, state: &mut Option<StateTxn>, output: &mut Output) {
        let n = batch.messages.len();
        if n == 0 || self.trip.is_some() {
            return;
        }
        let (shared, guest) = (self.shared, self.guest);
        let started = Instant::now();
        let context = CallContext {
            state: state.take(),
            lookups: self.lookups.clone(),
        };
        // A guest call is CPU work that may run to its deadline: keep the runtime's other
        // tasks (metrics, signals) going while it runs.
        let call = tokio::task::block_in_place(|| guest.process(&batch, context));
        *state = call.state;
        let live = self.run == Run::Live;
        if live {
            shared
                .metrics
                .guest_call(&guest.id().name, started.elapsed().as_secs_f64());
        }
        let version = &guest.id().version;
        match call.output {
            Ok(out) => {
                if let Some(breaker) = self.breaker {
                    breaker.succeeded(version, n);
                }
                output.append(out);
            }
            Err(e) => {
                if live {
                    shared.metrics.guest_error(&guest.id().name, e.kind.name());
                }
                if n == 1 {
                    if let Some(breaker) = self.breaker {
                        self.trip = breaker.failed(version, &e.to_string());
                        if self.trip.is_some() {
                            return;
                        }
                    }
                    if live {
                        tracing::warn!(guest = %e.guest, offset = batch.messages[0].offset, error = %e, "Guest failed on a message; dead-lettering it");
                    }
                    output.outcomes.push(Outcome::DeadLetter(e.to_string()));
                    return;
                }
                if live {
                    tracing::info!(guest = %e.guest, messages = n, error = %e, "Guest call failed; splitting the batch to isolate the message at fault");
                }
                for half in halves(batch) {
                    self.call(half, state, output);
                }
            }
        }
    }
}

/// A batch split in two halves, for isolating the message a call fails on.
fn halves(batch: Batch) -> [Batch; 2] {
    let Batch {
        topic,
        partition,
        schemas,
        mut messages,
    } = batch;
    let right = messages.split_off(messages.len() / 2);
    let half = |messages| Batch {
        topic: topic.clone(),
        partition,
        schemas: schemas.clone(),
        messages,
    };
    [half(messages), half(right)]
}

/// The text of a message's deduplication key field; `None` when absent or null.
fn dedup_key(message: &Record, field: &str) -> Option<String> {
    Some(match message.get(field)? {
        Value::Null => return None,
        Value::Text(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Bytes(b) => hex::encode(b),
        other => format!("{other:?}"),
    })
}
