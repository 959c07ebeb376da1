//! The forward pass's hot operations on burn-flex, our own where burn-flex's leave the CPU
//! idle or do extra work: a decode step's few-row matrix products and attention over the cache,
//! a prompt's attention, and GPT-2's GELU.
//!
//! burn-flex gives products below 192³ multiply-adds to `gemm` on one thread, so every product
//! of a GPT-2 decode step but the output head ran on one core. A decode step reads each weight
//! once and does two flops per value read: it is bound by memory bandwidth, which one core
//! cannot saturate (on the project's 2-vCPU EPYC a copy moves 36 GB/s on one thread, 50 on
//! two). Here each thread streams its own contiguous share of the weight once, in dot
//! products: a `Linear`'s `[k, n]` weight is stored as its `[n, k]` transpose on flex
//! ([`stored_by_output`], at load), so that each output's weights lie together, as the tied
//! head's `[v, c]` embedding already does. A dot product reads one stream where the `[k, n]`
//! form's row blocks read four interleaved ones and summed partial products after (GPT-2-124M
//! decode, alternating, 2 threads: f32 80 -> 91-94 t/s, bf16 160-165 -> 175-176; 1 thread: f32
//! 71 -> 76-79, bf16 115 -> 137). A prompt's
//! products are compute-bound: `gemm` on each thread's blocks of weight rows (see
//! [`times_transposed`] for why not `gemm`'s own threads), or for bf16 on a CPU with AVX-512
//! BF16 our own kernel, which multiplies the bf16s in pairs where `gemm` has only float32.
//! Attention reads the cache where it lies, a task per row and head; a prompt's queries go in
//! blocks through `gemm`, each against only the keys it may see.
//!
//! The kernels run through burn's backend-extension door (`Tensor::try_into_primitive`): any
//! other backend, dtype or layout takes burn's path unchanged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::backend::flex::FlexTensor;
use burn::backend::{DispatchDevice, Flex};
use burn::nn::{LayerNorm, Linear, LinearConfig};
use burn::tensor::{DType, Device, Element, Tensor, TensorData, bf16, f16};
use rayon::prelude::*;

use crate::cache::{CachedStep, KeyValue};

/// Most rows (batch rows × new positions) the few-row kernels take: past this, a weight value
/// (or a cached key) read once feeds enough multiply-adds that `gemm`'s blocked kernels win.
const MAX_ROWS: usize = 8;

/// Tasks per thread: enough for rayon to even out a thread that starts late, few enough that
/// each task's block of weight rows is one long stream and a prompt's `gemm` packs the
/// activations once per task (1 to 16 measured level within this VM's noise).
const TASKS_PER_THREAD: usize = 2;

/// Rows of a `rows`-row matrix per task, for an even split across the pool.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads() * TASKS_PER_THREAD)
        .max(1)
}

/// Runs `f` on a thread of rayon's pool when `device` is flex, so that the parallel loops of a
/// forward pass (these kernels' and flex's own) start from inside the pool, with the pool's
/// other threads kept taking the pass's tasks ([`keep_stealing`]) until it ends. Started from
/// outside, each of a decode step's ~60 products handed its work to the pool and put the caller
/// to sleep until it was done; and between two products an idle worker went to sleep, to be
/// woken for the next: ~50 sleeps and wake-ups a token on this VM (a vCPU woken from its halt
/// goes through the hypervisor).
pub(crate) fn in_cpu_pool<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if !matches!(device.as_dispatch(), DispatchDevice::Flex(_)) {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        for _ in 1..rayon::current_num_threads() {
            scope.spawn(|_| keep_stealing(&done));
        }
        let result = f();
        done.store(true, Ordering::Release);
        result
    })
}

/// Longest a [`keep_stealing`] worker spins without finding a task: far longer than the gaps
/// between a pass's parallel loops (microseconds), and the bound on how long a keeper holds up
/// whatever waits beneath it on its thread's stack (a worker may take a keeper while it waits
/// for a task of its own to be finished elsewhere), or a pass that panicked before `done`.
const MAX_KEEP_IDLE: Duration = Duration::from_millis(1);

/// Takes the pool's queued tasks, spinning between them, until `done` or [`MAX_KEEP_IDLE`]
/// without one; rayon's own idle loop sleeps after a few dozen yields.
fn keep_stealing(done: &AtomicBool) {
    let mut idle_since = None;
    while !done.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle_since = None,
            Some(rayon::Yield::Idle) => {
                if idle_since.get_or_insert_with(Instant::now).elapsed() > MAX_KEEP_IDLE {
                    return;
                }
                std::hint::spin_loop();
            }
            None => return,
        }
    }
}

/// `layer.forward(x)`, on every core on flex once the weight is laid out ([`stored_by_output`]).
///
/// # Shapes
/// - x: `[.., k]` -> `[.., n]` for a `[k, n]` weight
pub(crate) fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    flex_linear(layer, &x, None).unwrap_or_else(|| layer.forward(x))
}

/// `residual + layer.forward(x)`, a block's way back onto its residual stream: on flex the sum
/// is taken as the product is written, instead of in another pass over both tensors. In half
/// precision the product is rounded to the model's dtype before the sum, as a separate add
/// (burn's, or PyTorch's in Hugging Face's model) would see it: summed unrounded, a bf16
/// fixture's logits drifted past the conformance tolerance.
///
/// # Shapes
/// - x: `[.., k]`, residual: `[.., n]` -> `[.., n]` for a `[k, n]` weight
pub(crate) fn linear_onto<const D: usize>(
    layer: &Linear,
    x: Tensor<D>,
    residual: Tensor<D>,
) -> Tensor<D> {
    flex_linear(layer, &x, Some(&residual)).unwrap_or_else(|| residual + layer.forward(x))
}

/// `x · embeddingᵀ` (the tied output head) on flex, `None` where burn's path applies. The
/// logits are float32 whatever the embedding's dtype.
///
/// # Shapes
/// - x: `[m, c]`, embedding: `[v, c]` -> `[m, v]`
pub(crate) fn tied_head(embedding: &Tensor<2>, x: &Tensor<2>) -> Option<Tensor<2>> {
    let [m, c] = x.dims();
    let [v, _] = embedding.dims();
    let embedding = flex(embedding)?;
    let x = contiguous_flex(x)?;
    let x = values(&x)?;
    let logits = with_values!(values(&embedding)?, |embedding| {
        with_values!(x, |x| times_transposed(x, embedding, [m, c, v]))
    });
    Some(from_flex(logits, [m, v]))
}

/// A `[k, n]` `Linear` whose weight is laid out by [`stored_by_output`] whenever it gets its
/// values: at random initialisation (lazily, as burn creates them) and as each is loaded from a
/// checkpoint. Laid out as it arrives, a loading model holds one matrix twice at most, where
/// laying out the finished model kept the allocator's freed copies beside it.
pub(crate) fn laid_out_linear(k: usize, n: usize, device: &Device) -> Linear {
    let layer = LinearConfig::new(k, n).init(device);
    Linear {
        weight: layer
            .weight
            .init_mapper(stored_by_output)
            .load_mapper(stored_by_output),
        bias: layer.bias,
    }
}

/// `weight`, a `Linear`'s `[k, n]`, stored on flex as its transpose (a transposed view of a
/// contiguous `[n, k]`), so that each output's weights lie together in memory: a decode step's
/// products become dot products over contiguous rows, each thread streaming its own share of
/// them, as the tied head's embedding already lies. burn's own operations read the view through
/// its strides. Unchanged on any other backend, or if already laid out.
pub(crate) fn stored_by_output(weight: Tensor<2>) -> Tensor<2> {
    let Ok(primitive) = weight.clone().try_into_primitive::<Flex>() else {
        return weight;
    };
    if !primitive.is_contiguous() {
        return weight;
    }
    let by_output = primitive.transpose(0, 1).to_contiguous().transpose(0, 1);
    Tensor::from_primitive::<Flex>(by_output)
}

/// Attention over the cache on flex, from the step's fused projections: the new keys and values
/// written into `layer` at the step's columns, then each query's attention over the columns it
/// may see. Gives `layer` back where burn's path applies
/// ([`crate::attention::cached_attention_by_burn`]).
///
/// burn's path splits `qkv` into heads and merges them after: seven copies of the step's
/// activations a layer through strided views, and two into the cache (burn-flex copies fewer
/// than a million values on one thread); its attention wants contiguous float32 keys and values, so
/// each layer of each step would copy the attended columns out of the cache (and widen them
/// from half precision), and it scores every query against every attended column with scalar
/// `exp`. Here a task per row and head copies its keys and values into the cache, reads its
/// queries where they lie, attends over its rows of the cache in place, only the columns a
/// query may see (written ones, and for a causal prompt those up to its own position), with a
/// vectorised `exp`, and writes its output columns where they go.
///
/// # Shapes
/// - qkv: `[b, t, 3c]`, the layer: `[b, n_head, capacity, c / n_head]` each -> `[b, t, c]`
pub(crate) fn cached_attention(
    qkv: &Tensor<3>,
    layer: KeyValue,
    step: &CachedStep,
    heads: usize,
) -> Result<(Tensor<3>, KeyValue), Box<KeyValue>> {
    let [b, t, width] = qkv.dims();
    let dtype = qkv.dtype();
    let (Some(projections), Some(mut key), Some(mut value)) =
        (flex(qkv), flex(&layer.key), flex(&layer.value))
    else {
        return Err(Box::new(layer));
    };
    if layer.key.dtype() != dtype || layer.value.dtype() != dtype {
        return Err(Box::new(layer));
    }
    let capacity = layer.key.dims()[2];
    // The layer's tensors are its storage's only other handles: without them, the writes below
    // go in place (a cache shared with a clone is copied first, as `slice_assign` copies it).
    drop(layer);
    let cached = CachedHeads {
        few_queries: b * t <= MAX_ROWS,
        heads,
        t,
        head_size: width / 3 / heads,
        capacity,
        step,
    };
    let y = match (
        values(&projections),
        values_mut(&mut key),
        values_mut(&mut value),
    ) {
        (Some(Values::F32(qkv)), Some(ValuesMut::F32(key)), Some(ValuesMut::F32(value))) => {
            cached.attend(qkv, key, value)
        }
        (Some(Values::F16(qkv)), Some(ValuesMut::F16(key)), Some(ValuesMut::F16(value))) => {
            cached.attend(qkv, key, value)
        }
        (Some(Values::Bf16(qkv)), Some(ValuesMut::Bf16(key)), Some(ValuesMut::Bf16(value))) => {
            cached.attend(qkv, key, value)
        }
        _ => unreachable!("`flex` checked all three are float tensors, and their dtypes match"),
    };
    let layer = KeyValue {
        key: Tensor::from_primitive::<Flex>(key),
        value: Tensor::from_primitive::<Flex>(value),
    };
    Ok((from_flex_as(y, [b, t, width / 3], dtype), layer))
}

/// GPT-2's `gelu_new` (see [`crate::mlp`]) in one vectorised pass on flex, every core for a
/// prompt's activations: `None` where burn's path applies. burn's takes six passes over the
/// tensor, each allocating its result, and its sigmoid calls libm's `expf` one value at a time.
pub(crate) fn gelu_new<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    /// Values per task: a decode step's few thousand stay on one thread.
    const CHUNK: usize = 1 << 14;
    let dtype = x.dtype();
    let mut values = flex_activation(x)?;
    values.par_chunks_mut(CHUNK).for_each(simd::gelu_new);
    Some(from_flex_as(values, x.dims(), dtype))
}

/// `softmax(x, D - 1)`, the probabilities over the last dimension, on any backend. On flex, for
/// float32 (the logits the model returns), each row takes one vectorised pass on the calling
/// thread: burn-flex's takes libm's `expf` one value at a time, 50257 a step for GPT-2, and hands
/// even a single row to rayon's pool from outside it, a wake-up and a wait every step.
pub fn softmax<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    flex_softmax(&x).unwrap_or_else(|| burn::tensor::activation::softmax(x, D - 1))
}

