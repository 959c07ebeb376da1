use std::collections::HashMap;
use std::ops::ControlFlow;

use burn::tensor::{Tensor, try_read_sync};
use nexttoken_model::{Gpt2, Gpt2Config, token_tensor};
use nexttoken_tokenizer::{Gpt2Tokenizer, StreamDecoder, VOCAB_SIZE};

use crate::generate::drive;
use crate::session::{logprobs, read_back};
use crate::{
    FinishReason, GenerateError, GenerationConfig, GenerationStats, Logprobs, RowId, Session,
    SessionStep, Step,
};

/// One prompt's result, in text and ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    /// Generated ids only; ends with the end-of-text id if the row stopped there, or with the
    /// token that completed a stop string.
    pub ids: Vec<u32>,
    /// The generated text, without the end-of-text marker and without a stop string or
    /// anything after it.
    pub text: String,
    /// `None` if the generation was ended (Ctrl-C, a callback) before the row finished.
    pub finish_reason: Option<FinishReason>,
    /// Each generated token's log-probabilities, with [`GenerationConfig::logprobs`] set.
    pub logprobs: Vec<Logprobs>,
}

/// A model and GPT-2's tokenizer: text in, text out.
#[derive(Debug)]
pub struct TextGenerator {
    model: Gpt2,
    config: Gpt2Config,
    tokenizer: Gpt2Tokenizer,
}

impl TextGenerator {
    /// A generator for `model`, built from `config` (see [`nexttoken_model::Checkpoint`]).
    ///
    /// # Errors
    /// [`GenerateError::ConfigMismatch`] if `config` describes another shape than `model`'s:
    /// its context length, vocabulary, width and depth must be the model's, since generation
    /// reads them from the config.
    pub fn new(model: Gpt2, config: Gpt2Config) -> Result<Self, GenerateError> {
        let shapes = [
            ("n_positions", config.n_positions, model.context_length()),
            ("vocab_size", config.vocab_size, model.vocab_size()),
            ("n_embd", config.n_embd, model.width()),
            ("n_layer", config.n_layer, model.h.len()),
        ];
        if let Some((field, config, model)) = shapes.into_iter().find(|(_, c, m)| c != m) {
            return Err(GenerateError::ConfigMismatch {
                field,
                config,
                model,
            });
        }
        Ok(Self {
            model,
            config,
            tokenizer: Gpt2Tokenizer::new(),
        })
    }

    pub fn model(&self) -> &Gpt2 {
        &self.model
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    pub fn tokenizer(&self) -> &Gpt2Tokenizer {
        &self.tokenizer
    }

    /// Settings for up to `max_new_tokens` per prompt, stopping at the model's end-of-text id
    /// (`eos_token_id` of its `config.json`).
    pub fn generation_config(&self, max_new_tokens: usize) -> GenerationConfig {
        GenerationConfig {
            eos_token_id: Some(self.config.eos_token_id),
            ..GenerationConfig::new(max_new_tokens)
        }
    }

    /// A [`TextSession`] on this generator, with a KV cache
    /// ([`TextSession::without_kv_cache`] for the plain loop). It chooses only ids the
    /// tokenizer can decode.
    pub fn session(&self) -> TextSession<'_> {
        TextSession {
            session: Session::new(&self.model).choosing_below(VOCAB_SIZE as usize),
            tokenizer: &self.tokenizer,
            rows: HashMap::new(),
        }
    }

    /// Each id's log-probability given the ids before it, from one forward pass over `ids`
    /// (teacher-forced), with the `top` most likely ids at each position: `ids.len() - 1`
    /// entries, since the first id has nothing before it. This is what OpenAI's completions API
    /// reports for a prompt with `echo` and `logprobs`, and what a perplexity sums. Over the ids
    /// the tokenizer can decode, as generation chooses.
    ///
    /// # Errors
    /// [`GenerateError::EmptyPrompt`], [`GenerateError::TooLong`] past the model's context,
    /// [`GenerateError::TokenOutOfRange`], or a failed read-back.
    pub fn score(&self, ids: &[u32], top: usize) -> Result<Vec<Logprobs>, GenerateError> {
        Ok(self
            .next_id_logits(ids)?
            .iter()
            .zip(&ids[1..])
            .map(|(scores, &next)| logprobs(scores, next, top))
            .collect())
    }

