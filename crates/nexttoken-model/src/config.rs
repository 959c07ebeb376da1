use std::path::Path;

use burn::nn::{EmbeddingConfig, LayerNormConfig};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::block::BlockConfig;
use crate::{Gpt2, ModelError};

/// GPT-2's hyper-parameters, with the names Hugging Face's `config.json` uses, so the file
/// deserializes directly (its other keys are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Number of attention heads per block.
    pub n_head: usize,
    /// Width of the residual stream (aka hidden size, `C`).
    pub n_embd: usize,
    /// Context length: the number of learned position embeddings (older configs call it `n_ctx`).
    #[serde(alias = "n_ctx")]
    pub n_positions: usize,
    /// Number of token ids (50257 for GPT-2's tokenizer).
    pub vocab_size: usize,
    /// Epsilon of every layer norm.
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
}

fn default_layer_norm_epsilon() -> f64 {
    1e-5
}

impl Gpt2Config {
    const fn preset(n_layer: usize, n_head: usize, n_embd: usize) -> Self {
        Self {
            n_layer,
            n_head,
            n_embd,
            n_positions: 1024,
            vocab_size: 50257,
            layer_norm_epsilon: 1e-5,
        }
    }

    /// GPT-2 small, 124M parameters (`gpt2`).
    pub const fn gpt2() -> Self {
        Self::preset(12, 12, 768)
    }

    /// GPT-2 medium, 355M parameters (`gpt2-medium`).
    pub const fn gpt2_medium() -> Self {
        Self::preset(24, 16, 1024)
    }

    /// GPT-2 large, 774M parameters (`gpt2-large`).
    pub const fn gpt2_large() -> Self {
        Self::preset(36, 20, 1280)
    }

    /// GPT-2 XL, 1558M parameters (`gpt2-xl`).
    pub const fn gpt2_xl() -> Self {
        Self::preset(48, 25, 1600)
    }

    /// The four released GPT-2 sizes, with their Hugging Face names.
    pub fn presets() -> [(&'static str, Self); 4] {
        [
            ("gpt2", Self::gpt2()),
            ("gpt2-medium", Self::gpt2_medium()),
            ("gpt2-large", Self::gpt2_large()),
            ("gpt2-xl", Self::gpt2_xl()),
        ]
    }

    /// Reads a Hugging Face `config.json`.
    ///
    /// # Errors
    /// [`ModelError::Io`] if the file cannot be read, [`ModelError::InvalidConfig`] if it is not
    /// a GPT-2 config or its values cannot describe a model.
    pub fn from_json_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|e| ModelError::InvalidConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        config
            .validate()
            .map_err(|reason| ModelError::InvalidConfig {
                path: path.to_path_buf(),
                reason,
            })?;
        Ok(config)
    }

    /// Checks that the values describe a model that can be built.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let positive = [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("n_positions", self.n_positions),
            ("vocab_size", self.vocab_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be greater than 0"));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!(
                "n_embd ({}) must be divisible by n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        Ok(())
    }

    /// Parameter count, with the output head tied to `wte` (counted once).
    pub fn num_parameters(&self) -> usize {
        let c = self.n_embd;
        let block =
            2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c);
        self.vocab_size * c + self.n_positions * c + self.n_layer * block + 2 * c
    }

    /// The largest weight and its size in float32 bytes: the `[v, c]` token embedding, or the
    /// `[c, 4c]` MLP projections for a tiny vocabulary. Backends that cap a single buffer (wgpu:
    /// 128 MiB on Mesa's lavapipe) must hold at least this.
    pub fn largest_tensor(&self) -> (&'static str, u64) {
        let bytes = |rows: usize| (rows * self.n_embd * 4) as u64;
        if self.vocab_size >= 4 * self.n_embd {
            ("wte.weight", bytes(self.vocab_size))
        } else {
            ("h.0.mlp.c_fc.weight", bytes(4 * self.n_embd))
        }
    }

    /// Creates a model with random weights on `device`.
    ///
    /// # Panics
    /// If the config is invalid (see [`Gpt2Config::from_json_file`], which checks it).
    pub fn init(&self, device: &Device) -> Gpt2 {
        if let Err(reason) = self.validate() {
            panic!("invalid GPT-2 config: {reason}");
        }
        let layer_norm = LayerNormConfig::new(self.n_embd).with_epsilon(self.layer_norm_epsilon);
        let block = BlockConfig {
            n_embd: self.n_embd,
            n_head: self.n_head,
            layer_norm_epsilon: self.layer_norm_epsilon,
        };
        Gpt2 {
            wte: EmbeddingConfig::new(self.vocab_size, self.n_embd).init(device),
            wpe: EmbeddingConfig::new(self.n_positions, self.n_embd).init(device),
            h: (0..self.n_layer).map(|_| block.init(device)).collect(),
            ln_f: layer_norm.init(device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_published_parameter_counts() {
        let millions: Vec<usize> = Gpt2Config::presets()
            .iter()
            .map(|(_, c)| c.num_parameters() / 1_000_000)
            .collect();
        assert_eq!(millions, [124, 354, 774, 1557]);
    }

    #[test]
    fn reads_hugging_face_config_json() {
        let json = r#"{"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
            "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "vocab_size": 50257,
            "layer_norm_epsilon": 1e-05, "model_type": "gpt2"}"#;
        let config: Gpt2Config = serde_json::from_str(json).unwrap();
        assert_eq!(config, Gpt2Config::gpt2());
    }

    #[test]
    fn rejects_heads_that_do_not_divide_the_width() {
        let config = Gpt2Config {
            n_head: 5,
            ..Gpt2Config::gpt2()
        };
        assert!(config.validate().unwrap_err().contains("divisible"));
    }
}
