//! Lookups: the named, read-only queries a pipeline declares (`lookups:`), checked when
//! `weir run` starts and run for guests inside their batch's transaction.
//!
//! A batch's guest phase runs in a savepoint made read-only (`SET LOCAL
//! transaction_read_only`), so a lookup cannot write whatever its SQL says; each lookup
//! runs in a savepoint of its own, so one that Postgres refuses fails only itself. The
//! answers are cached for the batch. A lookup that fails because the connection did (not
//! because of its SQL or parameters) marks the batch's attempt broken: the attempt is
//! retried, never handed to the guest as the lookup's answer.

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use postgres_types::{FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Statement};

use super::value::{Cell, PG_EPOCH_DAYS, PG_EPOCH_MICROS, PgType, Refusal, convert};
use crate::pg::{Class, classify, error_text};

use crate::model::{Decimal, LookupRows, Lookups, Value};

/// Most rows one lookup may answer with; a query that returns more fails, asking for a
/// `LIMIT`.
pub const MAX_ROWS: usize = 10_000;

/// The lookups a pipeline declares: name → SQL with `$1`, `$2`… for the parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookupSet {
    /// The pipeline's name, for messages.
    pub pipeline: String,
    /// Name → SQL.
    pub queries: BTreeMap<String, String>,
}

impl LookupSet {
    /// Whether the pipeline declares none.
    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }
}

/// A lookup's statement on one connection, with how its parameters and columns convert.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    statement: Statement,
    params: Vec<PgType>,
    columns: Vec<(String, PgType)>,
}

/// The Postgres type of a parameter or column, as conversion sees it.
fn pg_type(ty: &Type) -> PgType {
    match ty.kind() {
        Kind::Domain(base) => pg_type(base),
        Kind::Enum(_) => PgType::Text,
        _ => match PgType::classify(ty.oid(), "", "") {
            PgType::Other if ty.name() == "citext" => PgType::Text,
            t => t,
        },
    }
}

/// Why the SQL of a lookup cannot be a lookup, before Postgres sees it.
pub(crate) fn refuse_sql(sql: &str) -> Option<String> {
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    (!matches!(first.as_str(), "SELECT" | "WITH" | "VALUES" | "TABLE")).then(|| {
        "a lookup is one read-only query: it must start with SELECT, WITH, VALUES or TABLE"
            .to_string()
    })
}

/// Checks a lookup's prepared statement: that weir can pass its parameters and hand its
/// columns to a guest. Errors name the lookup and say what to change.
pub(crate) fn describe(
    set: &LookupSet,
    name: &str,
    sql: &str,
    statement: Statement,
) -> Result<Prepared, String> {
    let at = |why: String| format!("pipeline {}, lookup {name}: {why}", set.pipeline);
    if let Some(why) = refuse_sql(sql) {
        return Err(at(why));
    }
    let mut problems = Vec::new();
    let params: Vec<PgType> = statement
        .params()
        .iter()
        .enumerate()
        .map(|(i, ty)| {
            let t = pg_type(ty);
            if t == PgType::Other {
                problems.push(format!(
                    "parameter ${} is of type {}, which no guest value converts to (cast it: ${}::text)",
                    i + 1,
                    ty.name(),
                    i + 1
                ));
            }
            t
        })
        .collect();
    let columns: Vec<(String, PgType)> = statement
        .columns()
        .iter()
        .map(|c| {
            let t = pg_type(c.type_());
            if t == PgType::Other {
                problems.push(format!(
                    "column {} is of type {}, which weir cannot hand to a guest (cast it: ::text)",
                    c.name(),
                    c.type_().name()
                ));
            }
            (c.name().to_string(), t)
        })
        .collect();
    if columns.is_empty() {
        problems.push("it returns no columns".into());
    }
    if !problems.is_empty() {
        return Err(at(problems.join("; ")));
    }
    Ok(Prepared {
        statement,
        params,
        columns,
    })
}

/// A parameter, encoded as its column type takes it.
#[derive(Debug)]
struct Param<'a>(Cell<'a>);

impl ToSql for Param<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        if self.0.is_null() {
            return Ok(IsNull::Yes);
        }
        self.0.write_value(out);
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        // The cell was converted for this parameter's type.
        true
    }

    to_sql_checked!();
}

