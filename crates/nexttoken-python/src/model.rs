use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use nexttoken_backend::{Backend, set_cpu_threads};
use nexttoken_generate::TextGenerator;
use nexttoken_load::{Dtype, ModelSource};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyDict, PyList};

use crate::errors::{backend_error, generate_error, load_error, message, value_error};
use crate::results::{Completion, Score};
use crate::settings::{Settings, count};
use crate::signals::Signals;
use crate::stream::Stream;
use crate::tokenizer::Tokenizer;

/// A GPT-2 model loaded on a backend, with GPT-2's tokenizer.
#[pyclass(frozen, module = "nexttoken")]
pub struct Model {
    generator: Arc<TextGenerator>,
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    backend: &'static str,
    #[pyo3(get)]
    dtype: &'static str,
}

/// One text or a list of them: a result for one, a list of results for a list.
#[derive(FromPyObject)]
pub enum Texts {
    One(String),
    Many(Vec<String>),
}

impl Texts {
    fn as_slice(&self) -> Vec<&str> {
        match self {
            Texts::One(text) => vec![text.as_str()],
            Texts::Many(texts) => texts.iter().map(String::as_str).collect(),
        }
    }

    /// `results` as the caller gave the texts: one object, or a list.
    fn shape<T: pyo3::PyClass + Into<PyClassInitializer<T>>>(
        &self,
        py: Python<'_>,
        results: Vec<T>,
    ) -> PyResult<Py<PyAny>> {
        let mut objects = results
            .into_iter()
            .map(|result| Py::new(py, result))
            .collect::<PyResult<Vec<_>>>()?;
        match self {
            Texts::One(_) => Ok(objects.remove(0).into_any()),
            Texts::Many(_) => Ok(PyList::new(py, objects)?.into_any().unbind()),
        }
    }
}

/// One sequence of ids or a list of them.
#[derive(FromPyObject)]
pub enum Sequences {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

impl Sequences {
    fn rows(&self) -> Vec<&[u32]> {
        match self {
            Sequences::One(ids) => vec![ids],
            Sequences::Many(rows) => rows.iter().map(Vec::as_slice).collect(),
        }
    }
}

#[pymethods]
impl Model {
    /// Loads a GPT-2 checkpoint, as `nexttoken --model` does: a Hugging Face Hub repo id
    /// (downloaded once into the Hugging Face cache; `HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN` and
    /// `HF_HUB_OFFLINE` apply), a local folder or `model.safetensors`, or a GGUF file; the
    /// model built into nexttoken when left out.
    #[staticmethod]
    #[pyo3(signature = (name_or_path=None, *, dtype=None, backend="flex", threads=None, revision=None, gguf_file=None))]
    fn load(
        py: Python<'_>,
        name_or_path: Option<PathBuf>,
        dtype: Option<&str>,
        backend: &str,
        threads: Option<&Bound<'_, PyAny>>,
        revision: Option<String>,
        gguf_file: Option<String>,
    ) -> PyResult<Self> {
        let backend: Backend = backend
            .parse()
            .map_err(|e| backend_error(&e, message(&e)))?;
        let dtype = dtype
            .map(str::parse::<Dtype>)
            .transpose()
            .map_err(|e| value_error(&e))?;
        if let Some(threads) = threads {
            use_threads(backend, count("threads", threads)?)?;
        }
        let model = name_or_path
            .map(|path| {
                path.into_os_string()
                    .into_string()
                    .map_err(|path| PyValueError::new_err(format!("{path:?} is not valid UTF-8")))
            })
            .transpose()?;
        let source = ModelSource {
            revision: revision.unwrap_or_else(|| "main".into()),
            gguf_file,
            ..ModelSource::named(model)
        };
        let (generator, name) = py
            .detach(|| {
                let mut opened = nexttoken_load::open(&source, false)?;
                let (generator, _) = nexttoken_load::load(backend, &mut opened.weights, dtype)?;
                Ok((generator, opened.name))
            })
            .map_err(|e| load_error(&e))?;
        let dtype = match generator.model().quantization() {
            Some(quantization) => quantization.name(),
            None => nexttoken_backend::dtype_name(generator.model().dtype()),
        };
        Ok(Self {
            generator: Arc::new(generator),
            name,
            backend: backend.name(),
            dtype,
        })
    }

    /// Continues `prompts` (one string, or a list decoded together as one batch), as
    /// `nexttoken generate` does with the same settings: greedy unless `temperature` (or a
    /// top-k, top-p or min-p filter) asks for sampling.
    #[pyo3(signature = (prompts, /, **settings))]
    fn generate(
        &self,
        py: Python<'_>,
        prompts: Texts,
        settings: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let settings = Settings::from_kwargs("generate", settings, self.eos_token_id())?;
        let texts = prompts.as_slice();
        let mut signals = Signals::new(py)?;
        let generated = py.detach(|| {
            self.generator.session().generate(
                &texts,
                &settings.config,
                &settings.stop,
                |_, _| ControlFlow::Continue(()),
                |_| signals.check(),
            )
        });
        signals.raised()?;
        let (completions, _) = generated.map_err(|e| generate_error(&e))?;
        let completions = completions
            .into_iter()
            .map(|completion| Completion::new(py, completion))
            .collect::<PyResult<Vec<_>>>()?;
        prompts.shape(py, completions)
    }

    /// An iterator over the text of `prompt`'s continuation as it is generated, in whole
    /// characters. Leaving a `for` loop over it early stops the generation once the stream is
    /// collected; `close()` or a `with` block stops it at once. Takes `generate`'s settings.
    #[pyo3(signature = (prompt, /, **settings))]
    fn stream(&self, prompt: String, settings: Option<&Bound<'_, PyDict>>) -> PyResult<Stream> {
        let settings = Settings::from_kwargs("stream", settings, self.eos_token_id())?;
        Ok(Stream::start(self.generator.clone(), prompt, settings))
    }

