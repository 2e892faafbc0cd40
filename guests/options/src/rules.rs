//! The data-quality rules. Each broken rule dead-letters its message with a reason naming
//! the rule and the field: `rule contract_matches: field strike is 195, but contract
//! AAPL240621C00190000 says 190`. They are checked in this order; the first broken one is
//! the reason.
//!
//! Before the lookups, on the message alone ([`check`]):
//!
//! | rule | what |
//! | --- | --- |
//! | `required` | `id`, `underlying`, `expiry`, `strike`, `option_type`, `style`, `price`, `event_time`, `event_id` and `ingestion_time` are present and not null |
//! | `type` | each field has its type: text, a whole number of days (`expiry`), a number, a timestamp, a whole number (`volume`, `open_interest`) |
//! | `text_valid` | no text holds a NUL character (Postgres text cannot store one) |
//! | `event_id_uuid` | `event_id` is a UUID |
//! | `option_type` | `option_type` is `CALL` or `PUT` |
//! | `underlying_format` | `underlying` is a stock symbol (`^?[A-Z][A-Z0-9.-]{0,9}`) |
//! | `contract_format` | `id` is an OCC symbol: a root of 1 to 6 of `[A-Z0-9.]` (OSI's space padding allowed), expiry `YYMMDD` (a real date, 20YY), `C` or `P`, strike × 1000 in 8 digits |
//! | `contract_matches` | the symbol agrees with the fields: root = `underlying`, its date = `expiry`, its letter = `option_type` |
//! | `price_positive`, `strike_positive` | > 0 and finite |
//! | `contract_matches` | the symbol's strike = `strike` (to 1/1000) |
//! | `ask_positive` | > 0 and finite |
//! | `bid_non_negative`, `last_size_non_negative`, `volume_non_negative`, `open_interest_non_negative` | ≥ 0 and finite (a far out-of-the-money bid may be 0) |
//! | `bid_le_ask` | bid ≤ ask when both are given |
//! | `implied_volatility_positive` | the feed's `implied_volatility`, when given, is > 0 and finite |
//! | `time_range` | `event_time` and `ingestion_time` are within the years 0001 to 9999 |
//! | `max_future_skew`, `max_lateness` | `event_time` is at most that far after / before `ingestion_time` (config) |
//! | `time_to_expiry` | the trade is before its expiry's close (16:00 New York, taken as [`EXPIRY_CLOSE_UTC_HOUR`]:00 UTC): the time to expiry is > 0 |
//!
//! After the lookups ([`check_paired`]):
//!
//! | rule | what |
//! | --- | --- |
//! | `underlying_missing` | the underlying has a tick at or before `event_time` |
//! | `underlying_age` | that tick is at most `max_underlying_age` older than the trade |
//! | `price_below_intrinsic` | `price` ≥ the exercise value at the paired underlying price less `intrinsic_tolerance`: max(S − K, 0) for a call, max(K − S, 0) for a put; for a `EUROPEAN` contract, which cannot be exercised early, the discounted bound max(S − K·e^(−rT), 0) or max(K·e^(−rT) − S, 0) |
//!
//! A price the model cannot invert (above its upper bound, or needing more than
//! `max_volatility`) is not a rule: the trade is stored with a null implied volatility
//! (see the crate docs).

use weir_guest::prelude::*;

use crate::model::{self, Right};
use crate::settings::{DAY, HOUR, MS, SECOND, Settings, format_duration};

/// A contract expires at 16:00 New York time on its expiry date, taken as 20:00 UTC
/// (16:00 EDT; daylight saving is ignored, as `weir ingest simulate` ignores it, so the
/// model's time to expiry is an hour long in the winter).
pub const EXPIRY_CLOSE_UTC_HOUR: i64 = 20;

/// A year for time to expiry: 365.25 days.
pub const YEAR: f64 = 365.25 * DAY as f64;

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

