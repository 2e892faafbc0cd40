//! Schema compatibility: whether data written with one Avro schema can be read with another,
//! and the seven levels a subject can ask for.
//!
//! Confluent decides with Avro Java's `SchemaCompatibility`; this is a port of its rules and
//! of Confluent's messages. apache-avro's `SchemaCompatibility::can_read` was the starting
//! point, but it differs where it matters here (the tests below pin each difference):
//! - it answers `Partial` when a reader enum lacks some writer symbols or a reader union
//!   lacks some writer branches, which Confluent (and this module) calls incompatible;
//! - it cannot compare a named type defined inline on one side with a reference to it by
//!   name on the other (for instance after two fields that share a record type swap places),
//!   and reports such schemas as incompatible;
//! - it ignores reader aliases of named types, and stops at the first problem without a
//!   path, while Confluent lists every problem with its path.
//!
//! Logical types are compared by their underlying type, as Avro Java does, with one stricter
//! rule taken from the Avro specification: two decimals must agree on precision and scale,
//! since reading with another scale silently changes every value.

use std::collections::{HashMap, HashSet};

use apache_avro::Schema;
use apache_avro::schema::{
    Alias, DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, RecordSchema,
    UuidSchema,
};

/// A subject's compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// No check.
    None,
    /// The new schema can read data written with the latest one.
    Backward,
    /// The new schema can read data written with every earlier one.
    BackwardTransitive,
    /// The latest schema can read data written with the new one.
    Forward,
    /// Every earlier schema can read data written with the new one.
    ForwardTransitive,
    /// Backward and forward, against the latest schema.
    Full,
    /// Backward and forward, against every earlier schema.
    FullTransitive,
}

impl Level {
    /// The level of a registry where nothing was configured, as in Confluent.
    pub(crate) const DEFAULT: Level = Level::Backward;

    /// Every level, in Confluent's order.
    pub(crate) const ALL: [Level; 7] = [
        Level::None,
        Level::Backward,
        Level::BackwardTransitive,
        Level::Forward,
        Level::ForwardTransitive,
        Level::Full,
        Level::FullTransitive,
    ];

    /// Parses a level name, in any case (`backward_transitive`, `FULL`).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(text.trim()))
    }

    /// The name Confluent uses.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }
}

/// An earlier version of a subject, to check a new schema against.
pub(crate) struct Previous<'a> {
    /// Its version number.
    pub version: i32,
    /// The parsed schema.
    pub schema: &'a Schema,
    /// Its text, for the messages.
    pub text: &'a str,
}

/// Checks `new` against the earlier versions `previous` (oldest first) as `level` asks:
/// the latest only, or all of them for the transitive levels. Returns Confluent's messages
/// about the newest version that fails, or nothing when `new` is compatible.
///
/// A check bounded by [`MAX_STEPS`]: a pair of schemas that takes more is refused with the
/// reason, rather than let one request take the CPU for as long as it likes.
pub(crate) fn check(
    level: Level,
    new: &Schema,
    previous: &[Previous<'_>],
) -> Result<Vec<String>, String> {
    let against = if level.transitive() {
        previous
    } else {
        previous
            .last()
            .map(std::slice::from_ref)
            .unwrap_or_default()
    };
    for old in against.iter().rev() {
        let mut messages = Vec::new();
        let too_complex = |e: TooComplex| {
            format!(
                "checking it against version {} takes more than {} steps or nests deeper than {MAX_CHECK_DEPTH} types: the schemas are too complex to check for compatibility",
                old.version, e.0
            )
        };
        if level.backward() {
            let problems = can_read(old.schema, new).map_err(too_complex)?;
            messages.extend(problems.iter().map(|p| p.describe("new", "old")));
        }
        if level.forward() {
            let problems = can_read(new, old.schema).map_err(too_complex)?;
            messages.extend(problems.iter().map(|p| p.describe("old", "new")));
        }
        if !messages.is_empty() {
            messages.push(format!("{{oldSchemaVersion: {}}}", old.version));
            messages.push(format!("{{oldSchema: '{}'}}", old.text));
            messages.push(format!(
                "{{validateFields: 'false', compatibility: '{}'}}",
                level.as_str()
            ));
            return Ok(messages);
        }
    }
    Ok(Vec::new())
}

/// Most type pairs one reader/writer check may compare.
pub(crate) const MAX_STEPS: usize = 200_000;

/// Deepest a check may nest (records within records, through their fields): the check
/// recurses once per level, and this keeps it well inside a thread's stack.
pub(crate) const MAX_CHECK_DEPTH: usize = 200;

/// A check passed [`MAX_STEPS`] (the number it passed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooComplex(pub usize);

/// What kind of problem keeps a reader from reading a writer's data (Avro's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A named type (record, enum, fixed) is called something else.
    NameMismatch,
    /// Two fixed types differ in size.
    FixedSizeMismatch,
    /// The writer can write enum symbols the reader does not know.
    MissingEnumSymbols,
    /// The reader needs a field the writer does not write, and has no default for it.
    ReaderFieldMissingDefaultValue,
    /// The types differ and neither promotes to the other.
    TypeMismatch,
    /// The writer can write a type that no branch of the reader's union reads.
    MissingUnionBranch,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::NameMismatch => "NAME_MISMATCH",
            Kind::FixedSizeMismatch => "FIXED_SIZE_MISMATCH",
            Kind::MissingEnumSymbols => "MISSING_ENUM_SYMBOLS",
            Kind::ReaderFieldMissingDefaultValue => "READER_FIELD_MISSING_DEFAULT_VALUE",
            Kind::TypeMismatch => "TYPE_MISMATCH",
            Kind::MissingUnionBranch => "MISSING_UNION_BRANCH",
        }
    }
}

