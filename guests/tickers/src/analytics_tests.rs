//! Unit tests of imputation and sliding windows: values filled in (and flagged) from
//! state across batches, windows against a recomputation from the ticks, revisions, the
//! `window_lateness` rule and the config refusals.

use weir_guest::prelude::*;
use weir_guest::testing::{Harness, TestMessage, batch};
use weir_guest::{Output, Written};

use crate::Tickers;
use crate::windows::starts;
use weir_guest::time::{MINUTE, SECOND};

/// 2024-05-01T14:30:00Z, in microseconds.
const T0: i64 = 1_714_573_800 * SECOND;

fn tick(offset: i64, symbol: &str, price: f64, dt: i64) -> TestMessage {
    TestMessage::new(offset)
        .with("id", symbol)
        .with("quote_type", "EQUITY")
        .with("market_hours", "REGULAR_MARKET")
        .with("price", price)
        .with("bid", price - 0.01)
        .with("ask", price + 0.01)
        .with("last_size", 100.0)
        .with("day_volume", 1000i64 + offset)
        .with("event_time", Value::Timestamp(T0 + dt))
        .with("event_id", format!("9f1c2a7e-0b1d-4a7e-8c55-{offset:012x}"))
        .with("ingestion_time", Value::Timestamp(T0 + dt))
        .with("source", "simulator")
}

fn without(mut m: TestMessage, fields: &[&str]) -> TestMessage {
    for f in fields {
        m.set(f, Value::Null);
    }
    m
}

fn run(h: &mut Harness, config: &[(&str, &str)], messages: Vec<TestMessage>) -> Output {
    let mut full = vec![("asset_class", "stocks")];
    full.extend_from_slice(config);
    h.run::<Tickers>(&full, batch("tickers.stocks", 0, messages))
        .unwrap()
}

fn float(row: &Written<'_>, column: &str) -> Option<f64> {
    match row.get(column) {
        Some(Value::Float(v)) => Some(*v),
        Some(Value::Int(v)) => Some(*v as f64),
        Some(Value::Null) | None => None,
        Some(other) => panic!("{column} is {other:?}"),
    }
}

fn imputed(row: &Written<'_>) -> Option<String> {
    match row.get("imputed") {
        Some(Value::Text(t)) => Some(t.clone()),
        Some(Value::Null) => None,
        other => panic!("imputed is {other:?}"),
    }
}

#[test]
fn forward_fill_takes_the_last_value_that_arrived_across_batches() {
    let mut h = Harness::new();
    let config = [
        ("impute", "forward_fill"),
        ("impute_fields", "bid,ask,day_volume"),
    ];
    let out = run(
        &mut h,
        &config,
        vec![
            without(tick(1, "MSFT", 50.0, 0), &["bid", "ask"]), // nothing to fill from
            tick(2, "AAPL", 10.0, 0),
            without(tick(3, "AAPL", 11.0, SECOND), &["bid", "ask"]),
        ],
    );
    let rows = out.written_to("ticks_stocks");
    assert_eq!(imputed(&rows[0]), None, "MSFT had no earlier bid");
    assert_eq!(float(&rows[0], "bid"), None);
    assert_eq!(imputed(&rows[1]), None);
    assert_eq!(imputed(&rows[2]).as_deref(), Some("bid,ask"));
    assert_eq!(float(&rows[2], "bid"), Some(10.0 - 0.01));
    assert_eq!(float(&rows[2], "ask"), Some(10.0 + 0.01));

    // The next batch fills from state; an imputed value is not an observation.
    let out = run(
        &mut h,
        &config,
        vec![
            without(tick(4, "AAPL", 12.0, 2 * SECOND), &["bid", "day_volume"]),
            tick(5, "AAPL", 13.0, 3 * SECOND),
            without(tick(6, "AAPL", 14.0, 4 * SECOND), &["ask"]),
        ],
    );
    let rows = out.written_to("ticks_stocks");
    assert_eq!(imputed(&rows[0]).as_deref(), Some("bid,day_volume"));
    assert_eq!(float(&rows[0], "bid"), Some(10.0 - 0.01));
    assert_eq!(float(&rows[0], "day_volume"), Some(1003.0));
    assert_eq!(
        float(&rows[0], "ask"),
        Some(12.0 + 0.01),
        "present values stay"
    );
    assert_eq!(imputed(&rows[2]).as_deref(), Some("ask"));
    assert_eq!(float(&rows[2], "ask"), Some(13.0 + 0.01));
    assert_eq!(
        crate::impute::decode(h.get_state(0, "impute/bid/AAPL").unwrap()),
        Some(vec![14.0 - 0.01]),
        "forward fill keeps the last value"
    );
}