/// A trade that passed the message's rules, borrowing from its message.
#[derive(Debug, Clone, PartialEq)]
pub struct Trade<'a> {
    /// `id`, the OCC symbol as the message has it.
    pub contract: &'a str,
    /// `underlying`.
    pub underlying: &'a str,
    /// `expiry`, days since 1970-01-01.
    pub expiry: i64,
    /// `strike`.
    pub strike: f64,
    /// `option_type`.
    pub right: Right,
    /// `style`, as the message has it (`AMERICAN`, `EUROPEAN`, `UNKNOWN`).
    pub style: &'a str,
    /// `event_id` as the message has it.
    pub event_id: &'a str,
    /// `event_id` as a number, for telling duplicates.
    pub uuid: u128,
    /// Microseconds since the epoch.
    pub event_time: i64,
    /// Microseconds since the epoch.
    pub ingestion_time: i64,
    /// Last trade price.
    pub price: f64,
    /// Best bid.
    pub bid: Option<f64>,
    /// Best ask.
    pub ask: Option<f64>,
    /// Contracts in the trade.
    pub last_size: Option<f64>,
    /// Contracts traded in the session.
    pub volume: Option<i64>,
    /// Contracts open at the previous close.
    pub open_interest: Option<i64>,
    /// The feed's implied volatility.
    pub implied_volatility: Option<f64>,
    /// Exchange.
    pub exchange: Option<&'a str>,
    /// Currency.
    pub currency: Option<&'a str>,
    /// Source.
    pub source: Option<&'a str>,
    /// Years from the trade to the expiry's close (> 0).
    pub time_to_expiry: f64,
}

/// The earliest time accepted: 0001-01-01T00:00:00Z.
pub const MIN_TIME: i64 = -62_135_596_800 * SECOND;
/// The first time no longer accepted: 10000-01-01T00:00:00Z.
pub const END_TIME: i64 = 253_402_300_800 * SECOND;

/// When a contract expiring on day `expiry` closes, in microseconds.
pub fn expiry_close(expiry: i64) -> i64 {
    expiry * DAY + EXPIRY_CLOSE_UTC_HOUR * HOUR
}

