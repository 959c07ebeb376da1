//! The four official GPT-2 `config.json` files, verbatim as the Hub serves them
//! (`tests/fixtures/hub-configs`), each beside weights of its own shape, spelled as the Hub's
//! `model.safetensors` spells them (no `transformer.` prefix, `attn.bias` buffers). The weights
//! are sparse files of zeros: the full sizes (up to 6 GB for gpt2-xl) cost no disk, so every
//! size's header and shapes are checked, and GPT-2 small is loaded and run.

use std::io::Write;
use std::path::Path;

mod common;

use burn::tensor::{DType, Device, Int, Tensor};
use nexttoken::model::{Checkpoint, Gpt2Config, ModelError};

fn hub_config(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hub-configs")
        .join(format!("{name}.config.json"));
    std::fs::read_to_string(path).unwrap()
}

/// A float32 safetensors file whose data is a hole: a header, then `set_len`.
fn write_sparse_safetensors(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let mut offset = 0usize;
    let mut header = serde_json::Map::new();
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.set_len((8 + text.len() + offset) as u64).unwrap();
}

/// A folder with the Hub's `config.json` for `config_name` beside weights shaped as `weights`.
fn checkpoint(config_name: &str, weights: &Gpt2Config) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), hub_config(config_name)).unwrap();
    write_sparse_safetensors(
        &dir.path().join("model.safetensors"),
        &common::gpt2_tensors(weights, true),
    );
    dir
}

#[test]
fn every_official_config_opens_with_weights_of_its_size() {
    for (name, preset) in Gpt2Config::presets() {
        let dir = checkpoint(name, &preset);
        let checkpoint = Checkpoint::open(dir.path()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(checkpoint.config(), &preset, "{name}");
        assert_eq!(checkpoint.dtype(), DType::F32, "{name}");
        assert_eq!(checkpoint.config().eos_token_id, 50256, "{name}");
    }
}

/// GPT-2 small at full size: the Hub's spelling loads into every parameter and runs.
#[test]
fn gpt2_small_loads_and_runs() {
    let dir = checkpoint("gpt2", &Gpt2Config::gpt2());
    let device = Device::flex();
    let model = Checkpoint::open(dir.path())
        .and_then(|mut checkpoint| checkpoint.load(&device))
        .unwrap();
    let logits = model.forward(Tensor::<2, Int>::from_data([[464, 3290]], &device));
    assert_eq!(logits.dims(), [1, 2, 50257]);
    let values: Vec<f32> = logits.into_data().try_to_vec().unwrap();
    assert!(values.iter().all(|v| v.is_finite()));
}

#[test]
fn a_config_paired_with_another_sizes_weights_is_refused() {
    for (name, preset) in Gpt2Config::presets() {
        let others = Gpt2Config::presets()
            .into_iter()
            .filter(|(other, _)| *other != name);
        for (other, weights) in others {
            let dir = checkpoint(name, &weights);
            let err = Checkpoint::open(dir.path()).unwrap_err();
            assert!(
                matches!(err, ModelError::ConfigMismatch { .. }),
                "{name} config with {other} weights: {err:?}"
            );
            let message = err.to_string();
            assert!(
                message.contains(&format!("config.json says n_embd = {}", preset.n_embd)),
                "{message}"
            );
            assert!(message.contains("use the config.json that came with these weights"));
        }
    }
}

#[test]
fn a_config_of_another_model_type_is_refused_with_its_path() {
    let dir = checkpoint("gpt2", &Gpt2Config::gpt2());
    let text = hub_config("gpt2").replace("\"gpt2\"", "\"llama\"");
    std::fs::write(dir.path().join("config.json"), text).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::InvalidConfig { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("config.json is not a usable GPT-2 config.json"),
        "{message}"
    );
    assert!(message.contains("model_type is \"llama\""), "{message}");
}
