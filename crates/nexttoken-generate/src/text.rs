use std::path::Path;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use nexttoken_model::{Gpt2, Gpt2Config, ModelError};
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
    /// How long [`TextGenerator::load`] took.
    pub load_time: Duration,
}

impl TextGenerator {
    /// Loads a Hugging Face GPT-2 checkpoint (see [`nexttoken_model::load`]).
    ///
    /// # Errors
    /// The [`ModelError`] of the load.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self, ModelError> {
        let start = Instant::now();
        let (model, config) = nexttoken_model::load_with_config(path, device)?;
        Ok(Self {
            model,
            config,
            tokenizer: Gpt2Tokenizer::new(),
            load_time: start.elapsed(),
        })
    }

    /// Generates a continuation for each prompt, run as one batch.
    ///
    /// `on_text(row, text)` receives each row's new text as soon as it forms whole characters;
    /// `on_step` sees every step's ids and logits, as [`generate`]'s callback does.
    ///
    /// # Errors
    /// As [`generate`]: the prompts must encode to the same, non-zero number of tokens.
    pub fn generate_text(
        &self,
        prompts: &[&str],
        config: &GenerationConfig,
        mut on_text: impl FnMut(usize, &str),
        mut on_step: impl FnMut(&Step),
    ) -> Result<(Vec<Completion>, Generation), GenerateError> {
        let prompt_ids: Vec<Vec<u32>> = prompts.iter().map(|p| self.tokenizer.encode(p)).collect();
        let mut streams: Vec<_> = prompts.iter().map(|_| self.tokenizer.stream()).collect();
        let mut stream_error = None;
        let generation = generate(&self.model, &prompt_ids, config, |step| {
            on_step(step);
            for (row, id) in step.ids.iter().enumerate() {
                let Some(id) = id.filter(|&id| Some(id) != config.eos_token_id) else {
                    continue;
                };
                match streams[row].next_token(id) {
                    Ok(text) if !text.is_empty() => on_text(row, &text),
                    Ok(_) => {}
                    Err(e) => stream_error = Some(e),
                }
            }
        })?;
        if let Some(e) = stream_error {
            return Err(e.into());
        }
        let mut completions = Vec::with_capacity(prompts.len());
        for (row, (prompt, prompt_ids)) in prompts.iter().zip(prompt_ids).enumerate() {
            let rest = streams[row].finish();
            if !rest.is_empty() {
                on_text(row, &rest);
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
