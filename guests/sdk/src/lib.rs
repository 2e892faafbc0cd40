//! Write weir stream processors in ordinary Rust, for the WIT world
//! `weir:processor@0.2.0` (`wit/0.2.0/processor.wit`).
//!
//! # Guide
//!
//! A guest implements [`Processor`] and names it with [`export!`]. The host makes a fresh
//! instance for every batch, calls `init` with the pipeline's config — the SDK runs
//! [`Processor::new`] and keeps the processor; an error refuses the guest, at load time
//! too — then `process` with the batch, which the SDK hands to
//! [`Processor::process_batch`] (by default [`Processor::process`] per message).
//!
//! **Reading.** A [`Message`] finds its fields by name through its writer schema, indexed
//! once per batch: [`Message::get`], [`Message::text`], [`Message::f64`],
//! [`Message::int`], [`Message::timestamp`], …; and has its record's [`offset`],
//! [`timestamp_ms`], [`key`], [`headers`] and [`header`], and the batch's [`topic`] and
//! [`partition`].
//!
//! **Writing.** A call's output declares each table's columns once. [`Out::table`] (or
//! [`Out::insert`], [`Out::upsert`] with key and merge policies by column name) declares
//! a target and returns a [`Table`] handle; [`Table::row`] makes a row from values in
//! column order. [`Out::fields_row`] writes a message's fields as they are (its values move
//! into the row). [`Out::write`] takes a by-name [`Row`] for simple guests. Each message
//! gets exactly one [`Outcome`]: actions ([`Outcome::one`], [`Outcome::actions`],
//! [`Outcome::skip`]) or [`Outcome::dead_letter`] with a reason naming the rule and field.
//!
//! **State and lookups.** [`state`] keeps keyed bytes per pipeline and partition,
//! committed with the batch ([`state::load`] and [`state::save`] for typed values);
//! [`lookup::query`] runs a lookup the pipeline declares.
//!
//! **Testing.** Natively everything compiles as plain Rust: [`testing`] builds batches
//! by field name, runs a processor over them with in-memory state and lookups, and
//! captures logs and counters.
//!
//! ```
//! #![cfg_attr(target_arch = "wasm32", no_std)]
//! use weir_guest::prelude::*;
//!
//! /// Counts trades per symbol (in state) and tags each with its sector (a lookup).
//! struct Sectors {
//!     lookup: String,
//! }
//!
//! impl Processor for Sectors {
//!     fn new(config: &Config) -> Result<Self, ConfigError> {
//!         let lookup = config.get("lookup").unwrap_or("sectors").into();
//!         Ok(Sectors { lookup })
//!     }
//!
//!     fn process(&mut self, message: Message<'_>, out: &mut Out) -> Outcome {
//!         let Some(symbol) = message.text("symbol") else {
//!             return Outcome::dead_letter("required: field symbol is missing");
//!         };
//!         let count = match state::load::<i64>(symbol) {
//!             Ok(count) => count.unwrap_or(0) + 1,
//!             Err(e) => return Outcome::dead_letter(e.to_string()),
//!         };
//!         if let Err(e) = state::save(symbol, &count) {
//!             return Outcome::dead_letter(e.to_string());
//!         }
//!         let sector = match lookup::query(&self.lookup, &[symbol.into()]) {
//!             Ok(rows) => rows.first().and_then(|r| r.text("sector")).map(String::from),
//!             Err(e) => return Outcome::dead_letter(e.to_string()),
//!         };
//!         // Declared once per call: the second message finds the same target.
//!         let trades = out.insert("trades", &["symbol", "sector", "trade_no", "price"]);
//!         let values = vec![
//!             symbol.into(),
//!             sector.into(),
//!             count.into(),
//!             message.f64("price").into(),
//!         ];
//!         Outcome::one(trades.row(values))
//!     }
//! }
//!
//! weir_guest::export!(Sectors);
//!
//! // A native test: two batches of partition 0, state kept between them.
//! use weir_guest::testing::{Harness, TestMessage, batch};
//!
//! let mut harness = Harness::new();
//! harness.add_lookup_table("sectors", &["symbol", "sector"], vec![
//!     vec!["AAPL".into(), "tech".into()],
//! ]);
//! let tick = |offset| TestMessage::new(offset).with("symbol", "AAPL").with("price", 1.5);
//! harness.run::<Sectors>(&[], batch("trades", 0, [tick(1)])).unwrap();
//! let out = harness.run::<Sectors>(&[], batch("trades", 0, [tick(2), tick(3)])).unwrap();
//! let rows = out.written_to("trades");
//! assert_eq!(rows[1].get("trade_no"), Some(&Value::Int(3)));
//! assert_eq!(rows[1].get("sector"), Some(&Value::Text("tech".into())));
//! assert_eq!(out.tables.len(), 1);
//! assert_eq!(harness.state(0).get(&b"AAPL"[..]), Some(&3i64.to_le_bytes().to_vec()));
//! ```
//!
//! # Why `no_std` on wasm
//!
//! The `weir:processor` world grants a guest nothing but logging, metrics, state and
//! lookups: no WASI filesystem, clock, randomness, environment or stdio. Rust's `std` on
//! `wasm32-wasip2` imports several of those, so a guest links only `core` and `alloc` when
//! built for wasm, and this crate supplies what `std` would have: a memory allocator, the
//! component-model `cabi_realloc`, and a panic handler that hands the panic message to
//! the host (the `weir.panic` log field), which reports it as the guest's error.
//! [`prelude`] brings in the `alloc` types (`String`, `Vec`, `format!`, …) and a
//! `HashMap`. Native builds use `std`, so `cargo test` unit-tests guest logic as plain
//! Rust (see [`testing`]).
//!
//! A component imports only the interfaces its code calls: a guest that never uses
//! [`state`] or [`lookup`] does not import them.
//!
//! [`offset`]: Message::offset
//! [`timestamp_ms`]: Message::timestamp_ms
//! [`key`]: Message::key
//! [`headers`]: Message::headers
//! [`header`]: Message::header
//! [`topic`]: Message::topic
//! [`partition`]: Message::partition
#![cfg_attr(target_arch = "wasm32", no_std)]
#![deny(missing_docs)]

