//! Avro values, decoded with their writer schema, as the guest contract's typed fields.
//!
//! Nested records are flattened into dotted names (`quote.bid`); a union is the value of
//! its branch; a null nested record is one null field named after the record field. The
//! full mapping is documented on the WIT `value` type.
//!
//! Decoding reads the bytes straight into fields, without building Avro's own value tree,
//! and every message is decoded under [`DecodeLimits`]: how deep values nest, how many
//! bytes the decoded fields take in all (strings, bytes, the JSON text of arrays and maps,
//! and a fixed cost per value), and how many array and map items one message holds. Every
//! length and count is checked against the bytes that remain and against those budgets
//! before anything is allocated, so a message of a few bytes cannot claim gigabytes, and a
//! recursive schema cannot take the decoder deeper than `max_depth`. apache-avro's own
//! reader has no such budgets (it allocates what a length claims, and recurses without a
//! bound), which is why this module decodes the wire format itself.

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, Name, UuidSchema};

use crate::model::{Decimal, Field, SchemaField, Value, ValueKind};

/// Bounds on what decoding one message may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// How deeply records, arrays and maps may nest, the value itself being the first
    /// level (default 64).
    pub max_depth: usize,
    /// Bytes the decoded message may take: its fields (each field's name, and its text,
    /// bytes, or the JSON text of an array or map, counted as it is written), and the
    /// in-memory size of each field (default 8 MiB).
    pub max_bytes: usize,
    /// Array and map items in the whole message, at any depth (default 1,000,000).
    pub max_items: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_depth: 64,
            max_bytes: 8 << 20,
            max_items: 1_000_000,
        }
    }
}

/// A message body that does not decode. The message says what and, where it applies, in
/// which field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The flattened name of the field being decoded (empty at the top).
    pub field: String,
    /// What is wrong.
    pub kind: DecodeErrorKind,
}

