//! `cargo xtask speed`: nexttoken against Hugging Face transformers (and, with `--llama-cpp`,
//! llama.cpp's `llama-bench` on the same checkpoint as GGUF in the same dtype), same machine,
//! same thread count, runs alternating (A B A B) so that drift in the machine's speed hits every
//! side, each dtype in every round. Each round also measures what the machine can do at that
//! thread count ([`crate::probe`]): a decode step reads every weight once, so the memory's read
//! bandwidth ÷ weight bytes bounds batch-1 decode; a float32 prefill does two flops a weight per
//! prompt token, so the cores' multiply-add rate ÷ flops per token bounds it. This VM's memory
//! moves by a quarter between minutes, so each round's speeds are also set against that round's
//! own bound, decode against the bandwidth read just before and after its own run, and half
//! precision against float32 and llama.cpp's f16 of the same round.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

mod bounds;
mod table;

use bounds::{Probe, Shape, decode_bounds, half_precision, prefill_bounds, weight_bytes};
use table::table;

use crate::probe::{multiply_add_rate, read_bandwidth, read_bandwidth_over};
use crate::{Build, build_nexttoken, cache_dir, cpu_features, install, llama_cpp, venv_python};

#[derive(Args)]
pub struct SpeedArgs {
    /// A Hugging Face GPT-2 checkpoint. Default: a GPT-2-124M-shaped one with random weights
    /// in ~/.cache/nexttoken/gpt2-124m-random, made on first use (speed does not depend on the
    /// values).
    #[arg(long)]
    model: Option<PathBuf>,
    /// nexttoken backends to measure, comma-separated (flex, ndarray, tch; wgpu runs on a GPU
    /// or lavapipe, which is no CPU peer).
    #[arg(long, default_value = "flex,ndarray,tch")]
    backends: String,
    /// Prompt lengths (ppN), comma-separated.
    #[arg(short = 'p', default_value = "512")]
    n_prompt: String,
    /// Generated tokens (tgN), comma-separated.
    #[arg(short = 'n', default_value = "128")]
    n_gen: String,
    /// Rows per batch (aggregate tokens/s of all rows), comma-separated.
    #[arg(long, default_value = "1")]
    batch_size: String,
    /// Timed repetitions per test and round.
    #[arg(short = 'r', default_value_t = 3)]
    repetitions: u32,
    /// Thread counts, comma-separated: each side gets the same.
    #[arg(long, default_value = "1,2")]
    threads: String,
    /// Rounds of (nexttoken, transformers) per thread count.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Also run llama.cpp: `llama-bench` for batch 1, `llama-batched-bench` for larger batches
    /// (every row its own prompt, decoded together), built on first use by
    /// `scripts/install-backends.sh llama-cpp` (about 20 minutes on 2 cores).
    #[arg(long)]
    llama_cpp: bool,
    /// The weights' dtypes, comma-separated (f32, f16, bf16, q8_0, q4_0), each measured on every
    /// side in every round: nexttoken converts at load (`--dtype`), transformers loads in it
    /// (floats only: it has no such blocks on a CPU), llama.cpp gets a GGUF converted to it
    /// (q4_0 by `llama-quantize`, which keeps the head in Q6_K, Q8_0 in nexttoken).
    #[arg(
        long,
        default_value = "f32",
        value_delimiter = ',',
        value_parser = ["f32", "f16", "bf16", "q8_0", "q4_0"]
    )]
    dtype: Vec<String>,
    /// Also write every measurement as JSON lines here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A line of `nexttoken bench --json` or benches/hf_bench.py, plus where it was measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub backend: String,
    pub test: String,
    /// Rows generated together (older records: 1).
    #[serde(default = "one")]
    pub batch_size: usize,
    /// Parameters of the model measured (llama.cpp's records: none).
    #[serde(default)]
    n_params: Option<u64>,
    threads: Option<usize>,
    pub load_ms: f64,
    pub tokens_per_s: f64,
    pub stddev: f64,
    samples_tokens_per_s: Vec<f64>,
    pub peak_rss_bytes: Option<u64>,
    /// The weights' dtype (older records and llama-bench's: set by the run).
    #[serde(default)]
    dtype: String,
    #[serde(default)]
    round: u32,
    #[serde(default)]
    requested_threads: usize,
    /// The memory's read bandwidth sustained over [`AROUND`] just before and just after the
    /// run that measured this, averaged, in GB/s (see [`Around`]).
    #[serde(default)]
    around_gb_per_s: Option<f64>,
}

