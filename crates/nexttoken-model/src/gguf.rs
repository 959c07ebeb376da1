//! GPT-2 checkpoints in GGUF, as llama.cpp's `convert_hf_to_gguf.py` and `llama-quantize` write
//! them: the sizes from the file's `gpt2.*` metadata, each tensor mapped from llama.cpp's name to
//! this crate's field (`blk.3.attn_qkv.weight` is `h.3.attn.c_attn.weight`).
//!
//! Float tensors (f32, f16, bf16) load as they do from safetensors; Q8_0 and Q4_0 matrices keep
//! their blocks, bit for bit, on flex ([`QuantizedWeight`]), and are widened to float32 on any
//! other backend. Tensors in llama-quantize's other types ([`WidenedFormat`]: the k-quants of a
//! `Q4_K_M` file, the Q6_K head of its Q4_0 files, the 32-value formats it falls back to) are
//! widened to float32; on flex their matrices are then kept in Q8_0 blocks, as `--dtype q4_0`
//! keeps the head: within Q8_0's rounding of the file's values, and read at 8.5 bits a weight
//! instead of 32, until kernels for those formats exist. llama.cpp stores a matrix by output
//! (`[n, k]`, GGUF's `ne = [k, n]`), which is the layout flex's products read, so its weights
//! need no transposing there.

use std::path::{Path, PathBuf};

use burn::backend::DispatchDevice;
use burn::module::Param;
use burn::tensor::{DType, Device, Tensor, TensorData};
use nexttoken_cpu::quant::WidenedFormat;
use nexttoken_gguf::{Gguf, TensorInfo, TensorType, Value};

use crate::linear::{Embedding, Linear, QuantizedWeight, emptied};
use crate::quantized::Quantization;
use crate::{Gpt2, Gpt2Config, ModelError};

/// A GPT-2 GGUF file, opened: its header read and checked, no tensor read yet.
#[derive(Debug)]
pub struct GgufCheckpoint {
    path: PathBuf,
    gguf: Gguf,
    config: Gpt2Config,
}

