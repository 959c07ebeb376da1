//! Cross-backend conformance against Hugging Face transformers.
//!
//! For every backend compiled into this build (`cargo test --features ndarray,wgpu,tch`), and for
//! every checkpoint in `tests/goldens/` (two tiny fixtures and the bundled model), the suite
//! checks greedy ids and logits against the reference recorded by `scripts/make_fixtures.py`
//! (`cargo xtask goldens`: the book's loop run on PyTorch's `GPT2LMHeadModel`), and each backend
//! against flex on the same inputs. A backend that is compiled in but cannot start fails the
//! suite: nothing is skipped silently.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

mod common;
#[path = "conformance/shapes.rs"]
mod shapes;

use burn::tensor::{DType, Device};
use nexttoken::backend::Backend;
use nexttoken::generate::{GenerationConfig, RowId, SamplingParams, Selection, Session, generate};
use nexttoken::model::{Checkpoint, Gpt2, ModelError, token_tensor};
use nexttoken::tokenizer::Gpt2Tokenizer;
use serde::Deserialize;

const FORMAT_VERSION: u32 = 1;

/// Largest accepted |ours - reference| for a logit, relative to max(1, |reference|). CPU float32
/// kernels that sum in another order differ by ~1e-6 relative; GPU backends (and lavapipe) may
/// reorder reductions further. Any real bug (a wrong GELU, a mask off by one, a missing bias)
/// moves logits by 1e-2 or more.
fn tolerance(backend: Backend) -> f32 {
    match backend {
        Backend::Flex | Backend::NdArray | Backend::Tch => 1e-4,
        Backend::Wgpu | Backend::Vulkan | Backend::Cuda => 1e-3,
    }
}

/// A step whose reference top-2 margin is below this is a near-tie: another pick there is float
/// noise, not a bug, and the rest of that row can no longer be compared.
const NEAR_TIE: f32 = 1e-4;

#[derive(Deserialize)]
struct Golden {
    format_version: u32,
    model: String,
    /// The dtype Hugging Face ran the model in: f32, or f16/bf16 for tests/goldens/half/.
    dtype: String,
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
    /// Per row; a row that stopped at `eos_token_id` ends with it.
    greedy_ids: Vec<Vec<u32>>,
    /// Rows stop at this id (the `ragged_early_end_of_text` cases); none run to the end.
    #[serde(default)]
    eos_token_id: Option<u32>,
    steps: Vec<Step>,
    crops: bool,
}

