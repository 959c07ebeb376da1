use std::ops::ControlFlow;
use std::time::Instant;

use burn::tensor::Tensor;
use nexttoken_model::{Gpt2, KvCache, token_tensor};

use crate::{GenerateError, GenerationConfig, GenerationStats, Sampler, select_greedy};

/// What [`generate`] produced.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The new ids of each row, without the prompt. A row that stopped at the end-of-text id
    /// ends with it and is shorter than the others.
    pub tokens: Vec<Vec<u32>>,
    pub stats: GenerationStats,
}

/// One step of [`generate`], as its `on_step` callback sees it.
#[derive(Debug)]
pub struct Step<'a> {
    /// The id each row just got; `None` for rows that had already stopped.
    pub ids: &'a [Option<u32>],
    /// The logits the ids were selected from, the last position's: `[b, v]`.
    pub logits: &'a Tensor<2>,
}

/// Greedily extends each prompt of a batch by up to `config.max_new_tokens` ids.
///
/// `on_step` is called after every step (see [`Step`]), so callers can stream text as it is
/// made; returning [`ControlFlow::Break`] ends the generation there (the reader went away, the
/// user pressed Ctrl-C), and what was generated so far is returned.
///
/// The prompts must all have the same length (they form one `[b, t]` tensor). Before each step
/// the ids are cropped to the last `context_length` tokens, as in the book's loop, so prompts
/// and generations longer than the context still work, seeing only the most recent window.
///
/// With `config.kv_cache` (the default) the prompt's window is processed once and each later
/// step feeds only the new id. GPT-2's positions are absolute, so once the window starts to
/// slide past the context length the cached keys sit at the wrong positions: from then on each
/// step feeds the whole cropped window again, exactly what the plain loop computes. The cache
/// never holds more than `context_length` positions.
///
/// # Errors
/// [`GenerateError`] for `max_new_tokens == 0`, no prompts, an empty prompt, prompts of
/// different lengths, or an id outside the model's vocabulary.
pub fn generate(
    model: &Gpt2,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    mut on_step: impl FnMut(&Step) -> ControlFlow<()>,
) -> Result<Generation, GenerateError> {
    check_batch(model, prompts, config)?;
    let device = model.wte.weight.device();
    let context = model.context_length();
    let (b, prompt_len) = (prompts.len(), prompts[0].len());

    let mut sequences: Vec<Vec<u32>> = prompts.to_vec();
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut finished = vec![false; b];
    let mut stats = GenerationStats {
        prompt_tokens: b * prompt_len.min(context),
        ..GenerationStats::default()
    };
    let mut cache = config.kv_cache.then(KvCache::new);
    let mut samplers: Option<Vec<Sampler>> = config.sampling.as_ref().map(|params| {
        (0..b as u64)
            .map(|row| Sampler::new(params.clone(), config.seed.wrapping_add(row)))
            .collect()
    });

    for step in 0..config.max_new_tokens {
        let start = Instant::now();
        let len = sequences[0].len();
        let window = len.saturating_sub(context);
        // The index of the first id to feed. A cache holds every id but the one appended last;
        // when that one would not fit (the window slides), it starts over from the window.
        let first = match cache.as_mut() {
            Some(cache) if !cache.is_empty() && cache.len() < context => len - 1,
            Some(cache) => {
                cache.clear();
                window
            }
            None => window,
        };
        let rows: Vec<&[u32]> = sequences.iter().map(|row| &row[first..]).collect();
        let ids = token_tensor(&rows, &device);
        let logits = match cache.as_mut() {
            Some(cache) => model.forward_cached(ids, cache),
            None => model.forward_last(ids),
        };
        let next = match samplers.as_mut() {
            None => select_greedy(logits.clone()),
            Some(samplers) => {
                // Selection works on float32 logits on the host, a row at a time.
                let host: Vec<f32> = logits
                    .clone()
                    .into_data()
                    .try_into_vec_as::<f32>()
                    .map_err(|e| GenerateError::ReadBack {
                        reason: format!("{e:?}"),
                    })?;
                let vocab = host.len() / b;
                samplers
                    .iter_mut()
                    .zip(host.chunks_exact(vocab))
                    .zip(&sequences)
                    .map(|((sampler, row), history)| sampler.sample(row, history))
                    .collect()
            }
        };

        let emitted: Vec<Option<u32>> = next
            .iter()
            .zip(&mut finished)
            .map(|(&id, done)| {
                let emitted = (!*done).then_some(id);
                *done |= Some(id) == config.eos_token_id;
                emitted
            })
            .collect();
        for (row, &id) in emitted.iter().enumerate() {
            // Finished rows keep a token so the batch stays rectangular; it is never reported.
            sequences[row].push(id.unwrap_or(next[row]));
            tokens[row].extend(id);
        }
        let elapsed = start.elapsed();
        if step == 0 {
            stats.prefill = elapsed;
        } else {
            stats.decode_steps.push(elapsed);
            stats.decode_tokens += emitted.iter().flatten().count();
        }
        let flow = on_step(&Step {
            ids: &emitted,
            logits: &logits,
        });
        if flow.is_break() || finished.iter().all(|&done| done) {
            break;
        }
    }
    Ok(Generation { tokens, stats })
}

