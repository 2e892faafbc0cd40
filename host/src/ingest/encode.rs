//! Records given as JSON (or CSV text) encoded as Avro with a registered schema.
//!
//! Each schema field takes the input value of the same name, converted by the field's
//! type: numbers from JSON numbers or numeric text, timestamps from epoch milliseconds or
//! RFC 3339 text, dates from days since the epoch or `YYYY-MM-DD`, enums and uuids from
//! text; an absent, `null` or empty-text value is
//! `null` where the schema allows it, else the field's default, else an error naming the
//! field.

use apache_avro::Schema;
use apache_avro::schema::{RecordSchema, UnionSchema};
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use serde_json::{Map, Value as Json};

use crate::registry::{RegisteredSchema, SchemaId, frame_into};

/// Encodes records for one registered value schema, Confluent-framed.
pub struct Encoder {
    id: SchemaId,
    schema: Schema,
    buf: Vec<u8>,
}

impl Encoder {
    /// An encoder for `registered`, which must be a record schema.
    pub fn new(registered: &RegisteredSchema) -> Result<Self, String> {
        if !matches!(registered.schema, Schema::Record(_)) {
            return Err(format!(
                "schema id {} is not a record schema",
                registered.id
            ));
        }
        Ok(Self {
            id: registered.id,
            schema: registered.schema.clone(),
            buf: Vec::new(),
        })
    }

    /// The schema id values are framed with.
    pub fn id(&self) -> SchemaId {
        self.id
    }

    /// Encodes one record; errors name the field. The framed bytes are valid until the next
    /// call.
    pub fn encode(&mut self, record: &Map<String, Json>) -> Result<Vec<u8>, String> {
        let Schema::Record(rs) = &self.schema else {
            unreachable!("checked in new")
        };
        let value = record_value(rs, record)?;
        let writer = GenericDatumWriter::builder(&self.schema)
            .build()
            .map_err(|e| e.to_string())?;
        let body = writer
            .write_value_to_vec(value)
            .map_err(|e| format!("does not encode: {e}"))?;
        frame_into(self.id, &body, &mut self.buf);
        Ok(std::mem::take(&mut self.buf))
    }
}

fn record_value(rs: &RecordSchema, record: &Map<String, Json>) -> Result<Avro, String> {
    let mut fields = Vec::with_capacity(rs.fields.len());
    for f in &rs.fields {
        let input = record.get(&f.name).filter(|v| !is_blank(v));
        let value = match input {
            Some(v) => convert(&f.schema, v).map_err(|e| format!("field `{}`: {e}", f.name))?,
            None => match (&f.schema, &f.default) {
                (Schema::Union(u), _) if null_branch(u).is_some() => {
                    Avro::Union(null_branch(u).unwrap_or(0) as u32, Box::new(Avro::Null))
                }
                (schema, Some(default)) => convert(schema, default)
                    .map_err(|e| format!("field `{}`: default {default}: {e}", f.name))?,
                _ => return Err(format!("field `{}` is required but missing", f.name)),
            },
        };
        fields.push((f.name.clone(), value));
    }
    Ok(Avro::Record(fields))
}

fn is_blank(v: &Json) -> bool {
    v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty())
}

fn null_branch(u: &UnionSchema) -> Option<usize> {
    u.variants().iter().position(|v| matches!(v, Schema::Null))
}

/// A finite float from a JSON number or numeric text. Text Rust reads as a float but not a
/// finite one ("1e400", "inf", "NaN") is refused: it would be stored as infinity or NaN.
fn number(v: &Json) -> Result<f64, String> {
    let x = match v {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match x {
        Some(x) if x.is_finite() => Ok(x),
        Some(_) => Err(format!("{} is not a finite number", shown(v))),
        None => Err(format!("expected a number, found {v}")),
    }
}

/// A 32-bit float; a number beyond its range would become infinity, and is refused.
fn float(v: &Json) -> Result<f32, String> {
    let x = number(v)? as f32;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("{} is out of range for a 32-bit float", shown(v)))
    }
}

/// A value as the input gave it: text unquoted and trimmed, anything else as JSON.
fn shown(v: &Json) -> String {
    match v {
        Json::String(s) => s.trim().to_string(),
        other => other.to_string(),
    }
}

