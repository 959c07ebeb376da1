//! A step's attention over a layer's key/value cache, in place: the step's new keys and values
//! written into the cache, then each new position's attention over the columns it may see.
//!
//! A task per row and head copies its keys and values into the cache, reads its queries where
//! they lie in the fused projections, attends over its part of the cache in place (only the
//! written columns, and for a causal prompt only those up to each query's own position), and
//! writes its output columns where they go. burn's path split the projections into heads and
//! merged them after (seven copies of the step's activations a layer) and copied the attended
//! columns out of the cache every layer of every step.

use rayon::prelude::*;

use crate::Float;
use crate::matmul::{Rhs, matmul};
use crate::pool::SharedOut;
use crate::product::{dots, rows_times_block};
use crate::softmax::softmax_in_place;
use crate::widen::widen;

/// Most queries of one row a task scores in dot products: past this, a cached key read once
/// feeds enough multiply-adds that the blocked matrix products win. Per row, not per step: a
/// decode step of many rows is one query per task.
const MAX_FEW_QUERIES: usize = 8;

/// Queries of a prompt scored together against the keys they may see: enough rows for a
/// matrix product to pay, few enough that a causal prompt's blocks skip most of the masked half.
const QUERY_BLOCK: usize = 64;

/// One step of attention: its shape and what its queries may see.
#[derive(Clone, Copy, Debug)]
pub struct Attention<'a> {
    /// Heads a row's attention has, each `head_size` wide.
    pub heads: usize,
    pub head_size: usize,
    /// New positions per row in this step: a prompt's length, or 1 for a decode step.
    pub positions: usize,
    /// Columns the cache holds for each row and head.
    pub capacity: usize,
    /// The first column this step writes: the positions already cached.
    pub start: usize,
    /// Whether a new position sees only the columns up to its own.
    pub causal: bool,
    /// Added to the scores before the softmax: a padded batch's mask.
    pub bias: Option<ScoreBias<'a>>,
}

/// Values added to a step's scores, `[rows, positions, columns]`: a query's scores take the
/// first of its `columns` values.
#[derive(Clone, Copy, Debug)]
pub struct ScoreBias<'a> {
    pub values: &'a [f32],
    pub columns: usize,
}