#[test]
fn trailing_mean_averages_the_last_n_values_that_arrived() {
    let mut h = Harness::new();
    let config = [
        ("impute", "trailing_mean"),
        ("impute_fields", "last_size"),
        ("impute_window", "2"),
    ];
    let sized = |o, size: f64| tick(o, "AAPL", 10.0, o * SECOND).with("last_size", size);
    let out = run(
        &mut h,
        &config,
        vec![
            sized(1, 100.0),
            sized(2, 200.0),
            sized(3, 400.0),
            without(sized(4, 0.0), &["last_size"]),
            without(sized(5, 0.0), &["last_size"]),
        ],
    );
    let rows = out.written_to("ticks_stocks");
    assert_eq!(float(&rows[3], "last_size"), Some(300.0));
    assert_eq!(
        float(&rows[4], "last_size"),
        Some(300.0),
        "imputed values do not count"
    );
    assert_eq!(imputed(&rows[4]).as_deref(), Some("last_size"));
    // Candles sum the imputed size, as the tick table holds it.
    let candle = &out.written_to("candles")[0];
    assert_eq!(float(candle, "volume"), Some(100.0 + 200.0 + 400.0 + 600.0));
    let out = run(
        &mut h,
        &config,
        vec![without(sized(6, 0.0), &["last_size"])],
    );
    assert_eq!(
        float(&out.written_to("ticks_stocks")[0], "last_size"),
        Some(300.0)
    );
}

#[test]
fn without_impute_there_is_no_imputed_column() {
    let out = run(&mut Harness::new(), &[], vec![tick(1, "AAPL", 10.0, 0)]);
    assert_eq!(out.written_to("ticks_stocks")[0].get("imputed"), None);
}

#[test]
fn window_starts_cover_the_tick() {
    let t = 7 * MINUTE + 30 * SECOND;
    assert_eq!(starts(t, MINUTE, MINUTE).collect::<Vec<_>>(), [7 * MINUTE]);
    assert_eq!(
        starts(t, 5 * MINUTE, MINUTE).collect::<Vec<_>>(),
        [3, 4, 5, 6, 7].map(|m| m * MINUTE)
    );
    assert_eq!(
        starts(-SECOND, 2 * MINUTE, MINUTE).collect::<Vec<_>>(),
        [-2 * MINUTE, -MINUTE]
    );
    for s in starts(t, 15 * MINUTE, 5 * MINUTE) {
        assert!(s <= t && t < s + 15 * MINUTE);
    }
}

/// A window as recomputed from ticks `(time, price, size)`, in message order.
fn recompute(ticks: &[(i64, f64, f64)], start: i64, end: i64) -> Option<[f64; 7]> {
    let inside: Vec<_> = ticks
        .iter()
        .filter(|(t, _, _)| (start..end).contains(t))
        .collect();
    if inside.is_empty() {
        return None;
    }
    let first = inside.iter().min_by_key(|(t, _, _)| *t).unwrap(); // earliest message on ties
    let last = inside.iter().max_by_key(|(t, _, _)| *t).unwrap(); // latest message on ties
    let high = inside.iter().map(|x| x.1).fold(f64::MIN, f64::max);
    let low = inside.iter().map(|x| x.1).fold(f64::MAX, f64::min);
    let volume: f64 = inside.iter().map(|x| x.2).sum();
    let notional: f64 = inside.iter().map(|x| x.1 * x.2).sum();
    Some([
        first.1,
        last.1,
        high,
        low,
        volume,
        notional,
        inside.len() as f64,
    ])
}

