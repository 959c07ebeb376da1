use burn::module::Module;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::cache::{BLOCK_SIZE, CacheStep, KeyValue};
use crate::flex::{cached_attention, laid_out_linear, linear, linear_onto};
use crate::linear::Linear;

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

    /// Attends from the `t` new positions to themselves and, with a cache, to their rows'
    /// earlier positions in `cached`'s layer, into which their keys and values are written;
    /// returns `residual` plus the attention's output.
    ///
    /// # Shapes
    /// - x, residual: `[b, t, c]` -> `[b, t, c]`; with a cache, `b` is 1 and the `t` positions
    ///   are the step's rows' one after another
    /// - the cached layer: `[blocks, n_head, BLOCK_SIZE, c / n_head]` each
    pub(crate) fn forward(
        &self,
        x: Tensor<3>,
        residual: Tensor<3>,
        cached: Option<(Option<KeyValue>, &CacheStep)>,
    ) -> (Tensor<3>, Option<KeyValue>) {
        let qkv = linear(&self.c_attn, x);
        let (y, layer) = match cached {
            None => {
                let [q, k, v] = split_heads(qkv, self.n_head);
                let y = attention(q, k, v, None, None, options(true));
                (merged_heads(y), None)
            }
            Some((layer, step)) => {
                let head_size = qkv.dims()[2] / 3 / self.n_head;
                let shape = [self.n_head, head_size];
                let layer = KeyValue::allocated(layer, shape, step, &qkv.device(), qkv.dtype());
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

/// What [`cached_attention`] computes, by burn's operations on any backend, a row at a time:
/// the row's new keys and values written into its blocks of `layer`, then its queries'
/// attention over its positions gathered from its blocks.
///
/// # Shapes
/// - qkv: `[1, n, 3c]` -> `[1, n, c]`
pub(crate) fn cached_attention_by_burn(
    qkv: Tensor<3>,
    layer: KeyValue,
    step: &CacheStep,
    n_head: usize,
) -> (Tensor<3>, KeyValue) {
    let [_, n, width] = qkv.dims();
    let device = qkv.device();
    let head_size = width / 3 / n_head;
    let [q, k, v] = split_heads(qkv, n_head); // [1, n_head, n, head_size] each
    let KeyValue { mut key, mut value } = layer;
    let mut outputs = Vec::with_capacity(step.rows.len());
    let mut first = 0;
    for row in &step.rows {
        let new = first..first + row.positions;
        let of_row = |x: &Tensor<4>| {
            x.clone()
                .slice([0..1, 0..n_head, new.clone(), 0..head_size])
        };
        let (new_key, new_value) = (of_row(&k), of_row(&v));
        // Each block's share of the new positions, written where the block lies in the pool.
        let mut position = row.start;
        while position < row.start + row.positions {
            let (index, offset) = (position / BLOCK_SIZE, position % BLOCK_SIZE);
            let taken = (BLOCK_SIZE - offset).min(row.start + row.positions - position);
            let block = row.blocks[index] as usize;
            let slot = [
                block..block + 1,
                0..n_head,
                offset..offset + taken,
                0..head_size,
            ];
            let from = position - row.start;
            let part = [0..1, 0..n_head, from..from + taken, 0..head_size];
            key = key.slice_assign(slot.clone(), new_key.clone().slice(part.clone()));
            value = value.slice_assign(slot, new_value.clone().slice(part));
            position += taken;
        }
        // The row's blocks, padded with its first to a power of two (2 at least): a GPU
        // backend meets a handful of shapes per generation rather than one per 16 positions.
        // The padding is masked out with every position past a query's own.
        let seen = row.start + row.positions;
        let blocks = seen.div_ceil(BLOCK_SIZE);
        let attended = blocks.next_power_of_two().max(MIN_ATTENDED_BLOCKS);
        let index: Vec<i64> = (0..attended)
            .map(|i| i64::from(row.blocks[if i < blocks { i } else { 0 }]))
            .collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(index, [attended]), &device);
        let columns = attended * BLOCK_SIZE;
        let gathered = |pool: &Tensor<4>| {
            pool.clone()
                .select(0, index.clone())
                .swap_dims(0, 1)
                .reshape([n_head, columns, head_size])
                .unsqueeze::<4>()
        };
        // Scores are scaled by 1/sqrt(hs). The mask goes in as an additive bias rather than a
        // bool mask: burn-tch hands bool masks to PyTorch, where `true` means "attend", the
        // opposite of burn's convention.
        let t = row.positions;
        let bias: Vec<f32> = (0..t * columns)
            .map(|i| match i % columns > row.start + i / columns {
                true => f32::NEG_INFINITY,
                false => 0.0,
            })
            .collect();
        let bias = Tensor::<4>::from_data(
            TensorData::new(bias, [1, 1, t, columns]),
            (&device, q.dtype()),
        )
        .expand([1, n_head, t, columns]);
        let y = attention(
            of_row(&q),
            gathered(&key),
            gathered(&value),
            None,
            Some(bias),
            options(false),
        );
        outputs.push(merged_heads(y));
        first += row.positions;
    }
    debug_assert_eq!(first, n);
    (Tensor::cat(outputs, 1), KeyValue { key, value })
}

/// The fewest blocks burn's path attends over: decode steps at the start of a generation share
/// one shape.
const MIN_ATTENDED_BLOCKS: usize = 2;

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
