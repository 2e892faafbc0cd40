//! Running guest logic natively, with plain `cargo test` (native builds only).
//!
//! - [`TestMessage`] builds a message by field name and [`batch`] puts messages into a
//!   0.2.0 [`Batch`], collecting their writer schemas (messages with the same field names,
//!   in the same order, share one).
//! - A [`Harness`] runs a processor over a batch as the host would — `init` (that is,
//!   [`Processor::new`]) then `process` — with in-memory [`state`](crate::state) per
//!   partition that lasts across runs (consecutive batches of a partition), lookups
//!   answered by closures or fixed tables, and optional state limits. A run that fails
//!   leaves no state writes behind, as on the host.
//! - [`run_batch`] and [`run`] use the thread's default harness ([`with_harness`]).
//! - [`take_logs`] and [`counter`] show what the guest logged and counted on this thread.
//!
//! ```
//! use weir_guest::prelude::*;
//! use weir_guest::testing::{self, TestMessage, batch};
//!
//! struct Echo;
//! impl Processor for Echo {
//!     fn new(_: &Config) -> Result<Self, ConfigError> {
//!         Ok(Echo)
//!     }
//!     fn process(&mut self, m: Message<'_>, out: &mut Out) -> Outcome {
//!         weir_guest::metrics::counter("seen", 1, &[]);
//!         Outcome::one(out.fields_row("echo", m))
//!     }
//! }
//!
//! let b = batch("t", 0, [TestMessage::new(0).with("a", 1i64), TestMessage::new(1).with("a", 2i64)]);
//! assert_eq!(b.schemas.len(), 1);
//! let out = testing::run_batch::<Echo>(&[], b).unwrap();
//! assert_eq!(out.tables.len(), 1);
//! assert_eq!(out.written(1)[0].get("a"), Some(&Value::Int(2)));
//! assert_eq!(testing::counter("seen"), 2);
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Bound;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::lookup::Rows;
use crate::state::{Codec, Entry};
use crate::{Batch, Config, Header, Kind, Level, Output, Processor, RawMessage, Schema, Value};

/// A message under construction by field name, for [`batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct TestMessage {
    /// Offset within the partition.
    pub offset: i64,
    /// Kafka record timestamp, milliseconds since the epoch (default 0).
    pub timestamp_ms: i64,
    /// Record key (default none).
    pub key: Option<Vec<u8>>,
    /// Record headers (default none).
    pub headers: Vec<Header>,
    /// Field names and values, in schema order; none for a tombstone.
    pub fields: Option<Vec<(String, Value)>>,
}

impl TestMessage {
    /// A message at `offset` with no fields yet.
    pub fn new(offset: i64) -> Self {
        Self {
            offset,
            timestamp_ms: 0,
            key: None,
            headers: Vec::new(),
            fields: Some(Vec::new()),
        }
    }

    /// A tombstone (null value) at `offset`.
    pub fn tombstone(offset: i64) -> Self {
        Self {
            fields: None,
            ..Self::new(offset)
        }
    }

    /// This message with field `name` set to `value` (its place kept if already set).
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.set(name, value);
        self
    }

    /// Sets field `name`, keeping its place if already set, else appending it.
    pub fn set(&mut self, name: &str, value: impl Into<Value>) {
        let fields = self.fields.get_or_insert_with(Vec::new);
        let value = value.into();
        match fields.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => fields.push((name.into(), value)),
        }
    }

    /// Removes field `name` (the message then has another schema), returning its value.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        let fields = self.fields.as_mut()?;
        let i = fields.iter().position(|(n, _)| n == name)?;
        Some(fields.remove(i).1)
    }

    /// The value of field `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Field `name`'s text.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    /// Field `name` as a number.
    pub fn f64(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(Value::as_f64)
    }

    /// Field `name` as an integer.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }

    /// Field `name` as microseconds since the epoch.
    pub fn timestamp(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_timestamp_micros)
    }

    /// With this record key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// With this record timestamp.
    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// With a header `key` of this value added.
    pub fn with_header(mut self, key: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: Some(value.into()),
        });
        self
    }

    /// With a header `key` with a null value added.
    pub fn with_null_header(mut self, key: &str) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: None,
        });
        self
    }
}

