//! The generated bindings of the contract `weir:processor@0.2.0` (`wit/0.2.0/processor.wit`):
//! its types are the host's own (see [`super`]).
#![allow(missing_docs)] // Generated; the WIT file documents every type.

wasmtime::component::bindgen!({
    path: "../wit/0.2.0",
    world: "processor",
    additional_derives: [PartialEq],
    // State and lookups can fail in ways that must end the call (no state given).
    imports: { default: trappable },
});

pub use self::weir::processor::{logging, lookup, metrics, state, types};
