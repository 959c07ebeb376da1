use burn::tensor::{DType, Device, Int, Tensor, TensorData};

/// The keys and values of every position the model has seen, one pair per layer, for a batch of
/// rows that may have different lengths.
///
/// With a cache, a generation step runs only the new tokens through the model: attention reads
/// the earlier positions' keys and values from here instead of recomputing them. Each layer's
/// tensors are allocated once, `[b, n_head, capacity, head_size]`, and every step writes its
/// columns in place; a decode step attends over the written columns rounded up to a power of
/// two (masking the rest), so a GPU backend meets a handful of shapes per generation rather than
/// one per position, and a CPU backend never attends over twice what it needs.
///
/// Rows are left-padded, as Hugging Face pads a batch for generation: all rows end at the same
/// column, row `r`'s tokens fill columns `pads[r]..len`, and the padding is masked out of
/// attention and takes no position. Rows can be [removed](Self::retain_rows) and batches
/// [joined](Self::append) between steps.
///
/// GPT-2's position embeddings are absolute, so a row's cache is only valid while its positions
/// stay where they are: once a sequence outgrows the context, clear the cache and feed the
/// cropped window again.
///
/// ```
/// use burn::tensor::Device;
/// use nexttoken_model::{Gpt2Config, KvCache, token_tensor};
///
/// let device = Device::flex();
/// let model = Gpt2Config { n_layer: 2, n_head: 2, n_embd: 8, n_positions: 16, vocab_size: 32, ..Gpt2Config::gpt2() }.init(&device);
/// let mut cache = KvCache::new();
/// // Two prompts of different lengths: the second is padded on the left.
/// let _first = model.prefill(&[&[1, 2, 3], &[4]], &mut cache); // [2, 32]
/// let _second = model.forward_cached(token_tensor(&[&[5], &[6]], &device), &mut cache);
/// assert_eq!(cache.len(), 4);
/// assert_eq!(cache.row_len(1), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<KeyValue>,
    /// Columns written, the same for every row (padding included).
    len: usize,
    /// Leading columns of each row that hold padding.
    pads: Vec<usize>,
    /// Columns allocated per row; `None` until the model chooses (its context length).
    capacity: Option<usize>,
}

/// One layer's keys and values, `[b, n_head, capacity, head_size]` each.
#[derive(Debug, Clone)]
pub(crate) struct KeyValue {
    pub key: Tensor<4>,
    pub value: Tensor<4>,
}

/// Where one forward pass writes in the cache and what its queries may see.
pub(crate) struct CachedStep {
    /// The first column written.
    pub start: usize,
    /// Columns the queries attend over: the written ones rounded up to a few fixed sizes.
    pub attended: usize,
    pub capacity: usize,
    /// `[b, 1, t, attended]`, added to the attention scores: `-inf` where a query may not look.
    /// `None` when nothing needs masking beyond causality on a fresh cache (`causal`).
    pub bias: Option<Tensor<4>>,
    /// `bias`'s values as built on the host, for the CPU kernels that read them there (every
    /// layer of the step would otherwise read the tensor back).
    pub bias_values: Option<Vec<f32>>,
    pub causal: bool,
}

/// The smallest attended length: decode steps at the start of a generation share one shape.
const MIN_ATTENDED: usize = 32;

impl KvCache {
    /// A cache that allocates the model's whole context on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache that allocates `positions` columns per row, for generations known to stay
    /// shorter than the context; it grows (by copying, up to the context) if they do not.
    pub fn with_capacity(positions: usize) -> Self {
        Self {
            capacity: Some(positions.max(1)),
            ..Self::default()
        }
    }

    /// Columns written: the column the next token fed to the model will take. Rows with
    /// padding have fewer tokens than this (see [`KvCache::row_len`]).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows in the cache (0 before the first forward pass).
    pub fn batch_size(&self) -> usize {
        self.pads.len()
    }

    /// Tokens of `row` held: its position for the next token.
    ///
    /// # Panics
    /// If `row` is not below [`KvCache::batch_size`].
    pub fn row_len(&self, row: usize) -> usize {
        self.len - self.pads[row]
    }

    /// Forgets every position and row, keeping the allocation for a batch of the same size.
    pub fn clear(&mut self) {
        self.len = 0;
        self.pads.clear();
    }

    /// Forgets the columns from `len` on, for every row: the next forward pass writes there.
    ///
    /// # Panics
    /// If a row's padding reaches past `len`.
    pub fn truncate(&mut self, len: usize) {
        assert!(
            self.pads.iter().all(|&pad| pad <= len),
            "truncating to {len} columns would cut into a row's tokens"
        );
        self.len = self.len.min(len);
    }

