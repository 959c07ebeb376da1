//! GPT-2's activation in one vectorised pass: burn's takes six passes over the tensor, each
//! allocating its result, and its sigmoid calls libm's `expf` one value at a time.

use crate::arch::dispatch;
use crate::arch::portable::madd;
use crate::softmax::exp_of_negative;

/// `gelu_new` in place, on the calling thread: `x σ(x (K + K · 0.044715 x²))` with
/// `K = 2 √(2/π)`, which is the tanh form `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))` since
/// `(1 + tanh u) / 2 = σ(2u)`.
pub fn gelu_new(values: &mut [f32]) {
    dispatch!(gelu_new_with[](values))
}

#[inline(always)]
fn gelu_new_with<const FUSED: bool>(values: &mut [f32]) {
    const K: f32 = 2.0 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
    for x in values.iter_mut() {
        let z = *x * madd::<FUSED>(*x * *x, K * 0.044715, K);
        // σ(z) from e^-|z|, which cannot overflow: 1 / (1 + e^-z), or e^z / (1 + e^z).
        let e = exp_of_negative::<FUSED>(-z.abs());
        let r = 1.0 / (1.0 + e);
        let sigmoid = if z >= 0.0 { r } else { e * r };
        *x *= sigmoid;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_tanh_form() {
        // Both tails, where the sigmoid saturates, and the middle; 37 values: a vector body and
        // a tail.
        let xs: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.7).collect();
        let mut ours = xs.clone();
        gelu_new(&mut ours);
        for (x, ours) in xs.iter().zip(&ours) {
            let x64 = f64::from(*x);
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
            let exact = 0.5 * x64 * (1.0 + inner.tanh());
            assert!(
                (f64::from(*ours) - exact).abs() < 1e-5,
                "gelu({x}): {ours} vs {exact}"
            );
        }
    }
}