#[derive(Deserialize)]
struct Step {
    /// Per row: the five largest logits as (id, logit); none for a row that has stopped.
    topk: Vec<Vec<(u32, f32)>>,
    top2_gap: Vec<Option<f32>>,
    /// Half-precision goldens: per row, the logits of a few ids in the dtype and in float32.
    #[serde(default)]
    forced: Vec<Option<Forced>>,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn goldens() -> Vec<(PathBuf, Golden)> {
    goldens_in("tests/goldens")
}

fn goldens_in(dir: &str) -> Vec<(PathBuf, Golden)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no goldens in {dir}: run `cargo xtask goldens`"
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

/// Every compiled backend with its device; a backend that cannot start fails here.
fn backends() -> Vec<(Backend, Device)> {
    Backend::compiled()
        .into_iter()
        .map(|backend| {
            let device = backend
                .probe()
                .unwrap_or_else(|e| panic!("{backend} is compiled in but cannot run here: {e}"));
            (backend, device)
        })
        .collect()
}

/// The compiled backends other than flex, for the checks against flex's output.
fn backends_beside_flex() -> Vec<(Backend, Device)> {
    let others: Vec<_> = backends()
        .into_iter()
        .filter(|(backend, _)| *backend != Backend::Flex)
        .collect();
    assert!(!others.is_empty(), "only flex is compiled in");
    others
}

fn load(path: impl AsRef<std::path::Path>, device: &Device) -> Result<Gpt2, ModelError> {
    Checkpoint::open(path)?.load(device)
}

fn load_golden_model(golden: &Golden, device: &Device) -> Gpt2 {
    let model = load(root().join(&golden.model_dir), device)
        .unwrap_or_else(|e| panic!("loading {}: {e}", golden.model));
    assert_eq!(model.context_length(), golden.context_length);
    model
}

/// Each row's last-position logits, the row cropped to the context as the generation loop
/// crops it (rows run one at a time: they may differ in length).
fn last_logits(model: &Gpt2, ids: &[Vec<u32>], device: &Device) -> Vec<Vec<f32>> {
    ids.iter()
        .map(|row| {
            let window = &row[row.len().saturating_sub(model.context_length())..];
            model
                .forward_last(token_tensor(&[window], device))
                .into_data()
                .try_to_vec()
                .unwrap()
        })
        .collect()
}

/// (max abs, mean abs, max abs relative to max(1, |expected|)).
fn differences(actual: &[f32], expected: &[f32]) -> (f32, f32, f32) {
    assert_eq!(actual.len(), expected.len(), "logit row length");
    let (mut max_abs, mut worst, mut sum) = (0f32, 0f32, 0f64);
    for (&a, &e) in actual.iter().zip(expected) {
        let diff = (a - e).abs();
        max_abs = max_abs.max(diff);
        worst = worst.max(diff / e.abs().max(1.0));
        sum += f64::from(diff);
    }
    (max_abs, (sum / actual.len() as f64) as f32, worst)
}

/// The best and second-best ids of a logit row, and the margin between them.
fn top2(row: &[f32]) -> ((usize, f32), (usize, f32)) {
    let mut best = (0, f32::NEG_INFINITY);
    let mut second = (0, f32::NEG_INFINITY);
    for (id, &logit) in row.iter().enumerate() {
        if logit > best.1 {
            second = best;
            best = (id, logit);
        } else if logit > second.1 {
            second = (id, logit);
        }
    }
    (best, second)
}

#[test]
fn tokenizer_matches_hugging_face() {
    let tokenizer = Gpt2Tokenizer::new();
    for (_, golden) in goldens() {
        for case in &golden.cases {
            assert_eq!(case.prompts.len(), case.input_ids.len(), "{}", case.name);
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
fn greedy_ids_match_hugging_face_on_every_backend() {
    for (backend, device) in backends() {
        for (_, golden) in goldens() {
            let model = load_golden_model(&golden, &device);
            for case in &golden.cases {
                let config = GenerationConfig {
                    eos_token_id: case.eos_token_id,
                    ..GenerationConfig::new(golden.new_tokens)
                };
                // Each row's logits at each of its steps.
                let mut row_logits = vec![Vec::new(); case.input_ids.len()];
                let mut steps = 0;
                let out = generate(&model, &case.input_ids, &config, |step| {
                    let logits = step.logits.clone().into_data().try_to_vec::<f32>().unwrap();
                    let rows = step.ids.iter().enumerate().filter(|(_, id)| id.is_some());
                    for ((row, _), values) in rows.zip(logits.chunks_exact(model.vocab_size())) {
                        row_logits[row].push(values.to_vec());
                    }
                    steps += 1;
                    ControlFlow::Continue(())
                })
                .unwrap();
                let label = format!("{backend}: {}/{}", golden.model, case.name);
                assert_eq!(out.tokens.len(), case.greedy_ids.len(), "{label}: rows");
                assert_eq!(steps, case.steps.len(), "{label}: steps");
                for (row, (ours, theirs)) in out.tokens.iter().zip(&case.greedy_ids).enumerate() {
                    let label = format!("{label} row {row}");
                    compare_with_reference(&label, &model, case, row, ours, theirs);
                    // Every step on the reference's path (up to a near-tie where the paths part):
                    // the logits of the reference's top five ids.
                    let same = ours.iter().zip(theirs).take_while(|(a, b)| a == b).count();
                    assert_eq!(
                        row_logits[row].len(),
                        ours.len(),
                        "{label}: steps of the row"
                    );
                    for (step, row_logits) in row_logits[row].iter().enumerate().take(same + 1) {
                        let topk = &case.steps[step].topk[row];
                        assert_eq!(topk.len(), 5, "{label}: top-5 of step {step}");
                        let (expected, actual): (Vec<f32>, Vec<f32>) = topk
                            .iter()
                            .map(|&(id, logit)| (logit, row_logits[id as usize]))
                            .unzip();
                        let (max_abs, _, worst) = differences(&actual, &expected);
                        assert!(
                            worst <= tolerance(backend),
                            "{label}: step {step}: the reference's top-5 logits differ by up to \
                             {max_abs:.3e}: (ours, reference) {:?}",
                            actual.iter().zip(&expected).collect::<Vec<_>>()
                        );
                    }
                }
            }
        }
    }
}

/// Fails at the first differing step unless the reference's choice there was a near-tie, and
/// says which: both ids, both top-2 margins.
fn compare_with_reference(
    label: &str,
    model: &Gpt2,
    case: &Case,
    row: usize,
    ours: &[u32],
    theirs: &[u32],
) {
    assert_eq!(ours.len(), theirs.len(), "{label}: number of generated ids");
    let Some(step) = ours.iter().zip(theirs).position(|(a, b)| a != b) else {
        return;
    };
    let reference_gap = case.steps[step].top2_gap[row]
        .unwrap_or_else(|| panic!("{label}: the reference has no step {step}"));
    // Our logits at the same point of the reference's trajectory.
    let prefix: Vec<u32> = case.input_ids[row]
        .iter()
        .chain(&theirs[..step])
        .copied()
        .collect();
    let logits = &last_logits(model, &[prefix], &model.wte.weight.device())[0];
    let ((our_best, our_logit), (_, our_second)) = top2(logits);
    assert!(
        reference_gap < NEAR_TIE,
        "{label}: first difference at step {step}: ours {} vs reference {}\n  \
         reference: top-2 margin {reference_gap:.3e}, top-5 {:?}\n  \
         ours at that point: best {our_best} ({our_logit:.5}), top-2 margin {:.3e}, logit of the reference's pick {:.5}\n  \
         ours:      {ours:?}\n  reference: {theirs:?}",
        ours[step],
        theirs[step],
        case.steps[step].topk[row],
        our_logit - our_second,
        logits[theirs[step] as usize],
    );
    eprintln!(
        "{label}: near-tie at step {step} (margin {reference_gap:.1e}), rest of the row skipped"
    );
}

#[test]
fn logits_match_hugging_face_and_flex_on_every_backend() {
    let flex = Device::flex();
    let mut report = vec![format!(
        "{:<8} {:<27} {:<13} {:>11} {:>11} {:>11}",
        "backend", "model", "case", "max abs", "mean abs", "vs flex"
    )];
    for (backend, device) in backends() {
        for (path, golden) in goldens() {
            let model = load_golden_model(&golden, &device);
            let flex_model = load_golden_model(&golden, &flex);
            let bytes = std::fs::read(path.with_extension("logits.safetensors")).unwrap();
            let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for case in &golden.cases {
                let longest = case.input_ids.iter().map(Vec::len).max().unwrap_or(0);
                assert_eq!(case.crops, longest > golden.context_length);
                let expected = reference_logits(&reference, &case.name);
                let actual: Vec<f32> = last_logits(&model, &case.input_ids, &device).concat();
                let on_flex: Vec<f32> = last_logits(&flex_model, &case.input_ids, &flex).concat();
                let (max_abs, mean_abs, worst) = differences(&actual, &expected);
                let (vs_flex, _, worst_vs_flex) = differences(&actual, &on_flex);
                let limit = tolerance(backend);
                let label = format!("{backend}: {}/{}", golden.model, case.name);
                assert!(
                    worst <= limit,
                    "{label}: logits differ from the reference by up to {max_abs:.3e} \
                     (relative {worst:.3e} > {limit:e}); first pairs (ours, reference): {:?}",
                    actual.iter().zip(&expected).take(5).collect::<Vec<_>>()
                );
                assert!(
                    worst_vs_flex <= limit,
                    "{label}: logits differ from flex's by up to {vs_flex:.3e} (relative {worst_vs_flex:.3e} > {limit:e})"
                );
                report.push(format!(
                    "{backend:<8} {:<27} {:<13} {max_abs:>11.2e} {mean_abs:>11.2e} {vs_flex:>11.2e}",
                    golden.model, case.name
                ));
            }
        }
    }
    eprintln!(
        "last-position logits, |backend - Hugging Face| and |backend - flex|:\n{}",
        report.join("\n")
    );
}

/// A case's first-step logits as the golden's `.logits.safetensors` holds them (float32).
fn reference_logits(reference: &safetensors::SafeTensors, case: &str) -> Vec<f32> {
    reference
        .tensor(case)
        .unwrap_or_else(|e| panic!("{case}: {e}"))
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A half-precision golden's dtype, and the floor of its per-step tolerance: 6 units of the
/// dtype's last place at the logits' scale, 2⁻⁸ (bf16) or 2⁻¹¹ (f16) of max(1, |logit|), times
/// 6. Hugging Face's own half-vs-float32 difference on a step's ten recorded ids can be small
/// by chance where another id of the same step is off by more: at GPT-2 small's shape in bf16
/// one logit of ours was 0.141 from float32 where Hugging Face's largest was 0.042 (4.2 units
/// of the last place at that step's scale; f16 on the same steps stays within 0.83 of its
/// tolerance).
fn half_precision(dtype: &str) -> (DType, f32) {
    match dtype {
        "f16" => (DType::F16, 6.0 / 2048.0),
        "bf16" => (DType::BF16, 6.0 / 256.0),
        other => panic!("no half-precision tolerance for {other}"),
    }
}

/// How many times Hugging Face's own half-vs-float32 difference at a step ours may differ from
/// Hugging Face's half-precision logits there. PyTorch rounds to the dtype after every
/// operation, nexttoken's decode products once after float32 sums, so the two land on
/// different sides of float32 by up to about that difference each: 2 (flex's worst step uses
/// half of it). libtorch (tch) rounds as PyTorch does, but its CPU kernels differ by CPU: the
/// goldens were made on an AVX2 CPU, and on an AVX-512 BF16 one (Zen 4) Hugging Face's own
/// bf16 logits move by up to 0.06 (as far as they are from float32) and tch's land up to 2.46
/// times the goldens' difference away: 3 there.
fn half_step_factor(backend: Backend) -> f32 {
    match backend {
        Backend::Tch => 3.0,
        _ => 2.0,
    }
}

/// Each row's last-position logits at every step, with the reference's ids fed in as the
/// model's choices (teacher forcing): by the cached path (a prefill of the prompts, then one id
/// per row per step, the cache started over from the cropped windows once a row passes
/// the context, as generation does) and by the plain forward of each row's window. A row
/// that has stopped gets its last id again, and nothing is recorded for it.
fn teacher_forced(
    model: &Gpt2,
    prompts: &[Vec<u32>],
    forced: &[Vec<u32>],
    steps: usize,
) -> Vec<Vec<(Vec<f32>, Vec<f32>)>> {
    let device = model.wte.weight.device();
    let context = model.context_length();
    let prefill_windows = |rows: &[Vec<u32>], cache: &mut nexttoken::model::KvCache| {
        let windows: Vec<&[u32]> = rows
            .iter()
            .map(|row| &row[row.len().saturating_sub(context)..])
            .collect();
        model.prefill(&windows, cache)
    };
    let mut rows: Vec<Vec<u32>> = prompts.to_vec();
    let mut cache = nexttoken::model::KvCache::new();
    let mut cached = prefill_windows(&rows, &mut cache);
    let mut out = vec![Vec::new(); rows.len()];
    for step in 0..steps {
        let values: Vec<f32> = cached.into_data().try_to_vec().unwrap();
        for (row, cached) in values.chunks_exact(model.vocab_size()).enumerate() {
            // Rows that have stopped record nothing: no plain forward for them.
            if step < forced[row].len() {
                let plain = last_logits(model, std::slice::from_ref(&rows[row]), &device);
                out[row].push((cached.to_vec(), plain.concat()));
            }
        }
        if step + 1 == steps {
            break;
        }
        let next: Vec<u32> = forced
            .iter()
            .map(|ids| ids.get(step).or(ids.last()).copied().unwrap_or(0))
            .collect();
        for (row, &id) in rows.iter_mut().zip(&next) {
            row.push(id);
        }
        cached = if rows.iter().any(|row| row.len() > context) {
            cache.clear();
            prefill_windows(&rows, &mut cache)
        } else {
            let next: Vec<&[u32]> = next.iter().map(std::slice::from_ref).collect();
            model.forward_cached(&next, &mut cache)
        };
    }
    out
}

/// One step's recorded logits: the reference's top five and a few fixed ids, in the dtype and
/// in float32 on the same ids.
#[derive(Deserialize)]
struct Forced {
    ids: Vec<u32>,
    half: Vec<f32>,
    f32: Vec<f32>,
}

impl Forced {
    fn tolerance(&self, floor: f32, factor: f32) -> f32 {
        half_step_tolerance(&self.half, &self.f32, floor, factor)
    }
}

/// A half-precision step's tolerance, from Hugging Face's logits of the same ids in the dtype
/// (`half`) and in float32 (`wide`): `factor` ([`half_step_factor`]) times its own largest
/// difference there, at least `floor` of max(1, |logit|).
fn half_step_tolerance(half: &[f32], wide: &[f32], floor: f32, factor: f32) -> f32 {
    let own = half
        .iter()
        .zip(wide)
        .map(|(h, f)| (h - f).abs())
        .fold(0.0, f32::max);
    let scale = half.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    (factor * own).max(floor * scale)
}

/// Near-tie allowances per golden file: steps where our best id is not the reference's,
/// allowed because the reference's top-2 margin there is within twice the step's tolerance.
/// More than this fails the test: a kernel that is slightly wrong shows as many such steps
/// (measured: flex none, tch 2 in tiny-trained's bf16 and 1 in its f16, of 436 steps).
const MOST_NEAR_TIES_PER_GOLDEN: usize = 3;

/// Every step of every case (single prompts, a batch, ragged rows that stop early or cross
/// the context, a prompt longer than the context) in float16 and bfloat16 against Hugging
/// Face's model in the same dtype, teacher-forced on Hugging Face's ids: the logits of its top
/// five ids and a few fixed ones, by the cached path and by the plain forward, within a
/// tolerance derived from Hugging Face's own half-vs-float32 difference at that step; our best
/// id (cached and plain) is Hugging Face's unless its margin there is within twice the
/// tolerance (a near-tie, counted and bounded); cached and plain logits agree over the whole
/// vocabulary within twice the tolerance.
#[test]
fn half_precision_matches_hugging_face_at_every_step() {
    let mut report = vec![format!(
        "{:<8} {:<34} {:>6} {:>10} {:>10} {:>10} {:>6}",
        "backend", "golden", "steps", "max abs", "max/tol", "plain/tol", "ties"
    )];
    for (backend, device) in backends() {
        for (path, golden) in goldens_in("tests/goldens/half") {
            let (dtype, floor) = half_precision(&golden.dtype);
            let first_logits =
                |path: &Path| std::fs::read(path.with_extension("logits.safetensors")).unwrap();
            let (half_bytes, f32_bytes) = (
                first_logits(&path),
                first_logits(
                    &root()
                        .join("tests/goldens")
                        .join(format!("{}.json", golden.model)),
                ),
            );
            let half_first = safetensors::SafeTensors::deserialize(&half_bytes).unwrap();
            let f32_first = safetensors::SafeTensors::deserialize(&f32_bytes).unwrap();
            let label = format!("{}.{}", golden.model, golden.dtype);
            if !backend.dtypes().contains(&dtype) {
                report.push(format!("{backend:<8} {label:<34} (computes in f32 only)"));
                continue;
            }
            let model = Checkpoint::open(root().join(&golden.model_dir))
                .and_then(|mut checkpoint| checkpoint.load_as(&device, dtype))
                .unwrap_or_else(|e| panic!("loading {label}: {e}"));
            let (mut steps, mut near_ties) = (0, Vec::new());
            let (mut max_abs, mut worst_ratio, mut worst_plain) = (0f32, 0f32, 0f32);
            for case in &golden.cases {
                let ours =
                    teacher_forced(&model, &case.input_ids, &case.greedy_ids, golden.new_tokens);
                // The first step over the whole vocabulary, within twice Hugging Face's own
                // largest half-vs-float32 difference on the row.
                let theirs = reference_logits(&half_first, &case.name);
                let wide = reference_logits(&f32_first, &case.name);
                let vocab = model.vocab_size();
                for (row, row_steps) in ours.iter().enumerate() {
                    let at = format!("{backend}: {label}/{} row {row} step 0", case.name);
                    let (theirs, wide) = (
                        &theirs[row * vocab..][..vocab],
                        &wide[row * vocab..][..vocab],
                    );
                    let (own, _, _) = differences(theirs, wide);
                    let (diff, _, _) = differences(&row_steps[0].0, theirs);
                    assert!(
                        diff <= half_step_factor(backend) * own,
                        "{at}: logits over the vocabulary differ from Hugging Face's by up to \
                         {diff:.3e}, its own half-vs-float32 difference is {own:.3e}"
                    );
                }
                assert_eq!(case.steps.len(), golden.new_tokens, "{label}/{}", case.name);
                for (row, row_steps) in ours.iter().enumerate() {
                    let recorded = case
                        .steps
                        .iter()
                        .filter(|s| s.forced[row].is_some())
                        .count();
                    assert_eq!(
                        recorded,
                        case.greedy_ids[row].len(),
                        "{label}/{} row {row}",
                        case.name
                    );
                    for (step, (cached, plain)) in row_steps.iter().enumerate() {
                        let at = format!("{backend}: {label}/{} row {row} step {step}", case.name);
                        let forced = case.steps[step].forced[row].as_ref().unwrap_or_else(|| {
                            panic!("{at}: no record ({})", "cargo xtask goldens")
                        });
                        let tolerance = forced.tolerance(floor, half_step_factor(backend));
                        for (ours, path) in [(cached, "cached"), (plain, "plain")] {
                            for ((&id, &theirs), &wide) in
                                forced.ids.iter().zip(&forced.half).zip(&forced.f32)
                            {
                                let diff = (ours[id as usize] - theirs).abs();
                                max_abs = max_abs.max(diff);
                                worst_ratio = worst_ratio.max(diff / tolerance);
                                assert!(
                                    diff <= tolerance,
                                    "{at} ({path}): id {id}: ours {} vs Hugging Face's {theirs} \
                                     (float32 {wide}); tolerance {tolerance:.3e}",
                                    ours[id as usize]
                                );
                            }
                        }
                        // Each within the tolerance of the exact value, so within twice it of
                        // each other.
                        let (max_plain, _, _) = differences(cached, plain);
                        worst_plain = worst_plain.max(max_plain / tolerance);
                        assert!(
                            max_plain <= 2.0 * tolerance,
                            "{at}: cached and plain logits differ by up to {max_plain:.3e} \
                             (twice the tolerance: {:.3e})",
                            2.0 * tolerance
                        );
                        let theirs = case.greedy_ids[row][step] as usize;
                        let parted: Vec<usize> = [cached, plain]
                            .iter()
                            .map(|logits| top2(logits).0.0)
                            .filter(|&best| best != theirs)
                            .collect();
                        if let Some(best) = parted.first() {
                            let gap = case.steps[step].top2_gap[row].unwrap_or(f32::INFINITY);
                            assert!(
                                gap <= 2.0 * tolerance,
                                "{at}: our best id {best} is not Hugging Face's {theirs}, whose \
                                 margin {gap:.3e} is beyond twice the tolerance {tolerance:.3e}"
                            );
                            near_ties.push(format!("{}/{row}/{step}", case.name));
                        }
                        steps += 1;
                    }
                }
            }
            assert!(
                near_ties.len() <= MOST_NEAR_TIES_PER_GOLDEN,
                "{backend}: {label}: {} near-ties ({near_ties:?}), more than {MOST_NEAR_TIES_PER_GOLDEN}",
                near_ties.len()
            );
            report.push(format!(
                "{backend:<8} {label:<34} {steps:>6} {max_abs:>10.2e} {worst_ratio:>10.2} {worst_plain:>10.2} {:>6}",
                near_ties.len()
            ));
        }
    }
    eprintln!(
        "half precision, teacher-forced on Hugging Face's ids (max/tol: the largest difference \
         over its step's tolerance; plain/tol: cached against plain, over it; ties: \
         steps where our best id is not Hugging Face's, within a near-tie):\n{}",
        report.join("\n")
    );
}

/// The trained fixture's golden and its batch of two 4-token prompts ("Every effort moves you",
/// "Hello, I am").
fn tiny_trained_batch_of_two() -> (Golden, Vec<Vec<u32>>) {
    let golden = goldens()
        .into_iter()
        .map(|(_, g)| g)
        .find(|g| g.model == "tiny-trained")
        .expect("tests/goldens/tiny-trained.json");
    let prompts = vec![vec![6109, 3626, 6100, 345], vec![15496, 11, 314, 716]];
    (golden, prompts)
}

/// Generating far past the context length: every backend crops exactly as flex does, step for
/// step, for a batch of two.
#[test]
#[cfg_attr(
    not(any(
        feature = "ndarray",
        feature = "wgpu",
        feature = "tch",
        feature = "vulkan",
        feature = "cuda"
    )),
    ignore = "only flex is compiled in: nothing to compare it with"
)]
fn every_backend_crops_at_the_context_boundary_as_flex_does() {
    let (golden, prompts) = tiny_trained_batch_of_two();
    // 4 + 100 tokens: the window slides for the last 40 steps of a 64-token context.
    let config = GenerationConfig::new(100).without_eos();
    let flex = Device::flex();
    let flex_model = load_golden_model(&golden, &flex);
    let expected =
        greedy_with_safe_margins("tiny-trained, 100 steps", &flex_model, &prompts, &config);
    assert!(prompts[0].len() + expected[0].len() > golden.context_length + 30);
    for (backend, device) in backends_beside_flex() {
        let model = load_golden_model(&golden, &device);
        let tokens = generate(&model, &prompts, &config, |_| ControlFlow::Continue(()))
            .unwrap()
            .tokens;
        assert_eq!(tokens.len(), expected.len(), "{backend}: rows");
        for (row, (ours, theirs)) in tokens.iter().zip(&expected).enumerate() {
            assert_eq!(ours.len(), theirs.len(), "{backend}: row {row} length");
            if let Some(step) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
                let prefix: Vec<u32> = prompts[row]
                    .iter()
                    .chain(&theirs[..step])
                    .copied()
                    .collect();
                let ((a, a_logit), (_, a_second)) =
                    top2(&last_logits(&model, std::slice::from_ref(&prefix), &device)[0]);
                let ((b, b_logit), (_, b_second)) =
                    top2(&last_logits(&flex_model, &[prefix], &flex)[0]);
                panic!(
                    "{backend} vs flex, row {row}: first difference at step {step}: {a} vs {b}; \
                     top-2 margins {:.3e} ({backend}) and {:.3e} (flex)",
                    a_logit - a_second,
                    b_logit - b_second
                );
            }
        }
    }
}

/// Flex's greedy ids for `prompts`, after checking that no step of theirs is a near-tie:
/// every top-2 margin above twice the widest tolerance of the compiled backends (relative to
/// max(1, |best|)), so that another backend or thread count giving other ids is a bug, not
/// float noise. The smallest margin is printed.
fn greedy_with_safe_margins(
    label: &str,
    model: &Gpt2,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
) -> Vec<Vec<u32>> {
    let noise = 2.0
        * backends()
            .iter()
            .map(|(backend, _)| tolerance(*backend))
            .fold(0.0, f32::max);
    let mut smallest = f32::INFINITY;
    let tokens = generate(model, prompts, config, |step| {
        let logits: Vec<f32> = step.logits.clone().into_data().try_to_vec().unwrap();
        for row in logits.chunks_exact(model.vocab_size()) {
            let ((_, best), (_, second)) = top2(row);
            smallest = smallest.min((best - second) / best.abs().max(1.0));
            assert!(
                best - second > noise * best.abs().max(1.0),
                "{label}: a step with a top-2 margin of {:.3e} (best {best}): these inputs are \
                 a near-tie, choose others",
                best - second
            );
        }
        ControlFlow::Continue(())
    })
    .unwrap()
    .tokens;
    eprintln!("{label}: smallest top-2 margin, relative to max(1, |best|): {smallest:.3e}");
    tokens
}

/// tiny-trained with its context cut to 16 positions (the first 16 rows of `wpe`), so that a
/// short generation spends most of its steps with the window sliding.
fn short_context_checkpoint() -> tempfile::TempDir {
    const POSITIONS: usize = 16;
    let dir = common::edited_checkpoint(&common::fixture("tiny-trained"), |tensors| {
        let wpe = common::named(tensors, "wpe.weight");
        let row_bytes = wpe.3.len() / wpe.2[0];
        wpe.2[0] = POSITIONS;
        wpe.3.truncate(POSITIONS * row_bytes);
    });
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["n_positions"] = POSITIONS.into();
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

/// The KV cache changes how the work is done, not what comes out: on every backend, cached and
/// plain loops give identical ids and logits within the backend's tolerance at every step, for
/// each golden case (one prompt or a batch, some longer than the context) and for a batch of
/// two generating 60 tokens with a 16-position context, where every step after the 14th must
/// re-feed the cropped window.
#[test]
fn kv_cache_matches_the_plain_loop_on_every_backend() {
    let short = short_context_checkpoint();
    let short_case = vec![vec![6109, 3626], vec![15496, 11]];
    for (backend, device) in backends() {
        for (_, golden) in goldens() {
            let model = load_golden_model(&golden, &device);
            for case in &golden.cases {
                let label = format!("{backend}: {}/{}", golden.model, case.name);
                assert_cache_matches_plain(
                    &label,
                    backend,
                    &model,
                    &case.input_ids,
                    golden.new_tokens,
                );
            }
        }
        let model = load(short.path(), &device).unwrap();
        assert_eq!(model.context_length(), 16);
        let label = format!("{backend}: tiny-trained-ctx16/batch2");
        assert_cache_matches_plain(&label, backend, &model, &short_case, 60);
    }
}

/// Cached and plain loops give the same ids, and logits within `backend`'s tolerance at every
/// step. Where a row's ids part, the plain loop's top-2 margin there must be within the
/// float noise of two paths (twice the tolerance): a near-tie, reported, after which that row
/// is compared no further; more than [`MOST_NEAR_TIES_PER_TEST`] in one call fail it.
fn assert_cache_matches_plain(
    label: &str,
    backend: Backend,
    model: &Gpt2,
    prompts: &[Vec<u32>],
    new_tokens: usize,
) {
    let config = GenerationConfig::new(new_tokens).without_eos();
    let run = |session: Session| {
        let mut logits = Vec::new();
        let out = generate(session, prompts, &config, |step| {
            logits.push(step.logits.clone().into_data().try_to_vec::<f32>().unwrap());
            ControlFlow::Continue(())
        })
        .unwrap();
        (out.tokens, logits)
    };
    let (cached_ids, cached_logits) = run(Session::new(model));
    let (plain_ids, plain_logits) = run(Session::new(model).without_kv_cache());
    assert_eq!(cached_logits.len(), new_tokens, "{label}");
    assert_eq!(plain_logits.len(), new_tokens, "{label}");
    let vocab = model.vocab_size();
    let mut near_ties = 0;
    for (row, (cached, plain)) in cached_ids.iter().zip(&plain_ids).enumerate() {
        let parted = cached.iter().zip(plain).position(|(a, b)| a != b);
        for step in 0..=parted.unwrap_or(new_tokens - 1) {
            let at = |logits: &[Vec<f32>]| logits[step][row * vocab..][..vocab].to_vec();
            let (cached_row, plain_row) = (at(&cached_logits), at(&plain_logits));
            let (max_abs, _, worst) = differences(&cached_row, &plain_row);
            assert!(
                worst <= tolerance(backend),
                "{label}: row {row} step {step}: cached logits differ from the plain loop's by \
                 up to {max_abs:.3e}"
            );
            if Some(step) == parted {
                let ((_, best), (_, second)) = top2(&plain_row);
                let margin = best - second;
                let noise = 2.0 * tolerance(backend) * best.abs().max(1.0);
                assert!(
                    margin <= noise,
                    "{label}: row {row}: cached and plain ids part at step {step} where the \
                     plain loop's top-2 margin is {margin:.3e}, beyond float noise ({noise:.1e})"
                );
                eprintln!("{label}: row {row}: a near-tie at step {step} (margin {margin:.1e})");
                near_ties += 1;
            }
        }
    }
    assert!(
        near_ties <= MOST_NEAR_TIES_PER_TEST,
        "{label}: {near_ties} near-ties between cached and plain"
    );
}

/// Near-ties allowed in one comparison of two computations of the same ids (cached and plain,
/// another backend and flex): the fixtures' margins are recorded (`top2_gap_min` in the
/// goldens) and well above float noise, so a handful of near-ties means a kernel is off.
const MOST_NEAR_TIES_PER_TEST: usize = 2;

/// One seed gives the same sampled text on every backend: the draws depend on the seed and on
/// logits that agree within the backend's tolerance (a flip would need a draw to land within
/// ~1e-6 of a boundary between two ids).
#[test]
#[cfg_attr(
    not(any(
        feature = "ndarray",
        feature = "wgpu",
        feature = "tch",
        feature = "vulkan",
        feature = "cuda"
    )),
    ignore = "only flex is compiled in: nothing to compare it with"
)]
fn sampling_with_a_seed_gives_the_same_ids_on_every_backend() {
    let (golden, prompts) = tiny_trained_batch_of_two();
    let config = GenerationConfig {
        selection: Selection::Sample(SamplingParams {
            temperature: 0.9,
            top_k: Some(40),
            top_p: Some(0.95),
            repeat_penalty: 1.1,
            ..SamplingParams::default()
        }),
        seed: 1234,
        ..GenerationConfig::new(32).without_eos()
    };
    let run = |device: &Device| {
        let model = load_golden_model(&golden, device);
        generate(&model, &prompts, &config, |_| ControlFlow::Continue(()))
            .unwrap()
            .tokens
    };
    let flex = run(&Device::flex());
    let greedy = generate(
        &load_golden_model(&golden, &Device::flex()),
        &prompts,
        &GenerationConfig::new(32).without_eos(),
        |_| ControlFlow::Continue(()),
    )
    .unwrap()
    .tokens;
    assert_ne!(
        flex, greedy,
        "the settings should sample, not pick greedily"
    );
    for (backend, device) in backends_beside_flex() {
        assert_eq!(
            run(&device),
            flex,
            "{backend}: sampled ids differ from flex's"
        );
    }
}

/// Rows that join a running session (a longer prompt re-pads the batch) and rows cancelled
/// midway leave every other row's ids as they are alone, on every backend; a finished session
/// steps to nothing.
#[test]
fn session_rows_join_and_leave_on_every_backend() {
    let (golden, _) = tiny_trained_batch_of_two();
    // "The", "<|endoftext|>First Citizen:" and "Café, 日本語 and 🦀🚀: ": no near-tie in
    // their first 12 steps (checked below).
    let prompts: [&[u32]; 3] = [
        &[464],
        &[50256, 5962, 22307, 25],
        &[
            34, 1878, 2634, 11, 10545, 245, 98, 17312, 105, 45739, 252, 290, 12520, 99, 222, 8582,
            248, 222, 25, 220,
        ],
    ];
    let config = GenerationConfig::new(12).without_eos();
    let rows: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
    let flex_model = load_golden_model(&golden, &Device::flex());
    greedy_with_safe_margins("session rows", &flex_model, &rows, &config);
    for (backend, device) in backends() {
        let model = load_golden_model(&golden, &device);
        let alone = |prompt: &[u32], steps: usize| {
            let config = GenerationConfig::new(steps).without_eos();
            generate(&model, &[prompt.to_vec()], &config, |_| {
                ControlFlow::Continue(())
            })
            .unwrap()
            .tokens
            .remove(0)
        };
        // Whole prompts, then prompts in chunks of 3 tokens a step beside the decoding rows
        // (the joining row's 20 tokens over 7 steps).
        for chunk in [None, Some(3)] {
            let label = format!("{backend}, prompt chunks of {chunk:?}");
            let mut session = Session::new(&model);
            if let Some(tokens) = chunk {
                session = session.with_prefill_chunk(tokens);
            }
            let mut got: Vec<Vec<u32>> = vec![Vec::new(); 4];
            let mut rows = vec![session.add(prompts[0].to_vec(), &config).unwrap()];
            rows.push(session.add(prompts[1].to_vec(), &config).unwrap());
            let row_of =
                |rows: &[RowId], id: RowId| rows.iter().position(|&row| row == id).unwrap();
            for step in 0..12 {
                if step == 3 {
                    // Longer than every row in the cache.
                    rows.push(session.add(prompts[2].to_vec(), &config).unwrap());
                }
                if step == 6 {
                    assert!(session.cancel(rows[1]));
                    // The same prompt again: it takes the first row's full block of it.
                    rows.push(session.add(prompts[2].to_vec(), &config).unwrap());
                }
                for token in session.step().unwrap().tokens {
                    got[row_of(&rows, token.row)].push(token.id);
                }
            }
            while !session.is_finished() {
                for token in session.step().unwrap().tokens {
                    got[row_of(&rows, token.row)].push(token.id);
                }
            }
            assert!(rows.is_sorted(), "row ids order as rows were added");
            assert_eq!(got[0], alone(prompts[0], 12), "{label}: the first row");
            // Cancelled before step 6 (its prompt went whole: nothing was decoding yet).
            assert_eq!(got[1], alone(prompts[1], 6), "{label}: the cancelled row");
            assert_eq!(got[2], alone(prompts[2], 12), "{label}: the joining row");
            assert_eq!(got[3], got[2], "{label}: the row sharing its prefix");
            if chunk.is_none() {
                // The last row computed only the 4 ids after the block it shares.
                assert_eq!(session.stats().prompt_tokens, 1 + 4 + 20 + 4, "{label}");
            }
            assert!(session.step().unwrap().tokens.is_empty(), "{label}");
        }
    }
}

/// `tests/goldens/scoring/prompts.json`: transformers' log-softmax at every prompt position.
#[derive(Deserialize)]
struct ScoredPrompts {
    format_version: u32,
    top: usize,
    models: std::collections::BTreeMap<String, Vec<ScoredPrompt>>,
}

#[derive(Deserialize)]
struct ScoredPrompt {
    prompt: String,
    ids: Vec<u32>,
    logprobs: Vec<f64>,
    top_ids: Vec<Vec<u32>>,
    top_logprobs: Vec<Vec<f64>>,
}

fn scoring_golden<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = root().join("tests/goldens/scoring").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask goldens`", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask goldens`", path.display()))
}

