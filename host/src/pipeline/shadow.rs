//! Shadow runs: a candidate version of a guest runs next to the live one on the same
//! batches, and what it would have done is compared with what the live version did,
//! message by message. Nothing the candidate returns is written, emitted or committed.
//!
//! The candidate runs on a thread of its own, after the live version ran the batch and
//! without holding it up: a worker hands the batch over only when the thread has room, and
//! counts the batch as skipped otherwise, so a candidate that is slow, loops to its
//! deadline or traps costs the live pipeline nothing but the CPU the thread uses. Each
//! message whose outcome differs (its rows, its emits, or one of the two dead-lettering
//! it) is counted in `/metrics` and recorded in `weir_shadow_diffs` (the first
//! [`MAX_DIFFS`](crate::sink::deployments::MAX_DIFFS) of a candidate); the counts are summed over the group in `weir_shadows`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use super::worker::{Run, Shared, run_guest};
use crate::model::{Action, ShadowDiff, Target};
use crate::runtime::{CallContext, Guest};
use crate::sink::SinkItem;
use crate::sink::deployments::Store;
use crate::source::{Decoded, RawBatch};

/// Batches waiting for the candidate, beyond the one it runs.
const QUEUED: usize = 2;

/// Longest outcome text recorded per side of a difference.
const MAX_TEXT: usize = 2000;

/// A batch the live version ran, for the candidate to run too.
pub(super) struct ShadowJob {
    pub route: usize,
    pub candidate: Guest,
    pub batch: RawBatch,
    pub decoded: Vec<Decoded>,
    pub duplicates: HashSet<i64>,
    /// What the live version made of it, before anything was written.
    pub live: Vec<SinkItem>,
    pub live_targets: Vec<Target>,
}

/// The shadow runs of one process.
pub(super) struct Shadows {
    queue: SyncSender<ShadowJob>,
    /// Batches handed over and not yet done.
    taken: Arc<AtomicUsize>,
    /// Batches skipped since the last record, by (guest, candidate sha256).
    skipped: Arc<Mutex<HashMap<(String, String), i64>>>,
    shared: Arc<Shared>,
}

impl Shadows {
    /// Starts the thread running candidates, recording differences for `group` in the
    /// database at `url`.
    pub fn start(shared: Arc<Shared>, url: &str, group: &str) -> anyhow::Result<Arc<Self>> {
        let (queue, jobs) = std::sync::mpsc::sync_channel(QUEUED);
        let skipped = Arc::new(Mutex::new(HashMap::new()));
        let taken = Arc::new(AtomicUsize::new(0));
        let runner = Runner {
            taken: taken.clone(),
            shared: shared.clone(),
            url: url.to_string(),
            group: group.to_string(),
            handle: tokio::runtime::Handle::current(),
            store: None,
            skipped: skipped.clone(),
        };
        std::thread::Builder::new()
            .name("weir-shadow".into())
            .spawn(move || runner.run(jobs))?;
        Ok(Arc::new(Self {
            queue,
            taken,
            skipped,
            shared,
        }))
    }

    /// Whether the candidate thread can take another batch now (checked before a batch
    /// is copied for it).
    pub fn has_room(&self) -> bool {
        self.taken.load(Ordering::Relaxed) <= QUEUED
    }

    /// Hands a batch to the candidate, or counts it skipped when the candidate is busy.
    pub fn submit(&self, job: ShadowJob) {
        self.taken.fetch_add(1, Ordering::Relaxed);
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
            self.queue.try_send(job)
        {
            self.taken.fetch_sub(1, Ordering::Relaxed);
            self.skip(&job.candidate);
        }
    }

    /// Counts a batch the candidate did not run.
    pub fn skip(&self, candidate: &Guest) {
        let id = candidate.id();
        self.shared.metrics.shadow_skipped(&id.name);
        *self
            .skipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((id.name.clone(), id.version.clone()))
            .or_default() += 1;
    }
}

