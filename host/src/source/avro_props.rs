//! Property tests of the decoder and the framing: schemas generated at random (recursive
//! ones included), with valid bodies written by apache-avro, then truncated and mutated.
//! Whatever the input, decoding returns fields or a typed error within its budgets; valid
//! bodies decode to what apache-avro's own reader reads. `PROPTEST_CASES` sets how many
//! cases run (`make fuzz` runs many).

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value as Json, json};

use super::avro::{AvroDecoder, DecodeLimits};
use crate::model::{Field, Value};
use crate::registry::unframe;

/// A schema as JSON, with `$SELF` where a record refers to itself.
fn schema_tree() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(json!("null")),
        Just(json!("boolean")),
        Just(json!("int")),
        Just(json!("long")),
        Just(json!("float")),
        Just(json!("double")),
        Just(json!("bytes")),
        Just(json!("string")),
        Just(json!({"type": "long", "logicalType": "timestamp-millis"})),
        Just(json!({"type": "int", "logicalType": "date"})),
        Just(json!({"type": "bytes", "logicalType": "decimal", "precision": 20, "scale": 3})),
        (1usize..4).prop_map(|n| json!({"type": "enum", "name": "$NAME", "symbols": (0..n).map(|i| format!("S{i}")).collect::<Vec<_>>()})),
        (0usize..9).prop_map(|size| json!({"type": "fixed", "name": "$NAME", "size": size})),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|fields| {
                let fields: Vec<Json> = fields
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| json!({"name": format!("f{i}"), "type": t}))
                    .collect();
                json!({"type": "record", "name": "$NAME", "fields": fields})
            }),
            // A record that refers to itself.
            inner
                .clone()
                .prop_map(|t| json!({"type": "record", "name": "$NAME", "fields": [
                    {"name": "v", "type": t},
                    {"name": "next", "type": ["null", "$SELF"]}
                ]})),
            inner
                .clone()
                .prop_map(|t| json!({"type": "array", "items": t})),
            inner
                .clone()
                .prop_map(|t| json!({"type": "map", "values": t})),
            // Unions may not hold two branches of one type: null and one other.
            inner
                .prop_filter("not null or a union", |t| t != "null" && !t.is_array())
                .prop_map(|t| json!(["null", t])),
        ]
    })
}

/// Names every named type uniquely (`N0`, `N1`…) and points `$SELF` at its record.
fn named(tree: Json) -> Json {
    fn walk(v: Json, next: &mut usize, enclosing: Option<&str>) -> Json {
        match v {
            Json::String(s) if s == "$SELF" => json!(enclosing.unwrap_or("null")),
            Json::Object(mut map) => {
                let mine = if map.get("name").is_some_and(|n| n == "$NAME") {
                    let name = format!("N{next}");
                    *next += 1;
                    map.insert("name".into(), json!(name));
                    Some(name)
                } else {
                    None
                };
                let scope = if map.get("type").is_some_and(|t| t == "record") {
                    mine.as_deref().or(enclosing).map(str::to_string)
                } else {
                    enclosing.map(str::to_string)
                };
                Json::Object(
                    map.into_iter()
                        .map(|(k, v)| (k, walk(v, next, scope.as_deref())))
                        .collect(),
                )
            }
            Json::Array(items) => Json::Array(
                items
                    .into_iter()
                    .map(|v| walk(v, next, enclosing))
                    .collect(),
            ),
            other => other,
        }
    }
    walk(tree, &mut 0, None)
}

