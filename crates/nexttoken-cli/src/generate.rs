//! `nexttoken generate`: continue prompts, streaming the text as it is made.
//!
//! All prompts run as one batch (left-padded, each row as it would run alone), or batches of
//! `--batch-size`, one after another. The first prompt of each batch streams as it is
//! generated; the other prompts of that batch follow, whole, when it ends. Timings go to
//! stderr: each prompt's own token counts, then each batch's times, split as llama.cpp splits
//! them.

use std::io::{IsTerminal, Read, Write};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nexttoken_generate::{
    Completion, FinishReason, GenerationStats, Logprobs, SamplingParams, Selection, random_seed,
};
use serde::Serialize;

use crate::args::{GenerateArgs, SamplingArgs};
use crate::logits::LogitsRecorder;
use crate::{apply, load_generator, model, plural};

/// The exit status of a generation stopped by Ctrl-C (128 + SIGINT), as shells report it.
pub const INTERRUPTED: u8 = 130;

/// How a generation ended, for the exit code.
pub enum Outcome {
    Finished,
    /// Ctrl-C stopped it; what was generated so far was printed.
    Interrupted,
}

/// One prompt's result, and the batch it ran in.
struct Done {
    completion: Completion,
    batch: usize,
    /// The seed of the prompt's random draws, when sampling.
    seed: Option<u64>,
}

/// One batch's prompts (as indices into the prompt list) and timings.
struct Batch {
    prompts: Vec<usize>,
    stats: GenerationStats,
}

