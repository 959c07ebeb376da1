use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::str::FromStr;

use burn::tensor::{DType, Device, Tensor};

use crate::BackendError;

/// A burn backend nexttoken can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// burn's pure-Rust CPU backend (SIMD, multithreaded). Always compiled in; the default.
    Flex,
    /// The ndarray CPU backend (deprecated upstream in favour of flex).
    NdArray,
    /// WebGPU through wgpu (WGSL shaders): Vulkan, Metal or DX12 GPUs, or lavapipe on a CPU.
    Wgpu,
    /// wgpu pinned to Vulkan with SPIR-V shaders: for real GPUs (it crashes inside lavapipe).
    Vulkan,
    /// libtorch through tch (PyTorch 2.9.0's shared libraries), on the CPU.
    Tch,
    /// CUDA through cubecl, on NVIDIA GPU 0.
    Cuda,
}

impl Backend {
    /// Every backend, compiled in or not.
    pub const ALL: [Backend; 6] = [
        Backend::Flex,
        Backend::NdArray,
        Backend::Wgpu,
        Backend::Vulkan,
        Backend::Tch,
        Backend::Cuda,
    ];

    /// The name `--backend` takes.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::NdArray => "ndarray",
            Backend::Wgpu => "wgpu",
            Backend::Vulkan => "vulkan",
            Backend::Tch => "tch",
            Backend::Cuda => "cuda",
        }
    }

    /// The cargo feature that compiles it in (flex needs none).
    pub fn feature(self) -> &'static str {
        self.name()
    }

    pub fn is_compiled(self) -> bool {
        match self {
            Backend::Flex => true,
            Backend::NdArray => cfg!(feature = "ndarray"),
            Backend::Wgpu => cfg!(feature = "wgpu"),
            Backend::Vulkan => cfg!(feature = "vulkan"),
            Backend::Tch => cfg!(feature = "tch"),
            Backend::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends compiled into this build.
    pub fn compiled() -> Vec<Backend> {
        Self::ALL.into_iter().filter(|b| b.is_compiled()).collect()
    }

    /// A device of this backend.
    ///
    /// # Errors
    /// [`BackendError::NotCompiled`] if the build lacks the backend's feature;
    /// [`BackendError::NoVulkanAdapter`] for wgpu/vulkan on a machine without a Vulkan driver.
    pub fn device(self) -> Result<Device, BackendError> {
        if !self.is_compiled() {
            return Err(BackendError::NotCompiled {
                name: self.name(),
                compiled: names(&Self::compiled()),
                feature: self.feature(),
            });
        }
        self.compiled_device()
    }

    /// A device, after checking the backend really computes here: it runs one element-wise
    /// kernel and reads the result back. Not a matmul: on wgpu a fresh process picks and compiles
    /// a matmul's kernels for the probe's shape alone, which on lavapipe took seconds of every
    /// run's start even with warm caches (docs/backends.md).
    /// Backends fail in different ways when their libraries or drivers are missing, some by
    /// panicking deep inside; this turns every such failure into an error.
    ///
    /// # Errors
    /// As [`Backend::device`], and [`BackendError::StartFailed`] with what went wrong.
    pub fn probe(self) -> Result<Device, BackendError> {
        let device = self.device()?;
        let check = catch_unwind(AssertUnwindSafe(|| {
            let x = Tensor::<2>::from_data([[1.0, 2.0], [3.0, 4.0]], &device);
            (x.clone() * x.clone() + x).into_data().try_to_vec::<f32>()
        }));
        match check {
            Ok(Ok(values)) if values == [2.0, 6.0, 12.0, 20.0] => Ok(device),
            Ok(Ok(values)) => Err(self.start_failed(format!("x * x + x gave {values:?}"))),
            Ok(Err(e)) => Err(self.start_failed(format!("{e:?}"))),
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "it panicked".into());
                Err(self.start_failed(reason))
            }
        }
    }

    /// The float types a model computes in on this backend, float32 first. Half precision is
    /// listed where burn's backend runs the whole model in it (the conformance tests check each
    /// against Hugging Face run in the same dtype).
    pub fn dtypes(self) -> &'static [DType] {
        match self {
            Backend::Flex | Backend::Tch => &[DType::F32, DType::F16, DType::BF16],
            // ndarray stores float32 and float64 only; WGSL has no bf16, and f16 needs an
            // adapter with shader-f16; cuda's half paths are untested here (no GPU).
            _ => &[DType::F32],
        }
    }

    /// The dtype to compute in: `requested` (`--dtype`) if given, else the checkpoint's
    /// `stored` one where this backend computes in it, else float32.
    ///
    /// # Errors
    /// [`BackendError::UnsupportedDtype`] if `requested` is not one of [`Backend::dtypes`].
    pub fn dtype_for(self, requested: Option<DType>, stored: DType) -> Result<DType, BackendError> {
        match requested {
            Some(dtype) if self.dtypes().contains(&dtype) => Ok(dtype),
            Some(dtype) => Err(BackendError::UnsupportedDtype {
                name: self.name(),
                dtype: dtype_name(dtype),
                supported: self
                    .dtypes()
                    .iter()
                    .map(|&d| dtype_name(d))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            None if self.dtypes().contains(&stored) => Ok(stored),
            None => Ok(DType::F32),
        }
    }

    /// Checks that one tensor of `bytes` fits in a single buffer of this backend. Only wgpu and
    /// vulkan cap buffers (by the adapter's storage-buffer limit: 128 MiB on lavapipe, less than
    /// GPT-2's 147 MiB token embedding); the CPU backends and CUDA are limited by memory alone.
    ///
    /// # Errors
    /// [`BackendError::TensorTooLarge`] with the tensor's and the adapter's sizes.
    pub fn check_fits(self, tensor: &str, bytes: u64) -> Result<(), BackendError> {
        let limit = match self {
            #[cfg(feature = "wgpu")]
            Backend::Wgpu | Backend::Vulkan => crate::vulkan::largest_buffer(),
            _ => None,
        };
        match limit {
            Some((limit, adapter)) if bytes > limit => Err(BackendError::TensorTooLarge {
                name: self.name(),
                tensor: tensor.to_string(),
                bytes,
                limit,
                adapter,
            }),
            _ => Ok(()),
        }
    }

    /// The GPU (or lavapipe) adapter a wgpu or vulkan device runs on; `None` for the others.
    pub fn adapter(self) -> Option<String> {
        match self {
            #[cfg(feature = "wgpu")]
            Backend::Wgpu | Backend::Vulkan => crate::vulkan::adapter_name(),
            _ => None,
        }
    }

    fn start_failed(self, reason: String) -> BackendError {
        BackendError::StartFailed {
            name: self.name(),
            reason,
        }
    }

    #[allow(deprecated)] // ndarray and tch are deprecated upstream; users asked for them
    fn compiled_device(self) -> Result<Device, BackendError> {
        match self {
            Backend::Flex => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            Backend::NdArray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => crate::vulkan::require_adapter(self.name()).map(Device::wgpu),
            #[cfg(feature = "vulkan")]
            Backend::Vulkan => crate::vulkan::require_adapter(self.name()).map(Device::vulkan),
            #[cfg(feature = "tch")]
            Backend::Tch => Ok(Device::libtorch()),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)] // reached only for backends not compiled in
            _ => unreachable!("device() checks is_compiled() first"),
        }
    }
}

