//! Weight matrices stored eight rows at a time, as ggml-cpu repacks Q4_0 and Q8_0 for x86
//! (`ggml-cpu/repack.cpp`, its `block_q4_0x8`): a decode step reads each block column of eight
//! rows as one stream, and one activation block's bytes, loaded once, meet all eight rows. On
//! AVX2 eight rows' integer sums come out of one `vphaddd` in the order of the rows, and a single
//! multiply-add scales them: about five vector instructions a row-block where a row at a time
//! takes about twenty.
//!
//! A group's payload bytes are laid out so that each 32-byte load holds 8 bytes of four rows, the
//! rows in the order [`SLOTS`] gives: that order is what makes the pairwise `vphaddd` of two
//! such halves come out as rows 0-7.
//!
//! Rows past the last whole group (`rows % 8`, the GPT-2 head's one row of 50,257) stay in
//! their plain blocks.
//!
//! ```
//! use nexttoken_cpu::quant::{BlockQ4_0, Interleaved, quantize_q4_0};
//!
//! let weights: Vec<f32> = (0..9 * 64).map(|i| (i % 13) as f32 - 6.0).collect();
//! let blocks: Vec<BlockQ4_0> = quantize_q4_0(&weights); // 9 rows of 2 blocks
//! let matrix = Interleaved::new(&blocks, 9);
//! assert_eq!(matrix.to_blocks(), blocks);
//! let y = matrix.times_transposed(&[1.0; 64], 1);
//! assert_eq!(y.len(), 9);
//! ```

use std::ops::Range;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use crate::arch::x86;
use crate::arch::{Level, level};
use crate::matmul::{Rhs, bf16_products, has_bf16_products, matmul_into};
use crate::pool::{SharedOut, rows_per_task};
use crate::product::MAX_DOT_ROWS;
use crate::quant::{BLOCK_VALUES, Block, BlockQ4_0, BlockQ8_0, dequantize, quantize_activations};
use crate::widen::narrowed;

/// Rows stored together.
pub const GROUP_ROWS: usize = 8;

/// The rows whose bytes each 32-byte load of a group holds, 8 bytes each: the first half of a
/// group's payload holds `SLOTS[0]`'s rows, the second `SLOTS[1]`'s. `vphaddd` of two vectors
/// of four rows' pair sums gives `[a0 a1 b0 b1 | a2 a3 b2 b3]`, which these make rows 0-7.
pub(crate) const SLOTS: [[usize; 4]; 2] = [[0, 1, 4, 5], [2, 3, 6, 7]];

/// Eight rows' [`BlockQ4_0`]s at one block column: their scales, then their nibbles. Each 32
/// bytes of `nibbles` hold 8 bytes of four rows: the rows of `SLOTS[0]`, bytes 0-7 of their
/// blocks (values 0-7 in the low nibbles, 16-23 in the high), then bytes 8-15 (values 8-15 and
/// 24-31); then the same for `SLOTS[1]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_0x8 {
    pub scales: [half::f16; GROUP_ROWS],
    pub nibbles: [u8; GROUP_ROWS * BLOCK_VALUES / 2],
}

/// Eight rows' [`BlockQ8_0`]s at one block column: their scales, then their values. Each 32
/// bytes of `quants` hold 8 values of four rows: the rows of `SLOTS[0]`, values 0-7, 8-15, 16-23,
/// 24-31; then the same for `SLOTS[1]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0x8 {
    pub scales: [half::f16; GROUP_ROWS],
    pub quants: [i8; GROUP_ROWS * BLOCK_VALUES],
}

/// A block type with an eight-row layout and a kernel over it.
pub trait Interleave: Block + Default + PartialEq + std::fmt::Debug {
    /// Eight rows' blocks at one block column.
    type Group: Copy + Send + Sync + std::fmt::Debug + 'static;

    /// Blocks of rows 0-7 at one block column, as one group.
    fn interleave(rows: &[Self; GROUP_ROWS]) -> Self::Group;