/// What is wrong with a body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The body ends before the value does.
    Truncated {
        /// What was being read.
        what: &'static str,
    },
    /// A length claims more bytes than the body has left.
    LengthBeyondBody {
        /// What the length is of.
        what: &'static str,
        /// The length claimed.
        claimed: u64,
        /// The bytes left in the body.
        remaining: usize,
    },
    /// A limit of [`DecodeLimits`] was reached.
    Limit {
        /// Which setting (`decode.max_depth`…).
        setting: &'static str,
        /// Its value.
        limit: usize,
    },
    /// Bytes that are not valid for the type.
    Invalid(String),
    /// Bytes left after the value.
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.field.is_empty() {
            write!(f, "field `{}`: ", self.field)?;
        }
        match &self.kind {
            DecodeErrorKind::Truncated { what } => {
                write!(f, "the body ends in the middle of {what} (truncated)")
            }
            DecodeErrorKind::LengthBeyondBody {
                what,
                claimed,
                remaining,
            } => write!(
                f,
                "{what} claims {claimed} bytes, but only {remaining} remain in the body"
            ),
            DecodeErrorKind::Limit { setting, limit } => match *setting {
                "max_depth" => write!(
                    f,
                    "values nest deeper than {limit} levels (decode.max_depth)"
                ),
                "max_items" => write!(
                    f,
                    "more than {limit} array and map items in one message (decode.max_items)"
                ),
                _ => write!(
                    f,
                    "the decoded message would take more than {limit} bytes (decode.max_bytes)"
                ),
            },
            DecodeErrorKind::Invalid(detail) => f.write_str(detail),
            DecodeErrorKind::TrailingBytes(n) => write!(
                f,
                "{n} bytes left over after the record: the body is longer than its schema allows"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

type NodeId = usize;

/// A writer schema compiled for decoding: one node per type, named types referred to by
/// index (so a recursive type is a cycle, not an infinite tree).
#[derive(Debug)]
pub struct AvroDecoder {
    nodes: Vec<Node>,
    root: NodeId,
    limits: DecodeLimits,
    /// How values are laid out by position (for guests of 0.2.0), and the fields that
    /// gives.
    lay: Lay,
    fields: Vec<SchemaField>,
}

/// How a node's value is laid out by position: the fixed shape of a schema's values.
///
/// Records are flattened into their fields (dotted names, as [`AvroDecoder::decode`]
/// names them). A union of null and one other type is laid out as that type, every field
/// of it null when the value is null. What has no fixed shape is one field of JSON text:
/// arrays, maps, a record inside itself (recursion), a union of several types of which one
/// is a record, array or map, and records nested deeper than `decode.max_depth`.
#[derive(Debug)]
enum Lay {
    /// One value, decoded as it is (a union of scalars: its branch's value).
    Value(NodeId),
    /// One value: the JSON text of the node's value (null for a union's null branch).
    Json(NodeId),
    /// A record's fields, in order.
    Record(Vec<Lay>),
    /// A union of null and `branch`, laid out as `inner`; `width` values either way.
    Nullable {
        branches: NodeId,
        branch: NodeId,
        inner: Box<Lay>,
        width: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LongKind {
    Long,
    TimeMicros,
    TimestampMillis,
    TimestampMicros,
    TimestampNanos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BytesKind {
    Bytes,
    Decimal { scale: u32 },
    BigDecimal,
    Uuid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FixedKind {
    Fixed,
    Decimal { scale: u32 },
    Uuid,
    Duration,
}

#[derive(Debug)]
enum Node {
    Null,
    Boolean,
    /// `int`, and the `date` and `time-millis` logical types.
    Int,
    Long(LongKind),
    Float,
    Double,
    Bytes(BytesKind),
    String {
        uuid: bool,
    },
    Fixed {
        size: usize,
        kind: FixedKind,
    },
    Enum {
        symbols: Vec<String>,
    },
    Array(NodeId),
    Map(NodeId),
    Union(Vec<NodeId>),
    Record {
        name: String,
        fields: Vec<(String, NodeId)>,
    },
    /// A placeholder while a named type's node is being built.
    Pending,
}

/// Builds the nodes of a schema.
struct Compiler {
    nodes: Vec<Node>,
    named: HashMap<Name, NodeId>,
}

impl Compiler {
    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// A named type's node, reserved before its parts are compiled so they can refer to it.
    fn reserve(&mut self, name: &Name) -> NodeId {
        let id = self.push(Node::Pending);
        self.named.insert(name.clone(), id);
        id
    }

    fn named(&mut self, name: &Name, node: Node) -> NodeId {
        let id = self.reserve(name);
        self.nodes[id] = node;
        id
    }

    fn compile(&mut self, schema: &Schema) -> Result<NodeId, String> {
        Ok(match schema {
            Schema::Null => self.push(Node::Null),
            Schema::Boolean => self.push(Node::Boolean),
            Schema::Int | Schema::Date | Schema::TimeMillis => self.push(Node::Int),
            Schema::Long => self.push(Node::Long(LongKind::Long)),
            Schema::TimeMicros => self.push(Node::Long(LongKind::TimeMicros)),
            Schema::TimestampMillis | Schema::LocalTimestampMillis => {
                self.push(Node::Long(LongKind::TimestampMillis))
            }
            Schema::TimestampMicros | Schema::LocalTimestampMicros => {
                self.push(Node::Long(LongKind::TimestampMicros))
            }
            Schema::TimestampNanos | Schema::LocalTimestampNanos => {
                self.push(Node::Long(LongKind::TimestampNanos))
            }
            Schema::Float => self.push(Node::Float),
            Schema::Double => self.push(Node::Double),
            Schema::Bytes => self.push(Node::Bytes(BytesKind::Bytes)),
            Schema::BigDecimal => self.push(Node::Bytes(BytesKind::BigDecimal)),
            Schema::String => self.push(Node::String { uuid: false }),
            Schema::Uuid(UuidSchema::String) => self.push(Node::String { uuid: true }),
            Schema::Uuid(UuidSchema::Bytes) => self.push(Node::Bytes(BytesKind::Uuid)),
            Schema::Uuid(UuidSchema::Fixed(f)) => self.named(
                &f.name,
                Node::Fixed {
                    size: f.size,
                    kind: FixedKind::Uuid,
                },
            ),
            Schema::Decimal(d) => {
                let scale = u32::try_from(d.scale).map_err(|_| "decimal scale is too large")?;
                match &d.inner {
                    InnerDecimalSchema::Bytes => {
                        self.push(Node::Bytes(BytesKind::Decimal { scale }))
                    }
                    InnerDecimalSchema::Fixed(f) => self.named(
                        &f.name,
                        Node::Fixed {
                            size: f.size,
                            kind: FixedKind::Decimal { scale },
                        },
                    ),
                }
            }
            Schema::Duration(f) => self.named(
                &f.name,
                Node::Fixed {
                    size: f.size,
                    kind: FixedKind::Duration,
                },
            ),
            Schema::Fixed(f) => self.named(
                &f.name,
                Node::Fixed {
                    size: f.size,
                    kind: FixedKind::Fixed,
                },
            ),
            Schema::Enum(e) => self.named(
                &e.name,
                Node::Enum {
                    symbols: e.symbols.clone(),
                },
            ),
            Schema::Array(a) => {
                let items = self.compile(&a.items)?;
                self.push(Node::Array(items))
            }
            Schema::Map(m) => {
                let values = self.compile(&m.types)?;
                self.push(Node::Map(values))
            }
            Schema::Union(u) => {
                let branches = u
                    .variants()
                    .iter()
                    .map(|b| self.compile(b))
                    .collect::<Result<Vec<_>, _>>()?;
                self.push(Node::Union(branches))
            }
            Schema::Record(r) => {
                let id = self.reserve(&r.name);
                let fields = r
                    .fields
                    .iter()
                    .map(|f| Ok((f.name.clone(), self.compile(&f.schema)?)))
                    .collect::<Result<Vec<_>, String>>()?;
                self.nodes[id] = Node::Record {
                    name: r.name.fullname(None),
                    fields,
                };
                id
            }
            Schema::Ref { name } => *self.named.get(name).ok_or_else(|| {
                format!("the schema refers to {name:?}, which it does not define")
            })?,
        })
    }
}

impl AvroDecoder {
    /// Prepares `schema` for decoding under `limits`.
    pub fn new(schema: &Schema, limits: DecodeLimits) -> Result<Self, String> {
        let mut compiler = Compiler {
            nodes: Vec::new(),
            named: HashMap::new(),
        };
        let root = compiler.compile(schema)?;
        let mut nodes = compiler.nodes;
        nodes.shrink_to_fit();
        let mut fields = Vec::new();
        let prefix = if matches!(nodes[root], Node::Record { .. }) {
            ""
        } else {
            "value"
        };
        let lay = lay(
            &nodes,
            root,
            prefix,
            false,
            &mut Vec::new(),
            limits,
            &mut fields,
        );
        Ok(Self {
            nodes,
            root,
            limits,
            lay,
            fields,
        })
    }

    /// The fields values are laid out in by [`AvroDecoder::decode_values`], in order.
    pub fn fields(&self) -> &[SchemaField] {
        &self.fields
    }

    /// Decodes one Avro body into values by position in [`AvroDecoder::fields`], and what
    /// they count against [`DecodeLimits::max_bytes`].
    pub fn decode_values(&self, body: &[u8]) -> Result<(Vec<Value>, usize), DecodeError> {
        let mut run = self.run(body);
        let mut values = Vec::with_capacity(self.fields.len());
        run.charge(self.fields.len() * std::mem::size_of::<Value>())?;
        if let Err(mut e) = run.lay(&self.lay, 0, &mut values) {
            // The field being decoded is the one whose value would have come next.
            if e.field.is_empty()
                && let Some(f) = self.fields.get(values.len())
            {
                e.field = f.name.clone();
            }
            return Err(e);
        }
        let bytes_left = run.bytes_left;
        self.finish(run, body.len())?;
        Ok((values, self.limits.max_bytes - bytes_left))
    }

    fn run<'a>(&'a self, body: &'a [u8]) -> Run<'a> {
        Run {
            nodes: &self.nodes,
            input: body,
            pos: 0,
            bytes_left: self.limits.max_bytes,
            items_left: self.limits.max_items,
            limits: self.limits,
            name: String::new(),
            json_charged: 0,
        }
    }

    fn finish(&self, run: Run<'_>, len: usize) -> Result<(), DecodeError> {
        if run.pos != len {
            return Err(DecodeError {
                field: String::new(),
                kind: DecodeErrorKind::TrailingBytes(len - run.pos),
            });
        }
        Ok(())
    }

    /// The limits this decoder applies.
    pub fn limits(&self) -> DecodeLimits {
        self.limits
    }

    /// Decodes one Avro body into flattened fields, and what they count against
    /// [`DecodeLimits::max_bytes`]. Errors say what is wrong with the bytes, and where.
    pub fn decode(&self, body: &[u8]) -> Result<(Vec<Field>, usize), DecodeError> {
        let mut run = self.run(body);
        let mut fields = Vec::new();
        if !matches!(self.nodes[self.root], Node::Record { .. }) {
            // A non-record value schema: one field named `value`.
            run.name.push_str("value");
        }
        run.flatten(self.root, 0, &mut fields)?;
        let bytes_left = run.bytes_left;
        self.finish(run, body.len())?;
        Ok((fields, self.limits.max_bytes - bytes_left))
    }

    /// The flattened fields of the schema and the kind of value each decodes to, as
    /// [`AvroDecoder::decode`] names them. A field that is always null has no kind and is
    /// left out; a union takes its first non-null branch's kind. A recursive record has no
    /// fixed set of fields, so it is an error naming the record.
    pub fn field_kinds(&self) -> Result<Vec<(String, ValueKind)>, String> {
        let mut out = Vec::new();
        let mut path = Vec::new();
        let name = if matches!(self.nodes[self.root], Node::Record { .. }) {
            ""
        } else {
            "value"
        };
        self.kinds_into(name, self.root, &mut path, &mut out)?;
        Ok(out)
    }

    fn kinds_into(
        &self,
        name: &str,
        id: NodeId,
        path: &mut Vec<NodeId>,
        out: &mut Vec<(String, ValueKind)>,
    ) -> Result<(), String> {
        let kind = match &self.nodes[id] {
            Node::Record {
                name: record,
                fields,
            } => {
                if path.contains(&id) {
                    return Err(format!(
                        "record {record} contains itself (through field `{name}`), so its fields are not a fixed set of columns"
                    ));
                }
                if path.len() >= self.limits.max_depth {
                    return Err(format!(
                        "records nest deeper than {} levels (decode.max_depth)",
                        self.limits.max_depth
                    ));
                }
                path.push(id);
                for (field, node) in fields {
                    let full = join(name, field);
                    self.kinds_into(&full, *node, path, out)?;
                }
                path.pop();
                return Ok(());
            }
            Node::Union(branches) => {
                if let Some(branch) = branches
                    .iter()
                    .find(|b| !matches!(self.nodes[**b], Node::Null))
                {
                    self.kinds_into(name, *branch, path, out)?;
                }
                return Ok(());
            }
            Node::Null | Node::Pending => return Ok(()),
            node => scalar_kind(node).unwrap_or(ValueKind::Text),
        };
        out.push((name.to_string(), kind));
        Ok(())
    }
}

/// The kind of value a node other than a record or union decodes to; `None` for null.
/// Strings, enums, uuids, big decimals and durations are text; arrays and maps arrive as
/// JSON text.
fn scalar_kind(node: &Node) -> Option<ValueKind> {
    Some(match node {
        Node::Null | Node::Pending | Node::Record { .. } | Node::Union(_) => return None,
        Node::Boolean => ValueKind::Boolean,
        Node::Int | Node::Long(LongKind::Long | LongKind::TimeMicros) => ValueKind::Int,
        Node::Long(_) => ValueKind::Timestamp,
        Node::Float | Node::Double => ValueKind::Float,
        Node::Bytes(BytesKind::Bytes)
        | Node::Fixed {
            kind: FixedKind::Fixed,
            ..
        } => ValueKind::Bytes,
        Node::Bytes(BytesKind::Decimal { .. })
        | Node::Fixed {
            kind: FixedKind::Decimal { .. },
            ..
        } => ValueKind::Decimal,
        Node::Bytes(_)
        | Node::String { .. }
        | Node::Fixed { .. }
        | Node::Enum { .. }
        | Node::Array(_)
        | Node::Map(_) => ValueKind::Text,
    })
}

/// Lays out node `id`, named `name`, appending its fields to `out` (see [`Lay`]). `path`
/// holds the records being laid out (to tell recursion).
fn lay(
    nodes: &[Node],
    id: NodeId,
    name: &str,
    nullable: bool,
    path: &mut Vec<NodeId>,
    limits: DecodeLimits,
    out: &mut Vec<SchemaField>,
) -> Lay {
    let mut leaf = |kind: Option<ValueKind>, nullable: bool| {
        out.push(SchemaField {
            name: name.to_string(),
            kind,
            nullable,
        });
    };
    match &nodes[id] {
        Node::Record { fields, .. } => {
            if path.contains(&id) || path.len() >= limits.max_depth {
                leaf(Some(ValueKind::Text), nullable);
                return Lay::Json(id);
            }
            path.push(id);
            let parts = fields
                .iter()
                .map(|(field, node)| {
                    lay(
                        nodes,
                        *node,
                        &join(name, field),
                        nullable,
                        path,
                        limits,
                        out,
                    )
                })
                .collect();
            path.pop();
            Lay::Record(parts)
        }
        Node::Union(branches) => {
            let null = branches.iter().any(|b| matches!(nodes[*b], Node::Null));
            let others: Vec<NodeId> = branches
                .iter()
                .copied()
                .filter(|b| !matches!(nodes[*b], Node::Null))
                .collect();
            let complex = |b: &NodeId| {
                matches!(
                    nodes[*b],
                    Node::Record { .. } | Node::Union(_) | Node::Array(_) | Node::Map(_)
                )
            };
            match others.as_slice() {
                [] => {
                    leaf(None, true);
                    Lay::Value(id)
                }
                [only] if complex(only) => {
                    let start = out.len();
                    let inner = lay(nodes, *only, name, nullable || null, path, limits, out);
                    Lay::Nullable {
                        branches: id,
                        branch: *only,
                        inner: Box::new(inner),
                        width: out.len() - start,
                    }
                }
                _ if others.iter().any(complex) => {
                    leaf(Some(ValueKind::Text), nullable || null);
                    Lay::Json(id)
                }
                _ => {
                    let kinds: Vec<Option<ValueKind>> =
                        others.iter().map(|b| scalar_kind(&nodes[*b])).collect();
                    let kind = if kinds.windows(2).all(|w| w[0] == w[1]) {
                        kinds[0]
                    } else {
                        None
                    };
                    leaf(kind, nullable || null);
                    Lay::Value(id)
                }
            }
        }
        Node::Array(_) | Node::Map(_) => {
            leaf(Some(ValueKind::Text), nullable);
            Lay::Json(id)
        }
        Node::Null | Node::Pending => {
            leaf(None, true);
            Lay::Value(id)
        }
        node => {
            leaf(scalar_kind(node), nullable);
            Lay::Value(id)
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// One message being decoded: the position in the body and what is left of the budgets.
struct Run<'a> {
    nodes: &'a [Node],
    input: &'a [u8],
    pos: usize,
    bytes_left: usize,
    items_left: usize,
    limits: DecodeLimits,
    /// The flattened name of the field being decoded.
    name: String,
    /// How much of the JSON text being written for an array or map is charged already.
    json_charged: usize,
}

type Decoded<T> = Result<T, DecodeError>;

impl<'a> Run<'a> {
    fn fail(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            field: self.name.clone(),
            kind,
        }
    }

    fn invalid(&self, detail: String) -> DecodeError {
        self.fail(DecodeErrorKind::Invalid(detail))
    }

    fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    fn charge(&mut self, bytes: usize) -> Decoded<()> {
        match self.bytes_left.checked_sub(bytes) {
            Some(left) => {
                self.bytes_left = left;
                Ok(())
            }
            None => Err(self.fail(DecodeErrorKind::Limit {
                setting: "max_bytes",
                limit: self.limits.max_bytes,
            })),
        }
    }

    fn deeper(&self, depth: usize) -> Decoded<usize> {
        if depth >= self.limits.max_depth {
            return Err(self.fail(DecodeErrorKind::Limit {
                setting: "max_depth",
                limit: self.limits.max_depth,
            }));
        }
        Ok(depth + 1)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Decoded<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.fail(DecodeErrorKind::Truncated { what }));
        }
        let input: &'a [u8] = self.input;
        let start = self.pos;
        self.pos += n;
        Ok(&input[start..self.pos])
    }

    /// A zig-zag varint long (at most 10 bytes).
    fn long(&mut self, what: &'static str) -> Decoded<i64> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.input.get(self.pos) else {
                return Err(self.fail(DecodeErrorKind::Truncated { what }));
            };
            self.pos += 1;
            raw |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err(self.invalid(format!(
            "{what} is a variable-length integer longer than 10 bytes"
        )))
    }

    fn int(&mut self, what: &'static str) -> Decoded<i32> {
        let v = self.long(what)?;
        i32::try_from(v).map_err(|_| self.invalid(format!("{what} {v} does not fit an int")))
    }

    /// A length (of bytes, a string), checked against what the body has left.
    fn length(&mut self, what: &'static str) -> Decoded<usize> {
        let n = self.long(what)?;
        if n < 0 {
            return Err(self.invalid(format!("{what} has a negative length ({n})")));
        }
        let remaining = self.remaining();
        if n as u64 > remaining as u64 {
            return Err(self.fail(DecodeErrorKind::LengthBeyondBody {
                what,
                claimed: n as u64,
                remaining,
            }));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self, what: &'static str) -> Decoded<&'a [u8]> {
        let n = self.length(what)?;
        self.take(n, what)
    }

    fn text(&mut self, what: &'static str) -> Decoded<String> {
        let bytes = self.bytes(what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(self.invalid(format!("{what} is not valid UTF-8: {e}"))),
        }
    }

    fn double(&mut self) -> Decoded<f64> {
        let b = self.take(8, "a double")?;
        Ok(f64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn float(&mut self) -> Decoded<f32> {
        let b = self.take(4, "a float")?;
        Ok(f32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn boolean(&mut self) -> Decoded<bool> {
        match self.take(1, "a boolean")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.invalid(format!("a boolean is byte {b:#04x}, neither 0 nor 1"))),
        }
    }

    fn union_branch(&mut self, branches: &[NodeId]) -> Decoded<NodeId> {
        let index = self.long("a union branch index")?;
        usize::try_from(index)
            .ok()
            .and_then(|i| branches.get(i).copied())
            .ok_or_else(|| {
                self.invalid(format!(
                    "union branch {index} is not in the schema (it has {})",
                    branches.len()
                ))
            })
    }

    fn symbol<'s>(&mut self, symbols: &'s [String]) -> Decoded<&'s str> {
        let index = self.int("an enum index")?;
        usize::try_from(index)
            .ok()
            .and_then(|i| symbols.get(i))
            .map(String::as_str)
            .ok_or_else(|| {
                self.invalid(format!(
                    "enum index {index} is not a symbol of the schema (it has {})",
                    symbols.len()
                ))
            })
    }

    /// The count of the next block of an array or map (0 at the end), taken from the items
    /// budget. A negative count is followed by the block's size in bytes.
    fn block(&mut self) -> Decoded<usize> {
        let count = self.long("an array or map block count")?;
        let count = if count < 0 {
            self.long("an array or map block size")?;
            count.unsigned_abs()
        } else {
            count as u64
        };
        if count > self.items_left as u64 {
            return Err(self.fail(DecodeErrorKind::Limit {
                setting: "max_items",
                limit: self.limits.max_items,
            }));
        }
        self.items_left -= count as usize;
        Ok(count as usize)
    }

    /// Adds a flattened field, charging its name, its text or bytes, and its struct.
    fn field(&mut self, value: Value, out: &mut Vec<Field>) -> Decoded<()> {
        let payload = match &value {
            Value::Text(t) => t.len(),
            Value::Bytes(b) => b.len(),
            Value::Decimal(d) => d.unscaled.len(),
            _ => 0,
        };
        self.charge(std::mem::size_of::<Field>() + self.name.len() + payload)?;
        out.push(Field {
            name: self.name.clone(),
            value,
        });
        Ok(())
    }

    /// Decodes the value of node `id` as flattened fields named from `self.name`.
    fn flatten(&mut self, id: NodeId, depth: usize, out: &mut Vec<Field>) -> Decoded<()> {
        let nodes = self.nodes;
        match &nodes[id] {
            Node::Record { fields, .. } => {
                let depth = self.deeper(depth)?;
                let prefix = self.name.len();
                for (field, node) in fields {
                    if prefix > 0 {
                        self.name.push('.');
                    }
                    self.name.push_str(field);
                    self.flatten(*node, depth, out)?;
                    self.name.truncate(prefix);
                }
                Ok(())
            }
            Node::Union(branches) => {
                let branch = self.union_branch(branches)?;
                self.flatten(branch, depth, out)
            }
            Node::Array(_) | Node::Map(_) => {
                let mut json = Vec::new();
                self.json_charged = 0;
                self.json_value(id, depth, &mut json)?;
                self.charge_json(&json)?;
                let text = String::from_utf8(json).expect("JSON text is UTF-8");
                self.field(Value::Text(text), out)
            }
            _ => {
                let value = self.scalar(id)?;
                self.field(value, out)
            }
        }
    }

    /// Appends a value, charging its payload (its slot was charged up front).
    fn value(&mut self, value: Value, out: &mut Vec<Value>) -> Decoded<()> {
        let payload = match &value {
            Value::Text(t) => t.len(),
            Value::Bytes(b) => b.len(),
            Value::Decimal(d) => d.unscaled.len(),
            _ => 0,
        };
        self.charge(payload)?;
        out.push(value);
        Ok(())
    }

    /// Decodes a value laid out as `lay`, appending its values by position.
    fn lay(&mut self, lay: &Lay, depth: usize, out: &mut Vec<Value>) -> Decoded<()> {
        let nodes = self.nodes;
        match lay {
            Lay::Record(parts) => {
                let depth = self.deeper(depth)?;
                for part in parts {
                    self.lay(part, depth, out)?;
                }
                Ok(())
            }
            Lay::Nullable {
                branches,
                branch,
                inner,
                width,
            } => {
                let Node::Union(list) = &nodes[*branches] else {
                    unreachable!("a nullable layout is of a union")
                };
                let chosen = self.union_branch(list)?;
                if chosen == *branch {
                    self.lay(inner, depth, out)
                } else {
                    out.extend(std::iter::repeat_n(Value::Null, *width));
                    Ok(())
                }
            }
            Lay::Value(id) => {
                let mut id = *id;
                while let Node::Union(list) = &nodes[id] {
                    id = self.union_branch(list)?;
                }
                let value = self.scalar(id)?;
                self.value(value, out)
            }
            Lay::Json(id) => {
                let mut id = *id;
                while let Node::Union(list) = &nodes[id] {
                    id = self.union_branch(list)?;
                }
                if matches!(nodes[id], Node::Null) {
                    out.push(Value::Null);
                    return Ok(());
                }
                let mut json = Vec::new();
                self.json_charged = 0;
                self.json_value(id, depth, &mut json)?;
                self.charge_json(&json)?;
                out.push(Value::Text(
                    String::from_utf8(json).expect("JSON text is UTF-8"),
                ));
                Ok(())
            }
        }
    }

    /// A value that is not a record, union, array or map.
    fn scalar(&mut self, id: NodeId) -> Decoded<Value> {
        let nodes = self.nodes;
        Ok(match &nodes[id] {
            Node::Null => Value::Null,
            Node::Boolean => Value::Boolean(self.boolean()?),
            Node::Int => Value::Int(i64::from(self.int("an int")?)),
            Node::Long(kind) => {
                let v = self.long("a long")?;
                match kind {
                    LongKind::Long | LongKind::TimeMicros => Value::Int(v),
                    LongKind::TimestampMillis => Value::Timestamp(v.saturating_mul(1000)),
                    LongKind::TimestampMicros => Value::Timestamp(v),
                    LongKind::TimestampNanos => Value::Timestamp(v.div_euclid(1000)),
                }
            }
            Node::Float => Value::Float(f64::from(self.float()?)),
            Node::Double => Value::Float(self.double()?),
            Node::String { uuid: false } => Value::Text(self.text("a string")?),
            Node::String { uuid: true } => {
                let text = self.text("a uuid")?;
                let uuid = uuid::Uuid::parse_str(&text)
                    .map_err(|e| self.invalid(format!("{text:?} is not a UUID: {e}")))?;
                Value::Text(uuid.hyphenated().to_string())
            }
            Node::Bytes(kind) => {
                let bytes = self.bytes("bytes")?;
                self.typed_bytes(*kind, bytes)?
            }
            Node::Fixed { size, kind } => {
                let bytes = self.take(*size, "a fixed")?;
                match kind {
                    FixedKind::Fixed => Value::Bytes(bytes.to_vec()),
                    FixedKind::Decimal { scale } => Value::Decimal(minimal_decimal(bytes, *scale)),
                    FixedKind::Uuid => self.typed_bytes(BytesKind::Uuid, bytes)?,
                    FixedKind::Duration => {
                        let part = |i: usize| {
                            u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"))
                        };
                        if bytes.len() != 12 {
                            return Err(self
                                .invalid(format!("a duration is {} bytes, not 12", bytes.len())));
                        }
                        Value::Text(format!("P{}M{}DT{}ms", part(0), part(4), part(8)))
                    }
                }
            }
            Node::Enum { symbols } => Value::Text(self.symbol(symbols)?.to_string()),
            Node::Record { .. } | Node::Union(_) | Node::Array(_) | Node::Map(_) => {
                unreachable!("decoded by flatten or json")
            }
            Node::Pending => return Err(self.invalid("internal: an incomplete type".into())),
        })
    }

    fn typed_bytes(&self, kind: BytesKind, bytes: &[u8]) -> Decoded<Value> {
        Ok(match kind {
            BytesKind::Bytes => Value::Bytes(bytes.to_vec()),
            BytesKind::Decimal { scale } => Value::Decimal(minimal_decimal(bytes, scale)),
            BytesKind::Uuid => {
                let uuid = uuid::Uuid::from_slice(bytes).map_err(|e| {
                    self.invalid(format!("{} bytes are not a UUID: {e}", bytes.len()))
                })?;
                Value::Text(uuid.hyphenated().to_string())
            }
            BytesKind::BigDecimal => Value::Text(big_decimal(bytes).map_err(|e| self.invalid(e))?),
        })
    }

    /// Charges the JSON text written since the last charge.
    fn charge_json(&mut self, json: &[u8]) -> Decoded<()> {
        let new = json.len() - self.json_charged;
        self.json_charged = json.len();
        self.charge(new)
    }

    /// Appends the JSON form of node `id`'s value (as arrays and maps arrive: records as
    /// objects, unions as their branch, bytes as arrays of numbers), charging the text
    /// item by item.
    fn json_value(&mut self, id: NodeId, depth: usize, out: &mut Vec<u8>) -> Decoded<()> {
        let nodes = self.nodes;
        match &nodes[id] {
            Node::Array(items) => {
                let depth = self.deeper(depth)?;
                self.json_blocks(out, [b'[', b']'], |run, out| {
                    run.json_value(*items, depth, out)
                })?;
            }
            Node::Map(values) => {
                let depth = self.deeper(depth)?;
                self.json_blocks(out, [b'{', b'}'], |run, out| {
                    let key = run.text("a map key")?;
                    json_string(out, &key);
                    out.push(b':');
                    run.json_value(*values, depth, out)
                })?;
            }
            Node::Record { fields, .. } => {
                let depth = self.deeper(depth)?;
                out.push(b'{');
                for (i, (field, node)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    json_string(out, field);
                    out.push(b':');
                    self.json_value(*node, depth, out)?;
                }
                out.push(b'}');
            }
            Node::Union(branches) => {
                let branch = self.union_branch(branches)?;
                self.json_value(branch, depth, out)?;
            }
            Node::Int => {
                let v = self.int("an int")?;
                let _ = write!(out, "{v}");
            }
            Node::Long(_) => {
                let v = self.long("a long")?;
                let _ = write!(out, "{v}");
            }
            Node::Float => {
                let v = f64::from(self.float()?);
                self.json_number(v, out)?;
            }
            Node::Double => {
                let v = self.double()?;
                self.json_number(v, out)?;
            }
            Node::Bytes(BytesKind::Bytes | BytesKind::Decimal { .. } | BytesKind::BigDecimal) => {
                let bytes = self.bytes("bytes")?;
                json_bytes(out, bytes);
            }
            Node::Fixed {
                size,
                kind: FixedKind::Fixed | FixedKind::Decimal { .. } | FixedKind::Duration,
            } => {
                let bytes = self.take(*size, "a fixed")?;
                json_bytes(out, bytes);
            }
            _ => match self.scalar(id)? {
                Value::Null => out.extend_from_slice(b"null"),
                Value::Boolean(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
                Value::Text(s) => json_string(out, &s),
                other => unreachable!("no JSON form for {other:?} here"),
            },
        }
        Ok(())
    }

    /// The items of an array or map, block by block, each written by `item` between
    /// `brackets` and charged as it is written.
    fn json_blocks(
        &mut self,
        out: &mut Vec<u8>,
        brackets: [u8; 2],
        mut item: impl FnMut(&mut Self, &mut Vec<u8>) -> Decoded<()>,
    ) -> Decoded<()> {
        out.push(brackets[0]);
        let mut first = true;
        loop {
            let count = self.block()?;
            if count == 0 {
                break;
            }
            for _ in 0..count {
                if !first {
                    out.push(b',');
                }
                first = false;
                item(self, out)?;
                self.charge_json(out)?;
            }
        }
        out.push(brackets[1]);
        Ok(())
    }

    fn json_number(&self, v: f64, out: &mut Vec<u8>) -> Decoded<()> {
        if !v.is_finite() {
            return Err(self.invalid(format!(
                "an array or map holds {v}, which JSON text cannot hold"
            )));
        }
        serde_json::to_writer(out, &v).expect("a finite number serialises");
        Ok(())
    }
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("a string serialises");
}

fn json_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'[');
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, "{b}");
    }
    out.push(b']');
}

/// A big-endian two's complement integer without its redundant leading sign bytes, as
/// the contract's decimal carries it (zero is empty).
fn minimal_decimal(bytes: &[u8], scale: u32) -> Decimal {
    let mut start = 0;
    while start + 1 < bytes.len() {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0x00 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    let unscaled = match &bytes[start..] {
        [0] => Vec::new(),
        rest => rest.to_vec(),
    };
    Decimal { unscaled, scale }
}

/// apache-avro's `big-decimal`: Avro bytes of the unscaled integer, then the scale as a
/// long. Shown as plain decimal text when it fits 128 bits, else as the unscaled integer
/// in hex and the exponent.
fn big_decimal(content: &[u8]) -> Result<String, String> {
    let mut run = Run {
        nodes: &[],
        input: content,
        pos: 0,
        bytes_left: usize::MAX,
        items_left: 0,
        limits: DecodeLimits::default(),
        name: String::new(),
        json_charged: 0,
    };
    let unscaled = run
        .bytes("a big-decimal's digits")
        .map_err(|e| e.to_string())?;
    let unscaled = minimal_decimal(unscaled, 0).unscaled;
    let scale = run
        .long("a big-decimal's scale")
        .map_err(|e| e.to_string())?;
    if run.remaining() != 0 {
        return Err("a big-decimal has bytes after its scale".into());
    }
    Ok(match u32::try_from(scale) {
        Ok(scale) if scale <= 76 => Decimal { unscaled, scale }.to_string(),
        _ => format!(
            "{}E{}",
            Decimal { unscaled, scale: 0 },
            scale.saturating_neg()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as Avro;
    use apache_avro::writer::datum::GenericDatumWriter;

    const SCHEMA: &str = r#"{
      "type": "record", "name": "Tick", "namespace": "t",
      "fields": [
        {"name": "id", "type": "string"},
        {"name": "price", "type": "double"},
        {"name": "size", "type": ["null", "long"], "default": null},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "eid", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}},
        {"name": "quote", "type": ["null", {"type": "record", "name": "Quote", "fields": [
            {"name": "bid", "type": "double"}, {"name": "ask", "type": "double"}]}], "default": null},
        {"name": "last", "type": ["null", "Quote"], "default": null},
        {"name": "tags", "type": {"type": "array", "items": "string"}}
      ]}"#;

    fn decoder(text: &str) -> AvroDecoder {
        AvroDecoder::new(&Schema::parse_str(text).unwrap(), DecodeLimits::default()).unwrap()
    }

    fn encode_with(text: &str, value: Avro) -> Vec<u8> {
        let schema = Schema::parse_str(text).unwrap();
        let writer = GenericDatumWriter::builder(&schema).build().unwrap();
        writer
            .write_value_to_vec(value.resolve(&schema).unwrap())
            .unwrap()
    }

    fn encode(value: Avro) -> Vec<u8> {
        encode_with(SCHEMA, value)
    }

    fn tick(quote: Avro, last: Avro) -> Avro {
        Avro::Record(vec![
            ("id".into(), Avro::String("AAPL".into())),
            ("price".into(), Avro::Double(187.25)),
            ("size".into(), Avro::Union(1, Box::new(Avro::Long(300)))),
            ("kind".into(), Avro::Enum(1, "B".into())),
            ("at".into(), Avro::TimestampMillis(1_714_564_800_123)),
            (
                "eid".into(),
                Avro::Uuid("9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01".parse().unwrap()),
            ),
            (
                "amount".into(),
                Avro::Decimal(apache_avro::Decimal::from(vec![0x30, 0x39])),
            ),
            ("quote".into(), quote),
            ("last".into(), last),
            (
                "tags".into(),
                Avro::Array(vec![Avro::String("x".into()), Avro::String("y".into())]),
            ),
        ])
    }

    fn null() -> Avro {
        Avro::Union(0, Box::new(Avro::Null))
    }

    #[test]
    fn decodes_flattening_records_and_unions() {
        let d = decoder(SCHEMA);
        let quote = Avro::Union(
            1,
            Box::new(Avro::Record(vec![
                ("bid".into(), Avro::Double(187.2)),
                ("ask".into(), Avro::Double(187.3)),
            ])),
        );
        let (fields, size) = d.decode(&encode(tick(quote, null()))).unwrap();
        assert!(size > 0);
        let get = |n: &str| {
            fields
                .iter()
                .find(|f| f.name == n)
                .map(|f| f.value.clone())
                .unwrap_or_else(|| panic!("no field {n} in {fields:?}"))
        };
        assert_eq!(get("id"), Value::Text("AAPL".into()));
        assert_eq!(get("price"), Value::Float(187.25));
        assert_eq!(get("size"), Value::Int(300));
        assert_eq!(get("kind"), Value::Text("B".into()));
        assert_eq!(get("at"), Value::Timestamp(1_714_564_800_123_000));
        assert_eq!(
            get("eid"),
            Value::Text("9f1c2a7e-0b1d-4a7e-8c55-0d3c1b6f2a01".into())
        );
        assert_eq!(get("amount"), Value::Decimal(Decimal::from_i128(12345, 2)));
        assert_eq!(get("quote.bid"), Value::Float(187.2));
        assert_eq!(get("quote.ask"), Value::Float(187.3));
        assert_eq!(get("last"), Value::Null);
        assert_eq!(get("tags"), Value::Text(r#"["x","y"]"#.into()));
        let names: Vec<_> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "price",
                "size",
                "kind",
                "at",
                "eid",
                "amount",
                "quote.bid",
                "quote.ask",
                "last",
                "tags"
            ]
        );

        // A named record used again by reference still flattens.
        let last = Avro::Union(
            1,
            Box::new(Avro::Record(vec![
                ("bid".into(), Avro::Double(1.0)),
                ("ask".into(), Avro::Double(2.0)),
            ])),
        );
        let (fields, _) = d.decode(&encode(tick(null(), last))).unwrap();
        assert!(
            fields
                .iter()
                .any(|f| f.name == "last.ask" && f.value == Value::Float(2.0))
        );
    }

    #[test]
    fn arrays_and_maps_are_json_as_before() {
        let text = r#"{"type":"record","name":"R","fields":[
            {"name":"m","type":{"type":"map","values":["null","double"]}},
            {"name":"a","type":{"type":"array","items":{"type":"record","name":"P","fields":[
                {"name":"b","type":"bytes"},{"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
                {"name":"f","type":"float"}]}}}]}"#;
        let value = Avro::Record(vec![
            (
                "m".into(),
                Avro::Map(
                    [(
                        "k\"1".to_string(),
                        Avro::Union(1, Box::new(Avro::Double(1.5))),
                    )]
                    .into_iter()
                    .collect(),
                ),
            ),
            (
                "a".into(),
                Avro::Array(vec![Avro::Record(vec![
                    ("b".into(), Avro::Bytes(vec![1, 255])),
                    ("e".into(), Avro::Enum(1, "Y".into())),
                    ("f".into(), Avro::Float(0.5)),
                ])]),
            ),
        ]);
        let body = encode_with(text, value.clone());
        let (fields, _) = decoder(text).decode(&body).unwrap();
        // The JSON apache-avro's own conversion gives.
        let Avro::Record(values) = value else {
            unreachable!()
        };
        for ((name, v), field) in values.into_iter().zip(&fields) {
            let expected = serde_json::Value::try_from(v).unwrap().to_string();
            assert_eq!(field.name, name);
            assert_eq!(field.value, Value::Text(expected));
        }
    }

    #[test]
    fn field_kinds_follow_the_decoded_names() {
        let kinds = decoder(SCHEMA).field_kinds().unwrap();
        assert_eq!(
            kinds,
            [
                ("id", ValueKind::Text),
                ("price", ValueKind::Float),
                ("size", ValueKind::Int),
                ("kind", ValueKind::Text),
                ("at", ValueKind::Timestamp),
                ("eid", ValueKind::Text),
                ("amount", ValueKind::Decimal),
                ("quote.bid", ValueKind::Float),
                ("quote.ask", ValueKind::Float),
                ("last.bid", ValueKind::Float),
                ("last.ask", ValueKind::Float),
                ("tags", ValueKind::Text),
            ]
            .map(|(n, k)| (n.to_string(), k))
        );
    }

    const NODE: &str =
        r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#;

    #[test]
    fn recursive_schemas_decode_to_a_bounded_depth() {
        let node = decoder(NODE);
        // Depth 10: ten `next` branches, then null.
        let mut body = vec![0x02; 10];
        body.push(0x00);
        let (fields, _) = node.decode(&body).unwrap();
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].name, ["next"; 11].join("."));
        // Depth 400 (the message that overflowed the stack): refused at the limit.
        let mut body = vec![0x02; 400];
        body.push(0x00);
        let err = node.decode(&body).unwrap_err();
        assert!(
            err.to_string()
                .contains("values nest deeper than 64 levels (decode.max_depth)"),
            "{err}"
        );
        let err = node.field_kinds().unwrap_err();
        assert!(err.contains("record Node contains itself"), "{err}");
    }

    #[test]
    fn claimed_lengths_and_counts_are_checked_before_allocating() {
        // A string claiming 500 MB in a 14-byte body.
        let d = decoder(r#"{"type":"record","name":"S","fields":[{"name":"s","type":"string"}]}"#);
        let mut body = Vec::new();
        let mut n = 1_000_000_000u64; // zig-zag of 500,000,000
        while n >= 0x80 {
            body.push((n as u8) | 0x80);
            n >>= 7;
        }
        body.push(n as u8);
        body.extend_from_slice(b"abcdefghi");
        let err = d.decode(&body).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `s`: a string claims 500000000 bytes, but only 9 remain in the body"
        );

        // An array of arrays of nulls, each inner block claiming 4,000,000 items.
        let d = decoder(
            r#"{"type":"record","name":"A","fields":[{"name":"a","type":{"type":"array","items":{"type":"array","items":"null"}}}]}"#,
        );
        let inner = [0x80, 0x92, 0xe8, 0x03]; // zig-zag varint of 4,000,000
        let mut body = vec![0x04]; // outer block of 2
        for _ in 0..2 {
            body.extend_from_slice(&inner);
            body.push(0x00);
        }
        body.push(0x00);
        let err = d.decode(&body).unwrap_err();
        assert!(
            err.to_string()
                .contains("more than 1000000 array and map items in one message"),
            "{err}"
        );

        // Within the item budget, the JSON text counts against the byte budget.
        let small = DecodeLimits {
            max_bytes: 1000,
            ..DecodeLimits::default()
        };
        let d = AvroDecoder::new(
            &Schema::parse_str(
                r#"{"type":"record","name":"A","fields":[{"name":"a","type":{"type":"array","items":"null"}}]}"#,
            )
            .unwrap(),
            small,
        )
        .unwrap();
        let err = d.decode(&[0xd0, 0x0f, 0x00]).unwrap_err(); // 1000 nulls
        assert!(
            err.to_string()
                .contains("would take more than 1000 bytes (decode.max_bytes)"),
            "{err}"
        );
    }

    #[test]
    fn a_length_beyond_the_body_is_an_error_not_a_null() {
        // {price: double, sym: string}: a double, a 100 MB string length, then "abc".
        let d = decoder(
            r#"{"type":"record","name":"T","fields":[{"name":"price","type":"double"},{"name":"sym","type":"string"}]}"#,
        );
        let mut body = 1.5f64.to_le_bytes().to_vec();
        body.extend_from_slice(&[0x80, 0x84, 0xaf, 0x5f]); // zig-zag of 100,000,000
        body.extend_from_slice(b"abc");
        let err = d.decode(&body).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `sym`: a string claims 100000000 bytes, but only 3 remain in the body"
        );
    }

    #[test]
    fn truncated_overlong_and_invalid_bodies_are_errors() {
        let tick_decoder = decoder(SCHEMA);
        let body = encode(tick(null(), null()));
        for cut in 1..body.len() {
            let err = tick_decoder.decode(&body[..cut]).unwrap_err().to_string();
            assert!(
                err.contains("(truncated)") || err.contains("remain in the body"),
                "{err}"
            );
        }
        let mut long = body.clone();
        long.extend_from_slice(b"junk");
        let err = tick_decoder.decode(&long).unwrap_err();
        assert!(err.to_string().contains("4 bytes left over"), "{err}");

        let d = |schema: &str, body: &[u8]| {
            let text = format!(
                r#"{{"type":"record","name":"R","fields":[{{"name":"f","type":{schema}}}]}}"#
            );
            decoder(&text).decode(body).unwrap_err().to_string()
        };
        assert!(d(r#""boolean""#, &[2]).contains("neither 0 nor 1"));
        assert!(d(r#"["null","int"]"#, &[4]).contains("union branch 2 is not in the schema"));
        assert!(d(r#""int""#, &[0xff, 0xff, 0xff, 0xff, 0x7f]).contains("does not fit an int"));
        assert!(d(r#""long""#, &[0xff; 11]).contains("longer than 10 bytes"));
        assert!(d(r#""string""#, &[4, 0xff, 0xfe]).contains("not valid UTF-8"));
        assert!(d(r#""string""#, &[3]).contains("negative length"));
        assert!(d(r#"{"type":"string","logicalType":"uuid"}"#, &[2, b'x']).contains("not a UUID"));
        assert!(
            d(r#"{"type":"enum","name":"E","symbols":["A"]}"#, &[2])
                .contains("enum index 1 is not a symbol")
        );
        assert!(
            d(
                r#"{"type":"array","items":"double"}"#,
                &[2, 0, 0, 0, 0, 0, 0, 0xf8, 0x7f, 0]
            )
            .contains("which JSON text cannot hold")
        );
    }

    #[test]
    fn decimals_are_minimal_and_non_record_schemas_are_one_field() {
        assert_eq!(
            minimal_decimal(&[0x00, 0x00, 0x30, 0x39], 2),
            Decimal::from_i128(12345, 2)
        );
        assert_eq!(
            minimal_decimal(&[0xff, 0xff, 0x80], 0),
            Decimal::from_i128(-128, 0)
        );
        assert_eq!(
            minimal_decimal(&[0x00, 0x80], 0),
            Decimal::from_i128(128, 0)
        );
        assert_eq!(minimal_decimal(&[0x00, 0x00], 0), Decimal::from_i128(0, 0));
        let (fields, _) = decoder(r#""long""#).decode(&[0x54]).unwrap();
        assert_eq!(
            fields,
            [Field {
                name: "value".into(),
                value: Value::Int(42)
            }]
        );
        assert_eq!(
            decoder(r#""long""#).field_kinds().unwrap(),
            [("value".to_string(), ValueKind::Int)]
        );
    }
}
