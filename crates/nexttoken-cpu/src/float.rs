//! The float types weights and activations are stored in.

use std::borrow::Cow;

use half::{bf16, f16};

use crate::arch::Load;
use crate::widen::widened;

/// A float type weights and activations may be stored in: float32, f16 or bf16. The kernels'
/// arithmetic is float32 whatever the storage, so a half-precision weight streams half the
/// bytes of a float32 one.
pub trait Float: Copy + Default + Send + Sync + Load {
    /// The value as float32, exactly; inlined into the kernels' loops, where it vectorizes.
    fn to_f32(self) -> f32;

    /// The float32 `value` rounded to this type, to nearest with ties to even, as `half`
    /// rounds (inlined into the narrowing loops' tails).
    fn from_f32(value: f32) -> Self;

    /// `values` as float32: themselves, or widened on every core.
    fn as_f32(values: &[Self]) -> Cow<'_, [f32]> {
        Cow::Owned(widened(values))
    }

    /// `values` themselves if they are bf16s, which some CPUs multiply in pairs.
    fn as_bf16(_values: &[Self]) -> Option<&[bf16]> {
        None
    }
}

impl Float for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline(always)]
    fn from_f32(value: f32) -> f32 {
        value
    }

    fn as_f32(values: &[f32]) -> Cow<'_, [f32]> {
        Cow::Borrowed(values)
    }
}

impl Float for bf16 {
    /// A bfloat16 is a float32's top half: widening is a shift.
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }

    #[inline(always)]
    fn from_f32(value: f32) -> bf16 {
        bf16::from_f32(value)
    }

    fn as_bf16(values: &[bf16]) -> Option<&[bf16]> {
        Some(values)
    }
}

impl Float for f16 {
    /// Branch-free, so it vectorizes (`half` converts one value at a time unless the build
    /// targets F16C), and without float32 subnormals, which are slow to compute with: a
    /// normal value's exponent is rebiased by adding 112 (127 - 15) to it, a subnormal one
    /// is its mantissa times 2^-24, infinities and NaNs get float32's all-ones exponent.
    #[inline(always)]
    fn to_f32(self) -> f32 {
        const TWO_POW_MINUS_24: f32 = 5.960_464_5e-8;
        let bits = u32::from(self.to_bits());
        let sign = (bits & 0x8000) << 16;
        let magnitude = bits & 0x7fff;
        let wide = if magnitude >= 0x7c00 {
            (magnitude << 13) | 0x7f80_0000
        } else if magnitude >= 0x0400 {
            (magnitude << 13) + (112 << 23)
        } else {
            (magnitude as f32 * TWO_POW_MINUS_24).to_bits()
        };
        f32::from_bits(wide | sign)
    }

    #[inline(always)]
    fn from_f32(value: f32) -> f16 {
        f16::from_f32(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// float32 passes through unchanged; only bf16 offers its values to the bf16-pair kernel
    /// (which CPUs without AVX-512 BF16 never reach, so the products' tests cannot see this).
    #[test]
    fn float32_is_itself_and_only_bf16_is_offered_as_bf16() {
        for value in [
            0.0f32,
            -1.5,
            3.25e-3,
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::INFINITY,
        ] {
            assert_eq!(<f32 as Float>::from_f32(value).to_bits(), value.to_bits());
            assert_eq!(Float::to_f32(value).to_bits(), value.to_bits());
        }
        let brains = [bf16::from_f32(1.5), bf16::from_f32(-2.0)];
        assert_eq!(<bf16 as Float>::as_bf16(&brains), Some(&brains[..]));
        assert!(<f32 as Float>::as_bf16(&[1.0]).is_none());
        assert!(<f16 as Float>::as_bf16(&[f16::ONE]).is_none());
    }
}
