//! 8- and 4-bit weights: a float model's products quantized to llama.cpp's Q8_0 or Q4_0 blocks,
//! computed by `nexttoken-cpu`'s integer kernels on flex.
//!
//! Which tensors are quantized follows llama.cpp's `llama-quantize` for GPT-2: every matrix of
//! the blocks (`c_attn`, `c_proj`, `c_fc`, the MLP's `c_proj`) and the token embedding, which is
//! also the output head; the position embedding, layer norms and biases stay in float32
//! (llama.cpp keeps `position_embd` and every 1-D tensor unquantized). The head keeps more bits
//! than 4: llama-quantize writes it in Q6_K for a 4-bit file (Q8_0 where the width is not a
//! whole 256-value super-block), and without a Q6_K kernel here it is Q8_0 in both Q8_0 and Q4_0
//! models. Activations and the KV cache are float32, as in llama.cpp.

use std::fmt;
use std::str::FromStr;

use burn::backend::DispatchDevice;
use burn::module::Param;
use burn::tensor::Tensor;

use crate::error::ModelError;
use crate::linear::{QuantizedWeight, emptied};
use crate::model::Gpt2;

/// A block format for the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)] // llama.cpp's names, as its users know them
pub enum Quantization {
    /// 32 int8 values and an f16 scale a block: 8.5 bits a weight.
    Q8_0,
    /// 32 four-bit values and an f16 scale a block: 4.5 bits a weight.
    Q4_0,
}

impl Quantization {
    pub const ALL: [Quantization; 2] = [Quantization::Q8_0, Quantization::Q4_0];

    /// llama.cpp's name: `q8_0`, `q4_0`.
    pub fn name(self) -> &'static str {
        match self {
            Quantization::Q8_0 => "q8_0",
            Quantization::Q4_0 => "q4_0",
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Quantization {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("unknown quantization `{name}`: expected q8_0 or q4_0"))
    }
}

impl Gpt2 {
    /// The model with its matrices in `quantization`'s blocks (see the module's docs for
    /// which), quantized as llama.cpp's reference quantizer rounds, one tensor at a time.
    ///
    /// # Errors
    /// If the model is not on flex (the integer kernels are flex's), is quantized already, or a
    /// matrix's rows are not a whole number of 32-value blocks (every GPT-2 size's are).
    pub fn quantized(mut self, quantization: Quantization) -> Result<Self, ModelError> {
        let device = self.wpe.weight.device();
        if !matches!(device.as_dispatch(), DispatchDevice::Flex(_)) {
            return Err(ModelError::QuantizedOffFlex {
                quantization: quantization.name(),
            });
        }
        if self.quantization().is_some() {
            return Err(ModelError::AlreadyQuantized);
        }
        for (i, block) in self.h.iter_mut().enumerate() {
            for (name, linear) in [
                ("attn.c_attn", &mut block.attn.c_attn),
                ("attn.c_proj", &mut block.attn.c_proj),
                ("mlp.c_fc", &mut block.mlp.c_fc),
                ("mlp.c_proj", &mut block.mlp.c_proj),
            ] {
                let (quantized, emptied) =
                    quantize(&linear.weight, true, quantization, &format!("h.{i}.{name}"))?;
                linear.quantized = Some(quantized);
                linear.weight = emptied;
            }
        }
        let (quantized, emptied) = quantize(&self.wte.weight, false, Quantization::Q8_0, "wte")?;
        self.wte.quantized = Some(quantized);
        self.wte.weight = emptied;
        Ok(self)
    }

    /// The block format of the model's matrices, or `None` for float weights. (Its token
    /// embedding may be in another format, or in floats: a GGUF file's choice.)
    pub fn quantization(&self) -> Option<Quantization> {
        let first = self.h.first().map(|block| &block.attn.c_attn);
        first
            .and_then(|layer| layer.quantized.as_ref())
            .or(self.wte.quantized.as_ref())
            .map(QuantizedWeight::quantization)
    }
}

