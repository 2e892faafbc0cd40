//! The guest runtime: one wasmtime [`Engine`] for the process, guests compiled once and
//! kept as pre-instantiated components, and every batch run on a fresh instance under a
//! CPU deadline, a memory cap and a stack limit.
//!
//! Guests of both released contracts run side by side ([`Contract`]): a 0.2.0 guest is
//! given its pipeline's config by `init` on each fresh instance (and once when it is set up
//! for a pipeline, [`Runtime::setup`], where a refused config refuses the guest), then the
//! batch; a 0.1.0 guest is given both in the batch, through an adapter ([`v1`]).
//!
//! A guest that traps, overruns its deadline or its memory fails only that call, with a
//! [`GuestError`] naming the guest and the [`GuestErrorKind`]; the next call starts from a
//! clean instance, and the call's state writes are dropped. A component that fits neither
//! world is refused at [`Runtime::load`] with a [`LoadError`] saying which import or
//! export is wrong.

mod check;
mod compile;
mod deploy;
mod host;
mod slot;
mod v1;
pub mod watch;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

pub use check::{Contract, GuestInfo, Item, LOOKUP_IMPORT, STATE_IMPORT, WORLD};
pub use compile::{Compiler, Isolation, compile_isolated};
pub use deploy::{DeployError, Deployer, GuestSet, GuestStatus, PipelineUse, Prepared};
pub use host::{GuestCounters, HostEvents, Level, TracingEvents, output};
pub use slot::{GuestSlot, Swapped};

use crate::model::{Batch, ConfigEntry, Lookups, Output, StateTxn, v1 as old, v2 as new};
use host::CallState;

/// Bytes of each pooled memory and table kept resident between calls.
const KEEP_RESIDENT: usize = 2 << 20;

/// Longest compiler message a refusal carries.
const MAX_DETAIL: usize = 4096;

/// Engine-wide settings, fixed when the [`Runtime`] is built.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Native stack a guest call may use, in bytes. Wasmtime applies it to every call of
    /// the engine, so it is a runtime setting rather than a per-guest one.
    pub max_wasm_stack: usize,
    /// How often the epoch ticks; deadlines are enforced to within one tick.
    pub epoch_tick: Duration,
    /// Instances kept ready in the pooling allocator, or `None` to allocate on demand.
    /// Pooling makes a fresh instance per call cheap (copy-on-write memory images).
    pub pooling: Option<PoolingConfig>,
    /// Where components are compiled (one at a time, whichever).
    pub compiler: Compiler,
}

/// Sizes of the pooling allocator.
#[derive(Debug, Clone)]
pub struct PoolingConfig {
    /// Guest instances that may be live at once (calls in flight, across all guests).
    pub instances: u32,
    /// The largest linear memory a pooled instance may have, in bytes; no guest's
    /// [`GuestLimits::max_memory`] may exceed it.
    pub max_memory: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_wasm_stack: 512 * 1024,
            epoch_tick: Duration::from_millis(10),
            pooling: Some(PoolingConfig::default()),
            compiler: Compiler::InProcess,
        }
    }
}

impl Default for PoolingConfig {
    fn default() -> Self {
        Self {
            instances: 64,
            max_memory: 1 << 30,
        }
    }
}

/// Limits applied to each call of one guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimits {
    /// CPU time a call may take (instantiation included) before it is interrupted.
    pub deadline: Duration,
    /// Linear memory a call may grow to, in bytes.
    pub max_memory: usize,
}

impl Default for GuestLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(10),
            max_memory: 128 << 20,
        }
    }
}