/// One reason why a reader cannot read a writer's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Incompatibility {
    /// What is wrong.
    pub kind: Kind,
    /// Where, in the reader schema: `/fields/2/type`.
    pub location: String,
    /// The detail Avro gives (a field name, the missing symbols, the two types).
    pub info: String,
}

impl Incompatibility {
    /// Confluent's wording, with the reader and writer schemas called `reader` and `writer`
    /// ("new" and "old", or the other way round).
    pub(crate) fn describe(&self, reader: &str, writer: &str) -> String {
        let Self {
            kind,
            location: path,
            info,
        } = self;
        let description = match kind {
            Kind::FixedSizeMismatch => format!(
                "The size of FIXED type field at path '{path}' in the {reader} schema does not match with the {writer} schema"
            ),
            Kind::TypeMismatch => format!(
                "The type (path '{path}') of a field in the {reader} schema does not match with the {writer} schema"
            ),
            Kind::NameMismatch => format!("The name of the schema has changed (path '{path}')"),
            Kind::MissingEnumSymbols => format!(
                "The {reader} schema is missing enum symbols '{info}' at path '{path}' in the {writer} schema"
            ),
            Kind::MissingUnionBranch => format!(
                "The {reader} schema is missing a type inside a union field at path '{path}' in the {writer} schema"
            ),
            Kind::ReaderFieldMissingDefaultValue => format!(
                "The field '{info}' at path '{path}' in the {reader} schema has no default value and is missing in the {writer} schema"
            ),
        };
        format!(
            "{{errorType:'{}', description:'{description}', additionalInfo:'{info}'}}",
            kind.as_str()
        )
    }
}

/// Every reason why data written with `writer` cannot be read with `reader`; empty when it
/// can.
pub(crate) fn can_read(
    writer: &Schema,
    reader: &Schema,
) -> Result<Vec<Incompatibility>, TooComplex> {
    let mut checker = Checker {
        reader_names: named_types(reader),
        writer_names: named_types(writer),
        in_progress: HashSet::new(),
        location: Vec::new(),
        steps: 0,
        depth: 0,
        unions: HashMap::new(),
    };
    let mut problems = Vec::new();
    checker.check(reader, writer, &mut problems);
    if checker.steps > MAX_STEPS {
        return Err(TooComplex(MAX_STEPS));
    }
    Ok(problems)
}

/// The named types a schema defines, by full name, so references can be followed.
fn named_types(schema: &Schema) -> HashMap<String, &Schema> {
    fn walk<'a>(schema: &'a Schema, names: &mut HashMap<String, &'a Schema>) {
        match schema {
            Schema::Record(record) => {
                // Inside, a recursive record is a reference to itself: this ends.
                names.insert(record.name.fullname(None), schema);
                for field in &record.fields {
                    walk(&field.schema, names);
                }
            }
            Schema::Enum(EnumSchema { name, .. })
            | Schema::Fixed(FixedSchema { name, .. })
            | Schema::Duration(FixedSchema { name, .. })
            | Schema::Uuid(UuidSchema::Fixed(FixedSchema { name, .. }))
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Fixed(FixedSchema { name, .. }),
                ..
            }) => {
                names.insert(name.fullname(None), schema);
            }
            Schema::Array(array) => walk(&array.items, names),
            Schema::Map(map) => walk(&map.types, names),
            Schema::Union(union) => {
                for branch in union.variants() {
                    walk(branch, names);
                }
            }
            _ => {}
        }
    }
    let mut names = HashMap::new();
    walk(schema, &mut names);
    names
}

