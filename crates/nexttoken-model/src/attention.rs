use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

/// Multi-head causal self-attention: the only layer that mixes information across positions.
///
/// `c_attn` projects to queries, keys and values at once (`[C, 3C]`, as in the checkpoint).
#[derive(Module, Debug)]
pub struct CausalSelfAttention {
    /// `[C, 3C]`: query, key and value projections side by side.
    pub c_attn: Linear,
    /// `[C, C]`: output projection.
    pub c_proj: Linear,
    n_head: usize,
}

impl CausalSelfAttention {
    pub fn new(n_embd: usize, n_head: usize, device: &Device) -> Self {
        Self {
            c_attn: LinearConfig::new(n_embd, 3 * n_embd).init(device),
            c_proj: LinearConfig::new(n_embd, n_embd).init(device),
            n_head,
        }
    }

    /// # Shapes
    /// - x: `[b, t, c]` -> `[b, t, c]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, c] = x.dims();
        let (nh, hs) = (self.n_head, c / self.n_head);
        let heads = |x: Tensor<3>| x.reshape([b, t, nh, hs]).swap_dims(1, 2); // [b, nh, t, hs]
        let mut qkv = self.c_attn.forward(x).chunk(3, 2).into_iter().map(heads);
        let (Some(q), Some(k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
            unreachable!("c_attn's output has 3C columns, so chunk(3) gives three tensors")
        };
        // Scaled by 1/sqrt(hs), with each position seeing itself and earlier positions only.
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        let y = attention(q, k, v, None, None, options); // [b, nh, t, hs]
        let y = y.swap_dims(1, 2).reshape([b, t, c]);
        self.c_proj.forward(y)
    }
}