/// A prompt's log-probabilities (what the server's `echo` with `logprobs` reports, and what a
/// perplexity sums) are transformers' on every backend: each id's, and the five most likely
/// at each position.
#[test]
fn prompt_scores_match_hugging_face_on_every_backend() {
    let golden: ScoredPrompts = scoring_golden("prompts.json");
    assert_eq!(
        golden.format_version, FORMAT_VERSION,
        "run `cargo xtask goldens`"
    );
    let dirs = [
        ("tiny-trained", "tests/fixtures/tiny-trained"),
        (
            "nexttoken-tiny-shakespeare",
            "models/nexttoken-tiny-shakespeare",
        ),
    ];
    assert_eq!(golden.models.len(), dirs.len());
    let tokenizer = Gpt2Tokenizer::new();
    for (backend, device) in backends() {
        let tolerance = f64::from(tolerance(backend));
        for (name, dir) in dirs {
            let mut checkpoint = Checkpoint::open(root().join(dir)).unwrap();
            let config = checkpoint.config().clone();
            let generator =
                nexttoken::generate::TextGenerator::new(checkpoint.load(&device).unwrap(), config)
                    .unwrap();
            for case in &golden.models[name] {
                assert_eq!(tokenizer.encode(&case.prompt), case.ids);
                let scored = generator.score(&case.ids, golden.top).unwrap();
                assert_eq!(scored.len(), case.ids.len() - 1);
                for (position, ours) in scored.iter().enumerate() {
                    let context =
                        format!("{backend}, {name}, {:?}, position {position}", case.prompt);
                    let expected = case.logprobs[position];
                    let got = f64::from(ours.logprob);
                    assert!(
                        (got - expected).abs() <= tolerance * expected.abs().max(1.0),
                        "{context}: {got} vs transformers' {expected}"
                    );
                    let reference = &case.top_logprobs[position];
                    for (rank, (&(id, logprob), &expected)) in
                        ours.top.iter().zip(reference).enumerate()
                    {
                        let tie = |other: Option<&f64>| {
                            other.is_some_and(|&o| (o - expected).abs() <= 2.0 * tolerance)
                        };
                        // Ids may swap only where transformers' values nearly tie.
                        let below = reference.get(rank + 1);
                        let above = rank.checked_sub(1).and_then(|r| reference.get(r));
                        if !tie(below) && !tie(above) {
                            assert_eq!(id, case.top_ids[position][rank], "{context}, rank {rank}");
                        }
                        assert!(
                            (f64::from(logprob) - expected).abs()
                                <= tolerance * expected.abs().max(1.0),
                            "{context}, rank {rank}: {logprob} vs {expected}"
                        );
                    }
                }
            }
        }
    }
}

