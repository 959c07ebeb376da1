//! `--model FILE.gguf`: GPT-2 GGUF files load and generate what their checkpoint does, and a file
//! nexttoken cannot run is refused with one line naming why. The files are written here, from
//! the trained fixture, as llama.cpp's converter lays them out (its names, matrices by output,
//! the tokenizer's tokens); files made by llama.cpp's own tools are checked by
//! `nexttoken-model`'s `gguf_files` test.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use nexttoken_cpu::quant::{Block, BlockQ8_0, quantize_q8_0};
use nexttoken_gguf::{TensorType, Value, Writer};
use nexttoken_tokenizer::Gpt2Tokenizer;
use safetensors::SafeTensors;

/// How a matrix is stored in the test's files.
#[derive(Clone, Copy)]
enum Matrices {
    F32,
    Q8_0,
    /// A type ggml has and nexttoken does not read (zeros: never read).
    Q8_1,
}

/// The trained fixture as a GGUF file; `edit` changes the writer's metadata first.
fn fixture_gguf(matrices: Matrices, architecture: &str, tokens: Vec<Value>) -> Writer {
    let bytes = std::fs::read(repo().join("tests/fixtures/tiny-trained/model.safetensors"))
        .expect("the fixture");
    let file = SafeTensors::deserialize(&bytes).expect("safetensors");
    let floats = |name: &str| -> (Vec<f32>, Vec<usize>) {
        let view = file.tensor(&format!("transformer.{name}")).expect(name);
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        (values, view.shape().to_vec())
    };
    let le = |values: &[f32]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
    let mut writer = Writer::new()
        .metadata("general.architecture", Value::String(architecture.into()))
        .metadata("gpt2.block_count", Value::U32(2))
        .metadata("gpt2.context_length", Value::U32(64))
        .metadata("gpt2.embedding_length", Value::U32(32))
        .metadata("gpt2.feed_forward_length", Value::U32(128))
        .metadata("gpt2.attention.head_count", Value::U32(4))
        .metadata("gpt2.attention.layer_norm_epsilon", Value::F32(1e-5))
        .metadata("tokenizer.ggml.model", Value::String("gpt2".into()))
        .metadata("tokenizer.ggml.tokens", Value::Array(tokens));
    // A matrix by output (`[n, k]` rows, ggml's `ne = [k, n]`), from a `[rows, columns]` tensor
    // that is by output already (`transposed` false) or Conv1D's `[k, n]`.
    let matrix = |writer: Writer, gguf_name: &str, name: &str, transposed: bool| {
        let (values, shape) = floats(name);
        let [rows, columns] = [shape[0], shape[1]];
        let (by_output, [n, k]) = if transposed {
            let mut out = vec![0.0; values.len()];
            for r in 0..rows {
                for c in 0..columns {
                    out[c * rows + r] = values[r * columns + c];
                }
            }
            (out, [columns, rows])
        } else {
            (values, [rows, columns])
        };
        match matrices {
            Matrices::F32 => writer.tensor(gguf_name, &[k, n], TensorType::F32, &le(&by_output)),
            Matrices::Q8_0 => writer.tensor(
                gguf_name,
                &[k, n],
                TensorType::Q8_0,
                BlockQ8_0::as_bytes(&quantize_q8_0(&by_output)),
            ),
            Matrices::Q8_1 => writer.tensor(
                gguf_name,
                &[k, n],
                TensorType::Q8_1,
                &vec![0; n * k / 32 * 36],
            ),
        }
    };
    let vector = |writer: Writer, gguf_name: &str, name: &str| {
        let (values, shape) = floats(name);
        writer.tensor(gguf_name, &[shape[0]], TensorType::F32, &le(&values))
    };
    writer = matrix(writer, "token_embd.weight", "wte.weight", false);
    let (wpe, _) = floats("wpe.weight");
    writer = writer.tensor(
        "position_embd.weight",
        &[32, 64],
        TensorType::F32,
        &le(&wpe),
    );
    for i in 0..2 {
        let h = |name: &str| format!("h.{i}.{name}");
        let blk = |name: &str| format!("blk.{i}.{name}");
        for (ours, theirs) in [("ln_1", "attn_norm"), ("ln_2", "ffn_norm")] {
            writer = vector(
                writer,
                &blk(&format!("{theirs}.weight")),
                &h(&format!("{ours}.weight")),
            );
            writer = vector(
                writer,
                &blk(&format!("{theirs}.bias")),
                &h(&format!("{ours}.bias")),
            );
        }
        for (ours, theirs) in [
            ("attn.c_attn", "attn_qkv"),
            ("attn.c_proj", "attn_output"),
            ("mlp.c_fc", "ffn_up"),
            ("mlp.c_proj", "ffn_down"),
        ] {
            writer = matrix(
                writer,
                &blk(&format!("{theirs}.weight")),
                &h(&format!("{ours}.weight")),
                true,
            );
            writer = vector(
                writer,
                &blk(&format!("{theirs}.bias")),
                &h(&format!("{ours}.bias")),
            );
        }
    }
    writer = vector(writer, "output_norm.weight", "ln_f.weight");
    vector(writer, "output_norm.bias", "ln_f.bias")
}

fn gpt2_tokens() -> Vec<Value> {
    let tokenizer = Gpt2Tokenizer::new();
    (0..50257)
        .map(|id| Value::String(tokenizer.byte_level_token(id).expect("in the vocabulary")))
        .collect()
}

fn written(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, bytes).expect("written");
    path.display().to_string()
}

