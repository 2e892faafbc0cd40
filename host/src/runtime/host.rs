//! What a guest may call: logging and metrics. The runtime passes each call, tagged with
//! the guest's identity, to a [`HostEvents`] implementation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wasmtime::ResourceLimiter;

use super::bindings::{logging, metrics};
use super::{GuestId, Swapped};

pub use logging::Level;

/// The log field by which a guest reports its panic message before trapping.
const PANIC_FIELD: &str = "weir.panic";

/// Most distinct counter series one guest may create; more are dropped with a warning.
const MAX_SERIES_PER_GUEST: usize = 1000;

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
    guest: Arc<GuestId>,
    events: Arc<dyn HostEvents>,
}

impl CallState {
    pub(crate) fn new(guest: Arc<GuestId>, events: Arc<dyn HostEvents>, max_memory: usize) -> Self {
        Self {
            limiter: Limiter {
                max_memory,
                denied: None,
            },
            panic: None,
            guest,
            events,
        }
    }
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

impl logging::Host for CallState {
    fn log(&mut self, level: Level, message: String, fields: Vec<logging::LogField>) {
        let fields: Vec<(String, String)> = fields.into_iter().map(|f| (f.key, f.value)).collect();
        if level == Level::Error && fields.iter().any(|(k, _)| k == PANIC_FIELD) {
            self.panic = Some(message.clone());
        }
        self.events.log(&self.guest, level, &message, &fields);
    }
}

impl metrics::Host for CallState {
    fn counter_add(&mut self, name: String, delta: u64, labels: Vec<metrics::Label>) {
        if !valid_metric_name(&name) || !labels.iter().all(|l| valid_metric_name(&l.name)) {
            tracing::warn!(guest = %self.guest.name, counter = %name, "Guest counter or label name is not [a-zA-Z_][a-zA-Z0-9_]*; dropped");
            return;
        }
        let labels: Vec<(String, String)> = labels.into_iter().map(|l| (l.name, l.value)).collect();
        self.events.counter_add(&self.guest, &name, delta, &labels);
    }
}

// The types interface has no functions; the world still lists it as an import.
impl super::bindings::types::Host for CallState {}

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