#[derive(Clone, Copy)]
enum KindSeen {
    Unseen,
    One(Kind),
    Mixed,
}

/// A schema being collected: its field names, and per field the kinds seen and whether
/// a null was.
type Collected = (Vec<String>, Vec<(KindSeen, bool)>);

/// A 0.2.0 batch of `topic` and `partition` holding `messages` in the order given.
///
/// Messages with the same field names in the same order share a writer schema, in order
/// of first appearance, with no registry id. A field's kind is the kind of its non-null
/// values when they all agree (none otherwise, as for JSON input); it is nullable when one
/// of them is null or none has a value.
pub fn batch(
    topic: &str,
    partition: i32,
    messages: impl IntoIterator<Item = TestMessage>,
) -> Batch {
    let mut index: HashMap<Vec<String>, u32> = HashMap::new();
    let mut schemas: Vec<Collected> = Vec::new();
    let mut out: Vec<RawMessage> = Vec::new();
    for m in messages {
        let (schema, values) = match m.fields {
            None => (None, Vec::new()),
            Some(fields) => {
                let (names, values): (Vec<String>, Vec<Value>) = fields.into_iter().unzip();
                let i = *index.entry(names.clone()).or_insert_with(|| {
                    let n = names.len();
                    schemas.push((names, vec![(KindSeen::Unseen, false); n]));
                    schemas.len() as u32 - 1
                });
                for (seen, v) in schemas[i as usize].1.iter_mut().zip(&values) {
                    match (v.kind(), seen.0) {
                        (None, _) => seen.1 = true,
                        (Some(k), KindSeen::Unseen) => seen.0 = KindSeen::One(k),
                        (Some(k), KindSeen::One(j)) if k != j => seen.0 = KindSeen::Mixed,
                        _ => {}
                    }
                }
                (Some(i), values)
            }
        };
        out.push(RawMessage {
            offset: m.offset,
            timestamp_ms: m.timestamp_ms,
            key: m.key,
            headers: m.headers,
            schema,
            values,
        });
    }
    Batch {
        topic: topic.into(),
        partition,
        schemas: schemas
            .into_iter()
            .map(|(names, seen)| Schema {
                id: None,
                fields: names
                    .into_iter()
                    .zip(seen)
                    .map(|(name, (kind, null))| crate::SchemaField {
                        name,
                        kind: match kind {
                            KindSeen::One(k) => Some(k),
                            _ => None,
                        },
                        nullable: null || matches!(kind, KindSeen::Unseen),
                    })
                    .collect(),
            })
            .collect(),
        messages: out,
    }
}

/// Answers a lookup from its parameters (the error is the message the guest gets).
pub type LookupFn = Box<dyn FnMut(&[Value]) -> Result<Rows, String> + Send>;

/// Bounds on state writes, as the pipeline's config sets them on the host; a write over
/// one is refused with a message saying which, and changes nothing. Unbounded by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Longest value, in bytes.
    pub max_value_bytes: usize,
    /// Bytes a batch may write: keys and values of its puts and keys of its deletes.
    pub max_batch_bytes: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self {
            max_key_bytes: usize::MAX,
            max_value_bytes: usize::MAX,
            max_batch_bytes: usize::MAX,
        }
    }
}

/// Why a run produced no output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// `init` refused the config: [`Processor::new`]'s error, as the guest's `init`
    /// returns it (`invalid guest config: …`).
    Refused(String),
    /// The call failed: the processor panicked (a trap on wasm), with the panic message,
    /// such as a wrong number of outcomes.
    Failed(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Refused(m) | RunError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for RunError {}

type Store = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory host for running processors natively: state per partition that lasts
/// across runs, lookups, and state limits. It is `Send`, so a native host can keep one
/// per pipeline behind a lock.
#[derive(Default)]
pub struct Harness {
    state: BTreeMap<i32, Store>,
    lookups: BTreeMap<String, LookupFn>,
    limits: StateLimits,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("state", &self.state)
            .field("lookups", &self.lookups.keys().collect::<Vec<_>>())
            .field("limits", &self.limits)
            .finish()
    }
}

