//! The batch as a guest reads it: messages whose fields are found by name through their
//! writer schema.
//!
//! A 0.2.0 batch carries each writer schema's field names once and every message's values
//! by position. [`WriterSchema`] indexes a schema's names once per batch, so
//! [`Message::get`] is one hash lookup and no string is built or compared per message
//! beyond the name asked for.

use alloc::string::String;
use alloc::vec::Vec;
use core::hash::BuildHasher;
use core::ops::{Deref, DerefMut};

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::{Decimal, Header, SchemaField, Value, wit};

/// One writer schema of the batch, with its field names indexed.
#[derive(Debug)]
pub struct WriterSchema {
    schema: wit::Schema,
    index: u32,
    positions: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl WriterSchema {
    /// Indexes `schema`, the batch's schema at `index`. When a name repeats (the host never
    /// sends one that does), the first field of that name is found.
    pub(crate) fn new(schema: wit::Schema, index: u32) -> Self {
        let hasher = DefaultHashBuilder::default();
        let mut positions = HashTable::with_capacity(schema.fields.len());
        for (i, field) in schema.fields.iter().enumerate() {
            let hash = hasher.hash_one(field.name.as_str());
            let fields = &schema.fields;
            if positions
                .find(hash, |&p: &u32| fields[p as usize].name == field.name)
                .is_none()
            {
                positions.insert_unique(hash, i as u32, |&p: &u32| {
                    hasher.hash_one(fields[p as usize].name.as_str())
                });
            }
        }
        Self {
            schema,
            index,
            positions,
            hasher,
        }
    }

    /// The Confluent schema registry id; none for values that were not schema-framed.
    pub fn id(&self) -> Option<u32> {
        self.schema.id
    }

    /// Position of this schema in the batch's `schemas` (what a message's `schema` names).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The fields, in the order a message's values come in.
    pub fn fields(&self) -> &[SchemaField] {
        &self.schema.fields
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.schema.fields.len()
    }

    /// True for a schema without fields.
    pub fn is_empty(&self) -> bool {
        self.schema.fields.is_empty()
    }

    /// The field names, in order.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> + Clone {
        self.schema.fields.iter().map(|f| f.name.as_str())
    }

    /// The position of field `name` (dotted for nested records) among the values.
    pub fn position(&self, name: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(name);
        let fields = &self.schema.fields;
        self.positions
            .find(hash, |&p| fields[p as usize].name == name)
            .map(|&p| p as usize)
    }

    /// Field `name`, with its kind and nullability.
    pub fn field(&self, name: &str) -> Option<&SchemaField> {
        self.position(name).map(|p| &self.schema.fields[p])
    }

    /// The schema as the host sent it.
    pub fn raw(&self) -> &wit::Schema {
        &self.schema
    }
}

/// What all messages of a batch share: topic, partition and writer schemas.
#[derive(Debug)]
pub(crate) struct BatchInfo {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) schemas: Vec<WriterSchema>,
}

impl BatchInfo {
    pub(crate) fn new(topic: String, partition: i32, schemas: Vec<wit::Schema>) -> Self {
        Self {
            topic,
            partition,
            schemas: schemas
                .into_iter()
                .enumerate()
                .map(|(i, s)| WriterSchema::new(s, i as u32))
                .collect(),
        }
    }
}

/// One Kafka message of the batch: its record metadata and its fields, read by name
/// through its writer schema or by position.
///
/// It owns its values (so they can move into a row without a copy, see
/// [`Message::into_values`]) and borrows the batch's schemas.
#[derive(Debug)]
pub struct Message<'a> {
    raw: wit::Message,
    batch: &'a BatchInfo,
}

impl<'a> Message<'a> {
    pub(crate) fn new(raw: wit::Message, batch: &'a BatchInfo) -> Self {
        Self { raw, batch }
    }

    /// Offset within the partition.
    pub fn offset(&self) -> i64 {
        self.raw.offset
    }

