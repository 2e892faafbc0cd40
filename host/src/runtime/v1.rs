//! Guests of the released contract `weir:processor@0.1.0`: a batch is handed to them as
//! 0.1.0 has it (every message with its topic, partition and named fields, the config in
//! every batch), and their outcomes are taken back as the host's [`Output`].

use crate::model::v1::types as old;
use crate::model::{
    Action, Batch, ColumnPolicy, ConfigEntry, Decimal, EmitFields, EmitMessage, EmitValue,
    Interner, MergePolicy, Outcome, Output, Row, Target, Upsert, Value, Write,
};

/// `batch` as a 0.1.0 batch, with `config`.
pub(crate) fn batch(batch: &Batch, config: &[ConfigEntry]) -> old::Batch {
    let messages = batch
        .messages
        .iter()
        .map(|m| {
            let schema = m.schema.and_then(|i| batch.schemas.get(i as usize));
            old::Message {
                topic: batch.topic.clone(),
                partition: batch.partition,
                offset: m.offset,
                timestamp_ms: m.timestamp_ms,
                key: m.key.clone(),
                schema_id: schema.and_then(|s| s.id),
                fields: schema
                    .map(|s| {
                        s.fields
                            .iter()
                            .zip(&m.values)
                            .map(|(f, v)| old::Field {
                                name: f.name.clone(),
                                value: value(v),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    old::Batch {
        config: config
            .iter()
            .map(|e| old::ConfigEntry {
                key: e.key.clone(),
                value: e.value.clone(),
            })
            .collect(),
        messages,
    }
}

fn value(v: &Value) -> old::Value {
    match v {
        Value::Null => old::Value::Null,
        Value::Boolean(b) => old::Value::Boolean(*b),
        Value::Int(i) => old::Value::Int(*i),
        Value::Float(f) => old::Value::Float(*f),
        Value::Text(s) => old::Value::Text(s.clone()),
        Value::Bytes(b) => old::Value::Bytes(b.clone()),
        Value::Timestamp(t) => old::Value::Timestamp(*t),
        Value::Decimal(d) => old::Value::Decimal(old::Decimal {
            unscaled: d.unscaled.clone(),
            scale: d.scale,
        }),
    }
}

fn from_value(v: old::Value) -> Value {
    match v {
        old::Value::Null => Value::Null,
        old::Value::Boolean(b) => Value::Boolean(b),
        old::Value::Int(i) => Value::Int(i),
        old::Value::Float(f) => Value::Float(f),
        old::Value::Text(s) => Value::Text(s),
        old::Value::Bytes(b) => Value::Bytes(b),
        old::Value::Timestamp(t) => Value::Timestamp(t),
        old::Value::Decimal(d) => Value::Decimal(Decimal {
            unscaled: d.unscaled,
            scale: d.scale,
        }),
    }
}

/// 0.1.0 outcomes as the host's output: each row's table and column names become a
/// target (once per distinct one). An upsert whose key or time column is not in its row
/// dead-letters its message, saying so, as the 0.1.0 sink did.
pub(crate) fn output(outcomes: Vec<old::Outcome>) -> Output {
    let mut targets = Interner::default();
    let outcomes = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            old::Outcome::DeadLetter(reason) => Outcome::DeadLetter(reason),
            old::Outcome::Actions(actions) => actions
                .into_iter()
                .map(|a| action(a, &mut targets))
                .collect::<Result<Vec<_>, String>>()
                .map_or_else(Outcome::DeadLetter, Outcome::Actions),
        })
        .collect();
    targets.finish(outcomes)
}

fn split(fields: Vec<old::Field>) -> (Vec<String>, Vec<Value>) {
    fields
        .into_iter()
        .map(|f| (f.name, from_value(f.value)))
        .unzip()
}

fn action(action: old::Action, targets: &mut Interner) -> Result<Action, String> {
    Ok(match action {
        old::Action::Insert(row) => {
            let (columns, values) = split(row.row);
            let target = targets.target(Target {
                table: row.table,
                columns,
                write: Write::Insert,
            });
            Action::Write(Row { target, values })
        }
        old::Action::Upsert(row) => {
            let (columns, values) = split(row.row);
            let table = &row.table;
            let position = |name: &str| columns.iter().position(|c| c == name);
            let key = row
                .key
                .iter()
                .map(|k| {
                    position(k).map(|p| p as u32).ok_or_else(|| {
                        format!("upsert into {table}: key column {k} is not in the row")
                    })
                })
                .collect::<Result<Vec<u32>, String>>()?;
            let mut policies = Vec::new();
            for p in row.policies {
                // A policy for a column the row does not carry does not apply to it.
                let Some(column) = position(&p.column) else {
                    continue;
                };
                let time = |t: &str| {
                    position(t).map(|p| p as u32).ok_or_else(|| {
                        format!(
                            "upsert into {table}: {}: its time column {t} is not in the row",
                            p.column
                        )
                    })
                };
                let policy = match p.policy {
                    old::MergePolicy::Replace => MergePolicy::Replace,
                    old::MergePolicy::Min => MergePolicy::Min,
                    old::MergePolicy::Max => MergePolicy::Max,
                    old::MergePolicy::Sum => MergePolicy::Sum,
                    old::MergePolicy::FirstByTime(t) => MergePolicy::FirstByTime(time(&t)?),
                    old::MergePolicy::LastByTime(t) => MergePolicy::LastByTime(time(&t)?),
                };
                policies.push(ColumnPolicy {
                    column: column as u32,
                    policy,
                });
            }
            let target = targets.target(Target {
                table: row.table,
                columns,
                write: Write::Upsert(Upsert { key, policies }),
            });
            Action::Write(Row { target, values })
        }
        old::Action::Emit(emit) => Action::Emit(EmitMessage {
            topic: emit.topic,
            partition: None,
            key: emit.key,
            headers: Vec::new(),
            value: match emit.value {
                old::EmitValue::Raw(bytes) => EmitValue::Raw(bytes),
                old::EmitValue::Fields(fields) => {
                    let (names, values) = split(fields);
                    EmitValue::Fields(EmitFields {
                        layout: targets.layout(names),
                        values,
                    })
                }
            },
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Message, Schema, SchemaField};

    fn field(name: &str, value: old::Value) -> old::Field {
        old::Field {
            name: name.into(),
            value,
        }
    }

    #[test]
    fn batches_go_out_named_and_outcomes_come_back_by_position() {
        let batch = Batch {
            topic: "t".into(),
            partition: 4,
            schemas: vec![Schema {
                id: Some(3),
                fields: ["a", "b"]
                    .into_iter()
                    .map(|n| SchemaField {
                        name: n.into(),
                        kind: None,
                        nullable: true,
                    })
                    .collect(),
            }],
            messages: vec![Message {
                offset: 9,
                timestamp_ms: 1,
                key: None,
                headers: Vec::new(),
                schema: Some(0),
                values: vec![Value::Int(1), Value::Text("x".into())],
            }],
        };
        let config = [ConfigEntry {
            key: "k".into(),
            value: "v".into(),
        }];
        let old = super::batch(&batch, &config);
        assert_eq!(old.config[0].key, "k");
        let m = &old.messages[0];
        assert_eq!((m.topic.as_str(), m.partition, m.offset), ("t", 4, 9));
        assert_eq!(m.schema_id, Some(3));
        assert_eq!(m.fields[1], field("b", old::Value::Text("x".into())));

        let insert = |a: i64| {
            old::Action::Insert(old::InsertRow {
                table: "ticks".into(),
                row: vec![field("a", old::Value::Int(a))],
            })
        };
        let upsert = |time: &str| {
            old::Action::Upsert(old::UpsertRow {
                table: "candles".into(),
                key: vec!["s".into()],
                row: vec![
                    field("s", old::Value::Text("A".into())),
                    field("at", old::Value::Timestamp(1)),
                    field("close", old::Value::Float(2.0)),
                ],
                policies: vec![
                    old::ColumnPolicy {
                        column: "close".into(),
                        policy: old::MergePolicy::LastByTime(time.into()),
                    },
                    old::ColumnPolicy {
                        column: "absent".into(),
                        policy: old::MergePolicy::Sum,
                    },
                ],
            })
        };
        let out = output(vec![
            old::Outcome::Actions(vec![insert(1), upsert("at")]),
            old::Outcome::Actions(vec![insert(2)]),
            old::Outcome::Actions(vec![upsert("nope")]),
            old::Outcome::DeadLetter("bad".into()),
        ]);
        assert_eq!(out.tables.len(), 2, "{:?}", out.tables);
        let Write::Upsert(u) = &out.tables[1].write else {
            panic!("{:?}", out.tables[1])
        };
        assert_eq!(u.key, [0]);
        assert_eq!(
            u.policies,
            [ColumnPolicy {
                column: 2,
                policy: MergePolicy::LastByTime(1)
            }]
        );
        assert!(
            matches!(&out.outcomes[1], Outcome::Actions(a) if matches!(&a[0], Action::Write(r) if r.target == 0 && r.values == [Value::Int(2)]))
        );
        assert_eq!(
            out.outcomes[2],
            Outcome::DeadLetter(
                "upsert into candles: close: its time column nope is not in the row".into()
            )
        );
        assert_eq!(out.outcomes[3], Outcome::DeadLetter("bad".into()));
    }
}
