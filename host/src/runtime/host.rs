//! What a guest may call: logging and metrics (passed, tagged with the guest's identity,
//! to a [`HostEvents`] implementation), and for guests of 0.2.0 the partition's keyed state
//! and the pipeline's lookups, which the caller of a batch hands in ([`super::CallContext`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wasmtime::ResourceLimiter;

use super::{GuestId, Swapped};
use crate::model::{Lookups, StateTxn, Value, v1, v2};

pub use v2::logging::Level;

/// The log field by which a guest reports its panic message before trapping.
const PANIC_FIELD: &str = "weir.panic";

/// Most distinct counter series one guest may create; more are dropped with a warning.
const MAX_SERIES_PER_GUEST: usize = 1000;

/// Bounds on what a guest may write through its imports. Over them, a log record or a
/// counter increment is dropped, counted (`weir_guest_output_dropped_total`) and, once per
/// call, logged; text over a size bound is cut, saying how much was cut.
pub mod output {
    /// Bytes of one log message.
    pub const MAX_LOG_MESSAGE: usize = 4096;
    /// Fields of one log record.
    pub const MAX_LOG_FIELDS: usize = 32;
    /// Bytes of a log field's key.
    pub const MAX_LOG_KEY: usize = 128;
    /// Bytes of a log field's value.
    pub const MAX_LOG_VALUE: usize = 1024;
    /// Log bytes (messages, keys and values, after cutting) of one call.
    pub const MAX_LOG_BYTES_PER_CALL: usize = 64 << 10;
    /// Log records of one call.
    pub const MAX_LOG_RECORDS_PER_CALL: usize = 1000;
    /// Labels of one counter increment.
    pub const MAX_LABELS: usize = 8;
    /// Bytes of one label value.
    pub const MAX_LABEL_VALUE: usize = 256;
}

/// Receives what guests log and count.
pub trait HostEvents: Send + Sync + 'static {
    /// A guest wrote a log record.
    fn log(&self, guest: &GuestId, level: Level, message: &str, fields: &[(String, String)]);
    /// A guest added to a counter. `name` is already validated.
    fn counter_add(&self, guest: &GuestId, name: &str, delta: u64, labels: &[(String, String)]);
    /// A new version of a guest was swapped in (or rolled back to), from `origin` (a file
    /// path, `admin API`…).
    fn guest_swapped(&self, swapped: &Swapped, origin: &str) {
        let _ = (swapped, origin);
    }
    /// A new version of guest `name` from `origin` was refused; the running one stays.
    fn guest_refused(&self, name: &str, origin: &str, reason: &str) {
        let _ = (name, origin, reason);
    }
    /// A call of a guest wrote `n` log records (`kind` `log`) or counter increments
    /// (`metric`) over the [`output`] bounds; they were dropped.
    fn output_dropped(&self, guest: &GuestId, kind: &'static str, n: u64) {
        let _ = (guest, kind, n);
    }
}

/// Guests' counters, keyed by guest name, counter name and labels.
#[derive(Debug, Default)]
pub struct GuestCounters {
    series: Mutex<HashMap<CounterKey, u64>>,
}

/// One counter series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// Guest name.
    pub guest: String,
    /// Counter name.
    pub name: String,
    /// Labels, sorted by name.
    pub labels: Vec<(String, String)>,
}

impl GuestCounters {
    fn add(&self, guest: &GuestId, name: &str, delta: u64, labels: &[(String, String)]) -> bool {
        let mut labels = labels.to_vec();
        labels.sort();
        let key = CounterKey {
            guest: guest.name.clone(),
            name: name.into(),
            labels,
        };
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if !series.contains_key(&key)
            && series.keys().filter(|k| k.guest == guest.name).count() >= MAX_SERIES_PER_GUEST
        {
            return false;
        }
        let v = series.entry(key).or_default();
        *v = v.saturating_add(delta);
        true
    }

    /// All series and their totals, sorted.
    pub fn snapshot(&self) -> Vec<(CounterKey, u64)> {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = series.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort();
        all
    }
}

/// Sends guest logs to `tracing` (target `weir::guest`) and keeps counters in memory.
#[derive(Debug, Default)]
pub struct TracingEvents {
    /// The counters guests have added to.
    pub counters: GuestCounters,
}

impl HostEvents for TracingEvents {
    fn log(&self, guest: &GuestId, level: Level, message: &str, fields: &[(String, String)]) {
        let fields = format_fields(fields);
        let (g, v) = (&guest.name, &guest.short_version);
        match level {
            Level::Trace => {
                tracing::trace!(target: "weir::guest", guest = %g, version = %v, fields = %fields, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "weir::guest", guest = %g, version = %v, fields = %fields, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "weir::guest", guest = %g, version = %v, fields = %fields, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "weir::guest", guest = %g, version = %v, fields = %fields, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "weir::guest", guest = %g, version = %v, fields = %fields, "{message}")
            }
        }
    }