/// `weight` in blocks, each output's values together (a `Linear`'s `[k, n]` is `transposed`,
/// an embedding's `[rows, k]` is not), and the empty parameter left in its place.
fn quantize(
    weight: &Param<Tensor<2>>,
    transposed: bool,
    quantization: Quantization,
    name: &str,
) -> Result<(QuantizedWeight, Param<Tensor<2>>), ModelError> {
    let weight = weight.val();
    let [rows, columns] = weight.dims();
    let [n, k] = if transposed {
        [columns, rows]
    } else {
        [rows, columns]
    };
    if k % nexttoken_cpu::quant::BLOCK_VALUES != 0 {
        return Err(ModelError::NotQuantizable {
            name: format!("{name}.weight"),
            k,
            quantization: quantization.name(),
        });
    }
    let by_output = if transposed {
        weight.clone().transpose()
    } else {
        weight.clone()
    };
    let values: Vec<f32> = by_output
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("converted to f32");
    let quantized = QuantizedWeight::quantize(&values, [n, k], quantization);
    Ok((quantized, emptied(&weight.device())))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{DType, Device, Tensor, TensorData};

    use super::*;
    use crate::model::tests::tiny;
    use crate::{Gpt2Config, KvCache, token_tensor};

    /// The smallest shape whose matrices are whole blocks: width 64, MLP 256.
    fn blocky() -> Gpt2Config {
        Gpt2Config {
            n_embd: 64,
            vocab_size: 48,
            n_positions: 32,
            ..tiny()
        }
    }

    fn values(logits: Tensor<2>) -> Vec<f32> {
        logits
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .expect("f32")
    }

    /// How far `got` is from `expected`, relative to `expected`'s spread.
    fn relative_error(got: &[f32], expected: &[f32]) -> f32 {
        let mean = expected.iter().sum::<f32>() / expected.len() as f32;
        let spread = (expected.iter().map(|e| (e - mean).powi(2)).sum::<f32>()
            / expected.len() as f32)
            .sqrt();
        let error = (got
            .iter()
            .zip(expected)
            .map(|(g, e)| (g - e).powi(2))
            .sum::<f32>()
            / expected.len() as f32)
            .sqrt();
        error / spread
    }

    #[test]
    fn quantized_models_compute_what_their_float_model_does_within_the_rounding() {
        let device = Device::flex();
        let ids = [[3u32, 7, 1, 40, 12, 0, 9, 33]];
        let float = blocky().init_seeded(&device, 11);
        let expected = values(float.forward_last(token_tensor(&[&ids[0]], &device)));
        for (quantization, tolerance) in [(Quantization::Q8_0, 0.02), (Quantization::Q4_0, 0.25)] {
            let model = blocky()
                .init_seeded(&device, 11)
                .quantized(quantization)
                .expect("whole blocks");
            assert_eq!(model.quantization(), Some(quantization));
            assert_eq!(
                (model.dtype(), model.width(), model.vocab_size()),
                (DType::F32, 64, 48)
            );
            assert_eq!(model.kv_block_bytes(), float.kv_block_bytes());
            let got = values(model.forward_last(token_tensor(&[&ids[0]], &device)));
            let error = relative_error(&got, &expected);
            assert!(error < tolerance, "{quantization}: {error}");
            // The cached path (decode rows, chunks) runs the same products.
            let mut cache = KvCache::new();
            let prefix = model.prefill(&[&ids[0][..5]], &mut cache);
            assert_eq!(prefix.dims(), [1, 48]);
            let cached = values(model.forward_cached(&[&ids[0][5..]], &mut cache));
            let cached_error = relative_error(&cached, &got);
            assert!(cached_error < 1e-4, "{quantization}: cached {cached_error}");
        }
    }

    /// Quantization error, not a layout error: each weight row keeps its values (a transposed
    /// or shifted row would leave almost nothing of the float model's logits).
    #[test]
    fn q8_0_rounding_is_far_below_a_layout_error() {
        let device = Device::flex();
        let ids = [5u32, 9, 2];
        let float = blocky().init_seeded(&device, 3);
        let other = blocky().init_seeded(&device, 4);
        let expected = values(float.forward_last(token_tensor(&[&ids], &device)));
        let unrelated = values(other.forward_last(token_tensor(&[&ids], &device)));
        let quantized = blocky()
            .init_seeded(&device, 3)
            .quantized(Quantization::Q8_0)
            .expect("whole blocks");
        let got = values(quantized.forward_last(token_tensor(&[&ids], &device)));
        assert!(relative_error(&got, &expected) * 20.0 < relative_error(&unrelated, &expected));
    }

    #[test]
    fn models_that_cannot_be_quantized_say_why() {
        let device = Device::flex();
        let error = tiny()
            .init_seeded(&device, 1)
            .quantized(Quantization::Q4_0)
            .expect_err("width 8");
        assert!(
            error
                .to_string()
                .contains("`h.0.attn.c_attn.weight` has rows of 8 values"),
            "{error}"
        );
        let twice = blocky()
            .init_seeded(&device, 1)
            .quantized(Quantization::Q8_0)
            .expect("once")
            .quantized(Quantization::Q4_0)
            .expect_err("twice");
        assert!(matches!(twice, ModelError::AlreadyQuantized), "{twice}");
        assert_eq!(blocky().init_seeded(&device, 1).quantization(), None);
    }

    #[test]
    fn names_parse_as_llama_cpp_writes_them() {
        assert_eq!("Q8_0".parse(), Ok(Quantization::Q8_0));
        assert_eq!("q4_0".parse(), Ok(Quantization::Q4_0));
        assert!("q4_k".parse::<Quantization>().is_err());
        assert_eq!(Quantization::Q4_0.to_string(), "q4_0");
    }

    #[test]
    fn a_quantized_embedding_gathers_the_rows_of_its_ids() {
        let device = Device::flex();
        let model = blocky()
            .init_seeded(&device, 5)
            .quantized(Quantization::Q8_0)
            .expect("whole blocks");
        let ids = Tensor::<2, burn::tensor::Int>::from_data(
            TensorData::new(vec![4i64, 4, 7], [1, 3]),
            &device,
        );
        let rows = crate::flex::embed(&model.wte, ids);
        let rows: Vec<f32> = rows.into_data().try_to_vec().expect("f32");
        assert_eq!(rows[..64], rows[64..128]);
        assert_ne!(rows[..64], rows[128..]);
    }

    /// llama-quantize keeps a 4-bit file's head in more bits (Q6_K, Q8_0 below a 256-wide
    /// super-block): here it is Q8_0, whatever the matrices' format.
    #[test]
    fn the_head_stays_in_q8_0_under_4_bit_matrices() {
        let device = Device::flex();
        for quantization in Quantization::ALL {
            let model = blocky()
                .init_seeded(&device, 5)
                .quantized(quantization)
                .expect("whole blocks");
            let format =
                |weight: Option<&QuantizedWeight>| weight.map(QuantizedWeight::quantization);
            assert_eq!(
                format(model.wte.quantized.as_ref()),
                Some(Quantization::Q8_0)
            );
            assert_eq!(
                format(model.h[0].mlp.c_fc.quantized.as_ref()),
                Some(quantization)
            );
            assert_eq!(model.quantization(), Some(quantization));
        }
    }
}