    /// The model's logits at every position of `ids`, over its whole vocabulary, from one
    /// forward pass: `[ids.len(), vocab_size]` in row order, what transformers'
    /// `model(ids).logits[0]` holds. With [`TextGenerator::score`]'s errors.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>, GenerateError> {
        self.check_ids(ids, 0)?;
        let vocab_size = self.model.vocab_size();
        let logits = self
            .model
            .forward(token_tensor(&[ids], &self.model.wte.weight.device()))
            .reshape([ids.len(), vocab_size]);
        read_back_now(logits)
    }

    /// Logits over the ids the tokenizer can decode at each position of `ids` but the last, from
    /// one forward pass: row `i` predicts `ids[i + 1]`, with [`TextGenerator::score`]'s errors.
    pub(crate) fn next_id_logits(&self, ids: &[u32]) -> Result<LogitRows, GenerateError> {
        self.check_ids(ids, 0)?;
        let t = ids.len();
        let vocab_size = self.model.vocab_size();
        let choosable = vocab_size.min(VOCAB_SIZE as usize);
        if t < 2 {
            return Ok(LogitRows {
                values: Vec::new(),
                width: choosable,
            });
        }
        let device = self.model.wte.weight.device();
        let logits = self
            .model
            .forward(token_tensor(&[ids], &device))
            .reshape([t, vocab_size])
            .slice([0..t - 1, 0..choosable]);
        Ok(LogitRows {
            values: read_back_now(logits)?,
            width: choosable,
        })
    }

    /// Whether `ids`, sequence `index` of a caller's, is one the model can take in a single
    /// pass: not empty, within the context, every id in the vocabulary.
    ///
    /// # Errors
    /// [`GenerateError::EmptyPrompt`], [`GenerateError::TooLong`] or
    /// [`GenerateError::TokenOutOfRange`], naming `index`.
    pub fn check_ids(&self, ids: &[u32], index: usize) -> Result<(), GenerateError> {
        let context = self.model.context_length();
        let vocab_size = self.model.vocab_size();
        if ids.is_empty() {
            return Err(GenerateError::EmptyPrompt { index });
        }
        if ids.len() > context {
            return Err(GenerateError::TooLong {
                len: ids.len(),
                context,
            });
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(GenerateError::TokenOutOfRange {
                index,
                id,
                vocab_size,
            });
        }
        Ok(())
    }
}

/// A tensor's values on the host, waited for here.
fn read_back_now(tensor: Tensor<2>) -> Result<Vec<f32>, GenerateError> {
    try_read_sync(read_back(tensor)).unwrap_or_else(|| {
        Err(GenerateError::ReadBack {
            reason: "the device's results cannot be waited for here".into(),
        })
    })
}

/// Rows of logits read back from the device, `width` each.
pub(crate) struct LogitRows {
    values: Vec<f32>,
    width: usize,
}

impl LogitRows {
    pub(crate) fn iter(&self) -> std::slice::ChunksExact<'_, f32> {
        self.values.chunks_exact(self.width)
    }
}

/// A [`Session`] in text: prompts in, each row's new text out as it forms, cut at the row's
/// stop strings. The streaming API for callers that print or send text as it is made.
///
/// ```
/// use burn::tensor::Device;
/// use nexttoken_generate::{GenerationConfig, TextGenerator};
/// use nexttoken_model::Gpt2Config;
///
/// let config = Gpt2Config { n_layer: 2, n_head: 2, n_embd: 8, n_positions: 16, ..Gpt2Config::gpt2() };
/// let generator = TextGenerator::new(config.init(&Device::flex()), config)?;
/// let mut session = generator.session();
/// let row = session.add("Hello", &generator.generation_config(8), &["\n".to_string()])?;
/// let mut text = String::new();
/// while !session.is_finished() {
///     for chunk in session.step()?.chunks {
///         text.push_str(&chunk.text); // whole characters, never part of "\n"
///     }
/// }
/// assert!(!text.contains('\n'));
/// # let _ = row;
/// # Ok::<(), nexttoken_generate::GenerateError>(())
/// ```
#[derive(Debug)]
pub struct TextSession<'g> {
    session: Session<'g>,
    tokenizer: &'g Gpt2Tokenizer,
    rows: HashMap<RowId, TextRow>,
}

