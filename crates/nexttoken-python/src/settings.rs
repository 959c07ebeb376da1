//! `generate`'s and `stream`'s keyword arguments, read once for both: transformers' names
//! (`max_new_tokens`, `repetition_penalty`) where it has one, the command line's meaning.

use nexttoken_generate::{GenerationConfig, SamplingParams, Selection, random_seed};
use pyo3::conversion::FromPyObjectOwned;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::message;

/// The command line's `--max-new-tokens` default.
const MAX_NEW_TOKENS: usize = 50;

/// The keywords `generate` and `stream` take (`None` for any of them is its default).
const KEYWORDS: [&str; 11] = [
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "seed",
    "stop",
    "stop_token_ids",
    "logprobs",
    "ignore_eos",
];

/// Generation settings as a call gave them.
pub struct Settings {
    pub config: GenerationConfig,
    pub stop: Vec<String>,
}

impl Settings {
    /// Reads `kwargs` for `method`, raising `TypeError` for a keyword it does not take and
    /// `ValueError` for a value out of range; `eos_token_id` is the model's.
    pub fn from_kwargs(
        method: &str,
        kwargs: Option<&Bound<'_, PyDict>>,
        eos_token_id: u32,
    ) -> PyResult<Self> {
        let mut max_new_tokens = MAX_NEW_TOKENS;
        let mut temperature = None;
        let mut params = SamplingParams::default();
        let mut seed = None;
        let mut stop = Vec::new();
        let mut stop_token_ids = Vec::new();
        let mut logprobs = None;
        let mut ignore_eos = false;
        for (key, value) in kwargs.into_iter().flatten() {
            let key: String = key.extract()?;
            if !KEYWORDS.contains(&key.as_str()) {
                return Err(PyTypeError::new_err(format!(
                    "{method}() got an unexpected keyword argument '{key}'"
                )));
            }
            if value.is_none() {
                continue;
            }
            match key.as_str() {
                "max_new_tokens" => max_new_tokens = count(&key, &value)?,
                "temperature" => temperature = Some(typed(&key, &value, "a number")?),
                "top_k" => params.top_k = Some(count(&key, &value)?),
                "top_p" => params.top_p = Some(typed(&key, &value, "a number")?),
                "min_p" => params.min_p = Some(typed(&key, &value, "a number")?),
                "repetition_penalty" => {
                    params.repeat_penalty = typed(&key, &value, "a number")?;
                }
                "seed" => seed = Some(count(&key, &value)?),
                "stop" => {
                    stop = match value.extract::<String>() {
                        Ok(one) => vec![one],
                        Err(_) => typed(&key, &value, "a string or a list of strings")?,
                    }
                }
                "stop_token_ids" => {
                    stop_token_ids = typed(&key, &value, "a list of token ids (0 or more)")?;
                }
                "logprobs" => logprobs = Some(count(&key, &value)?),
                _ => ignore_eos = typed(&key, &value, "True or False")?,
            }
        }
        if max_new_tokens == 0 {
            return Err(PyValueError::new_err(
                "max_new_tokens must be at least 1, got 0",
            ));
        }
        let selection = Selection::new(params.at_temperature_or_filters_default(temperature))
            .map_err(|e| {
                PyValueError::new_err(format!("invalid sampling settings: {}", message(&e)))
            })?;
        let mut config = GenerationConfig {
            eos_token_id: Some(eos_token_id),
            selection,
            seed: seed.unwrap_or_else(random_seed),
            logprobs,
            stop_token_ids,
            ..GenerationConfig::new(max_new_tokens)
        };
        if ignore_eos {
            config = config.without_eos();
        }
        Ok(Self { config, stop })
    }
}

/// `value` as a `T`, or a `TypeError` naming the setting and what it takes.
fn typed<'py, T: FromPyObjectOwned<'py>>(
    key: &str,
    value: &Bound<'py, PyAny>,
    takes: &str,
) -> PyResult<T> {
    value
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("{key} must be {takes}, got {value:?}")))
}

/// A whole number of at least 0 that fits `T`; a `ValueError` naming the setting otherwise
/// (where PyO3 alone raises `OverflowError`, which is no `ValueError`).
pub fn count<'py, T: FromPyObjectOwned<'py> + Largest>(
    key: &str,
    value: &Bound<'py, PyAny>,
) -> PyResult<T> {
    if let Ok(number) = value.extract::<T>() {
        return Ok(number);
    }
    let number: i128 = typed(key, value, "a whole number")?;
    Err(PyValueError::new_err(if number < 0 {
        format!("{key} must be 0 or more, got {number}")
    } else {
        format!("{key} must be at most {}, got {number}", T::LARGEST)
    }))
}

/// The largest value of an unsigned integer type, for messages.
pub trait Largest {
    const LARGEST: u128;
}

impl Largest for u64 {
    const LARGEST: u128 = u64::MAX as u128;
}

impl Largest for usize {
    const LARGEST: u128 = usize::MAX as u128;
}