fn one() -> usize {
    1
}

pub fn run(root: &Path, args: &SpeedArgs) -> Result<()> {
    install(root, &["tch", "hf"])?;
    let python = venv_python()?;
    let model = match &args.model {
        Some(model) => model.clone(),
        None => default_checkpoint(root)?,
    };
    let nexttoken = build_nexttoken(root, &cpu_features(), Build::Release)?;
    // Each dtype's GGUF, converted before any timing.
    let llama = if args.llama_cpp {
        let ggufs = args
            .dtype
            .iter()
            .map(|dtype| Ok((dtype.as_str(), llama_cpp::gguf(root, &model, dtype)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        let batches = batch_sizes_over_one(args)?;
        Some(LlamaCpp {
            bench: llama_cpp::binary(root, "llama-bench")?,
            batched_bench: if batches.is_empty() {
                None
            } else {
                Some((llama_cpp::binary(root, "llama-batched-bench")?, batches))
            },
            ggufs,
        })
    } else {
        None
    };
    let common = |command: &mut Command, threads: &str, dtype: &str| {
        command
            .arg("--model")
            .arg(&model)
            .args(["-p", &args.n_prompt, "-n", &args.n_gen])
            .args(["--batch-size", &args.batch_size, "--dtype", dtype])
            .args(["-r", &args.repetitions.to_string(), "-t", threads]);
    };
    let mut records = Vec::new();
    let mut probes: BTreeMap<usize, Vec<Probe>> = BTreeMap::new();
    for threads in args.threads.split(',') {
        let requested: usize = threads
            .parse()
            .with_context(|| format!("--threads: `{threads}` is not a number"))?;
        let mut around = Around {
            threads: requested,
            last: None,
        };
        for round in 0..args.rounds {
            for dtype in &args.dtype {
                let mut ours = Command::new(&nexttoken);
                ours.args(["bench", "--json", "-b", &args.backends]);
                common(&mut ours, threads, dtype);
                let mut round_records = around.run(|| json_lines(&mut ours))?;
                if !dtype.starts_with('q') {
                    let mut theirs = Command::new(&python);
                    theirs.current_dir(root).arg("benches/hf_bench.py");
                    common(&mut theirs, threads, dtype);
                    round_records.extend(around.run(|| json_lines(&mut theirs))?);
                }
                if let Some(llama) = &llama {
                    let gguf = &llama.ggufs[dtype.as_str()];
                    round_records.extend(
                        around.run(|| llama_bench_records(&llama.bench, gguf, args, threads))?,
                    );
                    if let Some((batched_bench, batches)) = &llama.batched_bench {
                        round_records.extend(around.run(|| {
                            llama_batched_bench_records(batched_bench, batches, gguf, args, threads)
                        })?);
                    }
                }
                for mut record in round_records {
                    record.round = round;
                    record.requested_threads = requested;
                    record.dtype.clone_from(dtype);
                    records.push(record);
                }
            }
            let bandwidth = read_bandwidth(requested);
            probes.entry(requested).or_default().push(Probe {
                read_gb_per_s: bandwidth.best,
                sustained_gb_per_s: bandwidth.sustained,
                gflop_per_s: multiply_add_rate(requested),
            });
        }
    }
    if let Some(path) = &args.json {
        let lines: Vec<String> = records
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        std::fs::write(path, lines.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "\nmodel: {} in {}, {}",
        model.display(),
        args.dtype.join(", "),
        crate::cpu_name()
    );
    print!("{}", table(&records));
    let shape = Shape::of(&model);
    if let Some(n_params) = records.iter().find_map(|r| r.n_params) {
        let bytes = |dtype: &str| weight_bytes(dtype, n_params, shape.as_ref().ok());
        print!("{}", decode_bounds(&records, &probes, bytes));
        print!("{}", half_precision(&records));
    }
    match &shape {
        Ok(shape) => print!("{}", prefill_bounds(&records, &probes, shape)),
        Err(error) => eprintln!("no prefill bound: {error:#}"),
    }
    Ok(())
}

/// llama.cpp's programs and the checkpoint as GGUF in each dtype.
struct LlamaCpp<'a> {
    bench: PathBuf,
    /// llama-batched-bench and the batch sizes above one, when there are some.
    batched_bench: Option<(PathBuf, Vec<usize>)>,
    ggufs: BTreeMap<&'a str, PathBuf>,
}

/// `--batch-size`'s sizes above one, llama-batched-bench's part.
fn batch_sizes_over_one(args: &SpeedArgs) -> Result<Vec<usize>> {
    let mut sizes = Vec::new();
    for size in args.batch_size.split(',') {
        let size: usize = size
            .trim()
            .parse()
            .with_context(|| format!("--batch-size: `{size}` is not a number"))?;
        if size > 1 {
            sizes.push(size);
        }
    }
    Ok(sizes)
}

/// llama-batched-bench's measurements (`--output-format jsonl`) for the batches above one, as
/// records named as ours: `ppN` from a run of N-id prompts, one per row, processed together
/// (`-npp N -ntg 1`); `tgN` from N steps of every row after a one-id prompt (`-npp 1 -ntg N`),
/// as `nexttoken bench` runs them. It has no repetitions: each `-r` is a run of its own.
fn llama_batched_bench_records(
    batched_bench: &Path,
    batches: &[usize],
    gguf: &Path,
    args: &SpeedArgs,
    threads: &str,
) -> Result<Vec<Record>> {
    let largest_batch = batches.iter().copied().max().unwrap_or(1);
    let batches: Vec<String> = batches.iter().map(usize::to_string).collect();
    let batches = batches.join(",");
    #[derive(Deserialize)]
    struct BatchedBench {
        pp: usize,
        tg: usize,
        pl: usize,
        n_threads: usize,
        speed_pp: f64,
        speed_tg: f64,
    }
    // (test, batch) -> tokens/s of each run.
    let mut samples: BTreeMap<(String, usize), (usize, Vec<f64>)> = BTreeMap::new();
    let prompts = args.n_prompt.split(',').map(|n| (true, n.trim(), "1"));
    let generations = args.n_gen.split(',').map(|n| (false, "1", n.trim()));
    for (is_prompt, prompt, generated) in prompts.chain(generations) {
        let prompt_len: usize = prompt.parse().with_context(|| format!("-p: `{prompt}`"))?;
        let generated_len: usize = generated
            .parse()
            .with_context(|| format!("-n: `{generated}`"))?;
        if prompt_len == 0 || generated_len == 0 {
            continue;
        }
        // Room for every row's prompt and generation; each sequence gets its share.
        let context = largest_batch * (prompt_len + generated_len);
        for _ in 0..args.repetitions {
            let mut command = Command::new(batched_bench);
            command
                .arg("-m")
                .arg(gguf)
                .args(["-npp", prompt, "-ntg", generated, "-npl", &batches])
                .args(["-c", &context.to_string(), "-t", threads, "-tb", threads])
                .args(["--output-format", "jsonl"]);
            let output = stdout_of(command.stderr(Stdio::null()))?;
            for line in output.lines().filter(|line| line.starts_with('{')) {
                let run: BatchedBench = serde_json::from_str(line)
                    .with_context(|| format!("not a llama-batched-bench record: {line}"))?;
                let (test, speed) = if is_prompt {
                    (format!("pp{}", run.pp), run.speed_pp)
                } else {
                    (format!("tg{}", run.tg), run.speed_tg)
                };
                samples
                    .entry((test, run.pl))
                    .or_insert((run.n_threads, Vec::new()))
                    .1
                    .push(speed);
            }
        }
    }
    Ok(samples
        .into_iter()
        .map(|((test, batch_size), (threads, samples))| {
            let (mean, stddev) = mean_and_stddev(&samples);
            Record {
                backend: "llama.cpp".into(),
                test,
                batch_size,
                n_params: None,
                threads: Some(threads),
                load_ms: 0.0,
                tokens_per_s: mean,
                stddev,
                samples_tokens_per_s: samples,
                peak_rss_bytes: None,
                dtype: String::new(),
                round: 0,
                requested_threads: 0,
                around_gb_per_s: None,
            }
        })
        .collect())
}

/// The mean and sample standard deviation, as llama-bench reports them.
fn mean_and_stddev(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let variance = if samples.len() > 1 {
        samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, variance.sqrt())
}

/// llama-bench's measurements (`-o jsonl`) as records, its tests named as ours.
fn llama_bench_records(
    llama_bench: &Path,
    gguf: &Path,
    args: &SpeedArgs,
    threads: &str,
) -> Result<Vec<Record>> {
    if !args.batch_size.split(',').any(|b| b.trim() == "1") {
        return Ok(Vec::new());
    }
    let mut command = Command::new(llama_bench);
    command
        .arg("-m")
        .arg(gguf)
        .args(["-p", &args.n_prompt, "-n", &args.n_gen, "-t", threads])
        .args(["-r", &args.repetitions.to_string(), "-o", "jsonl"]);
    // Its log goes to stderr, a line per tensor.
    let stdout = stdout_of(command.stderr(Stdio::null()))?;
    #[derive(Deserialize)]
    struct LlamaBench {
        n_prompt: usize,
        n_gen: usize,
        n_threads: usize,
        avg_ts: f64,
        stddev_ts: f64,
        samples_ts: Vec<f64>,
    }
    stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| {
            let run: LlamaBench = serde_json::from_str(line)
                .with_context(|| format!("not a llama-bench record: {line}"))?;
            Ok(Record {
                backend: "llama.cpp".into(),
                test: if run.n_prompt > 0 {
                    format!("pp{}", run.n_prompt)
                } else {
                    format!("tg{}", run.n_gen)
                },
                batch_size: 1,
                n_params: None,
                threads: Some(run.n_threads),
                load_ms: 0.0,
                tokens_per_s: run.avg_ts,
                stddev: run.stddev_ts,
                samples_tokens_per_s: run.samples_ts,
                peak_rss_bytes: None,
                dtype: String::new(),
                round: 0,
                requested_threads: 0,
                around_gb_per_s: None,
            })
        })
        .collect()
}

/// How long each of [`Around`]'s probes reads: long enough to see more than a moment, short
/// enough to sit close to the run beside it.
const AROUND: Duration = Duration::from_secs(1);

/// The memory's sustained read bandwidth around each run: read just before and just after it
/// (one probe between two runs serves both), so that a decode is set against the memory of its
/// own minute. A round's probe comes after all of the round's runs, minutes after the first,
/// and a shared VM's memory speed moves between minutes more than the sides differ.
struct Around {
    threads: usize,
    /// The probe after the last run.
    last: Option<f64>,
}

impl Around {
    /// `measure`'s records, each with the mean of the probes before and after it.
    fn run(&mut self, measure: impl FnOnce() -> Result<Vec<Record>>) -> Result<Vec<Record>> {
        let before = match self.last {
            Some(last) => last,
            None => self.probe(),
        };
        let mut records = measure()?;
        let after = self.probe();
        self.last = Some(after);
        for record in &mut records {
            record.around_gb_per_s = Some((before + after) / 2.0);
        }
        Ok(records)
    }

    fn probe(&self) -> f64 {
        read_bandwidth_over(self.threads, AROUND).sustained
    }
}

/// ~/.cache/nexttoken/gpt2-124m-random, made with scripts/make_random_checkpoint.py if missing.
pub fn default_checkpoint(root: &Path) -> Result<PathBuf> {
    let dir = cache_dir()
        .context("no HOME: pass --model")?
        .join("gpt2-124m-random");
    if !dir.join("model.safetensors").exists() {
        install(root, &["tch", "hf"])?;
        crate::run(
            Command::new(venv_python()?)
                .current_dir(root)
                .args(["scripts/make_random_checkpoint.py", "--size", "gpt2"])
                .arg(&dir),
        )?;
    }
    Ok(dir)
}

/// Runs `command`, passing its stderr through, and parses each stdout line as a record.
fn json_lines(command: &mut Command) -> Result<Vec<Record>> {
    parse_records(&stdout_of(command.stderr(Stdio::inherit()))?)
}

/// Runs `command` and returns its stdout; an error if it fails.
fn stdout_of(command: &mut Command) -> Result<String> {
    eprintln!("$ {command:?}");
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed with {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The records of `nexttoken bench --json`'s output, one per line.
pub fn parse_records(stdout: &str) -> Result<Vec<Record>> {
    stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).with_context(|| format!("not a benchmark record: {line}"))
        })
        .collect()
}