/// `tests/goldens/scoring/processors.json`: logits, a history and settings, and the
/// probabilities after transformers' processors (and OpenAI's penalty formula).
#[derive(Deserialize)]
struct ProcessorCases {
    format_version: u32,
    cases: Vec<ProcessorCase>,
}

#[derive(Deserialize)]
struct ProcessorCase {
    settings: ProcessorSettings,
    logits: Vec<f32>,
    prompt: Vec<u32>,
    generated: Vec<u32>,
    probabilities: Vec<f64>,
}

#[derive(Deserialize, Debug)]
struct ProcessorSettings {
    #[serde(default)]
    logit_bias: Vec<(u32, f32)>,
    repeat_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
}

/// Every sampling setting, alone and together, gives the distribution transformers' logits
/// processors give (`SequenceBiasLogitsProcessor` for logit_bias, `RepetitionPenalty...`,
/// `Temperature...`, `TopK...`, `TopP...`, `MinP...`), and OpenAI's formula for the presence and
/// frequency penalties.
#[test]
fn sampling_settings_match_transformers_processors() {
    let golden: ProcessorCases = scoring_golden("processors.json");
    assert_eq!(
        golden.format_version, FORMAT_VERSION,
        "run `cargo xtask goldens`"
    );
    assert!(golden.cases.len() >= 10);
    for case in golden.cases {
        let settings = &case.settings;
        let params = SamplingParams {
            temperature: settings.temperature.unwrap_or(1.0),
            top_k: settings.top_k,
            top_p: settings.top_p,
            min_p: settings.min_p,
            repeat_penalty: settings.repeat_penalty.unwrap_or(1.0),
            presence_penalty: settings.presence_penalty.unwrap_or(0.0),
            frequency_penalty: settings.frequency_penalty.unwrap_or(0.0),
            logit_bias: settings.logit_bias.clone(),
            ..SamplingParams::default()
        };
        let history: Vec<u32> = case.prompt.iter().chain(&case.generated).copied().collect();
        let sampler = nexttoken::generate::Sampler::new(params, 0).expect("valid settings");
        let ours = sampler.probabilities(&case.logits, &history, case.generated.len());
        let kept = |probs: &mut dyn Iterator<Item = bool>| probs.filter(|&k| k).count();
        assert_eq!(
            kept(&mut ours.iter().map(|&p| p > 0.0)),
            kept(&mut case.probabilities.iter().map(|&p| p > 0.0)),
            "{settings:?}: a different set of ids kept"
        );
        for (id, (&got, &expected)) in ours.iter().zip(&case.probabilities).enumerate() {
            assert!(
                (f64::from(got) - expected).abs() < 1e-6,
                "{settings:?}, id {id}: {got} vs transformers' {expected}"
            );
        }
    }
}

