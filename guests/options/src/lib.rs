//! `options`: trades of listed equity options (`tickers.options`): data-quality rules,
//! each trade paired with its underlying's price, and the trade's implied volatility and
//! delta, one row per trade in `option_trades` (`schemas/postgres/005_options.sql`).
//!
//! # Pairing by lookup, not state
//!
//! A trade pairs with the underlying's nearest tick **at or before its event time**: the
//! latest by event time, ties to the later Kafka offset (as `latest_prices` and the
//! candles' close break them), from the committed tick table `ticks_stocks` that the
//! `tickers` guest writes. The guest asks for it with a lookup the pipeline declares,
//! not from its own state: keyed state is scoped to the pipeline and the partition of the
//! batch's topic, so a partition of `tickers.options` cannot see what the stocks pipeline
//! keeps; the committed tick table is the record both pipelines share.
//!
//! This is a **processing-time temporal join**, as a Kafka Streams stream-table join is:
//! a trade pairs with the ticks committed when its batch runs (the lookups of a batch
//! read one snapshot, inside the batch's transaction). A tick of the underlying committed
//! later — a late tick, or one of a stocks partition that lags — does not re-pair a trade
//! already written; a trade with no tick yet (or only one older than
//! `max_underlying_age`) is dead-lettered (`underlying_missing`, `underlying_age`) and can
//! be replayed once the stocks pipeline has caught up. Run the options pipeline behind
//! the stocks one for the pairing to be the one of event time.
//!
//! # The lookups the pipeline declares
//!
//! ```yaml
//! lookups:
//!   underlying: >-
//!     SELECT event_id, event_time, price FROM ticks_stocks
//!      WHERE symbol = $1 AND event_time <= $2
//!      ORDER BY event_time DESC, kafka_offset DESC LIMIT 1
//!   rate: SELECT rate FROM rates WHERE day <= $1 ORDER BY day DESC LIMIT 1
//! ```
//!
//! - `underlying`: `$1` the trade's `underlying` (text), `$2` its `event_time` (a
//!   timestamp: the parameter is `timestamptz`). Columns by name: `event_id` (a `uuid`
//!   arrives as text), `event_time` (timestamptz), `price` (a number). No row: no tick.
//! - `rate`: `$1` the trade's day in UTC (an int of days since 1970-01-01: the parameter
//!   is a `date`). Column `rate`, continuously compounded and annualised (0.045 is
//!   4.5 %). `005_options.sql` loads a default row, so every day finds one.
//!
//! A lookup that fails (a name the pipeline does not declare, SQL Postgres refuses, a
//! missing column), or a `rate` lookup without a row, is an operational error, not bad
//! input: the guest logs it and fails the call (a trap), so the host retries, isolates
//! and pauses the pipeline with its breaker instead of dead-lettering every trade under a
//! rule. (A lookup that fails because the connection did never reaches the guest's
//! answer: the host retries the batch.)
//!
//! # Config
//!
//! | key | default | what |
//! | --- | --- | --- |
//! | `table` | `option_trades` | the table of trades |
//! | `underlying_lookup` | `underlying` | the lookup of the underlying's tick |
//! | `rate_lookup` | `rate` | the lookup of the risk-free rate |
//! | `max_underlying_age` | `1m` | how much older than the trade its underlying's tick may be; `off` for any |
//! | `intrinsic_tolerance` | `0.01` | how far (per share) below its intrinsic value a trade may be (`price_below_intrinsic`) |
//! | `max_volatility` | `5` | the top of the implied-volatility search (5 is 500 %) |
//! | `max_future_skew` | `5s` | how far `event_time` may be after `ingestion_time`; `off` |
//! | `max_lateness` | `1h` | how far `event_time` may be before `ingestion_time`; `off` (for replays) |
//!
//! Durations are a whole number and a unit (`us`, `ms`, `s`, `m`, `h`, `d`). A bad value
//! is refused by `init`, naming the key.
//!
//! # Per message
//!
//! - A message whose `event_id` repeats one accepted earlier in the batch is skipped.
//!   Duplicates across batches are the host's to remove (`dedup:`), and the table's
//!   primary key refuses them anyway.
//! - A message that breaks a rule ([`rules`]) is dead-lettered with a reason naming the
//!   rule and the field.
//! - Otherwise it is one row of the table ([`COLUMNS`]): the trade's fields; the paired
//!   tick's `underlying_price`, `underlying_event_id`, `underlying_event_time` and
//!   `underlying_age_ms` (the trade's event time less the tick's, in milliseconds, ≥ 0);
//!   the `rate`; `moneyness` (S/K); `time_to_expiry` in years of 365.25 days to the
//!   expiry's close at 16:00 New York, taken as 20:00 UTC
//!   ([`rules::EXPIRY_CLOSE_UTC_HOUR`]); `implied_volatility` with `iv_source`:
//!   - `feed`: the message's own `implied_volatility`;
//!   - `computed`: the feed gave none, and Black-Scholes ([`model`]: European, no
//!     dividends, at the paired price, the rate and the time to expiry) inverted by
//!     bisection reproduces the price;
//!   - `none`: the feed gave none and the price has no Black-Scholes volatility in
//!     (0, `max_volatility`]: at or below the model's lower bound (an American contract
//!     trading near intrinsic, below a European's discounted bound) or at or above its
//!     upper bound (the underlying's price for a call, the discounted strike for a put).
//!     The trade is real, so it is kept, with a null volatility and delta, rather than
//!     dead-lettered; `options_iv{source="none"}` counts them.
//!
//!   `delta` is Black-Scholes's at the volatility used (feed or computed); null with
//!   `none`.
//!
//! # Metrics
//!
//! Counted once per batch: `options_accepted`, `options_duplicate`, `options_rejected`
//! (labelled `rule`), and `options_iv` (labelled `source`: `feed`, `computed`, `none`).
#![cfg_attr(target_arch = "wasm32", no_std)]

