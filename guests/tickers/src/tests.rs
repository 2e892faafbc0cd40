//! Unit tests: each rule's dead letter, duplicates, candle combination against a
//! row-at-a-time reference merge, bucket flooring, config errors.

use core::cmp::Ordering;
use core::ops::Deref;

use weir_guest::prelude::*;
use weir_guest::testing::{self, TestMessage, batch};
use weir_guest::{Output, Written};

use crate::Tickers;
use crate::candles::bucket_start;
use crate::settings::intervals;
use weir_guest::time::{DAY, END_TIME, HOUR, MIN_TIME, MINUTE, SECOND};

/// 2024-05-01T14:30:00Z, in microseconds.
const T0: i64 = 1_714_573_800 * SECOND;

fn uuid(n: u64) -> String {
    format!("9f1c2a7e-0b1d-4a7e-8c55-{n:012x}")
}

/// A valid tick of `class` at `T0 + dt` µs, ingested at T0 + dt.
fn tick(class: &str, offset: i64, symbol: &str, price: f64, dt: i64) -> TestMessage {
    let mut m = TestMessage::new(offset)
        .with("id", symbol)
        .with("exchange", "NMS")
        .with("quote_type", "EQUITY")
        .with("market_hours", "REGULAR_MARKET")
        .with("currency", "USD")
        .with("price", price)
        .with("change", 1.5)
        .with("change_percent", 0.8)
        .with("day_volume", 51_234_567i64)
        .with("bid", price - 0.01)
        .with("ask", price + 0.01)
        .with("price_hint", 2i64)
        .with("event_time", Value::Timestamp(T0 + dt))
        .with("event_id", uuid(offset as u64))
        .with("ingestion_time", Value::Timestamp(T0 + dt))
        .with("source", "simulator")
        .with("last_size", 100.0);
    if class == "crypto" {
        m.set("circulating_supply", 19_000_000.0);
    }
    m
}

fn stock(offset: i64, symbol: &str, price: f64, dt: i64) -> TestMessage {
    tick("stocks", offset, symbol, price, dt)
}

/// A call's output, dereferencing to its outcomes.
#[derive(Debug)]
struct Ran(Output);

impl Deref for Ran {
    type Target = Vec<Outcome>;
    fn deref(&self) -> &Vec<Outcome> {
        &self.0.outcomes
    }
}

/// Runs the guest with this config over `messages`, a batch of partition 3 of the topic
/// `tickers.<asset_class>`.
fn run_with(config: &[(&str, &str)], messages: Vec<TestMessage>) -> Ran {
    let class = config
        .iter()
        .find(|(k, _)| *k == "asset_class")
        .map_or("none", |(_, v)| v);
    let topic = format!("tickers.{class}");
    Ran(testing::run::<Tickers>(config, batch(&topic, 3, messages)))
}

fn run_class(class: &str, messages: Vec<TestMessage>) -> Ran {
    run_with(&[("asset_class", class)], messages)
}

fn run(messages: Vec<TestMessage>) -> Ran {
    run_class("stocks", messages)
}

fn actions(outcome: &Outcome) -> &[Action] {
    match outcome {
        Outcome::Actions(a) => a,
        Outcome::DeadLetter(r) => panic!("expected actions, got a dead letter: {r}"),
    }
}

/// The inserted rows of outcome `i`, by name.
fn inserts(out: &Ran, i: usize) -> Vec<Row> {
    out.0
        .written(i)
        .iter()
        .filter(|w| !w.target.is_upsert())
        .map(Written::row)
        .collect()
}

/// The upserted rows of every outcome, in order.
fn upserts(out: &Ran) -> Vec<Written<'_>> {
    let mut all = out.0.all_written();
    all.retain(|w| w.target.is_upsert());
    all
}

