//! The guest's config: asset class, tables, candle intervals and the time-skew limits.

use weir_guest::prelude::*;

/// Microseconds in a millisecond, second, minute, hour and day.
pub const MS: i64 = 1_000;
/// Microseconds in a second.
pub const SECOND: i64 = 1_000 * MS;
/// Microseconds in a minute.
pub const MINUTE: i64 = 60 * SECOND;
/// Microseconds in an hour.
pub const HOUR: i64 = 60 * MINUTE;
/// Microseconds in a day.
pub const DAY: i64 = 24 * HOUR;

/// The kind of instrument a topic carries. The rules and candles are the same for all;
/// only the parameters below differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetClass {
    /// Stocks, ETFs and indices (`AAPL`, `BRK.B`, `^GSPC`).
    Stocks,
    /// Crypto assets against a currency (`BTC-USD`).
    Crypto,
    /// Currency pairs, Yahoo style (`EURUSD=X`).
    Currency,
}

impl AssetClass {
    /// The class named `name` (`stocks`, `crypto`, `currency`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "stocks" => Some(Self::Stocks),
            "crypto" => Some(Self::Crypto),
            "currency" => Some(Self::Currency),
            _ => None,
        }
    }

    /// The class's name, as configured and as written to `candles.asset_class`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stocks => "stocks",
            Self::Crypto => "crypto",
            Self::Currency => "currency",
        }
    }

    /// The tick table when `table` is not configured.
    pub fn default_table(self) -> &'static str {
        match self {
            Self::Stocks => "ticks_stocks",
            Self::Crypto => "ticks_crypto",
            Self::Currency => "ticks_currency",
        }
    }

    /// Whether bid and ask are required: their value schemas make them non-null for
    /// crypto and currency; stocks quote them only in the regular session.
    pub fn requires_quote(self) -> bool {
        matches!(self, Self::Crypto | Self::Currency)
    }

    /// Whether the class has a `circulating_supply` field (and column).
    pub fn has_supply(self) -> bool {
        self == Self::Crypto
    }

    /// Whether `symbol` has this class's symbol format.
    pub fn symbol_ok(self, symbol: &str) -> bool {
        match self {
            Self::Stocks => crate::symbols::stock(symbol),
            Self::Crypto => crate::symbols::crypto(symbol),
            Self::Currency => crate::symbols::currency(symbol),
        }
    }

    /// The symbol format, for dead-letter reasons.
    pub fn symbol_format(self) -> &'static str {
        match self {
            Self::Stocks => "a stock symbol like AAPL, BRK.B or ^GSPC (^?[A-Z][A-Z0-9.-]{0,9})",
            Self::Crypto => "a crypto pair like BTC-USD (BASE-QUOTE, each 1-10 of [A-Z0-9])",
            Self::Currency => "a currency pair like EURUSD=X (six letters A-Z, then =X)",
        }
    }
}

/// A candle interval: its length and its label (`1m`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// Length in microseconds.
    pub micros: i64,
    /// The label written to `candles.interval`: the length in its largest whole unit.
    pub label: String,
}

/// The longest candle interval: buckets are aligned to the Unix epoch, which is only
/// meaningful for intervals that divide a day.
pub const MAX_INTERVAL: i64 = DAY;

/// The parsed config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `asset_class` (required): `stocks`, `crypto` or `currency`.
    pub class: AssetClass,
    /// `table`: the tick table (default `ticks_<class>`).
    pub table: String,
    /// `candles_table`: the candle table (default `candles`).
    pub candles_table: String,
    /// `intervals`: candle intervals, comma separated (default `1m,5m,15m`).
    pub intervals: Vec<Interval>,
    /// `max_future_skew`: how far event_time may be after ingestion_time (default `5s`;
    /// `off` is `i64::MAX`).
    pub max_future_skew: i64,
    /// `max_lateness`: how far event_time may be before ingestion_time (default `1h`;
    /// `off` is `i64::MAX`).
    pub max_lateness: i64,
    /// `clean_topic`: where each accepted tick is emitted, normalised (default none).
    pub clean_topic: Option<String>,
}

