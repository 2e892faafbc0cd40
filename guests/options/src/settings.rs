//! The guest's config: the table, the lookups it runs, and the rules' limits.

use weir_guest::prelude::*;
use weir_guest::time::{HOUR, MINUTE, SECOND, limit_key};

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
            max_underlying_age: limit_key(config, "max_underlying_age", MINUTE)?,
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
            max_future_skew: limit_key(config, "max_future_skew", 5 * SECOND)?,
            max_lateness: limit_key(config, "max_lateness", HOUR)?,
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
