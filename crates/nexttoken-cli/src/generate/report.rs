//! What `generate` reports after the text: the timings on stderr, or one JSON line per prompt.

use std::time::Duration;

use nexttoken_generate::{Completion, FinishReason, GenerationStats, Logprobs};
use serde::Serialize;

use crate::plural;

/// One prompt's result, and the batch it ran in.
pub(super) struct Done {
    pub(super) completion: Completion,
    pub(super) batch: usize,
    /// The seed of the prompt's random draws, when sampling.
    pub(super) seed: Option<u64>,
}

/// One batch's prompts (as indices into the prompt list) and timings.
pub(super) struct Batch {
    pub(super) prompts: Vec<usize>,
    pub(super) stats: GenerationStats,
}

/// One prompt: its batch's times, as llama.cpp prints them. Several: each prompt's own token
/// counts, labelled, then each batch's times apart.
pub(super) fn print_timings(done: &[Option<Done>], batches: &[Batch], load_time: Duration) {
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
pub(super) struct JsonLine<'a> {
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
    pub(super) fn new(item: &'a Done, batch: &Batch, load_time: Duration, logprobs: bool) -> Self {
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
