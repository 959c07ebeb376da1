//! What the command tests share: running the binary, reading its output, the fixtures.

// Each test file is its own crate and uses a part of these.
#![allow(dead_code)]

pub use std::path::PathBuf;
pub use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn tiny_trained() -> String {
    repo()
        .join("tests/fixtures/tiny-trained")
        .display()
        .to_string()
}

pub fn nexttoken(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nexttoken"))
        .args(args)
        .env_remove("NEXTTOKEN_MODEL")
        .output()
        .expect("the nexttoken binary runs")
}

/// Runs a command that must succeed; its stdout.
pub fn stdout_of(args: &[&str]) -> String {
    let output = nexttoken(args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs a `--json` command that must succeed; its lines, parsed.
pub fn json_lines(args: &[&str]) -> Vec<serde_json::Value> {
    stdout_of(args)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The command failed with exit status 1 and a message containing `expected`, and did not
/// panic.
pub fn assert_fails_with(output: &Output, expected: &str) {
    assert_exits_with(output, 1, expected);
}

/// The command-line parser refused the arguments: exit status 2, as clap and Unix tools use.
pub fn assert_usage_error(output: &Output, expected: &str) {
    assert_exits_with(output, 2, expected);
}

pub fn assert_exits_with(output: &Output, code: i32, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(
        stderr.contains(expected),
        "`{expected}` not in stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
}

/// The greedy ids Hugging Face recorded for `prompt` on the tiny-trained fixture.
pub fn golden_ids(prompt: &str) -> Vec<u64> {
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

/// Spawns `nexttoken` with piped stdout and stderr.
pub fn spawn(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_nexttoken"))
        .args(args)
        .env_remove("NEXTTOKEN_MODEL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the nexttoken binary starts")
}

/// The generated ids of each `--json` line.
/// `nexttoken generate --json` of `n` tokens on the tiny trained model, end-of-text ignored,
/// with `args` (flags, then prompts) after.
pub fn generate_json(n: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let model = tiny_trained();
    let base = ["generate", "-m", &model, "-n", n, "--ignore-eos", "--json"];
    json_lines(&[&base[..], args].concat())
}

/// Each prompt's generated ids from [`generate_json`].
pub fn ids_of(n: &str, args: &[&str]) -> Vec<Vec<u64>> {
    generate_json(n, args)
        .iter()
        .map(|line| serde_json::from_value(line["ids"].clone()).unwrap())
        .collect()
}

pub fn nexttoken_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nexttoken"));
    command.args(args).env_remove("NEXTTOKEN_MODEL");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("the nexttoken binary runs")
}