/// The reason of the single message's dead letter.
fn reason_for(class: &str, message: TestMessage) -> String {
    let out = run_class(class, vec![message]);
    match &out[0] {
        Outcome::DeadLetter(r) => r.clone(),
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

fn rejects(message: TestMessage) -> String {
    reason_for("stocks", message)
}

// ---------------------------------------------------------------------------------------
// Rules: one test per rule.

#[test]
fn a_good_tick_becomes_a_row_and_three_candles() {
    let out = run(vec![stock(7, "AAPL", 187.25, 0)]);
    let acts = actions(&out[0]);
    assert_eq!(acts.len(), 4, "{acts:?}");
    let written = out.0.written(0);
    assert!(
        !written[0].target.is_upsert(),
        "first action is the tick row"
    );
    assert_eq!(written[0].table(), "ticks_stocks");
    let row = written[0].row();
    let names: Vec<&str> = row.names().iter().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "symbol",
            "event_id",
            "event_time",
            "ingestion_time",
            "price",
            "bid",
            "ask",
            "last_size",
            "day_volume",
            "change",
            "change_percent",
            "currency",
            "exchange",
            "quote_type",
            "market_hours",
            "source",
            "kafka_partition",
            "kafka_offset"
        ]
    );
    assert_eq!(row.get("symbol"), Some(&Value::Text("AAPL".into())));
    assert_eq!(row.get("event_id"), Some(&Value::Text(uuid(7))));
    assert_eq!(row.get("event_time"), Some(&Value::Timestamp(T0)));
    assert_eq!(row.get("price"), Some(&Value::Float(187.25)));
    assert_eq!(row.get("day_volume"), Some(&Value::Int(51_234_567)));
    assert_eq!(row.get("last_size"), Some(&Value::Float(100.0)));
    assert_eq!(row.get("kafka_partition"), Some(&Value::Int(3)));
    assert_eq!(row.get("kafka_offset"), Some(&Value::Int(7)));
    let labels: Vec<_> = upserts(&out)
        .iter()
        .map(|u| {
            assert_eq!(u.table(), "candles");
            assert_eq!(
                u.target.key_columns(),
                ["symbol", "interval", "bucket_start"]
            );
            u.get("interval").cloned()
        })
        .collect();
    // Two targets declared once for the call: ticks and candles.
    assert_eq!(out.0.tables.len(), 2);
    assert_eq!(
        labels,
        ["1m", "5m", "15m"].map(|l| Some(Value::Text(l.into())))
    );
}

#[test]
fn crypto_rows_carry_circulating_supply_and_normalise_types() {
    // Numbers as the replay's JSON may give them: a decimal price, a float day volume.
    let mut m = tick("crypto", 1, "BTC-USD", 64_012.55, 0);
    m.set("price", Decimal::from_i128(6_401_255, 2));
    m.set("day_volume", 28_123_456_789.0);
    m.take("last_size");
    let out = run_class("crypto", vec![m]);
    let row = &inserts(&out, 0)[0];
    assert_eq!(row.get("price"), Some(&Value::Float(64_012.55)));
    assert_eq!(row.get("day_volume"), Some(&Value::Int(28_123_456_789)));
    assert_eq!(row.get("circulating_supply"), Some(&Value::Float(19e6)));
    assert_eq!(row.get("last_size"), Some(&Value::Null));
    assert_eq!(out.0.written(0)[0].table(), "ticks_crypto");
    // No last_size: the tick still counts as a trade, with volume 0.
    for u in upserts(&out) {
        let r = u.row();
        assert_eq!(r.get("volume"), Some(&Value::Float(0.0)));
        assert_eq!(r.get("trades"), Some(&Value::Int(1)));
        assert_eq!(r.get("asset_class"), Some(&Value::Text("crypto".into())));
    }
}

#[test]
fn rule_required() {
    for field in ["id", "price", "event_time", "event_id", "ingestion_time"] {
        let mut m = stock(1, "AAPL", 10.0, 0);
        m.take(field);
        assert_eq!(
            rejects(m),
            format!("rule required: field {field} is missing")
        );
        let mut m = stock(1, "AAPL", 10.0, 0);
        m.set(field, Value::Null);
        assert_eq!(rejects(m), format!("rule required: field {field} is null"));
    }
    // Stocks may lack bid and ask; crypto and currency may not.
    let mut m = stock(1, "AAPL", 10.0, 0);
    m.set("bid", Value::Null);
    m.take("ask");
    assert!(matches!(run(vec![m])[..], [Outcome::Actions(_)]));
    for (class, symbol) in [("crypto", "BTC-USD"), ("currency", "EURUSD=X")] {
        for field in ["bid", "ask"] {
            let mut m = tick(class, 1, symbol, 10.0, 0);
            m.set(field, Value::Null);
            assert_eq!(
                reason_for(class, m),
                format!("rule required: field {field} is null"),
                "{class}"
            );
        }
    }
}

#[test]
fn rule_type() {
    let m = stock(1, "AAPL", 10.0, 0).with("price", "ten");
    assert_eq!(
        rejects(m),
        "rule type: field price is text, must be a number"
    );
    let m = stock(1, "AAPL", 10.0, 0).with("event_time", 1_714_573_800_000i64);
    assert_eq!(
        rejects(m),
        "rule type: field event_time is int, must be a timestamp"
    );
    let m = stock(1, "AAPL", 10.0, 0).with("day_volume", 1.5);
    assert_eq!(
        rejects(m),
        "rule type: field day_volume is 1.5, must be a whole number"
    );
    let m = stock(1, "AAPL", 10.0, 0).with("currency", 840i64);
    assert_eq!(rejects(m), "rule type: field currency is int, must be text");
}

#[test]
fn rule_text_valid() {
    let m = stock(1, "AAPL", 10.0, 0).with("exchange", "NM\0S");
    assert_eq!(
        rejects(m),
        "rule text_valid: field exchange holds a NUL character, which Postgres text cannot store"
    );
}

