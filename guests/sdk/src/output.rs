//! Building a call's output: targets declared once, rows by position, and a by-name path
//! for simple guests.
//!
//! A 0.2.0 output names each table's columns once per call, in `output.tables`; every row
//! gives its values by position in its target's columns. [`Out`] keeps those targets:
//!
//! - [`Out::table`] (or [`Out::insert`], [`Out::upsert`]) declares a target and returns a
//!   [`Table`], a copyable handle whose [`Table::row`] makes a row action from values in
//!   column order. Declaring the same table, columns and write mode again returns the same
//!   handle, so a guest may declare where it writes; a fast one declares once per call.
//! - [`Out::fields_table`] is the target whose columns are a writer schema's field names
//!   (plus extra columns), cached per schema: a message's values move into a row with
//!   [`Message::into_values`] and no per-message name work ([`Out::fields_row`]).
//! - [`Out::write`] takes a [`Row`] of name/value pairs and finds (or declares) the
//!   target with those column names: convenient, at the price of hashing the names.
//!
//! Upsert keys and merge policies are given by column name ([`Write`], [`Merge`]) and
//! converted to the positions the WIT wants. Mistakes there (a key or policy column that is
//! not a column, a column named twice) are bugs in the guest and panic, which fails the
//! call with the message.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;
use core::hash::{BuildHasher, Hash, Hasher};

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::input::{Message, WriterSchema};
use crate::{Action, EmitValue, Header, MergePolicy, Outcome, Output, Target, Value, wit};

/// How a merge-upsert combines a column's incoming value with the stored one: the WIT's
/// `merge-policy`, with the time column named instead of given by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge<'a> {
    /// Take the incoming value.
    Replace,
    /// Keep the smaller (null never wins over a value).
    Min,
    /// Keep the larger (null never wins over a value).
    Max,
    /// Add the incoming value to the stored one (null never wins over a value).
    Sum,
    /// Keep the value whose time, in this timestamp column, is the earlier (an open
    /// price). On equal times the stored value stays.
    FirstByTime(&'a str),
    /// Keep the value whose time, in this timestamp column, is the later (a close price).
    /// On equal times the incoming value wins.
    LastByTime(&'a str),
}

impl<'a> Merge<'a> {
    /// The WIT policy, with time columns resolved to positions in `columns`.
    ///
    /// # Panics
    ///
    /// When a time column is not among `columns`.
    pub fn to_policy(self, table: &str, columns: &[impl AsRef<str>]) -> MergePolicy {
        let at = |name: &str| match columns.iter().position(|c| c.as_ref() == name) {
            Some(p) => p as u32,
            None => panic!("merge policy time column `{name}` is not a column of target `{table}`"),
        };
        match self {
            Merge::Replace => MergePolicy::Replace,
            Merge::Min => MergePolicy::Min,
            Merge::Max => MergePolicy::Max,
            Merge::Sum => MergePolicy::Sum,
            Merge::FirstByTime(c) => MergePolicy::FirstByTime(at(c)),
            Merge::LastByTime(c) => MergePolicy::LastByTime(at(c)),
        }
    }

    /// The policy `policy` of a target with these `columns`, time columns by name (none when
    /// a position is out of range).
    pub fn from_policy(policy: &MergePolicy, columns: &'a [String]) -> Option<Self> {
        let name = |p: u32| columns.get(p as usize).map(String::as_str);
        Some(match policy {
            MergePolicy::Replace => Merge::Replace,
            MergePolicy::Min => Merge::Min,
            MergePolicy::Max => Merge::Max,
            MergePolicy::Sum => Merge::Sum,
            MergePolicy::FirstByTime(p) => Merge::FirstByTime(name(*p)?),
            MergePolicy::LastByTime(p) => Merge::LastByTime(name(*p)?),
        })
    }
}

/// How a target's rows are written, columns by name: the WIT's `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write<'a> {
    /// Append each row; columns the target does not name get their default.
    Insert,
    /// Insert each row, or merge it into the stored row with the same key.
    Upsert {
        /// The key columns (at least one): the table must have a unique index on exactly
        /// these, and no key value may be null.
        key: &'a [&'a str],
        /// Merge policy per non-key column; a non-key column not listed is replaced.
        policies: &'a [(&'a str, Merge<'a>)],
    },
}

