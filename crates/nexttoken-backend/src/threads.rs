use crate::{Backend, BackendError};

/// Sets how many CPU threads the CPU backends use for their kernels, for the rest of the
/// process: flex and ndarray run on rayon's global pool, tch on libtorch's intra-op pool.
/// Without a call each keeps its default (rayon: every logical CPU; libtorch: the physical
/// cores). GPU backends are not affected.
///
/// Call it before the first tensor operation: rayon's pool can only be sized once.
///
/// # Errors
/// [`BackendError::Threads`] if `threads` is 0 or rayon's pool has already started.
pub fn set_cpu_threads(threads: usize) -> Result<(), BackendError> {
    nexttoken_cpu::set_threads(threads).map_err(|e| BackendError::Threads {
        reason: e.to_string(),
    })?;
    #[cfg(feature = "tch")]
    tch::set_num_threads(threads as i32);
    Ok(())
}

impl Backend {
    /// The number of CPU threads this backend's kernels use now; `None` for GPU backends, whose
    /// work runs on the device.
    pub fn cpu_threads(self) -> Option<usize> {
        match self {
            Backend::Flex | Backend::NdArray => Some(rayon::current_num_threads()),
            #[cfg(feature = "tch")]
            Backend::Tch => usize::try_from(tch::get_num_threads()).ok(),
            _ => None,
        }
    }
}