#[test]
fn rule_symbol_format() {
    assert_eq!(
        rejects(stock(1, "aapl", 10.0, 0)),
        "rule symbol_format: field id is \"aapl\", must be a stock symbol like AAPL, BRK.B or \
         ^GSPC (^?[A-Z][A-Z0-9.-]{0,9})"
    );
    for ok in ["BRK.B", "^GSPC"] {
        assert!(matches!(
            run(vec![stock(1, ok, 10.0, 0)])[..],
            [Outcome::Actions(_)]
        ));
    }
    let r = reason_for("crypto", tick("crypto", 1, "BTCUSD", 10.0, 0));
    assert!(
        r.starts_with("rule symbol_format: field id is \"BTCUSD\""),
        "{r}"
    );
    let r = reason_for("currency", tick("currency", 1, "EURUSD", 1.07, 0));
    assert!(
        r.starts_with("rule symbol_format: field id is \"EURUSD\""),
        "{r}"
    );
    // A long value is cut in the reason (the raw message is kept beside it).
    let r = rejects(stock(1, &"X".repeat(1000), 10.0, 0));
    assert!(
        r.starts_with(&format!(
            "rule symbol_format: field id is \"{}…\"",
            "X".repeat(64)
        )),
        "{r}"
    );
    // A symbol of another class is not one of this class.
    let r = reason_for("currency", tick("currency", 1, "BTC-USD", 1.07, 0));
    assert!(r.starts_with("rule symbol_format:"), "{r}");
}

#[test]
fn rule_event_id_uuid() {
    let m = stock(1, "AAPL", 10.0, 0).with("event_id", "not-a-uuid");
    assert!(
        rejects(m)
            .starts_with("rule event_id_uuid: field event_id is \"not-a-uuid\", must be a UUID")
    );
}

#[test]
fn rule_price_positive() {
    assert_eq!(
        rejects(stock(1, "AAPL", -3.2, 0)),
        "rule price_positive: field price is -3.2, must be > 0"
    );
    assert_eq!(
        rejects(stock(1, "AAPL", 0.0, 0)),
        "rule price_positive: field price is 0, must be > 0"
    );
    assert_eq!(
        rejects(stock(1, "AAPL", f64::NAN, 0)),
        "rule price_positive: field price is NaN, must be > 0"
    );
    assert_eq!(
        rejects(stock(1, "AAPL", f64::INFINITY, 0)),
        "rule price_positive: field price is inf, must be finite"
    );
}

#[test]
fn rule_bid_and_ask_positive() {
    let m = stock(1, "AAPL", 10.0, 0).with("bid", -1.0);
    assert_eq!(
        rejects(m),
        "rule bid_positive: field bid is -1, must be > 0"
    );
    let m = stock(1, "AAPL", 10.0, 0).with("ask", 0.0);
    assert_eq!(rejects(m), "rule ask_positive: field ask is 0, must be > 0");
    let m = stock(1, "AAPL", 10.0, 0).with("ask", f64::INFINITY);
    assert_eq!(
        rejects(m),
        "rule ask_positive: field ask is inf, must be finite"
    );
}

#[test]
fn rule_bid_le_ask() {
    let m = stock(1, "AAPL", 10.0, 0)
        .with("bid", 10.5)
        .with("ask", 10.2);
    assert_eq!(
        rejects(m),
        "rule bid_le_ask: field bid is 10.5, must be <= ask (10.2)"
    );
    // A locked market (bid = ask) is fine, and so is a one-sided quote.
    let m = stock(1, "AAPL", 10.0, 0)
        .with("bid", 10.0)
        .with("ask", 10.0);
    assert!(matches!(run(vec![m])[..], [Outcome::Actions(_)]));
    let m = stock(1, "AAPL", 10.0, 0)
        .with("bid", 11.0)
        .with("ask", Value::Null);
    assert!(matches!(run(vec![m])[..], [Outcome::Actions(_)]));
}

#[test]
fn rule_last_size_non_negative() {
    let m = stock(1, "AAPL", 10.0, 0).with("last_size", -5.0);
    assert_eq!(
        rejects(m),
        "rule last_size_non_negative: field last_size is -5, must be >= 0"
    );
    let m = stock(1, "AAPL", 10.0, 0).with("last_size", f64::INFINITY);
    assert_eq!(
        rejects(m),
        "rule last_size_non_negative: field last_size is inf, must be finite"
    );
    // Null or missing is no volume, not an error.
    let m = stock(1, "AAPL", 10.0, 0).with("last_size", Value::Null);
    assert!(matches!(run(vec![m])[..], [Outcome::Actions(_)]));
}

