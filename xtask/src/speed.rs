//! `cargo xtask speed`: nexttoken against Hugging Face transformers (and, with `--llama-cpp`,
//! llama.cpp's `llama-bench` on the same checkpoint as GGUF f32), same machine, same thread
//! count, runs alternating (A B A B) so that drift in the machine's speed hits every side. Each
//! round also measures what the machine can do at that thread count ([`crate::probe`]): a
//! decode step reads every weight once, so the memory's read bandwidth ÷ weight bytes bounds
//! batch-1 decode; a prefill does two flops a weight per prompt token, so the cores'
//! multiply-add rate ÷ flops per token bounds it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::probe::{multiply_add_rate, read_bandwidth};
use crate::{build_nexttoken, cache_dir, cpu_features, install, llama_cpp, venv_python};

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
    /// Also run llama.cpp's llama-bench (batch 1 only), built on first use by
    /// `scripts/install-backends.sh llama-cpp` (about 20 minutes on 2 cores).
    #[arg(long)]
    llama_cpp: bool,
    /// The weights' dtype for every side: nexttoken converts at load (`--dtype`), transformers
    /// loads in it, llama.cpp gets a GGUF converted to it.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
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
    #[serde(default)]
    round: u32,
    #[serde(default)]
    requested_threads: usize,
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
    let nexttoken = build_nexttoken(root, &cpu_features())?;
    let llama = if args.llama_cpp {
        Some((
            llama_cpp::binary(root, "llama-bench")?,
            llama_cpp::gguf(root, &model, &args.dtype)?,
        ))
    } else {
        None
    };
    let common = |command: &mut Command, threads: &str| {
        command
            .arg("--model")
            .arg(&model)
            .args(["-p", &args.n_prompt, "-n", &args.n_gen])
            .args(["--batch-size", &args.batch_size, "--dtype", &args.dtype])
            .args(["-r", &args.repetitions.to_string(), "-t", threads]);
    };
    let mut records = Vec::new();
    let mut probes: BTreeMap<usize, Vec<Probe>> = BTreeMap::new();
    for threads in args.threads.split(',') {
        let requested: usize = threads
            .parse()
            .with_context(|| format!("--threads: `{threads}` is not a number"))?;
        for round in 0..args.rounds {
            let mut ours = Command::new(&nexttoken);
            ours.args(["bench", "--json", "-b", &args.backends]);
            common(&mut ours, threads);
            let mut theirs = Command::new(&python);
            theirs.current_dir(root).arg("benches/hf_bench.py");
            common(&mut theirs, threads);
            let mut round_records = Vec::new();
            for command in [&mut ours, &mut theirs] {
                round_records.extend(json_lines(command)?);
            }
            if let Some((llama_bench, gguf)) = &llama {
                round_records.extend(llama_bench_records(llama_bench, gguf, args, threads)?);
            }
            for mut record in round_records {
                record.round = round;
                record.requested_threads = requested;
                records.push(record);
            }
            probes.entry(requested).or_default().push(Probe {
                read_gb_per_s: read_bandwidth(requested),
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
        args.dtype,
        crate::cpu_name()
    );
    print!("{}", table(&records));
    let bytes_per_weight = if args.dtype == "f32" { 4 } else { 2 };
    if let Some(n_params) = records.iter().find_map(|r| r.n_params) {
        print!(
            "{}",
            decode_bounds(&records, &probes, n_params * bytes_per_weight)
        );
    }
    match Shape::of(&model) {
        Ok(shape) => print!("{}", prefill_bounds(&records, &probes, &shape)),
        Err(error) => eprintln!("no prefill bound: {error:#}"),
    }
    Ok(())
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
                round: 0,
                requested_threads: 0,
            })
        })
        .collect()
}

/// What [`crate::probe`] measured in one round.
struct Probe {
    read_gb_per_s: f64,
    gflop_per_s: f64,
}

/// For each thread count: the read bandwidth, the batch-1 decode bound it gives for these
/// weights, and each side's batch-1 decode as a share of it.
fn decode_bounds(
    records: &[Record],
    probes: &BTreeMap<usize, Vec<Probe>>,
    weight_bytes: u64,
) -> String {
    let mut out = format!(
        "\nweights: {:.0} MB read per generated token (batch 1)\n",
        weight_bytes as f64 / 1e6
    );
    for (&threads, probes) in probes {
        let measured: Vec<f64> = probes.iter().map(|p| p.read_gb_per_s).collect();
        let bandwidth = mean(&measured);
        let bound = bandwidth * 1e9 / weight_bytes as f64;
        out += &format!(
            "{threads} thread(s): read bandwidth {bandwidth:.1} GB/s (rounds: {}), bound {bound:.1} t/s;{}\n",
            one_decimal(&measured),
            shares(records, threads, |test| test.starts_with("tg"), bound)
        );
    }
    out
}

/// For each thread count and prompt length: the multiply-add rate, the prefill bound it gives
/// for this model, and each side's batch-1 prefill as a share of it.
fn prefill_bounds(
    records: &[Record],
    probes: &BTreeMap<usize, Vec<Probe>>,
    shape: &Shape,
) -> String {
    let mut prompts: Vec<usize> = records
        .iter()
        .filter_map(|r| r.test.strip_prefix("pp")?.parse().ok())
        .collect();
    prompts.sort_unstable();
    prompts.dedup();
    let mut out = String::new();
    for prompt in prompts {
        let flops = shape.prefill_flops_per_token(prompt);
        out += &format!(
            "\nprefill: {:.1} MFLOP per token of a {prompt}-token prompt (products, attention, the \
             head at the last position)\n",
            flops / 1e6
        );
        for (&threads, probes) in probes {
            let measured: Vec<f64> = probes.iter().map(|p| p.gflop_per_s).collect();
            let rate = mean(&measured);
            let bound = rate * 1e9 / flops;
            let test = format!("pp{prompt}");
            out += &format!(
                "{threads} thread(s): float32 multiply-adds {rate:.1} GFLOP/s (rounds: {}), bound {bound:.0} t/s;{}\n",
                one_decimal(&measured),
                shares(records, threads, |t| t == test, bound)
            );
        }
    }
    out
}

