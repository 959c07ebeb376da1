use burn::module::Module;
use burn::nn::{Embedding, LayerNorm};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::block::Block;
use crate::cache::KvCache;
use crate::flex::{self, layer_norm};

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
    /// `ln_f`'s, which burn's `LayerNorm` keeps to itself.
    pub(crate) layer_norm_epsilon: f64,
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
        flex::in_cpu_pool(&ids.device(), || {
            let x = self.hidden_states(ids, None);
            let [b, t, c] = x.dims();
            self.head(x.reshape([b * t, c]))
                .reshape([b, t, self.vocab_size()])
        })
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
        flex::in_cpu_pool(&ids.device(), || {
            self.last_logits(self.hidden_states(ids, None))
        })
    }

    /// [`Gpt2::forward_last`] for ids that continue every row of `cache` by `t` columns: they
    /// take the positions after each row's cached ones, attend to them (never to a row's
    /// padding), and are written into the cache. With an empty cache this is a prefill of
    /// equal-length rows (see [`Gpt2::prefill`] for rows of any lengths); then one id per row
    /// is a decode step.
    ///
    /// # Shapes
    /// - ids: `[b, t]` -> logits: `[b, v]`
    ///
    /// # Panics
    /// If a row would hold more than [`Gpt2::context_length`] tokens (clear the cache and feed
    /// the cropped window instead), the cache holds a different batch size, or an id is not
    /// below [`Gpt2::vocab_size`].
    pub fn forward_cached(&self, ids: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<2> {
        flex::in_cpu_pool(&ids.device(), || {
            self.last_logits(self.hidden_states(ids, Some(cache)))
        })
    }

    /// Starts `cache` over with `rows`, which may differ in length: each is padded on the left
    /// to the longest, as Hugging Face pads a batch for generation, and the padding is masked
    /// out. Returns each row's logits for its next token.
    ///
    /// # Shapes
    /// - rows: `b` rows of ids -> logits: `[b, v]`
    ///
    /// # Panics
    /// If `rows` is empty, a row is empty or longer than [`Gpt2::context_length`], or an id is
    /// not below [`Gpt2::vocab_size`].
    pub fn prefill(&self, rows: &[&[u32]], cache: &mut KvCache) -> Tensor<2> {
        let longest = rows.iter().map(|row| row.len()).max().unwrap_or(0);
        assert!(
            rows.iter().all(|row| !row.is_empty()),
            "prefill needs at least one row and no empty rows"
        );
        let pads: Vec<usize> = rows.iter().map(|row| longest - row.len()).collect();
        let padded: Vec<Vec<u32>> = rows
            .iter()
            .zip(&pads)
            .map(|(row, &pad)| {
                std::iter::repeat_n(PAD_ID, pad)
                    .chain(row.iter().copied())
                    .collect()
            })
            .collect();
        let padded: Vec<&[u32]> = padded.iter().map(Vec::as_slice).collect();
        cache.start_padded(pads);
        self.forward_cached(token_tensor(&padded, &self.wte.weight.device()), cache)
    }

    /// The longest input the model accepts (`n_positions`).
    pub fn context_length(&self) -> usize {
        self.wpe.weight.dims()[0]
    }

    pub fn vocab_size(&self) -> usize {
        self.wte.weight.dims()[0]
    }

    /// The float type the model computes in (its weights'); logits are float32 whatever it is.
    pub fn dtype(&self) -> DType {
        self.wte.weight.val().dtype()
    }

    /// # Shapes
    /// - ids: `[b, t]` -> `[b, t, c]`, after `ln_f`
    fn hidden_states(&self, ids: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let context = self.context_length();
        let Some(cache) = cache else {
            assert!(
                t <= context,
                "input of {t} tokens exceeds the context length {context}; crop it first"
            );
            let positions = Tensor::<1, Int>::arange(0..t as i64, &device).unsqueeze::<2>();
            let x = self.wte.forward(ids) + self.wpe.forward(positions);
            let x = self.h.iter().fold(x, |x, block| block.forward(x, None).0);
            return layer_norm(&self.ln_f, self.layer_norm_epsilon, &x);
        };
        let step = cache.step(b, t, context, &device, self.dtype());
        let positions = cache.positions(step.start, t, &device); // [b, t]
        let mut x = self.wte.forward(ids) + self.wpe.forward(positions);
        let mut layers = cache.take_layers().into_iter();
        let mut written = Vec::with_capacity(self.h.len());
        for block in &self.h {
            let (y, layer) = block.forward(x, Some((layers.next(), &step)));
            written.extend(layer);
            x = y;
        }
        cache.put_layers(written);
        layer_norm(&self.ln_f, self.layer_norm_epsilon, &x)
    }

    /// # Shapes
    /// - x: `[b, t, c]` -> `[b, v]`, the head applied to the last position
    fn last_logits(&self, x: Tensor<3>) -> Tensor<2> {
        let [b, t, c] = x.dims();
        self.head(x.slice([0..b, t - 1..t]).reshape([b, c]))
    }

    /// The tied output head: on flex, our kernels' (every core, dot products for a decode step).
    ///
    /// Otherwise computed as `(wte · xᵀ)ᵀ` rather than `x · wteᵀ`: the same numbers, but the `[v, c]`
    /// embedding stays the left operand in its stored layout. Given its transpose, ndarray
    /// copied all 154 MB of GPT-2's embedding on every decode step.
    ///
    /// # Shapes
    /// - x: `[n, c]` -> `[n, v]`
    fn head(&self, x: Tensor<2>) -> Tensor<2> {
        let embedding = self.wte.weight.val();
        if let Some(logits) = flex::tied_head(&embedding, &x) {
            return logits;
        }
        // Selection works on float32 logits whatever the model computes in.
        embedding.matmul(x.transpose()).transpose().cast(DType::F32)
    }
}

