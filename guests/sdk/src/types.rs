//! Conveniences on the WIT types: reading message fields, building rows, actions and
//! outcomes.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::{
    Action, ColumnPolicy, Decimal, EmitMessage, EmitValue, Field, InsertRow, MergePolicy, Message,
    Outcome, UpsertRow, Value,
};

impl Value {
    /// True for [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The text of a [`Value::Text`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// A number as `f64`: floats, ints and decimals.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            Value::Decimal(d) => Some(d.to_f64()),
            _ => None,
        }
    }

    /// The integer of a [`Value::Int`].
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The bool of a [`Value::Boolean`].
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// Microseconds since the epoch of a [`Value::Timestamp`].
    pub fn as_timestamp_micros(&self) -> Option<i64> {
        match self {
            Value::Timestamp(t) => Some(*t),
            _ => None,
        }
    }

    /// The name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Boolean(_) => "boolean",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::Timestamp(_) => "timestamp",
            Value::Decimal(_) => "decimal",
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $case:ident $(as $cast:ty)?),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::$case(v $(as $cast)?)
            }
        }
    )*};
}

value_from!(
    bool => Boolean,
    i64 => Int,
    i32 => Int as i64,
    u32 => Int as i64,
    f64 => Float,
    f32 => Float as f64,
    String => Text,
    Vec<u8> => Bytes,
    Decimal => Decimal,
);

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl Decimal {
    /// The unscaled integer, when it fits in 128 bits.
    pub fn unscaled_i128(&self) -> Option<i128> {
        if self.unscaled.len() > 16 {
            return None;
        }
        let negative = self.unscaled.first().is_some_and(|b| b & 0x80 != 0);
        let mut v: i128 = if negative { -1 } else { 0 };
        for b in &self.unscaled {
            v = (v << 8) | i128::from(*b);
        }
        Some(v)
    }

    /// A decimal from an unscaled integer and a scale.
    pub fn from_i128(unscaled: i128, scale: u32) -> Self {
        let bytes = unscaled.to_be_bytes();
        // Minimal two's complement: drop leading bytes that only repeat the sign.
        let mut start = 0;
        while start < 15 {
            let (b, next) = (bytes[start], bytes[start + 1]);
            let redundant = (b == 0x00 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0);
            if !redundant {
                break;
            }
            start += 1;
        }
        let unscaled = if unscaled == 0 {
            Vec::new()
        } else {
            bytes[start..].to_vec()
        };
        Decimal { unscaled, scale }
    }

    /// The nearest `f64` (exact decimals wider than 128 bits give NaN).
    pub fn to_f64(&self) -> f64 {
        match self.unscaled_i128() {
            Some(v) => v as f64 / libm_pow10(self.scale),
            None => f64::NAN,
        }
    }
}

fn libm_pow10(scale: u32) -> f64 {
    let mut p = 1.0;
    for _ in 0..scale {
        p *= 10.0;
    }
    p
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(v) = self.unscaled_i128() else {
            return f.write_str("NaN");
        };
        let digits = v.unsigned_abs().to_string();
        let scale = self.scale as usize;
        let sign = if v < 0 { "-" } else { "" };
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = if digits.len() <= scale {
            let mut s = "0".repeat(scale + 1 - digits.len());
            s.push_str(&digits);
            s
        } else {
            digits
        };
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

impl Message {
    /// A message with no fields, for tests and tools.
    pub fn new(topic: impl Into<String>, partition: i32, offset: i64) -> Self {
        Message {
            topic: topic.into(),
            partition,
            offset,
            timestamp_ms: 0,
            key: None,
            schema_id: None,
            fields: Vec::new(),
        }
    }

    /// This message with field `name` set to `value` (builder style, for tests).
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.set(name, value);
        self
    }

    /// The value of field `name` (dotted for nested records), if present.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| &f.value)
    }

    /// Sets field `name`, replacing it if present.
    pub fn set(&mut self, name: &str, value: impl Into<Value>) {
        set_field(&mut self.fields, name, value.into());
    }

    /// Removes field `name`, returning its value.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        let i = self.fields.iter().position(|f| f.name == name)?;
        Some(self.fields.remove(i).value)
    }

    /// The text of field `name`, if it is text.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    /// Field `name` as a number, if it is numeric.
    pub fn float(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(Value::as_f64)
    }

    /// Field `name` as an integer, if it is one.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }

    /// Field `name` as microseconds since the epoch, if it is a timestamp.
    pub fn timestamp_micros(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_timestamp_micros)
    }

    /// The key as UTF-8 text, if present and valid.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| core::str::from_utf8(k).ok())
    }
}

fn set_field(fields: &mut Vec<Field>, name: &str, value: Value) {
    match fields.iter_mut().find(|f| f.name == name) {
        Some(f) => f.value = value,
        None => fields.push(Field {
            name: name.to_string(),
            value,
        }),
    }
}