/// The candidate thread.
struct Runner {
    shared: Arc<Shared>,
    url: String,
    group: String,
    handle: tokio::runtime::Handle,
    store: Option<Store>,
    skipped: Arc<Mutex<HashMap<(String, String), i64>>>,
    taken: Arc<AtomicUsize>,
}

impl Runner {
    fn run(mut self, jobs: Receiver<ShadowJob>) {
        while let Ok(job) = jobs.recv() {
            let guest = job.candidate.id().name.clone();
            let sha = job.candidate.id().version.clone();
            let compared = job.live.len() as i64;
            let diffs = self.compare(job);
            self.taken.fetch_sub(1, Ordering::Relaxed);
            self.shared.metrics.shadow_compared(&guest, compared as u64);
            let skipped = self
                .skipped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(guest.clone(), sha.clone()))
                .unwrap_or(0);
            if let Err(e) = self.record(&guest, &sha, compared, skipped, &diffs) {
                tracing::warn!(guest = %guest, error = %format!("{e:#}"), "Cannot record a shadow candidate's comparison; its counts in weir_shadows miss this batch");
            }
        }
    }

    /// Runs the candidate on the job's batch and lists where it differs from the live run.
    fn compare(&self, job: ShadowJob) -> Vec<ShadowDiff> {
        let ShadowJob {
            route,
            candidate,
            batch,
            decoded,
            duplicates,
            live,
            live_targets,
        } = job;
        let Ok((items, output, _)) = run_guest(
            &self.shared,
            route,
            &candidate,
            &batch,
            decoded,
            &duplicates,
            CallContext::default(),
            Run::Shadow,
        ) else {
            unreachable!("a shadow run has no breaker to trip")
        };
        let pipeline = &self.shared.routes[route].name;
        let guest = &candidate.id().name;
        let mut diffs = Vec::new();
        for (l, c) in live.iter().zip(&items) {
            let (live_text, candidate_text) = (
                Described::of(l, &live_targets),
                Described::of(c, &output.tables),
            );
            let kinds = live_text.differences(&candidate_text);
            if kinds.is_empty() {
                continue;
            }
            for kind in &kinds {
                self.shared.metrics.shadow_difference(guest, kind);
            }
            diffs.push(ShadowDiff {
                pipeline: pipeline.clone(),
                topic: batch.topic.clone(),
                partition: batch.partition,
                offset: item_offset(l),
                kind: kinds.join(","),
                live: crate::text::truncate(&live_text.text(), MAX_TEXT),
                candidate: crate::text::truncate(&candidate_text.text(), MAX_TEXT),
            });
        }
        diffs
    }

    fn record(
        &mut self,
        guest: &str,
        sha: &str,
        compared: i64,
        skipped: i64,
        diffs: &[ShadowDiff],
    ) -> anyhow::Result<()> {
        let handle = self.handle.clone();
        handle.block_on(async {
            if self.store.as_ref().is_none_or(Store::is_closed) {
                self.store = Some(Store::connect(&self.url, &self.group).await?);
            }
            let store = self.store.as_mut().expect("connected");
            store
                .record_shadow(guest, sha, compared, skipped, diffs)
                .await
        })
    }
}

fn item_offset(item: &SinkItem) -> i64 {
    match item {
        SinkItem::Actions { offset, .. } | SinkItem::DeadLetter { offset, .. } => *offset,
    }
}

/// One message's outcome, as text in the three parts a difference is told by.
struct Described {
    rows: String,
    emits: String,
    dead_letter: Option<String>,
}

