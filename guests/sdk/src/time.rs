//! Durations and instants as guests read and show them: microsecond units, duration
//! config values (`500ms`, `1h30m`, `off`), and RFC 3339 times and dates in UTC on the
//! proleptic Gregorian calendar.
//!
//! ```
//! use weir_guest::time::{MINUTE, SECOND, format_duration, format_time, parse_duration};
//!
//! assert_eq!(parse_duration("1m30s"), Ok(90 * SECOND));
//! assert_eq!(format_duration(2 * MINUTE), "2m");
//! assert_eq!(format_time(1_714_573_800_120_000), "2024-05-01T14:30:00.120Z");
//! ```

use alloc::format;
use alloc::string::String;

use crate::{Config, ConfigError};

/// Microseconds in a millisecond.
pub const MS: i64 = 1_000;
/// Microseconds in a second.
pub const SECOND: i64 = 1_000 * MS;
/// Microseconds in a minute.
pub const MINUTE: i64 = 60 * SECOND;
/// Microseconds in an hour.
pub const HOUR: i64 = 60 * MINUTE;
/// Microseconds in a day.
pub const DAY: i64 = 24 * HOUR;

/// The earliest time a Postgres `timestamptz` column takes from a guest as RFC 3339:
/// 0001-01-01T00:00:00Z, in microseconds since the epoch.
pub const MIN_TIME: i64 = -62_135_596_800 * SECOND;
/// The first time no longer accepted: 10000-01-01T00:00:00Z.
pub const END_TIME: i64 = 253_402_300_800 * SECOND;

/// Parses a duration: a number and a unit, or several (`1h30m`): `us`, `ms`, `s`, `m`,
/// `h`, `d`. `0` needs no unit. Returns microseconds; the error says what is wrong and
/// how to write one.
pub fn parse_duration(raw: &str) -> Result<i64, String> {
    const HINT: &str = "write a whole number and a unit: 500ms, 5s, 10m, 1h";
    let s = raw.trim();
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(format!("it is empty; {HINT}"));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(format!("expected a number at {:?}; {HINT}", &s[start..]));
        }
        let number: i64 = s[start..i]
            .parse()
            .map_err(|_| format!("{:?} is too large", &s[start..i]))?;
        let unit_start = i;
        while i < bytes.len() && !bytes[i].is_ascii_digit() {
            i += 1;
        }
        let unit = match &s[unit_start..i] {
            "us" | "µs" => 1,
            "ms" => MS,
            "s" => SECOND,
            "m" => MINUTE,
            "h" => HOUR,
            "d" => DAY,
            "" => return Err(format!("{:?} has no unit; {HINT}", &s[start..i])),
            other => {
                return Err(format!(
                    "unknown unit {other:?}; use us, ms, s, m, h or d ({HINT})"
                ));
            }
        };
        total = number
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?} is too long"))?;
    }
    Ok(total)
}

/// A duration in its largest whole unit: `1m`, `90s`, `1500ms`, `7us`; `0s` for none.
pub fn format_duration(micros: i64) -> String {
    if micros == 0 {
        return "0s".into();
    }
    for (unit, name) in [
        (DAY, "d"),
        (HOUR, "h"),
        (MINUTE, "m"),
        (SECOND, "s"),
        (MS, "ms"),
    ] {
        if micros % unit == 0 {
            return format!("{}{name}", micros / unit);
        }
    }
    format!("{micros}us")
}

/// The config value `key` as a duration ([`parse_duration`]), `default` when it is not
/// set. The error names the key: ``` `key` = "5x" is not a duration: … ```.
pub fn duration_key(config: &Config, key: &str, default: i64) -> Result<i64, ConfigError> {
    match config.get(key) {
        None => Ok(default),
        Some(raw) => parse_duration(raw)
            .map_err(|why| ConfigError::new(format!("`{key}` = {raw:?} is not a duration: {why}"))),
    }
}

/// A limit: as [`duration_key`], or `off` (surrounding white space allowed) for none,
/// which is `i64::MAX`.
pub fn limit_key(config: &Config, key: &str, default: i64) -> Result<i64, ConfigError> {
    match config.get(key) {
        Some(raw) if raw.trim() == "off" => Ok(i64::MAX),
        _ => duration_key(config, key, default),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `(year, month, day)` of a day number (days since
/// 1970-01-01), after Howard Hinnant's `civil_from_days`.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A day number (days since 1970-01-01) as `2024-06-21`.
pub fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// An instant (microseconds since the epoch) as RFC 3339 in UTC:
/// `2024-05-01T14:30:00.120Z` (a fraction only when there is one: milliseconds, or
/// microseconds when they are needed).
pub fn format_time(micros: i64) -> String {
    let days = micros.div_euclid(DAY);
    let in_day = micros.rem_euclid(DAY);
    let secs = in_day / SECOND;
    let frac = in_day % SECOND;
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = format!("{}T{h:02}:{mi:02}:{s:02}", format_date(days));
    if frac % MS == 0 && frac != 0 {
        out.push_str(&format!(".{:03}", frac / MS));
    } else if frac != 0 {
        out.push_str(&format!(".{frac:06}"));
    }
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (raw, us) in [
            ("500ms", 500 * 1000),
            ("5s", 5 * SECOND),
            ("10m", 10 * MINUTE),
            ("1h", HOUR),
            ("1h30m", 90 * MINUTE),
            (" 2d ", 2 * DAY),
            ("250us", 250),
            ("250µs", 250),
            ("0", 0),
            ("0s", 0),
        ] {
            assert_eq!(parse_duration(raw), Ok(us), "{raw}");
        }
        for bad in [
            "",
            "5",
            "s",
            "-5s",
            "1.5s",
            "5x",
            "99999999999999999999s",
            "1h 30m",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("5x"),
            Err("unknown unit \"x\"; use us, ms, s, m, h or d (write a whole number and a unit: 500ms, 5s, 10m, 1h)".into())
        );
        for (us, text) in [
            (0, "0s"),
            (MINUTE, "1m"),
            (90 * SECOND, "90s"),
            (1500 * 1000, "1500ms"),
            (DAY, "1d"),
            (7, "7us"),
        ] {
            assert_eq!(format_duration(us), text);
        }
    }

    #[test]
    fn duration_keys() {
        let config = Config::from_pairs([("a", " off "), ("b", "5x"), ("c", "2m")]);
        assert_eq!(limit_key(&config, "a", SECOND), Ok(i64::MAX));
        assert_eq!(limit_key(&config, "c", SECOND), Ok(2 * MINUTE));
        assert_eq!(limit_key(&config, "missing", SECOND), Ok(SECOND));
        assert_eq!(duration_key(&config, "c", SECOND), Ok(2 * MINUTE));
        assert!(duration_key(&config, "a", SECOND).is_err());
        let err = limit_key(&config, "b", SECOND).unwrap_err();
        assert!(
            err.message()
                .starts_with("`b` = \"5x\" is not a duration: unknown unit"),
            "{err}"
        );
    }

    #[test]
    fn times() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_time(1_714_573_800_120_000),
            "2024-05-01T14:30:00.120Z"
        );
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(format_time(951_782_400 * SECOND), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(MIN_TIME), "0001-01-01T00:00:00Z");
        assert_eq!(format_time(END_TIME - 1), "9999-12-31T23:59:59.999999Z");
    }

    #[test]
    fn dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 6, 21), 19_895);
        assert_eq!(format_date(19_895), "2024-06-21");
        for days in [-719_162, -1, 0, 59, 60, 19_895, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