/// A schema reduced to what matters for reading: logical types become their underlying
/// type, references become what they name.
#[derive(Clone, Copy)]
enum Shape<'a> {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(&'a Schema),
    Map(&'a Schema),
    Union(&'a [Schema]),
    Record(&'a RecordSchema),
    Enum(&'a EnumSchema),
    Fixed(&'a FixedSchema),
    /// A reference to a name the schema does not define (the parser does not let this
    /// happen).
    Unknown,
}

impl<'a> Shape<'a> {
    fn of(schema: &'a Schema) -> Self {
        match schema {
            Schema::Null => Shape::Null,
            Schema::Boolean => Shape::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Shape::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Shape::Long,
            Schema::Float => Shape::Float,
            Schema::Double => Shape::Double,
            Schema::Bytes
            | Schema::BigDecimal
            | Schema::Uuid(UuidSchema::Bytes)
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Bytes,
                ..
            }) => Shape::Bytes,
            Schema::String | Schema::Uuid(UuidSchema::String) => Shape::String,
            Schema::Array(array) => Shape::Array(&array.items),
            Schema::Map(map) => Shape::Map(&map.types),
            Schema::Union(union) => Shape::Union(union.variants()),
            Schema::Record(record) => Shape::Record(record),
            Schema::Enum(e) => Shape::Enum(e),
            Schema::Fixed(fixed)
            | Schema::Duration(fixed)
            | Schema::Uuid(UuidSchema::Fixed(fixed))
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Fixed(fixed),
                ..
            }) => Shape::Fixed(fixed),
            Schema::Ref { .. } => Shape::Unknown,
        }
    }

    /// Avro's name for the type, as in its messages (`INT`, `RECORD`).
    fn type_name(self) -> &'static str {
        match self {
            Shape::Null => "NULL",
            Shape::Boolean => "BOOLEAN",
            Shape::Int => "INT",
            Shape::Long => "LONG",
            Shape::Float => "FLOAT",
            Shape::Double => "DOUBLE",
            Shape::Bytes => "BYTES",
            Shape::String => "STRING",
            Shape::Array(_) => "ARRAY",
            Shape::Map(_) => "MAP",
            Shape::Union(_) => "UNION",
            Shape::Record(_) => "RECORD",
            Shape::Enum(_) => "ENUM",
            Shape::Fixed(_) => "FIXED",
            Shape::Unknown => "UNKNOWN",
        }
    }
}

struct Checker<'a> {
    reader_names: HashMap<String, &'a Schema>,
    writer_names: HashMap<String, &'a Schema>,
    /// Record pairs being compared further up: meeting one again (a recursive type) counts
    /// as compatible, as in Avro Java.
    in_progress: HashSet<(String, String)>,
    /// The path in the reader schema, for messages.
    location: Vec<String>,
    /// Type pairs compared so far; past [`MAX_STEPS`] the check stops.
    steps: usize,
    /// How deep the check is nested now.
    depth: usize,
    /// Reader unions indexed by what their branches can read, by address.
    unions: HashMap<usize, HashMap<String, Vec<usize>>>,
}

/// What a reader type of this shape is found by in a union's index.
fn reader_keys(shape: Shape<'_>) -> Vec<String> {
    let named = |name: &Name, aliases: Option<&[Alias]>| {
        let mut keys = vec![format!("name:{}", name.name())];
        keys.extend(
            aliases
                .unwrap_or_default()
                .iter()
                .map(|a| format!("alias:{}", a.fullname(name.namespace()))),
        );
        keys
    };
    match shape {
        Shape::Record(r) => named(&r.name, r.aliases.as_deref()),
        Shape::Enum(e) => named(&e.name, e.aliases.as_deref()),
        Shape::Fixed(f) => named(&f.name, f.aliases.as_deref()),
        other => vec![format!("type:{}", other.type_name())],
    }
}

/// The index keys of the reader types that might read a writer type of this shape: its
/// name (or an alias of it), or its type and the types it promotes to.
fn writer_keys(shape: Shape<'_>) -> Vec<String> {
    let named = |name: &Name| {
        vec![
            format!("name:{}", name.name()),
            format!("alias:{}", name.fullname(None)),
        ]
    };
    let promotions: &[&str] = match shape {
        Shape::Record(r) => return named(&r.name),
        Shape::Enum(e) => return named(&e.name),
        Shape::Fixed(f) => return named(&f.name),
        Shape::Int => &["LONG", "FLOAT", "DOUBLE"],
        Shape::Long => &["FLOAT", "DOUBLE"],
        Shape::Float => &["DOUBLE"],
        Shape::String => &["BYTES"],
        Shape::Bytes => &["STRING"],
        _ => &[],
    };
    std::iter::once(shape.type_name())
        .chain(promotions.iter().copied())
        .map(|t| format!("type:{t}"))
        .collect()
}

