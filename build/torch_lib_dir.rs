// Where the torch package that `python` imports keeps libtorch's shared libraries. Shared by the
// build scripts (rpath) and xtask (LD_LIBRARY_PATH for unit-test binaries) through include!.
fn torch_lib_dir(python: &std::path::Path) -> Option<std::path::PathBuf> {
    let output = std::process::Command::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(output.stdout).ok()?;
    output
        .status
        .success()
        .then(|| std::path::PathBuf::from(dir.trim()))
}
