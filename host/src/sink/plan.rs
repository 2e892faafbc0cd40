//! Turning a batch's actions into rows ready to write: each value converted to its
//! column's type, rows grouped by *shape* (table and column set; for upserts also key and
//! policies) so that each shape is one statement. A message whose values do not convert
//! (or that names a table or column that does not exist) is rejected here, whole, before
//! anything is sent.

use std::collections::HashMap;
use std::sync::Arc;

use super::SinkItem;
use super::tables::TableInfo;
use super::value::{Cell, Refusal, convert};
use crate::runtime::types::{Action, Field, MergePolicy, UpsertRow, Value};

/// How an upsert combines one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Policy {
    /// A key column.
    Key,
    Replace,
    Min,
    Max,
    Sum,
    /// First by the time in the column at this position of the shape.
    FirstBy(u16),
    /// Last by the time in the column at this position of the shape.
    LastBy(u16),
}

/// Rows of one table with the same columns: one `COPY`.
#[derive(Debug)]
pub(crate) struct InsertShape {
    pub table: usize,
    /// Column indices in the table, ascending.
    pub columns: Vec<u16>,
}

/// Upserts of one table with the same columns, key and policies: one statement.
#[derive(Debug)]
pub(crate) struct UpsertShape {
    pub table: usize,
    /// Column indices in the table, ascending.
    pub columns: Vec<u16>,
    /// Per position in `columns`.
    pub policies: Vec<Policy>,
    /// Rows with the same key, back to back, can be combined before they are sent (the
    /// policies are associative); otherwise each goes in a statement of its own.
    pub associative: bool,
    /// Upserts into the same table by the same key columns share a family: the same key in
    /// two shapes of a family must be applied in message order.
    pub family: usize,
}

impl UpsertShape {
    /// Whether combining in a batch gives what applying one row at a time gives: true
    /// unless a first/last-by-time column's time column moves in another direction.
    fn is_associative(policies: &[Policy]) -> bool {
        policies.iter().all(|p| match *p {
            Policy::FirstBy(t) => {
                matches!(policies[t as usize], Policy::Key | Policy::Min)
                    || policies[t as usize] == Policy::FirstBy(t)
            }
            Policy::LastBy(t) => {
                matches!(policies[t as usize], Policy::Key | Policy::Max)
                    || policies[t as usize] == Policy::LastBy(t)
            }
            _ => true,
        })
    }

    /// Positions of the key columns.
    pub fn key_positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.policies
            .iter()
            .enumerate()
            .filter(|(_, p)| **p == Policy::Key)
            .map(|(i, _)| i)
    }
}

/// A converted row: its shape and where its cells start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowRef {
    pub shape: u32,
    pub start: u32,
}

/// One accepted message: its rows.
#[derive(Debug, Clone)]
pub(crate) struct MessagePlan {
    /// Index of the item in the batch.
    pub item: usize,
    pub inserts: std::ops::Range<usize>,
    pub upserts: std::ops::Range<usize>,
}

/// A batch, converted.
#[derive(Debug, Default)]
pub(crate) struct Plan<'a> {
    /// Tables by slot, with the name the guest gave.
    pub tables: Vec<(&'a str, Arc<TableInfo>)>,
    pub cells: Vec<Cell<'a>>,
    pub insert_shapes: Vec<InsertShape>,
    pub upsert_shapes: Vec<UpsertShape>,
    pub inserts: Vec<RowRef>,
    pub upserts: Vec<RowRef>,
    pub messages: Vec<MessagePlan>,
    /// Messages refused, by batch item index, with why.
    pub rejected: Vec<(usize, String)>,
    /// Tables whose cached columns may be out of date: a row named a column they lack.
    pub suspects: Vec<String>,
}

/// Builds a [`Plan`], interning shapes as it goes.
struct Builder<'a, 'c> {
    catalog: &'c HashMap<String, Arc<TableInfo>>,
    plan: Plan<'a>,
    slots: HashMap<&'a str, Option<usize>>,
    insert_ids: HashMap<Vec<u32>, u32>,
    upsert_ids: HashMap<Vec<u32>, u32>,
    family_ids: HashMap<Vec<u32>, usize>,
    /// Scratch: the row's (column index, value), sorted by column.
    fields: Vec<(u16, &'a Value)>,
    key: Vec<u32>,
    /// A column every row gets, and its value.
    stamp: Option<(&'a str, &'a Value)>,
}

impl<'a> Plan<'a> {
    /// Converts the `Actions` items of `items` for the tables in `catalog` (tables missing
    /// from it do not exist). With `stamp`, every row also gets that column and value
    /// (replacing the guest's value for it, if any).
    pub fn build(
        items: &'a [SinkItem],
        stamp: Option<(&'a str, &'a Value)>,
        catalog: &HashMap<String, Arc<TableInfo>>,
    ) -> Self {
        let mut b = Builder {
            catalog,
            plan: Plan::default(),
            slots: HashMap::new(),
            insert_ids: HashMap::new(),
            upsert_ids: HashMap::new(),
            family_ids: HashMap::new(),
            fields: Vec::new(),
            key: Vec::new(),
            stamp,
        };
        for (item, sink_item) in items.iter().enumerate() {
            let SinkItem::Actions { actions, .. } = sink_item else {
                continue;
            };
            let marks = (
                b.plan.cells.len(),
                b.plan.inserts.len(),
                b.plan.upserts.len(),
            );
            match b.message(actions) {
                Ok(()) => b.plan.messages.push(MessagePlan {
                    item,
                    inserts: marks.1..b.plan.inserts.len(),
                    upserts: marks.2..b.plan.upserts.len(),
                }),
                Err(reason) => {
                    b.plan.cells.truncate(marks.0);
                    b.plan.inserts.truncate(marks.1);
                    b.plan.upserts.truncate(marks.2);
                    b.plan.rejected.push((item, reason));
                }
            }
        }
        b.plan.suspects.sort();
        b.plan.suspects.dedup();
        b.plan
    }