/// A guest module could not be loaded. Each message says which guest and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)] // Fields are what the messages print.
pub enum LoadError {
    /// The file could not be read.
    #[error("guest {guest}: cannot read {path}: {source}")]
    Read {
        guest: String,
        path: String,
        source: std::io::Error,
    },
    /// The bytes are not WebAssembly at all.
    #[error(
        "guest {guest}: not a WebAssembly file ({detail}); expected a component built with `cargo build --target wasm32-wasip2`"
    )]
    NotWasm { guest: String, detail: String },
    /// A core module, not a component.
    #[error(
        "guest {guest}: is a core WebAssembly module, not a component; build it for the wasm32-wasip2 target (or wrap it with `wasm-tools component new`) against the {WORLD} world"
    )]
    CoreModule { guest: String },
    /// The component did not validate or compile.
    #[error(
        "guest {guest}: invalid component: {}",
        crate::text::truncate(detail, MAX_DETAIL)
    )]
    Compile { guest: String, detail: String },
    /// The component imports interfaces the world does not grant.
    #[error(
        "guest {guest}: imports {}, which the {contract} world does not grant (a guest of it may import only {})",
        check::listed(imports),
        contract.allowed_imports().join(", ")
    )]
    ForbiddenImports {
        guest: String,
        contract: Contract,
        imports: Vec<String>,
    },
    /// The component's exports do not match the world.
    #[error("guest {guest}: does not fit the {WORLD} world: {detail}")]
    WrongWorld { guest: String, detail: String },
    /// The guest's limits exceed what the runtime was built for.
    #[error("guest {guest}: {detail}")]
    Limits { guest: String, detail: String },
    /// The guest's `init` refused the pipeline's config, or failed.
    #[error("guest {guest} refused the config of pipeline {pipeline}: {reason}")]
    Config {
        guest: String,
        pipeline: String,
        reason: String,
    },
}

/// What went wrong in a guest call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[allow(missing_docs)] // Fields are what the messages print.
pub enum GuestErrorKind {
    /// The call ran past its CPU deadline and was interrupted.
    Deadline { limit: Duration },
    /// The guest tried to grow its memory past the cap.
    OutOfMemory { requested: usize, limit: usize },
    /// The guest overflowed its stack.
    StackOverflow,
    /// The guest panicked; the message is the guest's own.
    Panic { message: String },
    /// Any other trap (out-of-bounds access, unreachable code, …).
    Trap { message: String },
    /// The guest returned a wrong number of outcomes.
    BadOutput { expected: usize, got: usize },
    /// The instance could not be created (pool exhausted, initial memory over the cap…).
    Instantiate { message: String },
    /// The guest's `init` refused its config (which it took when it was set up).
    Config { message: String },
}

impl GuestErrorKind {
    /// Every [`GuestErrorKind::name`].
    pub const NAMES: [&'static str; 8] = [
        "deadline",
        "out_of_memory",
        "stack_overflow",
        "panic",
        "trap",
        "bad_output",
        "instantiate",
        "config",
    ];

    /// A short stable name for metrics and dead-letter `stage` columns.
    pub fn name(&self) -> &'static str {
        match self {
            GuestErrorKind::Deadline { .. } => "deadline",
            GuestErrorKind::OutOfMemory { .. } => "out_of_memory",
            GuestErrorKind::StackOverflow => "stack_overflow",
            GuestErrorKind::Panic { .. } => "panic",
            GuestErrorKind::Trap { .. } => "trap",
            GuestErrorKind::BadOutput { .. } => "bad_output",
            GuestErrorKind::Instantiate { .. } => "instantiate",
            GuestErrorKind::Config { .. } => "config",
        }
    }
}

impl fmt::Display for GuestErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestErrorKind::Deadline { limit } => {
                write!(f, "interrupted after its {limit:?} deadline")
            }
            GuestErrorKind::OutOfMemory { requested, limit } => write!(
                f,
                "out of memory: tried to grow linear memory to {requested} bytes, over its cap of {limit} bytes"
            ),
            GuestErrorKind::StackOverflow => f.write_str("stack overflow"),
            GuestErrorKind::Panic { message } => write!(f, "panicked: {message}"),
            GuestErrorKind::Trap { message } => write!(f, "trapped: {message}"),
            GuestErrorKind::BadOutput { expected, got } => write!(
                f,
                "returned {got} outcomes for {expected} messages (one per message is required)"
            ),
            GuestErrorKind::Instantiate { message } => {
                write!(f, "could not be instantiated: {message}")
            }
            GuestErrorKind::Config { message } => write!(f, "refused its config: {message}"),
        }
    }
}