fn names(backends: &[Backend]) -> String {
    backends
        .iter()
        .map(|b| b.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Backend {
    type Err = BackendError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let lower = name.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|b| b.name() == lower || (lower == "libtorch" && *b == Backend::Tch))
            .ok_or_else(|| BackendError::Unknown {
                name: name.to_string(),
                known: names(&Self::ALL),
            })
    }
}

/// The name `--dtype` takes for a float type.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        _ => "f32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for backend in Backend::ALL {
            assert_eq!(backend.name().parse::<Backend>(), Ok(backend));
        }
        assert_eq!("LibTorch".parse::<Backend>(), Ok(Backend::Tch));
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let err = "tpu".parse::<Backend>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown backend `tpu`: choose one of flex, ndarray, wgpu, vulkan, tch, cuda"
        );
    }

    #[test]
    fn flex_is_always_compiled_and_computes() {
        assert!(Backend::compiled().contains(&Backend::Flex));
        Backend::Flex.probe().unwrap();
    }

    #[test]
    fn dtype_is_the_asked_one_or_the_checkpoints_where_the_backend_has_it() {
        let flex = Backend::Flex;
        assert_eq!(flex.dtype_for(None, DType::BF16), Ok(DType::BF16));
        assert_eq!(
            flex.dtype_for(Some(DType::F32), DType::BF16),
            Ok(DType::F32)
        );
        assert_eq!(flex.dtype_for(None, DType::F64), Ok(DType::F32));
        let float32_only = Backend::ALL
            .into_iter()
            .find(|b| b.dtypes() == [DType::F32])
            .expect("a backend that computes in float32 only");
        assert_eq!(float32_only.dtype_for(None, DType::F16), Ok(DType::F32));
        let err = float32_only
            .dtype_for(Some(DType::BF16), DType::F32)
            .unwrap_err();
        assert!(
            matches!(err, BackendError::UnsupportedDtype { .. }),
            "{err}"
        );
        let message = err.to_string();
        for part in ["bf16", "f32", "--dtype", "flex"] {
            assert!(message.contains(part), "{message}");
        }
    }

    #[test]
    fn cpu_backends_take_any_tensor_size() {
        Backend::Flex.check_fits("wte.weight", 1 << 40).unwrap();
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn wgpu_refuses_a_tensor_larger_than_the_adapter_allows() {
        let err = Backend::Wgpu.check_fits("wte.weight", 1 << 40).unwrap_err();
        assert!(matches!(err, BackendError::TensorTooLarge { .. }), "{err}");
        assert!(
            err.to_string().contains("`wte.weight` needs 1048576 MiB"),
            "{err}"
        );
        Backend::Wgpu.check_fits("wte.weight", 1 << 20).unwrap();
    }

    #[test]
    fn a_backend_not_compiled_in_names_its_feature() {
        // cuda cannot be built on the machines this suite runs on, so it is never compiled in there.
        let Some(missing) = Backend::ALL.into_iter().find(|b| !b.is_compiled()) else {
            return;
        };
        let err = missing.device().unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&format!("--features {}", missing.feature())),
            "{message}"
        );
        assert!(message.contains("compiled: flex"), "{message}");
    }
}
