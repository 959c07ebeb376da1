//! OpenAI's completions API: the request as clients send it, checked into what the engine
//! runs, and the response and stream chunks as clients parse them.
//!
//! Checking runs in two stages, so that a request costs little before it is known to fit:
//! [`CompletionRequest::check`] reads every field without tokenizing anything, then
//! [`Checked::into_job`] tokenizes the prompts (on a blocking thread: up to the body limit of
//! text) and checks them against the context.

use std::fmt;

use nexttoken_generate::{
    FinishReason, GenerationConfig, Logprobs, SamplingError, SamplingParams, Selection, random_seed,
};
use nexttoken_tokenizer::Gpt2Tokenizer;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// OpenAI's limit on stop sequences.
pub const MAX_STOP: usize = 4;
/// The longest stop sequence, in characters: every step scans each running row's held text
/// for each of them on the thread that all clients share.
pub const MAX_STOP_CHARS: usize = 256;
/// Most `stop_token_ids` in one request.
pub const MAX_STOP_TOKEN_IDS: usize = 64;
/// Most `logit_bias` entries in one request.
pub const MAX_LOGIT_BIAS: usize = 1024;
/// OpenAI's limit on `logprobs` for completions.
pub const MAX_LOGPROBS: u32 = 5;
/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: i64 = 16;

/// `POST /v1/completions`. The fields OpenAI defines, and extensions as llama.cpp's server
/// (`top_k`, `min_p`, `repeat_penalty`) and vLLM (`repetition_penalty`, `min_tokens`,
/// `ignore_eos`, `stop_token_ids`) name them. Every field may be `null`, meaning its default;
/// unknown fields are ignored, as OpenAI ignores them.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<Prompt>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<u32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<u32>,
    pub echo: Option<bool>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub best_of: Option<u32>,
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    pub suffix: Option<String>,
    /// Extension: keep the k most likely tokens.
    pub top_k: Option<usize>,
    /// Extension: keep tokens at least this likely relative to the most likely one.
    pub min_p: Option<f32>,
    /// Extension (llama.cpp's name): transformers' `repetition_penalty`.
    pub repeat_penalty: Option<f32>,
    /// Extension (vLLM's name for the same).
    pub repetition_penalty: Option<f32>,
    /// Extension (vLLM): no end-of-text or stop id before this many tokens.
    pub min_tokens: Option<u32>,
    /// Extension (vLLM): generate past end-of-text.
    pub ignore_eos: Option<bool>,
    /// Extension (vLLM): ids that end a choice as end-of-text does.
    pub stop_token_ids: Option<Vec<u32>>,
}

/// A prompt as OpenAI takes one: text, texts, token ids, or lists of token ids.
#[derive(Debug)]
pub enum Prompt {
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

impl Prompt {
    /// How many prompts it holds.
    fn len(&self) -> usize {
        match self {
            Prompt::Texts(texts) => texts.len(),
            Prompt::IdLists(lists) => lists.len(),
        }
    }
}

const PROMPT_SHAPES: &str =
    "a string, a list of strings, a list of token ids, or a list of lists of token ids";

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Read as JSON first, so that a wrong shape gets one message naming the right ones
        // instead of "did not match any variant of untagged enum".
        let value = serde_json::Value::deserialize(deserializer)?;
        let wrong = || de::Error::custom(format!("the prompt must be {PROMPT_SHAPES}"));
        let id = |value: &serde_json::Value| {
            value
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    de::Error::custom(format!("token ids are whole numbers from 0, got {value}"))
                })
        };
        match value {
            serde_json::Value::String(text) => Ok(Prompt::Texts(vec![text])),
            serde_json::Value::Array(items) => match items.first() {
                None => Ok(Prompt::Texts(Vec::new())),
                Some(serde_json::Value::String(_)) => items
                    .into_iter()
                    .map(|item| match item {
                        serde_json::Value::String(text) => Ok(text),
                        _ => Err(wrong()),
                    })
                    .collect::<Result<_, _>>()
                    .map(Prompt::Texts),
                Some(serde_json::Value::Number(_)) => items
                    .iter()
                    .map(id)
                    .collect::<Result<_, _>>()
                    .map(|ids| Prompt::IdLists(vec![ids])),
                Some(serde_json::Value::Array(_)) => items
                    .iter()
                    .map(|list| match list {
                        serde_json::Value::Array(ids) => ids.iter().map(id).collect(),
                        _ => Err(wrong()),
                    })
                    .collect::<Result<_, _>>()
                    .map(Prompt::IdLists),
                Some(_) => Err(wrong()),
            },
            _ => Err(wrong()),
        }
    }
}