fn integer(v: &Json) -> Option<i64> {
    match v {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text(v: &Json) -> Option<&str> {
    v.as_str()
}

/// Epoch milliseconds from an integer or RFC 3339 text.
fn millis(v: &Json) -> Option<i64> {
    integer(v).or_else(|| {
        let t = humantime::parse_rfc3339_weak(v.as_str()?.trim()).ok()?;
        Some(match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        })
    })
}

pub(crate) fn convert(schema: &Schema, v: &Json) -> Result<Avro, String> {
    let want = |what: &str| format!("expected {what}, found {v}");
    Ok(match schema {
        Schema::Null => {
            if v.is_null() {
                Avro::Null
            } else {
                return Err(want("null"));
            }
        }
        Schema::Boolean => Avro::Boolean(match v {
            Json::Bool(b) => *b,
            Json::String(s) if s.eq_ignore_ascii_case("true") => true,
            Json::String(s) if s.eq_ignore_ascii_case("false") => false,
            _ => return Err(want("a boolean")),
        }),
        Schema::Int => Avro::Int(
            integer(v)
                .and_then(|i| i32::try_from(i).ok())
                .ok_or_else(|| want("a 32-bit integer"))?,
        ),
        Schema::Long => Avro::Long(integer(v).ok_or_else(|| want("an integer"))?),
        Schema::Float => Avro::Float(float(v)?),
        Schema::Double => Avro::Double(number(v)?),
        Schema::String => Avro::String(match v {
            Json::String(s) => s.clone(),
            Json::Number(n) => n.to_string(),
            _ => return Err(want("text")),
        }),
        Schema::Uuid(_) => Avro::Uuid(
            text(v)
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| want("a UUID"))?,
        ),
        Schema::Enum(e) => {
            let s = text(v).ok_or_else(|| want("text"))?.trim();
            let index = e
                .symbols
                .iter()
                .position(|sym| sym == s)
                .ok_or_else(|| format!("{s:?} is not one of {}", e.symbols.join(", ")))?;
            Avro::Enum(index as u32, s.to_string())
        }
        Schema::Date => Avro::Date(
            integer(v)
                .or_else(|| super::options::parse_date(v.as_str()?))
                .and_then(|d| i32::try_from(d).ok())
                .ok_or_else(|| want("days since the epoch or a YYYY-MM-DD date"))?,
        ),
        Schema::TimestampMillis => Avro::TimestampMillis(
            millis(v).ok_or_else(|| want("epoch milliseconds or an RFC 3339 time"))?,
        ),
        Schema::TimestampMicros => Avro::TimestampMicros(
            millis(v)
                .map(|ms| ms * 1000)
                .ok_or_else(|| want("epoch milliseconds or an RFC 3339 time"))?,
        ),
        Schema::Union(u) => {
            if v.is_null() {
                let i =
                    null_branch(u).ok_or_else(|| want("a value (the field is not nullable)"))?;
                return Ok(Avro::Union(i as u32, Box::new(Avro::Null)));
            }
            // The first non-null branch that takes the value.
            let mut last_err = String::new();
            for (i, branch) in u.variants().iter().enumerate() {
                if matches!(branch, Schema::Null) {
                    continue;
                }
                match convert(branch, v) {
                    Ok(inner) => return Ok(Avro::Union(i as u32, Box::new(inner))),
                    Err(e) => last_err = e,
                }
            }
            return Err(last_err);
        }
        Schema::Record(rs) => match v {
            Json::Object(m) => record_value(rs, m)?,
            _ => return Err(want("an object")),
        },
        other => {
            return Err(format!(
                "fields of type {other:?} are not supported for ingestion"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Value;
    use crate::source::avro::AvroDecoder;
    use serde_json::json;

    fn stocks() -> RegisteredSchema {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../schemas/tickers.stocks.avsc"
        ))
        .unwrap();
        RegisteredSchema {
            id: SchemaId(7),
            schema: Schema::parse_str(&text).unwrap(),
            text,
        }
    }

    fn record(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn encodes_json_and_text_and_decodes_back() {
        let registered = stocks();
        let mut enc = Encoder::new(&registered).unwrap();
        let framed = enc
            .encode(&record(json!({
                "id": "AAPL", "exchange": "NMS", "quote_type": "EQUITY",
                "market_hours": "REGULAR_MARKET", "price": "187.25", "change": 1.5,
                "day_volume": "1200", "bid": "", "price_hint": 2,
                "event_time": "2024-05-01T14:30:00.120Z",
                "event_id": "9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01",
                "ingestion_time": 1714574000500i64, "source": "test"
            })))
            .unwrap();
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 7]);
        let (fields, _) = AvroDecoder::new(&registered.schema, Default::default())
            .unwrap()
            .decode(&framed[5..])
            .unwrap();
        let get = |n: &str| fields.iter().find(|f| f.name == n).unwrap().value.clone();
        assert_eq!(get("price"), Value::Float(187.25));
        assert_eq!(get("day_volume"), Value::Int(1200));
        assert_eq!(get("bid"), Value::Null);
        assert_eq!(get("currency"), Value::Null);
        assert_eq!(get("event_time"), Value::Timestamp(1_714_573_800_120_000));
        assert_eq!(
            get("ingestion_time"),
            Value::Timestamp(1_714_574_000_500_000)
        );
        assert_eq!(get("market_hours"), Value::Text("REGULAR_MARKET".into()));
    }

    #[test]
    fn errors_name_the_field() {
        let mut enc = Encoder::new(&stocks()).unwrap();
        let base = json!({
            "id": "AAPL", "quote_type": "EQUITY", "market_hours": "REGULAR_MARKET",
            "price": 1.0, "event_time": 0, "event_id": "9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01",
            "ingestion_time": 0, "source": "t"
        });
        let mut r = record(base.clone());
        r.insert("price".into(), json!("cheap"));
        assert_eq!(
            enc.encode(&r).unwrap_err(),
            "field `price`: expected a number, found \"cheap\""
        );
        let mut r = record(base.clone());
        r.remove("id");
        assert_eq!(
            enc.encode(&r).unwrap_err(),
            "field `id` is required but missing"
        );
        let mut r = record(base.clone());
        r.insert("quote_type".into(), json!("BOND"));
        assert!(
            enc.encode(&r)
                .unwrap_err()
                .starts_with("field `quote_type`: \"BOND\" is not one of EQUITY")
        );
        let mut r = record(base.clone());
        r.insert("event_time".into(), json!("yesterday"));
        assert!(
            enc.encode(&r)
                .unwrap_err()
                .starts_with("field `event_time`: expected epoch milliseconds")
        );
    }

    #[test]
    fn numbers_that_are_not_finite_are_refused() {
        let mut enc = Encoder::new(&stocks()).unwrap();
        let base = record(json!({
            "id": "AAPL", "quote_type": "EQUITY", "market_hours": "REGULAR_MARKET",
            "price": 1.0, "event_time": 0, "event_id": "9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01",
            "ingestion_time": 0, "source": "t"
        }));
        // `price` is a double, `bid` a nullable double.
        for (field, text) in [
            ("price", "1e400"),
            ("price", " inf "),
            ("price", "NaN"),
            ("price", "-Infinity"),
            ("bid", "1e400"),
        ] {
            let mut r = base.clone();
            r.insert(field.into(), json!(text));
            assert_eq!(
                enc.encode(&r).unwrap_err(),
                format!("field `{field}`: {} is not a finite number", text.trim())
            );
        }
        let mut r = base;
        r.insert("price".into(), json!("1e300"));
        assert!(enc.encode(&r).is_ok(), "large but finite");
    }

    #[test]
    fn a_float_field_refuses_what_a_32_bit_float_cannot_hold() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"r","fields":[{"name":"x","type":"float"}]}"#,
        )
        .unwrap();
        let registered = RegisteredSchema {
            id: SchemaId(1),
            text: String::new(),
            schema,
        };
        let mut enc = Encoder::new(&registered).unwrap();
        assert_eq!(
            enc.encode(&record(json!({"x": 1e300}))).unwrap_err(),
            "field `x`: 1e+300 is out of range for a 32-bit float"
        );
        assert_eq!(
            enc.encode(&record(json!({"x": "1e300"}))).unwrap_err(),
            "field `x`: 1e300 is out of range for a 32-bit float"
        );
        assert_eq!(
            enc.encode(&record(json!({"x": "nan"}))).unwrap_err(),
            "field `x`: nan is not a finite number"
        );
        assert!(enc.encode(&record(json!({"x": "3.5"}))).is_ok());
    }
}
