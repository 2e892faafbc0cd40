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

use crate::settings::{DAY, MS, SECOND, Settings, format_duration};

/// A rule a message broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The rule's name (a metric label).
    pub rule: &'static str,
    /// `rule <rule>: field <field> ...`, the dead letter's reason.
    pub reason: String,
}

fn reject(rule: &'static str, field: &str, what: impl core::fmt::Display) -> Reject {
    Reject {
        rule,
        reason: format!("rule {rule}: field {field} {what}"),
    }
}

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

/// The earliest time accepted: 0001-01-01T00:00:00Z.
pub const MIN_TIME: i64 = -62_135_596_800 * SECOND;
/// The first time no longer accepted: 10000-01-01T00:00:00Z.
pub const END_TIME: i64 = 253_402_300_800 * SECOND;

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
    let Some(uuid) = parse_uuid(event_id) else {
        return Err(reject(
            "event_id_uuid",
            "event_id",
            format_args!(
                "is {:?}, must be a UUID like 9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01",
                shown(event_id)
            ),
        ));
    };
    positive("price_positive", "price", price)?;
    if let Some(bid) = bid {
        positive("bid_positive", "bid", bid)?;
    }
    if let Some(ask) = ask {
        positive("ask_positive", "ask", ask)?;
    }
    if let (Some(bid), Some(ask)) = (bid, ask)
        && bid > ask
    {
        return Err(reject(
            "bid_le_ask",
            "bid",
            format_args!("is {bid}, must be <= ask ({ask})"),
        ));
    }
    if let Some(size) = last_size {
        if size.is_nan() || size < 0.0 {
            return Err(reject(
                "last_size_non_negative",
                "last_size",
                format_args!("is {size}, must be >= 0"),
            ));
        }
        if !size.is_finite() {
            return Err(reject(
                "last_size_non_negative",
                "last_size",
                format_args!("is {size}, must be finite"),
            ));
        }
    }
    for (field, t) in [
        ("event_time", event_time),
        ("ingestion_time", ingestion_time),
    ] {
        if !(MIN_TIME..END_TIME).contains(&t) {
            return Err(reject(
                "time_range",
                field,
                format_args!("is {t} µs since 1970-01-01, must be within the years 0001 to 9999"),
            ));
        }
    }
    let ahead = event_time - ingestion_time;
    if ahead > settings.max_future_skew {
        return Err(reject(
            "max_future_skew",
            "event_time",
            format_args!(
                "is {}, {} after ingestion_time {}; max_future_skew is {}",
                format_time(event_time),
                format_duration(ahead),
                format_time(ingestion_time),
                format_duration(settings.max_future_skew)
            ),
        ));
    }
    if -ahead > settings.max_lateness {
        return Err(reject(
            "max_lateness",
            "event_time",
            format_args!(
                "is {}, {} before ingestion_time {}; max_lateness is {}",
                format_time(event_time),
                format_duration(-ahead),
                format_time(ingestion_time),
                format_duration(settings.max_lateness)
            ),
        ));
    }

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

/// `s`, cut to 64 characters for a dead-letter reason (the raw message is stored beside
/// it).
fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.into(),
    }
}

fn positive(rule: &'static str, field: &str, v: f64) -> Result<(), Reject> {
    if v.is_nan() || v <= 0.0 {
        Err(reject(rule, field, format_args!("is {v}, must be > 0")))
    } else if !v.is_finite() {
        Err(reject(rule, field, format_args!("is {v}, must be finite")))
    } else {
        Ok(())
    }
}

/// Field `name`'s value, neither missing nor null.
fn required<'a>(m: &'a Message<'_>, name: &str) -> Result<&'a Value, Reject> {
    match m.get(name) {
        None => Err(reject("required", name, "is missing")),
        Some(Value::Null) => Err(reject("required", name, "is null")),
        Some(v) => Ok(v),
    }
}

/// Field `name`'s value, `None` when missing or null.
fn optional<'a>(m: &'a Message<'_>, name: &str) -> Option<&'a Value> {
    m.get(name).filter(|v| !v.is_null())
}

fn wrong_type(name: &str, v: &Value, expected: &str) -> Reject {
    reject(
        "type",
        name,
        format_args!("is {}, must be {expected}", v.type_name()),
    )
}

fn number(v: &Value, name: &str) -> Result<f64, Reject> {
    match v {
        Value::Float(_) | Value::Int(_) | Value::Decimal(_) => Ok(v.as_f64().unwrap_or(f64::NAN)),
        _ => Err(wrong_type(name, v, "a number")),
    }
}

fn opt_number(m: &Message<'_>, name: &str) -> Result<Option<f64>, Reject> {
    optional(m, name).map(|v| number(v, name)).transpose()
}

fn text<'a>(v: &'a Value, name: &str) -> Result<&'a str, Reject> {
    match v {
        Value::Text(s) if s.contains('\0') => Err(reject(
            "text_valid",
            name,
            "holds a NUL character, which Postgres text cannot store",
        )),
        Value::Text(s) => Ok(s),
        _ => Err(wrong_type(name, v, "text")),
    }
}

fn opt_text<'a>(m: &'a Message<'_>, name: &str) -> Result<Option<&'a str>, Reject> {
    optional(m, name).map(|v| text(v, name)).transpose()
}

fn timestamp(v: &Value, name: &str) -> Result<i64, Reject> {
    v.as_timestamp_micros()
        .ok_or_else(|| wrong_type(name, v, "a timestamp"))
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

/// A UUID in its hyphenated (`8-4-4-4-12`) or simple (32 hex digits) form, any case, as a
/// number: both forms (and both cases) of one UUID give the same number, as Postgres's
/// `uuid` sees them.
pub fn parse_uuid(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    let hyphenated = b.len() == 36;
    if !hyphenated && b.len() != 32 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if hyphenated && matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(digit);
    }
    Some(v)
}

/// An instant as RFC 3339 in UTC: `2024-05-01T14:30:00.120Z` (fraction only when there is
/// one: milliseconds, or microseconds when they are needed).
pub fn format_time(micros: i64) -> String {
    let days = micros.div_euclid(DAY);
    let in_day = micros.rem_euclid(DAY);
    let (y, m, d) = civil_from_days(days);
    let secs = in_day / SECOND;
    let frac = in_day % SECOND;
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    if frac % MS == 0 && frac != 0 {
        out.push_str(&format!(".{:03}", frac / MS));
    } else if frac != 0 {
        out.push_str(&format!(".{frac:06}"));
    }
    out.push('Z');
    out
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01), after Howard
/// Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        let a = parse_uuid("9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01").unwrap();
        assert_eq!(parse_uuid("9F1C2A7E-0B1D-4A7E-8C55-0D3C1B6F2A01"), Some(a));
        assert_eq!(parse_uuid("9f1c2a7e0b1d4a7e8c550d3c1b6f2a01"), Some(a));
        for bad in [
            "",
            "9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a0",
            "9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a0g",
            "9f1c2a7e00b1d-4a7e-8c55-0d3c1b6f2a01",
            "{9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01}",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_time(1_714_573_800_120_000),
            "2024-05-01T14:30:00.120Z"
        );
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(format_time(951_782_400 * SECOND), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(MIN_TIME), "0001-01-01T00:00:00Z");
        assert_eq!(format_time(END_TIME - 1), "9999-12-31T23:59:59.999999Z");
    }
}
