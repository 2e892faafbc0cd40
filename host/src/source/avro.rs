//! Avro values, decoded with their writer schema, as the guest contract's typed fields.
//!
//! Nested records are flattened into dotted names (`quote.bid`); a union is the value of
//! its branch; a null nested record is one null field named after the record field. The
//! full mapping is documented on the WIT `value` type.

use std::collections::HashMap;
use std::io::Read;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::{Name, RecordSchema};
use apache_avro::types::Value as Avro;

use crate::runtime::types::{Decimal, Field, Value};
use crate::sink::ValueKind;

/// A writer schema prepared for decoding: the schema and its named records, so references
/// to them resolve.
#[derive(Debug)]
pub struct AvroDecoder {
    schema: Schema,
    records: HashMap<Name, RecordSchema>,
}

impl AvroDecoder {
    /// Prepares `schema`.
    pub fn new(schema: &Schema) -> Self {
        let mut records = HashMap::new();
        collect_records(schema, &mut records);
        Self {
            schema: schema.clone(),
            records,
        }
    }

    /// Decodes one Avro body into flattened fields. Errors say what is wrong with the bytes.
    pub fn decode(&self, body: &[u8]) -> Result<Vec<Field>, String> {
        let mut reader = body;
        let value = GenericDatumReader::builder(&self.schema)
            .build()
            .and_then(|r| r.read_value(&mut reader))
            .map_err(|e| format!("Avro body does not decode with its writer schema: {e}"))?;
        if !reader.is_empty() {
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
            return Err(format!(
                "{} bytes left over after the record: the body is longer than its schema allows",
                rest.len()
            ));
        }
        let mut fields = Vec::new();
        match value {
            Avro::Record(_) => self.flatten("", value, &self.schema, &mut fields)?,
            other => {
                // A non-record value schema: one field named `value`.
                self.flatten("value", other, &self.schema, &mut fields)?
            }
        }
        Ok(fields)
    }

    fn record<'a>(&'a self, schema: &'a Schema) -> Option<&'a RecordSchema> {
        match schema {
            Schema::Record(r) => Some(r),
            Schema::Ref { name } => self.records.get(name),
            _ => None,
        }
    }

    fn flatten(
        &self,
        name: &str,
        value: Avro,
        schema: &Schema,
        out: &mut Vec<Field>,
    ) -> Result<(), String> {
        match value {
            Avro::Record(values) => {
                let record = self.record(schema).ok_or_else(|| {
                    format!("field `{name}`: a record value for a non-record schema")
                })?;
                for ((field_name, v), field) in values.into_iter().zip(&record.fields) {
                    let full = if name.is_empty() {
                        field_name
                    } else {
                        format!("{name}.{field_name}")
                    };
                    self.flatten(&full, v, &field.schema, out)?;
                }
                Ok(())
            }
            Avro::Union(index, inner) => {
                let branch = match schema {
                    Schema::Union(u) => u.variants().get(index as usize),
                    _ => None,
                }
                .ok_or_else(|| {
                    format!("field `{name}`: union branch {index} is not in the schema")
                })?;
                self.flatten(name, *inner, branch, out)
            }
            other => {
                out.push(Field {
                    name: name.to_string(),
                    value: scalar(other, schema).map_err(|e| format!("field `{name}`: {e}"))?,
                });
                Ok(())
            }
        }
    }
}

/// The flattened fields of a record schema and the kind of value each decodes to, as
/// [`AvroDecoder::decode`] names them. A field that is always null has no kind and is left
/// out; a union takes its first non-null branch's kind.
pub fn field_kinds(schema: &Schema) -> Vec<(String, ValueKind)> {
    let mut records = HashMap::new();
    collect_records(schema, &mut records);
    let mut out = Vec::new();
    kinds_into("", schema, &records, &mut out);
    out
}

