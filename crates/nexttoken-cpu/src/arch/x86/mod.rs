//! x86-64: the register-wide loads and stores of each float type, the kernels written once for
//! any register width ([`Vector`]), and a module per instruction set that instantiates them.

pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod avx512_bf16;
pub(crate) mod quant;

use std::arch::x86_64::{
    __m256, __m512, _CMP_UNORD_Q, _MM_FROUND_TO_NEAREST_INT, _mm_add_ps, _mm_cvtss_f32,
    _mm_loadu_si128, _mm_movehdup_ps, _mm_movehl_ps, _mm_packus_epi32, _mm_storeu_si128,
    _mm256_add_epi32, _mm256_add_ps, _mm256_and_si256, _mm256_blendv_epi8, _mm256_castps_si256,
    _mm256_castps256_ps128, _mm256_castsi256_ps, _mm256_castsi256_si128, _mm256_cmp_ps,
    _mm256_cvtepu16_epi32, _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_extractf128_ps,
    _mm256_extracti128_si256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_loadu_si256,
    _mm256_or_si256, _mm256_set1_epi32, _mm256_setzero_ps, _mm256_slli_epi32, _mm256_srli_epi32,
    _mm256_storeu_ps, _mm512_add_ps, _mm512_castsi512_ps, _mm512_cvtepu16_epi32, _mm512_cvtph_ps,
    _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_reduce_add_ps, _mm512_setzero_ps, _mm512_slli_epi32,
    _mm512_storeu_ps,
};
use std::sync::OnceLock;

use half::{bf16, f16};

use crate::Float;
use crate::arch::{Level, level};

/// What [`avx2`]'s kernels need.
pub(crate) fn has_avx2_fma_f16c() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Whether the CPU has AVX-512F and AVX-512 BF16, what [`avx512_bf16`] needs.
pub(crate) fn has_avx512_bf16() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| matches!(level(), Level::Avx512) && is_x86_feature_detected!("avx512bf16"))
}

/// Whether the CPU has AVX-512 VNNI for 256-bit registers (`vpdpbusd`), what the quantized
/// kernels' VNNI versions need beside AVX2.
pub(crate) fn has_avx512_vnni() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        has_avx2_fma_f16c()
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl")
    })
}

/// A register's worth of a float type, widened to float32 as it is loaded or rounded as it is
/// stored, in one or two instructions. Each method is `#[inline]`: the kernels that call them
/// are generic, so they are compiled in the crate that uses them, and a call that cannot be
/// inlined there costs more than the load (decode ran at half speed).
pub trait Load: Sized {
    /// 16 values from `at` as float32s.
    ///
    /// # Safety
    /// The CPU has AVX-512F, and 16 values from `at` are readable.
    unsafe fn load16(at: *const Self) -> __m512;

    /// 8 values from `at` as float32s.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C, and 8 values from `at` are readable.
    unsafe fn load8(at: *const Self) -> __m256;

    /// Stores 8 float32s at `at`, each rounded as [`Float::from_f32`] rounds it.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C, and 8 values at `at` are writable.
    unsafe fn store8(at: *mut Self, values: __m256);
}

