//! Finding a Vulkan adapter before burn's wgpu runtime looks for one.
//!
//! Without a Vulkan driver wgpu falls back to OpenGL, where burn's matmul shaders fail to
//! validate and panic. Asking wgpu for Vulkan adapters first turns that into a clear error.

use burn::tensor::DeviceKind;
use wgpu::{Backends, DeviceType, Instance, InstanceDescriptor};

use crate::BackendError;

/// The device kind to ask burn for: the default (a real GPU when there is one), or the CPU
/// adapter when Mesa's lavapipe is the only Vulkan device.
pub(crate) fn require_adapter(name: &'static str) -> Result<DeviceKind, BackendError> {
    let instance = Instance::new(InstanceDescriptor {
        backends: Backends::VULKAN,
        ..InstanceDescriptor::new_without_display_handle()
    });
    let adapters = futures_lite::future::block_on(instance.enumerate_adapters(Backends::VULKAN));
    let types: Vec<DeviceType> = adapters.iter().map(|a| a.get_info().device_type).collect();
    if types.is_empty() {
        return Err(BackendError::NoVulkanAdapter { name });
    }
    if types.iter().all(|t| *t == DeviceType::Cpu) {
        Ok(DeviceKind::Cpu)
    } else {
        Ok(DeviceKind::DefaultDevice)
    }
}
