use burn::module::Module;
use burn::nn::{Embedding, LayerNorm};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::block::Block;

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
        let x = self.hidden_states(ids);
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
        let x = self.hidden_states(ids);
        let [b, t, c] = x.dims();
        self.head(x.slice([0..b, t - 1..t]).reshape([b, c]))
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
    fn hidden_states(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [_, t] = ids.dims();
        assert!(
            t <= self.context_length(),
            "input of {t} tokens exceeds the context length {}; crop it first",
            self.context_length()
        );
        let positions = Tensor::<1, Int>::arange(0..t as i64, &ids.device()).unsqueeze::<2>(); // [1, t]
        let mut x = self.wte.forward(ids) + self.wpe.forward(positions);
        for block in &self.h {
            x = block.forward(x);
        }
        self.ln_f.forward(x)
    }

    /// The tied output head.
    ///
    /// # Shapes
    /// - x: `[n, c]` -> `[n, v]`
    fn head(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.wte.weight.val().transpose())
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
            layer_norm_epsilon: 1e-5,
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

    use super::*;
}
