use std::collections::{HashMap, VecDeque};

use burn::tensor::{DType, Device, Int, Tensor, TensorData};

/// Positions a block of a [`KvCache`] holds.
pub const BLOCK_SIZE: usize = 16;

/// A row of a [`KvCache`], as [`KvCache::add_row`] named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheRow(u64);

/// The keys and values of every position the model has seen, for rows of any lengths, kept in
/// blocks of [`BLOCK_SIZE`] positions.
///
/// With a cache, a generation step runs only the new tokens through the model: attention reads
/// the earlier positions' keys and values from here instead of recomputing them. Each layer
/// keeps one pool of blocks, `[blocks, n_head, BLOCK_SIZE, head_size]`; a row takes blocks as it
/// grows and gives them back when it [leaves](Self::remove_row), so rows of different lengths
/// share one step (each at its own positions: nothing is padded), join and leave without the
/// others' blocks being moved, as vLLM's paged attention keeps them. The pool grows as rows need
/// blocks, up to [`KvCache::with_max_blocks`] if given.
///
/// Rows that start with the same tokens share their blocks ([`KvCache::add_row_after_prefix`]):
/// a full block is indexed by its tokens and the block before it (so by its whole prefix, as
/// vLLM's automatic prefix caching keys them), and a block no row holds any more keeps its
/// keys and values for a later prompt until the pool needs it (the least recently freed first).
///
/// GPT-2's position embeddings are absolute, so a row's cache is only valid while its positions
/// stay where they are: once a sequence outgrows the context, remove the row and feed the
/// cropped window again.
///
/// ```
/// use burn::tensor::Device;
/// use nexttoken_model::{Chunk, Gpt2Config, KvCache};
///
/// let device = Device::flex();
/// let model = Gpt2Config { n_layer: 2, n_head: 2, n_embd: 8, n_positions: 16, vocab_size: 32, ..Gpt2Config::gpt2() }.init(&device);
/// let mut cache = KvCache::new();
/// let (short, long) = (cache.add_row(), cache.add_row());
/// // A prompt of one row beside another's: any lengths, one forward pass.
/// let _first = model.forward_chunks(&[Chunk::new(short, &[1]), Chunk::new(long, &[2, 3, 4])], &mut cache);
/// // The short row decodes while the long one takes the next chunk of its prompt.
/// let logits = model.forward_chunks(&[Chunk::new(short, &[5]), Chunk::new(long, &[6, 7])], &mut cache);
/// assert_eq!(logits.dims(), [2, 32]);
/// assert_eq!((cache.row_len(short), cache.row_len(long)), (2, 5));
/// ```
#[derive(Debug, Clone)]
pub struct KvCache {
    /// One pool per layer; empty until the first forward pass.
    layers: Vec<KeyValue>,
    /// In the order they were added: [`crate::Gpt2::forward_cached`]'s.
    rows: Vec<RowBlocks>,
    /// Blocks in the pool (the layers' tensors catch up at the next forward pass).
    blocks: usize,
    /// Blocks no row holds and no prefix is indexed at.
    free: Vec<u32>,
    /// Blocks no row holds whose prefix is indexed, the least recently freed first: taken
    /// when no free block is left.
    evictable: VecDeque<u32>,
    /// Rows holding each block.
    holders: Vec<u32>,
    /// `None`: rows share nothing.
    prefixes: Option<PrefixIndex>,
    max_blocks: Option<usize>,
    added: u64,
}

#[derive(Debug, Clone)]
struct RowBlocks {
    id: CacheRow,
    /// Positions cached.
    len: usize,
    blocks: Vec<u32>,
    /// The ids at those positions, while prefixes are indexed.
    ids: Vec<u32>,
}

/// What a full block holds: the block before it in its row (or [`NO_BLOCK`]) and its ids.
type BlockKey = (u32, [u32; BLOCK_SIZE]);

