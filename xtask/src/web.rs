//! `cargo xtask web`: builds the browser page (crates/nexttoken-web compiled to WebAssembly,
//! web/, and the bundled model) into one folder, and serves or tests it.
//!
//! Everything comes from the package registries: the wasm32 target from rustup, wasm-bindgen's
//! CLI from crates.io at the version Cargo.lock pins for the `wasm-bindgen` crate (the two must
//! match), Chromium from Debian and Playwright from PyPI for the tests. Nothing downloads a
//! binary from elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cache_dir, cargo, install, run, target_dir, venv_python};

const TARGET: &str = "wasm32-unknown-unknown";
const BUNDLED: &str = "models/nexttoken-tiny-shakespeare";

#[derive(clap::Args)]
pub struct WebArgs {
    /// After building, serve the page on 127.0.0.1:PORT until interrupted.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "8000")]
    serve: Option<u16>,
    /// After building, run the browser tests (tests/web/page_test.py) in headless Chromium:
    /// WebGPU through SwiftShader and the CPU fallback, ids against the native build's and
    /// Hugging Face's, the error messages; writes a screenshot of the page.
    #[arg(long)]
    test: bool,
    /// Where the tests write the page's screenshot (default: beside the page, in
    /// <target>/web/screenshot.png; the README's is docs/web-page.png).
    #[arg(long)]
    screenshot: Option<PathBuf>,
}

pub fn run_web(root: &Path, args: &WebArgs) -> Result<()> {
    let site = build(root)?;
    if args.test {
        let screenshot = (args.screenshot.clone()).unwrap_or_else(|| site.join("screenshot.png"));
        test(root, &site, &screenshot)?;
    }
    if let Some(port) = args.serve {
        eprintln!("serving {} on http://127.0.0.1:{port}/", site.display());
        run(Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .current_dir(&site))?;
    }
    Ok(())
}

/// Builds the page into `<target>/web`; its path.
fn build(root: &Path) -> Result<PathBuf> {
    require_wasm_target()?;
    let bindgen = wasm_bindgen_cli(root)?;
    run(cargo(root)
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "-p",
            "nexttoken-web",
        ])
        .args(crate::checked_build(root)?))?;
    let target = target_dir(root)?;
    let wasm = target.join(TARGET).join("release/nexttoken_web.wasm");
    let site = target.join("web");
    if site.exists() {
        std::fs::remove_dir_all(&site).with_context(|| format!("clearing {}", site.display()))?;
    }
    run(Command::new(&bindgen)
        .args(["--target", "web", "--no-typescript", "--out-dir"])
        .arg(site.join("pkg"))
        .arg(&wasm))?;
    for file in ["index.html", "app.js"] {
        copy(&root.join("web").join(file), &site.join(file))?;
    }
    for file in ["model.safetensors", "config.json"] {
        copy(
            &root.join(BUNDLED).join(file),
            &site.join(BUNDLED).join(file),
        )?;
    }
    let module = site.join("pkg/nexttoken_web_bg.wasm");
    let bytes = std::fs::metadata(&module)?.len();
    let gzipped = gzipped_size(&module).unwrap_or(0);
    eprintln!(
        "page in {}: WebAssembly {:.1} MiB ({:.1} MiB gzipped)",
        site.display(),
        bytes as f64 / 1048576.0,
        gzipped as f64 / 1048576.0
    );
    Ok(site)
}

/// The browser tests, with the native build's ids beside the page's.
fn test(root: &Path, site: &Path, screenshot: &Path) -> Result<()> {
    install(root, &["web"])?;
    // The build `cargo xtask compare` makes (every CPU backend): no second build of burn.
    let nexttoken = crate::build_nexttoken(root, &crate::cpu_features(), crate::Build::Checked)?;
    let python = venv_python()?;
    run(Command::new(&python)
        .current_dir(root)
        .arg("tests/web/page_test.py")
        .arg("--site")
        .arg(site)
        .arg("--nexttoken")
        .arg(&nexttoken)
        .arg("--screenshot")
        .arg(screenshot)
        .arg("--results")
        .arg(site.join("results.json")))
    .context("the browser tests failed")
}

/// Adds the wasm32 target with rustup where it is missing, or says why it cannot.
fn require_wasm_target() -> Result<()> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(TARGET).exists() {
        return Ok(());
    }
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|status| status.success());
    if !added {
        bail!(
            "the {TARGET} target is not installed and `rustup target add {TARGET}` failed \
             (no rustup, or rustup's server unreachable): install that target for the toolchain \
             in {} and run this again",
            sysroot.display()
        );
    }
    Ok(())
}

/// wasm-bindgen's CLI at the version of the `wasm-bindgen` crate in Cargo.lock, installed from
/// crates.io into the cache the first time (`cargo install --locked`, a few minutes).
fn wasm_bindgen_cli(root: &Path) -> Result<PathBuf> {
    let version = locked_version(root, "wasm-bindgen")?;
    let install_root = cache_dir()
        .context("no HOME: nowhere to install wasm-bindgen's CLI")?
        .join(format!("tools/wasm-bindgen-{version}"));
    let binary = install_root.join("bin/wasm-bindgen");
    if binary.exists() {
        return Ok(binary);
    }
    let install = |locked: bool| {
        let mut command = cargo(root);
        command.args(["install", "wasm-bindgen-cli", "--version", &version]);
        if locked {
            command.arg("--locked");
        }
        run(command.arg("--root").arg(&install_root))
    };
    if let Err(error) = install(true) {
        // Its lockfile can name a dependency the registry no longer serves (seen: a yanked
        // webpki-roots): the same version of the CLI, with its dependencies resolved afresh.
        eprintln!(
            "wasm-bindgen-cli {version} with its own lockfile failed ({error}); resolving its dependencies afresh"
        );
        install(false).context("installing wasm-bindgen-cli from crates.io")?;
    }
    Ok(binary)
}

/// The version Cargo.lock pins for `package`.
fn locked_version(root: &Path, package: &str) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let name = format!("name = \"{package}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == name
            && let Some(version) = (lines.next()).and_then(|line| line.strip_prefix("version = \""))
        {
            return Ok(version.trim_end_matches('"').to_owned());
        }
    }
    bail!("Cargo.lock has no {package}")
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The file's size after `gzip -9`, as a web server would send it.
fn gzipped_size(path: &Path) -> Option<u64> {
    let output = Command::new("gzip").arg("-9c").arg(path).output().ok()?;
    output
        .status
        .success()
        .then_some(output.stdout.len() as u64)
}
