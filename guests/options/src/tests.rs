//! Unit tests: pairing with the latest tick at or before the trade (by lookups emulating
//! the pipeline's SQL), each rule's dead letter, implied volatility and delta, duplicates,
//! operational errors and config refusals.

use weir_guest::Output;
use weir_guest::lookup::Rows;
use weir_guest::prelude::*;
use weir_guest::testing::{Harness, TestMessage, batch};

use crate::model::{self, Right};
use crate::rules::{EXPIRY_CLOSE_UTC_HOUR, YEAR, parse_occ};
use crate::{COLUMNS, Options};
use weir_guest::time::{HOUR, MINUTE, SECOND, days_from_civil};

/// 2024-05-01T14:30:00Z, in microseconds.
const T0: i64 = 1_714_573_800 * SECOND;

fn uuid(n: u64) -> String {
    format!("9f1c2a7e-0b1d-4a7e-8c55-{n:012x}")
}

/// 2024-06-21, days since the epoch.
fn june21() -> i64 {
    days_from_civil(2024, 6, 21)
}

/// A committed tick of `ticks_stocks`: symbol, event id, event time (µs), price, offset.
#[derive(Clone)]
struct Tick(&'static str, String, i64, f64, i64);

/// A harness whose lookups answer as the pipeline's SQL would over `ticks` and a rate of
/// 4.5 % from 1970 on.
fn harness(ticks: Vec<Tick>) -> Harness {
    let mut h = Harness::new();
    h.add_lookup("underlying", move |params| {
        let [Value::Text(symbol), Value::Timestamp(at)] = params else {
            return Err(format!("parameters {params:?} do not fit"));
        };
        // WHERE symbol = $1 AND event_time <= $2 ORDER BY event_time DESC,
        // kafka_offset DESC LIMIT 1
        let best = ticks
            .iter()
            .filter(|t| t.0 == symbol && t.2 <= *at)
            .max_by_key(|t| (t.2, t.4));
        Ok(Rows::new(
            &["event_id", "event_time", "price"],
            best.map(|t| vec![t.1.clone().into(), Value::Timestamp(t.2), Value::Float(t.3)])
                .into_iter()
                .collect(),
        ))
    });
    h.add_lookup("rate", |params| {
        let [Value::Int(day)] = params else {
            return Err(format!("parameters {params:?} do not fit"));
        };
        let rows = if *day >= 0 {
            vec![vec![Value::Float(0.045)]]
        } else {
            vec![]
        };
        Ok(Rows::new(&["rate"], rows))
    });
    h
}

/// AAPL ticks around T0: 190 at T0 - 10 s (offset 5), 191 at T0 - 2 s (offset 9), 192.5
/// at T0 - 2 s too but a later offset (11), 199 at T0 + 1 s (after the trade).
fn aapl() -> Vec<Tick> {
    vec![
        Tick("AAPL", uuid(1001), T0 - 10 * SECOND, 190.0, 5),
        Tick("AAPL", uuid(1003), T0 - 2 * SECOND, 192.5, 11),
        Tick("AAPL", uuid(1002), T0 - 2 * SECOND, 191.0, 9),
        Tick("AAPL", uuid(1004), T0 + SECOND, 199.0, 12),
        Tick("MSFT", uuid(2001), T0, 410.0, 3),
    ]
}

/// A valid AAPL June 21 2024 call at strike 190, traded at T0 for `price`, without the
/// feed's implied volatility.
fn trade(offset: i64, price: f64) -> TestMessage {
    TestMessage::new(offset)
        .with("id", "AAPL240621C00190000")
        .with("underlying", "AAPL")
        .with("expiry", june21())
        .with("strike", 190.0)
        .with("option_type", "CALL")
        .with("style", "AMERICAN")
        .with("exchange", "OPRA")
        .with("currency", "USD")
        .with("price", price)
        .with("bid", price - 0.05)
        .with("ask", price + 0.05)
        .with("last_size", 3.0)
        .with("volume", 1200i64)
        .with("open_interest", 45_000i64)
        .with("implied_volatility", Value::Null)
        .with("event_time", Value::Timestamp(T0))
        .with("event_id", uuid(offset as u64))
        .with("ingestion_time", Value::Timestamp(T0 + 5 * 1000))
        .with("source", "test")
}

fn run_with(h: &mut Harness, config: &[(&str, &str)], messages: Vec<TestMessage>) -> Output {
    h.run::<Options>(config, batch("tickers.options", 2, messages))
        .unwrap()
}

fn run(messages: Vec<TestMessage>) -> Output {
    run_with(&mut harness(aapl()), &[], messages)
}

fn row(out: &Output, i: usize) -> Row {
    let w = out.written(i);
    assert_eq!(w.len(), 1, "outcome {i}: {:?}", out.outcomes[i]);
    assert_eq!(w[0].table(), "option_trades");
    w[0].row()
}

fn f(row: &Row, column: &str) -> f64 {
    row.get(column)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{column} is {:?}", row.get(column)))
}

fn reason(message: TestMessage) -> String {
    reason_with(&[], message)
}

fn reason_with(config: &[(&str, &str)], message: TestMessage) -> String {
    let out = run_with(&mut harness(aapl()), config, vec![message]);
    match out.dead_letter(0) {
        Some(r) => r.to_string(),
        None => panic!("expected a dead letter, got {:?}", out.outcomes[0]),
    }
}

fn with(edit: impl FnOnce(&mut TestMessage)) -> TestMessage {
    let mut m = trade(1, 6.5);
    edit(&mut m);
    m
}

fn assert_rule(reason: &str, rule: &str, field: &str) {
    assert!(
        reason.starts_with(&format!("rule {rule}: field {field} ")),
        "expected rule {rule} on {field}: {reason}"
    );
}

// ---------------------------------------------------------------------------------------
// Pairing.

#[test]
fn a_trade_pairs_with_the_latest_tick_at_or_before_it() {
    let out = run(vec![trade(7, 6.5)]);
    let r = row(&out, 0);
    let names: Vec<&str> = r.names().iter().map(String::as_str).collect();
    assert_eq!(names, COLUMNS);
    // Of the two ticks at T0 - 2 s the later offset wins; the one after the trade is not
    // seen.
    assert_eq!(r.get("underlying_event_id"), Some(&Value::Text(uuid(1003))));
    assert_eq!(r.get("underlying_price"), Some(&Value::Float(192.5)));
    assert_eq!(
        r.get("underlying_event_time"),
        Some(&Value::Timestamp(T0 - 2 * SECOND))
    );
    assert_eq!(r.get("underlying_age_ms"), Some(&Value::Int(2_000)));
    assert_eq!(r.get("rate"), Some(&Value::Float(0.045)));
    assert!((f(&r, "moneyness") - 192.5 / 190.0).abs() < 1e-12);
    assert_eq!(r.get("expiry"), Some(&Value::Int(june21())));
    assert_eq!(r.get("event_id"), Some(&Value::Text(uuid(7))));
    assert_eq!(
        r.get("contract"),
        Some(&Value::Text("AAPL240621C00190000".into()))
    );
    assert_eq!(r.get("option_type"), Some(&Value::Text("CALL".into())));
    assert_eq!(r.get("kafka_partition"), Some(&Value::Int(2)));
    assert_eq!(r.get("kafka_offset"), Some(&Value::Int(7)));
    assert_eq!(r.get("volume"), Some(&Value::Int(1200)));
    // Time to expiry: to 2024-06-21T20:00:00Z, in years of 365.25 days.
    let close = june21() * 24 * HOUR + EXPIRY_CLOSE_UTC_HOUR * HOUR;
    assert!((f(&r, "time_to_expiry") - (close - T0) as f64 / YEAR).abs() < 1e-12);
    assert_eq!(out.tables.len(), 1, "one target per call");
}

#[test]
fn a_tick_at_the_trades_own_time_pairs() {
    let mut m = trade(1, 6.5);
    m.set("underlying", "MSFT");
    m.set("id", "MSFT240621P00400000");
    m.set("option_type", "PUT");
    m.set("strike", 400.0);
    let r = row(&run(vec![m]), 0);
    assert_eq!(r.get("underlying_event_id"), Some(&Value::Text(uuid(2001))));
    assert_eq!(r.get("underlying_age_ms"), Some(&Value::Int(0)));
}

#[test]
fn implied_volatility_is_computed_when_the_feed_lacks_it_and_reprices_the_trade() {
    let s = 192.5;
    let close = june21() * 24 * HOUR + EXPIRY_CLOSE_UTC_HOUR * HOUR;
    let t = (close - T0) as f64 / YEAR;
    let price = model::price(Right::Call, s, 190.0, t, 0.045, 0.27);
    let r = row(&run(vec![trade(1, price)]), 0);
    assert_eq!(r.get("iv_source"), Some(&Value::Text("computed".into())));
    let iv = f(&r, "implied_volatility");
    assert!((iv - 0.27).abs() < 1e-6, "{iv}");
    let delta = f(&r, "delta");
    assert!((delta - model::delta(Right::Call, s, 190.0, t, 0.045, 0.27)).abs() < 1e-6);
    assert!(delta > 0.5 && delta < 1.0, "{delta}");
}

#[test]
fn the_feeds_implied_volatility_is_kept_and_gives_delta() {
    let mut m = trade(1, 4.0);
    m.set("id", "AAPL240621P00190000");
    m.set("option_type", "PUT");
    m.set("implied_volatility", 0.31);
    let r = row(&run(vec![m]), 0);
    assert_eq!(r.get("iv_source"), Some(&Value::Text("feed".into())));
    assert_eq!(r.get("implied_volatility"), Some(&Value::Float(0.31)));
    let close = june21() * 24 * HOUR + EXPIRY_CLOSE_UTC_HOUR * HOUR;
    let t = (close - T0) as f64 / YEAR;
    let want = model::delta(Right::Put, 192.5, 190.0, t, 0.045, 0.31);
    assert!((f(&r, "delta") - want).abs() < 1e-12);
    assert!(want < 0.0 && want > -0.5);
}

#[test]
fn a_price_the_model_cannot_invert_is_kept_with_a_null_volatility() {
    // A call at the underlying's price: the model's upper bound.
    let r = row(&run(vec![trade(1, 192.5)]), 0);
    assert_eq!(r.get("iv_source"), Some(&Value::Text("none".into())));
    assert_eq!(r.get("implied_volatility"), Some(&Value::Null));
    assert_eq!(r.get("delta"), Some(&Value::Null));
}

#[test]
fn duplicates_in_a_batch_are_skipped_and_counted() {
    let before = weir_guest::testing::counter("options_duplicate");
    let mut again = trade(1, 6.5);
    again.offset = 3;
    // The same UUID in capitals: Postgres's uuid sees one value.
    again.set("event_id", uuid(1).to_uppercase());
    let out = run(vec![trade(1, 6.5), trade(2, 6.6), again]);
    assert!(out.written(0).len() == 1 && out.written(1).len() == 1);
    assert_eq!(out.outcomes[2], Outcome::skip());
    assert_eq!(
        weir_guest::testing::counter("options_duplicate") - before,
        1
    );
    // A rejected message does not make a later copy a duplicate.
    let bad = with(|m| m.set("price", -1.0));
    let out = run(vec![bad, trade(1, 6.5)]);
    assert!(out.dead_letter(0).is_some());
    assert_eq!(out.written(1).len(), 1);
}

// ---------------------------------------------------------------------------------------
// Rules: one test each.

#[test]
fn required_and_type_and_text() {
    for field in [
        "id",
        "underlying",
        "expiry",
        "strike",
        "option_type",
        "style",
        "price",
        "event_time",
        "event_id",
        "ingestion_time",
    ] {
        let mut m = trade(1, 6.5);
        m.take(field);
        assert_rule(&reason(m), "required", field);
        assert_rule(
            &reason(with(|m| m.set(field, Value::Null))),
            "required",
            field,
        );
    }
    assert_rule(&reason(with(|m| m.set("strike", "190"))), "type", "strike");
    assert_rule(&reason(with(|m| m.set("expiry", 1.5))), "type", "expiry");
    assert_rule(
        &reason(with(|m| m.set("event_time", 5i64))),
        "type",
        "event_time",
    );
    assert_rule(&reason(with(|m| m.set("volume", 1.5))), "type", "volume");
    assert_rule(&reason(with(|m| m.set("source", 3i64))), "type", "source");
    assert_rule(
        &reason(with(|m| m.set("exchange", "OP\0RA"))),
        "text_valid",
        "exchange",
    );
    assert_rule(
        &reason(with(|m| m.set("event_id", "trade-42"))),
        "event_id_uuid",
        "event_id",
    );
}

#[test]
fn option_type_and_symbols() {
    let r = reason(with(|m| m.set("option_type", "UNKNOWN")));
    assert_rule(&r, "option_type", "option_type");
    assert_rule(
        &reason(with(|m| m.set("underlying", "aapl"))),
        "underlying_format",
        "underlying",
    );
    for bad in [
        "AAPL",
        "AAPL240621X00190000",
        "AAPL241321C00190000",
        "AAPL240631C00190000",
        "AAPL240621C0019000",
        "aapl240621C00190000",
        "TOOLONG240621C00190000",
        "AAPL24O621C00190000",
    ] {
        assert_rule(&reason(with(|m| m.set("id", bad))), "contract_format", "id");
    }
    let r = reason(with(|m| m.set("id", "MSFT240621C00190000")));
    assert_rule(&r, "contract_matches", "underlying");
    assert!(r.contains("says MSFT"), "{r}");
    let r = reason(with(|m| m.set("id", "AAPL240628C00190000")));
    assert_rule(&r, "contract_matches", "expiry");
    assert!(
        r.contains("is 2024-06-21") && r.contains("says 2024-06-28"),
        "{r}"
    );
    assert_rule(
        &reason(with(|m| m.set("id", "AAPL240621P00190000"))),
        "contract_matches",
        "option_type",
    );
    let r = reason(with(|m| m.set("id", "AAPL240621C00195500")));
    assert_rule(&r, "contract_matches", "strike");
    assert!(r.contains("says 195.5"), "{r}");
    // OSI's padded form and a decimal strike are fine.
    let mut m = trade(1, 6.5);
    m.set("id", "AAPL  240621C00192500");
    m.set("strike", 192.5);
    assert_eq!(run(vec![m]).written(0).len(), 1);
    let occ = parse_occ("BRK.B 250117P00412500").unwrap();
    assert_eq!(
        (occ.root, occ.right, occ.strike_thousandths),
        ("BRK.B", Right::Put, 412_500)
    );
    assert_eq!(occ.expiry, days_from_civil(2025, 1, 17));
}

#[test]
fn numbers() {
    for (field, v, rule) in [
        ("price", 0.0, "price_positive"),
        ("price", f64::NAN, "price_positive"),
        ("strike", -190.0, "strike_positive"),
        ("bid", -0.01, "bid_non_negative"),
        ("ask", 0.0, "ask_positive"),
        ("last_size", -1.0, "last_size_non_negative"),
        ("implied_volatility", 0.0, "implied_volatility_positive"),
        (
            "implied_volatility",
            f64::INFINITY,
            "implied_volatility_positive",
        ),
    ] {
        assert_rule(&reason(with(|m| m.set(field, v))), rule, field);
    }
    assert_rule(
        &reason(with(|m| m.set("volume", -1i64))),
        "volume_non_negative",
        "volume",
    );
    assert_rule(
        &reason(with(|m| m.set("open_interest", -1i64))),
        "open_interest_non_negative",
        "open_interest",
    );
    let r = reason(with(|m| {
        m.set("bid", 7.0);
        m.set("ask", 6.0);
    }));
    assert_rule(&r, "bid_le_ask", "bid");
    // A zero bid and absent quotes are fine.
    let out = run(vec![
        with(|m| m.set("bid", 0.0)),
        with(|m| {
            m.set("event_id", uuid(99));
            m.set("bid", Value::Null);
            m.set("ask", Value::Null);
        }),
    ]);
    assert_eq!(
        out.written(0).len() + out.written(1).len(),
        2,
        "{:?}",
        out.outcomes
    );
}

#[test]
fn times() {
    assert_rule(
        &reason(with(|m| {
            m.set("event_time", Value::Timestamp(253_402_300_800 * SECOND))
        })),
        "time_range",
        "event_time",
    );
    assert_rule(
        &reason(with(|m| m.set("event_time", Value::Timestamp(T0 + MINUTE)))),
        "max_future_skew",
        "event_time",
    );
    assert_rule(
        &reason(with(|m| {
            m.set("ingestion_time", Value::Timestamp(T0 + 2 * HOUR))
        })),
        "max_lateness",
        "event_time",
    );
    // With the limits off, a replay's old event times pass.
    let off = [("max_lateness", "off"), ("max_underlying_age", "off")];
    let m = with(|m| m.set("ingestion_time", Value::Timestamp(T0 + 400 * 24 * HOUR)));
    assert_eq!(
        run_with(&mut harness(aapl()), &off, vec![m])
            .written(0)
            .len(),
        1
    );
    // After the close of the expiry day, 20:00 UTC: time to expiry would be negative.
    let close = june21() * 24 * HOUR + EXPIRY_CLOSE_UTC_HOUR * HOUR;
    let late = |at: i64| {
        with(|m| {
            m.set("event_time", Value::Timestamp(at));
            m.set("ingestion_time", Value::Timestamp(at));
        })
    };
    let r = reason_with(&off, late(close));
    assert_rule(&r, "time_to_expiry", "event_time");
    assert!(r.contains("2024-06-21T20:00:00Z"), "{r}");
    assert_rule(
        &reason_with(&off, late(close + 24 * HOUR)),
        "time_to_expiry",
        "event_time",
    );
    // Just before the close it is a (tiny) positive time: rules pass, the pairing finds
    // the old tick with max_underlying_age off.
    let mut m = late(close - SECOND);
    m.set("price", 9.5);
    let out = run_with(&mut harness(aapl()), &off, vec![m]);
    assert_eq!(out.written(0).len(), 1, "{:?}", out.outcomes);
}

#[test]
fn underlying_missing_and_age() {
    // Before the first AAPL tick.
    let r = reason(with(|m| {
        m.set("event_time", Value::Timestamp(T0 - 11 * SECOND));
        m.set("ingestion_time", Value::Timestamp(T0 - 11 * SECOND));
    }));
    assert_rule(&r, "underlying_missing", "underlying");
    // A symbol with no ticks.
    let r = reason(with(|m| {
        m.set("underlying", "NVDA");
        m.set("id", "NVDA240621C00190000");
    }));
    assert_rule(&r, "underlying_missing", "underlying");
    // The latest is 2 s old: over a 1 s limit, within the default 1 m.
    let r = reason_with(&[("max_underlying_age", "1s")], trade(1, 6.5));
    assert_rule(&r, "underlying_age", "underlying");
    assert!(
        r.contains("2s older") && r.contains("max_underlying_age is 1s"),
        "{r}"
    );
    let mut h = harness(vec![Tick("AAPL", uuid(1), T0 - 2 * MINUTE, 190.0, 1)]);
    let out = run_with(&mut h, &[], vec![trade(1, 6.5)]);
    assert_rule(out.dead_letter(0).unwrap(), "underlying_age", "underlying");
}

#[test]
fn price_below_intrinsic() {
    // S 192.5, K 190: a call is worth at least 2.5.
    let r = reason(trade(1, 2.4));
    assert_rule(&r, "price_below_intrinsic", "price");
    assert_eq!(
        run(vec![trade(1, 2.495)]).written(0).len(),
        1,
        "within the tolerance"
    );
    let r = reason_with(&[("intrinsic_tolerance", "0.2")], trade(1, 2.2));
    assert_rule(&r, "price_below_intrinsic", "price");
    assert_eq!(
        run_with(
            &mut harness(aapl()),
            &[("intrinsic_tolerance", "0.2")],
            vec![trade(1, 2.31)]
        )
        .written(0)
        .len(),
        1
    );
    // A put at K 200 is worth at least 7.5 when American; a European one only its
    // discounted bound, K e^(-rT) - S, about 6.8.
    let put = |price: f64, style: &str| {
        let mut m = trade(1, price);
        m.set("id", "AAPL240621P00200000");
        m.set("option_type", "PUT");
        m.set("strike", 200.0);
        m.set("style", style);
        m.set("bid", Value::Null);
        m.set("ask", Value::Null);
        m
    };
    assert_rule(
        &reason(put(7.2, "AMERICAN")),
        "price_below_intrinsic",
        "price",
    );
    let out = run(vec![put(7.2, "EUROPEAN")]);
    assert_eq!(out.written(0).len(), 1, "{:?}", out.outcomes);
    assert_rule(
        &reason(put(6.0, "EUROPEAN")),
        "price_below_intrinsic",
        "price",
    );
}

// ---------------------------------------------------------------------------------------
// Operational errors and config.

#[test]
fn a_failing_or_undeclared_lookup_fails_the_call_not_the_message() {
    let mut h = harness(aapl());
    h.remove_lookup("underlying");
    let e = h
        .run::<Options>(&[], batch("tickers.options", 0, [trade(1, 6.5)]))
        .unwrap_err();
    assert!(e.contains("lookup underlying failed"), "{e}");
    let mut h = harness(aapl());
    h.add_lookup("rate", |_| Ok(Rows::new(&["rate"], vec![])));
    let e = h
        .run::<Options>(&[], batch("tickers.options", 0, [trade(1, 6.5)]))
        .unwrap_err();
    assert!(e.contains("found no rate for 2024-05-01"), "{e}");
    let mut h = harness(aapl());
    h.add_lookup("underlying", |_| {
        Ok(Rows::new(&["price"], vec![vec![1.0.into()]]))
    });
    let e = h
        .run::<Options>(&[], batch("tickers.options", 0, [trade(1, 6.5)]))
        .unwrap_err();
    assert!(e.contains("must return event_id"), "{e}");
    // A message a rule rejects first needs no lookup.
    let mut h = Harness::new();
    let out = run_with(&mut h, &[], vec![with(|m| m.set("price", -1.0))]);
    assert!(out.dead_letter(0).is_some());
    // Other lookup names.
    let mut h = harness(aapl());
    h.add_lookup("spot", |_| {
        Ok(Rows::new(
            &["event_id", "event_time", "price"],
            vec![vec![uuid(5).into(), Value::Timestamp(T0), 200.0.into()]],
        ))
    });
    let out = run_with(
        &mut h,
        &[("underlying_lookup", "spot")],
        vec![trade(1, 12.0)],
    );
    assert_eq!(
        row(&out, 0).get("underlying_price"),
        Some(&Value::Float(200.0))
    );
}

#[test]
fn config_is_checked_naming_the_key() {
    let mut h = harness(aapl());
    for (key, value) in [
        ("max_underlying_age", "soon"),
        ("intrinsic_tolerance", "-1"),
        ("intrinsic_tolerance", "x"),
        ("max_volatility", "0"),
        ("table", " "),
        ("max_lateness", "5"),
    ] {
        let e = h
            .run::<Options>(
                &[(key, value)],
                batch("tickers.options", 0, [trade(1, 6.5)]),
            )
            .unwrap_err();
        assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
    }
    let out = run_with(&mut h, &[("table", "trades_test")], vec![trade(1, 6.5)]);
    assert_eq!(out.written(0)[0].table(), "trades_test");
}

#[test]
fn metrics_are_counted_per_batch() {
    use weir_guest::testing::counter;
    let (acc, rej, iv) = (
        counter("options_accepted"),
        counter("options_rejected"),
        counter("options_iv"),
    );
    run(vec![
        trade(1, 6.5),
        with(|m| {
            m.set("event_id", uuid(2));
            m.set("price", -1.0);
        }),
        trade(3, 6.7),
    ]);
    assert_eq!(counter("options_accepted") - acc, 2);
    assert_eq!(counter("options_rejected") - rej, 1);
    assert_eq!(counter("options_iv") - iv, 2);
}
