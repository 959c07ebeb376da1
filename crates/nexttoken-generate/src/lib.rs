//! The generation loop: *decode, select, append*, one step per new token.
//!
//! Each step crops the ids to the model's context length, runs the model, takes the logits of
//! the last position, turns them into probabilities with a softmax and picks the most likely id
//! (greedy decoding), then appends it. This is the loop of `generate_text_simple` in *Build a
//! Large Language Model (From Scratch)*, and Hugging Face's `generate(do_sample=False)`;
//! `examples/greedy_loop.rs` writes it out on the public API. With
//! [`GenerationConfig::selection`] set to [`Selection::Sample`], each row draws its id instead,
//! through its own [`Sampler`] (transformers' repetition penalty, temperature, top-k, top-p and
//! min-p).
//!
//! A [`Session`] keeps a KV cache ([`nexttoken_model::KvCache`]): the prompt is processed once
//! and each later step runs only the new token through the model. The output is the plain
//! loop's ([`Session::without_kv_cache`]), which the tests check on every backend.
//!
//! ```
//! use std::ops::ControlFlow;
//!
//! use burn::tensor::Device;
//! use nexttoken_generate::{GenerationConfig, generate};
//! use nexttoken_model::Gpt2Config;
//!
//! let device = Device::flex();
//! let config = Gpt2Config { n_layer: 2, n_head: 2, n_embd: 8, n_positions: 16, ..Gpt2Config::gpt2() };
//! let model = config.init(&device);
//! // A batch of two prompts of equal length.
//! let prompts = vec![vec![6109, 3626, 6100, 345], vec![15496, 11, 314, 716]];
//! let out = generate(&model, &prompts, &GenerationConfig::new(5), |_step| ControlFlow::Continue(()))?;
//! assert!(out.tokens.iter().all(|row| row.len() <= 5));
//! # Ok::<(), nexttoken_generate::GenerateError>(())
//! ```

pub use burn;

mod config;
mod error;
mod generate;
mod perplexity;
mod sampler;
mod sampling;
mod session;
mod stats;
mod text;

pub use config::GenerationConfig;
pub use error::GenerateError;
pub use generate::{Generation, Step, generate};
pub use nexttoken_model::KvCache;
pub use perplexity::Perplexity;
pub use sampler::{
    MIN_TEMPERATURE, Sampler, SamplingError, SamplingParams, Selection, random_seed,
};
pub use session::{FinishReason, Logprobs, RowId, RowToken, Session, SessionStep};
pub use stats::GenerationStats;
pub use text::{Chunks, Completion, TextChunk, TextGenerator, TextSession, TextStep};

/// The unit tests' model: 2 layers, width 8, and 16 ids (GPT-2's one-character tokens `!`
/// to `0`), with `n_positions` positions.
#[cfg(test)]
fn tiny_config(n_positions: usize) -> nexttoken_model::Gpt2Config {
    nexttoken_model::Gpt2Config {
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        n_positions,
        vocab_size: 16,
        ..nexttoken_model::Gpt2Config::gpt2()
    }
}

/// The unit tests' random weights are drawn from this seed (printed with a failing test's
/// output), so that a failure can be reproduced.
#[cfg(test)]
const TEST_SEED: u64 = 2026;

/// [`tiny_config`]'s model with weights from [`TEST_SEED`].
#[cfg(test)]
fn tiny_model(n_positions: usize) -> nexttoken_model::Gpt2 {
    eprintln!("random weights from seed {TEST_SEED}");
    tiny_config(n_positions).init_seeded(&burn::tensor::Device::flex(), TEST_SEED)
}
