//! The pipeline's per-guest config values.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use crate::ConfigEntry;

/// The config values the pipeline gives this guest (`weir.yaml`, `guest_config`), as text.
#[derive(Debug, Clone, Default)]
pub struct Config {
    entries: Vec<(String, String)>,
}

/// A config value is missing or does not parse. Its message names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    /// A config error with this message; say which key and why.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl ConfigError {
    /// The message, without the `invalid guest config: ` prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid guest config: {}", self.message)
    }
}

impl Config {
    /// A config from the entries `init` receives.
    pub fn from_entries(entries: Vec<ConfigEntry>) -> Self {
        Self {
            entries: entries.into_iter().map(|e| (e.key, e.value)).collect(),
        }
    }

    /// A config from key/value pairs, for tests.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            entries: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or an error naming it.
    pub fn require(&self, key: &str) -> Result<&str, ConfigError> {
        self.get(key)
            .ok_or_else(|| ConfigError::new(alloc::format!("`{key}` is required")))
    }

    /// The value of `key` parsed as `T`, or `default` when unset.
    pub fn parse_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|e| {
                ConfigError::new(alloc::format!("`{key}` = {raw:?} does not parse: {e}"))
            }),
        }
    }

    /// The value of `key` parsed as `T`; an error naming the key when it is unset or does
    /// not parse.
    pub fn require_parse<T: FromStr>(&self, key: &str) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        let raw = self.require(key)?;
        raw.trim()
            .parse()
            .map_err(|e| ConfigError::new(alloc::format!("`{key}` = {raw:?} does not parse: {e}")))
    }

    /// The number of key/value pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no value is set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All key/value pairs, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_require_parse() {
        let c = Config::from_pairs([("table", "ticks"), ("skew_ms", "500"), ("bad", "x")]);
        assert_eq!(c.get("table"), Some("ticks"));
        assert_eq!(c.require("table").unwrap(), "ticks");
        assert_eq!(
            c.require("nope").unwrap_err().to_string(),
            "invalid guest config: `nope` is required"
        );
        assert_eq!(c.parse_or("skew_ms", 0u64).unwrap(), 500);
        assert_eq!(c.parse_or("unset", 7u64).unwrap(), 7);
        let err = c.parse_or("bad", 0u64).unwrap_err().to_string();
        assert!(err.contains("`bad` = \"x\" does not parse"), "{err}");
        assert_eq!(c.require_parse::<u64>("skew_ms").unwrap(), 500);
        let err = c.require_parse::<f64>("bad").unwrap_err().to_string();
        assert!(
            err.starts_with("invalid guest config: `bad` = \"x\" does not parse: "),
            "{err}"
        );
        assert_eq!(
            c.require_parse::<f64>("unset").unwrap_err().to_string(),
            "invalid guest config: `unset` is required"
        );
    }
}
