//! Decoded messages as the stages hold them, and the batches guests receive.
//!
//! A value arrives in one of two shapes. Decoded for a guest of 0.2.0, it is a list of
//! values by position in its schema's [`Layout`] (names and kinds once per schema); decoded
//! for a guest of 0.1.0, or given without a schema (JSON to `weir guest run`), it is a list
//! of named [`Field`]s. [`batch_of`] makes a contract [`Batch`] of either, each layout once.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Batch, Header, Message, Schema, SchemaField, Value};

/// A named value: a message field as 0.1.0 guests and schema-less input have it.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The flattened field name (`quote.bid`).
    pub name: String,
    /// Its value.
    pub value: Value,
}

impl Field {
    /// A field.
    pub fn new(name: impl Into<String>, value: Value) -> Self {
        Self {
            name: name.into(),
            value,
        }
    }
}

/// The fields of the values written with one schema, and where each name is.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    schema: Schema,
    positions: HashMap<String, usize>,
}

impl Layout {
    /// The layout of `schema`'s fields. A name given twice keeps its first position.
    pub fn new(schema: Schema) -> Self {
        let mut positions = HashMap::with_capacity(schema.fields.len());
        for (i, f) in schema.fields.iter().enumerate() {
            positions.entry(f.name.clone()).or_insert(i);
        }
        Self { schema, positions }
    }

    /// The layout of values named `names` without a schema: no id, kinds unknown.
    pub fn untyped<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self::new(Schema {
            id: None,
            fields: names
                .into_iter()
                .map(|name| SchemaField {
                    name: name.to_string(),
                    kind: None,
                    nullable: true,
                })
                .collect(),
        })
    }

    /// The schema: its id and fields.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The position of the field `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.positions.get(name).copied()
    }
}

/// A message's value, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// No value (a tombstone).
    Tombstone,
    /// Values by position in `layout`.
    Values {
        /// The names and kinds of the values.
        layout: Arc<Layout>,
        /// One value per field of the layout.
        values: Vec<Value>,
    },
    /// Named fields.
    Fields {
        /// The registry id of the writer schema, if the value was schema-framed.
        schema_id: Option<u32>,
        /// The fields, in schema order.
        fields: Vec<Field>,
    },
}

/// One Kafka message of a partition, its value decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Offset within the partition.
    pub offset: i64,
    /// Kafka record timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Record key bytes.
    pub key: Option<Vec<u8>>,
    /// Record headers, in order.
    pub headers: Vec<Header>,
    /// The decoded value.
    pub body: Body,
}

impl Record {
    /// The value of the field `name`, if the message has one.
    pub fn get(&self, name: &str) -> Option<&Value> {
        match &self.body {
            Body::Tombstone => None,
            Body::Values { layout, values } => values.get(layout.position(name)?),
            Body::Fields { fields, .. } => fields.iter().find(|f| f.name == name).map(|f| &f.value),
        }
    }

    /// The registry id of the writer schema, if the value was schema-framed.
    pub fn schema_id(&self) -> Option<u32> {
        match &self.body {
            Body::Tombstone => None,
            Body::Values { layout, .. } => layout.schema().id,
            Body::Fields { schema_id, .. } => *schema_id,
        }
    }

    /// The message's fields by name, whichever shape its value has.
    pub fn into_fields(self) -> Vec<Field> {
        match self.body {
            Body::Tombstone => Vec::new(),
            Body::Values { layout, values } => layout
                .schema()
                .fields
                .iter()
                .zip(values)
                .map(|(f, value)| Field::new(f.name.clone(), value))
                .collect(),
            Body::Fields { fields, .. } => fields,
        }
    }
}

/// The contract's batch of `records` of `topic[partition]`: each layout once in
/// `schemas` (named fields get a layout per distinct list of names and schema id), each
/// message's values by position in its layout.
pub fn batch_of(topic: &str, partition: i32, records: Vec<Record>) -> Batch {
    let mut schemas: Vec<Schema> = Vec::new();
    let mut by_layout: HashMap<*const Layout, u32> = HashMap::new();
    let mut by_names: HashMap<(Option<u32>, Vec<String>), u32> = HashMap::new();
    let mut messages = Vec::with_capacity(records.len());
    for r in records {
        let (schema, values) = match r.body {
            Body::Tombstone => (None, Vec::new()),
            Body::Values { layout, values } => {
                let next = schemas.len() as u32;
                let index = *by_layout.entry(Arc::as_ptr(&layout)).or_insert_with(|| {
                    schemas.push(layout.schema().clone());
                    next
                });
                (Some(index), values)
            }
            Body::Fields { schema_id, fields } => {
                let (names, values): (Vec<String>, Vec<Value>) =
                    fields.into_iter().map(|f| (f.name, f.value)).unzip();
                let key = (schema_id, names);
                let index = match by_names.get(&key) {
                    Some(i) => *i,
                    None => {
                        let next = schemas.len() as u32;
                        let mut schema = Layout::untyped(key.1.iter().map(String::as_str))
                            .schema()
                            .clone();
                        schema.id = schema_id;
                        schemas.push(schema);
                        by_names.insert(key, next);
                        next
                    }
                };
                (Some(index), values)
            }
        };
        messages.push(Message {
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            headers: r.headers,
            schema,
            values,
        });
    }
    Batch {
        topic: topic.to_string(),
        partition,
        schemas,
        messages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ValueKind;

    #[test]
    fn layouts_appear_once_per_batch_and_values_keep_their_positions() {
        let layout = Arc::new(Layout::new(Schema {
            id: Some(7),
            fields: vec![
                SchemaField {
                    name: "symbol".into(),
                    kind: Some(ValueKind::Text),
                    nullable: false,
                },
                SchemaField {
                    name: "price".into(),
                    kind: Some(ValueKind::Float),
                    nullable: true,
                },
            ],
        }));
        let record = |offset: i64, body: Body| Record {
            offset,
            timestamp_ms: 0,
            key: None,
            headers: Vec::new(),
            body,
        };
        let values = |p: f64| Body::Values {
            layout: layout.clone(),
            values: vec![Value::Text("AAPL".into()), Value::Float(p)],
        };
        let named = |names: &[&str]| Body::Fields {
            schema_id: None,
            fields: names
                .iter()
                .map(|n| Field::new(*n, Value::Int(1)))
                .collect(),
        };
        let r = record(0, values(1.0));
        assert_eq!(r.get("price"), Some(&Value::Float(1.0)));
        assert_eq!(r.schema_id(), Some(7));
        let batch = batch_of(
            "t",
            2,
            vec![
                r,
                record(1, named(&["a", "b"])),
                record(2, values(2.0)),
                record(3, Body::Tombstone),
                record(4, named(&["a", "b"])),
                record(5, named(&["b"])),
            ],
        );
        assert_eq!(batch.schemas.len(), 3);
        let schemas: Vec<Option<u32>> = batch.messages.iter().map(|m| m.schema).collect();
        assert_eq!(schemas, [Some(0), Some(1), Some(0), None, Some(1), Some(2)]);
        assert_eq!(batch.messages[2].values[1], Value::Float(2.0));
        assert_eq!(batch.schemas[1].fields[1].name, "b");
        assert_eq!(batch.schemas[1].fields[1].kind, None);
    }
}
