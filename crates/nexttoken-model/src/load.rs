//! Loading Hugging Face GPT-2 checkpoints (`model.safetensors` + `config.json`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::store::{ApplyError, ModuleSnapshot, ModuleStore, SafetensorsStore};
use burn::tensor::{DType, Device};

use crate::{Gpt2, Gpt2Config, ModelError};

const WEIGHTS_FILE: &str = "model.safetensors";
const CONFIG_FILE: &str = "config.json";

/// Loads a Hugging Face GPT-2 checkpoint onto `device`.
///
/// `path` is a directory holding `model.safetensors` (and normally `config.json`), or the
/// `.safetensors` file itself. Without a `config.json` the sizes are read off the weights and
/// the head count comes from the matching GPT-2 preset. The file is memory-mapped.
///
/// # Errors
/// A [`ModelError`] naming the file or tensor at fault: missing path, corrupt file, missing or
/// misshapen tensor, a config that disagrees with the weights, non-float32 weights.
pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Gpt2, ModelError> {
    load_with_config(path, device).map(|(model, _)| model)
}

/// As [`load`], also returning the config the model was built from.
///
/// # Errors
/// As [`load`].
pub fn load_with_config(
    path: impl AsRef<Path>,
    device: &Device,
) -> Result<(Gpt2, Gpt2Config), ModelError> {
    let (weights, mut store, config) = open(path.as_ref())?;
    let mut model = config.init(device);
    let result = model
        .load_from(&mut store)
        .map_err(|e| corrupt(&weights, e))?;
    if let Some(error) = result.errors.first() {
        return Err(apply_error(&weights, error));
    }
    if let Some((name, _)) = result.missing.first() {
        return Err(ModelError::MissingTensor {
            path: weights,
            name: hf_name(name),
        });
    }
    if let Some(name) = result.unused.iter().find(|name| !is_ignored_extra(name)) {
        return Err(ModelError::UnexpectedTensor {
            path: weights,
            name: hf_name(name),
        });
    }
    Ok((model, config))
}

/// The config of the checkpoint at `path`, checked against its tensors' shapes, without
/// reading any weights: what a caller needs to decide where the model can run.
///
/// # Errors
/// As [`load`], but for the tensors' contents.
pub fn read_config(path: impl AsRef<Path>) -> Result<Gpt2Config, ModelError> {
    open(path.as_ref()).map(|(_, _, config)| config)
}

/// Finds the weights, reads their header and the config that goes with them.
fn open(path: &Path) -> Result<(PathBuf, SafetensorsStore, Gpt2Config), ModelError> {
    let weights = find_weights(path)?;
    let mut store = hf_store(&weights);
    let header = read_header(&mut store, &weights)?;
    let config = match config_beside(&weights) {
        Some(config_path) => {
            let config = Gpt2Config::from_json_file(&config_path)?;
            header.check_agrees(&config, &weights)?;
            config
        }
        None => header.infer_config(&weights)?,
    };
    Ok((weights, store, config))
}

/// The `.safetensors` file that `path` names, directly or as the directory holding it.
///
/// # Errors
/// [`ModelError::NotFound`] or [`ModelError::NoWeights`].
pub fn find_weights(path: &Path) -> Result<PathBuf, ModelError> {
    if !path.exists() {
        return Err(ModelError::NotFound {
            path: path.to_path_buf(),
        });
    }
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let weights = path.join(WEIGHTS_FILE);
    if weights.is_file() {
        Ok(weights)
    } else {
        Err(ModelError::NoWeights {
            dir: path.to_path_buf(),
        })
    }
}

fn config_beside(weights: &Path) -> Option<PathBuf> {
    let config = weights.with_file_name(CONFIG_FILE);
    config.is_file().then_some(config)
}

/// A store that renames Hugging Face's keys to this crate's field names.
fn hf_store(weights: &Path) -> SafetensorsStore {
    SafetensorsStore::from_file(weights)
        // Map transformer.X -> X (GPT2LMHeadModel saves the body under `transformer.`)
        .with_key_remapping(r"^transformer\.", "")
        // Map ln_1.weight -> ln_1.gamma (burn's LayerNorm names its scale gamma)
        .with_key_remapping(r"(ln_[12f])\.weight$", "$1.gamma")
        // Map ln_1.bias -> ln_1.beta
        .with_key_remapping(r"(ln_[12f])\.bias$", "$1.beta")
        // Report problems ourselves, with Hugging Face's names.
        .allow_partial(true)
        .validate(false)
}