    /// Keeps only the rows at the indices in `rows`, in that order (a cancelled or finished
    /// row leaves the batch so later steps stop computing it).
    ///
    /// # Panics
    /// If an index is not below [`KvCache::batch_size`].
    pub fn retain_rows(&mut self, rows: &[usize]) {
        if rows.is_empty() {
            self.clear();
            self.layers.clear();
            return;
        }
        self.pads = rows.iter().map(|&row| self.pads[row]).collect();
        if let Some(device) = self.layers.first().map(|layer| layer.key.device()) {
            let index: Vec<i64> = rows.iter().map(|&row| row as i64).collect();
            let index = Tensor::<1, Int>::from_data(TensorData::new(index, [rows.len()]), &device);
            for layer in &mut self.layers {
                layer.key = layer.key.clone().select(0, index.clone());
                layer.value = layer.value.clone().select(0, index.clone());
            }
        }
        self.drop_shared_padding();
    }

    /// Adds `other`'s rows after this cache's, right-aligned with them: whichever holds fewer
    /// columns gets more padding. The caches must come from the same model.
    pub fn append(&mut self, other: KvCache) {
        if other.pads.is_empty() {
            return;
        }
        if self.pads.is_empty() || self.layers.is_empty() {
            *self = other;
            return;
        }
        let len = self.len.max(other.len);
        let capacity = self.capacity().max(other.capacity());
        let (rows, other_rows) = (self.pads.len(), other.pads.len());
        for (layer, other_layer) in self.layers.iter_mut().zip(other.layers) {
            let [_, heads, _, head_size] = layer.key.dims();
            let device = layer.key.device();
            let join = |mine: Tensor<4>, theirs: Tensor<4>| {
                let shape = [rows + other_rows, heads, capacity, head_size];
                let joined = Tensor::<4>::zeros(shape, (&device, mine.dtype()));
                let shift = len - self.len;
                let joined = joined.slice_assign(
                    [0..rows, 0..heads, shift..len, 0..head_size],
                    mine.slice([0..rows, 0..heads, 0..self.len, 0..head_size]),
                );
                let shift = len - other.len;
                joined.slice_assign(
                    [rows..rows + other_rows, 0..heads, shift..len, 0..head_size],
                    theirs.slice([0..other_rows, 0..heads, 0..other.len, 0..head_size]),
                )
            };
            layer.key = join(layer.key.clone(), other_layer.key);
            layer.value = join(layer.value.clone(), other_layer.value);
        }
        let (shift, other_shift) = (len - self.len, len - other.len);
        self.pads.iter_mut().for_each(|pad| *pad += shift);
        self.pads
            .extend(other.pads.iter().map(|pad| pad + other_shift));
        self.len = len;
        self.capacity = Some(capacity);
    }

    /// Starts a batch whose rows begin after `pads` columns of padding each.
    pub(crate) fn start_padded(&mut self, pads: Vec<usize>) {
        self.clear();
        self.pads = pads;
    }

    fn capacity(&self) -> usize {
        self.capacity.unwrap_or(0)
    }

