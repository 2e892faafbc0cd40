//! Messages and outcomes as JSON lines, for `weir guest run`.
//!
//! A message line is either an envelope with a `fields` object,
//!
//! ```json
//! {"topic": "tickers.stocks", "partition": 0, "offset": 42, "timestamp_ms": 1714564800000,
//!  "key": "AAPL", "schema_id": 1, "headers": [{"key": "trace", "value": "abc"}],
//!  "fields": {"symbol": "AAPL", "price": 187.25}}
//! ```
//!
//! or just the fields object; envelope values left out default to the `--topic` option,
//! partition 0, the line's index as offset, timestamp 0, no key, no headers and no schema
//! id. A header's value is a string, `{"$bytes": …}` or null.
//!
//! Field values: JSON null, booleans, strings and numbers map to the WIT value of that kind
//! (integral numbers to `int`, others to `float`); nested objects are flattened into dotted
//! names (`{"quote": {"bid": 1}}` is field `quote.bid`); arrays become `text` holding their
//! JSON. Two inputs that would become one field (`{"a.b": 1, "a": {"b": 2}}`) are an error
//! naming both, as is a key given twice in one object. Other types are one-key objects: `{"$timestamp": "2024-05-01T12:00:00Z"}` (or
//! microseconds since the epoch), `{"$decimal": "187.25"}`, `{"$bytes": "<base64>"}`, and
//! `{"$float": "NaN"}` for non-finite floats. Outcomes are written in the same notation.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value as Json, json};

use crate::model::{
    Action, Body, Decimal, EmitValue, Field, Header, MergePolicy, Outcome, Output, Record, Value,
    Write,
};

/// Defaults for envelope values a line leaves out.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Topic of messages that name none.
    pub topic: String,
}

/// A message read from a JSON line: where it is from, and the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The message, its value as named fields.
    pub record: Record,
}

impl Input {
    /// The message's fields.
    pub fn fields(&self) -> &[Field] {
        match &self.record.body {
            Body::Fields { fields, .. } => fields,
            _ => &[],
        }
    }
}

/// Parses one JSON line into a message. `index` is the message's 0-based position, its
/// default offset. Errors name the field at fault; the caller adds file and line.
pub fn parse_message(line: &str, index: usize, defaults: &Defaults) -> Result<Input, String> {
    let json = crate::json::from_str(line).map_err(|e| format!("invalid JSON: {}", e.in_line()))?;
    let Json::Object(mut obj) = json else {
        return Err(format!("expected a JSON object, found {}", kind_of(&json)));
    };
    let mut message = Input {
        topic: defaults.topic.clone(),
        partition: 0,
        record: Record {
            offset: index as i64,
            timestamp_ms: 0,
            key: None,
            headers: Vec::new(),
            body: Body::Fields {
                schema_id: None,
                fields: Vec::new(),
            },
        },
    };
    // Without a `fields` object, the whole line is the fields.
    let fields = match obj.remove("fields") {
        None => {
            message.record.body = Body::Fields {
                schema_id: None,
                fields: flatten(obj)?,
            };
            return Ok(message);
        }
        Some(Json::Object(fields)) => fields,
        Some(other) => {
            return Err(format!(
                "`fields` must be an object, found {}",
                kind_of(&other)
            ));
        }
    };
    let fields = flatten(fields)?;
    let mut schema_id = None;
    let record = &mut message.record;
    for (name, value) in obj {
        match name.as_str() {
            "topic" => message.topic = as_str(&name, &value)?.to_string(),
            "partition" => message.partition = as_int(&name, &value)?,
            "offset" => record.offset = as_int(&name, &value)?,
            "timestamp_ms" => record.timestamp_ms = as_int(&name, &value)?,
            "schema_id" => {
                schema_id = (!value.is_null())
                    .then(|| as_int(&name, &value))
                    .transpose()?
            }
            "headers" => record.headers = parse_headers(&value)?,
            "key" => {
                record.key = match &value {
                    Json::Null => None,
                    Json::String(s) => Some(s.clone().into_bytes()),
                    Json::Object(_) => match parse_value("key", &value)? {
                        Value::Bytes(b) => Some(b),
                        _ => return Err("`key` must be a string, {\"$bytes\": …} or null".into()),
                    },
                    other => {
                        return Err(format!(
                            "`key` must be a string, {{\"$bytes\": …}} or null, found {}",
                            kind_of(other)
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "unknown envelope key `{other}` (expected topic, partition, offset, timestamp_ms, key, headers, schema_id, fields)"
                ));
            }
        }
    }
    record.body = Body::Fields { schema_id, fields };
    Ok(message)
}

/// `headers`: an array of `{"key": …, "value": …}`.
fn parse_headers(v: &Json) -> Result<Vec<Header>, String> {
    let bad = || {
        "`headers` must be an array of {\"key\": string, \"value\": string, {\"$bytes\": …} or null}"
            .to_string()
    };
    let Json::Array(items) = v else {
        return Err(bad());
    };
    items
        .iter()
        .map(|item| {
            let Json::Object(obj) = item else {
                return Err(bad());
            };
            let key = obj.get("key").and_then(Json::as_str).ok_or_else(bad)?;
            if obj.keys().any(|k| k != "key" && k != "value") {
                return Err(bad());
            }
            let value = match obj.get("value") {
                None | Some(Json::Null) => None,
                Some(Json::String(s)) => Some(s.clone().into_bytes()),
                Some(other) => match parse_value("headers.value", other)? {
                    Value::Bytes(b) => Some(b),
                    _ => return Err(bad()),
                },
            };
            Ok(Header {
                key: key.to_string(),
                value,
            })
        })
        .collect()
}

fn as_str<'a>(name: &str, v: &'a Json) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("`{name}` must be a string, found {}", kind_of(v)))
}

