//! Rows of activations times a weight stored by output (`[n, k]`, each output's weights
//! together): the products of every `Linear` and of the tied output head.
//!
//! A decode step's one row reads each weight once and does two flops per value read: bound by
//! memory bandwidth, which one core cannot saturate. Each thread streams its own contiguous
//! share of the weight's rows in dot products ([`dots`]). A batch of up to [`MAX_DOT_ROWS`]
//! rows (many clients' decode steps, short prompt chunks) still reads each weight once: its
//! tiles of weight rows meet every row of inputs while they are in registers. More rows make
//! the product compute-bound, and it goes to [`matmul`](crate::matmul) a block of weight rows
//! per task.

use rayon::prelude::*;

use crate::Float;
use crate::arch::portable::{self, rows_times_block as portable_rows_times_block};
#[cfg(target_arch = "x86_64")]
use crate::arch::x86;
use crate::arch::{Level, dispatch, level};
use crate::matmul::{Rhs, bf16_products, has_bf16_products, matmul_into};
use crate::pool::{SharedOut, rows_per_task};

/// Most rows (batch rows × new positions) the dot products take: past this, a weight value
/// read once feeds enough multiply-adds that `gemm`'s packed blocks win.
pub const MAX_DOT_ROWS: usize = 64;

/// `x · wᵀ` for `x: [m, k]` and `w: [n, k]`, as float32 `[m, n]`, on every thread of the
/// current pool, each over its own blocks of `w`'s rows: in dot products for up to
/// [`MAX_DOT_ROWS`] rows; otherwise, where both are bf16 and the CPU multiplies bf16 pairs
/// (AVX-512 BF16), by our own kernel for them, or else by `gemm` in float32 (a half-precision
/// block widened first, in its task's cache).
///
/// `gemm` packs `[n, k]` weights where it reads `[k, n]` ones in place: threaded by `gemm`
/// itself, packing dominated a prompt's products; a block per task packs each block once.
///
/// # Panics
/// If `x` or `w` holds fewer than `m * k` or `n * k` values.
pub fn times_transposed<X: Float, W: Float>(x: &[X], w: &[W], [m, k, n]: [usize; 3]) -> Vec<f32> {
    assert!(
        x.len() >= m * k && w.len() >= n * k,
        "x: [{m}, {k}], w: [{n}, {k}]"
    );
    let (x, w) = (&x[..m * k], &w[..n * k]);
    if m == 1 {
        return dots_of_one_row(x, w, [k, n]);
    }
    if m <= MAX_DOT_ROWS {
        // Widened once here, not in every task's tiles.
        let x = X::as_f32(x);
        // SAFETY: `rows_dots` writes every value of its block's columns.
        return unsafe {
            by_weight_blocks(w, [m, k, n], |out, rows, _| {
                // SAFETY: as `by_weight_blocks` promises.
                rows_dots(out, n, &x, rows, k)
            })
        };
    }
    if let (Some(x), Some(w)) = (X::as_bf16(x), W::as_bf16(w))
        && has_bf16_products()
    {
        // SAFETY: the kernel writes every value of its block's columns.
        return unsafe {
            by_weight_blocks(w, [m, k, n], |out, rows, dims| {
                // SAFETY: as `by_weight_blocks` promises; the CPU has the kernel's instructions.
                bf16_products(out, n, x, rows, dims)
            })
        };
    }
    let x = X::as_f32(x);
    // SAFETY: `gemm` writes every value of its block's columns.
    unsafe {
        by_weight_blocks(w, [m, k, n], |out, rows, dims| {
            let rows = W::as_f32(rows);
            // SAFETY: as `by_weight_blocks` promises.
            matmul_into(out, n, &x, &rows, dims, Rhs::Transposed)
        })
    }
}

/// [`times_transposed`] for one row: a dot product per weight row, each task streaming its own
/// block of rows once. `x` goes to the tasks in its own type: a half-precision activation is
/// widened in registers, not copied to float32 for each product.
fn dots_of_one_row<X: Float, W: Float>(x: &[X], w: &[W], [k, n]: [usize; 2]) -> Vec<f32> {
    let rows_per_task = rows_per_task(n);
    let mut out = vec![0.0; n];
    out.par_chunks_mut(rows_per_task)
        .zip(w.par_chunks(rows_per_task * k))
        .for_each(|(out, rows)| dots(out, x, rows, k));
    out
}