#[test]
fn rule_time_range() {
    let m = stock(1, "AAPL", 10.0, 0)
        .with("event_time", Value::Timestamp(END_TIME))
        .with("ingestion_time", Value::Timestamp(END_TIME));
    assert_eq!(
        rejects(m),
        format!(
            "rule time_range: field event_time is {END_TIME} µs since 1970-01-01, must be \
             within the years 0001 to 9999"
        )
    );
    let m = stock(1, "AAPL", 10.0, 0).with("ingestion_time", Value::Timestamp(i64::MIN));
    assert!(rejects(m).starts_with("rule time_range: field ingestion_time is"));
    // The first instant of year 1 and the last of 9999 are fine.
    for t in [MIN_TIME, END_TIME - 1] {
        let m = stock(1, "AAPL", 10.0, 0)
            .with("event_time", Value::Timestamp(t))
            .with("ingestion_time", Value::Timestamp(t));
        assert!(matches!(run(vec![m])[..], [Outcome::Actions(_)]));
    }
}

#[test]
fn rule_max_future_skew() {
    let m = stock(1, "AAPL", 10.0, 0).with("event_time", Value::Timestamp(T0 + 7_500_000));
    assert_eq!(
        rejects(m),
        "rule max_future_skew: field event_time is 2024-05-01T14:30:07.500Z, 7500ms after \
         ingestion_time 2024-05-01T14:30:00Z; max_future_skew is 5s"
    );
    // At the limit is fine; the limit is configurable.
    let m = stock(1, "AAPL", 10.0, 0).with("event_time", Value::Timestamp(T0 + 5 * SECOND));
    assert!(matches!(run(vec![m])[..], [Outcome::Actions(_)]));
    let m = stock(1, "AAPL", 10.0, 0).with("event_time", Value::Timestamp(T0 + 7_500_000));
    let out = run_with(
        &[("asset_class", "stocks"), ("max_future_skew", "10s")],
        vec![m],
    );
    assert!(matches!(out[..], [Outcome::Actions(_)]));
}

#[test]
fn rule_max_lateness() {
    // Minutes late is normal and accepted by default.
    let m = stock(1, "AAPL", 10.0, 0).with("event_time", Value::Timestamp(T0 - 20 * MINUTE));
    assert!(matches!(run(vec![m])[..], [Outcome::Actions(_)]));
    let m = stock(1, "AAPL", 10.0, 0).with("event_time", Value::Timestamp(T0 - 2 * HOUR));
    assert_eq!(
        rejects(m),
        "rule max_lateness: field event_time is 2024-05-01T12:30:00Z, 2h before \
         ingestion_time 2024-05-01T14:30:00Z; max_lateness is 1h"
    );
    let m = stock(1, "AAPL", 10.0, 0).with("event_time", Value::Timestamp(T0 - 2 * MINUTE));
    let out = run_with(
        &[("asset_class", "stocks"), ("max_lateness", "90s")],
        vec![m],
    );
    assert!(
        out[0]
            .dead_letter_reason()
            .is_some_and(|r| r.starts_with("rule max_lateness:")),
        "{out:?}"
    );
    // Simulated history (`--start-time` two years back) needs the limits off.
    let two_years_back = stock(1, "AAPL", 10.0, 0)
        .with("event_time", Value::Timestamp(T0 - 730 * DAY))
        .with("ingestion_time", Value::Timestamp(T0));
    let out = run_with(
        &[("asset_class", "stocks"), ("max_lateness", "off")],
        vec![two_years_back.clone()],
    );
    assert!(matches!(out[..], [Outcome::Actions(_)]), "{out:?}");
    let back_to_the_future = two_years_back
        .with("event_time", Value::Timestamp(T0))
        .with("ingestion_time", Value::Timestamp(T0 - 730 * DAY));
    let out = run_with(
        &[("asset_class", "stocks"), ("max_future_skew", " off ")],
        vec![back_to_the_future],
    );
    assert!(matches!(out[..], [Outcome::Actions(_)]), "{out:?}");
}

#[test]
fn rejected_messages_are_counted_by_rule() {
    let before = (
        testing::counter("ticks_rejected"),
        testing::counter("ticks_accepted"),
        testing::counter("candle_upserts"),
    );
    let out = run(vec![
        stock(1, "AAPL", -1.0, 0),
        stock(2, "AAPL", 10.0, 0),
        stock(3, "aapl", 10.0, 0),
    ]);
    assert_eq!(out.len(), 3);
    assert_eq!(testing::counter("ticks_rejected") - before.0, 2);
    assert_eq!(testing::counter("ticks_accepted") - before.1, 1);
    assert_eq!(testing::counter("candle_upserts") - before.2, 3);
}

// ---------------------------------------------------------------------------------------
// Duplicates.