#[derive(Debug)]
struct TextRow {
    stream: StreamDecoder,
    stop: Vec<String>,
    /// Decoded text not given out yet: it may be the start of a stop string.
    held: String,
    /// The ids that end the row without text: end-of-text and the stop ids.
    silent_ids: Vec<u32>,
}

/// What one row got from a [`TextSession::step`].
#[derive(Debug, Clone, PartialEq)]
pub struct TextChunk {
    pub row: RowId,
    pub id: u32,
    /// The text this token completed; possibly empty (half a character, the start of what
    /// may be a stop string, the end-of-text id).
    pub text: String,
    pub logprobs: Option<Logprobs>,
    /// Set on the row's last chunk; the row has then left the session.
    pub finish: Option<FinishReason>,
}

/// One [`TextSession::step`]: a chunk for every row that was live.
#[derive(Debug)]
pub struct TextStep {
    pub chunks: Vec<TextChunk>,
    /// `[chunks.len(), v]`: row `i` holds the logits `chunks[i]`'s id was selected from.
    pub logits: Tensor<2>,
}

impl<'g> TextSession<'g> {
    /// Takes prompts in chunks of at most `tokens` a step ([`Session::with_prefill_chunk`]).
    pub fn with_prefill_chunk(mut self, tokens: usize) -> Self {
        self.session = self.session.with_prefill_chunk(tokens);
        self
    }

    /// Keeps the rows' keys and values in `cache` ([`Session::with_kv_cache`]).
    pub fn with_kv_cache(mut self, cache: nexttoken_model::KvCache) -> Self {
        self.session = self.session.with_kv_cache(cache);
        self
    }

    /// The cache's blocks in use, and its bound ([`Session::kv_cache_blocks`]).
    pub fn kv_cache_blocks(&self) -> (usize, Option<usize>) {
        self.session.kv_cache_blocks()
    }

    /// Generates a continuation for each prompt, run as one batch (prompts of any lengths;
    /// prompt `i` draws with seed `config.seed + i`). Each row stops at its end-of-text id, its
    /// `max_new_tokens` or the first of `stop` its text reaches. Rows already in the session run
    /// alongside until they finish; only the prompts' completions are returned.
    ///
    /// `on_text(row, text)` receives each row's new text as soon as it forms whole characters
    /// that cannot be the start of a stop string; `on_step` sees every step's ids and logits,
    /// as [`crate::generate`]'s callback does. Either returning [`ControlFlow::Break`] ends the
    /// generation after that step; the completions then hold what was generated so far.
    ///
    /// # Errors
    /// As [`crate::generate`].
    pub fn generate(
        mut self,
        prompts: &[&str],
        config: &GenerationConfig,
        stop: &[String],
        mut on_text: impl FnMut(usize, &str) -> ControlFlow<()>,
        on_step: impl FnMut(&Step) -> ControlFlow<()>,
    ) -> Result<(Vec<Completion>, GenerationStats), GenerateError> {
        if prompts.is_empty() {
            return Err(GenerateError::NoPrompts);
        }
        let mut completions = Vec::with_capacity(prompts.len());
        let mut rows = HashMap::with_capacity(prompts.len());
        for (index, prompt) in prompts.iter().enumerate() {
            let prompt_ids = self.tokenizer.encode(prompt);
            rows.insert(
                self.add_ids(prompt_ids.clone(), &config.for_row(index), stop)?,
                index,
            );
            completions.push(Completion {
                prompt: prompt.to_string(),
                prompt_ids,
                ids: Vec::new(),
                text: String::new(),
                finish_reason: None,
                logprobs: Vec::new(),
            });
        }
        let step =
            || (!self.is_finished()).then(|| self.step().map(|step| (step.chunks, step.logits)));
        let on_chunk = |chunk: TextChunk| {
            let row = *rows.get(&chunk.row)?;
            let completion = &mut completions[row];
            completion.ids.push(chunk.id);
            completion.text.push_str(&chunk.text);
            completion.logprobs.extend(chunk.logprobs);
            completion.finish_reason = chunk.finish;
            let flow = match chunk.text.is_empty() {
                true => ControlFlow::Continue(()),
                false => on_text(row, &chunk.text),
            };
            Some((row, chunk.id, flow))
        };
        drive(prompts.len(), step, on_chunk, on_step)?;
        let stats = self.stats().clone();
        Ok((completions, stats))
    }