/// The parent of a row's first block.
const NO_BLOCK: u32 = u32::MAX;

/// Full blocks by what they hold, and back.
#[derive(Debug, Clone, Default)]
struct PrefixIndex {
    blocks: HashMap<BlockKey, u32>,
    /// Each indexed block's key and the indexed blocks whose parent it is.
    keys: HashMap<u32, (BlockKey, Vec<u32>)>,
}

/// One layer's pool of blocks, `[blocks, n_head, BLOCK_SIZE, head_size]` each.
#[derive(Debug, Clone)]
pub(crate) struct KeyValue {
    pub key: Tensor<4>,
    pub value: Tensor<4>,
}

/// One forward pass's rows: where each writes in the cache and what it attends over.
#[derive(Debug)]
pub(crate) struct CacheStep {
    pub rows: Vec<StepRow>,
    /// Blocks each layer's pool must have for this step.
    pub blocks: usize,
}

/// A row of a [`CacheStep`].
#[derive(Debug)]
pub(crate) struct StepRow {
    /// Positions cached before the step.
    pub start: usize,
    /// New positions.
    pub positions: usize,
    /// Enough for `start + positions`.
    pub blocks: Vec<u32>,
}

impl Default for KvCache {
    fn default() -> Self {
        Self {
            layers: Vec::new(),
            rows: Vec::new(),
            blocks: 0,
            free: Vec::new(),
            evictable: VecDeque::new(),
            holders: Vec::new(),
            prefixes: Some(PrefixIndex::default()),
            max_blocks: None,
            added: 0,
        }
    }
}

impl KvCache {
    /// A cache whose pool grows as its rows need blocks, and whose rows share the blocks of
    /// the prompts' common prefixes.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache whose pool holds at most `blocks` blocks (a server's memory bound: see
    /// [`crate::Gpt2::kv_block_bytes`]); a step that needs more panics, so check
    /// [`KvCache::free_blocks`] first.
    pub fn with_max_blocks(blocks: usize) -> Self {
        Self {
            max_blocks: Some(blocks),
            ..Self::default()
        }
    }

    /// Shares no blocks between rows: every prompt is computed whole.
    pub fn without_prefix_sharing(mut self) -> Self {
        self.prefixes = None;
        self
    }

    /// Starts a row with no positions; its first [`Chunk`](crate::Chunk) is its prompt.
    pub fn add_row(&mut self) -> CacheRow {
        self.add_row_after_prefix(&[]).0
    }

    /// Starts a row for `ids` with the blocks of their longest indexed prefix (whole blocks,
    /// never the last id, whose logits the caller needs): returns the row and the positions
    /// it already has, where its first [`Chunk`](crate::Chunk) continues (`ids[cached..]`).
    pub fn add_row_after_prefix(&mut self, ids: &[u32]) -> (CacheRow, usize) {
        let id = CacheRow(self.added);
        self.added += 1;
        let mut blocks = Vec::new();
        if let Some(index) = &self.prefixes {
            let mut parent = NO_BLOCK;
            for block_ids in ids[..ids.len().saturating_sub(1)].chunks_exact(BLOCK_SIZE) {
                let key = (parent, block_ids.try_into().expect("chunks of BLOCK_SIZE"));
                let Some(&block) = index.blocks.get(&key) else {
                    break;
                };
                blocks.push(block);
                parent = block;
            }
        }
        for &block in &blocks {
            if self.holders[block as usize] == 0 {
                self.evictable.retain(|&b| b != block);
            }
            self.holders[block as usize] += 1;
        }
        let len = blocks.len() * BLOCK_SIZE;
        let ids = match self.prefixes {
            Some(_) => ids[..len].to_vec(),
            None => Vec::new(),
        };
        self.rows.push(RowBlocks {
            id,
            len,
            blocks,
            ids,
        });
        (id, len)
    }