fn kinds_into(
    name: &str,
    schema: &Schema,
    records: &HashMap<Name, RecordSchema>,
    out: &mut Vec<(String, ValueKind)>,
) {
    let record = match schema {
        Schema::Record(r) => Some(r),
        Schema::Ref { name } => records.get(name),
        _ => None,
    };
    if let Some(r) = record {
        for f in &r.fields {
            let full = if name.is_empty() {
                f.name.clone()
            } else {
                format!("{name}.{}", f.name)
            };
            kinds_into(&full, &f.schema, records, out);
        }
        return;
    }
    let kind = match schema {
        Schema::Union(u) => {
            if let Some(branch) = u.variants().iter().find(|v| !matches!(v, Schema::Null)) {
                kinds_into(name, branch, records, out);
            }
            return;
        }
        Schema::Null => return,
        Schema::Boolean => ValueKind::Boolean,
        Schema::Int | Schema::Long | Schema::Date | Schema::TimeMillis | Schema::TimeMicros => {
            ValueKind::Int
        }
        Schema::Float | Schema::Double => ValueKind::Float,
        Schema::Bytes | Schema::Fixed(_) => ValueKind::Bytes,
        Schema::Decimal(_) => ValueKind::Decimal,
        Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => ValueKind::Timestamp,
        // Strings, enums, uuids; arrays and maps arrive as JSON text.
        _ => ValueKind::Text,
    };
    out.push((name.to_string(), kind));
}

fn collect_records(schema: &Schema, out: &mut HashMap<Name, RecordSchema>) {
    match schema {
        // Each named record once (a recursive type refers back to itself).
        Schema::Record(r) if out.insert(r.name.clone(), r.clone()).is_none() => {
            for f in &r.fields {
                collect_records(&f.schema, out);
            }
        }
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_records(v, out)),
        Schema::Array(a) => collect_records(&a.items, out),
        Schema::Map(m) => collect_records(&m.types, out),
        _ => {}
    }
}

