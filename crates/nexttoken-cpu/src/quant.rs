//! 8- and 4-bit weights in llama.cpp's blocks, bit for bit as its GGUF files hold them, and the
//! products over them.
//!
//! - [`BlockQ8_0`]: 32 signed bytes and one f16 scale (34 bytes, 8.5 bits a weight);
//! - [`BlockQ4_0`]: 32 four-bit values offset by 8 and one f16 scale (18 bytes, 4.5 bits).
//!
//! [`quantize_q8_0`] and [`quantize_q4_0`] round as llama.cpp's reference quantizers
//! (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref` in `ggml-quants.c`), which are what
//! `llama-quantize` and the `gguf` Python package's converter use, so a checkpoint quantized here
//! has the bytes of the same checkpoint quantized by them.
//!
//! A product quantizes its activations to Q8_0 blocks first ([`quantize_activations`]) and sums
//! each block pair in integers, scaled once per block, as ggml-cpu's `ggml_vec_dot_q8_0_q8_0`
//! and `ggml_vec_dot_q4_0_q8_0` do: a decode step reads 1.06 (Q8_0) or 0.56 (Q4_0) bytes a
//! weight instead of 2 or 4.
//!
//! ```
//! use nexttoken_cpu::quant::{BlockQ8_0, dequantize, quantize_q8_0};
//!
//! let weights: Vec<f32> = (0..64).map(|i| i as f32 / 8.0 - 4.0).collect();
//! let blocks: Vec<BlockQ8_0> = quantize_q8_0(&weights);
//! assert_eq!(blocks.len(), 2);
//! let mut back = vec![0.0; 64];
//! dequantize(&blocks, &mut back);
//! assert!(back.iter().zip(&weights).all(|(b, w)| (b - w).abs() < 0.02));
//! ```

mod interleaved;
mod widened;

use half::f16;

use crate::arch::portable;
#[cfg(target_arch = "x86_64")]
use crate::arch::x86;
use crate::arch::{Level, level};
pub use interleaved::{BlockQ4_0x8, BlockQ8_0x8, GROUP_ROWS, Interleave, Interleaved};
use sealed::Sealed;
pub use widened::WidenedFormat;

/// Values in a block, for every block type here (llama.cpp's `QK8_0` and `QK4_0`).
pub const BLOCK_VALUES: usize = 32;

/// llama.cpp's `block_q8_0`: `value[i] = scale × quants[i]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8_0 {
    pub scale: f16,
    pub quants: [i8; BLOCK_VALUES],
}

/// llama.cpp's `block_q4_0`: `value[i] = scale × (nibble[i] - 8)`, values 0–15 in the low
/// nibbles of `nibbles` and 16–31 in the high ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ4_0 {
    pub scale: f16,
    pub nibbles: [u8; BLOCK_VALUES / 2],
}

/// A block of quantized weights: what the products need of [`BlockQ8_0`] and [`BlockQ4_0`].
pub trait Block: Copy + Send + Sync + sealed::Sealed + 'static {
    /// llama.cpp's name of the type (`q8_0`).
    const NAME: &'static str;

    /// The block's 32 values as float32.
    fn dequantize_into(&self, out: &mut [f32; BLOCK_VALUES]);

    /// `Σ self[i] · x[i]` over blocks: integer products summed per block, each block's sum
    /// scaled by both scales, on the widest instructions this CPU has.
    fn dot(weights: &[Self], x: &[BlockQ8_0]) -> f32;

    /// The blocks in `bytes`, as a GGUF file lays them out, or `None` if `bytes` is not a whole
    /// number of blocks or not 2-byte aligned (a GGUF's tensors are 32-byte aligned).
    fn from_bytes(bytes: &[u8]) -> Option<&[Self]> {
        let size = std::mem::size_of::<Self>();
        let aligned = bytes.as_ptr().align_offset(std::mem::align_of::<Self>()) == 0;
        if !aligned || !bytes.len().is_multiple_of(size) {
            return None;
        }
        // SAFETY: the blocks are `repr(C)` of an `f16` (any bits) and bytes (any bits), with
        // no padding (34 and 18 bytes at an alignment of 2); the pointer is aligned and the
        // length a whole number of blocks.
        Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len() / size) })
    }

    /// The blocks' bytes, as a GGUF file holds them.
    fn as_bytes(blocks: &[Self]) -> &[u8] {
        // SAFETY: as in `from_bytes`: no padding, every byte initialised.
        unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), std::mem::size_of_val(blocks)) }
    }

    /// The blocks' bytes, to be written: any bytes make valid blocks.
    fn as_bytes_mut(blocks: &mut [Self]) -> &mut [u8] {
        // SAFETY: as in `from_bytes`: no padding, and every bit pattern is a valid block.
        unsafe {
            std::slice::from_raw_parts_mut(
                blocks.as_mut_ptr().cast(),
                std::mem::size_of_val(blocks),
            )
        }
    }
}