    /// The name the guest gave a table.
    pub fn table_name(&self, slot: usize) -> &'a str {
        self.tables[slot].0
    }
}

impl<'a> Builder<'a, '_> {
    fn message(&mut self, actions: &'a [Action]) -> Result<(), String> {
        for action in actions {
            match action {
                Action::Insert(row) => self.insert(&row.table, &row.row)?,
                Action::Upsert(row) => self.upsert(row)?,
                Action::Emit(_) => {}
            }
        }
        Ok(())
    }

    fn slot(&mut self, table: &'a str) -> Result<usize, String> {
        if let Some(slot) = self.slots.get(table) {
            return slot.ok_or_else(|| format!("table {table} does not exist"));
        }
        let slot = self.catalog.get(table).map(|info| {
            self.plan.tables.push((table, info.clone()));
            self.plan.tables.len() - 1
        });
        self.slots.insert(table, slot);
        slot.ok_or_else(|| format!("table {table} does not exist"))
    }

    /// Resolves a row's fields into `self.fields`, sorted by column.
    fn resolve(&mut self, slot: usize, row: &'a [Field]) -> Result<(), String> {
        let (name, info) = &self.plan.tables[slot];
        self.fields.clear();
        for field in row {
            match info.column(&field.name) {
                Some(i) => self.fields.push((i, &field.value)),
                None => {
                    self.plan.suspects.push((*name).to_string());
                    return Err(format!("{name}.{} does not exist", field.name));
                }
            }
        }
        if let Some((column, value)) = self.stamp {
            match info.column(column) {
                // The recorded version is the host's to say, even over the guest's value.
                Some(i) => match self.fields.iter_mut().find(|(c, _)| *c == i) {
                    Some(field) => field.1 = value,
                    None => self.fields.push((i, value)),
                },
                None => {
                    self.plan.suspects.push((*name).to_string());
                    return Err(format!(
                        "{name}.{column} does not exist (the pipeline's version_column)"
                    ));
                }
            }
        }
        self.fields.sort_unstable_by_key(|(i, _)| *i);
        if let Some(w) = self.fields.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!(
                "{name}.{} is named twice in one row",
                info.columns[w[0].0 as usize].name
            ));
        }
        Ok(())
    }

    /// Converts the resolved fields onto the end of `cells`.
    fn push_cells(&mut self, slot: usize) -> Result<u32, String> {
        let (name, info) = &self.plan.tables[slot];
        let start = self.plan.cells.len() as u32;
        for (i, value) in &self.fields {
            let column = &info.columns[*i as usize];
            match convert(value, column.ty) {
                Ok(cell) => self.plan.cells.push(cell),
                Err(Refusal::Kind(kind)) => {
                    return Err(format!(
                        "{name}.{}: a {kind} value cannot be written to a column of type {}",
                        column.name, column.declared
                    ));
                }
                Err(Refusal::Value(why)) => {
                    return Err(format!(
                        "{name}.{} ({}): {why}",
                        column.name, column.declared
                    ));
                }
            }
        }
        Ok(start)
    }

    fn insert(&mut self, table: &'a str, row: &'a [Field]) -> Result<(), String> {
        let slot = self.slot(table)?;
        self.resolve(slot, row)?;
        self.key.clear();
        self.key.push(slot as u32);
        self.key
            .extend(self.fields.iter().map(|(i, _)| u32::from(*i)));
        let shape = match self.insert_ids.get(self.key.as_slice()) {
            Some(id) => *id,
            None => {
                let id = self.plan.insert_shapes.len() as u32;
                self.plan.insert_shapes.push(InsertShape {
                    table: slot,
                    columns: self.fields.iter().map(|(i, _)| *i).collect(),
                });
                self.insert_ids.insert(self.key.clone(), id);
                id
            }
        };
        let start = self.push_cells(slot)?;
        self.plan.inserts.push(RowRef { shape, start });
        Ok(())
    }

    fn upsert(&mut self, row: &'a UpsertRow) -> Result<(), String> {
        let slot = self.slot(&row.table)?;
        self.resolve(slot, &row.row)?;
        let (name, info) = &self.plan.tables[slot];
        let position =
            |fields: &[(u16, &Value)], column: u16| fields.iter().position(|(i, _)| *i == column);
        let mut policies = vec![Policy::Replace; self.fields.len()];
        if row.key.is_empty() {
            return Err(format!("upsert into {name} names no key columns"));
        }
        for key in &row.key {
            let Some(column) = info.column(key) else {
                return Err(format!("key column {name}.{key} does not exist"));
            };
            let Some(pos) = position(&self.fields, column) else {
                return Err(format!("key column {name}.{key} is not in the row"));
            };
            if matches!(self.fields[pos].1, Value::Null) {
                return Err(format!("key column {name}.{key} is null"));
            }
            policies[pos] = Policy::Key;
        }
        for p in &row.policies {
            let Some(column) = info.column(&p.column) else {
                return Err(format!(
                    "{name}.{} (in a merge policy) does not exist",
                    p.column
                ));
            };
            // A policy for a column this row does not carry does not apply to it.
            let Some(pos) = position(&self.fields, column) else {
                continue;
            };
            if policies[pos] == Policy::Key {
                continue;
            }
            let by_time = |time: &str| -> Result<u16, String> {
                info.column(time)
                    .and_then(|c| position(&self.fields, c))
                    .map(|p| p as u16)
                    .ok_or_else(|| {
                        format!(
                            "{name}.{}: its time column {time} is not in the row",
                            p.column
                        )
                    })
            };
            policies[pos] = match &p.policy {
                MergePolicy::Replace => Policy::Replace,
                MergePolicy::Min => Policy::Min,
                MergePolicy::Max => Policy::Max,
                MergePolicy::Sum => {
                    let col = &info.columns[column as usize];
                    if !col.ty.is_number() {
                        return Err(format!(
                            "{name}.{}: sum needs a number column, not {}",
                            col.name, col.declared
                        ));
                    }
                    Policy::Sum
                }
                MergePolicy::FirstByTime(time) => Policy::FirstBy(by_time(time)?),
                MergePolicy::LastByTime(time) => Policy::LastBy(by_time(time)?),
            };
        }
        // Shape key: table, columns, policies.
        self.key.clear();
        self.key.push(slot as u32);
        self.key.push(self.fields.len() as u32);
        self.key
            .extend(self.fields.iter().map(|(i, _)| u32::from(*i)));
        self.key.extend(policies.iter().map(|p| match *p {
            Policy::Key => 0,
            Policy::Replace => 1,
            Policy::Min => 2,
            Policy::Max => 3,
            Policy::Sum => 4,
            Policy::FirstBy(t) => 8 + 2 * u32::from(t),
            Policy::LastBy(t) => 9 + 2 * u32::from(t),
        }));
        let shape = match self.upsert_ids.get(self.key.as_slice()) {
            Some(id) => *id,
            None => {
                let columns: Vec<u16> = self.fields.iter().map(|(i, _)| *i).collect();
                let mut family_key = vec![slot as u32];
                family_key.extend(
                    columns
                        .iter()
                        .zip(&policies)
                        .filter(|(_, p)| **p == Policy::Key)
                        .map(|(c, _)| u32::from(*c)),
                );
                let next = self.family_ids.len();
                let family = *self.family_ids.entry(family_key).or_insert(next);
                let id = self.plan.upsert_shapes.len() as u32;
                self.plan.upsert_shapes.push(UpsertShape {
                    table: slot,
                    columns,
                    associative: UpsertShape::is_associative(&policies),
                    policies,
                    family,
                });
                self.upsert_ids.insert(self.key.clone(), id);
                id
            }
        };
        let start = self.push_cells(slot)?;
        self.plan.upserts.push(RowRef { shape, start });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Policy::*;
    use super::*;

    #[test]
    fn candle_policies_combine_and_mismatched_time_columns_do_not() {
        // symbol, bucket, open first(first_at), close last(last_at), first_at, last_at
        let candle = [Key, Key, FirstBy(4), LastBy(5), Min, Max];
        assert!(UpsertShape::is_associative(&candle));
        let self_timed = [Key, FirstBy(1), LastBy(2)];
        assert!(UpsertShape::is_associative(&self_timed));
        let by_key = [Key, FirstBy(0), LastBy(0)];
        assert!(UpsertShape::is_associative(&by_key));
        let replaced_time = [Key, FirstBy(2), Replace];
        assert!(!UpsertShape::is_associative(&replaced_time));
        let wrong_way = [Key, LastBy(2), Min];
        assert!(!UpsertShape::is_associative(&wrong_way));
        assert!(UpsertShape::is_associative(&[Key, Replace, Sum, Min, Max]));
    }
}
