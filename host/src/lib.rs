//! weir: WebAssembly stream processors between Kafka and Postgres.
//!
//! Modules, in the direction data flows: [`source`] consumes and decodes Kafka messages
//! with schemas from the [`registry`]; [`runtime`] runs guests on them; [`sink`] writes
//! what they return to Postgres; [`pipeline`] runs the three for `weir run`; [`cli`] is the
//! `weir` command. [`model`] is the floor they all stand on: the guest contract's types
//! and the data the stages share; [`pg`] is how every part reaches Postgres (connections,
//! TLS, error classes, the retry policy).
#![deny(missing_docs)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod ingest;
pub mod isolate;
pub mod json;
pub mod metrics;
pub mod model;
pub mod pg;
pub mod pipeline;
pub mod registry;
pub mod relay;
pub mod runtime;
pub mod serve;
pub mod sink;
pub mod source;
pub mod text;
