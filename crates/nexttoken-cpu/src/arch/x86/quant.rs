//! Dot products over Q8_0 and Q4_0 blocks on AVX2, as ggml-cpu's x86 `ggml_vec_dot_q8_0_q8_0`
//! and `ggml_vec_dot_q4_0_q8_0` compute them: a block's 32 byte products summed exactly in 32-bit
//! integers (`vpmaddubsw` on the weights' magnitudes and the activations signed by them, then
//! `vpmaddwd`), its 8 lane sums converted to float32 and multiplied by both scales into 8
//! running sums. The same integers as the portable loops; only the final float sums' order
//! differs.
//!
//! The eight-row kernels over [`Interleaved`](crate::quant::Interleaved) matrices come in two
//! versions: AVX2's, and one for CPUs with AVX-512 VNNI on 256-bit registers (Zen 4, Ice Lake
//! on), whose `vpdpbusd` multiplies, sums four and accumulates in one instruction where AVX2
//! takes `vpmaddubsw`, `vpmaddwd` and an add.

use std::arch::x86_64::{
    __m128i, __m256, __m256i, _mm_add_ps, _mm_cvtph_ps, _mm_cvtsi32_si128, _mm_cvtss_f32,
    _mm_loadu_si128, _mm_movehdup_ps, _mm_movehl_ps, _mm_mul_ss, _mm_set1_epi16, _mm_srli_epi16,
    _mm256_add_epi16, _mm256_add_epi32, _mm256_add_ps, _mm256_and_si256, _mm256_broadcastss_ps,
    _mm256_castps256_ps128, _mm256_castsi128_si256, _mm256_cvtepi32_ps, _mm256_cvtph_ps,
    _mm256_dpbusd_epi32, _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_hadd_epi32,
    _mm256_inserti128_si256, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_maddubs_epi16,
    _mm256_mul_ps, _mm256_set1_epi8, _mm256_set1_epi16, _mm256_set1_epi32, _mm256_set1_epi64x,
    _mm256_setzero_ps, _mm256_setzero_si256, _mm256_sign_epi8, _mm256_srli_epi16, _mm256_storeu_ps,
    _mm256_sub_epi8, _mm256_sub_epi32,
};

use crate::quant::{BlockQ4_0, BlockQ4_0x8, BlockQ8_0, BlockQ8_0x8};

/// The 8 lane sums of `x[i] · y[i]` over 32 signed bytes, as float32s. `vpmaddubsw` multiplies
/// unsigned by signed bytes, so `x`'s magnitudes meet `y` with `x`'s signs moved onto it; a
/// pair's sum stays below 2 × 128 × 127 and cannot saturate (no quantizer here writes -128).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn products_of_bytes(x: __m256i, y: __m256i) -> __m256 {
    let magnitudes = _mm256_sign_epi8(x, x);
    let signed = _mm256_sign_epi8(y, x);
    let pairs = _mm256_maddubs_epi16(magnitudes, signed);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sum_lanes(sums: __m256) -> f32 {
    let halves = _mm_add_ps(
        _mm256_castps256_ps128(sums),
        _mm256_extractf128_ps::<1>(sums),
    );
    let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    _mm_cvtss_f32(_mm_add_ps(pairs, _mm_movehdup_ps(pairs)))
}

/// The scales' product for one block pair, in every lane: both widened by F16C's `vcvtph2ps`
/// in one instruction (`half`'s `to_f32` checks the CPU at run time on every call, which cost
/// a third of a Q8_0 decode step).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scales(w: half::f16, x: half::f16) -> __m256 {
    let pair = _mm_cvtph_ps(_mm_cvtsi32_si128(
        i32::from(w.to_bits()) | (i32::from(x.to_bits()) << 16),
    ));
    let product = _mm_mul_ss(pair, _mm_movehdup_ps(pair));
    _mm256_broadcastss_ps(product)
}

