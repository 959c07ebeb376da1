//! OpenAI's completions API: the request as clients send it, checked into what the engine
//! runs, and the response and stream chunks as clients parse them.

use nexttoken_generate::{FinishReason, GenerationConfig, Logprobs, SamplingParams};
use nexttoken_tokenizer::Gpt2Tokenizer;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// OpenAI's limit on stop sequences.
pub const MAX_STOP: usize = 4;
/// OpenAI's limit on `logprobs` for completions.
pub const MAX_LOGPROBS: u32 = 5;
/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: i64 = 16;

/// `POST /v1/completions`. Fields OpenAI defines, and three extensions (`top_k`, `min_p`,
/// `repeat_penalty`, as llama.cpp's server names them). Unknown fields are ignored, as OpenAI
/// ignores them.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<u32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<u32>,
    #[serde(default)]
    pub echo: bool,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub best_of: Option<u32>,
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    pub suffix: Option<String>,
    /// Extension: keep the k most likely tokens.
    pub top_k: Option<usize>,
    /// Extension: keep tokens at least this likely relative to the most likely one.
    pub min_p: Option<f32>,
    /// Extension: transformers' `repetition_penalty`.
    pub repeat_penalty: Option<f32>,
}

/// A prompt as OpenAI takes one: text, texts, token ids, or lists of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// A checked request: what the engine runs.
#[derive(Debug, Clone)]
pub struct Job {
    /// One entry per choice: prompt `i` of the request, `n` times over, in OpenAI's order.
    pub choices: Vec<Choice>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub echo: bool,
}

#[derive(Debug, Clone)]
pub struct Choice {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub config: GenerationConfig,
}

/// What the server knows about its model, to check requests against.
#[derive(Debug, Clone)]
pub struct ModelLimits {
    pub name: String,
    pub context_length: usize,
    pub vocab_size: usize,
    pub eos_token_id: u32,
    pub max_batch: usize,
}

