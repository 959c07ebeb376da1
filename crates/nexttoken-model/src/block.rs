use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Tensor};

use crate::attention::CausalSelfAttention;
use crate::cache::{CacheStep, KeyValue};
use crate::flex::layer_norm;
use crate::mlp::Mlp;

pub(crate) struct BlockConfig {
    pub n_embd: usize,
    pub n_head: usize,
    pub layer_norm_epsilon: f64,
}

impl BlockConfig {
    pub fn init(&self, device: &Device) -> Block {
        let layer_norm = LayerNormConfig::new(self.n_embd).with_epsilon(self.layer_norm_epsilon);
        Block {
            ln_1: layer_norm.init(device),
            attn: CausalSelfAttention::new(self.n_embd, self.n_head, device),
            ln_2: layer_norm.init(device),
            mlp: Mlp::new(self.n_embd, device),
            layer_norm_epsilon: self.layer_norm_epsilon,
        }
    }
}

/// One transformer block, pre-norm: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: CausalSelfAttention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
    /// `ln_1`'s and `ln_2`'s, which burn's `LayerNorm` keeps to itself.
    layer_norm_epsilon: f64,
}

impl Block {
    /// Runs the new positions through the block; `cached` and the returned layer are the
    /// attention's (see [`CausalSelfAttention::forward`]).
    ///
    /// # Shapes
    /// - x: `[b, t, c]` -> `[b, t, c]`
    pub(crate) fn forward(
        &self,
        x: Tensor<3>,
        cached: Option<(Option<KeyValue>, &CacheStep)>,
    ) -> (Tensor<3>, Option<KeyValue>) {
        let epsilon = self.layer_norm_epsilon;
        let normed = layer_norm(&self.ln_1, epsilon, &x);
        let (x, layer) = self.attn.forward(normed, x, cached);
        let normed = layer_norm(&self.ln_2, epsilon, &x);
        (self.mlp.forward(normed, x), layer)
    }
}
