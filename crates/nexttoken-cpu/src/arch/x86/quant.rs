//! Dot products over Q8_0 and Q4_0 blocks on AVX2, as ggml-cpu's x86 `ggml_vec_dot_q8_0_q8_0`
//! and `ggml_vec_dot_q4_0_q8_0` compute them: a block's 32 byte products summed exactly in 32-bit
//! integers (`vpmaddubsw` on the weights' magnitudes and the activations signed by them, then
//! `vpmaddwd`), its 8 lane sums converted to float32 and multiplied by both scales into 8
//! running sums. The same integers as the portable loops; only the final float sums' order
//! differs.
//!
//! AVX-512 CPUs run these too; their VNNI `vpdpbusd` would fuse the two integer steps.

use std::arch::x86_64::{
    __m128i, __m256, __m256i, _mm_add_ps, _mm_cvtss_f32, _mm_loadu_si128, _mm_movehdup_ps,
    _mm_movehl_ps, _mm_srli_epi16, _mm256_and_si256, _mm256_castps256_ps128,
    _mm256_castsi128_si256, _mm256_cvtepi32_ps, _mm256_extractf128_ps, _mm256_fmadd_ps,
    _mm256_inserti128_si256, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_maddubs_epi16,
    _mm256_set1_epi8, _mm256_set1_epi16, _mm256_set1_ps, _mm256_setzero_ps, _mm256_sign_epi8,
    _mm256_sub_epi8,
};

use crate::quant::{BlockQ4_0, BlockQ8_0};

/// The 8 lane sums of `x[i] · y[i]` over 32 signed bytes, as float32s. `vpmaddubsw` multiplies
/// unsigned by signed bytes, so `x`'s magnitudes meet `y` with `x`'s signs moved onto it; a
/// pair's sum stays below 2 × 128 × 127 and cannot saturate (no quantizer here writes -128).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn products_of_bytes(x: __m256i, y: __m256i) -> __m256 {
    let magnitudes = _mm256_sign_epi8(x, x);
    let signed = _mm256_sign_epi8(y, x);
    let pairs = _mm256_maddubs_epi16(magnitudes, signed);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn sum_lanes(sums: __m256) -> f32 {
    let halves = _mm_add_ps(
        _mm256_castps256_ps128(sums),
        _mm256_extractf128_ps::<1>(sums),
    );
    let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    _mm_cvtss_f32(_mm_add_ps(pairs, _mm_movehdup_ps(pairs)))
}

/// The scales' product for one block pair, in every lane.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn scales(w: half::f16, x: half::f16) -> __m256 {
    _mm256_set1_ps(w.to_f32() * x.to_f32())
}

#[target_feature(enable = "avx2,fma")]
pub fn dot_q8_0(weights: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    let mut sums = _mm256_setzero_ps();
    for (w, x) in weights.iter().zip(x) {
        // SAFETY: each block holds 32 quants; no alignment is needed.
        let (wq, xq) = unsafe {
            (
                _mm256_loadu_si256(w.quants.as_ptr().cast()),
                _mm256_loadu_si256(x.quants.as_ptr().cast()),
            )
        };
        sums = _mm256_fmadd_ps(scales(w.scale, x.scale), products_of_bytes(wq, xq), sums);
    }
    sum_lanes(sums)
}

/// A Q4_0 block's 32 nibbles as signed bytes in value order: the low nibbles (values 0-15) in
/// the low 16 lanes, the high ones (16-31) above them, less 8.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn bytes_of_nibbles(block: &BlockQ4_0) -> __m256i {
    // SAFETY: a block holds 16 bytes of nibbles; no alignment is needed.
    let packed: __m128i = unsafe { _mm_loadu_si128(block.nibbles.as_ptr().cast()) };
    let both =
        _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(packed), _mm_srli_epi16::<4>(packed));
    let nibbles = _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
    _mm256_sub_epi8(nibbles, _mm256_set1_epi8(8))
}

#[target_feature(enable = "avx2,fma")]
pub fn dot_q4_0(weights: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    let mut sums = _mm256_setzero_ps();
    for (w, x) in weights.iter().zip(x) {
        // SAFETY: a block holds 32 quants; no alignment is needed.
        let xq = unsafe { _mm256_loadu_si256(x.quants.as_ptr().cast()) };
        let wq = bytes_of_nibbles(w);
        sums = _mm256_fmadd_ps(scales(w.scale, x.scale), products_of_bytes(wq, xq), sums);
    }
    sum_lanes(sums)
}