/// `Σ w · x` over block pairs, each weight block read as its 32 signed bytes and its scale by
/// `bytes`. Two running sums, even and odd blocks, so that one block's multiply-add need not
/// wait for the last one's.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_by<W>(weights: &[W], x: &[BlockQ8_0], bytes: impl Fn(&W) -> (__m256i, half::f16)) -> f32 {
    let block = |sums: __m256, w: &W, x: &BlockQ8_0| {
        let (wq, scale) = bytes(w);
        // SAFETY: a block holds 32 quants; no alignment is needed.
        let xq = unsafe { _mm256_loadu_si256(x.quants.as_ptr().cast()) };
        _mm256_fmadd_ps(scales(scale, x.scale), products_of_bytes(wq, xq), sums)
    };
    let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut weight_pairs = weights.chunks_exact(2);
    let mut x_pairs = x.chunks_exact(2);
    for (w, x) in (&mut weight_pairs).zip(&mut x_pairs) {
        even = block(even, &w[0], &x[0]);
        odd = block(odd, &w[1], &x[1]);
    }
    if let (Some(w), Some(x)) = (
        weight_pairs.remainder().first(),
        x_pairs.remainder().first(),
    ) {
        even = block(even, w, x);
    }
    sum_lanes(_mm256_add_ps(even, odd))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q8_0(weights: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    dot_by(weights, x, |w| {
        // SAFETY: a block holds 32 quants; no alignment is needed.
        let quants = unsafe { _mm256_loadu_si256(w.quants.as_ptr().cast()) };
        (quants, w.scale)
    })
}

/// A Q4_0 block's 32 nibbles as signed bytes in value order: the low nibbles (values 0-15) in
/// the low 16 lanes, the high ones (16-31) above them, less 8.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bytes_of_nibbles(block: &BlockQ4_0) -> __m256i {
    // SAFETY: a block holds 16 bytes of nibbles; no alignment is needed.
    let packed: __m128i = unsafe { _mm_loadu_si128(block.nibbles.as_ptr().cast()) };
    let both =
        _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(packed), _mm_srli_epi16::<4>(packed));
    let nibbles = _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
    _mm256_sub_epi8(nibbles, _mm256_set1_epi8(8))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_q4_0(weights: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    dot_by(weights, x, |w| (bytes_of_nibbles(w), w.scale))
}

/// Activation block `x`'s 8-byte part `part` (values `8 part..8 part + 8`) in each quarter of a
/// register, to meet four rows' bytes of that part at once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn part_of(x: &BlockQ8_0, part: usize) -> __m256i {
    // SAFETY: `part < 4`: the 8 bytes are within the block's 32 quants.
    let bytes = unsafe {
        x.quants
            .as_ptr()
            .add(8 * part)
            .cast::<i64>()
            .read_unaligned()
    };
    _mm256_set1_epi64x(bytes)
}

/// Eight rows' scales times the activation block's, in row order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn group_scales(scales: &[half::f16; 8], x: half::f16) -> __m256 {
    // SAFETY: eight f16s are 16 bytes; no alignment is needed.
    let rows = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(scales.as_ptr().cast()) });
    _mm256_mul_ps(rows, _mm256_cvtph_ps(_mm_set1_epi16(x.to_bits() as i16)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn to_array(sums: __m256) -> [f32; 8] {
    let mut out = [0.0; 8];
    // SAFETY: eight floats; no alignment is needed.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sums) };
    out
}

/// A Q4_0 group's 32 bytes at `chunk` (four rows' 8 bytes) as their low and high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles_of(group: &BlockQ4_0x8, chunk: usize) -> (__m256i, __m256i) {
    // SAFETY: chunk < 4: 32 bytes within the group's 128.
    let bytes = unsafe { _mm256_loadu_si256(group.nibbles.as_ptr().add(32 * chunk).cast()) };
    let low_nibbles = _mm256_set1_epi8(0x0f);
    (
        _mm256_and_si256(bytes, low_nibbles),
        _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low_nibbles),
    )
}

/// `Σ row · x` for eight interleaved rows of Q4_0 blocks, `four_rows(group, first, parts)`
/// giving the 32-bit pair sums of the four rows in chunks `first` and `first + 1` (the unsigned
/// nibbles times the activations' parts). Each block's `8 Σ x` (from `sums`) is taken off the
/// eight rows' integer sums at once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot8_q4_0_by(
    groups: &[BlockQ4_0x8],
    x: &[BlockQ8_0],
    sums: &[i32],
    four_rows: impl Fn(&BlockQ4_0x8, usize, &[__m256i; 4]) -> __m256i,
) -> [f32; 8] {
    let mut total = _mm256_setzero_ps();
    for ((group, x), &sum) in groups.iter().zip(x).zip(sums) {
        let parts: [__m256i; 4] = std::array::from_fn(|part| part_of(x, part));
        let rows = _mm256_hadd_epi32(four_rows(group, 0, &parts), four_rows(group, 2, &parts));
        let rows = _mm256_sub_epi32(rows, _mm256_set1_epi32(8 * sum));
        let scales = group_scales(&group.scales, x.scale);
        total = _mm256_fmadd_ps(scales, _mm256_cvtepi32_ps(rows), total);
    }
    to_array(total)
}