/// A guest call failed. Only that call: the next one runs on a fresh instance.
#[derive(Debug, Clone, thiserror::Error)]
#[error("guest {guest} ({version}) {kind}")]
pub struct GuestError {
    /// The guest's name.
    pub guest: String,
    /// Short version (first 12 hex digits of the module's sha256).
    pub version: String,
    /// What happened.
    pub kind: GuestErrorKind,
}

/// The process-wide guest runtime.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    config: RuntimeConfig,
    events: Arc<dyn HostEvents>,
    /// Held while a component compiles: one compilation at a time, so concurrent deploys
    /// cannot add up their compilers' memory.
    compiling: std::sync::Mutex<()>,
    _ticker: EpochTicker,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds the engine, with guests' logs and counters going to `events`.
    pub fn new(config: RuntimeConfig, events: Arc<dyn HostEvents>) -> anyhow::Result<Self> {
        let mut wasm = compile::engine_config(config.max_wasm_stack);
        if let Some(pool) = &config.pooling {
            let mut p = PoolingAllocationConfig::default();
            p.total_component_instances(pool.instances)
                .total_core_instances(pool.instances * 4)
                .total_memories(pool.instances)
                .total_tables(pool.instances * 2)
                .max_memory_size(pool.max_memory)
                // Reset a freed slot's first pages with memset instead of returning them
                // to the kernel, so the next call's instance does not page-fault them in
                // again (a guest's stack and heap start there).
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(KEEP_RESIDENT);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
        }
        let engine = Engine::new(&wasm)?;
        let mut linker = Linker::new(&engine);
        old::Processor::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |s| s)?;
        new::Processor::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |s| s)?;
        let ticker = EpochTicker::start(&engine, config.epoch_tick);
        Ok(Self {
            engine,
            linker,
            config,
            events,
            compiling: std::sync::Mutex::new(()),
            _ticker: ticker,
        })
    }

    /// Loads a guest from a `.wasm` file; the guest is named after the file stem.
    pub fn load_file(&self, path: &Path, limits: GuestLimits) -> Result<Guest, LoadError> {
        let name = guest_name(path);
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            guest: name.clone(),
            path: path.display().to_string(),
            source,
        })?;
        self.load(&name, &bytes, limits)
    }

    /// Checks a guest against the world, then compiles it (one compilation at a time, with
    /// the runtime's [`Compiler`]). Slow (compilation): keep the returned [`Guest`] and
    /// call it many times. A component whose imports or exports do not fit is refused
    /// before it is compiled.
    pub fn load(&self, name: &str, bytes: &[u8], limits: GuestLimits) -> Result<Guest, LoadError> {
        self.check_limits(name, limits)?;
        check::fits(name, &check::scan(name, bytes)?)?;
        let component = {
            let _one = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
            self.config
                .compiler
                .compile(&self.engine, name, bytes, self.config.max_wasm_stack)?
        };
        let info = check::describe(&self.engine, &component, bytes);
        check::fits(name, &info)?;
        let wrong = |e: wasmtime::Error| LoadError::WrongWorld {
            guest: name.into(),
            detail: format!("{e:#}"),
        };
        let pre = self.linker.instantiate_pre(&component).map_err(wrong)?;
        let pre = match info.contract {
            Contract::V1 => Pre::V1(old::ProcessorPre::new(pre).map_err(wrong)?),
            Contract::V2 => Pre::V2(new::ProcessorPre::new(pre).map_err(wrong)?),
        };
        let version = hex::encode(Sha256::digest(bytes));
        let id = Arc::new(GuestId {
            name: name.into(),
            short_version: version[..12].into(),
            version,
        });
        Ok(self.guest(
            id,
            pre,
            limits,
            Arc::new([]),
            info,
            bytes.len(),
            SystemTime::now(),
        ))
    }

    /// The same compiled guest set up for `pipeline`: under its limits, with its config
    /// values, and counters of its own. No compilation. A guest of 0.2.0 is given the
    /// config by `init` on a fresh instance first, and a refusal (or a failing `init`)
    /// refuses the guest with its message, before it serves a batch.
    pub fn setup(
        &self,
        guest: &Guest,
        pipeline: &str,
        limits: GuestLimits,
        config: Vec<ConfigEntry>,
    ) -> Result<Guest, LoadError> {
        let g = &*guest.inner;
        let Code::Wasm { pre, .. } = &g.code else {
            // A native processor runs under no limits.
            return Ok(guest.clone());
        };
        self.check_limits(&g.id.name, limits)?;
        let set = self.guest(
            g.id.clone(),
            pre.clone(),
            limits,
            config.into(),
            g.info.clone(),
            g.size,
            g.loaded_at,
        );
        set.check_config().map_err(|reason| LoadError::Config {
            guest: g.id.name.clone(),
            pipeline: pipeline.to_string(),
            reason,
        })?;
        Ok(set)
    }

    fn check_limits(&self, name: &str, limits: GuestLimits) -> Result<(), LoadError> {
        if let Some(pool) = &self.config.pooling
            && limits.max_memory > pool.max_memory
        {
            return Err(LoadError::Limits {
                guest: name.into(),
                detail: format!(
                    "memory cap {} bytes exceeds the runtime's pooled maximum of {} bytes",
                    limits.max_memory, pool.max_memory
                ),
            });
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn guest(
        &self,
        id: Arc<GuestId>,
        pre: Pre,
        limits: GuestLimits,
        config: Arc<[ConfigEntry]>,
        info: GuestInfo,
        size: usize,
        loaded_at: SystemTime,
    ) -> Guest {
        Guest {
            inner: Arc::new(GuestInner {
                id,
                code: Code::Wasm {
                    engine: self.engine.clone(),
                    pre,
                    deadline_ticks: deadline_ticks(limits.deadline, self.config.epoch_tick),
                    events: self.events.clone(),
                },
                limits,
                config,
                info,
                loaded_at,
                size,
                calls: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
        }
    }

    /// Where guests' logs and counters, and swaps, are reported.
    pub fn events(&self) -> &Arc<dyn HostEvents> {
        &self.events
    }

    /// Describes a component without loading it: its world as WIT, its imports and
    /// exports. Fails only when it is not a component at all; use [`Runtime::load`] to
    /// learn whether it fits the world.
    pub fn inspect(&self, name: &str, bytes: &[u8]) -> Result<GuestInfo, LoadError> {
        let (_, info) = check::compile(&self.engine, name, bytes)?;
        Ok(info)
    }

    /// The engine, for tools that compile ahead of time.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// The name a guest file gives its guest: the file stem (`ticks.wasm` is `ticks`).
pub fn guest_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn deadline_ticks(deadline: Duration, tick: Duration) -> u64 {
    // One extra tick: the ticker may fire just after the call starts.
    (deadline.as_nanos().div_ceil(tick.as_nanos().max(1)) as u64).max(1) + 1
}

/// Who a guest is: its name and the sha256 of its module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestId {
    /// Name (the file stem, or the name it was deployed under).
    pub name: String,
    /// Full sha256 of the module, hex.
    pub version: String,
    /// First 12 hex digits of `version`.
    pub short_version: String,
}

/// A compiled, checked guest, ready to call. Cheap to clone; calls may run concurrently.
#[derive(Clone)]
pub struct Guest {
    inner: Arc<GuestInner>,
}

struct GuestInner {
    id: Arc<GuestId>,
    code: Code,
    limits: GuestLimits,
    /// The pipeline's config values: given to `init` (0.2.0), or in every batch (0.1.0).
    config: Arc<[ConfigEntry]>,
    info: GuestInfo,
    loaded_at: SystemTime,
    size: usize,
    calls: AtomicU64,
    errors: AtomicU64,
}

/// How a guest's batches run.
enum Code {
    /// A component, on a fresh sandboxed instance per call.
    Wasm {
        engine: Engine,
        pre: Pre,
        deadline_ticks: u64,
        events: Arc<dyn HostEvents>,
    },
    /// A transform compiled into the host.
    Native(Arc<dyn NativeProcessor>),
}

/// A component ready to instantiate, by the contract it targets.
#[derive(Clone)]
enum Pre {
    V1(old::ProcessorPre<CallState>),
    V2(new::ProcessorPre<CallState>),
}

/// A transform compiled into the host process instead of loaded as a component: the
/// contract of a 0.2.0 guest's `init` and `process`, without the sandbox (no memory cap, no
/// deadline, no isolation) and without state or lookups. For measuring what the sandbox
/// costs, and for embedding weir as a library.
pub trait NativeProcessor: Send + Sync {
    /// Checks the config, as a guest's `init` does.
    fn init(&self, config: &[ConfigEntry]) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// One outcome per message of `batch`, in order; `Err` fails the whole call, like a
    /// guest's trap.
    fn process(&self, config: &[ConfigEntry], batch: &Batch) -> Result<Output, String>;
}

/// What a batch's guest call may reach besides its batch.
#[derive(Default)]
pub struct CallContext {
    /// The batch's view of its partition's state, for guests that import `state`.
    pub state: Option<StateTxn>,
    /// The pipeline's lookups, for guests that import `lookup`.
    pub lookups: Option<Arc<dyn Lookups>>,
}

/// What a guest call gave back.
pub struct Call {
    /// The output, or why the call failed.
    pub output: Result<Output, GuestError>,
    /// The state handed in, with the call's writes kept if it succeeded and dropped if it
    /// failed.
    pub state: Option<StateTxn>,
}

impl fmt::Debug for Guest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guest")
            .field("id", &self.inner.id)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl Guest {
    /// Runs one batch on a fresh instance: one outcome per message, in order.
    pub fn process(&self, batch: &Batch, context: CallContext) -> Call {
        let inner = &*self.inner;
        inner.calls.fetch_add(1, Ordering::Relaxed);
        let mut state = context.state;
        let output = self.call(batch, &mut state, context.lookups);
        if let Some(state) = &mut state {
            if output.is_ok() {
                state.keep_call();
            } else {
                state.drop_call();
            }
        }
        if output.is_err() {
            inner.errors.fetch_add(1, Ordering::Relaxed);
        }
        Call { output, state }
    }

    /// A fresh instance's store, holding what the call may reach.
    fn store(
        &self,
        engine: &Engine,
        deadline_ticks: u64,
        events: &Arc<dyn HostEvents>,
    ) -> Store<CallState> {
        let inner = &*self.inner;
        let mut store = Store::new(
            engine,
            CallState::new(inner.id.clone(), events.clone(), inner.limits.max_memory),
        );
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(deadline_ticks);
        store.epoch_deadline_trap();
        store
    }

    fn call(
        &self,
        batch: &Batch,
        state: &mut Option<StateTxn>,
        lookups: Option<Arc<dyn Lookups>>,
    ) -> Result<Output, GuestError> {
        let inner = &*self.inner;
        let output = match &inner.code {
            Code::Wasm {
                engine,
                pre,
                deadline_ticks,
                events,
            } => {
                let mut store = self.store(engine, *deadline_ticks, events);
                let result = self.run(pre, &mut store, batch, state, lookups);
                store.data_mut().finish();
                if let Some(given) = store.data_mut().state.take() {
                    *state = Some(given);
                }
                result?
            }
            Code::Native(native) => native
                .process(&inner.config, batch)
                .map_err(|message| self.error(GuestErrorKind::Trap { message }))?,
        };
        if output.outcomes.len() != batch.messages.len() {
            return Err(self.error(GuestErrorKind::BadOutput {
                expected: batch.messages.len(),
                got: output.outcomes.len(),
            }));
        }
        Ok(output)
    }

    /// Instantiates and calls the guest in `store`: `init` then `process` (0.2.0), or
    /// `process` with the config in the batch (0.1.0). The state and lookups are the
    /// batch's: `process` reaches them, `init` does not.
    fn run(
        &self,
        pre: &Pre,
        store: &mut Store<CallState>,
        batch: &Batch,
        state: &mut Option<StateTxn>,
        lookups: Option<Arc<dyn Lookups>>,
    ) -> Result<Output, GuestError> {
        let config = &self.inner.config;
        match pre {
            Pre::V1(pre) => {
                let _ = (state, lookups); // 0.1.0 has neither.
                let processor = pre
                    .instantiate(&mut *store)
                    .map_err(|e| self.classify(store, e, true))?;
                let old = v1::batch(batch, config);
                let outcomes = processor
                    .call_process(&mut *store, &old)
                    .map_err(|e| self.classify(store, e, false))?;
                Ok(v1::output(outcomes))
            }
            Pre::V2(pre) => {
                let processor = pre
                    .instantiate(&mut *store)
                    .map_err(|e| self.classify(store, e, true))?;
                processor
                    .call_init(&mut *store, config)
                    .map_err(|e| self.classify(store, e, false))?
                    .map_err(|message| self.error(GuestErrorKind::Config { message }))?;
                store.data_mut().state = state.take();
                store.data_mut().lookups = lookups;
                processor
                    .call_process(&mut *store, batch)
                    .map_err(|e| self.classify(store, e, false))
            }
        }
    }

    /// Gives the guest its config as a batch would, on a fresh instance, without a batch:
    /// `Err` with the guest's refusal, or with how `init` failed.
    fn check_config(&self) -> Result<(), String> {
        let inner = &*self.inner;
        match &inner.code {
            Code::Wasm {
                engine,
                pre: Pre::V2(pre),
                deadline_ticks,
                events,
            } => {
                let mut store = self.store(engine, *deadline_ticks, events);
                let result = pre
                    .instantiate(&mut store)
                    .map_err(|e| self.classify(&store, e, true))
                    .and_then(|processor| {
                        processor
                            .call_init(&mut store, &inner.config)
                            .map_err(|e| self.classify(&store, e, false))
                    });
                store.data_mut().finish();
                match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(refusal)) => Err(refusal),
                    Err(e) => Err(format!("its init {}", e.kind)),
                }
            }
            // 0.1.0 takes its config in every batch: nothing to check before one.
            Code::Wasm {
                pre: Pre::V1(_), ..
            } => Ok(()),
            Code::Native(native) => native.init(&inner.config),
        }
    }

    fn classify(
        &self,
        store: &Store<CallState>,
        error: wasmtime::Error,
        instantiating: bool,
    ) -> GuestError {
        let state = store.data();
        let limits = self.inner.limits;
        let kind = if let Some(requested) = state.limiter.denied {
            GuestErrorKind::OutOfMemory {
                requested,
                limit: limits.max_memory,
            }
        } else if let Some(trap) = error.downcast_ref::<Trap>() {
            match trap {
                Trap::Interrupt => GuestErrorKind::Deadline {
                    limit: limits.deadline,
                },
                Trap::StackOverflow => GuestErrorKind::StackOverflow,
                _ => match &state.panic {
                    Some(message) => GuestErrorKind::Panic {
                        message: message.clone(),
                    },
                    None if *trap == Trap::MemoryOutOfBounds => GuestErrorKind::Trap {
                        message: format!(
                            "{trap} (deep recursion that overflows the guest's in-memory stack ends this way too)"
                        ),
                    },
                    None => GuestErrorKind::Trap {
                        message: format!("{trap}"),
                    },
                },
            }
        } else if instantiating {
            GuestErrorKind::Instantiate {
                message: format!("{error:#}"),
            }
        } else {
            GuestErrorKind::Trap {
                message: format!("{error:#}"),
            }
        };
        self.error(kind)
    }

    fn error(&self, kind: GuestErrorKind) -> GuestError {
        GuestError {
            guest: self.inner.id.name.clone(),
            version: self.inner.id.short_version.clone(),
            kind,
        }
    }

    /// `processor` as a guest named `name`, with these config values. Its version is the
    /// sha256 of `native:<name>`.
    pub fn native(
        name: &str,
        processor: Arc<dyn NativeProcessor>,
        config: Vec<ConfigEntry>,
    ) -> Self {
        let version = hex::encode(Sha256::digest(format!("native:{name}")));
        Guest {
            inner: Arc::new(GuestInner {
                id: Arc::new(GuestId {
                    name: name.to_string(),
                    short_version: version[..12].to_string(),
                    version,
                }),
                code: Code::Native(processor),
                limits: GuestLimits::default(),
                config: config.into(),
                info: GuestInfo {
                    contract: Contract::V2,
                    wit: None,
                    imports: Vec::new(),
                    exports: Vec::new(),
                },
                loaded_at: SystemTime::now(),
                size: 0,
                calls: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
        }
    }

    /// Name and version.
    pub fn id(&self) -> &GuestId {
        &self.inner.id
    }

    /// The limits each call runs under.
    pub fn limits(&self) -> GuestLimits {
        self.inner.limits
    }

    /// What the component imports and exports.
    pub fn info(&self) -> &GuestInfo {
        &self.inner.info
    }

    /// The version of the contract it targets.
    pub fn contract(&self) -> Contract {
        self.inner.info.contract
    }

    /// Whether it imports keyed state (its batches need their partition's state).
    pub fn uses_state(&self) -> bool {
        self.inner.info.imports(STATE_IMPORT)
    }

    /// Whether it imports lookups (its batches need their pipeline's lookups).
    pub fn uses_lookups(&self) -> bool {
        self.inner.info.imports(LOOKUP_IMPORT)
    }

    /// The config values it is set up with.
    pub fn config(&self) -> &[ConfigEntry] {
        &self.inner.config
    }

    /// When it was loaded.
    pub fn loaded_at(&self) -> SystemTime {
        self.inner.loaded_at
    }

    /// Size of the module in bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// Calls made so far, and how many failed.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.inner.calls.load(Ordering::Relaxed),
            self.inner.errors.load(Ordering::Relaxed),
        )
    }
}

/// Advances the engine's epoch on a timer. Holds only a weak reference, so the thread
/// ends once the engine is dropped (or the ticker is).
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    fn start(engine: &Engine, tick: Duration) -> Self {
        let weak = engine.weak();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .expect("spawn epoch ticker thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_rounds_up_to_ticks() {
        let tick = Duration::from_millis(10);
        assert_eq!(deadline_ticks(Duration::from_millis(100), tick), 11);
        assert_eq!(deadline_ticks(Duration::from_millis(101), tick), 12);
        assert_eq!(deadline_ticks(Duration::ZERO, tick), 2);
    }

    #[test]
    fn garbage_and_core_modules_are_refused_with_reasons() {
        let rt =
            Runtime::new(RuntimeConfig::default(), Arc::new(TracingEvents::default())).unwrap();
        let err = rt
            .load("junk", b"hello, not wasm", GuestLimits::default())
            .unwrap_err();
        assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("guest junk: not a WebAssembly file")
        );

        // The smallest valid core module: magic and version 1, no sections.
        let core = b"\0asm\x01\0\0\0";
        let err = rt.load("core", core, GuestLimits::default()).unwrap_err();
        assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("is a core WebAssembly module, not a component")
        );

        // A component header followed by nonsense.
        let broken = b"\0asm\x0d\0\x01\0\xff\xff\xff";
        let err = rt
            .load("broken", broken, GuestLimits::default())
            .unwrap_err();
        assert!(matches!(err, LoadError::Compile { .. }), "{err}");
    }

    #[test]
    fn memory_cap_above_pool_is_refused() {
        let rt =
            Runtime::new(RuntimeConfig::default(), Arc::new(TracingEvents::default())).unwrap();
        let limits = GuestLimits {
            max_memory: 4 << 30,
            ..GuestLimits::default()
        };
        let err = rt.load("big", b"\0asm\x0d\0\x01\0", limits).unwrap_err();
        assert!(matches!(err, LoadError::Limits { .. }), "{err}");
    }
}