impl Load for f32 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(at: *const f32) -> __m512 {
        // SAFETY: 16 values are readable (the caller's promise); no alignment is needed.
        unsafe { _mm512_loadu_ps(at) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(at: *const f32) -> __m256 {
        // SAFETY: 8 values are readable (the caller's promise); no alignment is needed.
        unsafe { _mm256_loadu_ps(at) }
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn store8(at: *mut f32, values: __m256) {
        // SAFETY: 8 values are writable (the caller's promise); no alignment is needed.
        unsafe { _mm256_storeu_ps(at, values) }
    }
}

impl Load for bf16 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(at: *const bf16) -> __m512 {
        // SAFETY: as for f32's; a `bf16` is a `repr(transparent)` `u16`.
        let bits = unsafe { _mm256_loadu_si256(at.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(at: *const bf16) -> __m256 {
        // SAFETY: as for f32's; a `bf16` is a `repr(transparent)` `u16`.
        let bits = unsafe { _mm_loadu_si128(at.cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
    }

    /// `half`'s rounding in integer arithmetic: adding `0x7fff` plus the lowest kept bit
    /// carries into the kept half exactly when the dropped half is above one half, or at
    /// one half with the kept half odd (a carry out of the largest finite value makes the
    /// infinity's bits); a NaN keeps its top bits and becomes quiet.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn store8(at: *mut bf16, values: __m256) {
        let bits = _mm256_castps_si256(values);
        let lowest_kept = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
        let bias = _mm256_add_epi32(lowest_kept, _mm256_set1_epi32(0x7fff));
        let rounded = _mm256_add_epi32(bits, bias);
        let quiet_nan = _mm256_or_si256(bits, _mm256_set1_epi32(0x0040_0000));
        let is_nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(values, values));
        let kept = _mm256_srli_epi32::<16>(_mm256_blendv_epi8(rounded, quiet_nan, is_nan));
        // Each lane now holds 16 bits, so packing with unsigned saturation keeps them.
        let packed = _mm_packus_epi32(
            _mm256_castsi256_si128(kept),
            _mm256_extracti128_si256::<1>(kept),
        );
        // SAFETY: as for f32's; a `bf16` is a `repr(transparent)` `u16`.
        unsafe { _mm_storeu_si128(at.cast(), packed) }
    }
}

impl Load for f16 {
    /// `vcvtph2ps`: Rust has no stable `f16` type whose widening LLVM would vectorize into
    /// it, and [`Float::to_f32`]'s bit arithmetic costs several instructions a value.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(at: *const f16) -> __m512 {
        // SAFETY: as for f32's; an `f16` is a `repr(transparent)` `u16`.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(at.cast()) })
    }

    /// F16C's `vcvtph2ps`, for the same reason.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(at: *const f16) -> __m256 {
        // SAFETY: as for f32's; an `f16` is a `repr(transparent)` `u16`.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(at.cast()) })
    }

    /// F16C's `vcvtps2ph`, to nearest even: the instruction `half` itself uses, one value at a
    /// time, where F16C is detected.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn store8(at: *mut f16, values: __m256) {
        let narrow = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(values);
        // SAFETY: as for f32's; an `f16` is a `repr(transparent)` `u16`.
        unsafe { _mm_storeu_si128(at.cast(), narrow) }
    }
}

/// A vector register of float32s, for the kernels written for any width.
///
/// # Safety
/// Each method needs the CPU to have the register's instructions.
trait Vector: Copy {
    const LANES: usize;
    /// `LANES` values from `at`, widened ([`Load`]).
    unsafe fn load<W: Float>(at: *const W) -> Self;
    unsafe fn store(self, at: *mut f32);
    /// `self · b + c`, fused.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    unsafe fn zero() -> Self;
    unsafe fn plus(self, other: Self) -> Self;
    unsafe fn total(self) -> f32;
}

/// [`Vector`] for a register type, from its instructions: the two widths differ only in them.
macro_rules! vector {
    ($register:ty, $lanes:literal, $load:ident, $store:ident, $fmadd:ident, $zero:ident,
     $add:ident, $total:ident) => {
        impl Vector for $register {
            const LANES: usize = $lanes;

            #[inline(always)]
            unsafe fn load<W: Float>(at: *const W) -> Self {
                // SAFETY: the register's instructions, `LANES` values readable at `at` (the
                // caller's promises).
                unsafe { W::$load(at) }
            }

            #[inline(always)]
            unsafe fn store(self, at: *mut f32) {
                // SAFETY: the register's instructions, `LANES` values writable at `at` (the
                // caller's promises); no alignment is needed.
                unsafe { $store(at, self) }
            }

            #[inline(always)]
            unsafe fn mul_add(self, b: Self, c: Self) -> Self {
                // SAFETY: the register's instructions (the caller's promise).
                unsafe { $fmadd(self, b, c) }
            }

            #[inline(always)]
            unsafe fn zero() -> Self {
                // SAFETY: the register's instructions (the caller's promise).
                unsafe { $zero() }
            }

            #[inline(always)]
            unsafe fn plus(self, other: Self) -> Self {
                // SAFETY: the register's instructions (the caller's promise).
                unsafe { $add(self, other) }
            }

            #[inline(always)]
            unsafe fn total(self) -> f32 {
                // SAFETY: the register's instructions (the caller's promise).
                unsafe { $total(self) }
            }
        }
    };
}

vector!(
    __m512,
    16,
    load16,
    _mm512_storeu_ps,
    _mm512_fmadd_ps,
    _mm512_setzero_ps,
    _mm512_add_ps,
    _mm512_reduce_add_ps
);
vector!(
    __m256,
    8,
    load8,
    _mm256_storeu_ps,
    _mm256_fmadd_ps,
    _mm256_setzero_ps,
    _mm256_add_ps,
    total8
);

/// The sum of a 256-bit register's 8 lanes: halves, pairs, then the last two.
///
/// # Safety
/// The CPU has AVX.
#[inline(always)]
unsafe fn total8(register: __m256) -> f32 {
    // SAFETY: AVX (the caller's promise); the rest is SSE, which every x86-64 CPU has.
    unsafe {
        let halves = _mm_add_ps(
            _mm256_castps256_ps128(register),
            _mm256_extractf128_ps::<1>(register),
        );
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ps(pairs, _mm_movehdup_ps(pairs)))
    }
}

