//! The host calls a guest may make: logging, metrics, state and lookups. On wasm they go
//! to the host; in a native build [`crate::testing`] records or answers them.

/// Severity of a log record.
pub use crate::bindings::weir::processor::logging::Level;

/// The log field by which the host recognises a panic report.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) const PANIC_FIELD: &str = "weir.panic";

/// Structured logging to the host's log.
pub mod log {
    use super::Level;

    /// Writes one log record with key/value fields.
    pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        #[cfg(target_arch = "wasm32")]
        {
            use crate::bindings::weir::processor::logging::LogField;
            let fields: alloc::vec::Vec<LogField> = fields
                .iter()
                .map(|(k, v)| LogField {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect();
            crate::bindings::weir::processor::logging::log(level, message, &fields);
        }
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::record_log(level, message, fields);
    }

    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message, &[]);
    }

    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message, &[]);
    }

    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message, &[]);
    }

    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message, &[]);
    }
}

/// Guest-defined counters, exported by the host on `/metrics`.
pub mod metrics {
    /// Adds `delta` to counter `name` (`[a-zA-Z_][a-zA-Z0-9_]*`) with these labels. The
    /// host exports it as `weir_guest_<name>_total`.
    pub fn counter(name: &str, delta: u64, labels: &[(&str, &str)]) {
        #[cfg(target_arch = "wasm32")]
        {
            use crate::bindings::weir::processor::metrics::Label;
            let labels: alloc::vec::Vec<Label> = labels
                .iter()
                .map(|(k, v)| Label {
                    name: (*k).into(),
                    value: (*v).into(),
                })
                .collect();
            crate::bindings::weir::processor::metrics::counter_add(name, delta, &labels);
        }
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::record_counter(name, delta, labels);
    }
}

#[cfg(target_arch = "wasm32")]
pub(crate) fn report_panic(info: &core::panic::PanicInfo<'_>) {
    let message = match info.location() {
        Some(at) => alloc::format!("{} (at {}:{})", info.message(), at.file(), at.line()),
        None => alloc::format!("{}", info.message()),
    };
    log::log(Level::Error, &message, &[(PANIC_FIELD, "true")]);
}

// State and lookups: the public API is in `crate::state` and `crate::lookup`. Each call is
// linked only when a guest uses it, so a component that never touches state or lookups
// does not import those interfaces.

#[cfg(target_arch = "wasm32")]
mod imports {
    use crate::bindings::weir::processor::{lookup, state};
    use crate::{Value, lookup::Rows, state::Entry};
    use alloc::string::String;
    use alloc::vec::Vec;

    pub(crate) fn state_get(key: &[u8]) -> Option<Vec<u8>> {
        state::get(key)
    }
    pub(crate) fn state_put(key: &[u8], value: &[u8]) -> Result<(), String> {
        state::put(key, value)
    }
    pub(crate) fn state_delete(key: &[u8]) -> Result<(), String> {
        state::delete(key)
    }
    pub(crate) fn state_scan(prefix: &[u8], after: Option<&[u8]>, limit: u32) -> Vec<Entry> {
        state::scan(prefix, after, limit)
    }
    pub(crate) fn lookup_query(name: &str, params: &[Value]) -> Result<Rows, String> {
        lookup::query(name, params)
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing::{lookup_query, state_delete, state_get, state_put, state_scan};
#[cfg(target_arch = "wasm32")]
pub(crate) use imports::*;