impl Write<'_> {
    /// The WIT form, with columns resolved to positions in `columns`.
    ///
    /// # Panics
    ///
    /// When a key or policy column is not among `columns`, the key is empty, a policy
    /// names a key column or a column has two policies.
    pub fn to_wit(&self, table: &str, columns: &[impl AsRef<str>]) -> wit::Write {
        match self {
            Write::Insert => wit::Write::Insert,
            Write::Upsert { key, policies } => {
                let at = |what: &str, name: &str| match columns
                    .iter()
                    .position(|c| c.as_ref() == name)
                {
                    Some(p) => p as u32,
                    None => panic!("{what} `{name}` is not a column of target `{table}`"),
                };
                assert!(
                    !key.is_empty(),
                    "upsert target `{table}` needs at least one key column"
                );
                let key: Vec<u32> = key.iter().map(|k| at("upsert key column", k)).collect();
                let mut out: Vec<wit::ColumnPolicy> = Vec::with_capacity(policies.len());
                for (column, policy) in policies.iter() {
                    let p = at("merge policy column", column);
                    assert!(
                        !key.contains(&p),
                        "merge policy column `{column}` of target `{table}` is a key column"
                    );
                    assert!(
                        !out.iter().any(|c| c.column == p),
                        "merge policy column `{column}` of target `{table}` has two policies"
                    );
                    out.push(wit::ColumnPolicy {
                        column: p,
                        policy: policy.to_policy(table, columns),
                    });
                }
                wit::Write::Upsert(wit::Upsert { key, policies: out })
            }
        }
    }
}

/// A target declared in an [`Out`]: its position in `output.tables` and its number of
/// columns. Cheap to copy; valid only for the [`Out`] that declared it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Table {
    index: u32,
    width: u32,
}

impl Table {
    /// Position of the target in `output.tables`.
    pub fn index(self) -> u32 {
        self.index
    }

    /// The number of columns, which every row must give.
    pub fn width(self) -> usize {
        self.width as usize
    }

    /// A row of this target from values in column order.
    ///
    /// # Panics
    ///
    /// When `values` does not have one value per column.
    pub fn row(self, values: Vec<Value>) -> Action {
        assert_eq!(
            values.len(),
            self.width as usize,
            "a row of target #{} has {} values for {} columns",
            self.index,
            values.len(),
            self.width
        );
        Action::Write(wit::Row {
            target: self.index,
            values,
        })
    }
}

/// Field names declared in `output.layouts` for emitted values. Cheap to copy; valid only
/// for the [`Out`] that declared it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    index: u32,
    width: u32,
}

impl Layout {
    /// Position in `output.layouts`.
    pub fn index(self) -> u32 {
        self.index
    }

    /// The number of field names, which every emitted value must give.
    pub fn width(self) -> usize {
        self.width as usize
    }
}

/// A row under construction by column name: names and values, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    names: Vec<String>,
    values: Vec<Value>,
}

impl Row {
    /// An empty row.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty row with room for `n` columns.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            names: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
        }
    }

    /// This row with column `name` set to `value`.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.set(name, value);
        self
    }

    /// Sets column `name`, replacing its value if it is already set.
    pub fn set(&mut self, name: &str, value: impl Into<Value>) {
        match self.names.iter().position(|n| n == name) {
            Some(i) => self.values[i] = value.into(),
            None => self.push(name, value),
        }
    }

    /// Appends column `name` without looking for an earlier one (the caller knows it is
    /// new; a column named twice panics when the row is written).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<Value>) {
        self.names.push(name.into());
        self.values.push(value.into());
    }

    /// The value of column `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(&self.values[i])
    }

    /// Removes column `name`, returning its value.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        let i = self.names.iter().position(|n| n == name)?;
        self.names.remove(i);
        Some(self.values.remove(i))
    }

    /// The column names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// Names and values.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.values.iter())
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True for a row without columns.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names and the values.
    pub fn into_parts(self) -> (Vec<String>, Vec<Value>) {
        (self.names, self.values)
    }
}

impl<S: Into<String>, V: Into<Value>> FromIterator<(S, V)> for Row {
    fn from_iter<I: IntoIterator<Item = (S, V)>>(iter: I) -> Self {
        let mut row = Row::new();
        for (n, v) in iter {
            row.push(n, v);
        }
        row
    }
}

