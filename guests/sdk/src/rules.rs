//! Data-quality rules over a message's fields: a broken rule is a [`Reject`] whose
//! reason names the rule and the field, `rule price_positive: field price is -3.2, must
//! be > 0`, for [`Outcome::dead_letter`](crate::Outcome::dead_letter).
//!
//! The readers check presence (rule `required`), type (rule `type`) and, for text, that
//! Postgres can store it (rule `text_valid`); the checks below them check values.
//!
//! ```
//! use weir_guest::Value;
//! use weir_guest::rules;
//!
//! let price = rules::number(&Value::Float(-3.2), "price").unwrap();
//! let broken = rules::positive("price_positive", "price", price).unwrap_err();
//! assert_eq!(broken.rule, "price_positive");
//! assert_eq!(broken.reason, "rule price_positive: field price is -3.2, must be > 0");
//! ```

use alloc::format;
use alloc::string::String;

use crate::time::{END_TIME, MIN_TIME, format_duration, format_time};
use crate::{Message, Value};

/// A rule a message broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The rule's name (a metric label).
    pub rule: &'static str,
    /// `rule <rule>: field <field> ...`, the dead letter's reason.
    pub reason: String,
}

/// The rule `rule` broken by field `field`: the reason is `rule <rule>: field <field>
/// <what>`.
pub fn reject(rule: &'static str, field: &str, what: impl core::fmt::Display) -> Reject {
    Reject {
        rule,
        reason: format!("rule {rule}: field {field} {what}"),
    }
}

/// `s`, cut to 64 characters (then `…`) for a dead-letter reason (the raw message is
/// stored beside it).
pub fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.into(),
    }
}

/// Rule `rule`: `v` is > 0 and finite.
pub fn positive(rule: &'static str, field: &str, v: f64) -> Result<(), Reject> {
    if v.is_nan() || v <= 0.0 {
        Err(reject(rule, field, format_args!("is {v}, must be > 0")))
    } else if !v.is_finite() {
        Err(reject(rule, field, format_args!("is {v}, must be finite")))
    } else {
        Ok(())
    }
}

/// Rule `rule`: `v` is ≥ 0 and finite.
pub fn non_negative(rule: &'static str, field: &str, v: f64) -> Result<(), Reject> {
    if v.is_nan() || v < 0.0 {
        Err(reject(rule, field, format_args!("is {v}, must be >= 0")))
    } else if !v.is_finite() {
        Err(reject(rule, field, format_args!("is {v}, must be finite")))
    } else {
        Ok(())
    }
}

/// Rule `rule`: `v` of field `field` is at most `limit` of field `limit_field` (bid ≤
/// ask, say).
pub fn not_above(
    rule: &'static str,
    field: &str,
    v: f64,
    limit_field: &str,
    limit: f64,
) -> Result<(), Reject> {
    if v > limit {
        Err(reject(
            rule,
            field,
            format_args!("is {v}, must be <= {limit_field} ({limit})"),
        ))
    } else {
        Ok(())
    }
}

/// Rule `rule`: text `s` of field `field` is a UUID ([`parse::uuid`](crate::parse::uuid)),
/// as a number.
pub fn uuid(rule: &'static str, field: &str, s: &str) -> Result<u128, Reject> {
    crate::parse::uuid(s).ok_or_else(|| {
        reject(
            rule,
            field,
            format_args!(
                "is {:?}, must be a UUID like 9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01",
                shown(s)
            ),
        )
    })
}

/// Rule `required`: field `name`'s value, neither missing nor null.
pub fn required<'a>(m: &'a Message<'_>, name: &str) -> Result<&'a Value, Reject> {
    match m.get(name) {
        None => Err(reject("required", name, "is missing")),
        Some(Value::Null) => Err(reject("required", name, "is null")),
        Some(v) => Ok(v),
    }
}

/// Field `name`'s value, `None` when missing or null.
pub fn optional<'a>(m: &'a Message<'_>, name: &str) -> Option<&'a Value> {
    m.get(name).filter(|v| !v.is_null())
}

/// Rule `type`: field `name`'s value `v` is not `expected` (`a number`, `text`, …).
pub fn wrong_type(name: &str, v: &Value, expected: &str) -> Reject {
    reject(
        "type",
        name,
        format_args!("is {}, must be {expected}", v.type_name()),
    )
}

