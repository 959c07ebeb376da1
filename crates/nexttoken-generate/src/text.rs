use std::ops::ControlFlow;

use nexttoken_model::{Gpt2, Gpt2Config};
use nexttoken_tokenizer::Gpt2Tokenizer;

use crate::{GenerateError, Generation, GenerationConfig, Step, generate};

/// One prompt's result, in text and ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    /// Generated ids only; ends with the end-of-text id if the row stopped there.
    pub ids: Vec<u32>,
    /// The generated ids as text, without the end-of-text marker.
    pub text: String,
}

/// A model and GPT-2's tokenizer: text in, text out.
#[derive(Debug)]
pub struct TextGenerator {
    pub model: Gpt2,
    pub config: Gpt2Config,
    pub tokenizer: Gpt2Tokenizer,
}

impl TextGenerator {
    /// A generator for `model`, built from `config` (see [`nexttoken_model::Checkpoint`]).
    pub fn new(model: Gpt2, config: Gpt2Config) -> Self {
        Self {
            model,
            config,
            tokenizer: Gpt2Tokenizer::new(),
        }
    }

    /// Settings for up to `max_new_tokens` per prompt, stopping at the model's end-of-text id
    /// (`eos_token_id` of its `config.json`).
    pub fn generation_config(&self, max_new_tokens: usize) -> GenerationConfig {
        GenerationConfig {
            eos_token_id: Some(self.config.eos_token_id),
            ..GenerationConfig::new(max_new_tokens)
        }
    }

    /// Generates a continuation for each prompt, run as one batch.
    ///
    /// `on_text(row, text)` receives each row's new text as soon as it forms whole characters;
    /// `on_step` sees every step's ids and logits, as [`generate`]'s callback does. Either
    /// returning [`ControlFlow::Break`] ends the generation after that step; the completions then
    /// hold what was generated so far.
    ///
    /// # Errors
    /// As [`generate`]: the prompts must encode to the same, non-zero number of tokens.
    pub fn generate_text(
        &self,
        prompts: &[&str],
        config: &GenerationConfig,
        mut on_text: impl FnMut(usize, &str) -> ControlFlow<()>,
        mut on_step: impl FnMut(&Step) -> ControlFlow<()>,
    ) -> Result<(Vec<Completion>, Generation), GenerateError> {
        let prompt_ids: Vec<Vec<u32>> = prompts.iter().map(|p| self.tokenizer.encode(p)).collect();
        let mut streams: Vec<_> = prompts.iter().map(|_| self.tokenizer.stream()).collect();
        let mut stream_error = None;
        let generation = generate(&self.model, &prompt_ids, config, |step| {
            let mut flow = on_step(step);
            for (row, id) in step.ids.iter().enumerate() {
                let Some(id) = id.filter(|&id| Some(id) != config.eos_token_id) else {
                    continue;
                };
                match streams[row].next_token(id) {
                    Ok(text) if !text.is_empty() && on_text(row, &text).is_break() => {
                        flow = ControlFlow::Break(());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        stream_error = Some(e);
                        flow = ControlFlow::Break(());
                    }
                }
            }
            flow
        })?;
        if let Some(e) = stream_error {
            return Err(e.into());
        }
        let mut completions = Vec::with_capacity(prompts.len());
        for (row, (prompt, prompt_ids)) in prompts.iter().zip(prompt_ids).enumerate() {
            let rest = streams[row].finish();
            if !rest.is_empty() {
                // The generation is over: nothing is left to stop.
                let _ = on_text(row, &rest);
            }
            let ids = generation.tokens[row].clone();
            let text_ids = match config.eos_token_id {
                Some(eos) if ids.last() == Some(&eos) => &ids[..ids.len() - 1],
                _ => &ids[..],
            };
            completions.push(Completion {
                prompt: prompt.to_string(),
                prompt_ids,
                text: self.tokenizer.decode(text_ids)?,
                ids,
            });
        }
        Ok((completions, generation))
    }
}