/// A row under construction: column names and values, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    /// The columns.
    pub fields: Vec<Field>,
}

impl Row {
    /// An empty row.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty row with room for `n` columns.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            fields: Vec::with_capacity(n),
        }
    }

    /// This row with column `name` set to `value`.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.set(name, value);
        self
    }

    /// Sets column `name`, replacing it if present.
    pub fn set(&mut self, name: &str, value: impl Into<Value>) {
        set_field(&mut self.fields, name, value.into());
    }

    /// The value of column `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| &f.value)
    }
}

impl From<Row> for Vec<Field> {
    fn from(row: Row) -> Self {
        row.fields
    }
}

impl From<Vec<Field>> for Row {
    fn from(fields: Vec<Field>) -> Self {
        Row { fields }
    }
}

impl Action {
    /// Append `row` to `table`.
    pub fn insert(table: impl Into<String>, row: impl Into<Vec<Field>>) -> Self {
        Action::Insert(InsertRow {
            table: table.into(),
            row: row.into(),
        })
    }

    /// Insert `row` into `table`, or merge it into the row with the same `key` columns,
    /// each listed column by its policy (unlisted non-key columns are replaced).
    pub fn upsert(
        table: impl Into<String>,
        key: &[&str],
        row: impl Into<Vec<Field>>,
        policies: impl IntoIterator<Item = (&'static str, MergePolicy)>,
    ) -> Self {
        Action::Upsert(UpsertRow {
            table: table.into(),
            key: key.iter().map(|k| k.to_string()).collect(),
            row: row.into(),
            policies: policies
                .into_iter()
                .map(|(column, policy)| ColumnPolicy {
                    column: column.to_string(),
                    policy,
                })
                .collect(),
        })
    }

    /// Produce raw bytes to `topic`.
    pub fn emit_raw(topic: impl Into<String>, key: Option<Vec<u8>>, value: Vec<u8>) -> Self {
        Action::Emit(EmitMessage {
            topic: topic.into(),
            key,
            value: EmitValue::Raw(value),
        })
    }

    /// Produce fields to `topic`, Avro-encoded by the host with the subject
    /// `<topic>-value`'s latest schema.
    pub fn emit_fields(
        topic: impl Into<String>,
        key: Option<Vec<u8>>,
        fields: impl Into<Vec<Field>>,
    ) -> Self {
        Action::Emit(EmitMessage {
            topic: topic.into(),
            key,
            value: EmitValue::Fields(fields.into()),
        })
    }
}

impl Outcome {
    /// Apply these actions.
    pub fn actions(actions: Vec<Action>) -> Self {
        Outcome::Actions(actions)
    }

    /// One row into `table`.
    pub fn insert(table: impl Into<String>, row: impl Into<Vec<Field>>) -> Self {
        Outcome::Actions(alloc::vec![Action::insert(table, row)])
    }

    /// Drop the message: nothing to do (a filtered event, a duplicate).
    pub fn skip() -> Self {
        Outcome::Actions(Vec::new())
    }

    /// Send the message to `dead_letters` with this reason; name the rule and the field.
    pub fn dead_letter(reason: impl Into<String>) -> Self {
        Outcome::DeadLetter(reason.into())
    }

    /// The reason, if this is a dead letter.
    pub fn dead_letter_reason(&self) -> Option<&str> {
        match self {
            Outcome::DeadLetter(r) => Some(r),
            Outcome::Actions(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_round_trips_and_prints() {
        for (v, scale, text) in [
            (12345i128, 2, "123.45"),
            (-5, 3, "-0.005"),
            (0, 2, "0.00"),
            (128, 0, "128"),
            (-129, 1, "-12.9"),
            (i64::MAX as i128, 4, "922337203685477.5807"),
        ] {
            let d = Decimal::from_i128(v, scale);
            assert_eq!(d.unscaled_i128(), Some(v), "{v}");
            assert_eq!(d.to_string(), text);
        }
        assert_eq!(Decimal::from_i128(128, 0).unscaled, [0x00, 0x80]);
        assert_eq!(Decimal::from_i128(-128, 0).unscaled, [0x80]);
        assert!((Decimal::from_i128(12345, 2).to_f64() - 123.45).abs() < 1e-9);
    }

    #[test]
    fn message_fields() {
        let mut m = Message::new("t", 0, 1)
            .with("symbol", "AAPL")
            .with("price", 1.5)
            .with("volume", 10i64);
        assert_eq!(m.text("symbol"), Some("AAPL"));
        assert_eq!(m.float("price"), Some(1.5));
        assert_eq!(m.float("volume"), Some(10.0));
        assert_eq!(m.int("price"), None);
        m.set("price", 2.0);
        assert_eq!(m.float("price"), Some(2.0));
        assert_eq!(m.take("symbol"), Some(Value::Text("AAPL".into())));
        assert_eq!(m.get("symbol"), None);
        assert_eq!(m.fields.len(), 2);
    }
}
