//! The `weir` command line, built inside this test crate so the end-to-end tests run the
//! real CLI compiled with the same dependency features as themselves (a nested
//! `cargo build -p weir` would resolve features differently and rebuild everything).

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
