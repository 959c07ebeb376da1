use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

use crate::cache::{KeyValue, causal_mask};

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

    /// Attends from the `t` new positions to `past`'s positions and themselves, and returns the
    /// keys and values of all of them for the next call.
    ///
    /// # Shapes
    /// - x: `[b, t, c]` -> `[b, t, c]`
    /// - past: `[b, n_head, p, c / n_head]` each -> `[b, n_head, p + t, c / n_head]` each
    pub(crate) fn forward(&self, x: Tensor<3>, past: Option<&KeyValue>) -> (Tensor<3>, KeyValue) {
        let [b, t, c] = x.dims();
        let (nh, hs) = (self.n_head, c / self.n_head);
        let heads = |x: Tensor<3>| x.reshape([b, t, nh, hs]).swap_dims(1, 2); // [b, nh, t, hs]
        let mut qkv = self.c_attn.forward(x).chunk(3, 2).into_iter().map(heads);
        let (Some(q), Some(k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
            unreachable!("c_attn's output has 3C columns, so chunk(3) gives three tensors")
        };
        let key_value = KeyValue::extend(past, k, v);
        let p = key_value.key.dims()[2] - t;

        // Each position sees itself and earlier positions only, scaled by 1/sqrt(hs). Backends
        // disagree on where `is_causal` puts the diagonal when there are more keys than
        // queries (libtorch aligns it top-left), so it is only used when the two are the same;
        // a single new query sees every key and needs no mask.
        let mask = (p > 0 && t > 1).then(|| {
            causal_mask(p, t, &q.device())
                .unsqueeze::<4>()
                .expand([b, nh, t, p + t])
        });
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: p == 0,
        };
        let y = attention(
            q,
            key_value.key.clone(),
            key_value.value.clone(),
            mask,
            None,
            options,
        ); // [b, nh, t, hs]
        let y = y.swap_dims(1, 2).reshape([b, t, c]);
        (self.c_proj.forward(y), key_value)
    }
}
