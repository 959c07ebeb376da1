//! `nexttoken`: GPT-2 text generation from the command line.

/// Every step allocates and frees tensors of a few MB; glibc's malloc hands such blocks back to
/// the kernel and takes page faults to get them again, which cost a fifth of GPT-2 124M's decode
/// time on flex (42 -> 54 tokens/s with mimalloc, which keeps them).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod args;
mod bench;
mod logits;
mod memory;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use nexttoken_backend::{Backend, BackendError, set_cpu_threads};
use nexttoken_generate::{Completion, GenerationConfig, GenerationStats, TextGenerator};
use nexttoken_model::Gpt2Config;
use serde::Serialize;

use crate::args::{Cli, Command, GenerateArgs, RunArgs};
use crate::logits::LogitsRecorder;

/// The small Shakespeare model shipped in the repository (see models/README.md).
fn bundled_model() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    repo.canonicalize()
        .unwrap_or(repo)
        .join("models/nexttoken-tiny-shakespeare")
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Generate(args) => run_generate(args),
        Command::Bench(args) => apply(&args.run).and_then(|()| {
            let model_path = args.model.clone().unwrap_or_else(bundled_model);
            let config = read_config(&model_path)?;
            bench::run(args, &model_path, &config)
        }),
        Command::Info => run_info(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line with the whole chain of causes, without anyhow's backtrace.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    if let Some(index) = args.prompts.iter().position(String::is_empty) {
        bail!("prompt {index} is empty: give it at least one character of text");
    }
    apply(&args.run)?;
    let model_path = args.model.clone().unwrap_or_else(bundled_model);
    let model_config = read_config(&model_path)?;
    let generator = load_generator(args.backend, &model_path, &model_config)?;
    let mut config = GenerationConfig::new(args.max_new_tokens as usize);
    if args.ignore_eos {
        config = config.without_eos();
    }
    config.kv_cache = !args.run.no_kv_cache;

    // Prompts of one token length form one [b, t] batch; different lengths run apart.
    let mut batches: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (index, prompt) in args.prompts.iter().enumerate() {
        batches
            .entry(generator.tokenizer.encode(prompt).len())
            .or_default()
            .push(index);
    }
    let stream = !args.json && args.prompts.len() == 1;
    let mut results: Vec<Option<(Completion, GenerationStats)>> = vec![None; args.prompts.len()];
    let mut recorder = args
        .save_logits
        .is_some()
        .then(|| LogitsRecorder::new(args.prompts.len(), model_config.vocab_size));
    let mut stdout = std::io::stdout().lock();
    for indices in batches.values() {
        let prompts: Vec<&str> = indices.iter().map(|&i| args.prompts[i].as_str()).collect();
        if stream {
            write!(stdout, "{}", prompts[0])?;
            stdout.flush()?;
        }
        // The first failure to read logits back; it ends the command after this batch.
        let mut recording = Ok(());
        let (completions, generation) = generator.generate_text(
            &prompts,
            &config,
            |_, text| {
                if stream {
                    // A closed stdout (e.g. `| head`) ends the stream; the summary still prints.
                    let _ = write!(stdout, "{text}").and_then(|()| stdout.flush());
                }
            },
            |step| {
                if let (Some(recorder), Ok(())) = (recorder.as_mut(), &recording) {
                    recording = recorder.record(indices, step);
                }
            },
        )?;
        recording?;
        for (&index, completion) in indices.iter().zip(completions) {
            results[index] = Some((completion, generation.stats.clone()));
        }
    }

    if let (Some(recorder), Some(path)) = (&recorder, &args.save_logits) {
        recorder.save(path, args.backend.name())?;
    }
    for (completion, stats) in results.into_iter().flatten() {
        if args.json {
            writeln!(
                stdout,
                "{}",
                serde_json::to_string(&JsonLine::new(&completion, &stats, &generator))?
            )?;
        } else if stream {
            writeln!(stdout)?;
            print_timings(&generator, &stats);
        } else {
            writeln!(stdout, "{}{}\n", completion.prompt, completion.text)?;
            print_timings(&generator, &stats);
        }
    }
    Ok(())
}