mod sealed {
    use super::{BlockQ4_0, BlockQ8_0, portable};

    /// The kernels of each block type, closed to other types.
    pub trait Sealed: Sized {
        /// [`Block::dot`](super::Block::dot) in plain loops: for CPUs without a module of
        /// their own, and the reference the vector kernels are tested against.
        fn portable_dot(weights: &[Self], x: &[BlockQ8_0]) -> f32;
    }

    impl Sealed for BlockQ8_0 {
        fn portable_dot(weights: &[Self], x: &[BlockQ8_0]) -> f32 {
            portable::dot_q8_0(weights, x)
        }
    }

    impl Sealed for BlockQ4_0 {
        fn portable_dot(weights: &[Self], x: &[BlockQ8_0]) -> f32 {
            portable::dot_q4_0(weights, x)
        }
    }
}

impl Block for BlockQ8_0 {
    const NAME: &'static str = "q8_0";

    fn dequantize_into(&self, out: &mut [f32; BLOCK_VALUES]) {
        let scale = self.scale.to_f32();
        for (out, &quant) in out.iter_mut().zip(&self.quants) {
            *out = f32::from(quant) * scale;
        }
    }

    fn dot(weights: &[Self], x: &[BlockQ8_0]) -> f32 {
        match level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2, FMA and F16C were detected (every AVX-512 CPU has them too).
            Level::Avx512 | Level::Avx2Fma => unsafe { x86::quant::dot_q8_0(weights, x) },
            Level::Baseline => Self::portable_dot(weights, x),
        }
    }
}

impl Block for BlockQ4_0 {
    const NAME: &'static str = "q4_0";

    fn dequantize_into(&self, out: &mut [f32; BLOCK_VALUES]) {
        let scale = self.scale.to_f32();
        let (low, high) = out.split_at_mut(BLOCK_VALUES / 2);
        for ((low, high), &pair) in low.iter_mut().zip(high).zip(&self.nibbles) {
            *low = f32::from(i16::from(pair & 0x0f) - 8) * scale;
            *high = f32::from(i16::from(pair >> 4) - 8) * scale;
        }
    }

    fn dot(weights: &[Self], x: &[BlockQ8_0]) -> f32 {
        match level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2, FMA and F16C were detected (every AVX-512 CPU has them too).
            Level::Avx512 | Level::Avx2Fma => unsafe { x86::quant::dot_q4_0(weights, x) },
            Level::Baseline => Self::portable_dot(weights, x),
        }
    }
}

/// `values` (a whole number of blocks) in Q8_0, rounded as llama.cpp's `quantize_row_q8_0_ref`:
/// the scale is the block's largest magnitude / 127, each value `round(value / scale)` with
/// halves away from zero.
///
/// # Panics
/// If `values.len()` is not a multiple of [`BLOCK_VALUES`].
pub fn quantize_q8_0(values: &[f32]) -> Vec<BlockQ8_0> {
    assert_eq!(values.len() % BLOCK_VALUES, 0, "{} values", values.len());
    values
        .chunks_exact(BLOCK_VALUES)
        .map(|values| {
            let largest = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = largest / 127.0;
            let inverse = if scale == 0.0 { 0.0 } else { 1.0 / scale };
            BlockQ8_0 {
                scale: f16::from_f32(scale),
                quants: std::array::from_fn(|i| (values[i] * inverse).round() as i8),
            }
        })
        .collect()
}