/// Each side's mean batch-1 tokens/s over the tests `test` picks at `threads` threads, as a
/// share of `bound`: " flex 86% llama.cpp 88% ...".
fn shares(records: &[Record], threads: usize, test: impl Fn(&str) -> bool, bound: f64) -> String {
    let mut sides: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for record in records
        .iter()
        .filter(|r| r.requested_threads == threads && r.batch_size == 1 && test(&r.test))
    {
        sides
            .entry(record.backend.as_str())
            .or_default()
            .push(record.tokens_per_s);
    }
    sides
        .iter()
        .map(|(backend, speeds)| format!(" {backend} {:.0}%", 100.0 * mean(speeds) / bound))
        .collect()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn one_decimal(values: &[f64]) -> String {
    let values: Vec<String> = values.iter().map(|v| format!("{v:.1}")).collect();
    values.join(", ")
}

/// The sizes of a GPT-2 checkpoint that its prefill's flops depend on (its `config.json`).
#[derive(Debug, Deserialize)]
struct Shape {
    n_layer: usize,
    n_embd: usize,
    vocab_size: usize,
}

impl Shape {
    fn of(checkpoint: &Path) -> Result<Self> {
        let path = checkpoint.join("config.json");
        let json = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&json).with_context(|| format!("parsing {}", path.display()))
    }

    /// Flops per token of a `prompt`-token prefill, two a multiply-add: each layer's four
    /// products (12 c² weights), each position's attention over itself and the positions
    /// before it (scores and weighted values, 2 c a key: 2 c (prompt + 1) a position on
    /// average), and the output head at the last position only, as every side computes it.
    fn prefill_flops_per_token(&self, prompt: usize) -> f64 {
        let c = self.n_embd as f64;
        let per_layer = 2.0 * 12.0 * c * c + 2.0 * c * (prompt as f64 + 1.0);
        let head = 2.0 * c * self.vocab_size as f64 / prompt.max(1) as f64;
        self.n_layer as f64 * per_layer + head
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

/// One row per (threads, test, backend): the mean of the rounds' means, each round's mean ± std,
/// the ratio to transformers' mean, and the range of the per-round ratios.
fn table(records: &[Record]) -> String {
    // Sorted by threads, then pp before tg, then size, then batch size, then backend.
    type Key<'a> = (usize, bool, usize, usize, &'a str, &'a str);
    let mut groups: BTreeMap<Key, Vec<&Record>> = BTreeMap::new();
    for record in records {
        let size = record.test[2..].parse().unwrap_or(0);
        let key = (
            record.requested_threads,
            record.test.starts_with("tg"),
            size,
            record.batch_size,
            record.test.as_str(),
            record.backend.as_str(),
        );
        groups.entry(key).or_default().push(record);
    }
    let mean =
        |group: &[&Record]| group.iter().map(|r| r.tokens_per_s).sum::<f64>() / group.len() as f64;
    let mut out = String::from(
        "| threads | test | batch | backend | t/s | vs transformers | per-round ratios | rounds (mean ± std) | peak RSS |\n\
         | ------: | ---- | ----: | ------- | --: | --------------: | ---------------: | ------------------- | -------: |\n",
    );
    for (&(threads, is_tg, size, batch, test, backend), group) in &groups {
        let reference = groups.get(&(threads, is_tg, size, batch, test, "transformers"));
        let (ratio, range) = match reference {
            Some(reference) if backend != "transformers" => {
                let per_round: Vec<f64> = group
                    .iter()
                    .filter_map(|ours| {
                        let theirs = reference.iter().find(|r| r.round == ours.round)?;
                        Some(ours.tokens_per_s / theirs.tokens_per_s)
                    })
                    .collect();
                let low = per_round.iter().copied().fold(f64::INFINITY, f64::min);
                let high = per_round.iter().copied().fold(0.0, f64::max);
                (
                    format!("{:.2}x", mean(group) / mean(reference)),
                    format!("{low:.2}-{high:.2}x"),
                )
            }
            _ => ("-".into(), "-".into()),
        };
        let rounds: Vec<String> = group
            .iter()
            .map(|r| format!("{:.1} ± {:.1}", r.tokens_per_s, r.stddev))
            .collect();
        let rss = group
            .iter()
            .filter_map(|r| r.peak_rss_bytes)
            .max()
            .map_or("-".into(), |bytes| format!("{} MiB", bytes >> 20));
        out += &format!(
            "| {threads} | {test} | {batch} | {backend} | {:.2} | {ratio} | {range} | {} | {rss} |\n",
            mean(group),
            rounds.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_prefills_512_tokens_at_179_mflop_a_token() {
        let shape = Shape {
            n_layer: 12,
            n_embd: 768,
            vocab_size: 50257,
        };
        // Products 24 * 768^2 = 14.16M and attention 2 * 768 * 513 = 0.79M a layer, 12 layers;
        // the head 2 * 768 * 50257 / 512 = 0.15M.
        let flops = shape.prefill_flops_per_token(512);
        assert!((flops - 179.48e6).abs() < 0.01e6, "{flops}");
    }
}