    /// Makes room for `t` more columns of a `b`-row batch, and describes where they go; the
    /// mask comes in `dtype`, the model's, since attention adds it to the scores.
    ///
    /// # Panics
    /// If the cache holds another batch size, or a row would pass `context` positions.
    pub(crate) fn step(
        &mut self,
        b: usize,
        t: usize,
        context: usize,
        device: &Device,
        dtype: DType,
    ) -> CachedStep {
        if self.pads.is_empty() {
            self.pads = vec![0; b];
        }
        assert_eq!(self.pads.len(), b, "the cache holds another batch");
        let longest = self.len - self.pads.iter().min().copied().unwrap_or(0);
        assert!(
            longest + t <= context,
            "input of {t} tokens after {longest} cached ones exceeds the context length \
             {context}; crop it first"
        );
        let capacity = *self.capacity.get_or_insert(context);
        if self.len + t > capacity {
            self.drop_shared_padding();
            if self.len + t > capacity {
                let needed = self.len + t;
                self.grow(
                    (2 * capacity)
                        .max(needed.next_power_of_two())
                        .min(context)
                        .max(needed),
                );
            }
        }
        let capacity = self.capacity();
        let start = self.len;
        let end = start + t;
        let attended = end
            .next_power_of_two()
            .max(MIN_ATTENDED)
            .min(capacity)
            .max(end);
        let padded = self.pads.iter().any(|&pad| pad > 0);
        let causal = start == 0 && !padded && attended == end;
        let needs_mask = padded || attended > end || (start > 0 && t > 1);
        let bias_values = needs_mask.then(|| {
            let mut bias = vec![0f32; b * t * attended];
            for (row, &pad) in self.pads.iter().enumerate() {
                for query in 0..t {
                    let column = start + query;
                    let scores = &mut bias[(row * t + query) * attended..][..attended];
                    for (key, score) in scores.iter_mut().enumerate() {
                        // Padding sees itself only, so its scores never become all -inf (NaN).
                        if key > column || (key < pad && key != column) {
                            *score = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            bias
        });
        let bias = bias_values.clone().map(|bias| {
            Tensor::from_data(TensorData::new(bias, [b, 1, t, attended]), (device, dtype))
        });
        self.len = end;
        CachedStep {
            start,
            attended,
            capacity,
            bias,
            bias_values,
            causal,
        }
    }

    /// Positions of the columns `start..start + t` of every row: padding takes position 0.
    ///
    /// # Shapes
    /// -> `[b, t]`
    pub(crate) fn positions(&self, start: usize, t: usize, device: &Device) -> Tensor<2, Int> {
        let positions: Vec<i64> = self
            .pads
            .iter()
            .flat_map(|&pad| {
                (start..start + t).map(move |column| column.saturating_sub(pad) as i64)
            })
            .collect();
        Tensor::from_data(TensorData::new(positions, [self.pads.len(), t]), device)
    }

    pub(crate) fn take_layers(&mut self) -> Vec<KeyValue> {
        std::mem::take(&mut self.layers)
    }

    pub(crate) fn put_layers(&mut self, layers: Vec<KeyValue>) {
        self.layers = layers;
    }

    /// Moves every row left by the padding all rows share (after the longest row left).
    fn drop_shared_padding(&mut self) {
        let shared = self.pads.iter().min().copied().unwrap_or(0);
        if shared == 0 {
            return;
        }
        let kept = self.len - shared;
        for layer in &mut self.layers {
            let shift = |tensor: Tensor<4>| {
                let [b, heads, _, head_size] = tensor.dims();
                let moved = tensor.clone().narrow(2, shared, kept);
                tensor.slice_assign([0..b, 0..heads, 0..kept, 0..head_size], moved)
            };
            layer.key = shift(layer.key.clone());
            layer.value = shift(layer.value.clone());
        }
        self.pads.iter_mut().for_each(|pad| *pad -= shared);
        self.len = kept;
    }

    /// Reallocates every layer with `capacity` columns, keeping what is written.
    fn grow(&mut self, capacity: usize) {
        for layer in &mut self.layers {
            let widen = |tensor: Tensor<4>| {
                let [b, heads, _, head_size] = tensor.dims();
                let shape = [b, heads, capacity, head_size];
                let wide = Tensor::<4>::zeros(shape, (&tensor.device(), tensor.dtype()));
                wide.slice_assign(
                    [0..b, 0..heads, 0..self.len, 0..head_size],
                    tensor.slice([0..b, 0..heads, 0..self.len, 0..head_size]),
                )
            };
            layer.key = widen(layer.key.clone());
            layer.value = widen(layer.value.clone());
        }
        self.capacity = Some(capacity);
    }
}

impl KeyValue {
    /// `layer` if it has room for `qkv`'s step, or a new layer of the step's capacity in
    /// `qkv`'s dtype.
    ///
    /// # Shapes
    /// - qkv: `[b, t, 3c]`, the layer: `[b, n_head, capacity, c / n_head]` each
    pub fn allocated(
        layer: Option<KeyValue>,
        qkv: &Tensor<3>,
        n_head: usize,
        step: &CachedStep,
    ) -> Self {
        let [b, _, width] = qkv.dims();
        let shape = [b, n_head, step.capacity, width / 3 / n_head];
        // Created in the model's dtype: zeros cast from float32 cost a pass over the layer.
        let allocate = || Tensor::<4>::zeros(shape, (&qkv.device(), qkv.dtype()));
        layer
            .filter(|layer| layer.key.dims() == shape)
            .unwrap_or_else(|| Self {
                key: allocate(),
                value: allocate(),
            })
    }

    /// Writes the step's keys and values at its columns.
    ///
    /// # Shapes
    /// - key, value: `[b, n_head, t, head_size]`
    pub fn write(self, key: Tensor<4>, value: Tensor<4>, step: &CachedStep) -> Self {
        let [b, heads, t, head_size] = key.dims();
        let columns = [0..b, 0..heads, step.start..step.start + t, 0..head_size];
        Self {
            key: self.key.slice_assign(columns.clone(), key),
            value: self.value.slice_assign(columns, value),
        }
    }

    /// The attended columns' keys and values.
    pub fn attended(&self, step: &CachedStep) -> (Tensor<4>, Tensor<4>) {
        (
            self.key.clone().narrow(2, 0, step.attended),
            self.value.clone().narrow(2, 0, step.attended),
        )
    }
}
