use burn::module::Module;
use burn::nn::{Embedding, LayerNorm};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::block::Block;
use crate::cache::KvCache;

/// GPT-2: token and position embeddings, `n_layer` blocks, a final layer norm, and an output
/// head tied to the token embedding (GPT-2 has no separate `lm_head` weight).
///
/// Shape letters: `b` batch, `t` tokens, `c` = `n_embd`, `v` = `vocab_size`.
#[derive(Module, Debug)]
pub struct Gpt2 {
    /// `[v, c]` token embeddings, also the output head.
    pub wte: Embedding,
    /// `[n_positions, c]` learned absolute position embeddings.
    pub wpe: Embedding,
    pub h: Vec<Block>,
    pub ln_f: LayerNorm,
}

impl Gpt2 {
    /// Logits for every position.
    ///
    /// # Shapes
    /// - ids: `[b, t]` -> logits: `[b, t, v]`
    ///
    /// # Panics
    /// If `t` exceeds [`Gpt2::context_length`] (crop the input first) or an id is not below
    /// [`Gpt2::vocab_size`].
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let x = self.hidden_states(ids, None);
        let [b, t, c] = x.dims();
        self.head(x.reshape([b * t, c]))
            .reshape([b, t, self.vocab_size()])
    }

    /// Logits of the last position only: what a generation step needs, without paying for the
    /// `[c, v]` output head at every other position.
    ///
    /// # Shapes
    /// - ids: `[b, t]` -> logits: `[b, v]`
    ///
    /// # Panics
    /// As [`Gpt2::forward`].
    pub fn forward_last(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        self.last_logits(self.hidden_states(ids, None))
    }

    /// [`Gpt2::forward_last`] for ids that continue what `cache` holds: they get the positions
    /// after the cached ones, attend to them, and are added to the cache. With an empty cache
    /// this is the prompt's prefill; then one id per row is a decode step.
    ///
    /// # Shapes
    /// - ids: `[b, t]` -> logits: `[b, v]`
    ///
    /// # Panics
    /// If `cache.len() + t` exceeds [`Gpt2::context_length`] (clear the cache and feed the
    /// cropped window instead), the cache holds a different batch size, or an id is not below
    /// [`Gpt2::vocab_size`].
    pub fn forward_cached(&self, ids: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<2> {
        self.last_logits(self.hidden_states(ids, Some(cache)))
    }

    /// The longest input the model accepts (`n_positions`).
    pub fn context_length(&self) -> usize {
        self.wpe.weight.dims()[0]
    }

    pub fn vocab_size(&self) -> usize {
        self.wte.weight.dims()[0]
    }

    /// # Shapes
    /// - ids: `[b, t]` -> `[b, t, c]`, after `ln_f`
    fn hidden_states(&self, ids: Tensor<2, Int>, mut cache: Option<&mut KvCache>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let past = cache.as_deref().map_or(0, KvCache::len);
        assert!(
            past + t <= self.context_length(),
            "input of {t} tokens after {past} cached ones exceeds the context length {}; crop it first",
            self.context_length()
        );
        if let Some(cache) = cache.as_deref().filter(|cache| !cache.is_empty()) {
            assert_eq!(cache.batch_size(), b, "the cache holds another batch");
        }
        let positions = Tensor::<1, Int>::arange(past as i64..(past + t) as i64, &ids.device())
            .unsqueeze::<2>(); // [1, t]
        let mut x = self.wte.forward(ids) + self.wpe.forward(positions);
        for (index, block) in self.h.iter().enumerate() {
            let layer_past = cache.as_deref().and_then(|cache| cache.layer(index));
            let (y, key_value) = block.forward(x, layer_past);
            if let Some(cache) = cache.as_deref_mut() {
                cache.set_layer(index, key_value);
            }
            x = y;
        }
        self.ln_f.forward(x)
    }

    /// # Shapes
    /// - x: `[b, t, c]` -> `[b, v]`, the head applied to the last position
    fn last_logits(&self, x: Tensor<3>) -> Tensor<2> {
        let [b, t, c] = x.dims();
        self.head(x.slice([0..b, t - 1..t]).reshape([b, c]))
    }

    /// The tied output head.
    ///
    /// Computed as `(wte · xᵀ)ᵀ` rather than `x · wteᵀ`: the same numbers, but the `[v, c]`
    /// embedding stays the left operand in its stored layout. Given its transpose, ndarray
    /// copied all 154 MB of GPT-2's embedding on every decode step.
    ///
    /// # Shapes
    /// - x: `[n, c]` -> `[n, v]`
    fn head(&self, x: Tensor<2>) -> Tensor<2> {
        self.wte.weight.val().matmul(x.transpose()).transpose()
    }
}

