//! `passthrough`: each message becomes one row of its fields.
//!
//! Config:
//! - `table`: the target table. Unset, it is derived from the topic: lower-cased, every
//!   character outside `[a-z0-9_]` replaced by `_` (`tickers.stocks` -> `tickers_stocks`).
//! - `include_metadata`: `true` adds the columns `kafka_topic`, `kafka_partition`,
//!   `kafka_offset` and `kafka_timestamp`. Default `false`.
//!
//! A config value that does not parse is refused by `init`, naming the key.
//!
//! Each call declares one insert target per (table, writer schema): its columns are the
//! schema's field names (then the metadata columns), so a message's values move into its
//! row by position, with no per-message name work. A tombstone (no value) is a row of no
//! fields (only the metadata columns, when included). The guest imports neither `state`
//! nor `lookup`.
#![cfg_attr(target_arch = "wasm32", no_std)]

use weir_guest::prelude::*;

/// Writes each message's fields as one row.
pub struct Passthrough {
    table: Option<String>,
    include_metadata: bool,
}

/// The metadata columns `include_metadata` adds, after the message's fields.
pub const METADATA: [&str; 4] = [
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
];

/// The table a topic maps to when none is configured.
pub fn table_for_topic(topic: &str) -> String {
    topic
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect()
}

impl Processor for Passthrough {
    fn new(config: &Config) -> Result<Self, ConfigError> {
        Ok(Self {
            table: config.get("table").map(ToOwned::to_owned),
            include_metadata: config.parse_or("include_metadata", false)?,
        })
    }

    fn process_batch(&mut self, messages: Messages<'_>, out: &mut Out) -> Vec<Outcome> {
        let derived;
        let table = match &self.table {
            Some(t) => t.as_str(),
            None => {
                derived = table_for_topic(messages.topic());
                derived.as_str()
            }
        };
        let extra: &[&str] = if self.include_metadata {
            &METADATA
        } else {
            &[]
        };
        let topic = messages.topic();
        let partition = messages.partition();
        let mut outcomes = Vec::with_capacity(messages.len());
        for message in messages {
            let target = out.fields_table(table, message.schema(), extra);
            let offset = message.offset();
            let timestamp_ms = message.timestamp_ms();
            let mut values = message.into_values();
            if self.include_metadata {
                values.reserve_exact(METADATA.len());
                values.push(Value::Text(topic.into()));
                values.push(Value::Int(partition.into()));
                values.push(Value::Int(offset));
                values.push(Value::Timestamp(timestamp_ms.saturating_mul(1000)));
            }
            outcomes.push(Outcome::one(target.row(values)));
        }
        outcomes
    }
}

weir_guest::export!(Passthrough);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing::{self, TestMessage, batch};

    fn tick(offset: i64) -> TestMessage {
        TestMessage::new(offset)
            .with("symbol", "AAPL")
            .with("price", 187.25)
            .with("volume", 1200i64)
    }

    #[test]
    fn table_derived_from_topic() {
        assert_eq!(table_for_topic("tickers.stocks"), "tickers_stocks");
        assert_eq!(table_for_topic("My-Topic.v2"), "my_topic_v2");
        let out = testing::run::<Passthrough>(&[], batch("tickers.stocks", 2, [tick(7)]));
        assert_eq!(out.tables.len(), 1);
        assert_eq!(out.tables[0].table, "tickers_stocks");
        assert_eq!(out.tables[0].columns, ["symbol", "price", "volume"]);
        assert_eq!(out.tables[0].write, weir_guest::TargetWrite::Insert);
        assert_eq!(
            out.outcomes,
            [Outcome::one(Action::Write(weir_guest::TargetRow {
                target: 0,
                values: vec!["AAPL".into(), 187.25.into(), 1200i64.into()],
            }))]
        );
    }

    #[test]
    fn one_target_per_schema() {
        let out = testing::run::<Passthrough>(
            &[("table", "raw")],
            batch(
                "t",
                0,
                [
                    tick(1),
                    TestMessage::new(2).with("other", true),
                    tick(3),
                    TestMessage::tombstone(4),
                ],
            ),
        );
        let targets: Vec<u32> = out
            .outcomes
            .iter()
            .map(|o| match o.actions_ref() {
                Some([Action::Write(row)]) => row.target,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(targets, [0, 1, 0, 2]);
        assert_eq!(out.tables[1].columns, ["other"]);
        assert!(out.tables[2].columns.is_empty());
        assert!(out.tables.iter().all(|t| t.table == "raw"));
    }

    #[test]
    fn configured_table_and_metadata() {
        let out = testing::run::<Passthrough>(
            &[("table", "raw_ticks"), ("include_metadata", "true")],
            batch(
                "tickers.stocks",
                2,
                [tick(9).with_timestamp_ms(1_700_000_000_123)],
            ),
        );
        let row = &out.written(0)[0];
        assert_eq!(row.table(), "raw_ticks");
        assert_eq!(
            row.columns(),
            [
                "symbol",
                "price",
                "volume",
                "kafka_topic",
                "kafka_partition",
                "kafka_offset",
                "kafka_timestamp"
            ]
        );
        assert_eq!(row.get("symbol"), Some(&Value::Text("AAPL".into())));
        assert_eq!(
            row.get("kafka_topic"),
            Some(&Value::Text("tickers.stocks".into()))
        );
        assert_eq!(row.get("kafka_partition"), Some(&Value::Int(2)));
        assert_eq!(row.get("kafka_offset"), Some(&Value::Int(9)));
        assert_eq!(
            row.get("kafka_timestamp"),
            Some(&Value::Timestamp(1_700_000_000_123_000))
        );
    }

    #[test]
    fn a_bad_config_is_refused_by_init() {
        let err = testing::run_batch::<Passthrough>(
            &[("include_metadata", "maybe")],
            batch("t", 0, [tick(1)]),
        )
        .unwrap_err();
        assert!(
            err.starts_with("invalid guest config: `include_metadata` = \"maybe\" does not parse"),
            "{err}"
        );
    }
}