impl CompletionRequest {
    /// Checks every field; the error names the first one at fault.
    pub fn into_job(
        self,
        limits: &ModelLimits,
        tokenizer: &Gpt2Tokenizer,
    ) -> Result<Job, ApiError> {
        if let Some(model) = self.model.as_deref().filter(|m| *m != limits.name) {
            return Err(ApiError::model_not_found(model, &limits.name));
        }
        for (param, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::invalid(
                    Some(param),
                    format!("{param} is not supported: use repeat_penalty (an extension) instead"),
                ));
            }
        }
        if self.best_of.is_some_and(|b| b > 1) {
            return Err(ApiError::invalid(
                Some("best_of"),
                "best_of is not supported",
            ));
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(ApiError::invalid(
                Some("logit_bias"),
                "logit_bias is not supported",
            ));
        }
        if self.suffix.is_some() {
            return Err(ApiError::invalid(
                Some("suffix"),
                "suffix is not supported by GPT-2",
            ));
        }
        let max_tokens = self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        if max_tokens <= 0 {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                format!("max_tokens must be at least 1, got {max_tokens}"),
            ));
        }
        let n = self.n.unwrap_or(1);
        if n == 0 {
            return Err(ApiError::invalid(Some("n"), "n must be at least 1"));
        }
        if let Some(logprobs) = self.logprobs.filter(|&l| l > MAX_LOGPROBS) {
            return Err(ApiError::invalid(
                Some("logprobs"),
                format!("logprobs is at most {MAX_LOGPROBS}, got {logprobs}"),
            ));
        }
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(stop)) => vec![stop],
            Some(Stop::Many(stops)) => stops,
        };
        if stop.len() > MAX_STOP {
            return Err(ApiError::invalid(
                Some("stop"),
                format!("at most {MAX_STOP} stop sequences, got {}", stop.len()),
            ));
        }
        let sampling = SamplingParams {
            // OpenAI's default temperature is 1: sampling unless a request asks for 0.
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k,
            top_p: self.top_p.filter(|&p| p < 1.0),
            min_p: self.min_p.filter(|&p| p > 0.0),
            repeat_penalty: self.repeat_penalty.unwrap_or(1.0),
            repeat_last_n: None,
        };
        if let Err(reason) = sampling.validate() {
            return Err(ApiError::invalid(
                None,
                format!("invalid sampling settings: {reason}"),
            ));
        }
        let greedy = sampling.is_greedy();

        // (text, ids); prompts given as ids get their text from the tokenizer below.
        let prompts: Vec<(String, Vec<u32>)> = match self.prompt {
            Prompt::Text(text) => vec![(text.clone(), tokenizer.encode(&text))],
            Prompt::Texts(texts) => texts
                .into_iter()
                .map(|text| (text.clone(), tokenizer.encode(&text)))
                .collect(),
            Prompt::Ids(ids) => vec![(String::new(), ids)],
            Prompt::IdLists(lists) => lists.into_iter().map(|ids| (String::new(), ids)).collect(),
        };
        if prompts.is_empty() {
            return Err(ApiError::invalid(
                Some("prompt"),
                "the prompt list is empty",
            ));
        }
        let rows = prompts.len() * n as usize;
        if rows > limits.max_batch {
            return Err(ApiError::invalid(
                Some("prompt"),
                format!(
                    "{rows} completions (prompts x n) in one request; this server runs at most \
                     {} at once (--max-batch)",
                    limits.max_batch
                ),
            ));
        }
        let seed = self.seed.unwrap_or_else(random_seed);
        let mut choices = Vec::with_capacity(rows);
        for (index, (text, ids)) in prompts.into_iter().enumerate() {
            let text = if text.is_empty() {
                tokenizer.decode(&ids).map_err(|e| {
                    ApiError::invalid(Some("prompt"), format!("prompt {index}: {e}"))
                })?
            } else {
                text
            };
            if ids.is_empty() {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    format!("prompt {index} is empty: give it at least one token"),
                ));
            }
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= limits.vocab_size) {
                return Err(ApiError::invalid(
                    Some("prompt"),
                    format!(
                        "prompt {index} holds token id {id}, past the vocabulary's {}",
                        limits.vocab_size
                    ),
                ));
            }
            let total = ids.len() as i64 + max_tokens;
            if total > limits.context_length as i64 {
                return Err(ApiError::invalid(
                    Some("max_tokens"),
                    format!(
                        "this model's maximum context length is {} tokens, however you requested \
                         {total} tokens ({} in your prompt; {max_tokens} for the completion): \
                         reduce the prompt or max_tokens",
                        limits.context_length,
                        ids.len()
                    ),
                ));
            }
            for _ in 0..n {
                choices.push(Choice {
                    prompt: text.clone(),
                    prompt_ids: ids.clone(),
                    config: GenerationConfig {
                        max_new_tokens: max_tokens as usize,
                        eos_token_id: Some(limits.eos_token_id),
                        kv_cache: true,
                        sampling: (!greedy).then(|| sampling.clone()),
                        // Every choice draws its own stream: seed + its index.
                        seed: seed.wrapping_add(choices.len() as u64),
                        logprobs: self.logprobs.map(|n| n as usize),
                    },
                });
            }
        }
        Ok(Job {
            choices,
            stop,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            echo: self.echo,
        })
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// OpenAI's name for a finish reason: end-of-text and stop sequences are both `stop`.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

#[derive(Debug, Serialize)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Serialize)]
pub struct CompletionChoice {
    pub text: String,
    pub index: usize,
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// The completions API's `logprobs` object: parallel lists, one entry per generated token.
#[derive(Debug, Default, Serialize)]
pub struct ChoiceLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    pub text_offset: Vec<usize>,
}

impl ChoiceLogprobs {
    /// Adds one generated token, whose text starts at `offset` in the choice's text.
    pub fn push(&mut self, tokenizer: &Gpt2Tokenizer, id: u32, logprobs: &Logprobs, offset: usize) {
        let text = |id: u32| {
            tokenizer
                .decode_bytes(&[id])
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default()
        };
        self.tokens.push(text(id));
        self.token_logprobs.push(logprobs.logprob);
        self.top_logprobs.push(
            logprobs
                .top
                .iter()
                .map(|&(id, logprob)| (text(id), serde_json::Value::from(logprob)))
                .collect(),
        );
        self.text_offset.push(offset);
    }
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}