/// The `[m, n]` product of `[m, k]` rows with `w: [n, k]`'s transpose, a task per block of
/// `w`'s rows: `block(out, rows, [m, k, rows.len() / k])` writes the block's `[m, rows]` output
/// columns, row after row `n` values apart from `out`, where they are the task's alone. Not
/// zeroed first: the blocks write every value without reading it, and the zeroing ran on one
/// thread while the others waited.
///
/// # Safety
/// `block` writes every one of its block's `[m, rows]` output values.
unsafe fn by_weight_blocks<W: Sync>(
    w: &[W],
    [m, k, n]: [usize; 3],
    block: impl Fn(*mut f32, &[W], [usize; 3]) + Sync,
) -> Vec<f32> {
    let rows_per_task = rows_per_task(n);
    let mut out = Vec::<f32>::with_capacity(m * n);
    let shared = SharedOut::new(&mut out);
    w.par_chunks(rows_per_task * k)
        .enumerate()
        .for_each(|(index, rows)| {
            // The block's output columns, `first..first + rows.len() / k` of `out`'s `n`, exist
            // (`w` has `n` rows).
            let first = index * rows_per_task;
            block(shared.at(first), rows, [m, k, rows.len() / k]);
        });
    // SAFETY: the blocks' columns cover all `n`, each written in every one of `m` rows (the
    // caller's promise).
    unsafe { out.set_len(m * n) };
    out
}

/// `out[j, r] = x[r, :] · rows[j, :]` for every row `j` of `rows: [.., c]`, `out: [.., m]`, on
/// the calling thread.
pub fn dots<X: Float, W: Float>(out: &mut [f32], x: &[X], rows: &[W], c: usize) {
    match level() {
        // SAFETY: AVX-512F was detected on this CPU.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { x86::avx512::dots(out, x, rows, c) },
        // SAFETY: AVX2, FMA and F16C were detected on this CPU.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2Fma => unsafe { x86::avx2::dots(out, x, rows, c) },
        Level::Baseline => portable::dots::<false, X, W>(out, x, rows, c),
    }
}

/// Writes `x[r, :] · rows[j, :]` at `out + r * row_stride + j`, for `x: [m, c]` and `rows:
/// [n, c]`, on the calling thread: tiles of weight rows times tiles of inputs where the CPU has
/// vector kernels (see `arch/x86`), the portable dot products elsewhere.
///
/// # Safety
/// `m` rows of `n` values `row_stride` apart from `out` are writable, and nothing else reads or
/// writes them during the call.
pub(crate) unsafe fn rows_dots<W: Float>(
    out: *mut f32,
    row_stride: usize,
    x: &[f32],
    rows: &[W],
    c: usize,
) {
    match level() {
        // SAFETY: AVX-512F was detected on this CPU; `out` is the caller's promise.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { x86::avx512::tiled_dots(out, row_stride, x, rows, c) },
        // SAFETY: AVX2, FMA and F16C were detected on this CPU; `out` as above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2Fma => unsafe { x86::avx2::tiled_dots(out, row_stride, x, rows, c) },
        Level::Baseline => {
            let (m, n) = (x.len() / c, rows.len() / c);
            let mut transposed = vec![0.0; n * m];
            portable::dots::<false, f32, W>(&mut transposed, x, rows, c);
            for (j, column) in transposed.chunks_exact(m).enumerate() {
                for (r, &value) in column.iter().enumerate() {
                    // SAFETY: row `r` < `m`, column `j` < `n` (the caller's promise).
                    unsafe { *out.add(r * row_stride + j) = value };
                }
            }
        }
    }
}

/// `partial[r, :] += x[r, :] · rows` for `x: [m, i]` and a block of rows `[i, n]` (attention's
/// weights times the cached values), on the calling thread.
pub fn rows_times_block<W: Float>(partial: &mut [f32], x: &[f32], rows: &[W], n: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Level::Avx512 = level() {
        // SAFETY: AVX-512F was detected on this CPU.
        return unsafe { x86::avx512::rows_times_block(partial, x, rows, n) };
    }
    dispatch!(portable_rows_times_block[W](partial, x, rows, n))
}

#[cfg(test)]
pub(crate) mod tests {
    use half::{bf16, f16};

    use super::*;

    /// Values every float type holds exactly (bf16's, and within f16's range), spread as a
    /// model's are, so that sums do not depend on the type they are stored in.
    pub(crate) fn values<W: Float>(count: usize, seed: usize) -> Vec<W> {
        (0..count)
            .map(|i| W::from_f32(((i * seed % 101) as f32 - 50.0) / 32.0))
            .collect()
    }

