//! GGUF files written by llama.cpp's own tools against the safetensors checkpoint they came from.
//! The files are made outside the test (llama.cpp's converter and llama-quantize), so the tests
//! are ignored unless asked for: `NEXTTOKEN_GGUF_CHECKPOINT=DIR NEXTTOKEN_GGUF_DIR=DIR cargo test
//! -p nexttoken-model --test gguf_files -- --ignored`, where the second folder holds
//! `NAME-f32.gguf`, `NAME-q8_0.gguf` (`convert_hf_to_gguf.py --outtype`), `NAME-q4_0.gguf` and
//! `NAME-q4_k_m.gguf` (`llama-quantize`) of the first, NAME being its folder's name. Without
//! them they fail, naming what is missing. `cargo xtask test` makes them (llama-quantize's where
//! llama.cpp is built).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use nexttoken_model::{
    Checkpoint, GgufCheckpoint, Gpt2, Quantization, QuantizedWeight, token_tensor,
};

fn files() -> (PathBuf, impl Fn(&str) -> PathBuf) {
    let var = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("set {name} (see this file's comment)"))
    };
    let checkpoint = var("NEXTTOKEN_GGUF_CHECKPOINT");
    let dir = var("NEXTTOKEN_GGUF_DIR");
    let name = checkpoint
        .file_name()
        .expect("a folder")
        .to_string_lossy()
        .into_owned();
    (checkpoint, move |kind: &str| {
        dir.join(format!("{name}-{kind}.gguf"))
    })
}

fn logits(model: &Gpt2, device: &Device) -> Vec<f32> {
    let ids = [464u32, 318, 257, 1332, 286, 262, 6152, 1080];
    let logits: Tensor<2> = model.forward_last(token_tensor(&[&ids], device));
    logits
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("f32")
}

fn quantized(checkpoint: &Path, quantization: Quantization) -> Gpt2 {
    Checkpoint::open(checkpoint)
        .expect("opens")
        .load(&Device::flex())
        .expect("loads")
        .quantized(quantization)
        .expect("quantizes")
}

/// Every quantized matrix's blocks: the token embedding's (empty if it is float), then each
/// block's four.
fn bytes(model: &Gpt2) -> Vec<Vec<u8>> {
    let wte = model.wte.quantized.as_ref();
    let mut all = vec![wte.map(QuantizedWeight::gguf_bytes).unwrap_or_default()];
    for block in &model.h {
        for linear in [
            &block.attn.c_attn,
            &block.attn.c_proj,
            &block.mlp.c_fc,
            &block.mlp.c_proj,
        ] {
            all.push(linear.quantized.as_ref().expect("quantized").gguf_bytes());
        }
    }
    all
}

#[test]
#[ignore = "needs GGUF files made by llama.cpp's tools (see the file's comment)"]
fn llama_cpp_s_converter_files_load_as_their_checkpoint() {
    let device = Device::flex();
    let (checkpoint, gguf) = files();
    let float = Checkpoint::open(&checkpoint)
        .expect("checkpoint")
        .load(&device)
        .expect("loads");
    let expected = logits(&float, &device);

    let f32_file = GgufCheckpoint::open(gguf("f32")).expect("f32 GGUF");
    assert_eq!(
        f32_file.config(),
        Checkpoint::open(&checkpoint).expect("opens").config()
    );
    let got = logits(&f32_file.load(&device).expect("loads"), &device);
    assert_eq!(
        got, expected,
        "the same float32 weights compute the same logits"
    );

    // The converter's Q8_0 blocks are the bytes `--dtype q8_0` quantizes the checkpoint to.
    let quantized = quantized(&checkpoint, Quantization::Q8_0);
    let q8_file = GgufCheckpoint::open(gguf("q8_0")).expect("q8_0 GGUF");
    assert_eq!(q8_file.quantization(), Some(Quantization::Q8_0));
    let from_file = q8_file.load(&device).expect("loads");
    assert!(
        bytes(&from_file) == bytes(&quantized),
        "equal bytes, matrix for matrix"
    );
    assert_eq!(logits(&from_file, &device), logits(&quantized, &device));
}

