use std::path::Path;

use burn::nn::LayerNormConfig;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::block::BlockConfig;
use crate::linear::Embedding;
use crate::{Gpt2, ModelError};

/// GPT-2's hyper-parameters, with the names Hugging Face's `config.json` uses.
///
/// Deserializing reads a Hub `config.json` as the Hub serves it: `n_positions` and its older
/// name `n_ctx` (either or both, equal), the end-of-text ids, and checks that the file
/// describes the architecture this crate implements; keys that do not change the forward pass
/// (dropouts, `task_specific_params`, `summary_*`, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HubConfig")]
pub struct Gpt2Config {
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Number of attention heads per block.
    pub n_head: usize,
    /// Width of the residual stream (aka hidden size, `C`).
    pub n_embd: usize,
    /// Context length: the number of learned position embeddings (older configs call it `n_ctx`).
    pub n_positions: usize,
    /// Number of token ids (50257 for GPT-2's tokenizer).
    pub vocab_size: usize,
    /// Epsilon of every layer norm.
    pub layer_norm_epsilon: f64,
    /// The id that ends a text (`<|endoftext|>`, 50256 for GPT-2): generation stops there.
    pub eos_token_id: u32,
    /// The id that begins a text (GPT-2 uses `<|endoftext|>` for both).
    pub bos_token_id: u32,
}

/// GPT-2's `<|endoftext|>`, which Hugging Face's `GPT2Config` also defaults to for both ids.
const END_OF_TEXT: u32 = 50256;

/// `config.json` as the Hub serves it: every key that matters, optional where a file may
/// leave it out. [`Gpt2Config`] is made from it by [`TryFrom`], which checks it.
#[derive(Deserialize)]
struct HubConfig {
    model_type: Option<String>,
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    n_positions: Option<usize>,
    n_ctx: Option<usize>,
    vocab_size: usize,
    layer_norm_epsilon: Option<f64>,
    eos_token_id: Option<u32>,
    bos_token_id: Option<u32>,
    activation_function: Option<String>,
    n_inner: Option<usize>,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    reorder_and_upcast_attn: bool,
}

impl TryFrom<HubConfig> for Gpt2Config {
    type Error = String;