/// `stop`: one string or a list of them.
#[derive(Debug)]
pub struct Stop(Vec<String>);

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StopVisitor;
        impl<'de> Visitor<'de> for StopVisitor {
            type Value = Stop;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a string or a list of up to {MAX_STOP} strings")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Stop, E> {
                Ok(Stop(vec![text.to_string()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Stop, A::Error> {
                let mut stops = Vec::new();
                while let Some(stop) = seq.next_element::<String>()? {
                    // Counted as they come: a list of a million short strings stops here.
                    if stops.len() == MAX_STOP {
                        return Err(de::Error::custom(format!(
                            "at most {MAX_STOP} stop sequences"
                        )));
                    }
                    stops.push(stop);
                }
                Ok(Stop(stops))
            }
        }
        deserializer.deserialize_any(StopVisitor)
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// A request whose fields are checked, its prompts not yet tokenized.
#[derive(Debug)]
pub struct Checked {
    prompt: Prompt,
    n: usize,
    max_tokens: usize,
    seed: u64,
    config: GenerationConfig,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
    echo: bool,
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
    /// Whether the prompt is scored: `echo` with `logprobs` (OpenAI's way to get a prompt's
    /// log-probabilities, as lm-evaluation-harness asks for them).
    pub score_prompt: bool,
}

impl Job {
    /// Rows the job generates: none when it only scores its prompts (`max_tokens` 0).
    pub fn rows(&self) -> usize {
        self.choices
            .iter()
            .filter(|choice| choice.config.max_new_tokens > 0)
            .count()
    }

    /// Prompt tokens, each distinct prompt once however many choices it has (as OpenAI counts
    /// `n`).
    pub fn prompt_tokens(&self) -> usize {
        let mut tokens = 0;
        let mut previous: Option<&Vec<u32>> = None;
        for choice in &self.choices {
            if previous != Some(&choice.prompt_ids) {
                tokens += choice.prompt_ids.len();
            }
            previous = Some(&choice.prompt_ids);
        }
        tokens
    }
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

impl ModelLimits {
    /// The ids a request may name: the model's that the tokenizer can decode.
    fn ids(&self) -> u32 {
        (self.vocab_size as u32).min(nexttoken_tokenizer::VOCAB_SIZE)
    }
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(Some(param), message)
}

impl CompletionRequest {
    /// Checks every field but the prompts' token counts, which need tokenizing; the error
    /// names the first field at fault, the fields taken in this order.
    pub fn check(mut self, limits: &ModelLimits) -> Result<Checked, ApiError> {
        if let Some(model) = self.model.as_deref().filter(|m| *m != limits.name) {
            return Err(ApiError::model_not_found(model, &limits.name));
        }
        let prompt = self
            .prompt
            .take()
            .ok_or_else(|| invalid("prompt", format!("a prompt is required: {PROMPT_SHAPES}")))?;
        if self.best_of.is_some_and(|b| b > 1) {
            return Err(invalid("best_of", "best_of is not supported"));
        }
        if self.suffix.is_some() {
            return Err(invalid("suffix", "suffix is not supported by GPT-2"));
        }
        let echo = self.echo.unwrap_or(false);
        let max_tokens = self.max_tokens(echo)?;
        let n = self.choices(prompt.len(), limits.max_batch)?;
        if let Some(logprobs) = self.logprobs.filter(|&l| l > MAX_LOGPROBS) {
            return Err(invalid(
                "logprobs",
                format!("logprobs is at most {MAX_LOGPROBS}, got {logprobs}"),
            ));
        }
        let stop = self.stop_strings()?;
        let stop_token_ids = self.stop_token_ids(limits.ids())?;
        let selection = self.selection(limits.ids())?;
        let min_tokens = self.min_tokens.unwrap_or(0) as usize;
        if min_tokens > max_tokens {
            return Err(invalid(
                "min_tokens",
                format!("min_tokens ({min_tokens}) is more than max_tokens ({max_tokens})"),
            ));
        }
        let ignore_eos = self.ignore_eos.unwrap_or(false);
        Ok(Checked {
            prompt,
            n,
            max_tokens,
            seed: self.seed.unwrap_or_else(random_seed),
            config: GenerationConfig {
                max_new_tokens: max_tokens,
                eos_token_id: (!ignore_eos).then_some(limits.eos_token_id),
                stop_token_ids,
                min_new_tokens: min_tokens,
                selection,
                seed: 0,
                logprobs: self.logprobs.map(|n| n as usize),
            },
            stop,
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            echo,
        })
    }

    /// `max_tokens`: at least 1, or 0 with `echo` (the prompt scored alone). Anything past the
    /// context fails the context check once the prompt is known.
    fn max_tokens(&self, echo: bool) -> Result<usize, ApiError> {
        let max_tokens = self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        let least = if echo { 0 } else { 1 };
        if max_tokens < least {
            return Err(invalid(
                "max_tokens",
                format!(
                    "max_tokens must be at least 1 (or 0 with echo, to score the prompt alone), \
                     got {max_tokens}"
                ),
            ));
        }
        Ok(usize::try_from(max_tokens).unwrap_or(usize::MAX))
    }

    /// `n`, the choices per prompt: at least 1, and all of the request's rows within the batch.
    fn choices(&self, prompts: usize, max_batch: usize) -> Result<usize, ApiError> {
        let n = self.n.unwrap_or(1);
        if n == 0 {
            return Err(invalid("n", "n must be at least 1"));
        }
        if prompts == 0 {
            return Err(invalid("prompt", "the prompt list is empty"));
        }
        let rows = prompts.saturating_mul(n as usize);
        if rows > max_batch {
            return Err(invalid(
                if n > 1 { "n" } else { "prompt" },
                format!(
                    "{prompts} prompts x n {n} completions in one request; this server runs at \
                     most {max_batch} at once (--max-batch)"
                ),
            ));
        }
        Ok(n as usize)
    }

    /// `stop`, each string short enough to scan every step (how many there are was checked
    /// while parsing).
    fn stop_strings(&mut self) -> Result<Vec<String>, ApiError> {
        let stop = self.stop.take().map_or_else(Vec::new, |stop| stop.0);
        if let Some(long) = stop.iter().find(|s| s.chars().count() > MAX_STOP_CHARS) {
            return Err(invalid(
                "stop",
                format!(
                    "a stop sequence is at most {MAX_STOP_CHARS} characters, got one of {}",
                    long.chars().count()
                ),
            ));
        }
        Ok(stop)
    }

    /// `stop_token_ids`: a bounded list of ids in the vocabulary.
    fn stop_token_ids(&mut self, ids: u32) -> Result<Vec<u32>, ApiError> {
        let stop_token_ids = self.stop_token_ids.take().unwrap_or_default();
        if stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
            return Err(invalid(
                "stop_token_ids",
                format!(
                    "at most {MAX_STOP_TOKEN_IDS} stop token ids, got {}",
                    stop_token_ids.len()
                ),
            ));
        }
        if let Some(id) = stop_token_ids.iter().find(|&&id| id >= ids) {
            return Err(invalid(
                "stop_token_ids",
                format!("stop token id {id} is past the vocabulary's {ids} ids"),
            ));
        }
        Ok(stop_token_ids)
    }

    /// The sampling fields, OpenAI's ranges checked here and the rest by
    /// [`Selection::new`], whose error is turned into the field it names.
    fn selection(&mut self, ids: u32) -> Result<Selection, ApiError> {
        let logit_bias = logit_bias(self.logit_bias.take().unwrap_or_default(), ids)?;
        for (param, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if let Some(value) = value.filter(|v| !(-2.0..=2.0).contains(v)) {
                return Err(invalid(
                    param,
                    format!("{param} must be between -2 and 2, got {value}"),
                ));
            }
        }
        if self.repeat_penalty.is_some() && self.repetition_penalty.is_some() {
            return Err(invalid(
                "repetition_penalty",
                "give repetition_penalty or repeat_penalty (the same setting), not both",
            ));
        }
        let (penalty_param, repeat_penalty) = match self.repetition_penalty {
            Some(value) => ("repetition_penalty", value),
            None => ("repeat_penalty", self.repeat_penalty.unwrap_or(1.0)),
        };
        let sampling = SamplingParams {
            // OpenAI's default temperature is 1: sampling unless a request asks for 0.
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k,
            // 1 keeps everything: the same as no top-p.
            top_p: self.top_p.filter(|&p| p != 1.0),
            min_p: self.min_p.filter(|&p| p != 0.0),
            repeat_penalty,
            repeat_last_n: None,
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            logit_bias,
        };
        Selection::new(sampling).map_err(|error| {
            let param = match error {
                SamplingError::Temperature(_) => "temperature",
                SamplingError::TopK => "top_k",
                SamplingError::TopP(_) => "top_p",
                SamplingError::MinP(_) => "min_p",
                SamplingError::RepeatPenalty(_) => penalty_param,
                SamplingError::PresencePenalty(_) => "presence_penalty",
                SamplingError::FrequencyPenalty(_) => "frequency_penalty",
                SamplingError::LogitBias { .. } => "logit_bias",
            };
            invalid(param, format!("invalid {param}: {error}"))
        })
    }
}

/// OpenAI's `logit_bias`: token ids (as JSON object keys) to a bias from -100 to 100.
fn logit_bias(
    given: std::collections::BTreeMap<String, f32>,
    ids: u32,
) -> Result<Vec<(u32, f32)>, ApiError> {
    if given.len() > MAX_LOGIT_BIAS {
        return Err(invalid(
            "logit_bias",
            format!(
                "at most {MAX_LOGIT_BIAS} logit_bias entries, got {}",
                given.len()
            ),
        ));
    }
    given
        .into_iter()
        .map(|(key, bias)| {
            let id = key.trim().parse::<u32>().ok().filter(|&id| id < ids);
            let Some(id) = id else {
                return Err(invalid(
                    "logit_bias",
                    format!("logit_bias keys are token ids below {ids}, got {key:?}"),
                ));
            };
            if !(-100.0..=100.0).contains(&bias) {
                return Err(invalid(
                    "logit_bias",
                    format!("a logit bias is between -100 and 100, got {bias} for id {id}"),
                ));
            }
            Ok((id, bias))
        })
        .collect()
}

impl Checked {
    /// Rows the request generates: one per choice, none when it only scores its prompts
    /// (`max_tokens` 0), as [`Job::rows`] counts them.
    pub fn rows(&self) -> usize {
        let prompts = self.prompt.len();
        if self.max_tokens == 0 {
            0
        } else {
            prompts * self.n
        }
    }

    /// Tokenizes the prompts and checks them against the model: CPU work proportional to the
    /// prompts' length, for a blocking thread.
    pub fn into_job(
        self,
        limits: &ModelLimits,
        tokenizer: &Gpt2Tokenizer,
    ) -> Result<Job, ApiError> {
        let ids_limit = limits.ids();
        // (text, ids); prompts given as ids get their text from the tokenizer.
        let prompts: Vec<(Option<String>, Vec<u32>)> = match self.prompt {
            Prompt::Texts(texts) => texts
                .into_iter()
                .map(|text| {
                    let ids = tokenizer.encode(&text);
                    (Some(text), ids)
                })
                .collect(),
            Prompt::IdLists(lists) => lists.into_iter().map(|ids| (None, ids)).collect(),
        };
        let mut choices = Vec::with_capacity(prompts.len() * self.n);
        for (index, (text, ids)) in prompts.into_iter().enumerate() {
            if ids.is_empty() {
                return Err(invalid(
                    "prompt",
                    format!("prompt {index} is empty: give it at least one token"),
                ));
            }
            if let Some(&id) = ids.iter().find(|&&id| id >= ids_limit) {
                return Err(invalid(
                    "prompt",
                    format!(
                        "prompt {index} holds token id {id}, past the vocabulary's {ids_limit}"
                    ),
                ));
            }
            let total = ids.len().checked_add(self.max_tokens);
            if total.is_none_or(|total| total > limits.context_length) {
                let requested = total.map_or_else(|| "more".to_string(), |t| t.to_string());
                return Err(invalid(
                    "max_tokens",
                    format!(
                        "this model's maximum context length is {} tokens, however you requested \
                         {requested} tokens ({} in your prompt; {} for the completion): reduce \
                         the prompt or max_tokens",
                        limits.context_length,
                        ids.len(),
                        self.max_tokens
                    ),
                ));
            }
            let text = match text {
                Some(text) => text,
                None => tokenizer
                    .decode(&ids)
                    .map_err(|e| invalid("prompt", format!("prompt {index}: {e}")))?,
            };
            for _ in 0..self.n {
                choices.push(Choice {
                    prompt: text.clone(),
                    prompt_ids: ids.clone(),
                    config: GenerationConfig {
                        // Every choice draws its own stream: seed + its index.
                        seed: self.seed.wrapping_add(choices.len() as u64),
                        ..self.config.clone()
                    },
                });
            }
        }
        Ok(Job {
            choices,
            stop: self.stop,
            stream: self.stream,
            include_usage: self.include_usage,
            echo: self.echo,
            score_prompt: self.echo && self.config.logprobs.is_some(),
        })
    }
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

/// The completions API's `logprobs` object: parallel lists, one entry per token. A scored
/// prompt's first token has `null`s: nothing comes before it.
#[derive(Debug, Default, Serialize)]
pub struct ChoiceLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<TopLogprobs>>,
    /// Where each token's text starts in the choice's text, in characters (as OpenAI and
    /// vLLM count).
    pub text_offset: Vec<usize>,
}

/// The most likely tokens at a step, most likely first: a JSON object whose keys keep that
/// order, as OpenAI's do.
#[derive(Debug, Default)]
pub struct TopLogprobs(pub Vec<(String, f32)>);

impl Serialize for TopLogprobs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (token, logprob) in &self.0 {
            map.serialize_entry(token, logprob)?;
        }
        map.end()
    }
}

/// A token as the `logprobs` object names it: its text, or, where its bytes are not whole
/// UTF-8 characters (byte-level BPE splits them), `bytes:` and the bytes in `\xNN` escapes,
/// as vLLM writes them, so that two such tokens never share a key.
pub fn token_text(tokenizer: &Gpt2Tokenizer, id: u32) -> String {
    let bytes = tokenizer.decode_bytes(&[id]).unwrap_or_default();
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let escaped: String = e.as_bytes().iter().map(|b| format!("\\x{b:02x}")).collect();
            format!("bytes:{escaped}")
        }
    }
}