/// Widening a register at a time.
///
/// # Safety
/// The CPU has `V`'s instructions.
#[inline(always)]
unsafe fn widen_by<V: Vector, W: Float>(wide: &mut [f32], values: &[W]) {
    let mut wide = wide.chunks_exact_mut(V::LANES);
    let mut values = values.chunks_exact(V::LANES);
    for (wide, values) in (&mut wide).zip(&mut values) {
        // SAFETY: `V`'s instructions (the caller's promise); both hold LANES values.
        unsafe { V::load(values.as_ptr()).store(wide.as_mut_ptr()) }
    }
    for (wide, value) in wide.into_remainder().iter_mut().zip(values.remainder()) {
        *wide = value.to_f32();
    }
}

/// [`crate::product::dots`] a register at a time, inputs and weights widened as they are
/// loaded, with four running sums a row, so that the multiply-adds do not wait on each other.
///
/// Rows go in pairs, one from each half of `rows`: two streams from memory where one row
/// after another is one. A single stream left a core reading well below what the memory gives
/// one core, the more so for half precision, whose widening leaves fewer loads in flight.
///
/// bf16 weights are widened here too, not multiplied in pairs by AVX-512 BF16's `vdpbf16ps`
/// as a prompt's are ([`avx512_bf16::products`]): a decode step is bound by memory, and the
/// pairs measured slower (docs/performance.md).
///
/// # Safety
/// The CPU has `V`'s instructions.
#[inline(always)]
unsafe fn dots_by<V: Vector, X: Float, W: Float>(out: &mut [f32], x: &[X], rows: &[W], c: usize) {
    let m = x.len() / c;
    let n = rows.len() / c;
    let (first, second) = rows.split_at(n / 2 * c);
    let (out_first, out_second) = out.split_at_mut(n / 2 * m);
    let pairs = first.chunks_exact(c).zip(second.chunks_exact(c));
    let outs = out_first
        .chunks_exact_mut(m)
        .zip(out_second.chunks_exact_mut(m));
    for ((out_a, out_b), (row_a, row_b)) in outs.zip(pairs) {
        for ((a, b), x) in out_a.iter_mut().zip(out_b).zip(x.chunks_exact(c)) {
            // SAFETY: the CPU has V's instructions (the caller's promise).
            [*a, *b] = unsafe { sums_of::<2, V, X, W>(x, [row_a, row_b]) };
        }
    }
    if n % 2 == 1 {
        let row = &second[second.len() - c..];
        let last = out_second.len() - m;
        let out = &mut out_second[last..];
        for (out, x) in out.iter_mut().zip(x.chunks_exact(c)) {
            // SAFETY: as above.
            [*out] = unsafe { sums_of::<1, V, X, W>(x, [row]) };
        }
    }
}