    fn try_from(hub: HubConfig) -> Result<Self, String> {
        if let Some(model_type) = hub.model_type.as_deref().filter(|&t| t != "gpt2") {
            return Err(format!(
                "model_type is \"{model_type}\", not \"gpt2\": nexttoken runs GPT-2 checkpoints only"
            ));
        }
        let n_positions = match (hub.n_positions, hub.n_ctx) {
            (Some(positions), Some(ctx)) if positions != ctx => {
                return Err(format!(
                    "n_positions ({positions}) and n_ctx ({ctx}) disagree: both name the context length"
                ));
            }
            (Some(n), _) | (None, Some(n)) => n,
            (None, None) => return Err("neither n_positions nor n_ctx is set".into()),
        };
        // Hugging Face's GPT-2 maps "gelu_new" and "gelu_pytorch_tanh" to the same tanh
        // approximation, the only activation this model computes.
        if let Some(activation) = hub
            .activation_function
            .as_deref()
            .filter(|&a| a != "gelu_new" && a != "gelu_pytorch_tanh")
        {
            return Err(format!(
                "activation_function \"{activation}\" is not supported: nexttoken computes GPT-2's gelu_new"
            ));
        }
        if let Some(n_inner) = hub.n_inner.filter(|&n| n != 4 * hub.n_embd) {
            return Err(format!(
                "n_inner ({n_inner}) is not 4 x n_embd ({}): only GPT-2's MLP width is supported",
                4 * hub.n_embd
            ));
        }
        if hub.scale_attn_by_inverse_layer_idx || hub.reorder_and_upcast_attn {
            return Err(
                "scale_attn_by_inverse_layer_idx and reorder_and_upcast_attn are not supported"
                    .into(),
            );
        }
        let config = Self {
            n_layer: hub.n_layer,
            n_head: hub.n_head,
            n_embd: hub.n_embd,
            n_positions,
            vocab_size: hub.vocab_size,
            layer_norm_epsilon: hub.layer_norm_epsilon.unwrap_or(1e-5),
            eos_token_id: hub.eos_token_id.unwrap_or(END_OF_TEXT),
            bos_token_id: hub.bos_token_id.unwrap_or(END_OF_TEXT),
        };
        config.validate()?;
        Ok(config)
    }
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
            eos_token_id: END_OF_TEXT,
            bos_token_id: END_OF_TEXT,
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
        let text = std::fs::read_to_string(path).map_err(|error| ModelError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_json(&text).map_err(|reason| ModelError::InvalidConfig {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Reads the text of a Hugging Face `config.json`; the error says what is wrong with it.
    ///
    /// # Errors
    /// The reason the text is not a usable GPT-2 config.
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
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
            wte: Embedding::new(self.vocab_size, self.n_embd, device),
            wpe: Embedding::new(self.n_positions, self.n_embd, device),
            h: (0..self.n_layer).map(|_| block.init(device)).collect(),
            ln_f: layer_norm.init(device),
            layer_norm_epsilon: self.layer_norm_epsilon,
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

    /// The four official `config.json` files, verbatim as the Hub serves them (both `n_ctx`
    /// and `n_positions`, and many keys to ignore), with the preset each must give.
    fn hub_configs() -> [(&'static str, &'static str, Gpt2Config); 4] {
        [
            (
                "gpt2",
                include_str!("../../../tests/fixtures/hub-configs/gpt2.config.json"),
                Gpt2Config::gpt2(),
            ),
            (
                "gpt2-medium",
                include_str!("../../../tests/fixtures/hub-configs/gpt2-medium.config.json"),
                Gpt2Config::gpt2_medium(),
            ),
            (
                "gpt2-large",
                include_str!("../../../tests/fixtures/hub-configs/gpt2-large.config.json"),
                Gpt2Config::gpt2_large(),
            ),
            (
                "gpt2-xl",
                include_str!("../../../tests/fixtures/hub-configs/gpt2-xl.config.json"),
                Gpt2Config::gpt2_xl(),
            ),
        ]
    }

    /// A Hub config with `edit` applied to its JSON.
    fn edited(edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) -> String {
        let mut json: serde_json::Value = serde_json::from_str(hub_configs()[0].1).unwrap();
        edit(json.as_object_mut().unwrap());
        json.to_string()
    }

    #[test]
    fn every_official_config_reads_as_its_preset() {
        for (name, text, preset) in hub_configs() {
            let json: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                json["n_ctx"], json["n_positions"],
                "{name} carries both keys"
            );
            assert_eq!(Gpt2Config::from_json(text), Ok(preset), "{name}");
        }
    }

    #[test]
    fn either_name_of_the_context_length_is_enough() {
        let without_ctx = edited(|json| drop(json.remove("n_ctx")));
        let without_positions = edited(|json| drop(json.remove("n_positions")));
        for text in [without_ctx, without_positions] {
            assert_eq!(
                Gpt2Config::from_json(&text),
                Ok(Gpt2Config::gpt2()),
                "{text}"
            );
        }
        let neither = edited(|json| {
            json.remove("n_ctx");
            json.remove("n_positions");
        });
        assert!(
            Gpt2Config::from_json(&neither)
                .unwrap_err()
                .contains("neither")
        );
        let disagreeing = edited(|json| drop(json.insert("n_ctx".into(), 512.into())));
        let err = Gpt2Config::from_json(&disagreeing).unwrap_err();
        assert!(
            err.contains("n_positions (1024) and n_ctx (512) disagree"),
            "{err}"
        );
    }

    #[test]
    fn end_of_text_ids_come_from_the_config() {
        let text = edited(|json| {
            json.insert("eos_token_id".into(), 0.into());
            json.insert("bos_token_id".into(), 1.into());
        });
        let config = Gpt2Config::from_json(&text).unwrap();
        assert_eq!((config.eos_token_id, config.bos_token_id), (0, 1));
        // Hugging Face's GPT2Config defaults both to <|endoftext|>.
        let defaulted = edited(|json| {
            json.remove("eos_token_id");
            json.remove("bos_token_id");
        });
        let config = Gpt2Config::from_json(&defaulted).unwrap();
        assert_eq!((config.eos_token_id, config.bos_token_id), (50256, 50256));
    }

    #[test]
    fn configs_of_other_architectures_are_refused() {
        let cases: [(&str, serde_json::Value, &str); 5] = [
            (
                "model_type",
                "llama".into(),
                "model_type is \"llama\", not \"gpt2\"",
            ),
            (
                "activation_function",
                "relu".into(),
                "activation_function \"relu\"",
            ),
            ("n_inner", 1000.into(), "n_inner (1000)"),
            (
                "scale_attn_by_inverse_layer_idx",
                true.into(),
                "not supported",
            ),
            ("n_head", 7.into(), "divisible"),
        ];
        for (key, value, expected) in cases {
            let text = edited(|json| drop(json.insert(key.into(), value.clone())));
            let err = Gpt2Config::from_json(&text).unwrap_err();
            assert!(err.contains(expected), "{key}: {err}");
        }
        // Older configs may leave model_type out; a missing size is an error naming it.
        let no_type = edited(|json| drop(json.remove("model_type")));
        assert_eq!(Gpt2Config::from_json(&no_type), Ok(Gpt2Config::gpt2()));
        let no_layers = edited(|json| drop(json.remove("n_layer")));
        assert!(
            Gpt2Config::from_json(&no_layers)
                .unwrap_err()
                .contains("n_layer")
        );
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
