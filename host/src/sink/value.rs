//! Values on their way into Postgres: which column types accept which kind of WIT value,
//! the conversion of one value to a column's type (refused here, per message, rather than
//! by Postgres, per batch), and the binary wire encoding shared by `COPY … (FORMAT binary)`
//! and the array parameters of the upsert statements.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use postgres_types::{IsNull, Kind, ToSql, Type, to_sql_checked};

use crate::model::{Decimal, Value, ValueKind};

/// A column's type as conversion sees it: domains are resolved to their base type, and
/// every type whose binary form is UTF-8 text (varchar, char, name, citext, enums) is
/// `Text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Text,
    Json,
    Jsonb,
    Uuid,
    Bytea,
    Timestamptz,
    Timestamp,
    Date,
    /// Anything else: only null goes in.
    Other,
}

impl PgType {
    /// Classifies a base type by its oid, `pg_type.typcategory` and `pg_type.typtype`.
    pub(crate) fn classify(oid: u32, category: &str, typtype: &str) -> Self {
        match Type::from_oid(oid) {
            Some(Type::BOOL) => Self::Bool,
            Some(Type::INT2) => Self::Int2,
            Some(Type::INT4) => Self::Int4,
            Some(Type::INT8) => Self::Int8,
            Some(Type::FLOAT4) => Self::Float4,
            Some(Type::FLOAT8) => Self::Float8,
            Some(Type::NUMERIC) => Self::Numeric,
            Some(Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME) => Self::Text,
            Some(Type::JSON) => Self::Json,
            Some(Type::JSONB) => Self::Jsonb,
            Some(Type::UUID) => Self::Uuid,
            Some(Type::BYTEA) => Self::Bytea,
            Some(Type::TIMESTAMPTZ) => Self::Timestamptz,
            Some(Type::TIMESTAMP) => Self::Timestamp,
            Some(Type::DATE) => Self::Date,
            Some(_) => Self::Other,
            // Extension and user types: citext (string category) and enums read text.
            None if category == "S" || typtype == "e" => Self::Text,
            None => Self::Other,
        }
    }

    /// Whether a column of this type takes values of `kind`.
    pub(crate) fn accepts(self, kind: ValueKind) -> bool {
        use PgType as P;
        use ValueKind as K;
        match kind {
            K::Boolean => self == P::Bool,
            K::Int => matches!(
                self,
                P::Int2 | P::Int4 | P::Int8 | P::Numeric | P::Float4 | P::Float8 | P::Date
            ),
            K::Float => matches!(self, P::Float4 | P::Float8 | P::Numeric),
            K::Text => matches!(self, P::Text | P::Json | P::Jsonb | P::Uuid),
            K::Bytes => self == P::Bytea,
            K::Timestamp => matches!(self, P::Timestamptz | P::Timestamp | P::Date),
            K::Decimal => matches!(self, P::Numeric | P::Float4 | P::Float8),
        }
    }

    /// Whether `sum` can add values of this type.
    pub(crate) fn is_number(self) -> bool {
        matches!(
            self,
            Self::Int2 | Self::Int4 | Self::Int8 | Self::Float4 | Self::Float8 | Self::Numeric
        )
    }
}

/// Microseconds from the Unix epoch to Postgres's (2000-01-01).
pub(crate) const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from the Unix epoch to Postgres's.
pub(crate) const PG_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Postgres's timestamp range, in microseconds since its epoch: 4714-11-24 BC up to (not
/// including) 294277-01-01.
const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
const END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;
/// Postgres's date range, in days since its epoch: 4714-11-24 BC to 5874897-12-31.
const MIN_DATE: i64 = -2_451_545;
const MAX_DATE: i64 = 2_145_031_948;
/// The largest display scale a `numeric` has.
const NUMERIC_DSCALE_MAX: u32 = 0x3FFF;