/// `x · row` for each of `rows`, each with four running sums (see [`dots_by`]).
///
/// # Safety
/// As [`dots_by`].
#[inline(always)]
unsafe fn sums_of<const R: usize, S: Vector, X: Float, W: Float>(
    x: &[X],
    rows: [&[W]; R],
) -> [f32; R] {
    let lanes = S::LANES;
    let step = |sum: S, x: *const X, w: *const W| {
        // SAFETY: the CPU has S's instructions (the caller's promise), and each use below reads
        // `lanes` values within `x` and its row.
        unsafe { S::load(x).mul_add(S::load(w), sum) }
    };
    let block = 4 * lanes;
    let body = x.len() / block * block;
    // SAFETY: the CPU has S's instructions (the caller's promise).
    let mut sums = [[unsafe { S::zero() }; 4]; R];
    assert!(rows.iter().all(|row| row.len() >= x.len()));
    let x_at = x.as_ptr();
    let rows_at = rows.map(<[W]>::as_ptr);
    let mut start = 0;
    while start < body {
        for k in 0..4 {
            let at = start + k * lanes;
            for (row_sums, row_at) in sums.iter_mut().zip(rows_at) {
                // SAFETY: `at + lanes <= body`, within `x` and every row (asserted).
                let (x, w) = unsafe { (x_at.add(at), row_at.add(at)) };
                row_sums[k] = step(row_sums[k], x, w);
            }
        }
        start += block;
    }
    // What is left of whole vectors, one sum each (a bf16 head of 64 values was two vectors of
    // 32 pairs and no block of 128, and went value by value).
    for k in 0..4 {
        if start + lanes > x.len() {
            break;
        }
        for (row_sums, row_at) in sums.iter_mut().zip(rows_at) {
            // SAFETY: `start + lanes <= x.len()`, within `x` and every row (asserted).
            let (x, w) = unsafe { (x_at.add(start), row_at.add(start)) };
            row_sums[k] = step(row_sums[k], x, w);
        }
        start += lanes;
    }
    // A loop, not `array::from_fn`: its closure is a function of its own, compiled without
    // this one's instructions (a call per vector operation, a third of the time).
    let mut totals = [0.0; R];
    for ((total, [a, b, c, d]), row) in totals.iter_mut().zip(sums).zip(rows) {
        let tail: f32 = x[start..]
            .iter()
            .zip(&row[start..])
            .map(|(x, w)| x.to_f32() * w.to_f32())
            .sum();
        // SAFETY: as above.
        *total = unsafe { a.plus(b).plus(c.plus(d)).total() } + tail;
    }
    totals
}

/// Weight rows a [`tiled_dots_by`] tile reads together.
const TILE_WEIGHTS: usize = 4;
/// Input rows a [`tiled_dots_by`] tile reads together: with [`TILE_WEIGHTS`], 12 running sums,
/// the three inputs' registers and one weight's, AVX2's 16 registers.
const TILE_INPUTS: usize = 3;

/// [`crate::product::dots`] for several input rows: each weight register, loaded (and widened)
/// once, meets [`TILE_INPUTS`] inputs, and each input register [`TILE_WEIGHTS`] weights, so that
/// a batch of rows reads each weight once from memory and does 12 multiply-adds for every 7
/// loads, where one row at a time re-read (and re-widened) the weights for every row.
///
/// Writes `x[r] · rows[j]` at `out + r * row_stride + j`: `[m, n]` for `x: [m, c]` and
/// `rows: [n, c]`.
///
/// # Safety
/// The CPU has `V`'s instructions; `m` rows of `n` values `row_stride` apart from `out` are
/// writable, and nothing else reads or writes them during the call.
#[inline(always)]
unsafe fn tiled_dots_by<V: Vector, W: Float>(
    out: *mut f32,
    row_stride: usize,
    x: &[f32],
    rows: &[W],
    c: usize,
) {
    let n = rows.len() / c;
    let mut first = 0;
    while first < n {
        let taken = if n - first >= TILE_WEIGHTS {
            TILE_WEIGHTS
        } else {
            1
        };
        let weights = &rows[first * c..(first + taken) * c];
        // SAFETY: the CPU has V's instructions, and columns `first..first + taken` of the `m`
        // rows at `out` are writable (the caller's promises).
        unsafe {
            let out = out.add(first);
            match taken {
                TILE_WEIGHTS => tiles_of::<TILE_WEIGHTS, V, W>(out, row_stride, x, weights, c),
                _ => tiles_of::<1, V, W>(out, row_stride, x, weights, c),
            }
        }
        first += taken;
    }
}