#[test]
fn windows_equal_a_recomputation_and_late_ticks_revise_closed_ones() {
    let mut h = Harness::new();
    let config = [
        ("windows", "1m,5m"),
        ("window_hop", "1m"),
        ("window_close_offset", "5s"),
    ];
    // Out of order within the batch, and equal times.
    let ticks = [
        (0, 10.0, 1.0),
        (30 * SECOND, 12.0, 2.0),
        (10 * SECOND, 9.0, 3.0),
        (30 * SECOND, 11.0, 1.0),
        (2 * MINUTE + 10 * SECOND, 13.0, 5.0),
    ];
    let messages = ticks
        .iter()
        .enumerate()
        .map(|(i, (dt, p, s))| tick(i as i64 + 1, "AAPL", *p, *dt).with("last_size", *s))
        .collect();
    let out = run(&mut h, &config, messages);
    let rows = out.written_to("windows");
    let abs: Vec<(i64, f64, f64)> = ticks.iter().map(|(t, p, s)| (T0 + t, *p, *s)).collect();
    // 1m: two windows with ticks; 5m: 5 + 3 starts hold ticks: T0-4m..T0 and T0-2m..T0+2m.
    let mut expected = Vec::new();
    for (label, length) in [("1m", MINUTE), ("5m", 5 * MINUTE)] {
        for k in -5..=3 {
            let start = T0 + k * MINUTE;
            if let Some(w) = recompute(&abs, start, start + length) {
                expected.push((label, start, w));
            }
        }
    }
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    for (label, start, w) in expected {
        let row = rows
            .iter()
            .find(|r| {
                r.get("resolution") == Some(&Value::Text(label.into()))
                    && r.get("window_start") == Some(&Value::Timestamp(start))
            })
            .unwrap_or_else(|| panic!("no {label} window at {start}"));
        let got = [
            "first", "last", "high", "low", "volume", "notional", "trades",
        ]
        .map(|c| float(row, c).unwrap());
        assert_eq!(got, w, "{label} window at {start}");
        let length = if label == "1m" { MINUTE } else { 5 * MINUTE };
        assert_eq!(
            row.get("window_end"),
            Some(&Value::Timestamp(start + length))
        );
        assert_eq!(
            row.get("closes_at"),
            Some(&Value::Timestamp(start + length + 5 * SECOND))
        );
        assert_eq!(float(row, "revisions"), Some(0.0));
    }
    let marks = out.written_to("window_watermarks");
    assert_eq!(marks.len(), 1);
    assert_eq!(
        marks[0].get("watermark"),
        Some(&Value::Timestamp(T0 + 2 * MINUTE + 10 * SECOND))
    );

    // The watermark (T0+2m10s) closed the 1m window [T0, T0+1m) (closes at T0+1m05s) and
    // the 5m windows ending at T0+1m and T0+2m: a late tick in them revises them; the open
    // 5m windows it falls in count no revision.
    let out = run(
        &mut h,
        &config,
        vec![tick(9, "AAPL", 20.0, 40 * SECOND).with("last_size", 1.0)],
    );
    let rows = out.written_to("windows");
    let revised: Vec<_> = rows
        .iter()
        .filter(|r| float(r, "revisions") == Some(1.0))
        .map(|r| (r.get("resolution").cloned(), r.get("window_start").cloned()))
        .collect();
    let window = |label: &str, start| {
        (
            Some(Value::Text(label.into())),
            Some(Value::Timestamp(start)),
        )
    };
    assert_eq!(
        revised,
        [
            window("1m", T0),
            window("5m", T0 - 4 * MINUTE),
            window("5m", T0 - 3 * MINUTE)
        ]
    );
    assert_eq!(rows.len(), 1 + 5);
    assert!(
        out.written_to("window_watermarks").is_empty(),
        "a late tick does not move the watermark"
    );
    assert_eq!(
        h.load_state::<i64>(0, "watermark/AAPL"),
        Some(T0 + 2 * MINUTE + 10 * SECOND)
    );
}