static EMPTY: Store = BTreeMap::new();

impl Harness {
    /// A harness with no state, no lookups and unbounded state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers lookup `name` with `f`, called with the parameters of each query.
    pub fn add_lookup(
        &mut self,
        name: &str,
        f: impl FnMut(&[Value]) -> Result<Rows, String> + Send + 'static,
    ) -> &mut Self {
        self.lookups.insert(name.into(), Box::new(f));
        self
    }

    /// Answers lookup `name` with `rows` whatever the parameters.
    pub fn add_lookup_rows(&mut self, name: &str, rows: Rows) -> &mut Self {
        self.add_lookup(name, move |_| Ok(rows.clone()))
    }

    /// Answers lookup `name` from a table: the rows whose first columns equal the
    /// parameters, one column per parameter (as `WHERE c1 = $1 AND c2 = $2 …`), with all
    /// the table's columns.
    pub fn add_lookup_table<S: AsRef<str>>(
        &mut self,
        name: &str,
        columns: &[S],
        rows: Vec<Vec<Value>>,
    ) -> &mut Self {
        let columns: Vec<String> = columns.iter().map(|c| c.as_ref().to_owned()).collect();
        let lookup = name.to_owned();
        self.add_lookup(name, move |params| {
            if params.len() > columns.len() {
                return Err(format!(
                    "lookup `{lookup}` takes at most {} parameters, got {}",
                    columns.len(),
                    params.len()
                ));
            }
            Ok(Rows {
                columns: columns.clone(),
                rows: rows
                    .iter()
                    .filter(|r| r.iter().zip(params).all(|(v, p)| v == p))
                    .cloned()
                    .collect(),
            })
        })
    }

    /// Stops answering lookup `name` (queries then fail as for an undeclared name).
    pub fn remove_lookup(&mut self, name: &str) -> &mut Self {
        self.lookups.remove(name);
        self
    }

    /// Bounds state writes from the next run on.
    pub fn set_state_limits(&mut self, limits: StateLimits) -> &mut Self {
        self.limits = limits;
        self
    }

    /// The committed state of `partition`.
    pub fn state(&self, partition: i32) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        self.state.get(&partition).unwrap_or(&EMPTY)
    }

    /// The committed state of `partition`, to seed or change it.
    pub fn state_mut(&mut self, partition: i32) -> &mut BTreeMap<Vec<u8>, Vec<u8>> {
        self.state.entry(partition).or_default()
    }

    /// The value committed under `key` in `partition`.
    pub fn get_state(&self, partition: i32, key: impl AsRef<[u8]>) -> Option<&[u8]> {
        self.state(partition).get(key.as_ref()).map(Vec::as_slice)
    }

    /// Commits `value` under `key` in `partition`, as an earlier batch would have.
    pub fn put_state(
        &mut self,
        partition: i32,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> &mut Self {
        self.state_mut(partition)
            .insert(key.as_ref().to_vec(), value.as_ref().to_vec());
        self
    }

    /// The value committed under `key` in `partition`, decoded as [`crate::state::load`]
    /// would (none when missing or undecodable).
    pub fn load_state<T: Codec>(&self, partition: i32, key: impl AsRef<[u8]>) -> Option<T> {
        crate::state::decode(self.get_state(partition, key)?)
    }

    /// Commits `value` under `key` in `partition`, encoded as [`crate::state::save`] would.
    pub fn save_state<T: Codec + ?Sized>(
        &mut self,
        partition: i32,
        key: impl AsRef<[u8]>,
        value: &T,
    ) -> &mut Self {
        self.put_state(partition, key, crate::state::encode(value))
    }

    /// Runs `P` over `batch` as the host would: `init` with these config values (a fresh
    /// processor), then `process`. Its state writes commit only when the call succeeds.
    /// The error is `init`'s refusal or the panic message.
    pub fn run<P: Processor>(
        &mut self,
        config: &[(&str, &str)],
        batch: Batch,
    ) -> Result<Output, String> {
        self.try_run::<P>(config, batch).map_err(|e| e.to_string())
    }

    /// [`Harness::run`], telling a refusal from a failure.
    pub fn try_run<P: Processor>(
        &mut self,
        config: &[(&str, &str)],
        batch: Batch,
    ) -> Result<Output, RunError> {
        let config = Config::from_pairs(config.iter().copied());
        let mut processor = match catch_unwind(AssertUnwindSafe(|| P::new(&config))) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(RunError::Refused(e.to_string())),
            Err(panic) => return Err(RunError::Failed(panic_message(&*panic))),
        };
        self.process(&mut processor, batch)
    }

    /// Runs `process` of a processor already built over `batch`, with this harness's
    /// state and lookups; the error is the panic message.
    pub fn process<P: Processor>(
        &mut self,
        processor: &mut P,
        batch: Batch,
    ) -> Result<Output, RunError> {
        let partition = batch.partition;
        let active = Active {
            committed: self.state.remove(&partition).unwrap_or_default(),
            overlay: BTreeMap::new(),
            written: 0,
            limits: self.limits,
            lookups: std::mem::take(&mut self.lookups),
        };
        let outer = ACTIVE.with(|a| a.borrow_mut().replace(active));
        let result = catch_unwind(AssertUnwindSafe(|| crate::run_processor(processor, batch)));
        let active = ACTIVE
            .with(|a| std::mem::replace(&mut *a.borrow_mut(), outer))
            .expect("the harness's run is active");
        self.lookups = active.lookups;
        let mut store = active.committed;
        let result = match result {
            Ok(output) => {
                for (k, v) in active.overlay {
                    match v {
                        Some(v) => store.insert(k, v),
                        None => store.remove(&k),
                    };
                }
                Ok(output)
            }
            Err(panic) => Err(RunError::Failed(panic_message(&*panic))),
        };
        if !store.is_empty() {
            self.state.insert(partition, store);
        }
        result
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "the guest panicked".into())
}

