//! Backends: `info`, what a missing or unusable backend says, threads, GPU kernel caches.

mod common;

use common::*;

#[test]
fn unknown_backend() {
    assert_usage_error(
        &nexttoken(&["generate", "--backend", "tpu", "Hi"]),
        "unknown backend `tpu`",
    );
}

#[test]
fn backend_not_compiled_in_names_the_feature() {
    // cuda cannot be built offline, so no test build has it.
    let output = nexttoken(&[
        "generate",
        "--backend",
        "cuda",
        "--model",
        &tiny_trained(),
        "Hi",
    ]);
    assert_fails_with(&output, "rebuild with `--features cuda`");
}

#[test]
fn info_lists_every_backend_and_flex_runs() {
    let output = nexttoken(&["info"]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    for name in ["flex", "ndarray", "wgpu", "vulkan", "tch", "cuda"] {
        assert!(
            stdout.lines().any(|line| line.starts_with(name)),
            "{name} missing:\n{stdout}"
        );
    }
    let flex = stdout
        .lines()
        .find(|line| line.starts_with("flex"))
        .unwrap();
    assert!(flex.contains("yes") && flex.contains("ready"), "{flex}");
    // Human text, not a device's Rust debug output.
    assert!(
        !stdout.contains("Device") && !stdout.contains("::"),
        "{stdout}"
    );
}

/// Whether this build of the binary has `backend` (test builds choose their features).
fn compiled(backend: &str) -> bool {
    let info = String::from_utf8(nexttoken(&["info"]).stdout).unwrap();
    info.lines()
        .any(|line| line.split_whitespace().take(2).eq([backend, "yes"]))
}

#[test]
#[cfg_attr(
    not(feature = "wgpu"),
    ignore = "wgpu is not compiled in (--features wgpu)"
)]
fn wgpu_without_a_vulkan_driver_says_what_to_install() {
    assert!(compiled("wgpu"), "the binary has no wgpu backend");
    // Point the Vulkan loader at no drivers, as on a machine without any.
    let output = Command::new(env!("CARGO_BIN_EXE_nexttoken"))
        .args([
            "generate",
            "--backend",
            "wgpu",
            "--model",
            &tiny_trained(),
            "Hi",
        ])
        .env("VK_ICD_FILENAMES", "/nonexistent.json")
        .env("VK_DRIVER_FILES", "/nonexistent.json")
        .output()
        .unwrap();
    assert_fails_with(&output, "no Vulkan adapter");
    assert_fails_with(&output, "apt-get install mesa-vulkan-drivers");
}

/// The GPU runtime's autotune results go to the user's cache directory wherever the binary is
/// started: cubecl's default is the `target/` of the Cargo workspace around the current
/// directory, which would write into a user's own project and keep one cache per project.
#[test]
#[cfg_attr(
    not(feature = "wgpu"),
    ignore = "wgpu is not compiled in (--features wgpu)"
)]
fn wgpu_keeps_its_kernel_caches_in_the_user_cache_wherever_it_starts() {
    assert!(compiled("wgpu"), "the binary has no wgpu backend");
    let project = tempfile::tempdir().unwrap();
    std::fs::write(
        project.path().join("Cargo.toml"),
        "[package]\nname = \"someone-elses\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_nexttoken"))
        .args(["generate", "--backend", "wgpu", "--model", &tiny_trained()])
        .args(["-n", "2", "Hi"])
        .current_dir(project.path())
        .env("XDG_CACHE_HOME", cache.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        !project.path().join("target").exists(),
        "nothing is written into the project the binary runs in"
    );
    assert!(cache.path().join("cubecl").is_dir(), "{output:?}");
}

#[test]
fn zero_threads() {
    assert_usage_error(&nexttoken(&["bench", "-t", "0"]), "--threads");
}