    /// Row `row`'s block of `group`.
    fn take(group: &Self::Group, row: usize) -> Self;

    /// `Σ row · x` for each of a run of groups' eight rows, on the widest instructions this CPU
    /// has; `x` is one row of activation blocks and `sums[i]` the sum of `x[i]`'s 32 values.
    fn dot8(groups: &[Self::Group], x: &[BlockQ8_0], sums: &[i32]) -> [f32; GROUP_ROWS] {
        match level() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512 VNNI (for 256-bit registers), AVX2, FMA and F16C were detected.
            Level::Avx512 | Level::Avx2Fma if x86::has_avx512_vnni() => unsafe {
                Self::vnni_dot8(groups, x, sums)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2, FMA and F16C were detected (every AVX-512 CPU has them too).
            Level::Avx512 | Level::Avx2Fma => unsafe { Self::avx2_dot8(groups, x, sums) },
            Level::Baseline => Self::portable_dot8(groups, x),
        }
    }

    /// The kernel for AVX2, FMA and F16C.
    ///
    /// # Safety
    /// The CPU must have them.
    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2_dot8(groups: &[Self::Group], x: &[BlockQ8_0], sums: &[i32]) -> [f32; 8];

    /// The kernel for AVX-512 VNNI on 256-bit registers beside AVX2, FMA and F16C.
    ///
    /// # Safety
    /// The CPU must have them.
    #[cfg(target_arch = "x86_64")]
    unsafe fn vnni_dot8(groups: &[Self::Group], x: &[BlockQ8_0], sums: &[i32]) -> [f32; 8];

    /// Each row's plain [`Block::dot`]: for CPUs without a kernel of their own, and the
    /// reference the kernels are tested against.
    fn portable_dot8(groups: &[Self::Group], x: &[BlockQ8_0]) -> [f32; GROUP_ROWS] {
        std::array::from_fn(|row| {
            let blocks: Vec<Self> = groups.iter().map(|g| Self::take(g, row)).collect();
            Self::portable_dot(&blocks, x)
        })
    }
}

/// The payloads (`P` bytes each) of eight rows laid out as the groups' docs say: each 32 bytes
/// hold the same 8-byte part of four rows, parts in order, `SLOTS[0]`'s rows first.
fn interleave_payloads<const P: usize, const N: usize>(rows: [&[u8; P]; GROUP_ROWS]) -> [u8; N] {
    const { assert!(N == P * GROUP_ROWS && P.is_multiple_of(8)) };
    let mut out = [0; N];
    let parts = P / 8;
    for (chunk, out) in out.chunks_exact_mut(32).enumerate() {
        let (slots, part) = (SLOTS[chunk / parts], chunk % parts);
        for (out, row) in out.chunks_exact_mut(8).zip(slots) {
            out.copy_from_slice(&rows[row][part * 8..][..8]);
        }
    }
    out
}

/// Row `row`'s `P` payload bytes from an interleaved `N`.
fn payload_of<const P: usize, const N: usize>(interleaved: &[u8; N], row: usize) -> [u8; P] {
    let parts = P / 8;
    let half = SLOTS
        .iter()
        .position(|s| s.contains(&row))
        .expect("row < 8");
    let slot = SLOTS[half]
        .iter()
        .position(|&r| r == row)
        .expect("in its half");
    let mut out = [0; P];
    for (part, out) in out.chunks_exact_mut(8).enumerate() {
        let chunk = half * parts + part;
        out.copy_from_slice(&interleaved[chunk * 32 + slot * 8..][..8]);
    }
    out
}

fn as_u8<const N: usize>(values: &[i8; N]) -> &[u8; N] {
    // SAFETY: i8 and u8 have the same size, alignment and validity.
    unsafe { &*values.as_ptr().cast() }
}

impl Interleave for BlockQ4_0 {
    type Group = BlockQ4_0x8;