    fn counter_add(&self, guest: &GuestId, name: &str, delta: u64, labels: &[(String, String)]) {
        if !self.counters.add(guest, name, delta, labels) {
            tracing::warn!(guest = %guest.name, counter = name, "Guest exceeded {MAX_SERIES_PER_GUEST} counter series; dropping new ones");
        }
    }
}

fn format_fields(fields: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Whether `name` is a valid metric or label name.
pub(crate) fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// Per-call store data.
pub(crate) struct CallState {
    pub(crate) limiter: Limiter,
    pub(crate) panic: Option<String>,
    /// The batch's view of the partition's state, when the call may use it.
    pub(crate) state: Option<StateTxn>,
    /// The pipeline's lookups, when the call may run them.
    pub(crate) lookups: Option<Arc<dyn Lookups>>,
    guest: Arc<GuestId>,
    events: Arc<dyn HostEvents>,
    /// Log bytes and records written in this call.
    log_bytes: usize,
    log_records: usize,
    /// Log records and counter increments dropped in this call, over the [`output`] bounds.
    dropped_logs: u64,
    dropped_metrics: u64,
}

impl CallState {
    pub(crate) fn new(guest: Arc<GuestId>, events: Arc<dyn HostEvents>, max_memory: usize) -> Self {
        Self {
            limiter: Limiter {
                max_memory,
                denied: None,
            },
            panic: None,
            state: None,
            lookups: None,
            guest,
            events,
            log_bytes: 0,
            log_records: 0,
            dropped_logs: 0,
            dropped_metrics: 0,
        }
    }

    /// Reports, once, what this call's output bounds dropped.
    pub(crate) fn finish(&mut self) {
        let (logs, metrics) = (
            std::mem::take(&mut self.dropped_logs),
            std::mem::take(&mut self.dropped_metrics),
        );
        if logs > 0 {
            tracing::warn!(guest = %self.guest.name, dropped = logs, max_bytes = output::MAX_LOG_BYTES_PER_CALL, max_records = output::MAX_LOG_RECORDS_PER_CALL, "Guest logged more than a call may; dropped the rest of its log records");
            self.events.output_dropped(&self.guest, "log", logs);
        }
        if metrics > 0 {
            tracing::warn!(guest = %self.guest.name, dropped = metrics, max_labels = output::MAX_LABELS, max_label_value = output::MAX_LABEL_VALUE, "Guest counter increments with too many labels or too long label values were dropped");
            self.events.output_dropped(&self.guest, "metric", metrics);
        }
    }
}

/// `text` cut to `max` bytes, with its control characters escaped.
fn bounded(text: &str, max: usize) -> String {
    crate::text::escape_control(&crate::text::truncate(text, max)).into_owned()
}

/// Caps linear memory, remembering a refused growth so the error can say so.
pub(crate) struct Limiter {
    max_memory: usize,
    pub(crate) denied: Option<usize>,
}

/// Raised (as a trap) when a guest's memory would pass its cap.
#[derive(Debug, thiserror::Error)]
#[error("linear memory would grow to {requested} bytes, over the cap of {limit} bytes")]
struct MemoryCapExceeded {
    requested: usize,
    limit: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.denied = Some(desired);
            // Trap rather than fail the grow: a guest cannot catch and ignore it.
            return Err(MemoryCapExceeded {
                requested: desired,
                limit: self.max_memory,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl CallState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        if self.log_bytes >= output::MAX_LOG_BYTES_PER_CALL
            || self.log_records >= output::MAX_LOG_RECORDS_PER_CALL
        {
            self.dropped_logs += 1;
            return;
        }
        self.log_records += 1;
        let panicked = level == Level::Error && fields.iter().any(|(k, _)| k == PANIC_FIELD);
        // Cut and escaped before anything sees them: a guest's text can neither forge a
        // log line of the host's, drive a terminal, nor make a log line of megabytes.
        let message = bounded(&message, output::MAX_LOG_MESSAGE);
        let extra = fields.len().saturating_sub(output::MAX_LOG_FIELDS);
        let mut fields: Vec<(String, String)> = fields
            .into_iter()
            .take(output::MAX_LOG_FIELDS)
            .map(|(k, v)| {
                (
                    bounded(&k, output::MAX_LOG_KEY),
                    bounded(&v, output::MAX_LOG_VALUE),
                )
            })
            .collect();
        if extra > 0 {
            fields.push(("weir.fields_dropped".into(), extra.to_string()));
        }
        self.log_bytes +=
            message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if panicked {
            self.panic = Some(message.clone());
        }
        self.events.log(&self.guest, level, &message, &fields);
    }

    fn counter_add(&mut self, name: String, delta: u64, labels: Vec<(String, String)>) {
        if !valid_metric_name(&name) || !labels.iter().all(|(l, _)| valid_metric_name(l)) {
            tracing::warn!(guest = %self.guest.name, counter = %bounded(&name, 128), "Guest counter or label name is not [a-zA-Z_][a-zA-Z0-9_]* of at most 128 characters; dropped");
            self.dropped_metrics += 1;
            return;
        }
        if labels.len() > output::MAX_LABELS
            || labels
                .iter()
                .any(|(_, v)| v.len() > output::MAX_LABEL_VALUE)
        {
            self.dropped_metrics += 1;
            return;
        }
        self.events.counter_add(&self.guest, &name, delta, &labels);
    }

    fn state(&mut self) -> wasmtime::Result<&mut StateTxn> {
        self.state.as_mut().ok_or_else(|| {
            wasmtime::Error::msg(
                "this call has no keyed state to read or write (the host gave it none)",
            )
        })
    }
}

impl v1::logging::Host for CallState {
    fn log(
        &mut self,
        level: v1::logging::Level,
        message: String,
        fields: Vec<v1::logging::LogField>,
    ) {
        let level = match level {
            v1::logging::Level::Trace => Level::Trace,
            v1::logging::Level::Debug => Level::Debug,
            v1::logging::Level::Info => Level::Info,
            v1::logging::Level::Warn => Level::Warn,
            v1::logging::Level::Error => Level::Error,
        };
        let fields = fields.into_iter().map(|f| (f.key, f.value)).collect();
        CallState::log(self, level, message, fields);
    }
}

impl v1::metrics::Host for CallState {
    fn counter_add(&mut self, name: String, delta: u64, labels: Vec<v1::metrics::Label>) {
        let labels = labels.into_iter().map(|l| (l.name, l.value)).collect();
        CallState::counter_add(self, name, delta, labels);
    }
}

// The types interfaces have no functions; the worlds still list them as imports.
impl v1::types::Host for CallState {}
impl v2::types::Host for CallState {}

impl v2::logging::Host for CallState {
    fn log(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<v2::logging::LogField>,
    ) -> wasmtime::Result<()> {
        let fields = fields.into_iter().map(|f| (f.key, f.value)).collect();
        CallState::log(self, level, message, fields);
        Ok(())
    }
}

impl v2::metrics::Host for CallState {
    fn counter_add(
        &mut self,
        name: String,
        delta: u64,
        labels: Vec<v2::metrics::Label>,
    ) -> wasmtime::Result<()> {
        let labels = labels.into_iter().map(|l| (l.name, l.value)).collect();
        CallState::counter_add(self, name, delta, labels);
        Ok(())
    }
}

impl v2::state::Host for CallState {
    fn get(&mut self, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.state()?.get(&key).map(<[u8]>::to_vec))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        Ok(self.state()?.put(key, value))
    }

    fn delete(&mut self, key: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        Ok(self.state()?.delete(key))
    }

    fn scan(
        &mut self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: u32,
    ) -> wasmtime::Result<Vec<v2::state::Entry>> {
        let state = self.state()?;
        Ok(state.scan(&prefix, after.as_deref(), limit as usize))
    }
}

impl v2::lookup::Host for CallState {
    fn query(
        &mut self,
        name: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<v2::lookup::Rows, String>> {
        Ok(match &self.lookups {
            Some(lookups) => lookups.query(&name, &params),
            None => Err(format!(
                "lookup {:?}: this call has no lookups to run (the host gave it none)",
                crate::text::truncate(&name, 128)
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names() {
        assert!(valid_metric_name("ticks_seen"));
        assert!(valid_metric_name("_x1"));
        assert!(!valid_metric_name("1x"));
        assert!(!valid_metric_name("a-b"));
        assert!(!valid_metric_name(""));
    }

    #[test]
    fn counters_sum_by_series_and_cap_cardinality() {
        let c = GuestCounters::default();
        let g = GuestId {
            name: "g".into(),
            version: "v".into(),
            short_version: "v".into(),
        };
        let l = |v: &str| vec![("symbol".to_string(), v.to_string())];
        assert!(c.add(&g, "seen", 2, &l("A")));
        assert!(c.add(&g, "seen", 3, &l("A")));
        assert!(c.add(&g, "seen", 1, &l("B")));
        let snap = c.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap[0].1, 5);
        for i in 0..MAX_SERIES_PER_GUEST {
            c.add(&g, "many", 1, &l(&i.to_string()));
        }
        assert!(!c.add(&g, "many", 1, &l("one-too-many")));
        assert!(c.add(&g, "seen", 1, &l("A")), "existing series still count");
    }
}