impl<'a> Checker<'a> {
    fn check(&mut self, reader: &'a Schema, writer: &'a Schema, out: &mut Vec<Incompatibility>) {
        self.steps += 1;
        if self.depth >= MAX_CHECK_DEPTH {
            // Too deep is too complex: stop the whole check.
            self.steps = MAX_STEPS + 1;
        }
        if self.steps > MAX_STEPS {
            return;
        }
        self.depth += 1;
        self.check_types(reader, writer, out);
        self.depth -= 1;
    }

    fn check_types(
        &mut self,
        reader: &'a Schema,
        writer: &'a Schema,
        out: &mut Vec<Incompatibility>,
    ) {
        let reader = resolve(reader, &self.reader_names);
        let writer = resolve(writer, &self.writer_names);
        if let (Schema::Decimal(r), Schema::Decimal(w)) = (reader, writer)
            && (r.precision != w.precision || r.scale != w.scale)
        {
            let info = format!(
                "reader type: decimal({}, {}) not compatible with writer type: decimal({}, {})",
                r.precision, r.scale, w.precision, w.scale
            );
            self.report(Kind::TypeMismatch, info, out);
        }
        let (r, w) = (Shape::of(reader), Shape::of(writer));
        match (r, w) {
            (Shape::Null, Shape::Null)
            | (Shape::Boolean, Shape::Boolean)
            | (Shape::Int, Shape::Int)
            | (Shape::Long, Shape::Long)
            | (Shape::Float, Shape::Float)
            | (Shape::Double, Shape::Double)
            | (Shape::Bytes, Shape::Bytes)
            | (Shape::String, Shape::String) => {}
            (Shape::Array(r_items), Shape::Array(w_items)) => {
                self.location.push("items".into());
                self.check(r_items, w_items, out);
                self.location.pop();
            }
            (Shape::Map(r_values), Shape::Map(w_values)) => {
                self.location.push("values".into());
                self.check(r_values, w_values, out);
                self.location.pop();
            }
            (Shape::Fixed(r_fixed), Shape::Fixed(w_fixed)) => {
                self.check_names(
                    &r_fixed.name,
                    r_fixed.aliases.as_deref(),
                    &w_fixed.name,
                    out,
                );
                if r_fixed.size != w_fixed.size {
                    self.location.push("size".into());
                    let info = format!("expected: {}, found: {}", w_fixed.size, r_fixed.size);
                    self.report(Kind::FixedSizeMismatch, info, out);
                    self.location.pop();
                }
            }
            (Shape::Enum(r_enum), Shape::Enum(w_enum)) => {
                self.check_names(&r_enum.name, r_enum.aliases.as_deref(), &w_enum.name, out);
                self.check_symbols(r_enum, w_enum, out);
            }
            (Shape::Record(r_record), Shape::Record(w_record)) => {
                self.check_names(
                    &r_record.name,
                    r_record.aliases.as_deref(),
                    &w_record.name,
                    out,
                );
                let pair = (r_record.name.fullname(None), w_record.name.fullname(None));
                if self.in_progress.insert(pair.clone()) {
                    self.check_fields(r_record, w_record, out);
                    self.in_progress.remove(&pair);
                }
            }
            (Shape::Union(_), Shape::Union(w_branches)) => {
                // Each branch the writer may have written must be readable.
                for (i, branch) in w_branches.iter().enumerate() {
                    self.location.push(i.to_string());
                    if !self.readable(reader, branch) {
                        let info = format!(
                            "reader union lacking writer type: {}",
                            Shape::of(resolve(branch, &self.writer_names)).type_name()
                        );
                        self.report(Kind::MissingUnionBranch, info, out);
                    }
                    self.location.pop();
                }
            }
            (_, Shape::Union(w_branches)) => {
                for (i, branch) in w_branches.iter().enumerate() {
                    self.location.push(i.to_string());
                    self.check(reader, branch, out);
                    self.location.pop();
                }
            }
            (Shape::Union(r_branches), _) => {
                // Only a branch of the writer's kind (and name) can read it.
                if !self
                    .candidates(r_branches, writer)
                    .into_iter()
                    .any(|i| self.readable(&r_branches[i], writer))
                {
                    let info = format!("reader union lacking writer type: {}", w.type_name());
                    self.report(Kind::MissingUnionBranch, info, out);
                }
            }
            // Promotions.
            (Shape::Long, Shape::Int)
            | (Shape::Float, Shape::Int | Shape::Long)
            | (Shape::Double, Shape::Int | Shape::Long | Shape::Float)
            | (Shape::Bytes, Shape::String)
            | (Shape::String, Shape::Bytes) => {}
            _ => {
                let info = format!(
                    "reader type: {} not compatible with writer type: {}",
                    r.type_name(),
                    w.type_name()
                );
                self.report(Kind::TypeMismatch, info, out);
            }
        }
    }

