//! Helpers shared by the integration tests: each test file that uses them declares `mod common;`.
// Each test file uses some of them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A tensor of a checkpoint: name, dtype, shape, little-endian bytes.
pub type NamedTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// The tensor called `name` among a checkpoint's, to edit.
///
/// # Panics
/// If there is none.
pub fn named<'a>(tensors: &'a mut [NamedTensor], name: &str) -> &'a mut NamedTensor {
    tensors
        .iter_mut()
        .find(|tensor| tensor.0 == name)
        .unwrap_or_else(|| panic!("the checkpoint has no {name}"))
}

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

/// The tensors of a GPT-2 `model.safetensors` with `config`'s sizes, as (name, shape), spelled
/// as the Hub's files spell them (no `transformer.` prefix); with `attn_bias`, the causal-mask
/// buffers older files carry too.
pub fn gpt2_tensors(
    config: &nexttoken::model::Gpt2Config,
    attn_bias: bool,
) -> Vec<(String, Vec<usize>)> {
    let (c, p) = (config.n_embd, config.n_positions);
    let mut tensors = vec![
        ("wte.weight".to_string(), vec![config.vocab_size, c]),
        ("wpe.weight".to_string(), vec![p, c]),
    ];
    for layer in 0..config.n_layer {
        let block = [
            ("ln_1.weight", vec![c]),
            ("ln_1.bias", vec![c]),
            ("attn.bias", vec![1, 1, p, p]),
            ("attn.c_attn.weight", vec![c, 3 * c]),
            ("attn.c_attn.bias", vec![3 * c]),
            ("attn.c_proj.weight", vec![c, c]),
            ("attn.c_proj.bias", vec![c]),
            ("ln_2.weight", vec![c]),
            ("ln_2.bias", vec![c]),
            ("mlp.c_fc.weight", vec![c, 4 * c]),
            ("mlp.c_fc.bias", vec![4 * c]),
            ("mlp.c_proj.weight", vec![4 * c, c]),
            ("mlp.c_proj.bias", vec![c]),
        ];
        tensors.extend(
            block
                .into_iter()
                .filter(|(name, _)| attn_bias || *name != "attn.bias")
                .map(|(name, shape)| (format!("h.{layer}.{name}"), shape)),
        );
    }
    tensors.push(("ln_f.weight".into(), vec![c]));
    tensors.push(("ln_f.bias".into(), vec![c]));
    tensors
}