/// Rule `type`: a number (an int, float or decimal), as `f64`.
pub fn number(v: &Value, name: &str) -> Result<f64, Reject> {
    match v {
        Value::Float(_) | Value::Int(_) | Value::Decimal(_) => Ok(v.as_f64().unwrap_or(f64::NAN)),
        _ => Err(wrong_type(name, v, "a number")),
    }
}

/// [`number`] of field `name` when it is present and not null.
pub fn opt_number(m: &Message<'_>, name: &str) -> Result<Option<f64>, Reject> {
    optional(m, name).map(|v| number(v, name)).transpose()
}

/// Rules `type` and `text_valid`: text without a NUL character (Postgres text cannot
/// store one).
pub fn text<'a>(v: &'a Value, name: &str) -> Result<&'a str, Reject> {
    match v {
        Value::Text(s) if s.contains('\0') => Err(reject(
            "text_valid",
            name,
            "holds a NUL character, which Postgres text cannot store",
        )),
        Value::Text(s) => Ok(s),
        _ => Err(wrong_type(name, v, "text")),
    }
}

/// [`text`] of field `name` when it is present and not null.
pub fn opt_text<'a>(m: &'a Message<'_>, name: &str) -> Result<Option<&'a str>, Reject> {
    optional(m, name).map(|v| text(v, name)).transpose()
}

/// Rule `type`: a timestamp, in microseconds since the epoch.
pub fn timestamp(v: &Value, name: &str) -> Result<i64, Reject> {
    v.as_timestamp_micros()
        .ok_or_else(|| wrong_type(name, v, "a timestamp"))
}

