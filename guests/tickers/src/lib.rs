//! `tickers`: market ticks of one asset class: data-quality rules, one row per tick, and
//! OHLCV candles merged in Postgres.
//!
//! One pipeline per topic, each with this guest and its own `asset_class`: the rules and
//! the candle logic are the same for stocks, crypto and currency and differ only in
//! parameters.
//!
//! # Config
//!
//! | key | default | what |
//! | --- | --- | --- |
//! | `asset_class` | (required) | `stocks`, `crypto` or `currency` |
//! | `table` | `ticks_<asset_class>` | the tick table |
//! | `candles_table` | `candles` | the candle table |
//! | `intervals` | `1m,5m,15m` | candle intervals, comma separated; each > 0 and at most `1d`, written as its largest whole unit (`60s` is `1m`) |
//! | `max_future_skew` | `5s` | how far `event_time` may be after `ingestion_time` |
//! | `max_lateness` | `1h` | how far `event_time` may be before `ingestion_time` |
//! | `clean_topic` | (none) | a topic to emit every accepted tick to, normalised: the tick row's columns as its fields (`schemas/tickers.<class>.clean.avsc`), keyed by symbol |
//! | `impute` | (none) | `forward_fill` or `trailing_mean`: fill in the missing values of `impute_fields` from the symbol's earlier ticks (see [`impute`]) |
//! | `impute_fields` | (required with `impute`) | nullable numbers, comma separated: `bid`, `ask` (stocks), `last_size`, `day_volume`, `change`, `change_percent`, `circulating_supply` (crypto) |
//! | `impute_window` | `20` | `trailing_mean`: how many of the symbol's last values it averages (1 to 1000) |
//! | `windows` | (none) | sliding window lengths, comma separated like `intervals` (`1m,5m,15m`; see [`windows`]) |
//! | `window_hop` | `1m` | how far apart windows start; divides every length, at most 60 windows of a length per tick |
//! | `window_close_offset` | `5s` | how long after its end, in event time, a window closes |
//! | `allowed_lateness` | `1h` | how far behind its symbol's latest event time a tick may be and still revise its windows; further is the rule `window_lateness` |
//! | `windows_table`, `watermarks_table` | `windows`, `window_watermarks` | where windows and each symbol's watermark are merged |
//!
//! Durations are a whole number and a unit (`us`, `ms`, `s`, `m`, `h`, `d`), or several
//! (`1h30m`); `0` needs no unit. `off` turns a skew limit off: data simulated with
//! `weir ingest simulate --start-time` or replayed from the past has event times long
//! before its ingestion times, which `max_lateness` would otherwise reject. A bad value
//! is refused by `init` (so at load, on a file swap and on an admin deploy, where the
//! version already running stays) with an error naming the key.
//!
//! # Per message
//!
//! - A message whose `event_id` repeats one accepted earlier in the batch is skipped (no
//!   actions). Duplicates across batches are the host's to remove.
//! - A message that breaks a rule (see [`rules`]) is dead-lettered with a reason naming the
//!   rule and the field: `rule price_positive: field price is -3.2, must be > 0`.
//! - Otherwise it becomes one row of the tick table: `symbol` (from `id`), `event_id`,
//!   `event_time`, `ingestion_time`, `price`, `bid`, `ask`, `last_size`, `day_volume`,
//!   `change`, `change_percent`, (crypto) `circulating_supply`, `currency`, `exchange`,
//!   `quote_type`, `market_hours`, `source`, `kafka_partition`, `kafka_offset`, and with
//!   `impute` the fields imputed (`imputed`: `bid,ask`, null for none). Every
//!   column is always written (null when the message has no value), so a batch's rows are
//!   one `COPY`: the call declares the tick table's columns once ([`tick_columns`]) and
//!   each row gives its values by position.
//!
//! # Candles
//!
//! Each accepted tick counts, for each interval, in the candle of its symbol and of the
//! interval-long bucket holding its `event_time` (floored, epoch-aligned, UTC): price for
//! open/high/low/close, `last_size` for volume (0 when missing or null), 1 for trades.
//! The batch's ticks are combined first (see [`candles`]), so each (symbol, interval,
//! bucket) is one merge-upsert per batch, attached to the outcome of the last message
//! that contributed to it. The candle target (columns, key and merge policies) is
//! declared once per call too.
//!
//! # State
//!
//! Only with `impute` or `windows`: the symbols' histories of observed values and their
//! watermarks, per partition, committed with the batch (see [`impute`] and [`windows`]).
//!
//! # Metrics
//!
//! Counted once per batch, labelled `asset_class`: `ticks_accepted`, `ticks_rejected`
//! (also labelled `rule`), `ticks_duplicate`, `candle_upserts`, `ticks_imputed` (also
//! labelled `field`), `window_upserts` and `window_revisions`.
#![cfg_attr(target_arch = "wasm32", no_std)]