    /// Forgets `row` and frees its blocks. Returns whether it was here.
    pub fn remove_row(&mut self, row: CacheRow) -> bool {
        let Some(index) = self.rows.iter().position(|r| r.id == row) else {
            return false;
        };
        let removed = self.rows.remove(index);
        for &block in removed.blocks.iter().rev() {
            self.release(block);
        }
        true
    }

    /// One holder less for `block`; with none left, it is evictable if indexed, else free.
    fn release(&mut self, block: u32) {
        let holders = &mut self.holders[block as usize];
        *holders -= 1;
        if *holders > 0 {
            return;
        }
        match &self.prefixes {
            Some(index) if index.keys.contains_key(&block) => self.evictable.push_back(block),
            _ => self.free.push(block),
        }
    }

    /// Forgets `row`'s positions from `len` on, freeing the blocks past them: its next token
    /// takes position `len`.
    ///
    /// # Panics
    /// If `row` is not in the cache.
    /// If the block the row goes on in is shared with another row.
    pub fn truncate_row(&mut self, row: CacheRow, len: usize) {
        let index = self.rows.iter().position(|r| r.id == row);
        let index = index.unwrap_or_else(|| panic!("{row:?} is not in the cache"));
        let kept = &mut self.rows[index];
        kept.len = kept.len.min(len);
        kept.ids.truncate(kept.len);
        let freed = kept.blocks.split_off(Self::blocks_for(kept.len));
        let partial =
            (!kept.len.is_multiple_of(BLOCK_SIZE)).then(|| kept.blocks[kept.len / BLOCK_SIZE]);
        for block in freed.into_iter().rev() {
            self.release(block);
        }
        // The row writes into its last block again: it no longer holds what it was indexed by.
        if let Some(block) = partial {
            assert_eq!(
                self.holders[block as usize], 1,
                "{row:?} would write into a block it shares"
            );
            self.unindex(block);
        }
    }

    /// Drops `block` from the prefix index, and the blocks indexed after it (they are free:
    /// a row holding one holds this one too), which become free.
    fn unindex(&mut self, block: u32) {
        let Some(index) = &mut self.prefixes else {
            return;
        };
        let mut dropped = vec![block];
        while let Some(block) = dropped.pop() {
            if let Some((key, children)) = index.keys.remove(&block) {
                index.blocks.remove(&key);
                if let Some((_, siblings)) = index.keys.get_mut(&key.0) {
                    siblings.retain(|&b| b != block);
                }
                for &child in &children {
                    if self.evictable.contains(&child) {
                        self.evictable.retain(|&b| b != child);
                        self.free.push(child);
                    }
                }
                dropped.extend(children);
            }
        }
    }

