//! A prompt's bf16 products with AVX-512 BF16's `vdpbf16ps`: 32 products of bf16 pairs summed
//! into float32 per instruction. A decode step's products, bound by memory, widen instead (see
//! [`super::dots_by`]).

use std::arch::x86_64::{
    __m512bh, __mmask16, _mm512_add_ps, _mm512_dpbf16_ps, _mm512_loadu_si512,
    _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_epi32, _mm512_setzero_ps,
};

use half::bf16;

/// 32 bf16s from `at`, as `vdpbf16ps` takes them.
///
/// # Safety
/// 32 values are readable from `at`.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn load(at: *const bf16) -> __m512bh {
    // SAFETY: 32 values are readable (the caller's promise) and the load has no
    // alignment needs; `__m512bh` is 32 bf16 bits, as the loaded 512-bit integer
    // vector is.
    unsafe { std::mem::transmute(_mm512_loadu_si512(at.cast())) }
}

/// Rows of `x` a tile multiplies at once, by [`COLUMNS`] weight rows: 16 running sums
/// in registers, each pair of weight vectors loaded once for eight rows.
const TILE_ROWS: usize = 8;

/// Weight rows a tile multiplies, as two registers of 16 float32 sums.
const COLUMNS: usize = 32;

/// Inputs a packed strip of [`COLUMNS`] weight rows spans: 16 KiB, which stay in the
/// level-1 cache while every tile of `x`'s rows passes them.
const STRIP_INPUTS: usize = 256;

/// `out[i, j] = x[i, :] · rows[j, :]` for `x: [m, k]` and `rows: [n, k]`, `out`'s rows
/// `row_stride` apart, by `vdpbf16ps`: a float32 sum of two bf16 products per lane,
/// twice float32's multiply-adds per instruction (the products are exact in float32;
/// `vdpbf16ps` flushes subnormals). A prompt's products are
/// compute-bound, and `gemm` has no bf16 arithmetic: it multiplied widened copies.
///
/// Each strip of 32 weight rows, [`STRIP_INPUTS`] inputs at a time, is packed as pairs
/// of inputs interleaved by row (a register holds one pair of each of 16 rows) and
/// multiplied with every tile of `x` rows, each row's pair broadcast to every lane, so
/// that each lane sums one output with no reduction across lanes.
///
/// # Safety
/// As [`crate::matmul::bf16_products`].
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn products(
    out: *mut f32,
    row_stride: usize,
    x: &[bf16],
    rows: &[bf16],
    [m, k, n]: [usize; 3],
) {
    assert!(x.len() == m * k && rows.len() == n * k && row_stride >= n);
    let mut strip = [0u32; COLUMNS * STRIP_INPUTS / 2];
    for start in (0..k).step_by(STRIP_INPUTS) {
        let inputs = STRIP_INPUTS.min(k - start);
        let pairs = inputs.div_ceil(2);
        for first_column in (0..n).step_by(COLUMNS) {
            let columns = COLUMNS.min(n - first_column);
            pack(
                &mut strip[..pairs * COLUMNS],
                rows,
                k,
                first_column,
                columns,
                start,
                inputs,
            );
            let tile = Tile {
                strip: &strip[..pairs * COLUMNS],
                inputs,
                columns,
                accumulate: start > 0,
            };
            let mut row = 0;
            while row < m {
                let x = &x[row * k + start..];
                let out = out.wrapping_add(row * row_stride + first_column);
                if row + TILE_ROWS <= m {
                    // SAFETY: rows `row..row + TILE_ROWS` of `out` exist (`row + TILE_ROWS <=
                    // m`), with the strip's columns; the caller's promises.
                    unsafe { tile.multiply::<TILE_ROWS>(out, row_stride, x, k) };
                    row += TILE_ROWS;
                } else {
                    // SAFETY: row `row` of `out` exists (`row < m`); the caller's promises.
                    unsafe { tile.multiply::<1>(out, row_stride, x, k) };
                    row += 1;
                }
            }
        }
    }
}

