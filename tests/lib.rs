//! Shared helpers for weir's end-to-end tests and benchmarks.
//!
//! The guests under `guests/` are built for wasm32-wasip2 by this crate's build script;
//! [`guest_path`] finds them.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Where the built guest components are.
pub const GUEST_DIR: &str = env!("WEIR_GUEST_DIR");

/// The path of the built guest `name` (`passthrough`, `fixture_spin`, …).
pub fn guest_path(name: &str) -> PathBuf {
    let path = PathBuf::from(GUEST_DIR).join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "guest {name} was not built: {} is missing",
        path.display()
    );
    path
}

/// The path of the `weir` binary, built (in this profile) on first use.
pub fn weir_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // Integration tests run from target/<profile>/deps; the binary sits beside.
            let mut dir = std::env::current_exe().expect("current exe");
            dir.pop();
            if dir.ends_with("deps") {
                dir.pop();
            }
            let profile = dir
                .file_name()
                .and_then(|p| p.to_str())
                .unwrap_or("debug")
                .to_string();
            let cargo = option_env!("CARGO").unwrap_or("cargo");
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "weir", "--bin", "weir"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile == "release" {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build -p weir");
            assert!(status.success(), "cargo build -p weir failed");
            let bin = dir.join("weir");
            assert!(bin.exists(), "{} is missing after the build", bin.display());
            bin
        })
        .clone()
}
