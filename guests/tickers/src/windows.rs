//! Sliding windows per symbol: for each configured length, windows starting every `hop`
//! (multiples of it from the Unix epoch), each merged in Postgres like a candle, plus the
//! notional (price × size) for its VWAP, and closed a set offset after its end in event
//! time.
//!
//! A tick at `t` counts in every window `[start, start + length)` holding it: `length /
//! hop` windows per length. Per symbol, the guest keeps its watermark, the latest event
//! time of its accepted ticks (in state, `watermark/<symbol>`, an `i64` of microseconds),
//! and writes it to the watermarks table (merged by max). A window is closed once its
//! symbol's watermark reaches `closes_at = window_end + window_close_offset`; views rank
//! only closed windows.
//!
//! Late ticks: a tick up to `allowed_lateness` behind its symbol's watermark still counts
//! in its windows, and each of them that was closed already counts the tick in
//! `revisions` — the window is revised, in the same transaction as the tick's row, so
//! exactly once. A tick further behind is dead-lettered by the rule `window_lateness`
//! (so every window is what its range's ticks in the tick table add up to).
//!
//! Within a batch the rows of one window are combined first, in message order, with the
//! candle's comparisons ([`Candle::add`]), and ride on the last contributing message.
//!
//! | column | policy |
//! | --- | --- |
//! | `asset_class`, `window_end`, `closes_at` | replace (a function of the key) |
//! | `first` | first-by-time(`first_event_at`) |
//! | `last` | last-by-time(`last_event_at`) |
//! | `high`, `low` | max, min |
//! | `volume`, `notional`, `trades`, `revisions` | sum |
//! | `first_event_at`, `last_event_at` | min, max |

use weir_guest::prelude::*;

use crate::candles::{Candle, bucket_start};
use crate::settings::Windows;

/// The window key columns.
pub const KEY: [&str; 3] = ["symbol", "resolution", "window_start"];

/// The window table's columns, in the order of [`Window::values`].
pub const COLUMNS: [&str; 16] = [
    "symbol",
    "asset_class",
    "resolution",
    "window_start",
    "window_end",
    "closes_at",
    "first",
    "last",
    "high",
    "low",
    "volume",
    "notional",
    "trades",
    "first_event_at",
    "last_event_at",
    "revisions",
];

/// The merge policy of each non-key window column.
pub const POLICIES: [(&str, Merge<'static>); 13] = [
    ("asset_class", Merge::Replace),
    ("window_end", Merge::Replace),
    ("closes_at", Merge::Replace),
    ("first", Merge::FirstByTime("first_event_at")),
    ("last", Merge::LastByTime("last_event_at")),
    ("high", Merge::Max),
    ("low", Merge::Min),
    ("volume", Merge::Sum),
    ("notional", Merge::Sum),
    ("trades", Merge::Sum),
    ("first_event_at", Merge::Min),
    ("last_event_at", Merge::Max),
    ("revisions", Merge::Sum),
];

/// The watermark table's columns; merged by `symbol`.
pub const WATERMARK_COLUMNS: [&str; 3] = ["symbol", "asset_class", "watermark"];

/// The state key of `symbol`'s watermark.
pub fn watermark_key(symbol: &str) -> String {
    format!("watermark/{symbol}")
}

/// The starts of the windows of `length` advancing by `hop` that hold `t` (all in
/// microseconds; `hop` divides `length`), the earliest first.
pub fn starts(t: i64, length: i64, hop: i64) -> impl Iterator<Item = i64> {
    let last = bucket_start(t, hop);
    let first = last - length + hop;
    (0..length / hop).map(move |k| first + k * hop)
}

/// One window of a batch: what the batch's ticks for its key add up to.
#[derive(Debug, Clone, PartialEq)]
pub struct Window<'a> {
    /// The candle of the window's ticks (its `interval` indexes the lengths, its
    /// `bucket_start` is the window start).
    pub candle: Candle<'a>,
    /// Sum of price × size.
    pub notional: f64,
    /// Ticks that arrived after the window had closed.
    pub revisions: i64,
}

impl<'a> Window<'a> {
    /// The window's row, in [`COLUMNS`] order.
    pub fn values(&self, asset_class: &str, settings: &Windows) -> Vec<Value> {
        let c = &self.candle;
        let length = &settings.lengths[c.interval];
        let end = c.bucket_start + length.micros;
        vec![
            Value::Text(c.symbol.into()),
            Value::Text(asset_class.into()),
            Value::Text(length.label.clone()),
            Value::Timestamp(c.bucket_start),
            Value::Timestamp(end),
            Value::Timestamp(end + settings.close_offset),
            Value::Float(c.open),
            Value::Float(c.close),
            Value::Float(c.high),
            Value::Float(c.low),
            Value::Float(c.volume),
            Value::Float(self.notional),
            Value::Int(c.trades),
            Value::Timestamp(c.first_event_at),
            Value::Timestamp(c.last_event_at),
            Value::Int(self.revisions),
        ]
    }
}

