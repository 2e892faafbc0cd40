//! Imputation: missing values of named nullable fields filled in from the symbol's
//! earlier ticks, and each imputed field recorded in the row's `imputed` column.
//!
//! With `impute: forward_fill`, a tick missing the field gets the value of the symbol's
//! last tick that had it; with `impute: trailing_mean`, the mean of the values of the
//! symbol's last `impute_window` ticks that had it (`day_volume`, a whole number, rounded).
//! "Earlier" is message order, which is event order per symbol on one partition (the
//! feeds key ticks by symbol). Imputed values never count as observations: the next
//! missing value is filled from what arrived, not from what was filled in. A tick missing
//! the field before any tick of its symbol had it keeps it null, unflagged.
//!
//! Imputation runs after the rules, on accepted ticks only: the rules judge what arrived.
//!
//! # State
//!
//! Per field and symbol, under the key `impute/<field>/<symbol>`: the values observed, the
//! oldest first (one for forward fill, up to `impute_window` for the trailing mean), each
//! an `f64` in 8 little-endian bytes. Loaded on a symbol's first tick in a batch and
//! written back once at the batch's end, committed with its rows.

use weir_guest::prelude::*;

use crate::rules::Tick;
use crate::settings::{Field, Impute, Method};

/// The state key of `field`'s history for `symbol`.
pub fn key(field: Field, symbol: &str) -> String {
    format!("impute/{}/{symbol}", field.name())
}

/// Encodes a history: each value's 8 little-endian bytes, in order.
pub fn encode(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Decodes a history; `None` when the length is not a multiple of 8.
pub fn decode(bytes: &[u8]) -> Option<Vec<f64>> {
    if !bytes.len().is_multiple_of(8) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    )
}

/// One field's observed values for one symbol, as this batch leaves them.
struct History {
    values: Vec<f64>,
    changed: bool,
}

/// The batch's imputation: histories loaded from state on first use, saved by [`save`].
///
/// [`save`]: Imputer::save
pub struct Imputer<'s> {
    settings: &'s Impute,
    histories: BTreeMap<(Field, String), History>,
}

impl<'s> Imputer<'s> {
    /// An imputer with nothing loaded yet.
    pub fn new(settings: &'s Impute) -> Self {
        Self {
            settings,
            histories: BTreeMap::new(),
        }
    }

    /// How many values a history keeps.
    fn keep(&self) -> usize {
        match self.settings.method {
            Method::ForwardFill => 1,
            Method::TrailingMean(n) => n,
        }
    }

    /// Fills `tick`'s missing configured fields, records its present ones, and returns the
    /// names of the fields it imputed, in column order.
    ///
    /// # Panics
    ///
    /// When stored state does not decode: the host's state was written by something else
    /// under this guest's keys, which is the operator's to resolve, not a bad message.
    pub fn apply(&mut self, tick: &mut Tick<'_>) -> Vec<&'static str> {
        let keep = self.keep();
        let method = self.settings.method;
        let mut imputed = Vec::new();
        for &field in &self.settings.fields {
            let history = self
                .histories
                .entry((field, tick.symbol.into()))
                .or_insert_with(|| load(field, tick.symbol));
            match get(tick, field) {
                Some(v) => {
                    if history.values.len() == keep {
                        history.values.remove(0);
                    }
                    history.values.push(v);
                    history.changed = true;
                }
                None => {
                    if let Some(v) = estimate(method, &history.values) {
                        set(tick, field, v);
                        imputed.push(field.name());
                    }
                }
            }
        }
        imputed
    }

    /// Writes every history the batch changed back to state.
    pub fn save(self) -> Result<(), state::StateError> {
        for ((field, symbol), history) in self.histories {
            if history.changed {
                state::put(key(field, &symbol), encode(&history.values))?;
            }
        }
        Ok(())
    }
}

fn load(field: Field, symbol: &str) -> History {
    let key = key(field, symbol);
    let values = match state::get(&key) {
        None => Vec::new(),
        Some(bytes) => decode(&bytes).unwrap_or_else(|| {
            panic!(
                "state {key:?} holds {} bytes, not a list of 8-byte floats",
                bytes.len()
            )
        }),
    };
    History {
        values,
        changed: false,
    }
}

/// The value imputed from `values` (oldest first), if there are any.
pub fn estimate(method: Method, values: &[f64]) -> Option<f64> {
    match method {
        Method::ForwardFill => values.last().copied(),
        Method::TrailingMean(_) if values.is_empty() => None,
        Method::TrailingMean(_) => Some(values.iter().sum::<f64>() / values.len() as f64),
    }
}

fn get(tick: &Tick<'_>, field: Field) -> Option<f64> {
    match field {
        Field::Bid => tick.bid,
        Field::Ask => tick.ask,
        Field::LastSize => tick.last_size,
        Field::DayVolume => tick.day_volume.map(|v| v as f64),
        Field::Change => tick.change,
        Field::ChangePercent => tick.change_percent,
        Field::CirculatingSupply => tick.circulating_supply,
    }
}

fn set(tick: &mut Tick<'_>, field: Field, v: f64) {
    match field {
        Field::Bid => tick.bid = Some(v),
        Field::Ask => tick.ask = Some(v),
        Field::LastSize => tick.last_size = Some(v),
        Field::DayVolume => tick.day_volume = Some(round(v)),
        Field::Change => tick.change = Some(v),
        Field::ChangePercent => tick.change_percent = Some(v),
        Field::CirculatingSupply => tick.circulating_supply = Some(v),
    }
}

/// `v` rounded half away from zero (`f64::round` needs `std`).
fn round(v: f64) -> i64 {
    if v < 0.0 {
        -((-v + 0.5) as i64)
    } else {
        (v + 0.5) as i64
    }
}