    /// Kafka record timestamp, milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> i64 {
        self.raw.timestamp_ms
    }

    /// Record key bytes; none for a null key.
    pub fn key(&self) -> Option<&[u8]> {
        self.raw.key.as_deref()
    }

    /// The key as UTF-8 text, if present and valid.
    pub fn key_str(&self) -> Option<&str> {
        self.key().and_then(|k| core::str::from_utf8(k).ok())
    }

    /// Record headers, in the order the producer wrote them (keys may repeat).
    pub fn headers(&self) -> &[Header] {
        &self.raw.headers
    }

    /// The value of the last header named `key` (as Kafka's `lastHeader`); none when there
    /// is no such header or its value is null.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.raw
            .headers
            .iter()
            .rev()
            .find(|h| h.key == key)
            .and_then(|h| h.value.as_deref())
    }

    /// [`Message::header`] as UTF-8 text, if valid.
    pub fn header_str(&self, key: &str) -> Option<&str> {
        self.header(key).and_then(|v| core::str::from_utf8(v).ok())
    }

    /// The topic the batch was read from.
    pub fn topic(&self) -> &'a str {
        &self.batch.topic
    }

    /// The partition the batch was read from.
    pub fn partition(&self) -> i32 {
        self.batch.partition
    }

    /// The schema the value was written with; none for a tombstone.
    pub fn schema(&self) -> Option<&'a WriterSchema> {
        let batch: &'a BatchInfo = self.batch;
        self.raw.schema.and_then(|i| batch.schemas.get(i as usize))
    }

    /// True for a tombstone (a null value: no schema, no fields).
    pub fn is_tombstone(&self) -> bool {
        self.raw.schema.is_none()
    }

    /// The values, by position in [`Message::schema`]'s fields.
    pub fn values(&self) -> &[Value] {
        &self.raw.values
    }

    /// The values, mutably (to change a field in place before moving the values on).
    pub fn values_mut(&mut self) -> &mut [Value] {
        &mut self.raw.values
    }

    /// The values, by position: to write them as a row of a target whose columns are the
    /// schema's field names (see [`crate::Out::fields_table`]) without copying them.
    pub fn into_values(self) -> Vec<Value> {
        self.raw.values
    }

    /// Field names and values, in schema order.
    pub fn fields(&self) -> impl Iterator<Item = (&'a str, &Value)> {
        let names = self.schema().into_iter().flat_map(|s| s.names());
        names.zip(self.raw.values.iter())
    }

    /// The value of field `name` (dotted for nested records), if the schema has it.
    pub fn get(&self, name: &str) -> Option<&Value> {
        let p = self.schema()?.position(name)?;
        self.raw.values.get(p)
    }

    /// The value of field `name`, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        let p = self.schema()?.position(name)?;
        self.raw.values.get_mut(p)
    }

    /// Takes the value of field `name`, leaving null in its place.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        self.get_mut(name)
            .map(|v| core::mem::replace(v, Value::Null))
    }

    /// The value at `position` in the schema's fields.
    pub fn at(&self, position: usize) -> Option<&Value> {
        self.raw.values.get(position)
    }

    /// The text of field `name`, if it is text.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    /// Field `name` as a number, if it is numeric (float, int or decimal).
    pub fn f64(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(Value::as_f64)
    }

    /// Field `name` as an integer, if it is one.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }

    /// Field `name` as a boolean, if it is one.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.get(name).and_then(Value::as_bool)
    }

    /// Field `name` as microseconds since the epoch, if it is a timestamp.
    pub fn timestamp(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_timestamp_micros)
    }

    /// Field `name`'s bytes, if it is bytes.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.get(name).and_then(Value::as_bytes)
    }

    /// Field `name`'s decimal, if it is one.
    pub fn decimal(&self, name: &str) -> Option<&Decimal> {
        self.get(name).and_then(Value::as_decimal)
    }

    /// The message as the host sent it.
    pub fn raw(&self) -> &wit::Message {
        &self.raw
    }

    /// The message as the host sent it, owned.
    pub fn into_raw(self) -> wit::Message {
        self.raw
    }
}

/// The messages of one batch, in offset order, with what they share: topic, partition
/// and writer schemas. Dereferences to a slice of [`Message`]s and iterates by value.
#[derive(Debug)]
pub struct Messages<'a> {
    batch: &'a BatchInfo,
    messages: Vec<Message<'a>>,
}

impl<'a> Messages<'a> {
    pub(crate) fn new(batch: &'a BatchInfo, messages: Vec<wit::Message>) -> Self {
        Self {
            batch,
            messages: messages
                .into_iter()
                .map(|m| Message::new(m, batch))
                .collect(),
        }
    }

    /// The topic the messages were read from.
    pub fn topic(&self) -> &'a str {
        &self.batch.topic
    }

    /// The partition the messages were read from (state is scoped to it).
    pub fn partition(&self) -> i32 {
        self.batch.partition
    }

    /// The batch's writer schemas, each once.
    pub fn schemas(&self) -> &'a [WriterSchema] {
        let batch: &'a BatchInfo = self.batch;
        &batch.schemas
    }

    /// The messages, owned.
    pub fn into_vec(self) -> Vec<Message<'a>> {
        self.messages
    }
}

impl<'a> Deref for Messages<'a> {
    type Target = [Message<'a>];
    fn deref(&self) -> &Self::Target {
        &self.messages
    }
}

impl DerefMut for Messages<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.messages
    }
}

impl<'a> IntoIterator for Messages<'a> {
    type Item = Message<'a>;
    type IntoIter = alloc::vec::IntoIter<Message<'a>>;
    fn into_iter(self) -> Self::IntoIter {
        self.messages.into_iter()
    }
}

impl<'m, 'a> IntoIterator for &'m Messages<'a> {
    type Item = &'m Message<'a>;
    type IntoIter = core::slice::Iter<'m, Message<'a>>;
    fn into_iter(self) -> Self::IntoIter {
        self.messages.iter()
    }
}