/// A message to produce, under construction. Turn it into an action with `.into()` or
/// [`Emit::action`].
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    message: wit::EmitMessage,
}

impl Emit {
    fn new(topic: impl Into<String>, value: EmitValue) -> Self {
        Self {
            message: wit::EmitMessage {
                topic: topic.into(),
                partition: None,
                key: None,
                headers: Vec::new(),
                value,
            },
        }
    }

    /// These bytes to `topic`, as they are.
    pub fn raw(topic: impl Into<String>, value: Vec<u8>) -> Self {
        Self::new(topic, EmitValue::Raw(value))
    }

    /// A tombstone (null value) to `topic`.
    pub fn tombstone(topic: impl Into<String>) -> Self {
        Self::new(topic, EmitValue::Tombstone)
    }

    /// Values by position in `layout`'s field names, Avro-encoded by the host with the
    /// latest schema of the subject `<topic>-value`.
    ///
    /// # Panics
    ///
    /// When `values` does not have one value per field name.
    pub fn fields(topic: impl Into<String>, layout: Layout, values: Vec<Value>) -> Self {
        assert_eq!(
            values.len(),
            layout.width as usize,
            "an emitted value of layout #{} has {} values for {} fields",
            layout.index,
            values.len(),
            layout.width
        );
        Self::new(
            topic,
            EmitValue::Fields(wit::EmitFields {
                layout: layout.index,
                values,
            }),
        )
    }

    /// With this record key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.message.key = Some(key.into());
        self
    }

    /// To this partition (by default Kafka's partitioner chooses from the key).
    pub fn partition(mut self, partition: i32) -> Self {
        self.message.partition = Some(partition);
        self
    }

    /// With this header added (a `None` value is a null header value).
    pub fn header(mut self, key: impl Into<String>, value: Option<Vec<u8>>) -> Self {
        self.message.headers.push(Header {
            key: key.into(),
            value,
        });
        self
    }

    /// The action that produces it.
    pub fn action(self) -> Action {
        Action::Emit(self.message)
    }
}

impl From<Emit> for Action {
    fn from(e: Emit) -> Self {
        e.action()
    }
}

/// The targets of one schema, per (table, extra columns), for [`Out::fields_table`].
#[derive(Debug)]
struct SchemaTables {
    table: String,
    extra: Vec<String>,
    /// Per schema index.
    tables: Vec<Option<Table>>,
    /// A tombstone's (no schema, no fields).
    tombstone: Option<Table>,
}

/// The output of one call under construction: declared targets and layouts. The SDK makes
/// one per call and turns it into the WIT `output` with the outcomes.
#[derive(Debug)]
pub struct Out {
    targets: Vec<Target>,
    target_index: HashTable<u32>,
    layouts: Vec<Vec<String>>,
    layout_index: HashTable<u32>,
    schema_tables: Vec<SchemaTables>,
    hasher: DefaultHashBuilder,
}

impl Default for Out {
    fn default() -> Self {
        Self::new()
    }
}

fn hash_target<'s>(
    hasher: &DefaultHashBuilder,
    table: &str,
    columns: impl Iterator<Item = &'s str>,
) -> u64 {
    let mut h = hasher.build_hasher();
    table.hash(&mut h);
    for c in columns {
        c.hash(&mut h);
    }
    h.finish()
}

fn hash_layout<'s>(hasher: &DefaultHashBuilder, names: impl Iterator<Item = &'s str>) -> u64 {
    let mut h = hasher.build_hasher();
    for n in names {
        n.hash(&mut h);
    }
    h.finish()
}

fn same_names<'s>(stored: &[String], names: impl ExactSizeIterator<Item = &'s str>) -> bool {
    stored.len() == names.len() && stored.iter().zip(names).all(|(a, b)| a == b)
}

