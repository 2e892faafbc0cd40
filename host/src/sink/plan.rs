//! Turning a batch's actions into rows ready to write: each of the guest's targets
//! resolved once against its table, each value converted to its column's type, rows
//! grouped by *shape* (table and column set; for upserts also key and policies) so that
//! each shape is one statement. A message whose values do not convert, that writes a table
//! its pipeline may not write, or that names a table or column that does not exist, is
//! rejected here, whole, before anything is sent.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::SinkItem;
use super::tables::TableInfo;
use super::value::{Cell, Refusal, convert};
use crate::model::{Action, MergePolicy, Row, Target, Upsert, Value, Write};

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

/// A target of the batch, resolved against its table once for all its rows.
#[derive(Debug)]
struct Resolved {
    /// Whether rows are upserts.
    upsert: bool,
    /// The shape its rows take.
    shape: u32,
    /// For each column of the shape, in the shape's (table) order: where its value is,
    /// a position in the row's values or [`STAMPED`].
    order: Vec<usize>,
    /// Positions of the key columns in the row's values (upserts).
    key: Vec<usize>,
}

/// Where in a row's values the version stamp is: not in them, the batch's.
const STAMPED: usize = usize::MAX;

/// What rows may go where: the tables a pipeline may write.
pub(crate) struct Scope<'s> {
    pub pipeline: &'s str,
    pub tables: &'s BTreeSet<String>,
}

impl Scope<'_> {
    /// Why the pipeline may not write `table`, if it may not.
    pub fn refuses(&self, table: &str) -> Option<String> {
        (!self.tables.contains(table)).then(|| {
            let listed: Vec<&str> = self.tables.iter().map(String::as_str).collect();
            format!(
                "pipeline {} may not write table {}: it is not among the pipeline's tables ({})",
                self.pipeline,
                crate::text::escape_control(&crate::text::truncate(table, 200)),
                if listed.is_empty() {
                    "none".to_string()
                } else {
                    listed.join(", ")
                }
            )
        })
    }
}

/// Builds a [`Plan`], interning shapes as it goes.
struct Builder<'a, 'c> {
    catalog: &'c HashMap<String, Arc<TableInfo>>,
    plan: Plan<'a>,
    slots: HashMap<&'a str, Option<usize>>,
    insert_ids: HashMap<Vec<u32>, u32>,
    upsert_ids: HashMap<Vec<u32>, u32>,
    family_ids: HashMap<Vec<u32>, usize>,
    /// The batch's targets, each resolved on first use.
    targets: &'a [Target],
    resolved: Vec<Option<Result<Resolved, String>>>,
    /// A column every row gets, and its value.
    stamp: Option<(&'a str, &'a Value)>,
    scope: &'c Scope<'c>,
    key: Vec<u32>,
}