    /// Reads every row's whole window every step instead of keeping a KV cache: the book's
    /// loop, kept as the reference the cache is tested against.
    pub fn without_kv_cache(mut self) -> Self {
        self.session = self.session.without_kv_cache();
        self
    }

    /// Adds a row continuing `prompt`; it joins the batch at the next step and stops at the
    /// first of `stop` its text reaches (empty strings are ignored).
    ///
    /// # Errors
    /// As [`Session::add`].
    pub fn add(
        &mut self,
        prompt: &str,
        config: &GenerationConfig,
        stop: &[String],
    ) -> Result<RowId, GenerateError> {
        self.add_ids(self.tokenizer.encode(prompt), config, stop)
    }

    /// [`TextSession::add`] for a prompt already encoded.
    ///
    /// # Errors
    /// As [`Session::add`].
    pub fn add_ids(
        &mut self,
        prompt: Vec<u32>,
        config: &GenerationConfig,
        stop: &[String],
    ) -> Result<RowId, GenerateError> {
        let row = self.session.add(prompt, config)?;
        self.rows.insert(
            row,
            TextRow {
                stream: self.tokenizer.stream(),
                stop: stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
                held: String::new(),
                silent_ids: config
                    .eos_token_id
                    .iter()
                    .chain(&config.stop_token_ids)
                    .copied()
                    .collect(),
            },
        );
        Ok(row)
    }

    /// Stops `row` now. Returns whether it was still live.
    pub fn cancel(&mut self, row: RowId) -> bool {
        self.rows.remove(&row);
        self.session.cancel(row)
    }

    pub fn is_finished(&self) -> bool {
        self.session.is_finished()
    }

    /// Rows still generating, those added since the last step included.
    pub fn live_rows(&self) -> usize {
        self.session.live_rows()
    }

    pub fn stats(&self) -> &GenerationStats {
        self.session.stats()
    }

    /// Advances every live row by one token and returns each row's new text.
    ///
    /// # Errors
    /// As [`Session::step`], and [`GenerateError::Tokenizer`] for an id the tokenizer does not
    /// know (a model whose vocabulary is larger than GPT-2's).
    pub fn step(&mut self) -> Result<TextStep, GenerateError> {
        let step = self.session.step()?;
        self.texts(step)
    }

    /// [`TextSession::step`], awaiting the device (see [`Session::step_async`]).
    ///
    /// # Errors
    /// As [`TextSession::step`].
    pub async fn step_async(&mut self) -> Result<TextStep, GenerateError> {
        let step = self.session.step_async().await?;
        self.texts(step)
    }

    /// Each row's new text from a step of the session underneath.
    fn texts(&mut self, step: SessionStep) -> Result<TextStep, GenerateError> {
        let mut chunks = Vec::with_capacity(step.tokens.len());
        for token in step.tokens {
            let Some(row) = self.rows.get_mut(&token.row) else {
                unreachable!("every session row was added through the text session")
            };
            let mut finish = token.finish;
            if !(token.finish.is_some() && row.silent_ids.contains(&token.id)) {
                row.held.push_str(&row.stream.next_token(token.id)?);
            }
            if finish.is_some() {
                row.held.push_str(&row.stream.finish());
            }
            let text = match first_stop(&row.held, &row.stop) {
                Some(at) => {
                    row.held.truncate(at);
                    finish = Some(FinishReason::Stop);
                    std::mem::take(&mut row.held)
                }
                None if finish.is_some() => std::mem::take(&mut row.held),
                None => {
                    let keep = held_back(&row.held, &row.stop);
                    let rest = row.held.split_off(row.held.len() - keep);
                    std::mem::replace(&mut row.held, rest)
                }
            };
            if finish.is_some() {
                self.rows.remove(&token.row);
                if token.finish.is_none() {
                    self.session.cancel(token.row);
                }
            }
            chunks.push(TextChunk {
                row: token.row,
                id: token.id,
                text,
                logprobs: token.logprobs,
                finish,
            });
        }
        Ok(TextStep {
            chunks,
            logits: step.logits,
        })
    }
}