/// One value converted for a column, ready to encode. Borrows text and bytes from the
/// batch, so converting copies nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cell<'a> {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    NumericInt(i64),
    NumericFloat(f64),
    NumericDecimal(&'a Decimal),
    Text(&'a str),
    Jsonb(&'a str),
    Bytes(&'a [u8]),
    Uuid([u8; 16]),
    /// Microseconds since 2000-01-01 (timestamp and timestamptz).
    Micros(i64),
    /// Days since 2000-01-01.
    Date(i32),
}

/// Why a value does not go into a column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// The column's type does not take this kind of value at all.
    Kind(ValueKind),
    /// This particular value does not fit.
    Value(String),
}

/// Converts `value` for a column of type `ty`.
pub(crate) fn convert(value: &Value, ty: PgType) -> Result<Cell<'_>, Refusal> {
    use PgType as P;
    let refuse = |text: String| Err(Refusal::Value(text));
    Ok(match (value, ty) {
        (Value::Null, _) => Cell::Null,
        (Value::Boolean(b), P::Bool) => Cell::Bool(*b),
        (Value::Int(i), P::Int2) => match i16::try_from(*i) {
            Ok(v) => Cell::I16(v),
            Err(_) => return refuse(format!("{i} is out of range for smallint")),
        },
        (Value::Int(i), P::Int4) => match i32::try_from(*i) {
            Ok(v) => Cell::I32(v),
            Err(_) => return refuse(format!("{i} is out of range for integer")),
        },
        (Value::Int(i), P::Int8) => Cell::I64(*i),
        (Value::Int(i), P::Numeric) => Cell::NumericInt(*i),
        (Value::Int(i), P::Float4) => Cell::F32(*i as f32),
        (Value::Int(i), P::Float8) => Cell::F64(*i as f64),
        (Value::Int(days), P::Date) => match days.checked_sub(PG_EPOCH_DAYS) {
            Some(d) if (MIN_DATE..=MAX_DATE).contains(&d) => Cell::Date(d as i32),
            _ => {
                return refuse(format!(
                    "{days} days since 1970-01-01 is out of range for date"
                ));
            }
        },
        (Value::Float(f), P::Float8) => Cell::F64(*f),
        (Value::Float(f), P::Float4) => {
            let narrow = *f as f32;
            if f.is_finite() && !narrow.is_finite() {
                return refuse(format!("{f} is out of range for real"));
            }
            Cell::F32(narrow)
        }
        (Value::Float(f), P::Numeric) => Cell::NumericFloat(*f),
        (Value::Text(s), P::Text | P::Json | P::Jsonb | P::Uuid) if s.contains('\0') => {
            return refuse("text contains a NUL character, which Postgres cannot store".into());
        }
        (Value::Text(s), P::Text) => Cell::Text(s),
        (Value::Text(s), P::Json | P::Jsonb) => {
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(s) {
                return refuse(format!("text is not JSON: {e}"));
            }
            if ty == P::Json {
                Cell::Text(s)
            } else {
                Cell::Jsonb(s)
            }
        }
        (Value::Text(s), P::Uuid) => match uuid::Uuid::parse_str(s) {
            Ok(u) => Cell::Uuid(u.into_bytes()),
            Err(_) => return refuse(format!("{s:?} is not a UUID")),
        },
        (Value::Bytes(b), P::Bytea) => Cell::Bytes(b),
        (Value::Timestamp(us), P::Timestamptz | P::Timestamp) => {
            match us.checked_sub(PG_EPOCH_MICROS) {
                Some(t) if (MIN_TIMESTAMP..END_TIMESTAMP).contains(&t) => Cell::Micros(t),
                _ => return refuse(format!("timestamp {us} µs since 1970 is out of range")),
            }
        }
        (Value::Timestamp(us), P::Date) => {
            let days = us.div_euclid(MICROS_PER_DAY) - PG_EPOCH_DAYS;
            if !(MIN_DATE..=MAX_DATE).contains(&days) {
                return refuse(format!(
                    "timestamp {us} µs since 1970 is out of range for date"
                ));
            }
            Cell::Date(days as i32)
        }
        (Value::Decimal(d), P::Numeric) => {
            if d.scale > NUMERIC_DSCALE_MAX {
                return refuse(format!(
                    "decimal scale {} is more than numeric's {NUMERIC_DSCALE_MAX}",
                    d.scale
                ));
            }
            Cell::NumericDecimal(d)
        }
        (Value::Decimal(d), P::Float4 | P::Float8) => {
            let (negative, digits) = decimal_digits(d);
            let text = format!(
                "{}{}e-{}",
                if negative { "-" } else { "" },
                std::str::from_utf8(digits.as_slice()).unwrap_or("0"),
                d.scale
            );
            let f: f64 = text.parse().unwrap_or(f64::NAN);
            if ty == P::Float8 {
                Cell::F64(f)
            } else {
                Cell::F32(f as f32)
            }
        }
        (value, _) => {
            return Err(Refusal::Kind(
                ValueKind::of(value).unwrap_or(ValueKind::Int),
            ));
        }
    })
}

impl Cell<'_> {
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Cell::Null)
    }

    /// Appends the value as a binary field: its length (-1 for NULL), then its bytes.
    pub(crate) fn write_field(&self, out: &mut BytesMut) {
        if self.is_null() {
            out.put_i32(-1);
            return;
        }
        let at = out.len();
        out.put_i32(0);
        self.write_value(out);
        let len = (out.len() - at - 4) as i32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub(crate) fn write_value(&self, out: &mut BytesMut) {
        match *self {
            Cell::Null => {}
            Cell::Bool(b) => out.put_u8(u8::from(b)),
            Cell::I16(v) => out.put_i16(v),
            Cell::I32(v) => out.put_i32(v),
            Cell::I64(v) => out.put_i64(v),
            Cell::F32(v) => out.put_f32(v),
            Cell::F64(v) => out.put_f64(v),
            Cell::NumericInt(v) => {
                let mut buf = [0u8; 40];
                let digits = u128_digits(u128::from(v.unsigned_abs()), &mut buf);
                write_numeric(out, v < 0, digits, 0);
            }
            Cell::NumericFloat(v) => write_numeric_float(out, v),
            Cell::NumericDecimal(d) => {
                let (negative, digits) = decimal_digits(d);
                write_numeric(out, negative, digits.as_slice(), d.scale);
            }
            Cell::Text(s) => out.put_slice(s.as_bytes()),
            Cell::Jsonb(s) => {
                out.put_u8(1); // jsonb's binary format version
                out.put_slice(s.as_bytes());
            }
            Cell::Bytes(b) => out.put_slice(b),
            Cell::Uuid(u) => out.put_slice(&u),
            Cell::Micros(t) => out.put_i64(t),
            Cell::Date(d) => out.put_i32(d),
        }
    }
}

