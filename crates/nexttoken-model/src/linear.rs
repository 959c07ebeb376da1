//! The model's weight matrices: burn-nn's `Linear` and `Embedding`, as the checkpoint names their
//! parameters, with one addition each: on flex, the matrix may be held in llama.cpp's quantized
//! blocks ([`QuantizedWeight`]) instead of its float parameter, as candle's quantized models
//! hold a `QMatMul` where the float ones hold a tensor.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::nn::{EmbeddingConfig, LinearConfig};
use burn::tensor::{Device, Int, Tensor};
use nexttoken_cpu::quant::{
    BLOCK_VALUES, BlockQ4_0, BlockQ8_0, Interleave, Interleaved, quantize_q4_0, quantize_q8_0,
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
            Some(quantized) => quantized.dims()[0],
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

/// A matrix of `rows` rows of `k` values in llama.cpp's blocks: Q8_0 or Q4_0, the blocks bit
/// for bit as a GGUF file holds them, the rows regrouped eight at a time for the products
/// ([`Interleaved`]). Cheap to clone (the blocks are shared).
#[derive(Clone, Debug)]
pub struct QuantizedWeight {
    blocks: Blocks,
}

#[derive(Clone, Debug)]
enum Blocks {
    Q8_0(Arc<Interleaved<BlockQ8_0>>),
    Q4_0(Arc<Interleaved<BlockQ4_0>>),
}

/// `$body` with `$matrix` bound to the weight's [`Interleaved`] matrix, whichever its blocks.
macro_rules! with_matrix {
    ($blocks:expr, |$matrix:ident| $body:expr) => {
        match $blocks {
            Blocks::Q8_0($matrix) => $body,
            Blocks::Q4_0($matrix) => $body,
        }
    };
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
        fn quantized<B: Interleave>(
            [rows, k]: [usize; 2],
            quantize: fn(&[f32]) -> Vec<B>,
            mut fill: impl FnMut(usize, &mut [f32]),
        ) -> Arc<Interleaved<B>> {
            let mut values = vec![0.0; k];
            Arc::new(Interleaved::from_rows(
                [rows, k / BLOCK_VALUES],
                |row, out| {
                    fill(row, &mut values);
                    out.copy_from_slice(&quantize(&values));
                },
            ))
        }
        let blocks = match quantization {
            Quantization::Q8_0 => Blocks::Q8_0(quantized([rows, k], quantize_q8_0, fill)),
            Quantization::Q4_0 => Blocks::Q4_0(quantized([rows, k], quantize_q4_0, fill)),
        };
        Self { blocks }
    }

    /// The matrix whose blocks are `bytes`, as a GGUF file stores a `[rows, k]` tensor of
    /// `quantization`'s type; `None` if `bytes` is not that many blocks.
    pub fn from_bytes(
        bytes: &[u8],
        [rows, k]: [usize; 2],
        quantization: Quantization,
    ) -> Option<Self> {
        if k % BLOCK_VALUES != 0 || rows == 0 {
            return None;
        }
        let blocks = rows * k / BLOCK_VALUES;
        fn regrouped<B: Interleave>(
            bytes: &[u8],
            [rows, blocks]: [usize; 2],
        ) -> Option<Arc<Interleaved<B>>> {
            if bytes.len() != blocks * std::mem::size_of::<B>() {
                return None;
            }
            let matrix = match B::from_bytes(bytes) {
                Some(blocks) => Interleaved::new(blocks, rows),
                // A GGUF aligns its tensors; bytes from elsewhere may not be: copied first.
                None => {
                    let mut aligned = vec![B::default(); blocks];
                    B::as_bytes_mut(&mut aligned).copy_from_slice(bytes);
                    Interleaved::new(&aligned, rows)
                }
            };
            Some(Arc::new(matrix))
        }
        let blocks = match quantization {
            Quantization::Q8_0 => Blocks::Q8_0(regrouped(bytes, [rows, blocks])?),
            Quantization::Q4_0 => Blocks::Q4_0(regrouped(bytes, [rows, blocks])?),
        };
        Some(Self { blocks })
    }

    pub fn quantization(&self) -> Quantization {
        match self.blocks {
            Blocks::Q8_0(_) => Quantization::Q8_0,
            Blocks::Q4_0(_) => Quantization::Q4_0,
        }
    }

    /// `[rows, k]`
    pub fn dims(&self) -> [usize; 2] {
        with_matrix!(&self.blocks, |matrix| [
            matrix.rows(),
            matrix.blocks_per_row() * BLOCK_VALUES
        ])
    }

    /// The blocks' bytes in row order, as a GGUF file holds them.
    pub fn gguf_bytes(&self) -> Vec<u8> {
        fn bytes<B: Interleave>(matrix: &Interleaved<B>) -> Vec<u8> {
            B::as_bytes(&matrix.to_blocks()).to_vec()
        }
        with_matrix!(&self.blocks, |matrix| bytes(matrix))
    }

    /// `x · Wᵀ` for float32 `x: [m, k]`, as float32 `[m, rows]`, on every thread of the current
    /// pool ([`Interleaved::times_transposed`]).
    pub(crate) fn times_transposed(&self, x: &[f32], m: usize) -> Vec<f32> {
        with_matrix!(&self.blocks, |matrix| matrix.times_transposed(x, m))
    }

    /// Row `row`'s `k` values as float32 into `out`.
    pub(crate) fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        with_matrix!(&self.blocks, |matrix| matrix.dequantize_row(row, out))
    }
}

/// What stands in a quantized matrix's float parameter: nothing reads it.
pub(crate) fn emptied(device: &Device) -> Param<Tensor<2>> {
    Param::from_tensor(Tensor::empty([0, 0], device))
}
