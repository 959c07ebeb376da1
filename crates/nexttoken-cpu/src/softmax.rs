//! Scores to probabilities, with a vectorised exponential: libm's `expf` takes one value at a
//! time, 50257 a step for GPT-2's head and most of a prompt's attention time in burn-flex.

use crate::arch::dispatch;
use crate::arch::portable::madd;

/// `e^(s - max) / Σ e^(s - max)` for every score, in place, on the calling thread. Scores of
/// `-inf` (masked) get 0, as do scores more than 87 below the largest (float32's `e^-87` is
/// its smallest normal). A row of nothing but `-inf` comes out uniform, where PyTorch's gives
/// NaNs: callers that can meet one check for it first (generation refuses such a row).
pub fn softmax_in_place(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let normaliser = exp_minus(scores, max).recip();
    scores.iter_mut().for_each(|score| *score *= normaliser);
}

/// `scores[i] = e^(scores[i] - max)`, returning their sum: a softmax's numerators.
pub fn exp_minus(scores: &mut [f32], max: f32) -> f32 {
    dispatch!(exp_minus_with[](scores, max))
}

/// The lanes' float32 sums go into a float64 total every this many values. A model's
/// distribution has a few large terms and tens of thousands of tiny ones: added one by one to a
/// float32 sum that already holds the large ones, each tiny term loses its low bits the same
/// way, and over GPT-2's 50257 ids the sum came out 3.6e-5 low (a 0.2 probability off by 8e-6).
/// Per block of 256 the rounding stays below 1e-6 of the sum.
const BLOCK: usize = 256;

#[inline(always)]
fn exp_minus_with<const FUSED: bool>(scores: &mut [f32], max: f32) -> f32 {
    const LANES: usize = 16;
    let mut total = 0.0f64;
    let mut blocks = scores.chunks_mut(BLOCK);
    for block in &mut blocks {
        let mut sums = [0.0f32; LANES];
        let mut chunks = block.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for lane in 0..LANES {
                chunk[lane] = exp_of_negative::<FUSED>(chunk[lane] - max);
                sums[lane] += chunk[lane];
            }
        }
        for score in chunks.into_remainder() {
            *score = exp_of_negative::<FUSED>(*score - max);
            sums[0] += *score;
        }
        total += sums.iter().map(|&sum| f64::from(sum)).sum::<f64>();
    }
    total as f32
}

/// `e^x` for `x ≤ 0` (0 below float32's smallest normal's logarithm), within 2 ulp, in
/// operations that vectorize: `x = n ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by its Taylor
/// series to degree 7, times `2^n` built in the exponent bits.
#[inline(always)]
pub(crate) fn exp_of_negative<const FUSED: bool>(x: f32) -> f32 {
    // Adding 1.5 · 2^23 rounds to an integer, which lands in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    const LN_2_HIGH: f32 = 0.693_145_75; // ln 2's leading bits: n · LN_2_HIGH is exact
    const LN_2_LOW: f32 = 1.428_606_8e-6;
    const LOWEST: f32 = -87.0; // e^-87 is just above float32's smallest normal
    let clamped = x.max(LOWEST);
    let shifted = madd::<FUSED>(clamped, std::f32::consts::LOG2_E, SHIFTER);
    let n = shifted - SHIFTER;
    let r = madd::<FUSED>(n, -LN_2_LOW, madd::<FUSED>(n, -LN_2_HIGH, clamped));
    let mut series = 1.0 / 5040.0;
    for coefficient in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        series = madd::<FUSED>(series, r, coefficient);
    }
    let biased = shifted
        .to_bits()
        .wrapping_sub(SHIFTER.to_bits())
        .wrapping_add(127);
    let power_of_two = f32::from_bits(biased << 23);
    if x < LOWEST {
        0.0
    } else {
        series * power_of_two
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponentials_are_within_two_ulp_of_libms() {
        let ulp = |x: f32| f32::from_bits(x.to_bits() + 1) - x;
        // Every 2^-10 over the range it serves, and below it (zero, as e^x has underflowed).
        for i in 0..=(100 << 10) {
            let x = -(i as f32) / 1024.0;
            let reference = x.exp();
            for ours in [exp_of_negative::<false>(x), exp_of_negative::<true>(x)] {
                if x < -87.0 {
                    assert!(
                        ours == 0.0 || (ours - reference).abs() < 1e-37,
                        "e^{x}: {ours}"
                    );
                } else {
                    let error = (ours - reference).abs() / ulp(reference);
                    assert!(error <= 2.0, "e^{x}: {ours}, libm {reference}");
                }
            }
        }
        // The dispatched kernel, through its vector body and its tail: a softmax's numerators.
        let mut scores: Vec<f32> = (0..37).map(|i| i as f32 * 0.25).collect();
        let sum = exp_minus(&mut scores, 9.0);
        let reference: Vec<f32> = (0..37).map(|i| (i as f32 * 0.25 - 9.0).exp()).collect();
        for (ours, reference) in scores.iter().zip(&reference) {
            assert!(
                (ours - reference).abs() <= 2.0 * ulp(*reference),
                "{ours} vs {reference}"
            );
        }
        assert!((sum - reference.iter().sum::<f32>()).abs() < 1e-5);
        assert_eq!(exp_of_negative::<true>(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn probabilities_match_the_definition_and_masked_scores_get_none() {
        // GPT-2's vocabulary of logits: spread evenly, then as a model's are (a few ids far
        // above a long tail, whose tiny terms a plain float32 sum loses); and a short masked row.
        for (spread, peak) in [(1.0, 0.0), (0.25, 14.0)] {
            let logits: Vec<f32> = (0..50257)
                .map(|i| {
                    let even = ((i * 7919 % 1000) as f32 - 500.0) / 60.0;
                    even * spread + if i % 9973 == 0 { peak } else { 0.0 }
                })
                .collect();
            let mut ours = logits.clone();
            softmax_in_place(&mut ours);
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let total: f64 = logits.iter().map(|s| f64::from(s - max).exp()).sum();
            for (ours, score) in ours.iter().zip(&logits) {
                let exact = f64::from(score - max).exp() / total;
                assert!(
                    (f64::from(*ours) - exact).abs() <= 1e-6 * exact,
                    "{ours} vs {exact}"
                );
            }
        }
        let mut masked = [0.5, f32::NEG_INFINITY, 0.5];
        softmax_in_place(&mut masked);
        assert_eq!(masked, [0.5, 0.0, 0.5]);
    }
}