impl<'g> TextSession<'g> {
    /// The session as an iterator of chunks, one row's at a time in step order, stepping as
    /// needed; it ends when every row has finished. Breaking out of the loop leaves the
    /// session as it is, to be stepped again later; [`Chunks::cancel`] stops a row from inside
    /// the loop.
    ///
    /// ```
    /// # use burn::tensor::Device;
    /// # use nexttoken_generate::{GenerationConfig, SamplingParams, Selection, TextGenerator};
    /// # use nexttoken_model::Gpt2Config;
    /// # let config = Gpt2Config { n_layer: 2, n_head: 2, n_embd: 8, n_positions: 16, ..Gpt2Config::gpt2() };
    /// # let generator = TextGenerator::new(config.init(&Device::flex()), config)?;
    /// let mut session = generator.session();
    /// let sampled = GenerationConfig {
    ///     selection: Selection::Sample(SamplingParams { temperature: 0.8, top_p: Some(0.95), ..SamplingParams::default() }),
    ///     seed: 42,
    ///     ..generator.generation_config(10)
    /// };
    /// let short = session.add("Once upon a time", &sampled, &[])?;
    /// let long = session.add("The", &generator.generation_config(10), &[])?;
    /// let mut chunks = session.chunks();
    /// let mut texts = [String::new(), String::new()];
    /// while let Some(chunk) = chunks.next() {
    ///     let chunk = chunk?;
    ///     let text = &mut texts[usize::from(chunk.row == long)];
    ///     text.push_str(&chunk.text);
    ///     if chunk.row == long && text.len() > 5 {
    ///         chunks.cancel(long); // as a server does when its client goes away
    ///     }
    /// }
    /// # let _ = short;
    /// # Ok::<(), nexttoken_generate::GenerateError>(())
    /// ```
    pub fn chunks(&mut self) -> Chunks<'_, 'g> {
        Chunks {
            session: self,
            ready: std::collections::VecDeque::new(),
        }
    }
}

/// An iterator over a [`TextSession`]'s chunks: see [`TextSession::chunks`].
#[derive(Debug)]
pub struct Chunks<'s, 'g> {
    session: &'s mut TextSession<'g>,
    /// The current step's chunks not yet returned.
    ready: std::collections::VecDeque<TextChunk>,
}

impl Chunks<'_, '_> {
    /// Stops `row`: it gets no more chunks, including any left from the current step.
    /// Returns whether it was still live.
    pub fn cancel(&mut self, row: RowId) -> bool {
        self.ready.retain(|chunk| chunk.row != row);
        self.session.cancel(row)
    }
}

impl Iterator for Chunks<'_, '_> {
    type Item = Result<TextChunk, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.ready.is_empty() {
            if self.session.is_finished() {
                return None;
            }
            match self.session.step() {
                Ok(step) => self.ready.extend(step.chunks),
                Err(e) => return Some(Err(e)),
            }
        }
        self.ready.pop_front().map(Ok)
    }
}

