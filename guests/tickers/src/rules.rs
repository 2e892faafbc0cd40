//! The data-quality rules a tick must pass, and the typed tick they produce.
//!
//! Each violation is a [`Reject`] naming the rule and the field:
//! `rule price_positive: field price is -3.2, must be > 0`. The first violation found is
//! reported, in this order:
//!
//! | rule | what |
//! | --- | --- |
//! | `required` | `id`, `price`, `event_time`, `event_id`, `ingestion_time` present and non-null; `bid` and `ask` too for crypto and currency (their schemas make them non-null) |
//! | `type` | each field has the type its schema gives it (numbers may arrive as int, float or decimal; `day_volume` must be a whole number) |
//! | `text_valid` | no text field holds a NUL character (Postgres text cannot) |
//! | `symbol_format` | `id` has the class's symbol format |
//! | `event_id_uuid` | `event_id` is a UUID (`8-4-4-4-12` hex digits, or 32 hex digits) |
//! | `price_positive`, `bid_positive`, `ask_positive` | the value is > 0 and finite |
//! | `bid_le_ask` | bid ≤ ask when both are present |
//! | `last_size_non_negative` | `last_size`, when present, is ≥ 0 and finite (it is summed into candle volume) |
//! | `time_range` | `event_time` and `ingestion_time` are within the years 0001 to 9999 |
//! | `max_future_skew` | `event_time` is at most `max_future_skew` after `ingestion_time` |
//! | `max_lateness` | `event_time` is at most `max_lateness` before `ingestion_time` |
//! | `window_lateness` | with `windows`: `event_time` is at most `allowed_lateness` behind the latest event time of the symbol's accepted ticks ([`window_lateness`]) |
//!
//! The rules make sure that everything the guest writes converts to its column, so the
//! sink never has to reject a message the guest accepted: a candle combined from several
//! messages rides on one of them, and would be lost with it.

use weir_guest::prelude::*;

use weir_guest::rules::{
    event_times, non_negative, not_above, number, opt_number, opt_text, optional, positive, reject,
    required, shown, text, timestamp, uuid, wrong_type,
};
use weir_guest::time::{format_duration, format_time};

use crate::settings::Settings;

pub use weir_guest::rules::Reject;

/// A tick that passed every rule, borrowing from its message.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick<'a> {
    /// `id`.
    pub symbol: &'a str,
    /// `event_id` as the message has it.
    pub event_id: &'a str,
    /// `event_id` as a number, for telling duplicates (case and hyphens do not matter).
    pub uuid: u128,
    /// Microseconds since the epoch.
    pub event_time: i64,
    /// Microseconds since the epoch.
    pub ingestion_time: i64,
    /// The price.
    pub price: f64,
    /// Best bid.
    pub bid: Option<f64>,
    /// Best ask.
    pub ask: Option<f64>,
    /// Size of the last trade.
    pub last_size: Option<f64>,
    /// Volume so far in the session (or 24 h).
    pub day_volume: Option<i64>,
    /// Change since the previous close.
    pub change: Option<f64>,
    /// The change in percent.
    pub change_percent: Option<f64>,
    /// Crypto: units in circulation.
    pub circulating_supply: Option<f64>,
    /// ISO 4217 currency.
    pub currency: Option<&'a str>,
    /// Exchange or venue.
    pub exchange: Option<&'a str>,
    /// The `QuoteType` symbol.
    pub quote_type: Option<&'a str>,
    /// The `MarketHours` symbol.
    pub market_hours: Option<&'a str>,
    /// Where the quote came from.
    pub source: Option<&'a str>,
}