pub fn run(args: GenerateArgs) -> Result<Outcome> {
    let prompts = read_prompts(&args)?;
    let selection = selection(&args.sampling)?;
    let seed = args.sampling.seed.unwrap_or_else(random_seed);
    apply(&args.run)?;
    let mut opened = model::open(&args.model, args.json)?;
    let vocab_size = opened.checkpoint.config().vocab_size;
    let mut recorder = args
        .save_logits
        .as_deref()
        .map(|path| LogitsRecorder::create(path, prompts.len(), vocab_size))
        .transpose()?;
    let (generator, load_time) =
        load_generator(args.backend, &mut opened.checkpoint, args.model.dtype)?;
    let mut config = generator.generation_config(args.max_new_tokens as usize);
    if args.ignore_eos {
        config = config.without_eos();
    }
    // A repeat penalty alone needs a sampler, but nothing is random: no seed to report.
    let draws_at_random = selection.is_random();
    config.selection = selection;

    config.logprobs = args.logprobs;

    let context = generator.config().n_positions;
    for (index, prompt) in prompts.iter().enumerate() {
        let tokens = generator.tokenizer().encode(prompt).len();
        if tokens > context {
            eprintln!(
                "warning: prompt {} is {}; the model sees only the last {context} (its context \
                 length)",
                index + 1,
                plural(tokens, "token")
            );
        }
    }
    let batch_size = args.batch_size.map_or(prompts.len(), |n| n as usize);
    let indices: Vec<usize> = (0..prompts.len()).collect();
    let batches: Vec<&[usize]> = indices.chunks(batch_size).collect();

    let interrupted = catch_ctrl_c();
    let mut done: Vec<Option<Done>> = (0..prompts.len()).map(|_| None).collect();
    let mut finished_batches = Vec::new();
    let mut stdout = std::io::stdout().lock();
    for indices in batches {
        if interrupted.load(Ordering::SeqCst) {
            break;
        }
        let texts: Vec<&str> = indices.iter().map(|&i| prompts[i].as_str()).collect();
        config.seed = seed.wrapping_add(indices[0] as u64);
        if !args.json {
            // A blank line between prompts.
            let separator = if finished_batches.is_empty() {
                ""
            } else {
                "\n"
            };
            write!(stdout, "{separator}{}", echoed(texts[0], args.no_echo))?;
            stdout.flush()?;
        }
        // A failure to write the text or to read logits back ends the generation, then the
        // command.
        let mut write_failure = Ok(());
        let mut record_failure = Ok(());
        let session = if args.run.no_kv_cache {
            generator.session().without_kv_cache()
        } else {
            generator.session()
        };
        let (completions, stats) = session.generate(
            &texts,
            &config,
            &args.stop,
            |row, text| {
                if row == 0
                    && !args.json
                    && let Err(e) = write!(stdout, "{text}").and_then(|()| stdout.flush())
                {
                    write_failure = Err(e);
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            },
            |step| {
                if let Some(recorder) = recorder.as_mut()
                    && let Err(e) = recorder.record(indices, step)
                {
                    record_failure = Err(e);
                    return ControlFlow::Break(());
                }
                if interrupted.load(Ordering::SeqCst) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )?;
        write_failure?;
        record_failure?;
        if !args.json {
            writeln!(stdout)?;
            for completion in &completions[1..] {
                writeln!(
                    stdout,
                    "\n{}{}",
                    echoed(&completion.prompt, args.no_echo),
                    completion.text
                )?;
            }
        }
        for (&index, completion) in indices.iter().zip(completions) {
            done[index] = Some(Done {
                completion,
                batch: finished_batches.len(),
                seed: draws_at_random.then_some(seed.wrapping_add(index as u64)),
            });
        }
        finished_batches.push(Batch {
            prompts: indices.to_vec(),
            stats,
        });
    }

    let interrupted = interrupted.load(Ordering::SeqCst);
    if args.json {
        for item in done.iter().flatten() {
            let batch = &finished_batches[item.batch];
            let line = JsonLine::new(item, batch, load_time, args.logprobs.is_some());
            writeln!(stdout, "{}", serde_json::to_string(&line)?)?;
        }
    } else {
        print_timings(&done, &finished_batches, load_time);
        if draws_at_random {
            eprintln!("seed:      {seed} (--seed {seed} repeats this text)");
        }
    }
    if interrupted {
        eprintln!("interrupted: the text above is what was generated before Ctrl-C");
        if args.save_logits.is_some() {
            eprintln!("--save-logits: nothing written, the generation did not finish");
        }
        return Ok(Outcome::Interrupted);
    }
    if let Some(recorder) = recorder {
        recorder.save(args.backend.name())?;
    }
    Ok(Outcome::Finished)
}

/// From here on the first Ctrl-C sets the returned flag, which ends the generation after the
/// current step (the text so far and the timings are printed); a second one ends the process
/// at once. Until then Ctrl-C keeps its default, so a download or a load stops at once (a
/// download resumes in the next run).
fn catch_ctrl_c() -> Arc<AtomicBool> {
    use signal_hook::consts::SIGINT;
    use signal_hook::flag;
    let interrupted = Arc::new(AtomicBool::new(false));
    // Registered first, so that it sees the flag as the previous Ctrl-C left it.
    let _ =
        flag::register_conditional_shutdown(SIGINT, i32::from(INTERRUPTED), interrupted.clone());
    let _ = flag::register(SIGINT, interrupted.clone());
    interrupted
}

/// How the flags choose each id.
fn selection(args: &SamplingArgs) -> Result<Selection> {
    let filtering = args.top_k.is_some() || args.top_p.is_some() || args.min_p.is_some();
    let params = SamplingParams {
        temperature: args
            .temperature
            .unwrap_or(if filtering { 1.0 } else { 0.0 }),
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
        ..SamplingParams::default()
    };
    Selection::new(params).context("invalid sampling settings")
}

/// The prompts from the arguments, `-` (stdin) and `-f FILE`s, in that order; stdin alone
/// when there are none and it is not a terminal. One trailing newline is dropped from stdin
/// and files, as llama-cli drops it, since an editor or `echo` adds it.
fn read_prompts(args: &GenerateArgs) -> Result<Vec<String>> {
    let stdin = || -> Result<String> {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the prompt from stdin")?;
        Ok(without_final_newline(text))
    };
    if args.prompts.iter().filter(|p| *p == "-").count() > 1 {
        bail!("`-` (stdin) is given more than once: stdin holds one prompt");
    }
    let mut prompts = Vec::new();
    for prompt in &args.prompts {
        prompts.push(if prompt == "-" {
            stdin()?
        } else {
            prompt.clone()
        });
    }
    for file in &args.prompt_files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the prompt file {}", file.display()))?;
        prompts.push(without_final_newline(text));
    }
    if prompts.is_empty() {
        if std::io::stdin().is_terminal() {
            bail!(
                "no prompt: give one as an argument, from a file with -f FILE, or on stdin \
                 (`echo \"Hello\" | nexttoken generate`)"
            );
        }
        prompts.push(stdin()?);
    }
    if let Some(index) = prompts.iter().position(String::is_empty) {
        bail!(
            "prompt {} is empty: give it at least one character of text",
            index + 1
        );
    }
    Ok(prompts)
}

/// The prompt as printed before its continuation: nothing under `--no-echo`.
fn echoed(prompt: &str, no_echo: bool) -> &str {
    if no_echo { "" } else { prompt }
}

fn without_final_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

/// One prompt: its batch's times, as llama.cpp prints them. Several: each prompt's own token
/// counts, labelled, then each batch's times apart.
fn print_timings(done: &[Option<Done>], batches: &[Batch], load_time: Duration) {
    eprintln!("load:      {:>8.1} ms", ms(load_time));
    if let [Some(_)] = done {
        print_batch(&batches[0].stats, "");
        return;
    }
    for (index, item) in done.iter().enumerate() {
        let Some(item) = item else { continue };
        eprintln!(
            "prompt {}:  {} in, {} out{} (batch {})",
            index + 1,
            plural(item.completion.prompt_ids.len(), "token"),
            plural(item.completion.ids.len(), "token"),
            match item.completion.finish_reason {
                Some(FinishReason::Eos) => ", stopped at end of text",
                Some(FinishReason::Stop) => ", stopped at a stop string",
                _ => "",
            },
            item.batch + 1
        );
    }
    for (number, batch) in batches.iter().enumerate() {
        eprintln!(
            "batch {} ({}):",
            number + 1,
            plural(batch.prompts.len(), "prompt")
        );
        print_batch(&batch.stats, "  ");
    }
}

fn print_batch(stats: &GenerationStats, indent: &str) {
    eprintln!(
        "{indent}prompt:    {:>8.1} ms, {:>12}, {:>8.1} tokens/s",
        ms(stats.prefill),
        plural(stats.prompt_tokens, "token"),
        stats.prompt_tokens_per_s()
    );
    eprintln!(
        "{indent}generated: {:>8.1} ms, {:>12}, {:>8.1} tokens/s",
        ms(stats.decode()),
        plural(stats.decode_tokens, "token"),
        stats.generated_tokens_per_s()
    );
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// One `--json` line.
#[derive(Serialize)]
struct JsonLine<'a> {
    prompt: &'a str,
    prompt_ids: &'a [u32],
    ids: &'a [u32],
    text: &'a str,
    /// "eos" (end of text), "stop" (a stop string) or "length" (max new tokens); null when
    /// Ctrl-C ended the generation first.
    finish_reason: Option<&'static str>,
    /// With --logprobs: one entry per generated id.
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<Vec<TokenLogprobs>>,
    /// The seed of this prompt's draws (`--seed` + its index); absent when greedy.
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    timings: Timings,
}

/// A generated id's log-probability and the most likely alternatives at its step, as
/// OpenAI's completions API reports `logprobs`.
#[derive(Serialize)]
struct TokenLogprobs {
    id: u32,
    logprob: f32,
    top_logprobs: Vec<Alternative>,
}

#[derive(Serialize)]
struct Alternative {
    id: u32,
    logprob: f32,
}

impl TokenLogprobs {
    fn new(id: u32, logprobs: &Logprobs) -> Self {
        Self {
            id,
            logprob: logprobs.logprob,
            top_logprobs: logprobs
                .top
                .iter()
                .map(|&(id, logprob)| Alternative { id, logprob })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct Timings {
    load_ms: f64,
    /// This prompt's tokens.
    prompt_tokens: usize,
    /// This prompt's generated tokens.
    generated_tokens: usize,
    /// The batch this prompt ran in: its size and times, all its rows together.
    batch: BatchTimings,
}

#[derive(Serialize)]
struct BatchTimings {
    prompts: usize,
    prompt_tokens: usize,
    prefill_ms: f64,
    prompt_tokens_per_s: f64,
    decode_ms: f64,
    decode_tokens: usize,
    generated_tokens_per_s: f64,
    /// Each decode step, in order: the per-token latency.
    decode_step_ms: Vec<f64>,
}

impl<'a> JsonLine<'a> {
    fn new(item: &'a Done, batch: &Batch, load_time: Duration, logprobs: bool) -> Self {
        let stats = &batch.stats;
        Self {
            prompt: &item.completion.prompt,
            prompt_ids: &item.completion.prompt_ids,
            ids: &item.completion.ids,
            text: &item.completion.text,
            finish_reason: item.completion.finish_reason.map(FinishReason::as_str),
            logprobs: logprobs.then(|| {
                item.completion
                    .ids
                    .iter()
                    .zip(&item.completion.logprobs)
                    .map(|(&id, logprobs)| TokenLogprobs::new(id, logprobs))
                    .collect()
            }),
            seed: item.seed,
            timings: Timings {
                load_ms: ms(load_time),
                prompt_tokens: item.completion.prompt_ids.len(),
                generated_tokens: item.completion.ids.len(),
                batch: BatchTimings {
                    prompts: batch.prompts.len(),
                    prompt_tokens: stats.prompt_tokens,
                    prefill_ms: ms(stats.prefill),
                    prompt_tokens_per_s: stats.prompt_tokens_per_s(),
                    decode_ms: ms(stats.decode()),
                    decode_tokens: stats.decode_tokens,
                    generated_tokens_per_s: stats.generated_tokens_per_s(),
                    decode_step_ms: stats.decode_steps.iter().copied().map(ms).collect(),
                },
            },
        }
    }
}