impl GgufCheckpoint {
    /// Opens `path` and reads GPT-2's sizes from its metadata.
    ///
    /// # Errors
    /// If the file is not GGUF or is truncated ([`ModelError::Gguf`]), holds another
    /// architecture, lacks a size or a tensor, or stores a tensor in a type nexttoken does not
    /// read (named).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        let gguf = Gguf::open(&path).map_err(|error| ModelError::Gguf {
            error: error.to_string(),
        })?;
        let architecture = gguf
            .metadata("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        if architecture != "gpt2" {
            return Err(ModelError::GgufArchitecture {
                path,
                architecture: architecture.to_string(),
            });
        }
        let size = |key: &str| -> Result<usize, ModelError> {
            gguf.metadata(&format!("gpt2.{key}"))
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| ModelError::InvalidConfig {
                    path: path.clone(),
                    reason: format!("no gpt2.{key} in the GGUF metadata"),
                })
        };
        let embedding = tensor(&gguf, &path, "token_embd.weight")?;
        // Stored as f32: read back through its shortest decimal, 1e-5 stays 1e-5 (as
        // config.json writes it) rather than 9.99999974e-6.
        let epsilon = match gguf.metadata("gpt2.attention.layer_norm_epsilon") {
            Some(Value::F32(epsilon)) => epsilon.to_string().parse().unwrap_or(f64::from(*epsilon)),
            Some(other) => other.as_f64().unwrap_or(1e-5),
            None => 1e-5,
        };
        let eos = gguf
            .metadata("tokenizer.ggml.eos_token_id")
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok());
        let defaults = Gpt2Config::gpt2();
        let config = Gpt2Config {
            n_layer: size("block_count")?,
            n_head: size("attention.head_count")?,
            n_embd: size("embedding_length")?,
            n_positions: size("context_length")?,
            vocab_size: embedding.shape.get(1).copied().unwrap_or(0),
            layer_norm_epsilon: epsilon,
            eos_token_id: eos.unwrap_or(defaults.eos_token_id),
            bos_token_id: gguf
                .metadata("tokenizer.ggml.bos_token_id")
                .and_then(Value::as_u64)
                .and_then(|id| u32::try_from(id).ok())
                .unwrap_or(defaults.bos_token_id),
        };
        config
            .validate()
            .map_err(|reason| ModelError::InvalidConfig {
                path: path.clone(),
                reason,
            })?;
        let feed_forward = size("feed_forward_length")?;
        if feed_forward != 4 * config.n_embd {
            return Err(ModelError::InvalidConfig {
                path,
                reason: format!(
                    "gpt2.feed_forward_length is {feed_forward}, not 4 x {} as GPT-2's",
                    config.n_embd
                ),
            });
        }
        Ok(Self { path, gguf, config })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The opened file, for what a caller checks beyond the model (its tokenizer).
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// The block format of the file's matrices, or `None` for float weights.
    pub fn quantization(&self) -> Option<Quantization> {
        let kind = self.gguf.tensor("blk.0.attn_qkv.weight")?.kind;
        quantization_of(kind)
    }

    /// The float type of the file's float matrices (float32 for quantized ones).
    pub fn dtype(&self) -> DType {
        match self.gguf.tensor("blk.0.attn_qkv.weight").map(|t| t.kind) {
            Some(TensorType::F16) => DType::F16,
            Some(TensorType::BF16) => DType::BF16,
            _ => DType::F32,
        }
    }

    /// Reads every tensor into a model on `device`, every float tensor in [`Self::dtype`] (the
    /// converter keeps norms and biases in float32 beside half-precision matrices). On flex,
    /// quantized matrices keep their blocks; elsewhere they are widened to float32.
    ///
    /// # Errors
    /// A missing or misshapen tensor, a tensor type nexttoken does not read (named), or an
    /// output head that is not the token embedding (GPT-2 ties them).
    pub fn load(&self, device: &Device) -> Result<Gpt2, ModelError> {
        self.check_head_is_tied()?;
        let on_flex = matches!(device.as_dispatch(), DispatchDevice::Flex(_));
        let config = &self.config;
        let c = config.n_embd;
        let mut model = config.init(device);
        let vector = |name: &str, len: usize| self.vector(name, len, device);
        self.embedding(
            &mut model.wte,
            "token_embd.weight",
            [config.vocab_size, c],
            on_flex,
            device,
        )?;
        self.embedding(
            &mut model.wpe,
            "position_embd.weight",
            [config.n_positions, c],
            false,
            device,
        )?;
        for (i, block) in model.h.iter_mut().enumerate() {
            let blk = |name: &str| format!("blk.{i}.{name}");
            block.ln_1.gamma = vector(&blk("attn_norm.weight"), c)?;
            block.ln_1.beta = Some(vector(&blk("attn_norm.bias"), c)?);
            block.ln_2.gamma = vector(&blk("ffn_norm.weight"), c)?;
            block.ln_2.beta = Some(vector(&blk("ffn_norm.bias"), c)?);
            for (name, linear, [k, n]) in [
                ("attn_qkv", &mut block.attn.c_attn, [c, 3 * c]),
                ("attn_output", &mut block.attn.c_proj, [c, c]),
                ("ffn_up", &mut block.mlp.c_fc, [c, 4 * c]),
                ("ffn_down", &mut block.mlp.c_proj, [4 * c, c]),
            ] {
                self.linear(linear, &blk(name), [k, n], on_flex, device)?;
            }
        }
        model.ln_f.gamma = vector("output_norm.weight", c)?;
        model.ln_f.beta = Some(vector("output_norm.bias", c)?);
        Ok(model)
    }

    /// GPT-2's head is its token embedding; llama.cpp's converter writes it again as
    /// `output.weight`, which must then hold the same type and bytes.
    fn check_head_is_tied(&self) -> Result<(), ModelError> {
        let Some(output) = self.gguf.tensor("output.weight") else {
            return Ok(());
        };
        let embedding = tensor(&self.gguf, &self.path, "token_embd.weight")?;
        let tied = output.kind == embedding.kind
            && self.gguf.tensor_bytes(output) == self.gguf.tensor_bytes(embedding);
        self.gguf.release(output);
        if tied {
            return Ok(());
        }
        Err(ModelError::GgufUntiedHead {
            path: self.path.clone(),
            output: output.kind.to_string(),
            embedding: embedding.kind.to_string(),
        })
    }

    /// The tensor `name`, checked to hold `dims` (`[rows, columns]`, GGUF's `ne` reversed).
    fn checked(&self, name: &str, dims: &[usize]) -> Result<&TensorInfo, ModelError> {
        let info = tensor(&self.gguf, &self.path, name)?;
        let found: Vec<usize> = info.shape.iter().rev().copied().collect();
        if found != dims {
            return Err(ModelError::WrongShape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: dims.to_vec(),
                found,
            });
        }
        Ok(info)
    }

    /// A 1-D float tensor as a parameter.
    fn vector(
        &self,
        name: &str,
        len: usize,
        device: &Device,
    ) -> Result<Param<Tensor<1>>, ModelError> {
        let info = self.checked(name, &[len])?;
        let data = self.float_data(info, vec![len])?;
        Ok(Param::from_tensor(
            Tensor::<1>::from_data(data, device).cast(self.dtype()),
        ))
    }

    /// `[rows, width]` rows into `table`: blocks kept where `blocks_kept`, else floats.
    fn embedding(
        &self,
        table: &mut Embedding,
        name: &str,
        dims: [usize; 2],
        blocks_kept: bool,
        device: &Device,
    ) -> Result<(), ModelError> {
        let info = self.checked(name, &dims)?;
        match (quantization_of(info.kind), blocks_kept) {
            (Some(quantization), true) => {
                table.quantized = Some(self.blocks(info, dims, quantization)?);
                table.weight = emptied(device);
            }
            (None, true) if let Some(format) = widened_format(info.kind) => {
                table.quantized = Some(self.widened_as_q8_0(info, format, dims)?);
                table.weight = emptied(device);
            }
            _ => {
                let data = self.float_data(info, dims.to_vec())?;
                let weight = Tensor::<2>::from_data(data, device).cast(self.dtype());
                table.weight = Param::from_tensor(weight);
            }
        }
        Ok(())
    }

    /// A `[k, n]` layer from its `[n, k]` tensor (by output) and its bias.
    fn linear(
        &self,
        layer: &mut Linear,
        name: &str,
        [k, n]: [usize; 2],
        blocks_kept: bool,
        device: &Device,
    ) -> Result<(), ModelError> {
        let info = self.checked(&format!("{name}.weight"), &[n, k])?;
        match (quantization_of(info.kind), blocks_kept) {
            (Some(quantization), true) => {
                layer.quantized = Some(self.blocks(info, [n, k], quantization)?);
                layer.weight = emptied(device);
            }
            (None, true) if let Some(format) = widened_format(info.kind) => {
                layer.quantized = Some(self.widened_as_q8_0(info, format, [n, k])?);
                layer.weight = emptied(device);
            }
            _ => {
                // `[n, k]` by output, seen as its `[k, n]` transpose: the layout flex's
                // products read (`flex::stored_by_output`), and any backend's view.
                let data = self.float_data(info, vec![n, k])?;
                let by_output = Tensor::<2>::from_data(data, device).cast(self.dtype());
                layer.weight = Param::from_tensor(by_output.transpose());
            }
        }
        layer.bias = Some(self.vector(&format!("{name}.bias"), n, device)?);
        Ok(())
    }

    fn blocks(
        &self,
        info: &TensorInfo,
        dims: [usize; 2],
        quantization: Quantization,
    ) -> Result<QuantizedWeight, ModelError> {
        let blocks = QuantizedWeight::from_bytes(self.gguf.tensor_bytes(info), dims, quantization)
            .ok_or_else(|| ModelError::WrongShape {
                path: self.path.clone(),
                name: info.name.clone(),
                expected: dims.to_vec(),
                found: info.shape.iter().rev().copied().collect(),
            });
        self.gguf.release(info);
        blocks
    }

    /// A tensor's values in its float type (quantized blocks widened to float32), its pages
    /// in the mapping given back.
    fn float_data(&self, info: &TensorInfo, shape: Vec<usize>) -> Result<TensorData, ModelError> {
        let data = self.float_data_of(info, shape);
        self.gguf.release(info);
        data
    }

    fn float_data_of(
        &self,
        info: &TensorInfo,
        shape: Vec<usize>,
    ) -> Result<TensorData, ModelError> {
        let bytes = self.gguf.tensor_bytes(info);
        let dtype = match info.kind {
            TensorType::F32 => DType::F32,
            TensorType::F16 => DType::F16,
            TensorType::BF16 => DType::BF16,
            kind if let Some(format) = widened_format(kind) => {
                let values = self.widened_values(info, format, shape.iter().product())?;
                return Ok(TensorData::new(values, shape));
            }
            kind => {
                let Some(quantization) = quantization_of(kind) else {
                    return Err(self.unsupported(info));
                };
                let [rows, k] = [shape[0], shape.iter().skip(1).product::<usize>()];
                let blocks = self.blocks(info, [rows, k], quantization)?;
                let mut values = vec![0.0f32; rows * k];
                for (row, out) in values.chunks_exact_mut(k).enumerate() {
                    blocks.dequantize_row(row, out);
                }
                return Ok(TensorData::new(values, shape));
            }
        };
        Ok(TensorData::from_bytes_vec(bytes.to_vec(), shape, dtype))
    }

    /// A matrix in a widened format requantized to Q8_0 a row at a time (a row a whole number
    /// of its blocks), so that its float32 values are never all in memory.
    fn widened_as_q8_0(
        &self,
        info: &TensorInfo,
        format: WidenedFormat,
        [rows, k]: [usize; 2],
    ) -> Result<QuantizedWeight, ModelError> {
        let bytes = self.gguf.tensor_bytes(info);
        let row_bytes = k / format.values() * format.bytes();
        if !k.is_multiple_of(format.values()) || bytes.len() != rows * row_bytes {
            return Err(self.unsupported(info));
        }
        let matrix = QuantizedWeight::quantize_rows([rows, k], Quantization::Q8_0, |row, out| {
            format.dequantize(&bytes[row * row_bytes..(row + 1) * row_bytes], out);
        });
        self.gguf.release(info);
        Ok(matrix)
    }

    /// A tensor's `len` values in a widened format, as float32.
    fn widened_values(
        &self,
        info: &TensorInfo,
        format: WidenedFormat,
        len: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let bytes = self.gguf.tensor_bytes(info);
        if !len.is_multiple_of(format.values())
            || bytes.len() != len / format.values() * format.bytes()
        {
            return Err(self.unsupported(info));
        }
        let mut values = vec![0.0f32; len];
        format.dequantize(bytes, &mut values);
        self.gguf.release(info);
        Ok(values)
    }

    fn unsupported(&self, info: &TensorInfo) -> ModelError {
        ModelError::GgufTensorType {
            path: self.path.clone(),
            name: info.name.clone(),
            kind: info.kind.to_string(),
        }
    }
}

