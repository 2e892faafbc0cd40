//! A guest's [`Processor`](weir_guest::Processor) compiled into the host, as a
//! [`NativeProcessor`]: the same transform as the guest's `.wasm`, without the sandbox.
//!
//! The host and the guest SDK each have their own copy of the contract's types (generated
//! from the same WIT by wasmtime and wit-bindgen); a call converts the batch to the SDK's
//! types and the outcomes back, the native equivalent of the canonical ABI's copies.

use std::marker::PhantomData;

use weir::runtime::NativeProcessor;
use weir::runtime::types as host;
use weir_guest as guest;

/// Runs processor `P` natively on each batch.
pub struct Native<P>(PhantomData<fn() -> P>);

impl<P> Default for Native<P> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<P: guest::Processor> NativeProcessor for Native<P> {
    fn process(&self, batch: &host::Batch) -> Result<Vec<host::Outcome>, String> {
        let batch = guest::Batch {
            config: batch
                .config
                .iter()
                .map(|c| guest::ConfigEntry {
                    key: c.key.clone(),
                    value: c.value.clone(),
                })
                .collect(),
            messages: batch.messages.iter().map(message).collect(),
        };
        // A guest's panic is its trap.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| guest::run::<P>(batch)))
            .map(|outcomes| outcomes.into_iter().map(outcome).collect())
            .map_err(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into())
            })
    }
}

fn message(m: &host::Message) -> guest::Message {
    guest::Message {
        topic: m.topic.clone(),
        partition: m.partition,
        offset: m.offset,
        timestamp_ms: m.timestamp_ms,
        key: m.key.clone(),
        schema_id: m.schema_id,
        fields: m
            .fields
            .iter()
            .map(|f| guest::Field {
                name: f.name.clone(),
                value: value_in(&f.value),
            })
            .collect(),
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

fn fields_out(fields: Vec<guest::Field>) -> Vec<host::Field> {
    fields
        .into_iter()
        .map(|f| host::Field {
            name: f.name,
            value: value_out(f.value),
        })
        .collect()
}

fn outcome(o: guest::Outcome) -> host::Outcome {
    match o {
        guest::Outcome::DeadLetter(reason) => host::Outcome::DeadLetter(reason),
        guest::Outcome::Actions(actions) => {
            host::Outcome::Actions(actions.into_iter().map(action).collect())
        }
    }
}

fn action(a: guest::Action) -> host::Action {
    match a {
        guest::Action::Insert(i) => host::Action::Insert(host::InsertRow {
            table: i.table,
            row: fields_out(i.row),
        }),
        guest::Action::Upsert(u) => host::Action::Upsert(host::UpsertRow {
            table: u.table,
            key: u.key,
            row: fields_out(u.row),
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
                        guest::MergePolicy::FirstByTime(c) => host::MergePolicy::FirstByTime(c),
                        guest::MergePolicy::LastByTime(c) => host::MergePolicy::LastByTime(c),
                    },
                })
                .collect(),
        }),
        guest::Action::Emit(e) => host::Action::Emit(host::EmitMessage {
            topic: e.topic,
            key: e.key,
            value: match e.value {
                guest::EmitValue::Raw(b) => host::EmitValue::Raw(b),
                guest::EmitValue::Fields(f) => host::EmitValue::Fields(fields_out(f)),
            },
        }),
    }
}
