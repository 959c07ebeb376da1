//! The `nexttoken` binary end to end: output formats, and clean errors for bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny_trained() -> String {
    repo()
        .join("tests/fixtures/tiny-trained")
        .display()
        .to_string()
}

fn nexttoken(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nexttoken"))
        .args(args)
        .env_remove("NEXTTOKEN_MODEL")
        .output()
        .expect("the nexttoken binary runs")
}

/// Runs a command that must succeed; its stdout.
fn stdout_of(args: &[&str]) -> String {
    let output = nexttoken(args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs a `--json` command that must succeed; its lines, parsed.
fn json_lines(args: &[&str]) -> Vec<serde_json::Value> {
    stdout_of(args)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The command failed with a message containing `expected`, and did not panic.
fn assert_fails_with(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded; stderr: {stderr}");
    assert!(
        stderr.contains(expected),
        "`{expected}` not in stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
}

/// The greedy ids Hugging Face recorded for `prompt` on the tiny-trained fixture.
fn golden_ids(prompt: &str) -> Vec<u64> {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/goldens/tiny-trained.json")).unwrap(),
    )
    .unwrap();
    let case = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|case| case["prompts"][0] == prompt)
        .unwrap();
    case["greedy_ids"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect()
}

#[test]
fn json_lines_carry_ids_text_and_timings() {
    let prompts = ["Every effort moves you", "Hello, I am", "The"];
    let model = tiny_trained();
    let mut args = vec![
        "generate",
        "--model",
        &model,
        "-n",
        "8",
        "--ignore-eos",
        "--json",
    ];
    args.extend(prompts);
    let lines = json_lines(&args);
    assert_eq!(lines.len(), prompts.len());
    for (line, prompt) in lines.iter().zip(prompts) {
        assert_eq!(line["prompt"], prompt);
        let ids: Vec<u64> = line["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_u64().unwrap())
            .collect();
        assert_eq!(ids, golden_ids(prompt)[..8]);
        assert!(line["text"].is_string());
        assert!(line["timings"]["generated_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(
            line["timings"]["decode_step_ms"].as_array().unwrap().len(),
            7
        );
    }
    // The two 4-token prompts ran as one batch of 2.
    assert_eq!(lines[0]["timings"]["prompt_tokens"], 8);
    assert_eq!(lines[2]["timings"]["prompt_tokens"], 1);
}

#[test]
fn streamed_text_is_the_prompt_and_its_continuation() {
    let model = tiny_trained();
    let json = nexttoken(&[
        "generate",
        "--model",
        &model,
        "-n",
        "12",
        "--json",
        "Every effort moves you",
    ]);
    let stream = nexttoken(&[
        "generate",
        "--model",
        &model,
        "-n",
        "12",
        "Every effort moves you",
    ]);
    assert!(stream.status.success());
    let line: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let expected = format!("Every effort moves you{}\n", line["text"].as_str().unwrap());
    assert_eq!(String::from_utf8(stream.stdout).unwrap(), expected);
    let stderr = String::from_utf8(stream.stderr).unwrap();
    assert!(stderr.contains("tokens/s"), "{stderr}");
}

#[test]
fn saved_logits_are_the_ones_each_id_was_selected_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logits.safetensors");
    let model = tiny_trained();
    // Two lengths: two batches, one of them with two rows.
    let prompts = ["To be", "First Citizen:", "Hello there world"];
    let mut args = vec![
        "generate",
        "-m",
        &model,
        "-n",
        "6",
        "--json",
        "--save-logits",
    ];
    let path_arg = path.display().to_string();
    args.push(&path_arg);
    args.extend(prompts);
    let lines = json_lines(&args);

    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.len(), prompts.len());
    for (index, line) in lines.iter().enumerate() {
        let ids: Vec<u64> = serde_json::from_value(line["ids"].clone()).unwrap();
        let logits = file.tensor(&format!("logits.{index}")).unwrap();
        let vocab = logits.shape()[1];
        assert_eq!(logits.shape(), [ids.len(), vocab]);
        let values: Vec<f32> = logits
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let argmax: Vec<u64> = values
            .chunks_exact(vocab)
            .map(|row| {
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
                best.unwrap().0 as u64
            })
            .collect();
        assert_eq!(argmax, ids, "prompt {index}");
    }
}

#[test]
fn saving_logits_to_an_unwritable_path() {
    let output = nexttoken(&[
        "generate",
        "-n",
        "2",
        "--save-logits",
        "/nonexistent-dir/logits.safetensors",
        "Hi",
    ]);
    assert_fails_with(
        &output,
        "writing the logits to /nonexistent-dir/logits.safetensors",
    );
}

#[test]
fn zero_new_tokens() {
    assert_fails_with(
        &nexttoken(&["generate", "--max-new-tokens", "0", "Hi"]),
        "--max-new-tokens",
    );
}

#[test]
fn empty_prompt() {
    assert_fails_with(
        &nexttoken(&["generate", "--model", &tiny_trained(), ""]),
        "prompt 0 is empty",
    );
}

#[test]
fn missing_model() {
    assert_fails_with(
        &nexttoken(&["generate", "--model", "/no/such/dir", "Hi"]),
        "/no/such/dir does not exist",
    );
}

#[test]
fn unknown_backend() {
    assert_fails_with(
        &nexttoken(&["generate", "--backend", "tpu", "Hi"]),
        "unknown backend `tpu`",
    );
}

#[test]
fn backend_not_compiled_in_names_the_feature() {
    // cuda cannot be built offline, so no test build has it.
    let output = nexttoken(&[
        "generate",
        "--backend",
        "cuda",
        "--model",
        &tiny_trained(),
        "Hi",
    ]);
    assert_fails_with(&output, "rebuild with `--features cuda`");
}

#[test]
fn info_lists_every_backend_and_flex_runs() {
    let output = nexttoken(&["info"]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    for name in ["flex", "ndarray", "wgpu", "vulkan", "tch", "cuda"] {
        assert!(
            stdout.lines().any(|line| line.starts_with(name)),
            "{name} missing:\n{stdout}"
        );
    }
    let flex = stdout
        .lines()
        .find(|line| line.starts_with("flex"))
        .unwrap();
    assert!(flex.contains("yes") && flex.contains("ok"), "{flex}");
}

/// Whether this build of the binary has `backend` (test builds choose their features).
fn compiled(backend: &str) -> bool {
    let info = String::from_utf8(nexttoken(&["info"]).stdout).unwrap();
    info.lines()
        .any(|line| line.split_whitespace().take(2).eq([backend, "yes"]))
}

#[test]
fn wgpu_without_a_vulkan_driver_says_what_to_install() {
    if !compiled("wgpu") {
        eprintln!("wgpu is not compiled into this build: nothing to check");
        return;
    }
    // Point the Vulkan loader at no drivers, as on a machine without any.
    let output = Command::new(env!("CARGO_BIN_EXE_nexttoken"))
        .args([
            "generate",
            "--backend",
            "wgpu",
            "--model",
            &tiny_trained(),
            "Hi",
        ])
        .env("VK_ICD_FILENAMES", "/nonexistent.json")
        .env("VK_DRIVER_FILES", "/nonexistent.json")
        .output()
        .unwrap();
    assert_fails_with(&output, "no Vulkan adapter");
    assert_fails_with(&output, "apt-get install mesa-vulkan-drivers");
}

/// `--no-kv-cache` runs the plain loop; both give Hugging Face's ids, here past the fixture's
/// 64-token context as well (a 4-token prompt and 70 new tokens).
#[test]
fn no_kv_cache_gives_the_same_ids() {
    let model = tiny_trained();
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", &model, "-n", "70", "--ignore-eos"];
        args.extend(extra);
        args.extend(["--json", "Every effort moves you"]);
        json_lines(&args)[0]["ids"].clone()
    };
    let cached = run(&[]);
    assert_eq!(cached.as_array().unwrap().len(), 70);
    assert_eq!(cached, run(&["--no-kv-cache"]));
    assert_eq!(
        cached.as_array().unwrap()[..24]
            .iter()
            .map(|id| id.as_u64().unwrap())
            .collect::<Vec<_>>(),
        golden_ids("Every effort moves you")
    );
}

#[test]
fn bench_prints_one_json_line_per_test() {
    let model = tiny_trained();
    let lines = json_lines(&[
        "bench", "--model", &model, "-p", "16,64", "-n", "8", "-r", "2", "-t", "1", "--json",
    ]);
    let tests: Vec<&str> = lines.iter().map(|l| l["test"].as_str().unwrap()).collect();
    assert_eq!(tests, ["pp16", "pp64", "tg8"]);
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
fn zero_threads() {
    assert_fails_with(&nexttoken(&["bench", "-t", "0"]), "--threads");
}
