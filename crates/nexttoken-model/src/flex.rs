//! The glue from burn-flex's tensors to `nexttoken-cpu`'s kernels: the forward pass's hot
//! operations on flex, our own where burn-flex's leave the CPU idle or do extra work (a decode
//! step's few-row products and attention over the cache, a prompt's attention, layer norm,
//! GPT-2's GELU, softmax).
//!
//! Each function takes burn's path unchanged on any other backend, dtype or layout: the
//! kernels are reached through burn's backend-extension door (`Tensor::try_into_primitive`).
//! A `Linear`'s `[k, n]` weight is stored on flex as its `[n, k]` transpose
//! ([`stored_by_output`], at load), so that each output's weights lie together and a decode
//! step's products are dot products over contiguous rows, as the tied head's `[v, c]`
//! embedding already lies.

use burn::backend::flex::FlexTensor;
use burn::backend::{DispatchDevice, Flex};
use burn::nn::LayerNorm;
use burn::tensor::{DType, Device, Element, Int, Tensor, TensorData, bf16, f16};
use nexttoken_cpu::{Attention, AttentionRow, Float};
use rayon::prelude::*;

use crate::cache::{BLOCK_SIZE, CacheStep, KeyValue};
use crate::linear::{Embedding, Linear};

/// Runs a forward pass with the current rayon pool's threads kept on it when `device` is flex
/// ([`nexttoken_cpu::in_pool`]); as it is on any other device.
pub(crate) fn in_cpu_pool<R: Send>(device: &Device, pass: impl FnOnce() -> R + Send) -> R {
    if matches!(device.as_dispatch(), DispatchDevice::Flex(_)) {
        nexttoken_cpu::in_pool(pass)
    } else {
        pass()
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
pub(crate) fn tied_head(embedding: &Embedding, x: &Tensor<2>) -> Option<Tensor<2>> {
    let [m, c] = x.dims();
    let v = embedding.rows();
    if let Some(quantized) = &embedding.quantized {
        let x = flex_activation(x)?;
        return Some(from_flex(quantized.times_transposed(&x, m), [m, v]));
    }
    let embedding = flex(&embedding.weight.val())?;
    let x = contiguous_flex(x)?;
    let x = values(&x)?;
    let logits = with_values!(values(&embedding)?, |embedding| {
        with_values!(x, |x| nexttoken_cpu::times_transposed(
            x,
            embedding,
            [m, c, v]
        ))
    });
    Some(from_flex(logits, [m, v]))
}

/// A `[k, n]` `Linear` whose weight is laid out by [`stored_by_output`] whenever it gets its
/// values: at random initialisation (lazily, as burn creates them) and as each is loaded from a
/// checkpoint. Laid out as it arrives, a loading model holds one matrix twice at most, where
/// laying out the finished model kept the allocator's freed copies beside it.
pub(crate) fn laid_out_linear(k: usize, n: usize, device: &Device) -> Linear {
    let layer = Linear::new(k, n, device);
    Linear {
        weight: layer
            .weight
            .init_mapper(stored_by_output)
            .load_mapper(stored_by_output),
        ..layer
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

/// Attention over the cache on flex, from the step's fused projections: each row's new keys and
/// values written into its blocks of `layer`, then each query's attention over its row's
/// positions up to its own ([`nexttoken_cpu::Attention`]). Gives `layer` back where burn's path
/// applies ([`crate::attention::cached_attention_by_burn`]).
///
/// # Shapes
/// - qkv: `[1, n, 3c]`, the layer: `[blocks, n_head, BLOCK_SIZE, c / n_head]` each -> `[1, n, c]`
pub(crate) fn cached_attention(
    qkv: &Tensor<3>,
    layer: KeyValue,
    step: &CacheStep,
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
    // The layer's tensors are its storage's only other handles: without them, the writes below
    // go in place (a cache shared with a clone is copied first, as `slice_assign` copies it).
    drop(layer);
    let rows: Vec<AttentionRow> = step
        .rows
        .iter()
        .map(|row| AttentionRow {
            start: row.start,
            positions: row.positions,
            blocks: &row.blocks,
        })
        .collect();
    let attention = Attention {
        heads,
        head_size: width / 3 / heads,
        block_size: BLOCK_SIZE,
        rows: &rows,
    };
    let y = match (
        values(&projections),
        values_mut(&mut key),
        values_mut(&mut value),
    ) {
        (Some(Values::F32(qkv)), Some(ValuesMut::F32(key)), Some(ValuesMut::F32(value))) => {
            attention.attend(qkv, key, value)
        }
        (Some(Values::F16(qkv)), Some(ValuesMut::F16(key)), Some(ValuesMut::F16(value))) => {
            attention.attend(qkv, key, value)
        }
        (Some(Values::Bf16(qkv)), Some(ValuesMut::Bf16(key)), Some(ValuesMut::Bf16(value))) => {
            attention.attend(qkv, key, value)
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
    values
        .par_chunks_mut(CHUNK)
        .for_each(nexttoken_cpu::gelu_new);
    Some(from_flex_as(values, x.dims(), dtype))
}

/// `softmax(x, D - 1)`, the probabilities over the last dimension, on any backend. On flex, for
/// float32 (the logits the model returns), each row takes one vectorised pass on the calling
/// thread ([`nexttoken_cpu::softmax_in_place`]): burn-flex's hands even a single row to rayon's
/// pool from outside it, a wake-up and a wait every step.
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
        .for_each(nexttoken_cpu::softmax_in_place);
    Some(from_flex(probabilities, dims))
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
            .for_each(|rows| nexttoken_cpu::layer_norm(rows, gamma, beta, epsilon as f32));
    });
    Some(from_flex_as(activations, x.dims(), dtype))
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
    let bias = match &layer.bias {
        Some(bias) => Some(flex(&bias.val())?),
        None => None,
    };
    let residual = match residual {
        Some(residual) => Some(flex(residual)?),
        None => None,
    };
    let dtype = x.dtype();
    let (n, mut out) = match &layer.quantized {
        Some(quantized) => {
            let out = quantized.times_transposed(&flex_activation(x)?, m);
            (quantized.dims()[0], out)
        }
        None => {
            let weight = stored_transposed(&layer.weight.val())?;
            let x = contiguous_flex(x)?;
            let x = values(&x)?;
            let n = weight.layout().shape()[0];
            let out = with_values!(values(&weight)?, |weight| {
                with_values!(x, |x| nexttoken_cpu::times_transposed(x, weight, [m, k, n]))
            });
            (n, out)
        }
    };
    let bias = match &bias {
        Some(bias) => Some(with_values!(values(bias)?, |bias| nexttoken_cpu::widened(
            bias
        ))),
        None => None,
    };
    let residual = match &residual {
        Some(residual) => Some(with_values!(values(residual)?, |r| Float::as_f32(r))),
        None => None,
    };
    out.par_chunks_mut(n).enumerate().for_each(|(row, out)| {
        if let Some(bias) = &bias {
            out.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
        }
        if let Some(residual) = &residual {
            with_half!(dtype, |Half| nexttoken_cpu::round_through::<Half>(out), _ => ());
            let residual = &residual[row * n..][..n];
            out.iter_mut().zip(residual).for_each(|(y, r)| *y += r);
        }
    });
    let mut out_dims = dims;
    out_dims[D - 1] = n;
    // The activations stay in the model's dtype; the products were summed in float32.
    Some(from_flex_as(out, out_dims, dtype))
}

/// `embedding.forward(ids)`, the rows of `ids`, on any backend; from quantized rows (flex's)
/// dequantized as they are gathered.
///
/// # Shapes
/// - ids: `[b, t]` -> `[b, t, width]`
///
/// # Panics
/// If an id is not below the embedding's rows.
pub(crate) fn embed(embedding: &Embedding, ids: Tensor<2, Int>) -> Tensor<3> {
    let Some(quantized) = &embedding.quantized else {
        return embedding.forward(ids);
    };
    let [rows, width] = quantized.dims();
    let [b, t] = ids.dims();
    let ids = ids
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("converted to i64");
    let mut out = vec![0.0; ids.len() * width];
    for (&id, out) in ids.iter().zip(out.chunks_exact_mut(width)) {
        let row = usize::try_from(id)
            .ok()
            .filter(|&row| row < rows)
            .unwrap_or_else(|| panic!("id {id} is not below the vocabulary's {rows}"));
        quantized.dequantize_row(row, out);
    }
    from_flex(out, [b, t, width])
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
    Some(with_values!(values(&primitive)?, |x| {
        nexttoken_cpu::widened(x)
    }))
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
        |Half| from_flex(nexttoken_cpu::narrowed::<Half>(&values), dims),
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

#[cfg(test)]
mod tests {
    use burn::store::ModuleSnapshot;
    use burn::tensor::{Device, Distribution, Tolerance};

    use nexttoken_cpu::MAX_DOT_ROWS;

    use super::*;

    /// An embedding table of `weight`.
    fn table(weight: &Tensor<2>) -> Embedding {
        Embedding {
            weight: burn::module::Param::from_tensor(weight.clone()),
            quantized: None,
        }
    }

    /// `layer` with its weight laid out as a loaded model's are.
    fn laid_out(layer: &Linear) -> Linear {
        Linear {
            weight: layer.weight.clone().map(stored_by_output),
            bias: layer.bias.clone(),
            quantized: None,
        }
    }

    #[test]
    fn linear_matches_burns_for_every_row_count() {
        let device = Device::flex();
        // 37 outputs: several tasks' rows and a partial one; 300 inputs: the dot products'
        // vector blocks and a tail.
        let layer = crate::seeded::seeded(Linear::new(300, 37, &device), 2026);
        let ours = laid_out(&layer);
        for rows in [1, 3, MAX_DOT_ROWS, MAX_DOT_ROWS + 1, 100] {
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
        let source = crate::seeded::seeded(Linear::new(30, 20, &device), 2026);
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
        let layer = crate::seeded::seeded(Linear::new(30, 20, &device), 2026);
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
    fn half_precision_products_match_burns_in_the_same_dtype() {
        let device = Device::flex();
        for dtype in [DType::F16, DType::BF16] {
            // 300 inputs: each kernel's vector blocks (64 or 128 values) and a tail.
            let layer = crate::seeded::seeded(Linear::new(300, 37, &device), 2026);
            let layer = Linear {
                weight: layer.weight.map(|w| w.cast(dtype)),
                bias: layer.bias.map(|b| b.map(|b| b.cast(dtype))),
                quantized: None,
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
            let logits = tied_head(&table(&embedding), &x).expect("flex, half precision, few rows");
            assert_eq!(logits.dtype(), DType::F32, "selection reads float32 logits");
            let burns = x.matmul(embedding.transpose()).cast(DType::F32);
            logits
                .into_data()
                .assert_approx_eq::<f32>(&burns.into_data(), tolerance);
        }
    }

    #[test]
    fn cached_attention_matches_burns_for_mixed_rows_in_every_dtype() {
        use crate::attention::cached_attention_by_burn;
        use crate::cache::KvCache;

        let device = Device::flex();
        let [heads, head_size] = [3, 8];
        let assert_close = |ours: Tensor<3>, burns: Tensor<3>, tolerance| {
            ours.cast(DType::F32)
                .into_data()
                .assert_approx_eq::<f32>(&burns.cast(DType::F32).into_data(), tolerance);
        };
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let tolerance = match dtype {
                DType::F32 => Tolerance::default(),
                _ => Tolerance::absolute(2e-2).set_relative(2e-2),
            };
            let mut cache = KvCache::new();
            let rows = [cache.add_row(), cache.add_row(), cache.add_row()];
            // Whole prompts of any lengths (70: blocked queries), then decode steps beside
            // later chunks, a row leaving and its blocks going to a newcomer.
            let steps: [[usize; 3]; 5] =
                [[70, 5, 1], [1, 20, 1], [1, 1, 1], [3, 1, 40], [1, 17, 1]];
            let mut layer = None;
            for (round, sizes) in steps.into_iter().enumerate() {
                if round == 3 {
                    cache.remove_row(rows[1]);
                }
                let ids: Vec<Vec<u32>> = sizes.iter().map(|&t| vec![round as u32; t]).collect();
                let chunks: Vec<_> = cache.rows().zip(ids.iter().map(Vec::as_slice)).collect();
                let step = cache.step(&chunks, 128);
                let tokens = chunks.iter().map(|(_, ids)| ids.len()).sum();
                let qkv = Tensor::<3>::random(
                    [1, tokens, 3 * heads * head_size],
                    Distribution::Normal(0.0, 2.0),
                    &device,
                )
                .cast(dtype);
                let allocated =
                    KeyValue::allocated(layer, [heads, head_size], &step, &device, dtype);
                let Ok((ours, written)) = cached_attention(&qkv, allocated.clone(), &step, heads)
                else {
                    panic!("flex tensors of a float dtype take the kernel")
                };
                assert_eq!(ours.dtype(), dtype);
                let (burns, burn_written) = cached_attention_by_burn(qkv, allocated, &step, heads);
                assert_close(ours, burns, tolerance);
                // The cache's values are copies: equal, whatever the dtype.
                assert_eq!(written.key.to_data(), burn_written.key.into_data());
                assert_eq!(written.value.to_data(), burn_written.value.into_data());
                layer = Some(written);
            }
        }
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
        for rows in [1, 5, MAX_DOT_ROWS + 1] {
            let x = Tensor::<2>::random([rows, 40], Distribution::Default, &device);
            let ours = tied_head(&table(&embedding), &x).expect("flex, float32");
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
