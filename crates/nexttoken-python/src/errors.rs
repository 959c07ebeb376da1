//! nexttoken's errors as the Python exceptions a Python user expects: `FileNotFoundError` for
//! a checkpoint that is not there, `ConnectionError` for a Hub that cannot be reached,
//! `RuntimeError` for a backend that does not start, `ValueError` for bad settings or bad
//! files. The message is the command line's: the error and its causes, `: `-joined.

use std::error::Error;

use nexttoken_backend::BackendError;
use nexttoken_generate::GenerateError;
use nexttoken_hub::HubError;
use nexttoken_load::LoadError;
use nexttoken_model::ModelError;
use pyo3::PyErr;
use pyo3::exceptions::{PyConnectionError, PyFileNotFoundError, PyRuntimeError, PyValueError};

/// `error` and its sources, as anyhow's `{:#}` prints them.
pub fn message(error: &dyn Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

pub fn value_error(error: &dyn Error) -> PyErr {
    PyValueError::new_err(message(error))
}

pub fn load_error(error: &LoadError) -> PyErr {
    let text = message(error);
    match error {
        LoadError::Open { error, .. }
            if matches!(
                **error,
                ModelError::NotFound { .. } | ModelError::NoWeights { .. }
            ) =>
        {
            PyFileNotFoundError::new_err(text)
        }
        LoadError::Hub { error, .. } | LoadError::HubSetup(error) => match error {
            HubError::RepoNotFound { .. }
            | HubError::RevisionNotFound { .. }
            | HubError::FileNotFound { .. }
            | HubError::NotCached { .. }
            | HubError::NoWeights { .. } => PyFileNotFoundError::new_err(text),
            HubError::Network { .. } => PyConnectionError::new_err(text),
            _ => PyValueError::new_err(text),
        },
        LoadError::Backend(error) => backend_error(error, text),
        LoadError::Generate(error) => generate_error_with(error, text),
        _ => PyValueError::new_err(text),
    }
}

pub fn backend_error(error: &BackendError, text: String) -> PyErr {
    match error {
        BackendError::NotCompiled { name, .. } => PyValueError::new_err(format!(
            "backend `{name}` is not in the Python package, which is built with flex only (the \
             nexttoken command has the others: see the README's Backends)"
        )),
        BackendError::NoVulkanAdapter { .. }
        | BackendError::StartFailed { .. }
        | BackendError::TensorTooLarge { .. } => PyRuntimeError::new_err(text),
        _ => PyValueError::new_err(text),
    }
}

pub fn generate_error(error: &GenerateError) -> PyErr {
    generate_error_with(error, message(error))
}

fn generate_error_with(error: &GenerateError, text: String) -> PyErr {
    match error {
        GenerateError::ReadBack { .. } => PyRuntimeError::new_err(text),
        _ => PyValueError::new_err(text),
    }
}