/// The time rules of a record with an event time and an ingestion time (microseconds),
/// in this order:
///
/// | rule | what |
/// | --- | --- |
/// | `time_range` | `event_time` and `ingestion_time` are within the years 0001 to 9999 ([`MIN_TIME`], [`END_TIME`]) |
/// | `max_future_skew` | `event_time` is at most `max_future_skew` after `ingestion_time` |
/// | `max_lateness` | `event_time` is at most `max_lateness` before `ingestion_time` |
///
/// A limit of `i64::MAX` (`off`, see [`limit_key`](crate::time::limit_key)) is never
/// broken.
pub fn event_times(
    event_time: i64,
    ingestion_time: i64,
    max_future_skew: i64,
    max_lateness: i64,
) -> Result<(), Reject> {
    for (field, t) in [
        ("event_time", event_time),
        ("ingestion_time", ingestion_time),
    ] {
        if !(MIN_TIME..END_TIME).contains(&t) {
            return Err(reject(
                "time_range",
                field,
                format_args!("is {t} µs since 1970-01-01, must be within the years 0001 to 9999"),
            ));
        }
    }
    let ahead = event_time - ingestion_time;
    if ahead > max_future_skew {
        return Err(reject(
            "max_future_skew",
            "event_time",
            format_args!(
                "is {}, {} after ingestion_time {}; max_future_skew is {}",
                format_time(event_time),
                format_duration(ahead),
                format_time(ingestion_time),
                format_duration(max_future_skew)
            ),
        ));
    }
    if -ahead > max_lateness {
        return Err(reject(
            "max_lateness",
            "event_time",
            format_args!(
                "is {}, {} before ingestion_time {}; max_lateness is {}",
                format_time(event_time),
                format_duration(-ahead),
                format_time(ingestion_time),
                format_duration(max_lateness)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;
    use crate::testing::{Harness, TestMessage, batch};
    use crate::time::{HOUR, SECOND};

    /// Dead-letters each message with the first rule it breaks, reading `id` (text),
    /// `price` (a number), `event_time` and `ingestion_time` (timestamps), and optional
    /// `bid` (number) and `venue` (text).
    struct Checker;

    fn check(m: &Message<'_>) -> Result<(), Reject> {
        let id = text(required(m, "id")?, "id")?;
        let price = number(required(m, "price")?, "price")?;
        let event_time = timestamp(required(m, "event_time")?, "event_time")?;
        let ingestion_time = timestamp(required(m, "ingestion_time")?, "ingestion_time")?;
        let bid = opt_number(m, "bid")?;
        let venue = opt_text(m, "venue")?;
        if id.len() > 4 {
            return Err(reject("id_short", "id", format_args!("is {:?}", shown(id))));
        }
        positive("price_positive", "price", price)?;
        if let Some(bid) = bid {
            non_negative("bid_non_negative", "bid", bid)?;
            not_above("bid_le_price", "bid", bid, "price", price)?;
        }
        if let Some(venue) = venue {
            uuid("venue_uuid", "venue", venue)?;
        }
        event_times(event_time, ingestion_time, 5 * SECOND, HOUR)
    }

    impl Processor for Checker {
        fn new(_: &Config) -> Result<Self, ConfigError> {
            Ok(Checker)
        }
        fn process(&mut self, message: Message<'_>, _: &mut Out) -> Outcome {
            match check(&message) {
                Ok(()) => Outcome::skip(),
                Err(r) => Outcome::dead_letter(r.reason),
            }
        }
    }

    const T: i64 = 1_714_573_800_000_000;

    fn good() -> TestMessage {
        TestMessage::new(0)
            .with("id", "AAPL")
            .with("price", 1.5)
            .with("event_time", Value::Timestamp(T))
            .with("ingestion_time", Value::Timestamp(T))
    }

    fn reason(m: TestMessage) -> Option<String> {
        let out = Harness::new()
            .run::<Checker>(&[], batch("t", 0, [m]))
            .unwrap();
        out.dead_letter(0).map(String::from)
    }

    #[test]
    fn reasons() {
        assert_eq!(reason(good()), None);
        let venue = "9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01";
        assert_eq!(reason(good().with("bid", 0.0).with("venue", venue)), None);
        assert_eq!(reason(good().with("bid", 1.5)), None);
        let cases: [(TestMessage, &str); 15] = [
            (
                good().with("id", Value::Null),
                "rule required: field id is null",
            ),
            (
                TestMessage::new(0).with("price", 1.0),
                "rule required: field id is missing",
            ),
            (
                good().with("id", 5i64),
                "rule type: field id is int, must be text",
            ),
            (
                good().with("id", "A\0"),
                "rule text_valid: field id holds a NUL character, which Postgres text cannot store",
            ),
            (
                good().with("price", "1"),
                "rule type: field price is text, must be a number",
            ),
            (
                good().with("event_time", "now"),
                "rule type: field event_time is text, must be a timestamp",
            ),
            (
                good().with("venue", 1i64),
                "rule type: field venue is int, must be text",
            ),
            (
                good().with("id", "ABCDE"),
                "rule id_short: field id is \"ABCDE\"",
            ),
            (
                good().with("price", -3.2),
                "rule price_positive: field price is -3.2, must be > 0",
            ),
            (
                good().with("price", f64::INFINITY),
                "rule price_positive: field price is inf, must be finite",
            ),
            (
                good().with("bid", -1.0),
                "rule bid_non_negative: field bid is -1, must be >= 0",
            ),
            (
                good().with("bid", 2.0),
                "rule bid_le_price: field bid is 2, must be <= price (1.5)",
            ),
            (
                good().with("venue", "X"),
                "rule venue_uuid: field venue is \"X\", must be a UUID like \
                 9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01",
            ),
            (
                good().with("event_time", Value::Timestamp(T + 6 * SECOND)),
                "rule max_future_skew: field event_time is 2024-05-01T14:30:06Z, 6s after \
                 ingestion_time 2024-05-01T14:30:00Z; max_future_skew is 5s",
            ),
            (
                good().with("event_time", Value::Timestamp(T - 2 * HOUR)),
                "rule max_lateness: field event_time is 2024-05-01T12:30:00Z, 2h before \
                 ingestion_time 2024-05-01T14:30:00Z; max_lateness is 1h",
            ),
        ];
        for (m, want) in cases {
            assert_eq!(reason(m).as_deref(), Some(want));
        }
        assert_eq!(
            reason(good().with("ingestion_time", Value::Timestamp(END_TIME))).as_deref(),
            Some(
                format!(
                    "rule time_range: field ingestion_time is {END_TIME} µs since 1970-01-01, \
                     must be within the years 0001 to 9999"
                )
                .as_str()
            )
        );
    }

    #[test]
    fn shown_cuts_at_64_characters() {
        let long: String = "é".repeat(70);
        assert_eq!(shown(&long), format!("{}…", "é".repeat(64)));
        assert_eq!(shown("short"), "short");
        assert_eq!(shown(&"a".repeat(64)), "a".repeat(64));
    }
}