fn tensor<'a>(gguf: &'a Gguf, path: &Path, name: &str) -> Result<&'a TensorInfo, ModelError> {
    gguf.tensor(name).ok_or_else(|| ModelError::MissingTensor {
        path: path.to_path_buf(),
        name: name.to_string(),
    })
}

/// The formats read by widening: llama-quantize's k-quants and the 32-value formats it falls
/// back to where a row is not whole super-blocks.
fn widened_format(kind: TensorType) -> Option<WidenedFormat> {
    Some(match kind {
        TensorType::Q4_1 => WidenedFormat::Q4_1,
        TensorType::Q5_0 => WidenedFormat::Q5_0,
        TensorType::Q5_1 => WidenedFormat::Q5_1,
        TensorType::Q4_K => WidenedFormat::Q4_K,
        TensorType::Q5_K => WidenedFormat::Q5_K,
        TensorType::Q6_K => WidenedFormat::Q6_K,
        _ => return None,
    })
}

fn quantization_of(kind: TensorType) -> Option<Quantization> {
    match kind {
        TensorType::Q8_0 => Some(Quantization::Q8_0),
        TensorType::Q4_0 => Some(Quantization::Q4_0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[rows, k]` tensor of `kind` of arbitrary quants with sane scales (any bits make a
    /// valid block but for its f16 scale and minimum).
    fn widened_file(kind: TensorType, [rows, k]: [usize; 2]) -> GgufCheckpoint {
        let format = widened_format(kind).expect("a widened type");
        let mut bytes: Vec<u8> = (0..rows * k / format.values() * format.bytes())
            .map(|i| (i * 7919 % 251) as u8)
            .collect();
        // Where each format keeps its f16s: Q6_K its one scale last, the others first.
        let f16s = match format {
            WidenedFormat::Q6_K => vec![format.bytes() - 2],
            WidenedFormat::Q5_0 => vec![0],
            _ => vec![0, 2],
        };
        for (i, block) in bytes.chunks_exact_mut(format.bytes()).enumerate() {
            // f16 bits 0x1000 and up: about 5e-4, growing with `i`.
            let scale = 0x1000u16 + 16 * i as u16;
            for &at in &f16s {
                block[at..at + 2].copy_from_slice(&scale.to_le_bytes());
            }
        }
        let file = nexttoken_gguf::Writer::new()
            .tensor("head", &[k, rows], kind, &bytes)
            .to_bytes();
        GgufCheckpoint {
            path: PathBuf::from("head.gguf"),
            gguf: Gguf::from_bytes(file).expect("a GGUF"),
            config: Gpt2Config::gpt2(),
        }
    }

    /// Row by row, the Q8_0 blocks of the whole matrix widened at once; a row that is not
    /// whole blocks refused naming the tensor and its type.
    #[test]
    fn widened_matrices_requantize_to_q8_0_a_row_at_a_time() {
        use TensorType::*;
        for kind in [Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K] {
            let format = widened_format(kind).expect("widened");
            let (rows, k) = (3, 2 * 256);
            let file = widened_file(kind, [rows, k]);
            let info = file.gguf.tensor("head").expect("head");
            let row_by_row = file
                .widened_as_q8_0(info, format, [rows, k])
                .expect("requantized");
            let mut values = vec![0.0; rows * k];
            format.dequantize(file.gguf.tensor_bytes(info), &mut values);
            let whole = QuantizedWeight::quantize(&values, [rows, k], Quantization::Q8_0);
            assert_eq!(row_by_row.gguf_bytes(), whole.gguf_bytes(), "{kind}");
            assert_eq!(row_by_row.dims(), [rows, k]);
            assert!(values.iter().any(|&v| v != 0.0));
            assert_eq!(
                file.widened_values(info, format, rows * k)
                    .expect("widened"),
                values
            );

            let error = file
                .widened_as_q8_0(info, format, [rows * k / 16, 16])
                .expect_err("rows of half a block")
                .to_string();
            assert!(
                error.contains("head") && error.contains(&kind.to_string()),
                "{error}"
            );
        }
    }
}