pub mod model;
pub mod rules;
pub mod settings;

#[cfg(test)]
mod tests;

use weir_guest::prelude::*;

use rules::{Trade, Underlying};
use settings::Settings;
use weir_guest::time::{DAY, MS};

/// The columns of the trade table the guest writes, in the order of a row's values. The
/// host fills `guest_version` (with `version_column`) and Postgres `written_at`.
pub const COLUMNS: [&str; 30] = [
    "event_id",
    "contract",
    "underlying",
    "expiry",
    "strike",
    "option_type",
    "style",
    "exchange",
    "currency",
    "event_time",
    "ingestion_time",
    "price",
    "bid",
    "ask",
    "last_size",
    "volume",
    "open_interest",
    "underlying_price",
    "underlying_event_id",
    "underlying_event_time",
    "underlying_age_ms",
    "rate",
    "moneyness",
    "time_to_expiry",
    "implied_volatility",
    "iv_source",
    "delta",
    "source",
    "kafka_partition",
    "kafka_offset",
];

/// The processor: the parsed config.
pub struct Options {
    settings: Settings,
}

/// The batch's counters, sent once at its end.
#[derive(Default)]
struct Counts {
    accepted: u64,
    duplicate: u64,
    rejected: BTreeMap<&'static str, u64>,
    iv: BTreeMap<&'static str, u64>,
}

impl Counts {
    fn send(&self) {
        for (name, n) in [
            ("options_accepted", self.accepted),
            ("options_duplicate", self.duplicate),
        ] {
            if n > 0 {
                metrics::counter(name, n, &[]);
            }
        }
        for (rule, n) in &self.rejected {
            metrics::counter("options_rejected", *n, &[("rule", rule)]);
        }
        for (source, n) in &self.iv {
            metrics::counter("options_iv", *n, &[("source", source)]);
        }
    }
}

/// Fails the call for an operational error: logged, then a trap the host reports.
fn operational(what: String) -> ! {
    log::error(&what);
    panic!("{what}")
}

impl Options {
    /// The underlying's latest tick at or before the trade, if any.
    fn underlying(&self, trade: &Trade<'_>) -> Option<Underlying> {
        let name = &self.settings.underlying_lookup;
        let params = [
            Value::Text(trade.underlying.into()),
            Value::Timestamp(trade.event_time),
        ];
        let rows = lookup::query(name, &params).unwrap_or_else(|e| {
            operational(format!(
                "lookup {name} failed: {e}; the pipeline must declare it (see the options guest's docs)"
            ))
        });
        let row = rows.first()?;
        let (Some(event_id), Some(event_time), Some(price)) = (
            row.text("event_id"),
            row.timestamp("event_time"),
            row.f64("price"),
        ) else {
            operational(format!(
                "lookup {name} answered columns {:?} with {:?}: it must return event_id (uuid or text), event_time (timestamptz) and price (a number), none null",
                row.columns(),
                row.values()
            ))
        };
        Some(Underlying {
            event_id: event_id.into(),
            event_time,
            price,
        })
    }

