//! `nexttoken bench`: llama-bench's two tests for a GPT-2 checkpoint on each backend.
//!
//! - `ppN`: process a prompt of N ids and select the next one (the prefill of a generation),
//!   reported as N / time;
//! - `tgN`: generate N ids one at a time after a one-id prompt, reported as N / time.
//!
//! With `--batch-size B` each test runs B such rows in one batch and reports B × N / time: the
//! aggregate speed a server sees.
//!
//! Both run [`generate`] as `nexttoken generate` does. Each test runs once untimed (kernel
//! compilation, autotuning, allocator warm-up), then `-r` times with fresh random ids, since
//! some backends reuse results for identical inputs.

use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::{Result, bail};
use nexttoken_backend::dtype_name;
use nexttoken_generate::{GenerationConfig, Session, TextGenerator, generate};
use nexttoken_model::Quantization;
use serde::Serialize;

use crate::args::BenchArgs;
use crate::{apply, memory, model};

/// llama-bench's default prompt length.
const DEFAULT_PROMPT: usize = 512;
/// llama-bench's default generation length.
const DEFAULT_GEN: usize = 128;

#[derive(Debug, Clone, Copy)]
enum Test {
    Prompt(usize),
    Generation(usize),
}

impl Test {
    fn name(self) -> String {
        match self {
            Test::Prompt(n) => format!("pp{n}"),
            Test::Generation(n) => format!("tg{n}"),
        }
    }

    /// (prompt ids, generated ids) of one run.
    fn shape(self) -> (usize, usize) {
        match self {
            Test::Prompt(n) => (n, 1),
            Test::Generation(n) => (1, n),
        }
    }

    /// One timed run of `batch` rows: the test's N tokens per second, all rows together.
    fn run(
        self,
        generator: &TextGenerator,
        kv_cache: bool,
        batch: usize,
        seed: u64,
    ) -> Result<f64> {
        let (prompt_len, new_tokens) = self.shape();
        let vocab = generator.model().vocab_size();
        let prompts: Vec<Vec<u32>> = (0..batch as u64)
            .map(|row| random_ids(seed.wrapping_mul(1 << 16) | row, prompt_len, vocab))
            .collect();
        let config = GenerationConfig::new(new_tokens).without_eos();
        let mut session = Session::new(generator.model());
        if !kv_cache {
            session = session.without_kv_cache();
        }
        let start = Instant::now();
        generate(session, &prompts, &config, |_| ControlFlow::Continue(()))?;
        let (Test::Prompt(n) | Test::Generation(n)) = self;
        Ok((batch * n) as f64 / start.elapsed().as_secs_f64())
    }
}

/// One line of `--json`: llama-bench's fields where they apply.
#[derive(Debug, Serialize)]
struct Record<'a> {
    model: &'a str,
    n_params: usize,
    backend: &'static str,
    /// The float type the model computed in (f32, f16, bf16).
    dtype: &'static str,
    /// CPU threads of the backend's kernels; null on GPU backends.
    threads: Option<usize>,
    kv_cache: bool,
    test: String,
    n_prompt: usize,
    n_gen: usize,
    /// Rows generated together; tokens_per_s counts all of them.
    batch_size: usize,
    repetitions: usize,
    load_ms: f64,
    /// Mean over the repetitions.
    tokens_per_s: f64,
    /// Sample standard deviation over the repetitions.
    stddev: f64,
    samples_tokens_per_s: Vec<f64>,
    /// The process's peak resident memory during the test (model included); null where the OS
    /// does not say.
    peak_rss_bytes: Option<u64>,
}