/// Where the earliest stop string in `text` starts.
fn first_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// The length of the longest end of `text` that is the start of a stop string: text that must
/// wait for the next token before it can be given out.
fn held_back(text: &str, stop: &[String]) -> usize {
    stop.iter()
        .flat_map(|s| {
            (1..s.len())
                .rev()
                .filter(|&n| s.is_char_boundary(n) && text.ends_with(&s[..n]))
                .take(1)
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn tiny_generator() -> TextGenerator {
        let config = crate::tiny_config(16);
        TextGenerator::new(crate::tiny_model(16), config).unwrap()
    }

    /// Generation reads the context length, vocabulary and eos id from the config: one of
    /// another model is refused, naming the first field that differs.
    #[test]
    fn a_config_of_another_model_is_refused() {
        let config = crate::tiny_config(16);
        let model = crate::tiny_model(16);
        let cases = [
            (
                "n_positions",
                Gpt2Config {
                    n_positions: 32,
                    ..config.clone()
                },
            ),
            (
                "vocab_size",
                Gpt2Config {
                    vocab_size: 50257,
                    ..config.clone()
                },
            ),
            (
                "n_embd",
                Gpt2Config {
                    n_embd: 16,
                    ..config.clone()
                },
            ),
            (
                "n_layer",
                Gpt2Config {
                    n_layer: 3,
                    ..config.clone()
                },
            ),
        ];
        for (field, other) in cases {
            let error = TextGenerator::new(model.clone(), other).unwrap_err();
            assert!(
                matches!(error, GenerateError::ConfigMismatch { field: f, .. } if f == field),
                "{field}: {error}"
            );
        }
        assert!(TextGenerator::new(model, config).is_ok());
    }

    fn generate(
        generator: &TextGenerator,
        prompts: &[&str],
        stop: &[String],
    ) -> (Vec<Completion>, Vec<String>) {
        let config = generator.generation_config(12).without_eos();
        let mut streamed = vec![String::new(); prompts.len()];
        let (completions, _) = generator
            .session()
            .generate(
                prompts,
                &config,
                stop,
                |row, text| {
                    streamed[row].push_str(text);
                    ControlFlow::Continue(())
                },
                |_| ControlFlow::Continue(()),
            )
            .unwrap();
        (completions, streamed)
    }

    /// A two-character stop string spans two tokens: the text ends before it, the ids end
    /// with the token that completed it, and the stream never showed its first character.
    #[test]
    fn a_stop_string_across_tokens_ends_the_row_before_it() {
        let generator = tiny_generator();
        let prompts = ["!", "0"];
        let (free, _) = generate(&generator, &prompts, &[]);
        let text = &free[0].text;
        assert_eq!(text.len(), 12, "one character per token");
        let stop = text[3..5].to_string();
        let at = text.find(&stop).unwrap();
        let (stopped, streamed) = generate(&generator, &prompts, std::slice::from_ref(&stop));
        assert_eq!(stopped[0].text, text[..at]);
        assert_eq!(streamed[0], text[..at]);
        assert_eq!(stopped[0].ids, free[0].ids[..at + 2]);
        assert_eq!(stopped[0].finish_reason, Some(FinishReason::Stop));
        // The other row stops at its own text's first match, or runs to its length.
        let other = &free[1].text;
        match other.find(&stop) {
            Some(at) => assert_eq!(stopped[1].text, other[..at]),
            None => {
                assert_eq!(stopped[1].text, *other);
                assert_eq!(stopped[1].finish_reason, Some(FinishReason::Length));
            }
        }
        assert_eq!(streamed[1], stopped[1].text);
    }

    /// Row `i` of the logits is what predicts `ids[i + 1]` (score's log-probability after a
    /// log-softmax) and depends on `ids[..=i]` only; the last row predicts past the sequence.
    #[test]
    fn logits_hold_every_position_over_the_whole_vocabulary() {
        let generator = tiny_generator();
        let vocab = generator.model().vocab_size();
        let ids = [3, 1, 4, 1, 5, 9];
        let logits = generator.logits(&ids).unwrap();
        assert_eq!(logits.len(), ids.len() * vocab);
        let scored = generator.score(&ids, 0).unwrap();
        for (i, (row, scored)) in logits.chunks_exact(vocab).zip(&scored).enumerate() {
            let max = row.iter().copied().fold(f32::MIN, f32::max);
            let log_sum = row.iter().map(|x| (x - max).exp()).sum::<f32>().ln() + max;
            let logprob = row[ids[i + 1] as usize] - log_sum;
            assert!((logprob - scored.logprob).abs() < 1e-5, "position {i}");
        }
        let prefix = generator.logits(&ids[..3]).unwrap();
        for (a, b) in prefix.iter().zip(&logits[..3 * vocab]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_ne!(logits[5 * vocab..], logits[4 * vocab..5 * vocab]);
        assert!(matches!(
            generator.logits(&[]),
            Err(GenerateError::EmptyPrompt { .. })
        ));
        assert!(matches!(
            generator.logits(&[0; 17]),
            Err(GenerateError::TooLong { len: 17, .. })
        ));
        assert!(matches!(
            generator.logits(&[16]),
            Err(GenerateError::TokenOutOfRange { id: 16, .. })
        ));
    }

    #[test]
    fn only_text_that_may_start_a_stop_string_is_held_back() {
        let stop = stops(&["\n\n", "END"]);
        assert_eq!(held_back("Hello\n", &stop), 1);
        assert_eq!(held_back("Hello E", &stop), 1);
        assert_eq!(held_back("Hello EN", &stop), 2);
        assert_eq!(held_back("Hello", &stop), 0);
        assert_eq!(first_stop("a\n\nb END", &stop), Some(1));
        assert_eq!(first_stop("abc", &stop), None);
        // Multi-byte stop strings are cut on character boundaries only.
        assert_eq!(held_back("x é", &stops(&["éa"])), "é".len());
    }
}
