//! The plain loops: what a CPU without a module of its own runs, what [`dispatch`] compiles
//! for each detected level where LLVM's vectorizing is enough, and the reference each
//! hand-written kernel is tested against.
//!
//! [`dispatch`]: crate::arch::dispatch

use crate::Float;
use crate::quant::{BLOCK_VALUES, BlockQ4_0, BlockQ8_0};

/// `a · b + c`, fused (one rounding, one instruction) where the CPU has it.
#[inline(always)]
pub(crate) fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

/// `out[j, r] = x[r, :] · rows[j, :]` with 16 independent partial sums, so the loop vectorizes
/// (float addition is not associative, so the compiler will not split a single sum).
#[inline(always)]
pub(crate) fn dots<const FUSED: bool, X: Float, W: Float>(
    out: &mut [f32],
    x: &[X],
    rows: &[W],
    c: usize,
) {
    const LANES: usize = 16;
    let m = x.len() / c;
    for (out, row) in out.chunks_exact_mut(m).zip(rows.chunks_exact(c)) {
        for (out, x) in out.iter_mut().zip(x.chunks_exact(c)) {
            let mut sums = [0.0f32; LANES];
            let body = c / LANES * LANES;
            for (x, w) in x[..body]
                .chunks_exact(LANES)
                .zip(row[..body].chunks_exact(LANES))
            {
                for lane in 0..LANES {
                    sums[lane] = madd::<FUSED>(x[lane].to_f32(), w[lane].to_f32(), sums[lane]);
                }
            }
            let tail: f32 = x[body..]
                .iter()
                .zip(&row[body..])
                .map(|(x, w)| x.to_f32() * w.to_f32())
                .sum();
            *out = sums.iter().sum::<f32>() + tail;
        }
    }
}

/// `partial[r, :] += x[r, :] · rows` for `x: [m, i]` and a block of weight rows `[i, n]`.
#[inline(always)]
pub(crate) fn rows_times_block<const FUSED: bool, W: Float>(
    partial: &mut [f32],
    x: &[f32],
    rows: &[W],
    n: usize,
) {
    let taken = rows.len() / n;
    for (i, w_row) in rows.chunks_exact(n).enumerate() {
        for (out, x_row) in partial.chunks_exact_mut(n).zip(x.chunks_exact(taken)) {
            let a = x_row[i];
            for (out, w) in out.iter_mut().zip(w_row) {
                *out = madd::<FUSED>(a, w.to_f32(), *out);
            }
        }
    }
}

/// `wide[i] = values[i]`, as float32.
pub(crate) fn widen<W: Float>(wide: &mut [f32], values: &[W]) {
    wide.iter_mut()
        .zip(values)
        .for_each(|(wide, value)| *wide = value.to_f32());
}

/// `narrow[i] = wide[i]`, rounded as [`Float::from_f32`] rounds.
pub(crate) fn narrow<W: Float>(narrow: &mut [W], wide: &[f32]) {
    narrow
        .iter_mut()
        .zip(wide)
        .for_each(|(narrow, wide)| *narrow = W::from_f32(*wide));
}

/// `Σ w · x` over Q8_0 blocks as ggml's generic `ggml_vec_dot_q8_0_q8_0`: each block's integer
/// sum, times both scales, added in block order.
pub(crate) fn dot_q8_0(weights: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    weights.iter().zip(x).fold(0.0, |sum, (w, x)| {
        let integer: i32 = w
            .quants
            .iter()
            .zip(&x.quants)
            .map(|(&w, &x)| i32::from(w) * i32::from(x))
            .sum();
        sum + integer as f32 * (w.scale.to_f32() * x.scale.to_f32())
    })
}

/// `Σ w · x` for Q4_0 weights and Q8_0 activations, as ggml's generic `ggml_vec_dot_q4_0_q8_0`.
pub(crate) fn dot_q4_0(weights: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    weights.iter().zip(x).fold(0.0, |sum, (w, x)| {
        let (low, high) = x.quants.split_at(BLOCK_VALUES / 2);
        let integer: i32 = w
            .nibbles
            .iter()
            .zip(low.iter().zip(high))
            .map(|(&pair, (&low, &high))| {
                (i32::from(pair & 0x0f) - 8) * i32::from(low)
                    + (i32::from(pair >> 4) - 8) * i32::from(high)
            })
            .sum();
        sum + integer as f32 * (w.scale.to_f32() * x.scale.to_f32())
    })
}