/// A random value of `schema` (named types resolved through `names`), recursion cut off
/// by choosing null once `depth` runs out.
fn value(
    schema: &Schema,
    names: &HashMap<String, Schema>,
    rng: &mut ChaCha8Rng,
    depth: u32,
) -> Avro {
    match schema {
        Schema::Null => Avro::Null,
        Schema::Boolean => Avro::Boolean(rng.random()),
        Schema::Int => Avro::Int(rng.random()),
        Schema::Long => Avro::Long(rng.random()),
        Schema::Float => Avro::Float(rng.random_range(-1e6..1e6)),
        Schema::Double => Avro::Double(rng.random_range(-1e12..1e12)),
        Schema::Bytes => Avro::Bytes((0..rng.random_range(0..6)).map(|_| rng.random()).collect()),
        Schema::String => Avro::String(
            (0..rng.random_range(0..6))
                .map(|_| rng.random_range('a'..='z'))
                .collect(),
        ),
        Schema::TimestampMillis => Avro::TimestampMillis(rng.random_range(0..4_000_000_000_000)),
        Schema::Date => Avro::Date(rng.random_range(-100_000..100_000)),
        Schema::Decimal(_) => Avro::Decimal(apache_avro::Decimal::from(
            (rng.random_range(-1_000_000i64..1_000_000))
                .to_be_bytes()
                .to_vec(),
        )),
        Schema::Enum(e) => {
            let i = rng.random_range(0..e.symbols.len());
            Avro::Enum(i as u32, e.symbols[i].clone())
        }
        Schema::Fixed(f) => Avro::Fixed(f.size, (0..f.size).map(|_| rng.random()).collect()),
        Schema::Array(a) => Avro::Array(
            (0..rng.random_range(0..4))
                .map(|_| value(&a.items, names, rng, depth.saturating_sub(1)))
                .collect(),
        ),
        Schema::Map(m) => Avro::Map(
            (0..rng.random_range(0..4))
                .map(|i| {
                    (
                        format!("k{i}"),
                        value(&m.types, names, rng, depth.saturating_sub(1)),
                    )
                })
                .collect(),
        ),
        Schema::Union(u) => {
            let i = if depth == 0 {
                0
            } else {
                rng.random_range(0..u.variants().len())
            };
            Avro::Union(
                i as u32,
                Box::new(value(&u.variants()[i], names, rng, depth.saturating_sub(1))),
            )
        }
        Schema::Record(r) => Avro::Record(
            r.fields
                .iter()
                .map(|f| {
                    (
                        f.name.clone(),
                        value(&f.schema, names, rng, depth.saturating_sub(1)),
                    )
                })
                .collect(),
        ),
        Schema::Ref { name } => value(&names[&name.fullname(None)], names, rng, depth),
        other => unreachable!("not generated: {other:?}"),
    }
}

fn named_types(schema: &Schema, out: &mut HashMap<String, Schema>) {
    match schema {
        Schema::Record(r) => {
            out.insert(r.name.fullname(None), schema.clone());
            r.fields.iter().for_each(|f| named_types(&f.schema, out));
        }
        Schema::Enum(e) => {
            out.insert(e.name.fullname(None), schema.clone());
        }
        Schema::Fixed(f) => {
            out.insert(f.name.fullname(None), schema.clone());
        }
        Schema::Array(a) => named_types(&a.items, out),
        Schema::Map(m) => named_types(&m.types, out),
        Schema::Union(u) => u.variants().iter().for_each(|v| named_types(v, out)),
        _ => {}
    }
}

/// What apache-avro's reader makes of `body`, flattened as weir flattens: the reference.
fn reference(schema: &Schema, names: &HashMap<String, Schema>, body: &[u8]) -> Vec<Field> {
    let mut reader = body;
    let value = apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()
        .and_then(|r| r.read_value(&mut reader))
        .expect("apache-avro reads what it wrote");
    let mut out = Vec::new();
    let top = if matches!(schema, Schema::Record(_)) {
        ""
    } else {
        "value"
    };
    flatten(top, value, schema, names, &mut out);
    out
}

fn flatten(
    name: &str,
    value: Avro,
    schema: &Schema,
    names: &HashMap<String, Schema>,
    out: &mut Vec<Field>,
) {
    let schema = match schema {
        Schema::Ref { name } => &names[&name.fullname(None)],
        s => s,
    };
    match (value, schema) {
        (Avro::Record(values), Schema::Record(r)) => {
            for ((field, v), f) in values.into_iter().zip(&r.fields) {
                let full = if name.is_empty() {
                    field
                } else {
                    format!("{name}.{field}")
                };
                flatten(&full, v, &f.schema, names, out);
            }
        }
        (Avro::Union(i, inner), Schema::Union(u)) => {
            flatten(name, *inner, &u.variants()[i as usize], names, out)
        }
        (v, _) => out.push(Field {
            name: name.to_string(),
            value: match v {
                Avro::Null => Value::Null,
                Avro::Boolean(b) => Value::Boolean(b),
                Avro::Int(i) | Avro::Date(i) => Value::Int(i64::from(i)),
                Avro::Long(i) => Value::Int(i),
                Avro::Float(f) => Value::Float(f64::from(f)),
                Avro::Double(f) => Value::Float(f),
                Avro::Bytes(b) | Avro::Fixed(_, b) => Value::Bytes(b),
                Avro::String(s) | Avro::Enum(_, s) => Value::Text(s),
                Avro::TimestampMillis(ms) => Value::Timestamp(ms * 1000),
                Avro::Decimal(d) => {
                    let bytes = Vec::<u8>::try_from(&d).unwrap();
                    Value::Decimal(crate::model::Decimal {
                        unscaled: bytes,
                        scale: 3,
                    })
                }
                v @ (Avro::Array(_) | Avro::Map(_)) => {
                    Value::Text(serde_json::Value::try_from(v).unwrap().to_string())
                }
                other => unreachable!("not generated: {other:?}"),
            },
        }),
    }
}