/// Checks `message` against the rules that need no lookup.
pub fn check<'a>(message: &'a Message<'_>, settings: &Settings) -> Result<Trade<'a>, Reject> {
    let m = message;
    let contract = text(required(m, "id")?, "id")?;
    let underlying = text(required(m, "underlying")?, "underlying")?;
    let expiry = int(
        required(m, "expiry")?,
        "expiry",
        "a date (days since 1970-01-01)",
    )?;
    let strike = number(required(m, "strike")?, "strike")?;
    let option_type = text(required(m, "option_type")?, "option_type")?;
    let style = text(required(m, "style")?, "style")?;
    let price = number(required(m, "price")?, "price")?;
    let event_time = timestamp(required(m, "event_time")?, "event_time")?;
    let event_id = text(required(m, "event_id")?, "event_id")?;
    let ingestion_time = timestamp(required(m, "ingestion_time")?, "ingestion_time")?;
    let bid = opt_number(m, "bid")?;
    let ask = opt_number(m, "ask")?;
    let last_size = opt_number(m, "last_size")?;
    let volume = opt_int(m, "volume")?;
    let open_interest = opt_int(m, "open_interest")?;
    let implied_volatility = opt_number(m, "implied_volatility")?;
    let exchange = opt_text(m, "exchange")?;
    let currency = opt_text(m, "currency")?;
    let source = opt_text(m, "source")?;

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
    let right = match option_type {
        "CALL" => Right::Call,
        "PUT" => Right::Put,
        other => {
            return Err(reject(
                "option_type",
                "option_type",
                format_args!("is {:?}, must be CALL or PUT", shown(other)),
            ));
        }
    };
    if !stock_symbol(underlying) {
        return Err(reject(
            "underlying_format",
            "underlying",
            format_args!(
                "is {:?}, must be a stock symbol like AAPL or BRK.B (^?[A-Z][A-Z0-9.-]{{0,9}})",
                shown(underlying)
            ),
        ));
    }
    let Some(occ) = parse_occ(contract) else {
        return Err(reject(
            "contract_format",
            "id",
            format_args!(
                "is {:?}, must be an OCC symbol like AAPL240621C00190000 (root, YYMMDD, C or P, strike x 1000 in 8 digits)",
                shown(contract)
            ),
        ));
    };
    let says = |what: &dyn core::fmt::Display| format!("but contract {contract} says {what}");
    if occ.root != underlying {
        return Err(reject(
            "contract_matches",
            "underlying",
            format_args!("is {underlying}, {}", says(&occ.root)),
        ));
    }
    if occ.expiry != expiry {
        return Err(reject(
            "contract_matches",
            "expiry",
            format_args!(
                "is {}, {}",
                format_date(expiry),
                says(&format_date(occ.expiry))
            ),
        ));
    }
    if occ.right != right {
        return Err(reject(
            "contract_matches",
            "option_type",
            format_args!("is {option_type}, {}", says(&occ.right.name())),
        ));
    }
    positive("price_positive", "price", price)?;
    positive("strike_positive", "strike", strike)?;
    let thousandths = strike * 1000.0;
    if (thousandths - occ.strike_thousandths as f64).abs() > 1e-6 * thousandths.max(1.0) {
        return Err(reject(
            "contract_matches",
            "strike",
            format_args!(
                "is {strike}, {}",
                says(&(occ.strike_thousandths as f64 / 1000.0))
            ),
        ));
    }
    if let Some(bid) = bid {
        non_negative("bid_non_negative", "bid", bid)?;
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
        non_negative("last_size_non_negative", "last_size", size)?;
    }
    for (rule, field, v) in [
        ("volume_non_negative", "volume", volume),
        ("open_interest_non_negative", "open_interest", open_interest),
    ] {
        if let Some(v) = v
            && v < 0
        {
            return Err(reject(rule, field, format_args!("is {v}, must be >= 0")));
        }
    }
    if let Some(iv) = implied_volatility {
        positive("implied_volatility_positive", "implied_volatility", iv)?;
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
    let close = expiry_close(expiry);
    if event_time >= close {
        return Err(reject(
            "time_to_expiry",
            "event_time",
            format_args!(
                "is {}, not before the expiry close {} ({} {EXPIRY_CLOSE_UTC_HOUR}:00 UTC): time to expiry is {:.6} years, must be > 0",
                format_time(event_time),
                format_time(close),
                format_date(expiry),
                (close - event_time) as f64 / YEAR
            ),
        ));
    }

    Ok(Trade {
        contract,
        underlying,
        expiry,
        strike,
        right,
        style,
        event_id,
        uuid,
        event_time,
        ingestion_time,
        price,
        bid,
        ask,
        last_size,
        volume,
        open_interest,
        implied_volatility,
        exchange,
        currency,
        source,
        time_to_expiry: (close - event_time) as f64 / YEAR,
    })
}

/// The underlying's tick a trade pairs with: the latest committed at or before its event
/// time.
#[derive(Debug, Clone, PartialEq)]
pub struct Underlying {
    /// The tick's `event_id`.
    pub event_id: String,
    /// The tick's event time, microseconds.
    pub event_time: i64,
    /// The tick's price.
    pub price: f64,
}

/// The rules that need the paired tick (`None`: the lookup found none) and the rate.
pub fn check_paired(
    trade: &Trade<'_>,
    underlying: Option<&Underlying>,
    rate: f64,
    settings: &Settings,
) -> Result<(), Reject> {
    let Some(u) = underlying else {
        return Err(reject(
            "underlying_missing",
            "underlying",
            format_args!(
                "{} has no tick at or before event_time {}",
                trade.underlying,
                format_time(trade.event_time)
            ),
        ));
    };
    let age = trade.event_time - u.event_time;
    if age > settings.max_underlying_age {
        return Err(reject(
            "underlying_age",
            "underlying",
            format_args!(
                "{}'s latest tick at or before event_time {} is from {}, {} older; max_underlying_age is {}",
                trade.underlying,
                format_time(trade.event_time),
                format_time(u.event_time),
                format_duration(age),
                format_duration(settings.max_underlying_age)
            ),
        ));
    }
    let (s, k) = (u.price, trade.strike);
    let european = trade.style == "EUROPEAN";
    let floor = if european {
        model::bounds(trade.right, s, k, trade.time_to_expiry, rate).0
    } else {
        match trade.right {
            Right::Call => (s - k).max(0.0),
            Right::Put => (k - s).max(0.0),
        }
    };
    if trade.price < floor - settings.intrinsic_tolerance {
        return Err(reject(
            "price_below_intrinsic",
            "price",
            format_args!(
                "is {}, below the {} value {floor:.4} of a {} {} at strike {k} with {} at {s} (tolerance {})",
                trade.price,
                if european {
                    "discounted intrinsic"
                } else {
                    "intrinsic"
                },
                trade.style,
                trade.right.name(),
                trade.underlying,
                settings.intrinsic_tolerance
            ),
        ));
    }
    Ok(())
}

/// An OCC (OSI) contract symbol's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occ<'a> {
    /// The root: the underlying's symbol for standard contracts.
    pub root: &'a str,
    /// The expiry, days since 1970-01-01.
    pub expiry: i64,
    /// Call or put.
    pub right: Right,
    /// The strike in thousandths.
    pub strike_thousandths: i64,
}