/// Decimal digits of a magnitude, most significant first, without leading zeros (empty for
/// zero).
enum Digits {
    Inline([u8; 40], usize),
    Heap(Vec<u8>),
}

impl Digits {
    fn as_slice(&self) -> &[u8] {
        match self {
            Digits::Inline(buf, start) => &buf[*start..],
            Digits::Heap(v) => v,
        }
    }
}

/// Writes the digits of `v` at the end of `buf` and returns them.
fn u128_digits(mut v: u128, buf: &mut [u8; 40]) -> &[u8] {
    let mut start = buf.len();
    if let Ok(mut small) = u64::try_from(v) {
        while small > 0 {
            start -= 1;
            buf[start] = b'0' + (small % 10) as u8;
            small /= 10;
        }
        return &buf[start..];
    }
    while v > 0 {
        start -= 1;
        buf[start] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    &buf[start..]
}

/// The sign and decimal digits of a decimal's unscaled integer (big-endian two's
/// complement, any length).
fn decimal_digits(d: &Decimal) -> (bool, Digits) {
    if let Some(v) = d.unscaled_i128() {
        let mut buf = [0u8; 40];
        let start = 40 - u128_digits(v.unsigned_abs(), &mut buf).len();
        return (v < 0, Digits::Inline(buf, start));
    }
    // More than 128 bits: negate the two's complement, then divide by 10^9 repeatedly.
    let negative = d.unscaled.first().is_some_and(|b| b & 0x80 != 0);
    let mut bytes = d.unscaled.clone();
    if negative {
        for b in bytes.iter_mut() {
            *b = !*b;
        }
        for b in bytes.iter_mut().rev() {
            let (sum, carry) = b.overflowing_add(1);
            *b = sum;
            if !carry {
                break;
            }
        }
    }
    // Big-endian 32-bit words.
    let pad = (4 - bytes.len() % 4) % 4;
    let mut padded = vec![0u8; pad];
    padded.extend_from_slice(&bytes);
    let mut words: Vec<u32> = padded
        .chunks(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut chunks = Vec::new(); // base 10^9, least significant first
    while words.iter().any(|w| *w != 0) {
        let mut rem = 0u64;
        for w in words.iter_mut() {
            let cur = (rem << 32) | u64::from(*w);
            *w = (cur / 1_000_000_000) as u32;
            rem = cur % 1_000_000_000;
        }
        chunks.push(rem as u32);
    }
    let mut text = String::new();
    for (i, chunk) in chunks.iter().rev().enumerate() {
        if i == 0 {
            text.push_str(&chunk.to_string());
        } else {
            text.push_str(&format!("{chunk:09}"));
        }
    }
    (negative, Digits::Heap(text.into_bytes()))
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// Writes Postgres's binary `numeric`: the value `digits * 10^-scale` in base-10000 digits
/// aligned on the decimal point, with `scale` as the display scale.
fn write_numeric(out: &mut BytesMut, negative: bool, digits: &[u8], scale: u32) {
    let first = digits
        .iter()
        .position(|d| *d != b'0')
        .unwrap_or(digits.len());
    let digits = &digits[first..];
    let header = out.len();
    out.put_i16(0); // ndigits, patched below
    out.put_i16(0); // weight, patched below
    out.put_u16(if negative && !digits.is_empty() {
        NUMERIC_NEG
    } else {
        NUMERIC_POS
    });
    out.put_u16(scale.min(NUMERIC_DSCALE_MAX) as u16);
    if digits.is_empty() {
        return;
    }
    // Pad the fraction on the right and the integer part on the left to whole groups of 4.
    let pad_right = ((4 - scale % 4) % 4) as usize;
    let total = digits.len() + pad_right;
    let groups = total.div_ceil(4);
    let pad_left = groups * 4 - total;
    let digit_at = |i: usize| -> u16 {
        if i < pad_left || i >= pad_left + digits.len() {
            0
        } else {
            u16::from(digits[i - pad_left] - b'0')
        }
    };
    let mut written = 0;
    let mut kept = 0;
    for g in 0..groups {
        let base = g * 4;
        let group = digit_at(base) * 1000
            + digit_at(base + 1) * 100
            + digit_at(base + 2) * 10
            + digit_at(base + 3);
        out.put_u16(group);
        written += 1;
        if group != 0 {
            kept = written;
        }
    }
    // Trailing zero groups carry nothing.
    out.truncate(out.len() - (written - kept) * 2);
    let weight = groups as i64 - 1 - ((scale as usize + pad_right) / 4) as i64;
    out[header..header + 2].copy_from_slice(&(kept as i16).to_be_bytes());
    out[header + 2..header + 4].copy_from_slice(&(weight as i16).to_be_bytes());
}

fn write_numeric_float(out: &mut BytesMut, v: f64) {
    let special = if v.is_nan() {
        NUMERIC_NAN
    } else if v == f64::INFINITY {
        NUMERIC_PINF
    } else if v == f64::NEG_INFINITY {
        NUMERIC_NINF
    } else {
        // Rust prints the shortest decimal that reads back as `v`, never in exponent form.
        let text = v.abs().to_string();
        let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
        let mut digits = Vec::with_capacity(int.len() + frac.len());
        digits.extend_from_slice(int.as_bytes());
        digits.extend_from_slice(frac.as_bytes());
        write_numeric(out, v.is_sign_negative(), &digits, frac.len() as u32);
        return;
    };
    out.put_i16(0);
    out.put_i16(0);
    out.put_u16(special);
    out.put_u16(0);
}

/// One column of a group of rows, sent as a Postgres array parameter (`$1::numeric[]`);
/// the element type comes from the prepared statement.
#[derive(Debug)]
pub(crate) struct CellArray<'p, 'a> {
    /// All cells of the plan.
    pub cells: &'p [Cell<'a>],
    /// Where each row's cells start in `cells`.
    pub rows: &'p [u32],
    /// The column's position within a row.
    pub column: usize,
}

impl CellArray<'_, '_> {
    fn iter(&self) -> impl Iterator<Item = &Cell<'_>> {
        self.rows
            .iter()
            .map(|start| &self.cells[*start as usize + self.column])
    }
}

impl ToSql for CellArray<'_, '_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let Kind::Array(member) = ty.kind() else {
            return Err(format!("parameter of type {ty} is not an array").into());
        };
        let has_nulls = self.iter().any(Cell::is_null);
        out.put_i32(1); // dimensions
        out.put_i32(i32::from(has_nulls));
        out.put_u32(member.oid());
        out.put_i32(i32::try_from(self.rows.len())?);
        out.put_i32(1); // lower bound
        for cell in self.iter() {
            cell.write_field(out);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(_))
    }

    to_sql_checked!();
}

