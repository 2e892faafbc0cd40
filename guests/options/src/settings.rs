//! The guest's config: the table, the lookups it runs, and the rules' limits.

use weir_guest::prelude::*;

/// Microseconds in a millisecond.
pub const MS: i64 = 1_000;
/// Microseconds in a second.
pub const SECOND: i64 = 1_000 * MS;
/// Microseconds in a minute.
pub const MINUTE: i64 = 60 * SECOND;
/// Microseconds in an hour.
pub const HOUR: i64 = 60 * MINUTE;
/// Microseconds in a day.
pub const DAY: i64 = 24 * HOUR;

/// The parsed config (see the crate docs for the keys).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `table` (default `option_trades`).
    pub table: String,
    /// `underlying_lookup` (default `underlying`): the underlying's latest tick at or
    /// before the trade.
    pub underlying_lookup: String,
    /// `rate_lookup` (default `rate`): the risk-free rate of the trade's day.
    pub rate_lookup: String,
    /// `max_underlying_age` (default `1m`; `off` is `i64::MAX`), microseconds.
    pub max_underlying_age: i64,
    /// `intrinsic_tolerance` (default `0.01`, per share): how far below its intrinsic
    /// value a trade may be.
    pub intrinsic_tolerance: f64,
    /// `max_volatility` (default `5`, that is 500 %): the top of the implied-volatility
    /// search.
    pub max_volatility: f64,
    /// `max_future_skew` (default `5s`; `off`), microseconds.
    pub max_future_skew: i64,
    /// `max_lateness` (default `1h`; `off`), microseconds.
    pub max_lateness: i64,
}

impl Settings {
    /// Reads the config; errors name the key.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Ok(Self {
            table: name(config, "table", "option_trades")?,
            underlying_lookup: name(config, "underlying_lookup", "underlying")?,
            rate_lookup: name(config, "rate_lookup", "rate")?,
            max_underlying_age: duration_key(config, "max_underlying_age", MINUTE)?,
            intrinsic_tolerance: number(config, "intrinsic_tolerance", 0.01, 0.0)?,
            max_volatility: {
                let v = number(config, "max_volatility", 5.0, 0.0)?;
                if v <= 0.01 {
                    return Err(ConfigError::new(format!(
                        "`max_volatility` = {v} must be above 0.01 (it is a fraction: 5 is 500 %)"
                    )));
                }
                v
            },
            max_future_skew: duration_key(config, "max_future_skew", 5 * SECOND)?,
            max_lateness: duration_key(config, "max_lateness", HOUR)?,
        })
    }
}

fn name(config: &Config, key: &str, default: &str) -> Result<String, ConfigError> {
    match config.get(key).map(str::trim) {
        None => Ok(default.into()),
        Some("") => Err(ConfigError::new(format!(
            "`{key}` is empty: give a name, or leave the key out for {default:?}"
        ))),
        Some(v) => Ok(v.into()),
    }
}

/// A finite number at least `min`.
fn number(config: &Config, key: &str, default: f64, min: f64) -> Result<f64, ConfigError> {
    match config.get(key).map(str::trim) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= min)
            .ok_or_else(|| {
                ConfigError::new(format!(
                    "`{key}` = {raw:?} must be a number of at least {min}"
                ))
            }),
    }
}

/// A duration, or `off` for none.
fn duration_key(config: &Config, key: &str, default: i64) -> Result<i64, ConfigError> {
    match config.get(key) {
        None => Ok(default),
        Some(raw) if raw.trim() == "off" => Ok(i64::MAX),
        Some(raw) => parse_duration(raw)
            .map_err(|why| ConfigError::new(format!("`{key}` = {raw:?} is not a duration: {why}"))),
    }
}

/// Parses a duration: a number and a unit, or several (`1h30m`): `us`, `ms`, `s`, `m`,
/// `h`, `d`. `0` needs no unit. Returns microseconds. (As the `tickers` guest reads them.)
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

/// A duration in its largest whole unit: `1m`, `90s`, `1500ms`; `off` for none.
pub fn format_duration(micros: i64) -> String {
    if micros == i64::MAX {
        return "off".into();
    }
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