impl Attention<'_> {
    /// Writes `qkv`'s keys and values into `key` and `value` at columns `start..start +
    /// positions`, then returns `softmax(q · keysᵀ / √head_size + bias) · values` over the
    /// written columns for every row's every head, a task each, on the current pool.
    ///
    /// # Shapes
    /// - qkv: `[rows, positions, 3 · heads · head_size]` (queries, keys, values side by side)
    /// - key, value: `[rows, heads, capacity, head_size]`
    /// - returns: `[rows, positions, heads · head_size]`
    ///
    /// # Panics
    /// If the shapes disagree, or the step's columns pass the capacity.
    pub fn attend<W: Float>(&self, qkv: &[W], key: &mut [W], value: &mut [W]) -> Vec<f32> {
        let (t, head_size) = (self.positions, self.head_size);
        let c = self.heads * head_size;
        let written = self.start + t;
        let layer_len = self.capacity * head_size;
        let rows = qkv.len() / (t * 3 * c).max(1);
        assert!(
            written <= self.capacity,
            "{written} columns in a cache of {}",
            self.capacity
        );
        assert!(
            qkv.len() == rows * t * 3 * c,
            "qkv is not [rows, {t}, {}]",
            3 * c
        );
        assert!(key.len() == rows * self.heads * layer_len && value.len() == key.len());
        let few_queries = t <= MAX_FEW_QUERIES;
        let mut y = Vec::<f32>::with_capacity(qkv.len() / 3); // filled by the tasks below
        let out = SharedOut::new(&mut y);
        key.par_chunks_mut(layer_len)
            .zip(value.par_chunks_mut(layer_len))
            .enumerate()
            .for_each(|(row_head, (key, value))| {
                let (row, head) = (row_head / self.heads, row_head % self.heads);
                // `[t, 3c]`: this row's new positions' queries, keys and values.
                let positions = &qkv[row * t * 3 * c..][..t * 3 * c];
                let part = |part: usize| {
                    positions
                        .chunks_exact(3 * c)
                        .map(move |position| &position[part * c + head * head_size..][..head_size])
                };
                let new_columns = self.start * head_size..written * head_size;
                for (cached, new) in [(&mut *key, part(1)), (&mut *value, part(2))] {
                    cached[new_columns.clone()]
                        .chunks_exact_mut(head_size)
                        .zip(new)
                        .for_each(|(cached, new)| cached.copy_from_slice(new));
                }
                let mut q = vec![0.0f32; t * head_size];
                for (q, new) in q.chunks_exact_mut(head_size).zip(part(0)) {
                    widen(q, new);
                }
                let mut y_head = vec![0.0f32; t * head_size];
                let (key, value) = (&key[..written * head_size], &value[..written * head_size]);
                if few_queries {
                    self.attend_few(row, &mut y_head, &q, key, value);
                } else {
                    self.attend_blocks(row, &mut y_head, &q, key, value);
                }
                for (query, y_head) in y_head.chunks_exact(head_size).enumerate() {
                    // SAFETY: row `row * t + query` of `y`'s `[rows * t, c]` has this head's
                    // columns, `head * head_size..(head + 1) * head_size`, and they are this
                    // task's alone.
                    unsafe {
                        let at = out.at((row * t + query) * c + head * head_size);
                        std::ptr::copy_nonoverlapping(y_head.as_ptr(), at, head_size);
                    }
                }
            });
        // SAFETY: the tasks wrote every head's columns of every row.
        unsafe { y.set_len(qkv.len() / 3) };
        y
    }

    /// A decode step's few queries of one head: each score is a dot product over the key.
    fn attend_few<W: Float>(&self, row: usize, y: &mut [f32], q: &[f32], key: &[W], value: &[W]) {
        let (t, written) = (self.positions, key.len() / self.head_size);
        let mut scores = vec![0.0f32; written * t]; // [written, t]
        dots(&mut scores, q, key, self.head_size);
        let mut weights = vec![0.0f32; t * written]; // [t, written]
        for (query, weights) in weights.chunks_exact_mut(written).enumerate() {
            let scores = scores.iter().skip(query).step_by(t);
            weights.iter_mut().zip(scores).for_each(|(w, s)| *w = *s);
            self.softmax(row, query, weights);
        }
        rows_times_block(y, &weights, value, self.head_size);
    }

    /// A prompt's queries of one head, [`QUERY_BLOCK`] at a time: scores and weighted values
    /// are matrix products, and under a causal mask a block only meets the keys up to its last
    /// query.
    fn attend_blocks<W: Float>(
        &self,
        row: usize,
        y: &mut [f32],
        q: &[f32],
        key: &[W],
        value: &[W],
    ) {
        let head_size = self.head_size;
        let (key, value) = (W::as_f32(key), W::as_f32(value));
        let written = key.len() / head_size;
        let mut weights = vec![0.0f32; QUERY_BLOCK * written];
        let block_len = QUERY_BLOCK * head_size;
        for (block, (y, q)) in y.chunks_mut(block_len).zip(q.chunks(block_len)).enumerate() {
            let (first_query, queries) = (block * QUERY_BLOCK, q.len() / head_size);
            let seen = if self.causal {
                self.start + first_query + queries
            } else {
                written
            };
            let weights = &mut weights[..queries * seen];
            let keys = &key[..seen * head_size];
            matmul(
                weights,
                q,
                keys,
                [queries, head_size, seen],
                Rhs::Transposed,
            );
            for (query, weights) in weights.chunks_exact_mut(seen).enumerate() {
                self.softmax(row, first_query + query, weights);
            }
            let values = &value[..seen * head_size];
            matmul(y, weights, values, [queries, seen, head_size], Rhs::AsIs);
        }
    }

    /// Turns one query's scores over the first `scores.len()` columns into attention weights:
    /// scaled, biased, masked, normalised.
    fn softmax(&self, row: usize, query: usize, scores: &mut [f32]) {
        let scale = (self.head_size as f32).sqrt().recip();
        scores.iter_mut().for_each(|score| *score *= scale);
        if let Some(bias) = self.bias {
            let bias =
                &bias.values[(row * self.positions + query) * bias.columns..][..scores.len()];
            scores
                .iter_mut()
                .zip(bias)
                .for_each(|(score, bias)| *score += bias);
        }
        if self.causal {
            let visible = (self.start + query + 1).min(scores.len());
            scores[visible..].fill(f32::NEG_INFINITY);
        }
        softmax_in_place(scores);
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;
    use crate::product::tests::values;

    /// Attention by its definition, in float64, over a row's whole cache: the reference.
    fn reference(
        step: &Attention,
        queries: &[f32],
        key: &[f32],
        value: &[f32],
        row: usize,
    ) -> Vec<f64> {
        let (t, d) = (step.positions, step.head_size);
        let written = step.start + t;
        let mut y = vec![0.0; t * step.heads * d];
        for head in 0..step.heads {
            let cached = |cache: &[f32], column: usize| {
                let at = ((row * step.heads + head) * step.capacity + column) * d;
                cache[at..at + d]
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect::<Vec<_>>()
            };
            for query in 0..t {
                let q = &queries[(query * step.heads + head) * d..][..d];
                let visible = if step.causal {
                    step.start + query + 1
                } else {
                    written
                };
                let scores: Vec<f64> = (0..visible)
                    .map(|column| {
                        let k = cached(key, column);
                        let dot: f64 = q.iter().zip(&k).map(|(q, k)| f64::from(*q) * k).sum();
                        let bias = step.bias.map_or(0.0, |bias| {
                            f64::from(bias.values[(row * t + query) * bias.columns + column])
                        });
                        dot / (d as f64).sqrt() + bias
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (column, score) in scores.iter().enumerate() {
                    let weight = (score - max).exp() / total;
                    for (out, v) in y[(query * step.heads + head) * d..][..d]
                        .iter_mut()
                        .zip(cached(value, column))
                    {
                        *out += weight * v;
                    }
                }
            }
        }
        y
    }

    /// How a step's queries are kept from later positions: by [`Attention::causal`] (each block
    /// of queries meets only the keys it may see), or by the bias alone, as a padded batch's mask
    /// does it (every query meets every written key).
    #[derive(Clone, Copy, PartialEq)]
    enum Causality {
        Flag,
        Mask,
    }

    fn check<W: Float>(tolerance: f64, causality: Causality, [heads, head_size]: [usize; 2]) {
        let [rows, capacity] = [2, 80];
        let c = heads * head_size;
        let layer = rows * heads * capacity * head_size;
        let (mut key, mut value) = (vec![W::default(); layer], vec![W::default(); layer]);
        // A prompt of 70 (blocks of queries: two), then decode steps (dot products), the
        // second row's first two columns biased down (a padding mask's -inf would leave its
        // first queries nothing to see).
        let mut start = 0;
        for (round, t) in [70, 1, 1, 3].into_iter().enumerate() {
            let written = start + t;
            let bias: Vec<f32> = (0..rows * t * written)
                .map(|i| {
                    let (row, query, column) = (i / (t * written), i / written % t, i % written);
                    if causality == Causality::Mask && column > start + query {
                        f32::NEG_INFINITY
                    } else if row == 1 && column < 2 {
                        -2.5
                    } else {
                        0.0
                    }
                })
                .collect();
            let step = Attention {
                heads,
                head_size,
                positions: t,
                capacity,
                start,
                causal: causality == Causality::Flag && t > 1,
                bias: Some(ScoreBias {
                    values: &bias,
                    columns: written,
                }),
            };
            let qkv = values::<W>(rows * t * 3 * c, 31 + round);
            let y = step.attend(&qkv, &mut key, &mut value);
            let wide = |values: &[W]| values.iter().map(|v| v.to_f32()).collect::<Vec<_>>();
            let (key32, value32) = (wide(&key), wide(&value));
            for row in 0..rows {
                let queries: Vec<f32> = qkv[row * t * 3 * c..][..t * 3 * c]
                    .chunks_exact(3 * c)
                    .flat_map(|position| wide(&position[..c]))
                    .collect();
                let expected = reference(&step, &queries, &key32, &value32, row);
                let ours = &y[row * t * c..][..t * c];
                for (i, (ours, exact)) in ours.iter().zip(&expected).enumerate() {
                    assert!(
                        (f64::from(*ours) - exact).abs() <= tolerance,
                        "{}, {heads} heads of {head_size}, step {round}, row {row} [{i}]: \
                         {ours} vs {exact}",
                        std::any::type_name::<W>()
                    );
                }
            }
            // The step's keys went into the cache where they belong.
            let first_key = &qkv[(t - 1) * 3 * c + c..][..head_size];
            let cached = &key[(start + t - 1) * head_size..][..head_size];
            assert!(
                first_key
                    .iter()
                    .zip(cached)
                    .all(|(a, b)| a.to_f32() == b.to_f32())
            );
            start = written;
        }
    }

    #[test]
    fn attention_matches_its_definition_with_padding_causality_and_half_precision() {
        // Small heads, then GPT-2's: 12 heads of 64 (small) and 16 (medium); 64 values fill
        // whole vectors at every level, 8 only a part of one.
        for shape in [[3, 8], [12, 64], [16, 64]] {
            for causality in [Causality::Flag, Causality::Mask] {
                check::<f32>(1e-4, causality, shape);
                check::<f16>(1e-3, causality, shape);
                check::<bf16>(1e-3, causality, shape);
            }
        }
    }
}