    /// The branches of the reader union `branches` that might read `writer` at all: of its
    /// kind (or one it promotes to) and, for named types, of its name or with it as an
    /// alias. What [`Checker::check`] would refuse first, found through an index of the
    /// union, so a wide union costs a lookup per writer type rather than a scan.
    fn candidates(&mut self, branches: &'a [Schema], writer: &'a Schema) -> Vec<usize> {
        let index = self
            .unions
            .entry(branches.as_ptr() as usize)
            .or_insert_with(|| {
                let mut index: HashMap<String, Vec<usize>> = HashMap::new();
                for (i, branch) in branches.iter().enumerate() {
                    for key in reader_keys(Shape::of(resolve(branch, &self.reader_names))) {
                        index.entry(key).or_default().push(i);
                    }
                }
                index
            });
        let mut found: Vec<usize> = writer_keys(Shape::of(resolve(writer, &self.writer_names)))
            .iter()
            .filter_map(|k| index.get(k))
            .flatten()
            .copied()
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    /// Whether `reader` reads everything `writer` writes (the problems are not kept).
    fn readable(&mut self, reader: &'a Schema, writer: &'a Schema) -> bool {
        let mut scratch = Vec::new();
        self.check(reader, writer, &mut scratch);
        scratch.is_empty()
    }

    fn check_names(
        &mut self,
        reader: &Name,
        reader_aliases: Option<&[Alias]>,
        writer: &Name,
        out: &mut Vec<Incompatibility>,
    ) {
        let writer_full = writer.fullname(None);
        let aliased = reader_aliases
            .unwrap_or_default()
            .iter()
            .any(|alias| alias.fullname(reader.namespace()) == writer_full);
        if reader.name() != writer.name() && !aliased {
            self.location.push("name".into());
            self.report(Kind::NameMismatch, format!("expected: {writer_full}"), out);
            self.location.pop();
        }
    }

    fn check_symbols(
        &mut self,
        reader: &EnumSchema,
        writer: &EnumSchema,
        out: &mut Vec<Incompatibility>,
    ) {
        let mut missing: Vec<&str> = writer
            .symbols
            .iter()
            .filter(|s| !reader.symbols.contains(s))
            .map(String::as_str)
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let has_default = reader
            .default
            .as_ref()
            .is_some_and(|d| reader.symbols.contains(d));
        if !missing.is_empty() && !has_default {
            self.location.push("symbols".into());
            let info = format!("[{}]", missing.join(", "));
            self.report(Kind::MissingEnumSymbols, info, out);
            self.location.pop();
        }
    }

    fn check_fields(
        &mut self,
        reader: &'a RecordSchema,
        writer: &'a RecordSchema,
        out: &mut Vec<Incompatibility>,
    ) {
        self.location.push("fields".into());
        for (position, field) in reader.fields.iter().enumerate() {
            self.location.push(position.to_string());
            // By name, else by one of the reader field's aliases (never the writer's).
            let written = writer
                .fields
                .iter()
                .find(|w| w.name == field.name)
                .or_else(|| {
                    field
                        .aliases
                        .iter()
                        .find_map(|alias| writer.fields.iter().find(|w| &w.name == alias))
                });
            match written {
                Some(written) => {
                    self.location.push("type".into());
                    self.check(&field.schema, &written.schema, out);
                    self.location.pop();
                }
                None if field.default.is_none() => {
                    self.report(
                        Kind::ReaderFieldMissingDefaultValue,
                        field.name.clone(),
                        out,
                    );
                }
                None => {}
            }
            self.location.pop();
        }
        self.location.pop();
    }

    fn report(&self, kind: Kind, info: String, out: &mut Vec<Incompatibility>) {
        out.push(Incompatibility {
            kind,
            location: format!("/{}", self.location.join("/")),
            info,
        });
    }
}

/// What a reference names, or the schema itself.
fn resolve<'a>(schema: &'a Schema, names: &HashMap<String, &'a Schema>) -> &'a Schema {
    match schema {
        Schema::Ref { name } => names.get(&name.fullname(None)).copied().unwrap_or(schema),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};

    use super::*;

    fn avro(text: &str) -> Schema {
        Schema::parse_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// A record `R` with the given fields (JSON, without the brackets).
    fn record(fields: &str) -> Schema {
        avro(&format!(
            r#"{{"type":"record","name":"R","namespace":"weir.test","fields":[{fields}]}}"#
        ))
    }

    fn kinds(writer: &Schema, reader: &Schema) -> Vec<(Kind, String)> {
        can_read(writer, reader)
            .unwrap()
            .into_iter()
            .map(|p| (p.kind, p.location))
            .collect()
    }

    fn readable(writer: &Schema, reader: &Schema) -> bool {
        can_read(writer, reader).unwrap().is_empty()
    }

    /// `n` records, each with a field holding a union of itself and the records before it:
    /// checking one against itself looks at every path through them, 2^n of them.
    fn tangle(n: usize) -> Schema {
        let records: Vec<String> = (0..n)
            .map(|i| {
                let names: Vec<String> = (0..=i).map(|j| format!("\"R{j}\"")).collect();
                format!(
                    r#"{{"type":"record","name":"R{i}","fields":[{{"name":"u","type":["null",{}]}}]}}"#,
                    names.join(",")
                )
            })
            .collect();
        avro(&format!(
            r#"{{"type":"record","name":"Top","fields":[{{"name":"all","type":[{}]}}]}}"#,
            records.join(",")
        ))
    }

    #[test]
    fn wide_and_tangled_schemas_are_checked_within_bounds() {
        // A wide union of named types is one comparison per branch, not per pair.
        let branches: Vec<String> = (0..1000)
            .rev()
            .map(|i| format!(r#"{{"type":"fixed","name":"F{i}","size":1}}"#))
            .collect();
        let wide = avro(&format!(r#"[{}]"#, branches.join(",")));
        assert!(readable(&wide, &wide));
        // Records tangled through unions of each other make the check grow without end;
        // it stops at its bounds.
        let tangled = tangle(60);
        assert_eq!(
            can_read(&tangled, &tangled).unwrap_err(),
            TooComplex(MAX_STEPS)
        );
        let previous = [Previous {
            version: 3,
            schema: &tangled,
            text: "{}",
        }];
        let e = check(Level::Backward, &tangled, &previous).unwrap_err();
        assert!(e.contains("too complex to check"), "{e}");
    }

    #[test]
    fn levels_parse_in_any_case() {
        for level in Level::ALL {
            assert_eq!(Level::parse(level.as_str()), Some(level));
            assert_eq!(Level::parse(&level.as_str().to_lowercase()), Some(level));
        }
        assert_eq!(Level::parse("SIDEWAYS"), None);
    }

    #[test]
    fn added_and_removed_fields() {
        let old = record(r#"{"name":"a","type":"int"}"#);
        let with_default =
            record(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":""}"#);
        let without_default = record(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#);
        // A new reader fills in the default; an old reader skips the new field.
        assert!(readable(&old, &with_default));
        assert!(readable(&with_default, &old));
        assert_eq!(
            kinds(&old, &without_default),
            [(
                Kind::ReaderFieldMissingDefaultValue,
                "/fields/1".to_string()
            )]
        );
        assert!(readable(&without_default, &old));
        // A field matched through one of the reader's aliases.
        let renamed = record(r#"{"name":"a2","type":"int","aliases":["a"]}"#);
        assert!(readable(&old, &renamed));
    }

    #[test]
    fn promotions() {
        let field = |t: &str| record(&format!(r#"{{"name":"a","type":{t}}}"#));
        let ok = [
            ("\"int\"", "\"long\""),
            ("\"int\"", "\"float\""),
            ("\"int\"", "\"double\""),
            ("\"long\"", "\"float\""),
            ("\"long\"", "\"double\""),
            ("\"float\"", "\"double\""),
            ("\"string\"", "\"bytes\""),
            ("\"bytes\"", "\"string\""),
            (r#"{"type":"int","logicalType":"date"}"#, "\"long\""),
            (
                r#"{"type":"long","logicalType":"timestamp-millis"}"#,
                "\"long\"",
            ),
        ];
        for (writer, reader) in ok {
            assert!(
                readable(&field(writer), &field(reader)),
                "{writer} -> {reader}"
            );
        }
        for (writer, reader) in [
            ("\"long\"", "\"int\""),
            ("\"double\"", "\"float\""),
            ("\"int\"", "\"string\""),
            ("\"boolean\"", "\"int\""),
        ] {
            let problems = kinds(&field(writer), &field(reader));
            assert_eq!(
                problems,
                [(Kind::TypeMismatch, "/fields/0/type".to_string())],
                "{writer} -> {reader}"
            );
        }
    }

    #[test]
    fn enums() {
        let e = |symbols: &str, default: &str| {
            record(&format!(
                r#"{{"name":"e","type":{{"type":"enum","name":"E","symbols":[{symbols}]{default}}}}}"#
            ))
        };
        let ab = e(r#""A","B""#, "");
        let abc = e(r#""A","B","C""#, "");
        assert!(readable(&ab, &abc));
        let problems = can_read(&abc, &ab).unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].kind, Kind::MissingEnumSymbols);
        assert_eq!(problems[0].location, "/fields/0/type/symbols");
        assert_eq!(problems[0].info, "[C]");
        // A reader with a default reads symbols it does not know as the default.
        assert!(readable(&abc, &e(r#""A","B""#, r#","default":"A""#)));
    }

    #[test]
    fn unions() {
        let field = |t: &str| record(&format!(r#"{{"name":"a","type":{t}}}"#));
        let optional = field(r#"["null","string"]"#);
        let wider = field(r#"["null","string","int"]"#);
        let plain = field(r#""string""#);
        assert!(readable(&optional, &wider));
        assert_eq!(
            kinds(&wider, &optional),
            [(Kind::MissingUnionBranch, "/fields/0/type/2".to_string())]
        );
        // A reader union reads a plain writer type it has a branch for.
        assert!(readable(&plain, &optional));
        // A plain reader cannot read the null a writer union may hold.
        assert_eq!(
            kinds(&optional, &plain),
            [(Kind::TypeMismatch, "/fields/0/type/0".to_string())]
        );
        // Promotion into a union branch.
        assert!(readable(&field(r#""int""#), &field(r#"["null","long"]"#)));
    }

    #[test]
    fn names_sizes_and_decimals() {
        let fixed = |name: &str, size: u32| {
            record(&format!(
                r#"{{"name":"f","type":{{"type":"fixed","name":"{name}","size":{size}}}}}"#
            ))
        };
        assert_eq!(
            kinds(&fixed("F", 4), &fixed("F", 8)),
            [(Kind::FixedSizeMismatch, "/fields/0/type/size".to_string())]
        );
        assert_eq!(
            kinds(&fixed("F", 4), &fixed("G", 4)),
            [(Kind::NameMismatch, "/fields/0/type/name".to_string())]
        );
        let renamed = avro(r#"{"type":"record","name":"S","namespace":"weir.test","fields":[]}"#);
        assert_eq!(
            kinds(&record(""), &renamed),
            [(Kind::NameMismatch, "/name".to_string())]
        );
        let aliased = avro(
            r#"{"type":"record","name":"S","namespace":"weir.test","aliases":["R"],"fields":[]}"#,
        );
        assert!(readable(&record(""), &aliased));
        let decimal = |precision: u32, scale: u32| {
            record(&format!(
                r#"{{"name":"d","type":{{"type":"bytes","logicalType":"decimal","precision":{precision},"scale":{scale}}}}}"#
            ))
        };
        assert!(readable(&decimal(10, 2), &decimal(10, 2)));
        assert_eq!(
            kinds(&decimal(10, 2), &decimal(10, 4)),
            [(Kind::TypeMismatch, "/fields/0/type".to_string())]
        );
        // A decimal reads plain bytes and the other way round, as in Avro Java.
        assert!(readable(
            &record(r#"{"name":"d","type":"bytes"}"#),
            &decimal(10, 2)
        ));
    }

    #[test]
    fn recursive_types_terminate() {
        let list = |extra: &str| {
            avro(&format!(
                r#"{{"type":"record","name":"Node","fields":[{{"name":"value","type":"int"}},
                   {{"name":"next","type":["null","Node"]}}{extra}]}}"#
            ))
        };
        assert!(readable(&list(""), &list("")));
        assert!(readable(
            &list(""),
            &list(r#",{"name":"tag","type":"string","default":""}"#)
        ));
        assert!(!readable(
            &list(""),
            &list(r#",{"name":"tag","type":"string"}"#)
        ));
    }

    /// Two fields of the same record type swap places, so the type is defined in a
    /// different field in each schema.
    fn swapped() -> (Schema, Schema) {
        let writer = record(
            r#"{"name":"bid","type":{"type":"record","name":"Price","fields":[{"name":"v","type":"double"}]}},
               {"name":"ask","type":"Price"}"#,
        );
        let reader = record(
            r#"{"name":"ask","type":{"type":"record","name":"Price","fields":[{"name":"v","type":"double"}]}},
               {"name":"bid","type":"Price"}"#,
        );
        (writer, reader)
    }

    #[test]
    fn references_and_inline_definitions_compare_by_content() {
        let (writer, reader) = swapped();
        assert!(readable(&writer, &reader));
        assert!(readable(&reader, &writer));
    }

    #[test]
    fn confluent_messages() {
        let old = record(r#"{"name":"a","type":"int"}"#);
        let new = record(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#);
        let text = r#"{"old":"schema"}"#;
        let previous = [Previous {
            version: 3,
            schema: &old,
            text,
        }];
        assert!(check(Level::Forward, &new, &previous).unwrap().is_empty());
        assert!(check(Level::None, &new, &previous).unwrap().is_empty());
        let messages = check(Level::Backward, &new, &previous).unwrap();
        assert_eq!(
            messages,
            [
                "{errorType:'READER_FIELD_MISSING_DEFAULT_VALUE', description:'The field 'b' at path '/fields/1' in the new schema has no default value and is missing in the old schema', additionalInfo:'b'}",
                "{oldSchemaVersion: 3}",
                r#"{oldSchema: '{"old":"schema"}'}"#,
                "{validateFields: 'false', compatibility: 'BACKWARD'}",
            ]
        );
        // Forward names the old schema as the reader.
        let messages = check(
            Level::Full,
            &old,
            &[Previous {
                version: 1,
                schema: &new,
                text,
            }],
        )
        .unwrap();
        assert!(
            messages[0].contains(
                "in the old schema has no default value and is missing in the new schema"
            ),
            "{messages:?}"
        );
    }

    #[test]
    fn transitive_levels_check_every_earlier_version() {
        let v1 = record(r#"{"name":"a","type":"int"}"#);
        let v2 = record(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":""}"#);
        let v3 = record(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#);
        let previous = [
            Previous {
                version: 1,
                schema: &v1,
                text: "v1",
            },
            Previous {
                version: 2,
                schema: &v2,
                text: "v2",
            },
        ];
        assert!(check(Level::Backward, &v3, &previous).unwrap().is_empty());
        assert!(check(Level::Full, &v3, &previous).unwrap().is_empty());
        let messages = check(Level::BackwardTransitive, &v3, &previous).unwrap();
        assert!(
            messages.contains(&"{oldSchemaVersion: 1}".to_string()),
            "{messages:?}"
        );
        assert!(
            !check(Level::FullTransitive, &v3, &previous)
                .unwrap()
                .is_empty()
        );
    }

    /// Where apache-avro's own checker differs from Avro Java (and so from Confluent): the
    /// reasons this module exists. If a new apache-avro release fixes these, this test says
    /// so, and the module could shrink.
    #[test]
    fn apache_avro_can_read_differs_from_confluent() {
        // Missing enum symbols: apache-avro says "partially compatible".
        let e = |symbols: &str| {
            avro(&format!(
                r#"{{"type":"enum","name":"E","symbols":[{symbols}]}}"#
            ))
        };
        assert_eq!(
            SchemaCompatibility::can_read(&e(r#""A","B","C""#), &e(r#""A","B""#)),
            Ok(Compatibility::Partial)
        );
        assert!(!readable(&e(r#""A","B","C""#), &e(r#""A","B""#)));
        // A union reader lacking a writer branch: also "partial".
        let wide = avro(r#"["null","string","int"]"#);
        let narrow = avro(r#"["null","string"]"#);
        assert_eq!(
            SchemaCompatibility::can_read(&wide, &narrow),
            Ok(Compatibility::Partial)
        );
        assert!(!readable(&wide, &narrow));
        // A type defined inline on one side and referenced by name on the other.
        let (writer, reader) = swapped();
        assert!(SchemaCompatibility::can_read(&writer, &reader).is_err());
        assert!(readable(&writer, &reader));
        // Where both agree.
        let old = record(r#"{"name":"a","type":"int"}"#);
        let new = record(r#"{"name":"a","type":"long"},{"name":"b","type":"string","default":""}"#);
        assert_eq!(
            SchemaCompatibility::can_read(&old, &new),
            Ok(Compatibility::Full)
        );
        assert!(readable(&old, &new));
        assert!(SchemaCompatibility::can_read(&new, &old).is_err());
        assert!(!readable(&new, &old));
    }
}