fn ids_from(model: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let args = [
        &["generate", "-m", model, "-n", "8", "--ignore-eos", "--json"][..],
        extra,
        &["Every effort moves you"],
    ]
    .concat();
    json_lines(&args)
        .iter()
        .map(|line| line["ids"].clone())
        .collect()
}

#[test]
fn gguf_files_generate_what_their_checkpoint_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let f32_file = written(
        dir.path(),
        "tiny-f32.gguf",
        &fixture_gguf(Matrices::F32, "gpt2", gpt2_tokens()).to_bytes(),
    );
    let q8_file = written(
        dir.path(),
        "tiny-q8_0.gguf",
        &fixture_gguf(Matrices::Q8_0, "gpt2", gpt2_tokens()).to_bytes(),
    );
    let checkpoint = tiny_trained();
    assert_eq!(ids_from(&f32_file, &[]), ids_from(&checkpoint, &[]));
    assert_eq!(
        ids_from(&q8_file, &[]),
        ids_from(&checkpoint, &["--dtype", "q8_0"])
    );
    // A GGUF loads as it is stored.
    assert_fails_with(
        &nexttoken(&["generate", "-m", &q8_file, "--dtype", "q4_0", "x"]),
        "is stored as q8_0, and a GGUF file loads as it is stored",
    );
}

/// `--model REPO --gguf-file NAME`: one GGUF file of a Hub repo (a fake Hub here), as
/// llama.cpp's `--hf-repo`/`--hf-file` take it; and the same from a local folder.
#[test]
fn a_gguf_file_is_picked_from_a_hub_repo_or_a_folder_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bytes = fixture_gguf(Matrices::Q8_0, "gpt2", gpt2_tokens()).to_bytes();
    let local = written(dir.path(), "tiny-q8_0.gguf", &bytes);
    let hub = nexttoken_hub::fake::FakeHub::start();
    hub.add_file("someone/gpt2-GGUF", "tiny-q8_0.gguf", bytes);
    let home = tempfile::tempdir().expect("temp dir");
    let home = home.path().display().to_string();
    let env = [("HF_ENDPOINT", hub.endpoint()), ("HF_HOME", home.as_str())];
    let from_hub = |file: &str| {
        nexttoken_with_env(
            &[
                "generate",
                "-m",
                "someone/gpt2-GGUF",
                "--gguf-file",
                file,
                "-n",
                "8",
                "--ignore-eos",
                "--json",
                "Every effort moves you",
            ],
            &env,
        )
    };
    let output = from_hub("tiny-q8_0.gguf");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let expected = ids_from(&local, &[]);
    assert_eq!(line["ids"], expected[0]);
    assert_eq!(
        ids_from(
            &dir.path().display().to_string(),
            &["--gguf-file", "tiny-q8_0.gguf"]
        ),
        expected
    );
    assert_fails_with(
        &from_hub("tiny-q4_0.gguf"),
        "`someone/gpt2-GGUF` has no file tiny-q4_0.gguf",
    );
    assert_fails_with(
        &nexttoken(&["generate", "--gguf-file", "tiny-q8_0.gguf", "x"]),
        "--gguf-file tiny-q8_0.gguf names a file in a repo or folder: give it with --model",
    );
}

#[test]
fn gguf_files_nexttoken_cannot_run_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let llama = fixture_gguf(Matrices::F32, "llama", gpt2_tokens()).to_bytes();
    assert_fails_with(
        &nexttoken(&[
            "generate",
            "-m",
            &written(dir.path(), "llama.gguf", &llama),
            "x",
        ]),
        "is a GGUF of the `llama` architecture; nexttoken runs GPT-2 (`gpt2`) only",
    );
    let good = fixture_gguf(Matrices::F32, "gpt2", gpt2_tokens()).to_bytes();
    let cut = written(dir.path(), "cut.gguf", &good[..good.len() - 100]);
    assert_fails_with(
        &nexttoken(&["generate", "-m", &cut, "x"]),
        "is truncated or corrupt",
    );
    let mut tokens = gpt2_tokens();
    tokens[5] = Value::String("&&".into());
    let other = fixture_gguf(Matrices::F32, "gpt2", tokens).to_bytes();
    assert_fails_with(
        &nexttoken(&[
            "generate",
            "-m",
            &written(dir.path(), "other.gguf", &other),
            "x",
        ]),
        "tokenizer differs from GPT-2's at id 5 (Some(\"&&\") where GPT-2 has Some(\"&\"))",
    );
    let q8_1 = fixture_gguf(Matrices::Q8_1, "gpt2", gpt2_tokens()).to_bytes();
    let refused = nexttoken(&[
        "generate",
        "-m",
        &written(dir.path(), "q8_1.gguf", &q8_1),
        "x",
    ]);
    assert_fails_with(&refused, "is Q8_1, which nexttoken does not read");
    assert_fails_with(&refused, "tensor `token_embd.weight` in");
    // A head of its own, as llama-quantize writes one for other models.
    let untied = fixture_gguf(Matrices::F32, "gpt2", gpt2_tokens())
        .tensor(
            "output.weight",
            &[32, 50257],
            TensorType::Q8_0,
            &vec![0; 50257 * 34],
        )
        .to_bytes();
    assert_fails_with(
        &nexttoken(&[
            "generate",
            "-m",
            &written(dir.path(), "untied.gguf", &untied),
            "x",
        ]),
        "has an output.weight (Q8_0) that is not its token_embd.weight (F32)",
    );
}