extern crate alloc;

#[doc(hidden)]
pub mod bindings {
    //! The wit-bindgen bindings of the `weir:processor@0.2.0` world.
    #![allow(missing_docs)]
    wit_bindgen::generate!({
        path: "../../wit/0.2.0",
        world: "processor",
        pub_export_macro: true,
        export_macro_name: "export_processor",
        default_bindings_module: "weir_guest::bindings",
        additional_derives: [PartialEq],
    });
}

/// The WIT's types as wit-bindgen generates them, under their WIT names (`wit::Message`
/// is the message record as the host sends it; `wit::Row` a row of a target by
/// position). The common ones are also at the crate root.
pub mod wit {
    pub use crate::bindings::weir::processor::logging::{Level, LogField};
    pub use crate::bindings::weir::processor::lookup::Rows;
    pub use crate::bindings::weir::processor::metrics::Label;
    pub use crate::bindings::weir::processor::state::Entry;
    pub use crate::bindings::weir::processor::types::*;
}

mod config;
mod host;
mod input;
mod output;
mod value;

pub mod lookup;
pub mod parse;
pub mod rules;
pub mod state;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod time;

pub use config::{Config, ConfigError};
pub use host::{Level, log, metrics};
pub use input::{Message, Messages, WriterSchema};
pub use output::{Emit, Layout, Merge, Out, Row, Table, Write, Written};
#[cfg(not(target_arch = "wasm32"))]
pub use testing::run_batch;
pub use wit::{
    Action, Batch, ColumnPolicy, ConfigEntry, Decimal, EmitFields, EmitMessage, EmitValue, Header,
    Kind, MergePolicy, Outcome, Output, Schema, SchemaField, Target, Upsert, Value,
};

/// The message record as the host sends it (`wit::Message`): what a native [`Batch`]
/// holds. Guests read messages through [`Message`].
pub type RawMessage = wit::Message;
/// A row of a target, values by position (`wit::Row`): what [`Action::Write`] holds.
pub type TargetRow = wit::Row;
/// How a target's rows are written, columns by position (`wit::Write`): what
/// [`Target::write`] holds. Guests give it by name with [`Write`].
pub type TargetWrite = wit::Write;

/// Everything a guest usually needs, for `use weir_guest::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Action, Config, ConfigError, Decimal, Emit, Header, Kind, Layout, Merge, Message, Messages,
        Out, Outcome, Processor, Row, Table, Value, Write, WriterSchema, log, lookup, metrics,
        state,
    };
    pub use alloc::borrow::ToOwned;
    pub use alloc::boxed::Box;
    pub use alloc::collections::{BTreeMap, BTreeSet};
    pub use alloc::string::{String, ToString};
    pub use alloc::vec::Vec;
    pub use alloc::{format, vec};
    pub use hashbrown::{HashMap, HashSet};
}

/// A stream processor: built once per instance from the pipeline's config, then handed
/// one batch.
///
/// The host runs every batch on a fresh instance, so nothing in the processor survives
/// from one batch to the next; what must belongs in [`state`] (or in Postgres, through
/// upserts and their [`Merge`] policies).
///
/// Implement [`Processor::process`] to handle messages one at a time, or override
/// [`Processor::process_batch`] to work across the batch (and then `process` need not be
/// implemented).
pub trait Processor: Sized {
    /// Checks and takes the pipeline's config values: this is what the guest's `init`
    /// runs, when the host loads, swaps in or deploys the guest and before each batch. An
    /// error refuses the guest with its message (`invalid guest config: …`), which must
    /// name the key. It gets no [`state`] or [`lookup`]: those belong to a batch.
    fn new(config: &Config) -> Result<Self, ConfigError>;