/// Checks every argument and backend, then measures.
pub fn run(args: BenchArgs) -> Result<()> {
    apply(&args.run)?;
    let mut opened = model::open(&args.model, args.json)?;
    let config = opened.weights.config().clone();
    let context = config.n_positions;
    let n_prompt = args
        .n_prompt
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_PROMPT.min(context)]);
    let n_gen = args
        .n_gen
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_GEN.min(context)]);
    if let Some(&n) = n_prompt.iter().find(|&&n| n > context) {
        bail!(
            "-p {n}: a prompt of {n} tokens exceeds the model's context length of {context}; \
             use -p {context} or less"
        );
    }
    let tests: Vec<Test> = n_prompt
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| Test::Prompt(n))
        .chain(
            n_gen
                .iter()
                .filter(|&&n| n > 0)
                .map(|&n| Test::Generation(n)),
        )
        .collect();
    // tgN feeds a one-token prompt, then N - 1 more: past the context every step would
    // recompute a sliding window, a different test.
    if let Some(&n) = n_gen.iter().find(|&&n| n > context) {
        bail!(
            "-n {n}: generating {n} tokens runs past the model's context length of {context}; \
             use -n {context} or less"
        );
    }
    if tests.is_empty() {
        bail!("nothing to measure: -p and -n are all 0");
    }
    for &backend in &args.backend {
        backend.probe()?;
        let (tensor, bytes) = config.largest_tensor();
        backend.check_fits(tensor, bytes)?;
    }
    let model_name = opened.name.clone();
    let kv_cache = !args.run.no_kv_cache;
    let repetitions = args.repetitions as usize;

    let model_width = model_name.len().max(5);
    if !args.json {
        println!(
            "| {:<model_width$} | {:>8} | {:<7} | {:<5} | {:>7} | {:<8} | {:>6} | {:>5} | {:>18} | {:>9} |",
            "model",
            "params",
            "backend",
            "dtype",
            "threads",
            "kv cache",
            "test",
            "batch",
            "t/s",
            "peak RSS"
        );
        // Markdown's alignment row: a colon on the right of right-aligned columns.
        let right = |width: usize| format!("{}:", "-".repeat(width - 1));
        let left = |width: usize| "-".repeat(width);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            left(model_width),
            right(8),
            left(7),
            left(5),
            right(7),
            left(8),
            right(6),
            right(5),
            right(18),
            right(9)
        );
    }
    for &backend in &args.backend {
        let (generator, load_time) =
            nexttoken_load::load(backend, &mut opened.weights, args.model.dtype)?;
        let runs = tests.iter().flat_map(|&test| {
            args.batch_size
                .iter()
                .map(move |&batch| (test, batch as usize))
        });
        for (index, (test, batch)) in runs.enumerate() {
            let seed = |rep: u64| ((index as u64) << 24) | rep;
            test.run(&generator, kv_cache, batch, seed(0xFF_FFFF))?; // warm-up
            memory::reset_peak_rss();
            let samples = (0..repetitions as u64)
                .map(|rep| test.run(&generator, kv_cache, batch, seed(rep)))
                .collect::<Result<Vec<f64>>>()?;
            let (mean, stddev) = mean_stddev(&samples);
            let record = Record {
                model: &model_name,
                n_params: config.num_parameters(),
                backend: backend.name(),
                dtype: generator
                    .model()
                    .quantization()
                    .map_or(dtype_name(generator.model().dtype()), Quantization::name),
                threads: backend.cpu_threads(),
                kv_cache,
                test: test.name(),
                n_prompt: test.shape().0,
                n_gen: test.shape().1,
                batch_size: batch,
                repetitions,
                load_ms: load_time.as_secs_f64() * 1e3,
                tokens_per_s: mean,
                stddev,
                samples_tokens_per_s: samples,
                peak_rss_bytes: memory::peak_rss_bytes(),
            };
            if args.json {
                println!("{}", serde_json::to_string(&record)?);
            } else {
                print_row(&record, model_width);
            }
        }
    }
    Ok(())
}

fn print_row(record: &Record, model_width: usize) {
    let threads = record
        .threads
        .map_or_else(|| "-".to_string(), |n| n.to_string());
    let rss = record.peak_rss_bytes.map_or_else(
        || "-".to_string(),
        |b| format!("{:.0} MiB", b as f64 / 1048576.0),
    );
    println!(
        "| {:<model_width$} | {:>7.2}M | {:<7} | {:<5} | {:>7} | {:<8} | {:>6} | {:>5} | {:>18} | {:>9} |",
        record.model,
        record.n_params as f64 / 1e6,
        record.backend,
        record.dtype,
        threads,
        if record.kv_cache { "yes" } else { "no" },
        record.test,
        record.batch_size,
        format!("{:.2} ± {:.2}", record.tokens_per_s, record.stddev),
        rss
    );
}

fn mean_stddev(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    if samples.len() < 2 {
        return (mean, 0.0);
    }
    let variance = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, variance.sqrt())
}

/// `len` ids below `vocab`, different for every seed (splitmix64).
fn random_ids(seed: u64, len: usize, vocab: usize) -> Vec<u32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % vocab as u64) as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_standard_deviation() {
        let (mean, stddev) = mean_stddev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(mean, 5.0);
        assert!((stddev - 2.138).abs() < 1e-3, "{stddev}");
        assert_eq!(mean_stddev(&[3.0]), (3.0, 0.0));
    }

    #[test]
    fn random_ids_stay_in_the_vocabulary_and_change_with_the_seed() {
        let a = random_ids(1, 512, 50257);
        assert!(a.iter().all(|&id| id < 50257));
        assert_ne!(a, random_ids(2, 512, 50257));
        assert_eq!(a, random_ids(1, 512, 50257));
    }
}
