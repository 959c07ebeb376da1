//! Every way a checkpoint can be wrong gets an error that names the problem, never a panic.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Int, Tensor, f16};
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

/// The weights are read from the file when loaded, not when opened: a file cut short in
/// between (a download or copy still under way) is an error naming it, not a panic.
#[test]
fn a_file_cut_short_after_opening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    std::fs::copy(
        fixture().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let mut checkpoint = Checkpoint::open(&path).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(bytes.len() as u64 / 2)
        .unwrap();
    let err = checkpoint.load(&Device::flex()).unwrap_err();
    assert!(matches!(err, ModelError::CorruptWeights { .. }), "{err:?}");
    assert_message(&err, &[&path.display().to_string(), "download it again"]);
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
        let c_fc = common::named(tensors, "h.0.mlp.c_fc.weight");
        c_fc.2.reverse(); // [16, 64] -> [64, 16], as a transposed export would have it
    });
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::WrongShape { .. }), "{err:?}");
    assert_message(&err, &["h.0.mlp.c_fc.weight", "[64, 16]", "[16, 64]"]);
}

#[test]
fn integer_weights() {
    let dir = edited_checkpoint(|tensors| {
        let wpe = common::named(tensors, "wpe.weight");
        wpe.1 = Dtype::I32;
    });
    let err = load_err(dir.path());
    assert!(
        matches!(err, ModelError::UnsupportedDtype { .. }),
        "{err:?}"
    );
    assert_message(&err, &["wpe.weight", "I32", "float weights"]);
}

#[test]
fn a_half_precision_tensor_among_float32_ones_loads_as_float32() {
    let dir = edited_checkpoint(|tensors| {
        let wpe = common::named(tensors, "wpe.weight");
        let halves: Vec<u8> = wpe
            .3
            .chunks_exact(4)
            .flat_map(|b| {
                let value = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                f16::from_f32(value).to_le_bytes()
            })
            .collect();
        wpe.1 = Dtype::F16;
        wpe.3 = halves;
    });
    let mut checkpoint = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(checkpoint.dtype(), DType::F32);
    let model = checkpoint.load(&Device::flex()).unwrap();
    assert_eq!(model.wpe.weight.val().dtype(), DType::F32);
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
        let mut extra = common::named(tensors, "ln_f.bias").clone();
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
        let wte = common::named(tensors, "wte.weight").clone();
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

/// The tiny-trained fixture's first-step logits as Hugging Face computed them, for one case.
fn reference_logits(case: &str) -> Vec<f32> {
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/tiny-trained.logits.safetensors"),
    )
    .unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensor(case)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The model's last-position logits for `ids`.
fn last_logits(model: &Gpt2, ids: &[u32], device: &Device) -> Vec<f32> {
    let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
    let ids = Tensor::<1, Int>::from_data(ids.as_slice(), device).unsqueeze::<2>();
    model.forward_last(ids).into_data().try_to_vec().unwrap()
}

fn assert_close_to(actual: &[f32], expected: &[f32], label: &str) {
    assert_eq!(actual.len(), expected.len(), "{label}: logit count");
    let worst = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs() / e.abs().max(1.0))
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-4,
        "{label}: logits differ by up to {worst:e} (relative)"
    );
}

/// The Hub's own spelling of a checkpoint (no `transformer.` prefix, `attn.bias` buffers) gives
/// Hugging Face's logits, not only the same as another spelling.
#[test]
fn the_hub_spelling_gives_hugging_faces_logits() {
    let fixture = common::fixture("tiny-trained");
    let dir = common::edited_checkpoint(&fixture, |tensors| {
        let positions = 64;
        for layer in 0..2 {
            tensors.push((
                format!("h.{layer}.attn.bias"),
                Dtype::F32,
                vec![1, 1, positions, positions],
                vec![0; positions * positions * 4],
            ));
        }
    });
    let names = tensor_names(&dir.path().join("model.safetensors"));
    assert!(
        names.iter().all(|name| !name.starts_with("transformer.")),
        "{names:?}"
    );
    let device = Device::flex();
    let model = load(dir.path(), &device).unwrap();
    // "Every effort moves you", the golden's `few_tokens` case.
    let logits = last_logits(&model, &[6109, 3626, 6100, 345], &device);
    assert_close_to(&logits, &reference_logits("few_tokens"), "Hub spelling");
}

/// A checkpoint split into shards by a `model.safetensors.index.json` loads into the same
/// model, from the folder or the index file.
#[test]
fn sharded_checkpoints_load() {
    let fixture = common::fixture("tiny-trained");
    let dir = sharded_checkpoint(&fixture, 3);
    let device = Device::flex();
    for path in [
        dir.path().to_path_buf(),
        dir.path().join("model.safetensors.index.json"),
    ] {
        let checkpoint = Checkpoint::open(&path).unwrap();
        assert_eq!(checkpoint.files().count(), 3);
        let model = load(&path, &device).unwrap();
        let logits = last_logits(&model, &[6109, 3626, 6100, 345], &device);
        assert_close_to(&logits, &reference_logits("few_tokens"), "sharded");
    }
}

#[test]
fn a_missing_shard_is_named() {
    let dir = sharded_checkpoint(&common::fixture("tiny-trained"), 2);
    let shard = dir.path().join("model-00002-of-00002.safetensors");
    std::fs::remove_file(&shard).unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::MissingShard { .. }), "{err:?}");
    assert_message(
        &err,
        &["model-00002-of-00002.safetensors", "download every shard"],
    );
}

#[test]
fn pytorch_weights_name_the_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("pytorch_model.bin");
    std::fs::write(&bin, b"PK\x03\x04 a zip of pickles").unwrap();
    for path in [dir.path(), bin.as_path()] {
        let err = load_err(path);
        assert!(matches!(err, ModelError::PytorchWeights { .. }), "{err:?}");
        assert_message(&err, &["pytorch_model.bin", "convert them to safetensors"]);
    }
}

/// `lm_head.weight` equal to `wte.weight` is the tied head saved out (it loads; see
/// `hugging_face_key_variants_load_the_same_model`); a different one would be silently ignored,
/// so it is refused.
#[test]
fn an_untied_output_head_is_refused() {
    let dir = edited_checkpoint(|tensors| {
        let mut head = common::named(tensors, "wte.weight").clone();
        head.0 = "lm_head.weight".into();
        head.3[0] ^= 0x01;
        tensors.push(head);
    });
    let err = load_err(dir.path());
    assert!(matches!(err, ModelError::UntiedHead { .. }), "{err:?}");
    assert_message(&err, &["lm_head.weight", "differs from wte.weight"]);
}

/// The tensor names in a safetensors file.
pub fn tensor_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    safetensors::SafeTensors::deserialize(&bytes)
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
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
    names.sort();
    let dir = tempfile::tempdir().unwrap();
    let mut weight_map = serde_json::Map::new();
    let per_shard = names.len().div_ceil(shards);
    for (index, chunk) in names.chunks(per_shard).enumerate() {
        let shard = format!("model-{:05}-of-{shards:05}.safetensors", index + 1);
        let views: std::collections::HashMap<String, safetensors::tensor::TensorView> = chunk
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
