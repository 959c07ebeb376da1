//! The `bench` command: llama-bench's tests, its table and JSON lines, and its refusals.

mod common;

use common::*;

#[test]
fn bench_prints_one_json_line_per_test() {
    let model = tiny_trained();
    let lines = json_lines(&[
        "bench",
        "--model",
        &model,
        "-p",
        "16,64",
        "-n",
        "8",
        "-r",
        "2",
        "-t",
        "1",
        "--json",
        "--batch-size",
        "1,3",
    ]);
    let tests: Vec<(&str, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["test"].as_str().unwrap(),
                l["batch_size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tests,
        [
            ("pp16", 1),
            ("pp16", 3),
            ("pp64", 1),
            ("pp64", 3),
            ("tg8", 1),
            ("tg8", 3)
        ]
    );
    for line in &lines {
        assert_eq!(line["backend"], "flex");
        assert_eq!(line["threads"], 1);
        assert_eq!(line["kv_cache"], true);
        assert!(line["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(line["stddev"].as_f64().unwrap() >= 0.0);
        assert_eq!(line["samples_tokens_per_s"].as_array().unwrap().len(), 2);
        if cfg!(target_os = "linux") {
            // At least the model's 6.5 MB of weights are resident.
            assert!(line["peak_rss_bytes"].as_u64().unwrap() > 6_000_000);
        }
    }
}

#[test]
fn bench_prints_a_markdown_table_by_default() {
    let model = tiny_trained();
    let stdout = stdout_of(&["bench", "--model", &model, "-p", "8", "-n", "4", "-r", "1"]);
    let rows: Vec<&str> = stdout.lines().collect();
    assert_eq!(rows.len(), 4, "{stdout}"); // header, alignment, pp8, tg4
    assert!(
        rows[0].starts_with("| model") && rows[0].contains("t/s"),
        "{stdout}"
    );
    assert!(
        rows[2].contains("pp8") && rows[3].contains("tg4"),
        "{stdout}"
    );
}

#[test]
fn bench_prompt_longer_than_the_context() {
    let model = tiny_trained();
    assert_fails_with(
        &nexttoken(&["bench", "--model", &model, "-p", "65"]),
        "exceeds the model's context length of 64; use -p 64 or less",
    );
}

#[test]
fn bench_with_nothing_to_measure() {
    let model = tiny_trained();
    assert_fails_with(
        &nexttoken(&["bench", "--model", &model, "-p", "0", "-n", "0"]),
        "nothing to measure",
    );
}

#[test]
fn bench_refuses_a_generation_past_the_context() {
    let model = tiny_trained();
    assert_fails_with(
        &nexttoken(&["bench", "--model", &model, "-p", "0", "-n", "65"]),
        "runs past the model's context length of 64; use -n 64 or less",
    );
}

/// Every backend is checked before anything is measured: no half-printed table.
#[test]
fn bench_checks_every_backend_first() {
    let output = nexttoken(&["bench", "-m", &tiny_trained(), "-b", "flex,cuda", "-p", "8"]);
    assert_fails_with(&output, "--features cuda");
    assert!(output.stdout.is_empty(), "measured before failing");
}

#[test]
fn dtype_converts_the_weights_at_load_and_bench_reports_it() {
    let model = tiny_trained();
    for dtype in ["f32", "f16", "bf16"] {
        let lines = json_lines(&[
            "bench", "--json", "-m", &model, "--dtype", dtype, "-p", "8", "-n", "4", "-r", "1",
        ]);
        assert!(lines.iter().all(|line| line["dtype"] == dtype), "{lines:?}");
    }
    // The same greedy ids in half precision: the fixture has no near-tie in its first steps.
    let float32 = ids_of("8", &["Every effort moves you"]);
    assert_eq!(
        ids_of("8", &["--dtype", "bf16", "Every effort moves you"]),
        float32
    );
}

/// `--dtype q8_0|q4_0` quantizes a checkpoint whose widths are whole 32-value blocks (the
/// trained fixture's 32 and 128) as it loads; Q8_0's rounding keeps the greedy ids of its first
/// steps.
#[test]
fn quantized_dtypes_load_on_flex_and_bench_reports_them() {
    let model = tiny_trained();
    for dtype in ["q8_0", "q4_0"] {
        let lines = json_lines(&[
            "bench", "--json", "-m", &model, "--dtype", dtype, "-p", "8", "-n", "4", "-r", "1",
        ]);
        assert!(lines.iter().all(|line| line["dtype"] == dtype), "{lines:?}");
    }
    let float32 = ids_of("8", &["Every effort moves you"]);
    assert_eq!(
        ids_of("8", &["--dtype", "q8_0", "Every effort moves you"]),
        float32
    );
}

#[test]
fn quantized_dtypes_are_refused_where_they_cannot_run() {
    assert_fails_with(
        &nexttoken(&["generate", "--backend", "ndarray", "--dtype", "q8_0", "x"]),
        "--dtype q8_0 runs on the flex backend only",
    );
    // The random fixture's width of 16 is half a block.
    let tiny_random = repo().join("tests/fixtures/tiny-random");
    assert_fails_with(
        &nexttoken(&[
            "generate",
            "-m",
            &tiny_random.display().to_string(),
            "--dtype",
            "q4_0",
            "x",
        ]),
        "has rows of 16 values, not a whole number of q4_0's 32-value blocks",
    );
}
