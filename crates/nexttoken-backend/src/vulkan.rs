//! Looking at the Vulkan adapters before burn's wgpu runtime does.
//!
//! Without a Vulkan driver wgpu falls back to OpenGL, where burn's matmul shaders fail to
//! validate and panic; a tensor larger than the adapter's largest storage buffer fails deep in
//! the runtime. Asking wgpu first turns both into clear errors.

use burn::tensor::DeviceKind;
use wgpu::{Adapter, Backends, DeviceType, Instance, InstanceDescriptor};

use crate::BackendError;

/// The Vulkan adapters burn would choose from: the GPUs, or the CPU (lavapipe) if there are
/// none.
fn candidates() -> Vec<Adapter> {
    let instance = Instance::new(InstanceDescriptor {
        backends: Backends::VULKAN,
        ..InstanceDescriptor::new_without_display_handle()
    });
    let adapters = futures_lite::future::block_on(instance.enumerate_adapters(Backends::VULKAN));
    let is_cpu = |a: &Adapter| a.get_info().device_type == DeviceType::Cpu;
    if adapters.iter().all(is_cpu) {
        adapters
    } else {
        adapters.into_iter().filter(|a| !is_cpu(a)).collect()
    }
}

/// The device kind to ask burn for: the default (a real GPU when there is one), or the CPU
/// adapter when Mesa's lavapipe is the only Vulkan device.
pub(crate) fn require_adapter(name: &'static str) -> Result<DeviceKind, BackendError> {
    keep_kernel_caches_in_the_user_cache();
    let adapters = candidates();
    match adapters.first() {
        None => Err(BackendError::NoVulkanAdapter { name }),
        Some(a) if a.get_info().device_type == DeviceType::Cpu => Ok(DeviceKind::Cpu),
        Some(_) => Ok(DeviceKind::DefaultDevice),
    }
}

/// The largest buffer one tensor may occupy, and the adapter's name, on the adapter with the
/// most room.
pub(crate) fn largest_buffer() -> Option<(u64, String)> {
    candidates()
        .iter()
        .map(|a| {
            let limits = a.limits();
            let bytes = limits
                .max_storage_buffer_binding_size
                .min(limits.max_buffer_size);
            (bytes, a.get_info().name)
        })
        .max_by_key(|(bytes, _)| *bytes)
}

/// The name of the adapter burn will run on (see [`candidates`]).
pub(crate) fn adapter_name() -> Option<String> {
    candidates().first().map(|a| a.get_info().name)
}

/// Puts cubecl's autotune results (and, with SPIR-V, its compiled kernels) in the user's cache
/// directory (`~/.cache/cubecl` on Linux) so that every run reuses them, wherever it starts.
/// cubecl's default is the `target/` folder of the outermost Cargo workspace above the current
/// directory: an installed `nexttoken` started inside any Rust project would write there, and
/// one started elsewhere would keep a separate cache. A `cubecl.toml` or `burn.toml` that sets
/// another place, and `CUBECL_*` variables, still decide; nothing changes once cubecl has read
/// its configuration.
fn keep_kernel_caches_in_the_user_cache() {
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};

    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if matches!(config.environment.path, CacheConfig::Target) {
        config.environment.path = CacheConfig::Global;
    }
    config.compilation.cache = true;
    CubeClRuntimeConfig::try_set(config);
}
