//! The values a guest emits as fields, encoded as Confluent-framed Avro with the latest
//! schema of the destination's subject.
//!
//! Each field of the schema takes the emitted value of the same name: a nested record's
//! fields are named with dots (`quote.bid`), as the decoder flattens them. A field the
//! guest did not give is null where the schema allows it, else its default, else an error
//! naming it; a value that does not fit its field's type is an error naming the field and
//! both types. A name the schema has no field for is an error too: a guest that emits a
//! field nobody can read has a bug worth seeing.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{DecimalSchema, InnerDecimalSchema, RecordSchema, UnionSchema};
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;

use crate::model::{Decimal, Value};
use crate::registry::{RegisteredSchema, frame_into};

/// Encodes `values` (named by `names`, one per name) with `registered`'s record schema,
/// Confluent-framed. Errors name the field at fault.
pub fn encode_fields(
    registered: &RegisteredSchema,
    names: &[String],
    values: &[Value],
) -> Result<Vec<u8>, String> {
    let Schema::Record(rs) = &registered.schema else {
        return Err(format!(
            "schema id {} is not a record schema",
            registered.id
        ));
    };
    if names.len() != values.len() {
        return Err(format!(
            "{} values for {} field names",
            values.len(),
            names.len()
        ));
    }
    let mut given: HashMap<&str, &Value> = HashMap::with_capacity(names.len());
    for (name, value) in names.iter().zip(values) {
        if given.insert(name.as_str(), value).is_some() {
            return Err(format!("field `{name}` is given twice"));
        }
    }
    let mut used = 0;
    let value = record(rs, "", &given, &mut used)?;
    if used < given.len() {
        let known = known_names(rs, "");
        let mut unknown: Vec<&str> = given
            .keys()
            .copied()
            .filter(|n| !known.iter().any(|k| k == n))
            .collect();
        unknown.sort_unstable();
        return Err(format!(
            "field `{}` is not in schema id {} of subject's latest version",
            unknown.first().copied().unwrap_or_default(),
            registered.id
        ));
    }
    let writer = GenericDatumWriter::builder(&registered.schema)
        .build()
        .map_err(|e| e.to_string())?;
    let body = writer
        .write_value_to_vec(value)
        .map_err(|e| format!("does not encode: {e}"))?;
    let mut framed = Vec::with_capacity(body.len() + 5);
    frame_into(registered.id, &body, &mut framed);
    Ok(framed)
}

fn known_names(rs: &RecordSchema, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    for f in &rs.fields {
        let name = format!("{prefix}{}", f.name);
        match nested_record(&f.schema) {
            Some(inner) => names.extend(known_names(inner, &format!("{name}."))),
            None => names.push(name),
        }
    }
    names
}

/// The record a field holds, directly or as the one non-null branch of a union.
fn nested_record(schema: &Schema) -> Option<&RecordSchema> {
    match schema {
        Schema::Record(rs) => Some(rs),
        Schema::Union(u) => match non_null(u) {
            Some((_, Schema::Record(rs))) => Some(rs),
            _ => None,
        },
        _ => None,
    }
}

fn null_branch(u: &UnionSchema) -> Option<usize> {
    u.variants().iter().position(|v| matches!(v, Schema::Null))
}

/// The single non-null branch of a `[null, T]` union.
fn non_null(u: &UnionSchema) -> Option<(usize, &Schema)> {
    let mut others = u
        .variants()
        .iter()
        .enumerate()
        .filter(|(_, v)| !matches!(v, Schema::Null));
    let one = others.next()?;
    others.next().is_none().then_some(one)
}

