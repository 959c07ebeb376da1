//! Mapping `--backend` names to burn devices.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// Every backend nexttoken knows, with the cargo feature that compiles it in.
const KNOWN: [&str; 6] = ["flex", "ndarray", "wgpu", "vulkan", "tch", "cuda"];

/// The backends compiled into this binary.
pub fn compiled() -> Vec<&'static str> {
    vec!["flex"]
}

/// The device for a `--backend` name.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "flex" => Ok(Device::flex()),
        other if KNOWN.contains(&other) => bail!(
            "backend `{other}` is not compiled into this binary (compiled: {}); \
             rebuild with `--features {other}`",
            compiled().join(", ")
        ),
        other => bail!(
            "unknown backend `{other}`: choose one of {}",
            KNOWN.join(", ")
        ),
    }
}