    /// Each text's log-likelihood and perplexity, as `nexttoken perplexity` and transformers'
    /// perplexity recipe compute them: every token after the first given the ones before it,
    /// in windows of `context` tokens (default: the model's) `stride` apart (default: half a
    /// window), each token scored once (a stride of a whole window leaves each window's first
    /// token unscored, as transformers' recipe does).
    #[pyo3(signature = (texts, /, *, context=None, stride=None, token_logprobs=false))]
    fn score(
        &self,
        py: Python<'_>,
        texts: Texts,
        context: Option<&Bound<'_, PyAny>>,
        stride: Option<&Bound<'_, PyAny>>,
        token_logprobs: bool,
    ) -> PyResult<Py<PyAny>> {
        let window = match context {
            Some(context) => count("context", context)?,
            None => self.generator.config().n_positions,
        };
        let stride = match stride {
            Some(stride) => count("stride", stride)?,
            None => (window / 2).max(1),
        };
        self.generator
            .check_windows(window, stride)
            .map_err(|e| generate_error(&e))?;
        let mut scores = Vec::new();
        for text in texts.as_slice() {
            py.check_signals()?;
            let score = py
                .detach(|| self.score_one(text, window, stride, token_logprobs))
                .map_err(|e| generate_error(&e))?;
            scores.push(score);
        }
        texts.shape(py, scores)
    }

    /// The model's logits at every position of `ids`, as a float32 NumPy array: `[tokens,
    /// vocab_size]` for one sequence, `[batch, tokens, vocab_size]` for a list of sequences of
    /// one length. What transformers' `model(ids).logits` holds.
    fn logits<'py>(&self, py: Python<'py>, ids: Sequences) -> PyResult<Bound<'py, PyAny>> {
        let rows = ids.rows();
        let tokens = rows.first().map_or(0, |row| row.len());
        for (index, row) in rows.iter().enumerate() {
            if row.len() != tokens {
                return Err(PyValueError::new_err(format!(
                    "sequence {index} has {} ids, sequence 0 {tokens}: give sequences of one \
                     length",
                    row.len()
                )));
            }
            self.generator
                .check_ids(row, index)
                .map_err(|e| generate_error(&e))?;
        }
        let bytes = py
            .detach(|| -> Result<Vec<u8>, _> {
                let mut bytes = Vec::new();
                for row in &rows {
                    let values = self.generator.logits(row)?;
                    bytes.extend(values.iter().flat_map(|value| value.to_ne_bytes()));
                }
                Ok(bytes)
            })
            .map_err(|e| generate_error(&e))?;
        let array = py
            .import("numpy")?
            .call_method1("frombuffer", (PyByteArray::new(py, &bytes), "float32"))?;
        let vocab_size = self.generator.model().vocab_size();
        match ids {
            Sequences::One(_) => array.call_method1("reshape", ((tokens, vocab_size),)),
            Sequences::Many(_) => {
                array.call_method1("reshape", ((rows.len(), tokens, vocab_size),))
            }
        }
    }

    #[getter]
    fn tokenizer(&self) -> Tokenizer {
        Tokenizer::of(*self.generator.tokenizer())
    }

    /// The most tokens the model sees at once (`n_positions`).
    #[getter]
    fn context_length(&self) -> usize {
        self.generator.config().n_positions
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.generator.config().vocab_size
    }

    #[getter]
    fn eos_token_id(&self) -> u32 {
        self.generator.config().eos_token_id
    }

    fn __repr__(&self) -> String {
        format!(
            "Model({:?}, backend={:?}, dtype={:?})",
            self.name, self.backend, self.dtype
        )
    }
}

impl Model {
    fn score_one(
        &self,
        text: &str,
        window: usize,
        stride: usize,
        token_logprobs: bool,
    ) -> Result<Score, nexttoken_generate::GenerateError> {
        let ids = self.generator.tokenizer().encode(text);
        if ids.len() < 2 {
            return Ok(Score {
                tokens: ids.len(),
                scored: 0,
                log_likelihood: 0.0,
                perplexity: f64::NAN,
                token_logprobs: token_logprobs.then(Vec::new),
            });
        }
        let scored = self
            .generator
            .perplexity(&ids, window, stride, |_, _| {}, |_, _| {})?;
        Ok(Score {
            tokens: ids.len(),
            scored: scored.nll.len(),
            log_likelihood: -scored.nll.iter().sum::<f64>(),
            perplexity: scored.value(),
            token_logprobs: token_logprobs.then(|| scored.nll.iter().map(|nll| -nll).collect()),
        })
    }
}

/// Sizes the CPU thread pool, which can be sized once per process, before its first use: a
/// later call asking for the size it has is fine, another size is a `ValueError`.
fn use_threads(backend: Backend, threads: usize) -> PyResult<()> {
    if threads == 0 {
        // Asked after a failed start, the pool's size would start it at its default.
        return Err(PyValueError::new_err("threads must be 1 or more, got 0"));
    }
    let Err(error) = set_cpu_threads(threads) else {
        return Ok(());
    };
    match backend.cpu_threads() {
        Some(running) if running == threads => Ok(()),
        Some(running) => Err(PyValueError::new_err(format!(
            "{}: this process already runs {running} CPU threads; give threads to its first \
             Model.load",
            message(&error)
        ))),
        None => Err(value_error(&error)),
    }
}