/// [`dot8_q4_0_by`] on AVX2: the nibbles go into `vpmaddubsw` as they are, unsigned 0-15, and
/// four products of at most 2 × 15 × 127 add in 16 bits without saturating before one
/// `vpmaddwd` widens them.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot8_q4_0(groups: &[BlockQ4_0x8], x: &[BlockQ8_0], sums: &[i32]) -> [f32; 8] {
    dot8_q4_0_by(groups, x, sums, |group, first, parts| {
        let products = |chunk: usize, half: usize| {
            let (low, high) = nibbles_of(group, chunk);
            _mm256_add_epi16(
                _mm256_maddubs_epi16(low, parts[half]),
                _mm256_maddubs_epi16(high, parts[half + 2]),
            )
        };
        let four_rows = _mm256_add_epi16(products(first, 0), products(first + 1, 1));
        _mm256_madd_epi16(four_rows, _mm256_set1_epi16(1))
    })
}

/// [`dot8_q4_0_by`] with AVX-512 VNNI's `vpdpbusd`, which multiplies, sums four and accumulates
/// in 32 bits in one instruction.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
pub fn dot8_q4_0_vnni(groups: &[BlockQ4_0x8], x: &[BlockQ8_0], sums: &[i32]) -> [f32; 8] {
    dot8_q4_0_by(groups, x, sums, |group, first, parts| {
        let mut rows = _mm256_setzero_si256();
        for (chunk, half) in [(first, 0), (first + 1, 1)] {
            let (low, high) = nibbles_of(group, chunk);
            rows = _mm256_dpbusd_epi32(rows, low, parts[half]);
            rows = _mm256_dpbusd_epi32(rows, high, parts[half + 2]);
        }
        rows
    })
}

/// `Σ row · x` for eight interleaved rows of Q8_0 blocks: each 32-byte load is four rows' 8
/// values of one part, against that part of the activations in every quarter; `accumulate(sums,
/// unsigned, signed)` adds the products of each four bytes to a 32-bit lane of `sums`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot8_q8_0_by(
    groups: &[BlockQ8_0x8],
    x: &[BlockQ8_0],
    accumulate: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) -> [f32; 8] {
    let mut total = _mm256_setzero_ps();
    for (group, x) in groups.iter().zip(x) {
        let parts: [__m256i; 4] = std::array::from_fn(|part| part_of(x, part));
        let four_rows = |half: usize| {
            let mut sums = _mm256_setzero_si256();
            for (part, &x) in parts.iter().enumerate() {
                // SAFETY: half < 2, part < 4: 32 bytes within the group's 256.
                let w = unsafe {
                    _mm256_loadu_si256(group.quants.as_ptr().add(32 * (4 * half + part)).cast())
                };
                // The weights' magnitudes, the activations with the weights' signs.
                sums = accumulate(sums, _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
            }
            sums
        };
        let rows = _mm256_hadd_epi32(four_rows(0), four_rows(1));
        let scales = group_scales(&group.scales, x.scale);
        total = _mm256_fmadd_ps(scales, _mm256_cvtepi32_ps(rows), total);
    }
    to_array(total)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot8_q8_0(groups: &[BlockQ8_0x8], x: &[BlockQ8_0]) -> [f32; 8] {
    dot8_q8_0_by(groups, x, |sums, unsigned, signed| {
        let pairs = _mm256_maddubs_epi16(unsigned, signed);
        _mm256_add_epi32(sums, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    })
}

#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
pub fn dot8_q8_0_vnni(groups: &[BlockQ8_0x8], x: &[BlockQ8_0]) -> [f32; 8] {
    dot8_q8_0_by(groups, x, |sums, unsigned, signed| {
        _mm256_dpbusd_epi32(sums, unsigned, signed)
    })
}
