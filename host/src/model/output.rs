//! Building and combining what guests return ([`Output`]): targets and layouts declared
//! once, rows and emitted values naming them by position.

use std::collections::HashMap;

use super::{Action, EmitValue, MergePolicy, Outcome, Output, Target, Write};

/// What makes two targets the same: table, columns, and how rows are written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetKey {
    table: String,
    columns: Vec<String>,
    /// Empty for inserts; for upserts the key positions, then per policy its column,
    /// kind and time column.
    write: Option<Vec<u32>>,
}

impl TargetKey {
    /// The key of `target`.
    pub fn of(target: &Target) -> Self {
        let write = match &target.write {
            Write::Insert => None,
            Write::Upsert(u) => {
                let mut w = u.key.clone();
                w.push(u32::MAX);
                for p in &u.policies {
                    let (kind, time) = match p.policy {
                        MergePolicy::Replace => (0, 0),
                        MergePolicy::Min => (1, 0),
                        MergePolicy::Max => (2, 0),
                        MergePolicy::Sum => (3, 0),
                        MergePolicy::FirstByTime(t) => (4, t),
                        MergePolicy::LastByTime(t) => (5, t),
                    };
                    w.extend([p.column, kind, time]);
                }
                Some(w)
            }
        };
        Self {
            table: target.table.clone(),
            columns: target.columns.clone(),
            write,
        }
    }
}

/// Collects targets and layouts, each once, for an [`Output`] being built.
#[derive(Debug, Default)]
pub struct Interner {
    tables: Vec<Target>,
    layouts: Vec<Vec<String>>,
    targets: HashMap<TargetKey, u32>,
    names: HashMap<Vec<String>, u32>,
}

impl Interner {
    /// The position of `target`, added if it is new.
    pub fn target(&mut self, target: Target) -> u32 {
        let key = TargetKey::of(&target);
        if let Some(i) = self.targets.get(&key) {
            return *i;
        }
        let i = self.tables.len() as u32;
        self.tables.push(target);
        self.targets.insert(key, i);
        i
    }

    /// The position of the field names `names`, added if they are new.
    pub fn layout(&mut self, names: Vec<String>) -> u32 {
        if let Some(i) = self.names.get(&names) {
            return *i;
        }
        let i = self.layouts.len() as u32;
        self.layouts.push(names.clone());
        self.names.insert(names, i);
        i
    }

    /// The output of these outcomes over the targets and layouts collected.
    pub fn finish(self, outcomes: Vec<Outcome>) -> Output {
        Output {
            tables: self.tables,
            layouts: self.layouts,
            outcomes,
        }
    }
}

impl Output {
    /// An output of no outcomes.
    pub fn empty() -> Self {
        Self {
            tables: Vec::new(),
            layouts: Vec::new(),
            outcomes: Vec::new(),
        }
    }

    /// Appends `other`'s outcomes (those of the messages after this output's), with its
    /// targets and layouts renumbered to follow this output's.
    pub fn append(&mut self, other: Output) {
        let tables = self.tables.len() as u32;
        let layouts = self.layouts.len() as u32;
        self.tables.extend(other.tables);
        self.layouts.extend(other.layouts);
        for mut outcome in other.outcomes {
            if let Outcome::Actions(actions) = &mut outcome {
                for action in actions {
                    match action {
                        Action::Write(row) => row.target = row.target.saturating_add(tables),
                        Action::Emit(emit) => {
                            if let EmitValue::Fields(f) = &mut emit.value {
                                f.layout = f.layout.saturating_add(layouts);
                            }
                        }
                    }
                }
            }
            self.outcomes.push(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EmitFields, EmitMessage, Row, Value};

    fn target(table: &str) -> Target {
        Target {
            table: table.into(),
            columns: vec!["a".into()],
            write: Write::Insert,
        }
    }

    fn write(target: u32) -> Action {
        Action::Write(Row {
            target,
            values: vec![Value::Int(1)],
        })
    }

    #[test]
    fn targets_intern_and_appended_outputs_are_renumbered() {
        let mut i = Interner::default();
        assert_eq!(i.target(target("x")), 0);
        assert_eq!(i.target(target("y")), 1);
        assert_eq!(i.target(target("x")), 0);
        assert_eq!(i.layout(vec!["f".into()]), 0);
        let mut first = i.finish(vec![Outcome::Actions(vec![write(1)])]);

        let mut j = Interner::default();
        let t = j.target(target("z"));
        let l = j.layout(vec!["g".into()]);
        let emit = Action::Emit(EmitMessage {
            topic: "out".into(),
            partition: None,
            key: None,
            headers: Vec::new(),
            value: EmitValue::Fields(EmitFields {
                layout: l,
                values: vec![Value::Null],
            }),
        });
        let second = j.finish(vec![
            Outcome::Actions(vec![write(t), emit]),
            Outcome::DeadLetter("no".into()),
        ]);
        first.append(second);
        assert_eq!(first.tables.len(), 3);
        assert_eq!(first.outcomes.len(), 3);
        let Outcome::Actions(actions) = &first.outcomes[1] else {
            panic!()
        };
        assert!(matches!(&actions[0], Action::Write(r) if r.target == 2));
        assert!(
            matches!(&actions[1], Action::Emit(e) if matches!(&e.value, EmitValue::Fields(f) if f.layout == 1))
        );
    }
}