fn as_int<T: TryFrom<i64>>(name: &str, v: &Json) -> Result<T, String> {
    v.as_i64()
        .and_then(|i| T::try_from(i).ok())
        .ok_or_else(|| format!("`{name}` must be an integer in range, found {v}"))
}

fn kind_of(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Nested objects flattened into dotted names. Two spellings of one name (a dotted key
/// beside the nested object it would come from) are refused rather than one of them
/// silently winning.
fn flatten(obj: Map<String, Json>) -> Result<Vec<Field>, String> {
    let mut flat = Flat {
        fields: Vec::with_capacity(obj.len()),
        spellings: HashMap::with_capacity(obj.len()),
        keys: Vec::new(),
    };
    flat.add("", obj)?;
    Ok(flat.fields)
}

struct Flat {
    fields: Vec<Field>,
    /// Each field's name and the keys it was spelled with.
    spellings: HashMap<String, Vec<String>>,
    /// The keys leading to the object being flattened.
    keys: Vec<String>,
}

impl Flat {
    fn add(&mut self, prefix: &str, obj: Map<String, Json>) -> Result<(), String> {
        for (key, value) in obj {
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            self.keys.push(key);
            match value {
                Json::Object(inner) if !is_typed(&inner) => self.add(&name, inner)?,
                value => {
                    if let Some(first) = self.spellings.get(&name) {
                        return Err(format!(
                            "fields {} and {} both become the field `{name}`; rename one of them",
                            spelling(first),
                            spelling(&self.keys)
                        ));
                    }
                    let value = parse_value(&name, &value)?;
                    self.spellings.insert(name.clone(), self.keys.clone());
                    self.fields.push(Field { name, value });
                }
            }
            self.keys.pop();
        }
        Ok(())
    }
}

/// Keys as written, outermost first: `"a" → "b"`.
fn spelling(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(" → ")
}

fn is_typed(obj: &Map<String, Json>) -> bool {
    obj.len() == 1 && obj.keys().next().is_some_and(|k| k.starts_with('$'))
}

/// One JSON value to a WIT value; `name` is for errors.
fn parse_value(name: &str, v: &Json) -> Result<Value, String> {
    Ok(match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Text(s.clone()),
        Json::Array(_) => Value::Text(v.to_string()),
        Json::Object(obj) if is_typed(obj) => {
            let (tag, inner) = obj.iter().next().expect("one key");
            let bad = |what: &str| format!("field `{name}`: {tag} needs {what}, found {inner}");
            match tag.as_str() {
                "$timestamp" => match inner {
                    Json::Number(n) => {
                        Value::Timestamp(n.as_i64().ok_or_else(|| bad("integer microseconds"))?)
                    }
                    Json::String(s) => Value::Timestamp(parse_rfc3339_micros(s).map_err(|e| {
                        format!("field `{name}`: {s:?} is not an RFC 3339 time: {e}")
                    })?),
                    _ => return Err(bad("an RFC 3339 string or integer microseconds")),
                },
                "$decimal" => Value::Decimal(
                    Decimal::parse(inner.as_str().ok_or_else(|| bad("a string"))?)
                        .map_err(|e| format!("field `{name}`: {e}"))?,
                ),
                "$bytes" => Value::Bytes(
                    BASE64
                        .decode(inner.as_str().ok_or_else(|| bad("a base64 string"))?)
                        .map_err(|e| format!("field `{name}`: invalid base64: {e}"))?,
                ),
                "$float" => Value::Float(
                    inner
                        .as_str()
                        .and_then(|s| s.parse::<f64>().ok())
                        .ok_or_else(|| bad("\"NaN\", \"inf\" or \"-inf\""))?,
                ),
                other => {
                    return Err(format!(
                        "field `{name}`: unknown type tag `{other}` (expected $timestamp, $decimal, $bytes or $float)"
                    ));
                }
            }
        }
        Json::Object(_) => unreachable!("nested objects are flattened before values are parsed"),
    })
}

fn parse_rfc3339_micros(s: &str) -> Result<i64, humantime::TimestampError> {
    let t = humantime::parse_rfc3339_weak(s)?;
    Ok(match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    })
}

