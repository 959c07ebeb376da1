//! Correctness against Hugging Face transformers: greedy ids and logits for the committed tiny
//! checkpoints and the bundled model. The reference data comes from `scripts/make_fixtures.py`
//! (`cargo xtask goldens`), which runs the same loop on `GPT2LMHeadModel` in PyTorch.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use nexttoken::generate::{GenerationConfig, generate};
use nexttoken::model::{Gpt2, load};
use nexttoken::tokenizer::Gpt2Tokenizer;
use serde::Deserialize;

const FORMAT_VERSION: u32 = 1;
/// Largest accepted |ours - HF| for a logit, relative to max(1, |HF|). float32 on different
/// matmul kernels differs by ~1e-6 relative; 1e-4 leaves room and still catches any real bug.
const LOGIT_TOLERANCE: f32 = 1e-4;
/// A step whose HF top-2 margin is below this is a near-tie: a different pick there is float
/// noise, not a bug, and the rest of that row is no longer comparable.
const NEAR_TIE: f32 = 1e-4;

#[derive(Deserialize)]
struct Golden {
    format_version: u32,
    model: String,
    model_dir: String,
    context_length: usize,
    new_tokens: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    prompts: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    greedy_ids: Vec<Vec<u32>>,
    steps: Vec<Step>,
    crops: bool,
}

#[derive(Deserialize)]
struct Step {
    /// Per row: the five largest logits as (id, logit).
    topk: Vec<Vec<(u32, f32)>>,
    top2_gap: Vec<f32>,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn goldens() -> Vec<(PathBuf, Golden)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/goldens"))
        .expect("tests/goldens exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no goldens in tests/goldens: run `cargo xtask goldens`"
    );
    files
        .into_iter()
        .map(|path| {
            let golden: Golden = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask goldens`", path.display()));
            assert_eq!(
                golden.format_version,
                FORMAT_VERSION,
                "{} has format {}, this test reads {FORMAT_VERSION}: run `cargo xtask goldens`",
                path.display(),
                golden.format_version
            );
            (path, golden)
        })
        .collect()
}

fn load_golden_model(golden: &Golden, device: &Device) -> Gpt2 {
    let model = load(root().join(&golden.model_dir), device)
        .unwrap_or_else(|e| panic!("loading {}: {e}", golden.model));
    assert_eq!(model.context_length(), golden.context_length);
    model
}

#[test]
fn tokenizer_matches_hugging_face() {
    let tokenizer = Gpt2Tokenizer::new();
    for (_, golden) in goldens() {
        for case in &golden.cases {
            for (prompt, ids) in case.prompts.iter().zip(&case.input_ids) {
                assert_eq!(
                    &tokenizer.encode(prompt),
                    ids,
                    "{}/{}",
                    golden.model,
                    case.name
                );
            }
        }
    }
}

#[test]
fn greedy_ids_match_hugging_face() {
    let device = Device::flex();
    for (_, golden) in goldens() {
        let model = load_golden_model(&golden, &device);
        let config = GenerationConfig::new(golden.new_tokens).without_eos();
        for case in &golden.cases {
            let out = generate(&model, &case.input_ids, &config, |_| {}).unwrap();
            for (row, (ours, theirs)) in out.tokens.iter().zip(&case.greedy_ids).enumerate() {
                compare_row(&golden.model, case, row, ours, theirs);
            }
        }
    }
}

/// Fails on the first differing step unless Hugging Face's choice there was a near-tie.
fn compare_row(model: &str, case: &Case, row: usize, ours: &[u32], theirs: &[u32]) {
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{model}/{}: row {row} length",
        case.name
    );
    let Some(step) = ours.iter().zip(theirs).position(|(a, b)| a != b) else {
        return;
    };
    let record = &case.steps[step];
    let gap = record.top2_gap[row];
    assert!(
        gap < NEAR_TIE,
        "{model}/{} row {row}: first difference at step {step}: ours {} vs Hugging Face {} \
         (HF top-5 {:?}, HF top-2 margin {gap:.3e}, not a near-tie)\n ours:   {ours:?}\n theirs: {theirs:?}",
        case.name,
        ours[step],
        theirs[step],
        record.topk[row],
    );
    eprintln!(
        "{model}/{} row {row}: near-tie at step {step} (margin {gap:.1e}), rest skipped",
        case.name
    );
}

#[test]
fn first_step_logits_match_hugging_face() {
    let device = Device::flex();
    let mut report = Vec::new();
    for (path, golden) in goldens() {
        let model = load_golden_model(&golden, &device);
        let bytes = std::fs::read(path.with_extension("logits.safetensors")).unwrap();
        let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for case in &golden.cases {
            let expected = reference.tensor(&case.name).unwrap();
            let expected: Vec<f32> = expected
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let actual = last_logits(&model, &case.input_ids, &device);
            let (max_abs, mean_abs, worst) = differences(&actual, &expected);
            assert!(
                worst <= LOGIT_TOLERANCE,
                "{}/{}: logits differ by up to {max_abs:.3e} (relative {worst:.3e} > {LOGIT_TOLERANCE:e}); \
                 first pairs (ours, HF): {:?}",
                golden.model,
                case.name,
                actual.iter().zip(&expected).take(5).collect::<Vec<_>>()
            );
            assert_eq!(case.crops, case.input_ids[0].len() > golden.context_length);
            report.push(format!(
                "{:<28} {:<14} max abs {max_abs:.2e}  mean abs {mean_abs:.2e}",
                golden.model, case.name
            ));
        }
    }
    eprintln!("logits vs Hugging Face (flex):\n{}", report.join("\n"));
}

/// The model's last-position logits for a batch, with the input cropped as the loop crops it.
fn last_logits(model: &Gpt2, ids: &[Vec<u32>], device: &Device) -> Vec<f32> {
    let start = ids[0].len().saturating_sub(model.context_length());
    let flat: Vec<i64> = ids
        .iter()
        .flat_map(|row| row[start..].iter().map(|&id| i64::from(id)))
        .collect();
    let shape = [ids.len(), ids[0].len() - start];
    let input = Tensor::<2, Int>::from_data(TensorData::new(flat, shape), device);
    model.forward_last(input).into_data().try_to_vec().unwrap()
}

/// (max abs, mean abs, max abs relative to max(1, |expected|)).
fn differences(actual: &[f32], expected: &[f32]) -> (f32, f32, f32) {
    assert_eq!(actual.len(), expected.len(), "logit row length");
    let mut max_abs = 0f32;
    let mut sum = 0f64;
    let mut worst = 0f32;
    for (&a, &e) in actual.iter().zip(expected) {
        let diff = (a - e).abs();
        max_abs = max_abs.max(diff);
        worst = worst.max(diff / e.abs().max(1.0));
        sum += f64::from(diff);
    }
    (max_abs, (sum / actual.len() as f64) as f32, worst)
}
