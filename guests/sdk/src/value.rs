//! Conveniences on the WIT's values: typed reads, conversions from Rust types, decimals.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::{Decimal, Kind, Value};

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

    /// The bytes of a [`Value::Bytes`].
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The decimal of a [`Value::Decimal`].
    pub fn as_decimal(&self) -> Option<&Decimal> {
        match self {
            Value::Decimal(d) => Some(d),
            _ => None,
        }
    }

    /// The kind of this value; none for [`Value::Null`].
    pub fn kind(&self) -> Option<Kind> {
        Some(match self {
            Value::Null => return None,
            Value::Boolean(_) => Kind::Boolean,
            Value::Int(_) => Kind::Int,
            Value::Float(_) => Kind::Float,
            Value::Text(_) => Kind::Text,
            Value::Bytes(_) => Kind::Bytes,
            Value::Timestamp(_) => Kind::Timestamp,
            Value::Decimal(_) => Kind::Decimal,
        })
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

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Bytes(v.to_vec())
    }
}

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

impl Kind {
    /// The kind's name, as [`Value::type_name`] gives it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Boolean => "boolean",
            Kind::Int => "int",
            Kind::Float => "float",
            Kind::Text => "text",
            Kind::Bytes => "bytes",
            Kind::Timestamp => "timestamp",
            Kind::Decimal => "decimal",
        }
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
}
