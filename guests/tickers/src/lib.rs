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
//!
//! Durations are a whole number and a unit (`us`, `ms`, `s`, `m`, `h`, `d`), or several
//! (`1h30m`); `0` needs no unit. `off` turns a skew limit off: data simulated with
//! `weir ingest simulate --start-time` or replayed from the past has event times long
//! before its ingestion times, which `max_lateness` would otherwise reject. A bad value
//! fails the batch with an error naming the key.
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
//!   `quote_type`, `market_hours`, `source`, `kafka_partition`, `kafka_offset`. Every
//!   column is always written (null when the message has no value), so a batch's rows are
//!   one `COPY`.
//!
//! # Candles
//!
//! Each accepted tick counts, for each interval, in the candle of its symbol and of the
//! interval-long bucket holding its `event_time` (floored, epoch-aligned, UTC): price for
//! open/high/low/close, `last_size` for volume (0 when missing or null), 1 for trades.
//! The batch's ticks are combined first (see [`candles`]), so each (symbol, interval,
//! bucket) is one merge-upsert per batch, attached to the outcome of the last message
//! that contributed to it.
//!
//! # Metrics
//!
//! Counted once per batch, labelled `asset_class`: `ticks_accepted`, `ticks_rejected`
//! (also labelled `rule`), `ticks_duplicate` and `candle_upserts`.
#![cfg_attr(target_arch = "wasm32", no_std)]

pub mod candles;
pub mod rules;
pub mod settings;
pub mod symbols;

#[cfg(test)]
mod tests;

use weir_guest::prelude::*;

use candles::{Candle, bucket_start};
use rules::Tick;
use settings::Settings;

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
    rejected: BTreeMap<&'static str, u64>,
}

impl Counts {
    fn send(&self, class: &str) {
        let labels = [("asset_class", class)];
        for (name, n) in [
            ("ticks_accepted", self.accepted),
            ("ticks_duplicate", self.duplicate),
            ("candle_upserts", self.candles),
        ] {
            if n > 0 {
                metrics::counter(name, n, &labels);
            }
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

impl Tickers {
    /// The tick's row in the tick table.
    fn tick_row(&self, tick: &Tick<'_>, message: &Message) -> Action {
        let mut row = Row::with_capacity(20)
            .with("symbol", tick.symbol)
            .with("event_id", tick.event_id)
            .with("event_time", Value::Timestamp(tick.event_time))
            .with("ingestion_time", Value::Timestamp(tick.ingestion_time))
            .with("price", tick.price)
            .with("bid", tick.bid)
            .with("ask", tick.ask)
            .with("last_size", tick.last_size)
            .with("day_volume", tick.day_volume)
            .with("change", tick.change)
            .with("change_percent", tick.change_percent);
        if self.settings.class.has_supply() {
            row.set("circulating_supply", tick.circulating_supply);
        }
        row.set("currency", tick.currency);
        row.set("exchange", tick.exchange);
        row.set("quote_type", tick.quote_type);
        row.set("market_hours", tick.market_hours);
        row.set("source", tick.source);
        row.set("kafka_partition", message.partition);
        row.set("kafka_offset", message.offset);
        Action::insert(self.settings.table.as_str(), row)
    }
}

impl Processor for Tickers {
    fn new(config: &Config) -> Result<Self, ConfigError> {
        Ok(Self {
            settings: Settings::from_config(config)?,
        })
    }

    fn process(&mut self, message: Message) -> Outcome {
        self.process_batch(vec![message])
            .pop()
            .unwrap_or_else(Outcome::skip)
    }

    fn process_batch(&mut self, messages: Vec<Message>) -> Vec<Outcome> {
        let settings = &self.settings;
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(messages.len());
        let mut counts = Counts::default();
        let mut accepted: HashSet<u128> = HashSet::with_capacity(messages.len());
        // (symbol, interval index, bucket start) -> index in `candles`, which keeps the
        // order of first appearance.
        let mut index: HashMap<(&str, usize, i64), usize> = HashMap::new();
        let mut candles: Vec<Candle<'_>> = Vec::new();

        for (i, message) in messages.iter().enumerate() {
            if let Some(id) = message.text("event_id").and_then(rules::parse_uuid)
                && accepted.contains(&id)
            {
                counts.duplicate += 1;
                outcomes.push(Outcome::skip());
                continue;
            }
            let tick = match rules::check(message, settings) {
                Ok(tick) => tick,
                Err(reject) => {
                    *counts.rejected.entry(reject.rule).or_default() += 1;
                    outcomes.push(Outcome::dead_letter(reject.reason));
                    continue;
                }
            };
            counts.accepted += 1;
            accepted.insert(tick.uuid);
            outcomes.push(Outcome::actions(vec![self.tick_row(&tick, message)]));

            let size = tick.last_size.unwrap_or(0.0);
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
            if let Outcome::Actions(actions) = &mut outcomes[candle.last_message] {
                actions.push(candle.upsert(
                    &settings.candles_table,
                    class,
                    &settings.intervals[candle.interval].label,
                ));
            }
        }
        counts.candles = candles.len() as u64;
        counts.send(class);
        outcomes
    }
}

weir_guest::export!(Tickers);
