//! The guest runtime: one wasmtime [`Engine`] for the process, guests compiled once and
//! kept as pre-instantiated components, and every `process` call run on a fresh instance
//! under a CPU deadline, a memory cap and a stack limit.
//!
//! A guest that traps, overruns its deadline or its memory fails only that call, with a
//! [`GuestError`] naming the guest and the [`GuestErrorKind`]; the next call starts from a
//! clean instance. A component that does not fit the `weir:processor` world is refused at
//! [`Runtime::load`] with a [`LoadError`] saying which import or export is wrong.

mod bindings;
mod check;
mod deploy;
mod host;
mod slot;
pub mod watch;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

pub use bindings::types;
pub use check::{ALLOWED_IMPORTS, GuestInfo, Item, WORLD};
pub use deploy::{DeployError, GuestSet, GuestStatus, PipelineUse};
pub use host::{GuestCounters, HostEvents, Level, TracingEvents};
pub use slot::{GuestSlot, Swapped};

use bindings::{Processor, ProcessorPre};
use host::CallState;
use types::{Batch, Outcome};

/// Bytes of each pooled memory and table kept resident between calls.
const KEEP_RESIDENT: usize = 2 << 20;

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
    #[error("guest {guest}: invalid component: {detail}")]
    Compile { guest: String, detail: String },
    /// The component imports interfaces the world does not grant.
    #[error(
        "guest {guest}: imports {}, which the {WORLD} world does not grant (a guest may import only {})",
        imports.join(", "),
        ALLOWED_IMPORTS.join(", ")
    )]
    ForbiddenImports { guest: String, imports: Vec<String> },
    /// The component's exports do not match the world.
    #[error("guest {guest}: does not fit the {WORLD} world: {detail}")]
    WrongWorld { guest: String, detail: String },
    /// The guest's limits exceed what the runtime was built for.
    #[error("guest {guest}: {detail}")]
    Limits { guest: String, detail: String },
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
}

impl GuestErrorKind {
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
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .parallel_compilation(true);
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
        Processor::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |s| s)?;
        let ticker = EpochTicker::start(&engine, config.epoch_tick);
        Ok(Self {
            engine,
            linker,
            config,
            events,
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

    /// Compiles and checks a guest against the world. Slow (compilation): keep the
    /// returned [`Guest`] and call it many times.
    pub fn load(&self, name: &str, bytes: &[u8], limits: GuestLimits) -> Result<Guest, LoadError> {
        self.check_limits(name, limits)?;
        let (component, info) = check::compile(&self.engine, name, bytes)?;
        check::fits(name, &info)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WrongWorld {
                guest: name.into(),
                detail: format!("{e:#}"),
            })?;
        let pre = ProcessorPre::new(pre).map_err(|e| LoadError::WrongWorld {
            guest: name.into(),
            detail: format!("{e:#}"),
        })?;
        let version = hex::encode(Sha256::digest(bytes));
        let id = Arc::new(GuestId {
            name: name.into(),
            short_version: version[..12].into(),
            version,
        });
        Ok(self.guest(id, pre, limits, info, bytes.len(), SystemTime::now()))
    }

    /// The same compiled guest under other limits (pipelines sharing a guest may limit it
    /// differently), with call counters of its own. No compilation.
    pub fn with_limits(&self, guest: &Guest, limits: GuestLimits) -> Result<Guest, LoadError> {
        let g = &*guest.inner;
        let Code::Wasm { pre, .. } = &g.code else {
            // A native processor runs under no limits.
            return Ok(guest.clone());
        };
        self.check_limits(&g.id.name, limits)?;
        Ok(self.guest(
            g.id.clone(),
            pre.clone(),
            limits,
            g.info.clone(),
            g.size,
            g.loaded_at,
        ))
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

    fn guest(
        &self,
        id: Arc<GuestId>,
        pre: ProcessorPre<CallState>,
        limits: GuestLimits,
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
        pre: ProcessorPre<CallState>,
        deadline_ticks: u64,
        events: Arc<dyn HostEvents>,
    },
    /// A transform compiled into the host.
    Native(Arc<dyn NativeProcessor>),
}

/// A transform compiled into the host process instead of loaded as a component: the same
/// contract as a guest's `process`, without the sandbox (no memory cap, no deadline, no
/// isolation). For measuring what the sandbox costs, and for embedding weir as a library.
pub trait NativeProcessor: Send + Sync {
    /// One outcome per message of `batch`, in order; `Err` fails the whole call, like a
    /// guest's trap.
    fn process(&self, batch: &Batch) -> Result<Vec<Outcome>, String>;
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
    pub fn process(&self, batch: &Batch) -> Result<Vec<Outcome>, GuestError> {
        let inner = &*self.inner;
        inner.calls.fetch_add(1, Ordering::Relaxed);
        let result = self.call(batch);
        if result.is_err() {
            inner.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn call(&self, batch: &Batch) -> Result<Vec<Outcome>, GuestError> {
        let inner = &*self.inner;
        let outcomes = match &inner.code {
            Code::Wasm {
                engine,
                pre,
                deadline_ticks,
                events,
            } => {
                let mut store = Store::new(
                    engine,
                    CallState::new(inner.id.clone(), events.clone(), inner.limits.max_memory),
                );
                store.limiter(|s| &mut s.limiter);
                store.set_epoch_deadline(*deadline_ticks);
                store.epoch_deadline_trap();
                let processor = pre
                    .instantiate(&mut store)
                    .map_err(|e| self.classify(&store, e, true))?;
                processor
                    .call_process(&mut store, batch)
                    .map_err(|e| self.classify(&store, e, false))?
            }
            Code::Native(native) => native
                .process(batch)
                .map_err(|message| self.error(GuestErrorKind::Trap { message }))?,
        };
        if outcomes.len() != batch.messages.len() {
            return Err(self.error(GuestErrorKind::BadOutput {
                expected: batch.messages.len(),
                got: outcomes.len(),
            }));
        }
        Ok(outcomes)
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

    /// `processor` as a guest named `name`. Its version is the sha256 of `native:<name>`.
    pub fn native(name: &str, processor: Arc<dyn NativeProcessor>) -> Self {
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
                info: GuestInfo {
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