/// `strip[p * COLUMNS + j]` = inputs `start + 2p` and `start + 2p + 1` of weight row
/// `first + j`, the first in the low half, as `vdpbf16ps` pairs them; zeros past the
/// `columns` rows and the `inputs` inputs.
fn pack(
    strip: &mut [u32],
    rows: &[bf16],
    k: usize,
    first: usize,
    columns: usize,
    start: usize,
    inputs: usize,
) {
    strip.fill(0);
    for column in 0..columns {
        let row = &rows[(first + column) * k + start..][..inputs];
        for (pair, values) in row.chunks(2).enumerate() {
            let high = values.get(1).map_or(0, |value| u32::from(value.to_bits()));
            strip[pair * COLUMNS + column] = u32::from(values[0].to_bits()) | high << 16;
        }
    }
}

/// A packed strip of weight rows (see [`products`]) and how to write its outputs.
struct Tile<'a> {
    strip: &'a [u32],
    inputs: usize,
    columns: usize,
    /// Whether the outputs hold an earlier strip's sums to add to.
    accumulate: bool,
}

impl Tile<'_> {
    /// Rows `0..R` of `x` (`x_stride` apart; this strip's inputs from each row's
    /// start) times the strip, into `R` rows of `out`.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512 BF16; `R` rows of the strip's columns are
    /// writable at `out`, `row_stride` apart, and nothing else reads or writes them
    /// during the call.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn multiply<const R: usize>(
        &self,
        out: *mut f32,
        row_stride: usize,
        x: &[bf16],
        x_stride: usize,
    ) {
        assert!(x.len() >= (R - 1) * x_stride + self.inputs);
        let mut sums = [[_mm512_setzero_ps(); 2]; R];
        let full_pairs = self.inputs / 2;
        let x_at = x.as_ptr();
        for pair in 0..self.inputs.div_ceil(2) {
            // SAFETY: the strip holds `COLUMNS` pairs (`2 * COLUMNS` bf16s) a pair
            // index; `load` reads 32 bf16s, 16 pairs.
            let weights = unsafe {
                let at = self.strip.as_ptr().add(pair * COLUMNS).cast::<bf16>();
                [load(at), load(at.add(32))]
            };
            for (row, sums) in sums.iter_mut().enumerate() {
                let at = row * x_stride + 2 * pair;
                // SAFETY: within `x` (asserted): both inputs of a full pair, the
                // last one's first alone (the second is the next row's, or past `x`).
                let both = unsafe {
                    if pair < full_pairs {
                        x_at.add(at).cast::<u32>().read_unaligned()
                    } else {
                        u32::from((*x_at.add(at)).to_bits())
                    }
                };
                // SAFETY: both are 512 bits, and any bits are 32 bf16s.
                let both: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(both as i32)) };
                for (sum, weights) in sums.iter_mut().zip(weights) {
                    *sum = _mm512_dpbf16_ps(*sum, both, weights);
                }
            }
        }
        for (row, sums) in sums.iter().enumerate() {
            for (half, sum) in sums.iter().enumerate() {
                let columns = self.columns.saturating_sub(half * 16).min(16);
                if columns == 0 {
                    // A strip of 16 rows or fewer: its second half has no outputs, and its
                    // place may be past the output's end.
                    continue;
                }
                let mask: __mmask16 = ((1u32 << columns) - 1) as u16;
                // SAFETY: the tile's first `columns` outputs of this half (the
                // caller's promise), `columns > 0` of them, so `at` is within the output.
                unsafe {
                    let at = out.add(row * row_stride + half * 16);
                    let sum = if self.accumulate {
                        _mm512_add_ps(*sum, _mm512_maskz_loadu_ps(mask, at))
                    } else {
                        *sum
                    };
                    _mm512_mask_storeu_ps(at, mask, sum);
                }
            }
        }
    }
}