impl Described {
    fn of(item: &SinkItem, targets: &[Target]) -> Self {
        match item {
            SinkItem::DeadLetter { stage, error, .. } => Self {
                rows: String::new(),
                emits: String::new(),
                dead_letter: Some(format!("{stage}: {error}")),
            },
            SinkItem::Actions { actions, emits, .. } => {
                let mut rows = String::new();
                for action in actions {
                    let Action::Write(row) = action else { continue };
                    let target = targets.get(row.target as usize);
                    let table = target.map_or("?", |t| t.table.as_str());
                    let _ = write!(rows, "{table}(");
                    for (i, value) in row.values.iter().enumerate() {
                        let column = target
                            .and_then(|t| t.columns.get(i))
                            .map_or("?", String::as_str);
                        let value = crate::cli::jsonl::value_json(value);
                        let _ = write!(rows, "{}{column}={value}", if i > 0 { ", " } else { "" });
                    }
                    rows.push_str(") ");
                }
                let mut out = String::new();
                for e in emits {
                    let _ = write!(
                        out,
                        "{}[{}] key={} value={} ",
                        e.topic,
                        e.partition,
                        e.key.as_deref().map_or("null".into(), hex::encode),
                        e.value.as_deref().map_or("null".into(), hex::encode),
                    );
                }
                Self {
                    rows: rows.trim_end().to_string(),
                    emits: out.trim_end().to_string(),
                    dead_letter: None,
                }
            }
        }
    }

    /// What differs between two outcomes: `dead_letter` when one of them dead-letters
    /// (or both, for different reasons); otherwise `rows` and/or `emits`.
    fn differences(&self, other: &Self) -> Vec<&'static str> {
        if self.dead_letter != other.dead_letter {
            return vec!["dead_letter"];
        }
        let mut kinds = Vec::new();
        if self.rows != other.rows {
            kinds.push("rows");
        }
        if self.emits != other.emits {
            kinds.push("emits");
        }
        kinds
    }

    fn text(&self) -> String {
        if let Some(d) = &self.dead_letter {
            return format!("dead letter ({d})");
        }
        match (self.rows.is_empty(), self.emits.is_empty()) {
            (true, true) => "nothing (dropped)".to_string(),
            (false, true) => self.rows.clone(),
            (true, false) => format!("emits {}", self.emits),
            (false, false) => format!("{}; emits {}", self.rows, self.emits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Row, Value, Write};
    use crate::sink::OutboxMessage;

    fn target(table: &str) -> Target {
        Target {
            table: table.into(),
            columns: vec!["id".into(), "price".into()],
            write: Write::Insert,
        }
    }

    fn rows(price: f64, emit: Option<&[u8]>) -> SinkItem {
        SinkItem::Actions {
            offset: 7,
            key: None,
            value: None,
            headers: Vec::new(),
            actions: vec![Action::Write(Row {
                target: 0,
                values: vec![Value::Int(1), Value::Float(price)],
            })],
            emits: emit
                .map(|v| OutboxMessage {
                    topic: "out".into(),
                    partition: 0,
                    key: None,
                    headers: Vec::new(),
                    value: Some(v.to_vec()),
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn outcomes_differ_by_rows_emits_or_dead_letter_and_say_how() {
        let t = [target("ticks")];
        let same = Described::of(&rows(1.5, Some(b"a")), &t);
        assert!(
            same.differences(&Described::of(&rows(1.5, Some(b"a")), &t))
                .is_empty()
        );
        assert_eq!(
            same.differences(&Described::of(&rows(2.5, Some(b"b")), &t)),
            ["rows", "emits"]
        );
        assert_eq!(
            same.differences(&Described::of(&rows(1.5, None), &t)),
            ["emits"]
        );
        // The same values into another table differ.
        assert_eq!(
            same.differences(&Described::of(&rows(1.5, Some(b"a")), &[target("other")])),
            ["rows"]
        );
        let dead = Described::of(
            &SinkItem::DeadLetter {
                offset: 7,
                key: None,
                value: None,
                headers: Vec::new(),
                stage: "guest".into(),
                error: "trap".into(),
            },
            &t,
        );
        assert_eq!(same.differences(&dead), ["dead_letter"]);
        assert_eq!(dead.text(), "dead letter (guest: trap)");
        assert_eq!(
            Described::of(&rows(1.5, None), &t).text(),
            "ticks(id=1, price=1.5)"
        );
    }
}