/// A column's value as Postgres sent it, decoded by [`decode`].
struct Raw<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A column's binary value as the contract's value.
fn decode(ty: PgType, raw: Option<&[u8]>) -> Result<Value, String> {
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    let fixed = |n: usize| -> Result<&[u8], String> {
        (raw.len() == n)
            .then_some(raw)
            .ok_or_else(|| format!("a {n}-byte value came as {} bytes", raw.len()))
    };
    let text = |bytes: &[u8]| {
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("text that is not UTF-8: {e}"))
    };
    Ok(match ty {
        PgType::Bool => Value::Boolean(fixed(1)?[0] != 0),
        PgType::Int2 => Value::Int(i16::from_be_bytes(fixed(2)?.try_into().expect("2")).into()),
        PgType::Int4 => Value::Int(i32::from_be_bytes(fixed(4)?.try_into().expect("4")).into()),
        PgType::Int8 => Value::Int(i64::from_be_bytes(fixed(8)?.try_into().expect("8"))),
        PgType::Float4 => Value::Float(f32::from_be_bytes(fixed(4)?.try_into().expect("4")).into()),
        PgType::Float8 => Value::Float(f64::from_be_bytes(fixed(8)?.try_into().expect("8"))),
        PgType::Numeric => Value::Decimal(numeric(raw)?),
        PgType::Text | PgType::Json => Value::Text(text(raw)?),
        PgType::Jsonb => match raw.split_first() {
            Some((1, rest)) => Value::Text(text(rest)?),
            _ => return Err("jsonb in an unknown binary format".into()),
        },
        PgType::Uuid => Value::Text(
            uuid::Uuid::from_slice(fixed(16)?)
                .map_err(|e| e.to_string())?
                .hyphenated()
                .to_string(),
        ),
        PgType::Bytea => Value::Bytes(raw.to_vec()),
        PgType::Timestamptz | PgType::Timestamp => {
            let t = i64::from_be_bytes(fixed(8)?.try_into().expect("8"));
            if t == i64::MAX || t == i64::MIN {
                return Err("an infinite timestamp has no value for a guest".into());
            }
            Value::Timestamp(t + PG_EPOCH_MICROS)
        }
        PgType::Date => {
            let d = i32::from_be_bytes(fixed(4)?.try_into().expect("4"));
            if d == i32::MAX || d == i32::MIN {
                return Err("an infinite date has no value for a guest".into());
            }
            Value::Int(i64::from(d) + PG_EPOCH_DAYS)
        }
        PgType::Other => return Err("a type weir cannot hand to a guest".into()),
    })
}

/// Postgres's binary `numeric` as a decimal of its display scale.
fn numeric(raw: &[u8]) -> Result<Decimal, String> {
    let word = |i: usize| -> Result<u16, String> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a truncated numeric".to_string())
    };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i64;
    let sign = word(4)?;
    let scale = u32::from(word(6)?);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("NaN has no decimal value".into()),
        _ => return Err("an infinite numeric has no decimal value".into()),
    }
    let too_big = || "a numeric with more digits than a 128-bit decimal holds".to_string();
    let mut acc: i128 = 0;
    for i in 0..ndigits {
        let digit = i128::from(word(8 + 2 * i)?);
        acc = acc
            .checked_mul(10_000)
            .and_then(|a| a.checked_add(digit))
            .ok_or_else(too_big)?;
    }
    // The digits are worth `acc * 10000^(weight - ndigits + 1)`; scaled by 10^scale.
    let exponent = 4 * (weight - ndigits as i64 + 1) + i64::from(scale);
    let unscaled = if exponent >= 0 {
        10i128
            .checked_pow(u32::try_from(exponent).map_err(|_| too_big())?)
            .and_then(|p| acc.checked_mul(p))
            .ok_or_else(too_big)?
    } else {
        let p = 10i128
            .checked_pow(u32::try_from(-exponent).map_err(|_| too_big())?)
            .unwrap_or(i128::MAX);
        acc / p
    };
    Ok(Decimal::from_i128(
        if sign == 0x4000 { -unscaled } else { unscaled },
        scale,
    ))
}

/// A lookup's name and its encoded parameters.
type CacheKey = (String, Vec<u8>);

/// The lookups of one batch's attempt: its pipeline's statements on the connection of the
/// batch's transaction, and the batch's cache.
pub(crate) struct PgLookups {
    client: Arc<Client>,
    handle: tokio::runtime::Handle,
    set: Arc<LookupSet>,
    prepared: HashMap<String, Prepared>,
    cache: Mutex<HashMap<CacheKey, Result<LookupRows, String>>>,
    /// A lookup failed because the connection did: the attempt must be retried.
    broken: Mutex<Option<tokio_postgres::Error>>,
}

impl PgLookups {
    pub(crate) fn new(
        client: Arc<Client>,
        set: Arc<LookupSet>,
        prepared: HashMap<String, Prepared>,
    ) -> Self {
        Self {
            client,
            handle: tokio::runtime::Handle::current(),
            set,
            prepared,
            cache: Mutex::new(HashMap::new()),
            broken: Mutex::new(None),
        }
    }