    /// The risk-free rate of the trade's day.
    fn rate(&self, trade: &Trade<'_>) -> f64 {
        let name = &self.settings.rate_lookup;
        let day = trade.event_time.div_euclid(DAY);
        let rows = lookup::query(name, &[Value::Int(day)]).unwrap_or_else(|e| {
            operational(format!(
                "lookup {name} failed: {e}; the pipeline must declare it (see the options guest's docs)"
            ))
        });
        match rows.first().map(|r| r.f64("rate")) {
            Some(Some(rate)) if rate.is_finite() => rate,
            Some(_) => operational(format!(
                "lookup {name} answered without a finite number in column rate: {:?}",
                rows.first().map(|r| r.values())
            )),
            None => operational(format!(
                "lookup {name} found no rate for {}: load one into the rates table (see 005_options.sql)",
                weir_guest::time::format_date(day)
            )),
        }
    }

    /// The trade's row, in [`COLUMNS`] order, and where its volatility came from.
    fn values(
        &self,
        trade: &Trade<'_>,
        u: &Underlying,
        rate: f64,
        message: &Message<'_>,
    ) -> (Vec<Value>, &'static str) {
        let text = |s: Option<&str>| s.map_or(Value::Null, |s| Value::Text(s.into()));
        let (s, k, t) = (u.price, trade.strike, trade.time_to_expiry);
        let computed = match trade.implied_volatility {
            Some(_) => None,
            None => model::implied_volatility(
                trade.right,
                trade.price,
                s,
                k,
                t,
                rate,
                self.settings.max_volatility,
            ),
        };
        let (iv, source) = match (trade.implied_volatility, computed) {
            (Some(iv), _) => (Some(iv), "feed"),
            (None, Some(iv)) => (Some(iv), "computed"),
            (None, None) => (None, "none"),
        };
        let delta = iv.map(|iv| model::delta(trade.right, s, k, t, rate, iv));
        let values = vec![
            Value::Text(trade.event_id.into()),
            Value::Text(trade.contract.into()),
            Value::Text(trade.underlying.into()),
            Value::Int(trade.expiry),
            Value::Float(k),
            Value::Text(trade.right.name().into()),
            Value::Text(trade.style.into()),
            text(trade.exchange),
            text(trade.currency),
            Value::Timestamp(trade.event_time),
            Value::Timestamp(trade.ingestion_time),
            Value::Float(trade.price),
            trade.bid.into(),
            trade.ask.into(),
            trade.last_size.into(),
            trade.volume.into(),
            trade.open_interest.into(),
            Value::Float(s),
            Value::Text(u.event_id.clone()),
            Value::Timestamp(u.event_time),
            Value::Int((trade.event_time - u.event_time) / MS),
            Value::Float(rate),
            Value::Float(s / k),
            Value::Float(t),
            iv.into(),
            Value::Text(source.into()),
            delta.into(),
            text(trade.source),
            Value::Int(message.partition().into()),
            Value::Int(message.offset()),
        ];
        (values, source)
    }
}

impl Processor for Options {
    fn new(config: &Config) -> Result<Self, ConfigError> {
        Ok(Self {
            settings: Settings::from_config(config)?,
        })
    }

    fn process_batch(&mut self, messages: Messages<'_>, out: &mut Out) -> Vec<Outcome> {
        let table = out.insert(&self.settings.table, &COLUMNS);
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut counts = Counts::default();
        let mut accepted: HashSet<u128> = HashSet::with_capacity(messages.len());
        for message in messages.iter() {
            if let Some(id) = message.text("event_id").and_then(weir_guest::parse::uuid)
                && accepted.contains(&id)
            {
                counts.duplicate += 1;
                outcomes.push(Outcome::skip());
                continue;
            }
            let paired = rules::check(message, &self.settings).and_then(|trade| {
                let underlying = self.underlying(&trade);
                // No rate without a tick: the trade is dead-lettered anyway.
                let rate = match underlying {
                    Some(_) => self.rate(&trade),
                    None => f64::NAN,
                };
                rules::check_paired(&trade, underlying.as_ref(), rate, &self.settings)?;
                Ok((trade, underlying.expect("checked"), rate))
            });
            match paired {
                Ok((trade, underlying, rate)) => {
                    let (values, source) = self.values(&trade, &underlying, rate, message);
                    counts.accepted += 1;
                    *counts.iv.entry(source).or_default() += 1;
                    accepted.insert(trade.uuid);
                    outcomes.push(Outcome::one(table.row(values)));
                }
                Err(reject) => {
                    *counts.rejected.entry(reject.rule).or_default() += 1;
                    outcomes.push(Outcome::dead_letter(reject.reason));
                }
            }
        }
        counts.send();
        outcomes
    }
}

weir_guest::export!(Options);
