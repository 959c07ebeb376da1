//! `cargo xtask speed`: nexttoken against Hugging Face transformers (and, with `--llama-cpp`,
//! llama.cpp's `llama-bench` on the same checkpoint as GGUF f32), same machine, same thread
//! count, runs alternating (A B A B) so that drift in the machine's speed hits every side. Each
//! round also measures the memory's read bandwidth at that thread count: a decode step reads
//! every weight once, so bandwidth ÷ weight bytes bounds batch-1 tokens/s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

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
    let mut bandwidths: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
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
            bandwidths
                .entry(requested)
                .or_default()
                .push(read_bandwidth(requested));
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
            bounds(&records, &bandwidths, n_params * bytes_per_weight)
        );
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

/// The memory's read bandwidth in GB/s with `threads` threads, STREAM-style: the best of 5
/// passes summing a 1 GiB buffer (far past any cache), each thread its own contiguous part,
/// with the widest vector loads the CPU has (a baseline SSE2 loop read less than llama.cpp's
/// decode moved on one core), the better of reading each part as one stream or two side by
/// side (one stream a thread read 17.6 GB/s on a core of the AVX2 EPYC whose decode, reading
/// two, moved 20.3; two read 19.8-22.7 there).
fn read_bandwidth(threads: usize) -> f64 {
    let values = vec![1.0f32; 1 << 28];
    passes(&values, threads, sum_widest::<1>).max(passes(&values, threads, sum_widest::<2>))
}

/// The best of 5 passes of `sum` over `values` split between `threads`, in GB/s.
fn passes(values: &[f32], threads: usize, sum: fn(&[f32]) -> f32) -> f64 {
    let part = values.len().div_ceil(threads.max(1));
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = std::time::Instant::now();
        let total: f32 = std::thread::scope(|scope| {
            let handles: Vec<_> = values
                .chunks(part)
                .map(|chunk| scope.spawn(move || sum(chunk)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        best = best.min(start.elapsed().as_secs_f64());
        std::hint::black_box(total);
    }
    size_of_val(values) as f64 / best / 1e9
}

fn sum_widest<const STREAMS: usize>(values: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<const STREAMS: usize>(values: &[f32]) -> f32 {
            sum::<STREAMS>(values)
        }
        #[target_feature(enable = "avx2")]
        fn avx2<const STREAMS: usize>(values: &[f32]) -> f32 {
            sum::<STREAMS>(values)
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected on this CPU.
            return unsafe { avx512::<STREAMS>(values) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { avx2::<STREAMS>(values) };
        }
    }
    sum::<STREAMS>(values)
}

/// A sum of `values` read as `STREAMS` equal parts side by side, in 64 independent lanes in all:
/// one running sum would be bound by the add's latency, not by the memory. The last few values
/// (under 64) are left out.
#[inline(always)]
fn sum<const STREAMS: usize>(values: &[f32]) -> f32 {
    let lanes = 64 / STREAMS;
    let part = values.len() / STREAMS / lanes * lanes;
    let streams: [&[f32]; STREAMS] = std::array::from_fn(|s| &values[s * part..][..part]);
    let mut sums = [0.0f32; 64];
    for start in (0..part).step_by(lanes) {
        for (sums, stream) in sums.chunks_exact_mut(lanes).zip(streams) {
            let block = &stream[start..start + lanes];
            for (sum, value) in sums.iter_mut().zip(block) {
                *sum += value;
            }
        }
    }
    sums.iter().sum()
}

/// For each thread count: the read bandwidth, the batch-1 decode bound it gives for these
/// weights, and each side's batch-1 decode as a share of it.
fn bounds(records: &[Record], bandwidths: &BTreeMap<usize, Vec<f64>>, weight_bytes: u64) -> String {
    let mut out = format!(
        "\nweights: {:.0} MB read per generated token (batch 1)\n",
        weight_bytes as f64 / 1e6
    );
    for (threads, measured) in bandwidths {
        let bandwidth = measured.iter().sum::<f64>() / measured.len() as f64;
        let bound = bandwidth * 1e9 / weight_bytes as f64;
        let rounds: Vec<String> = measured.iter().map(|b| format!("{b:.1}")).collect();
        out += &format!(
            "{threads} thread(s): read bandwidth {bandwidth:.1} GB/s (rounds: {}), bound {bound:.1} t/s;",
            rounds.join(", ")
        );
        let mut sides: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for record in records.iter().filter(|r| {
            r.requested_threads == *threads && r.batch_size == 1 && r.test.starts_with("tg")
        }) {
            sides
                .entry(record.backend.as_str())
                .or_default()
                .push(record.tokens_per_s);
        }
        for (backend, speeds) in sides {
            let mean = speeds.iter().sum::<f64>() / speeds.len() as f64;
            out += &format!(" {backend} {:.0}%", 100.0 * mean / bound);
        }
        out += "\n";
    }
    out
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
    fn the_bandwidth_probe_reads_every_value_in_every_stream_count() {
        // Small integers: their float32 sums are exact in any order.
        let values: Vec<f32> = (0..64 * 10).map(|v| (v % 7) as f32).collect();
        let expected: f32 = values.iter().sum();
        assert_eq!(sum_widest::<1>(&values), expected);
        assert_eq!(sum_widest::<2>(&values), expected);
    }
}