    /// Why the attempt cannot stand, if a lookup lost the connection.
    pub(crate) fn broken(&self) -> Option<tokio_postgres::Error> {
        self.broken.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    async fn run(&self, prepared: &Prepared, params: &[Param<'_>]) -> Result<Vec<Vec<Value>>, Ran> {
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let client = &*self.client;
        // Sent together: the savepoint, the query and the release are one round trip.
        let query = async {
            let rows = client
                .query_raw(&prepared.statement, refs.iter().copied())
                .await?;
            rows.take(MAX_ROWS + 1).try_collect::<Vec<_>>().await
        };
        let (_, rows, _) = match futures::try_join!(
            client.batch_execute("SAVEPOINT weir_lookup"),
            query,
            client.batch_execute("RELEASE SAVEPOINT weir_lookup")
        ) {
            Ok(done) => done,
            Err(e) => {
                // Writing in the read-only guest phase is the query's fault, not an
                // outage (elsewhere the same code means a read-only standby).
                let refused = matches!(classify(&e), Class::Data | Class::Fatal)
                    || e.code()
                        == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION);
                if refused
                    && client
                        .batch_execute(
                            "ROLLBACK TO SAVEPOINT weir_lookup; RELEASE SAVEPOINT weir_lookup",
                        )
                        .await
                        .is_ok()
                {
                    return Err(Ran::Refused(error_text(&e)));
                }
                return Err(Ran::Broken(e));
            }
        };
        if rows.len() > MAX_ROWS {
            return Err(Ran::Refused(format!(
                "it returned more than {MAX_ROWS} rows; its SQL needs a LIMIT"
            )));
        }
        rows.iter()
            .map(|row| {
                prepared
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, (name, ty))| {
                        let raw: Raw<'_> =
                            row.try_get(i).map_err(|e| Ran::Refused(e.to_string()))?;
                        decode(*ty, raw.0).map_err(|e| Ran::Refused(format!("column {name}: {e}")))
                    })
                    .collect()
            })
            .collect()
    }
}

/// How running a lookup went wrong.
enum Ran {
    /// Postgres refused the query: the guest hears why.
    Refused(String),
    /// The connection failed, or Postgres refuses weir a right: the attempt is retried.
    Broken(tokio_postgres::Error),
}

impl Lookups for PgLookups {
    fn query(&self, name: &str, params: &[Value]) -> Result<LookupRows, String> {
        let shown = crate::text::escape_control(&crate::text::truncate(name, 128)).into_owned();
        let Some(prepared) = self.prepared.get(name) else {
            let declared: Vec<&str> = self.set.queries.keys().map(String::as_str).collect();
            return Err(format!(
                "pipeline {} declares no lookup named {shown:?} (it declares {})",
                self.set.pipeline,
                if declared.is_empty() {
                    "none".to_string()
                } else {
                    declared.join(", ")
                }
            ));
        };
        let at = |why: String| format!("lookup {shown}: {why}");
        if params.len() != prepared.params.len() {
            return Err(at(format!(
                "it takes {} parameters, not {}",
                prepared.params.len(),
                params.len()
            )));
        }
        let mut cells = Vec::with_capacity(params.len());
        let mut key = BytesMut::new();
        for (i, (value, ty)) in params.iter().zip(&prepared.params).enumerate() {
            let cell = convert(value, *ty).map_err(|r| {
                at(match r {
                    Refusal::Kind(kind) => format!(
                        "parameter ${}: a {kind} value does not convert to its type",
                        i + 1
                    ),
                    Refusal::Value(why) => format!("parameter ${}: {why}", i + 1),
                })
            })?;
            cell.write_field(&mut key);
            cells.push(Param(cell));
        }
        let key = (name.to_string(), key.to_vec());
        if let Some(answer) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return answer.clone();
        }
        if self
            .broken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return Err(at("the connection failed; the batch is retried".into()));
        }
        // Guest calls run on a runtime thread the runtime lets block (the worker's
        // `block_in_place`); so does a caller that is not one of them.
        let ran = tokio::task::block_in_place(|| self.handle.block_on(self.run(prepared, &cells)));
        let answer = match ran {
            Ok(rows) => Ok(LookupRows {
                columns: prepared.columns.iter().map(|(n, _)| n.clone()).collect(),
                rows,
            }),
            Err(Ran::Refused(why)) => Err(at(why)),
            Err(Ran::Broken(e)) => {
                let why = at(format!(
                    "Postgres cannot answer it ({}); the batch is retried",
                    error_text(&e)
                ));
                *self.broken.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                return Err(why);
            }
        };
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, answer.clone());
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_queries_are_lookups() {
        assert!(refuse_sql("  select 1").is_none());
        assert!(refuse_sql("WITH x AS (SELECT 1) SELECT * FROM x").is_none());
        assert!(refuse_sql("VALUES (1)").is_none());
        assert!(refuse_sql("DELETE FROM t").is_some());
        assert!(refuse_sql("").is_some());
    }

    #[test]
    fn numerics_decode_to_decimals_of_their_scale() {
        // 12345.678 (dscale 3): digits 1, 2345, 6780; weight 1.
        let raw = [0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c];
        assert_eq!(numeric(&raw).unwrap().to_string(), "12345.678");
        // -0.05 (dscale 2): digit 500, weight -1.
        let raw = [0, 1, 0xff, 0xff, 0x40, 0, 0, 2, 0x01, 0xf4];
        assert_eq!(numeric(&raw).unwrap().to_string(), "-0.05");
        // 1e8 (dscale 0): digit 1, weight 2.
        let raw = [0, 1, 0, 2, 0, 0, 0, 0, 0, 1];
        assert_eq!(numeric(&raw).unwrap().to_string(), "100000000");
        assert!(numeric(&[0, 0, 0, 0, 0xC0, 0, 0, 0]).is_err());
    }
}