/// A non-record, non-union Avro value as a WIT value.
fn scalar(value: Avro, schema: &Schema) -> Result<Value, String> {
    Ok(match value {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Boolean(b),
        Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => Value::Int(i64::from(i)),
        Avro::Long(i) | Avro::TimeMicros(i) => Value::Int(i),
        Avro::Float(f) => Value::Float(f64::from(f)),
        Avro::Double(f) => Value::Float(f),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Value::Bytes(b),
        Avro::String(s) | Avro::Enum(_, s) => Value::Text(s),
        Avro::Uuid(u) => Value::Text(u.to_string()),
        Avro::TimestampMillis(ms) | Avro::LocalTimestampMillis(ms) => {
            Value::Timestamp(ms.saturating_mul(1000))
        }
        Avro::TimestampMicros(us) | Avro::LocalTimestampMicros(us) => Value::Timestamp(us),
        Avro::TimestampNanos(ns) | Avro::LocalTimestampNanos(ns) => {
            Value::Timestamp(ns.div_euclid(1000))
        }
        Avro::Decimal(d) => {
            let scale = match schema {
                Schema::Decimal(ds) => ds.scale as u32,
                _ => return Err("a decimal value for a non-decimal schema".into()),
            };
            let unscaled =
                Vec::<u8>::try_from(&d).map_err(|e| format!("decimal does not encode: {e}"))?;
            Value::Decimal(Decimal { unscaled, scale })
        }
        Avro::BigDecimal(d) => Value::Text(d.to_string()),
        Avro::Duration(d) => Value::Text(format!(
            "P{}M{}DT{}ms",
            u32::from(d.months()),
            u32::from(d.days()),
            u32::from(d.millis())
        )),
        v @ (Avro::Array(_) | Avro::Map(_)) => Value::Text(
            serde_json::Value::try_from(v)
                .map_err(|e| format!("cannot render as JSON: {e}"))?
                .to_string(),
        ),
        Avro::Record(_) | Avro::Union(..) => unreachable!("flattened by the caller"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::writer::datum::GenericDatumWriter;

    const SCHEMA: &str = r#"{
      "type": "record", "name": "Tick", "namespace": "t",
      "fields": [
        {"name": "id", "type": "string"},
        {"name": "price", "type": "double"},
        {"name": "size", "type": ["null", "long"], "default": null},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "eid", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}},
        {"name": "quote", "type": ["null", {"type": "record", "name": "Quote", "fields": [
            {"name": "bid", "type": "double"}, {"name": "ask", "type": "double"}]}], "default": null},
        {"name": "last", "type": ["null", "Quote"], "default": null},
        {"name": "tags", "type": {"type": "array", "items": "string"}}
      ]}"#;

    fn encode(value: Avro) -> Vec<u8> {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let writer = GenericDatumWriter::builder(&schema).build().unwrap();
        writer
            .write_value_to_vec(value.resolve(&schema).unwrap())
            .unwrap()
    }

    fn tick(quote: Avro, last: Avro) -> Avro {
        Avro::Record(vec![
            ("id".into(), Avro::String("AAPL".into())),
            ("price".into(), Avro::Double(187.25)),
            ("size".into(), Avro::Union(1, Box::new(Avro::Long(300)))),
            ("kind".into(), Avro::Enum(1, "B".into())),
            ("at".into(), Avro::TimestampMillis(1_714_564_800_123)),
            (
                "eid".into(),
                Avro::Uuid("9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01".parse().unwrap()),
            ),
            (
                "amount".into(),
                Avro::Decimal(apache_avro::Decimal::from(vec![0x30, 0x39])),
            ),
            ("quote".into(), quote),
            ("last".into(), last),
            (
                "tags".into(),
                Avro::Array(vec![Avro::String("x".into()), Avro::String("y".into())]),
            ),
        ])
    }

    #[test]
    fn decodes_flattening_records_and_unions() {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let decoder = AvroDecoder::new(&schema);
        let quote = Avro::Union(
            1,
            Box::new(Avro::Record(vec![
                ("bid".into(), Avro::Double(187.2)),
                ("ask".into(), Avro::Double(187.3)),
            ])),
        );
        let fields = decoder
            .decode(&encode(tick(quote, Avro::Union(0, Box::new(Avro::Null)))))
            .unwrap();
        let get = |n: &str| {
            fields
                .iter()
                .find(|f| f.name == n)
                .map(|f| f.value.clone())
                .unwrap_or_else(|| panic!("no field {n} in {fields:?}"))
        };
        assert_eq!(get("id"), Value::Text("AAPL".into()));
        assert_eq!(get("price"), Value::Float(187.25));
        assert_eq!(get("size"), Value::Int(300));
        assert_eq!(get("kind"), Value::Text("B".into()));
        assert_eq!(get("at"), Value::Timestamp(1_714_564_800_123_000));
        assert_eq!(
            get("eid"),
            Value::Text("9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01".into())
        );
        assert_eq!(get("amount"), Value::Decimal(Decimal::from_i128(12345, 2)));
        assert_eq!(get("quote.bid"), Value::Float(187.2));
        assert_eq!(get("quote.ask"), Value::Float(187.3));
        assert_eq!(get("last"), Value::Null);
        assert_eq!(get("tags"), Value::Text(r#"["x","y"]"#.into()));
        let names: Vec<_> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "price",
                "size",
                "kind",
                "at",
                "eid",
                "amount",
                "quote.bid",
                "quote.ask",
                "last",
                "tags"
            ]
        );

        // A named record used again by reference still flattens.
        let last = Avro::Union(
            1,
            Box::new(Avro::Record(vec![
                ("bid".into(), Avro::Double(1.0)),
                ("ask".into(), Avro::Double(2.0)),
            ])),
        );
        let fields = decoder
            .decode(&encode(tick(Avro::Union(0, Box::new(Avro::Null)), last)))
            .unwrap();
        assert!(
            fields
                .iter()
                .any(|f| f.name == "last.ask" && f.value == Value::Float(2.0))
        );
    }

    #[test]
    fn field_kinds_follow_the_decoded_names() {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let kinds = field_kinds(&schema);
        assert_eq!(
            kinds,
            [
                ("id", ValueKind::Text),
                ("price", ValueKind::Float),
                ("size", ValueKind::Int),
                ("kind", ValueKind::Text),
                ("at", ValueKind::Timestamp),
                ("eid", ValueKind::Text),
                ("amount", ValueKind::Decimal),
                ("quote.bid", ValueKind::Float),
                ("quote.ask", ValueKind::Float),
                ("last.bid", ValueKind::Float),
                ("last.ask", ValueKind::Float),
                ("tags", ValueKind::Text),
            ]
            .map(|(n, k)| (n.to_string(), k))
        );
    }

    #[test]
    fn truncated_and_overlong_bodies_are_errors() {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let decoder = AvroDecoder::new(&schema);
        let body = encode(tick(
            Avro::Union(0, Box::new(Avro::Null)),
            Avro::Union(0, Box::new(Avro::Null)),
        ));
        let err = decoder.decode(&body[..body.len() / 2]).unwrap_err();
        assert!(
            err.contains("does not decode with its writer schema"),
            "{err}"
        );
        let mut long = body.clone();
        long.extend_from_slice(b"junk");
        let err = decoder.decode(&long).unwrap_err();
        assert!(err.contains("4 bytes left over"), "{err}");
    }
}
