use nexttoken_tokenizer::TokenizerError;

use crate::SamplingError;

/// Why generation could not start.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("max_new_tokens is 0, so there is nothing to generate: ask for at least 1 token")]
    ZeroMaxNewTokens,

    #[error("cannot score {reason}")]
    InvalidWindows { reason: String },

    #[error("no prompts were given: pass at least one prompt")]
    NoPrompts,

    #[error("prompt {index} is empty: give it at least one token of text")]
    EmptyPrompt { index: usize },

    #[error("prompt {index} holds token id {id}, but the model's vocabulary has {vocab_size} ids")]
    TokenOutOfRange {
        index: usize,
        id: u32,
        vocab_size: usize,
    },

    #[error("invalid sampling settings: {0}")]
    InvalidSampling(#[from] SamplingError),

    #[error(
        "the model's logits for row {index} are all NaN or -inf, so no token can be chosen: \
         the weights or the computation overflowed (try --dtype f32)"
    )]
    NoFiniteLogits { index: usize },

    #[error("{len} tokens do not fit in the model's context of {context}: shorten the text")]
    TooLong { len: usize, context: usize },

    #[error(
        "the config's {field} is {config} but the model's is {model}: pass the config the model \
         was built from (its checkpoint's)"
    )]
    ConfigMismatch {
        field: &'static str,
        config: usize,
        model: usize,
    },

    #[error(
        "a generation of up to {positions} positions needs {needed} blocks of KV cache, but the \
         cache holds {blocks}: give the cache more memory (--kv-cache-mib) or ask for fewer \
         tokens"
    )]
    KvCacheTooSmall {
        positions: usize,
        needed: usize,
        blocks: usize,
    },

    #[error("reading the logits back from the device failed: {reason}")]
    ReadBack { reason: String },

    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}
