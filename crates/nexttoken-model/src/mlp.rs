use burn::module::Module;
use burn::nn::{Gelu, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

/// The position-wise feed-forward network: widen 4x, GELU, project back.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[C, 4C]`
    pub c_fc: Linear,
    /// `[4C, C]`
    pub c_proj: Linear,
    /// GPT-2 was trained with the tanh approximation of GELU (`gelu_new`), not the exact erf
    /// form; the two differ by up to ~1e-3 and flip greedy choices over long generations.
    gelu: Gelu,
}

impl Mlp {
    pub fn new(n_embd: usize, device: &Device) -> Self {
        Self {
            c_fc: LinearConfig::new(n_embd, 4 * n_embd).init(device),
            c_proj: LinearConfig::new(4 * n_embd, n_embd).init(device),
            gelu: Gelu::new_approximate(),
        }
    }

    /// # Shapes
    /// - x: `[b, t, c]` -> `[b, t, c]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.c_proj.forward(self.gelu.forward(self.c_fc.forward(x)))
    }
}