fn check_batch(
    model: &Gpt2,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
) -> Result<(), GenerateError> {
    if config.max_new_tokens == 0 {
        return Err(GenerateError::ZeroMaxNewTokens);
    }
    if let Some(reason) = config.sampling.as_ref().and_then(|p| p.validate().err()) {
        return Err(GenerateError::InvalidSampling { reason });
    }
    let first = prompts.first().ok_or(GenerateError::NoPrompts)?;
    let vocab_size = model.vocab_size();
    for (index, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt { index });
        }
        if prompt.len() != first.len() {
            return Err(GenerateError::RaggedBatch {
                index,
                expected: first.len(),
                found: prompt.len(),
            });
        }
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(GenerateError::TokenOutOfRange {
                index,
                id,
                vocab_size,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;
    use nexttoken_model::Gpt2Config;

    use super::*;

    fn tiny_model() -> Gpt2 {
        let config = Gpt2Config {
            n_layer: 2,
            n_head: 2,
            n_embd: 8,
            n_positions: 6,
            vocab_size: 16,
            ..Gpt2Config::gpt2()
        };
        config.init(&Device::flex())
    }

    /// The loop written out the slow, obvious way: full forward, last row, argmax.
    fn reference(model: &Gpt2, prompt: &[u32], steps: usize) -> Vec<u32> {
        let device = Device::flex();
        let mut ids = prompt.to_vec();
        for _ in 0..steps {
            let window = &ids[ids.len().saturating_sub(model.context_length())..];
            let logits = model.forward(token_tensor(&[window], &device));
            let row: Vec<f32> = logits
                .slice_dim(1, window.len() - 1..window.len())
                .into_data()
                .try_to_vec()
                .unwrap();
            let best = (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best });
            ids.push(best as u32);
        }
        ids[prompt.len()..].to_vec()
    }

    #[test]
    fn batch_rows_match_the_plain_loop_past_the_context_length() {
        let model = tiny_model();
        let prompts = vec![vec![1, 2, 3, 4], vec![9, 8, 7, 6]];
        for config in [
            GenerationConfig::new(10).without_eos(),
            GenerationConfig::new(10).without_eos().without_kv_cache(),
        ] {
            let out = generate(&model, &prompts, &config, |_| ControlFlow::Continue(())).unwrap();
            for (prompt, tokens) in prompts.iter().zip(&out.tokens) {
                assert_eq!(tokens, &reference(&model, prompt, 10), "{config:?}");
            }
            assert_eq!(out.stats.decode_steps.len(), 9);
            assert_eq!(out.stats.decode_tokens, 18);
        }
    }

    /// The cache's logits equal the plain loop's at every step: before the context fills, as
    /// it fills, and while the window slides (a 6-position context, 20 steps).
    #[test]
    fn the_kv_cache_gives_the_plain_loops_logits() {
        let model = tiny_model();
        let prompts = vec![vec![1, 2], vec![9, 8]];
        let logits = |config: GenerationConfig| {
            let mut steps = Vec::new();
            generate(&model, &prompts, &config.without_eos(), |step| {
                steps.push(step.logits.clone().into_data());
                ControlFlow::Continue(())
            })
            .unwrap();
            steps
        };
        let cached = logits(GenerationConfig::new(20));
        let plain = logits(GenerationConfig::new(20).without_kv_cache());
        assert_eq!(cached.len(), 20);
        for (cached, plain) in cached.iter().zip(&plain) {
            cached.assert_approx_eq::<f32>(plain, burn::tensor::Tolerance::default());
        }
    }

    #[test]
    fn a_row_stops_at_eos_and_the_callback_sees_each_step() {
        let model = tiny_model();
        let prompt = vec![vec![1, 2, 3]];
        let expected = reference(&model, &prompt[0], 4);
        // Use the second generated id as the stop id: the row must end right after it.
        let config = GenerationConfig {
            eos_token_id: Some(expected[1]),
            ..GenerationConfig::new(4)
        };
        let stop = expected.iter().position(|&id| id == expected[1]).unwrap();
        let mut steps = Vec::new();
        let out = generate(&model, &prompt, &config, |step| {
            steps.push(step.ids.to_vec());
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(out.tokens[0], expected[..=stop]);
        assert_eq!(steps.len(), stop + 1);
    }

    #[test]
    fn breaking_from_the_callback_ends_the_generation_with_what_was_made() {
        let model = tiny_model();
        let prompt = vec![vec![1, 2, 3]];
        let mut steps = 0;
        let out = generate(
            &model,
            &prompt,
            &GenerationConfig::new(10).without_eos(),
            |_| {
                steps += 1;
                if steps == 3 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )
        .unwrap();
        assert_eq!(steps, 3);
        assert_eq!(out.tokens[0], reference(&model, &prompt[0], 3));
    }

    #[test]
    fn bad_batches_are_errors() {
        let model = tiny_model();
        let config = GenerationConfig::new(3);
        let cases: Vec<(Vec<Vec<u32>>, GenerationConfig, &str)> = vec![
            (
                vec![vec![1]],
                GenerationConfig::new(0),
                "max_new_tokens is 0",
            ),
            (vec![], config.clone(), "no prompts"),
            (vec![vec![1], vec![]], config.clone(), "prompt 1 is empty"),
            (
                vec![vec![1, 2], vec![3]],
                config.clone(),
                "same number of tokens",
            ),
            (vec![vec![1, 16]], config.clone(), "token id 16"),
        ];
        for (prompts, config, message) in cases {
            let err =
                generate(&model, &prompts, &config, |_| ControlFlow::Continue(())).unwrap_err();
            assert!(err.to_string().contains(message), "{err}");
        }
    }
}