#[test]
fn a_tick_beyond_the_allowed_lateness_is_dead_lettered() {
    let mut h = Harness::new();
    let config = [("windows", "1m"), ("allowed_lateness", "2m")];
    run(&mut h, &config, vec![tick(1, "AAPL", 10.0, 10 * MINUTE)]);
    let out = run(
        &mut h,
        &config,
        vec![
            tick(2, "AAPL", 10.0, 8 * MINUTE),          // 2m behind: allowed
            tick(3, "AAPL", 10.0, 8 * MINUTE - SECOND), // too late
            tick(4, "MSFT", 10.0, 0),                   // another symbol's watermark
        ],
    );
    assert!(out.dead_letter(0).is_none());
    assert_eq!(
        out.dead_letter(1),
        Some(
            "rule window_lateness: field event_time is 2024-05-01T14:37:59Z, 121s behind the \
             latest event time of AAPL (2024-05-01T14:40:00Z); allowed_lateness is 2m"
        )
    );
    assert!(out.dead_letter(2).is_none());
    assert_eq!(weir_guest::testing::counter("ticks_rejected"), 1);
}

fn refused(config: &[(&str, &str)]) -> String {
    let mut full = vec![("asset_class", "stocks")];
    full.extend_from_slice(config);
    match Tickers::new(&Config::from_pairs(full.iter().copied())) {
        Ok(_) => panic!("{config:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_analytics_config_is_refused_naming_the_key() {
    for (config, why) in [
        (
            &[("impute", "median")][..],
            "`impute` = \"median\" is not a method",
        ),
        (
            &[("impute", "forward_fill")][..],
            "`impute_fields` is required",
        ),
        (
            &[("impute_fields", "bid")][..],
            "`impute_fields` is set but `impute` is not",
        ),
        (
            &[("impute", "forward_fill"), ("impute_fields", "price")][..],
            "\"price\" is not an imputable field",
        ),
        (
            &[("impute", "forward_fill"), ("impute_fields", "bid,bid")][..],
            "\"bid\" is listed twice",
        ),
        (
            &[
                ("impute", "trailing_mean"),
                ("impute_fields", "bid"),
                ("impute_window", "0"),
            ][..],
            "`impute_window` = \"0\" must be a whole number of ticks from 1 to 1000",
        ),
        (
            &[
                ("impute", "forward_fill"),
                ("impute_fields", "bid"),
                ("impute_window", "3"),
            ][..],
            "`impute_window` is for `impute: trailing_mean`",
        ),
        (
            &[("window_hop", "1m")][..],
            "`window_hop` is set but `windows` is not",
        ),
        (
            &[("windows", "1m,90s")][..],
            "does not divide the window length 90s",
        ),
        (
            &[("windows", "15m"), ("window_hop", "1s")][..],
            "puts each tick in 900 windows of length 15m",
        ),
        (
            &[("windows", "1m"), ("window_hop", "0")][..],
            "`window_hop` must be longer than 0",
        ),
        (
            &[("windows", "1m"), ("allowed_lateness", "soon")][..],
            "`allowed_lateness` = \"soon\" is not a duration",
        ),
    ] {
        let e = refused(config);
        assert!(e.contains(why), "{config:?}: {e}");
    }
    let mut full = vec![("asset_class", "crypto")];
    full.extend([("impute", "forward_fill"), ("impute_fields", "bid")]);
    let e = Tickers::new(&Config::from_pairs(full.iter().copied()))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("never missing from a valid crypto tick"), "{e}");
}
