use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

use crate::cache::{CachedStep, KeyValue};
use crate::cpu_kernels::{cached_attention, laid_out_linear, linear, linear_onto};

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
            c_attn: laid_out_linear(n_embd, 3 * n_embd, device),
            c_proj: laid_out_linear(n_embd, n_embd, device),
            n_head,
        }
    }

    /// Attends from the `t` new positions to themselves and, with a cache, to the earlier
    /// columns of `cached`'s layer, into which their keys and values are written; returns
    /// `residual` plus the attention's output.
    ///
    /// # Shapes
    /// - x, residual: `[b, t, c]` -> `[b, t, c]`
    /// - the cached layer: `[b, n_head, capacity, c / n_head]` each
    pub(crate) fn forward(
        &self,
        x: Tensor<3>,
        residual: Tensor<3>,
        cached: Option<(Option<KeyValue>, &CachedStep)>,
    ) -> (Tensor<3>, Option<KeyValue>) {
        let [b, t, c] = x.dims();
        let (nh, hs) = (self.n_head, c / self.n_head);
        let heads = |x: Tensor<3>| x.reshape([b, t, nh, hs]).swap_dims(1, 2); // [b, nh, t, hs]
        let mut qkv = linear(&self.c_attn, x).chunk(3, 2).into_iter().map(heads);
        let (Some(q), Some(k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
            unreachable!("c_attn's output has 3C columns, so chunk(3) gives three tensors")
        };
        // Scores are scaled by 1/sqrt(hs). The cache's mask goes in as an additive bias rather
        // than a bool mask: burn-tch hands bool masks to PyTorch, where `true` means "attend",
        // the opposite of burn's convention.
        let (y, layer) = match cached {
            None => (attention(q, k, v, None, None, options(true)), None),
            Some((layer, step)) => {
                let layer = KeyValue::write(layer, k, v, step);
                let y = cached_attention(&q, &layer, step)
                    .unwrap_or_else(|| attention_over(q, &layer, step));
                (y, Some(layer))
            }
        }; // y: [b, nh, t, hs]
        let y = y.swap_dims(1, 2).reshape([b, t, c]);
        (linear_onto(&self.c_proj, y, residual), layer)
    }
}

/// Attention of `q` over the cache's attended columns, by burn.
///
/// # Shapes
/// - q: `[b, n_head, t, head_size]` -> `[b, n_head, t, head_size]`
pub(crate) fn attention_over(q: Tensor<4>, layer: &KeyValue, step: &CachedStep) -> Tensor<4> {
    let [b, nh, t, _] = q.dims();
    let (key, value) = layer.attended(step);
    let bias = step
        .bias
        .clone()
        .map(|bias| bias.expand([b, nh, t, step.attended]));
    attention(q, key, value, None, bias, options(step.causal))
}

fn options(is_causal: bool) -> AttentionModuleOptions {
    AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal,
    }
}