impl Out {
    /// An output with nothing declared.
    pub fn new() -> Self {
        Self {
            targets: Vec::new(),
            target_index: HashTable::new(),
            layouts: Vec::new(),
            layout_index: HashTable::new(),
            schema_tables: Vec::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    fn find_target<'s>(
        &self,
        table: &str,
        columns: impl ExactSizeIterator<Item = &'s str> + Clone,
        write: &wit::Write,
    ) -> (u64, Option<Table>) {
        let hash = hash_target(&self.hasher, table, columns.clone());
        let targets = &self.targets;
        let found = self.target_index.find(hash, |&i| {
            let t = &targets[i as usize];
            t.table == table && same_names(&t.columns, columns.clone()) && t.write == *write
        });
        let table = found.map(|&i| Table {
            index: i,
            width: targets[i as usize].columns.len() as u32,
        });
        (hash, table)
    }

    fn declare(&mut self, hash: u64, target: Target) -> Table {
        for (i, c) in target.columns.iter().enumerate() {
            assert!(
                !target.columns[..i].contains(c),
                "column `{c}` is named twice in target `{}`",
                target.table
            );
        }
        let index = self.targets.len() as u32;
        let width = target.columns.len() as u32;
        self.targets.push(target);
        let (targets, hasher) = (&self.targets, &self.hasher);
        self.target_index.insert_unique(hash, index, |&i| {
            let t = &targets[i as usize];
            hash_target(hasher, &t.table, t.columns.iter().map(String::as_str))
        });
        Table { index, width }
    }

    /// Declares the target `table` with these columns and write mode (or finds the one
    /// declared so), and returns its handle.
    ///
    /// # Panics
    ///
    /// When a column is named twice, or `write` names a column that is not one (see
    /// [`Write::to_wit`]).
    pub fn table<S: AsRef<str>>(&mut self, table: &str, columns: &[S], write: Write<'_>) -> Table {
        let write = write.to_wit(table, columns);
        let names = columns.iter().map(AsRef::as_ref);
        match self.find_target(table, names, &write) {
            (_, Some(t)) => t,
            (hash, None) => self.declare(
                hash,
                Target {
                    table: table.to_owned(),
                    columns: columns.iter().map(|c| c.as_ref().to_owned()).collect(),
                    write,
                },
            ),
        }
    }

    /// [`Out::table`] with [`Write::Insert`].
    pub fn insert<S: AsRef<str>>(&mut self, table: &str, columns: &[S]) -> Table {
        self.table(table, columns, Write::Insert)
    }

    /// [`Out::table`] with [`Write::Upsert`]: merge rows by `key`, each listed column by its
    /// policy (others are replaced).
    pub fn upsert<S: AsRef<str>>(
        &mut self,
        table: &str,
        columns: &[S],
        key: &[&str],
        policies: &[(&str, Merge<'_>)],
    ) -> Table {
        self.table(table, columns, Write::Upsert { key, policies })
    }

    /// The insert target of `table` whose columns are the field names of `schema` (none: a
    /// tombstone's, without fields) followed by `extra`, cached per schema: finding it
    /// again for the next message of the same schema compares the table and the extra
    /// names, never the fields.
    ///
    /// # Panics
    ///
    /// When an extra column is also a field of the schema.
    pub fn fields_table(
        &mut self,
        table: &str,
        schema: Option<&WriterSchema>,
        extra: &[&str],
    ) -> Table {
        let entry = match self
            .schema_tables
            .iter()
            .position(|e| e.table == table && same_names(&e.extra, extra.iter().copied()))
        {
            Some(e) => e,
            None => {
                self.schema_tables.push(SchemaTables {
                    table: table.to_owned(),
                    extra: extra.iter().map(|&e| e.to_owned()).collect(),
                    tables: Vec::new(),
                    tombstone: None,
                });
                self.schema_tables.len() - 1
            }
        };
        let cached = {
            let e = &self.schema_tables[entry];
            match schema {
                Some(s) => e.tables.get(s.index() as usize).copied().flatten(),
                None => e.tombstone,
            }
        };
        if let Some(t) = cached {
            return t;
        }
        let mut columns: Vec<&str> = schema.map(|s| s.names().collect()).unwrap_or_default();
        columns.extend_from_slice(extra);
        let t = self.insert(table, &columns);
        let e = &mut self.schema_tables[entry];
        match schema {
            Some(s) => {
                let slot = s.index() as usize;
                if e.tables.len() <= slot {
                    e.tables.resize(slot + 1, None);
                }
                e.tables[slot] = Some(t);
            }
            None => e.tombstone = Some(t),
        }
        t
    }

    /// The message's fields as one row of `table` (its values moved, no name work after
    /// the first message of its schema), through [`Out::fields_table`].
    pub fn fields_row(&mut self, table: &str, message: Message<'_>) -> Action {
        let t = self.fields_table(table, message.schema(), &[]);
        t.row(message.into_values())
    }

    /// A row of `table` by column name, inserted: the target with exactly these column
    /// names, in this order, is found (or declared) by hashing them.
    pub fn write(&mut self, table: &str, row: Row) -> Action {
        self.write_as(table, row, Write::Insert)
    }

    /// A row of `table` by column name, merge-upserted by `key` with these policies.
    pub fn write_upsert(
        &mut self,
        table: &str,
        row: Row,
        key: &[&str],
        policies: &[(&str, Merge<'_>)],
    ) -> Action {
        self.write_as(table, row, Write::Upsert { key, policies })
    }

    /// A row of `table` by column name, written as `write` says.
    pub fn write_as(&mut self, table: &str, row: Row, write: Write<'_>) -> Action {
        let (names, values) = row.into_parts();
        let wit_write = write.to_wit(table, &names);
        let t = match self.find_target(table, names.iter().map(String::as_str), &wit_write) {
            (_, Some(t)) => t,
            (hash, None) => self.declare(
                hash,
                Target {
                    table: table.to_owned(),
                    columns: names,
                    write: wit_write,
                },
            ),
        };
        t.row(values)
    }

    /// Declares the field names of emitted values (or finds the same list declared).
    pub fn layout<S: AsRef<str>>(&mut self, names: &[S]) -> Layout {
        let it = names.iter().map(AsRef::as_ref);
        let hash = hash_layout(&self.hasher, it.clone());
        let layouts = &self.layouts;
        if let Some(&i) = self
            .layout_index
            .find(hash, |&i| same_names(&layouts[i as usize], it.clone()))
        {
            return Layout {
                index: i,
                width: names.len() as u32,
            };
        }
        let index = self.layouts.len() as u32;
        self.layouts
            .push(names.iter().map(|n| n.as_ref().to_owned()).collect());
        let (layouts, hasher) = (&self.layouts, &self.hasher);
        self.layout_index.insert_unique(hash, index, |&i| {
            hash_layout(hasher, layouts[i as usize].iter().map(String::as_str))
        });
        Layout {
            index,
            width: names.len() as u32,
        }
    }

    /// A message to `topic` whose value is `row`'s fields by name (the layout found or
    /// declared by hashing the names).
    pub fn emit_row(&mut self, topic: impl Into<String>, row: Row) -> Emit {
        let (names, values) = row.into_parts();
        let layout = self.layout(&names);
        Emit::fields(topic, layout, values)
    }

    /// The targets declared so far, in `output.tables` order.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The columns of a declared target.
    pub fn columns(&self, table: Table) -> &[String] {
        &self.targets[table.index as usize].columns
    }

    /// The WIT output: the declared targets and layouts, with these outcomes.
    pub fn finish(self, outcomes: Vec<Outcome>) -> Output {
        Output {
            tables: self.targets,
            layouts: self.layouts,
            outcomes,
        }
    }
}

impl Outcome {
    /// Apply these actions.
    pub fn actions(actions: Vec<Action>) -> Self {
        Outcome::Actions(actions)
    }

    /// Apply this one action.
    pub fn one(action: impl Into<Action>) -> Self {
        Outcome::Actions(alloc::vec![action.into()])
    }

    /// Drop the message: nothing to do (a filtered event, a duplicate).
    pub fn skip() -> Self {
        Outcome::Actions(Vec::new())
    }

    /// Send the message to `dead_letters` with this reason; name the rule and the field.
    pub fn dead_letter(reason: impl Into<String>) -> Self {
        Outcome::DeadLetter(reason.into())
    }

    /// The reason, if this is a dead letter.
    pub fn dead_letter_reason(&self) -> Option<&str> {
        match self {
            Outcome::DeadLetter(r) => Some(r),
            Outcome::Actions(_) => None,
        }
    }

    /// The actions, unless this is a dead letter.
    pub fn actions_ref(&self) -> Option<&[Action]> {
        match self {
            Outcome::Actions(a) => Some(a),
            Outcome::DeadLetter(_) => None,
        }
    }

    /// The actions, mutably (to add one), unless this is a dead letter.
    pub fn actions_mut(&mut self) -> Option<&mut Vec<Action>> {
        match self {
            Outcome::Actions(a) => Some(a),
            Outcome::DeadLetter(_) => None,
        }
    }
}

impl Target {
    /// The position of column `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// True for an upsert target.
    pub fn is_upsert(&self) -> bool {
        matches!(self.write, wit::Write::Upsert(_))
    }

    /// The key columns of an upsert target, by name (empty for an insert target).
    pub fn key_columns(&self) -> Vec<&str> {
        match &self.write {
            wit::Write::Insert => Vec::new(),
            wit::Write::Upsert(u) => u
                .key
                .iter()
                .filter_map(|&k| self.columns.get(k as usize).map(String::as_str))
                .collect(),
        }
    }

    /// The merge policies of an upsert target as given, columns by name.
    pub fn merge_policies(&self) -> Vec<(&str, Merge<'_>)> {
        match &self.write {
            wit::Write::Insert => Vec::new(),
            wit::Write::Upsert(u) => u
                .policies
                .iter()
                .filter_map(|p| {
                    let column = self.columns.get(p.column as usize)?;
                    Some((
                        column.as_str(),
                        Merge::from_policy(&p.policy, &self.columns)?,
                    ))
                })
                .collect(),
        }
    }

    /// The policy column `name` merges by: its listed policy, or replace. None for a key
    /// column, a column the target does not have, or an insert target.
    pub fn merge_of(&self, name: &str) -> Option<Merge<'_>> {
        let wit::Write::Upsert(u) = &self.write else {
            return None;
        };
        let p = self.position(name)? as u32;
        if u.key.contains(&p) {
            return None;
        }
        Some(
            u.policies
                .iter()
                .find(|c| c.column == p)
                .and_then(|c| Merge::from_policy(&c.policy, &self.columns))
                .unwrap_or(Merge::Replace),
        )
    }
}

/// A row of an [`Output`], resolved against its target: for reading outputs in tests and
/// tools.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Written<'a> {
    /// The index of the outcome (the message) whose action it is.
    pub message: usize,
    /// Its target.
    pub target: &'a Target,
    /// Its values, by position in the target's columns.
    pub values: &'a [Value],
}

impl<'a> Written<'a> {
    /// The table written to.
    pub fn table(&self) -> &'a str {
        &self.target.table
    }

    /// The value of column `name`.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.values.get(self.target.position(name)?)
    }

    /// The column names.
    pub fn columns(&self) -> Vec<&'a str> {
        self.target.columns.iter().map(String::as_str).collect()
    }