/// The header of a binary COPY stream.
pub(crate) fn copy_header(out: &mut BytesMut) {
    out.put_slice(b"PGCOPY\n\xff\r\n\0");
    out.put_i32(0); // flags
    out.put_i32(0); // header extension length
}

/// The trailer of a binary COPY stream.
pub(crate) fn copy_trailer(out: &mut BytesMut) {
    out.put_i16(-1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(cell: Cell<'_>) -> (i16, i16, u16, u16, Vec<u16>) {
        let mut out = BytesMut::new();
        cell.write_value(&mut out);
        let word = |i: usize| u16::from_be_bytes([out[i], out[i + 1]]);
        let n = word(0) as usize;
        assert_eq!(out.len(), 8 + 2 * n);
        let digits = (0..n).map(|i| word(8 + 2 * i)).collect();
        (word(0) as i16, word(2) as i16, word(4), word(6), digits)
    }

    fn dec(text: &str) -> Decimal {
        Decimal::parse(text).unwrap()
    }

    #[test]
    fn numerics_encode_in_base_10000_aligned_on_the_point() {
        let d = dec("123.45");
        assert_eq!(
            numeric(Cell::NumericDecimal(&d)),
            (2, 0, 0, 2, vec![123, 4500])
        );
        let d = dec("-0.005");
        assert_eq!(
            numeric(Cell::NumericDecimal(&d)),
            (1, -1, 0x4000, 3, vec![50])
        );
        let d = dec("12300");
        assert_eq!(
            numeric(Cell::NumericDecimal(&d)),
            (2, 1, 0, 0, vec![1, 2300])
        );
        let d = dec("0.00000001");
        assert_eq!(numeric(Cell::NumericDecimal(&d)), (1, -2, 0, 8, vec![1]));
        let d = dec("0.00");
        assert_eq!(numeric(Cell::NumericDecimal(&d)), (0, 0, 0, 2, vec![]));
        let d = dec("10000.0001");
        assert_eq!(
            numeric(Cell::NumericDecimal(&d)),
            (3, 1, 0, 4, vec![1, 0, 1])
        );
        assert_eq!(
            numeric(Cell::NumericInt(-20_000)),
            (1, 1, 0x4000, 0, vec![2])
        );
        assert_eq!(numeric(Cell::NumericInt(0)), (0, 0, 0, 0, vec![]));
        assert_eq!(numeric(Cell::NumericFloat(0.25)), (1, -1, 0, 2, vec![2500]));
        assert_eq!(numeric(Cell::NumericFloat(f64::NAN)).2, 0xC000);
        assert_eq!(numeric(Cell::NumericFloat(f64::NEG_INFINITY)).2, 0xF000);
    }

    #[test]
    fn decimals_wider_than_128_bits_keep_every_digit() {
        // -(10^40 + 7): 17 bytes of two's complement.
        let expected = format!("1{}7", "0".repeat(39));
        let mut words = [0u32; 5]; // big-endian base 2^32
        for d in expected.bytes() {
            let mut carry = u64::from(d - b'0');
            for w in words.iter_mut().rev() {
                let cur = u64::from(*w) * 10 + carry;
                *w = cur as u32;
                carry = cur >> 32;
            }
        }
        let magnitude: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        let mut twos: Vec<u8> = magnitude.iter().map(|b| !b).collect();
        for b in twos.iter_mut().rev() {
            let (s, c) = b.overflowing_add(1);
            *b = s;
            if !c {
                break;
            }
        }
        let d = Decimal {
            unscaled: twos,
            scale: 2,
        };
        let (negative, digits) = decimal_digits(&d);
        assert!(negative);
        assert_eq!(digits.as_slice(), expected.as_bytes());
    }

    #[test]
    fn conversions_check_range_and_form() {
        assert!(
            matches!(convert(&Value::Int(70_000), PgType::Int2), Err(Refusal::Value(m)) if m.contains("smallint"))
        );
        assert!(matches!(
            convert(&Value::Text("abc".into()), PgType::Float8),
            Err(Refusal::Kind(ValueKind::Text))
        ));
        assert!(matches!(
            convert(&Value::Text("{\"a\":".into()), PgType::Jsonb),
            Err(Refusal::Value(m)) if m.contains("not JSON")
        ));
        assert!(matches!(
            convert(&Value::Text("a\0b".into()), PgType::Text),
            Err(Refusal::Value(m)) if m.contains("NUL")
        ));
        assert!(matches!(
            convert(
                &Value::Text("67e55044-10b1-426f-9247-bb680e5fe0c8".into()),
                PgType::Uuid
            ),
            Ok(Cell::Uuid(_))
        ));
        assert!(matches!(
            convert(&Value::Timestamp(0), PgType::Timestamptz),
            Ok(Cell::Micros(-946_684_800_000_000))
        ));
        assert!(matches!(
            convert(&Value::Timestamp(-1), PgType::Date),
            Ok(Cell::Date(-10_958))
        ));
        assert!(convert(&Value::Timestamp(i64::MIN), PgType::Timestamp).is_err());
        assert!(matches!(
            convert(&Value::Decimal(dec("-1.5")), PgType::Float8),
            Ok(Cell::F64(f)) if f == -1.5
        ));
        assert!(matches!(
            convert(&Value::Null, PgType::Other),
            Ok(Cell::Null)
        ));
        assert!(matches!(
            convert(&Value::Float(1e300), PgType::Float4),
            Err(Refusal::Value(_))
        ));
    }

    #[test]
    fn every_accepted_kind_converts() {
        let samples = [
            Value::Boolean(true),
            Value::Int(3),
            Value::Float(1.5),
            Value::Text("67e55044-10b1-426f-9247-bb680e5fe0c8".into()),
            Value::Bytes(vec![1]),
            Value::Timestamp(1),
            Value::Decimal(dec("1.5")),
        ];
        use PgType as P;
        for ty in [
            P::Bool,
            P::Int2,
            P::Int4,
            P::Int8,
            P::Float4,
            P::Float8,
            P::Numeric,
            P::Text,
            P::Uuid,
            P::Bytea,
            P::Timestamptz,
            P::Timestamp,
            P::Date,
            P::Other,
        ] {
            for v in &samples {
                let kind = ValueKind::of(v).unwrap();
                let converted = convert(v, ty);
                assert_eq!(
                    ty.accepts(kind),
                    !matches!(converted, Err(Refusal::Kind(_))),
                    "{kind} into {ty:?}"
                );
            }
        }
    }
}