thread_local! {
    static DEFAULT: RefCell<Harness> = RefCell::new(Harness::new());
}

/// Runs `P` over `batch` with these config values, exactly as the host's calls would
/// (`init`, then `process`), with the thread's default harness: its state lasts across
/// runs on this thread, and [`with_harness`] seeds and inspects it, adds lookups and sets
/// limits. `Err` is `init`'s refusal (`invalid guest config: …`) or the message of a
/// panic (a trap on wasm), such as a wrong number of outcomes.
///
/// The host's native processors and tests call this to run a guest's code in-process.
pub fn run_batch<P: Processor>(config: &[(&str, &str)], batch: Batch) -> Result<Output, String> {
    DEFAULT.with(|h| h.borrow_mut().run::<P>(config, batch))
}

/// [`run_batch`], panicking with the error: for tests that expect success (or
/// `#[should_panic]` on a refusal).
pub fn run<P: Processor>(config: &[(&str, &str)], batch: Batch) -> Output {
    run_batch::<P>(config, batch).unwrap_or_else(|e| panic!("{e}"))
}

/// Calls `f` with the thread's default harness (the one [`run_batch`] uses). Not from
/// inside a guest's call.
pub fn with_harness<R>(f: impl FnOnce(&mut Harness) -> R) -> R {
    DEFAULT.with(|h| f(&mut h.borrow_mut()))
}

/// What a run's state and lookup calls reach.
struct Active {
    committed: Store,
    /// This batch's writes: a value, or `None` for a delete.
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    written: usize,
    limits: StateLimits,
    lookups: BTreeMap<String, LookupFn>,
}

thread_local! {
    static ACTIVE: RefCell<Option<Active>> = const { RefCell::new(None) };
}

fn with_active<R>(what: &str, f: impl FnOnce(&mut Active) -> R) -> R {
    ACTIVE.with(|a| match a.borrow_mut().as_mut() {
        Some(active) => f(active),
        None => panic!(
            "weir_guest::{what} is only available while a batch is processed (natively, run \
             the processor through weir_guest::testing)"
        ),
    })
}

impl Active {
    fn charge(&mut self, bytes: usize) -> Result<(), String> {
        let total = self.written.saturating_add(bytes);
        if total > self.limits.max_batch_bytes {
            return Err(format!(
                "state writes of this batch would reach {total} bytes, over the limit of {} \
                 bytes per batch",
                self.limits.max_batch_bytes
            ));
        }
        self.written = total;
        Ok(())
    }

