use burn::tensor::{Bool, Device, Int, Tensor};

/// The keys and values of every position the model has seen so far, one pair per layer.
///
/// With a cache, a generation step runs only the new token through the model: attention reads
/// the earlier positions' keys and values from here instead of recomputing them. GPT-2's
/// position embeddings are absolute, so the cache is only valid while the positions it holds
/// stay where they are; once a sequence outgrows the context it must be [cleared](Self::clear)
/// and the cropped window fed again.
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use nexttoken_model::{Gpt2Config, KvCache};
///
/// let device = Device::flex();
/// let model = Gpt2Config { n_layer: 2, n_head: 2, n_embd: 8, n_positions: 16, vocab_size: 32, ..Gpt2Config::gpt2() }.init(&device);
/// let mut cache = KvCache::new();
/// let prompt = Tensor::<2, Int>::from_data([[1, 2, 3]], &device);
/// let _first = model.forward_cached(prompt, &mut cache); // [1, 32]
/// let next = Tensor::<2, Int>::from_data([[4]], &device);
/// let _second = model.forward_cached(next, &mut cache); // sees positions 0..4
/// assert_eq!(cache.len(), 4);
/// ```
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<KeyValue>,
}

/// One layer's keys and values, `[b, n_head, t, head_size]` each.
#[derive(Debug, Clone)]
pub(crate) struct KeyValue {
    pub key: Tensor<4>,
    pub value: Tensor<4>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions held: the position the next token fed to the model will get.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |layer| layer.key.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows of the batch the cache was filled with (0 when empty).
    pub fn batch_size(&self) -> usize {
        self.layers.first().map_or(0, |layer| layer.key.dims()[0])
    }

    /// Forgets every position, freeing the tensors.
    pub fn clear(&mut self) {
        self.layers.clear();
    }

    pub(crate) fn layer(&self, index: usize) -> Option<&KeyValue> {
        self.layers.get(index)
    }

    pub(crate) fn set_layer(&mut self, index: usize, key_value: KeyValue) {
        match self.layers.get_mut(index) {
            Some(layer) => *layer = key_value,
            None => {
                debug_assert_eq!(index, self.layers.len(), "layers are filled in order");
                self.layers.push(key_value);
            }
        }
    }
}

impl KeyValue {
    /// The cached positions followed by the new ones.
    pub fn extend(past: Option<&KeyValue>, key: Tensor<4>, value: Tensor<4>) -> Self {
        match past {
            Some(past) => Self {
                key: Tensor::cat(vec![past.key.clone(), key], 2),
                value: Tensor::cat(vec![past.value.clone(), value], 2),
            },
            None => Self { key, value },
        }
    }
}

/// Which keys each of `queries` new positions may not see, when `past` positions come before
/// them: query `i` sits at position `past + i` and sees keys `0..=past + i`.
///
/// # Shapes
/// -> `[queries, past + queries]`, `true` where masked
pub(crate) fn causal_mask(past: usize, queries: usize, device: &Device) -> Tensor<2, Bool> {
    let keys = past + queries;
    let query_positions = Tensor::<1, Int>::arange(past as i64..keys as i64, device)
        .unsqueeze_dim::<2>(1)
        .expand([queries, keys]);
    let key_positions = Tensor::<1, Int>::arange(0..keys as i64, device)
        .unsqueeze_dim::<2>(0)
        .expand([queries, keys]);
    key_positions.greater(query_positions)
}
