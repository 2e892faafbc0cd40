//! weir: WebAssembly stream processors between Kafka and Postgres.
//!
//! Modules, in the direction data flows: [`runtime`] runs guests; [`cli`] is the `weir`
//! command.
#![deny(missing_docs)]

pub mod cli;
pub mod runtime;
