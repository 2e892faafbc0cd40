//! The `weir` binary.

// Batches are built on one thread and freed on another, many small allocations each:
// mimalloc's per-thread free lists cost a fraction of glibc's (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