/// Applies the settings that must be in place before the first tensor operation.
fn apply(run: &RunArgs) -> Result<()> {
    if let Some(threads) = run.threads {
        set_cpu_threads(threads as usize)?;
    }
    Ok(())
}

/// The checkpoint's config, checked against its tensors' shapes, before any weight is read.
fn read_config(model_path: &Path) -> Result<Gpt2Config> {
    nexttoken_model::read_config(model_path).with_context(|| loading(model_path))
}

/// Starts the backend and loads the checkpoint on it, refusing (before reading the weights) a
/// model the device cannot hold.
fn load_generator(
    backend: Backend,
    model_path: &Path,
    config: &Gpt2Config,
) -> Result<TextGenerator> {
    let device = backend.probe()?;
    let (tensor, bytes) = config.largest_tensor();
    backend.check_fits(tensor, bytes)?;
    TextGenerator::load(model_path, &device).with_context(|| loading(model_path))
}

fn loading(model_path: &Path) -> String {
    format!("loading the model from {}", model_path.display())
}

/// Lists every backend: compiled in or not, and whether it starts on this machine.
fn run_info() -> Result<()> {
    println!("nexttoken {}", env!("CARGO_PKG_VERSION"));
    println!("{:<8} {:<10} status", "backend", "compiled");
    for backend in Backend::ALL {
        let status = match backend.probe() {
            Ok(device) => format!("ok ({device:?})"),
            Err(BackendError::NotCompiled { feature, .. }) => {
                format!("rebuild with `--features {feature}`")
            }
            Err(e) => format!("cannot start: {e}"),
        };
        let compiled = if backend.is_compiled() { "yes" } else { "no" };
        println!("{:<8} {compiled:<10} {status}", backend.name());
    }
    Ok(())
}

fn print_timings(generator: &TextGenerator, stats: &GenerationStats) {
    eprintln!(
        "load:      {:>8.1} ms",
        generator.load_time.as_secs_f64() * 1e3
    );
    eprintln!(
        "prompt:    {:>8.1} ms, {:>5} tokens, {:>8.1} tokens/s",
        stats.prefill.as_secs_f64() * 1e3,
        stats.prompt_tokens,
        stats.prompt_tokens_per_s()
    );
    eprintln!(
        "generated: {:>8.1} ms, {:>5} tokens, {:>8.1} tokens/s",
        stats.decode().as_secs_f64() * 1e3,
        stats.decode_tokens,
        stats.generated_tokens_per_s()
    );
}

/// One `--json` line.
#[derive(Serialize)]
struct JsonLine<'a> {
    prompt: &'a str,
    prompt_ids: &'a [u32],
    ids: &'a [u32],
    text: &'a str,
    timings: Timings,
}

#[derive(Serialize)]
struct Timings {
    load_ms: f64,
    prefill_ms: f64,
    prompt_tokens: usize,
    prompt_tokens_per_s: f64,
    decode_ms: f64,
    decode_tokens: usize,
    generated_tokens_per_s: f64,
    /// Each decode step, in order: the per-token latency.
    decode_step_ms: Vec<f64>,
}

impl<'a> JsonLine<'a> {
    fn new(completion: &'a Completion, stats: &GenerationStats, generator: &TextGenerator) -> Self {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        Self {
            prompt: &completion.prompt,
            prompt_ids: &completion.prompt_ids,
            ids: &completion.ids,
            text: &completion.text,
            timings: Timings {
                load_ms: ms(generator.load_time),
                prefill_ms: ms(stats.prefill),
                prompt_tokens: stats.prompt_tokens,
                prompt_tokens_per_s: stats.prompt_tokens_per_s(),
                decode_ms: ms(stats.decode()),
                decode_tokens: stats.decode_tokens,
                generated_tokens_per_s: stats.generated_tokens_per_s(),
                decode_step_ms: stats.decode_steps.iter().copied().map(ms).collect(),
            },
        }
    }
}