    /// The rows, in the order they were added.
    pub fn rows(&self) -> impl Iterator<Item = CacheRow> + '_ {
        self.rows.iter().map(|row| row.id)
    }

    /// Rows in the cache.
    pub fn batch_size(&self) -> usize {
        self.rows.len()
    }

    /// Positions of `row` cached: the position of the next token it is fed.
    ///
    /// # Panics
    /// If `row` is not in the cache.
    pub fn row_len(&self, row: CacheRow) -> usize {
        self.row(row).len
    }

    /// Forgets every row, keeping the pool.
    pub fn clear(&mut self) {
        let rows: Vec<CacheRow> = self.rows().collect();
        for row in rows {
            self.remove_row(row);
        }
    }

    /// Blocks that rows may still take: free ones, evictable ones (a freed prefix), and those
    /// the pool may still grow by (`usize::MAX` with no bound).
    pub fn free_blocks(&self) -> usize {
        match self.max_blocks {
            Some(max) => self.free.len() + self.evictable.len() + max.saturating_sub(self.blocks),
            None => usize::MAX,
        }
    }

    /// Blocks rows hold.
    pub fn used_blocks(&self) -> usize {
        self.blocks - self.free.len() - self.evictable.len()
    }

    /// The most blocks the pool may hold, if bounded.
    pub fn max_blocks(&self) -> Option<usize> {
        self.max_blocks
    }

    /// Blocks `positions` positions take.
    pub fn blocks_for(positions: usize) -> usize {
        positions.div_ceil(BLOCK_SIZE)
    }

    fn row(&self, row: CacheRow) -> &RowBlocks {
        self.rows
            .iter()
            .find(|r| r.id == row)
            .unwrap_or_else(|| panic!("{row:?} is not in the cache"))
    }

    /// Gives each of `chunks`' rows (row, new ids) blocks for its new positions, indexes the
    /// blocks they fill, and describes the step.
    ///
    /// # Panics
    /// If a row is not in the cache or is named twice, a row would pass `context` positions, or
    /// the pool is bounded and has too few free blocks.
    pub(crate) fn step(&mut self, chunks: &[(CacheRow, &[u32])], context: usize) -> CacheStep {
        let mut rows = Vec::with_capacity(chunks.len());
        for (index, &(id, new_ids)) in chunks.iter().enumerate() {
            let positions = new_ids.len();
            assert!(
                chunks[..index].iter().all(|&(other, _)| other != id),
                "{id:?} is twice in one step"
            );
            let start = self.row(id).len;
            assert!(
                start + positions <= context,
                "input of {positions} tokens after {start} cached ones exceeds the context \
                 length {context}; crop it first"
            );
            let needed = Self::blocks_for(start + positions) - self.row(id).blocks.len();
            let taken = self.take_blocks(needed);
            let row = self.rows.iter_mut().find(|r| r.id == id);
            let row = row.expect("found just above");
            row.blocks.extend(taken);
            row.len = start + positions;
            rows.push(StepRow {
                start,
                positions,
                blocks: row.blocks.clone(),
            });
            if self.prefixes.is_some() {
                row.ids.extend_from_slice(new_ids);
                let (filled, blocks) =
                    (start / BLOCK_SIZE..row.len / BLOCK_SIZE, row.blocks.clone());
                let ids = row.ids[filled.start * BLOCK_SIZE..filled.end * BLOCK_SIZE].to_vec();
                for (block, block_ids) in filled.zip(ids.chunks_exact(BLOCK_SIZE)) {
                    let parent = block.checked_sub(1).map_or(NO_BLOCK, |p| blocks[p]);
                    self.index(
                        blocks[block],
                        (parent, block_ids.try_into().expect("a block")),
                    );
                }
            }
        }
        CacheStep {
            rows,
            blocks: self.blocks,
        }
    }

    /// Indexes `block` by `key`, unless another block holds the same already or the block
    /// before it is not indexed (a key names its parent by number: only an indexed parent's
    /// number stays its own, since unindexing a block unindexes the blocks after it).
    fn index(&mut self, block: u32, key: BlockKey) {
        let Some(index) = &mut self.prefixes else {
            return;
        };
        let parent_indexed = key.0 == NO_BLOCK || index.keys.contains_key(&key.0);
        if !parent_indexed || index.blocks.contains_key(&key) || index.keys.contains_key(&block) {
            return;
        }
        index.blocks.insert(key, block);
        index.keys.insert(block, (key, Vec::new()));
        if let Some((_, children)) = index.keys.get_mut(&key.0) {
            children.push(block);
        }
    }

    /// `count` blocks for a row: free ones first; then a bounded pool grows before it evicts
    /// a freed prefix, the least recently freed first, where an unbounded one evicts first and
    /// grows (doubling, at least) last, so that kept prefixes never grow it.
    fn take_blocks(&mut self, count: usize) -> Vec<u32> {
        assert!(
            count <= self.free_blocks(),
            "the KV cache has {} free blocks, not the {count} a step needs; check \
             `KvCache::free_blocks` before stepping",
            self.free_blocks()
        );
        let mut taken = Vec::with_capacity(count);
        while taken.len() < count {
            if let Some(block) = self.free.pop() {
                taken.push(block);
            } else if self.max_blocks.is_some_and(|max| self.blocks < max)
                || self.evictable.is_empty()
            {
                let wanted = count - taken.len();
                let grown = (self.blocks * 2)
                    .max(self.blocks + wanted)
                    .min(self.max_blocks.unwrap_or(usize::MAX));
                // Lowest first, as they were numbered.
                self.free.extend((self.blocks as u32..grown as u32).rev());
                self.holders.resize(grown, 0);
                self.blocks = grown;
            } else if let Some(block) = self.evictable.pop_front() {
                self.unindex(block);
                taken.push(block);
            }
        }
        for &block in &taken {
            self.holders[block as usize] = 1;
        }
        taken
    }

    /// Blocks indexed as prefixes (held or not).
    pub fn indexed_blocks(&self) -> usize {
        self.prefixes.as_ref().map_or(0, |index| index.keys.len())
    }

    pub(crate) fn take_layers(&mut self) -> Vec<KeyValue> {
        std::mem::take(&mut self.layers)
    }

    pub(crate) fn put_layers(&mut self, layers: Vec<KeyValue>) {
        self.layers = layers;
    }
}

