//! The model's weight matrices: burn-nn's `Linear` and `Embedding`, as the checkpoint names their
//! parameters, with one addition each: on flex, the matrix may be held in llama.cpp's quantized
//! blocks ([`QuantizedWeight`]) instead of its float parameter, as candle's quantized models
//! hold a `QMatMul` where the float ones hold a tensor.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::nn::{EmbeddingConfig, LinearConfig};
use burn::tensor::{Device, Int, Tensor};
use nexttoken_cpu::quant::{
    BLOCK_VALUES, Block, BlockQ4_0, BlockQ8_0, dequantize, quantize_q4_0, quantize_q8_0,
    times_transposed_quantized,
};

use crate::quantized::Quantization;

/// `y = x · W + b` for a `[k, n]` weight, as burn-nn's `Linear` (`weight`, `bias`).
#[derive(Module, Debug)]
pub struct Linear {
    /// `[k, n]`; empty once the layer is quantized, when `quantized` holds its values.
    pub weight: Param<Tensor<2>>,
    /// `[n]`
    pub bias: Option<Param<Tensor<1>>>,
    /// The weight in blocks, each output's `k` values together (flex only).
    #[module(skip)]
    pub quantized: Option<QuantizedWeight>,
}

impl Linear {
    /// A `[k, n]` layer with burn-nn's initialisation.
    pub fn new(k: usize, n: usize, device: &Device) -> Self {
        let layer = LinearConfig::new(k, n).init(device);
        Self {
            weight: layer.weight,
            bias: layer.bias,
            quantized: None,
        }
    }

    /// burn's product, for a float weight on any backend.
    ///
    /// # Shapes
    /// - x: `[.., k]` -> `[.., n]`
    ///
    /// # Panics
    /// If the layer is quantized: quantized layers are flex's, whose path is `flex::linear`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        assert!(
            self.quantized.is_none(),
            "a quantized layer runs on flex's kernels only"
        );
        burn::tensor::module::linear(x, self.weight.val(), self.bias.as_ref().map(Param::val))
    }
}

/// A lookup table of `[rows, width]` vectors, as burn-nn's `Embedding` (`weight`).
#[derive(Module, Debug)]
pub struct Embedding {
    /// `[rows, width]`; empty once quantized, when `quantized` holds its values.
    pub weight: Param<Tensor<2>>,
    /// The rows in blocks (flex only).
    #[module(skip)]
    pub quantized: Option<QuantizedWeight>,
}

impl Embedding {
    /// A table with burn-nn's initialisation.
    pub fn new(rows: usize, width: usize, device: &Device) -> Self {
        Self {
            weight: EmbeddingConfig::new(rows, width).init(device).weight,
            quantized: None,
        }
    }

    /// How many vectors the table holds.
    pub fn rows(&self) -> usize {
        match &self.quantized {
            Some(quantized) => quantized.rows,
            None => self.weight.dims()[0],
        }
    }

    /// The rows of `ids`, for a float table on any backend.
    ///
    /// # Shapes
    /// - ids: `[b, t]` -> `[b, t, width]`
    ///
    /// # Panics
    /// If the table is quantized (`flex::embed` gathers those).
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        assert!(
            self.quantized.is_none(),
            "a quantized table is read on flex only"
        );
        burn::tensor::module::embedding(self.weight.val(), ids)
    }
}

/// A matrix of `rows` rows of `k` values in llama.cpp's blocks: Q8_0 or Q4_0, bit for bit as a
/// GGUF file holds them. Cheap to clone (the blocks are shared).
#[derive(Clone, Debug)]
pub struct QuantizedWeight {
    rows: usize,
    k: usize,
    blocks: Blocks,
}

#[derive(Clone, Debug)]
enum Blocks {
    Q8_0(Arc<[BlockQ8_0]>),
    Q4_0(Arc<[BlockQ4_0]>),
}

impl QuantizedWeight {
    /// `values` (`rows` rows of `k`) quantized as llama.cpp's reference quantizer rounds.
    ///
    /// # Panics
    /// If `k` is not a multiple of 32 or `values` does not hold `rows × k` values.
    pub fn quantize(values: &[f32], [rows, k]: [usize; 2], quantization: Quantization) -> Self {
        assert_eq!(values.len(), rows * k, "[{rows}, {k}]");
        Self::quantize_rows([rows, k], quantization, |row, out| {
            out.copy_from_slice(&values[row * k..(row + 1) * k]);
        })
    }