/// Fields compared as values: decimals by number, JSON text by what it holds.
fn same(ours: &[Field], theirs: &[Field]) -> bool {
    ours.len() == theirs.len()
        && ours.iter().zip(theirs).all(|(a, b)| {
            a.name == b.name
                && match (&a.value, &b.value) {
                    (Value::Decimal(x), Value::Decimal(y)) => {
                        x.unscaled_i128() == y.unscaled_i128() && x.scale == y.scale
                    }
                    (Value::Text(x), Value::Text(y)) if x.starts_with(['[', '{']) => {
                        serde_json::from_str::<Json>(x).ok() == serde_json::from_str::<Json>(y).ok()
                    }
                    (x, y) => x == y,
                }
        })
}

fn small() -> DecodeLimits {
    DecodeLimits {
        max_depth: 16,
        max_bytes: 4096,
        max_items: 64,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn valid_truncated_and_mutated_bodies_decode_or_fail_within_budgets(
        tree in schema_tree(),
        seed in any::<u64>(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let text = named(tree).to_string();
        let schema = Schema::parse_str(&text).map_err(|e| TestCaseError::reject(format!("{e}: {text}")))?;
        let mut names = HashMap::new();
        named_types(&schema, &mut names);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let value = value(&schema, &names, &mut rng, 5);
        let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap();

        // Valid: the same fields as apache-avro's reader, within the default budgets.
        let decoder = AvroDecoder::new(&schema, DecodeLimits::default()).unwrap();
        let (fields, size) = decoder.decode(&body).map_err(|e| TestCaseError::fail(format!("{e} for {text}")))?;
        let expected = reference(&schema, &names, &body);
        prop_assert!(same(&fields, &expected), "{text}\nours   {fields:?}\ntheirs {expected:?}");
        prop_assert!(size <= DecodeLimits::default().max_bytes);

        // Every proper prefix is an error (the body was exactly one value).
        if !body.is_empty() {
            let at = cut.index(body.len());
            prop_assert!(decoder.decode(&body[..at]).is_err(), "a prefix of {} bytes decoded", at);
        }

        // Mutated, and under small budgets: fields within the budget, or an error.
        let mut mutated = body.clone();
        mutated.extend_from_slice(&seed.to_le_bytes());
        for (i, b) in &flips {
            let at = i.index(mutated.len());
            mutated[at] ^= b | 1;
        }
        let tight = AvroDecoder::new(&schema, small()).unwrap();
        for input in [&body[..], &mutated[..]] {
            if let Ok((fields, size)) = tight.decode(input) {
                prop_assert!(size <= small().max_bytes);
                let payload: usize = fields.iter().map(|f| f.name.len() + match &f.value {
                    Value::Text(t) => t.len(),
                    Value::Bytes(b) => b.len(),
                    _ => 0,
                }).sum();
                prop_assert!(payload <= size, "{payload} bytes of fields counted as {size}");
            }
        }
    }

    #[test]
    fn any_bytes_frame_or_fail_and_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        match unframe(&bytes) {
            Ok((id, body)) => {
                prop_assert_eq!(bytes[0], 0);
                prop_assert_eq!(id.0.to_be_bytes(), [bytes[1], bytes[2], bytes[3], bytes[4]]);
                prop_assert_eq!(body, &bytes[5..]);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        // And as a body of a recursive schema, under small budgets.
        let node = Schema::parse_str(
            r#"{"type":"record","name":"Node","fields":[{"name":"m","type":{"type":"map","values":"Node"}},{"name":"a","type":{"type":"array","items":["null","Node","string"]}}]}"#,
        ).unwrap();
        let decoder = AvroDecoder::new(&node, small()).unwrap();
        if let Ok((_, size)) = decoder.decode(&bytes) {
            prop_assert!(size <= small().max_bytes);
        }
    }
}
