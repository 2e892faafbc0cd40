//! Parsing registered schemas and deciding when two of them are "the same schema".
//!
//! Two schemas are the same when their normalised forms are equal. The normalised form is the
//! schema parsed by apache-avro and serialised back to JSON with object keys sorted at every
//! level: it ignores whitespace, attribute order and `"string"` versus `{"type": "string"}`,
//! but keeps everything that means something to a reader or a person (defaults, docs,
//! aliases, logical types, custom attributes). This is what Confluent does with Avro's own
//! `Schema.toString()`.

use apache_avro::Schema;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The only schema type this registry stores.
pub(crate) const AVRO: &str = "AVRO";

/// A schema that parsed, with the form used to compare it with others.
pub(crate) struct ParsedSchema {
    /// The parsed schema, for compatibility checks.
    pub schema: Schema,
    /// The normalised JSON text.
    pub canonical: String,
    /// sha256 of the schema type and the normalised text: the key that makes ids global.
    pub fingerprint: Vec<u8>,
}

/// Most branches a union of a new schema may have. Avro allows one branch per type and
/// per name, so only very many named types make a larger union, and checking
/// compatibility costs the product of two unions' sizes.
pub(crate) const MAX_UNION_BRANCHES: usize = 1000;

/// Parses a schema to register, strictly: its JSON may not give a key twice (Avro's parser
/// would keep the last, so the schema would mean something else than it says), and no
/// union may have more than [`MAX_UNION_BRANCHES`] branches. The error says what is wrong.
pub(crate) fn parse(text: &str) -> Result<ParsedSchema, String> {
    let json =
        crate::json::from_str(text).map_err(|e| format!("the schema is not strict JSON: {e}"))?;
    let schema = Schema::parse(&json).map_err(|e| error_chain(&e))?;
    if let Some(n) = widest_union(&schema)
        && n > MAX_UNION_BRANCHES
    {
        return Err(format!(
            "a union has {n} branches; this registry takes at most {MAX_UNION_BRANCHES}"
        ));
    }
    parsed(schema)
}

/// Parses a schema already in the store, as it was accepted.
pub(crate) fn parse_registered(text: &str) -> Result<Schema, String> {
    Schema::parse_str(text).map_err(|e| error_chain(&e))
}

fn parsed(schema: Schema) -> Result<ParsedSchema, String> {
    let canonical = normalise(&schema)?;
    let fingerprint = fingerprint(AVRO, &canonical);
    Ok(ParsedSchema {
        schema,
        canonical,
        fingerprint,
    })
}

/// The number of branches of the schema's widest union, if it has one.
fn widest_union(schema: &Schema) -> Option<usize> {
    match schema {
        Schema::Union(u) => {
            let inner = u.variants().iter().filter_map(widest_union).max();
            Some(inner.map_or(u.variants().len(), |i| i.max(u.variants().len())))
        }
        Schema::Record(r) => r
            .fields
            .iter()
            .filter_map(|f| widest_union(&f.schema))
            .max(),
        Schema::Array(a) => widest_union(&a.items),
        Schema::Map(m) => widest_union(&m.types),
        _ => None,
    }
}

/// The normalised form of a parsed schema.
pub(crate) fn normalise(schema: &Schema) -> Result<String, String> {
    let value = serde_json::to_value(schema).map_err(|e| format!("cannot serialise: {e}"))?;
    Ok(sorted(value).to_string())
}

fn fingerprint(schema_type: &str, canonical: &str) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(schema_type.as_bytes());
    hash.update(b"\n");
    hash.update(canonical.as_bytes());
    hash.finalize().to_vec()
}

/// `value` with the keys of every object in sorted order.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// An error and its sources on one line ("Failed to parse schema from JSON: EOF while …").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str) -> String {
        parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .canonical
    }

    const TICK: &str = r#"{"type":"record","name":"Tick","namespace":"weir","fields":[
        {"name":"symbol","type":"string"},
        {"name":"price","type":"double","default":0.0,"doc":"last price"}]}"#;

    #[test]
    fn whitespace_attribute_order_and_primitive_spelling_do_not_matter() {
        let reordered = r#"{ "namespace" : "weir", "fields" : [
              { "type" : { "type" : "string" }, "name" : "symbol" },
              { "doc" : "last price", "default" : 0.0, "type" : "double", "name" : "price" } ],
            "name" : "Tick", "type" : "record" }"#;
        assert_eq!(canonical(TICK), canonical(reordered));
        assert_eq!(canonical(r#""string""#), canonical(r#"{"type": "string"}"#));
        let full_name = TICK.replace(
            r#""name":"Tick","namespace":"weir""#,
            r#""name":"weir.Tick""#,
        );
        assert_eq!(canonical(TICK), canonical(&full_name));
    }

    #[test]
    fn defaults_docs_aliases_and_logical_types_matter() {
        let base = canonical(TICK);
        for changed in [
            TICK.replace(r#""default":0.0,"#, ""),
            TICK.replace(r#""default":0.0"#, r#""default":1.0"#),
            TICK.replace("last price", "latest price"),
            TICK.replace(
                r#""doc":"last price""#,
                r#""doc":"last price","aliases":["p"]"#,
            ),
            TICK.replace(
                r#"{"name":"symbol","type":"string"}"#,
                r#"{"name":"symbol","type":{"type":"string","logicalType":"uuid"}}"#,
            ),
            TICK.replace(r#""name":"Tick""#, r#""name":"Tick","doc":"a tick""#),
        ] {
            assert_ne!(base, canonical(&changed), "{changed}");
        }
    }

    #[test]
    fn default_objects_compare_by_content() {
        let a = r#"{"type":"record","name":"R","fields":[{"name":"p","default":{"x":1,"y":2},
            "type":{"type":"record","name":"P","fields":[{"name":"x","type":"int"},{"name":"y","type":"int"}]}}]}"#;
        let b = a.replace(r#"{"x":1,"y":2}"#, r#"{"y":2,"x":1}"#);
        assert_eq!(canonical(a), canonical(&b));
    }

    #[test]
    fn duplicate_keys_and_huge_unions_are_refused() {
        let e = parse(r#"{"type":"record","type":"string","name":"R","fields":[]}"#)
            .err()
            .unwrap();
        assert!(e.contains(r#"the key "type" appears twice"#), "{e}");
        let branches: Vec<String> = (0..=MAX_UNION_BRANCHES)
            .map(|i| format!(r#"{{"type":"fixed","name":"F{i}","size":1}}"#))
            .collect();
        let wide = format!(
            r#"{{"type":"record","name":"R","fields":[{{"name":"u","type":[{}]}}]}}"#,
            branches.join(",")
        );
        let e = parse(&wide).err().unwrap();
        assert!(
            e.contains("a union has 1001 branches; this registry takes at most 1000"),
            "{e}"
        );
        assert!(
            parse_registered(&wide).is_ok(),
            "stored schemas parse as accepted"
        );
    }

    #[test]
    fn invalid_schemas_say_what_is_wrong() {
        let e = parse(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"strng"}]}"#)
            .err()
            .unwrap();
        assert!(e.contains("strng"), "{e}");
        let e = parse(r#"{"type":"record","name":"R","fields":["#)
            .err()
            .unwrap();
        assert!(e.contains("JSON"), "{e}");
        let e = parse(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":"x"}]}"#,
        )
        .err()
        .unwrap();
        assert!(e.contains("default"), "{e}");
    }
}