impl<'a> Plan<'a> {
    /// Converts the `Actions` items of `items` (rows naming `targets` by position) for
    /// the tables in `catalog` (tables missing from it do not exist), refusing rows for
    /// tables outside `scope`. With `stamp`, every row also gets that column and value
    /// (replacing the guest's value for it, if any).
    pub fn build(
        items: &'a [SinkItem],
        targets: &'a [Target],
        stamp: Option<(&'a str, &'a Value)>,
        catalog: &HashMap<String, Arc<TableInfo>>,
        scope: &Scope<'_>,
    ) -> Self {
        let mut b = Builder {
            catalog,
            plan: Plan::default(),
            slots: HashMap::new(),
            insert_ids: HashMap::new(),
            upsert_ids: HashMap::new(),
            family_ids: HashMap::new(),
            targets,
            resolved: (0..targets.len()).map(|_| None).collect(),
            stamp,
            scope,
            key: Vec::new(),
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
            if let Action::Write(row) = action {
                self.row(row)?;
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

    /// Converts one row onto the end of `cells`.
    fn row(&mut self, row: &'a Row) -> Result<(), String> {
        let index = row.target as usize;
        let Some(target) = self.targets.get(index) else {
            return Err(format!(
                "a row names target {index}, but the guest declared {} targets",
                self.targets.len()
            ));
        };
        if self.resolved[index].is_none() {
            self.resolved[index] = Some(self.resolve(target));
        }
        let resolved = match self.resolved[index].as_ref().expect("resolved above") {
            Ok(r) => r,
            Err(e) => return Err(e.clone()),
        };
        let (name, info) = &self.plan.tables[match resolved.upsert {
            true => self.plan.upsert_shapes[resolved.shape as usize].table,
            false => self.plan.insert_shapes[resolved.shape as usize].table,
        }];
        if row.values.len() != target.columns.len() {
            return Err(format!(
                "a row for {name} has {} values for the target's {} columns",
                row.values.len(),
                target.columns.len()
            ));
        }
        for &k in &resolved.key {
            if matches!(row.values[k], Value::Null) {
                return Err(format!("key column {name}.{} is null", target.columns[k]));
            }
        }
        let start = self.plan.cells.len() as u32;
        let columns = match resolved.upsert {
            true => &self.plan.upsert_shapes[resolved.shape as usize].columns,
            false => &self.plan.insert_shapes[resolved.shape as usize].columns,
        };
        for (column, &from) in columns.iter().zip(&resolved.order) {
            let value = match from {
                STAMPED => self.stamp.expect("a stamped column has a stamp").1,
                i => &row.values[i],
            };
            let column = &info.columns[*column as usize];
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
        let row_ref = RowRef {
            shape: resolved.shape,
            start,
        };
        if resolved.upsert {
            self.plan.upserts.push(row_ref);
        } else {
            self.plan.inserts.push(row_ref);
        }
        Ok(())
    }

    /// Resolves a target: its table (which the pipeline must be allowed to write), its
    /// columns, and its shape.
    fn resolve(&mut self, target: &'a Target) -> Result<Resolved, String> {
        if let Some(refusal) = self.scope.refuses(&target.table) {
            return Err(refusal);
        }
        let slot = self.slot(&target.table)?;
        let (name, info) = &self.plan.tables[slot];
        let name = *name;
        let info = info.clone();
        // (column index in the table, where its value is), sorted by column.
        let mut fields: Vec<(u16, usize)> = Vec::with_capacity(target.columns.len() + 1);
        for (pos, column) in target.columns.iter().enumerate() {
            match info.column(column) {
                Some(i) => fields.push((i, pos)),
                None => {
                    self.plan.suspects.push(name.to_string());
                    return Err(format!("{name}.{column} does not exist"));
                }
            }
        }
        if let Some((column, _)) = self.stamp {
            match info.column(column) {
                // The recorded version is the host's to say, even over the guest's value.
                Some(i) => match fields.iter_mut().find(|(c, _)| *c == i) {
                    Some(field) => field.1 = STAMPED,
                    None => fields.push((i, STAMPED)),
                },
                None => {
                    self.plan.suspects.push(name.to_string());
                    return Err(format!(
                        "{name}.{column} does not exist (the pipeline's version_column)"
                    ));
                }
            }
        }
        fields.sort_unstable_by_key(|(i, _)| *i);
        if let Some(w) = fields.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!(
                "{name}.{} is named twice in one target",
                info.columns[w[0].0 as usize].name
            ));
        }
        let columns: Vec<u16> = fields.iter().map(|(i, _)| *i).collect();
        let order: Vec<usize> = fields.iter().map(|(_, from)| *from).collect();
        match &target.write {
            Write::Insert => {
                self.key.clear();
                self.key.push(slot as u32);
                self.key.extend(columns.iter().map(|i| u32::from(*i)));
                let shape = match self.insert_ids.get(self.key.as_slice()) {
                    Some(id) => *id,
                    None => {
                        let id = self.plan.insert_shapes.len() as u32;
                        self.plan.insert_shapes.push(InsertShape {
                            table: slot,
                            columns,
                        });
                        self.insert_ids.insert(self.key.clone(), id);
                        id
                    }
                };
                Ok(Resolved {
                    upsert: false,
                    shape,
                    order,
                    key: Vec::new(),
                })
            }
            Write::Upsert(upsert) => {
                let shape =
                    self.upsert_shape(name, &info, slot, target, upsert, columns, &order)?;
                Ok(Resolved {
                    upsert: true,
                    shape,
                    order,
                    key: upsert.key.iter().map(|k| *k as usize).collect(),
                })
            }
        }
    }

    /// The shape of an upsert target: its key and per-column policies, by position in
    /// the shape's columns.
    #[allow(clippy::too_many_arguments)]
    fn upsert_shape(
        &mut self,
        name: &str,
        info: &TableInfo,
        slot: usize,
        target: &Target,
        upsert: &Upsert,
        columns: Vec<u16>,
        order: &[usize],
    ) -> Result<u32, String> {
        let width = target.columns.len();
        // Where each of the target's positions went in the shape.
        let mut at = vec![usize::MAX; width];
        for (shape_pos, from) in order.iter().enumerate() {
            if *from != STAMPED {
                at[*from] = shape_pos;
            }
        }
        let position = |p: u32, what: &str| -> Result<usize, String> {
            at.get(p as usize).copied().filter(|s| *s != usize::MAX).ok_or_else(|| {
                format!(
                    "upsert into {name}: {what} names column position {p}, but the target has {width} columns"
                )
            })
        };
        let mut policies = vec![Policy::Replace; columns.len()];
        if upsert.key.is_empty() {
            return Err(format!("upsert into {name} names no key columns"));
        }
        for k in &upsert.key {
            policies[position(*k, "its key")?] = Policy::Key;
        }
        for p in &upsert.policies {
            let pos = position(p.column, "a merge policy")?;
            if policies[pos] == Policy::Key {
                continue;
            }
            let column = &info.columns[columns[pos] as usize];
            policies[pos] = match &p.policy {
                MergePolicy::Replace => Policy::Replace,
                MergePolicy::Min => Policy::Min,
                MergePolicy::Max => Policy::Max,
                MergePolicy::Sum => {
                    if !column.ty.is_number() {
                        return Err(format!(
                            "{name}.{}: sum needs a number column, not {}",
                            column.name, column.declared
                        ));
                    }
                    Policy::Sum
                }
                MergePolicy::FirstByTime(t) => {
                    Policy::FirstBy(position(*t, &format!("{}'s time column", column.name))? as u16)
                }
                MergePolicy::LastByTime(t) => {
                    Policy::LastBy(position(*t, &format!("{}'s time column", column.name))? as u16)
                }
            };
        }
        // Shape key: table, columns, policies.
        self.key.clear();
        self.key.push(slot as u32);
        self.key.push(columns.len() as u32);
        self.key.extend(columns.iter().map(|i| u32::from(*i)));
        self.key.extend(policies.iter().map(|p| match *p {
            Policy::Key => 0,
            Policy::Replace => 1,
            Policy::Min => 2,
            Policy::Max => 3,
            Policy::Sum => 4,
            Policy::FirstBy(t) => 8 + 2 * u32::from(t),
            Policy::LastBy(t) => 9 + 2 * u32::from(t),
        }));
        if let Some(id) = self.upsert_ids.get(self.key.as_slice()) {
            return Ok(*id);
        }
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
        Ok(id)
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
