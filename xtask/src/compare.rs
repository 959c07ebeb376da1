//! `cargo xtask compare`: the backends side by side on one checkpoint.
//!
//! Outputs: each backend continues the same prompts greedily (`nexttoken generate --json
//! --save-logits`), and its ids and logits are checked against the reference backend's. Logits
//! are compared up to and including the first step whose ids differ: after it, the inputs differ.
//! Speed: `nexttoken bench --json` (load time, ppN and tgN tokens/s as mean ± std over
//! repetitions after a warm-up, peak RSS). Every run is its own process, so each backend's peak
//! memory is its own.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::chart::{self, Bar, Panel};
use crate::speed::{Record, parse_records};
use crate::{Backends, CpuBackend, append_to, build_nexttoken, target_dir, torch_lib_dir, venv};

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

/// How one backend's generations compare with the reference's.
#[derive(Debug, Serialize, PartialEq)]
struct Agreement {
    ids_identical: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_difference: Option<Difference>,
    logits_max_abs: f32,
    logits_mean_abs: f32,
    logits_max_relative: f32,
    /// Logits within the tolerance wherever they are comparable. An id can then differ only
    /// where the reference's top two were closer than the logits' noise (a near-tie).
    agrees: bool,
}

/// Where the ids first differ, and by how much the reference preferred its own pick there.
#[derive(Debug, Serialize, PartialEq)]
struct Difference {
    prompt: usize,
    step: usize,
    reference_margin: f32,
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
    // the test suite's and speed's, with nothing left to compile after them. A backend whose
    // build needs something missing is left out and reported as skipped.
    let blockers: Vec<(CpuBackend, Option<String>)> = CpuBackend::value_variants()
        .iter()
        .map(|&backend| (backend, build_blocker(backend)))
        .collect();
    let features: Vec<&str> = blockers
        .iter()
        .filter(|(_, blocker)| blocker.is_none())
        .filter_map(|(backend, _)| backend.feature())
        .collect();
    let nexttoken = build_nexttoken(root, &features.join(","))?;
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

/// `ours` against `reference`, prompt by prompt, up to and including the first step whose ids
/// differ (the logits of later steps come from different inputs).
fn agreement(reference: &[Generated], ours: &[Generated], tolerance: f32) -> Agreement {
    let mut same_shape = reference.len() == ours.len();
    let (mut max_abs, mut max_relative, mut sum, mut count) = (0f32, 0f32, 0f64, 0usize);
    let mut first_difference = None;
    for (prompt, (theirs, ours)) in reference.iter().zip(ours).enumerate() {
        if theirs.ids.len() != ours.ids.len() || theirs.logits.len() != ours.logits.len() {
            same_shape = false;
            continue;
        }
        let vocab = theirs.logits.len() / theirs.ids.len().max(1);
        let differs_at = theirs.ids.iter().zip(&ours.ids).position(|(a, b)| a != b);
        let compared = differs_at.map_or(theirs.ids.len(), |step| step + 1) * vocab;
        for (&want, &got) in theirs.logits[..compared]
            .iter()
            .zip(&ours.logits[..compared])
        {
            // f32::max skips NaN: a NaN logit must count as the worst difference instead.
            let diff = match (got - want).abs() {
                diff if diff.is_nan() => f32::INFINITY,
                diff => diff,
            };
            max_abs = max_abs.max(diff);
            max_relative = max_relative.max(diff / want.abs().max(1.0));
            sum += f64::from(diff);
            count += 1;
        }
        if let (Some(step), None) = (differs_at, &first_difference) {
            let row = &theirs.logits[step * vocab..(step + 1) * vocab];
            let logit = |id: u32| row.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY);
            first_difference = Some(Difference {
                prompt,
                step,
                reference_margin: logit(theirs.ids[step]) - logit(ours.ids[step]),
            });
        }
    }
    Agreement {
        ids_identical: same_shape && first_difference.is_none(),
        first_difference,
        logits_max_abs: max_abs,
        logits_mean_abs: if count == 0 {
            0.0
        } else {
            (sum / count as f64) as f32
        },
        logits_max_relative: max_relative,
        agrees: same_shape && max_relative <= tolerance,
    }
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

/// Prints the table and writes compare.json, compare.md and compare.svg into `out`, and the
/// table to the end of `summary`.
fn write_outputs(
    report: &Report,
    out: &Path,
    repetitions: u32,
    summary: Option<&Path>,
) -> Result<()> {
    let table = table(report);
    println!("{table}");
    if let Some(path) = summary {
        append_to(path, &format!("### cargo xtask compare\n\n{table}\n"))?;
    }
    let write = |name: &str, contents: String| {
        let path = out.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    };
    write("compare.md", table)?;
    write("compare.json", serde_json::to_string_pretty(report)? + "\n")?;

    let panel = |pick: fn(&Speed) -> &Option<Measure>| {
        let mut title = String::new();
        let bars = report
            .backends
            .iter()
            .filter_map(|b| {
                let measure = pick(b.speed.as_ref()?).as_ref()?;
                title.clone_from(&measure.test);
                let color = CpuBackend::value_variants()
                    .iter()
                    .position(|backend| backend.name() == b.backend)
                    .unwrap_or_default();
                Some(Bar {
                    label: b.backend.to_string(),
                    color,
                    mean: measure.tokens_per_s,
                    stddev: measure.stddev,
                })
            })
            .collect();
        Panel { title, bars }
    };
    let panels = [panel(|s| &s.prompt), panel(|s| &s.generation)];
    let model = report.model.file_name().unwrap_or(report.model.as_os_str());
    let skipped = report.skipped();
    let mut caption = format!(
        "{}: tokens/s per backend (mean ± std of {repetitions} runs)",
        model.to_string_lossy()
    );
    if !skipped.is_empty() {
        let _ = write!(caption, "; skipped: {}", skipped.join(", "));
    }
    chart::write_svg(&out.join("compare.svg"), &caption, &panels)?;
    eprintln!(
        "wrote compare.json, compare.md and compare.svg to {}",
        out.display()
    );
    Ok(())
}

/// The report as a markdown table, with a line saying what was compared.
fn table(report: &Report) -> String {
    let test_name = |pick: fn(&Speed) -> &Option<Measure>, default: &str| {
        report
            .backends
            .iter()
            .find_map(|b| Some(pick(b.speed.as_ref()?).as_ref()?.test.clone()))
            .unwrap_or_else(|| default.to_string())
    };
    let mut out = format!(
        "model: {}; {} prompts × {} ids, greedy; logits tolerance {:e} (relative); threads: {}\n\n",
        report.model.display(),
        report.prompts.len(),
        report.new_tokens,
        report.tolerance,
        report
            .threads
            .map_or("each backend's default".to_string(), |t| t.to_string()),
    );
    let _ = writeln!(
        out,
        "| backend | ids vs {} | logits max abs | logits mean abs | agrees | load | {} t/s | {} t/s | peak RSS |",
        report.reference,
        test_name(|s| &s.prompt, "pp"),
        test_name(|s| &s.generation, "tg"),
    );
    out += "| ------- | ---------- | -------------: | --------------: | ------ | ---: | ------: | ------: | -------: |\n";
    for backend in &report.backends {
        let (Some(outputs), Some(speed)) = (&backend.outputs, &backend.speed) else {
            let reason = backend.skipped.as_deref().unwrap_or("did not run");
            let _ = writeln!(
                out,
                "| {} | skipped: {} | | | | | | | |",
                backend.backend,
                reason.replace('|', "\\|")
            );
            continue;
        };
        let ids = match &outputs.first_difference {
            _ if backend.backend == report.reference => "(reference)".to_string(),
            None if outputs.ids_identical => "identical".to_string(),
            None => "different lengths".to_string(),
            Some(d) => format!(
                "differ at prompt {}, step {} (margin {:.1e})",
                d.prompt, d.step, d.reference_margin
            ),
        };
        let measure = |m: &Option<Measure>| {
            m.as_ref().map_or("-".to_string(), |m| {
                format!("{:.1} ± {:.1}", m.tokens_per_s, m.stddev)
            })
        };
        let difference = |value: f32| match value {
            0.0 => "0".to_string(),
            value => format!("{value:.1e}"),
        };
        let _ = writeln!(
            out,
            "| {} | {ids} | {} | {} | {} | {:.0} ms | {} | {} | {} |",
            backend.backend,
            difference(outputs.logits_max_abs),
            difference(outputs.logits_mean_abs),
            if outputs.agrees { "yes" } else { "**no**" },
            speed.load_ms,
            measure(&speed.prompt),
            measure(&speed.generation),
            speed
                .peak_rss_bytes
                .map_or("-".to_string(), |bytes| format!("{} MiB", bytes >> 20)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One prompt over a 4-id vocabulary: `rows` of logits, the ids their argmax.
    fn generated(rows: &[[f32; 4]]) -> Vec<Generated> {
        let ids = rows
            .iter()
            .map(|row| {
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
                best.map_or(0, |(id, _)| id as u32)
            })
            .collect();
        vec![Generated {
            ids,
            logits: rows.concat(),
        }]
    }

    const REFERENCE: [[f32; 4]; 3] = [
        [1.0, 5.0, 2.0, 0.0],
        [3.0, 1.0, 2.0, 9.0],
        [0.5, 0.4, 8.0, 1.0],
    ];

    #[test]
    fn identical_outputs_agree() {
        let reference = generated(&REFERENCE);
        let result = agreement(&reference, &generated(&REFERENCE), 1e-3);
        assert!(result.ids_identical && result.agrees);
        assert_eq!(result.logits_max_abs, 0.0);
    }

    #[test]
    fn small_logit_noise_agrees_and_is_measured() {
        let mut noisy = REFERENCE;
        noisy[1][3] += 4e-3; // 9.0: relative 4.4e-4
        let result = agreement(&generated(&REFERENCE), &generated(&noisy), 1e-3);
        assert!(result.ids_identical && result.agrees, "{result:?}");
        assert!((result.logits_max_abs - 4e-3).abs() < 1e-6);
        assert!((result.logits_mean_abs - 4e-3 / 12.0).abs() < 1e-6);
    }

    #[test]
    fn logits_beyond_the_tolerance_disagree_even_with_the_same_ids() {
        let mut off = REFERENCE;
        off[2][0] += 0.1;
        let result = agreement(&generated(&REFERENCE), &generated(&off), 1e-3);
        assert!(result.ids_identical);
        assert!(!result.agrees);
    }

    #[test]
    fn a_flip_at_a_near_tie_agrees_and_names_the_step() {
        let mut tie = REFERENCE;
        tie[1] = [3.0, 1.0, 8.99995, 9.0];
        let mut flipped = tie;
        flipped[1][2] = 9.00005;
        // After the flip the inputs differ: later logits are not compared.
        flipped[2] = [7.0, 0.0, 0.0, 0.0];
        let result = agreement(&generated(&tie), &generated(&flipped), 1e-3);
        assert!(!result.ids_identical);
        assert!(result.agrees, "{result:?}");
        let difference = result.first_difference.unwrap();
        assert_eq!((difference.prompt, difference.step), (0, 1));
        assert!((difference.reference_margin - 5e-5).abs() < 1e-6);
    }

    #[test]
    fn a_flip_with_logits_far_off_disagrees() {
        let mut wrong = REFERENCE;
        wrong[0][3] = 6.0;
        let result = agreement(&generated(&REFERENCE), &generated(&wrong), 1e-3);
        assert!(!result.ids_identical && !result.agrees);
        assert_eq!(result.first_difference.unwrap().reference_margin, 5.0);
    }

    #[test]
    fn nan_logits_disagree() {
        let mut nan = REFERENCE;
        nan[2][1] = f32::NAN;
        let result = agreement(&generated(&REFERENCE), &generated(&nan), 1e-3);
        assert!(!result.agrees);
        assert_eq!(result.logits_max_abs, f32::INFINITY);
    }

    #[test]
    fn fewer_ids_disagree() {
        let result = agreement(&generated(&REFERENCE), &generated(&REFERENCE[..2]), 1e-3);
        assert!(!result.ids_identical && !result.agrees);
    }
}
