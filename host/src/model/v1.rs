//! The generated bindings of the released contract `weir:processor@0.1.0`
//! (`wit/0.1.0/processor.wit`), which guests built before 0.2.0 target. The host speaks it
//! at the runtime's boundary only: its batches are built from, and its outcomes turned
//! into, the types of [`super`].
#![allow(missing_docs)] // Generated; the WIT file documents every type.

wasmtime::component::bindgen!({
    path: "../wit/0.1.0",
    world: "processor",
    additional_derives: [PartialEq],
});

pub use self::weir::processor::{logging, metrics, types};