pub mod candles;
pub mod impute;
pub mod rules;
pub mod settings;
pub mod symbols;
pub mod windows;

#[cfg(test)]
mod analytics_tests;
#[cfg(test)]
mod tests;

use weir_guest::prelude::*;

use candles::{Candle, bucket_start};
use impute::Imputer;
use rules::Tick;
use settings::Settings;
use windows::Windowing;

/// The processor: the parsed config.
pub struct Tickers {
    settings: Settings,
}

/// The batch's counters, sent once at its end.
#[derive(Default)]
struct Counts {
    accepted: u64,
    duplicate: u64,
    candles: u64,
    windows: u64,
    revisions: u64,
    imputed: BTreeMap<&'static str, u64>,
    rejected: BTreeMap<&'static str, u64>,
}

impl Counts {
    fn send(&self, class: &str) {
        let labels = [("asset_class", class)];
        for (name, n) in [
            ("ticks_accepted", self.accepted),
            ("ticks_duplicate", self.duplicate),
            ("candle_upserts", self.candles),
            ("window_upserts", self.windows),
            ("window_revisions", self.revisions),
        ] {
            if n > 0 {
                metrics::counter(name, n, &labels);
            }
        }
        for (field, n) in &self.imputed {
            metrics::counter(
                "ticks_imputed",
                *n,
                &[("asset_class", class), ("field", field)],
            );
        }
        for (rule, n) in &self.rejected {
            metrics::counter(
                "ticks_rejected",
                *n,
                &[("asset_class", class), ("rule", rule)],
            );
        }
    }
}

/// The tick table's columns, in the order of a tick's values: `circulating_supply` only
/// for classes that have it, `imputed` only when the pipeline imputes.
pub fn tick_columns(settings: &Settings) -> Vec<&'static str> {
    let class = settings.class;
    let mut columns = vec![
        "symbol",
        "event_id",
        "event_time",
        "ingestion_time",
        "price",
        "bid",
        "ask",
        "last_size",
        "day_volume",
        "change",
        "change_percent",
    ];
    if class.has_supply() {
        columns.push("circulating_supply");
    }
    columns.extend([
        "currency",
        "exchange",
        "quote_type",
        "market_hours",
        "source",
        "kafka_partition",
        "kafka_offset",
    ]);
    if settings.impute.is_some() {
        columns.push("imputed");
    }
    columns
}

impl Tickers {
    /// The tick's row in the tick table, in [`tick_columns`] order; `imputed` lists the
    /// fields imputed, comma separated (null for none).
    fn tick_values(&self, tick: &Tick<'_>, message: &Message<'_>, imputed: &[&str]) -> Vec<Value> {
        let text = |s: Option<&str>| s.map_or(Value::Null, |s| Value::Text(s.into()));
        let mut values = Vec::with_capacity(19);
        values.extend([
            Value::Text(tick.symbol.into()),
            Value::Text(tick.event_id.into()),
            Value::Timestamp(tick.event_time),
            Value::Timestamp(tick.ingestion_time),
            Value::Float(tick.price),
            tick.bid.into(),
            tick.ask.into(),
            tick.last_size.into(),
            tick.day_volume.into(),
            tick.change.into(),
            tick.change_percent.into(),
        ]);
        if self.settings.class.has_supply() {
            values.push(tick.circulating_supply.into());
        }
        values.extend([
            text(tick.currency),
            text(tick.exchange),
            text(tick.quote_type),
            text(tick.market_hours),
            text(tick.source),
            Value::Int(message.partition().into()),
            Value::Int(message.offset()),
        ]);
        if self.settings.impute.is_some() {
            values.push(match imputed {
                [] => Value::Null,
                fields => Value::Text(fields.join(",")),
            });
        }
        values
    }
}

impl Processor for Tickers {
    fn new(config: &Config) -> Result<Self, ConfigError> {
        Ok(Self {
            settings: Settings::from_config(config)?,
        })
    }