fn record(
    rs: &RecordSchema,
    prefix: &str,
    given: &HashMap<&str, &Value>,
    used: &mut usize,
) -> Result<Avro, String> {
    let mut fields = Vec::with_capacity(rs.fields.len());
    for f in &rs.fields {
        let name = format!("{prefix}{}", f.name);
        let value = match (given.get(name.as_str()), nested_record(&f.schema)) {
            (Some(v), _) => {
                *used += 1;
                convert(&f.schema, v).map_err(|e| format!("field `{name}`: {e}"))?
            }
            (None, Some(inner)) if has_prefix(given, &format!("{name}.")) => {
                let nested = record(inner, &format!("{name}."), given, used)?;
                match &f.schema {
                    Schema::Union(u) => {
                        let (branch, _) = non_null(u).expect("a record branch");
                        Avro::Union(branch as u32, Box::new(nested))
                    }
                    _ => nested,
                }
            }
            (None, _) => match (&f.schema, &f.default) {
                (Schema::Union(u), _) if null_branch(u).is_some() => {
                    Avro::Union(null_branch(u).unwrap_or(0) as u32, Box::new(Avro::Null))
                }
                (Schema::Null, _) => Avro::Null,
                (schema, Some(default)) => crate::ingest::encode::convert(schema, default)
                    .map_err(|e| format!("field `{name}`: default {default}: {e}"))?,
                _ => return Err(format!("field `{name}` is required but missing")),
            },
        };
        fields.push((f.name.clone(), value));
    }
    Ok(Avro::Record(fields))
}

fn has_prefix(given: &HashMap<&str, &Value>, prefix: &str) -> bool {
    given.keys().any(|k| k.starts_with(prefix))
}

