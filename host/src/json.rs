//! JSON read strictly. serde_json keeps the last of two equal keys in an object and lets a
//! caller skip strings without checking their UTF-8; here a key given twice, invalid
//! UTF-8 anywhere, and a number too large for a float (`1e400`) are errors that say what
//! and where (the member's path and the position), so an input cannot mean one thing to
//! weir and another to the next reader.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a text is not strict JSON, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    path: String,
    line: usize,
    column: usize,
}

impl Error {
    /// What is wrong, without the position.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The member at fault, like `quote.bid` or `items[2]`; empty for the top level. A
    /// duplicate key's path is the object holding it (the message names the key).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The 1-based line of the text, 0 when the error has no position (invalid UTF-8).
    pub fn line(&self) -> usize {
        self.line
    }

    /// The 1-based column in that line.
    pub fn column(&self) -> usize {
        self.column
    }

    /// The error said of one line of a JSON lines file, whose number the caller gives: the
    /// field at fault, what is wrong, and the column.
    pub fn in_line(&self) -> String {
        let field = match self.path.as_str() {
            "" => String::new(),
            path => format!("field `{path}`: "),
        };
        match self.column {
            0 => format!("{field}{}", self.message),
            column => format!("{field}{} (column {column})", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if self.line > 0 {
            write!(f, " at line {} column {}", self.line, self.column)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Parses `bytes` as one JSON value, strictly.
pub fn from_slice(bytes: &[u8]) -> Result<Value, Error> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error {
        message: format!("not valid UTF-8: {e}"),
        path: String::new(),
        line: 0,
        column: 0,
    })?;
    from_str(text)
}

/// Parses `text` as one JSON value, strictly.
pub fn from_str(text: &str) -> Result<Value, Error> {
    let path = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict { path: &path }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    value.map_err(|e| {
        // serde_json puts the position at the end of its message; it is kept apart here.
        let full = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        let mut message = full.strip_suffix(&position).unwrap_or(&full).to_string();
        if message == "number out of range"
            && let Some(literal) = number_before(text, e.line(), e.column())
        {
            message = format!("the number {literal} is out of range for a 64-bit float");
        }
        Error {
            message,
            path: render_path(&path.borrow()),
            line: e.line(),
            column: e.column(),
        }
    })
}

/// The number literal ending at 1-based `line` and byte `column` of `text` (where
/// serde_json reports a number out of range), shortened when long.
fn number_before(text: &str, line: usize, column: usize) -> Option<String> {
    let line = text.split('\n').nth(line.checked_sub(1)?)?.as_bytes();
    let head = line.get(..column)?;
    let start = head
        .iter()
        .rposition(|b| !matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
        .map_or(0, |i| i + 1);
    let literal = std::str::from_utf8(&head[start..]).ok()?;
    Some(match literal.len() {
        0 => return None,
        n if n > 40 => format!("{}…{} ({n} characters)", &literal[..16], &literal[n - 8..]),
        _ => literal.to_string(),
    })
}

/// One step into a value: an object's key or an array's index.
enum Step {
    Key(String),
    Index(usize),
}

fn render_path(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Builds a [`Value`], refusing duplicate keys and non-finite numbers. `path` holds the
/// steps to the value being read; on an error it is left where the error arose.
#[derive(Clone, Copy)]
struct Strict<'p> {
    path: &'p RefCell<Vec<Step>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("the number {v} is not finite")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            self.path.borrow_mut().push(Step::Index(items.len()));
            let item = seq.next_element_seed(self)?;
            self.path.borrow_mut().pop();
            match item {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "the key {key:?} appears twice in one object"
                )));
            }
            self.path.borrow_mut().push(Step::Key(key));
            let value = map.next_value_seed(self)?;
            let Some(Step::Key(key)) = self.path.borrow_mut().pop() else {
                unreachable!("pushed above")
            };
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_invalid_utf8_and_huge_numbers_are_errors() {
        assert_eq!(
            from_str(r#"{"a": [1, 2.5, {"b": null}], "c": "x"}"#).unwrap(),
            serde_json::json!({"a": [1, 2.5, {"b": null}], "c": "x"})
        );
        let e = from_str(r#"{"type": "record", "type": "string"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"the key "type" appears twice in one object at line 1 column 25"#
        );
        let e = from_str(r#"[{"a": {"x": 1, "x": 2}}]"#).unwrap_err();
        assert_eq!(
            (e.path(), e.message()),
            ("[0].a", r#"the key "x" appears twice in one object"#)
        );
        let e = from_slice(b"{\"metadata\": \"\xff\xfe\"}").unwrap_err();
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
        let e = from_str("{\"q\": {\"bid\": 1,\n \"ask\": [2, 1e400]}}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "q.ask[1]: the number 1e400 is out of range for a 64-bit float at line 2 column 17"
        );
        let long = format!("[-{}]", "9".repeat(400));
        let e = from_str(&long).unwrap_err();
        assert_eq!(
            e.message(),
            "the number -999999999999999…99999999 (401 characters) is out of range for a 64-bit float"
        );
        assert!(from_str("{} {}").is_err(), "one value only");
    }
}