/// `tests/goldens/scoring/real_processors.safetensors`: real logits rows (`logits.{row}`), and
/// per case the ids transformers' processors keep (`kept_ids.{case}`, absent when every id is
/// kept) and their probabilities (`kept_probabilities.{case}`); its header describes the cases.
#[derive(Deserialize)]
struct RealProcessors {
    format_version: u32,
    cases: Vec<RealProcessorCase>,
    repetition_penalty_greedy: Vec<PenaltyGreedy>,
}

#[derive(Deserialize)]
struct RealProcessorCase {
    row: usize,
    label: String,
    settings: ProcessorSettings,
    history: Vec<u32>,
}

#[derive(Deserialize)]
struct PenaltyGreedy {
    prompt_ids: Vec<u32>,
    repeat_penalty: f32,
    ids: Vec<u32>,
}

/// The header and the file's bytes.
fn real_processors() -> (RealProcessors, Vec<u8>) {
    let path = root().join("tests/goldens/scoring/real_processors.safetensors");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask goldens`", path.display()));
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let header = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get("cases"))
        .expect("a `cases` entry in the header");
    let golden: RealProcessors = serde_json::from_str(header).unwrap();
    assert_eq!(
        golden.format_version, FORMAT_VERSION,
        "run `cargo xtask goldens`"
    );
    (golden, bytes)
}

fn tensor_values<T: Copy>(
    tensors: &safetensors::SafeTensors,
    name: &str,
    from: fn([u8; 4]) -> T,
) -> Option<Vec<T>> {
    let view = tensors.tensor(name).ok()?;
    Some(
        view.data()
            .chunks_exact(4)
            .map(|b| from([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// A real case's logits row and transformers' distribution over the whole vocabulary.
fn real_case(
    tensors: &safetensors::SafeTensors,
    index: usize,
    case: &RealProcessorCase,
) -> (Vec<f32>, Vec<f64>) {
    let logits = tensor_values(tensors, &format!("logits.{}", case.row), f32::from_le_bytes)
        .expect("the case's logits row");
    let kept = tensor_values(
        tensors,
        &format!("kept_probabilities.{index}"),
        f32::from_le_bytes,
    )
    .expect("the case's probabilities");
    let ids = tensor_values(tensors, &format!("kept_ids.{index}"), i32::from_le_bytes)
        .map(|ids| ids.into_iter().map(|id| id as usize).collect())
        .unwrap_or_else(|| (0..logits.len()).collect::<Vec<_>>());
    assert_eq!(ids.len(), kept.len(), "case {index}: ids and probabilities");
    let mut expected = vec![0.0; logits.len()];
    for (id, p) in ids.into_iter().zip(kept) {
        expected[id] = f64::from(p);
    }
    (logits, expected)
}

fn params_of(settings: &ProcessorSettings) -> SamplingParams {
    SamplingParams {
        temperature: settings.temperature.unwrap_or(1.0),
        top_k: settings.top_k,
        top_p: settings.top_p,
        min_p: settings.min_p,
        repeat_penalty: settings.repeat_penalty.unwrap_or(1.0),
        presence_penalty: settings.presence_penalty.unwrap_or(0.0),
        frequency_penalty: settings.frequency_penalty.unwrap_or(0.0),
        logit_bias: settings.logit_bias.clone(),
        ..SamplingParams::default()
    }
}

/// On real logits over the whole vocabulary (two checkpoints, a row rounded to bfloat16 with
/// ties at top-k's k-th value, and one with the two best tied for min-p = 1), every setting
/// alone and combined keeps exactly the ids transformers' processors keep, with their
/// probabilities within 1e-6.
#[test]
fn sampling_on_real_logits_keeps_what_transformers_keeps() {
    let (golden, bytes) = real_processors();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(golden.cases.len() >= 30);
    for (index, case) in golden.cases.iter().enumerate() {
        let (logits, expected) = real_case(&tensors, index, case);
        let label = format!("{} with {:?}", case.label, case.settings);
        let sampler = nexttoken::generate::Sampler::new(params_of(&case.settings), 0)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let ours = sampler.probabilities(&logits, &case.history, 0);
        let kept = |probs: Vec<bool>| -> Vec<usize> {
            probs
                .iter()
                .enumerate()
                .filter(|(_, k)| **k)
                .map(|(id, _)| id)
                .collect()
        };
        let ours_kept = kept(ours.iter().map(|&p| p > 0.0).collect());
        let theirs_kept = kept(expected.iter().map(|&p| p > 0.0).collect());
        assert_eq!(
            ours_kept.len(),
            theirs_kept.len(),
            "{label}: number of ids kept"
        );
        assert_eq!(ours_kept, theirs_kept, "{label}: ids kept");
        for (id, (&got, &want)) in ours.iter().zip(&expected).enumerate() {
            assert!(
                (f64::from(got) - want).abs() <= 1e-6,
                "{label}, id {id}: {got} vs transformers' {want}"
            );
        }
    }
}

/// Pearson's chi-square of `counts` against `expected` probabilities over `n` draws, bins with
/// fewer than 5 expected draws pooled into one (the test's approximation needs ~5 per bin); and
/// its degrees of freedom.
fn chi_square(counts: &[usize], expected: &[f64], n: usize) -> (f64, usize) {
    let (mut statistic, mut bins) = (0.0, 0);
    let (mut pooled_count, mut pooled_expected) = (0.0, 0.0);
    for (&count, &p) in counts.iter().zip(expected) {
        let e = p * n as f64;
        if e == 0.0 {
            assert_eq!(count, 0, "an id the filters removed was drawn");
        } else if e < 5.0 {
            pooled_count += count as f64;
            pooled_expected += e;
        } else {
            statistic += (count as f64 - e).powi(2) / e;
            bins += 1;
        }
    }
    if pooled_expected > 0.0 {
        statistic += (pooled_count - pooled_expected).powi(2) / pooled_expected;
        bins += 1;
    }
    (statistic, bins - 1)
}

/// The chi-square distribution's 99.9% quantile for `df` degrees of freedom (Wilson and
/// Hilferty's approximation, within 1% from 3 degrees of freedom on).
fn chi_square_critical(df: usize) -> f64 {
    let df = df as f64;
    let z = 3.0902; // the standard normal's 99.9% quantile
    let c = 2.0 / (9.0 * df);
    df * (1.0 - c + z * c.sqrt()).powi(3)
}

/// Draws with a fixed seed follow transformers' distributions on real logits: top-k with top-p,
/// min-p after a temperature, all filters together (chi-square at the 0.1% level; a swapped
/// filter order or a wrong temperature moves the statistic far past it).
#[test]
fn draws_on_real_logits_follow_transformers_distributions() {
    let (golden, bytes) = real_processors();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let wanted: [fn(&ProcessorSettings) -> bool; 4] = [
        |s| s.top_k == Some(50) && s.top_p.is_some() && s.temperature.is_none(),
        |s| s.temperature == Some(0.8) && s.min_p.is_some() && s.top_k.is_none(),
        |s| s.temperature == Some(1.5) && s.top_k.is_some() && s.min_p.is_some(),
        |s| s.repeat_penalty.is_some() && s.top_k.is_some(),
    ];
    let mut checked = [0; 4];
    for (index, case) in golden.cases.iter().enumerate() {
        // The bundled model's first prompt: 12 to 85 ids kept.
        let Some(selector) = wanted.iter().position(|w| w(&case.settings)) else {
            continue;
        };
        if !case.label.starts_with("nexttoken-tiny-shakespeare: 'Every") {
            continue;
        }
        checked[selector] += 1;
        let (logits, expected) = real_case(&tensors, index, case);
        let label = format!("{} with {:?}", case.label, case.settings);
        let seed = 20_261_205 + index as u64;
        let mut sampler =
            nexttoken::generate::Sampler::new(params_of(&case.settings), seed).unwrap();
        let n = 8_000;
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[sampler.sample(&logits, &case.history, 0) as usize] += 1;
        }
        let (statistic, df) = chi_square(&counts, &expected, n);
        let critical = chi_square_critical(df);
        assert!(
            df >= 3 && statistic < critical,
            "{label} (seed {seed}): chi-square {statistic:.1} with {df} degrees of freedom \
             (critical {critical:.1})"
        );
    }
    assert_eq!(checked, [1; 4], "each wanted case found once in the golden");
}

/// Greedy decoding with a repetition penalty gives transformers' `generate(do_sample=False,
/// repetition_penalty=...)` ids, on every backend.
#[test]
fn a_repetition_penalty_gives_transformers_greedy_ids_on_every_backend() {
    let (golden, _) = real_processors();
    let (fixture, _) = tiny_trained_batch_of_two();
    assert!(!golden.repetition_penalty_greedy.is_empty());
    for (backend, device) in backends() {
        let model = load_golden_model(&fixture, &device);
        for case in &golden.repetition_penalty_greedy {
            let params = SamplingParams {
                temperature: 0.0,
                repeat_penalty: case.repeat_penalty,
                ..SamplingParams::default()
            };
            let config = GenerationConfig {
                selection: Selection::new(params).unwrap(),
                ..GenerationConfig::new(case.ids.len()).without_eos()
            };
            let out = generate(
                &model,
                std::slice::from_ref(&case.prompt_ids),
                &config,
                |_| ControlFlow::Continue(()),
            )
            .unwrap();
            assert_eq!(
                out.tokens[0], case.ids,
                "{backend}: penalty {}",
                case.repeat_penalty
            );
        }
    }
}
