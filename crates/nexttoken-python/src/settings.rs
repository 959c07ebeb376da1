//! `generate`'s and `stream`'s keyword arguments, read once for both: transformers' names
//! (`max_new_tokens`, `repetition_penalty`) where it has one, the command line's meaning.

use nexttoken_generate::{GenerationConfig, SamplingParams, Selection, random_seed};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::message;

/// The command line's `--max-new-tokens` default.
const MAX_NEW_TOKENS: usize = 50;

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
            if value.is_none() {
                continue;
            }
            match key.as_str() {
                "max_new_tokens" => max_new_tokens = count(&key, &value)?,
                "temperature" => temperature = Some(value.extract()?),
                "top_k" => params.top_k = Some(count(&key, &value)?),
                "top_p" => params.top_p = Some(value.extract()?),
                "min_p" => params.min_p = Some(value.extract()?),
                "repetition_penalty" => params.repeat_penalty = value.extract()?,
                "seed" => seed = Some(count(&key, &value)?),
                "stop" => {
                    stop = match value.extract::<String>() {
                        Ok(one) => vec![one],
                        Err(_) => value.extract()?,
                    }
                }
                "stop_token_ids" => stop_token_ids = value.extract()?,
                "logprobs" => logprobs = Some(count(&key, &value)?),
                "ignore_eos" => ignore_eos = value.extract()?,
                _ => {
                    return Err(PyTypeError::new_err(format!(
                        "{method}() got an unexpected keyword argument '{key}'"
                    )));
                }
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

/// A whole number of at least 0 that fits `T`: `ValueError` otherwise, naming the setting
/// (where PyO3 alone raises `OverflowError` for a negative number).
fn count<T: TryFrom<i64>>(key: &str, value: &Bound<'_, PyAny>) -> PyResult<T> {
    let number: i64 = value
        .extract()
        .map_err(|_| PyValueError::new_err(format!("{key} must be a whole number, got {value}")))?;
    T::try_from(number).map_err(|_| {
        PyValueError::new_err(format!(
            "{key} must be from 0 to {}, got {number}",
            i64::MAX
        ))
    })
}
