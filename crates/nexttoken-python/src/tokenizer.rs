use nexttoken_tokenizer::{END_OF_TEXT, Gpt2Tokenizer, VOCAB_SIZE};
use pyo3::prelude::*;

use crate::errors::value_error;

/// GPT-2's byte-level BPE tokenizer (tiktoken's `r50k_base`), the one every GPT-2 checkpoint
/// uses: the same ids as transformers' `GPT2TokenizerFast`.
#[pyclass(frozen, module = "nexttoken")]
pub struct Tokenizer {
    inner: Gpt2Tokenizer,
}

impl Tokenizer {
    pub fn of(inner: Gpt2Tokenizer) -> Self {
        Self { inner }
    }
}

#[pymethods]
impl Tokenizer {
    #[new]
    fn new() -> Self {
        Self::of(Gpt2Tokenizer::new())
    }

    /// The ids of `text`; the text `<|endoftext|>` becomes its id, 50256, as transformers'
    /// tokenizer encodes it.
    fn encode(&self, py: Python<'_>, text: &str) -> Vec<u32> {
        py.detach(|| self.inner.encode(text))
    }

    /// The text of `ids`; bytes that are not whole UTF-8 characters become U+FFFD.
    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        self.inner.decode(&ids).map_err(|e| value_error(&e))
    }

    #[getter]
    fn vocab_size(&self) -> u32 {
        VOCAB_SIZE
    }

    /// `<|endoftext|>`'s id, 50256.
    #[getter]
    fn eos_token_id(&self) -> u32 {
        END_OF_TEXT
    }

    fn __repr__(&self) -> &'static str {
        "Tokenizer(gpt2)"
    }
}
