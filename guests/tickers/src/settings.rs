//! The guest's config: asset class, tables, candle intervals and the time-skew limits.

use weir_guest::prelude::*;
use weir_guest::time::{
    DAY, HOUR, MINUTE, SECOND, duration_key, format_duration, limit_key, parse_duration,
};

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
            Self::Stocks => weir_guest::parse::stock_symbol(symbol),
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
    /// `impute`, `impute_fields`, `impute_window`: which missing values are filled in, and
    /// how (default none).
    pub impute: Option<Impute>,
    /// `windows` and the keys around it: sliding windows per symbol (default none).
    pub windows: Option<Windows>,
}

/// A tick field whose missing value may be imputed: the nullable numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    /// `bid` (nullable for stocks only).
    Bid,
    /// `ask` (nullable for stocks only).
    Ask,
    /// `last_size`.
    LastSize,
    /// `day_volume` (a whole number: a trailing mean is rounded).
    DayVolume,
    /// `change`.
    Change,
    /// `change_percent`.
    ChangePercent,
    /// `circulating_supply` (crypto).
    CirculatingSupply,
}

impl Field {
    /// Every imputable field, in the tick table's column order.
    pub const ALL: [Field; 7] = [
        Field::Bid,
        Field::Ask,
        Field::LastSize,
        Field::DayVolume,
        Field::Change,
        Field::ChangePercent,
        Field::CirculatingSupply,
    ];

    /// The field's (and column's) name.
    pub fn name(self) -> &'static str {
        match self {
            Field::Bid => "bid",
            Field::Ask => "ask",
            Field::LastSize => "last_size",
            Field::DayVolume => "day_volume",
            Field::Change => "change",
            Field::ChangePercent => "change_percent",
            Field::CirculatingSupply => "circulating_supply",
        }
    }

    /// Whether a tick of `class` can lack the field (so that imputing it means something).
    fn nullable_in(self, class: AssetClass) -> bool {
        match self {
            Field::Bid | Field::Ask => !class.requires_quote(),
            Field::CirculatingSupply => class.has_supply(),
            _ => true,
        }
    }
}

/// How a missing value is imputed from the symbol's earlier ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The last value the symbol's ticks had for the field (`forward_fill`).
    ForwardFill,
    /// The mean of the last N values the symbol's ticks had for it (`trailing_mean`,
    /// N from `impute_window`).
    TrailingMean(usize),
}

/// The `impute` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Impute {
    /// How.
    pub method: Method,
    /// Which fields, in [`Field::ALL`] order, none twice.
    pub fields: Vec<Field>,
}

/// The largest `impute_window`.
pub const MAX_IMPUTE_WINDOW: usize = 1000;

/// The `windows` settings: sliding windows of each length, advancing by `hop`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    /// The window lengths (`windows`, e.g. `1m,5m,15m`), labelled like candle intervals.
    pub lengths: Vec<Interval>,
    /// `window_hop`: how far apart consecutive windows start (default `1m`); divides every
    /// length. Window starts are multiples of it, counted from the Unix epoch.
    pub hop: i64,
    /// `window_close_offset`: how long after its end (in event time) a window closes
    /// (default `5s`), for upstream delay.
    pub close_offset: i64,
    /// `allowed_lateness`: how far behind the symbol's latest event time a tick may be and
    /// still count in (and revise) its windows (default `1h`).
    pub allowed_lateness: i64,
    /// `windows_table` (default `windows`).
    pub table: String,
    /// `watermarks_table` (default `window_watermarks`): each symbol's latest event time.
    pub watermarks_table: String,
}

/// The most windows of one length a tick may fall in (length / hop).
pub const MAX_WINDOWS_PER_TICK: i64 = 60;

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
        let max_future_skew = limit_key(config, "max_future_skew", 5 * SECOND)?;
        let max_lateness = limit_key(config, "max_lateness", HOUR)?;
        let clean_topic = match config.get("clean_topic").map(str::trim) {
            None => None,
            Some("") => {
                return Err(ConfigError::new(
                    "`clean_topic` is empty: name a topic, or leave the key out",
                ));
            }
            Some(t) => Some(t.into()),
        };
        let impute = impute(config, class)?;
        let windows = windows(config)?;
        Ok(Self {
            class,
            table,
            candles_table,
            intervals,
            max_future_skew,
            max_lateness,
            clean_topic,
            impute,
            windows,
        })
    }
}

