//! The kernels on AVX2 with FMA and F16C, 8 lanes a register (F16C widens f16 weights): as
//! [`avx512`](super::avx512)'s, and narrowing, which is bound by memory on AVX-512 CPUs too.

use std::arch::x86_64::{__m256, _mm256_loadu_ps};

use super::{dots_by, tiled_dots_by, widen_by};
use crate::Float;

#[target_feature(enable = "avx2,fma,f16c")]
pub fn widen<W: Float>(wide: &mut [f32], values: &[W]) {
    // SAFETY: AVX2 and F16C (this function's).
    unsafe { widen_by::<__m256, W>(wide, values) }
}

/// [`crate::widen::narrow`] 8 values at a time (on AVX-512 too: it is bound by memory).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn narrow<W: Float>(narrow: &mut [W], wide: &[f32]) {
    let mut narrow = narrow.chunks_exact_mut(8);
    let mut wide = wide.chunks_exact(8);
    for (narrow, wide) in (&mut narrow).zip(&mut wide) {
        // SAFETY: AVX2 and F16C (this function's); both hold 8 values.
        unsafe { W::store8(narrow.as_mut_ptr(), _mm256_loadu_ps(wide.as_ptr())) }
    }
    for (narrow, wide) in narrow.into_remainder().iter_mut().zip(wide.remainder()) {
        *narrow = W::from_f32(*wide);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub fn dots<X: Float, W: Float>(out: &mut [f32], x: &[X], rows: &[W], c: usize) {
    // SAFETY: AVX2, FMA and F16C (this function's).
    unsafe { dots_by::<__m256, X, W>(out, x, rows, c) }
}

/// # Safety
/// As [`tiled_dots_by`]'s, less the instructions.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tiled_dots<W: Float>(
    out: *mut f32,
    row_stride: usize,
    x: &[f32],
    rows: &[W],
    c: usize,
) {
    // SAFETY: AVX2, FMA and F16C (this function's); the rest is the caller's promise.
    unsafe { tiled_dots_by::<__m256, W>(out, row_stride, x, rows, c) }
}