fn flex_softmax<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    let dims = x.dims();
    let primitive = contiguous_flex(x)?;
    let Values::F32(values) = values(&primitive)? else {
        return None;
    };
    let mut probabilities = values.to_vec();
    probabilities
        .chunks_exact_mut(dims[D - 1].max(1))
        .for_each(normalise);
    Some(from_flex(probabilities, dims))
}

/// Scores to probabilities, in place: `e^(s - max) / Σ e^(s - max)`.
fn normalise(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let normaliser = simd::exp_minus(scores, max).recip();
    scores.iter_mut().for_each(|score| *score *= normaliser);
}

/// `norm.forward(x)` with `norm`'s `epsilon`: on flex in one pass over each row in float32
/// (burn-flex's own rounds a half-precision input to float32 and back one value at a time,
/// a tenth of a 512-token f16 prompt's time with the rest of its casts).
///
/// # Shapes
/// - x: `[.., c]` -> `[.., c]`
pub(crate) fn layer_norm<const D: usize>(
    norm: &LayerNorm,
    epsilon: f64,
    x: &Tensor<D>,
) -> Tensor<D> {
    flex_layer_norm(norm, epsilon, x).unwrap_or_else(|| norm.forward(x.clone()))
}

fn flex_layer_norm<const D: usize>(
    norm: &LayerNorm,
    epsilon: f64,
    x: &Tensor<D>,
) -> Option<Tensor<D>> {
    /// Rows per task: a decode step's few stay on one thread.
    const ROWS_PER_TASK: usize = 16;
    // GPT-2's norms all have a bias; one without goes through burn's.
    let beta = flex(&norm.beta.as_ref()?.val())?;
    let gamma = flex(&norm.gamma.val())?;
    let dtype = x.dtype();
    let mut activations = flex_activation(x)?;
    with_values!(values(&gamma)?, |gamma| {
        // Beta has gamma's type (`None` otherwise); both are read as stored, not widened
        // first: a decoded token runs 25 norms, and widening cost two allocations and two
        // trips through the pool each.
        let beta = beta.as_slice()?;
        activations
            .par_chunks_mut(ROWS_PER_TASK * gamma.len())
            .for_each(|rows| simd::layer_norm(rows, gamma, beta, epsilon as f32));
    });
    Some(from_flex_as(activations, x.dims(), dtype))
}

/// Queries of a prompt scored together against the keys they may see: enough rows for a
/// matrix product to pay, few enough that a causal prompt's blocks skip most of the masked half.
const QUERY_BLOCK: usize = 64;

/// The shape of [`cached_attention`]'s step and what its queries may see.
struct CachedHeads<'a> {
    /// Whether a decode step's dot products beat matrix products (see [`MAX_ROWS`]).
    few_queries: bool,
    heads: usize,
    t: usize,
    head_size: usize,
    capacity: usize,
    step: &'a CachedStep,
}

impl CachedHeads<'_> {
    /// Writes `qkv`'s keys and values into the layer's, then returns `softmax(q · keysᵀ /
    /// √head_size + bias) · values` for every row's every head, a task each, `[b, t, c]`.
    fn attend<W: simd::Float>(&self, qkv: &[W], key: &mut [W], value: &mut [W]) -> Vec<f32> {
        let (t, head_size) = (self.t, self.head_size);
        let c = self.heads * head_size;
        let written = self.step.start + t;
        let mut y = Vec::<f32>::with_capacity(qkv.len() / 3); // filled by the tasks below
        let out = SharedOut(y.as_mut_ptr());
        let layer_len = self.capacity * head_size;
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
                let new_columns = self.step.start * head_size..written * head_size;
                for (cached, new) in [(&mut *key, part(1)), (&mut *value, part(2))] {
                    cached[new_columns.clone()]
                        .chunks_exact_mut(head_size)
                        .zip(new)
                        .for_each(|(cached, new)| cached.copy_from_slice(new));
                }
                let mut q = vec![0.0f32; t * head_size];
                for (q, new) in q.chunks_exact_mut(head_size).zip(part(0)) {
                    simd::widen(q, new);
                }
                let mut y_head = vec![0.0f32; t * head_size];
                let (key, value) = (&key[..written * head_size], &value[..written * head_size]);
                if self.few_queries {
                    self.attend_few(row, &mut y_head, &q, key, value);
                } else {
                    self.attend_blocks(row, &mut y_head, &q, key, value);
                }
                for (query, y_head) in y_head.chunks_exact(head_size).enumerate() {
                    // SAFETY: row `row * t + query` of `y`'s `[b * t, c]` has this head's
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
    fn attend_few<W: simd::Float>(
        &self,
        row: usize,
        y: &mut [f32],
        q: &[f32],
        key: &[W],
        value: &[W],
    ) {
        let (t, written) = (self.t, key.len() / self.head_size);
        let mut scores = vec![0.0f32; written * t]; // [written, t]
        simd::dots(&mut scores, q, key, self.head_size);
        let mut weights = vec![0.0f32; t * written]; // [t, written]
        for (query, weights) in weights.chunks_exact_mut(written).enumerate() {
            let scores = scores.iter().skip(query).step_by(t);
            weights.iter_mut().zip(scores).for_each(|(w, s)| *w = *s);
            self.softmax(row, query, weights);
        }
        simd::rows_times_block(y, &weights, value, self.head_size);
    }

    /// A prompt's queries of one head, [`QUERY_BLOCK`] at a time: scores and weighted values
    /// are matrix products (`gemm`, as burn-flex's own products), and under a causal mask a
    /// block only meets the keys up to its last query.
    fn attend_blocks<W: simd::Float>(
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
            let seen = if self.step.causal {
                self.step.start + first_query + queries
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
    /// scaled, masked, normalised.
    fn softmax(&self, row: usize, query: usize, scores: &mut [f32]) {
        let scale = (self.head_size as f32).sqrt().recip();
        scores.iter_mut().for_each(|score| *score *= scale);
        if let Some(bias) = self.step.bias_values.as_deref() {
            let bias = &bias[(row * self.t + query) * self.step.attended..][..scores.len()];
            scores
                .iter_mut()
                .zip(bias)
                .for_each(|(score, bias)| *score += bias);
        }
        if self.step.causal {
            let visible = (self.step.start + query + 1).min(scores.len());
            scores[visible..].fill(f32::NEG_INFINITY);
        }
        normalise(scores);
    }
}

/// `layer.forward(x)`, plus `residual` if given, on flex; `None` where burn's path applies.
fn flex_linear<const D: usize>(
    layer: &Linear,
    x: &Tensor<D>,
    residual: Option<&Tensor<D>>,
) -> Option<Tensor<D>> {
    let dims = x.dims();
    let k = dims[D - 1];
    let m = dims.iter().product::<usize>() / k.max(1);
    let weight = stored_transposed(&layer.weight.val())?;
    let bias = match &layer.bias {
        Some(bias) => Some(flex(&bias.val())?),
        None => None,
    };
    let residual = match residual {
        Some(residual) => Some(flex(residual)?),
        None => None,
    };
    let dtype = x.dtype();
    let x = contiguous_flex(x)?;
    let x = values(&x)?;
    let n = weight.layout().shape()[0];
    let mut out = with_values!(values(&weight)?, |weight| {
        with_values!(x, |x| times_transposed(x, weight, [m, k, n]))
    });
    let bias = match &bias {
        Some(bias) => Some(with_values!(values(bias)?, |bias| simd::widened(bias))),
        None => None,
    };
    let residual = match &residual {
        Some(residual) => Some(with_values!(values(residual)?, |r| simd::Float::as_f32(r))),
        None => None,
    };
    out.par_chunks_mut(n).enumerate().for_each(|(row, out)| {
        if let Some(bias) = &bias {
            out.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
        }
        if let Some(residual) = &residual {
            with_half!(dtype, |Half| simd::round_through::<Half>(out), _ => ());
            let residual = &residual[row * n..][..n];
            out.iter_mut().zip(residual).for_each(|(y, r)| *y += r);
        }
    });
    let mut out_dims = dims;
    out_dims[D - 1] = n;
    // The activations stay in the model's dtype; the products were summed in float32.
    Some(from_flex_as(out, out_dims, dtype))
}

/// `x · wᵀ` for `x: [m, k]` and `w: [n, k]`, as `[m, n]`, on every core, each thread over its
/// own blocks of `w`'s rows. A few rows read each weight once, in dot products. More rows make
/// the product compute-bound: where both operands are bf16 and the CPU multiplies bf16 pairs
/// (AVX-512 BF16), each block goes through our own matrix kernel for them
/// ([`simd::bf16_products`]); otherwise through `gemm` on its task's thread, in float32 (a
/// half-precision block widened first, in the task's cache). `gemm` packs `[n, k]` weights
/// where it reads `[k, n]` ones in place: threaded by `gemm` itself, its packing took 3x the
/// profile samples it took for `[k, n]` and a 512-token f32 prompt ran at ~0.8x the `[k, n]`
/// layout's speed; a block per task packs each block once (0.9-1.0x; bf16 and f16 faster than
/// before, their widening now on every core).
fn times_transposed<X: simd::Float, W: simd::Float>(
    x: &[X],
    w: &[W],
    [m, k, n]: [usize; 3],
) -> Vec<f32> {
    if m <= MAX_ROWS {
        return dots_transposed(x, w, [m, k, n]);
    }
    if let (Some(x), Some(w)) = (X::as_bf16(x), W::as_bf16(w))
        && simd::has_bf16_products()
    {
        // SAFETY: the kernel writes every value of its block's columns.
        return unsafe {
            by_weight_blocks(w, [m, k, n], |out, rows, dims| {
                // SAFETY: as `by_weight_blocks` promises; the CPU has the kernel's instructions.
                simd::bf16_products(out, n, x, rows, dims)
            })
        };
    }
    let x = X::as_f32(x);
    // SAFETY: `gemm` writes every value of its block's columns.
    unsafe {
        by_weight_blocks(w, [m, k, n], |out, rows, dims| {
            let rows = W::as_f32(rows);
            // SAFETY: as `by_weight_blocks` promises.
            matmul_into(out, n, &x, &rows, dims, Rhs::Transposed)
        })
    }
}

/// [`times_transposed`] for a few rows: a dot product per weight row, each task streaming its
/// own block of rows once. `x` goes to the tasks in the model's dtype: a half-precision model's
/// activations are widened in registers, or taken as they are by bf16 pairs, where a float32
/// copy of them was made for each product and a bf16 copy of that for each task.
fn dots_transposed<X: simd::Float, W: simd::Float>(
    x: &[X],
    w: &[W],
    [m, k, n]: [usize; 3],
) -> Vec<f32> {
    let rows_per_task = rows_per_task(n);
    let mut transposed = vec![0.0; n * m]; // [n, m]: each task writes its own rows
    transposed
        .par_chunks_mut(rows_per_task * m)
        .zip(w.par_chunks(rows_per_task * k))
        .for_each(|(out, rows)| simd::dots(out, x, rows, k));
    if m == 1 {
        return transposed;
    }
    (0..m)
        .flat_map(|row| transposed.iter().skip(row).step_by(m).copied())
        .collect()
}

/// The `[m, n]` product of `[m, k]` rows with `w: [n, k]`'s transpose, a task per block of
/// `w`'s rows: `block(out, rows, [m, k, rows.len() / k])` writes the block's `[m, rows]` output
/// columns, row after row `n` values apart from `out`, where they are the task's alone. Not
/// zeroed first: the blocks write every value without reading it, and the zeroing ran on one
/// thread while the others waited.
///
/// # Safety
/// `block` writes every one of its block's `[m, rows]` output values.
unsafe fn by_weight_blocks<W: Sync>(
    w: &[W],
    [m, k, n]: [usize; 3],
    block: impl Fn(*mut f32, &[W], [usize; 3]) + Sync,
) -> Vec<f32> {
    let rows_per_task = rows_per_task(n);
    let mut out = Vec::<f32>::with_capacity(m * n);
    let shared = SharedOut(out.as_mut_ptr());
    w.par_chunks(rows_per_task * k)
        .enumerate()
        .for_each(|(index, rows)| {
            // The block's output columns, `first..first + rows.len() / k` of `out`'s `n`, exist
            // (`w` has `n` rows).
            let first = index * rows_per_task;
            block(shared.at(first), rows, [m, k, rows.len() / k]);
        });
    // SAFETY: the blocks' columns cover all `n`, each written in every one of `m` rows (the
    // caller's promise).
    unsafe { out.set_len(m * n) };
    out
}

/// An output's pointer, shared by tasks that each write their own part of it.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: the tasks that share it write disjoint values and nothing reads them until all are
// done (rayon's `for_each` returns after every task).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The output's value at `index` (a method: a closure calling it captures the whole `Sync`
    /// wrapper, not its raw pointer field).
    fn at(self, index: usize) -> *mut f32 {
        self.0.wrapping_add(index)
    }
}

/// How [`matmul`]'s right-hand matrix lies in memory.
#[derive(Clone, Copy)]
enum Rhs {
    /// `[k, n]`, row-major.
    AsIs,
    /// `[n, k]`, row-major: the matrix's transpose.
    Transposed,
}

/// `out = a · b` for row-major `a: [m, k]` and `b` (see [`Rhs`]), on the calling thread: a
/// task's share of a larger piece of work.
fn matmul(out: &mut [f32], a: &[f32], b: &[f32], [m, k, n]: [usize; 3], rhs: Rhs) {
    assert_eq!(out.len(), m * n);
    // SAFETY: `out` holds `[m, n]` values (asserted), borrowed mutably for the call.
    unsafe { matmul_into(out.as_mut_ptr(), n, a, b, [m, k, n], rhs) }
}

/// [`matmul`] into `m` rows of `n` values `row_stride` apart from `out`.
///
/// # Safety
/// Those values are writable, and nothing else reads or writes them during the call.
unsafe fn matmul_into(
    out: *mut f32,
    row_stride: usize,
    a: &[f32],
    b: &[f32],
    [m, k, n]: [usize; 3],
    rhs: Rhs,
) {
    assert!(a.len() == m * k && b.len() == k * n && row_stride >= n);
    let (b_column_stride, b_row_stride) = match rhs {
        Rhs::AsIs => (1, n),
        Rhs::Transposed => (k, 1),
    };
    // SAFETY: `a` and `b` hold `[m, k]` and `[k, n]` values (asserted), which these strides
    // address within them; `out`'s are the caller's promise. `read_dst` is false, so `out`'s
    // old values are not read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            row_stride as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            b_column_stride as isize,
            b_row_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// A weight's values as flex stores them. The kernels read any of these and compute in float32,
/// so a half-precision weight streams half the bytes of a float32 one.
#[derive(Clone, Copy)]
enum Values<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

/// [`Values`], writable.
enum ValuesMut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
    Bf16(&'a mut [bf16]),
}

fn values(tensor: &FlexTensor) -> Option<Values<'_>> {
    match tensor.dtype() {
        DType::F32 => tensor.as_slice().map(Values::F32),
        DType::F16 => tensor.as_slice().map(Values::F16),
        DType::BF16 => tensor.as_slice().map(Values::Bf16),
        _ => None,
    }
}

/// A contiguous tensor's values, written in place where it holds its storage alone (copied
/// first where it does not).
fn values_mut(tensor: &mut FlexTensor) -> Option<ValuesMut<'_>> {
    let (start, end) = tensor.layout().contiguous_offsets()?;
    Some(match tensor.dtype() {
        DType::F32 => ValuesMut::F32(&mut tensor.storage_mut()[start..end]),
        DType::F16 => ValuesMut::F16(&mut tensor.storage_mut()[start..end]),
        DType::BF16 => ValuesMut::Bf16(&mut tensor.storage_mut()[start..end]),
        _ => return None,
    })
}

/// Runs `$body` with `$name` bound to the slice of whichever float type `$values` holds.
macro_rules! with_values {
    ($values:expr, |$name:ident| $body:expr) => {
        match $values {
            Values::F32($name) => $body,
            Values::F16($name) => $body,
            Values::Bf16($name) => $body,
        }
    };
}
use with_values;

/// The tensor's flex primitive if it is a contiguous float tensor; `None` on any other backend,
/// dtype or layout (a weight is never copied here).
fn flex<const D: usize>(tensor: &Tensor<D>) -> Option<FlexTensor> {
    let primitive = tensor.clone().try_into_primitive::<Flex>().ok()?;
    values(&primitive)?;
    Some(primitive)
}

/// The `[n, k]` storage of a `[k, n]` weight laid out by [`stored_by_output`]; `None` for any
/// other layout or backend.
fn stored_transposed(weight: &Tensor<2>) -> Option<FlexTensor> {
    let primitive = weight.clone().try_into_primitive::<Flex>().ok()?;
    let transposed = primitive.transpose(0, 1);
    values(&transposed)?;
    Some(transposed)
}

/// An activation's values as float32, to be changed in place (a copy: small beside the
/// product it feeds).
fn flex_activation<const D: usize>(tensor: &Tensor<D>) -> Option<Vec<f32>> {
    let primitive = contiguous_flex(tensor)?;
    Some(with_values!(values(&primitive)?, |x| simd::widened(x)))
}

/// The tensor's flex primitive, contiguous: its own storage, or a copy of a strided view.
fn contiguous_flex<const D: usize>(tensor: &Tensor<D>) -> Option<FlexTensor> {
    let primitive = tensor.clone().try_into_primitive::<Flex>().ok()?;
    Some(primitive.to_contiguous())
}

fn from_flex<const D: usize, E: Element>(values: Vec<E>, dims: [usize; D]) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(values, dims)))
}

