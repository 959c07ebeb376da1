//! Every way a checkpoint can be wrong gets an error that names the problem, never a panic.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor};
use nexttoken::model::{Checkpoint, Gpt2, ModelError};
use safetensors::Dtype;

mod common;

fn fixture() -> PathBuf {
    common::fixture("tiny-random")
}

/// A copy of the tiny-random checkpoint whose tensors pass through `edit` first.
fn edited_checkpoint(edit: impl Fn(&mut Vec<common::NamedTensor>)) -> tempfile::TempDir {
    common::edited_checkpoint(&fixture(), edit)
}

fn load(path: impl AsRef<Path>, device: &Device) -> Result<Gpt2, ModelError> {
    Checkpoint::open(path)?.load(device)
}

fn load_err(path: &Path) -> ModelError {
    match load(path, &Device::flex()) {
        Ok(_) => panic!("{} loaded, but should not have", path.display()),
        Err(e) => e,
    }
}

fn assert_message(err: &ModelError, parts: &[&str]) {
    let message = err.to_string();
    for part in parts {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }
}

#[test]
fn missing_path() {
    let err = load_err(Path::new("/no/such/model"));
    assert!(matches!(err, ModelError::NotFound { .. }), "{err:?}");
    assert_message(&err, &["/no/such/model", "does not exist", "config.json"]);
}

#[test]
fn directory_without_weights() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::NoWeights { .. }), "{err:?}");
    assert_message(&err, &["no model.safetensors", "download"]);
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::CorruptWeights { .. }), "{err:?}");
    assert_message(&err, &["not a valid safetensors file", "download it again"]);
}

#[test]
fn garbage_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, b"<html>404 Not Found</html>").unwrap();
    let err = load_err(&path);
    assert!(matches!(err, ModelError::CorruptWeights { .. }), "{err:?}");
}

#[test]
fn missing_tensor() {
    let dir =
        edited_checkpoint(|tensors| tensors.retain(|(name, ..)| name != "h.1.mlp.c_fc.weight"));
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err:?}");
    assert_message(&err, &["h.1.mlp.c_fc.weight"]);
}

#[test]
fn missing_layer_norm_is_named_as_hugging_face_names_it() {
    let dir = edited_checkpoint(|tensors| tensors.retain(|(name, ..)| name != "ln_f.weight"));
    assert_message(&load_err(dir.path()), &["`ln_f.weight`"]);
}

#[test]
fn tensor_of_the_wrong_shape() {
    let dir = edited_checkpoint(|tensors| {
        let c_fc = tensors
            .iter_mut()
            .find(|(name, ..)| name == "h.0.mlp.c_fc.weight")
            .unwrap();
        c_fc.2.reverse(); // [16, 64] -> [64, 16], as a transposed export would have it
    });
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::WrongShape { .. }), "{err:?}");
    assert_message(&err, &["h.0.mlp.c_fc.weight", "[64, 16]", "[16, 64]"]);
}

#[test]
fn half_precision_weights() {
    let dir = edited_checkpoint(|tensors| {
        let wpe = tensors
            .iter_mut()
            .find(|(name, ..)| name == "wpe.weight")
            .unwrap();
        wpe.1 = Dtype::F16;
        wpe.3.truncate(wpe.3.len() / 2);
    });
    let err = load_err(dir.path());
    assert!(
        matches!(err, ModelError::UnsupportedDtype { .. }),
        "{err:?}"
    );
    assert_message(&err, &["wpe.weight", "float32"]);
}

#[test]
fn config_that_disagrees_with_the_weights() {
    let cases = [
        ("n_layer", "3"),
        ("n_embd", "32"),
        ("n_positions", "64"),
        ("vocab_size", "50000"),
    ];
    for (field, value) in cases {
        let dir = edited_checkpoint(|_| {});
        let config_path = dir.path().join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        config[field] = serde_json::from_str(value).unwrap();
        std::fs::write(&config_path, config.to_string()).unwrap();
        let err = load_err(dir.path());
        assert!(
            matches!(err, ModelError::ConfigMismatch { .. }),
            "{field}: {err:?}"
        );
        assert_message(&err, &[&format!("config.json says {field} = {value}")]);
    }
}

#[test]
fn config_that_is_not_json() {
    let dir = edited_checkpoint(|_| {});
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::InvalidConfig { .. }), "{err:?}");
    assert_message(&err, &["config.json", "not a usable GPT-2 config.json"]);
}

#[test]
fn config_without_a_field() {
    let dir = edited_checkpoint(|_| {});
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"n_layer": 2, "n_head": 2, "n_embd": 16, "vocab_size": 50257}"#,
    )
    .unwrap();
    assert_message(&load_err(dir.path()), &["n_positions"]);
}

#[test]
fn unexpected_tensor() {
    let dir = edited_checkpoint(|tensors| {
        let mut extra = tensors
            .iter()
            .find(|(name, ..)| name == "ln_f.bias")
            .unwrap()
            .clone();
        extra.0 = "h.0.attn.q_norm.weight".into();
        tensors.push(extra);
    });
    let err = load_err(dir.path());
    assert!(
        matches!(err, ModelError::UnexpectedTensor { .. }),
        "{err:?}"
    );
    assert_message(&err, &["h.0.attn.q_norm.weight"]);
}

#[test]
fn file_without_config_and_unknown_width() {
    let dir = edited_checkpoint(|_| {});
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::NoConfig { .. }), "{err:?}");
    assert_message(&err, &["n_embd=16", "config.json"]);
}

/// Hugging Face files come in several spellings: `transformer.`-prefixed keys, the tied
/// `lm_head.weight` saved out, and the causal-mask buffers of older versions. All load, and give
/// the same logits as the plain file.
#[test]
fn hugging_face_key_variants_load_the_same_model() {
    let dir = edited_checkpoint(|tensors| {
        let wte = tensors
            .iter()
            .find(|(name, ..)| name == "wte.weight")
            .unwrap()
            .clone();
        for (name, ..) in tensors.iter_mut() {
            *name = format!("transformer.{name}");
        }
        tensors.push(("lm_head.weight".into(), wte.1, wte.2, wte.3));
        for layer in 0..2 {
            let mask = vec![1u8; 32 * 32];
            tensors.push((
                format!("transformer.h.{layer}.attn.bias"),
                Dtype::BOOL,
                vec![1, 1, 32, 32],
                mask,
            ));
        }
    });
    let device = Device::flex();
    let plain = load(fixture(), &device).unwrap();
    // A path to the file itself works as well as the directory.
    let variant = load(dir.path().join("model.safetensors"), &device).unwrap();
    let ids = Tensor::<2, Int>::from_data([[464, 3290, 318]], &device);
    plain
        .forward(ids.clone())
        .into_data()
        .assert_eq(&variant.forward(ids).into_data(), true);
}