impl CacheStep {
    /// Each new position's position in its row, in the step's order.
    ///
    /// # Shapes
    /// -> `[1, positions of all rows]`
    pub fn positions(&self, device: &Device) -> Tensor<2, Int> {
        let positions: Vec<i64> = self
            .rows
            .iter()
            .flat_map(|row| (row.start..row.start + row.positions).map(|p| p as i64))
            .collect();
        let tokens = positions.len();
        Tensor::from_data(TensorData::new(positions, [1, tokens]), device)
    }
}

impl KeyValue {
    /// `layer`, grown to the step's blocks (or a new pool of them, in `dtype`).
    ///
    /// # Shapes
    /// - the layer: `[blocks, n_head, BLOCK_SIZE, head_size]` each
    pub fn allocated(
        layer: Option<KeyValue>,
        [n_head, head_size]: [usize; 2],
        step: &CacheStep,
        device: &Device,
        dtype: DType,
    ) -> Self {
        let zeros = |blocks: usize| {
            // Created in the model's dtype: zeros cast from float32 cost a pass over the pool.
            Tensor::<4>::zeros([blocks, n_head, BLOCK_SIZE, head_size], (device, dtype))
        };
        match layer {
            None => Self {
                key: zeros(step.blocks),
                value: zeros(step.blocks),
            },
            Some(layer) => {
                let have = layer.key.dims()[0];
                if have >= step.blocks {
                    return layer;
                }
                let grow = |pool: Tensor<4>| Tensor::cat(vec![pool, zeros(step.blocks - have)], 0);
                Self {
                    key: grow(layer.key),
                    value: grow(layer.value),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` ids no other call's share a block with.
    fn ids(n: usize) -> Vec<u32> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        (0..n)
            .map(|_| NEXT.fetch_add(1, Ordering::Relaxed))
            .collect()
    }

    /// A prompt that starts with another's full blocks takes them (never its last id's block),
    /// until the block is evicted; a freed prefix waits in the pool until blocks run out.
    #[test]
    fn rows_share_the_blocks_of_a_common_prefix() {
        let mut cache = KvCache::with_max_blocks(4);
        let shared: Vec<u32> = (100..140).collect(); // 2 full blocks and 8 ids
        let (a, cached) = cache.add_row_after_prefix(&shared);
        assert_eq!(cached, 0);
        cache.step(&[(a, &shared)], 64);
        assert_eq!((cache.used_blocks(), cache.indexed_blocks()), (3, 2));
        let mut other = shared[..32].to_vec();
        other.extend([7, 7, 7]);
        let (b, cached) = cache.add_row_after_prefix(&other);
        assert_eq!(cached, 32, "both full blocks");
        let step = cache.step(&[(b, &other[32..])], 64);
        assert_eq!(step.rows[0].start, 32);
        assert_eq!(step.rows[0].blocks[..2], cache.row(a).blocks[..2]);
        assert_eq!(cache.used_blocks(), 4);
        // Exactly two blocks long: the last id's block is computed again, not shared.
        let (c, cached) = cache.add_row_after_prefix(&shared[..32]);
        assert_eq!(cached, 16);
        cache.remove_row(c);
        // The prefix outlives its rows while nothing needs its blocks.
        cache.remove_row(a);
        cache.remove_row(b);
        assert_eq!((cache.used_blocks(), cache.free_blocks()), (0, 4));
        let (d, cached) = cache.add_row_after_prefix(&other);
        assert_eq!(cached, 32);
        cache.remove_row(d);
        // A row that needs every block evicts the prefix (its own blocks are indexed instead),
        // and the prefix is found no more.
        let e = cache.add_row();
        cache.step(&[(e, &ids(64))], 64);
        assert_eq!(cache.indexed_blocks(), 4);
        cache.remove_row(e);
        assert_eq!(cache.add_row_after_prefix(&other).1, 0);
    }

    #[test]
    fn rows_take_blocks_as_they_grow_and_free_ones_are_reused() {
        let mut cache = KvCache::new().without_prefix_sharing();
        let (a, b) = (cache.add_row(), cache.add_row());
        let step = cache.step(&[(a, &ids(17)), (b, &ids(3))], 64);
        assert_eq!(step.rows[0].blocks, [0, 1]);
        assert_eq!(step.rows[1].blocks, [2]);
        // The pool doubles as it grows.
        assert_eq!((step.blocks, cache.used_blocks()), (4, 3));
        assert_eq!((step.rows[0].start, step.rows[1].start), (0, 0));
        let step = cache.step(&[(b, &ids(14))], 64);
        assert_eq!(
            (step.rows[0].start, &step.rows[0].blocks[..]),
            (3, &[2, 3][..])
        );
        cache.truncate_row(b, 16);
        assert_eq!((cache.row_len(b), cache.used_blocks()), (16, 3));
        cache.step(&[(b, &ids(1))], 64);
        assert!(cache.remove_row(a));
        assert!(!cache.remove_row(a));
        assert_eq!(cache.used_blocks(), 2);
        // A's blocks come back first, without the pool growing.
        let c = cache.add_row();
        let step = cache.step(&[(c, &ids(20))], 64);
        assert_eq!(step.rows[0].blocks, [0, 1]);
        assert_eq!(step.blocks, 4);
        assert_eq!(cache.rows().collect::<Vec<_>>(), [b, c]);
    }

    #[test]
    fn a_bounded_pool_counts_its_free_blocks() {
        let mut cache = KvCache::with_max_blocks(3).without_prefix_sharing();
        let a = cache.add_row();
        assert_eq!(cache.free_blocks(), 3);
        cache.step(&[(a, &ids(20))], 64);
        assert_eq!((cache.free_blocks(), cache.used_blocks()), (1, 2));
        cache.clear();
        assert_eq!((cache.free_blocks(), cache.batch_size()), (3, 0));
    }

    #[test]
    #[should_panic(expected = "not the 2 a step needs")]
    fn a_full_pool_refuses_a_step() {
        let mut cache = KvCache::with_max_blocks(2);
        let (a, b) = (cache.add_row(), cache.add_row());
        cache.step(&[(a, &ids(20))], 64);
        cache.step(&[(b, &ids(17))], 64);
    }

    #[test]
    #[should_panic(expected = "exceeds the context length 16")]
    fn a_row_cannot_pass_the_context() {
        let mut cache = KvCache::new();
        let a = cache.add_row();
        cache.step(&[(a, &ids(16))], 16);
        cache.step(&[(a, &ids(1))], 16);
    }
}
