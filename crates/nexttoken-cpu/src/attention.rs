//! A step's attention over a key/value cache kept in fixed-size blocks: the step's new keys and
//! values written into their rows' blocks, then each new position's attention over the positions
//! of its row it may see.
//!
//! A step holds any mix of rows: one new position of a row that is decoding, a chunk of a
//! prompt after the part of it already cached, a whole prompt. Each row's positions lie in the
//! blocks it lists, in order (position `p` in block `blocks[p / block_size]`, wherever that
//! block is in the cache), so rows grow and leave without the cache being moved, and a block
//! can be read by several rows (a shared prefix).
//!
//! A task per row and head copies its keys and values into the blocks, reads its queries where
//! they lie in the fused projections, attends over its row's blocks in place (a decode step's
//! few queries) or over a gathered copy (a prompt's blocks of queries, matrix products), and
//! writes its output columns where they go.

use rayon::prelude::*;

use crate::Float;
use crate::matmul::{Rhs, matmul};
use crate::pool::SharedOut;
use crate::product::{dots, rows_times_block};
use crate::softmax::softmax_in_place;
use crate::widen::widen;

/// Most queries of one row a task scores in dot products over the blocks in place: past this,
/// a cached key read once feeds enough multiply-adds that matrix products over a gathered copy
/// win.
const MAX_FEW_QUERIES: usize = 8;

/// Queries of a prompt scored together: enough rows for a matrix product to pay, few enough
/// that a causal prompt's blocks skip most of the masked half.
const QUERY_BLOCK: usize = 64;

/// One step of attention over a block cache: its shape and its rows.
#[derive(Clone, Copy, Debug)]
pub struct Attention<'a> {
    /// Heads a row's attention has, each `head_size` wide.
    pub heads: usize,
    pub head_size: usize,
    /// Positions a cache block holds.
    pub block_size: usize,
    /// The step's rows, in the order their new positions lie in the projections.
    pub rows: &'a [AttentionRow<'a>],
}

/// A row of an [`Attention`] step.
#[derive(Clone, Copy, Debug)]
pub struct AttentionRow<'a> {
    /// Positions of the row already in the cache: its new ones come after them.
    pub start: usize,
    /// New positions this step: 1 for a decode step, a prompt's chunk.
    pub positions: usize,
    /// The blocks holding the row's positions, in order: enough for `start + positions`.
    pub blocks: &'a [u32],
}