    fn check_key(&self, key: &[u8]) -> Result<(), String> {
        if key.len() > self.limits.max_key_bytes {
            return Err(format!(
                "state key of {} bytes is over the limit of {} bytes",
                key.len(),
                self.limits.max_key_bytes
            ));
        }
        Ok(())
    }
}

pub(crate) fn state_get(key: &[u8]) -> Option<Vec<u8>> {
    with_active("state", |a| match a.overlay.get(key) {
        Some(v) => v.clone(),
        None => a.committed.get(key).cloned(),
    })
}

pub(crate) fn state_put(key: &[u8], value: &[u8]) -> Result<(), String> {
    with_active("state", |a| {
        a.check_key(key)?;
        if value.len() > a.limits.max_value_bytes {
            return Err(format!(
                "state value of {} bytes is over the limit of {} bytes",
                value.len(),
                a.limits.max_value_bytes
            ));
        }
        a.charge(key.len() + value.len())?;
        a.overlay.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    })
}

pub(crate) fn state_delete(key: &[u8]) -> Result<(), String> {
    with_active("state", |a| {
        a.check_key(key)?;
        a.charge(key.len())?;
        a.overlay.insert(key.to_vec(), None);
        Ok(())
    })
}

pub(crate) fn state_scan(prefix: &[u8], after: Option<&[u8]>, limit: u32) -> Vec<Entry> {
    with_active("state", |a| {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let range = (start, Bound::Unbounded);
        let mut committed = a
            .committed
            .range::<[u8], _>(range)
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        let mut overlay = a
            .overlay
            .range::<[u8], _>(range)
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        let mut out = Vec::new();
        while out.len() < limit as usize {
            let from_overlay = match (committed.peek(), overlay.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((c, _)), Some((o, _))) => {
                    if c == o {
                        committed.next();
                        true
                    } else {
                        o < c
                    }
                }
            };
            if from_overlay {
                let (k, v) = overlay.next().expect("peeked");
                if let Some(v) = v {
                    out.push(Entry {
                        key: k.clone(),
                        value: v.clone(),
                    });
                }
            } else {
                let (k, v) = committed.next().expect("peeked");
                out.push(Entry {
                    key: k.clone(),
                    value: v.clone(),
                });
            }
        }
        out
    })
}

pub(crate) fn lookup_query(name: &str, params: &[Value]) -> Result<Rows, String> {
    with_active("lookup", |a| match a.lookups.get_mut(name) {
        Some(f) => f(params),
        None => Err(format!("lookup `{name}` is not declared by the pipeline")),
    })
}

/// A log record a guest wrote, as seen by a native test.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// Severity.
    pub level: Level,
    /// Message.
    pub message: String,
    /// Key/value fields.
    pub fields: Vec<(String, String)>,
}

thread_local! {
    static LOGS: RefCell<Vec<LogRecord>> = const { RefCell::new(Vec::new()) };
    static COUNTERS: RefCell<BTreeMap<String, u64>> = const { RefCell::new(BTreeMap::new()) };
}