/// A symbol's watermark as the batch leaves it.
struct Mark {
    /// The latest event time accepted, if any tick ever was.
    at: Option<i64>,
    /// Whether this batch moved it.
    changed: bool,
    /// The last message that moved it: the watermark row rides on it.
    last_message: usize,
}

/// The batch's windows and watermarks.
pub struct Windowing<'s, 'a> {
    settings: &'s Windows,
    marks: BTreeMap<&'a str, Mark>,
    index: HashMap<(&'a str, usize, i64), usize>,
    /// The batch's windows, in order of first appearance.
    pub windows: Vec<Window<'a>>,
}

/// A tick too far behind its symbol's watermark.
pub struct TooLate {
    /// The symbol's watermark.
    pub watermark: i64,
}

impl<'s, 'a> Windowing<'s, 'a> {
    /// Nothing loaded yet.
    pub fn new(settings: &'s Windows) -> Self {
        Self {
            settings,
            marks: BTreeMap::new(),
            index: HashMap::new(),
            windows: Vec::new(),
        }
    }

    fn mark(&mut self, symbol: &'a str) -> &mut Mark {
        self.marks.entry(symbol).or_insert_with(|| {
            let key = watermark_key(symbol);
            let at = state::load::<i64>(&key).unwrap_or_else(|e| panic!("state {key:?}: {e}"));
            Mark {
                at,
                changed: false,
                last_message: 0,
            }
        })
    }

    /// Whether a tick of `symbol` at `t` is too late for its windows.
    pub fn check(&mut self, symbol: &'a str, t: i64) -> Result<(), TooLate> {
        let lateness = self.settings.allowed_lateness;
        match self.mark(symbol).at {
            Some(w) if w.saturating_sub(t) > lateness => Err(TooLate { watermark: w }),
            _ => Ok(()),
        }
    }

    /// Counts an accepted tick (of message `message`) in its windows and moves its
    /// symbol's watermark.
    pub fn add(&mut self, symbol: &'a str, t: i64, price: f64, size: f64, message: usize) {
        let watermark = self.mark(symbol).at;
        let settings = self.settings;
        for (k, length) in settings.lengths.iter().enumerate() {
            for start in starts(t, length.micros, settings.hop) {
                let closes_at = start + length.micros + settings.close_offset;
                let revision = i64::from(watermark.is_some_and(|w| w >= closes_at));
                match self.index.get(&(symbol, k, start)) {
                    Some(&i) => {
                        let w = &mut self.windows[i];
                        w.candle.add(t, price, size, message);
                        w.notional += price * size;
                        w.revisions += revision;
                    }
                    None => {
                        self.index.insert((symbol, k, start), self.windows.len());
                        self.windows.push(Window {
                            candle: Candle::new(symbol, k, start, t, price, size, message),
                            notional: price * size,
                            revisions: revision,
                        });
                    }
                }
            }
        }
        let mark = self.mark(symbol);
        if mark.at.is_none_or(|w| t > w) {
            mark.at = Some(t);
            mark.changed = true;
            mark.last_message = message;
        }
    }

    /// The watermark rows of the symbols whose watermark this batch moved, with the
    /// message each rides on, after saving them to state.
    pub fn save_marks(
        &self,
        asset_class: &str,
    ) -> Result<Vec<(usize, Vec<Value>)>, state::StateError> {
        let mut rows = Vec::new();
        for (symbol, mark) in &self.marks {
            if let (true, Some(at)) = (mark.changed, mark.at) {
                state::save(watermark_key(symbol), &at)?;
                rows.push((
                    mark.last_message,
                    vec![
                        Value::Text((*symbol).into()),
                        Value::Text(asset_class.into()),
                        Value::Timestamp(at),
                    ],
                ));
            }
        }
        Ok(rows)
    }
}

/// Declares the window upsert target in this call's output.
pub fn target(out: &mut Out, table: &str) -> Table {
    out.upsert(table, &COLUMNS, &KEY, &POLICIES)
}

/// Declares the watermark upsert target: `watermark` merged by max.
pub fn watermark_target(out: &mut Out, table: &str) -> Table {
    out.upsert(
        table,
        &WATERMARK_COLUMNS,
        &["symbol"],
        &[("asset_class", Merge::Replace), ("watermark", Merge::Max)],
    )
}
