//! OHLCV candles: epoch-aligned buckets, combined within a batch exactly as Postgres
//! combines them row by row.
//!
//! A candle row is merge-upserted by `(symbol, interval, bucket_start)` with these
//! policies (see `merge-policy` in the WIT):
//!
//! | column | policy |
//! | --- | --- |
//! | `asset_class` | replace (always the same for a symbol) |
//! | `open` | first-by-time(`first_event_at`): on equal times the stored value stays |
//! | `high`, `low` | max, min |
//! | `close` | last-by-time(`last_event_at`): on equal times the incoming value wins |
//! | `volume`, `trades` | sum |
//! | `first_event_at`, `last_event_at` | min, max |
//!
//! Applying the rows of messages one at a time, in message order, therefore gives: open =
//! the price of the earliest event time, the earliest message among equal times; close =
//! the price of the latest event time, the latest message among equal times. [`Candle::add`]
//! folds the ticks of a batch in message order with the same comparisons, so one combined
//! row per key and batch lands where the rows one by one would have. Because the rule
//! only depends on message order, it holds for any contiguous piece of a batch too: when
//! the host splits a batch to isolate a failing message, each piece's combined row rides
//! on that piece's last contributing message, the pieces stay in message order, and the
//! host applies (or combines) them in that order, with the same ties.

use weir_guest::prelude::*;

/// The start of the `interval`-long bucket holding `t` (both in microseconds): `t`
/// floored to a multiple of `interval`, counted from the Unix epoch, also before it.
///
/// `t` must be at least `i64::MIN + interval` (every time the rules accept is).
pub fn bucket_start(t: i64, interval: i64) -> i64 {
    t - t.rem_euclid(interval)
}

/// The candle key columns.
pub const KEY: [&str; 3] = ["symbol", "interval", "bucket_start"];

/// One candle of a batch: what the batch's ticks for its key add up to.
#[derive(Debug, Clone, PartialEq)]
pub struct Candle<'a> {
    /// The instrument.
    pub symbol: &'a str,
    /// Index of the interval in the settings.
    pub interval: usize,
    /// Bucket start, microseconds since the epoch.
    pub bucket_start: i64,
    /// Price at `first_event_at` (the earliest message among equal times).
    pub open: f64,
    /// Highest price.
    pub high: f64,
    /// Lowest price.
    pub low: f64,
    /// Price at `last_event_at` (the latest message among equal times).
    pub close: f64,
    /// Sum of `last_size` (0 for ticks without one).
    pub volume: f64,
    /// Ticks.
    pub trades: i64,
    /// Earliest event time.
    pub first_event_at: i64,
    /// Latest event time.
    pub last_event_at: i64,
    /// Index in the batch of the last message that contributed: the combined row is that
    /// message's action.
    pub last_message: usize,
}

impl<'a> Candle<'a> {
    /// A candle of one tick.
    pub fn new(
        symbol: &'a str,
        interval: usize,
        bucket_start: i64,
        time: i64,
        price: f64,
        size: f64,
        message: usize,
    ) -> Self {
        Self {
            symbol,
            interval,
            bucket_start,
            open: price,
            high: price,
            low: price,
            close: price,
            volume: size,
            trades: 1,
            first_event_at: time,
            last_event_at: time,
            last_message: message,
        }
    }

    /// Adds a tick of a later message, as the merge policies would.
    pub fn add(&mut self, time: i64, price: f64, size: f64, message: usize) {
        // first-by-time: only a strictly earlier time replaces the stored open.
        if time < self.first_event_at {
            self.open = price;
            self.first_event_at = time;
        }
        // last-by-time: an equal or later time replaces the stored close.
        if time >= self.last_event_at {
            self.close = price;
            self.last_event_at = time;
        }
        if price > self.high {
            self.high = price;
        }
        if price < self.low {
            self.low = price;
        }
        self.volume += size;
        self.trades += 1;
        self.last_message = message;
    }

    /// The candle's row, in [`COLUMNS`] order.
    pub fn values(&self, asset_class: &str, interval: &str) -> Vec<Value> {
        vec![
            Value::Text(self.symbol.into()),
            Value::Text(asset_class.into()),
            Value::Text(interval.into()),
            Value::Timestamp(self.bucket_start),
            Value::Float(self.open),
            Value::Float(self.high),
            Value::Float(self.low),
            Value::Float(self.close),
            Value::Float(self.volume),
            Value::Int(self.trades),
            Value::Timestamp(self.first_event_at),
            Value::Timestamp(self.last_event_at),
        ]
    }
}

/// The candle table's columns, in the order of [`Candle::values`].
pub const COLUMNS: [&str; 12] = [
    "symbol",
    "asset_class",
    "interval",
    "bucket_start",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "trades",
    "first_event_at",
    "last_event_at",
];

/// The merge policy of each non-key candle column.
pub const POLICIES: [(&str, Merge<'static>); 9] = [
    ("asset_class", Merge::Replace),
    ("open", Merge::FirstByTime("first_event_at")),
    ("high", Merge::Max),
    ("low", Merge::Min),
    ("close", Merge::LastByTime("last_event_at")),
    ("volume", Merge::Sum),
    ("trades", Merge::Sum),
    ("first_event_at", Merge::Min),
    ("last_event_at", Merge::Max),
];

/// Declares the candle upsert target of `table` in this call's output: [`COLUMNS`],
/// merged by [`KEY`] with [`POLICIES`].
pub fn target(out: &mut Out, table: &str) -> Table {
    out.upsert(table, &COLUMNS, &KEY, &POLICIES)
}
