// With the `tch` backend, link binaries (the CLI, tests, benches) with an rpath to libtorch's
// shared libraries, so that they run without `LD_LIBRARY_PATH`. torch-sys finds libtorch from
// `LIBTORCH`, or from PyTorch's Python package when `LIBTORCH_USE_PYTORCH=1`; this follows it.
// (The CLI's build script includes this file.)

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    match libtorch_lib_dir() {
        Some(lib) => println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display()),
        None => println!(
            "cargo:warning=the tch backend needs libtorch 2.9.0: run `scripts/install-backends.sh tch` \
             and build with LIBTORCH_USE_PYTORCH=1 and its virtual environment first on PATH \
             (or set LIBTORCH to an unpacked libtorch)"
        ),
    }
}

fn libtorch_lib_dir() -> Option<PathBuf> {
    if let Some(root) = std::env::var_os("LIBTORCH") {
        return Some(PathBuf::from(root).join("lib"));
    }
    // The same interpreter torch-sys runs.
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    torch_lib_dir(python.as_ref())
}

include!("build/torch_lib_dir.rs");
