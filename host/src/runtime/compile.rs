//! Compiling components, one at a time: in this process, or in a child process under a
//! memory budget and a deadline.
//!
//! Cranelift's memory and time grow with a module's code, and a module of a few megabytes
//! can take gigabytes to compile. A process serving pipelines must not risk that on a
//! module someone uploaded, so `weir run` compiles in a child (`weir guest
//! compile-isolated`, this same binary, run by [`crate::isolate`]) whose memory is
//! capped: a compilation that needs more fails there, and the child's death is a refusal
//! here, with the reason. The child hands back the compiled artifact, which this process
//! loads without compiling again.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use super::LoadError;
use crate::isolate::Failure;

/// Where and how components are compiled.
#[derive(Debug, Clone, Default)]
pub enum Compiler {
    /// In this process, without bounds: for tools run on one's own modules.
    #[default]
    InProcess,
    /// In a child process of `exe` (`exe guest compile-isolated`), bounded.
    Isolated(Isolation),
}

/// The bounds of an isolated compilation.
#[derive(Debug, Clone)]
pub struct Isolation {
    /// The `weir` binary to run the child with.
    pub exe: PathBuf,
    /// Memory the child may use, in bytes.
    pub max_memory: usize,
    /// How long the child may take.
    pub timeout: Duration,
}

/// The engine settings that decide what compiled code looks like. The process's engine and
/// a compiling child's both start from these, so the child's artifacts load here.
pub(crate) fn engine_config(max_wasm_stack: usize) -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(max_wasm_stack)
        .parallel_compilation(true);
    wasm
}

impl Compiler {
    /// Compiles `bytes` as guest `name` for `engine`.
    pub(crate) fn compile(
        &self,
        engine: &Engine,
        name: &str,
        bytes: &[u8],
        max_wasm_stack: usize,
    ) -> Result<Component, LoadError> {
        let refused = |detail: String| LoadError::Compile {
            guest: name.into(),
            detail,
        };
        match self {
            Compiler::InProcess => {
                Component::new(engine, bytes).map_err(|e| refused(format!("{e:#}")))
            }
            Compiler::Isolated(isolation) => {
                let artifact = isolation.run(name, bytes, max_wasm_stack)?;
                // SAFETY: the artifact is what `Engine::precompile_component` of this same
                // binary wrote, with the same engine settings; `deserialize` still checks
                // that it was made for an engine like this one.
                unsafe { Component::deserialize(engine, &artifact) }
                    .map_err(|e| refused(format!("the compiled component does not load: {e:#}")))
            }
        }
    }
}

impl Isolation {
    /// Runs the child over `bytes`: the compiled artifact, or why there is none.
    fn run(&self, name: &str, bytes: &[u8], max_wasm_stack: usize) -> Result<Vec<u8>, LoadError> {
        let refused = |detail: String| LoadError::Compile {
            guest: name.into(),
            detail,
        };
        let args = [
            "guest",
            "compile-isolated",
            "--max-memory",
            &self.max_memory.to_string(),
            "--max-stack",
            &max_wasm_stack.to_string(),
        ];
        crate::isolate::run(&self.exe, &args, bytes, self.timeout).map_err(|failure| {
            refused(match failure {
                Failure::Start(e) => format!(
                    "cannot start the compiling process {}: {e}",
                    self.exe.display()
                ),
                Failure::TimedOut(limit) => format!(
                    "compiling took longer than {limit:?} (runtime.compile_timeout); refused"
                ),
                f if f.out_of_memory() => format!(
                    "compiling needs more memory than the budget of {} (runtime.compile_memory); refused{}",
                    crate::config::format_size(self.max_memory),
                    match f.stderr() {
                        "" => String::new(),
                        stderr => format!(" ({stderr})"),
                    }
                ),
                f => f.stderr().to_string(),
            })
        })
    }
}

/// The child's side (`weir guest compile-isolated`): caps its own memory, reads a
/// component on stdin, and writes the compiled artifact on stdout. Errors go to stderr and
/// exit with a failure; running out of memory aborts the process.
pub fn compile_isolated(max_memory: usize, max_wasm_stack: usize) -> anyhow::Result<()> {
    crate::isolate::cap_memory(max_memory)?;
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes)?;
    let engine = Engine::new(&engine_config(max_wasm_stack))?;
    let artifact = engine
        .precompile_component(&bytes)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    std::io::stdout().write_all(&artifact)?;
    Ok(())
}