fn kind(v: &Value) -> &'static str {
    match v {
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

/// One value as a field of type `schema`.
fn convert(schema: &Schema, v: &Value) -> Result<Avro, String> {
    let want = |what: &str| format!("expected {what}, got {}", kind(v));
    Ok(match (schema, v) {
        (Schema::Union(u), Value::Null) => match null_branch(u) {
            Some(i) => Avro::Union(i as u32, Box::new(Avro::Null)),
            None => return Err("null given, and the field is not nullable".into()),
        },
        (Schema::Union(u), _) => {
            let mut last = None;
            for (i, branch) in u.variants().iter().enumerate() {
                if matches!(branch, Schema::Null) {
                    continue;
                }
                match convert(branch, v) {
                    Ok(a) => return Ok(Avro::Union(i as u32, Box::new(a))),
                    Err(e) => last = Some(e),
                }
            }
            return Err(last.unwrap_or_else(|| want("null")));
        }
        (Schema::Null, Value::Null) => Avro::Null,
        (_, Value::Null) => return Err("null given, and the field is not nullable".into()),
        (Schema::Boolean, Value::Boolean(b)) => Avro::Boolean(*b),
        (Schema::Int, Value::Int(i)) => Avro::Int(
            i32::try_from(*i).map_err(|_| format!("{i} is out of range for a 32-bit int"))?,
        ),
        (Schema::Long, Value::Int(i)) => Avro::Long(*i),
        (Schema::Float, Value::Float(x)) => Avro::Float(*x as f32),
        (Schema::Float, Value::Int(i)) => Avro::Float(*i as f32),
        (Schema::Double, Value::Float(x)) => Avro::Double(*x),
        (Schema::Double, Value::Int(i)) => Avro::Double(*i as f64),
        (Schema::String, Value::Text(s)) => Avro::String(s.clone()),
        (Schema::Bytes, Value::Bytes(b)) => Avro::Bytes(b.clone()),
        (Schema::Fixed(f), Value::Bytes(b)) if b.len() == f.size => Avro::Fixed(f.size, b.clone()),
        (Schema::Fixed(f), Value::Bytes(b)) => {
            return Err(format!("{} bytes for a fixed of {}", b.len(), f.size));
        }
        (Schema::Enum(e), Value::Text(s)) => match e.symbols.iter().position(|x| x == s) {
            Some(i) => Avro::Enum(i as u32, s.clone()),
            None => {
                return Err(format!(
                    "`{s}` is not a symbol of enum {} ({})",
                    e.name.name(),
                    e.symbols.join(", ")
                ));
            }
        },
        (Schema::Uuid(_), Value::Text(s)) => {
            Avro::Uuid(uuid::Uuid::parse_str(s).map_err(|e| format!("`{s}` is not a uuid: {e}"))?)
        }
        (Schema::TimestampMillis | Schema::LocalTimestampMillis, Value::Timestamp(us)) => {
            let ms = us.div_euclid(1000);
            match schema {
                Schema::TimestampMillis => Avro::TimestampMillis(ms),
                _ => Avro::LocalTimestampMillis(ms),
            }
        }
        (Schema::TimestampMicros, Value::Timestamp(us)) => Avro::TimestampMicros(*us),
        (Schema::LocalTimestampMicros, Value::Timestamp(us)) => Avro::LocalTimestampMicros(*us),
        (Schema::TimestampNanos | Schema::LocalTimestampNanos, Value::Timestamp(us)) => {
            let ns = us
                .checked_mul(1000)
                .ok_or_else(|| format!("timestamp {us} µs is out of range in nanoseconds"))?;
            match schema {
                Schema::TimestampNanos => Avro::TimestampNanos(ns),
                _ => Avro::LocalTimestampNanos(ns),
            }
        }
        (Schema::Date, Value::Timestamp(us)) => Avro::Date(
            i32::try_from(us.div_euclid(86_400_000_000))
                .map_err(|_| format!("timestamp {us} µs is out of range for a date"))?,
        ),
        (Schema::Decimal(d), Value::Decimal(x)) => decimal(d, x)?,
        (Schema::Decimal(d), Value::Int(i)) => decimal(d, &Decimal::from_i128(*i as i128, 0))?,
        (other, _) => return Err(want(&type_name(other))),
    })
}

fn type_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", r.name.name()),
        Schema::Array(_) => "an array (arrays cannot be emitted as fields)".into(),
        Schema::Map(_) => "a map (maps cannot be emitted as fields)".into(),
        Schema::Decimal(d) => format!("decimal({}, {})", d.precision, d.scale),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

/// A decimal at the field's scale (a smaller scale is rescaled exactly; a larger one would
/// round, and is refused), within its precision.
fn decimal(d: &DecimalSchema, x: &Decimal) -> Result<Avro, String> {
    let scale = d.scale as u32;
    let unscaled = x
        .unscaled_i128()
        .ok_or_else(|| "decimal beyond 128 bits".to_string())?;
    if x.scale > scale {
        return Err(format!(
            "decimal {x} has scale {}, more than the field's {scale}",
            x.scale
        ));
    }
    let unscaled = 10i128
        .checked_pow(scale - x.scale)
        .and_then(|f| unscaled.checked_mul(f))
        .ok_or_else(|| format!("decimal {x} overflows at scale {scale}"))?;
    let digits = unscaled
        .unsigned_abs()
        .checked_ilog10()
        .map_or(1, |d| d + 1) as usize;
    if digits > d.precision {
        return Err(format!(
            "decimal {x} has more than the field's {} digits",
            d.precision
        ));
    }
    let bytes = Decimal::from_i128(unscaled, scale).unscaled;
    let bytes = match &d.inner {
        InnerDecimalSchema::Bytes => bytes,
        InnerDecimalSchema::Fixed(f) => {
            if bytes.len() > f.size {
                return Err(format!("decimal {x} does not fit in {} bytes", f.size));
            }
            let fill = if unscaled < 0 { 0xff } else { 0 };
            let mut out = vec![fill; f.size - bytes.len()];
            out.extend_from_slice(&bytes);
            out
        }
    };
    Ok(Avro::Decimal(apache_avro::Decimal::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::SchemaId;

    fn registered(text: &str) -> RegisteredSchema {
        RegisteredSchema {
            id: SchemaId(7),
            text: text.into(),
            schema: Schema::parse_str(text).unwrap(),
        }
    }

    const TICK: &str = r#"{"type":"record","name":"Tick","fields":[
        {"name":"id","type":"string"},
        {"name":"price","type":"double"},
        {"name":"size","type":["null","long"],"default":null},
        {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"quote","type":["null",{"type":"record","name":"Quote","fields":[
            {"name":"bid","type":"double"}]}],"default":null},
        {"name":"venue","type":"string","default":"XNAS"}]}"#;

    fn read(schema: &Schema, body: &[u8]) -> Avro {
        let mut body = body;
        apache_avro::reader::datum::GenericDatumReader::builder(schema)
            .build()
            .and_then(|r| r.read_value(&mut body))
            .unwrap()
    }

    fn encode(names: &[&str], values: Vec<Value>) -> Result<Vec<u8>, String> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        encode_fields(&registered(TICK), &names, &values)
    }

    #[test]
    fn fields_encode_with_nulls_defaults_and_nested_records() {
        let framed = encode(
            &["id", "price", "at", "quote.bid"],
            vec![
                Value::Text("AAPL".into()),
                Value::Float(187.25),
                Value::Timestamp(1_714_564_800_123_456),
                Value::Float(187.2),
            ],
        )
        .unwrap();
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 7]);
        let schema = Schema::parse_str(TICK).unwrap();
        let back = read(&schema, &framed[5..]);
        let Avro::Record(fields) = back else {
            panic!("{back:?}")
        };
        assert_eq!(fields[0].1, Avro::String("AAPL".into()));
        assert_eq!(fields[2].1, Avro::Union(0, Box::new(Avro::Null)));
        assert_eq!(fields[3].1, Avro::TimestampMillis(1_714_564_800_123));
        assert_eq!(
            fields[4].1,
            Avro::Union(
                1,
                Box::new(Avro::Record(vec![("bid".into(), Avro::Double(187.2))]))
            )
        );
        assert_eq!(fields[5].1, Avro::String("XNAS".into()));
    }

    #[test]
    fn a_missing_required_field_a_wrong_type_and_an_unknown_name_name_the_field() {
        let e = encode(
            &["id", "at"],
            vec![Value::Text("A".into()), Value::Timestamp(0)],
        )
        .unwrap_err();
        assert_eq!(e, "field `price` is required but missing");
        let e = encode(
            &["id", "price", "at"],
            vec![
                Value::Text("A".into()),
                Value::Text("x".into()),
                Value::Timestamp(0),
            ],
        )
        .unwrap_err();
        assert_eq!(e, "field `price`: expected double, got text");
        let e = encode(
            &["id", "price", "at", "colour"],
            vec![
                Value::Text("A".into()),
                Value::Float(1.0),
                Value::Timestamp(0),
                Value::Text("red".into()),
            ],
        )
        .unwrap_err();
        assert!(e.starts_with("field `colour` is not in schema id 7"), "{e}");
    }

    #[test]
    fn decimals_rescale_exactly_and_refuse_to_round() {
        let d = registered(
            r#"{"type":"record","name":"P","fields":[{"name":"p","type":{"type":"bytes","logicalType":"decimal","precision":6,"scale":2}}]}"#,
        );
        let names = vec!["p".to_string()];
        let ok = encode_fields(&d, &names, &[Value::Decimal(Decimal::from_i128(1875, 1))]);
        let framed = ok.unwrap();
        let back = read(&d.schema, &framed[5..]);
        let Avro::Record(f) = back else { panic!() };
        let Avro::Decimal(x) = &f[0].1 else { panic!() };
        assert_eq!(
            Vec::<u8>::try_from(x.clone()).unwrap(),
            18750i128.to_be_bytes()[14..]
        );
        let e =
            encode_fields(&d, &names, &[Value::Decimal(Decimal::from_i128(1875, 3))]).unwrap_err();
        assert!(e.contains("scale 3"), "{e}");
    }
}
