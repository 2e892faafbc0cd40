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

use weir_guest::parse::stock_symbol;
use weir_guest::rules::{
    event_times, non_negative, not_above, number, opt_number, opt_text, optional, positive, reject,
    required, shown, text, timestamp, uuid, wrong_type,
};
use weir_guest::time::{DAY, HOUR, days_from_civil, format_date, format_duration, format_time};

use crate::model::{self, Right};
use crate::settings::Settings;

pub use weir_guest::rules::Reject;

/// A contract expires at 16:00 New York time on its expiry date, taken as 20:00 UTC
/// (16:00 EDT; daylight saving is ignored, as `weir ingest simulate` ignores it, so the
/// model's time to expiry is an hour long in the winter).
pub const EXPIRY_CLOSE_UTC_HOUR: i64 = 20;

/// A year for time to expiry: 365.25 days.
pub const YEAR: f64 = 365.25 * DAY as f64;

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

    let uuid = uuid("event_id_uuid", "event_id", event_id)?;
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
    if let (Some(bid), Some(ask)) = (bid, ask) {
        not_above("bid_le_ask", "bid", bid, "ask", ask)?;
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
    event_times(
        event_time,
        ingestion_time,
        settings.max_future_skew,
        settings.max_lateness,
    )?;
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

/// An int: an Avro `int`/`long`/`date` arrives as one.
fn int(v: &Value, name: &str, what: &str) -> Result<i64, Reject> {
    v.as_i64().ok_or_else(|| wrong_type(name, v, what))
}

fn opt_int(m: &Message<'_>, name: &str) -> Result<Option<i64>, Reject> {
    optional(m, name)
        .map(|v| int(v, name, "a whole number"))
        .transpose()
}