/// Checks `message` against every rule.
pub fn check<'a>(message: &'a Message<'_>, settings: &Settings) -> Result<Tick<'a>, Reject> {
    let class = settings.class;
    let m = message;
    let symbol = text(required(m, "id")?, "id")?;
    let price = number(required(m, "price")?, "price")?;
    let event_time = timestamp(required(m, "event_time")?, "event_time")?;
    let event_id = text(required(m, "event_id")?, "event_id")?;
    let ingestion_time = timestamp(required(m, "ingestion_time")?, "ingestion_time")?;
    let (bid, ask) = if class.requires_quote() {
        (
            Some(number(required(m, "bid")?, "bid")?),
            Some(number(required(m, "ask")?, "ask")?),
        )
    } else {
        (opt_number(m, "bid")?, opt_number(m, "ask")?)
    };
    let last_size = opt_number(m, "last_size")?;
    let day_volume = opt_int(m, "day_volume")?;
    let change = opt_number(m, "change")?;
    let change_percent = opt_number(m, "change_percent")?;
    let circulating_supply = if class.has_supply() {
        opt_number(m, "circulating_supply")?
    } else {
        None
    };
    let currency = opt_text(m, "currency")?;
    let exchange = opt_text(m, "exchange")?;
    let quote_type = opt_text(m, "quote_type")?;
    let market_hours = opt_text(m, "market_hours")?;
    let source = opt_text(m, "source")?;

    if !class.symbol_ok(symbol) {
        return Err(reject(
            "symbol_format",
            "id",
            format_args!("is {:?}, must be {}", shown(symbol), class.symbol_format()),
        ));
    }
    let uuid = uuid("event_id_uuid", "event_id", event_id)?;
    positive("price_positive", "price", price)?;
    if let Some(bid) = bid {
        positive("bid_positive", "bid", bid)?;
    }
    if let Some(ask) = ask {
        positive("ask_positive", "ask", ask)?;
    }
    if let (Some(bid), Some(ask)) = (bid, ask) {
        not_above("bid_le_ask", "bid", bid, "ask", ask)?;
    }
    if let Some(size) = last_size {
        non_negative("last_size_non_negative", "last_size", size)?;
    }
    event_times(
        event_time,
        ingestion_time,
        settings.max_future_skew,
        settings.max_lateness,
    )?;

    Ok(Tick {
        symbol,
        event_id,
        uuid,
        event_time,
        ingestion_time,
        price,
        bid,
        ask,
        last_size,
        day_volume,
        change,
        change_percent,
        circulating_supply,
        currency,
        exchange,
        quote_type,
        market_hours,
        source,
    })
}

/// The rule `window_lateness`, checked after the others when the pipeline has windows: a
/// tick more than `allowed_lateness` behind its symbol's watermark (the latest event time
/// of its accepted ticks) would revise windows long closed, so it is dead-lettered instead
/// (see [`crate::windows`]).
pub fn window_lateness(tick: &Tick<'_>, watermark: i64, settings: &Settings) -> Reject {
    let allowed = settings.windows.as_ref().map_or(0, |w| w.allowed_lateness);
    reject(
        "window_lateness",
        "event_time",
        format_args!(
            "is {}, {} behind the latest event time of {} ({}); allowed_lateness is {}",
            format_time(tick.event_time),
            format_duration(watermark - tick.event_time),
            tick.symbol,
            format_time(watermark),
            format_duration(allowed)
        ),
    )
}

/// A whole number: an int, or a float or decimal without a fraction that fits in 64 bits.
fn opt_int(m: &Message<'_>, name: &str) -> Result<Option<i64>, Reject> {
    let Some(v) = optional(m, name) else {
        return Ok(None);
    };
    // 2^63: every f64 below it in magnitude converts exactly when it has no fraction.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    match v {
        Value::Int(i) => Ok(Some(*i)),
        Value::Float(_) | Value::Decimal(_) => {
            let f = v.as_f64().unwrap_or(f64::NAN);
            if f.is_finite() && (-LIMIT..LIMIT).contains(&f) && (f as i64) as f64 == f {
                Ok(Some(f as i64))
            } else {
                Err(reject(
                    "type",
                    name,
                    format_args!("is {f}, must be a whole number"),
                ))
            }
        }
        _ => Err(wrong_type(name, v, "a whole number")),
    }
}