/// `values` (a whole number of blocks) in Q4_0, rounded as llama.cpp's `quantize_row_q4_0_ref`:
/// the scale is the value of largest magnitude / -8 (so it maps to nibble 0 exactly), each
/// value's nibble `min(15, trunc(value / scale + 8.5))`.
///
/// # Panics
/// If `values.len()` is not a multiple of [`BLOCK_VALUES`].
pub fn quantize_q4_0(values: &[f32]) -> Vec<BlockQ4_0> {
    assert_eq!(values.len() % BLOCK_VALUES, 0, "{} values", values.len());
    values
        .chunks_exact(BLOCK_VALUES)
        .map(|values| {
            // The first value of the largest magnitude, with its sign, as the reference finds it.
            let mut largest = 0.0f32;
            let mut signed = 0.0f32;
            for &value in values {
                if largest < value.abs() {
                    largest = value.abs();
                    signed = value;
                }
            }
            let scale = signed / -8.0;
            let inverse = if scale == 0.0 { 0.0 } else { 1.0 / scale };
            let nibble = |value: f32| ((value * inverse + 8.5) as i8).min(15) as u8;
            BlockQ4_0 {
                scale: f16::from_f32(scale),
                nibbles: std::array::from_fn(|i| {
                    nibble(values[i]) | (nibble(values[i + BLOCK_VALUES / 2]) << 4)
                }),
            }
        })
        .collect()
}

/// A row of activations in Q8_0 for a product, as ggml-cpu quantizes them on x86 (its
/// `quantize_row_q8_0`): the inverse scale is 127 / the largest magnitude and halves round to
/// even, where the weights' reference quantizer divides 1 by the scale and rounds halves away
/// from zero. The two differ only in a value's last rounding.
///
/// # Panics
/// If `values.len()` is not a multiple of [`BLOCK_VALUES`].
pub fn quantize_activations(values: &[f32], out: &mut Vec<BlockQ8_0>) {
    assert_eq!(values.len() % BLOCK_VALUES, 0, "{} values", values.len());
    out.clear();
    out.extend(values.chunks_exact(BLOCK_VALUES).map(|values| {
        let largest = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let inverse = if largest == 0.0 { 0.0 } else { 127.0 / largest };
        BlockQ8_0 {
            scale: f16::from_f32(largest / 127.0),
            quants: std::array::from_fn(|i| round_small_to_even(values[i] * inverse) as i8),
        }
    }));
}

/// `value` rounded to the nearest integer, halves to even, for `|value| < 2^22` (a quantized
/// activation is at most 127): adding 1.5 × 2^23 leaves no bits below the units, and the
/// addition rounds as IEEE does, to even. `f32::round_ties_even` is a call to libm's `rintf`
/// where the build's baseline has no SSE4.1 `roundps`: 3% of a 4-bit decode step.
fn round_small_to_even(value: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (value + SHIFT) - SHIFT
}

