use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI};

use burn::module::Module;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};

use crate::flex::{self, laid_out_linear, linear, linear_onto};
use crate::linear::Linear;

/// The position-wise feed-forward network: widen 4x, GELU, project back.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[C, 4C]`
    pub c_fc: Linear,
    /// `[4C, C]`
    pub c_proj: Linear,
}

impl Mlp {
    pub fn new(n_embd: usize, device: &Device) -> Self {
        Self {
            c_fc: laid_out_linear(n_embd, 4 * n_embd, device),
            c_proj: laid_out_linear(4 * n_embd, n_embd, device),
        }
    }

    /// `residual` plus the network's output for `x`.
    ///
    /// # Shapes
    /// - x, residual: `[b, t, c]` -> `[b, t, c]`
    pub(crate) fn forward(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        let x = linear(&self.c_fc, x);
        let x = flex::gelu_new(&x).unwrap_or_else(|| gelu_new(x));
        linear_onto(&self.c_proj, x, residual)
    }
}

/// GPT-2's activation, `gelu_new`: the tanh approximation of GELU,
/// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`, which GPT-2 was trained with (the exact erf
/// form differs by up to ~1e-3 and flips greedy choices over long generations).
///
/// It is computed as `x σ(2 √(2/π) (x + 0.044715 x³))`, the same function since
/// `(1 + tanh u) / 2 = σ(2u)`: burn's `gelu_approximate` takes x³ through `powf` and calls
/// `tanh`, which on the CPU backends cost a fifth of a 512-token prefill; two products and a
/// sigmoid cost a fraction of that. On flex, `flex::gelu_new` computes the same in one
/// vectorised pass.
fn gelu_new<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    // 2u = x (k + k·0.044715 x²), k = 2√(2/π): six passes over the tensor.
    const K: f64 = 2.0 * FRAC_2_SQRT_PI * FRAC_1_SQRT_2;
    let two_u = x.clone() * (x.clone() * x.clone() * (K * 0.044715) + K);
    x * sigmoid(two_u)
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::gelu_approximate;
    use burn::tensor::{Tensor, Tolerance};

    use super::*;

    #[test]
    fn gelu_new_is_burns_tanh_approximation() {
        let device = Device::flex();
        let values: Vec<f32> = (-2400..=2400).map(|i| i as f32 / 200.0).collect(); // -12..12
        let x = Tensor::<1>::from_floats(values.as_slice(), &device);
        gelu_new(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&gelu_approximate(x).into_data(), Tolerance::absolute(1e-6));
    }

    #[test]
    fn the_flex_kernel_is_burns_tanh_approximation() {
        let device = Device::flex();
        // -12..12 over more values than one task takes, so that two threads share them.
        let values: Vec<f32> = (-24_000..=24_000).map(|i| i as f32 / 2000.0).collect();
        let x = Tensor::<1>::from_floats(values.as_slice(), &device);
        let ours = flex::gelu_new(&x).expect("flex, float32");
        ours.into_data()
            .assert_approx_eq::<f32>(&gelu_approximate(x).into_data(), Tolerance::absolute(1e-6));
    }
}