/// Hugging Face's name for a tensor this crate calls `name`.
fn hf_name(name: &str) -> String {
    name.replace(".gamma", ".weight").replace(".beta", ".bias")
}

/// Tensors a Hugging Face GPT-2 file carries that the model does not load: the causal-mask
/// buffers older transformers versions saved, and the output head, which is tied to `wte`.
fn is_ignored_extra(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name == "lm_head.weight"
}

fn corrupt(weights: &Path, error: impl std::fmt::Display) -> ModelError {
    ModelError::CorruptWeights {
        path: weights.to_path_buf(),
        reason: error.to_string(),
    }
}

fn apply_error(weights: &Path, error: &ApplyError) -> ModelError {
    let path = weights.to_path_buf();
    match error {
        ApplyError::ShapeMismatch {
            path: name,
            expected,
            found,
        } => ModelError::WrongShape {
            path,
            name: hf_name(name),
            expected: expected.to_vec(),
            found: found.to_vec(),
        },
        ApplyError::DTypeMismatch {
            path: name, found, ..
        } => ModelError::UnsupportedDtype {
            path,
            name: hf_name(name),
            dtype: format!("{found:?}"),
        },
        other => corrupt(weights, other),
    }
}

/// Shapes and dtypes of the tensors in a file, read before any data is touched.
struct Header {
    shapes: BTreeMap<String, Vec<usize>>,
}

fn read_header(store: &mut SafetensorsStore, weights: &Path) -> Result<Header, ModelError> {
    let tensors = store.get_all_tensors().map_err(|e| corrupt(weights, e))?;
    let mut shapes = BTreeMap::new();
    for (name, tensor) in tensors {
        if tensor.dtype != DType::F32 && !is_ignored_extra(name) {
            return Err(ModelError::UnsupportedDtype {
                path: weights.to_path_buf(),
                name: hf_name(name),
                dtype: format!("{:?}", tensor.dtype),
            });
        }
        shapes.insert(name.clone(), tensor.shape.to_vec());
    }
    Ok(Header { shapes })
}

impl Header {
    fn dims2(&self, name: &str, weights: &Path) -> Result<[usize; 2], ModelError> {
        match self.shapes.get(name).map(Vec::as_slice) {
            Some(&[rows, cols]) => Ok([rows, cols]),
            Some(found) => Err(ModelError::WrongShape {
                path: weights.to_path_buf(),
                name: name.to_string(),
                expected: vec![0, 0],
                found: found.to_vec(),
            }),
            None => Err(ModelError::MissingTensor {
                path: weights.to_path_buf(),
                name: name.to_string(),
            }),
        }
    }

    /// `[vocab_size, n_embd, n_positions, n_layer]` as the tensors say.
    fn sizes(&self, weights: &Path) -> Result<[usize; 4], ModelError> {
        let [vocab_size, n_embd] = self.dims2("wte.weight", weights)?;
        let [n_positions, _] = self.dims2("wpe.weight", weights)?;
        let layers: BTreeSet<usize> = self
            .shapes
            .keys()
            .filter_map(|name| name.strip_prefix("h.")?.split('.').next()?.parse().ok())
            .collect();
        Ok([vocab_size, n_embd, n_positions, layers.len()])
    }

    fn check_agrees(&self, config: &Gpt2Config, weights: &Path) -> Result<(), ModelError> {
        let [vocab_size, n_embd, n_positions, n_layer] = self.sizes(weights)?;
        let pairs = [
            ("vocab_size", config.vocab_size, vocab_size),
            ("n_embd", config.n_embd, n_embd),
            ("n_positions", config.n_positions, n_positions),
            ("n_layer", config.n_layer, n_layer),
        ];
        match pairs.into_iter().find(|(_, c, w)| c != w) {
            Some((field, config, weights_value)) => Err(ModelError::ConfigMismatch {
                path: weights.to_path_buf(),
                field,
                config,
                weights: weights_value,
            }),
            None => Ok(()),
        }
    }

    fn infer_config(&self, weights: &Path) -> Result<Gpt2Config, ModelError> {
        let [vocab_size, n_embd, n_positions, n_layer] = self.sizes(weights)?;
        let n_head = Gpt2Config::presets()
            .into_iter()
            .find(|(_, preset)| preset.n_embd == n_embd)
            .map(|(_, preset)| preset.n_head)
            .ok_or_else(|| ModelError::NoConfig {
                weights: weights.to_path_buf(),
                n_embd,
            })?;
        Ok(Gpt2Config {
            n_layer,
            n_head,
            n_embd,
            n_positions,
            vocab_size,
            layer_norm_epsilon: 1e-5,
        })
    }
}
