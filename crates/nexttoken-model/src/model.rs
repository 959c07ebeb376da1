use burn::module::Module;
use burn::nn::LayerNorm;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::block::Block;
use crate::cache::{CacheRow, KvCache};
use crate::flex::{self, layer_norm};
use crate::linear::Embedding;

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
            let x = self.hidden_states(ids);
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
        flex::in_cpu_pool(&ids.device(), || self.last_logits(self.hidden_states(ids)))
    }

    /// Runs each chunk's ids after its row's cached positions, in one forward pass for all of
    /// them: a decode step's one id per row beside prompts, or later chunks of prompts, of any
    /// lengths. Each chunk's ids take the positions after its row's, attend to its row's cached
    /// positions and to each other causally, and are written into the cache. Returns the logits
    /// of each chunk's last id, in the chunks' order.
    ///
    /// # Shapes
    /// - chunks: `b` rows' ids -> logits: `[b, v]`
    ///
    /// # Panics
    /// If a chunk is empty, a row is not in `cache` or is named twice, a row would hold more
    /// than [`Gpt2::context_length`] positions (remove it and feed the cropped window instead),
    /// `cache` is bounded and has too few free blocks, or an id is not below
    /// [`Gpt2::vocab_size`].
    pub fn forward_chunks(&self, chunks: &[Chunk], cache: &mut KvCache) -> Tensor<2> {
        assert!(
            chunks.iter().all(|chunk| !chunk.ids.is_empty()),
            "a chunk needs at least one id"
        );
        flex::in_cpu_pool(&self.wte.weight.device(), || {
            let x = self.chunk_states(chunks, cache); // [n, c]
            let mut last = 0;
            let lasts: Vec<i64> = chunks
                .iter()
                .map(|chunk| {
                    last += chunk.ids.len();
                    last as i64 - 1
                })
                .collect();
            let lasts =
                Tensor::<1, Int>::from_data(TensorData::new(lasts, [chunks.len()]), &x.device());
            self.head(x.select(0, lasts))
        })
    }

    /// [`Gpt2::forward_chunks`] with `rows[i]` continuing the cache's `i`th row (in the order
    /// they were added); with an empty cache, a row is added for each.
    ///
    /// # Shapes
    /// - rows: `b` rows of ids -> logits: `[b, v]`
    ///
    /// # Panics
    /// As [`Gpt2::forward_chunks`], and if the cache holds another number of rows.
    pub fn forward_cached(&self, rows: &[&[u32]], cache: &mut KvCache) -> Tensor<2> {
        if cache.batch_size() == 0 {
            rows.iter().for_each(|_| {
                cache.add_row();
            });
        }
        assert_eq!(
            cache.batch_size(),
            rows.len(),
            "the cache holds another number of rows"
        );
        let chunks: Vec<Chunk> = cache
            .rows()
            .zip(rows)
            .map(|(row, ids)| Chunk::new(row, ids))
            .collect();
        self.forward_chunks(&chunks, cache)
    }

    /// Starts `cache` over with `rows`, of any lengths, in one forward pass. Returns each row's
    /// logits for its next token.
    ///
    /// # Shapes
    /// - rows: `b` rows of ids -> logits: `[b, v]`
    ///
    /// # Panics
    /// As [`Gpt2::forward_chunks`].
    pub fn prefill(&self, rows: &[&[u32]], cache: &mut KvCache) -> Tensor<2> {
        cache.clear();
        self.forward_cached(rows, cache)
    }

    /// Bytes one block of a [`KvCache`] takes on this model, every layer's keys and values.
    pub fn kv_block_bytes(&self) -> usize {
        self.h.len() * 2 * crate::cache::BLOCK_SIZE * self.width() * self.dtype().size()
    }

    /// `n_embd`, the width of every position's hidden state.
    pub fn width(&self) -> usize {
        // The position embedding's: never quantized, where the token embedding's stored rows
        // are blocks' bytes.
        self.wpe.weight.dims()[1]
    }

    /// The longest input the model accepts (`n_positions`).
    pub fn context_length(&self) -> usize {
        self.wpe.weight.dims()[0]
    }

    pub fn vocab_size(&self) -> usize {
        self.wte.rows()
    }

    /// The float type the model computes in: its weights', or float32 for quantized weights
    /// ([`Gpt2::quantization`]). Logits are float32 whatever it is.
    pub fn dtype(&self) -> DType {
        self.wpe.weight.val().dtype()
    }

    /// # Shapes
    /// - ids: `[b, t]` -> `[b, t, c]`, after `ln_f`
    fn hidden_states(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [_, t] = ids.dims();
        let context = self.context_length();
        assert!(
            t <= context,
            "input of {t} tokens exceeds the context length {context}; crop it first"
        );
        let positions = Tensor::<1, Int>::arange(0..t as i64, &ids.device()).unsqueeze::<2>();
        let x = flex::embed(&self.wte, ids) + self.wpe.forward(positions);
        let x = self.h.iter().fold(x, |x, block| block.forward(x, None).0);
        layer_norm(&self.ln_f, self.layer_norm_epsilon, &x)
    }

    /// The chunks' ids, one after another, through the model over `cache`.
    ///
    /// # Shapes
    /// - chunks: `n` ids in all -> `[n, c]`, after `ln_f`
    fn chunk_states(&self, chunks: &[Chunk], cache: &mut KvCache) -> Tensor<2> {
        let device = self.wte.weight.device();
        let rows: Vec<(CacheRow, &[u32])> = chunks.iter().map(|c| (c.row, c.ids)).collect();
        let step = cache.step(&rows, self.context_length());
        let flat: Vec<u32> = chunks.iter().flat_map(|c| c.ids.iter().copied()).collect();
        let mut x = flex::embed(&self.wte, token_tensor(&[&flat], &device))
            + self.wpe.forward(step.positions(&device)); // [1, n, c]
        let mut layers = cache.take_layers().into_iter();
        let mut written = Vec::with_capacity(self.h.len());
        for block in &self.h {
            let (y, layer) = block.forward(x, Some((layers.next(), &step)));
            written.extend(layer);
            x = y;
        }
        cache.put_layers(written);
        let [_, n, c] = x.dims();
        layer_norm(&self.ln_f, self.layer_norm_epsilon, &x.reshape([n, c]))
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
        if let Some(logits) = flex::tied_head(&self.wte, &x) {
            return logits;
        }
        let embedding = self.wte.weight.val();
        // Selection works on float32 logits whatever the model computes in.
        embedding.matmul(x.transpose()).transpose().cast(DType::F32)
    }
}