    /// Processes one message: its outcome, with rows for targets declared in `out`.
    ///
    /// The default panics: implement it, or override [`Processor::process_batch`].
    fn process(&mut self, message: Message<'_>, out: &mut Out) -> Outcome {
        let _ = (message, out);
        panic!(
            "{} implements neither Processor::process nor Processor::process_batch",
            core::any::type_name::<Self>()
        )
    }

    /// Processes a batch: exactly one outcome per message, in order (a different number
    /// panics, failing the batch). Override it to work across the batch (to combine rows
    /// with the same key before they reach Postgres, say, or declare targets once).
    fn process_batch(&mut self, messages: Messages<'_>, out: &mut Out) -> alloc::vec::Vec<Outcome> {
        messages.into_iter().map(|m| self.process(m, out)).collect()
    }
}

/// Runs `processor` over one batch, as the guest's `process` does: indexes the schemas,
/// calls [`Processor::process_batch`] and assembles the output.
///
/// # Panics
///
/// When `process_batch` returns a different number of outcomes than messages (which fails
/// the batch), or the processor panics.
pub fn run_processor<P: Processor>(processor: &mut P, batch: Batch) -> Output {
    let Batch {
        topic,
        partition,
        schemas,
        messages,
    } = batch;
    let info = input::BatchInfo::new(topic, partition, schemas);
    let expected = messages.len();
    let mut out = Out::new();
    let outcomes = processor.process_batch(Messages::new(&info, messages), &mut out);
    assert_eq!(
        outcomes.len(),
        expected,
        "process_batch returned {} outcomes for {} messages",
        outcomes.len(),
        expected
    );
    out.finish(outcomes)
}

/// The guest's processor between `init` and `process`, on wasm.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod rt {
    use super::{Batch, Config, ConfigEntry, Output, Processor};
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;
    use core::cell::UnsafeCell;

    /// Holds the processor `init` built. A component instance is single-threaded and its
    /// exports do not reenter, so one mutable access at a time is guaranteed.
    pub struct Slot<P>(UnsafeCell<Option<P>>);

    // SAFETY: only on wasm32 components, which run one export call at a time on one
    // thread.
    unsafe impl<P> Sync for Slot<P> {}

    impl<P> Slot<P> {
        /// An empty slot.
        pub const fn new() -> Self {
            Self(UnsafeCell::new(None))
        }
    }

    impl<P> Default for Slot<P> {
        fn default() -> Self {
            Self::new()
        }
    }

    /// The guest's `init`: builds and keeps the processor, or returns the refusal.
    pub fn init<P: Processor>(slot: &Slot<P>, config: Vec<ConfigEntry>) -> Result<(), String> {
        let processor = P::new(&Config::from_entries(config)).map_err(|e| e.to_string())?;
        // SAFETY: see `Slot`; no reference into the slot is alive across export calls.
        unsafe { *slot.0.get() = Some(processor) };
        Ok(())
    }

    /// The guest's `process`, with the processor `init` kept.
    pub fn process<P: Processor>(slot: &Slot<P>, batch: Batch) -> Output {
        // SAFETY: see `Slot`.
        let processor = unsafe { &mut *slot.0.get() };
        match processor {
            Some(p) => super::run_processor(p, batch),
            None => panic!("process was called before init: the host must call init first"),
        }
    }
}

/// Exports a [`Processor`] as the guest's `init` and `process`.
///
/// On wasm this emits the component's exports; natively it only checks that the processor
/// can be run, so the same crate builds as a library for unit tests.
#[macro_export]
macro_rules! export {
    ($processor:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static PROCESSOR: $crate::rt::Slot<$processor> = $crate::rt::Slot::new();
            struct Export;
            impl $crate::bindings::Guest for Export {
                fn init(
                    config: $crate::prelude::Vec<$crate::ConfigEntry>,
                ) -> ::core::result::Result<(), $crate::prelude::String> {
                    $crate::rt::init::<$processor>(&PROCESSOR, config)
                }
                fn process(batch: $crate::Batch) -> $crate::Output {
                    $crate::rt::process::<$processor>(&PROCESSOR, batch)
                }
            }
    $crate::bindings::export_processor!(Export with_types_in $crate::bindings);
        };
        // Natively, only check that the processor can be run (and mark it used).
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn(&mut $processor, $crate::Batch) -> $crate::Output =
            $crate::run_processor::<$processor>;
    };
}

#[cfg(target_arch = "wasm32")]
mod allocator;

#[cfg(target_arch = "wasm32")]
mod wasm_rt {
    //! What `std` would otherwise provide on wasm: allocator, `cabi_realloc`, panics.

    #[global_allocator]
    static ALLOCATOR: crate::allocator::Allocator = crate::allocator::Allocator::new();

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