pub(crate) fn record_log(level: Level, message: &str, fields: &[(&str, &str)]) {
    LOGS.with(|l| {
        l.borrow_mut().push(LogRecord {
            level,
            message: message.into(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        })
    });
}

pub(crate) fn record_counter(name: &str, delta: u64, _labels: &[(&str, &str)]) {
    COUNTERS.with(|c| *c.borrow_mut().entry(name.into()).or_default() += delta);
}

/// Takes the log records written on this thread so far.
pub fn take_logs() -> Vec<LogRecord> {
    LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

/// The total added to counter `name` on this thread (all labels).
pub fn counter(name: &str) -> u64 {
    COUNTERS.with(|c| c.borrow().get(name).copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    /// Keeps a running count per key `k` in state and writes it; dead-letters refusals.
    struct Counter;

    impl Processor for Counter {
        fn new(config: &Config) -> Result<Self, ConfigError> {
            config.require("ok")?;
            Ok(Counter)
        }

        fn process(&mut self, m: Message<'_>, out: &mut Out) -> Outcome {
            if m.bool("boom") == Some(true) {
                panic!("boom at {}", m.offset());
            }
            let k = m.text("k").unwrap_or("none");
            let n = state::load::<i64>(k).unwrap().unwrap_or(0) + 1;
            if let Err(e) = state::save(k, &n) {
                return Outcome::dead_letter(e.to_string());
            }
            Outcome::one(out.write("counts", Row::new().with("k", k).with("n", n)))
        }
    }

    const OK: &[(&str, &str)] = &[("ok", "1")];

    fn msg(offset: i64, k: &str) -> TestMessage {
        TestMessage::new(offset).with("k", k)
    }

    #[test]
    fn a_harness_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<Harness>();
    }

    #[test]
    fn schemas_are_collected_by_names() {
        let b = batch(
            "t",
            4,
            [
                TestMessage::new(1).with("a", 1i64).with("b", "x"),
                TestMessage::new(2).with("a", Value::Null).with("b", "y"),
                TestMessage::new(3).with("b", "z").with("a", 2i64),
                TestMessage::tombstone(4),
                TestMessage::new(5).with("a", 1.5).with("b", "w"),
            ],
        );
        assert_eq!(b.schemas.len(), 2);
        let s = &b.schemas[0];
        assert_eq!(s.fields[0].name, "a");
        assert_eq!(s.fields[0].kind, None, "int and float");
        assert!(s.fields[0].nullable);
        assert_eq!(s.fields[1].kind, Some(Kind::Text));
        assert!(!s.fields[1].nullable);
        let schemas: Vec<_> = b.messages.iter().map(|m| m.schema).collect();
        assert_eq!(schemas, [Some(0), Some(0), Some(1), None, Some(0)]);
        assert_eq!(
            b.messages[2].values,
            [Value::Text("z".into()), Value::Int(2)]
        );
        assert!(b.messages[3].values.is_empty());
    }

    #[test]
    fn messages_read_by_name_and_metadata() {
        struct Check;
        impl Processor for Check {
            fn new(_: &Config) -> Result<Self, ConfigError> {
                Ok(Check)
            }
            fn process_batch(&mut self, messages: Messages<'_>, _: &mut Out) -> Vec<Outcome> {
                assert_eq!(messages.topic(), "topic");
                assert_eq!(messages.partition(), 7);
                assert_eq!(messages.schemas().len(), 1);
                let m = &messages[0];
                assert_eq!(m.text("symbol"), Some("AAPL"));
                assert_eq!(m.f64("price"), Some(1.5));
                assert_eq!(m.f64("n"), Some(3.0));
                assert_eq!(m.int("n"), Some(3));
                assert_eq!(m.timestamp("at"), Some(5));
                assert_eq!(m.get("nope"), None);
                assert_eq!(m.offset(), 9);
                assert_eq!(m.timestamp_ms(), 1234);
                assert_eq!(m.key_str(), Some("k"));
                assert_eq!(m.header("h"), Some(&b"2"[..]));
                assert_eq!(m.header("null"), None);
                assert_eq!(m.headers().len(), 3);
                assert_eq!(m.topic(), "topic");
                assert_eq!(m.partition(), 7);
                assert_eq!(m.schema().unwrap().position("price"), Some(1));
                let names: Vec<&str> = m.fields().map(|(n, _)| n).collect();
                assert_eq!(names, ["symbol", "price", "n", "at"]);
                assert!(messages[1].is_tombstone());
                assert_eq!(messages[1].get("symbol"), None);
                messages.iter().map(|_| Outcome::skip()).collect()
            }
        }
        let b = batch(
            "topic",
            7,
            [
                TestMessage::new(9)
                    .with("symbol", "AAPL")
                    .with("price", 1.5)
                    .with("n", 3i64)
                    .with("at", Value::Timestamp(5))
                    .with_key("k")
                    .with_timestamp_ms(1234)
                    .with_header("h", "1")
                    .with_null_header("null")
                    .with_header("h", "2"),
                TestMessage::tombstone(10),
            ],
        );
        let out = Harness::new().run::<Check>(&[], b).unwrap();
        assert_eq!(out.outcomes, [Outcome::skip(), Outcome::skip()]);
    }

    #[test]
    fn state_lasts_across_runs_of_a_partition_and_commits_on_success() {
        let mut h = Harness::new();
        h.save_state(0, "a", &10i64);
        let out = h
            .run::<Counter>(OK, batch("t", 0, [msg(1, "a"), msg(2, "b"), msg(3, "a")]))
            .unwrap();
        let ns: Vec<_> = out
            .all_written()
            .iter()
            .map(|w| w.get("n").cloned())
            .collect();
        assert_eq!(ns, [11i64, 1, 12].map(|n| Some(Value::Int(n))));
        assert_eq!(out.tables.len(), 1, "one target for the three rows");
        assert_eq!(h.load_state::<i64>(0, "a"), Some(12));
        assert_eq!(h.load_state::<i64>(1, "a"), None, "partitions are apart");
        // A failing call leaves no writes behind.
        let e = h
            .run::<Counter>(
                OK,
                batch("t", 0, [msg(4, "a"), msg(5, "a").with("boom", true)]),
            )
            .unwrap_err();
        assert_eq!(e, "boom at 5");
        assert_eq!(h.load_state::<i64>(0, "a"), Some(12));
        h.run::<Counter>(OK, batch("t", 0, [msg(6, "a")])).unwrap();
        assert_eq!(h.load_state::<i64>(0, "a"), Some(13));
    }

    #[test]
    fn refusals_and_limits() {
        let mut h = Harness::new();
        assert_eq!(
            h.try_run::<Counter>(&[], batch("t", 0, [msg(1, "a")])),
            Err(RunError::Refused(
                "invalid guest config: `ok` is required".into()
            ))
        );
        h.set_state_limits(StateLimits {
            max_value_bytes: 4,
            ..StateLimits::default()
        });
        let out = h.run::<Counter>(OK, batch("t", 0, [msg(1, "a")])).unwrap();
        assert_eq!(
            out.dead_letter(0),
            Some("state value of 8 bytes is over the limit of 4 bytes")
        );
        assert!(h.state(0).is_empty());
        h.set_state_limits(StateLimits {
            max_batch_bytes: 20,
            ..StateLimits::default()
        });
        let out = h
            .run::<Counter>(OK, batch("t", 0, [msg(1, "a"), msg(2, "b"), msg(3, "c")]))
            .unwrap();
        assert!(out.dead_letter(0).is_none());
        assert!(out.dead_letter(1).is_none());
        assert!(
            out.dead_letter(2)
                .is_some_and(|r| r.contains("over the limit of 20 bytes per batch"))
        );
        assert_eq!(h.state(0).len(), 2);
    }

    #[test]
    fn scans_merge_committed_state_and_the_batch_writes() {
        struct Scan;
        impl Processor for Scan {
            fn new(_: &Config) -> Result<Self, ConfigError> {
                Ok(Scan)
            }
            fn process(&mut self, _: Message<'_>, _: &mut Out) -> Outcome {
                state::put("p/b", "B").unwrap();
                state::delete("p/c").unwrap();
                state::put("p/e", "E").unwrap();
                state::put("q/a", "x").unwrap();
                let keys = |entries: Vec<state::Entry>| -> Vec<String> {
                    entries
                        .into_iter()
                        .map(|e| {
                            format!(
                                "{}={}",
                                String::from_utf8(e.key).unwrap(),
                                String::from_utf8(e.value).unwrap()
                            )
                        })
                        .collect()
                };
                assert_eq!(
                    keys(state::scan("p/", None, 10)),
                    ["p/a=a", "p/b=B", "p/d=d", "p/e=E"]
                );
                assert_eq!(keys(state::scan("p/", None, 2)), ["p/a=a", "p/b=B"]);
                assert_eq!(
                    keys(state::scan("p/", Some(b"p/b"), 10)),
                    ["p/d=d", "p/e=E"]
                );
                assert_eq!(keys(state::scan_all("p/", 1)).len(), 4);
                assert_eq!(state::get("p/c"), None);
                assert_eq!(state::get("p/b").as_deref(), Some(&b"B"[..]));
                Outcome::skip()
            }
        }
        let mut h = Harness::new();
        for k in ["p/a", "p/b", "p/c", "p/d", "o/z"] {
            h.put_state(2, k, &k[2..]);
        }
        h.run::<Scan>(&[], batch("t", 2, [TestMessage::new(0)]))
            .unwrap();
        let keys: Vec<&[u8]> = h.state(2).keys().map(Vec::as_slice).collect();
        assert_eq!(keys, [&b"o/z"[..], b"p/a", b"p/b", b"p/d", b"p/e", b"q/a"]);
    }

    #[test]
    fn lookups_by_closure_and_table() {
        struct Look;
        impl Processor for Look {
            fn new(_: &Config) -> Result<Self, ConfigError> {
                Ok(Look)
            }
            fn process(&mut self, m: Message<'_>, out: &mut Out) -> Outcome {
                let k = m.text("k").unwrap();
                match lookup::query("ref", &[k.into()]) {
                    Ok(rows) => {
                        let mut row = rows.first().map(|r| r.to_row()).unwrap_or_default();
                        row.set("n", rows.len() as i64);
                        Outcome::one(out.write("t", row))
                    }
                    Err(e) => Outcome::dead_letter(e.to_string()),
                }
            }
        }
        let mut h = Harness::new();
        h.add_lookup_table(
            "ref",
            &["k", "w"],
            vec![
                vec!["a".into(), 1.5.into()],
                vec!["b".into(), 2.5.into()],
                vec!["a".into(), 3.5.into()],
            ],
        );
        let out = h
            .run::<Look>(&[], batch("t", 0, [msg(1, "a"), msg(2, "c")]))
            .unwrap();
        assert_eq!(out.written(0)[0].get("w"), Some(&Value::Float(1.5)));
        assert_eq!(out.written(0)[0].get("n"), Some(&Value::Int(2)));
        assert_eq!(out.written(1)[0].columns(), ["n"]);
        h.add_lookup("ref", |p| Err(format!("no for {p:?}")));
        let out = h.run::<Look>(&[], batch("t", 0, [msg(1, "a")])).unwrap();
        assert_eq!(out.dead_letter(0), Some("no for [Value::Text(\"a\")]"));
        h.remove_lookup("ref");
        let out = h.run::<Look>(&[], batch("t", 0, [msg(1, "a")])).unwrap();
        assert_eq!(
            out.dead_letter(0),
            Some("lookup `ref` is not declared by the pipeline")
        );
    }

    #[test]
    fn a_wrong_outcome_count_fails_the_call() {
        struct Short;
        impl Processor for Short {
            fn new(_: &Config) -> Result<Self, ConfigError> {
                Ok(Short)
            }
            fn process_batch(&mut self, _: Messages<'_>, _: &mut Out) -> Vec<Outcome> {
                Vec::new()
            }
        }
        let e = run_batch::<Short>(&[], batch("t", 0, [TestMessage::new(1)])).unwrap_err();
        assert!(
            e.contains("process_batch returned 0 outcomes for 1 messages"),
            "{e}"
        );
    }

    #[test]
    fn fields_rows_use_one_target_per_schema() {
        struct Pass;
        impl Processor for Pass {
            fn new(_: &Config) -> Result<Self, ConfigError> {
                Ok(Pass)
            }
            fn process(&mut self, m: Message<'_>, out: &mut Out) -> Outcome {
                Outcome::one(out.fields_row("f", m))
            }
        }
        let out = run::<Pass>(
            &[],
            batch(
                "t",
                0,
                [
                    TestMessage::new(1).with("a", 1i64),
                    TestMessage::new(2).with("b", 1i64),
                    TestMessage::new(3).with("a", 2i64),
                    TestMessage::tombstone(4),
                ],
            ),
        );
        let targets: Vec<_> = out.all_written().iter().map(|w| w.columns()).collect();
        assert_eq!(
            targets,
            [vec!["a"], vec!["b"], vec!["a"], Vec::<&str>::new()]
        );
        assert_eq!(out.tables.len(), 3);
        with_harness(|h| assert!(h.state(0).is_empty()));
    }
}
