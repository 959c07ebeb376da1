//! `nexttoken perplexity` against transformers' recipe on the same model, text and windows
//! (tests/goldens/scoring/perplexity.json, scripts/make_perplexity_goldens.py).

mod common;

use common::*;

#[test]
fn perplexity_is_transformers_recipe_s() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/goldens/scoring/perplexity.json"))
            .expect("the golden"),
    )
    .expect("json");
    // The text lives beside the repository (../shared), as the golden's script read it.
    let source = repo().join(golden["text"].as_str().expect("a path"));
    let text: String = std::fs::read_to_string(&source)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the CI puts ../shared beside the clone)",
                source.display()
            )
        })
        .chars()
        .take(golden["characters"].as_u64().expect("a count") as usize)
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("text.txt");
    std::fs::write(&file, text).expect("written");
    let file = file.display().to_string();
    for case in golden["cases"].as_array().expect("cases") {
        let (window, stride) = (case["window"].to_string(), case["stride"].to_string());
        let lines = json_lines(&[
            "perplexity",
            "-f",
            &file,
            "--context",
            &window,
            "--stride",
            &stride,
            "--json",
        ]);
        let got = &lines[0];
        assert_eq!(got["tokens"], golden["tokens"]);
        assert_eq!(
            got["scored"], case["scored"],
            "window {window}, stride {stride}"
        );
        let (ours, theirs) = (
            got["perplexity"].as_f64().expect("a number"),
            case["perplexity"].as_f64().expect("a number"),
        );
        assert!(
            ((ours - theirs) / theirs).abs() < 1e-4,
            "window {window}, stride {stride}: {ours} vs transformers' {theirs}"
        );
    }
}

#[test]
fn perplexity_refuses_what_it_cannot_score() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("text.txt");
    std::fs::write(&file, "Hello there, friend.").expect("written");
    let file = file.display().to_string();
    assert_fails_with(
        &nexttoken(&["perplexity", "-f", &file, "--context", "4096"]),
        "a window of 4096 ids: it must hold 2 to 256",
    );
    assert_fails_with(
        &nexttoken(&["perplexity", "-f", "/no/such/text.txt"]),
        "reading /no/such/text.txt",
    );
}

/// A base run in f32, then the same run against it (only the base's 16-bit rounding apart), a
/// Q8_0 run against it (close, not equal), and a run on other windows (refused).
#[test]
fn kl_divergence_compares_whole_distributions_with_a_base_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = dir.path().join("text.txt");
    std::fs::write(
        &text,
        "I had always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so \
         it was no great surprise to me to hear that, in the height of his glory, he had dropped \
         his painting, married a rich widow, and established himself in a villa on the Riviera. \
         The height of his glory, as the papers said, was a thing to remember; and I remembered \
         it when I saw the villa, and the widow, and the pictures he no longer painted.",
    )
    .expect("written");
    let (text, base) = (
        text.display().to_string(),
        dir.path().join("f32.kld").display().to_string(),
    );
    let args = |stride: &'static str, extra: &[&'static str]| -> Vec<String> {
        let fixed = [
            "perplexity",
            "-f",
            &text,
            "--context",
            "48",
            "--stride",
            stride,
        ];
        let base = ["--kl-divergence-base", &base];
        fixed
            .iter()
            .chain(&base)
            .chain(extra)
            .map(|arg| arg.to_string())
            .collect()
    };
    let run = |extra: &[&'static str]| {
        let args = args("24", &[extra, &["--json"]].concat());
        json_lines(&args.iter().map(String::as_str).collect::<Vec<_>>()).remove(0)
    };
    let saved = run(&[]);
    assert!(saved.get("kl_divergence").is_none(), "{saved}");

    let same = run(&["--kl-divergence"]);
    let kl = &same["kl_divergence"];
    assert!(kl["max"].as_f64().expect("a number") < 1e-6, "{kl}");
    assert_eq!(kl["same_top"], 1.0);
    let base_ppl = kl["base_perplexity"].as_f64().expect("a number");
    let ppl = saved["perplexity"].as_f64().expect("a number");
    assert!((base_ppl / ppl - 1.0).abs() < 1e-3, "{base_ppl} vs {ppl}");

    let quantized = run(&["--kl-divergence", "--dtype", "q8_0"]);
    let kl = &quantized["kl_divergence"];
    let mean = kl["mean"].as_f64().expect("a number");
    assert!(mean > 1e-5 && mean < 0.05, "{kl}");
    assert!(kl["same_top"].as_f64().expect("a share") > 0.8, "{kl}");
    assert!(kl["p99"].as_f64() <= kl["max"].as_f64(), "{kl}");

    let refused = args("12", &["--kl-divergence"]);
    assert_fails_with(
        &nexttoken(&refused.iter().map(String::as_str).collect::<Vec<_>>()),
        "was made with --context 48 --stride 24, this run --context 48 --stride 12: compare the \
         same text and windows",
    );
}

#[test]
fn kl_divergence_needs_its_base() {
    assert_usage_error(
        &nexttoken(&["perplexity", "-f", "text.txt", "--kl-divergence"]),
        "--kl-divergence-base <FILE>",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "Hello there, friend.").expect("written");
    assert_fails_with(
        &nexttoken(&[
            "perplexity",
            "-f",
            &text.display().to_string(),
            "--kl-divergence-base",
            "/no/such/base.kld",
            "--kl-divergence",
        ]),
        "opening the KL-divergence base /no/such/base.kld (make it first",
    );
}
