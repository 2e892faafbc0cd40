//! Typed values in the configuration file: durations (`200ms`, `5s`), byte sizes (`64MiB`)
//! and string maps whose values may be written as plain YAML scalars.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::source::SubjectStrategy;

/// Parses a byte size: `512`, `64KiB`, `128MiB`, `1GiB` (also `K`, `M`, `G`, `KB`…, all
/// powers of 1024).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (like 512, 64KiB, 128MiB, 1GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => {
            return Err(format!(
                "{text:?}: unknown size unit {other:?} (use KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a duration: `500ms`, `5s`, `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration (like 500ms, 5s, 1m): {e}"))
}

/// Writes a byte size the way [`parse_size`] reads it, in the largest exact unit.
pub fn format_size(bytes: usize) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// Deserializes a duration written with a unit (`"200ms"`, `5s`).
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration like 200ms, 5s or 1m")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "the duration {v} has no unit; write {v}ms or {v}s"
            )))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "the duration {v} has no unit; write it like 200ms or 5s"
            )))
        }
    }
    d.deserialize_any(V)
}

/// Deserializes a byte size: a number of bytes or a string with a unit (`64MiB`).
pub(super) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a size like 512KiB, 64MiB or 1GiB")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
            parse_size(v).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("{v} bytes is too large")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("{v} is not a size")))
        }
    }
    d.deserialize_any(V)
}

/// A YAML scalar read as its text: strings as they are, numbers and booleans printed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.into()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Deserializes a map of strings whose values (and keys) may be any YAML scalar; numbers
/// and booleans become their text (`45000` → `"45000"`).
pub(super) fn string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let map = BTreeMap::<Scalar, Scalar>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k.0, v.0)).collect())
}

/// Deserializes a pipeline's `subjects:`: `topic`, `record`, `topic_record`, or a list of
/// subject names.
pub(super) fn subjects<'de, D: Deserializer<'de>>(d: D) -> Result<SubjectStrategy, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = SubjectStrategy;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("topic, record, topic_record, or a list of subject names")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<SubjectStrategy, E> {
            match v.trim() {
                "topic" => Ok(SubjectStrategy::Topic),
                "record" => Ok(SubjectStrategy::Record),
                "topic_record" => Ok(SubjectStrategy::TopicRecord),
                other => Err(E::custom(format!(
                    "unknown subject strategy {other:?}: use topic (<topic>-value), record (the record's full name), topic_record (<topic>-<record name>), or a list of subjects"
                ))),
            }
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<SubjectStrategy, A::Error> {
            let mut subjects = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                if s.trim().is_empty() {
                    return Err(de::Error::custom("a subject name is empty"));
                }
                subjects.push(s);
            }
            if subjects.is_empty() {
                return Err(de::Error::custom("the list of subjects is empty"));
            }
            Ok(SubjectStrategy::Subjects(subjects))
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("128 MiB"), Ok(128 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(
            parse_size("3 parsecs")
                .unwrap_err()
                .contains("unknown size unit")
        );
    }

    #[test]
    fn sizes_format_in_the_largest_exact_unit() {
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(512 << 10), "512KiB");
        assert_eq!(format_size(1000), "1000 bytes");
        assert_eq!(format_size(0), "0 bytes");
    }

    #[test]
    fn typed_values_deserialize() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "duration")]
            d: Duration,
            #[serde(deserialize_with = "size")]
            s: usize,
            #[serde(deserialize_with = "size")]
            n: usize,
            #[serde(deserialize_with = "string_map")]
            m: BTreeMap<String, String>,
        }
        let t: T =
            serde_yaml::from_str("d: 200ms\ns: 64MiB\nn: 4096\nm: {a: 1, b: true, c: x, 5: 1.5}\n")
                .unwrap();
        assert_eq!(t.d, Duration::from_millis(200));
        assert_eq!(t.s, 64 << 20);
        assert_eq!(t.n, 4096);
        let m: Vec<_> = t.m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(m, [("5", "1.5"), ("a", "1"), ("b", "true"), ("c", "x")]);

        let err = serde_yaml::from_str::<T>("d: 200\ns: 1\nn: 1\nm: {}\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("has no unit; write 200ms or 200s"), "{err}");
        let err = serde_yaml::from_str::<T>("d: 1s\ns: 1\nn: 1\nm: {a: [1]}\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("expected a string, number or boolean"),
            "{err}"
        );
    }
}