    /// `x · wᵀ` in float64, value by value: the reference.
    fn reference<X: Float, W: Float>(x: &[X], w: &[W], [m, k, n]: [usize; 3]) -> Vec<f64> {
        let mut out = Vec::with_capacity(m * n);
        for row in x.chunks_exact(k).take(m) {
            for column in w.chunks_exact(k).take(n) {
                let products = row.iter().zip(column);
                out.push(
                    products
                        .map(|(x, w)| f64::from(x.to_f32()) * f64::from(w.to_f32()))
                        .sum(),
                );
            }
        }
        out
    }

    fn assert_close(ours: &[f32], reference: &[f64], what: &str) {
        assert_eq!(ours.len(), reference.len(), "{what}");
        for (i, (ours, exact)) in ours.iter().zip(reference).enumerate() {
            let bound = 1e-4 * exact.abs().max(1.0);
            assert!(
                (f64::from(*ours) - exact).abs() <= bound,
                "{what} [{i}]: {ours} vs {exact}"
            );
        }
    }

    type Dots<X, W> = fn(&mut [f32], &[X], &[W], usize);

    /// Which kernels a test runs: the portable loops, the dispatched one and AVX2's where the
    /// CPU has it; or AVX-512's, on a CPU that must have it.
    #[derive(Clone, Copy)]
    enum Kernels {
        Everyday,
        #[cfg(target_arch = "x86_64")]
        Avx512,
    }

    fn dot_kernels<X: Float, W: Float>(set: Kernels) -> Vec<(&'static str, Dots<X, W>)> {
        match set {
            Kernels::Everyday => {
                #[allow(unused_mut)]
                let mut kernels: Vec<(&str, Dots<X, W>)> = vec![
                    ("portable", portable::dots::<false, X, W>),
                    ("portable, fused", portable::dots::<true, X, W>),
                    ("dispatched", dots),
                ];
                #[cfg(target_arch = "x86_64")]
                if x86::has_avx2_fma_f16c() {
                    // SAFETY: detected just above.
                    kernels.push(("avx2", |o, x, r, c| unsafe { x86::avx2::dots(o, x, r, c) }));
                }
                kernels
            }
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => {
                assert!(
                    is_x86_feature_detected!("avx512f"),
                    "this CPU has no AVX-512F"
                );
                // SAFETY: asserted just above.
                vec![("avx512", |o, x, r, c| unsafe {
                    x86::avx512::dots(o, x, r, c)
                })]
            }
        }
    }

    /// The kernels of `set` against the reference, for every weight type and inputs in float32
    /// or in the weights' type.
    fn check_dot_products(set: Kernels) {
        fn check<X: Float, W: Float>(c: usize, set: Kernels) {
            // 2 inputs, 5 rows of weights.
            let (x, rows) = (values::<X>(2 * c, 37), values::<W>(5 * c, 53));
            // `dots` writes `[rows, inputs]`: the reference's transpose.
            let expected = reference(&rows, &x, [5, c, 2]);
            for (name, kernel) in dot_kernels::<X, W>(set) {
                let mut ours = vec![f32::NAN; 10];
                kernel(&mut ours, &x, &rows, c);
                let what = format!(
                    "{name}, {} inputs, {} weights, {c} values",
                    std::any::type_name::<X>(),
                    std::any::type_name::<W>()
                );
                assert_close(&ours, &expected, &what);
            }
        }
        // 300 values: blocks of four vectors, whole vectors after them and a tail; 64, an
        // attention head: one block of 16-lane vectors, or two of 8 lanes; GPT-2's widths
        // (small, medium, large, XL, and the MLP's 4 × 768), and two of them with odd tails.
        for c in [300, 64, 768, 1024, 1280, 1600, 3072, 771, 1603] {
            check::<f32, f32>(c, set);
            check::<f32, f16>(c, set);
            check::<f16, f16>(c, set);
            check::<f32, bf16>(c, set);
            check::<bf16, bf16>(c, set);
        }
    }

