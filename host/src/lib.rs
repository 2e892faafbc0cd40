//! weir: WebAssembly stream processors between Kafka and Postgres.
//!
//! Modules, in the direction data flows: [`source`] consumes and decodes Kafka messages
//! with schemas from the [`registry`]; [`runtime`] runs guests on them; [`cli`] is the
//! `weir` command.
#![deny(missing_docs)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod runtime;
pub mod sink;
pub mod source;