/// A WIT value as JSON, in the notation [`parse_message`] reads.
pub fn value_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Boolean(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(f) if f.is_finite() => json!(f),
        Value::Float(f) => json!({ "$float": f.to_string() }),
        Value::Text(s) => json!(s),
        Value::Bytes(b) => json!({ "$bytes": BASE64.encode(b) }),
        Value::Timestamp(us) => json!({ "$timestamp": format_micros(*us) }),
        Value::Decimal(d) => json!({ "$decimal": d.to_string() }),
    }
}

fn format_micros(us: i64) -> String {
    if us >= 0 {
        let t = UNIX_EPOCH + Duration::from_micros(us as u64);
        humantime::format_rfc3339_micros(t).to_string()
    } else {
        us.to_string()
    }
}

fn row_json(row: &[Field]) -> Json {
    Json::Object(
        row.iter()
            .map(|f| (f.name.clone(), value_json(&f.value)))
            .collect(),
    )
}

/// Names and values, zipped into a JSON object (a missing value is null).
fn named_json(names: &[String], values: &[Value]) -> Json {
    Json::Object(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), values.get(i).map_or(Json::Null, value_json)))
            .collect(),
    )
}

fn policy_text(p: &MergePolicy, columns: &[String]) -> String {
    let column = |i: u32| {
        columns
            .get(i as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{i}"))
    };
    match p {
        MergePolicy::Replace => "replace".into(),
        MergePolicy::Min => "min".into(),
        MergePolicy::Max => "max".into(),
        MergePolicy::Sum => "sum".into(),
        MergePolicy::FirstByTime(c) => format!("first-by-time({})", column(*c)),
        MergePolicy::LastByTime(c) => format!("last-by-time({})", column(*c)),
    }
}

/// A key as JSON: its text when it is UTF-8, else `{"$bytes": …}`.
pub fn key_json(key: &Option<Vec<u8>>) -> Json {
    match key {
        None => Json::Null,
        Some(k) => match std::str::from_utf8(k) {
            Ok(s) => json!(s),
            Err(_) => json!({ "$bytes": BASE64.encode(k) }),
        },
    }
}

/// Headers as JSON: `[{"key": …, "value": …}]`, values as [`key_json`] writes them.
pub fn headers_json(headers: &[Header]) -> Json {
    Json::Array(
        headers
            .iter()
            .map(|h| json!({ "key": h.key, "value": key_json(&h.value) }))
            .collect(),
    )
}

/// An action as JSON, its targets and layouts (from `output`) written out by name.
fn action_json(a: &Action, output: &Output) -> Json {
    match a {
        Action::Write(row) => {
            let Some(target) = output.tables.get(row.target as usize) else {
                return json!({ "write": { "target": row.target, "error": "no such target" } });
            };
            let values = named_json(&target.columns, &row.values);
            match &target.write {
                Write::Insert => json!({ "insert": { "table": target.table, "row": values } }),
                Write::Upsert(u) => json!({ "upsert": {
                    "table": target.table,
                    "key": u.key.iter().map(|k| target.columns.get(*k as usize).cloned().unwrap_or_else(|| format!("#{k}"))).collect::<Vec<_>>(),
                    "row": values,
                    "policies": Json::Object(u.policies.iter().map(|p| (
                        target.columns.get(p.column as usize).cloned().unwrap_or_else(|| format!("#{}", p.column)),
                        json!(policy_text(&p.policy, &target.columns)),
                    )).collect()),
                } }),
            }
        }
        Action::Emit(e) => json!({ "emit": {
            "topic": e.topic,
            "partition": e.partition,
            "key": key_json(&e.key),
            "headers": headers_json(&e.headers),
            "value": match &e.value {
                EmitValue::Raw(b) => json!({ "raw": { "$bytes": BASE64.encode(b) } }),
                EmitValue::Fields(f) => json!({ "fields": named_json(
                    output.layouts.get(f.layout as usize).map_or(&[][..], Vec::as_slice),
                    &f.values,
                ) }),
                EmitValue::Tombstone => Json::Null,
            },
        } }),
    }
}

/// A message as a JSON line, in the notation [`parse_message`] reads.
pub fn message_json(topic: &str, partition: i32, record: &Record) -> Json {
    let fields = record.clone().into_fields();
    json!({
        "topic": topic,
        "partition": partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
        "key": key_json(&record.key),
        "headers": headers_json(&record.headers),
        "schema_id": record.schema_id(),
        "fields": row_json(&fields),
    })
}

/// One outcome of `output` as a JSON object naming the message it belongs to.
pub fn outcome_json(
    topic: &str,
    partition: i32,
    offset: i64,
    outcome: &Outcome,
    output: &Output,
) -> Json {
    let mut obj = Map::new();
    obj.insert("topic".into(), json!(topic));
    obj.insert("partition".into(), json!(partition));
    obj.insert("offset".into(), json!(offset));
    match outcome {
        Outcome::Actions(actions) => {
            obj.insert(
                "actions".into(),
                Json::Array(actions.iter().map(|a| action_json(a, output)).collect()),
            );
        }
        Outcome::DeadLetter(reason) => {
            obj.insert("dead_letter".into(), json!(reason));
        }
    }
    Json::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            topic: "input".into(),
        }
    }

    #[test]
    fn bare_fields_with_defaults_and_flattening() {
        let m = parse_message(
            r#"{"symbol":"AAPL","price":187.25,"volume":100,"quote":{"bid":1.5,"ask":{"$decimal":"1.75"}},"tags":["a"],"halted":null}"#,
            3,
            &defaults(),
        )
        .unwrap();
        assert_eq!(
            (m.topic.as_str(), m.partition, m.record.offset),
            ("input", 0, 3)
        );
        let names: Vec<_> = m.fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "symbol",
                "price",
                "volume",
                "quote.bid",
                "quote.ask",
                "tags",
                "halted"
            ]
        );
        assert_eq!(m.fields()[2].value, Value::Int(100));
        assert_eq!(m.fields()[1].value, Value::Float(187.25));
        assert_eq!(
            m.fields()[4].value,
            Value::Decimal(Decimal::from_i128(175, 2))
        );
        assert_eq!(m.fields()[5].value, Value::Text("[\"a\"]".into()));
        assert_eq!(m.fields()[6].value, Value::Null);
    }

    #[test]
    fn envelope_and_typed_values() {
        let m = parse_message(
            r#"{"topic":"t","partition":2,"offset":9,"timestamp_ms":5,"key":"AAPL","schema_id":4,
                "fields":{"at":{"$timestamp":"2024-05-01T12:00:00.5Z"},"raw":{"$bytes":"AAE="},"us":{"$timestamp":7}}}"#,
            0,
            &defaults(),
        )
        .unwrap();
        assert_eq!(
            (
                m.partition,
                m.record.offset,
                m.record.timestamp_ms,
                m.record.schema_id()
            ),
            (2, 9, 5, Some(4))
        );
        assert_eq!(m.record.key.as_deref(), Some(&b"AAPL"[..]));
        assert_eq!(m.fields()[0].value, Value::Timestamp(1_714_564_800_500_000));
        assert_eq!(m.fields()[1].value, Value::Bytes(vec![0, 1]));
        assert_eq!(m.fields()[2].value, Value::Timestamp(7));
        // And back.
        assert_eq!(
            value_json(&m.fields()[0].value),
            json!({"$timestamp": "2024-05-01T12:00:00.500000Z"})
        );
        assert_eq!(value_json(&m.fields()[1].value), json!({"$bytes": "AAE="}));
    }

    #[test]
    fn errors_name_the_field() {
        let d = defaults();
        assert!(
            parse_message("{", 0, &d)
                .unwrap_err()
                .starts_with("invalid JSON")
        );
        assert!(
            parse_message("[1]", 0, &d)
                .unwrap_err()
                .contains("expected a JSON object, found an array")
        );
        assert!(
            parse_message(r#"{"fields":{},"offset":"x"}"#, 0, &d)
                .unwrap_err()
                .contains("`offset` must be an integer")
        );
        assert!(
            parse_message(r#"{"fields":{},"colour":1}"#, 0, &d)
                .unwrap_err()
                .contains("unknown envelope key `colour`")
        );
        let e = parse_message(r#"{"a":{"b":{"$timestamp":"yesterday"}}}"#, 0, &d).unwrap_err();
        assert!(e.contains("field `a.b`") && e.contains("RFC 3339"), "{e}");
        let e = parse_message(r#"{"p":{"$money":"1"}}"#, 0, &d).unwrap_err();
        assert!(e.contains("unknown type tag `$money`"), "{e}");
    }

    #[test]
    fn two_spellings_of_one_field_are_refused() {
        let d = defaults();
        assert_eq!(
            parse_message(r#"{"a.b":1,"a":{"b":2}}"#, 0, &d).unwrap_err(),
            r#"fields "a.b" and "a" → "b" both become the field `a.b`; rename one of them"#
        );
        assert_eq!(
            parse_message(
                r#"{"fields":{"q":{"x":{"bid":{"$decimal":"1"}}},"q.x":{"bid":2}}}"#,
                0,
                &d
            )
            .unwrap_err(),
            r#"fields "q" → "x" → "bid" and "q.x" → "bid" both become the field `q.x.bid`; rename one of them"#
        );
        // A key given twice, at any depth, is refused by the JSON reader.
        assert_eq!(
            parse_message(r#"{"a":1,"a":2}"#, 0, &d).unwrap_err(),
            r#"invalid JSON: the key "a" appears twice in one object (column 10)"#
        );
        assert_eq!(
            parse_message(r#"{"fields":{"quote":{"bid":1,"bid":2}}}"#, 0, &d).unwrap_err(),
            r#"invalid JSON: field `fields.quote`: the key "bid" appears twice in one object (column 33)"#
        );
        assert_eq!(
            parse_message(r#"{"p":1e400}"#, 0, &d).unwrap_err(),
            "invalid JSON: field `p`: the number 1e400 is out of range for a 64-bit float (column 10)"
        );
        // Dotted names that do not meet are fine.
        let m = parse_message(r#"{"a.b":1,"a":{"c":2}}"#, 0, &d).unwrap();
        let names: Vec<_> = m.fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.b", "a.c"]);
    }
}
