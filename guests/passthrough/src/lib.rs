//! `passthrough`: each message becomes one row of its fields.
//!
//! Config:
//! - `table`: the target table. Unset, it is derived from the topic: lower-cased, every
//!   character outside `[a-z0-9_]` replaced by `_` (`tickers.stocks` -> `tickers_stocks`).
//! - `include_metadata`: `true` adds the columns `kafka_topic`, `kafka_partition`,
//!   `kafka_offset` and `kafka_timestamp`. Default `false`.
#![cfg_attr(target_arch = "wasm32", no_std)]

use weir_guest::prelude::*;

/// Writes each message's fields as one row.
pub struct Passthrough {
    table: Option<String>,
    include_metadata: bool,
}

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

    fn process(&mut self, message: Message) -> Outcome {
        let table = match &self.table {
            Some(t) => t.clone(),
            None => table_for_topic(&message.topic),
        };
        let mut row = message.fields;
        if self.include_metadata {
            row.extend(
                Row::new()
                    .with("kafka_topic", message.topic)
                    .with("kafka_partition", message.partition)
                    .with("kafka_offset", message.offset)
                    .with(
                        "kafka_timestamp",
                        Value::Timestamp(message.timestamp_ms * 1000),
                    )
                    .fields,
            );
        }
        Outcome::insert(table, row)
    }
}

weir_guest::export!(Passthrough);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing;

    fn tick(offset: i64) -> Message {
        Message::new("tickers.stocks", 2, offset)
            .with("symbol", "AAPL")
            .with("price", 187.25)
            .with("volume", 1200i64)
    }

    #[test]
    fn table_derived_from_topic() {
        assert_eq!(table_for_topic("tickers.stocks"), "tickers_stocks");
        assert_eq!(table_for_topic("My-Topic.v2"), "my_topic_v2");
        let out = testing::run::<Passthrough>(&[], vec![tick(7)]);
        assert_eq!(out, vec![Outcome::insert("tickers_stocks", tick(7).fields)]);
    }

    #[test]
    fn configured_table_and_metadata() {
        let mut m = tick(9);
        m.timestamp_ms = 1_700_000_000_123;
        let out = testing::run::<Passthrough>(
            &[("table", "raw_ticks"), ("include_metadata", "true")],
            vec![m],
        );
        let Outcome::Actions(actions) = &out[0] else {
            panic!("expected actions, got {out:?}");
        };
        let Action::Insert(insert) = &actions[0] else {
            panic!("expected an insert, got {actions:?}");
        };
        assert_eq!(insert.table, "raw_ticks");
        let row = Row::from(insert.row.clone());
        assert_eq!(row.get("symbol"), Some(&Value::Text("AAPL".into())));
        assert_eq!(row.get("kafka_partition"), Some(&Value::Int(2)));
        assert_eq!(row.get("kafka_offset"), Some(&Value::Int(9)));
        assert_eq!(
            row.get("kafka_timestamp"),
            Some(&Value::Timestamp(1_700_000_000_123_000))
        );
    }

    #[test]
    #[should_panic(expected = "`include_metadata` = \"maybe\" does not parse")]
    fn bad_config_fails_the_batch() {
        testing::run::<Passthrough>(&[("include_metadata", "maybe")], vec![tick(1)]);
    }
}
