//! The kernels on AVX-512F, 16 lanes a register: one load widens 16 weights of any of the float
//! types ([`Load::load16`](super::Load::load16)), which LLVM does not find for f16 (there is no
//! stable `f16` type), and the dot products keep four running sums and reduce them in
//! registers.

use std::arch::x86_64::{
    __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_storeu_ps,
};

use super::{dots_by, tiled_dots_by, widen_by};
use crate::Float;

const LANES: usize = 16;

#[target_feature(enable = "avx512f")]
pub fn rows_times_block<W: Float>(partial: &mut [f32], x: &[f32], rows: &[W], n: usize) {
    let taken = rows.len() / n;
    let body = n / LANES * LANES;
    for (i, w_row) in rows.chunks_exact(n).enumerate() {
        for (out, x_row) in partial.chunks_exact_mut(n).zip(x.chunks_exact(taken)) {
            let a = _mm512_set1_ps(x_row[i]);
            let (out_body, out_tail) = out.split_at_mut(body);
            for (out, w) in out_body
                .chunks_exact_mut(LANES)
                .zip(w_row.chunks_exact(LANES))
            {
                // SAFETY: AVX-512F (this function's); `out` and `w` hold 16 values.
                unsafe {
                    let sum =
                        _mm512_fmadd_ps(a, W::load16(w.as_ptr()), _mm512_loadu_ps(out.as_ptr()));
                    _mm512_storeu_ps(out.as_mut_ptr(), sum);
                }
            }
            for (out, w) in out_tail.iter_mut().zip(&w_row[body..]) {
                *out = x_row[i].mul_add(w.to_f32(), *out);
            }
        }
    }
}

#[target_feature(enable = "avx512f")]
pub fn widen<W: Float>(wide: &mut [f32], values: &[W]) {
    // SAFETY: AVX-512F (this function's).
    unsafe { widen_by::<__m512, W>(wide, values) }
}

#[target_feature(enable = "avx512f")]
pub fn dots<X: Float, W: Float>(out: &mut [f32], x: &[X], rows: &[W], c: usize) {
    // SAFETY: AVX-512F (this function's).
    unsafe { dots_by::<__m512, X, W>(out, x, rows, c) }
}

/// # Safety
/// As [`tiled_dots_by`]'s, less the instructions.
#[target_feature(enable = "avx512f")]
pub unsafe fn tiled_dots<W: Float>(
    out: *mut f32,
    row_stride: usize,
    x: &[f32],
    rows: &[W],
    c: usize,
) {
    // SAFETY: AVX-512F (this function's); the rest is the caller's promise.
    unsafe { tiled_dots_by::<__m512, W>(out, row_stride, x, rows, c) }
}
