//! Layer norm over float32 rows, with gamma and beta read as stored: a decoded token runs 25
//! norms, and widening them first cost two allocations and two trips through the pool each.

use crate::Float;
use crate::arch::dispatch;
use crate::arch::portable::madd;

/// Each `gamma.len()`-value row of `rows`, in place, normalised to zero mean and unit variance
/// (the biased variance, plus `epsilon`, as PyTorch's `LayerNorm`), then scaled by `gamma` and
/// shifted by `beta`, on the calling thread.
///
/// # Panics
/// If `beta` and `gamma` differ in length.
pub fn layer_norm<W: Float>(rows: &mut [f32], gamma: &[W], beta: &[W], epsilon: f32) {
    assert_eq!(gamma.len(), beta.len(), "gamma and beta");
    dispatch!(layer_norm_with[W](rows, gamma, beta, epsilon))
}

#[inline(always)]
fn layer_norm_with<const FUSED: bool, W: Float>(
    rows: &mut [f32],
    gamma: &[W],
    beta: &[W],
    epsilon: f32,
) {
    let c = gamma.len();
    for row in rows.chunks_exact_mut(c) {
        // Two passes, so that the variance sums squares of small deviations rather than
        // subtracting two large sums (exact enough where the mean is far from zero).
        let mean = sum_by(row, |x| x) / c as f32;
        let variance = sum_by(row, |x| (x - mean) * (x - mean)) / c as f32;
        let scale = (variance + epsilon).sqrt().recip();
        for ((x, gamma), beta) in row.iter_mut().zip(gamma).zip(beta) {
            *x = madd::<FUSED>((*x - mean) * scale, gamma.to_f32(), beta.to_f32());
        }
    }
}

/// The sum of `f(value)` over `values`, in 16 independent partial sums so that it vectorizes
/// (float addition is not associative, so the compiler will not split one).
#[inline(always)]
fn sum_by(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const LANES: usize = 16;
    let mut sums = [0.0f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for lane in 0..LANES {
            sums[lane] += f(chunk[lane]);
        }
    }
    sums.iter().sum::<f32>() + chunks.remainder().iter().map(|&x| f(x)).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    #[test]
    fn rows_are_normalised_then_scaled_and_shifted() {
        // 300 columns: the sums' blocks of 16 and a tail. A mean far from zero beside a spread
        // of 4, where a one-pass variance (the mean of squares less the squared mean) loses
        // every digit: x² is ~10⁶, whose float32 ulp is 0.06.
        let c = 300;
        let rows: Vec<f32> = (0..2 * c)
            .map(|i| 1000.0 + ((i * 37 % 101) as f32) / 25.0)
            .collect();
        let gamma: Vec<bf16> = (0..c)
            .map(|i| bf16::from_f32(0.5 + (i % 7) as f32 / 4.0))
            .collect();
        let beta: Vec<bf16> = (0..c)
            .map(|i| bf16::from_f32((i % 5) as f32 - 2.0))
            .collect();
        for epsilon in [1e-5f32, 0.5] {
            let mut ours = rows.clone();
            layer_norm(&mut ours, &gamma, &beta, epsilon);
            for (row, ours) in rows.chunks_exact(c).zip(ours.chunks_exact(c)) {
                let mean = row.iter().map(|&x| f64::from(x)).sum::<f64>() / c as f64;
                let variance = row
                    .iter()
                    .map(|&x| (f64::from(x) - mean).powi(2))
                    .sum::<f64>()
                    / c as f64;
                for (i, (x, ours)) in row.iter().zip(ours).enumerate() {
                    let normal = (f64::from(*x) - mean) / (variance + f64::from(epsilon)).sqrt();
                    let exact = normal * f64::from(gamma[i].to_f32()) + f64::from(beta[i].to_f32());
                    assert!(
                        (f64::from(*ours) - exact).abs() < 1e-3,
                        "[{i}] {ours} vs {exact}"
                    );
                }
            }
        }
    }
}