impl ChoiceLogprobs {
    /// Adds one token whose text starts at character `offset` of the choice's text;
    /// `logprobs` is `None` for a prompt's first token.
    pub fn push(
        &mut self,
        tokenizer: &Gpt2Tokenizer,
        id: u32,
        logprobs: Option<&Logprobs>,
        offset: usize,
    ) {
        self.tokens.push(token_text(tokenizer, id));
        self.token_logprobs.push(logprobs.map(|l| l.logprob));
        self.top_logprobs.push(logprobs.map(|l| {
            TopLogprobs(
                l.top
                    .iter()
                    .map(|&(id, logprob)| (token_text(tokenizer, id), logprob))
                    .collect(),
            )
        }));
        self.text_offset.push(offset);
    }

    /// Appends `other`'s entries (a later piece of the same choice).
    pub fn extend(&mut self, other: ChoiceLogprobs) {
        self.tokens.extend(other.tokens);
        self.token_logprobs.extend(other.token_logprobs);
        self.top_logprobs.extend(other.top_logprobs);
        self.text_offset.extend(other.text_offset);
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
    /// vLLM's field: the context length, for clients that fit prompts to it.
    pub max_model_len: usize,
}

/// `POST /tokenize`, in vLLM's shape: `{"prompt": "..."}`.
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: String,
}

#[derive(Debug, Serialize)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
}

/// `POST /detokenize`, in vLLM's shape: `{"tokens": [...]}`.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Serialize)]
pub struct DetokenizeResponse {
    pub prompt: String,
}
