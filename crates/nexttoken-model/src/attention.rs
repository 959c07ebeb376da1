use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

use crate::cache::{CachedStep, KeyValue};
use crate::flex::{cached_attention, laid_out_linear, linear, linear_onto};

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
        let qkv = linear(&self.c_attn, x);
        let (y, layer) = match cached {
            None => {
                let [q, k, v] = split_heads(qkv, self.n_head);
                let y = attention(q, k, v, None, None, options(true));
                (merged_heads(y), None)
            }
            Some((layer, step)) => {
                let layer = KeyValue::allocated(layer, &qkv, self.n_head, step);
                let (y, layer) =
                    cached_attention(&qkv, layer, step, self.n_head).unwrap_or_else(|layer| {
                        cached_attention_by_burn(qkv, *layer, step, self.n_head)
                    });
                (y, Some(layer))
            }
        };
        (linear_onto(&self.c_proj, y, residual), layer)
    }
}

/// What [`cached_attention`] computes, by burn's operations on any backend: the keys and
/// values of `qkv` written into `layer` at the step's columns, then the queries' attention over
/// the layer's attended columns.
///
/// # Shapes
/// - qkv: `[b, t, 3c]` -> `[b, t, c]`
pub(crate) fn cached_attention_by_burn(
    qkv: Tensor<3>,
    layer: KeyValue,
    step: &CachedStep,
    n_head: usize,
) -> (Tensor<3>, KeyValue) {
    let [q, k, v] = split_heads(qkv, n_head);
    let layer = layer.write(k, v, step);
    let [b, _, t, _] = q.dims();
    let (key, value) = layer.attended(step);
    // Scores are scaled by 1/sqrt(hs). The cache's mask goes in as an additive bias rather
    // than a bool mask: burn-tch hands bool masks to PyTorch, where `true` means "attend",
    // the opposite of burn's convention.
    let bias = step
        .bias
        .clone()
        .map(|bias| bias.expand([b, n_head, t, step.attended]));
    let y = attention(q, key, value, None, bias, options(step.causal));
    (merged_heads(y), layer)
}

/// `qkv`'s queries, keys and values, each split into its heads.
///
/// # Shapes
/// - qkv: `[b, t, 3c]` -> 3 x `[b, n_head, t, c / n_head]`
fn split_heads(qkv: Tensor<3>, n_head: usize) -> [Tensor<4>; 3] {
    let [b, t, width] = qkv.dims();
    let heads = |x: Tensor<3>| {
        x.reshape([b, t, n_head, width / 3 / n_head])
            .swap_dims(1, 2)
    };
    let mut parts = qkv.chunk(3, 2).into_iter().map(heads);
    let (Some(q), Some(k), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
        unreachable!("c_attn's output has 3C columns, so chunk(3) gives three tensors")
    };
    [q, k, v]
}

/// The heads' outputs side by side again.
///
/// # Shapes
/// - y: `[b, n_head, t, head_size]` -> `[b, t, n_head * head_size]`
fn merged_heads(y: Tensor<4>) -> Tensor<3> {
    let [b, n_head, t, head_size] = y.dims();
    y.swap_dims(1, 2).reshape([b, t, n_head * head_size])
}

fn options(is_causal: bool) -> AttentionModuleOptions {
    AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal,
    }
}
