//! `cargo xtask compare`: the backends side by side on one checkpoint.
//!
//! Outputs: each backend continues the same prompts greedily (`nexttoken generate --json
//! --save-logits`), and its ids and logits are checked against the reference backend's. Logits
//! are compared up to and including the first step whose ids differ: after it, the inputs differ.
//! Speed: `nexttoken bench --json` (load time, ppN and tgN tokens/s as mean ± std over
//! repetitions after a warm-up, peak RSS). Every run is its own process, so each backend's peak
//! memory is its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

mod agreement;
mod report;

use agreement::{Agreement, agreement};
use report::write_outputs;

use crate::speed::{Record, parse_records};
use crate::{Backends, Build, CpuBackend, build_nexttoken, target_dir, torch_lib_dir, venv};

/// Prompts of different token lengths, so that both batching paths run (one prompt alone, and
/// prompts of equal length as one batch).
const DEFAULT_PROMPTS: [&str; 3] = ["Every effort moves you", "First Citizen:", "To be, or not"];

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    backends: Backends,
    /// The backend whose ids and logits the others are checked against.
    #[arg(long, default_value = "flex")]
    reference: CpuBackend,
    /// A Hugging Face GPT-2 checkpoint (default: the bundled models/nexttoken-tiny-shakespeare).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A prompt to continue; repeat for more (default: three short ones).
    #[arg(long = "prompt", value_name = "TEXT")]
    prompts: Vec<String>,
    /// Ids generated per prompt for the output check.
    #[arg(long, default_value_t = 32)]
    new_tokens: u32,
    /// Prompt length of the speed test, ppN (default: `nexttoken bench`'s, 512 or the context).
    #[arg(short = 'p')]
    n_prompt: Option<usize>,
    /// Ids generated in the speed test, tgN.
    #[arg(short = 'n', default_value_t = 64)]
    n_gen: usize,
    /// Timed repetitions of each speed test, after one warm-up run.
    #[arg(short = 'r', default_value_t = 5)]
    repetitions: u32,
    /// CPU threads for every backend (default: each backend's own choice).
    #[arg(short = 't', long)]
    threads: Option<u32>,
    /// Largest accepted |logit - reference logit|, relative to max(1, |reference logit|).
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f32,
    /// Folder for compare.json, compare.md and compare.svg (default: <cargo target>/compare).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Fail when a backend cannot run here instead of reporting it as skipped (CI uses this).
    #[arg(long)]
    require_all: bool,
    /// Also append the table to this file (e.g. $GITHUB_STEP_SUMMARY).
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,
}

/// Everything `compare` measured: compare.json.
#[derive(Serialize)]
struct Report {
    model: PathBuf,
    reference: &'static str,
    prompts: Vec<String>,
    new_tokens: u32,
    tolerance: f32,
    threads: Option<u32>,
    backends: Vec<BackendReport>,
}

impl Report {
    /// The names of the backends for which `holds` is true.
    fn backends_where(&self, holds: impl Fn(&BackendReport) -> bool) -> Vec<&'static str> {
        self.backends
            .iter()
            .filter(|b| holds(b))
            .map(|b| b.backend)
            .collect()
    }

    /// The backends that could not run.
    fn skipped(&self) -> Vec<&'static str> {
        self.backends_where(|b| b.skipped.is_some())
    }
}

#[derive(Serialize)]
struct BackendReport {
    backend: &'static str,
    /// Why the backend did not run; absent when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<Agreement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speed: Option<Speed>,
}

#[derive(Serialize)]
struct Speed {
    load_ms: f64,
    prompt: Option<Measure>,
    generation: Option<Measure>,
    peak_rss_bytes: Option<u64>,
}

#[derive(Serialize)]
struct Measure {
    test: String,
    tokens_per_s: f64,
    stddev: f64,
}

/// One prompt's generated ids and the logits each was selected from, `[ids, vocab]`.
struct Generated {
    ids: Vec<u32>,
    logits: Vec<f32>,
}

