//! What `generate` and `score` return: plain read-only objects, as transformers' and
//! llama-cpp-python's results are plain data.

use nexttoken_generate::Logprobs;
use pyo3::prelude::*;

/// One prompt's continuation.
#[pyclass(frozen, get_all, module = "nexttoken")]
pub struct Completion {
    /// The generated text, without the end-of-text marker and without a stop string or
    /// anything after it.
    pub text: String,
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    /// The generated ids: with the end-of-text id last if the row stopped there.
    pub ids: Vec<u32>,
    /// `"eos"`, `"length"` or `"stop"`; `None` if the generation was interrupted.
    pub finish_reason: Option<&'static str>,
    /// Each generated token's log-probability, with `logprobs` set; else empty.
    pub logprobs: Vec<Py<TokenLogprob>>,
}

impl Completion {
    pub fn new(py: Python<'_>, completion: nexttoken_generate::Completion) -> PyResult<Self> {
        let logprobs = completion
            .ids
            .iter()
            .zip(completion.logprobs)
            .map(|(&id, logprobs)| Py::new(py, TokenLogprob::new(id, logprobs)))
            .collect::<PyResult<_>>()?;
        Ok(Self {
            text: completion.text,
            prompt: completion.prompt,
            prompt_ids: completion.prompt_ids,
            ids: completion.ids,
            finish_reason: completion.finish_reason.map(|reason| reason.as_str()),
            logprobs,
        })
    }
}

#[pymethods]
impl Completion {
    fn __repr__(&self) -> String {
        format!(
            "Completion(text={:?}, ids=<{} ids>, finish_reason={})",
            self.text,
            self.ids.len(),
            self.finish_reason
                .map_or("None".to_string(), |reason| format!("{reason:?}"))
        )
    }
}

/// A generated token's log-probability, from the model's distribution before any sampling
/// setting touched it (as OpenAI reports it), and the most likely ids at its step.
#[pyclass(frozen, get_all, module = "nexttoken")]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// `(id, logprob)` pairs, most likely first.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    fn new(id: u32, logprobs: Logprobs) -> Self {
        Self {
            id,
            logprob: logprobs.logprob,
            top: logprobs.top,
        }
    }
}

#[pymethods]
impl TokenLogprob {
    fn __repr__(&self) -> String {
        format!("TokenLogprob(id={}, logprob={})", self.id, self.logprob)
    }
}

/// A text's likelihood under the model, as `nexttoken perplexity` computes it: each token after
/// the first given the ones before it, in windows of the context.
#[pyclass(frozen, get_all, module = "nexttoken")]
pub struct Score {
    /// The text's tokens.
    pub tokens: usize,
    /// The tokens with a log-probability: all but the first (and, with a stride of a whole
    /// window, each window's first).
    pub scored: usize,
    /// The sum of the scored tokens' natural-log probabilities.
    pub log_likelihood: f64,
    /// `exp(-log_likelihood / scored)`; NaN where nothing was scored.
    pub perplexity: f64,
    /// The scored tokens' log-probabilities, with `token_logprobs=True`; else `None`.
    pub token_logprobs: Option<Vec<f64>>,
}

#[pymethods]
impl Score {
    fn __repr__(&self) -> String {
        format!(
            "Score(tokens={}, log_likelihood={}, perplexity={})",
            self.tokens, self.log_likelihood, self.perplexity
        )
    }
}