/// A row's next ids for [`Gpt2::forward_chunks`].
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub row: CacheRow,
    pub ids: &'a [u32],
}

impl<'a> Chunk<'a> {
    pub fn new(row: CacheRow, ids: &'a [u32]) -> Self {
        Self { row, ids }
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
    /// the end of each piece: one token at a time (decode steps) and chunks after a cached
    /// prefix, across block boundaries.
    #[test]
    fn cached_pieces_match_the_full_forward() {
        let device = Device::flex();
        let model = Gpt2Config {
            n_positions: 64,
            ..tiny()
        }
        .init_seeded(&device, 2026);
        let ids: Vec<[u32; 40]> = (0..2u32)
            .map(|row| std::array::from_fn(|i| (i as u32 * 7 + row * 3) % 16))
            .collect();
        for pieces in [&[3, 1, 1, 1, 1][..], &[2, 4, 1], &[15, 2, 20, 1, 2]] {
            let mut cache = KvCache::new();
            let mut end = 0;
            for &len in pieces {
                let rows: Vec<&[u32]> = ids.iter().map(|row| &row[end..end + len]).collect();
                let cached = model.forward_cached(&rows, &mut cache);
                end += len;
                let rows: Vec<&[u32]> = ids.iter().map(|row| &row[..end]).collect();
                let full = model.forward_last(token_tensor(&rows, &device));
                cached
                    .into_data()
                    .assert_approx_eq::<f32>(&full.into_data(), Tolerance::default());
                assert!(cache.rows().all(|row| cache.row_len(row) == end));
            }
        }
    }

    /// Each row's logits from its own full forward: the reference for batched rows.
    fn alone(model: &Gpt2, row: &[u32]) -> TensorData {
        model
            .forward_last(token_tensor(&[row], &model.wte.weight.device()))
            .into_data()
    }

    fn row_of(logits: &Tensor<2>, row: usize) -> TensorData {
        logits.clone().slice_dim(0, row..row + 1).into_data()
    }

    /// Rows of different lengths in one step give each row's logits alone: at the prefill,
    /// through decode steps, across block boundaries.
    #[test]
    fn rows_of_different_lengths_match_each_row_alone() {
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
        let handles: Vec<CacheRow> = cache.rows().collect();
        for step in 0..40 {
            for (index, row) in rows.iter().enumerate() {
                row_of(&logits, index)
                    .assert_approx_eq::<f32>(&alone(&model, row), Tolerance::default());
                assert_eq!(cache.row_len(handles[index]), row.len());
            }
            let next: Vec<[u32; 1]> = (0..rows.len())
                .map(|r| [(step * 7 + r as u32 * 5) % 16])
                .collect();
            for (row, id) in rows.iter_mut().zip(&next) {
                row.push(id[0]);
            }
            let next: Vec<&[u32]> = next.iter().map(|id| &id[..]).collect();
            logits = model.forward_cached(&next, &mut cache);
        }
    }

    /// One step mixes decode steps, a newcomer's whole prompt and another's later chunk; a
    /// row that leaves frees its blocks for the next, and every row keeps its logits alone.
    #[test]
    fn rows_can_leave_and_join_between_steps_and_mix_in_one() {
        let device = Device::flex();
        let model = Gpt2Config {
            n_positions: 64,
            ..tiny()
        }
        .init_seeded(&device, 2026);
        let mut cache = KvCache::new();
        let (a, b) = (cache.add_row(), cache.add_row());
        let (mut seq_a, seq_b) = (
            vec![3, 1, 4],
            vec![1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4],
        );
        model.forward_chunks(&[Chunk::new(a, &seq_a), Chunk::new(b, &seq_b)], &mut cache);
        assert!(cache.remove_row(b));
        let used = cache.used_blocks();
        let c = cache.add_row();
        let seq_c: Vec<u32> = (0..30).map(|i| (i * 5 + 1) % 16).collect();
        // A decodes while C's prompt goes in two chunks, the first within B's freed blocks.
        seq_a.push(7);
        let logits = model.forward_chunks(
            &[Chunk::new(c, &seq_c[..18]), Chunk::new(a, &seq_a[3..])],
            &mut cache,
        );
        row_of(&logits, 0)
            .assert_approx_eq::<f32>(&alone(&model, &seq_c[..18]), Tolerance::default());
        row_of(&logits, 1).assert_approx_eq::<f32>(&alone(&model, &seq_a), Tolerance::default());
        assert_eq!(cache.used_blocks(), used + 2, "C took B's two blocks");
        seq_a.push(2);
        let logits = model.forward_chunks(
            &[Chunk::new(a, &seq_a[4..]), Chunk::new(c, &seq_c[18..])],
            &mut cache,
        );
        row_of(&logits, 0).assert_approx_eq::<f32>(&alone(&model, &seq_a), Tolerance::default());
        row_of(&logits, 1).assert_approx_eq::<f32>(&alone(&model, &seq_c), Tolerance::default());
        assert_eq!((cache.row_len(a), cache.row_len(c)), (5, 30));
    }

    #[test]
    #[should_panic(expected = "exceeds the context length")]
    fn a_cache_cannot_grow_past_the_context() {
        let device = Device::flex();
        let model = tiny().init_seeded(&device, 2026);
        let mut cache = KvCache::new();
        let window: Vec<u32> = (0..16).collect();
        model.forward_cached(&[&window], &mut cache);
        model.forward_cached(&[&[1]], &mut cache);
    }

    use super::*;
}