/// A batch of token ids as the model's input tensor. Ids are `u32` everywhere else; each backend
/// stores them in its own integer type (I32 on flex and wgpu, I64 on ndarray and tch).
///
/// # Shapes
/// - rows: `b` rows of `t` ids -> `[b, t]`
///
/// # Panics
/// If `rows` is empty or its rows differ in length.
pub fn token_tensor(rows: &[&[u32]], device: &Device) -> Tensor<2, Int> {
    let t = rows.first().map_or(0, |row| row.len());
    assert!(
        !rows.is_empty() && rows.iter().all(|row| row.len() == t),
        "token_tensor needs at least one row and rows of one length"
    );
    let flat: Vec<i64> = rows
        .iter()
        .flat_map(|row| row.iter().map(|&id| i64::from(id)))
        .collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), t]), device)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tolerance};

    use crate::Gpt2Config;

    fn tiny() -> Gpt2Config {
        Gpt2Config {
            n_layer: 2,
            n_head: 2,
            n_embd: 8,
            n_positions: 16,
            vocab_size: 16,
            ..Gpt2Config::gpt2()
        }
    }

    #[test]
    fn forward_last_is_the_last_row_of_forward() {
        let device = Device::flex();
        let model = tiny().init(&device);
        let ids = Tensor::<2, Int>::from_data([[1, 2, 3, 4], [5, 6, 7, 8]], &device);
        let full = model.forward(ids.clone());
        let last = model.forward_last(ids);
        assert_eq!(last.dims(), [2, 16]);
        full.slice([0..2, 3..4])
            .reshape([2, 16])
            .into_data()
            .assert_approx_eq::<f32>(&last.into_data(), Tolerance::default());
    }

    #[test]
    fn later_tokens_do_not_change_earlier_logits() {
        let device = Device::flex();
        let model = tiny().init(&device);
        let short = model.forward(Tensor::<2, Int>::from_data([[3, 1, 4]], &device));
        let long = model.forward(Tensor::<2, Int>::from_data([[3, 1, 4, 1, 5, 9]], &device));
        long.slice([0..1, 0..3])
            .into_data()
            .assert_approx_eq::<f32>(&short.into_data(), Tolerance::default());
    }

    /// Feeding a sequence in pieces through a cache gives the logits a full forward gives at
    /// the end of each piece: one token at a time (decode steps) and a chunk after a cached
    /// prefix (which needs the explicit causal mask).
    #[test]
    fn cached_pieces_match_the_full_forward() {
        let device = Device::flex();
        let model = tiny().init(&device);
        let ids: [[u32; 7]; 2] = [[3, 1, 4, 1, 5, 9, 2], [6, 5, 3, 5, 8, 9, 7]];
        for pieces in [&[3, 1, 1, 1, 1][..], &[2, 4, 1]] {
            let mut cache = KvCache::new();
            let mut end = 0;
            for &len in pieces {
                let rows: Vec<&[u32]> = ids.iter().map(|row| &row[end..end + len]).collect();
                let cached = model.forward_cached(token_tensor(&rows, &device), &mut cache);
                end += len;
                let rows: Vec<&[u32]> = ids.iter().map(|row| &row[..end]).collect();
                let full = model.forward_last(token_tensor(&rows, &device));
                cached
                    .into_data()
                    .assert_approx_eq::<f32>(&full.into_data(), Tolerance::default());
                assert_eq!(cache.len(), end);
            }
        }
    }

    #[test]
    #[should_panic(expected = "exceeds the context length")]
    fn a_cache_cannot_grow_past_the_context() {
        let device = Device::flex();
        let model = tiny().init(&device);
        let mut cache = KvCache::new();
        let window: Vec<u32> = (0..16).collect();
        model.forward_cached(token_tensor(&[&window], &device), &mut cache);
        model.forward_cached(token_tensor(&[&[1]], &device), &mut cache);
    }

    use super::*;
}
