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