    fn process_batch(&mut self, messages: Messages<'_>, out: &mut Out) -> Vec<Outcome> {
        let settings = &self.settings;
        let columns = tick_columns(settings);
        let ticks = out.insert(&settings.table, &columns);
        let clean = settings
            .clean_topic
            .as_ref()
            .map(|t| (t, out.layout(&columns)));
        let candle_target = candles::target(out, &settings.candles_table);
        let window_targets = settings.windows.as_ref().map(|w| {
            (
                windows::target(out, &w.table),
                windows::watermark_target(out, &w.watermarks_table),
            )
        });
        let mut windowing = settings.windows.as_ref().map(Windowing::new);
        let mut imputer = settings.impute.as_ref().map(Imputer::new);
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(messages.len());
        let mut counts = Counts::default();
        let mut accepted: HashSet<u128> = HashSet::with_capacity(messages.len());
        // (symbol, interval index, bucket start) -> index in `candles`, which keeps the
        // order of first appearance.
        let mut index: HashMap<(&str, usize, i64), usize> = HashMap::new();
        let mut candles: Vec<Candle<'_>> = Vec::new();

        for (i, message) in messages.iter().enumerate() {
            if let Some(id) = message.text("event_id").and_then(weir_guest::parse::uuid)
                && accepted.contains(&id)
            {
                counts.duplicate += 1;
                outcomes.push(Outcome::skip());
                continue;
            }
            let checked = rules::check(message, settings).and_then(|tick| match &mut windowing {
                Some(w) => match w.check(tick.symbol, tick.event_time) {
                    Ok(()) => Ok(tick),
                    Err(late) => Err(rules::window_lateness(&tick, late.watermark, settings)),
                },
                None => Ok(tick),
            });
            let mut tick = match checked {
                Ok(tick) => tick,
                Err(reject) => {
                    *counts.rejected.entry(reject.rule).or_default() += 1;
                    outcomes.push(Outcome::dead_letter(reject.reason));
                    continue;
                }
            };
            counts.accepted += 1;
            accepted.insert(tick.uuid);
            let imputed = match &mut imputer {
                Some(imputer) => imputer.apply(&mut tick),
                None => Vec::new(),
            };
            for field in &imputed {
                *counts.imputed.entry(field).or_default() += 1;
            }
            let values = self.tick_values(&tick, message, &imputed);
            outcomes.push(match clean {
                // The same values, to the clean topic.
                Some((topic, layout)) => Outcome::actions(vec![
                    ticks.row(values.clone()),
                    Emit::fields(topic.clone(), layout, values)
                        .key(tick.symbol.as_bytes().to_vec())
                        .into(),
                ]),
                None => Outcome::one(ticks.row(values)),
            });

            let size = tick.last_size.unwrap_or(0.0);
            if let Some(w) = &mut windowing {
                w.add(tick.symbol, tick.event_time, tick.price, size, i);
            }
            for (k, interval) in settings.intervals.iter().enumerate() {
                let bucket = bucket_start(tick.event_time, interval.micros);
                match index.get(&(tick.symbol, k, bucket)) {
                    Some(&c) => candles[c].add(tick.event_time, tick.price, size, i),
                    None => {
                        index.insert((tick.symbol, k, bucket), candles.len());
                        candles.push(Candle::new(
                            tick.symbol,
                            k,
                            bucket,
                            tick.event_time,
                            tick.price,
                            size,
                            i,
                        ));
                    }
                }
            }
        }

        let class = settings.class.name();
        for candle in &candles {
            if let Some(actions) = outcomes[candle.last_message].actions_mut() {
                let values = candle.values(class, &settings.intervals[candle.interval].label);
                actions.push(candle_target.row(values));
            }
        }
        counts.candles = candles.len() as u64;
        if let (Some(w), Some((window_target, watermark_target)), Some(settings)) =
            (&windowing, &window_targets, &settings.windows)
        {
            for window in &w.windows {
                if let Some(actions) = outcomes[window.candle.last_message].actions_mut() {
                    actions.push(window_target.row(window.values(class, settings)));
                }
                counts.revisions += window.revisions as u64;
            }
            counts.windows = w.windows.len() as u64;
            let marks = w
                .save_marks(class)
                .unwrap_or_else(|e| panic!("saving the window watermarks: {e}"));
            for (message, row) in marks {
                if let Some(actions) = outcomes[message].actions_mut() {
                    actions.push(watermark_target.row(row));
                }
            }
        }
        if let Some(imputer) = imputer {
            imputer
                .save()
                .unwrap_or_else(|e| panic!("saving the imputation state: {e}"));
        }
        counts.send(class);
        outcomes
    }
}

weir_guest::export!(Tickers);
