//! A guest's [`Processor`](weir_guest::Processor) compiled into the host, as a
//! [`NativeProcessor`]: the same transform as the guest's `.wasm`, without the sandbox.
//!
//! The host and the guest SDK each have their own copy of the contract's types (generated
//! from the same WIT by wasmtime and wit-bindgen); a call converts the batch to the SDK's
//! types and the output back, the native equivalent of the canonical ABI's copies.

use std::marker::PhantomData;

use weir::model as host;
use weir::runtime::NativeProcessor;
use weir_guest as guest;

/// Runs processor `P` natively on each batch.
pub struct Native<P>(PhantomData<fn() -> P>);

impl<P> Default for Native<P> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<P: guest::Processor> NativeProcessor for Native<P> {
    fn init(&self, config: &[host::ConfigEntry]) -> Result<(), String> {
        let pairs: Vec<(&str, &str)> = config
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        P::new(&guest::Config::from_pairs(pairs))
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn process(
        &self,
        config: &[host::ConfigEntry],
        batch: &host::Batch,
    ) -> Result<host::Output, String> {
        let pairs: Vec<(&str, &str)> = config
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        guest::run_batch::<P>(&pairs, batch_in(batch)).map(output_out)
    }
}

/// The host's batch in the SDK's types.
pub fn batch_in(b: &host::Batch) -> guest::Batch {
    guest::Batch {
        topic: b.topic.clone(),
        partition: b.partition,
        schemas: b
            .schemas
            .iter()
            .map(|s| guest::Schema {
                id: s.id,
                fields: s
                    .fields
                    .iter()
                    .map(|f| guest::SchemaField {
                        name: f.name.clone(),
                        kind: f.kind.map(kind_in),
                        nullable: f.nullable,
                    })
                    .collect(),
            })
            .collect(),
        messages: b
            .messages
            .iter()
            .map(|m| guest::RawMessage {
                offset: m.offset,
                timestamp_ms: m.timestamp_ms,
                key: m.key.clone(),
                headers: m
                    .headers
                    .iter()
                    .map(|h| guest::Header {
                        key: h.key.clone(),
                        value: h.value.clone(),
                    })
                    .collect(),
                schema: m.schema,
                values: m.values.iter().map(value_in).collect(),
            })
            .collect(),
    }
}

fn kind_in(k: host::ValueKind) -> guest::Kind {
    match k {
        host::ValueKind::Boolean => guest::Kind::Boolean,
        host::ValueKind::Int => guest::Kind::Int,
        host::ValueKind::Float => guest::Kind::Float,
        host::ValueKind::Text => guest::Kind::Text,
        host::ValueKind::Bytes => guest::Kind::Bytes,
        host::ValueKind::Timestamp => guest::Kind::Timestamp,
        host::ValueKind::Decimal => guest::Kind::Decimal,
    }
}

fn value_in(v: &host::Value) -> guest::Value {
    match v {
        host::Value::Null => guest::Value::Null,
        host::Value::Boolean(b) => guest::Value::Boolean(*b),
        host::Value::Int(i) => guest::Value::Int(*i),
        host::Value::Float(f) => guest::Value::Float(*f),
        host::Value::Text(s) => guest::Value::Text(s.clone()),
        host::Value::Bytes(b) => guest::Value::Bytes(b.clone()),
        host::Value::Timestamp(t) => guest::Value::Timestamp(*t),
        host::Value::Decimal(d) => guest::Value::Decimal(guest::Decimal {
            unscaled: d.unscaled.clone(),
            scale: d.scale,
        }),
    }
}

fn value_out(v: guest::Value) -> host::Value {
    match v {
        guest::Value::Null => host::Value::Null,
        guest::Value::Boolean(b) => host::Value::Boolean(b),
        guest::Value::Int(i) => host::Value::Int(i),
        guest::Value::Float(f) => host::Value::Float(f),
        guest::Value::Text(s) => host::Value::Text(s),
        guest::Value::Bytes(b) => host::Value::Bytes(b),
        guest::Value::Timestamp(t) => host::Value::Timestamp(t),
        guest::Value::Decimal(d) => host::Value::Decimal(host::Decimal {
            unscaled: d.unscaled,
            scale: d.scale,
        }),
    }
}

fn values_out(values: Vec<guest::Value>) -> Vec<host::Value> {
    values.into_iter().map(value_out).collect()
}

/// The SDK's output in the host's types.
pub fn output_out(o: guest::Output) -> host::Output {
    host::Output {
        tables: o
            .tables
            .into_iter()
            .map(|t| host::Target {
                table: t.table,
                columns: t.columns,
                write: match t.write {
                    guest::TargetWrite::Insert => host::Write::Insert,
                    guest::TargetWrite::Upsert(u) => host::Write::Upsert(host::Upsert {
                        key: u.key,
                        policies: u
                            .policies
                            .into_iter()
                            .map(|p| host::ColumnPolicy {
                                column: p.column,
                                policy: match p.policy {
                                    guest::MergePolicy::Replace => host::MergePolicy::Replace,
                                    guest::MergePolicy::Min => host::MergePolicy::Min,
                                    guest::MergePolicy::Max => host::MergePolicy::Max,
                                    guest::MergePolicy::Sum => host::MergePolicy::Sum,
                                    guest::MergePolicy::FirstByTime(c) => {
                                        host::MergePolicy::FirstByTime(c)
                                    }
                                    guest::MergePolicy::LastByTime(c) => {
                                        host::MergePolicy::LastByTime(c)
                                    }
                                },
                            })
                            .collect(),
                    }),
                },
            })
            .collect(),
        layouts: o.layouts,
        outcomes: o.outcomes.into_iter().map(outcome_out).collect(),
    }
}

fn outcome_out(o: guest::Outcome) -> host::Outcome {
    match o {
        guest::Outcome::DeadLetter(reason) => host::Outcome::DeadLetter(reason),
        guest::Outcome::Actions(actions) => {
            host::Outcome::Actions(actions.into_iter().map(action_out).collect())
        }
    }
}

fn action_out(a: guest::Action) -> host::Action {
    match a {
        guest::Action::Write(row) => host::Action::Write(host::Row {
            target: row.target,
            values: values_out(row.values),
        }),
        guest::Action::Emit(e) => host::Action::Emit(host::EmitMessage {
            topic: e.topic,
            partition: e.partition,
            key: e.key,
            headers: e
                .headers
                .into_iter()
                .map(|h| host::Header {
                    key: h.key,
                    value: h.value,
                })
                .collect(),
            value: match e.value {
                guest::EmitValue::Raw(b) => host::EmitValue::Raw(b),
                guest::EmitValue::Fields(f) => host::EmitValue::Fields(host::EmitFields {
                    layout: f.layout,
                    values: values_out(f.values),
                }),
                guest::EmitValue::Tombstone => host::EmitValue::Tombstone,
            },
        }),
    }
}