/// The id [`Gpt2::prefill`] pads rows with; masked, so any id in the vocabulary would do.
const PAD_ID: u32 = 0;

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
pub(crate) mod tests {
    use burn::tensor::{Device, Tolerance};

    use crate::Gpt2Config;

    /// The unit tests' model shape: 2 layers, width 8, 16 ids, 16 positions.
    pub(crate) fn tiny() -> Gpt2Config {
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
        let model = tiny().init_seeded(&device, 2026);
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
        let model = tiny().init_seeded(&device, 2026);
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
        let model = tiny().init_seeded(&device, 2026);
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

    /// Each row's logits from its own full forward: the reference for batched, padded rows.
    fn alone(model: &Gpt2, row: &[u32]) -> TensorData {
        model
            .forward_last(token_tensor(&[row], &model.wte.weight.device()))
            .into_data()
    }

    fn row_of(logits: &Tensor<2>, row: usize) -> TensorData {
        logits.clone().slice_dim(0, row..row + 1).into_data()
    }

    /// Rows of different lengths in one batch, left-padded, give each row's logits alone: at
    /// the prefill, through decode steps, and past the first bucket of attended columns.
    #[test]
    fn padded_rows_match_each_row_alone() {
        let device = Device::flex();
        let model = Gpt2Config {
            n_positions: 64,
            ..tiny()
        }
        .init_seeded(&device, 2026);
        let mut rows: Vec<Vec<u32>> = vec![vec![3, 1, 4, 1, 5, 9, 2], vec![6], vec![5, 3, 5]];
        let mut cache = KvCache::new();
        let prompts: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let mut logits = model.prefill(&prompts, &mut cache);
        for step in 0..40 {
            for (index, row) in rows.iter().enumerate() {
                row_of(&logits, index)
                    .assert_approx_eq::<f32>(&alone(&model, row), Tolerance::default());
                assert_eq!(cache.row_len(index), row.len());
            }
            let next: Vec<[u32; 1]> = (0..rows.len())
                .map(|r| [(step * 7 + r as u32 * 5) % 16])
                .collect();
            for (row, id) in rows.iter_mut().zip(&next) {
                row.push(id[0]);
            }
            let next: Vec<&[u32]> = next.iter().map(|id| &id[..]).collect();
            logits = model.forward_cached(token_tensor(&next, &device), &mut cache);
        }
    }

    /// Removing a row and joining another batch keep every remaining row's logits; the join
    /// of a longer batch pads the shorter one further.
    #[test]
    fn rows_can_leave_and_join_between_steps() {
        let device = Device::flex();
        let model = tiny().init_seeded(&device, 2026);
        let mut rows: Vec<Vec<u32>> = vec![vec![3, 1, 4], vec![1, 5], vec![9, 2, 6, 5]];
        let mut cache = KvCache::new();
        let prompts: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        model.prefill(&prompts, &mut cache);
        // The longest row leaves: the padding every other row had goes with it.
        cache.retain_rows(&[1, 0]);
        rows = vec![rows[1].clone(), rows[0].clone()];
        assert_eq!(cache.len(), 3);
        let mut joining = KvCache::new();
        let newcomer = vec![7, 7, 7, 7, 7, 8];
        model.prefill(&[&newcomer], &mut joining);
        cache.append(joining);
        rows.push(newcomer);
        assert_eq!(cache.len(), 6);
        let next = [[1], [2], [3]];
        let logits = model.forward_cached(
            token_tensor(&next.iter().map(|id| &id[..]).collect::<Vec<_>>(), &device),
            &mut cache,
        );
        for (index, (row, id)) in rows.iter_mut().zip(next).enumerate() {
            row.push(id[0]);
            row_of(&logits, index)
                .assert_approx_eq::<f32>(&alone(&model, row), Tolerance::default());
        }
    }

    /// A cache made small grows when a generation outlives it.
    #[test]
    fn a_small_cache_grows_up_to_the_context() {
        let device = Device::flex();
        let model = tiny().init_seeded(&device, 2026);
        let mut cache = KvCache::with_capacity(3);
        let ids: Vec<u32> = (0..16).collect();
        model.prefill(&[&ids[..2]], &mut cache);
        for end in 3..=16 {
            let logits =
                model.forward_cached(token_tensor(&[&ids[end - 1..end]], &device), &mut cache);
            logits
                .into_data()
                .assert_approx_eq::<f32>(&alone(&model, &ids[..end]), Tolerance::default());
        }
    }

    #[test]
    #[should_panic(expected = "exceeds the context length")]
    fn a_cache_cannot_grow_past_the_context() {
        let device = Device::flex();
        let model = tiny().init_seeded(&device, 2026);
        let mut cache = KvCache::new();
        let window: Vec<u32> = (0..16).collect();
        model.forward_cached(token_tensor(&[&window], &device), &mut cache);
        model.forward_cached(token_tensor(&[&[1]], &device), &mut cache);
    }

    use super::*;
}
