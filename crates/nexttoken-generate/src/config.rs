use crate::Selection;

/// How long to generate, how to choose each id, and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Upper bound on the number of tokens appended to each prompt.
    pub max_new_tokens: usize,
    /// Stop a row once it produces this id (GPT-2: `<|endoftext|>`, 50256). The id is kept as
    /// the row's last token; `None` always runs `max_new_tokens` steps.
    pub eos_token_id: Option<u32>,
    /// Further ids that stop a row (vLLM's `stop_token_ids`), kept as its last token like the
    /// end-of-text id; the row finishes with [`FinishReason::Stop`](crate::FinishReason::Stop).
    pub stop_token_ids: Vec<u32>,
    /// The end-of-text id and `stop_token_ids` cannot be chosen before a row has this many
    /// tokens (transformers' `min_new_tokens`, vLLM's `min_tokens`).
    pub min_new_tokens: usize,
    /// How ids are chosen: greedily (the argmax, taken on the device), or by a
    /// [`Sampler`](crate::Sampler) per row, row `r` seeded with `seed + r`.
    pub selection: Selection,
    /// The seed of row 0's random stream (see `selection`).
    pub seed: u64,
    /// Report each generated token's log-probability and this many most likely alternatives
    /// (see [`Logprobs`](crate::Logprobs)); `None` reports nothing.
    pub logprobs: Option<usize>,
}

impl GenerationConfig {
    /// Generates up to `max_new_tokens`, stopping a row at GPT-2's `<|endoftext|>`.
    pub fn new(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            eos_token_id: Some(nexttoken_tokenizer::END_OF_TEXT),
            stop_token_ids: Vec::new(),
            min_new_tokens: 0,
            selection: Selection::Greedy,
            seed: 0,
            logprobs: None,
        }
    }

    /// The settings of row `row` of a batch: the same, drawing from `seed + row`.
    pub fn for_row(&self, row: usize) -> Self {
        Self {
            seed: self.seed.wrapping_add(row as u64),
            ..self.clone()
        }
    }

    /// Never stops early, as the book's `generate_text_simple` does.
    pub fn without_eos(mut self) -> Self {
        self.eos_token_id = None;
        self
    }
}