#[test]
fn a_duplicate_within_the_batch_is_skipped() {
    let before = testing::counter("ticks_duplicate");
    let first = stock(1, "AAPL", 10.0, 0);
    // A redelivery: same event_id (in another spelling), another offset.
    let mut again = stock(2, "AAPL", 10.0, 0);
    again.set("event_id", uuid(1).to_uppercase().replace('-', ""));
    let out = run(vec![first, again, stock(3, "AAPL", 11.0, SECOND)]);
    assert_eq!(out[1], Outcome::skip());
    assert_eq!(testing::counter("ticks_duplicate") - before, 1);
    // The candles count the tick once.
    for u in upserts(&out) {
        assert_eq!(u.get("trades"), Some(&Value::Int(2)));
    }
}

#[test]
fn a_repeat_of_a_rejected_message_is_judged_on_its_own() {
    let out = run(vec![stock(1, "AAPL", -1.0, 0), {
        let mut m = stock(2, "AAPL", 10.0, 0);
        m.set("event_id", uuid(1));
        m
    }]);
    assert!(out[0].dead_letter_reason().is_some());
    assert_eq!(inserts(&out, 1).len(), 1);
}

// ---------------------------------------------------------------------------------------
// Candles.

#[test]
fn buckets_floor_to_the_epoch_also_before_it() {
    let m = MINUTE;
    assert_eq!(bucket_start(0, m), 0);
    assert_eq!(bucket_start(1, m), 0);
    assert_eq!(bucket_start(m - 1, m), 0);
    assert_eq!(bucket_start(m, m), m);
    assert_eq!(bucket_start(-1, m), -m);
    assert_eq!(bucket_start(-m, m), -m);
    assert_eq!(bucket_start(-m - 1, m), -2 * m);
    // 2024-05-01T14:37:59.999999Z -> 14:37, 14:35, 14:30.
    let t = T0 + 8 * m - 1;
    assert_eq!(bucket_start(t, m), T0 + 7 * m);
    assert_eq!(bucket_start(t, 5 * m), T0 + 5 * m);
    assert_eq!(bucket_start(t, 15 * m), T0);
    // The edges of the accepted times: year 1 starts on a day boundary; the last instant
    // of 9999 is in the bucket that starts 15 minutes before 10000.
    assert_eq!(bucket_start(MIN_TIME, 15 * m), MIN_TIME);
    assert_eq!(bucket_start(MIN_TIME + 1, 15 * m), MIN_TIME);
    assert_eq!(bucket_start(END_TIME - 1, 15 * m), END_TIME - 15 * m);
    assert_eq!(bucket_start(i64::MAX, DAY), i64::MAX - i64::MAX % DAY);
    assert_eq!(bucket_start(i64::MIN + DAY, DAY) % DAY, 0);
}

#[test]
fn candles_of_a_tick_before_1970() {
    // 1969-12-31T23:59:30Z: its 1m bucket starts at 23:59, not at 00:00.
    let t = -30 * SECOND;
    let m = stock(1, "AAPL", 10.0, 0)
        .with("event_time", Value::Timestamp(t))
        .with("ingestion_time", Value::Timestamp(t));
    let out = run(vec![m]);
    let starts: Vec<_> = upserts(&out)
        .into_iter()
        .map(|u| u.get("bucket_start").cloned())
        .collect();
    assert_eq!(
        starts,
        [-MINUTE, -5 * MINUTE, -15 * MINUTE].map(|s| Some(Value::Timestamp(s)))
    );
}

#[test]
fn candle_policies() {
    let out = run(vec![stock(1, "AAPL", 10.0, 0)]);
    let u = &upserts(&out)[0];
    assert_eq!(
        u.target.merge_policies(),
        [
            ("asset_class", Merge::Replace),
            ("open", Merge::FirstByTime("first_event_at")),
            ("high", Merge::Max),
            ("low", Merge::Min),
            ("close", Merge::LastByTime("last_event_at")),
            ("volume", Merge::Sum),
            ("trades", Merge::Sum),
            ("first_event_at", Merge::Min),
            ("last_event_at", Merge::Max),
        ]
    );
    // By position on the boundary: open by the time at column 10, close by column 11.
    let weir_guest::TargetWrite::Upsert(up) = &u.target.write else {
        panic!("{:?}", u.target)
    };
    assert_eq!(up.key, [0, 2, 3]);
    assert_eq!(
        up.policies[1].policy,
        weir_guest::MergePolicy::FirstByTime(10)
    );
    assert_eq!(
        up.policies[4].policy,
        weir_guest::MergePolicy::LastByTime(11)
    );
}

/// A stored candle table: key -> columns.
type Store = BTreeMap<Vec<String>, BTreeMap<String, Value>>;

fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.partial_cmp(y).expect("no NaN in candles"),
        (Value::Int(x), Value::Int(y)) | (Value::Timestamp(x), Value::Timestamp(y)) => x.cmp(y),
        (Value::Text(x), Value::Text(y)) => x.cmp(y),
        _ => panic!("cannot compare {a:?} and {b:?}"),
    }
}