/// Float32 results as a flex tensor of `dtype`, the model's: rounded on every core, to nearest
/// even as burn's `cast` rounds, which takes one value at a time on one thread (a tenth of a
/// 512-token f16 prompt's time).
fn from_flex_as<const D: usize>(values: Vec<f32>, dims: [usize; D], dtype: DType) -> Tensor<D> {
    with_half!(
        dtype,
        |Half| from_flex(simd::narrowed::<Half>(&values), dims),
        _ => from_flex(values, dims).cast(dtype)
    )
}

/// Runs `$body` with `$half` naming the half-precision float type of `$dtype`, or `$otherwise`
/// for a dtype that is not one: the kernels' f16 and bf16 paths differ only in that type.
macro_rules! with_half {
    ($dtype:expr, |$half:ident| $body:expr, _ => $otherwise:expr) => {
        match $dtype {
            DType::F16 => {
                type $half = f16;
                $body
            }
            DType::BF16 => {
                type $half = bf16;
                $body
            }
            _ => $otherwise,
        }
    };
}
use with_half;

/// The inner loops, compiled for the widest vector instructions the CPU has (picked at run
/// time: the build targets baseline x86-64), with fused multiply-adds where there are any.
mod simd {
    use rayon::prelude::*;

    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::{
        __m256, __m512, _CMP_UNORD_Q, _MM_FROUND_TO_NEAREST_INT, _mm_loadu_si128, _mm_packus_epi32,
        _mm_storeu_si128, _mm256_add_epi32, _mm256_and_si256, _mm256_blendv_epi8,
        _mm256_castps_si256, _mm256_castsi256_ps, _mm256_castsi256_si128, _mm256_cmp_ps,
        _mm256_cvtepu16_epi32, _mm256_cvtph_ps, _mm256_cvtps_ph, _mm256_extracti128_si256,
        _mm256_loadu_ps, _mm256_loadu_si256, _mm256_or_si256, _mm256_set1_epi32, _mm256_slli_epi32,
        _mm256_srli_epi32, _mm256_storeu_ps, _mm512_castsi512_ps, _mm512_cvtepu16_epi32,
        _mm512_cvtph_ps, _mm512_loadu_ps, _mm512_slli_epi32,
    };
    use std::borrow::Cow;
    use std::sync::OnceLock;

    use burn::tensor::{bf16, f16};

    /// A float type weights may be stored in; the arithmetic is float32.
    pub trait Float: Copy + Send + Sync {
        /// The value as float32, exactly; inlined into the kernels' loops, where it vectorizes.
        fn to_f32(self) -> f32;

        /// 16 values from `at` as float32s, in one or two instructions.
        ///
        /// # Safety
        /// The CPU has AVX-512F, and 16 values from `at` are readable.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load16(at: *const Self) -> __m512;

        /// 8 values from `at` as float32s, in one or two instructions.
        ///
        /// # Safety
        /// The CPU has AVX2 and F16C, and 8 values from `at` are readable.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load8(at: *const Self) -> __m256;

        /// The float32 `value` rounded to this type, to nearest with ties to even, as `half`
        /// rounds (inlined into the narrowing loops' tails).
        fn from_f32(value: f32) -> Self;

        /// Stores 8 float32s at `at`, each rounded as [`Float::from_f32`] rounds it.
        ///
        /// # Safety
        /// The CPU has AVX2 and F16C, and 8 values at `at` are writable.
        #[cfg(target_arch = "x86_64")]
        unsafe fn store8(at: *mut Self, values: __m256);

        /// `values` as float32: themselves, or widened on every core.
        fn as_f32(values: &[Self]) -> Cow<'_, [f32]> {
            Cow::Owned(widened(values))
        }

