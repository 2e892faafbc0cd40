//! The floor every stage stands on: the guest contract's types and the data the stages
//! hand one another — values and their kinds, decoded messages and the layouts of their
//! values, stages and dead letters, partitions, a partition's keyed state and the lookups a
//! guest may run. [`crate::source`], [`crate::runtime`] and [`crate::sink`] depend on this
//! module, not on each other.
//!
//! The host's own types are those of the newest contract, `weir:processor@0.2.0`
//! ([`v2`]); the released 0.1.0 contract ([`v1`]) is spoken only at the runtime's
//! boundary, for the guests that target it.

mod decimal;
mod deployment;
mod kind;
mod output;
mod record;
mod stage;
mod state;
pub mod v1;
pub mod v2;

pub use deployment::{Deployment, ShadowDiff, ShadowReport, Switch};
pub use output::{Interner, TargetKey};
pub use record::{Body, Field, Layout, Record, batch_of};
pub use stage::{DeadLetter, Stage};
pub use state::{StateLimits, StateStore, StateTxn, StateWrites};
pub use v2::lookup::Rows as LookupRows;
pub use v2::state::Entry as StateEntry;
pub use v2::types::{
    Action, Batch, ColumnPolicy, ConfigEntry, Decimal, EmitFields, EmitMessage, EmitValue, Header,
    Kind as ValueKind, MergePolicy, Message, Outcome, Output, Row, Schema, SchemaField, Target,
    Upsert, Value, Write,
};

/// A partition of a topic: `(topic, partition)`.
pub type Partition = (String, i32);

/// The named, read-only queries a pipeline declares (`lookups:`), as a guest call runs
/// them: by name, with parameters, never with SQL of the guest's.
pub trait Lookups: Send + Sync {
    /// The rows of lookup `name` for `params`, or why there are none to give (an unknown
    /// name, parameters that do not fit, a query Postgres refused).
    fn query(&self, name: &str, params: &[Value]) -> Result<LookupRows, String>;
}

/// Lookups where there are none to run: every query fails with `why`.
#[derive(Debug, Clone)]
pub struct NoLookups(pub String);

impl Lookups for NoLookups {
    fn query(&self, name: &str, _: &[Value]) -> Result<LookupRows, String> {
        Err(format!("lookup {name:?}: {}", self.0))
    }
}