impl Attention<'_> {
    /// Writes `qkv`'s keys and values into each row's blocks at its new positions, then returns
    /// `softmax(q · keysᵀ / √head_size) · values` for every new position over the positions of
    /// its row up to its own, a task per row and head, on the current pool.
    ///
    /// # Shapes
    /// - qkv: `[positions of all rows, 3 · heads · head_size]` (queries, keys, values side by side)
    /// - key, value: `[blocks, heads, block_size, head_size]`
    /// - returns: `[positions of all rows, heads · head_size]`
    ///
    /// # Panics
    /// If the shapes disagree, a row lists too few blocks or one outside the cache, or two rows
    /// would write the same block.
    pub fn attend<W: Float>(&self, qkv: &[W], key: &mut [W], value: &mut [W]) -> Vec<f32> {
        let (heads, head_size, block_size) = (self.heads, self.head_size, self.block_size);
        let c = heads * head_size;
        let block_len = heads * block_size * head_size;
        let tokens: usize = self.rows.iter().map(|row| row.positions).sum();
        assert!(
            qkv.len() == tokens * 3 * c,
            "qkv is not [{tokens}, {}]",
            3 * c
        );
        assert!(key.len() == value.len() && key.len().is_multiple_of(block_len.max(1)));
        let blocks = key.len() / block_len.max(1);
        let mut written = Vec::new();
        for row in self.rows {
            let end = row.start + row.positions;
            assert!(
                row.blocks.len() * block_size >= end,
                "{} blocks of {block_size} for {end} positions",
                row.blocks.len()
            );
            assert!(
                row.blocks.iter().all(|&block| (block as usize) < blocks),
                "a block outside the cache's {blocks}"
            );
            let first = row.start / block_size;
            written.extend_from_slice(&row.blocks[first..end.div_ceil(block_size)]);
        }
        written.sort_unstable();
        assert!(
            written.windows(2).all(|pair| pair[0] != pair[1]),
            "two rows write the same block"
        );
        let firsts: Vec<usize> = self
            .rows
            .iter()
            .scan(0, |first, row| {
                let this = *first;
                *first += row.positions;
                Some(this)
            })
            .collect();
        let mut y = Vec::<f32>::with_capacity(tokens * c); // filled by the tasks below
        let out = SharedOut::new(&mut y);
        let (keys, values) = (SharedOut::of_slice(key), SharedOut::of_slice(value));
        (0..self.rows.len() * heads)
            .into_par_iter()
            .for_each(|task| {
                let (index, head) = (task / heads, task % heads);
                let row = &self.rows[index];
                let t = row.positions;
                // `[t, 3c]`: this row's new positions' queries, keys and values.
                let projections = &qkv[firsts[index] * 3 * c..][..t * 3 * c];
                let part = |part: usize| {
                    projections
                        .chunks_exact(3 * c)
                        .map(move |position| &position[part * c + head * head_size..][..head_size])
                };
                for (cache, new) in [(keys, part(1)), (values, part(2))] {
                    for (position, new) in (row.start..).zip(new) {
                        // SAFETY: the slot is within the cache (its block was checked) and
                        // this task's alone: this head, a new position of this row, in a block
                        // no other row writes (checked).
                        unsafe {
                            let at = cache.at(self.slot(row, head, position));
                            std::ptr::copy_nonoverlapping(new.as_ptr(), at, head_size);
                        }
                    }
                }
                let mut q = vec![0.0f32; t * head_size];
                for (q, new) in q.chunks_exact_mut(head_size).zip(part(0)) {
                    widen(q, new);
                }
                let mut y_head = vec![0.0f32; t * head_size];
                if t <= MAX_FEW_QUERIES {
                    self.attend_few(row, head, &mut y_head, &q, keys, values);
                } else {
                    self.attend_blocks(row, head, &mut y_head, &q, keys, values);
                }
                for (query, y_head) in y_head.chunks_exact(head_size).enumerate() {
                    // SAFETY: row `firsts[index] + query` of `y`'s `[tokens, c]` has this
                    // head's columns, `head * head_size..(head + 1) * head_size`, and they are
                    // this task's alone.
                    unsafe {
                        let at = out.at((firsts[index] + query) * c + head * head_size);
                        std::ptr::copy_nonoverlapping(y_head.as_ptr(), at, head_size);
                    }
                }
            });
        // SAFETY: the tasks wrote every head's columns of every position.
        unsafe { y.set_len(tokens * c) };
        y
    }

    /// Where `position` of `row`'s `head` starts in the cache.
    fn slot(&self, row: &AttentionRow, head: usize, position: usize) -> usize {
        let block = row.blocks[position / self.block_size] as usize;
        ((block * self.heads + head) * self.block_size + position % self.block_size)
            * self.head_size
    }

    /// `row`'s `head` in the first `len` positions of block number `index` of the row, in
    /// place.
    ///
    /// # Safety
    /// No task writes those values while the slice lives.
    unsafe fn block_of<'c, W>(
        &self,
        cache: SharedOut<W>,
        row: &AttentionRow,
        head: usize,
        index: usize,
        len: usize,
    ) -> &'c [W] {
        let at = self.slot(row, head, index * self.block_size);
        // SAFETY: `len` positions of one head lie together in a block (the caller keeps `len`
        // within the block), and nothing writes them (the caller's promise).
        unsafe { std::slice::from_raw_parts(cache.at(at), len * self.head_size) }
    }

    /// A decode step's few queries of one head: each score is a dot product over a cached key,
    /// block by block in place.
    fn attend_few<W: Float>(
        &self,
        row: &AttentionRow,
        head: usize,
        y: &mut [f32],
        q: &[f32],
        keys: SharedOut<W>,
        values: SharedOut<W>,
    ) {
        let (t, block_size, head_size) = (row.positions, self.block_size, self.head_size);
        let seen = row.start + t;
        let blocks = seen.div_ceil(block_size);
        let block_len = |index: usize| (seen - index * block_size).min(block_size);
        let mut scores = vec![0.0f32; seen * t]; // [seen, t]
        for index in 0..blocks {
            let len = block_len(index);
            // SAFETY: positions below `seen` of this row's head: written before the step or by
            // this task, and no other task writes them.
            let key = unsafe { self.block_of(keys, row, head, index, len) };
            dots(
                &mut scores[index * block_size * t..][..len * t],
                q,
                key,
                head_size,
            );
        }
        let mut weights = vec![0.0f32; t * seen]; // [t, seen]
        for (query, weights) in weights.chunks_exact_mut(seen).enumerate() {
            let scores = scores.iter().skip(query).step_by(t);
            weights.iter_mut().zip(scores).for_each(|(w, s)| *w = *s);
            self.softmax(row.start + query, weights);
        }
        let mut block_weights = vec![0.0f32; t * block_size];
        for index in 0..blocks {
            let len = block_len(index);
            let block_weights = &mut block_weights[..t * len];
            for (block_weights, weights) in block_weights
                .chunks_exact_mut(len)
                .zip(weights.chunks_exact(seen))
            {
                block_weights.copy_from_slice(&weights[index * block_size..][..len]);
            }
            // SAFETY: as for the keys.
            let value = unsafe { self.block_of(values, row, head, index, len) };
            rows_times_block(y, block_weights, value, head_size);
        }
    }

    /// A prompt's queries of one head, [`QUERY_BLOCK`] at a time over the row's keys and values
    /// gathered in float32: scores and weighted values are matrix products, and a block of
    /// queries only meets the keys up to its last query.
    fn attend_blocks<W: Float>(
        &self,
        row: &AttentionRow,
        head: usize,
        y: &mut [f32],
        q: &[f32],
        keys: SharedOut<W>,
        values: SharedOut<W>,
    ) {
        let (block_size, head_size) = (self.block_size, self.head_size);
        let seen = row.start + row.positions;
        let gather = |cache: SharedOut<W>| {
            let mut gathered = vec![0.0f32; seen * head_size];
            for (index, gathered) in gathered.chunks_mut(block_size * head_size).enumerate() {
                // SAFETY: as in `attend_few`.
                let block =
                    unsafe { self.block_of(cache, row, head, index, gathered.len() / head_size) };
                widen(gathered, block);
            }
            gathered
        };
        let (key, value) = (gather(keys), gather(values));
        let mut weights = vec![0.0f32; QUERY_BLOCK * seen];
        let query_block_len = QUERY_BLOCK * head_size;
        for (block, (y, q)) in y
            .chunks_mut(query_block_len)
            .zip(q.chunks(query_block_len))
            .enumerate()
        {
            let (first_query, queries) = (block * QUERY_BLOCK, q.len() / head_size);
            let visible = row.start + first_query + queries;
            let weights = &mut weights[..queries * visible];
            let keys = &key[..visible * head_size];
            matmul(
                weights,
                q,
                keys,
                [queries, head_size, visible],
                Rhs::Transposed,
            );
            for (query, weights) in weights.chunks_exact_mut(visible).enumerate() {
                self.softmax(row.start + first_query + query, weights);
            }
            let values = &value[..visible * head_size];
            matmul(y, weights, values, [queries, visible, head_size], Rhs::AsIs);
        }
    }

    /// Turns the scores of the query at `position` over the first `scores.len()` positions into
    /// attention weights: scaled, masked past its own position, normalised.
    fn softmax(&self, position: usize, scores: &mut [f32]) {
        let scale = (self.head_size as f32).sqrt().recip();
        scores.iter_mut().for_each(|score| *score *= scale);
        let visible = (position + 1).min(scores.len());
        scores[visible..].fill(f32::NEG_INFINITY);
        softmax_in_place(scores);
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;
    use crate::product::tests::values;

    /// Attention by its definition, in float64, over row `row`'s positions read back from the
    /// cache's blocks: the reference.
    fn reference(
        step: &Attention,
        qkv: &[f32],
        key: &[f32],
        value: &[f32],
        row: usize,
    ) -> Vec<f64> {
        let (d, c) = (step.head_size, step.heads * step.head_size);
        let this = &step.rows[row];
        let first: usize = step.rows[..row].iter().map(|row| row.positions).sum();
        let mut y = vec![0.0; this.positions * c];
        for head in 0..step.heads {
            let cached = |cache: &[f32], position: usize| {
                let at = step.slot(this, head, position);
                cache[at..at + d]
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect::<Vec<_>>()
            };
            for query in 0..this.positions {
                let q = &qkv[(first + query) * 3 * c + head * d..][..d];
                let scores: Vec<f64> = (0..=this.start + query)
                    .map(|position| {
                        let k = cached(key, position);
                        let dot: f64 = q.iter().zip(&k).map(|(q, k)| f64::from(*q) * k).sum();
                        dot / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (position, score) in scores.iter().enumerate() {
                    let weight = (score - max).exp() / total;
                    for (out, v) in y[query * c + head * d..][..d]
                        .iter_mut()
                        .zip(cached(value, position))
                    {
                        *out += weight * v;
                    }
                }
            }
        }
        y
    }

    /// Three rows over blocks of 16 handed out out of order, through steps that mix a whole
    /// prompt (blocked queries, over two query blocks), a prompt's later chunk, a chunk of 3
    /// and decode steps (dot products), the rows at different lengths.
    fn check<W: Float>(tolerance: f64, [heads, head_size]: [usize; 2]) {
        let block_size = 16;
        let c = heads * head_size;
        let blocks = 24;
        let layer = blocks * heads * block_size * head_size;
        let (mut key, mut value) = (vec![W::default(); layer], vec![W::default(); layer]);
        // Row 0 in even blocks from the top, row 1 in odd ones, row 2 in some of the rest.
        let tables: [Vec<u32>; 3] = [
            (0..8).map(|i| 22 - 2 * i).collect(),
            (0..8).map(|i| 2 * i + 1).collect(),
            vec![23, 19, 0, 21],
        ];
        let steps: [[usize; 3]; 4] = [[70, 9, 1], [1, 40, 3], [1, 1, 20], [3, 1, 1]];
        let mut starts = [0usize; 3];
        for (round, positions) in steps.into_iter().enumerate() {
            let rows: Vec<AttentionRow> = (0..3)
                .map(|r| AttentionRow {
                    start: starts[r],
                    positions: positions[r],
                    blocks: &tables[r],
                })
                .collect();
            let step = Attention {
                heads,
                head_size,
                block_size,
                rows: &rows,
            };
            let tokens: usize = positions.iter().sum();
            let qkv = values::<W>(tokens * 3 * c, 31 + round);
            let y = step.attend(&qkv, &mut key, &mut value);
            let wide = |values: &[W]| values.iter().map(|v| v.to_f32()).collect::<Vec<_>>();
            let (qkv32, key32, value32) = (wide(&qkv), wide(&key), wide(&value));
            let mut first = 0;
            for (index, row) in rows.iter().enumerate() {
                let expected = reference(&step, &qkv32, &key32, &value32, index);
                let ours = &y[first * c..][..row.positions * c];
                for (i, (ours, exact)) in ours.iter().zip(&expected).enumerate() {
                    assert!(
                        (f64::from(*ours) - exact).abs() <= tolerance,
                        "{}, {heads} heads of {head_size}, step {round}, row {index} [{i}]: {ours} vs {exact}",
                        std::any::type_name::<W>()
                    );
                }
                // The row's last new key went into its block where it belongs.
                let last = first + row.positions - 1;
                let new_key = &qkv[last * 3 * c + c..][..head_size];
                let at = step.slot(row, 0, row.start + row.positions - 1);
                assert!(
                    new_key
                        .iter()
                        .zip(&key[at..])
                        .all(|(a, b)| a.to_f32() == b.to_f32())
                );
                first += row.positions;
            }
            for (start, positions) in starts.iter_mut().zip(positions) {
                *start += positions;
            }
        }
    }

    #[test]
    fn attention_over_blocks_matches_its_definition_in_every_dtype() {
        // Small heads, then GPT-2's: 12 heads of 64 (small) and 16 (medium); 64 values fill
        // whole vectors at every level, 8 only a part of one.
        for shape in [[3, 8], [12, 64], [16, 64]] {
            check::<f32>(1e-4, shape);
            check::<f16>(1e-3, shape);
            check::<bf16>(1e-3, shape);
        }
    }

    #[test]
    #[should_panic(expected = "two rows write the same block")]
    fn two_rows_cannot_write_one_block() {
        let (mut key, mut value) = (vec![0.0f32; 2 * 4 * 2], vec![0.0f32; 2 * 4 * 2]);
        let rows = [
            AttentionRow {
                start: 0,
                positions: 1,
                blocks: &[1],
            },
            AttentionRow {
                start: 2,
                positions: 1,
                blocks: &[1],
            },
        ];
        let step = Attention {
            heads: 1,
            head_size: 2,
            block_size: 4,
            rows: &rows,
        };
        step.attend(&[0.0; 2 * 6], &mut key, &mut value);
    }

    #[test]
    #[should_panic(expected = "blocks of 4 for 5 positions")]
    fn a_row_needs_blocks_for_its_positions() {
        let (mut key, mut value) = (vec![0.0f32; 2 * 4 * 2], vec![0.0f32; 2 * 4 * 2]);
        let rows = [AttentionRow {
            start: 4,
            positions: 1,
            blocks: &[0],
        }];
        let step = Attention {
            heads: 1,
            head_size: 2,
            block_size: 4,
            rows: &rows,
        };
        step.attend(&[0.0; 6], &mut key, &mut value);
    }
}
