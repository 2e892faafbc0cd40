//! Builds the guest components (the `guests/` workspace) for wasm32-wasip2, so tests and
//! benches always run against the current guests, and tells them where the `.wasm` files
//! are through the `WEIR_GUEST_DIR` compile-time variable.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let guests = root.join("guests");
    let target_dir = guests.join("target");

    for watched in [
        "wit",
        "guests/Cargo.toml",
        "guests/Cargo.lock",
        "guests/sdk",
        "guests/passthrough",
        "guests/tickers",
        "guests/options",
        "guests/fixtures",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(guests.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(&guests);
    // The outer build's settings are for the host target, not for the guests.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key == "RUSTFLAGS"
            || key == "RUSTC_WRAPPER"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd.status().expect("run cargo to build the guests");
    assert!(
        status.success(),
        "building the guests failed: run `cargo build --release --target wasm32-wasip2` in guests/ to see why (is the target installed? `rustup target add wasm32-wasip2`)"
    );
    println!(
        "cargo:rustc-env=WEIR_GUEST_DIR={}",
        target_dir.join("wasm32-wasip2/release").display()
    );
}