pub fn run(root: &Path, args: &CompareArgs) -> Result<()> {
    let model = args
        .model
        .clone()
        .unwrap_or_else(|| root.join("models/nexttoken-tiny-shakespeare"));
    let prompts: Vec<String> = if args.prompts.is_empty() {
        DEFAULT_PROMPTS.map(String::from).to_vec()
    } else {
        args.prompts.clone()
    };
    // The reference runs first: the others are compared with it as they finish.
    let mut backends = vec![args.reference];
    backends.extend(
        args.backends
            .chosen()
            .iter()
            .filter(|&&b| b != args.reference),
    );

    // Every CPU backend that can be built here is, whichever were asked for: the build is then
    // the test suite's (checked: debug assertions and overflow checks in nexttoken's crates, so
    // its speeds are a little below `cargo xtask speed`'s), with nothing left to compile after
    // it. A backend whose build needs something missing is left out and reported as skipped.
    let blockers: Vec<(CpuBackend, Option<String>)> = CpuBackend::value_variants()
        .iter()
        .map(|&backend| (backend, build_blocker(backend)))
        .collect();
    let features: Vec<&str> = blockers
        .iter()
        .filter(|(_, blocker)| blocker.is_none())
        .filter_map(|(backend, _)| backend.feature())
        .collect();
    let nexttoken = build_nexttoken(root, &features.join(","), Build::Checked)?;
    let out = match &args.out {
        Some(out) => out.clone(),
        None => target_dir(root)?.join("compare"),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let mut reference: Option<Vec<Generated>> = None;
    let mut reports = Vec::new();
    for &backend in &backends {
        let blocker = blockers.iter().find(|(b, _)| *b == backend);
        let measured = match blocker.and_then(|(_, blocker)| blocker.clone()) {
            Some(reason) => Err(reason),
            None => measure(&nexttoken, backend, &model, &prompts, &out, args)?,
        };
        let report = match measured {
            Err(reason) if backend == args.reference => {
                bail!(
                    "the reference backend, {}, cannot run: {reason}",
                    backend.name()
                )
            }
            Err(reason) => {
                eprintln!("{}: skipped: {reason}", backend.name());
                BackendReport {
                    backend: backend.name(),
                    skipped: Some(reason),
                    outputs: None,
                    speed: None,
                }
            }
            Ok((generated, speed)) => {
                let outputs = match &reference {
                    Some(reference) => agreement(reference, &generated, args.tolerance),
                    None => {
                        let itself = agreement(&generated, &generated, args.tolerance);
                        reference = Some(generated);
                        itself
                    }
                };
                BackendReport {
                    backend: backend.name(),
                    skipped: None,
                    outputs: Some(outputs),
                    speed: Some(speed),
                }
            }
        };
        reports.push(report);
    }
    let report = Report {
        model,
        reference: args.reference.name(),
        prompts,
        new_tokens: args.new_tokens,
        tolerance: args.tolerance,
        threads: args.threads,
        backends: reports,
    };
    write_outputs(&report, &out, args.repetitions, args.summary.as_deref())?;

    let disagreeing = report.backends_where(|b| b.outputs.as_ref().is_some_and(|o| !o.agrees));
    if !disagreeing.is_empty() {
        bail!(
            "outputs differ from {}'s beyond the tolerance ({:e}) on: {}",
            report.reference,
            report.tolerance,
            disagreeing.join(", ")
        );
    }
    let skipped = report.skipped();
    if args.require_all && !skipped.is_empty() {
        bail!("--require-all: could not run {}", skipped.join(", "));
    }
    Ok(())
}

/// Why `backend` cannot be built here, if it cannot.
fn build_blocker(backend: CpuBackend) -> Option<String> {
    if backend != CpuBackend::Tch || std::env::var_os("LIBTORCH").is_some() {
        return None;
    }
    let python = venv()?.join("bin/python");
    match torch_lib_dir(&python) {
        Some(_) => None,
        None => Some(format!(
            "libtorch not found (no torch importable by {}): `cargo xtask setup --backends tch` \
             installs PyPI's torch 2.9.0 there",
            python.display()
        )),
    }
}

/// A backend's generations and speed, or why it could not run (the CLI's own message).
type Measured = Result<(Vec<Generated>, Speed), String>;

/// Runs `backend`'s generation and benchmark; an error is a failure of this tool.
fn measure(
    nexttoken: &Path,
    backend: CpuBackend,
    model: &Path,
    prompts: &[String],
    out: &Path,
    args: &CompareArgs,
) -> Result<Measured> {
    let nexttoken_on = |task: &str| {
        let mut command = Command::new(nexttoken);
        command
            .args([task, "--json", "--backend", backend.name(), "--model"])
            .arg(model);
        if let Some(threads) = args.threads {
            command.args(["--threads", &threads.to_string()]);
        }
        command
    };
    let logits = out.join(format!("logits-{}.safetensors", backend.name()));
    let mut generate = nexttoken_on("generate");
    generate
        .args(["--ignore-eos", "-n", &args.new_tokens.to_string()])
        .arg("--save-logits")
        .arg(&logits)
        .arg("--")
        .args(prompts);
    let stdout = match output_of(&mut generate)? {
        Ok(stdout) => stdout,
        Err(reason) => return Ok(Err(reason)),
    };
    let generated = read_generated(&stdout, &logits)?;

    let mut bench = nexttoken_on("bench");
    bench.args(["-n", &args.n_gen.to_string()]);
    bench.args(["-r", &args.repetitions.to_string()]);
    if let Some(n_prompt) = args.n_prompt {
        bench.args(["-p", &n_prompt.to_string()]);
    }
    let stdout = match output_of(&mut bench)? {
        Ok(stdout) => stdout,
        Err(reason) => return Ok(Err(reason)),
    };
    Ok(Ok((generated, speed(&parse_records(&stdout)?))))
}

/// The command's stdout, or, when it fails, its error message.
fn output_of(command: &mut Command) -> Result<Result<String, String>> {
    eprintln!("$ {command:?}");
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if output.status.success() {
        return Ok(Ok(String::from_utf8_lossy(&output.stdout).into_owned()));
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reason = stderr
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("error: "))
        .map_or_else(
            || format!("exited with {}: {}", output.status, stderr.trim()),
            String::from,
        );
    Ok(Err(reason))
}

/// The ids of `generate --json`'s lines and the logits it saved, per prompt.
fn read_generated(stdout: &str, logits: &Path) -> Result<Vec<Generated>> {
    #[derive(Deserialize)]
    struct Line {
        ids: Vec<u32>,
    }
    let bytes = std::fs::read(logits).with_context(|| format!("reading {}", logits.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("reading {}", logits.display()))?;
    stdout
        .lines()
        .enumerate()
        .map(|(prompt, line)| {
            let Line { ids } = serde_json::from_str(line)
                .with_context(|| format!("not a `generate --json` line: {line}"))?;
            let tensor = file.tensor(&format!("logits.{prompt}"))?;
            if tensor.shape().first() != Some(&ids.len()) {
                bail!(
                    "{}: logits.{prompt} has shape {:?} for {} ids",
                    logits.display(),
                    tensor.shape(),
                    ids.len()
                );
            }
            let values = tensor
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok(Generated {
                ids,
                logits: values,
            })
        })
        .collect()
}

/// Load time, the ppN and tgN results, and the peak memory of `nexttoken bench`'s records.
fn speed(records: &[Record]) -> Speed {
    let measure = |kind: &str| {
        records
            .iter()
            .find(|record| record.test.starts_with(kind))
            .map(|record| Measure {
                test: record.test.clone(),
                tokens_per_s: record.tokens_per_s,
                stddev: record.stddev,
            })
    };
    Speed {
        load_ms: records.first().map_or(0.0, |record| record.load_ms),
        prompt: measure("pp"),
        generation: measure("tg"),
        peak_rss_bytes: records.iter().filter_map(|r| r.peak_rss_bytes).max(),
    }
}
