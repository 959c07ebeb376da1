//! Whether a model fits a WebGPU device: compiled on every target, so that it is tested.

use nexttoken_model::Gpt2Config;

/// Checks that `config`'s largest tensor fits in one buffer of a device whose largest buffer
/// takes `room` bytes: WebGPU binds each tensor as one storage buffer, so the device's limit is
/// the limit of one tensor, whatever the GPU's memory.
///
/// # Errors
/// The page's message, with both sizes and what to do.
pub(crate) fn check(config: &Gpt2Config, room: u64) -> Result<(), String> {
    let (tensor, bytes) = config.largest_tensor();
    if bytes <= room {
        return Ok(());
    }
    Err(format!(
        "this model's {tensor} takes {:.1} MiB, more than this WebGPU device's largest buffer \
         ({} MiB): run it on the CPU, or pick a smaller model",
        bytes as f64 / f64::from(1 << 20),
        room >> 20
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_needs_a_147_mib_buffer_for_its_token_embedding() {
        let gpt2 = Gpt2Config::gpt2();
        let message = check(&gpt2, 128 << 20).unwrap_err();
        assert_eq!(
            message,
            "this model's wte.weight takes 147.2 MiB, more than this WebGPU device's largest \
             buffer (128 MiB): run it on the CPU, or pick a smaller model"
        );
        // Chromium's SwiftShader adapter offers 1 GiB buffers.
        assert_eq!(check(&gpt2, 1 << 30), Ok(()));
        let exactly = gpt2.largest_tensor().1;
        assert_eq!(check(&gpt2, exactly), Ok(()));
        assert!(check(&gpt2, exactly - 1).is_err());
    }
}