    #[test]
    fn every_level_s_dot_products_match_the_reference() {
        check_dot_products(Kernels::Everyday);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    #[ignore = "needs an AVX-512 CPU: cargo test -- --ignored avx512 (cargo xtask test runs it there)"]
    fn avx512_dot_products_match_the_reference() {
        check_dot_products(Kernels::Avx512);
    }

    type RowDots<W> = unsafe fn(*mut f32, usize, &[f32], &[W], usize);

    fn row_dot_kernels<W: Float>(set: Kernels) -> Vec<(&'static str, RowDots<W>)> {
        match set {
            Kernels::Everyday => {
                #[allow(unused_mut)]
                let mut kernels: Vec<(&str, RowDots<W>)> = vec![("dispatched", rows_dots)];
                #[cfg(target_arch = "x86_64")]
                if x86::has_avx2_fma_f16c() {
                    kernels.push(("avx2", x86::avx2::tiled_dots));
                }
                kernels
            }
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512 => {
                assert!(
                    is_x86_feature_detected!("avx512f"),
                    "this CPU has no AVX-512F"
                );
                vec![("avx512", x86::avx512::tiled_dots)]
            }
        }
    }

    /// The row-tile kernels of `set` against the reference: every tail of the tiles (1 to 7
    /// input rows against tiles of 3; 9 weight rows against tiles of 4), written with a row
    /// stride wider than the output, for every weight type.
    fn check_row_tiles(set: Kernels) {
        fn check<W: Float>(c: usize, set: Kernels) {
            let n = 9;
            let rows = values::<W>(n * c, 53);
            for m in 1..=7 {
                let x = values::<f32>(m * c, 37);
                let expected = reference(&x, &rows, [m, c, n]);
                for (name, kernel) in row_dot_kernels::<W>(set) {
                    let stride = n + 2;
                    let mut out = vec![f32::NAN; m * stride];
                    // SAFETY: `out` holds `m` rows of `stride` values; the kernel's
                    // instructions were detected (`row_dot_kernels`).
                    unsafe { kernel(out.as_mut_ptr(), stride, &x, &rows, c) };
                    let ours: Vec<f32> = out
                        .chunks_exact(stride)
                        .flat_map(|r| r[..n].to_vec())
                        .collect();
                    assert!(
                        out.chunks_exact(stride)
                            .all(|r| r[n..].iter().all(|v| v.is_nan()))
                    );
                    let what = format!(
                        "{name}, {m} rows, {} weights, {c} values",
                        std::any::type_name::<W>()
                    );
                    assert_close(&ours, &expected, &what);
                }
            }
        }
        for c in [300, 64, 768, 1024, 1600, 3072, 771, 1603] {
            check::<f32>(c, set);
            check::<f16>(c, set);
            check::<bf16>(c, set);
        }
    }

    #[test]
    fn every_level_s_row_tiles_match_the_reference() {
        check_row_tiles(Kernels::Everyday);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    #[ignore = "needs an AVX-512 CPU: cargo test -- --ignored avx512 (cargo xtask test runs it there)"]
    fn avx512_row_tiles_match_the_reference() {
        check_row_tiles(Kernels::Avx512);
    }

    #[test]
    fn products_match_the_reference_for_every_row_count_and_type() {
        fn check<X: Float, W: Float>() {
            // 37 outputs: several tasks' rows and a partial one; 300 inputs: the dot products'
            // vector blocks and a tail; GPT-2 small's width and its MLP's, one with a tail.
            for [k, n] in [[300, 37], [768, 37], [3072 + 7, 21]] {
                for m in [1, 2, 3, 8, 16, 37, MAX_DOT_ROWS, MAX_DOT_ROWS + 1] {
                    let (x, w) = (values::<X>(m * k, 37), values::<W>(n * k, 53));
                    let what = format!("{m} rows, {k} inputs, {}", std::any::type_name::<W>());
                    let expected = reference(&x, &w, [m, k, n]);
                    assert_close(&times_transposed(&x, &w, [m, k, n]), &expected, &what);
                }
            }
        }
        check::<f32, f32>();
        check::<f32, f16>();
        check::<f16, f16>();
        check::<bf16, bf16>();
    }

    #[test]
    fn attention_s_weighted_values_match_the_reference() {
        // 3 queries' weights over 5 positions, times the positions' 19-wide values: 16-lane
        // vectors and a tail.
        let (x, rows) = (values::<f32>(3 * 5, 7), values::<bf16>(5 * 19, 11));
        let expected = reference(&x, &transpose(&rows, 19), [3, 5, 19]);
        let mut ours = vec![1.0; 3 * 19];
        rows_times_block(&mut ours, &x, &rows, 19);
        let expected: Vec<f64> = expected.iter().map(|e| e + 1.0).collect();
        assert_close(&ours, &expected, "onto ones");
        let mut plain = vec![1.0; 3 * 19];
        portable::rows_times_block::<false, bf16>(&mut plain, &x, &rows, 19);
        assert_close(&plain, &expected, "portable");
    }

    fn transpose<W: Float>(values: &[W], columns: usize) -> Vec<W> {
        let rows = values.len() / columns;
        (0..columns)
            .flat_map(|j| (0..rows).map(move |i| values[i * columns + j]))
            .collect()
    }
}