/// `impute` (`forward_fill` or `trailing_mean`), `impute_fields` and `impute_window`.
fn impute(config: &Config, class: AssetClass) -> Result<Option<Impute>, ConfigError> {
    let method = match config.get("impute").map(str::trim) {
        None | Some("off") => {
            for key in ["impute_fields", "impute_window"] {
                if config.get(key).is_some() {
                    return Err(ConfigError::new(format!(
                        "`{key}` is set but `impute` is not: set `impute: forward_fill` or `impute: trailing_mean`"
                    )));
                }
            }
            return Ok(None);
        }
        Some("forward_fill") => {
            if config.get("impute_window").is_some() {
                return Err(ConfigError::new(
                    "`impute_window` is for `impute: trailing_mean`; forward_fill takes the last value",
                ));
            }
            Method::ForwardFill
        }
        Some("trailing_mean") => {
            let n = match config.get("impute_window").map(str::trim) {
                None => 20,
                Some(raw) => raw
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_IMPUTE_WINDOW).contains(n))
                    .ok_or_else(|| {
                        ConfigError::new(format!(
                            "`impute_window` = {raw:?} must be a whole number of ticks from 1 to {MAX_IMPUTE_WINDOW}"
                        ))
                    })?,
            };
            Method::TrailingMean(n)
        }
        Some(other) => {
            return Err(ConfigError::new(format!(
                "`impute` = {other:?} is not a method: use forward_fill, trailing_mean or off"
            )));
        }
    };
    let raw = config.get("impute_fields").ok_or_else(|| {
        ConfigError::new("`impute_fields` is required with `impute`: name the fields, e.g. bid,ask")
    })?;
    let mut fields: Vec<Field> = Vec::new();
    for part in raw.split(',').map(str::trim) {
        let field = Field::ALL
            .into_iter()
            .find(|f| f.name() == part)
            .ok_or_else(|| {
                ConfigError::new(format!(
                    "`impute_fields`: {part:?} is not an imputable field: use bid, ask, last_size, day_volume, change, change_percent or circulating_supply"
                ))
            })?;
        if !field.nullable_in(class) {
            return Err(ConfigError::new(format!(
                "`impute_fields`: {part:?} is never missing from a valid {} tick, so there is nothing to impute",
                class.name()
            )));
        }
        if fields.contains(&field) {
            return Err(ConfigError::new(format!(
                "`impute_fields`: {part:?} is listed twice"
            )));
        }
        fields.push(field);
    }
    fields.sort();
    Ok(Some(Impute { method, fields }))
}

/// `windows` and its companions.
fn windows(config: &Config) -> Result<Option<Windows>, ConfigError> {
    const KEYS: [&str; 5] = [
        "window_hop",
        "window_close_offset",
        "allowed_lateness",
        "windows_table",
        "watermarks_table",
    ];
    let lengths = match config.get("windows").map(str::trim) {
        None | Some("off") => {
            if let Some(key) = KEYS.iter().find(|k| config.get(k).is_some()) {
                return Err(ConfigError::new(format!(
                    "`{key}` is set but `windows` is not: list the window lengths, e.g. `windows: 1m,5m,15m`"
                )));
            }
            return Ok(None);
        }
        Some(raw) => intervals(raw).map_err(|why| ConfigError::new(format!("`windows`: {why}")))?,
    };
    let hop = match config.get("window_hop") {
        None => MINUTE,
        Some(raw) => parse_duration(raw).map_err(|why| {
            ConfigError::new(format!("`window_hop` = {raw:?} is not a duration: {why}"))
        })?,
    };
    if hop <= 0 {
        return Err(ConfigError::new("`window_hop` must be longer than 0"));
    }
    for length in &lengths {
        if length.micros % hop != 0 {
            return Err(ConfigError::new(format!(
                "`window_hop` {} does not divide the window length {}: windows start at multiples of the hop",
                format_duration(hop),
                length.label
            )));
        }
        if length.micros / hop > MAX_WINDOWS_PER_TICK {
            return Err(ConfigError::new(format!(
                "`window_hop` {} puts each tick in {} windows of length {}; at most {MAX_WINDOWS_PER_TICK}: use a longer hop",
                format_duration(hop),
                length.micros / hop,
                length.label
            )));
        }
    }
    let close_offset = duration_key(config, "window_close_offset", 5 * SECOND)?;
    let allowed_lateness = duration_key(config, "allowed_lateness", HOUR)?;
    Ok(Some(Windows {
        lengths,
        hop,
        close_offset,
        allowed_lateness,
        table: name(config, "windows_table", "windows")?,
        watermarks_table: name(config, "watermarks_table", "window_watermarks")?,
    }))
}

fn name(config: &Config, key: &str, default: &str) -> Result<String, ConfigError> {
    match config.get(key).map(str::trim) {
        None => Ok(default.into()),
        Some("") => Err(ConfigError::new(format!("`{key}` is empty: name a table"))),
        Some(table) => Ok(table.into()),
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
