//! Write weir stream processors in ordinary Rust.
//!
//! A guest implements [`Processor`] and names it with [`export!`]:
//!
//! ```
//! #![cfg_attr(target_arch = "wasm32", no_std)]
//! use weir_guest::prelude::*;
//!
//! struct Upper;
//!
//! impl Processor for Upper {
//!     fn new(_config: &Config) -> Result<Self, ConfigError> {
//!         Ok(Upper)
//!     }
//!
//!     fn process(&mut self, mut message: Message) -> Outcome {
//!         match message.text("symbol") {
//!             Some(s) => {
//!                 let upper = s.to_uppercase();
//!                 message.set("symbol", upper);
//!                 Outcome::insert("symbols", message.fields)
//!             }
//!             None => Outcome::dead_letter("required: field symbol is missing"),
//!         }
//!     }
//! }
//!
//! weir_guest::export!(Upper);
//! ```
//!
//! # Why `no_std` on wasm
//!
//! The `weir:processor` world grants a guest nothing but logging and metrics: no WASI
//! filesystem, clock, randomness, environment or stdio. Rust's `std` on `wasm32-wasip2`
//! imports several of those, so a guest links only `core` and `alloc` when built for
//! wasm, and this crate supplies what `std` would have: a memory allocator, the
//! component-model `cabi_realloc`, and a panic handler that hands the panic message to
//! the host, which reports it as the guest's error. [`prelude`] brings in the `alloc`
//! types (`String`, `Vec`, `format!`, …) and a `HashMap`. Native builds use `std`, so
//! `cargo test` unit-tests guest logic as plain Rust (see [`testing`]).
#![cfg_attr(target_arch = "wasm32", no_std)]
#![deny(missing_docs)]

extern crate alloc;

#[doc(hidden)]
pub mod bindings {
    //! The wit-bindgen bindings of the `weir:processor` world.
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        path: "../../wit",
        world: "processor",
        pub_export_macro: true,
        export_macro_name: "export_processor",
        default_bindings_module: "weir_guest::bindings",
        additional_derives: [PartialEq],
    });
}

mod config;
mod host;
mod types;

pub mod testing;

pub use bindings::weir::processor::types::{
    Action, Batch, ColumnPolicy, ConfigEntry, Decimal, EmitMessage, EmitValue, Field, InsertRow,
    MergePolicy, Message, Outcome, UpsertRow, Value,
};
pub use config::{Config, ConfigError};
pub use host::{Level, log, metrics};
pub use types::Row;

/// Everything a guest usually needs, for `use weir_guest::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Action, Config, ConfigError, Decimal, Field, MergePolicy, Message, Outcome, Processor, Row,
        Value, log, metrics,
    };
    pub use alloc::borrow::ToOwned;
    pub use alloc::boxed::Box;
    pub use alloc::collections::{BTreeMap, BTreeSet};
    pub use alloc::string::{String, ToString};
    pub use alloc::vec::Vec;
    pub use alloc::{format, vec};
    pub use hashbrown::{HashMap, HashSet};
}

/// A stream processor: built from the pipeline's config for each batch, then handed the
/// batch's messages.
///
/// The host runs every batch on a fresh instance, so a processor holds no state from one
/// batch to the next; state that must last belongs in Postgres (see
/// [`Action::upsert`] and [`MergePolicy`]).
pub trait Processor: Sized {
    /// Builds the processor from the pipeline's config values. An error fails the whole
    /// batch with the error's message, as a bad config cannot be blamed on one message.
    fn new(config: &Config) -> Result<Self, ConfigError>;

    /// Processes one message.
    fn process(&mut self, message: Message) -> Outcome;

    /// Processes a batch: one outcome per message, in order. Override it to work across
    /// the batch (to combine rows with the same key before they reach Postgres, say).
    fn process_batch(&mut self, messages: alloc::vec::Vec<Message>) -> alloc::vec::Vec<Outcome> {
        messages.into_iter().map(|m| self.process(m)).collect()
    }
}

/// Runs processor `P` over a batch, as the host's call does. Used by [`export!`] and by
/// [`testing::run`].
///
/// # Panics
///
/// When `P::new` refuses the config, or `process_batch` returns a different number of
/// outcomes than messages: both fail the batch.
#[doc(hidden)]
pub fn run<P: Processor>(batch: Batch) -> alloc::vec::Vec<Outcome> {
    let config = Config::new(batch.config);
    let mut processor = match P::new(&config) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let expected = batch.messages.len();
    let outcomes = processor.process_batch(batch.messages);
    assert_eq!(
        outcomes.len(),
        expected,
        "process_batch returned {} outcomes for {} messages",
        outcomes.len(),
        expected
    );
    outcomes
}

/// Exports a [`Processor`] as the guest's `process` call.
///
/// On wasm this emits the component's export; natively it does nothing, so the same
/// crate builds as a library for unit tests.
#[macro_export]
macro_rules! export {
    ($processor:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct Export;
            impl $crate::bindings::Guest for Export {
                fn process(batch: $crate::Batch) -> $crate::prelude::Vec<$crate::Outcome> {
                    $crate::run::<$processor>(batch)
                }
            }
    $crate::bindings::export_processor!(Export with_types_in $crate::bindings);
        };
        // Natively, only check that the processor can be run (and mark it used).
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn($crate::Batch) -> $crate::prelude::Vec<$crate::Outcome> =
            $crate::run::<$processor>;
    };
}

#[cfg(target_arch = "wasm32")]
mod wasm_rt {
    //! What `std` would otherwise provide on wasm: allocator, `cabi_realloc`, panics.

    #[global_allocator]
    static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

    /// The component model's allocation entry point, used by the host to pass a batch
    /// into linear memory.
    ///
    /// # Safety
    ///
    /// Called by the canonical ABI with a pointer it got from this function (or null with
    /// `old_len` 0) and a power-of-two alignment.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn cabi_realloc(
        old_ptr: *mut u8,
        old_len: usize,
        align: usize,
        new_len: usize,
    ) -> *mut u8 {
        use alloc::alloc::{Layout, alloc, realloc};
        let ptr = unsafe {
            if old_len == 0 {
                if new_len == 0 {
                    return align as *mut u8;
                }
                alloc(Layout::from_size_align_unchecked(new_len, align))
            } else {
                realloc(
                    old_ptr,
                    Layout::from_size_align_unchecked(old_len, align),
                    new_len,
                )
            }
        };
        if ptr.is_null() {
            core::arch::wasm32::unreachable()
        }
        ptr
    }

    /// Hands the panic message to the host (which reports it as this guest's error), then
    /// traps.
    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        crate::host::report_panic(info);
        core::arch::wasm32::unreachable()
    }
}