/// Parses `AAPL240621C00190000`: a root of 1 to 6 of `[A-Z0-9.]` (padded with spaces to
/// six in OSI's fixed-width form, `AAPL  240621C00190000`), a real date `YYMMDD` in
/// 2000-2099, `C` or `P`, and the strike × 1000 in 8 digits.
pub fn parse_occ(symbol: &str) -> Option<Occ<'_>> {
    let b = symbol.as_bytes();
    if b.len() < 16 || !symbol.is_ascii() {
        return None;
    }
    let (root, tail) = symbol.split_at(b.len() - 15);
    let root = root.trim_end_matches(' ');
    let root_ok = (1..=6).contains(&root.len())
        && root
            .bytes()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'.')
        && root.as_bytes()[0].is_ascii_uppercase();
    let t = tail.as_bytes();
    let digits = |r: core::ops::Range<usize>| -> Option<i64> {
        t[r.clone()]
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| tail[r].parse().ok())
            .flatten()
    };
    if !root_ok {
        return None;
    }
    let (yy, mm, dd) = (digits(0..2)?, digits(2..4)?, digits(4..6)?);
    let right = match t[6] {
        b'C' => Right::Call,
        b'P' => Right::Put,
        _ => return None,
    };
    let strike_thousandths = digits(7..15)?;
    let year = 2000 + yy;
    if !(1..=12).contains(&mm) || dd < 1 || dd > days_in_month(year, mm) {
        return None;
    }
    Some(Occ {
        root,
        expiry: days_from_civil(year, mm, dd),
        right,
        strike_thousandths,
    })
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day number (Howard Hinnant's `civil_from_days`).
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

/// A day number as `2024-06-21`.
pub fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// An instant as RFC 3339 in UTC: `2024-05-01T14:30:00.120Z`.
pub fn format_time(micros: i64) -> String {
    let days = micros.div_euclid(DAY);
    let in_day = micros.rem_euclid(DAY);
    let secs = in_day / SECOND;
    let frac = in_day % SECOND;
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = format!("{}T{h:02}:{mi:02}:{s:02}", format_date(days));
    if frac % MS == 0 && frac != 0 {
        out.push_str(&format!(".{:03}", frac / MS));
    } else if frac != 0 {
        out.push_str(&format!(".{frac:06}"));
    }
    out.push('Z');
    out
}

/// Stocks, ETFs and indices: `^?[A-Z][A-Z0-9.-]{0,9}`, as the `tickers` guest checks them.
pub fn stock_symbol(symbol: &str) -> bool {
    let s = symbol.strip_prefix('^').unwrap_or(symbol).as_bytes();
    match s.split_first() {
        Some((first, rest)) => {
            first.is_ascii_uppercase()
                && rest.len() <= 9
                && rest.iter().all(|b| {
                    b.is_ascii_uppercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-')
                })
        }
        None => false,
    }
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

fn non_negative(rule: &'static str, field: &str, v: f64) -> Result<(), Reject> {
    if v.is_nan() || v < 0.0 {
        Err(reject(rule, field, format_args!("is {v}, must be >= 0")))
    } else if !v.is_finite() {
        Err(reject(rule, field, format_args!("is {v}, must be finite")))
    } else {
        Ok(())
    }
}

fn required<'a>(m: &'a Message<'_>, name: &str) -> Result<&'a Value, Reject> {
    match m.get(name) {
        None => Err(reject("required", name, "is missing")),
        Some(Value::Null) => Err(reject("required", name, "is null")),
        Some(v) => Ok(v),
    }
}

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

/// An int: an Avro `int`/`long`/`date` arrives as one.
fn int(v: &Value, name: &str, what: &str) -> Result<i64, Reject> {
    v.as_i64().ok_or_else(|| wrong_type(name, v, what))
}

fn opt_int(m: &Message<'_>, name: &str) -> Result<Option<i64>, Reject> {
    optional(m, name)
        .map(|v| int(v, name, "a whole number"))
        .transpose()
}

/// A UUID in its hyphenated or simple form, any case, as a number (as the `tickers`
/// guest reads them).
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
