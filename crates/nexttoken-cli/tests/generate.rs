//! The `generate` command: prompts in (arguments, stdin, files), text and JSON out, stop
//! strings, sampling, and clean errors for bad input.

mod common;

use common::*;

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
        assert!(
            line["timings"]["batch"]["generated_tokens_per_s"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        assert_eq!(
            line["timings"]["batch"]["decode_step_ms"]
                .as_array()
                .unwrap()
                .len(),
            7
        );
    }
    // Each prompt's own counts; the 4-, 4- and 1-token prompts ran as one batch.
    assert_eq!(lines[0]["timings"]["prompt_tokens"], 4);
    assert_eq!(lines[0]["timings"]["generated_tokens"], 8);
    assert_eq!(lines[2]["timings"]["prompt_tokens"], 1);
    for line in &lines {
        assert_eq!(line["timings"]["batch"]["prompts"], 3);
        assert_eq!(line["timings"]["batch"]["prompt_tokens"], 9);
        assert_eq!(line["finish_reason"], "length");
    }
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
fn zero_new_tokens() {
    assert_usage_error(
        &nexttoken(&["generate", "--max-new-tokens", "0", "Hi"]),
        "--max-new-tokens",
    );
}

#[test]
fn empty_prompt() {
    assert_fails_with(
        &nexttoken(&["generate", "--model", &tiny_trained(), ""]),
        "prompt 1 is empty",
    );
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

/// Runs `nexttoken` with `input` on stdin; its output.
fn with_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_nexttoken"))
        .args(args)
        .env_remove("NEXTTOKEN_MODEL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn prompts_from_stdin_and_files() {
    let model = tiny_trained();
    let prompt = "Every effort moves you";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompt.txt");
    std::fs::write(&file, format!("{prompt}\n")).unwrap();
    let file = file.display().to_string();
    let base = ["generate", "-m", &model, "-n", "8", "--json"];
    // A pipe with no PROMPT, `-`, and -f FILE: one trailing newline is dropped, as llama-cli does.
    let piped = with_stdin(&base, &format!("{prompt}\n"));
    let dash = with_stdin(&[&base[..], &["-", "Hello, I am"]].concat(), prompt);
    let from_file = nexttoken(&[&base[..], &["-f", &file]].concat());
    for output in [&piped, &dash, &from_file] {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line: serde_json::Value = serde_json::from_str(
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(line["prompt"], prompt);
        let ids: Vec<u64> = serde_json::from_value(line["ids"].clone()).unwrap();
        assert_eq!(ids, golden_ids(prompt)[..8]);
    }
    assert_eq!(String::from_utf8_lossy(&dash.stdout).lines().count(), 2);
}

#[test]
fn no_prompt_at_all() {
    let output = with_stdin(&["generate", "-m", &tiny_trained()], "");
    assert_fails_with(&output, "prompt 1 is empty");
    assert_fails_with(
        &nexttoken(&["generate", "-f", "/no/such/prompt.txt"]),
        "reading the prompt file /no/such/prompt.txt",
    );
}

#[test]
fn no_echo_prints_only_the_generated_text() {
    let model = tiny_trained();
    let args = [
        "generate",
        "-m",
        &model,
        "-n",
        "12",
        "Every effort moves you",
    ];
    let echoed = stdout_of(&args);
    let bare = stdout_of(&[&args[..], &["--no-echo"]].concat());
    assert_eq!(echoed, format!("Every effort moves you{bare}"));
}

/// Several prompts: each one's text is printed, and stderr labels each prompt's own token
/// counts apart from each batch's timings.
#[test]
fn several_prompts_are_shown_with_their_own_counts() {
    let model = tiny_trained();
    let prompts = ["Every effort moves you", "Hello, I am", "The"];
    let json = json_lines(
        &[
            &["generate", "-m", &model, "-n", "5", "--json"][..],
            &prompts[..],
        ]
        .concat(),
    );
    let output = nexttoken(&[&["generate", "-m", &model, "-n", "5"][..], &prompts[..]].concat());
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    for (prompt, line) in prompts.iter().zip(&json) {
        let text = format!("{prompt}{}", line["text"].as_str().unwrap());
        assert!(stdout.contains(&text), "`{text}` not in: {stdout}");
    }
    let stderr = String::from_utf8(output.stderr).unwrap();
    for expected in [
        "prompt 1:  4 tokens in, 5 tokens out (batch 1)",
        "prompt 3:  1 token in, 5 tokens out (batch 1)",
        "batch 1 (3 prompts):",
    ] {
        assert!(stderr.contains(expected), "`{expected}` not in: {stderr}");
    }
    // --batch-size caps a batch; the text is the same.
    let output = nexttoken(
        &[
            &["generate", "-m", &model, "-n", "5", "--batch-size", "2"][..],
            &prompts[..],
        ]
        .concat(),
    );
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), stdout);
    let stderr = String::from_utf8(output.stderr).unwrap();
    for expected in [
        "prompt 3:  1 token in, 5 tokens out (batch 2)",
        "batch 1 (2 prompts):",
        "batch 2 (1 prompt):",
    ] {
        assert!(stderr.contains(expected), "`{expected}` not in: {stderr}");
    }
}

/// `--stop` ends a prompt's text before the stop string (also one that spans tokens), with
/// finish_reason "stop"; the streamed text is the JSON's text.
#[test]
fn stop_strings_cut_the_text_before_them() {
    let model = tiny_trained();
    let run = |extra: &[&str]| {
        generate_json("24", &[extra, &["Every effort moves you"]].concat()).remove(0)
    };
    let free = run(&[]);
    let text = free["text"].as_str().unwrap().to_string();
    let ids = free["ids"].as_array().unwrap().clone();
    // A stop string that starts inside one token's text and ends inside the next one's.
    let tokenizer = nexttoken_tokenizer::Gpt2Tokenizer::new();
    let pieces: Vec<String> = ids
        .iter()
        .map(|id| tokenizer.decode(&[id.as_u64().unwrap() as u32]).unwrap())
        .collect();
    let (boundary, _) = pieces
        .iter()
        .enumerate()
        .skip(2)
        .find(|(i, piece)| piece.len() >= 2 && pieces[i + 1].len() >= 2)
        .expect("two tokens of two or more characters in a row");
    let start: usize =
        pieces[..boundary].iter().map(String::len).sum::<usize>() + pieces[boundary].len() - 1;
    let stop = text[start..start + 2].to_string();
    let at = text.find(&stop).unwrap();

    let stopped = run(&["--stop", &stop]);
    assert_eq!(stopped["text"], text[..at], "stop {stop:?}");
    assert_eq!(stopped["finish_reason"], "stop");
    let output = nexttoken(&[
        "generate",
        "-m",
        &model,
        "-n",
        "24",
        "--ignore-eos",
        "--no-echo",
        "--stop",
        &stop,
        "Every effort moves you",
    ]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!("{}\n", &text[..at])
    );
}

/// `--logprobs N`: every generated id's log-probability and N alternatives; greedy, so the
/// chosen id is the most likely one. A run that stops at end-of-text says "eos".
#[test]
fn logprobs_and_finish_reasons_in_json() {
    let model = tiny_trained();
    let line = json_lines(&[
        "generate",
        "-m",
        &model,
        "-n",
        "6",
        "--json",
        "--logprobs",
        "3",
        "Hello",
    ])
    .remove(0);
    let logprobs = line["logprobs"].as_array().unwrap();
    assert_eq!(logprobs.len(), line["ids"].as_array().unwrap().len());
    for (entry, id) in logprobs.iter().zip(line["ids"].as_array().unwrap()) {
        assert_eq!(&entry["id"], id);
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(&top[0]["id"], id);
        assert_eq!(top[0]["logprob"], entry["logprob"]);
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
    }
    let output = nexttoken(&["generate", "-m", &model, "--logprobs", "3", "Hello"]);
    assert!(!output.status.success(), "--logprobs needs --json");

    // The same checkpoint with the third generated id as its end-of-text id (config.json's
    // eos_token_id) stops there: "eos", the id kept, its text not.
    let ids: Vec<u32> = line["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap() as u32)
        .collect();
    let eos = ids[2];
    let stop = ids.iter().position(|&id| id == eos).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = repo().join("tests/fixtures/tiny-trained");
    std::fs::copy(
        source.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    config["eos_token_id"] = eos.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let stopped = json_lines(&[
        "generate",
        "-m",
        &dir.path().display().to_string(),
        "-n",
        "6",
        "--json",
        "Hello",
    ])
    .remove(0);
    assert_eq!(stopped["finish_reason"], "eos");
    assert_eq!(stopped["ids"], serde_json::json!(ids[..=stop]));
    let text = nexttoken_tokenizer::Gpt2Tokenizer::new()
        .decode(&ids[..stop])
        .unwrap();
    assert_eq!(stopped["text"], text);
}

#[test]
fn a_prompt_longer_than_the_context_is_cropped_with_a_warning() {
    let long = "the king ".repeat(40);
    let output = nexttoken(&["generate", "-m", &tiny_trained(), "-n", "2", &long]);
    assert!(output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr
            .lines()
            .filter(|line| line.starts_with("warning: prompt 1 is 81 tokens"))
            .count(),
        1,
        "{stderr}"
    );
}

#[test]
fn sampling_flags_that_amount_to_greedy_give_greedy_ids() {
    let greedy = ids_of("16", &["Every effort moves you"]);
    assert_eq!(greedy[0], golden_ids("Every effort moves you")[..16]);
    for flags in [
        &["--temperature", "0"][..],
        &["--top-k", "1", "--seed", "5"][..],
        &["--temperature", "0", "--top-p", "0.5"][..],
    ] {
        let ids = ids_of("16", &[flags, &["Every effort moves you"]].concat());
        assert_eq!(ids, greedy, "{flags:?}");
    }
}

#[test]
fn a_seed_fixes_the_sampled_text_and_prompts_draw_apart() {
    let sample = |seed: &str, prompts: &[&str]| {
        let flags = ["--temperature", "1.0", "--top-p", "0.95", "--seed", seed];
        ids_of("24", &[&flags[..], prompts].concat())
    };
    let first = sample("7", &["Every effort moves you"]);
    assert_eq!(first, sample("7", &["Every effort moves you"]));
    assert_ne!(first, sample("8", &["Every effort moves you"]));
    assert_ne!(
        first[0],
        golden_ids("Every effort moves you")[..24],
        "not sampled"
    );
    // Prompt i draws from seed + i, whatever the other prompts are.
    let pair = sample("7", &["Hello, I am", "Every effort moves you"]);
    assert_eq!(pair[1], sample("8", &["Every effort moves you"])[0]);
    assert_eq!(pair[0], sample("7", &["Hello, I am"])[0]);
}

#[test]
fn the_seed_of_a_sampled_run_is_printed() {
    let output = nexttoken(&[
        "generate",
        "-m",
        &tiny_trained(),
        "-n",
        "4",
        "--temperature",
        "0.8",
        "Hi",
    ]);
    assert!(output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    let line = stderr
        .lines()
        .find(|l| l.starts_with("seed:"))
        .expect("a seed line");
    assert!(line.contains("--seed"), "{line}");
}

#[test]
fn invalid_sampling_settings() {
    for (flags, expected) in [
        (["--top-p", "1.5"], "top-p must be in (0, 1]"),
        (
            ["--temperature=-1", "--seed=1"],
            "temperature must be 0 (greedy) or more",
        ),
        (["--top-k", "0"], "top-k must be at least 1"),
        (
            ["--repeat-penalty", "0"],
            "repeat penalty must be greater than 0",
        ),
    ] {
        let output = nexttoken(&[&["generate"][..], &flags[..], &["Hi"]].concat());
        assert_fails_with(&output, expected);
        assert!(output.stdout.is_empty());
    }
}

/// A temperature too small to divide by is greedy (it gave id 0 every step: `Hi!!!!!`); a
/// negative one reaches the settings' check instead of clap's `-- -1` hint.
#[test]
fn tiny_and_negative_temperatures() {
    let model = tiny_trained();
    let greedy = stdout_of(&[
        "generate",
        "-m",
        &model,
        "-n",
        "8",
        "Every effort moves you",
    ]);
    let tiny = stdout_of(&[
        "generate",
        "-m",
        &model,
        "-n",
        "8",
        "--temperature",
        "1e-40",
        "Every effort moves you",
    ]);
    assert_eq!(tiny, greedy);
    let output = nexttoken(&["generate", "-m", &model, "--temperature", "-1", "Hi"]);
    assert_fails_with(&output, "temperature must be 0 (greedy) or more, got -1");
}

/// A repeat penalty alone needs a sampler, but nothing is random: no seed is printed.
#[test]
fn greedy_with_a_repeat_penalty_prints_no_seed() {
    let model = tiny_trained();
    let output = nexttoken(&[
        "generate",
        "-m",
        &model,
        "-n",
        "4",
        "--repeat-penalty",
        "1.3",
        "Hi",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("seed:"), "{stderr}");
    let output = nexttoken(&[
        "generate",
        "-m",
        &model,
        "-n",
        "4",
        "--temperature",
        "0.8",
        "Hi",
    ]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("seed:"));
}
