//! Loading an opened checkpoint on a backend, in the precision asked for.

use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nexttoken_backend::{Backend, dtype_name};
use nexttoken_generate::TextGenerator;
use nexttoken_model::burn::tensor::DType;
use nexttoken_model::{ModelError, Quantization};

use crate::{LoadError, Weights};

/// The precision to load in: a float type to compute in, or llama.cpp's 8- or 4-bit blocks for
/// the weights (flex only, computing in float32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
}

impl Dtype {
    pub const ALL: [Dtype; 5] = [
        Dtype::F32,
        Dtype::F16,
        Dtype::Bf16,
        Dtype::Q8_0,
        Dtype::Q4_0,
    ];

    /// The name `--dtype` takes.
    pub fn name(self) -> &'static str {
        match self.split() {
            (_, Some(quantization)) => quantization.name(),
            (float, None) => dtype_name(float),
        }
    }

    /// The float type to load in, and the quantization to apply after (whose weights load as
    /// float32 first, from whatever the checkpoint stores).
    pub fn split(self) -> (DType, Option<Quantization>) {
        match self {
            Dtype::F32 => (DType::F32, None),
            Dtype::F16 => (DType::F16, None),
            Dtype::Bf16 => (DType::BF16, None),
            Dtype::Q8_0 => (DType::F32, Some(Quantization::Q8_0)),
            Dtype::Q4_0 => (DType::F32, Some(Quantization::Q4_0)),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A name [`Dtype`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dtype `{0}`: use f32, f16, bf16, q8_0 or q4_0")]
pub struct UnknownDtype(String);

impl FromStr for Dtype {
    type Err = UnknownDtype;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let lower = name.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|dtype| dtype.name() == lower)
            .ok_or_else(|| UnknownDtype(name.to_string()))
    }
}

/// Starts `backend` and loads `weights` on it in `dtype` (default: the checkpoint's own, where
/// the backend computes in it, else float32), refusing before reading the weights a model the
/// device cannot hold; the generator and the load time.
///
/// # Errors
/// [`LoadError`]: a backend that does not start or run the dtype, a GGUF file asked for
/// another dtype than it stores, or weights that do not read.
pub fn load(
    backend: Backend,
    weights: &mut Weights,
    dtype: Option<Dtype>,
) -> Result<(TextGenerator, Duration), LoadError> {
    let (float, quantization) = dtype.map(Dtype::split).unzip();
    let quantization = quantization.flatten();
    if let Some(quantization) = quantization
        && backend != Backend::Flex
    {
        return Err(ModelError::QuantizedOffFlex {
            quantization: quantization.name(),
        }
        .into());
    }
    if let (Weights::Gguf(gguf), Some(dtype)) = (&*weights, dtype) {
        let stored = match gguf.quantization() {
            Some(quantization) => quantization.name(),
            None => dtype_name(gguf.dtype()),
        };
        if dtype.name() != stored {
            return Err(LoadError::GgufDtype {
                path: gguf.path().to_path_buf(),
                stored,
                asked: dtype.name(),
            });
        }
    }
    let device = backend.probe()?;
    let dtype = backend.dtype_for(float, weights.dtype())?;
    let (tensor, bytes) = weights.config().largest_tensor();
    backend.check_fits(tensor, bytes)?;
    let start = Instant::now();
    let loaded = returning_freed_memory(|| match weights {
        Weights::Safetensors(checkpoint) => checkpoint.load_as(&device, dtype),
        Weights::Gguf(gguf) => gguf.load(&device),
    });
    let model = loaded.map_err(|error| LoadError::Weights {
        files: weights
            .files()
            .iter()
            .map(|file| file.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        error: Box::new(error),
    })?;
    let model = match quantization {
        Some(quantization) if model.quantization().is_none() => model.quantized(quantization)?,
        _ => model,
    };
    let load_time = start.elapsed();
    Ok((
        TextGenerator::new(model, weights.config().clone())?,
        load_time,
    ))
}

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, v2 and v3 alike), which libmimalloc-sys
/// does not name: how many milliseconds freed memory stays with the process before it goes
/// back to the kernel (1000 by default in mimalloc v3, which the `mimalloc` crate builds).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Runs `load` with freed memory handed back to the kernel at once, where mimalloc is the
/// allocator (the front ends' choice). Loading frees a copy of nearly every tensor (the bytes
/// read from the file, a matrix before it is laid out); within mimalloc's delay they piled up
/// beside the model (docs/performance.md, "Memory"). A generation's own steps keep the delay,
/// whose reuse of freed blocks they need: prefill is far slower without it.
fn returning_freed_memory<R>(load: impl FnOnce() -> R) -> R {
    // The option is the process's: loads that overlapped (Python's threads) could each restore
    // the other's 0, and leave every later step without the delay.
    static ONE_LOAD_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_LOAD_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let delay = purge_delay();
    set_purge_delay(0);
    let result = load();
    set_purge_delay(delay);
    result
}

fn purge_delay() -> std::ffi::c_long {
    // SAFETY: mimalloc's options are integers it reads and writes atomically, at any time.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

fn set_purge_delay(milliseconds: std::ffi::c_long) {
    // SAFETY: as for `purge_delay`.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, milliseconds) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_is_mimallocs_option_of_that_number() {
        // Were the number another option's, this would read that option's value.
        let default = std::env::var("MIMALLOC_PURGE_DELAY").map_or(1000, |v| v.parse().unwrap());
        assert_eq!(purge_delay(), default);
        assert_eq!(returning_freed_memory(purge_delay), 0);
        assert_eq!(purge_delay(), default, "restored");
    }

    #[test]
    fn dtypes_parse_from_their_names_in_any_case() {
        for dtype in Dtype::ALL {
            assert_eq!(dtype.name().parse(), Ok(dtype));
            assert_eq!(dtype.name().to_uppercase().parse(), Ok(dtype));
        }
        let error = "q3_k".parse::<Dtype>().unwrap_err().to_string();
        assert_eq!(
            error,
            "unknown dtype `q3_k`: use f32, f16, bf16, q8_0 or q4_0"
        );
    }
}
