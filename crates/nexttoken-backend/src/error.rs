/// Why a backend cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("unknown backend `{name}`: choose one of {known}")]
    Unknown { name: String, known: String },

    #[error(
        "backend `{name}` is not compiled into this build (compiled: {compiled}); \
         rebuild with `--features {feature}`"
    )]
    NotCompiled {
        name: &'static str,
        compiled: String,
        feature: &'static str,
    },

    #[error(
        "backend `{name}` found no Vulkan adapter: install a Vulkan driver (a GPU's, or Mesa's \
         CPU driver lavapipe: `apt-get install mesa-vulkan-drivers` on Debian/Ubuntu), or use \
         `--backend flex`"
    )]
    NoVulkanAdapter { name: &'static str },

    #[error(
        "backend `{name}` cannot hold the model: `{tensor}` needs {} MiB but the adapter \
         ({adapter}) allows at most {} MiB per buffer{}",
        bytes >> 20,
        limit >> 20,
        if adapter.contains("llvmpipe") {
            "; lavapipe is Mesa's CPU driver: on this machine use `--backend flex` (or tch), or run wgpu on a GPU"
        } else {
            ": use a device with more memory, or `--backend flex`"
        }
    )]
    TensorTooLarge {
        name: &'static str,
        tensor: String,
        bytes: u64,
        limit: u64,
        adapter: String,
    },

    #[error(
        "backend `{name}` does not compute in {dtype} (it does: {supported}): choose one of \
         those with --dtype, or a backend that computes in {dtype} (flex does)"
    )]
    UnsupportedDtype {
        name: &'static str,
        dtype: &'static str,
        supported: String,
    },

    #[error("cannot set the number of CPU threads: {reason}")]
    Threads { reason: String },

    #[error("backend `{name}` failed to start: {reason}")]
    StartFailed { name: &'static str, reason: String },
}