    fn interleave(rows: &[Self; GROUP_ROWS]) -> BlockQ4_0x8 {
        BlockQ4_0x8 {
            scales: rows.map(|b| b.scale),
            nibbles: interleave_payloads(rows.each_ref().map(|b| &b.nibbles)),
        }
    }

    fn take(group: &BlockQ4_0x8, row: usize) -> Self {
        BlockQ4_0 {
            scale: group.scales[row],
            nibbles: payload_of(&group.nibbles, row),
        }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2_dot8(groups: &[BlockQ4_0x8], x: &[BlockQ8_0], sums: &[i32]) -> [f32; 8] {
        // SAFETY: the caller's promise.
        unsafe { x86::quant::dot8_q4_0(groups, x, sums) }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn vnni_dot8(groups: &[BlockQ4_0x8], x: &[BlockQ8_0], sums: &[i32]) -> [f32; 8] {
        // SAFETY: the caller's promise.
        unsafe { x86::quant::dot8_q4_0_vnni(groups, x, sums) }
    }
}

impl Interleave for BlockQ8_0 {
    type Group = BlockQ8_0x8;

    fn interleave(rows: &[Self; GROUP_ROWS]) -> BlockQ8_0x8 {
        let quants: [u8; GROUP_ROWS * BLOCK_VALUES] =
            interleave_payloads(rows.each_ref().map(|b| as_u8(&b.quants)));
        BlockQ8_0x8 {
            scales: rows.map(|b| b.scale),
            quants: quants.map(|q| q as i8),
        }
    }

    fn take(group: &BlockQ8_0x8, row: usize) -> Self {
        let quants: [u8; BLOCK_VALUES] = payload_of(as_u8(&group.quants), row);
        BlockQ8_0 {
            scale: group.scales[row],
            quants: quants.map(|q| q as i8),
        }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2_dot8(groups: &[BlockQ8_0x8], x: &[BlockQ8_0], _sums: &[i32]) -> [f32; 8] {
        // SAFETY: the caller's promise.
        unsafe { x86::quant::dot8_q8_0(groups, x) }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn vnni_dot8(groups: &[BlockQ8_0x8], x: &[BlockQ8_0], _sums: &[i32]) -> [f32; 8] {
        // SAFETY: the caller's promise.
        unsafe { x86::quant::dot8_q8_0_vnni(groups, x) }
    }
}

/// A `[rows, k]` matrix of blocks with its rows in groups of eight ([`Interleave`]), the rows
/// left over in plain blocks.
#[derive(Debug)]
pub struct Interleaved<B: Interleave> {
    rows: usize,
    blocks_per_row: usize,
    /// Group `g`'s block column `c` at `g × blocks_per_row + c`.
    groups: Box<[B::Group]>,
    /// The last `rows % 8` rows, row after row.
    rest: Box<[B]>,
}

impl<B: Interleave> Interleaved<B> {
    /// `blocks`, `rows` rows of blocks in row order (as a GGUF file holds them), regrouped.
    ///
    /// # Panics
    /// If `blocks` is not `rows` whole rows.
    pub fn new(blocks: &[B], rows: usize) -> Self {
        assert!(
            rows > 0 && blocks.len().is_multiple_of(rows),
            "{} blocks in {rows} rows",
            blocks.len()
        );
        let per_row = blocks.len() / rows;
        Self::from_rows([rows, per_row], |row, out| {
            out.copy_from_slice(&blocks[row * per_row..][..per_row]);
        })
    }

    /// A matrix of `rows` rows of `blocks_per_row` blocks, `fill(row, out)` writing each row's
    /// blocks, rows in order: a matrix quantized as it loads never holds its rows twice.
    pub fn from_rows(
        [rows, blocks_per_row]: [usize; 2],
        mut fill: impl FnMut(usize, &mut [B]),
    ) -> Self {
        let grouped = rows / GROUP_ROWS * GROUP_ROWS;
        let mut scratch = vec![B::default(); GROUP_ROWS * blocks_per_row];
        let mut groups = Vec::with_capacity(grouped / GROUP_ROWS * blocks_per_row);
        for first in (0..grouped).step_by(GROUP_ROWS) {
            for (row, out) in scratch.chunks_exact_mut(blocks_per_row).enumerate() {
                fill(first + row, out);
            }
            groups.extend((0..blocks_per_row).map(|column| {
                B::interleave(&std::array::from_fn(|row| {
                    scratch[row * blocks_per_row + column]
                }))
            }));
        }
        let mut rest = vec![B::default(); (rows - grouped) * blocks_per_row];
        for (row, out) in (grouped..rows).zip(rest.chunks_exact_mut(blocks_per_row.max(1))) {
            fill(row, out);
        }
        Self {
            rows,
            blocks_per_row,
            groups: groups.into(),
            rest: rest.into(),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn blocks_per_row(&self) -> usize {
        self.blocks_per_row
    }

    /// Row `row`'s blocks into `out`.
    ///
    /// # Panics
    /// If `row` is out of range or `out` is not one row of blocks.
    pub fn row_into(&self, row: usize, out: &mut [B]) {
        assert!(row < self.rows, "row {row} of {}", self.rows);
        assert_eq!(out.len(), self.blocks_per_row);
        for (column, out) in out.iter_mut().enumerate() {
            *out = self.block(row, column);
        }
    }

    /// The rows stored in groups of eight; the rest are plain.
    fn grouped_rows(&self) -> usize {
        self.rows / GROUP_ROWS * GROUP_ROWS
    }

    fn block(&self, row: usize, column: usize) -> B {
        let grouped = self.grouped_rows();
        if row < grouped {
            let group = &self.groups[row / GROUP_ROWS * self.blocks_per_row + column];
            B::take(group, row % GROUP_ROWS)
        } else {
            self.rest[(row - grouped) * self.blocks_per_row + column]
        }
    }

    /// Every row's blocks in row order, as a GGUF file holds them.
    pub fn to_blocks(&self) -> Vec<B> {
        let mut out = vec![B::default(); self.rows * self.blocks_per_row];
        for (row, out) in out.chunks_exact_mut(self.blocks_per_row.max(1)).enumerate() {
            self.row_into(row, out);
        }
        out
    }

    /// Row `row` as float32 values (`32 × blocks_per_row`) into `out`.
    ///
    /// # Panics
    /// If `row` is out of range or `out` is not one row's values.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.rows, "row {row} of {}", self.rows);
        assert_eq!(out.len(), self.blocks_per_row * BLOCK_VALUES);
        for (column, out) in out.chunks_exact_mut(BLOCK_VALUES).enumerate() {
            dequantize(&[self.block(row, column)], out);
        }
    }

    /// `x · Wᵀ` for float32 `x: [m, k]`, as float32 `[m, rows]`, on every thread of the current
    /// pool, each task over its own whole groups of rows (the last one with the rows left over).
    /// Up to [`MAX_DOT_ROWS`] rows, `x` is quantized to Q8_0 and every group meets every input
    /// row in integer dot products while it is in cache; more rows are compute-bound, and each
    /// task widens its rows to float32 for `gemm`.
    ///
    /// # Panics
    /// If `x` holds fewer than `m × k` values.
    pub fn times_transposed(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.rows, self.blocks_per_row * BLOCK_VALUES);
        assert!(x.len() >= m * k, "x: [{m}, {k}]");
        let x = &x[..m * k];
        let rows_per_task = rows_per_task(n.div_ceil(GROUP_ROWS)) * GROUP_ROWS;
        let tasks: Vec<Range<usize>> = (0..n)
            .step_by(rows_per_task)
            .map(|first| first..(first + rows_per_task).min(n))
            .collect();
        let mut out = Vec::<f32>::with_capacity(m * n);
        let shared = SharedOut::new(&mut out);
        if m <= MAX_DOT_ROWS {
            let mut quantized = Vec::with_capacity(m * self.blocks_per_row);
            quantize_activations(x, &mut quantized);
            let sums = sums_of(&quantized);
            tasks.into_par_iter().for_each(|rows| {
                let write = |r: usize, row: usize, value: f32| {
                    // SAFETY: column `row` of output row `r` is within `[m, n]` and this
                    // task's alone (its rows of the matrix are its columns).
                    unsafe { *shared.at(r * n + row) = value };
                };
                self.dots(rows, &quantized, &sums, write);
            });
        } else {
            // Multiplied as bf16 pairs where the CPU has them (twice float32's multiply-adds an
            // instruction): a weight, its block's f16 step times up to 8 (Q4_0) or 127 (Q8_0),
            // rounds to bf16's 8 bits by at most 1/64 or 1/4 of that step, within its
            // quantization's own rounding; the activations round as a bf16 model's do.
            let narrow_x = has_bf16_products().then(|| narrowed::<half::bf16>(x));
            tasks.into_par_iter().for_each(|rows| {
                let mut wide = vec![0.0; rows.len() * k];
                for (row, out) in rows.clone().zip(wide.chunks_exact_mut(k)) {
                    self.dequantize_row(row, out);
                }
                let dims = [m, k, rows.len()];
                match &narrow_x {
                    // SAFETY: the task's `[m, rows.len()]` columns from `rows.start` are its
                    // alone, and the kernel writes every one of them; the CPU has its
                    // instructions.
                    Some(x) => unsafe {
                        bf16_products(shared.at(rows.start), n, x, &narrowed(&wide), dims)
                    },
                    // SAFETY: as above, `gemm` writing them.
                    None => unsafe {
                        matmul_into(shared.at(rows.start), n, x, &wide, dims, Rhs::Transposed)
                    },
                }
            });
        }
        // SAFETY: the tasks' columns cover all `n`, each written in every one of the `m` rows.
        unsafe { out.set_len(m * n) };
        out
    }

    /// `write(r, row, x[r] · row)` for the matrix's rows `rows` (starting on a group) and each
    /// row `r` of the quantized activations.
    fn dots(
        &self,
        rows: Range<usize>,
        x: &[BlockQ8_0],
        sums: &[i32],
        write: impl Fn(usize, usize, f32),
    ) {
        let per_row = self.blocks_per_row;
        let grouped = self.grouped_rows();
        for first in (rows.start..rows.end.min(grouped)).step_by(GROUP_ROWS) {
            let group = &self.groups[first / GROUP_ROWS * per_row..][..per_row];
            for (r, (x, sums)) in x
                .chunks_exact(per_row)
                .zip(sums.chunks_exact(per_row))
                .enumerate()
            {
                for (i, value) in B::dot8(group, x, sums).into_iter().enumerate() {
                    write(r, first + i, value);
                }
            }
        }
        for row in rows.start.max(grouped)..rows.end {
            let blocks = &self.rest[(row - grouped) * per_row..][..per_row];
            for (r, x) in x.chunks_exact(per_row).enumerate() {
                write(r, row, B::dot(blocks, x));
            }
        }
    }
}

/// Each activation block's sum of values, which a Q4_0 kernel takes once per block for the
/// nibbles' offset of 8 (`Σ (q - 8) x = Σ q x - 8 Σ x`) instead of once per row.
pub(crate) fn sums_of(x: &[BlockQ8_0]) -> Vec<i32> {
    x.iter()
        .map(|b| b.quants.iter().map(|&q| i32::from(q)).sum())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "x86_64")]
    use crate::arch::x86;
    use crate::quant::tests::awkward_values;
    use crate::quant::{quantize_q4_0, quantize_q8_0};
    use crate::widen::round_through;

    #[test]
    fn payloads_interleave_as_documented_and_come_back() {
        let rows: [[u8; 16]; 8] =
            std::array::from_fn(|r| std::array::from_fn(|b| (r * 16 + b) as u8));
        let out: [u8; 128] = interleave_payloads(rows.each_ref());
        // First 32 bytes: rows 0, 1, 4, 5, bytes 0-7; then their bytes 8-15.
        assert_eq!(&out[..8], &rows[0][..8]);
        assert_eq!(&out[8..16], &rows[1][..8]);
        assert_eq!(&out[16..24], &rows[4][..8]);
        assert_eq!(&out[24..32], &rows[5][..8]);
        assert_eq!(&out[32..40], &rows[0][8..]);
        assert_eq!(&out[64..72], &rows[2][..8]);
        assert_eq!(&out[120..128], &rows[7][8..]);
        for (r, row) in rows.iter().enumerate() {
            assert_eq!(&payload_of::<16, 128>(&out, r), row);
        }
    }

    type Dot8<B> = Box<dyn Fn(&[<B as Interleave>::Group], &[BlockQ8_0], &[i32]) -> [f32; 8]>;

    /// Every kernel this CPU runs, by name, the dispatched one first.
    fn kernels<B: Interleave>() -> Vec<(&'static str, Dot8<B>)> {
        #[allow(unused_mut)] // where there is no vector module
        let mut kernels: Vec<(&'static str, Dot8<B>)> = vec![("dispatched", Box::new(B::dot8))];
        #[cfg(target_arch = "x86_64")]
        {
            if x86::has_avx2_fma_f16c() {
                // SAFETY: AVX2, FMA and F16C were detected.
                kernels.push(("avx2", Box::new(|g, x, s| unsafe { B::avx2_dot8(g, x, s) })));
            }
            if x86::has_avx512_vnni() {
                // SAFETY: AVX-512 VNNI and VL, AVX2, FMA and F16C were detected.
                kernels.push(("vnni", Box::new(|g, x, s| unsafe { B::vnni_dot8(g, x, s) })));
            }
        }
        kernels
    }

    /// Each kernel this CPU runs, row by row against the portable dot of the row's blocks: the
    /// same integer sums, scaled and added in another order.
    fn eight_rows_each_match_their_own_dot<B: Interleave>(quantize: fn(&[f32]) -> Vec<B>) {
        let kernels = kernels::<B>();
        eprintln!(
            "{}: {:?}",
            B::NAME,
            kernels.iter().map(|(name, _)| name).collect::<Vec<_>>()
        );
        for blocks in [1, 2, 3, 24, 96] {
            let w = quantize(&awkward_values(8 * blocks, blocks as u64));
            let matrix = Interleaved::new(&w, 8);
            let mut x = Vec::new();
            quantize_activations(&awkward_values(blocks, 77 + blocks as u64), &mut x);
            let sums = sums_of(&x);
            let portable = B::portable_dot8(&matrix.groups, &x);
            for (row, w) in w.chunks_exact(blocks).enumerate() {
                let expected = B::portable_dot(w, &x);
                assert_eq!(portable[row], expected, "{} row {row}", B::NAME);
                let magnitude: f32 = w
                    .iter()
                    .zip(&x)
                    .map(|(w, x)| {
                        let (mut a, mut b) = ([0.0; 32], [0.0; 32]);
                        w.dequantize_into(&mut a);
                        x.dequantize_into(&mut b);
                        a.iter().zip(&b).map(|(a, b)| (a * b).abs()).sum::<f32>()
                    })
                    .sum();
                for (kernel, dot8) in &kernels {
                    let got = dot8(&matrix.groups, &x, &sums)[row];
                    // Exact integer sums; only the scaled blocks' float sum rounds (fused here).
                    assert!(
                        (got - expected).abs() <= magnitude * 1e-6,
                        "{} {kernel}, {blocks} blocks, row {row}: {got} vs {expected}",
                        B::NAME,
                    );
                }
            }
        }
    }

    #[test]
    fn q4_0_eight_rows_each_match_their_own_dot() {
        eight_rows_each_match_their_own_dot(quantize_q4_0);
    }

    #[test]
    fn q8_0_eight_rows_each_match_their_own_dot() {
        eight_rows_each_match_their_own_dot(quantize_q8_0);
    }

    /// Each output against the products of the dequantized weights with the quantized
    /// activations (few rows) or the float32 activations (many rows); whole groups of rows and
    /// rows left over.
    fn product_matches_its_definition<B: Interleave>(quantize: fn(&[f32]) -> Vec<B>) {
        let k = 96;
        for (n, m) in [7, 8, 37]
            .into_iter()
            .flat_map(|n| [1, 3, MAX_DOT_ROWS, MAX_DOT_ROWS + 1].map(|m| (n, m)))
        {
            let x = awkward_values(m * k / 32, 10 + m as u64);
            let w = quantize(&awkward_values(n * k / 32, 20 + n as u64));
            let matrix = Interleaved::new(&w, n);
            assert_eq!(matrix.to_blocks(), w, "{} n = {n}", B::NAME);
            let got = matrix.times_transposed(&x, m);
            let mut wide_w = vec![0.0; n * k];
            dequantize(&w, &mut wide_w);
            let mut quantized = Vec::new();
            quantize_activations(&x, &mut quantized);
            let mut wide_x = vec![0.0; m * k];
            dequantize(&quantized, &mut wide_x);
            // Many rows: float32, or both sides rounded to bf16 where the CPU multiplies those.
            let mut many = x.clone();
            if m > MAX_DOT_ROWS && has_bf16_products() {
                round_through::<half::bf16>(&mut many);
                round_through::<half::bf16>(&mut wide_w);
            }
            let x_seen = if m <= MAX_DOT_ROWS { &wide_x } else { &many };
            for r in 0..m {
                for j in 0..n {
                    let expected: f64 = (0..k)
                        .map(|i| f64::from(x_seen[r * k + i]) * f64::from(wide_w[j * k + i]))
                        .sum();
                    let magnitude: f64 = (0..k)
                        .map(|i| f64::from((x_seen[r * k + i] * wide_w[j * k + i]).abs()))
                        .sum();
                    let value = f64::from(got[r * n + j]);
                    assert!(
                        (value - expected).abs() <= magnitude * 1e-5 + 1e-6,
                        "{} [{m}, {n}] [{r}, {j}]: {value} vs {expected}",
                        B::NAME
                    );
                }
            }
        }
    }

    #[test]
    fn q8_0_products_match_their_definition_for_every_row_count() {
        product_matches_its_definition(quantize_q8_0);
    }

    #[test]
    fn q4_0_products_match_their_definition_for_every_row_count() {
        product_matches_its_definition(quantize_q4_0);
    }

    #[test]
    fn rows_come_back_dequantized_as_they_went_in() {
        let w = quantize_q8_0(&awkward_values(22, 5));
        let matrix = Interleaved::new(&w, 11);
        assert_eq!((matrix.rows(), matrix.blocks_per_row()), (11, 2));
        for row in [0, 5, 7, 8, 10] {
            let mut got = vec![0.0; 64];
            matrix.dequantize_row(row, &mut got);
            let mut expected = vec![0.0; 64];
            dequantize(&w[row * 2..][..2], &mut expected);
            assert_eq!(got, expected, "row {row}");
        }
    }

    #[test]
    fn sums_are_each_block_s() {
        // A block of one value everywhere (all 127), one alternating (nothing), one ramp.
        let mut values = vec![1.0; 32];
        values.extend((0..32).map(|i| if i % 2 == 0 { 0.5 } else { -0.5 }));
        values.extend((0..32).map(|i| i as f32));
        let mut x = Vec::new();
        quantize_activations(&values, &mut x);
        // The ramp: round(i × 127 / 31), summed.
        let ramp: i32 = (0..32)
            .map(|i| (i as f32 * 127.0 / 31.0).round_ties_even() as i32)
            .sum();
        assert_eq!(sums_of(&x), [32 * 127, 0, ramp]);
    }
}