        /// `values` themselves if they are bf16s, which some CPUs multiply in pairs.
        fn as_bf16(_values: &[Self]) -> Option<&[bf16]> {
            None
        }
    }

    /// Values per task of the element-wise loops: enough to amortise a task, few enough that an
    /// attention head's cache stays on its own task's thread.
    const CHUNK: usize = 1 << 14;

    /// `values` as float32, widened on every core.
    pub fn widened<W: Float>(values: &[W]) -> Vec<f32> {
        let mut wide = vec![0.0; values.len()];
        wide.par_chunks_mut(CHUNK)
            .zip(values.par_chunks(CHUNK))
            .for_each(|(wide, values)| widen(wide, values));
        wide
    }

    /// `values` rounded to `W` (as [`Float::from_f32`] rounds) on every core.
    pub fn narrowed<W: Float + Default>(values: &[f32]) -> Vec<W> {
        let mut narrow = vec![W::default(); values.len()];
        narrow
            .par_chunks_mut(CHUNK)
            .zip(values.par_chunks(CHUNK))
            .for_each(|(narrow, values)| self::narrow(narrow, values));
        narrow
    }

    impl Float for f32 {
        #[inline(always)]
        fn to_f32(self) -> f32 {
            self
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn load16(at: *const f32) -> __m512 {
            // SAFETY: 16 values are readable (the caller's promise); no alignment is needed.
            unsafe { _mm512_loadu_ps(at) }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn load8(at: *const f32) -> __m256 {
            // SAFETY: 8 values are readable (the caller's promise); no alignment is needed.
            unsafe { _mm256_loadu_ps(at) }
        }

        #[inline(always)]
        fn from_f32(value: f32) -> f32 {
            value
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn store8(at: *mut f32, values: __m256) {
            // SAFETY: 8 values are writable (the caller's promise); no alignment is needed.
            unsafe { _mm256_storeu_ps(at, values) }
        }

        fn as_f32(values: &[f32]) -> Cow<'_, [f32]> {
            Cow::Borrowed(values)
        }
    }

    impl Float for bf16 {
        /// A bfloat16 is a float32's top half: widening is a shift.
        #[inline(always)]
        fn to_f32(self) -> f32 {
            f32::from_bits(u32::from(self.to_bits()) << 16)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn load16(at: *const bf16) -> __m512 {
            // SAFETY: as for f32's; a `bf16` is a `repr(transparent)` `u16`.
            let bits = unsafe { _mm256_loadu_si256(at.cast()) };
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn load8(at: *const bf16) -> __m256 {
            // SAFETY: as for f32's; a `bf16` is a `repr(transparent)` `u16`.
            let bits = unsafe { _mm_loadu_si128(at.cast()) };
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
        }

        #[inline(always)]
        fn from_f32(value: f32) -> bf16 {
            bf16::from_f32(value)
        }

        /// `half`'s rounding in integer arithmetic: adding `0x7fff` plus the lowest kept bit
        /// carries into the kept half exactly when the dropped half is above one half, or at
        /// one half with the kept half odd (a carry out of the largest finite value makes the
        /// infinity's bits); a NaN keeps its top bits and becomes quiet.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn store8(at: *mut bf16, values: __m256) {
            let bits = _mm256_castps_si256(values);
            let lowest_kept = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
            let bias = _mm256_add_epi32(lowest_kept, _mm256_set1_epi32(0x7fff));
            let rounded = _mm256_add_epi32(bits, bias);
            let quiet_nan = _mm256_or_si256(bits, _mm256_set1_epi32(0x0040_0000));
            let is_nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(values, values));
            let kept = _mm256_srli_epi32::<16>(_mm256_blendv_epi8(rounded, quiet_nan, is_nan));
            // Each lane now holds 16 bits, so packing with unsigned saturation keeps them.
            let packed = _mm_packus_epi32(
                _mm256_castsi256_si128(kept),
                _mm256_extracti128_si256::<1>(kept),
            );
            // SAFETY: as for f32's; a `bf16` is a `repr(transparent)` `u16`.
            unsafe { _mm_storeu_si128(at.cast(), packed) }
        }

        fn as_bf16(values: &[bf16]) -> Option<&[bf16]> {
            Some(values)
        }
    }

    impl Float for f16 {
        /// Branch-free, so it vectorizes (`half` converts one value at a time unless the build
        /// targets F16C), and without float32 subnormals, which are slow to compute with: a
        /// normal value's exponent is rebiased by adding 112 (127 - 15) to it, a subnormal one
        /// is its mantissa times 2^-24, infinities and NaNs get float32's all-ones exponent.
        #[inline(always)]
        fn to_f32(self) -> f32 {
            const TWO_POW_MINUS_24: f32 = 5.960_464_5e-8;
            let bits = u32::from(self.to_bits());
            let sign = (bits & 0x8000) << 16;
            let magnitude = bits & 0x7fff;
            let wide = if magnitude >= 0x7c00 {
                (magnitude << 13) | 0x7f80_0000
            } else if magnitude >= 0x0400 {
                (magnitude << 13) + (112 << 23)
            } else {
                (magnitude as f32 * TWO_POW_MINUS_24).to_bits()
            };
            f32::from_bits(wide | sign)
        }

        /// `vcvtph2ps`: Rust has no stable `f16` type whose widening LLVM would vectorize into
        /// it, and `to_f32`'s bit arithmetic costs several instructions a value.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn load16(at: *const f16) -> __m512 {
            // SAFETY: as for f32's; an `f16` is a `repr(transparent)` `u16`.
            _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(at.cast()) })
        }

        /// F16C's `vcvtph2ps`, for the same reason.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn load8(at: *const f16) -> __m256 {
            // SAFETY: as for f32's; an `f16` is a `repr(transparent)` `u16`.
            _mm256_cvtph_ps(unsafe { _mm_loadu_si128(at.cast()) })
        }

        #[inline(always)]
        fn from_f32(value: f32) -> f16 {
            f16::from_f32(value)
        }

        /// F16C's `vcvtps2ph`, to nearest even: the instruction `half` itself uses, one value
        /// at a time, where F16C is detected.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn store8(at: *mut f16, values: __m256) {
            let narrow = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(values);
            // SAFETY: as for f32's; an `f16` is a `repr(transparent)` `u16`.
            unsafe { _mm_storeu_si128(at.cast(), narrow) }
        }
    }

    /// `partial[r, :] += x[r, :] · rows` for `x: [m, i]` and a block of weight rows `[i, n]`.
    pub fn rows_times_block<W: Float>(partial: &mut [f32], x: &[f32], rows: &[W], n: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Level::Avx512 = level() {
            // SAFETY: AVX-512F was detected on this CPU.
            return unsafe { avx512::rows_times_block(partial, x, rows, n) };
        }
        dispatch!(rows_times_block_with[W](partial, x, rows, n))
    }

    /// `wide[i] = values[i]`, as float32.
    pub fn widen<W: Float>(wide: &mut [f32], values: &[W]) {
        #[cfg(target_arch = "x86_64")]
        match level() {
            // SAFETY: AVX-512F was detected on this CPU.
            Level::Avx512 => return unsafe { avx512::widen(wide, values) },
            // SAFETY: AVX2, FMA and F16C were detected on this CPU.
            Level::Avx2Fma => return unsafe { avx2::widen(wide, values) },
            Level::Baseline => {}
        }
        wide.iter_mut()
            .zip(values)
            .for_each(|(wide, value)| *wide = value.to_f32());
    }

    /// `values` rounded to `W` and widened back, in place.
    pub fn round_through<W: Float + Default>(values: &mut [f32]) {
        const BLOCK: usize = 256;
        let mut narrow = [W::default(); BLOCK];
        for values in values.chunks_mut(BLOCK) {
            let narrow = &mut narrow[..values.len()];
            self::narrow(narrow, values);
            widen(values, narrow);
        }
    }

    /// `narrow[i] = wide[i]`, rounded as [`Float::from_f32`] rounds.
    pub fn narrow<W: Float>(narrow: &mut [W], wide: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma_f16c() {
            // SAFETY: AVX2, FMA and F16C were detected on this CPU.
            return unsafe { avx2::narrow(narrow, wide) };
        }
        narrow
            .iter_mut()
            .zip(wide)
            .for_each(|(narrow, wide)| *narrow = W::from_f32(*wide));
    }

    /// [`widen`] a register at a time.
    ///
    /// # Safety
    /// The CPU has `V`'s instructions.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn widen_by<V: Vector, W: Float>(wide: &mut [f32], values: &[W]) {
        let mut wide = wide.chunks_exact_mut(V::LANES);
        let mut values = values.chunks_exact(V::LANES);
        for (wide, values) in (&mut wide).zip(&mut values) {
            // SAFETY: `V`'s instructions (the caller's promise); both hold LANES values.
            unsafe { V::load(values.as_ptr()).store(wide.as_mut_ptr()) }
        }
        for (wide, value) in wide.into_remainder().iter_mut().zip(values.remainder()) {
            *wide = value.to_f32();
        }
    }

    /// Whether [`bf16_products`] runs on this CPU.
    pub fn has_bf16_products() -> bool {
        #[cfg(target_arch = "x86_64")]
        return has_avx512_bf16();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// `out[i, j] = x[i, :] · rows[j, :]` for `x: [m, k]` and `rows: [n, k]`, the bf16s
    /// multiplied in pairs by the CPU (see [`avx512_bf16::products`]).
    ///
    /// # Safety
    /// [`has_bf16_products`]; `m` rows of `n` values `row_stride` apart from `out` are writable,
    /// and nothing else reads or writes them during the call.
    pub unsafe fn bf16_products(
        out: *mut f32,
        row_stride: usize,
        x: &[bf16],
        rows: &[bf16],
        dims: [usize; 3],
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's promises.
        unsafe {
            avx512_bf16::products(out, row_stride, x, rows, dims)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (out, row_stride, x, rows, dims);
            unreachable!("`has_bf16_products` is false off x86-64")
        }
    }

    /// `out[j, r] = x[r, :] · rows[j, :]` for every row `j` of `rows: [.., c]`, `out: [.., m]`.
    pub fn dots<X: Float, W: Float>(out: &mut [f32], x: &[X], rows: &[W], c: usize) {
        #[cfg(target_arch = "x86_64")]
        match level() {
            // SAFETY: AVX-512F was detected on this CPU.
            Level::Avx512 => return unsafe { avx512::dots(out, x, rows, c) },
            // SAFETY: AVX2, FMA and F16C were detected on this CPU.
            Level::Avx2Fma => return unsafe { avx2::dots(out, x, rows, c) },
            Level::Baseline => {}
        }
        dispatch!(dots_with[X, W](out, x, rows, c))
    }

    /// A vector register of float32s, for the kernels written for any width.
    ///
    /// # Safety
    /// Each method needs the CPU to have the register's instructions.
    #[cfg(target_arch = "x86_64")]
    trait Vector: Copy {
        const LANES: usize;
        /// `LANES` values from `at`, widened ([`Float::load16`]).
        unsafe fn load<W: Float>(at: *const W) -> Self;
        unsafe fn store(self, at: *mut f32);
        /// `self · b + c`, fused.
        unsafe fn mul_add(self, b: Self, c: Self) -> Self;
        unsafe fn zero() -> Self;
        unsafe fn plus(self, other: Self) -> Self;
        unsafe fn total(self) -> f32;
    }

    #[cfg(target_arch = "x86_64")]
    impl Vector for __m512 {
        const LANES: usize = 16;

        #[inline(always)]
        unsafe fn load<W: Float>(at: *const W) -> Self {
            unsafe { W::load16(at) }
        }

        #[inline(always)]
        unsafe fn store(self, at: *mut f32) {
            unsafe { std::arch::x86_64::_mm512_storeu_ps(at, self) }
        }

        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            unsafe { std::arch::x86_64::_mm512_fmadd_ps(self, b, c) }
        }

        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { std::arch::x86_64::_mm512_setzero_ps() }
        }

        #[inline(always)]
        unsafe fn plus(self, other: Self) -> Self {
            unsafe { std::arch::x86_64::_mm512_add_ps(self, other) }
        }

        #[inline(always)]
        unsafe fn total(self) -> f32 {
            unsafe { std::arch::x86_64::_mm512_reduce_add_ps(self) }
        }
    }

    #[cfg(target_arch = "x86_64")]
    impl Vector for __m256 {
        const LANES: usize = 8;

        #[inline(always)]
        unsafe fn load<W: Float>(at: *const W) -> Self {
            unsafe { W::load8(at) }
        }

        #[inline(always)]
        unsafe fn store(self, at: *mut f32) {
            unsafe { std::arch::x86_64::_mm256_storeu_ps(at, self) }
        }

        #[inline(always)]
        unsafe fn mul_add(self, b: Self, c: Self) -> Self {
            unsafe { std::arch::x86_64::_mm256_fmadd_ps(self, b, c) }
        }

        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { std::arch::x86_64::_mm256_setzero_ps() }
        }

        #[inline(always)]
        unsafe fn plus(self, other: Self) -> Self {
            unsafe { std::arch::x86_64::_mm256_add_ps(self, other) }
        }

        #[inline(always)]
        unsafe fn total(self) -> f32 {
            use std::arch::x86_64::{
                _mm_add_ps, _mm_cvtss_f32, _mm_movehdup_ps, _mm_movehl_ps, _mm256_castps256_ps128,
                _mm256_extractf128_ps,
            };
            unsafe {
                let halves = _mm_add_ps(
                    _mm256_castps256_ps128(self),
                    _mm256_extractf128_ps::<1>(self),
                );
                let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
                _mm_cvtss_f32(_mm_add_ps(pairs, _mm_movehdup_ps(pairs)))
            }
        }
    }

    /// [`dots`] a register at a time, inputs and weights widened as they are loaded, with four
    /// running sums a row, so that the multiply-adds do not wait on each other.
    ///
    /// Rows go in pairs, one from each half of `rows`: two streams from memory where one row
    /// after another is one. A single stream left a core of the AVX2-only EPYC reading well
    /// below what its memory gives one core, the more so for half precision, whose widening
    /// leaves fewer loads in flight (these products alone over a 154 MB half-precision or
    /// 309 MB f32 matrix, one thread, GB/s: bf16 8.1-13.8 -> 16.3-19.0, f16 10.9-15.0 ->
    /// 18.2-21.3, f32 10.4-18.3 -> 19.4-21.4; two threads ~23 -> 25-30).
    ///
    /// bf16 weights are widened here too, not multiplied in pairs by AVX-512 BF16's
    /// `vdpbf16ps` as a prompt's are ([`avx512_bf16::products`]): on the AVX-512 BF16 EPYC
    /// the pairs made GPT-2 124M's bf16 decode slower in 23 of 24 pairs of runs, alternating
    /// (one thread 0.84-0.95x this kernel's; two 0.79-0.96x, one pair 1.23x), and the products
    /// alone read no faster (a 151 MB matrix, medians of 30 passes in one process, GB/s: one
    /// thread 25.5-25.9 against 26.5-27.7, where a plain sum over the same bytes read
    /// 25.4-25.8; two threads 34.1-35.3 against 34.4-35.6, the plain sum 33.4-34.5).
    ///
    /// # Safety
    /// The CPU has `V`'s instructions.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dots_by<V: Vector, X: Float, W: Float>(
        out: &mut [f32],
        x: &[X],
        rows: &[W],
        c: usize,
    ) {
        let m = x.len() / c;
        let n = rows.len() / c;
        let (first, second) = rows.split_at(n / 2 * c);
        let (out_first, out_second) = out.split_at_mut(n / 2 * m);
        let pairs = first.chunks_exact(c).zip(second.chunks_exact(c));
        let outs = out_first
            .chunks_exact_mut(m)
            .zip(out_second.chunks_exact_mut(m));
        for ((out_a, out_b), (row_a, row_b)) in outs.zip(pairs) {
            for ((a, b), x) in out_a.iter_mut().zip(out_b).zip(x.chunks_exact(c)) {
                // SAFETY: the CPU has V's instructions (the caller's promise).
                [*a, *b] = unsafe { sums_of::<2, V, X, W>(x, [row_a, row_b]) };
            }
        }
        if n % 2 == 1 {
            let row = &second[second.len() - c..];
            let last = out_second.len() - m;
            let out = &mut out_second[last..];
            for (out, x) in out.iter_mut().zip(x.chunks_exact(c)) {
                // SAFETY: as above.
                [*out] = unsafe { sums_of::<1, V, X, W>(x, [row]) };
            }
        }
    }

    /// `x · row` for each of `rows`, each with four running sums (see [`dots_by`]).
    ///
    /// # Safety
    /// As [`dots_by`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn sums_of<const R: usize, S: Vector, X: Float, W: Float>(
        x: &[X],
        rows: [&[W]; R],
    ) -> [f32; R] {
        let lanes = S::LANES;
        // SAFETY (for each use): the CPU has S's instructions (the caller's promise), and
        // `lanes` values are readable at `x` and at `w`.
        let step =
            |sum: S, x: *const X, w: *const W| unsafe { S::load(x).mul_add(S::load(w), sum) };
        let block = 4 * lanes;
        let body = x.len() / block * block;
        // SAFETY: the CPU has S's instructions (the caller's promise).
        let mut sums = [[unsafe { S::zero() }; 4]; R];
        assert!(rows.iter().all(|row| row.len() >= x.len()));
        let x_at = x.as_ptr();
        let rows_at = rows.map(<[W]>::as_ptr);
        let mut start = 0;
        while start < body {
            for k in 0..4 {
                let at = start + k * lanes;
                for (row_sums, row_at) in sums.iter_mut().zip(rows_at) {
                    // SAFETY: `at + lanes <= body`, within `x` and every row (asserted).
                    let (x, w) = unsafe { (x_at.add(at), row_at.add(at)) };
                    row_sums[k] = step(row_sums[k], x, w);
                }
            }
            start += block;
        }
        // What is left of whole vectors, one sum each (a bf16 head of 64 values was two
        // vectors of 32 pairs and no block of 128, and went value by value).
        for k in 0..4 {
            if start + lanes > x.len() {
                break;
            }
            for (row_sums, row_at) in sums.iter_mut().zip(rows_at) {
                // SAFETY: `start + lanes <= x.len()`, within `x` and every row (asserted).
                let (x, w) = unsafe { (x_at.add(start), row_at.add(start)) };
                row_sums[k] = step(row_sums[k], x, w);
            }
            start += lanes;
        }
        // A loop, not `array::from_fn`: its closure is a function of its own, compiled without
        // this one's instructions (a call per vector operation, a third of the time).
        let mut totals = [0.0; R];
        for ((total, [a, b, c, d]), row) in totals.iter_mut().zip(sums).zip(rows) {
            let tail: f32 = x[start..]
                .iter()
                .zip(&row[start..])
                .map(|(x, w)| x.to_f32() * w.to_f32())
                .sum();
            // SAFETY: as above.
            *total = unsafe { a.plus(b).plus(c.plus(d)).total() } + tail;
        }
        totals
    }

    /// The kernels above on AVX-512, written out: one load widens 16 weights of any of the
    /// float types ([`Float::load16`]), which LLVM does not find for f16 (there is no stable
    /// `f16` type), and the dot products keep four running sums and reduce them in registers.
    #[cfg(target_arch = "x86_64")]
    mod avx512 {
        use std::arch::x86_64::{
            __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_storeu_ps,
        };

        use super::{Float, dots_by, widen_by};

        const LANES: usize = 16;

        #[target_feature(enable = "avx512f")]
        pub fn rows_times_block<W: Float>(partial: &mut [f32], x: &[f32], rows: &[W], n: usize) {
            let taken = rows.len() / n;
            let body = n / LANES * LANES;
            for (i, w_row) in rows.chunks_exact(n).enumerate() {
                for (out, x_row) in partial.chunks_exact_mut(n).zip(x.chunks_exact(taken)) {
                    let a = _mm512_set1_ps(x_row[i]);
                    let (out_body, out_tail) = out.split_at_mut(body);
                    for (out, w) in out_body
                        .chunks_exact_mut(LANES)
                        .zip(w_row.chunks_exact(LANES))
                    {
                        // SAFETY: AVX-512F (this function's); `out` and `w` hold 16 values.
                        unsafe {
                            let sum = _mm512_fmadd_ps(
                                a,
                                W::load16(w.as_ptr()),
                                _mm512_loadu_ps(out.as_ptr()),
                            );
                            _mm512_storeu_ps(out.as_mut_ptr(), sum);
                        }
                    }
                    for (out, w) in out_tail.iter_mut().zip(&w_row[body..]) {
                        *out = x_row[i].mul_add(w.to_f32(), *out);
                    }
                }
            }
        }

        #[target_feature(enable = "avx512f")]
        pub fn widen<W: Float>(wide: &mut [f32], values: &[W]) {
            // SAFETY: AVX-512F (this function's).
            unsafe { widen_by::<__m512, W>(wide, values) }
        }

        #[target_feature(enable = "avx512f")]
        pub fn dots<X: Float, W: Float>(out: &mut [f32], x: &[X], rows: &[W], c: usize) {
            // SAFETY: AVX-512F (this function's).
            unsafe { dots_by::<__m512, X, W>(out, x, rows, c) }
        }
    }

    /// [`dots`] on AVX2: as [`avx512`]'s, 8 lanes a register (F16C widens f16 weights); and
    /// [`narrow`].
    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use std::arch::x86_64::{__m256, _mm256_loadu_ps};

        use super::{Float, dots_by, widen_by};

        #[target_feature(enable = "avx2,fma,f16c")]
        pub fn widen<W: Float>(wide: &mut [f32], values: &[W]) {
            // SAFETY: AVX2 and F16C (this function's).
            unsafe { widen_by::<__m256, W>(wide, values) }
        }

        /// [`super::narrow`] 8 values at a time (on AVX-512 too: it is bound by memory).
        #[target_feature(enable = "avx2,fma,f16c")]
        pub fn narrow<W: Float>(narrow: &mut [W], wide: &[f32]) {
            let mut narrow = narrow.chunks_exact_mut(8);
            let mut wide = wide.chunks_exact(8);
            for (narrow, wide) in (&mut narrow).zip(&mut wide) {
                // SAFETY: AVX2 and F16C (this function's); both hold 8 values.
                unsafe { W::store8(narrow.as_mut_ptr(), _mm256_loadu_ps(wide.as_ptr())) }
            }
            for (narrow, wide) in narrow.into_remainder().iter_mut().zip(wide.remainder()) {
                *narrow = W::from_f32(*wide);
            }
        }

        #[target_feature(enable = "avx2,fma,f16c")]
        pub fn dots<X: Float, W: Float>(out: &mut [f32], x: &[X], rows: &[W], c: usize) {
            // SAFETY: AVX2, FMA and F16C (this function's).
            unsafe { dots_by::<__m256, X, W>(out, x, rows, c) }
        }
    }

    /// A prompt's bf16 products with AVX-512 BF16's `vdpbf16ps`: 32 products of bf16 pairs
    /// summed into float32 per instruction (a decode step's, bound by memory, widen instead:
    /// see [`dots_by`]).
    #[cfg(target_arch = "x86_64")]
    mod avx512_bf16 {
        use std::arch::x86_64::{
            __m512bh, __mmask16, _mm512_add_ps, _mm512_dpbf16_ps, _mm512_loadu_si512,
            _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_epi32, _mm512_setzero_ps,
        };

        use burn::tensor::bf16;

        /// 32 bf16s from `at`, as `vdpbf16ps` takes them.
        ///
        /// # Safety
        /// 32 values are readable from `at`.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bf16")]
        unsafe fn load(at: *const bf16) -> __m512bh {
            // SAFETY: 32 values are readable (the caller's promise) and the load has no
            // alignment needs; `__m512bh` is 32 bf16 bits, as the loaded 512-bit integer
            // vector is.
            unsafe { std::mem::transmute(_mm512_loadu_si512(at.cast())) }
        }

        /// Rows of `x` a tile multiplies at once, by [`COLUMNS`] weight rows: 16 running sums
        /// in registers, each pair of weight vectors loaded once for eight rows.
        const TILE_ROWS: usize = 8;

        /// Weight rows a tile multiplies, as two registers of 16 float32 sums.
        const COLUMNS: usize = 32;

        /// Inputs a packed strip of [`COLUMNS`] weight rows spans: 16 KiB, which stay in the
        /// level-1 cache while every tile of `x`'s rows passes them.
        const STRIP_INPUTS: usize = 256;

        /// `out[i, j] = x[i, :] · rows[j, :]` for `x: [m, k]` and `rows: [n, k]`, `out`'s rows
        /// `row_stride` apart, by `vdpbf16ps`: a float32 sum of two bf16 products per lane,
        /// twice float32's multiply-adds per instruction (the products are exact in float32;
        /// `vdpbf16ps` flushes subnormals). A prompt's products are
        /// compute-bound, and `gemm` has no bf16 arithmetic: it multiplied widened copies.
        ///
        /// Each strip of 32 weight rows, [`STRIP_INPUTS`] inputs at a time, is packed as pairs
        /// of inputs interleaved by row (a register holds one pair of each of 16 rows) and
        /// multiplied with every tile of `x` rows, each row's pair broadcast to every lane, so
        /// that each lane sums one output with no reduction across lanes.
        ///
        /// # Safety
        /// As [`super::bf16_products`].
        #[target_feature(enable = "avx512f,avx512bf16")]
        pub unsafe fn products(
            out: *mut f32,
            row_stride: usize,
            x: &[bf16],
            rows: &[bf16],
            [m, k, n]: [usize; 3],
        ) {
            assert!(x.len() == m * k && rows.len() == n * k && row_stride >= n);
            let mut strip = [0u32; COLUMNS * STRIP_INPUTS / 2];
            for start in (0..k).step_by(STRIP_INPUTS) {
                let inputs = STRIP_INPUTS.min(k - start);
                let pairs = inputs.div_ceil(2);
                for first_column in (0..n).step_by(COLUMNS) {
                    let columns = COLUMNS.min(n - first_column);
                    pack(
                        &mut strip[..pairs * COLUMNS],
                        rows,
                        k,
                        first_column,
                        columns,
                        start,
                        inputs,
                    );
                    let tile = Tile {
                        strip: &strip[..pairs * COLUMNS],
                        inputs,
                        columns,
                        accumulate: start > 0,
                    };
                    let mut row = 0;
                    while row < m {
                        let x = &x[row * k + start..];
                        let out = out.wrapping_add(row * row_stride + first_column);
                        // SAFETY (both calls): rows `row..row + R` of `out` exist (`row + R <=
                        // m`), with the strip's columns; the caller's promises.
                        if row + TILE_ROWS <= m {
                            unsafe { tile.multiply::<TILE_ROWS>(out, row_stride, x, k) };
                            row += TILE_ROWS;
                        } else {
                            unsafe { tile.multiply::<1>(out, row_stride, x, k) };
                            row += 1;
                        }
                    }
                }
            }
        }

        /// `strip[p * COLUMNS + j]` = inputs `start + 2p` and `start + 2p + 1` of weight row
        /// `first + j`, the first in the low half, as `vdpbf16ps` pairs them; zeros past the
        /// `columns` rows and the `inputs` inputs.
        fn pack(
            strip: &mut [u32],
            rows: &[bf16],
            k: usize,
            first: usize,
            columns: usize,
            start: usize,
            inputs: usize,
        ) {
            strip.fill(0);
            for column in 0..columns {
                let row = &rows[(first + column) * k + start..][..inputs];
                for (pair, values) in row.chunks(2).enumerate() {
                    let high = values.get(1).map_or(0, |value| u32::from(value.to_bits()));
                    strip[pair * COLUMNS + column] = u32::from(values[0].to_bits()) | high << 16;
                }
            }
        }

        /// A packed strip of weight rows (see [`products`]) and how to write its outputs.
        struct Tile<'a> {
            strip: &'a [u32],
            inputs: usize,
            columns: usize,
            /// Whether the outputs hold an earlier strip's sums to add to.
            accumulate: bool,
        }

        impl Tile<'_> {
            /// Rows `0..R` of `x` (`x_stride` apart; this strip's inputs from each row's
            /// start) times the strip, into `R` rows of `out`.
            ///
            /// # Safety
            /// The CPU has AVX-512F and AVX-512 BF16; `R` rows of the strip's columns are
            /// writable at `out`, `row_stride` apart, and nothing else reads or writes them
            /// during the call.
            #[inline]
            #[target_feature(enable = "avx512f,avx512bf16")]
            unsafe fn multiply<const R: usize>(
                &self,
                out: *mut f32,
                row_stride: usize,
                x: &[bf16],
                x_stride: usize,
            ) {
                assert!(x.len() >= (R - 1) * x_stride + self.inputs);
                let mut sums = [[_mm512_setzero_ps(); 2]; R];
                let full_pairs = self.inputs / 2;
                let x_at = x.as_ptr();
                for pair in 0..self.inputs.div_ceil(2) {
                    // SAFETY: the strip holds `COLUMNS` pairs (`2 * COLUMNS` bf16s) a pair
                    // index; `load` reads 32 bf16s, 16 pairs.
                    let weights = unsafe {
                        let at = self.strip.as_ptr().add(pair * COLUMNS).cast::<bf16>();
                        [load(at), load(at.add(32))]
                    };
                    for (row, sums) in sums.iter_mut().enumerate() {
                        let at = row * x_stride + 2 * pair;
                        // SAFETY: within `x` (asserted): both inputs of a full pair, the
                        // last one's first alone (the second is the next row's, or past `x`).
                        let both = unsafe {
                            if pair < full_pairs {
                                x_at.add(at).cast::<u32>().read_unaligned()
                            } else {
                                u32::from((*x_at.add(at)).to_bits())
                            }
                        };
                        let both: __m512bh =
                            unsafe { std::mem::transmute(_mm512_set1_epi32(both as i32)) };
                        for (sum, weights) in sums.iter_mut().zip(weights) {
                            *sum = _mm512_dpbf16_ps(*sum, both, weights);
                        }
                    }
                }
                for (row, sums) in sums.iter().enumerate() {
                    for (half, sum) in sums.iter().enumerate() {
                        let columns = self.columns.saturating_sub(half * 16).min(16);
                        let mask: __mmask16 = ((1u32 << columns) - 1) as u16;
                        // SAFETY: the tile's first `columns` outputs of this half (the
                        // caller's promise).
                        unsafe {
                            let at = out.add(row * row_stride + half * 16);
                            let sum = if self.accumulate {
                                _mm512_add_ps(*sum, _mm512_maskz_loadu_ps(mask, at))
                            } else {
                                *sum
                            };
                            _mm512_mask_storeu_ps(at, mask, sum);
                        }
                    }
                }
            }
        }
    }

    /// Whether the CPU has AVX-512F and AVX-512 BF16.
    #[cfg(target_arch = "x86_64")]
    fn has_avx512_bf16() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            matches!(level(), Level::Avx512) && is_x86_feature_detected!("avx512bf16")
        })
    }

    #[derive(Clone, Copy)]
    enum Level {
        #[cfg(target_arch = "x86_64")]
        Avx512,
        #[cfg(target_arch = "x86_64")]
        Avx2Fma,
        Baseline,
    }

    /// What [`avx2`]'s kernels need.
    #[cfg(target_arch = "x86_64")]
    fn has_avx2_fma_f16c() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    fn level() -> Level {
        static LEVEL: OnceLock<Level> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                    return Level::Avx512;
                }
                if has_avx2_fma_f16c() {
                    return Level::Avx2Fma;
                }
            }
            Level::Baseline
        })
    }

    /// Calls `$kernel::<FUSED, $W, ...>` (or `$kernel::<FUSED>`) inlined into a function compiled
    /// for the detected level.
    macro_rules! dispatch {
        ($kernel:ident[$($w:ty),*]($($arg:expr),*)) => {{
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                fn avx512<R>(f: impl FnOnce() -> R) -> R { f() }
                #[target_feature(enable = "avx2,fma")]
                fn avx2<R>(f: impl FnOnce() -> R) -> R { f() }
                match level() {
                    // SAFETY: the level was detected on this CPU.
                    Level::Avx512 => unsafe { avx512(|| $kernel::<true $(, $w)*>($($arg),*)) },
                    Level::Avx2Fma => unsafe { avx2(|| $kernel::<true $(, $w)*>($($arg),*)) },
                    Level::Baseline => $kernel::<false $(, $w)*>($($arg),*),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = level();
                $kernel::<false $(, $w)*>($($arg),*)
            }
        }};
    }
    use dispatch;

    /// `a · b + c`, fused (one rounding, one instruction) where the CPU has it.
    #[inline(always)]
    fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
        if FUSED { a.mul_add(b, c) } else { a * b + c }
    }

    #[inline(always)]
    fn rows_times_block_with<const FUSED: bool, W: Float>(
        partial: &mut [f32],
        x: &[f32],
        rows: &[W],
        n: usize,
    ) {
        let taken = rows.len() / n;
        for (i, w_row) in rows.chunks_exact(n).enumerate() {
            for (out, x_row) in partial.chunks_exact_mut(n).zip(x.chunks_exact(taken)) {
                let a = x_row[i];
                for (out, w) in out.iter_mut().zip(w_row) {
                    *out = madd::<FUSED>(a, w.to_f32(), *out);
                }
            }
        }
    }

    /// `scores[i] = e^(scores[i] - max)`, returning their sum: a softmax's exponentials, which
    /// libm's `expf` computes one at a time (a fifth of a 512-token prompt in burn-flex's
    /// attention).
    pub fn exp_minus(scores: &mut [f32], max: f32) -> f32 {
        dispatch!(exp_minus_with[](scores, max))
    }

    #[inline(always)]
    fn exp_minus_with<const FUSED: bool>(scores: &mut [f32], max: f32) -> f32 {
        const LANES: usize = 16;
        let mut sums = [0.0f32; LANES];
        let mut chunks = scores.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for lane in 0..LANES {
                chunk[lane] = exp_of_negative::<FUSED>(chunk[lane] - max);
                sums[lane] += chunk[lane];
            }
        }
        let mut sum = sums.iter().sum::<f32>();
        for score in chunks.into_remainder() {
            *score = exp_of_negative::<FUSED>(*score - max);
            sum += *score;
        }
        sum
    }

    /// Each `gamma.len()`-value row of `rows`, in place, normalised to zero mean and unit
    /// variance (the biased variance, plus `epsilon`, as PyTorch's `LayerNorm`), then scaled
    /// by `gamma` and shifted by `beta`.
    pub fn layer_norm<W: Float>(rows: &mut [f32], gamma: &[W], beta: &[W], epsilon: f32) {
        dispatch!(layer_norm_with[W](rows, gamma, beta, epsilon))
    }

    #[inline(always)]
    fn layer_norm_with<const FUSED: bool, W: Float>(
        rows: &mut [f32],
        gamma: &[W],
        beta: &[W],
        epsilon: f32,
    ) {
        let c = gamma.len();
        for row in rows.chunks_exact_mut(c) {
            // Two passes, so that the variance sums squares of small deviations rather than
            // subtracting two large sums (exact enough where the mean is far from zero).
            let mean = sum_by(row, |x| x) / c as f32;
            let variance = sum_by(row, |x| (x - mean) * (x - mean)) / c as f32;
            let scale = (variance + epsilon).sqrt().recip();
            for ((x, gamma), beta) in row.iter_mut().zip(gamma).zip(beta) {
                *x = madd::<FUSED>((*x - mean) * scale, gamma.to_f32(), beta.to_f32());
            }
        }
    }

    /// The sum of `f(value)` over `values`, in 16 independent partial sums so that it
    /// vectorizes (float addition is not associative, so the compiler will not split one).
    #[inline(always)]
    fn sum_by(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
        const LANES: usize = 16;
        let mut sums = [0.0f32; LANES];
        let mut chunks = values.chunks_exact(LANES);
        for chunk in &mut chunks {
            for lane in 0..LANES {
                sums[lane] += f(chunk[lane]);
            }
        }
        sums.iter().sum::<f32>() + chunks.remainder().iter().map(|&x| f(x)).sum::<f32>()
    }

    /// `x σ(x (K + K · 0.044715 x²))`, `K = 2 √(2/π)`, in place: `gelu_new`.
    pub fn gelu_new(values: &mut [f32]) {
        dispatch!(gelu_new_with[](values))
    }

    #[inline(always)]
    fn gelu_new_with<const FUSED: bool>(values: &mut [f32]) {
        const K: f32 = 2.0 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
        for x in values.iter_mut() {
            let z = *x * madd::<FUSED>(*x * *x, K * 0.044715, K);
            // σ(z) from e^-|z|, which cannot overflow: 1 / (1 + e^-z), or e^z / (1 + e^z).
            let e = exp_of_negative::<FUSED>(-z.abs());
            let r = 1.0 / (1.0 + e);
            let sigmoid = if z >= 0.0 { r } else { e * r };
            *x *= sigmoid;
        }
    }

    /// `e^x` for `x ≤ 0` (0 below float32's smallest normal's logarithm), within 2 ulp, in
    /// operations that vectorize: `x = n ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by its Taylor
    /// series to degree 7, times `2^n` built in the exponent bits.
    #[inline(always)]
    pub(super) fn exp_of_negative<const FUSED: bool>(x: f32) -> f32 {
        // Adding 1.5 · 2^23 rounds to an integer, which lands in the low mantissa bits.
        const SHIFTER: f32 = 12_582_912.0;
        const LN_2_HIGH: f32 = 0.693_145_75; // ln 2's leading bits: n · LN_2_HIGH is exact
        const LN_2_LOW: f32 = 1.428_606_8e-6;
        const LOWEST: f32 = -87.0; // e^-87 is just above float32's smallest normal
        let clamped = x.max(LOWEST);
        let shifted = madd::<FUSED>(clamped, std::f32::consts::LOG2_E, SHIFTER);
        let n = shifted - SHIFTER;
        let r = madd::<FUSED>(n, -LN_2_LOW, madd::<FUSED>(n, -LN_2_HIGH, clamped));
        let mut series = 1.0 / 5040.0;
        for coefficient in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            series = madd::<FUSED>(series, r, coefficient);
        }
        let biased = shifted
            .to_bits()
            .wrapping_sub(SHIFTER.to_bits())
            .wrapping_add(127);
        let power_of_two = f32::from_bits(biased << 23);
        if x < LOWEST {
            0.0
        } else {
            series * power_of_two
        }
    }

    /// Dot products with 16 independent partial sums, so the loop vectorizes (float addition
    /// is not associative, so the compiler will not split a single sum).
    #[inline(always)]
    fn dots_with<const FUSED: bool, X: Float, W: Float>(
        out: &mut [f32],
        x: &[X],
        rows: &[W],
        c: usize,
    ) {
        const LANES: usize = 16;
        let m = x.len() / c;
        for (out, row) in out.chunks_exact_mut(m).zip(rows.chunks_exact(c)) {
            for (out, x) in out.iter_mut().zip(x.chunks_exact(c)) {
                let mut sums = [0.0f32; LANES];
                let body = c / LANES * LANES;
                for (x, w) in x[..body]
                    .chunks_exact(LANES)
                    .zip(row[..body].chunks_exact(LANES))
                {
                    for lane in 0..LANES {
                        sums[lane] = madd::<FUSED>(x[lane].to_f32(), w[lane].to_f32(), sums[lane]);
                    }
                }
                let tail: f32 = x[body..]
                    .iter()
                    .zip(&row[body..])
                    .map(|(x, w)| x.to_f32() * w.to_f32())
                    .sum();
                *out = sums.iter().sum::<f32>() + tail;
            }
        }
    }
    #[cfg(test)]
    mod tests {
        use super::*;

        /// Each vector kernel this CPU can run, against the plain loop, for every weight type and
        /// inputs in float32 or in the weights' type (a half-precision model's activations): the
        /// same sums in another order.
        #[test]
        fn every_level_s_dot_products_agree_with_the_plain_loop() {
            fn check<X: Float, W: Float>(c: usize) {
                // 2 inputs, 5 rows of weights; the inputs are values every type holds exactly
                // (bf16's, and within f16's range), so the sums do not depend on their type.
                let x: Vec<X> = (0..2 * c)
                    .map(|i| X::from_f32(((i * 37 % 101) as f32 - 50.0) / 32.0))
                    .collect();
                let rows: Vec<W> = (0..5 * c)
                    .map(|i| W::from_f32(((i * 53 % 97) as f32 - 48.0) / 40.0))
                    .collect();
                let mut expected = vec![0.0; 10];
                let wide: Vec<f32> = x.iter().map(|x| x.to_f32()).collect();
                dots_with::<false, f32, W>(&mut expected, &wide, &rows, c);
                type Dots<X, W> = fn(&mut [f32], &[X], &[W], usize);
                let mut kernels: Vec<(&str, Dots<X, W>)> =
                    vec![("plain, inputs as they are", |o, x, r, c| {
                        dots_with::<false, X, W>(o, x, r, c)
                    })];
                #[cfg(target_arch = "x86_64")]
                {
                    if has_avx2_fma_f16c() {
                        // SAFETY: detected just above.
                        kernels.push(("avx2", |o, x, r, c| unsafe { avx2::dots(o, x, r, c) }));
                    }
                    if is_x86_feature_detected!("avx512f") {
                        // SAFETY: detected just above.
                        kernels.push(("avx512", |o, x, r, c| unsafe { avx512::dots(o, x, r, c) }));
                    }
                }
                for (name, kernel) in kernels {
                    let mut ours = vec![f32::NAN; 10];
                    kernel(&mut ours, &x, &rows, c);
                    for (ours, expected) in ours.iter().zip(&expected) {
                        assert!(
                            (ours - expected).abs() <= 1e-4 * expected.abs().max(1.0),
                            "{name}, {} inputs, {} weights, {c} values: {ours} vs {expected}",
                            std::any::type_name::<X>(),
                            std::any::type_name::<W>()
                        );
                    }
                }
            }
            // 300 values: blocks of four vectors, whole vectors after them and a tail; 64, an
            // attention head: one block of 16-lane vectors, or two of 8 lanes.
            for c in [300, 64] {
                check::<f32, f32>(c);
                check::<f32, f16>(c);
                check::<f16, f16>(c);
                check::<f32, bf16>(c);
                check::<bf16, bf16>(c);
            }
        }

        /// Each vector widening this CPU can run, for all 65536 bit patterns of f16 and bf16.
        #[test]
        fn every_level_widens_every_half_precision_value_exactly() {
            fn check<W: Float>(from_bits: fn(u16) -> W) {
                let values: Vec<W> = (0..=u16::MAX).map(from_bits).collect();
                type Widen<W> = fn(&mut [f32], &[W]);
                let mut widenings: Vec<(&str, Widen<W>)> = Vec::new();
                #[cfg(target_arch = "x86_64")]
                {
                    if has_avx2_fma_f16c() {
                        // SAFETY: detected just above.
                        widenings.push(("avx2", |w, v| unsafe { avx2::widen(w, v) }));
                    }
                    if is_x86_feature_detected!("avx512f") {
                        // SAFETY: detected just above.
                        widenings.push(("avx512", |w, v| unsafe { avx512::widen(w, v) }));
                    }
                }
                for (name, widen) in widenings {
                    // One value short of a whole number of registers: the tail too.
                    let values = &values[1..];
                    let mut wide = vec![0.0; values.len()];
                    widen(&mut wide, values);
                    for (value, wide) in values.iter().zip(&wide) {
                        let exact = value.to_f32();
                        assert!(
                            wide.to_bits() == exact.to_bits() || (wide.is_nan() && exact.is_nan()),
                            "{name}, {}: {wide} vs {exact}",
                            std::any::type_name::<W>()
                        );
                    }
                }
            }
            check::<f16>(f16::from_bits);
            check::<bf16>(bf16::from_bits);
        }

        /// Rounding to half precision, on every path this CPU has, bit for bit as `half`
        /// rounds: every float32 whose low 16 bits are at or beside a rounding boundary of
        /// either type (halfway, just under, just over, exact) under each of the 65536 high
        /// halves (every sign, exponent, NaN and infinity), and a spread of the rest.
        #[test]
        fn narrowing_rounds_every_value_as_half_does() {
            fn check<W: Float + Default + PartialEq + std::fmt::Debug>(to_bits: fn(W) -> u16) {
                let lows = [
                    0, 1, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x7fff, 0x8000, 0x8001,
                ];
                let lows = lows.into_iter().chain([0xe000, 0xefff, 0xf000, 0xffff]);
                let boundaries = (0..=u32::from(u16::MAX))
                    .flat_map(|high| lows.clone().map(move |low| high << 16 | low));
                let spread = (0..1u32 << 22).map(|i| i.wrapping_mul(2_654_435_761));
                let wide: Vec<f32> = boundaries.chain(spread).map(f32::from_bits).collect();
                let mut narrowings: Vec<(&str, Vec<W>)> = vec![("every core", narrowed(&wide))];
                #[cfg(target_arch = "x86_64")]
                if has_avx2_fma_f16c() {
                    let mut ours = vec![W::default(); wide.len() - 1];
                    // SAFETY: detected just above. One short of whole registers: the tail too.
                    unsafe { avx2::narrow(&mut ours, &wide[1..]) };
                    ours.insert(0, W::from_f32(wide[0]));
                    narrowings.push(("avx2", ours));
                }
                for (name, narrow) in narrowings {
                    for (wide, ours) in wide.iter().zip(&narrow) {
                        let reference = W::from_f32(*wide);
                        assert_eq!(
                            to_bits(*ours),
                            to_bits(reference),
                            "{name}, {}: {wide:e} ({:#010x})",
                            std::any::type_name::<W>(),
                            wide.to_bits()
                        );
                    }
                }
            }
            check::<f16>(f16::to_bits);
            check::<bf16>(bf16::to_bits);
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::store::ModuleSnapshot;
    use burn::tensor::{Device, Distribution, Tolerance};

    use super::*;

    /// `layer` with its weight laid out as a loaded model's are.
    fn laid_out(layer: &Linear) -> Linear {
        Linear {
            weight: layer.weight.clone().map(stored_by_output),
            bias: layer.bias.clone(),
        }
    }

    #[test]
    fn a_pass_in_the_pool_finishes_nested_parallel_work_and_returns_its_panics() {
        // Four threads: keepers can be taken by workers waiting on their own tasks.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let device = Device::flex();
        let total = pool.install(|| {
            in_cpu_pool(&device, || {
                (0..200u64)
                    .into_par_iter()
                    .map(|i| (0..1000u64).into_par_iter().map(|j| i * j).sum::<u64>())
                    .sum::<u64>()
            })
        });
        assert_eq!(total, (0..200u64).sum::<u64>() * (0..1000u64).sum::<u64>());
        // The keepers never see `done`: they must give up for the panic to come back.
        let panicked = pool
            .install(|| std::panic::catch_unwind(|| in_cpu_pool(&device, || panic!("a bad pass"))));
        assert!(panicked.is_err());
    }

    #[test]
    fn linear_matches_burns_for_every_row_count() {
        let device = Device::flex();
        // 37 outputs: several tasks' rows and a partial one; 300 inputs: the dot products'
        // vector blocks and a tail.
        let layer = LinearConfig::new(300, 37).init(&device);
        let ours = laid_out(&layer);
        for rows in [1, 3, MAX_ROWS, MAX_ROWS + 1, 100] {
            let x = Tensor::<3>::random([1, rows, 300], Distribution::Default, &device);
            assert!(
                flex_linear(&layer, &x, None).is_none(),
                "burn's layout: burn's path"
            );
            let y = flex_linear(&ours, &x, None).expect("flex, float32, laid out");
            y.into_data().assert_approx_eq::<f32>(
                &layer.forward(x.clone()).into_data(),
                Tolerance::default(),
            );
            let residual = Tensor::<3>::random([1, rows, 37], Distribution::Default, &device);
            let y = flex_linear(&ours, &x, Some(&residual)).expect("flex, with a residual");
            let burns = residual + layer.forward(x);
            y.into_data()
                .assert_approx_eq::<f32>(&burns.into_data(), Tolerance::default());
        }
    }

    #[test]
    fn laid_out_linears_are_laid_out_at_init_and_at_load() {
        let device = Device::flex();
        let initialised = laid_out_linear(30, 20, &device);
        assert!(stored_transposed(&initialised.weight.val()).is_some());
        let source = LinearConfig::new(30, 20).init(&device);
        let mut loaded = laid_out_linear(30, 20, &device);
        let result = loaded.apply(source.collect(None, None, false), None, None, false);
        assert!(result.errors.is_empty() && result.missing.is_empty());
        let weight = loaded.weight.val();
        assert!(stored_transposed(&weight).is_some(), "laid out as loaded");
        weight
            .into_data()
            .assert_eq(&source.weight.val().into_data(), true);
    }

    #[test]
    fn laying_out_keeps_the_weight_and_burns_forward() {
        let device = Device::flex();
        let layer = LinearConfig::new(30, 20).init(&device);
        let ours = laid_out(&layer);
        let weight = ours.weight.val();
        assert_eq!(weight.dims(), [30, 20]);
        weight
            .into_data()
            .assert_eq(&layer.weight.val().into_data(), true);
        let x = Tensor::<3>::random([2, 5, 30], Distribution::Default, &device);
        ours.forward(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&layer.forward(x).into_data(), Tolerance::default());
        let again = laid_out(&ours);
        assert!(
            stored_transposed(&again.weight.val()).is_some(),
            "laid out once"
        );
    }

    #[test]
    fn half_precision_widens_exactly_for_every_bit_pattern() {
        use simd::Float;
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        let (halves, brains): (Vec<f16>, Vec<bf16>) = bits
            .iter()
            .map(|&b| (f16::from_bits(b), bf16::from_bits(b)))
            .unzip();
        let same = |ours: f32, reference: f32| {
            ours.to_bits() == reference.to_bits() || (ours.is_nan() && reference.is_nan())
        };
        let widened = f16::as_f32(&halves);
        for (value, ours) in halves.iter().zip(widened.iter()) {
            assert!(same(*ours, value.to_f32()), "{value:?}: {ours}");
        }
        let widened = bf16::as_f32(&brains);
        for (value, ours) in brains.iter().zip(widened.iter()) {
            assert!(same(*ours, value.to_f32()), "{value:?}: {ours}");
        }
    }

    #[test]
    fn half_precision_products_match_burns_in_the_same_dtype() {
        let device = Device::flex();
        for dtype in [DType::F16, DType::BF16] {
            // 300 inputs: each kernel's vector blocks (64 or 128 values) and a tail.
            let layer = LinearConfig::new(300, 37).init(&device);
            let layer = Linear {
                weight: layer.weight.map(|w| w.cast(dtype)),
                bias: layer.bias.map(|b| b.map(|b| b.cast(dtype))),
            };
            let x = Tensor::<3>::random([1, 3, 300], Distribution::Default, &device).cast(dtype);
            let residual = Tensor::<3>::random([1, 3, 37], Distribution::Default, &device);
            let residual = residual.cast(dtype);
            let ours =
                flex_linear(&laid_out(&layer), &x, Some(&residual)).expect("flex, half precision");
            assert_eq!(
                ours.dtype(),
                dtype,
                "the activations stay in the model's dtype"
            );
            // Ours sums in float32 and rounds once; burn's product may round more often.
            let tolerance = Tolerance::absolute(0.25).set_relative(2e-2);
            ours.cast(DType::F32).into_data().assert_approx_eq::<f32>(
                &(residual + layer.forward(x)).cast(DType::F32).into_data(),
                tolerance,
            );

            // 136 columns: the vectorized kernels' blocks of 64 and a tail.
            let embedding =
                Tensor::<2>::random([101, 136], Distribution::Default, &device).cast(dtype);
            let x = Tensor::<2>::random([2, 136], Distribution::Default, &device).cast(dtype);
            let logits = tied_head(&embedding, &x).expect("flex, half precision, few rows");
            assert_eq!(logits.dtype(), DType::F32, "selection reads float32 logits");
            let burns = x.matmul(embedding.transpose()).cast(DType::F32);
            logits
                .into_data()
                .assert_approx_eq::<f32>(&burns.into_data(), tolerance);
        }
    }

    #[test]
    fn bf16_prompt_products_are_float32_sums_of_exact_products() {
        // The bf16 kernel where the CPU has AVX-512 BF16 (`gemm` on widened copies elsewhere):
        // tiles of 8 rows and single rows, strips of 32 weight rows and a partial one, inputs
        // over three packed strips with an odd tail.
        let [m, k, n] = [29, 2 * 256 + 45, 37];
        let device = Device::flex();
        let values = |count: usize| -> Vec<bf16> {
            let random = Tensor::<1>::random([count], Distribution::Normal(0.0, 1.0), &device);
            random
                .into_data()
                .iter::<f32>()
                .map(bf16::from_f32)
                .collect()
        };
        let (x, w) = (values(m * k), values(n * k));
        let out = times_transposed(&x, &w, [m, k, n]);
        for (i, out) in out.chunks_exact(n).enumerate() {
            for (j, &ours) in out.iter().enumerate() {
                let products = x[i * k..][..k]
                    .iter()
                    .zip(&w[j * k..][..k])
                    .map(|(x, w)| f64::from(x.to_f32()) * f64::from(w.to_f32()));
                let (exact, magnitude) =
                    products.fold((0.0, 0.0), |(sum, size), p| (sum + p, size + p.abs()));
                // Float32 sums of `k` exact products, in any order.
                let bound = k as f64 * f64::from(f32::EPSILON) * magnitude;
                assert!(
                    (f64::from(ours) - exact).abs() <= bound,
                    "[{i}, {j}]: {ours} vs {exact} (bound {bound})"
                );
            }
        }
    }

    #[test]
    fn cached_attention_matches_burns_with_padding_causality_and_half_precision() {
        use crate::attention::cached_attention_by_burn;
        use crate::cache::KvCache;

        let device = Device::flex();
        let [heads, head_size] = [3, 8];
        let projections = |b, t| {
            Tensor::<3>::random(
                [b, t, 3 * heads * head_size],
                Distribution::Normal(0.0, 2.0),
                &device,
            )
        };
        let assert_close = |ours: Tensor<4>, burns: Tensor<4>, tolerance| {
            ours.cast(DType::F32)
                .into_data()
                .assert_approx_eq::<f32>(&burns.cast(DType::F32).into_data(), tolerance);
        };
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let tolerance = match dtype {
                DType::F32 => Tolerance::default(),
                _ => Tolerance::absolute(2e-2).set_relative(2e-2),
            };
            // A prompt filling a fresh cache (causal, no mask), a padded batch, then decode
            // steps past the first attended size, where the mask hides unwritten columns.
            // Prompts of 70 take the blocked path, over two query blocks.
            let prompts = [
                (vec![0], 4),
                (vec![0, 2], 3),
                (vec![0], 70),
                (vec![0, 9], 70),
            ];
            for (pads, prompt) in prompts {
                let b = pads.len();
                let mut cache = KvCache::with_capacity(prompt);
                cache.start_padded(pads);
                let mut layer = None;
                for t in std::iter::once(prompt).chain(std::iter::repeat_n(1, 40)) {
                    let step = cache.step(b, t, 128, &device, dtype);
                    let qkv = projections(b, t).cast(dtype);
                    let allocated = KeyValue::allocated(layer, &qkv, heads, &step);
                    let Ok((ours, written)) =
                        cached_attention(&qkv, allocated.clone(), &step, heads)
                    else {
                        panic!("flex tensors of a float dtype take the kernel")
                    };
                    assert_eq!(ours.dtype(), dtype);
                    let (burns, burn_written) =
                        cached_attention_by_burn(qkv, allocated, &step, heads);
                    assert_close(ours.unsqueeze(), burns.unsqueeze(), tolerance);
                    // The cache's values are copies: equal, whatever the dtype.
                    assert_eq!(written.key.to_data(), burn_written.key.into_data());
                    assert_eq!(written.value.to_data(), burn_written.value.into_data());
                    layer = Some(written);
                }
            }
        }
    }

    #[test]
    fn exponentials_are_within_two_ulp_of_libms() {
        let ulp = |x: f32| f32::from_bits(x.to_bits() + 1) - x;
        // Every 2^-10 over the range it serves, and below it (zero, as e^x has underflowed).
        for i in 0..=(100 << 10) {
            let x = -(i as f32) / 1024.0;
            let reference = x.exp();
            for ours in [
                simd::exp_of_negative::<false>(x),
                simd::exp_of_negative::<true>(x),
            ] {
                if x < -87.0 {
                    assert!(
                        ours == 0.0 || (ours - reference).abs() < 1e-37,
                        "e^{x}: {ours}"
                    );
                } else {
                    let error = (ours - reference).abs() / ulp(reference);
                    assert!(error <= 2.0, "e^{x}: {ours}, libm {reference}");
                }
            }
        }
        // The dispatched kernel, through its vector body and its tail: a softmax's numerators.
        let mut scores: Vec<f32> = (0..37).map(|i| i as f32 * 0.25).collect();
        let sum = simd::exp_minus(&mut scores, 9.0);
        let reference: Vec<f32> = (0..37).map(|i| (i as f32 * 0.25 - 9.0).exp()).collect();
        for (ours, reference) in scores.iter().zip(&reference) {
            assert!(
                (ours - reference).abs() <= 2.0 * ulp(*reference),
                "{ours} vs {reference}"
            );
        }
        assert!((sum - reference.iter().sum::<f32>()).abs() < 1e-5);
        assert_eq!(simd::exp_of_negative::<true>(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn softmax_matches_burns() {
        let device = Device::flex();
        // Rows of GPT-2's vocabulary and of a few values, logits spread as a model's are.
        for dims in [[2, 50257], [3, 5]] {
            let logits = Tensor::<2>::random(dims, Distribution::Normal(0.0, 8.0), &device);
            let ours = flex_softmax(&logits).expect("flex, float32: the vectorised pass");
            let burns = burn::tensor::activation::softmax(logits.clone(), 1);
            ours.into_data()
                .assert_approx_eq::<f32>(&burns.into_data(), Tolerance::default());
            // Another dtype goes through burn's, and stays in its dtype.
            let half = logits.cast(DType::BF16);
            let ours = softmax(half.clone());
            assert_eq!(ours.dtype(), DType::BF16);
            let burns = burn::tensor::activation::softmax(half, 1);
            assert_eq!(ours.into_data(), burns.into_data());
        }
    }

    #[test]
    fn tied_head_matches_the_transposed_product() {
        let device = Device::flex();
        let embedding = Tensor::<2>::random([101, 40], Distribution::Default, &device);
        for rows in [1, 5, MAX_ROWS + 1] {
            let x = Tensor::<2>::random([rows, 40], Distribution::Default, &device);
            let ours = tied_head(&embedding, &x).expect("flex, float32");
            let burns = x.matmul(embedding.clone().transpose());
            ours.into_data()
                .assert_approx_eq::<f32>(&burns.into_data(), Tolerance::default());
        }
    }

    #[test]
    fn layer_norm_matches_burns_in_every_dtype() {
        use burn::module::Param;
        use burn::nn::LayerNormConfig;

        let device = Device::flex();
        // 300 columns: the sums' blocks of 16 and a tail; 40 rows: three tasks' worth.
        let c = 300;
        for epsilon in [1e-5, 0.5] {
            let mut norm = LayerNormConfig::new(c).with_epsilon(epsilon).init(&device);
            let random = || Tensor::<1>::random([c], Distribution::Default, &device);
            norm.gamma = Param::from_tensor(random() * 2.0);
            norm.beta = Some(Param::from_tensor(random() - 0.5));
            // Far from zero mean, where one-pass variance would lose digits.
            let x = Tensor::<3>::random([2, 20, c], Distribution::Default, &device) * 4.0 + 30.0;
            for (dtype, tolerance) in [
                (DType::F32, Tolerance::absolute(1e-4)),
                (DType::F16, Tolerance::absolute(2e-2).set_relative(1e-2)),
                (DType::BF16, Tolerance::absolute(5e-2).set_relative(2e-2)),
            ] {
                let mut norm = norm.clone();
                norm.gamma = norm.gamma.map(|g| g.cast(dtype));
                norm.beta = norm.beta.map(|b| b.map(|b| b.cast(dtype)));
                let x = x.clone().cast(dtype);
                let ours = flex_layer_norm(&norm, epsilon, &x).expect("flex");
                assert_eq!(
                    ours.dtype(),
                    dtype,
                    "the activations stay in the model's dtype"
                );
                ours.cast(DType::F32).into_data().assert_approx_eq::<f32>(
                    &norm.forward(x).cast(DType::F32).into_data(),
                    tolerance,
                );
            }
        }
    }
}
