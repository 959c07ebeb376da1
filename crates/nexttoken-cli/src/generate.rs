//! `nexttoken generate`: continue prompts, streaming the text as it is made.
//!
//! All prompts run as one batch (left-padded, each row as it would run alone), or batches of
//! `--batch-size`, one after another. The first prompt of each batch streams as it is
//! generated; the other prompts of that batch follow, whole, when it ends. Timings go to
//! stderr: each prompt's own token counts, then each batch's times, split as llama.cpp splits
//! them.

use std::io::Write;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use nexttoken_generate::{SamplingParams, Selection, random_seed};

use crate::args::{GenerateArgs, SamplingArgs};
use crate::logits::LogitsRecorder;
use crate::{apply, model, plural};

mod prompts;
mod report;

use prompts::{echoed, read_prompts};
use report::{Batch, Done, JsonLine, print_timings};

/// The exit status of a generation stopped by Ctrl-C (128 + SIGINT), as shells report it.
pub const INTERRUPTED: u8 = 130;

/// How a generation ended, for the exit code.
pub enum Outcome {
    Finished,
    /// Ctrl-C stopped it; what was generated so far was printed.
    Interrupted,
}

pub fn run(args: GenerateArgs) -> Result<Outcome> {
    let prompts = read_prompts(&args)?;
    let selection = selection(&args.sampling)?;
    let seed = args.sampling.seed.unwrap_or_else(random_seed);
    apply(&args.run)?;
    let mut opened = model::open(&args.model, args.json)?;
    let vocab_size = opened.weights.config().vocab_size;
    let mut recorder = args
        .save_logits
        .as_deref()
        .map(|path| LogitsRecorder::create(path, prompts.len(), vocab_size))
        .transpose()?;
    let (generator, load_time) =
        nexttoken_load::load(args.backend, &mut opened.weights, args.model.dtype)?;
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
    let params = SamplingParams {
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
        ..SamplingParams::default()
    }
    .at_temperature_or_filters_default(args.temperature);
    Selection::new(params).context("invalid sampling settings")
}