#[test]
#[ignore = "needs GGUF files made by llama.cpp's tools (see the file's comment)"]
fn llama_quantize_s_q4_0_file_loads_as_its_checkpoint() {
    let device = Device::flex();
    let (checkpoint, gguf) = files();
    let expected = float_logits(&checkpoint, &device);
    // llama-quantize's Q4_0 quantizes every matrix as `--dtype q4_0` does, and the token
    // embedding (the head) in Q6_K, whose values load into Q8_0 blocks; a width that is not a
    // whole Q6_K super-block (256) falls back to Q8_0 for it, as `--dtype q4_0` quantizes it.
    let q4_file = GgufCheckpoint::open(gguf("q4_0")).expect("q4_0 GGUF");
    assert_eq!(q4_file.quantization(), Some(Quantization::Q4_0));
    let from_file = q4_file.load(&device).expect("loads");
    let quantized_q4 = quantized(&checkpoint, Quantization::Q4_0);
    assert!(
        bytes(&from_file)[1..] == bytes(&quantized_q4)[1..],
        "equal bytes, matrix for matrix"
    );
    let head = from_file.wte.quantized.as_ref().expect("blocks");
    assert_eq!(head.quantization(), Quantization::Q8_0);
    if !from_file.width().is_multiple_of(256) {
        assert_eq!(
            bytes(&from_file)[0],
            bytes(&quantized_q4)[0],
            "Q8_0 as ours"
        );
    }
    let error = distance(&logits(&from_file, &device), &expected);
    assert!(error < 0.5, "Q4_0 logits {error} of float32's norm away");
}

/// The safetensors checkpoint's own float32 logits.
fn float_logits(checkpoint: &Path, device: &Device) -> Vec<f32> {
    let model = Checkpoint::open(checkpoint)
        .expect("checkpoint")
        .load(device)
        .expect("loads");
    logits(&model, device)
}

/// `got`'s distance from `expected`, relative to `expected`'s norm.
fn distance(got: &[f32], expected: &[f32]) -> f32 {
    let norm = |values: &mut dyn Iterator<Item = f32>| values.map(|v| v * v).sum::<f32>().sqrt();
    let error = norm(&mut got.iter().zip(expected).map(|(g, e)| g - e));
    error / norm(&mut expected.iter().copied())
}

/// llama-quantize's Q4_K_M: k-quants where a row is whole 256-value super-blocks, and the
/// 32-value types it falls back to elsewhere (the bundled model's 128-wide rows), all widened
/// into Q8_0 blocks. Decoded wrong, any of them would put the logits far off; decoded right, the
/// mix of 4- to 6-bit types lands nearer float32's than Q4_0 does.
#[test]
#[ignore = "needs GGUF files made by llama.cpp's tools (see the file's comment)"]
fn llama_quantize_s_q4_k_m_file_loads_near_its_checkpoint() {
    let device = Device::flex();
    let (checkpoint, gguf) = files();
    let expected = float_logits(&checkpoint, &device);
    let file = GgufCheckpoint::open(gguf("q4_k_m")).expect("q4_k_m GGUF");
    let widened: Vec<String> = file
        .gguf()
        .tensors()
        .iter()
        .map(|t| t.kind.to_string())
        .filter(|kind| !["F32", "Q8_0", "Q4_0"].contains(&kind.as_str()))
        .collect();
    assert!(!widened.is_empty(), "no widened type in the file");
    let from_file = file.load(&device).expect("loads");
    let q4_0 = GgufCheckpoint::open(gguf("q4_0"))
        .expect("q4_0 GGUF")
        .load(&device)
        .expect("loads");
    let error = distance(&logits(&from_file, &device), &expected);
    let q4_0_error = distance(&logits(&q4_0, &device), &expected);
    assert!(
        error < q4_0_error,
        "Q4_K_M ({widened:?}) logits {error} of float32's norm away, Q4_0's {q4_0_error}"
    );
}
