//! A partition worker: decode, deduplicate, guest, and one Postgres transaction per batch
//! (rows and the partition's next offset together), on its own connection.
//!
//! The runner gives each partition to one worker, so a partition's batches commit in
//! order; partitions on different workers run at once, and a worker's next batch is
//! queued while its current one commits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use super::Route;
use crate::metrics::Metrics;
use crate::registry::RegistryClient;
use crate::runtime::types::{Batch, Message, Outcome};
use crate::runtime::{Guest, GuestError};
use crate::sink::{DedupKeys, Sink, SinkBatch, SinkError, SinkItem, WriteReport};
use crate::source::{Decoded, Decoder, RawBatch, RawMessage, Stage};

use super::membership::Partition;

/// What the workers share.
pub(super) struct Shared {
    pub routes: Vec<Route>,
    pub decoder: Decoder<RegistryClient>,
    pub metrics: Arc<Metrics>,
    /// Each partition's current epoch: a job of an earlier one (queued before the
    /// partition was lost, or re-positioned) is skipped.
    pub epochs: Mutex<HashMap<Partition, u64>>,
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
    /// Something the worker cannot go on from; `weir run` stops.
    Failed(anyhow::Error),
}

/// A worker and its own sink connections.
pub(super) struct Worker {
    pub shared: Arc<Shared>,
    /// Writes batches, one at a time, in a task of their own.
    pub sink: Arc<Sink>,
    /// Looks up deduplication keys while a write is in flight on `sink`.
    pub lookup: Sink,
    pub reports: mpsc::UnboundedSender<Report>,
}

/// A batch decoded and through its guest, ready to write.
struct Prepared {
    job: Job,
    started: Instant,
    sink_batch: Arc<SinkBatch>,
    duplicates: usize,
}

type Write = tokio::task::JoinHandle<Result<WriteReport, SinkError>>;

impl Worker {
    /// Processes jobs until the runner drops the sender. The next batch is decoded and
    /// run through its guest while the one before it commits.
    pub async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let mut writing: Option<(Write, Prepared)> = None;
        loop {
            let job = match writing.as_mut() {
                Some((write, _)) => tokio::select! {
                    result = write => {
                        let (_, prepared) = writing.take().expect("a write in flight");
                        if !self.finish(result, prepared).await {
                            return;
                        }
                        continue;
                    }
                    job = jobs.recv() => job,
                },
                None => jobs.recv().await,
            };
            let Some(job) = job else { break };
            let partition = (job.batch.topic.clone(), job.batch.partition);
            if !self.shared.current(&partition, job.epoch) {
                continue;
            }
            let in_flight = writing
                .as_ref()
                .and_then(|(_, p)| p.sink_batch.dedup.as_ref());
            let prepared = match self.prepare(job, in_flight).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = self.reports.send(Report::Failed(e));
                    return;
                }
            };
            if let Some((write, previous)) = writing.take()
                && !self.finish(write.await, previous).await
            {
                return;
            }
            writing = Some((self.write(&prepared), prepared));
        }
        if let Some((write, previous)) = writing.take() {
            self.finish(write.await, previous).await;
        }
    }

    fn write(&self, prepared: &Prepared) -> Write {
        let (sink, batch) = (self.sink.clone(), prepared.sink_batch.clone());
        tokio::spawn(async move { sink.write_batch(&batch).await })
    }

    /// Decodes, deduplicates (keys of the batch still being written count as seen) and
    /// runs the guest.
    async fn prepare(&self, job: Job, in_flight: Option<&DedupKeys>) -> anyhow::Result<Prepared> {
        let started = Instant::now();
        let batch = &job.batch;
        let route = &self.shared.routes[job.route];
        let decoded = self.shared.decoder.decode_batch(batch).await;
        let (duplicates, dedup) = self.deduplicate(route, &decoded, in_flight).await?;
        // One version for the whole batch: a swap lands at the next batch.
        let guest = route.guest.current();
        let items = self.run_guest(route, &guest, batch, decoded, &duplicates);
        let sink_batch = SinkBatch {
            topic: batch.topic.clone(),
            partition: batch.partition,
            start_offset: batch.messages[0].offset,
            next_offset: batch.next_offset().expect("non-empty batch"),
            guest_version: Some(guest.id().version.clone()),
            version_column: route.version_column.clone(),
            items,
            dedup,
        };
        Ok(Prepared {
            job,
            started,
            sink_batch: Arc::new(sink_batch),
            duplicates: duplicates.len(),
        })
    }

    /// Reports a write's result; a batch whose deduplication keys another batch committed
    /// meanwhile is prepared and written again. False when the worker must stop.
    async fn finish(
        &self,
        result: Result<Result<WriteReport, SinkError>, tokio::task::JoinError>,
        mut prepared: Prepared,
    ) -> bool {
        let mut result = result
            .unwrap_or_else(|e| Err(SinkError::Database(format!("the write task failed: {e}"))));
        loop {
            let report = match result {
                Ok(report) => self.committed(&prepared, &report),
                Err(SinkError::SeenMeanwhile { .. }) => {
                    let batch = &prepared.sink_batch;
                    tracing::info!(
                        topic = %batch.topic,
                        partition = batch.partition,
                        "A deduplication key of this batch was committed by another batch meanwhile; redoing the batch"
                    );
                    prepared = match self.prepare(prepared.job, None).await {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = self.reports.send(Report::Failed(e));
                            return false;
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
                Err(e) => Report::Failed(e.into()),
            };
            let failed = matches!(report, Report::Failed(_));
            return self.reports.send(report).is_ok() && !failed;
        }
    }

    fn committed(&self, prepared: &Prepared, report: &WriteReport) -> Report {
        let metrics = &self.shared.metrics;
        let batch = &prepared.sink_batch;
        let route = &self.shared.routes[prepared.job.route];
        metrics.records_in(&batch.topic, prepared.job.batch.messages.len() as u64);
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
        if prepared.duplicates > 0 {
            metrics.duplicates(&route.name, prepared.duplicates as u64);
        }
        metrics.offset_committed(&batch.topic, batch.partition, batch.next_offset);
        metrics.batch_duration(&route.name, prepared.started.elapsed().as_secs_f64());
        Report::Committed {
            partition: (batch.topic.clone(), batch.partition),
            next_offset: batch.next_offset,
        }
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
        self.shared
            .metrics
            .guest_call(&guest.id().name, started.elapsed().as_secs_f64());
        match result {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) => {
                self.shared
                    .metrics
                    .guest_error(&guest.id().name, e.kind.name());
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
