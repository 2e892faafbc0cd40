//! Named, read-only lookups the operator declares in the pipeline's config (`lookups:`),
//! the WIT's `lookup` interface: the guest gives a name and parameters, never SQL.
//!
//! A batch's lookups read one snapshot of the database; the host caches answers for the
//! batch, so asking again with the same name and parameters costs no query. Natively,
//! [`crate::testing::Harness`] answers them.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::{Decimal, Row, Value};

/// A lookup's answer: column names and rows.
pub use crate::bindings::weir::processor::lookup::Rows;

/// A lookup failed: a name the pipeline does not declare, parameters that do not fit, or
/// a query Postgres refused. The message is the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupError {
    /// The host's message.
    pub message: String,
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Runs the lookup `name` with `params` (`$1`, `$2`, … in its SQL).
pub fn query(name: &str, params: &[Value]) -> Result<Rows, LookupError> {
    crate::host::lookup_query(name, params).map_err(|message| LookupError { message })
}

impl Rows {
    /// An answer with these columns and rows (for tests and native harnesses).
    pub fn new<S: AsRef<str>>(columns: &[S], rows: Vec<Vec<Value>>) -> Self {
        Rows {
            columns: columns.iter().map(|c| String::from(c.as_ref())).collect(),
            rows,
        }
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no row matched.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The position of column `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// Row `i`.
    pub fn get(&self, i: usize) -> Option<RowRef<'_>> {
        self.rows.get(i).map(|values| RowRef {
            columns: &self.columns,
            values,
        })
    }

    /// The first row.
    pub fn first(&self) -> Option<RowRef<'_>> {
        self.get(0)
    }

    /// The rows, in order.
    pub fn iter(&self) -> impl Iterator<Item = RowRef<'_>> {
        self.rows.iter().map(|values| RowRef {
            columns: &self.columns,
            values,
        })
    }
}

/// One row of a lookup's answer, read by column name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowRef<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

impl<'a> RowRef<'a> {
    /// The value of column `name`.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        let i = self.columns.iter().position(|c| c == name)?;
        self.values.get(i)
    }

    /// Column `name`'s text, if it is text.
    pub fn text(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(Value::as_str)
    }

    /// Column `name` as a number (float, int or decimal).
    pub fn f64(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(Value::as_f64)
    }

    /// Column `name` as an integer, if it is one.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }

    /// Column `name` as a boolean, if it is one.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.get(name).and_then(Value::as_bool)
    }

    /// Column `name` as microseconds since the epoch, if it is a timestamp.
    pub fn timestamp(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_timestamp_micros)
    }

    /// Column `name`'s decimal, if it is one.
    pub fn decimal(&self, name: &str) -> Option<&'a Decimal> {
        self.get(name).and_then(Value::as_decimal)
    }

    /// The column names.
    pub fn columns(&self) -> &'a [String] {
        self.columns
    }

    /// The values, by column position.
    pub fn values(&self) -> &'a [Value] {
        self.values
    }

    /// Column names and values.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a Value)> + use<'a> {
        self.columns
            .iter()
            .map(String::as_str)
            .zip(self.values.iter())
    }

    /// The row as a [`Row`] to write or extend.
    pub fn to_row(&self) -> Row {
        self.iter().map(|(n, v)| (n, v.clone())).collect()
    }
}