/// Every input row of `x` times the `R` weight rows of `weights`, [`TILE_INPUTS`] inputs at a
/// time, written at `out + r * row_stride + j`.
///
/// # Safety
/// As [`tiled_dots_by`], for `R` columns.
#[inline(always)]
unsafe fn tiles_of<const R: usize, V: Vector, W: Float>(
    out: *mut f32,
    row_stride: usize,
    x: &[f32],
    weights: &[W],
    c: usize,
) {
    let m = x.len() / c;
    let weights: [&[W]; R] = std::array::from_fn(|j| &weights[j * c..][..c]);
    let mut input = 0;
    while input < m {
        let taken = (m - input).min(TILE_INPUTS);
        let inputs = &x[input * c..(input + taken) * c];
        // SAFETY: as above.
        let sums: [[f32; TILE_INPUTS]; R] = unsafe {
            match taken {
                TILE_INPUTS => widen_tile(tile::<R, TILE_INPUTS, V, W>(inputs, weights, c)),
                2 => widen_tile(tile::<R, 2, V, W>(inputs, weights, c)),
                _ => widen_tile(tile::<R, 1, V, W>(inputs, weights, c)),
            }
        };
        for (j, sums) in sums.iter().enumerate() {
            for (i, &sum) in sums[..taken].iter().enumerate() {
                // SAFETY: row `input + i` < `m`, column `j` < `R` (the caller's promise).
                unsafe { *out.add((input + i) * row_stride + j) = sum };
            }
        }
        input += taken;
    }
}

/// A tile's sums in an array of [`TILE_INPUTS`] per weight row, the unused ones zero.
#[inline(always)]
fn widen_tile<const R: usize, const I: usize>(sums: [[f32; I]; R]) -> [[f32; TILE_INPUTS]; R] {
    let mut wide = [[0.0; TILE_INPUTS]; R];
    for (wide, sums) in wide.iter_mut().zip(sums) {
        wide[..I].copy_from_slice(&sums);
    }
    wide
}

/// `x[i] · weights[j]` for the `I` input rows of `x` and the `R` weight rows, one running sum
/// each.
///
/// # Safety
/// As [`tiled_dots_by`].
#[inline(always)]
unsafe fn tile<const R: usize, const I: usize, V: Vector, W: Float>(
    x: &[f32],
    weights: [&[W]; R],
    c: usize,
) -> [[f32; I]; R] {
    let lanes = V::LANES;
    let body = c / lanes * lanes;
    assert!(x.len() >= I * c && weights.iter().all(|row| row.len() >= c));
    // SAFETY: the CPU has V's instructions (the caller's promise).
    let zero = unsafe { V::zero() };
    let mut sums = [[zero; I]; R];
    let mut inputs = [zero; I];
    let mut at = 0;
    while at < body {
        for (i, input) in inputs.iter_mut().enumerate() {
            // SAFETY: `at + lanes <= body <= c`, within input row `i` (asserted).
            *input = unsafe { V::load(x.as_ptr().add(i * c + at)) };
        }
        for (row_sums, row) in sums.iter_mut().zip(weights) {
            // SAFETY: as above, within the weight row (asserted).
            let weight = unsafe { V::load(row.as_ptr().add(at)) };
            for (sum, input) in row_sums.iter_mut().zip(inputs) {
                // SAFETY: V's instructions.
                *sum = unsafe { input.mul_add(weight, *sum) };
            }
        }
        at += lanes;
    }
    let mut totals = [[0.0; I]; R];
    for ((totals, row_sums), row) in totals.iter_mut().zip(sums).zip(weights) {
        for (i, (total, sum)) in totals.iter_mut().zip(row_sums).enumerate() {
            let tail: f32 = x[i * c + body..(i + 1) * c]
                .iter()
                .zip(&row[body..c])
                .map(|(x, w)| x * w.to_f32())
                .sum();
            // SAFETY: V's instructions.
            *total = unsafe { sum.total() } + tail;
        }
    }
    totals
}