    /// A `[rows, k]` matrix quantized row by row, `fill(row, out)` writing each row's float
    /// values: a matrix widened from another format (a GGUF's Q6_K) never needs all its floats
    /// at once.
    ///
    /// # Panics
    /// If `k` is not a multiple of 32.
    pub fn quantize_rows(
        [rows, k]: [usize; 2],
        quantization: Quantization,
        fill: impl FnMut(usize, &mut [f32]),
    ) -> Self {
        assert_eq!(k % BLOCK_VALUES, 0, "k = {k}");
        fn quantized<B: Block>(
            [rows, k]: [usize; 2],
            quantize: fn(&[f32]) -> Vec<B>,
            mut fill: impl FnMut(usize, &mut [f32]),
        ) -> Arc<[B]> {
            let per_row = k / BLOCK_VALUES;
            let mut blocks = Arc::<[B]>::new_uninit_slice(rows * per_row);
            let out = Arc::get_mut(&mut blocks).expect("not shared yet");
            let mut values = vec![0.0; k];
            for (row, out) in out.chunks_exact_mut(per_row).enumerate() {
                fill(row, &mut values);
                for (out, block) in out.iter_mut().zip(quantize(&values)) {
                    out.write(block);
                }
            }
            // SAFETY: each of the `rows` rows wrote its `per_row` blocks.
            unsafe { blocks.assume_init() }
        }
        let blocks = match quantization {
            Quantization::Q8_0 => Blocks::Q8_0(quantized([rows, k], quantize_q8_0, fill)),
            Quantization::Q4_0 => Blocks::Q4_0(quantized([rows, k], quantize_q4_0, fill)),
        };
        Self { rows, k, blocks }
    }

    /// The matrix whose blocks are `bytes`, as a GGUF file stores a `[rows, k]` tensor of
    /// `quantization`'s type; `None` if `bytes` is not that many blocks.
    pub fn from_bytes(
        bytes: &[u8],
        [rows, k]: [usize; 2],
        quantization: Quantization,
    ) -> Option<Self> {
        if k % BLOCK_VALUES != 0 {
            return None;
        }
        let blocks = rows * k / BLOCK_VALUES;
        // Copied into blocks of their own: aligned whatever the file's offset, and apart from
        // the file, which can then be closed.
        fn copied<B: Block + Default>(bytes: &[u8], blocks: usize) -> Option<Arc<[B]>> {
            if bytes.len() != blocks * std::mem::size_of::<B>() {
                return None;
            }
            // Filled in place: a Vec turned into an `Arc` would be copied once more.
            let mut out: Arc<[B]> = std::iter::repeat_n(B::default(), blocks).collect();
            let slots = Arc::get_mut(&mut out).expect("not shared yet");
            B::as_bytes_mut(slots).copy_from_slice(bytes);
            Some(out)
        }
        let blocks = match quantization {
            Quantization::Q8_0 => Blocks::Q8_0(copied(bytes, blocks)?),
            Quantization::Q4_0 => Blocks::Q4_0(copied(bytes, blocks)?),
        };
        Some(Self { rows, k, blocks })
    }

    pub fn quantization(&self) -> Quantization {
        match self.blocks {
            Blocks::Q8_0(_) => Quantization::Q8_0,
            Blocks::Q4_0(_) => Quantization::Q4_0,
        }
    }

    /// `[rows, k]`
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.k]
    }

    /// The blocks' bytes, as a GGUF file holds them.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.blocks {
            Blocks::Q8_0(blocks) => BlockQ8_0::as_bytes(blocks),
            Blocks::Q4_0(blocks) => BlockQ4_0::as_bytes(blocks),
        }
    }

    /// `x · Wᵀ` for float32 `x: [m, k]`, as float32 `[m, rows]`, on every thread of the current
    /// pool ([`times_transposed_quantized`]).
    pub(crate) fn times_transposed(&self, x: &[f32], m: usize) -> Vec<f32> {
        let dims = [m, self.k, self.rows];
        match &self.blocks {
            Blocks::Q8_0(w) => times_transposed_quantized(x, w, dims),
            Blocks::Q4_0(w) => times_transposed_quantized(x, w, dims),
        }
    }

    /// Row `row`'s `k` values as float32 into `out`.
    pub(crate) fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let per_row = self.k / BLOCK_VALUES;
        let blocks = row * per_row..(row + 1) * per_row;
        match &self.blocks {
            Blocks::Q8_0(all) => dequantize(&all[blocks], out),
            Blocks::Q4_0(all) => dequantize(&all[blocks], out),
        }
    }
}

/// What stands in a quantized matrix's float parameter: nothing reads it.
pub(crate) fn emptied(device: &Device) -> Param<Tensor<2>> {
    Param::from_tensor(Tensor::empty([0, 0], device))
}