    /// The row by name.
    pub fn row(&self) -> Row {
        self.target
            .columns
            .iter()
            .cloned()
            .zip(self.values.iter().cloned())
            .collect()
    }
}

impl Output {
    /// The rows written by outcome `i`, in order (none for a dead letter).
    pub fn written(&self, i: usize) -> Vec<Written<'_>> {
        let mut out = Vec::new();
        if let Some(Outcome::Actions(actions)) = self.outcomes.get(i) {
            for a in actions {
                if let Action::Write(row) = a
                    && let Some(target) = self.tables.get(row.target as usize)
                {
                    out.push(Written {
                        message: i,
                        target,
                        values: &row.values,
                    });
                }
            }
        }
        out
    }

    /// Every row written, in outcome and action order.
    pub fn all_written(&self) -> Vec<Written<'_>> {
        (0..self.outcomes.len())
            .flat_map(|i| self.written(i))
            .collect()
    }

    /// The rows written to `table`, in outcome and action order.
    pub fn written_to(&self, table: &str) -> Vec<Written<'_>> {
        let mut all = self.all_written();
        all.retain(|w| w.target.table == table);
        all
    }

    /// The messages emitted by outcome `i`.
    pub fn emitted(&self, i: usize) -> Vec<&wit::EmitMessage> {
        match self.outcomes.get(i) {
            Some(Outcome::Actions(actions)) => actions
                .iter()
                .filter_map(|a| match a {
                    Action::Emit(e) => Some(e),
                    Action::Write(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The dead-letter reason of outcome `i`, if it is one.
    pub fn dead_letter(&self, i: usize) -> Option<&str> {
        self.outcomes.get(i).and_then(Outcome::dead_letter_reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn targets_are_declared_once() {
        let mut out = Out::new();
        let a = out.insert("t", &["a", "b"]);
        assert_eq!(out.insert("t", &["a", "b"]), a);
        let by_string = out.insert("t", &[String::from("a"), String::from("b")]);
        assert_eq!(by_string, a);
        let other = out.insert("t", &["b", "a"]);
        assert_ne!(other, a);
        let up = out.upsert("t", &["a", "b"], &["a"], &[("b", Merge::Sum)]);
        assert_ne!(up, a);
        assert_eq!(out.targets().len(), 3);
        let Action::Write(row) = out.write("t", Row::new().with("a", 1i64).with("b", 2i64)) else {
            unreachable!()
        };
        assert_eq!(row.target, a.index());
        assert_eq!(out.targets().len(), 3);
        let w = out.write_upsert(
            "t",
            Row::new().with("a", 1i64).with("b", 2i64),
            &["a"],
            &[("b", Merge::Sum)],
        );
        assert_eq!(w, up.row(vec![Value::Int(1), Value::Int(2)]));
        let output = out.finish(vec![Outcome::one(w)]);
        let written = output.written(0);
        assert_eq!(written[0].get("b"), Some(&Value::Int(2)));
        assert_eq!(written[0].target.key_columns(), ["a"]);
        assert_eq!(written[0].target.merge_of("b"), Some(Merge::Sum));
        assert_eq!(written[0].target.merge_of("a"), None);
    }

    #[test]
    fn upsert_policies_resolve_to_positions() {
        let mut out = Out::new();
        let cols = ["k", "open", "t0", "close", "t1"];
        out.upsert(
            "c",
            &cols,
            &["k"],
            &[
                ("open", Merge::FirstByTime("t0")),
                ("close", Merge::LastByTime("t1")),
                ("t0", Merge::Min),
            ],
        );
        let t = &out.targets()[0];
        let wit::Write::Upsert(u) = &t.write else {
            panic!()
        };
        assert_eq!(u.key, [0]);
        assert_eq!(
            u.policies,
            [
                wit::ColumnPolicy {
                    column: 1,
                    policy: MergePolicy::FirstByTime(2)
                },
                wit::ColumnPolicy {
                    column: 3,
                    policy: MergePolicy::LastByTime(4)
                },
                wit::ColumnPolicy {
                    column: 2,
                    policy: MergePolicy::Min
                },
            ]
        );
        assert_eq!(
            t.merge_policies(),
            [
                ("open", Merge::FirstByTime("t0")),
                ("close", Merge::LastByTime("t1")),
                ("t0", Merge::Min)
            ]
        );
    }

    #[test]
    #[should_panic(expected = "upsert key column `nope` is not a column of target `c`")]
    fn unknown_key_column_panics() {
        Out::new().upsert("c", &["a"], &["nope"], &[]);
    }

    #[test]
    #[should_panic(expected = "column `a` is named twice in target `c`")]
    fn duplicate_column_panics() {
        Out::new().insert("c", &["a", "a"]);
    }

    #[test]
    #[should_panic(expected = "has 1 values for 2 columns")]
    fn wrong_width_panics() {
        let t = Out::new().insert("c", &["a", "b"]);
        t.row(vec![Value::Null]);
    }

    #[test]
    fn layouts_and_emits() {
        let mut out = Out::new();
        let l = out.layout(&["a", "b"]);
        assert_eq!(out.layout(&["a", "b"]), l);
        let e = out
            .emit_row("topic", Row::new().with("a", 1i64).with("b", true))
            .key(b"k".to_vec())
            .partition(3)
            .header("h", None);
        let Action::Emit(m) = e.action() else {
            unreachable!()
        };
        assert_eq!(m.partition, Some(3));
        assert_eq!(
            m.value,
            EmitValue::Fields(wit::EmitFields {
                layout: 0,
                values: vec![Value::Int(1), Value::Boolean(true)]
            })
        );
        assert_eq!(out.finish(vec![]).layouts, [vec!["a", "b"]]);
    }
}