/// `blocks` as float32 values into `out` (32 a block).
///
/// # Panics
/// If `out` does not hold exactly 32 values a block.
pub fn dequantize<B: Block>(blocks: &[B], out: &mut [f32]) {
    assert_eq!(out.len(), blocks.len() * BLOCK_VALUES);
    for (block, out) in blocks.iter().zip(out.chunks_exact_mut(BLOCK_VALUES)) {
        let out: &mut [f32; BLOCK_VALUES] = out.try_into().expect("chunks of 32");
        block.dequantize_into(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of every magnitude, ties at halves of the scale, zeros and a block of zeros.
    pub(super) fn awkward_values(blocks: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut values: Vec<f32> = (0..blocks * BLOCK_VALUES)
            .map(|i| match i % 7 {
                0 => 0.0,
                1 => (next() % 255) as f32 - 127.0, // integers: exact ties after scaling
                _ => ((next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * 3.0,
            })
            .collect();
        values[..BLOCK_VALUES].fill(0.0);
        values
    }

    /// The reference's arithmetic written out value by value, as `ggml-quants.c` has it.
    #[test]
    fn q8_0_quantizes_as_llama_cpp_s_reference() {
        let values = [
            0.5, -0.5, 1.5, 2.5, -2.5, 127.0, -63.5, 0.0, 3.25, -1.0, 0.75, 0.25, -0.25, 100.0,
            -100.0, 63.5, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, -0.1, -0.2, -0.3, -0.4, -0.6,
            -0.7, -0.8, -0.9,
        ];
        let [block] = quantize_q8_0(&values)[..] else {
            panic!("one block")
        };
        // Largest magnitude 127: scale 1, so each value rounds alone, halves away from zero.
        assert_eq!(block.scale, f16::ONE);
        assert_eq!(
            block.quants,
            [
                1, -1, 2, 3, -3, 127, -64, 0, 3, -1, 1, 0, 0, 100, -100, 64, 0, 0, 0, 0, 1, 1, 1,
                1, 0, 0, 0, 0, -1, -1, -1, -1
            ]
        );
        assert_eq!(quantize_q8_0(&[0.0; 32]), [BlockQ8_0::default()]);
    }

    #[test]
    fn q4_0_quantizes_as_llama_cpp_s_reference() {
        let mut values = [0.0f32; 32];
        values[3] = -8.0; // the largest magnitude, negative: scale 1, nibble 0
        values[4] = 8.0; // the same magnitude later: not the one the scale comes from
        values[5] = 7.4;
        values[16] = -0.5; // -0.5 + 8.5 = 8 exactly
        values[17] = 0.49;
        values[31] = -7.6;
        let [block] = quantize_q4_0(&values)[..] else {
            panic!("one block")
        };
        assert_eq!(block.scale, f16::ONE);
        let nibbles: Vec<(u8, u8)> = block.nibbles.iter().map(|b| (b & 15, b >> 4)).collect();
        // value / 1 + 8.5, truncated, at most 15.
        assert_eq!(nibbles[3].0, 0);
        assert_eq!(nibbles[4].0, 15, "8 + 8.5 = 16.5 is clamped");
        assert_eq!(nibbles[5].0, 15);
        assert_eq!(nibbles[0].1, 8);
        assert_eq!(nibbles[1].1, 8);
        assert_eq!(nibbles[15].1, 0, "-7.6 + 8.5 = 0.9");
        assert_eq!(nibbles[6], (8, 8));
        // A positive largest magnitude gives a negative scale.
        let [block] = quantize_q4_0(&[2.0; 32])[..] else {
            panic!("one block")
        };
        assert_eq!(block.scale.to_f32(), -0.25);
        assert!(block.nibbles.iter().all(|&b| b == 0));
    }

    #[test]
    fn blocks_round_trip_within_half_a_step() {
        let values = awkward_values(9, 1);
        let mut back = vec![0.0; values.len()];
        let q8 = quantize_q8_0(&values);
        dequantize(&q8, &mut back);
        for ((block, values), back) in q8
            .iter()
            .zip(values.chunks_exact(32))
            .zip(back.chunks_exact(32))
        {
            let step = block.scale.to_f32();
            for (v, b) in values.iter().zip(back) {
                // Half a step of rounding, and the scale's own f16 rounding over 127 steps.
                assert!((v - b).abs() <= step * 0.5 + v.abs() * 1e-3, "{v} -> {b}");
            }
        }
        let q4 = quantize_q4_0(&values);
        dequantize(&q4, &mut back);
        for ((block, values), back) in q4
            .iter()
            .zip(values.chunks_exact(32))
            .zip(back.chunks_exact(32))
        {
            let step = block.scale.to_f32().abs();
            for (v, b) in values.iter().zip(back) {
                // The top value clamps to 7 steps where it would be 8.
                assert!((v - b).abs() <= step * 1.0 + v.abs() * 1e-3, "{v} -> {b}");
            }
        }
    }

    #[test]
    fn blocks_are_the_bytes_of_a_gguf_file() {
        assert_eq!(std::mem::size_of::<BlockQ8_0>(), 34);
        assert_eq!(std::mem::size_of::<BlockQ4_0>(), 18);
        let q8 = quantize_q8_0(&awkward_values(3, 2));
        let bytes = BlockQ8_0::as_bytes(&q8);
        assert_eq!(bytes.len(), 3 * 34);
        assert_eq!(&bytes[..2], q8[0].scale.to_le_bytes());
        assert_eq!(bytes[34 + 2 + 5] as i8, q8[1].quants[5]);
        assert_eq!(BlockQ8_0::from_bytes(bytes), Some(&q8[..]));
        assert_eq!(BlockQ8_0::from_bytes(&bytes[..33]), None);
        // An odd address cannot hold f16 scales.
        let mut shifted = vec![0u8; bytes.len() + 1];
        let odd = usize::from(shifted.as_ptr().align_offset(2) == 0);
        shifted[odd..odd + bytes.len()].copy_from_slice(bytes);
        assert_eq!(
            BlockQ8_0::from_bytes(&shifted[odd..odd + bytes.len()]),
            None
        );
    }

    /// Bytes written through `as_bytes_mut` are the blocks a GGUF file's bytes make.
    #[test]
    fn blocks_are_filled_from_a_file_s_bytes() {
        let q4 = quantize_q4_0(&awkward_values(2, 9));
        let mut copied = vec![BlockQ4_0::default(); 2];
        BlockQ4_0::as_bytes_mut(&mut copied).copy_from_slice(BlockQ4_0::as_bytes(&q4));
        assert_eq!(copied, q4);
        assert_eq!(BlockQ4_0::as_bytes_mut(&mut copied).len(), 36);
    }

    /// The reference dot product: each block's integer sum, scaled, summed in order.
    fn reference_dot<B: Block>(w: &[B], x: &[BlockQ8_0]) -> f64 {
        let mut wide_w = [0.0; 32];
        let mut wide_x = [0.0; 32];
        w.iter()
            .zip(x)
            .map(|(w, x)| {
                w.dequantize_into(&mut wide_w);
                x.dequantize_into(&mut wide_x);
                wide_w
                    .iter()
                    .zip(&wide_x)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum::<f64>()
            })
            .sum()
    }

    fn dots_match_the_reference_at_every_level<B: Block>(quantize: fn(&[f32]) -> Vec<B>) {
        // GPT-2's widths (768, 3072) and short rows of one to three blocks.
        for (blocks, seed) in [(1, 3), (2, 4), (3, 5), (24, 6), (96, 7)] {
            let w = quantize(&awkward_values(blocks, seed));
            let mut x = Vec::new();
            quantize_activations(&awkward_values(blocks, seed + 100), &mut x);
            let expected = reference_dot(&w, &x);
            let magnitude: f64 = {
                let mut wide_w = vec![0.0; blocks * 32];
                let mut wide_x = vec![0.0; blocks * 32];
                dequantize(&w, &mut wide_w);
                dequantize(&x, &mut wide_x);
                wide_w
                    .iter()
                    .zip(&wide_x)
                    .map(|(a, b)| f64::from((a * b).abs()))
                    .sum()
            };
            let portable = B::portable_dot(&w, &x);
            let dispatched = B::dot(&w, &x);
            for (name, got) in [("portable", portable), ("dispatched", dispatched)] {
                // Exact integer sums; only the float sum of the scaled blocks rounds.
                assert!(
                    (f64::from(got) - expected).abs() <= magnitude * 1e-6,
                    "{} {name}, {blocks} blocks: {got} vs {expected}",
                    B::NAME
                );
            }
        }
    }

    #[test]
    fn q8_0_dots_match_the_reference_at_every_level() {
        dots_match_the_reference_at_every_level(quantize_q8_0);
    }

    #[test]
    fn q4_0_dots_match_the_reference_at_every_level() {
        dots_match_the_reference_at_every_level(quantize_q4_0);
    }

    #[test]
    fn small_values_round_to_even_as_the_standard_library_does() {
        let quarters = (-600..=600).map(|i| i as f32 / 4.0);
        let awkward = awkward_values(8, 99).into_iter().map(|v| v * 42.0);
        let edges = [
            127.49999, 127.5, -127.5, 0.49999997, -0.5, 1.5, 2.5, -2.5, 0.0, -0.0,
        ];
        for value in quarters.chain(awkward).chain(edges) {
            assert_eq!(
                round_small_to_even(value),
                value.round_ties_even(),
                "{value}"
            );
        }
    }

    #[test]
    fn activations_round_halves_to_even_with_ggml_cpu_s_inverse() {
        let mut values = [0.0f32; 32];
        values[0] = 127.0;
        values[1] = 2.5;
        values[2] = -3.5;
        values[3] = 0.5;
        let mut out = Vec::new();
        quantize_activations(&values, &mut out);
        assert_eq!(out[0].scale, f16::ONE);
        assert_eq!(&out[0].quants[..5], [127, 2, -4, 0, 0]);
        // The weights' quantizer rounds the same halves away from zero.
        assert_eq!(&quantize_q8_0(&values)[0].quants[..5], [127, 3, -4, 1, 0]);
    }
}
