//! Helpers shared by the integration tests: each test file that uses them declares `mod common;`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A tensor of a checkpoint: name, dtype, shape, little-endian bytes.
pub type NamedTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// One of the checkpoints in `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A copy of a fixture checkpoint (its `config.json` unchanged) whose tensors pass through
/// `edit` first. The fixtures were written by `save_pretrained`, which prefixes keys with
/// `transformer.`; the copy starts from the unprefixed names of the GPT-2 files on the Hugging
/// Face hub.
pub fn edited_checkpoint(
    fixture: &Path,
    edit: impl Fn(&mut Vec<NamedTensor>),
) -> tempfile::TempDir {
    let bytes = std::fs::read(fixture.join("model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<NamedTensor> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let name = name
                .strip_prefix("transformer.")
                .unwrap_or(&name)
                .to_string();
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    edit(&mut tensors);
    let views: HashMap<String, TensorView> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    safetensors::serialize_to_file(&views, None, &dir.path().join("model.safetensors")).unwrap();
    std::fs::copy(fixture.join("config.json"), dir.path().join("config.json")).unwrap();
    dir
}

/// The tensor names in a safetensors file.
pub fn tensor_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(String::from)
        .collect()
}

/// A copy of a fixture checkpoint split into `shards` files named as transformers names them,
/// with their `model.safetensors.index.json`.
pub fn sharded_checkpoint(fixture: &Path, shards: usize) -> tempfile::TempDir {
    let bytes = std::fs::read(fixture.join("model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
    names.sort();
    let dir = tempfile::tempdir().unwrap();
    let mut weight_map = serde_json::Map::new();
    let per_shard = names.len().div_ceil(shards);
    for (index, chunk) in names.chunks(per_shard).enumerate() {
        let shard = format!("model-{:05}-of-{shards:05}.safetensors", index + 1);
        let views: HashMap<String, TensorView> = chunk
            .iter()
            .map(|name| (name.clone(), file.tensor(name).unwrap()))
            .collect();
        safetensors::serialize_to_file(&views, None, &dir.path().join(&shard)).unwrap();
        for name in chunk {
            weight_map.insert(name.clone(), shard.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    std::fs::copy(fixture.join("config.json"), dir.path().join("config.json")).unwrap();
    dir
}
