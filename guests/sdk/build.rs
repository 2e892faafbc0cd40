//! A `no_std` guest still needs `memcpy`, `memcmp` and friends, which `compiler_builtins`
//! leaves to the C library on WASI targets: link wasi-libc for them. Only the functions
//! used are linked, and none of them imports a WASI interface.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("wasi") {
        println!("cargo:rustc-link-lib=c");
    }
}
