//! Unit-testing guest logic natively, with plain `cargo test`.
//!
//! ```
//! use weir_guest::{testing, Message, Outcome, Processor, Config, ConfigError};
//!
//! struct Echo;
//! impl Processor for Echo {
//!     fn new(_: &Config) -> Result<Self, ConfigError> { Ok(Echo) }
//!     fn process(&mut self, m: Message) -> Outcome {
//!         weir_guest::metrics::counter("seen", 1, &[]);
//!         Outcome::insert("echo", m.fields)
//!     }
//! }
//!
//! let out = testing::run::<Echo>(&[], vec![Message::new("t", 0, 0).with("a", 1i64)]);
//! assert_eq!(out.len(), 1);
//! assert_eq!(testing::counter("seen"), 1);
//! ```

use alloc::string::String;
use alloc::vec::Vec;

use crate::{Batch, ConfigEntry, Level, Message, Outcome, Processor};

/// Runs processor `P` over `messages` with these config values, exactly as the host's
/// call would (a config error or a wrong outcome count panics, as it fails the batch).
pub fn run<P: Processor>(config: &[(&str, &str)], messages: Vec<Message>) -> Vec<Outcome> {
    let config = config
        .iter()
        .map(|(k, v)| ConfigEntry {
            key: (*k).into(),
            value: (*v).into(),
        })
        .collect();
    crate::run::<P>(Batch { config, messages })
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

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::LogRecord;
    use crate::Level;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

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
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::{counter, take_logs};
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use native::{record_counter, record_log};