impl Settings {
    /// Reads the config; errors name the key.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let class = match config.get("asset_class").map(str::trim) {
            None => {
                return Err(ConfigError::new(
                    "`asset_class` is required: stocks, crypto or currency",
                ));
            }
            Some(raw) => AssetClass::parse(raw).ok_or_else(|| {
                ConfigError::new(format!(
                    "`asset_class` = {raw:?} is not an asset class: use stocks, crypto or currency"
                ))
            })?,
        };
        let table = name(config, "table", class.default_table())?;
        let candles_table = name(config, "candles_table", "candles")?;
        let intervals = intervals(config.get("intervals").unwrap_or("1m,5m,15m"))
            .map_err(|why| ConfigError::new(format!("`intervals`: {why}")))?;
        let max_future_skew = duration_key(config, "max_future_skew", 5 * SECOND)?;
        let max_lateness = duration_key(config, "max_lateness", HOUR)?;
        let clean_topic = match config.get("clean_topic").map(str::trim) {
            None => None,
            Some("") => {
                return Err(ConfigError::new(
                    "`clean_topic` is empty: name a topic, or leave the key out",
                ));
            }
            Some(t) => Some(t.into()),
        };
        Ok(Self {
            class,
            table,
            candles_table,
            intervals,
            max_future_skew,
            max_lateness,
            clean_topic,
        })
    }
}

fn name(config: &Config, key: &str, default: &str) -> Result<String, ConfigError> {
    match config.get(key).map(str::trim) {
        None => Ok(default.into()),
        Some("") => Err(ConfigError::new(format!("`{key}` is empty: name a table"))),
        Some(table) => Ok(table.into()),
    }
}

/// A skew limit: a duration, or `off` for none.
fn duration_key(config: &Config, key: &str, default: i64) -> Result<i64, ConfigError> {
    match config.get(key) {
        None => Ok(default),
        Some(raw) if raw.trim() == "off" => Ok(i64::MAX),
        Some(raw) => parse_duration(raw)
            .map_err(|why| ConfigError::new(format!("`{key}` = {raw:?} is not a duration: {why}"))),
    }
}

/// Parses the `intervals` list: durations, comma separated, each > 0 and at most a day,
/// none twice.
pub fn intervals(raw: &str) -> Result<Vec<Interval>, String> {
    let mut out: Vec<Interval> = Vec::new();
    for part in raw.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!(
                "{raw:?} has an empty entry; list durations like 1m,5m,15m"
            ));
        }
        let micros =
            parse_duration(part).map_err(|why| format!("{part:?} is not a duration: {why}"))?;
        if micros <= 0 || micros > MAX_INTERVAL {
            return Err(format!("{part:?} must be longer than 0 and at most 1d"));
        }
        if let Some(same) = out.iter().find(|i| i.micros == micros) {
            return Err(format!("{part:?} is the same interval as {:?}", same.label));
        }
        out.push(Interval {
            micros,
            label: format_duration(micros),
        });
    }
    Ok(out)
}

/// Parses a duration: a number and a unit, or several (`1h30m`): `us`, `ms`, `s`, `m`,
/// `h`, `d`. `0` needs no unit. Returns microseconds.
pub fn parse_duration(raw: &str) -> Result<i64, String> {
    const HINT: &str = "write a whole number and a unit: 500ms, 5s, 10m, 1h";
    let s = raw.trim();
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(format!("it is empty; {HINT}"));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(format!("expected a number at {:?}; {HINT}", &s[start..]));
        }
        let number: i64 = s[start..i]
            .parse()
            .map_err(|_| format!("{:?} is too large", &s[start..i]))?;
        let unit_start = i;
        while i < bytes.len() && !bytes[i].is_ascii_digit() {
            i += 1;
        }
        let unit = match &s[unit_start..i] {
            "us" | "µs" => 1,
            "ms" => MS,
            "s" => SECOND,
            "m" => MINUTE,
            "h" => HOUR,
            "d" => DAY,
            "" => return Err(format!("{:?} has no unit; {HINT}", &s[start..i])),
            other => {
                return Err(format!(
                    "unknown unit {other:?}; use us, ms, s, m, h or d ({HINT})"
                ));
            }
        };
        total = number
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?} is too long"))?;
    }
    Ok(total)
}

/// A duration in its largest whole unit: `1m`, `90s`, `1500ms`.
pub fn format_duration(micros: i64) -> String {
    if micros == 0 {
        return "0s".into();
    }
    for (unit, name) in [
        (DAY, "d"),
        (HOUR, "h"),
        (MINUTE, "m"),
        (SECOND, "s"),
        (MS, "ms"),
    ] {
        if micros % unit == 0 {
            return format!("{}{name}", micros / unit);
        }
    }
    format!("{micros}us")
}