fn add(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => Value::Float(x + y),
        (Value::Int(x), Value::Int(y)) => Value::Int(x + y),
        _ => panic!("cannot add {a:?} and {b:?}"),
    }
}

/// The reference: `INSERT … ON CONFLICT (key) DO UPDATE` of one row, each column by its
/// policy as the host's SQL writes it, every expression reading the stored row as it was.
fn apply(store: &mut Store, u: &Written<'_>) {
    let row: BTreeMap<String, Value> = u
        .row()
        .iter()
        .map(|(n, v)| (n.to_owned(), v.clone()))
        .collect();
    let keys = u.target.key_columns();
    let key: Vec<String> = keys.iter().map(|k| format!("{:?}", row[*k])).collect();
    let Some(stored) = store.get(&key) else {
        store.insert(key, row);
        return;
    };
    let mut merged = stored.clone();
    for (column, incoming) in &row {
        if keys.contains(&column.as_str()) {
            continue;
        }
        let old = &stored[column];
        let policy = u.target.merge_of(column).expect("a non-key column");
        let new = match policy {
            Merge::Replace => incoming.clone(),
            Merge::Min => core::cmp::min_by(old, incoming, |a, b| compare(a, b)).clone(),
            Merge::Max => {
                // GREATEST: on a tie either; they are equal.
                if compare(incoming, old) == Ordering::Greater {
                    incoming.clone()
                } else {
                    old.clone()
                }
            }
            Merge::Sum => add(old, incoming),
            // The incoming value only when its time is strictly earlier.
            Merge::FirstByTime(t) => {
                if compare(&row[t], &stored[t]) == Ordering::Less {
                    incoming.clone()
                } else {
                    old.clone()
                }
            }
            // The incoming value when its time is equal or later.
            Merge::LastByTime(t) => {
                if compare(&row[t], &stored[t]) != Ordering::Less {
                    incoming.clone()
                } else {
                    old.clone()
                }
            }
        };
        merged.insert(column.clone(), new);
    }
    store.insert(key, merged);
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// Ticks over a few symbols and half an hour, many at the very same instant (so ties
/// decide open and close), in shuffled order, with offsets in message order.
fn market(seed: u64, n: usize) -> Vec<TestMessage> {
    let mut rng = Rng(seed);
    let mut ticks: Vec<TestMessage> = (0..n)
        .map(|i| {
            let symbol = ["AAPL", "MSFT", "^GSPC"][rng.below(3) as usize];
            // Few distinct times: seconds 0..1800 step 45, some sub-second.
            let dt = (rng.below(40) as i64) * 45 * SECOND + (rng.below(2) as i64) * 500 * 1000;
            let price = 100.0 + rng.below(1000) as f64 / 100.0;
            let mut m = stock(0, symbol, price, dt);
            m.set("event_id", uuid(i as u64 + 1));
            // Ingested up to 20 minutes after the event.
            m.set(
                "ingestion_time",
                Value::Timestamp(T0 + dt + rng.below(20) as i64 * MINUTE),
            );
            // Sizes in quarter units (exact in binary, so sums do not depend on order);
            // some ticks have none.
            match rng.below(4) {
                0 => {
                    m.take("last_size");
                }
                1 => m.set("last_size", Value::Null),
                _ => m.set("last_size", rng.below(4000) as f64 / 4.0),
            }
            m
        })
        .collect();
    rng.shuffle(&mut ticks);
    for (offset, m) in ticks.iter_mut().enumerate() {
        m.offset = offset as i64;
    }
    ticks
}

/// The candle rows one tick at a time, in message order: what Postgres would hold had
/// every tick been its own upsert. Ticks whose event_id was seen are skipped.
fn row_at_a_time(messages: &[TestMessage]) -> Store {
    let mut store = Store::new();
    let mut seen = BTreeSet::new();
    for m in messages {
        let id = m.text("event_id").unwrap().to_lowercase().replace('-', "");
        if !seen.insert(id) {
            continue;
        }
        let t = m.timestamp("event_time").unwrap();
        let price = m.f64("price").unwrap();
        let size = m.f64("last_size").unwrap_or(0.0);
        for (label, len) in [("1m", MINUTE), ("5m", 5 * MINUTE), ("15m", 15 * MINUTE)] {
            let row = Row::new()
                .with("symbol", m.text("id").unwrap())
                .with("asset_class", "stocks")
                .with("interval", label)
                .with("bucket_start", Value::Timestamp(t - t.rem_euclid(len)))
                .with("open", price)
                .with("high", price)
                .with("low", price)
                .with("close", price)
                .with("volume", size)
                .with("trades", 1i64)
                .with("first_event_at", Value::Timestamp(t))
                .with("last_event_at", Value::Timestamp(t));
            // Each row its own call's upsert, declared by name.
            let mut out = Out::new();
            let action = out.write_upsert(
                "candles",
                row,
                &["symbol", "interval", "bucket_start"],
                &crate::candles::POLICIES,
            );
            let output = out.finish(vec![Outcome::one(action)]);
            apply(&mut store, &output.written(0)[0]);
        }
    }
    store
}

/// The guest's upserts, applied in outcome order, over a batch cut into these pieces
/// (each piece its own guest call, as when the host splits a batch).
fn combined(messages: &[TestMessage], cuts: &[usize]) -> (Store, usize) {
    let mut store = Store::new();
    let mut count = 0;
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(messages.len());
    for piece in bounds.windows(2) {
        let out = run(messages[piece[0]..piece[1]].to_vec());
        assert_eq!(out.len(), piece[1] - piece[0]);
        for u in upserts(&out) {
            apply(&mut store, &u);
            count += 1;
        }
    }
    (store, count)
}

#[test]
fn combined_candles_equal_row_at_a_time_on_shuffled_input() {
    for seed in 1..=20u64 {
        let messages = market(seed * 7919, 400);
        let expected = row_at_a_time(&messages);
        let (got, upserts) = combined(&messages, &[]);
        assert_eq!(got, expected, "seed {seed}");
        // One upsert per (symbol, interval, bucket) of the batch.
        assert_eq!(upserts, expected.len(), "seed {seed}");
    }
}

#[test]
fn combined_candles_hold_for_any_split_of_the_batch() {
    let mut rng = Rng(42);
    for seed in 1..=20u64 {
        let messages = market(seed * 104_729, 300);
        let expected = row_at_a_time(&messages);
        let mut cuts: Vec<usize> = (0..1 + rng.below(6))
            .map(|_| rng.below(messages.len() as u64) as usize)
            .collect();
        cuts.sort();
        let (got, _) = combined(&messages, &cuts);
        assert_eq!(got, expected, "seed {seed}, cuts {cuts:?}");
        // The host's own bisection: halves, then halves of halves.
        let n = messages.len();
        let (got, _) = combined(&messages, &[n / 4, n / 2, n / 2 + n / 4]);
        assert_eq!(got, expected, "seed {seed}, quarters");
    }
}

#[test]
fn ties_open_with_the_earlier_message_and_close_with_the_later() {
    // Three ticks at one instant, then one earlier tick in a later message.
    let out = run(vec![
        stock(1, "AAPL", 10.0, SECOND),
        stock(2, "AAPL", 11.0, SECOND),
        stock(3, "AAPL", 12.0, SECOND),
        stock(4, "AAPL", 9.0, 0),
    ]);
    let ups = upserts(&out);
    assert_eq!(ups.len(), 3);
    let row = ups[0].row();
    assert_eq!(row.get("open"), Some(&Value::Float(9.0)));
    assert_eq!(row.get("close"), Some(&Value::Float(12.0)));
    assert_eq!(row.get("high"), Some(&Value::Float(12.0)));
    assert_eq!(row.get("low"), Some(&Value::Float(9.0)));
    assert_eq!(row.get("volume"), Some(&Value::Float(400.0)));
    assert_eq!(row.get("trades"), Some(&Value::Int(4)));
    assert_eq!(row.get("first_event_at"), Some(&Value::Timestamp(T0)));
    assert_eq!(
        row.get("last_event_at"),
        Some(&Value::Timestamp(T0 + SECOND))
    );
    // All three candles ride on the last message that contributed: the fourth.
    assert_eq!(actions(&out[3]).len(), 4);
    for o in &out[..3] {
        assert_eq!(actions(o).len(), 1);
    }

    let out = run(vec![
        stock(1, "AAPL", 10.0, SECOND),
        stock(2, "AAPL", 11.0, SECOND),
    ]);
    let row = upserts(&out)[0].row();
    assert_eq!(row.get("open"), Some(&Value::Float(10.0)));
    assert_eq!(row.get("close"), Some(&Value::Float(11.0)));
}

#[test]
fn candles_ride_on_their_last_contributor_even_when_later_messages_are_rejected() {
    let out = run(vec![
        stock(1, "AAPL", 10.0, 0),
        stock(2, "MSFT", 20.0, 0),
        stock(3, "AAPL", -1.0, 0),
        stock(4, "AAPL", 10.0, 0).with("event_id", uuid(1)),
    ]);
    assert_eq!(actions(&out[0]).len(), 4);
    assert_eq!(actions(&out[1]).len(), 4);
    assert!(out[2].dead_letter_reason().is_some());
    assert_eq!(out[3], Outcome::skip());
}

#[test]
fn configured_tables_and_intervals() {
    let out = run_with(
        &[
            ("asset_class", "currency"),
            ("table", "fx.ticks"),
            ("candles_table", "fx.candles"),
            ("intervals", " 60s , 1h"),
        ],
        vec![tick("currency", 1, "EURUSD=X", 1.0712, 0)],
    );
    assert_eq!(actions(&out[0]).len(), 3);
    let tick_row = &out.0.written(0)[0];
    assert_eq!(tick_row.table(), "fx.ticks");
    assert!(tick_row.get("circulating_supply").is_none());
    let ups = upserts(&out);
    assert_eq!(ups.len(), 2);
    let labels: Vec<_> = ups
        .iter()
        .map(|u| {
            assert_eq!(u.table(), "fx.candles");
            u.get("interval").cloned()
        })
        .collect();
    assert_eq!(labels, ["1m", "1h"].map(|l| Some(Value::Text(l.into()))));
}

// ---------------------------------------------------------------------------------------
// Config.

fn config_error(pairs: &[(&str, &str)]) -> String {
    match Tickers::new(&Config::from_pairs(pairs.iter().copied())) {
        Ok(_) => panic!("{pairs:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_errors_name_the_key() {
    assert_eq!(
        config_error(&[]),
        "invalid guest config: `asset_class` is required: stocks, crypto or currency"
    );
    assert_eq!(
        config_error(&[("asset_class", "bonds")]),
        "invalid guest config: `asset_class` = \"bonds\" is not an asset class: use stocks, \
         crypto or currency"
    );
    let e = config_error(&[("asset_class", "stocks"), ("max_future_skew", "5 parsecs")]);
    assert!(
        e.starts_with("invalid guest config: `max_future_skew` = \"5 parsecs\" is not a duration"),
        "{e}"
    );
    let e = config_error(&[("asset_class", "stocks"), ("max_lateness", "1")]);
    assert!(
        e.starts_with("invalid guest config: `max_lateness` = \"1\" is not a duration"),
        "{e}"
    );
    for (raw, why) in [
        ("1m,,5m", "has an empty entry"),
        ("1m,5x", "\"5x\" is not a duration"),
        ("0s", "must be longer than 0"),
        ("2d", "at most 1d"),
        ("1m,60s", "\"60s\" is the same interval as \"1m\""),
    ] {
        let e = config_error(&[("asset_class", "stocks"), ("intervals", raw)]);
        assert!(e.starts_with("invalid guest config: `intervals`: "), "{e}");
        assert!(e.contains(why), "{raw}: {e}");
    }
    let e = config_error(&[("asset_class", "stocks"), ("table", " ")]);
    assert_eq!(e, "invalid guest config: `table` is empty: name a table");
}

#[test]
fn a_bad_config_is_refused_by_init() {
    let refused = testing::Harness::new()
        .try_run::<Tickers>(
            &[("asset_class", "bonds")],
            batch("tickers.bonds", 0, [stock(1, "AAPL", 1.0, 0)]),
        )
        .unwrap_err();
    assert_eq!(
        refused,
        testing::RunError::Refused(
            "invalid guest config: `asset_class` = \"bonds\" is not an asset class: use \
             stocks, crypto or currency"
                .into()
        )
    );
}

/// Durations themselves are `weir_guest::time`'s (tested there).
#[test]
fn interval_lists() {
    let parsed = intervals("1m,5m,15m").unwrap();
    assert_eq!(
        parsed.iter().map(|i| i.micros).collect::<Vec<_>>(),
        [MINUTE, 5 * MINUTE, 15 * MINUTE]
    );
}

#[test]
fn with_a_clean_topic_each_accepted_tick_is_also_emitted_with_its_row_values() {
    let out = run_with(
        &[
            ("asset_class", "stocks"),
            ("clean_topic", "tickers.stocks.clean"),
        ],
        vec![stock(1, "AAPL", 187.25, 0), stock(2, "AAPL", -1.0, 0)],
    );
    let emitted = out.0.emitted(0);
    assert_eq!(emitted.len(), 1);
    assert_eq!(emitted[0].topic, "tickers.stocks.clean");
    assert_eq!(emitted[0].key.as_deref(), Some(&b"AAPL"[..]));
    let weir_guest::EmitValue::Fields(fields) = &emitted[0].value else {
        panic!("{:?}", emitted[0].value)
    };
    let names = &out.0.layouts[fields.layout as usize];
    assert_eq!(names[0], "symbol");
    assert_eq!(fields.values, inserts(&out, 0)[0].values());
    // A rejected tick is emitted nowhere.
    assert!(out.0.emitted(1).is_empty());
    // Without the key, nothing is emitted.
    assert!(
        run(vec![stock(1, "AAPL", 187.25, 0)])
            .0
            .emitted(0)
            .is_empty()
    );
    let refused = Tickers::new(&Config::from_pairs([
        ("asset_class", "stocks"),
        ("clean_topic", " "),
    ]));
    assert!(refused.is_err());
}
