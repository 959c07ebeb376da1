//! Helpers shared by the integration tests: each test file that uses them declares `mod common;`.

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
